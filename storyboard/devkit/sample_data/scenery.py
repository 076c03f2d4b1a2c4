"""Outdoor (sky, ground, trees, buildings, a road or river) and indoor (walls, floor, window, door,
furniture) backgrounds on the ground-plane camera of ``backgrounds.Ground``.

Each builder returns the background and the list of things it drew (``features``), which the
captions use so that a record's text can mention the river or the window that is really there.
"""
from __future__ import annotations

import cv2
import numpy as np

from storyboard.devkit.sample_data.backgrounds import (
    SKIES,
    WALLS,
    Ground,
    fog,
    ground_plane,
    ground_texture,
    shade_rect,
    sky,
)


def _mix(colour, haze, amount: float) -> tuple[float, float, float]:
    return tuple(float(c) * (1 - amount) + float(z) * amount for c, z in zip(colour, haze))


def _tree(rgb, x: float, base: float, scale: float, colour, trunk) -> None:
    """A trunk and a cluster of round crowns; ``scale`` is px per head unit at the tree's depth."""
    height = 26 * scale
    shade_rect(rgb, x - 0.5 * scale, base - 0.45 * height, x + 0.5 * scale, base, trunk)
    for dx, dy, r in ((0, 0.62, 0.3), (-0.18, 0.52, 0.22), (0.2, 0.5, 0.22), (0.05, 0.8, 0.22)):
        centre = (int(round(x + dx * height)), int(round(base - dy * height)))
        cv2.circle(rgb, centre, max(1, int(r * height)), colour, -1, cv2.LINE_AA)


def _building(rng, rgb, x: float, base: float, scale: float, colour) -> None:
    width, height = rng.uniform(12, 36) * scale, rng.uniform(28, 90) * scale
    shade_rect(rgb, x - width / 2, base - height, x + width / 2, base, colour, 0.85)
    step = 3.2 * scale
    if step < 3:  # too far away for windows to show
        return
    window = tuple(c * 0.62 for c in colour)
    for wy in np.arange(base - height + step, base - step, step):
        for wx in np.arange(x - width / 2 + step * 0.6, x + width / 2 - step * 0.6, step):
            cv2.rectangle(rgb, (int(wx), int(wy)), (int(wx + step * 0.45), int(wy + step * 0.5)), window, -1)


def _horizon_objects(rng, rgb, ground: Ground, haze) -> list[str]:
    """Trees and buildings standing on the ground, farthest first so nearer ones cover them."""
    w, h = ground.width, ground.height
    kinds = ["tree", "building"] if rng.random() < 0.5 else ["tree"]
    placed = sorted((float(rng.uniform(0.004, 0.35)) ** 1.3 * h, kinds[int(rng.integers(len(kinds)))],
                     float(rng.uniform(-0.1, 1.1) * w)) for _ in range(int(rng.integers(3, 9))))
    for dz, kind, x in placed:
        base, scale = ground.hy + dz, ground.g * dz
        amount = 0.7 * float(np.exp(-dz / (0.12 * h)))
        if kind == "tree":
            green = rng.choice([(48, 72, 40), (60, 86, 44), (38, 58, 42)])
            _tree(rgb, x, base, scale, _mix(green, haze, amount), _mix((70, 52, 38), haze, amount))
        else:
            stone = rng.choice([(150, 146, 140), (176, 160, 140), (120, 120, 128), (190, 184, 170)])
            _building(rng, rgb, x, base, scale, _mix(stone, haze, amount))
    return sorted(set(kinds))


def _path(rng, plane, ground: Ground) -> str | None:
    """A road or a river running to the horizon: a band of the ground plane, so it converges."""
    if rng.random() < 0.45 or ground.hy >= ground.height:
        return None
    kind = "river" if rng.random() < 0.5 else "road"
    x0 = rng.uniform(-14, 6)
    width = rng.uniform(6, 16) if kind == "river" else rng.uniform(5, 9)
    ytop = max(ground.hy + 1, 0.0)
    ybot = float(ground.height + 2)
    pts = [(ground.cx + x * ground.g * (y - ground.hy), y) for x, y in
           ((x0, ytop), (x0 + width, ytop), (x0 + width, ybot), (x0, ybot))]
    colour = (72, 104, 128) if kind == "river" else (96, 96, 100)
    poly = np.round(np.array(pts) * 16).astype(np.int32).reshape(-1, 1, 2)
    mask = np.zeros(plane.shape[:2], np.float32)
    cv2.fillPoly(mask, [poly], 1.0, cv2.LINE_AA, shift=4)
    texture = plane.mean(axis=2, keepdims=True) / max(float(plane.mean()), 1.0)
    band = np.asarray(colour, np.float32) * (0.75 + 0.25 * texture)
    plane[:] = plane * (1 - mask[..., None]) + band * mask[..., None]
    return kind


