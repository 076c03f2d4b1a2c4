"""Encoding the finished pictures the ways real data sets store them (JPEG, PNG, RGBA, L, P, GIF,
EXIF-rotated JPEG), always to bytes, so the same pixels and seed give the same bytes."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

from storyboard.devkit.sample_data.plan import SAVES

EXIF_ORIENTATION_TAG = 0x0112
# Orientation 6: the viewer turns the stored pixels 90 degrees clockwise to show them upright, so
# they are stored turned 90 degrees counter-clockwise (PIL's ROTATE_90).
EXIF_ROTATED = 6


def encode_image(page: np.ndarray, content: tuple[int, int, int, int], save: str, quality: int) -> tuple[bytes, dict]:
    """``page`` (HxWx3 uint8, upright) as file bytes; returns (bytes, facts for the ground truth)."""
    fmt, mode, _ = SAVES[save]
    image = Image.fromarray(page, "RGB")
    orientation = None
    options: dict = {}
    if save == "rgba_png":
        alpha = np.zeros(page.shape[:2], np.uint8)
        x0, y0, x1, y1 = content
        alpha[y0:y1, x0:x1] = 255
        rgba = np.dstack([page, alpha])
        rgba[alpha == 0, :3] = 0  # what an editor leaves under transparency; naive RGB shows black bars
        image = Image.fromarray(rgba, "RGBA")
    elif mode == "L":
        image = image.convert("L")
    elif mode == "P":
        # Median cut without dithering: deterministic, and a real exporter's look.
        image = image.quantize(colors=256 if fmt == "PNG" else 128, method=Image.Quantize.MEDIANCUT,
                               dither=Image.Dither.NONE)
    if save == "exif_jpeg":
        orientation = EXIF_ROTATED
        image = image.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[EXIF_ORIENTATION_TAG] = orientation
        options["exif"] = exif.tobytes()
    if fmt == "JPEG":
        options.update(quality=int(quality))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    facts = {"mode": image.mode, "format": fmt, "exif_orientation": orientation, "stored_size": list(image.size)}
    return buffer.getvalue(), facts


def encode_mask(mask: np.ndarray) -> bytes:
    """A bubble mask as an 8-bit PNG: 255 where a bubble is, 0 elsewhere."""
    buffer = io.BytesIO()
    Image.fromarray(np.where(mask, 255, 0).astype(np.uint8), "L").save(buffer, format="PNG")
    return buffer.getvalue()
