"""Speech bubbles and caption boxes with Korean text, and their exact masks.

A bubble is drawn from one binary shape (body, plus the tail when it has one); its outline is that
shape dilated, so the outline always wraps body and tail as one, as in comics. The ground-truth mask is
the dilated shape: every pixel the drawing changed (outline, fill, tail, text), none it did not. Shapes
are drawn without anti-aliasing for exactly that reason: a soft edge would change pixels outside any
sensible mask. (JPEG compression later smears a pixel or two around it, as it does in real data.)
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np
from PIL import Image, ImageDraw

from storyboard.devkit.sample_data.fonts import korean_font

SHAPES = ("ellipse", "rounded_box", "cloud", "caption_box")
DIALOGUE = ["어디 가는 거야?", "나도 몰라...", "기다려!", "정말이야?", "그만해.", "늦었잖아!", "괜찮아, 다 잘될 거야.",
            "누구세요?", "이게 다 무슨 일이야", "밥은 먹었어?", "거기 서!", "왜 여기 있어?", "조용히 해!", "믿어 줘.",
            "돌아가자.", "아무도 없어?", "지금 몇 시야?", "내 말 들려?"]
NARRATION = ["그날 밤, 반지하.", "1986년, 경기도.", "다음 날 아침", "비가 그치지 않았다.", "3년 후", "서울, 어느 겨울",
             "그 시각, 경찰서"]
TINTS = [(255, 248, 200), (224, 238, 255), (255, 228, 236), (228, 250, 228)]


@dataclass(frozen=True)
class BubbleStyle:
    shape: str
    tail: bool
    vertical: bool
    outline: int          # px; 0 = no outline (only some caption boxes)
    tinted: bool


def style_deck(rng: np.random.Generator, count: int) -> list[BubbleStyle]:
    """``count`` styles that cover the variety evenly (every shape, tails, vertical text, thick and
    thin lines, tints) instead of leaving it to chance, so even a small sample set has each kind."""
    deck = []
    for i in range(count):
        shape = SHAPES[i % len(SHAPES)] if i % 9 else "ellipse"  # ellipses are the commonest in the wild
        caption = shape == "caption_box"
        outline = int([1, 2, 3, 5][(i // 2) % 4]) if not (caption and i % 3 == 0) else 0
        deck.append(BubbleStyle(shape, tail=not caption and (i // 4) % 3 != 2,
                                vertical=not caption and (i // 3) % 4 == 1, outline=outline, tinted=(i // 5) % 3 == 1))
    order = rng.permutation(count)
    return [deck[int(k)] for k in order]


def _text_alpha(text: str, size: int, vertical: bool) -> np.ndarray:
    """Anti-aliased text coverage (float 0..1). Vertical text stacks syllables top to bottom,
    columns right to left, as Korean is written vertically."""
    font = korean_font(size, bold=size < 15)
    if not vertical:
        lines = _wrap(text)
        probe = ImageDraw.Draw(Image.new("L", (1, 1)))
        box = probe.multiline_textbbox((0, 0), "\n".join(lines), font=font, spacing=size // 4, align="center")
        x0, y0, x1, y1 = (int(np.floor(box[0])), int(np.floor(box[1])), int(np.ceil(box[2])), int(np.ceil(box[3])))
        image = Image.new("L", (x1 - x0 + 2, y1 - y0 + 2), 0)
        ImageDraw.Draw(image).multiline_text((1 - x0, 1 - y0), "\n".join(lines), fill=255, font=font,
                                             spacing=size // 4, align="center")
        return np.asarray(image, np.float32) / 255.0
    columns = _wrap(text, width=6)
    step = int(size * 1.08)
    rows = max(len(c) for c in columns)
    image = Image.new("L", (step * len(columns) + 2, step * rows + 2), 0)
    draw = ImageDraw.Draw(image)
    for col, line in enumerate(columns):
        x = (len(columns) - 1 - col) * step + 1
        for row, char in enumerate(line):
            if char.strip():
                draw.text((x + step / 2, row * step + 1 + step / 2), char, fill=255, font=font, anchor="mm")
    return np.asarray(image, np.float32) / 255.0


def _wrap(text: str, width: int = 9) -> list[str]:
    """Break a line at a space near its middle when it is long; bubbles are roughly round."""
    if len(text) <= width or " " not in text:
        return [text]
    spaces = [i for i, c in enumerate(text) if c == " "]
    cut = min(spaces, key=lambda i: abs(i - len(text) / 2))
    return [text[:cut], text[cut + 1:]]


def _body(shape: str, size: tuple[int, int], centre, half, rng: np.random.Generator) -> np.ndarray:
    """The bubble's body (without tail) as a uint8 mask of the page size."""
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    cx, cy = int(round(centre[0])), int(round(centre[1]))
    hx, hy = int(round(half[0])), int(round(half[1]))
    if shape == "ellipse":
        cv2.ellipse(mask, (cx, cy), (hx, hy), 0, 0, 360, 1, -1)
    elif shape == "caption_box":
        cv2.rectangle(mask, (cx - hx, cy - hy), (cx + hx, cy + hy), 1, -1)
    elif shape == "rounded_box":
        r = max(2, int(min(hx, hy) * rng.uniform(0.3, 0.6)))
        cv2.rectangle(mask, (cx - hx + r, cy - hy), (cx + hx - r, cy + hy), 1, -1)
        cv2.rectangle(mask, (cx - hx, cy - hy + r), (cx + hx, cy + hy - r), 1, -1)
        for sx in (-1, 1):
            for sy in (-1, 1):
                cv2.circle(mask, (cx + sx * (hx - r), cy + sy * (hy - r)), r, 1, -1)
    else:  # cloud: bumps along an ellipse around a filled core
        bump = max(3.0, min(hx, hy) * rng.uniform(0.34, 0.46))
        ax, ay = hx - bump * 0.8, hy - bump * 0.8
        cv2.ellipse(mask, (cx, cy), (int(ax), int(ay)), 0, 0, 360, 1, -1)
        count = max(6, int(np.pi * (ax + ay) / (bump * 1.25)))
        start = rng.uniform(0, 2 * np.pi)
        for t in start + np.linspace(0, 2 * np.pi, count, endpoint=False):
            cv2.circle(mask, (int(cx + ax * np.cos(t)), int(cy + ay * np.sin(t))), int(bump), 1, -1)
    return mask


