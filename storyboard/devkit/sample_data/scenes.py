"""One composed shot: background + figure at a shot size and camera angle, then the film or conti look.

Framing is exact by construction: each shot size is a vertical span of the 7.5-head body (from the
eyes-and-nose strip of an extreme close-up to a body a tenth of the frame in an extreme long shot),
and the head's pixel height follows from the span and the frame height. Ground-truth boxes are not
computed from this plan, though: they are read off the figure's masks after every warp (keystone,
dutch rotation), so they are exactly where the pixels are.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from PIL import Image, ImageDraw

from storyboard.devkit.sample_data.backgrounds import Ground
from storyboard.devkit.sample_data.figure import (
    EYE_UNITS,
    FACE_UNITS,
    FIGURE_UNITS,
    Placement,
    draw_figure,
    random_look,
)
from storyboard.devkit.sample_data.fonts import korean_font
from storyboard.devkit.sample_data.scenery import indoor, outdoor

# How far the camera tilts the figure: (bottom width, top width, height) factors of a keystone warp.
KEYSTONE = {"high": (0.86, 1.0, 0.94), "low": (1.0, 0.86, 0.94),
            "birds_eye": (0.6, 1.0, 0.72), "worms_eye": (1.0, 0.6, 0.76)}
# Background blur (in frame heights) by shot size: the shallow focus of close shots.
DEPTH_OF_FIELD = {"extreme_close_up": 0.012, "close_up": 0.009, "medium_close_up": 0.006, "medium": 0.004,
                  "medium_long": 0.002}


@dataclass
class Scene:
    rgb: np.ndarray            # HxWx3 uint8
    face: np.ndarray           # HxW bool, the face box as drawn
    person: np.ndarray         # HxW bool, the whole figure
    info: dict = field(default_factory=dict)


def frame_figure(rng: np.random.Generator, shot: str, w: int, h: int) -> Placement:
    """Head size and position that frame the figure at ``shot`` in a w x h frame."""
    u = rng.uniform
    if shot == "extreme_close_up":      # eyes and nose; the face overfills the frame
        top, span = u(0.2, 0.3), u(0.42, 0.55)
    elif shot == "close_up":            # head and neck, face 42-53 % of the height
        top, span = u(-0.12, 0.0), FACE_UNITS / u(0.42, 0.53)
    elif shot == "medium_close_up":     # head and chest, face 25-30 %
        top, span = u(-0.25, -0.08), FACE_UNITS / u(0.25, 0.30)
    elif shot == "medium":              # waist up, face 15.5-20 %
        top, span = u(-0.35, -0.15), FACE_UNITS / u(0.155, 0.20)
    elif shot == "medium_long":         # knees up
        top = u(-0.6, -0.3)
        span = u(5.3, 5.9) - top
    elif shot == "full":                # whole body, 80-90 % of the height
        span = FIGURE_UNITS / u(0.8, 0.9)
        top = -(span - FIGURE_UNITS) * u(0.3, 0.6)
    elif shot == "long":                # whole body, 35-50 %, feet on the lower third
        span = FIGURE_UNITS / u(0.35, 0.5)
        top = FIGURE_UNITS - u(0.65, 0.88) * span
    elif shot == "extreme_long":        # a small figure, 10-20 %, in a wide landscape
        span = FIGURE_UNITS / u(0.1, 0.2)
        top = FIGURE_UNITS - u(0.7, 0.9) * span
    else:
        raise ValueError(f"unknown shot size {shot!r}")
    head_px = h / span
    spread = {"extreme_close_up": 0.06, "close_up": 0.12, "medium_close_up": 0.14}.get(shot, 0.22)
    if shot in ("long", "extreme_long"):
        spread = 0.32
    if w < h:
        spread *= 0.5
    return Placement(head_px=head_px, center_x=w * (0.5 + u(-spread, spread)), top_y=-top * head_px)


def horizon_row(rng: np.random.Generator, angle: str, place: Placement, h: int) -> float:
    """Where the horizon (outdoors) or the eye line of the room (indoors) falls, by camera angle."""
    if angle in ("eye_level", "dutch"):  # through the figure's eyes, kept inside the frame
        eye = place.top_y + EYE_UNITS * place.head_px
        return float(np.clip(eye, 0.3 * h, 0.62 * h) + rng.normal(0, 0.03 * h))
    if angle == "high":                  # looking down: horizon high or above the frame
        return float(rng.uniform(-0.4, 0.18) * h)
    if angle == "low":                   # looking up: horizon low or below the frame
        return float(rng.uniform(0.82, 1.3) * h)
    return -10.0 * h if angle == "birds_eye" else 11.0 * h


def _keystone(angle: str, place: Placement, frame_mid: float) -> np.ndarray:
    """Perspective of a tilted camera on the figure: the end of the body farther from the camera
    narrows and the body shortens. The warp pivots on the body row at mid-frame, so what the shot
    frames stays framed (a close-up's face does not slide out of the picture)."""
    bottom, top, height = KEYSTONE.get(angle, (1.0, 1.0, 1.0))
    y0, y1 = place.top_y, place.feet_y
    pivot = float(np.clip(frame_mid, y0, y1))
    along = lambda y: (y - y0) / (y1 - y0)
    width = lambda y: top + (bottom - top) * along(y)
    scale_top, scale_bottom = width(y0) / width(pivot), width(y1) / width(pivot)
    r = 2.0 * place.head_px
    cx = place.center_x
    src = np.float32([[cx - r, y0], [cx + r, y0], [cx + r, y1], [cx - r, y1]])
    d0, d1 = pivot + (y0 - pivot) * height, pivot + (y1 - pivot) * height
    dst = np.float32([[cx - r * scale_top, d0], [cx + r * scale_top, d0],
                      [cx + r * scale_bottom, d1], [cx - r * scale_bottom, d1]])
    return cv2.getPerspectiveTransform(src, dst)


def _shadow(bg: np.ndarray, matrix: np.ndarray, place: Placement) -> None:
    feet = matrix @ np.array([place.center_x, place.feet_y - 0.08 * place.head_px, 1.0])
    x, y = feet[:2] / feet[2]
    h, w = bg.shape[:2]
    if not (-w < x < 2 * w and -0.2 * h < y < 1.2 * h):
        return
    mask = np.zeros((h, w), np.float32)
    axes = (max(1, int(1.3 * place.head_px)), max(1, int(0.3 * place.head_px)))
    cv2.ellipse(mask, (int(x), int(y)), axes, 0, 0, 360, 0.45, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.6, 0.15 * place.head_px))
    bg *= (1.0 - mask)[..., None]


