"""Make a square training image from any still, and keep the transform so boxes map back.

Three policies (``--fit``):

* ``pad``     -- the whole image, scaled so its long side is ``size``, centred on a square filled with
  the image's edge colour (``pad_fill="edge"``: the median of its border pixels; right for conti
  frames on paper and letterboxed stills) or with a blurred, enlarged copy of itself
  (``pad_fill="blur"``: no hard band for photos). Nothing of the picture is lost.
* ``crop``    -- the centre square of the image, scaled to ``size``.
* ``subject`` -- the largest square window that keeps the detected subject (a face, an upper body,
  a full body from OpenCV's Haar cascades; else the centre of the image's edge energy), centred on
  it and clamped to the picture. A subject longer than the window keeps its top (the head).

Each square comes with its transform (``storyboard.core.geometry.SquareTransform``: one scale per axis
and an offset), stored in the record as ``square``; ``core.geometry.box_to_square`` and ``box_to_source``
map boxes both ways (the clustering stage reads it too, hence its place in ``core``).
"""
from __future__ import annotations

from functools import cache

import cv2
import numpy as np

from storyboard.core.geometry import SquareTransform

FITS = ("pad", "crop", "subject")
PAD_FILLS = ("edge", "blur")


def resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    """Area averaging when shrinking (no aliasing), Lanczos when enlarging."""
    h, w = rgb.shape[:2]
    if (w, h) == (width, height):
        return rgb
    shrinking = width * height < w * h
    return cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LANCZOS4)


def edge_colour(rgb: np.ndarray) -> np.ndarray:
    """The median colour of the image's outermost 2 pixels (its paper or letterbox colour)."""
    border = np.concatenate([rgb[:2].reshape(-1, 3), rgb[-2:].reshape(-1, 3),
                             rgb[:, :2].reshape(-1, 3), rgb[:, -2:].reshape(-1, 3)])
    return np.median(border, axis=0).astype(np.uint8)


