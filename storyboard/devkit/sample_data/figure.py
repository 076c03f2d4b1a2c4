"""The one person in every sample image: a real face photo on a drawn body, framed by shot size.

The face is the portrait scikit-image bundles (``skimage.data.astronaut()``), so the face detectors a
later stage uses (OpenCV's Haar cascades) see a real face, not a drawing. The body under it is drawn
from a few polygons in *head units* (1 unit = top of the head to the chin; a figure is 7.5 units
tall), which makes framing exact: a shot size is a vertical span of the body.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from skimage import data

# Measured by hand on the 512x512 astronaut photo (Haar finds her face at x 177, y 66, 95x95 px).
_HEAD_TOP, _CHIN, _HEAD_CX = 15, 172, 227
HEAD_PX = _CHIN - _HEAD_TOP
# What the ground truth calls "the face": ear to ear, forehead to chin. Its height is 0.675 heads,
# and a Haar box is about 0.9 of it (Haar boxes stop above the chin).
_FACE_BOX = (177, 66, 272, 172)
FACE_UNITS = (_FACE_BOX[3] - _FACE_BOX[1]) / HEAD_PX
_CROP = (146, 6, 310, 204)  # x0, y0, x1, y1 of the cut-out in the photo
FIGURE_UNITS = 7.5
EYE_UNITS = (100 - _HEAD_TOP) / HEAD_PX

# Body outline in head units: x from the body's centre line, y down from the top of the head.
_TORSO = [(-0.32, 1.08), (-0.95, 1.28), (-1.0, 1.5), (-0.86, 2.0), (-0.7, 3.0), (-0.82, 3.8),
          (0.82, 3.8), (0.7, 3.0), (0.86, 2.0), (1.0, 1.5), (0.95, 1.28), (0.32, 1.08)]
_SHIRT = [(-0.3, 1.08), (0.3, 1.08), (0.0, 2.1)]
_LEG = [(-0.8, 3.7), (-0.04, 3.9), (-0.14, 5.6), (-0.2, 7.3), (-0.48, 7.3), (-0.58, 5.6)]


@lru_cache(maxsize=1)
def head_cutout() -> tuple[np.ndarray, np.ndarray]:
    """(RGB, alpha) of the astronaut's head and neck, cut from her pale studio backdrop.

    The mask is fixed geometry (hair ellipse, jaw ellipse, neck) minus backdrop-coloured pixels: no
    random or iterative segmentation, so every run cuts the same pixels."""
    photo = data.astronaut()
    hsv = cv2.cvtColor(photo, cv2.COLOR_RGB2HSV)
    yy, xx = np.mgrid[0:photo.shape[0], 0:photo.shape[1]]
    hair = ((xx - 227) / 76.0) ** 2 + ((yy - 90) / 77.0) ** 2 <= 1
    jaw = ((xx - 225) / 50.0) ** 2 + ((yy - 125) / 50.0) ** 2 <= 1
    core = ((xx - 225) / 44.0) ** 2 + ((yy - 122) / 52.0) ** 2 <= 1
    neck = (xx >= 198) & (xx <= 256) & (yy >= 150) & (yy <= 200)
    backdrop = (hsv[..., 1] < 60) & (hsv[..., 2] > 150)
    mask = (((hair | jaw) & ~backdrop) | core | neck).astype(np.uint8)
    mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (9, 9)))
    _, labels, stats, _ = cv2.connectedComponentsWithStats(mask)
    mask = (labels == 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))).astype(np.uint8)
    holes = mask.copy()
    cv2.floodFill(holes, None, (0, 0), 2)
    mask[holes == 0] = 1
    x0, y0, x1, y1 = _CROP
    alpha = cv2.GaussianBlur(mask[y0:y1, x0:x1].astype(np.float32), (3, 3), 0)
    return photo[y0:y1, x0:x1].copy(), alpha


@dataclass(frozen=True)
class Look:
    """How this figure differs from the others: clothes, skin light, a mirrored photo, arm pose."""

    jacket: tuple[int, int, int]
    shirt: tuple[int, int, int]
    pants: tuple[int, int, int]
    shoes: tuple[int, int, int]
    gain: tuple[float, float, float]  # per-channel colour/brightness jitter of the photo
    flip: bool
    elbow: float  # arm pose offsets, head units
    wrist: float


def random_look(rng: np.random.Generator) -> Look:
    jackets = [(40, 45, 60), (95, 70, 50), (120, 30, 35), (60, 80, 60), (150, 140, 120), (30, 30, 32),
               (70, 90, 130), (170, 160, 150), (110, 100, 40)]
    pants = [(35, 35, 45), (60, 55, 50), (90, 85, 80), (40, 50, 75), (120, 105, 85)]
    brightness = rng.uniform(0.82, 1.12)
    gain = tuple(float(brightness * rng.uniform(0.94, 1.06)) for _ in range(3))
    return Look(
        jacket=jackets[rng.integers(len(jackets))], shirt=(22, 22, 26),  # continues the photo's black collar
        pants=pants[rng.integers(len(pants))], shoes=(25, 20, 18), gain=gain,
        flip=bool(rng.random() < 0.5), elbow=float(rng.uniform(-0.05, 0.18)), wrist=float(rng.uniform(-0.1, 0.3)),
    )


@dataclass(frozen=True)
class Placement:
    """Where the figure sits on a canvas: head height in px, centre line x, top of the head y."""

    head_px: float
    center_x: float
    top_y: float

    def to_px(self, points) -> np.ndarray:
        pts = np.asarray(points, dtype=np.float64)
        return np.stack([self.center_x + pts[:, 0] * self.head_px, self.top_y + pts[:, 1] * self.head_px], axis=1)

    @property
    def feet_y(self) -> float:
        return self.top_y + FIGURE_UNITS * self.head_px


@dataclass
class FigureLayer:
    rgb: np.ndarray      # HxWx3 uint8, straight (not premultiplied) colour
    alpha: np.ndarray    # HxW float32 0..1
    face: np.ndarray     # HxW bool: the face box as drawn (before any warp it is a rectangle)


def _poly(canvas: np.ndarray, alpha: np.ndarray, pts: np.ndarray, colour) -> None:
    # cv2 takes integer vertices; a 4-bit fractional shift keeps small (far away) figures smooth.
    ipts = np.round(pts * 16).astype(np.int32).reshape(-1, 1, 2)
    cv2.fillPoly(canvas, [ipts], colour, cv2.LINE_AA, shift=4)
    cv2.fillPoly(alpha, [ipts], 255, cv2.LINE_AA, shift=4)


def _limb(canvas, alpha, place: Placement, pts, width: float, colour) -> None:
    px = place.to_px(pts)
    thickness = max(1, int(round(width * place.head_px)))
    for a, b in zip(px[:-1], px[1:]):
        p, q = tuple(int(v) for v in np.round(a)), tuple(int(v) for v in np.round(b))
        cv2.line(canvas, p, q, colour, thickness, cv2.LINE_AA)
        cv2.line(alpha, p, q, 255, thickness, cv2.LINE_AA)


def _skin(look: Look) -> tuple[int, int, int]:
    base = (222, 168, 148)  # the astronaut's cheek colour, so hands match the photo
    return tuple(int(min(255, c * g)) for c, g in zip(base, look.gain))


def draw_body(size: tuple[int, int], place: Placement, look: Look) -> tuple[np.ndarray, np.ndarray]:
    """Clothing-coloured torso, arms, legs, shoes and hands; returns (RGB, alpha)."""
    w, h = size
    rgb = np.zeros((h, w, 3), np.uint8)
    alpha = np.zeros((h, w), np.uint8)  # 8-bit: cv2 anti-aliases only 8-bit images
    for side in (-1, 1):
        leg = [(-x, y) for x, y in _LEG] if side > 0 else _LEG
        _poly(rgb, alpha, place.to_px(leg), look.pants)
        centre = place.to_px([(side * 0.36, 7.36)])[0]
        axes = (max(1, int(0.22 * place.head_px)), max(1, int(0.1 * place.head_px)))
        cv2.ellipse(rgb, tuple(int(v) for v in centre), axes, 0, 0, 360, look.shoes, -1, cv2.LINE_AA)
        cv2.ellipse(alpha, tuple(int(v) for v in centre), axes, 0, 0, 360, 255, -1, cv2.LINE_AA)
    _poly(rgb, alpha, place.to_px(_TORSO), look.jacket)
    _poly(rgb, alpha, place.to_px(_SHIRT), look.shirt)
    sleeve = tuple(int(c * 0.82) for c in look.jacket)
    for side in (-1, 1):
        arm = [(side * 0.9, 1.42), (side * (1.02 + look.elbow), 2.85), (side * (0.96 + look.wrist), 3.95)]
        _limb(rgb, alpha, place, arm, 0.3, sleeve)
        hand = place.to_px([(side * (0.96 + look.wrist), 4.1)])[0]
        radius = max(1, int(0.14 * place.head_px))
        cv2.circle(rgb, tuple(int(v) for v in hand), radius, _skin(look), -1, cv2.LINE_AA)
        cv2.circle(alpha, tuple(int(v) for v in hand), radius, 255, -1, cv2.LINE_AA)
    # Light from one side gives the flat shapes some volume.
    xs = (np.arange(w, dtype=np.float32) - place.center_x) / max(place.head_px, 1.0)
    shade = np.clip(1.0 - 0.12 * xs * (1 if look.flip else -1), 0.7, 1.15)
    rgb = np.clip(rgb.astype(np.float32) * shade[None, :, None], 0, 255).astype(np.uint8)
    return rgb, alpha.astype(np.float32) / 255.0


def _head_transform(place: Placement, flip: bool, prescale: float) -> np.ndarray:
    """Affine map from the (pre-scaled) cut-out's pixels to canvas pixels."""
    s = place.head_px / HEAD_PX / prescale
    x0, y0 = _CROP[0] * prescale, _CROP[1] * prescale
    cx, top = _HEAD_CX * prescale, _HEAD_TOP * prescale
    sign = -1.0 if flip else 1.0
    return np.array([[sign * s, 0.0, place.center_x + sign * s * (x0 - cx)],
                     [0.0, s, place.top_y + s * (y0 - top)]])