def _tail(centre, half, target, rng: np.random.Generator) -> np.ndarray:
    """A wedge from inside the body toward the speaker, bent a little to one side."""
    c = np.asarray(centre, np.float64)
    d = np.asarray(target, np.float64) - c
    d /= max(np.linalg.norm(d), 1e-6)
    # Distance from the centre to the body's edge along d (the ellipse through the half sizes).
    edge = 1.0 / np.sqrt((d[0] / half[0]) ** 2 + (d[1] / half[1]) ** 2)
    normal = np.array([-d[1], d[0]])
    base_w = 0.28 * min(half)
    length = rng.uniform(0.5, 0.95) * min(half) + 6
    tip = c + d * (edge + length) + normal * rng.uniform(-0.4, 0.4) * length
    base = c + d * edge * 0.6
    return np.array([base + normal * base_w, tip, base - normal * base_w]).round().astype(np.int32)


def _half_size(shape: str, text_w: int, text_h: int, pad: float) -> tuple[float, float]:
    """Body half sizes that leave the text block inside the shape with some air."""
    if shape == "ellipse":  # a rectangle fits an ellipse whose axes are sqrt(2) of its half sides
        return text_w / 2 * 1.42 + pad, text_h / 2 * 1.42 + pad
    if shape == "cloud":
        return text_w / 2 * 1.45 + 2.2 * pad, text_h / 2 * 1.45 + 2.2 * pad
    if shape == "rounded_box":
        return text_w / 2 + 1.4 * pad, text_h / 2 + 1.4 * pad
    return text_w / 2 + pad, text_h / 2 + 0.8 * pad


def _candidate_centre(rng, style: BubbleStyle, content, half, margin: int):
    x0, y0, x1, y1 = content
    lo_x, hi_x = x0 + half[0] + margin, x1 - half[0] - margin
    lo_y, hi_y = y0 + half[1] + margin, y1 - half[1] - margin
    if lo_x > hi_x or lo_y > hi_y:
        return None
    if style.shape == "caption_box":  # captions sit along the top or bottom edge, often in a corner
        x = lo_x if rng.random() < 0.5 else rng.uniform(lo_x, hi_x)
        y = lo_y + rng.uniform(0, 4) if rng.random() < 0.6 else hi_y - rng.uniform(0, 4)
        return x, y
    return rng.uniform(lo_x, hi_x), rng.uniform(lo_y, hi_y)


def _layout(rng, style: BubbleStyle, page_size, content, face_box, taken, text_h: int, text_w: int, pad: float):
    """The best of a few random placements: inside the content, clear of other bubbles, and with as
    little of the face covered as possible. Returns (shape mask, outer mask, centre) or None."""
    w, h = page_size
    half = _half_size(style.shape, text_w, text_h, pad)
    margin = style.outline + 2
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * style.outline + 1,) * 2) if style.outline else None
    inside = np.zeros((h, w), bool)
    inside[content[1] + 1:content[3] - 1, content[0] + 1:content[2] - 1] = True
    face = np.zeros((h, w), bool)
    if face_box:
        fx0, fy0, fx1, fy1 = face_box
        grow = 0.1 * (fy1 - fy0)
        face[int(max(fy0 - grow, 0)):int(fy1 + grow), int(max(fx0 - grow, 0)):int(fx1 + grow)] = True
    best = None
    for _ in range(40):
        centre = _candidate_centre(rng, style, content, half, margin)
        if centre is None:
            return None
        shape = _body(style.shape, (w, h), centre, half, rng)
        if style.tail:
            target = ((face_box[0] + face_box[2]) / 2, face_box[1] + 0.8 * (face_box[3] - face_box[1])) if face_box \
                else (centre[0] + rng.uniform(-1, 1) * half[0], centre[1] + 3 * half[1])
            cv2.fillPoly(shape, [_tail(centre, half, target, rng)], 1)
        outer = cv2.dilate(shape, kernel) if kernel is not None else shape
        outer = outer.astype(bool)
        if (outer & ~inside).any() or any((outer & t).any() for t in taken):
            continue
        cost = int((outer & face).sum())
        if best is None or cost < best[0]:
            best = (cost, shape.astype(bool), outer, centre)
        if cost == 0:
            break
    return None if best is None else best[1:]


