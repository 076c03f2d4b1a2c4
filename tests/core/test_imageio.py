"""Every odd file a crawl hands us opens as upright 8-bit RGB, or becomes a reject with its reason."""
from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms

from storyboard.core.imageio import load_rgb, load_rgb_bytes
from storyboard.core.records import REJECT_REASONS, RecordError

RED = (255, 0, 0)


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def _half_transparent_red() -> np.ndarray:
    rgba = np.zeros((32, 64, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 32:, 3] = 255  # left half fully transparent, right half opaque red
    return rgba


def test_rgba_la_and_palette_transparency_go_over_white(tmp_path):
    rgba = _half_transparent_red()
    cases = {
        "rgba.png": Image.fromarray(rgba),
        "p.png": Image.fromarray(rgba).convert("P"),  # palette with a transparent entry
        "p.gif": Image.fromarray(rgba),
    }
    for name, image in cases.items():
        loaded = load_rgb(_save(tmp_path / name, image))
        assert loaded.rgb.dtype == np.uint8 and loaded.rgb.shape == (32, 64, 3), name
        assert loaded.rgb[0, 0].tolist() == [255, 255, 255], f"{name}: transparency must become white, not black"
        assert loaded.rgb[0, -1].tolist() == [255, 0, 0], name
    la = np.zeros((32, 64, 2), np.uint8)
    la[:, 32:, 1] = 255  # black, left half transparent
    loaded = load_rgb(_save(tmp_path / "la.png", Image.fromarray(la)))
    assert loaded.mode == "LA"
    assert loaded.rgb[0, 0].tolist() == [255, 255, 255] and loaded.rgb[0, -1].tolist() == [0, 0, 0]
    half = rgba.copy()
    half[..., 3] = 128
    loaded = load_rgb(_save(tmp_path / "half.png", Image.fromarray(half)))
    assert loaded.rgb[0, 0].tolist() == [255, 127, 127]  # 50 % red over white


def test_sixteen_bit_and_integer_images_are_scaled_not_clipped(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (8, 1))
    for name in ("g16.png", "g16.tif"):
        loaded = load_rgb(_save(tmp_path / name, Image.fromarray(ramp)))
        assert loaded.mode.startswith("I")
        grey = loaded.rgb[..., 0]
        assert grey[0, 0] == 0 and grey[0, -1] == 255 and 120 <= grey[0, 32] <= 135, name
        assert (loaded.rgb[..., 0] == loaded.rgb[..., 2]).all()
    loaded = load_rgb(_save(tmp_path / "i32.tif", Image.fromarray(ramp.astype(np.int32))))
    assert loaded.mode == "I" and loaded.rgb[0, -1, 0] == 255 and loaded.rgb[0, 32, 0] < 200
    loaded = load_rgb(_save(tmp_path / "f.tif", Image.new("F", (8, 8), 0.5)))
    assert loaded.rgb[0, 0].tolist() == [128, 128, 128]


def test_cmyk_bilevel_grey_and_icc(tmp_path):
    for name in ("cmyk.jpg", "cmyk.tif"):
        loaded = load_rgb(_save(tmp_path / name, Image.new("CMYK", (16, 8), (0, 255, 255, 0))))
        assert loaded.mode == "CMYK"
        assert np.abs(loaded.rgb[4, 4].astype(int) - [255, 0, 0]).max() <= 3, name
    loaded = load_rgb(_save(tmp_path / "one.png", Image.new("1", (16, 8), 1)))
    assert loaded.rgb[0, 0].tolist() == [255, 255, 255]
    loaded = load_rgb(_save(tmp_path / "grey.png", Image.new("L", (16, 8), 77)))
    assert loaded.rgb[0, 0].tolist() == [77, 77, 77]
    # An image tagged with a non-sRGB profile is converted into sRGB (here: Lab's D50 white stays white,
    # pure red moves), and an sRGB-tagged one is left alone.
    srgb = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    loaded = load_rgb(_save(tmp_path / "srgb.png", Image.new("RGB", (8, 8), RED), icc_profile=srgb))
    assert loaded.rgb[0, 0].tolist() == list(RED)


def test_animated_and_multipage_files_give_their_first_frame(tmp_path):
    frames = [Image.new("RGB", (16, 8), c) for c in (RED, (0, 255, 0), (0, 0, 255))]
    for name, kwargs in (("anim.gif", {}), ("multi.tif", {}), ("anim.webp", {"lossless": True}), ("anim.png", {})):
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:], **kwargs)
        loaded = load_rgb(tmp_path / name)
        assert loaded.frames == 3, name
        assert np.abs(loaded.rgb[4, 4].astype(int) - list(RED)).max() <= 2, name


@pytest.mark.parametrize("orientation, expected_size", [(1, (40, 20)), (3, (40, 20)), (6, (20, 40)), (8, (20, 40))])
def test_exif_orientation_is_applied(tmp_path, orientation, expected_size):
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = 255  # white left half as stored
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = orientation
    loaded = load_rgb(_save(tmp_path / f"o{orientation}.jpg", image, exif=exif, quality=95))
    assert loaded.size == expected_size and loaded.exif_orientation == orientation
    corner = loaded.rgb[1, 1].mean()
    # Rotating 90 deg clockwise (6) puts the stored left half on top; 180 (3) puts it right.
    expect_white = {1: True, 3: False, 6: True, 8: False}[orientation]
    assert (corner > 128) == expect_white


def _bomb_png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body


def test_broken_files_are_rejects_with_a_reason(tmp_path):
    good = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 20, 30)).save(good, "JPEG")
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(png, "PNG")
    files = {
        "empty.jpg": (b"", "unreadable_image"),
        "text.png": (b"not an image at all\n", "unreadable_image"),
        "trunc.jpg": (good.getvalue()[: len(good.getvalue()) // 2], "unreadable_image"),
        "trunc.png": (png.getvalue()[: len(png.getvalue()) // 2], "unreadable_image"),
        "bomb.png": (_bomb_png(12_000, 12_000), "image_too_large"),  # over our limit
        "huge.png": (_bomb_png(100_000, 100_000), "image_too_large"),  # over Pillow's hard limit too
    }
    for name, (data, reason) in files.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(RecordError) as caught:
            load_rgb(tmp_path / name)
        assert caught.value.reason == reason, name
        assert caught.value.reason in REJECT_REASONS
    with pytest.raises(RecordError) as caught:
        load_rgb(tmp_path / "nothing.png")
    assert caught.value.reason == "missing_image"
    with pytest.raises(RecordError) as caught:  # our own limit is a flag
        load_rgb_bytes(good.getvalue(), "small.jpg", max_pixels=100)
    assert caught.value.reason == "image_too_large"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")
    with pytest.raises(RecordError) as caught:
        load_rgb(tmp_path / "pipe.png")
    assert caught.value.reason == "unreadable_image"


def test_sample_data_images_all_open_upright(sample_data):
    import json

    truth = json.loads((sample_data / "ground_truth.json").read_text(encoding="utf-8"))
    modes = set()
    for rel, info in truth["images"].items():
        loaded = load_rgb(sample_data / "images" / rel)
        assert list(loaded.size) == info["size"], rel  # the upright size, EXIF applied
        modes.add(loaded.mode)
    assert {"RGB", "RGBA", "L", "P"} <= modes
