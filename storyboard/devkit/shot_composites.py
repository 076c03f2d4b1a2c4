"""Photographs of a real face framed at a known shot size, for testing the shot-size estimator.

The face is scikit-image's astronaut portrait (a real photo that ships with the library, so nothing is
downloaded); the body under it is drawn. ``composite(shot_key, width, height, seed)`` frames the
figure the way a camera operator frames that shot size (an extreme close-up shows eyes to mouth, a
close-up the head, a medium close-up to mid-chest, a medium shot to the waist, a medium long shot to
the knees, a full shot the whole body, a long shot the body at about half the frame, an extreme long
shot a small figure in a landscape) and returns the picture with the face box it drew.

This is test scaffolding, independent of ``storyboard.devkit.sample_data`` (the project's full generator),
so the estimator can be tested on its own.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from skimage import data

# Frame height in head heights (hair top to chin) and the space above the head top, also in head
# heights, for each built-in shot size. The body is 7.5 heads tall.
FRAMING: dict[str, tuple[float, float]] = {
    "extreme_close_up": (0.55, -0.32),  # from the brows to below the mouth: the head overflows the frame
    "close_up": (1.55, 0.15),
    "medium_close_up": (2.5, 0.2),
    "medium": (3.6, 0.25),
    "medium_long": (5.6, 0.3),
    "full": (8.6, 0.5),
    "long": (16.0, 3.5),
    "extreme_long": (42.0, 12.0),
}
BODY_HEADS = 7.5
# Where the face box the detector finds sits inside the head crop below (fractions of the head crop).
_HEAD_BOX = (25, 178, 150, 300)  # top, bottom, left, right of the head in skimage.data.astronaut()


@dataclass
class Composite:
    image: Image.Image
    shot_size: str
    head_box: tuple[int, int, int, int]  # x0, y0, x1, y1 in the picture (may leave the frame)


@lru_cache(maxsize=1)
def _head() -> Image.Image:
    top, bottom, left, right = _HEAD_BOX
    return Image.fromarray(data.astronaut()[top:bottom, left:right])


@lru_cache(maxsize=1)
def _head_mask() -> Image.Image:
    """An oval mask around the head, so its square photo edges do not show."""
    head = _head()
    mask = Image.new("L", head.size, 0)
    w, h = head.size
    ImageDraw.Draw(mask).ellipse((int(0.04 * w), 0, int(0.96 * w), h), fill=255)
    return mask.filter(ImageFilter.GaussianBlur(2))


def _background(width: int, height: int, rng: np.random.Generator, horizon: float) -> Image.Image:
    top = rng.integers(120, 230, 3)
    bottom = rng.integers(40, 140, 3)
    t = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (top * (1 - t) + bottom * t).astype(np.float32)
    img = np.repeat(sky, width, axis=1)
    y = int(np.clip(horizon, 0, 1) * height)
    img[y:] = img[y:] * 0.6 + rng.integers(30, 110, 3) * 0.4
    img += rng.normal(0, 6, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def composite(shot_key: str, width: int = 480, height: int = 360, seed: int = 0) -> Composite:
    """The astronaut's face on a drawn body, framed as ``shot_key`` (a built-in shot size key)."""
    if shot_key not in FRAMING:
        raise ValueError(f"no framing for {shot_key!r}; known: {', '.join(FRAMING)}")
    rng = np.random.default_rng(seed)
    frame_heads, margin = FRAMING[shot_key]
    frame_heads *= float(rng.uniform(0.93, 1.07))
    head_px = height / frame_heads  # the head's height in the picture
    head_top = margin * head_px
    cx = width * float(rng.uniform(0.4, 0.6))
    horizon = (head_top + head_px * BODY_HEADS * 0.9) / height if shot_key in ("long", "extreme_long") else 0.75

    img = _background(width, height, rng, horizon)
    draw = ImageDraw.Draw(img)
    u = head_px  # one head
    shirt = tuple(int(v) for v in rng.integers(20, 200, 3))
    trousers = tuple(int(v) for v in rng.integers(10, 90, 3))
    skin = (224, 178, 150)

    def box(x0, y0, x1, y1):  # figure units (heads from the head top, from the centre line) -> pixels
        return (cx + x0 * u, head_top + y0 * u, cx + x1 * u, head_top + y1 * u)

    draw.rectangle(box(-0.18, 0.85, 0.18, 1.25), fill=skin)  # neck
    draw.rounded_rectangle(box(-1.0, 1.15, 1.0, 3.3), radius=max(1, int(0.35 * u)), fill=shirt)  # torso
    draw.rounded_rectangle(box(-1.35, 1.25, -0.95, 3.6), radius=max(1, int(0.2 * u)), fill=shirt)  # arms
    draw.rounded_rectangle(box(0.95, 1.25, 1.35, 3.6), radius=max(1, int(0.2 * u)), fill=shirt)
    draw.ellipse(box(-1.35, 3.45, -0.95, 3.85), fill=skin)  # hands
    draw.ellipse(box(0.95, 3.45, 1.35, 3.85), fill=skin)
    draw.rectangle(box(-0.85, 3.2, 0.85, 4.0), fill=trousers)  # hips
    draw.rectangle(box(-0.8, 3.9, -0.08, 7.2), fill=trousers)  # legs
    draw.rectangle(box(0.08, 3.9, 0.8, 7.2), fill=trousers)
    draw.rectangle(box(-0.9, 7.15, -0.05, BODY_HEADS), fill=(25, 25, 25))  # shoes
    draw.rectangle(box(0.05, 7.15, 0.9, BODY_HEADS), fill=(25, 25, 25))

    head = _head()
    hw = max(1, round(head.width * head_px / head.height))
    hh = max(1, round(head_px))
    x0 = round(cx - hw / 2)
    y0 = round(head_top)
    img.paste(head.resize((hw, hh), Image.LANCZOS), (x0, y0), _head_mask().resize((hw, hh), Image.LANCZOS))
    return Composite(img, shot_key, (x0, y0, x0 + hw, y0 + hh))