def _for_grayscale(style: BubbleStyle) -> BubbleStyle:
    """The style as a storyboard artist draws it in a grey pencil frame. A tinted caption box without
    an outline would turn into a borderless grey box on grey paper (grey 226-230 on a 222-247 panel),
    which no reader could see either; in a conti a caption is a white box drawn with a pen line."""
    if style.shape == "caption_box" and style.outline == 0 and style.tinted:
        return replace(style, outline=2, tinted=False)
    return style


def _visible_on(style: BubbleStyle, page: np.ndarray, outer: np.ndarray) -> BubbleStyle:
    """A black caption box without a line, placed on a near-black part of the picture (a night sky,
    dark hair), would have no visible edge: nobody could say where it ends, so no mask could be
    right. There it is the yellow caption box instead."""
    if style.shape != "caption_box" or style.outline or style.tinted:
        return style
    ring = cv2.dilate(outer.astype(np.uint8), np.ones((7, 7), np.uint8)).astype(bool) & ~outer
    around = page[ring].mean(axis=0) @ np.array([0.299, 0.587, 0.114]) if ring.any() else 255.0
    return replace(style, tinted=True) if around < 60 else style


def _colours(style: BubbleStyle, gray: bool, rng) -> tuple[tuple, tuple, tuple]:
    """(fill, outline, text) colours."""
    ink = (20, 20, 20)
    if style.shape == "caption_box" and style.outline == 0:
        return ((18, 18, 18), ink, (250, 250, 250)) if not style.tinted else ((250, 232, 130), ink, ink)
    fill = tuple(TINTS[int(rng.integers(len(TINTS)))]) if style.tinted else (255, 255, 255)
    if gray:
        fill = (int(np.mean(fill)) - 12,) * 3 if style.tinted else fill
    return fill, ink, ink


def draw_bubbles(rng: np.random.Generator, page: np.ndarray, content: tuple[int, int, int, int],
                 face_box, styles: list[BubbleStyle], gray: bool = False) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """Draw each style as a bubble on ``page`` (HxWx3 uint8); returns (page, mask, bubble records).

    ``content`` is the part of the page a bubble may cover (the panel of a conti, the picture between
    transparent margins). A style that finds no room is skipped, so the records list what is there."""
    h, w = page.shape[:2]
    out = page.astype(np.float32)
    mask = np.zeros((h, w), bool)
    taken, records = [], []
    content_h = content[3] - content[1]
    for style in styles:
        style = _for_grayscale(style) if gray else style
        text = str(rng.choice(NARRATION if style.shape == "caption_box" else DIALOGUE))
        size = int(np.clip(round(content_h * rng.uniform(0.05, 0.07)), 11, 30))
        for _ in range(3):  # shrink the text when the bubble does not fit
            alpha = _text_alpha(text, size, style.vertical)
            placed = _layout(rng, style, (w, h), content, face_box, taken, alpha.shape[0], alpha.shape[1],
                             max(3, size * 0.4))
            if placed is not None:
                break
            size = max(9, int(size * 0.8))
        if placed is None:
            continue
        shape, outer, centre = placed
        style = _visible_on(style, out, outer)
        fill, line, ink = _colours(style, gray, rng)
        out[outer] = line
        out[shape] = fill
        th, tw = alpha.shape
        tx, ty = int(round(centre[0] - tw / 2)), int(round(centre[1] - th / 2))
        region = out[ty:ty + th, tx:tx + tw]
        a = alpha[: region.shape[0], : region.shape[1], None]
        region[:] = region * (1 - a) + np.float32(ink) * a
        bubble = outer.copy()
        bubble[ty:ty + th, tx:tx + tw] |= alpha[: region.shape[0], : region.shape[1]] > 0
        mask |= bubble
        taken.append(bubble)
        ys, xs = np.nonzero(bubble)
        records.append({"shape": style.shape, "tail": style.tail, "vertical": style.vertical,
                        "box": [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1],
                        "outline_px": style.outline, "fill": list(fill), "text": text})
    return np.clip(out, 0, 255).astype(np.uint8), mask, records