def _canvas(w: int, h: int, degrees: float) -> tuple[int, int, float, float]:
    """A canvas that still covers the whole frame once turned by ``degrees`` (dutch angle)."""
    if not degrees:
        return w, h, 0.0, 0.0
    c, s = abs(math.cos(math.radians(degrees))), abs(math.sin(math.radians(degrees)))
    cw, ch = int(math.ceil(w * c + h * s)) + 4, int(math.ceil(w * s + h * c)) + 4
    return cw, ch, (cw - w) / 2, (ch - h) / 2


def render_scene(rng: np.random.Generator, shot: str, angle: str, location: str, size: tuple[int, int]) -> Scene:
    """The colour scene (before any film or conti look) with its face and person masks."""
    w, h = size
    frame_place = frame_figure(rng, shot, w, h)
    hy = horizon_row(rng, angle, frame_place, h)
    degrees = float(rng.choice([-1, 1]) * rng.uniform(10, 20)) if angle == "dutch" else 0.0
    cw, ch, ox, oy = _canvas(w, h, degrees)
    place = Placement(frame_place.head_px, frame_place.center_x + ox, frame_place.top_y + oy)
    feet_dz = max(place.feet_y - (hy + oy), 0.15 * h)
    ground = Ground(cw, ch, hy + oy, place.center_x + rng.uniform(-0.3, 0.3) * w, place.head_px / feet_dz,
                    place.head_px, place.top_y)
    if location == "outdoor":
        bg, features = outdoor(rng, ground, angle)
    else:
        # A close camera sits near the figure, so the back wall is relatively far and small.
        close = shot in ("extreme_close_up", "close_up", "medium_close_up")
        depth = rng.uniform(0.12, 0.3) if close else rng.uniform(0.4, 0.85)
        bg, features = indoor(rng, ground, angle, depth)
    blur = DEPTH_OF_FIELD.get(shot, 0.0) * h
    if blur > 0.3:
        bg = cv2.GaussianBlur(bg, (0, 0), blur)
    # The keystone pulls in body parts from beyond the frame edges: draw the figure with a margin.
    px, py = (int(0.3 * cw), int(0.3 * ch)) if angle in KEYSTONE else (0, 0)
    padded = Placement(place.head_px, place.center_x + px, place.top_y + py)
    unpad = np.array([[1.0, 0, -px], [0, 1.0, -py], [0, 0, 1.0]])
    matrix = unpad @ _keystone(angle, padded, py + oy + h / 2)
    if angle == "birds_eye" or (angle != "worms_eye" and place.feet_y > ground.hy):  # feet on visible ground
        _shadow(bg, matrix, padded)
    layer = draw_figure((cw + 2 * px, ch + 2 * py), padded, random_look(rng))
    warp = lambda img, flags: cv2.warpPerspective(img, matrix, (cw, ch), flags=flags, borderValue=0)
    rgb, alpha = warp(layer.rgb, cv2.INTER_LINEAR), warp(layer.alpha, cv2.INTER_LINEAR)
    face = warp(layer.face.astype(np.uint8), cv2.INTER_NEAREST)
    out = bg * (1 - alpha[..., None]) + rgb.astype(np.float32) * alpha[..., None]
    if degrees:
        turn = cv2.getRotationMatrix2D((cw / 2, ch / 2), degrees, 1.0)
        turn[:, 2] -= (ox, oy)
        out = cv2.warpAffine(out, turn, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        alpha = cv2.warpAffine(alpha, turn, (w, h), flags=cv2.INTER_LINEAR)
        face = cv2.warpAffine(face, turn, (w, h), flags=cv2.INTER_NEAREST)
    info = {
        "face_height_frac": round(FACE_UNITS * place.head_px / h, 4),
        "person_height_frac": round(FIGURE_UNITS * place.head_px / h, 4),
        "horizon_frac": round(hy / h, 3) if angle not in ("birds_eye", "worms_eye") else None,
        "rotation_deg": round(degrees, 2),
        "features": features,
    }
    rgb8 = np.clip(out, 0, 255).astype(np.uint8)
    return Scene(rgb8, face.astype(bool), alpha > 0.5, info)


GRADES = {  # per-channel gains and a (shadow tint, highlight tint) split tone
    "neutral": ((1.0, 1.0, 1.0), (0, 0, 0), (0, 0, 0)),
    "warm": ((1.07, 1.0, 0.88), (4, 0, -4), (6, 2, -6)),
    "cool": ((0.92, 0.99, 1.08), (-4, 0, 6), (0, 2, 6)),
    "teal_orange": ((1.02, 1.0, 0.98), (-10, 4, 12), (14, 4, -10)),
    "green": ((0.94, 1.05, 0.92), (-4, 6, -2), (0, 4, -4)),
    "faded": ((1.0, 1.0, 1.0), (18, 18, 20), (-8, -8, -6)),
}


def film_grade(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """Colour grade, contrast, vignette and grain: what makes a render read as a film still."""
    h, w = rgb.shape[:2]
    gains, shadow, highlight = GRADES[str(rng.choice(list(GRADES)))]
    x = rgb.astype(np.float32) * np.float32(gains)
    lum = x.mean(axis=2, keepdims=True) / 255.0
    x += (1 - lum) * np.float32(shadow) + lum * np.float32(highlight)
    x = 128 + (x - 128) * rng.uniform(0.95, 1.15)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    x *= (1 - rng.uniform(0.08, 0.3) * r2 / 2)[..., None]
    x += rng.normal(0, rng.uniform(1.5, 4.0), (h, w, 1)).astype(np.float32)
    return np.clip(x, 0, 255).astype(np.uint8)


def conti_sketch(rng: np.random.Generator, rgb: np.ndarray) -> np.ndarray:
    """A pencil/ink storyboard drawing of the scene: outlines plus hatching for the dark areas."""
    h, w = rgb.shape[:2]
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32) / 255.0
    g1, g2 = cv2.GaussianBlur(gray, (0, 0), 1.0), cv2.GaussianBlur(gray, (0, 0), 1.8)
    dog = g1 - 0.98 * g2
    ink = np.where(dog > -0.01, 1.0, 1.0 + np.tanh(40 * (dog + 0.01))).astype(np.float32)
    edges = cv2.Canny((g1 * 255).astype(np.uint8), 30, 90).astype(np.float32) / 255.0
    tone = cv2.GaussianBlur(gray, (0, 0), 2.5)
    yy, xx = np.mgrid[0:h, 0:w]
    step = int(rng.integers(4, 7))
    wobble = (2 * np.sin(yy / rng.uniform(9, 15))).astype(np.int64)  # a hand's drift along the strokes
    hatch1 = ((xx + yy + wobble) % step == 0) & (tone < rng.uniform(0.45, 0.6))
    hatch2 = ((xx - yy + wobble) % step == 0) & (tone < rng.uniform(0.22, 0.32))
    paper = 0.95 + rng.normal(0, 0.012, (h, w)).astype(np.float32)
    strength = rng.uniform(0.45, 0.7)
    out = paper * ink * (1 - strength * hatch1) * (1 - strength * hatch2) * (1 - 0.75 * edges)
    if rng.random() < 0.5:  # a grey marker wash, as many storyboard artists use
        out *= 0.82 + 0.18 * np.round(tone * 3) / 3
    return np.clip(out * 255, 0, 255).astype(np.uint8)


def conti_page(rng: np.random.Generator, sketch: np.ndarray, size: tuple[int, int], panel: tuple[int, int, int, int],
               note: str) -> np.ndarray:
    """The storyboard page: paper, the drawing in a ruled panel, a scene note under it."""
    w, h = size
    x0, y0, x1, y1 = panel
    page = np.full((h, w), 247, np.uint8)
    page[y0:y1, x0:x1] = sketch
    image = Image.fromarray(page, "L")
    draw = ImageDraw.Draw(image)
    draw.rectangle([x0, y0, x1 - 1, y1 - 1], outline=20, width=int(rng.integers(2, 4)))
    font = korean_font(max(10, int((h - y1) * 0.5)))
    draw.text((x0 + 4, y1 + (h - y1) * 0.2), note, fill=40, font=font)
    return np.asarray(image)