def draw_figure(size: tuple[int, int], place: Placement, look: Look) -> FigureLayer:
    """The whole person on a transparent canvas of ``size`` (w, h), plus the face-box mask."""
    w, h = size
    rgb, alpha = draw_body(size, place, look)
    photo, photo_alpha = head_cutout()
    photo = np.clip(photo.astype(np.float32) * np.array(look.gain, np.float32), 0, 255).astype(np.uint8)
    # warpAffine has no area filter: shrink first so far-away heads are not aliased to noise.
    prescale = min(1.0, place.head_px / HEAD_PX)
    if prescale < 1.0:
        dsize = (max(1, round(photo.shape[1] * prescale)), max(1, round(photo.shape[0] * prescale)))
        prescale = dsize[0] / photo.shape[1]
        photo = cv2.resize(photo, dsize, interpolation=cv2.INTER_AREA)
        photo_alpha = cv2.resize(photo_alpha, dsize, interpolation=cv2.INTER_AREA)
    matrix = _head_transform(place, look.flip, prescale)
    head = cv2.warpAffine(photo, matrix, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    head_alpha = cv2.warpAffine(photo_alpha, matrix, (w, h), flags=cv2.INTER_LINEAR, borderValue=0)
    a = head_alpha[..., None]
    rgb = (head * a + rgb * (1 - a)).astype(np.uint8)
    alpha = np.maximum(alpha, head_alpha)
    face = np.zeros((h, w), np.uint8)
    corners = np.array([[_FACE_BOX[0], _FACE_BOX[1]], [_FACE_BOX[2], _FACE_BOX[3]]], np.float64) - _CROP[:2]
    mapped = corners * prescale @ matrix[:, :2].T + matrix[:, 2]
    (x0, x1), (y0, y1) = sorted(mapped[:, 0]), sorted(mapped[:, 1])
    cv2.rectangle(face, (int(np.floor(x0)), int(np.floor(y0))), (int(np.ceil(x1)) - 1, int(np.ceil(y1)) - 1), 1, -1)
    return FigureLayer(rgb, alpha, face.astype(bool))
