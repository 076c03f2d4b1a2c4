"""Open any image a crawl hands us as an upright 8-bit RGB array, or say why it cannot be used.

``load_rgb(path)`` returns a ``LoadedImage`` (RGB ``uint8`` array + what the file was) or raises
``RecordError`` with a reason from ``records.REJECT_REASONS``:

* ``missing_image``     -- no such file;
* ``unreadable_image``  -- zero bytes, not an image, truncated or otherwise undecodable;
* ``image_too_large``   -- more pixels than ``max_pixels`` (a decompression bomb): refused from the
  header, before a single pixel is decoded, so a crafted file cannot eat the memory or hang us.

What "made RGB correctly" means here:

* EXIF orientation is applied (the array is the picture as a viewer shows it);
* alpha (RGBA, LA, PA, P with a transparent index) is composited over white, not dropped: a
  transparent background would otherwise come out black;
* 16-bit and 32-bit integer images (I;16, I;16B, I) are scaled from their full range to 0..255, not
  clipped (clipping turns a 16-bit photo white); float images (F) are scaled from 0..1 or from their
  own range;
* CMYK goes through its embedded ICC profile when there is one (else PIL's conversion); an RGB image
  with a non-sRGB profile (Adobe RGB, Display P3) is converted to sRGB;
* 1-bit, L, I and YCbCr images become grey RGB; animated GIF/WebP/PNG and multi-page TIFF give their
  first frame.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageCms, ImageFile, ImageOps, UnidentifiedImageError

from storyboard.core.records import RecordError

# The default pixel limit: Pillow's own bomb threshold (~89.5 MP, a 1 GB RGBA image); larger film
# stills than that are not expected, and anything far larger is an attack or a mistake.
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

# Never decode a half file silently: truncated images must reach rejects, not the data set.
ImageFile.LOAD_TRUNCATED_IMAGES = False

_SRGB = None


@dataclass
class LoadedImage:
    """An upright RGB ``uint8`` array (H, W, 3) and where it came from."""

    rgb: np.ndarray
    mode: str  # the file's mode as Pillow opened it ("P", "I;16", "CMYK", ...)
    format: str | None
    exif_orientation: int  # 1 when none or upright
    frames: int  # frames or pages in the file; only the first is used
    info: dict = field(default_factory=dict)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) of the upright image."""
        return self.rgb.shape[1], self.rgb.shape[0]


def _srgb_profile():
    global _SRGB
    if _SRGB is None:
        _SRGB = ImageCms.createProfile("sRGB")
    return _SRGB


def _exif_orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if int(value) in range(1, 9) else 1
    except Exception:  # broken EXIF is not a reason to lose the image
        return 1


def _scale_to_uint8(arr: np.ndarray, mode: str) -> np.ndarray:
    """Integer / float single-channel data -> uint8 over its full range (never clipped)."""
    if mode == "F":
        arr = np.nan_to_num(arr.astype(np.float64))
        lo, hi = float(arr.min()), float(arr.max())
        if lo >= 0.0 and hi <= 1.0:
            return np.round(arr * 255.0).astype(np.uint8)
        if lo >= 0.0 and hi <= 255.0:
            return np.round(arr).astype(np.uint8)
        span = hi - lo or 1.0
        return np.round((arr - lo) * (255.0 / span)).astype(np.uint8)
    arr = arr.astype(np.int64)
    if mode.startswith("I;16") or arr.max(initial=0) > 255:
        # 16-bit data (also 16-bit PNGs that some Pillow versions open as "I"): 65535 -> 255.
        if arr.min(initial=0) >= 0 and arr.max(initial=0) <= 65535:
            return np.round(arr / 257.0).astype(np.uint8)
        lo, hi = int(arr.min()), int(arr.max())
        return np.round((arr - lo) * (255.0 / max(hi - lo, 1))).astype(np.uint8)
    return np.clip(arr, 0, 255).astype(np.uint8)


def _composite_over_white(img: Image.Image) -> np.ndarray:
    rgba = np.asarray(img.convert("RGBA"), dtype=np.float32)
    alpha = rgba[..., 3:4] / 255.0
    out = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.round(out).astype(np.uint8)