def _blurred_background(rgb: np.ndarray, size: int) -> np.ndarray:
    h, w = rgb.shape[:2]
    small = 32
    scale = small / min(w, h)
    tiny = cv2.resize(rgb, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
    th, tw = tiny.shape[:2]
    x0, y0 = (tw - small) // 2, (th - small) // 2
    tiny = cv2.GaussianBlur(np.ascontiguousarray(tiny[y0:y0 + small, x0:x0 + small]), (0, 0), 3)
    return cv2.resize(tiny, (size, size), interpolation=cv2.INTER_CUBIC)


def pad_square(rgb: np.ndarray, size: int, fill: str = "edge") -> tuple[np.ndarray, SquareTransform]:
    h, w = rgb.shape[:2]
    long_side = max(w, h)
    rw, rh = max(1, round(w * size / long_side)), max(1, round(h * size / long_side))
    resized = resize(rgb, rw, rh)
    if fill == "blur":
        canvas = _blurred_background(rgb, size)
    elif fill == "edge":
        canvas = np.empty((size, size, 3), np.uint8)
        canvas[:] = edge_colour(rgb)
    else:
        raise ValueError(f"unknown pad fill {fill!r}; choose from {PAD_FILLS}")
    ox, oy = (size - rw) // 2, (size - rh) // 2
    canvas[oy:oy + rh, ox:ox + rw] = resized
    return canvas, SquareTransform(size, (rw / w, rh / h), (float(ox), float(oy)), (w, h), "pad", fill)


def _window_start(length: int, side: int, lo: float, hi: float, keep_start: bool) -> int:
    """Where a window of ``side`` on an axis of ``length`` starts so that [lo, hi] is centred in it."""
    if side >= length:
        return 0
    if keep_start and hi - lo > side:
        start = lo - 0.05 * side  # the subject is longer than the window: keep its top
    else:
        start = (lo + hi) / 2 - side / 2
    return int(round(min(max(start, 0), length - side)))


def crop_square(rgb: np.ndarray, size: int, subject_box=None) -> tuple[np.ndarray, SquareTransform]:
    """Centre crop, or the window around ``subject_box`` ([x0, y0, x1, y1] source pixels)."""
    h, w = rgb.shape[:2]
    side = min(w, h)
    if subject_box is None:
        x0, y0 = (w - side) // 2, (h - side) // 2
        fit = "crop"
    else:
        bx0, by0, bx1, by1 = subject_box
        x0 = _window_start(w, side, bx0, bx1, keep_start=False)
        y0 = _window_start(h, side, by0, by1, keep_start=True)
        fit = "subject"
    window = np.ascontiguousarray(rgb[y0:y0 + side, x0:x0 + side])
    s = size / side
    return resize(window, size, size), SquareTransform(size, (s, s), (-x0 * s, -y0 * s), (w, h), fit)


# --------------------------------------------------------------------------------------------
# Subject detection (for --fit subject)
# --------------------------------------------------------------------------------------------
@cache
def _cascade(name: str):
    path = cv2.data.haarcascades + name
    cascade = cv2.CascadeClassifier(path)
    return None if cascade.empty() else cascade


def detect_subject(rgb: np.ndarray) -> tuple[list[int], str]:
    """The subject's box [x0, y0, x1, y1] in source pixels and how it was found.

    Largest face, grown to head-and-shoulders; else the largest upper or full body; else the box
    around the middle 80% of the image's edge energy (where the drawing is)."""
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    scale = min(1.0, 640 / max(w, h))  # detection is fast enough at <= 640 px
    small = cv2.resize(grey, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else grey
    small = cv2.equalizeHist(small)
    min_side = max(16, int(min(small.shape) * 0.06))
    for name, kind, grow in (("haarcascade_frontalface_default.xml", "face", (1.0, 0.6, 1.0, 2.5)),
                             ("haarcascade_upperbody.xml", "upper_body", (0.1, 0.1, 0.1, 0.3)),
                             ("haarcascade_fullbody.xml", "full_body", (0.05, 0.05, 0.05, 0.05))):
        cascade = _cascade(name)
        if cascade is None:
            continue
        found = cascade.detectMultiScale(small, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        if len(found):
            x, y, bw, bh = max(found, key=lambda b: b[2] * b[3]) / scale
            gl, gt, gr, gb = grow
            box = [x - gl * bw, y - gt * bh, x + bw * (1 + gr), y + bh * (1 + gb)]
            return [int(max(0, box[0])), int(max(0, box[1])), int(min(w, box[2])), int(min(h, box[3]))], kind
    energy = np.abs(cv2.Sobel(small, cv2.CV_32F, 1, 0)) + np.abs(cv2.Sobel(small, cv2.CV_32F, 0, 1))
    cols, rows = energy.sum(axis=0), energy.sum(axis=1)
    if cols.sum() <= 0:
        return [0, 0, w, h], "whole"

    def span(profile: np.ndarray) -> tuple[float, float]:
        c = np.cumsum(profile) / profile.sum()
        return float(np.searchsorted(c, 0.1)), float(np.searchsorted(c, 0.9) + 1)

    (x0, x1), (y0, y1) = span(cols), span(rows)
    return [int(x0 / scale), int(y0 / scale), int(min(w, x1 / scale)), int(min(h, y1 / scale))], "edges"


def make_square(rgb: np.ndarray, size: int, fit: str = "pad", pad_fill: str = "edge",
                subject_box=None) -> tuple[np.ndarray, SquareTransform]:
    """The square image and its transform, for any of ``FITS``."""
    if fit == "pad":
        return pad_square(rgb, size, pad_fill)
    if fit == "crop":
        return crop_square(rgb, size)
    if fit == "subject":
        if subject_box is None:
            subject_box, _ = detect_subject(rgb)
        return crop_square(rgb, size, subject_box)
    raise ValueError(f"unknown fit {fit!r}; choose from {FITS}")
