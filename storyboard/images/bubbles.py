"""Find speech bubbles and caption boxes, mask them (fill, outline, tail and text), and paint them out.

A bubble, whatever its drawing style, is a region of one flat fill colour (white, a light tint, or
black for some caption boxes) holding text, in a compact shape (ellipse, rounded box, cloud, box,
with or without a tail of the same fill), usually inside an outline band of even width.
``detect_bubbles`` works from exactly those cues, with no weights:

1. seeds: connected *flat* pixels (the largest colour step to a 3x3 neighbour is below a tolerance
   set from the image's own noise level) of a light or black colour;
2. the fill region of a seed: connected pixels within ``fill_tolerance`` of its colour that are not
   on an edge (so JPEG ringing around text does not cut a fill apart, and even a faint 1 px outline
   still walls it in); its holes are filled: fill + text + tail;
3. the region must be one flat colour, of plausible size, compact (solidity), not running along the
   frame edge (sky, paper, walls); a black one must be a clean rectangle;
4. the holes must be *text*: several small ink parts (far from the fill colour), none large, set as
   one block in the middle of the shape with air all around it. This is what tells a bubble from
   hatching, a window grid or a textured wall, whose marks run up to the region's edges;
5. the outline is measured, not assumed: rings just outside the shape are examined one by one; the
   fill's soft edge and then the rings of one dark colour are added (0 for an outline-less box).

``remove_bubbles`` returns the mask (``uint8``, 255 = removed, at the image's size), the image with
the masked pixels inpainted, and one ``Bubble`` per bubble. ``bubble_scores`` is the metric the
bench and the tests share. Measured figures: ``bench/bench_bubbles.py`` and docs/image_stages.md.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import cv2
import numpy as np

INPAINT_METHODS = ("smooth", "telea", "ns")
TRACE: list | None = None  # set to [] to record each judged region (debugging, the bench)
_LUMA = np.array([0.299, 0.587, 0.114])
# Bump when the detector or the inpainting changes what they output (resume keys include it).
METHOD_VERSION = 1


@dataclass(frozen=True)
class BubbleParams:
    """The detector's knobs (defaults measured on the sample generator's variety; see the bench)."""

    work_side: int = 1600  # detect on a copy whose long side is at most this many pixels
    min_area: float = 0.002  # region (holes filled) as a share of the image: bounds
    max_area: float = 0.45
    min_fill_luma: float = 175.0  # fills are white or light tints, so dark text reads on them
    max_dark_fill_luma: float = 50.0  # ... or black (caption boxes with light text)
    min_dark_rectangularity: float = 0.93  # a dark fill must fill its minimum-area rectangle this well
    min_seed: float = 0.0004  # a flat seed region, as a share of the image
    fill_tolerance: float = 40.0  # colour distance that still counts as the same fill
    dark_fill_tolerance: float = 24.0  # ... for a black fill
    min_flat_share: float = 0.7  # share of a fill's pixels (away from edges) within flat_tolerance of its colour
    flat_tolerance: float = 12.0
    max_fill_std: float = 12.0  # colour spread of a fill
    min_solidity: float = 0.72  # filled area / convex hull area
    max_aspect: float = 8.0
    max_border_share: float = 0.2  # of the region's edge on the frame edge
    min_text_parts: int = 3  # dark hole components that look like glyph strokes
    min_ink: float = 0.01  # share of the filled region that is holes (text)
    max_ink: float = 0.55
    max_part: float = 0.18  # no single ink part may be a large object
    max_text_block: float = 0.65  # the text block's bounding box, as a share of the shape
    max_text_offset: float = 0.25  # text block centre to shape centre, in inradii
    min_text_margin: float = 0.2  # clear space between text and edge, in inradii
    ink_contrast: float = 60.0  # colour distance from the fill that counts as ink
    max_outline: float = 0.025  # thickest outline searched, as a share of the image's short side
    outline_frac: float = 0.8  # a ring belongs to the outline when this share of it is ink
    outline_start_frac: float = 0.6  # ... its first ring (a 1 px line, blurred by JPEG) when this share


@dataclass
class Bubble:
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (source pixels, x1/y1 exclusive)
    area: float  # share of the image the bubble's mask covers
    fill: tuple[int, int, int]
    outline_px: int
    text_parts: int
    solidity: float

    def as_record(self) -> dict:
        d = asdict(self)
        d["box"] = list(d["box"])
        d["fill"] = list(d["fill"])
        d["area"] = round(d["area"], 5)
        d["solidity"] = round(d["solidity"], 3)
        return d


def _noise_level(grad: np.ndarray) -> float:
    """The typical small step between neighbours in flat parts (JPEG/grain), from the gradient histogram."""
    low = grad[grad < 40]
    return float(np.percentile(low, 50)) if low.size else 0.0


def _flat_map(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """(flat pixels, not-an-edge pixels, the flatness tolerance) from the largest 3x3 colour step."""
    kernel = np.ones((3, 3), np.uint8)
    grad = cv2.morphologyEx(rgb, cv2.MORPH_GRADIENT, kernel).max(axis=2)
    tol = float(np.clip(3.0 * _noise_level(grad) + 6.0, 8.0, 20.0))
    # An outline, even a faint 1 px one, is a wall a fill cannot flow through.
    return (grad <= tol).astype(np.uint8), (grad <= 2.5 * tol + 20.0), tol


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def _colour_distance(rgb: np.ndarray, colour: np.ndarray) -> np.ndarray:
    return np.abs(rgb.astype(np.int16) - colour.astype(np.int16)).max(axis=2)


def _text_evidence(crop: np.ndarray, region: np.ndarray, filled: np.ndarray, fill: np.ndarray,
                   p: BubbleParams) -> tuple[bool, int]:
    """Do the holes of ``region`` hold text set on ``fill``? Returns (yes, number of glyph parts).

    Text is *ink* in the holes (pixels far from the fill colour; counted on the ink, not the holes:
    JPEG ringing joins the holes of a line of small text into one), in several small parts, set as
    one block in the middle of the shape with air all around it. The last test is what tells a
    bubble from hatching or a textured wall, whose marks run everywhere up to the edges."""
    holes = filled.astype(bool) & ~region.astype(bool)
    filled_area = int(filled.sum())
    if filled_area == 0:
        return False, 0
    ink = (holes & (_colour_distance(crop, fill) >= p.ink_contrast)).astype(np.uint8)
    ink_area = int(ink.sum())
    if not (p.min_ink <= ink_area / filled_area <= p.max_ink):
        return False, 0
    n, _, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    if areas.size == 0 or areas.max() > p.max_part * filled_area:
        return False, 0
    parts = int((areas >= 3).sum())
    if parts < p.min_text_parts:
        return False, parts
    # Layout: the text block's box is a modest share of the shape, centred, away from the edge.
    inside = cv2.distanceTransform(filled, cv2.DIST_L2, 3)
    inradius = float(inside.max())
    ys, xs = np.nonzero(ink)
    block = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1) / filled_area
    fy, fx = np.nonzero(filled)
    off = np.hypot((xs.min() + xs.max()) / 2 - fx.mean(), (ys.min() + ys.max()) / 2 - fy.mean()) / inradius
    margin = float(inside[ink.astype(bool)].min()) / inradius
    ok = block <= p.max_text_block and off <= p.max_text_offset and margin >= p.min_text_margin
    return ok, parts


def _outline_rings(crop: np.ndarray, filled: np.ndarray, fill: np.ndarray, max_rings: int,
                   p: BubbleParams) -> tuple[int, int]:
    """(how many one-pixel rings just outside ``filled`` belong to the bubble, the outline's width).

    First the fill's soft edge (JPEG bleeding and antialiasing keep the flat region a few pixels
    short of the outline: up to ``LEAD`` rings not yet ink), then the outline: rings that are mostly
    one dark colour, ring after ring (a turn of colour from one ring to the next ends it: a thin
    black line on a dark coat). An "outline" that never ends within ``max_rings`` is a dark background, not an
    outline: then only its first ring is taken (the edge of the bubble's shape)."""
    lead_max = 4
    outside = (1 - filled).astype(np.uint8)
    dist = cv2.distanceTransform(outside, cv2.DIST_L2, 3)
    to_fill = _colour_distance(crop, fill)
    fill_luma = float(fill @ _LUMA)
    start, outline, last = 0, None, 0
    for d in range(1, max_rings + lead_max + 1):
        ring = (dist > d - 1) & (dist <= d)
        if not ring.any():
            return (last, last - start) if outline is not None else (start, 0)
        if outline is None:
            ink = to_fill[ring] >= p.ink_contrast
            if ink.mean() >= p.outline_start_frac:
                colour = np.median(crop[ring][ink], axis=0)
                if float(colour @ _LUMA) > fill_luma - 1.5 * p.ink_contrast:
                    return d - 1, 0  # lighter than an outline: the bubble ends here, no outline
                outline, last = colour, d
                previous = np.median(crop[ring], axis=0)
                continue
            soft = (to_fill[ring] <= p.fill_tolerance) | ink
            if d > lead_max or soft.mean() < p.outline_frac:
                return start, 0  # no outline: the bubble ends with its soft edge
            start = d
            continue
        pixels = crop[ring]
        same = _colour_distance(pixels[None], outline)[0] <= p.ink_contrast * 0.75
        median = np.median(pixels, axis=0)
        if same.mean() < p.outline_frac or np.abs(median - previous).max() > p.ink_contrast * 0.5:
            return last, last - start  # the ring is another colour, or the colour turned: the outline ended
        previous = median
        last = d
        if last - start >= max_rings:
            return start + 1, 1  # never ends: a dark background, not an outline
    return last, last - start


def _border_share(filled: np.ndarray, box: tuple[int, int, int, int], size: tuple[int, int]) -> float:
    """The share of a region's outer edge pixels that lie on the image's border."""
    x0, y0, x1, y1 = box
    W, H = size
    edge = filled - cv2.erode(filled, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    total = int(edge.sum())
    if total == 0:
        return 0.0
    on_border = 0
    if x0 == 0:
        on_border += int(edge[:, 0].sum())
    if y0 == 0:
        on_border += int(edge[0, :].sum())
    if x1 == W:
        on_border += int(edge[:, -1].sum())
    if y1 == H:
        on_border += int(edge[-1, :].sum())
    return on_border / total


def _candidate_mask(rgb: np.ndarray, flat: np.ndarray, region_full: np.ndarray, shape_full: np.ndarray | None,
                    box: tuple[int, int, int, int], fill: np.ndarray, p: BubbleParams, image_area: int,
                    max_rings: int):
    """(box, mask, info) of one fill region if it is a bubble, else the reason it is not (a str).

    Works in the region's bounding box."""
    x, y, w, h = box
    pad = max_rings + 6
    H, W = region_full.shape
    x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(W, x + w + pad), min(H, y + h + pad)
    region = region_full[y0:y1, x0:x1]
    crop = rgb[y0:y1, x0:x1]
    # A fill is one flat colour: away from its edges and the text (JPEG rings there), most of it is
    # flat and its colour hardly spreads; grass, skin or sky texture is not.
    core = cv2.erode(region, np.ones((5, 5), np.uint8)).astype(bool)
    if not core.any() or (_colour_distance(crop[core][None], fill)[0] <= p.flat_tolerance).mean() < p.min_flat_share:
        return "not flat"
    if float(crop[core].std(axis=0).max()) > p.max_fill_std:
        return "spread"
    filled = _fill_holes(region) if shape_full is None else shape_full[y0:y1, x0:x1]
    region = region & filled
    filled_area = int(filled.sum())
    if not (p.min_area * image_area <= filled_area <= p.max_area * image_area):
        return "area"
    if max(w, h) > p.max_aspect * max(1, min(w, h)):
        return "aspect"
    if _border_share(filled, (x0, y0, x1, y1), (W, H)) > p.max_border_share:
        return "border"  # sky, paper, a wall: regions that run along the frame edge
    contours, _ = cv2.findContours(filled, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    hull_area = cv2.contourArea(cv2.convexHull(np.concatenate(contours)))
    solidity = filled_area / max(hull_area, 1.0)
    if solidity < p.min_solidity:
        return "solidity"
    if float(fill @ _LUMA) <= p.max_dark_fill_luma:
        # A dark fill (a black caption box with light text) is only believed as a clean rectangle:
        # dark regions with bright specks (hair, a coat, night) are everywhere in stills.
        rect_w, rect_h = cv2.minAreaRect(np.concatenate(contours))[1]
        if filled_area < p.min_dark_rectangularity * rect_w * rect_h:
            return "dark, not a box"
    is_text, parts = _text_evidence(crop, region, filled, fill, p)
    if not is_text:
        return "text"
    grow, outline = _outline_rings(crop, filled, fill, max_rings, p)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    mask = cv2.dilate(filled, kernel)
    info = {"fill": tuple(int(c) for c in fill), "outline_px": outline, "text_parts": parts,
            "solidity": float(solidity)}
    return (x0, y0, x1, y1), mask, info


@dataclass
class _Seed:
    colour: np.ndarray
    label: int  # in the flat-region labels
    box: tuple[int, int, int, int]  # x, y, w, h


def _seeds(work: np.ndarray, flat: np.ndarray, p: BubbleParams) -> tuple[list[_Seed], np.ndarray]:
    """Flat regions, light (or black), big enough to be (part of) a bubble fill; and their labels."""
    n, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=4)
    if n <= 1:
        return [], labels
    flat_labels = labels.ravel()
    counts = np.bincount(flat_labels, minlength=n).astype(np.float64)
    means = np.stack([np.bincount(flat_labels, weights=work[..., c].ravel().astype(np.float64), minlength=n)
                      for c in range(3)], axis=1) / np.maximum(counts, 1)[:, None]
    image_area = flat.size
    seeds = []
    for i in range(1, n):
        area = stats[i, cv2.CC_STAT_AREA]
        if area < p.min_seed * image_area:
            continue  # a large seed stays: its colour's regions are split finer below
        luma = float(means[i] @ _LUMA)
        if p.max_dark_fill_luma < luma < p.min_fill_luma:
            continue
        seeds.append(_Seed(means[i], i, tuple(int(v) for v in stats[i, :4])))
    return seeds, labels


def _fill_regions(work: np.ndarray, open_: np.ndarray, colour: np.ndarray, p: BubbleParams):
    """(near map, shapes, their connected regions). ``near``: pixels within ``fill_tolerance`` of
    ``colour`` (and, for light fills, not on an edge); ``shapes``: what the regions are labelled on.

    A black caption box often touches other dark things (a panel border, dark hair, a shadow) and
    its margins are thin: its shape is the near map with its small (text) holes filled, opened with a 7x7
    square so that anything thinner than 7 px (a border line, a strip of hair) comes off."""
    if float(colour @ _LUMA) > p.max_dark_fill_luma:
        near = ((_colour_distance(work, colour) <= p.fill_tolerance) & open_).astype(np.uint8)
        return near, None, cv2.connectedComponentsWithStats(near, connectivity=4)
    # Black is printed flat, while dark hair or cloth next to it is textured: a tighter tolerance.
    near = (_colour_distance(work, colour) <= p.dark_fill_tolerance).astype(np.uint8)
    holes = _fill_holes(near) - near
    n, labels, stats, _ = cv2.connectedComponentsWithStats(holes, connectivity=4)
    small = stats[:, cv2.CC_STAT_AREA] <= p.max_part * p.max_area * near.size  # text, not a framed panel
    small[0] = False
    shapes = cv2.morphologyEx(near | small[labels].astype(np.uint8), cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
    return near, shapes, cv2.connectedComponentsWithStats(shapes, connectivity=4)


def _judge(work, flat, near, shapes, labels, stats, label: int, colour, p: BubbleParams, image_area: int,
           max_rings: int):
    """One fill region judged: (box, mask, info) when it is a bubble, else None (traced when asked)."""
    x, y, bw, bh, area = stats[label]
    if area > p.max_area * image_area:
        return None
    shape = (labels == label).astype(np.uint8) if shapes is not None else None
    region = ((labels == label) & (near > 0)).astype(np.uint8)
    result = _candidate_mask(work, flat, region, shape, (x, y, bw, bh), colour, p, image_area, max_rings)
    if TRACE is not None:
        TRACE.append(((x, y, bw, bh), tuple(int(c) for c in colour), result if isinstance(result, str) else "bubble"))
    return None if isinstance(result, str) else result


def detect_bubbles(rgb: np.ndarray, params: BubbleParams | None = None) -> tuple[np.ndarray, list[Bubble]]:
    """The bubble mask (uint8, 255 = bubble, the image's size) and one ``Bubble`` per bubble found.

    Flat light regions are seeds; the fill region of a seed is every pixel connected to it within
    ``fill_tolerance`` of its colour (so JPEG ringing around the text does not cut a fill apart);
    each distinct fill region is judged once."""
    p = params or BubbleParams()
    H, W = rgb.shape[:2]
    scale = min(1.0, p.work_side / max(H, W))
    work = rgb if scale == 1.0 else cv2.resize(rgb, (round(W * scale), round(H * scale)), interpolation=cv2.INTER_AREA)
    h, w = work.shape[:2]
    image_area = h * w
    max_rings = max(2, int(round(p.max_outline * min(h, w))))
    mask = np.zeros((h, w), np.uint8)
    found: list[tuple[tuple[int, int, int, int], dict]] = []
    judged: dict[tuple, tuple[np.ndarray, dict[int, bool]]] = {}
    flat, open_, _ = _flat_map(work)
    seeds, flat_labels = _seeds(work, flat, p)
    for seed in seeds:
        colour = seed.colour
        key = tuple(np.round(colour / 12.0).astype(int))
        if key not in judged:
            judged[key] = (*_fill_regions(work, open_, colour, p), {})
        near, shapes, (n, labels, stats, _), done = judged[key]
        sx, sy, sw, sh = seed.box
        inside = flat_labels[sy:sy + sh, sx:sx + sw] == seed.label
        hits = labels[sy:sy + sh, sx:sx + sw][inside & (mask[sy:sy + sh, sx:sx + sw] == 0)]
        counts = np.bincount(hits[hits > 0])
        min_hit = p.min_seed * image_area / 4
        for label in np.flatnonzero(counts >= min_hit):
            label = int(label)
            if label in done:
                continue
            done[label] = True
            result = _judge(work, flat, near, shapes, labels, stats, label, colour, p, image_area, max_rings)
            if result is None:
                continue
            (x0, y0, x1, y1), sub, info = result
            mask[y0:y1, x0:x1] |= sub
            found.append(((x0, y0, x1, y1), info))
    if scale != 1.0:
        mask = (cv2.resize(mask.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(np.uint8)
    mask *= 255
    bubbles = []
    for (x0, y0, x1, y1), info in found:
        box = (int(x0 / scale), int(y0 / scale), min(W, int(np.ceil(x1 / scale))), min(H, int(np.ceil(y1 / scale))))
        sub = mask[box[1]:box[3], box[0]:box[2]]
        bubbles.append(Bubble(box=_tight_box(sub, box), area=float((sub > 0).sum()) / (H * W), **info))
    bubbles.sort(key=lambda b: (b.box[1], b.box[0]))
    return mask, bubbles


def _tight_box(sub: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(sub)
    if not len(xs):
        return box
    return (box[0] + int(xs.min()), box[1] + int(ys.min()), box[0] + int(xs.max()) + 1, box[1] + int(ys.max()) + 1)


def inpaint(rgb: np.ndarray, mask: np.ndarray, method: str = "smooth") -> np.ndarray:
    """Paint out the masked pixels (nonzero in ``mask``) from their surroundings.

    ``smooth``: a push-pull fill (the hole takes the colours around it, blended smoothly across it
    through an image pyramid; no streaks, a few ms); ``telea`` / ``ns``: OpenCV's inpainting (sharper
    at the edge, streaky in large holes; run at half size for large holes, then refined at full size
    along the hole's edge)."""
    binary = (mask > 0).astype(np.uint8)
    if not binary.any():
        return rgb
    if method == "smooth":
        return _push_pull(rgb, binary)
    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}.get(method)
    if flag is None:
        raise ValueError(f"unknown inpainting method {method!r}; choose from {INPAINT_METHODS}")
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
    """Fill ``hole`` by normalised averaging down an image pyramid and blending back up."""
    known = (1 - hole).astype(np.float32)
    colour = rgb.astype(np.float32) * known[..., None]
    levels = [(colour, known)]
    while min(levels[-1][1].shape) > 2 and levels[-1][1].min() == 0:
        c, k = levels[-1]
        levels.append((cv2.pyrDown(c), cv2.pyrDown(k)))
    c, k = levels[-1]
    value = c / np.maximum(k, 1e-6)[..., None]
    for c, k in reversed(levels[:-1]):
        up = cv2.pyrUp(value, dstsize=(k.shape[1], k.shape[0]))
        alpha = np.clip(k * 2.0, 0.0, 1.0)[..., None] if c is not colour else known[..., None]
        value = alpha * (c / np.maximum(k, 1e-6)[..., None]) + (1.0 - alpha) * up
    out = rgb.copy()
    filled = np.clip(np.round(value), 0, 255).astype(np.uint8)
    out[hole > 0] = filled[hole > 0]
    return out


def remove_bubbles(rgb: np.ndarray, params: BubbleParams | None = None, method: str = "smooth",
                   grow: int = 2) -> tuple[np.ndarray, np.ndarray, list[Bubble]]:
    """(cleaned image, removed mask, bubbles). The removed mask is the detected one grown by
    ``grow`` px (JPEG smears an outline a pixel or two past its edge; left in, inpainting would
    spread it into the hole); 255 = removed, at the image's size."""
    mask, bubbles = detect_bubbles(rgb, params)
    if not bubbles:
        return rgb, mask, bubbles
    if grow > 0:
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    return inpaint(rgb, mask, method), mask, bubbles


def bubble_scores(pred_mask: np.ndarray, true_mask: np.ndarray | None) -> dict:
    """How a predicted mask compares with the truth (both: nonzero = bubble; ``None`` truth = no bubble).

    ``iou`` (None when neither has a bubble pixel), ``fp_area`` (predicted pixels outside the truth,
    as a share of the image), ``fn_area`` (truth pixels missed, same unit) and ``has_truth``."""
    pred = np.asarray(pred_mask) > 0
    if pred.ndim == 3:
        pred = pred.any(axis=2)
    if true_mask is None:
        truth = np.zeros_like(pred)
    else:
        truth = np.asarray(true_mask) > 0
        if truth.ndim == 3:
            truth = truth.any(axis=2)
    if truth.shape != pred.shape:
        raise ValueError(f"mask sizes differ: predicted {pred.shape}, truth {truth.shape}")
    union = int((pred | truth).sum())
    inter = int((pred & truth).sum())
    total = pred.size
    return {
        "has_truth": bool(truth.any()),
        "iou": (inter / union) if union else None,
        "fp_area": float((pred & ~truth).sum()) / total,
        "fn_area": float((truth & ~pred).sum()) / total,
    }
