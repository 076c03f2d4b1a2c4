"""Indoor and outdoor scenery behind the figure, drawn in the figure's own perspective.

One ground-plane camera model ties everything together: a horizon row ``hy`` (set by the camera
angle) and ``g``, pixels per head unit per pixel below the horizon, fixed so that the figure's feet
stand on the ground at its own scale. A floor texture, a tree on the horizon and a window on a wall
then all shrink toward the horizon at the rate the figure implies, so a long shot looks long and a
close-up shows a blurred wall behind a large head.

All drawing is on float32 RGB arrays (0..255); every random choice comes from the ``rng`` passed in.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from skimage import data

FOCAL = 1.2  # focal length in frame heights: a normal lens, for how fast the floor foreshortens

SKIES = {
    "day": ((72, 118, 190), (188, 210, 232)),
    "overcast": ((140, 146, 155), (208, 209, 212)),
    "dusk": ((58, 62, 112), (236, 162, 112)),
    "haze": ((150, 170, 192), (226, 226, 214)),
}
WALLS = [(214, 203, 180), (186, 198, 180), (170, 182, 196), (118, 92, 70), (228, 226, 220), (196, 170, 150)]


@dataclass(frozen=True)
class Ground:
    """The camera's ground plane in canvas pixels (see the module docstring)."""

    width: int
    height: int
    hy: float          # horizon row; may lie above or below the canvas
    cx: float          # vanishing point column
    g: float           # px per head unit per px below the horizon
    head_px: float     # the figure's scale at its own depth
    top_y: float       # the figure's head top, for the overhead (bird's-eye) mapping

    def px_per_unit(self, y: float) -> float:
        return max(self.g * (y - self.hy), 1e-3)


@lru_cache(maxsize=1)
def _skimage_textures() -> dict[str, np.ndarray]:
    return {name: getattr(data, name)().astype(np.float32) / 255.0 for name in ("brick", "grass", "gravel")}


def _tint(gray: np.ndarray, colour, contrast: float = 0.9) -> np.ndarray:
    """A grey texture as a colour texture around ``colour``."""
    detail = (gray - float(gray.mean())) * contrast + 1.0
    return np.clip(detail[..., None] * np.asarray(colour, np.float32), 0, 255)