def _icc_to_srgb(img: Image.Image) -> Image.Image | None:
    """Convert through an embedded ICC profile to sRGB; None when there is none or it fails."""
    icc = img.info.get("icc_profile")
    if not icc:
        return None
    try:
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        if img.mode == "RGB" and "srgb" in (ImageCms.getProfileDescription(src) or "").lower():
            return None  # already sRGB: skip the work
        return ImageCms.profileToProfile(img, src, _srgb_profile(), outputMode="RGB")
    except Exception:  # a broken or unusual profile: fall back to the plain conversion
        return None


def to_rgb_array(img: Image.Image) -> np.ndarray:
    """Any decoded Pillow image -> (H, W, 3) uint8 RGB, following the rules in the module doc."""
    mode = img.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info) \
            or (mode in ("L", "RGB") and "transparency" in img.info):
        return _composite_over_white(img)
    if mode in ("RGB", "CMYK"):
        converted = _icc_to_srgb(img)
        if converted is not None:
            return np.asarray(converted.convert("RGB"))
        return np.asarray(img.convert("RGB"))
    if mode in ("I", "F") or mode.startswith("I;16"):
        grey = _scale_to_uint8(np.asarray(img), mode)
        return np.repeat(grey[..., None], 3, axis=2)
    if mode == "1":
        return np.asarray(img.convert("L").convert("RGB"))
    return np.asarray(img.convert("RGB"))  # L, P, YCbCr, LAB, HSV


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file; ``RecordError`` when it is missing, not a regular file (a FIFO or
    a device would block a plain read forever) or unreadable."""
    path = Path(path)
    try:
        if not stat.S_ISREG(path.stat().st_mode):
            raise RecordError("unreadable_image", f"{path.name} is not a regular file")
        return path.read_bytes()
    except FileNotFoundError:
        raise RecordError("missing_image", f"no file at {path}") from None
    except OSError as exc:
        raise RecordError("unreadable_image", f"cannot read {path.name}: {exc.strerror or exc}") from None


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """Decode ``path`` to an upright RGB array; ``RecordError`` (a reject reason) when it cannot be."""
    return load_rgb_bytes(read_image_bytes(path), Path(path).name, max_pixels)


def load_rgb_bytes(data: bytes, name: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> LoadedImage:
    """``load_rgb`` for the bytes of a file already read (``name`` is only used in messages)."""
    if not data:
        raise RecordError("unreadable_image", f"{name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            # Our own pixel limit decides; Pillow's warning below its hard limit is noise here.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                width, height = img.size
                if width <= 0 or height <= 0:
                    raise RecordError("unreadable_image", f"{name} has no pixels ({width}x{height})")
                if width * height > max_pixels:
                    raise RecordError("image_too_large",
                                      f"{name} is {width}x{height} = {width * height:,} px, over the "
                                      f"limit of {max_pixels:,} (decompression bomb guard; see --max-pixels)")
                frames = int(getattr(img, "n_frames", 1) or 1)
                if frames > 1:
                    img.seek(0)
                orientation = _exif_orientation(img)
                img.load()
                fmt, mode = img.format, img.mode
                upright = ImageOps.exif_transpose(img) if orientation != 1 else img
                rgb = to_rgb_array(upright)
    except RecordError:
        raise
    except Image.DecompressionBombError as exc:
        raise RecordError("image_too_large", f"{name}: {exc}") from None
    except UnidentifiedImageError:
        raise RecordError("unreadable_image", f"{name} is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError) as exc:
        # Truncated data ("image file is truncated"), broken chunks, bad headers, ...
        raise RecordError("unreadable_image", f"{name}: {type(exc).__name__}: {exc}") from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:  # defensive: never pass on a bad array
        raise RecordError("unreadable_image", f"{name} decoded to an unexpected array {rgb.shape} {rgb.dtype}")
    return LoadedImage(np.ascontiguousarray(rgb), mode, fmt, orientation, frames)
