"""Paint out masked pixels (speech bubbles) from their surroundings: a push-pull pyramid fill, or OpenCV's.

``smooth`` (the default): the hole takes the colours around it, blended smoothly across it through an
image pyramid (no streaks). ``telea`` / ``ns``: OpenCV's inpainting, sharper at the hole's edge,
streaky in large holes (run at half size for large holes, then refined at full size along the edge).

Every method works on the part of the image around the holes only (their bounding box grown by half
its size, at least 32 px): what lies farther away never reaches the fill, and a 1024-px picture with
one bubble costs a few milliseconds instead of a whole-image pyramid.
"""
from __future__ import annotations

import cv2
import numpy as np

INPAINT_METHODS = ("smooth", "telea", "ns")


def _context_box(binary: np.ndarray) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the holes' bounding box grown by half its size (at least 32 px), clipped."""
    x, y, w, h = cv2.boundingRect(binary)
    grow_x, grow_y = max(32, w // 2), max(32, h // 2)
    H, W = binary.shape
    return max(0, x - grow_x), max(0, y - grow_y), min(W, x + w + grow_x), min(H, y + h + grow_y)


def inpaint(rgb: np.ndarray, mask: np.ndarray, method: str = "smooth") -> np.ndarray:
    """``rgb`` with the masked pixels (nonzero in ``mask``) painted out; the input when nothing is masked.
    Pixels outside the mask are returned unchanged."""
    if method not in INPAINT_METHODS:
        raise ValueError(f"unknown inpainting method {method!r}; choose from {INPAINT_METHODS}")
    binary = (mask > 0).astype(np.uint8)
    if not binary.any():
        return rgb
    x0, y0, x1, y1 = _context_box(binary)
    hole, part = binary[y0:y1, x0:x1], rgb[y0:y1, x0:x1]
    filled = _push_pull(part, hole) if method == "smooth" else _opencv(part, hole, method)
    out = rgb.copy()
    np.copyto(out[y0:y1, x0:x1], filled, where=hole[..., None] > 0)
    return out


def _opencv(rgb: np.ndarray, binary: np.ndarray, method: str) -> np.ndarray:
    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
    H, W = binary.shape
    if binary.sum() < 4000 or min(H, W) < 64:
        return cv2.inpaint(rgb, binary * 255, 3, flag)
    small = cv2.inpaint(cv2.resize(rgb, (W // 2, H // 2), interpolation=cv2.INTER_AREA),
                        cv2.resize(binary * 255, (W // 2, H // 2), interpolation=cv2.INTER_NEAREST), 3, flag)
    coarse = cv2.resize(small, (W, H), interpolation=cv2.INTER_LINEAR)
    out = rgb.copy()
    out[binary > 0] = coarse[binary > 0]
    band = binary & (1 - cv2.erode(binary, np.ones((9, 9), np.uint8)))
    return cv2.inpaint(out, band * 255, 3, flag)


def _push_pull(rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Fill ``hole`` by normalised averaging down an image pyramid and blending back up. Only the
    hole's pixels of the result are meaningful (the caller copies those): a hole pixel takes the
    blend of the level above, so the full-size level is never computed in floating point."""
    known = (1 - hole) * 255
    if min(hole.shape) <= 2:
        levels = [(cv2.bitwise_and(rgb, rgb, mask=known).astype(np.float32), known.astype(np.float32) / 255)]
    else:  # the first level down straight from 8 bits: the masked colours and the known share
        levels = [(cv2.pyrDown(cv2.bitwise_and(rgb, rgb, mask=known)).astype(np.float32),
                   cv2.pyrDown(known).astype(np.float32) / 255)]
    while min(levels[-1][1].shape) > 2 and levels[-1][1].min() == 0:
        c, k = levels[-1]
        levels.append((cv2.pyrDown(c), cv2.pyrDown(k)))
    c, k = levels[-1]
    value = c / np.maximum(k, 1e-6)[..., None]
    for c, k in reversed(levels[:-1]):
        up = cv2.pyrUp(value, dstsize=(k.shape[1], k.shape[0]))
        alpha = np.clip(k * 2.0, 0.0, 1.0)[..., None]
        value = alpha * (c / np.maximum(k, 1e-6)[..., None]) + (1.0 - alpha) * up
    if value.shape[:2] != hole.shape:
        value = cv2.pyrUp(value, dstsize=(hole.shape[1], hole.shape[0]))
    return cv2.convertScaleAbs(value)  # rounds and saturates to 8 bits