def wood_texture(rng: np.random.Generator) -> np.ndarray:
    """Floor planks running away from the camera: per-plank colour plus streaky grain."""
    size, plank = 256, 32
    base = np.array(rng.choice([(150, 100, 60), (120, 80, 50), (175, 135, 90), (95, 65, 45)]), np.float32)
    grain = cv2.GaussianBlur(rng.normal(0, 1, (size, size)).astype(np.float32), (0, 0), sigmaX=0.7, sigmaY=9)
    shades = rng.uniform(0.82, 1.12, size // plank).repeat(plank)
    tex = base[None, None, :] * (shades[None, :, None] + 0.12 * grain[..., None])
    tex[:, ::plank] *= 0.55  # the gaps between planks
    return np.clip(tex, 0, 255)


def tile_texture(rng: np.random.Generator) -> np.ndarray:
    size, step = 256, 64
    a = np.array(rng.choice([(200, 200, 195), (180, 170, 150), (160, 175, 180)]), np.float32)
    yy, xx = np.mgrid[0:size, 0:size]
    checker = ((xx // step + yy // step) % 2).astype(np.float32)[..., None]
    tex = a * (0.92 + 0.1 * checker)
    tex[(xx % step < 3) | (yy % step < 3)] *= 0.6
    return tex


def ground_texture(rng: np.random.Generator, location: str) -> tuple[np.ndarray, float]:
    """(texture, texels per head unit) for the floor or the ground."""
    textures = _skimage_textures()
    if location == "indoor":
        pick = rng.integers(3)
        if pick == 0:
            return wood_texture(rng), 48.0
        if pick == 1:
            return tile_texture(rng), 40.0
        return _tint(cv2.GaussianBlur(textures["gravel"], (0, 0), 2), (120, 60, 55), 1.5), 60.0
    pick = rng.integers(3)
    if pick == 0:
        return _tint(textures["grass"], rng.choice([(80, 112, 50), (105, 118, 60), (70, 95, 55)]), 1.1), 50.0
    if pick == 1:
        return _tint(textures["gravel"], (132, 122, 106), 1.0), 70.0
    return _tint(textures["brick"], (150, 110, 90), 0.8), 24.0


def _mip_levels(texture: np.ndarray) -> list[np.ndarray]:
    return [texture] + [cv2.GaussianBlur(texture, (0, 0), s) for s in (1.0, 2.0, 4.0)]


def _sample(levels: list[np.ndarray], u: np.ndarray, v: np.ndarray, footprint: np.ndarray) -> np.ndarray:
    """Texture lookup with wrap-around and a blur level per pixel chosen by how many texels it spans."""
    size = levels[0].shape[0]
    mu, mv = np.mod(u, size).astype(np.float32), np.mod(v, size).astype(np.float32)
    level = np.clip(np.log2(np.maximum(footprint, 1e-6)), 0, 3)[..., None]
    out = np.zeros(u.shape + (3,), np.float32)
    for i, tex in enumerate(levels):
        weight = np.clip(1.0 - np.abs(level - i), 0, 1)
        if float(weight.max()) > 0:
            out += weight * cv2.remap(tex, mu, mv, cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)
    return out


def ground_plane(ground: Ground, texture: np.ndarray, tpu: float, overhead: bool = False) -> np.ndarray:
    """The textured ground for every pixel (the caller keeps the rows it needs)."""
    w, h = ground.width, ground.height
    xs = np.arange(w, dtype=np.float32)[None, :]
    ys = np.arange(h, dtype=np.float32)[:, None]
    levels = _mip_levels(texture)
    if overhead:  # looking straight down: no horizon, one scale everywhere
        u = (xs - ground.cx) / ground.head_px * tpu + 0 * ys
        v = (ys - ground.top_y) / ground.head_px * tpu + 0 * xs
        return _sample(levels, u, v, np.full(u.shape, tpu / ground.head_px, np.float32))
    dz = np.maximum(ys - ground.hy, 0.5)
    camh = 1.0 / ground.g
    u = (xs - ground.cx) * camh / dz * tpu
    v = FOCAL * h * camh / dz * tpu + 0 * xs
    footprint = np.maximum(camh * tpu / dz, 0.4 * FOCAL * h * camh * tpu / dz ** 2) + 0 * xs
    return _sample(levels, u, v, footprint)


def sky(rng: np.random.Generator, w: int, h: int, hy: float, palette: str) -> np.ndarray:
    top, bottom = (np.asarray(c, np.float32) for c in SKIES[palette])
    t = np.clip((hy - np.arange(h, dtype=np.float32)) / (0.9 * h), 0, 1)[:, None, None]
    out = np.broadcast_to(bottom + (top - bottom) * t ** 0.7, (h, w, 3)).copy()
    if palette in ("day", "haze", "overcast"):
        clouds = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(2, 6))):
            centre = (int(rng.uniform(0, w)), int(rng.uniform(-0.1, 0.6) * h))
            axes = (int(rng.uniform(0.08, 0.25) * w), int(rng.uniform(0.03, 0.08) * h))
            cv2.ellipse(clouds, centre, axes, 0, 0, 360, float(rng.uniform(0.3, 0.6)), -1)
        clouds = cv2.GaussianBlur(clouds, (0, 0), 0.04 * w + 1)[..., None]
        out = out * (1 - clouds) + 245.0 * clouds
    return out


def fog(rgb: np.ndarray, ground: Ground, haze, strength: float = 0.75) -> np.ndarray:
    """Atmospheric haze: things near the horizon fade into the sky colour."""
    dz = np.maximum(np.arange(rgb.shape[0], dtype=np.float32) - ground.hy, 0)[:, None, None]
    amount = strength * np.exp(-dz / (0.12 * ground.height))
    return rgb * (1 - amount) + np.asarray(haze, np.float32) * amount


def shade_rect(rgb, x0, y0, x1, y1, colour, edge: float = 0.75) -> None:
    """A filled rectangle with a darker rim, the simplest way to make flat boxes read as objects."""
    p0, p1 = (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1)))
    cv2.rectangle(rgb, p0, p1, tuple(float(c) for c in colour), -1)
    rim = max(1, int(round(0.04 * min(abs(x1 - x0), abs(y1 - y0)))))
    cv2.rectangle(rgb, p0, p1, tuple(float(c) * edge for c in colour), rim)