def _overhead(rng, rgb, ground: Ground, location: str) -> list[str]:
    """Seen from straight above: tree crowns outdoors, a rug and a table indoors."""
    w, h = ground.width, ground.height
    unit = ground.head_px
    if location == "outdoor":
        for _ in range(int(rng.integers(1, 4))):
            centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
            radius = max(2, int(rng.uniform(4, 9) * unit))
            cv2.circle(rgb, (centre[0] + radius // 4, centre[1] + radius // 4), radius, (30, 40, 25), -1, cv2.LINE_AA)
            cv2.circle(rgb, centre, radius, (52, 84, 42), -1, cv2.LINE_AA)
        return ["tree"]
    rug = rng.choice([(140, 50, 45), (60, 70, 110), (150, 130, 90)])
    x, y = rng.uniform(0.1, 0.6) * w, rng.uniform(0.1, 0.6) * h
    shade_rect(rgb, x, y, x + 10 * unit, y + 7 * unit, rug, 0.7)
    tx, ty = rng.uniform(0, w), rng.uniform(0, h)
    shade_rect(rgb, tx, ty, tx + 5 * unit, ty + 3 * unit, (110, 80, 55), 0.6)
    return ["rug", "table"]


def _towering(rng, rgb, ground: Ground, location: str) -> list[str]:
    """Seen from the ground straight up: walls or buildings converge on a point above the frame."""
    w, h = ground.width, ground.height
    vx, vy = ground.cx + rng.uniform(-0.2, 0.2) * w, -rng.uniform(0.8, 1.6) * h
    colours = [(150, 146, 140), (120, 118, 126), (176, 160, 140)] if location == "outdoor" else [(214, 203, 180)]
    for _ in range(int(rng.integers(2, 4))):
        xa = rng.uniform(-0.4, 1.1) * w
        xb = xa + rng.uniform(0.15, 0.45) * w
        yt = rng.uniform(-0.1, 0.45) * h
        base = 1.15 * h
        def toward(x, yt=yt, base=base):
            return vx + (x - vx) * (yt - vy) / (base - vy)

        poly = np.array([(xa, base), (xb, base), (toward(xb), yt), (toward(xa), yt)], np.int32)
        colour = colours[int(rng.integers(len(colours)))]
        cv2.fillPoly(rgb, [poly], colour, cv2.LINE_AA)
        dark = tuple(c * 0.7 for c in colour)
        cv2.polylines(rgb, [poly], True, dark, 2, cv2.LINE_AA)
        if location == "outdoor":  # floors of windows: the rows that make a facade read as one
            for t in np.linspace(0.08, 0.92, int(rng.integers(5, 12))):
                y = base + (yt - base) * t
                left, right = xa + (toward(xa) - xa) * t, xb + (toward(xb) - xb) * t
                cv2.line(rgb, (int(left), int(y)), (int(right), int(y)), dark, max(1, int(0.012 * h)), cv2.LINE_AA)
    if location == "indoor":
        lamp = (int(vx), int(rng.uniform(0.1, 0.35) * h))
        cv2.circle(rgb, lamp, max(4, int(0.05 * h)), (250, 240, 200), -1, cv2.LINE_AA)
        return ["ceiling", "lamp"]
    return ["building"]


def outdoor(rng: np.random.Generator, ground: Ground, angle: str) -> tuple[np.ndarray, list[str]]:
    w, h = ground.width, ground.height
    if angle == "birds_eye":
        texture, tpu = ground_texture(rng, "outdoor")
        rgb = ground_plane(ground, texture, tpu, overhead=True)
        return rgb, ["ground"] + _overhead(rng, rgb, ground, "outdoor")
    palette = str(rng.choice(list(SKIES)))
    haze = SKIES[palette][1]
    rgb = sky(rng, w, h, ground.hy, palette)
    features = ["sky", palette]
    if angle == "worms_eye":
        return rgb, features + _towering(rng, rgb, ground, "outdoor")
    if ground.hy < h:
        texture, tpu = ground_texture(rng, "outdoor")
        plane = ground_plane(ground, texture, tpu)
        path = _path(rng, plane, ground)
        features += ["ground"] + ([path] if path else [])
        plane = fog(plane, ground, haze)
        start = max(0, int(np.ceil(ground.hy)))
        rgb[start:] = plane[start:]
    features += _horizon_objects(rng, rgb, ground, haze)
    return rgb, features


def _window(rng, rgb, x: float, floor: float, pw: float) -> None:
    width, height = rng.uniform(4, 7) * pw, rng.uniform(4.5, 6.5) * pw
    bottom = floor - rng.uniform(3.4, 4.4) * pw
    x0, y0 = x - width / 2, bottom - height
    top, low = (np.asarray(c, np.float32) for c in SKIES[str(rng.choice(["day", "overcast", "haze"]))])
    ya, yb = int(max(y0, 0)), int(min(bottom, rgb.shape[0]))
    xa, xb = int(max(x0, 0)), int(min(x0 + width, rgb.shape[1]))
    if ya < yb and xa < xb:  # the sky outside
        t = ((np.arange(ya, yb) - y0) / height).astype(np.float32)[:, None, None]
        rgb[ya:yb, xa:xb] = top + (low - top) * t
    frame = (236, 232, 224) if rng.random() < 0.6 else (96, 70, 50)
    bar = max(1, int(0.3 * pw))
    cv2.rectangle(rgb, (int(x0), int(y0)), (int(x0 + width), int(bottom)), frame, bar)
    cv2.line(rgb, (int(x), int(y0)), (int(x), int(bottom)), frame, max(1, bar // 2))
    transom = int(y0 + height * 0.45)
    cv2.line(rgb, (int(x0), transom), (int(x0 + width), transom), frame, max(1, bar // 2))
    if rng.random() < 0.5:
        cloth = rng.choice([(150, 40, 40), (200, 190, 160), (70, 90, 120)])
        for side in (x0 - 1.0 * pw, x0 + width - 0.4 * pw):
            shade_rect(rgb, side, y0 - 0.6 * pw, side + 1.4 * pw, bottom + 1.2 * pw, cloth, 0.8)


def _door(rng, rgb, x: float, floor: float, pw: float) -> None:
    colour = rng.choice([(110, 78, 52), (150, 120, 90), (200, 196, 186), (80, 60, 50)])
    x0, y0, x1 = x - 2.1 * pw, floor - 9.2 * pw, x + 2.1 * pw
    shade_rect(rgb, x0 - 0.3 * pw, y0 - 0.3 * pw, x1 + 0.3 * pw, floor, tuple(c * 0.8 for c in colour))
    shade_rect(rgb, x0, y0, x1, floor, colour)
    for py in (y0 + 0.8 * pw, y0 + 5.0 * pw):
        cv2.rectangle(rgb, (int(x0 + 0.7 * pw), int(py)), (int(x1 - 0.7 * pw), int(py + 3.4 * pw)),
                      tuple(c * 0.85 for c in colour), max(1, int(0.12 * pw)))
    cv2.circle(rgb, (int(x1 - 0.6 * pw), int(floor - 4.4 * pw)), max(1, int(0.2 * pw)), (200, 180, 90), -1)


def _furniture(rng, rgb, kind: str, x: float, base: float, pw: float) -> None:
    wood = rng.choice([(120, 84, 56), (90, 62, 44), (160, 120, 80)])
    if kind == "sofa":
        cloth = rng.choice([(120, 50, 45), (70, 80, 100), (150, 140, 120), (60, 90, 70)])
        shade_rect(rgb, x - 4.5 * pw, base - 4.0 * pw, x + 4.5 * pw, base - 1.2 * pw, cloth, 0.8)
        seat = tuple(c * 1.1 for c in cloth)
        shade_rect(rgb, x - 4.5 * pw, base - 2.2 * pw, x + 4.5 * pw, base - 0.3 * pw, seat, 0.8)
        for side in (x - 5.3 * pw, x + 4.3 * pw):
            shade_rect(rgb, side, base - 2.9 * pw, side + 1.0 * pw, base - 0.3 * pw, cloth, 0.75)
    elif kind == "table":
        shade_rect(rgb, x - 3 * pw, base - 3.3 * pw, x + 3 * pw, base - 2.9 * pw, wood, 0.7)
        for lx in (x - 2.7 * pw, x + 2.4 * pw):
            shade_rect(rgb, lx, base - 2.9 * pw, lx + 0.3 * pw, base, tuple(c * 0.8 for c in wood))
    elif kind == "cabinet":
        shade_rect(rgb, x - 2 * pw, base - 4.6 * pw, x + 2 * pw, base, wood, 0.7)
        for k in range(1, 3):
            y = int(base - 4.6 * pw + k * 1.5 * pw)
            groove = tuple(c * 0.6 for c in wood)
            cv2.line(rgb, (int(x - 2 * pw), y), (int(x + 2 * pw), y), groove, max(1, int(0.1 * pw)))
    else:  # standing lamp
        shade_rect(rgb, x - 0.08 * pw, base - 6.4 * pw, x + 0.08 * pw, base, (60, 60, 60))
        shade = np.array([(x - 1.0 * pw, base - 6.2 * pw), (x + 1.0 * pw, base - 6.2 * pw),
                          (x + 0.6 * pw, base - 7.6 * pw), (x - 0.6 * pw, base - 7.6 * pw)], np.int32)
        cv2.fillPoly(rgb, [shade], (240, 226, 180), cv2.LINE_AA)


def _wall(rng, w: int, h: int, ground: Ground, floor: float, pw: float):
    """The back wall (and the ceiling above it), plus the colour of its skirting board."""
    colour = np.asarray(WALLS[int(rng.integers(len(WALLS)))], np.float32)
    light = 1.0 + 0.08 * np.linspace(-1, 1, w, dtype=np.float32)[None, :, None] * (1 if rng.random() < 0.5 else -1)
    rgb = np.broadcast_to(colour, (h, w, 3)) * light
    if rng.random() < 0.3:  # wallpaper stripes at the wall's own scale
        period = max(2.0, 1.2 * pw)
        stripes = (np.floor((np.arange(w) - ground.cx) / period) % 2)[None, :, None].astype(np.float32)
        rgb = rgb * (1 - 0.07 * stripes)
    ceiling = floor - 11.0 * pw  # a wall is about 2.5 m, 11 heads
    if ceiling > 0:
        rgb[: int(min(h, ceiling))] = np.asarray((232, 230, 224), np.float32)
    return np.ascontiguousarray(rgb, dtype=np.float32), tuple(float(c) * 0.6 for c in colour)


def indoor(rng: np.random.Generator, ground: Ground, angle: str, wall_depth: float) -> tuple[np.ndarray, list[str]]:
    """A room. ``wall_depth`` (0..1) is the figure's distance over the back wall's: the wall's scale."""
    w, h = ground.width, ground.height
    if angle in ("birds_eye", "worms_eye"):
        if angle == "worms_eye":
            rgb = np.broadcast_to(np.float32([226, 224, 218]), (h, w, 3)).copy()
            return rgb, _towering(rng, rgb, ground, "indoor")
        texture, tpu = ground_texture(rng, "indoor")
        rgb = ground_plane(ground, texture, tpu, overhead=True)
        return rgb, ["floor"] + _overhead(rng, rgb, ground, "indoor")
    feet_dz = ground.head_px / ground.g
    floor = ground.hy + wall_depth * feet_dz
    pw = ground.head_px * wall_depth
    rgb, skirting = _wall(rng, w, h, ground, floor, pw)
    if floor < h:
        texture, tpu = ground_texture(rng, "indoor")
        plane = ground_plane(ground, texture, tpu)
        start = max(0, int(np.ceil(floor)))
        rgb[start:] = plane[start:]
        cv2.rectangle(rgb, (0, int(floor - 0.45 * pw)), (w, int(floor)), skirting, -1)
    features = ["wall", "floor", "window"]
    spots = rng.permutation(np.linspace(0.1, 0.9, 4)) * w
    _window(rng, rgb, spots[0], floor, pw)
    if rng.random() < 0.6:
        _door(rng, rgb, spots[1], floor, pw)
        features.append("door")
    for kind, x in zip(rng.permutation(["sofa", "table", "cabinet", "lamp"])[: int(rng.integers(1, 3))], spots[2:]):
        _furniture(rng, rgb, str(kind), x, floor + 0.4 * pw, pw)
        features.append(str(kind))
    return rgb, features
