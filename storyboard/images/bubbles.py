"""Find speech bubbles and caption boxes, mask them (fill, outline, tail, text, thought trails), paint them out.

A bubble, whatever its drawing style, is a region of one flat fill colour (white, a light tint, or
black for some caption boxes) holding text, in a compact shape (ellipse, rounded box, cloud, burst,
box, with or without a tail of the same fill), usually inside an outline band of even width.
``detect_bubbles`` works from exactly those cues, with no weights:

1. seeds: connected *flat* pixels (the largest colour step to a 3x3 neighbour is below a tolerance
   set from the image's own noise level) of a light or black colour, largest first;
2. the fill region of a seed: a flood fill from its most typical pixel over pixels within
   ``fill_tolerance`` of its colour that are not on an edge (so JPEG ringing around text does not cut
   a fill apart, and even a faint 1 px outline still walls it in); its holes are filled: fill + text;
3. the region must be one flat colour, of plausible size, compact (solidity), and not run along the
   frame edge (sky, paper, walls) -- unless it is cut by the frame *and* outlined everywhere else, as
   a bubble cut by the panel edge is; a black one must be a clean rectangle;
4. the holes must be *text*: several small ink parts (far from the fill colour), none large, of
   differing sizes set close together (not one mark repeated on a grid, as a wall's windows are),
   set as one block in the middle of the shape with air all around it (a lone speck apart from the
   text does not count). This is what tells a bubble from hatching, a window grid or a textured
   wall, whose marks run up to the region's edges;
5. the shape is completed: fill-coloured pixels next to the region that the edge map cut off (the
   narrow tips of a burst's spikes or a tail) are added back;
6. the outline is measured, not assumed: rings just outside the shape are examined one by one; the
   fill's soft edge and then the rings of one dark colour are added (0 for an outline-less box);
7. small outlined circles of the same fill near a found bubble (a thought bubble's trail) join it.

``remove_bubbles`` returns the image with the masked pixels inpainted (``storyboard.images.inpaint``),
the mask (``uint8``, 255 = removed, at the image's size) and one ``Bubble`` per bubble.
``bubble_scores`` is the metric the bench and the tests share. Measured figures:
``bench/bench_bubbles.py`` and docs/image_stages.md.

Why this module is long: the seven steps above share one working state (the gradient, the flood
masks, what is already claimed) and are one idea; split apart they would pass it around in pieces.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from storyboard.images.inpaint import INPAINT_METHODS, inpaint

__all__ = ["INPAINT_METHODS", "METHOD_VERSION", "Bubble", "BubbleParams", "bubble_scores", "detect_bubbles",
           "inpaint", "remove_bubbles"]

TRACE: list | None = None  # set to [] to record each judged region (debugging, the bench)
_LUMA = np.array([0.299, 0.587, 0.114])
SEED_HALF_SIDE = 720  # seeds are labelled at half size on pictures at least this large (short side)
# Bump when the detector or the inpainting changes what they output (resume keys include it).
# 2: flood-fill regions, cut-by-the-frame bubbles, completed shapes (burst spikes), thought trails.
# 3: text is no grid of one repeated mark (a wall's windows); a stray speck does not decide the text layout.
METHOD_VERSION = 3


@dataclass(frozen=True)
class BubbleParams:
    """The detector's knobs (set on the tuning split only; see docs/image_stages.md and the bench)."""

    work_side: int = 1600  # detect on a copy whose long side is at most this many pixels
    min_area: float = 0.002  # region (holes filled) as a share of the image: bounds
    max_area: float = 0.45
    min_fill_luma: float = 175.0  # fills are white or light tints, so dark text reads on them
    max_dark_fill_luma: float = 50.0  # ... or black (caption boxes with light text)
    min_dark_rectangularity: float = 0.93  # a dark fill must fill its minimum-area rectangle this well
    min_seed: float = 0.0004  # a flat seed region, as a share of the image
    fill_tolerance: float = 40.0  # colour distance that still counts as the same fill
    dark_fill_tolerance: float = 16.0  # ... for a black fill
    min_flat_share: float = 0.7  # share of a fill's pixels (away from edges) within flat_tolerance of its colour
    flat_tolerance: float = 12.0
    dark_flat_tolerance: float = 12.0  # largest 3x3 step inside a black fill's seed
    max_fill_std: float = 12.0  # colour spread of a fill
    min_solidity: float = 0.72  # filled area / convex hull area
    max_aspect: float = 8.0
    max_border_share: float = 0.2  # of the region's edge on the frame edge
    max_cut_border_share: float = 0.45  # ... for a region outlined all along the rest of its edge
    min_cut_outline: float = 0.85  # share of that rest that must be outline (dark) for a cut bubble
    min_text_parts: int = 3  # dark hole components that look like glyph strokes
    min_ink: float = 0.01  # share of the filled region that is holes (text)
    max_ink: float = 0.55
    max_part: float = 0.18  # no single ink part may be a large object
    max_text_block: float = 0.65  # the text block's bounding box, as a share of the shape
    max_text_offset: float = 0.25  # text block centre to shape centre, in inradii
    min_text_margin: float = 0.2  # clear space between text and edge, in inradii
    min_small_block_margin: float = 0.12  # ... for a text block of at most small_block of the shape (a
    small_block: float = 0.4  # wide cloud's bumps come close to a line of text; a grid of windows fills its wall)
    min_part_size_spread: float = 0.08  # glyph parts differ in size (std / mean of their box's long side) ...
    max_part_gap: float = 0.3  # ... and sit close (median gap to the nearest part, in its size): else one repeated mark
    speck_area: float = 0.25  # a speck: a part under this share of the median glyph part's area ...
    speck_gap: float = 0.5  # ... farther than this (in median glyph part sizes) from every glyph part
    ink_contrast: float = 60.0  # colour distance from the fill that counts as ink
    max_outline: float = 0.025  # thickest outline searched, as a share of the image's short side
    outline_frac: float = 0.8  # a ring belongs to the outline when this share of it is ink
    outline_start_frac: float = 0.6  # ... its first ring (a 1 px line, blurred by JPEG) when this share
    max_outline_luma: float = 100.0  # an outline wider than 3 px must be darker than this
    typical_outline: float = 0.003  # outline width taken where a dark background hides the line's end
    trail_reach: float = 1.0  # thought trails: searched this many bubble half-sizes around a bubble
    max_trail_part: float = 0.15  # a trail circle's area, as a share of its bubble's
    min_trail_px: int = 20


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


# --------------------------------------------------------------------------------------------
# Pixel helpers (OpenCV for the whole-image passes: numpy's reductions over the colour axis are
# ten times slower on a 1024-px picture)
# --------------------------------------------------------------------------------------------
def _colour_distance(rgb: np.ndarray, colour) -> np.ndarray:
    """Largest per-channel difference to ``colour``; uint8, the shape of ``rgb`` without its channels."""
    pixels = rgb if rgb.ndim == 3 else rgb[:, None, :]
    scalar = tuple(float(c) for c in colour) + (0.0,)
    b, g, r = cv2.split(cv2.absdiff(np.ascontiguousarray(pixels), scalar))
    out = cv2.max(cv2.max(b, g), r)
    return out if rgb.ndim == 3 else out.reshape(-1)


def _near(rgb: np.ndarray, colour, tolerance: float) -> np.ndarray:
    """uint8 0/1: pixels within ``tolerance`` of ``colour`` in every channel (one OpenCV pass)."""
    c = np.asarray(colour, np.float64)
    return cv2.inRange(rgb, tuple(c - tolerance), tuple(c + tolerance)) // 255


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    filled = np.zeros_like(mask)
    cv2.drawContours(filled, contours, -1, 1, thickness=cv2.FILLED)
    return filled


def _disk(radius: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))


@dataclass
class _Image:
    """What every step reads: the working picture, its edge maps and the flood-fill masks."""

    rgb: np.ndarray
    p: BubbleParams
    flat: np.ndarray = field(init=False)  # uint8: flat pixels (seeds)
    light_walls: np.ndarray = field(init=False)  # floodFill mask: 1 on edges (a light fill stops there)
    dark_walls: np.ndarray = field(init=False)  # floodFill mask for black fills (no walls)
    wall: np.ndarray = field(init=False)  # bool: on an edge
    area: int = field(init=False)
    max_rings: int = field(init=False)
    typical_outline: int = field(init=False)
    dark_seen: np.ndarray = field(init=False)  # bool: where black floods of the pixel's own colour went
    mark: int = 1  # the last light flood's mark in its mask

    def __post_init__(self) -> None:
        h, w = self.rgb.shape[:2]
        b, g, r = cv2.split(cv2.morphologyEx(self.rgb, cv2.MORPH_GRADIENT, np.ones((3, 3), np.uint8)))
        grad = cv2.max(cv2.max(b, g), r)
        tol = float(np.clip(3.0 * _noise_level(grad) + 6.0, 8.0, 20.0))
        # Seeds are light or black pixel by pixel, so a fill never merges with mid-tones next to it.
        # A soft step between two light colours (a pink box without a line on a light grey wall) is
        # no seed either: there the step over 5x5 is large and over 3x3 already half the tolerance;
        # beside a sharp edge (a thin margin next to text) the 3x3 step stays small. Black, printed
        # flat, must be flatter still: a black box beside a dark green wall.
        luma = cv2.cvtColor(self.rgb, cv2.COLOR_RGB2GRAY)
        b, g, r = cv2.split(cv2.morphologyEx(self.rgb, cv2.MORPH_GRADIENT, np.ones((5, 5), np.uint8)))
        soft_step = (cv2.max(cv2.max(b, g), r) > tol) & (grad > 0.5 * tol)
        light = (grad <= tol) & ~soft_step & (luma >= self.p.min_fill_luma - 15)
        dark = (grad <= min(tol, self.p.dark_flat_tolerance)) & (luma <= self.p.max_dark_fill_luma + 10)
        self.flat = (light | dark).astype(np.uint8)
        # An outline, even a faint 1 px one, is a wall a fill cannot flow through.
        self.wall = grad > 2.5 * tol + 20.0
        self.light_walls = np.zeros((h + 2, w + 2), np.uint8)
        self.light_walls[1:-1, 1:-1] = self.wall
        self.dark_walls = np.zeros((h + 2, w + 2), np.uint8)
        self.dark_seen = np.zeros((h, w), bool)
        self.area = h * w
        self.max_rings = max(2, int(round(self.p.max_outline * min(h, w))))
        self.typical_outline = max(1, round(self.p.typical_outline * min(h, w)))


def _noise_level(grad: np.ndarray) -> float:
    """The typical small step between neighbours in flat parts (JPEG/grain): the median of the steps below 40."""
    hist = cv2.calcHist([grad], [0], None, [40], [0, 40]).ravel()
    if hist.sum() == 0:
        return 0.0
    return float(np.searchsorted(np.cumsum(hist), hist.sum() / 2))


# --------------------------------------------------------------------------------------------
# Seeds and fill regions
# --------------------------------------------------------------------------------------------
@dataclass
class _Seed:
    colour: np.ndarray
    point: tuple[int, int]  # x, y: the pixel nearest the seed's mean colour (the flood starts there)
    area: int
    dark: bool


def _seeds(im: _Image) -> list[_Seed]:
    """Flat regions, light (or black), big enough to be (part of) a bubble fill; largest first.

    On a picture of at least ``SEED_HALF_SIDE`` px on its short side they are labelled at half size
    (pixels whose 2x2 block is all flat): a quarter of the pixels, and a fill that large is never
    thinner than a few pixels."""
    p = im.p
    flat, rgb, k = im.flat, im.rgb, 1
    if min(flat.shape) >= SEED_HALF_SIDE:
        h, w = flat.shape
        flat = (cv2.resize(flat * 255, (w // 2, h // 2), interpolation=cv2.INTER_AREA) == 255).astype(np.uint8)
        rgb, k = cv2.resize(rgb, (w // 2, h // 2), interpolation=cv2.INTER_AREA), 2
    n, labels, stats, _ = cv2.connectedComponentsWithStats(flat, connectivity=4)
    seeds = []
    for i in np.flatnonzero(stats[:, cv2.CC_STAT_AREA] * k * k >= p.min_seed * im.area):
        if i == 0:
            continue
        x, y, w, h, area = (int(v) for v in stats[i])
        inside = (labels[y:y + h, x:x + w] == i).astype(np.uint8)
        crop = rgb[y:y + h, x:x + w]
        colour = np.array(cv2.mean(crop, mask=inside)[:3])
        luma = float(colour @ _LUMA)
        if p.max_dark_fill_luma < luma < p.min_fill_luma:
            continue
        distance = _colour_distance(crop, colour)
        distance[inside == 0] = 255
        py, px = np.unravel_index(int(np.argmin(distance)), distance.shape)
        seeds.append(_Seed(colour, (k * (x + int(px)), k * (y + int(py))), area * k * k, luma <= p.max_dark_fill_luma))
    seeds.sort(key=lambda s: -s.area)
    return seeds


def _flood(im: _Image, seed: _Seed) -> tuple[tuple[int, int, int, int], np.ndarray] | None:
    """(box x0, y0, x1, y1; the region as uint8 in that box): pixels connected to the seed within the
    fill tolerance of its colour (per channel), not crossing an edge (light fills); None when the
    seed lies in a region already flooded or the region cannot be a bubble by its size alone.

    The light flood mask keeps every region flooded so far (marked 2, 3, ...): a later flood stops
    at them, and a seed inside one starts nothing. Black floods reach further (dark hair, a shadow
    beside a box) and are cut apart afterwards, so each starts afresh; a black seed is skipped only
    where an earlier black flood of its own colour already went."""
    x, y = seed.point
    if seed.dark:
        if im.dark_seen[y, x]:
            return None
        walls, mark, tol = im.dark_walls, 2, im.p.dark_fill_tolerance
    else:
        walls, tol = im.light_walls, im.p.fill_tolerance
        if walls[y + 1, x + 1]:
            return None
        if im.mark == 255:  # marks run out: earlier regions become plain walls
            walls[walls > 1] = 1
            im.mark = 1
        im.mark += 1
        mark = im.mark
    flags = 4 | cv2.FLOODFILL_FIXED_RANGE | cv2.FLOODFILL_MASK_ONLY | (mark << 8)
    area, _, _, (x, y, w, h) = cv2.floodFill(im.rgb, walls, seed.point, 0, (tol,) * 3, (tol,) * 3, flags)
    inner = walls[1 + y:1 + y + h, 1 + x:1 + x + w]
    region = (inner == mark).astype(np.uint8) if area <= im.p.max_area * im.area or seed.dark else None
    if seed.dark:
        inner[:] = 0
        same = _near(im.rgb[y:y + h, x:x + w], seed.colour, im.p.flat_tolerance)
        im.dark_seen[y:y + h, x:x + w] |= (same & region) > 0
    if region is None or area > im.p.max_area * im.area or w * h < im.p.min_area * im.area:
        return None
    return (x, y, x + w, y + h), region


def _dark_shapes(region: np.ndarray, p: BubbleParams, image_area: int) -> tuple[np.ndarray, np.ndarray]:
    """A black caption box often touches other dark things (a panel border, dark hair, a shadow) and
    its margins are thin: shapes are the region with its small (text) holes filled, opened with a
    7x7 square so that anything thinner than 7 px (a border line, a strip of hair) comes off."""
    contours, hierarchy = cv2.findContours(region, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
    shapes = region.copy()
    if hierarchy is not None:
        largest = p.max_part * p.max_area * image_area  # text, not a framed panel
        holes = [c for c, h in zip(contours, hierarchy[0]) if h[3] >= 0 and cv2.contourArea(c) <= largest]
        cv2.drawContours(shapes, holes, -1, 1, thickness=cv2.FILLED)
    shapes = cv2.morphologyEx(shapes, cv2.MORPH_OPEN, np.ones((7, 7), np.uint8))
    n, labels, stats, _ = cv2.connectedComponentsWithStats(shapes, connectivity=4)
    return labels, stats


# --------------------------------------------------------------------------------------------
# Judging one region
# --------------------------------------------------------------------------------------------
def _text_evidence(to_fill: np.ndarray, region: np.ndarray, filled: np.ndarray, p: BubbleParams,
                   cut: tuple[bool, bool] = (False, False)) -> tuple[bool, int]:
    """Do the holes of ``region`` hold text set on its fill? (``to_fill``: each pixel's colour distance
    to the fill.) Returns (yes, number of glyph parts).

    Text is *ink* in the holes (pixels far from the fill colour; counted on the ink, not the holes:
    JPEG ringing joins the holes of a line of small text into one), in several small parts of
    differing sizes set close together -- not one mark repeated at a spacing of about its own size,
    as a wall's windows or tiles are --, set as one block in the middle of the shape with air all
    around it. The last test is what tells a bubble from hatching or a textured wall, whose marks
    run everywhere up to the edges. The block is judged with every ink part and, when that fails,
    once more without its specks (``_specks``): a fleck of outline trapped where a tail meets a
    cloud's bumps must not decide where the text sits.

    A bubble cut by the frame (``cut``: along x, along y) keeps its text clear of its own outline,
    not of the frame, and its visible part is off-centre across the cut: the margin is measured to
    the outline only, the offset along the cut only, both in the visible shape's inradius."""
    holes = (filled > 0) & (region == 0)
    filled_area = int(cv2.countNonZero(filled))
    if filled_area == 0:
        return False, 0
    ink = (holes & (to_fill >= p.ink_contrast)).astype(np.uint8)
    ink_area = int(cv2.countNonZero(ink))
    if not (p.min_ink <= ink_area / filled_area <= p.max_ink):
        return False, 0
    n, labels, stats, _ = cv2.connectedComponentsWithStats(ink, connectivity=8)
    stats = stats[1:]
    areas = stats[:, cv2.CC_STAT_AREA]
    if areas.size == 0 or areas.max() > p.max_part * filled_area:
        return False, 0
    glyph = areas >= 3
    parts = int(glyph.sum())
    if parts < p.min_text_parts:
        return False, parts
    gaps = _box_gaps(stats[glyph], stats[glyph])
    np.fill_diagonal(gaps, np.inf)
    sizes = stats[glyph][:, 2:4].max(axis=1).astype(np.float64)
    if _repeated_mark(stats[glyph], sizes, gaps.min(axis=1), p):
        return False, parts
    # Layout: the text block's box is a modest share of the shape, centred, away from the edge.
    inside = cv2.distanceTransform(filled, cv2.DIST_L2, 3)  # the frame edge is no edge here ...
    framed = cv2.copyMakeBorder(filled, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    inradius = float(cv2.distanceTransform(framed, cv2.DIST_L2, 3).max())  # ... but it bounds the visible shape
    fy, fx = np.nonzero(filled)
    shape = (inside, inradius, float(fx.mean()), float(fy.mean()), filled_area, cut)
    if _block_in_the_middle(ink, shape, p):
        return True, parts
    specks = _specks(stats, glyph, sizes, p)
    if not specks.any() or specks.all():
        return False, parts
    kept = np.zeros(n, np.uint8)
    kept[1:][~specks] = 1
    return _block_in_the_middle(kept[labels], shape, p), parts


def _box_gaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Gaps (px) between the boxes of two lists of component stats (x, y, w, h, ...): a len(a) x len(b) matrix."""
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    gx = np.maximum(0, np.maximum(ax0, bx0) - np.minimum(ax1, bx1))
    gy = np.maximum(0, np.maximum(ay0, by0) - np.minimum(ay1, by1))
    return np.hypot(gx, gy)


def _repeated_mark(parts: np.ndarray, sizes: np.ndarray, nearest: np.ndarray, p: BubbleParams) -> bool:
    """Are the glyph parts (``parts``: their component stats; ``sizes``: the long side of each one's
    box; ``nearest``: its gap to the nearest other part) one mark repeated on a grid -- a wall's
    windows, tiles -- rather than text? Glyph parts (jamo, letters, punctuation) differ in size and sit
    close together, a fraction of their size apart; a grid's parts are one size, set apart by about
    their size, in rows *and* columns (a line or a column of text runs one way). All must hold, with
    more than three parts (a bubble holding only "..." is not taken for a grid)."""
    if sizes.size < 4:
        return False
    spread = float(sizes.std() / max(sizes.mean(), 1.0))
    gap = float(np.median(nearest / np.maximum(sizes, 1.0)))
    if spread >= p.min_part_size_spread or gap <= p.max_part_gap:
        return False
    size = float(np.median(sizes))
    centres = parts[:, 0:2] + parts[:, 2:4] / 2.0
    lines = [1 + int((np.diff(np.sort(centres[:, axis])) > 0.5 * size).sum()) for axis in (0, 1)]
    return min(lines) >= 2


def _specks(stats: np.ndarray, glyph: np.ndarray, sizes: np.ndarray, p: BubbleParams) -> np.ndarray:
    """Which ink parts are specks, not text: those under 3 px (too small to count as glyph parts), and
    small parts (under ``speck_area`` of the median glyph part's area) lying apart from every glyph part
    (farther than ``speck_gap`` median glyph sizes): dust, or a fleck of outline trapped inside where a
    tail meets the body. A period or the dots of "..." sit next to a glyph."""
    areas = stats[:, cv2.CC_STAT_AREA]
    median_area, median_size = float(np.median(areas[glyph])), float(np.median(sizes))
    gaps = _box_gaps(stats, stats[glyph])
    gaps[np.flatnonzero(glyph), np.arange(int(glyph.sum()))] = np.inf  # a part is no neighbour of itself
    apart = gaps.min(axis=1) > p.speck_gap * median_size
    return ~glyph | ((areas < p.speck_area * median_area) & apart)


def _block_in_the_middle(ink: np.ndarray, shape: tuple, p: BubbleParams) -> bool:
    """Is the box around ``ink`` a modest share of the shape, centred in it and clear of its edge?
    (``shape``: its inside distances, inradius, centre x and y, area and the frame cut, as
    ``_text_evidence`` describes.)"""
    inside, inradius, cx, cy, area, cut = shape
    ys, xs = np.nonzero(ink)
    block = (xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1) / area
    dx = 0.0 if cut[0] else (xs.min() + xs.max()) / 2 - cx
    dy = 0.0 if cut[1] else (ys.min() + ys.max()) / 2 - cy
    off = np.hypot(dx, dy) / inradius
    margin = float(inside[ink > 0].min()) / inradius
    min_margin = p.min_text_margin if block > p.small_block else p.min_small_block_margin
    return block <= p.max_text_block and off <= p.max_text_offset and margin >= min_margin


def _outline_rings(crop: np.ndarray, to_fill: np.ndarray, filled: np.ndarray, fill: np.ndarray, max_rings: int,
                   typical: int, p: BubbleParams) -> tuple[int, int, np.ndarray | None]:
    """(how many one-pixel rings just outside ``filled`` belong to the bubble, the outline's width,
    its colour or None).

    First the fill's soft edge (JPEG bleeding and antialiasing keep the flat region a few pixels
    short of the outline: up to ``LEAD`` rings not yet ink), then the outline: rings that are mostly
    one dark colour, ring after ring (a turn of colour from one ring to the next ends it: a thin
    black line on a dark coat; a ring darker than the first, the core of an anti-aliased line, does
    not). An "outline" that never ends within ``max_rings`` is a dark background as dark as the line:
    then a typical outline width is taken. A band that is not dark (a grey wall behind an
    outline-less box) is an outline only when it is as thin as a line."""
    lead_max = 4
    outside = (1 - filled).astype(np.uint8)
    dist = cv2.distanceTransform(outside, cv2.DIST_L2, 3)
    start, outline, last = 0, None, 0

    def ended(width: int):
        luma = float(outline @ _LUMA)
        if luma > float(fill @ _LUMA) - 1.5 * p.ink_contrast or (luma > p.max_outline_luma and width > 3):
            return start, 0, None  # lighter than an outline, or a wide grey band: the bubble ends at its soft edge
        return start + width, width, outline

    for d in range(1, max_rings + lead_max + 1):
        ring = (dist > d - 1) & (dist <= d)
        if not ring.any():
            return ended(last - start) if outline is not None else (start, 0, None)
        if outline is None:
            ink = to_fill[ring] >= p.ink_contrast
            if ink.mean() >= p.outline_start_frac:
                outline, last = np.median(crop[ring][ink], axis=0), d
                previous = np.median(crop[ring], axis=0)
                continue
            soft = (to_fill[ring] <= p.fill_tolerance) | ink
            if d > lead_max or soft.mean() < p.outline_frac:
                return start, 0, None  # no outline: the bubble ends with its soft edge
            start = d
            continue
        pixels = crop[ring]
        median = np.median(pixels, axis=0)
        if last - start <= 2 and _away_from(median, previous, fill) > p.ink_contrast * 0.25:
            outline = median  # an anti-aliased line: its first ring was a blend, its core is darker
        same = _colour_distance(pixels, outline) <= p.ink_contrast * 0.75
        if same.mean() < p.outline_frac or np.abs(median - previous).max() > p.ink_contrast * 0.5 and (
                outline is not median):
            return ended(last - start)  # the ring is another colour, or the colour turned: the outline ended
        previous = median
        last = d
        if last - start >= max_rings:
            # Never ends: a dark background as dark as the line hides where the line ends; take a
            # typical outline's width (0.3 % of the short side, 3 px at 1024).
            return ended(typical)
    return ended(last - start)


def _away_from(colour: np.ndarray, previous: np.ndarray, fill: np.ndarray) -> float:
    """How much farther from the fill ``colour`` is than ``previous`` (largest channel step)."""
    return float(np.abs(colour - fill).max() - np.abs(previous - fill).max())


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


def _complete(filled: np.ndarray, near: np.ndarray, reach: int, max_added: float = 0.2) -> np.ndarray:
    """``filled`` with the fill-coloured pixels next to it that the edge map cut off (a burst's
    spike tips, a narrow tail), up to ``reach`` px away; unchanged when that would add more than
    ``max_added`` of its area (a fill leaking out through a gap in a faint outline)."""
    band = (cv2.distanceTransform(1 - filled, cv2.DIST_L2, 3) <= reach).astype(np.uint8) & near
    n, labels = cv2.connectedComponents(band | filled, connectivity=4)
    keep = np.zeros(n, bool)
    keep[np.unique(labels[filled > 0])] = True
    keep[0] = False
    grown = _fill_holes(keep[labels].astype(np.uint8))
    added = int(cv2.countNonZero(grown)) - int(cv2.countNonZero(filled))
    return grown if added <= max_added * cv2.countNonZero(filled) else filled


def _crop_box(im: _Image, box: tuple[int, int, int, int], pad: int) -> tuple[int, int, int, int]:
    H, W = im.rgb.shape[:2]
    x0, y0, x1, y1 = box
    return max(0, x0 - pad), max(0, y0 - pad), min(W, x1 + pad), min(H, y1 + pad)


def _judge(im: _Image, fill: np.ndarray, box: tuple[int, int, int, int], region: np.ndarray,
           shape: np.ndarray | None = None):
    """(box, mask, info) of one fill region (``region``/``shape`` in ``box``) if it is a bubble, else
    the reason it is not (a str). Cheap tests first."""
    p = im.p
    x0, y0, x1, y1 = box
    bw, bh = x1 - x0, y1 - y0
    if cv2.countNonZero(region) > p.max_area * im.area or bw * bh < p.min_area * im.area:
        return "area"
    if max(bw, bh) > p.max_aspect * max(1, min(bw, bh)):
        return "aspect"
    cx0, cy0, cx1, cy1 = _crop_box(im, box, im.max_rings + 6)
    crop = im.rgb[cy0:cy1, cx0:cx1]
    reg = np.zeros(crop.shape[:2], np.uint8)
    reg[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = region
    # A fill is one flat colour: away from its edges and the text (JPEG rings there), most of it is
    # flat and its colour hardly spreads; grass, skin or sky texture is not.
    core = cv2.erode(reg, np.ones((5, 5), np.uint8))
    core_n = cv2.countNonZero(core)
    to_fill = _colour_distance(crop, fill)
    if not core_n or cv2.countNonZero((to_fill <= p.flat_tolerance).view(np.uint8) & core) < p.min_flat_share * core_n:
        return "not flat"
    if float(cv2.meanStdDev(crop, mask=core)[1].max()) > p.max_fill_std:
        return "spread"
    if shape is None:
        filled = _fill_holes(reg)
    else:
        filled = np.zeros_like(reg)
        filled[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] = shape
    reg &= filled
    filled_area = int(cv2.countNonZero(filled))
    if not (p.min_area * im.area <= filled_area <= p.max_area * im.area):
        return "area"
    border = _border_share(filled, (cx0, cy0, cx1, cy1), im.rgb.shape[1::-1])
    if border > p.max_cut_border_share:
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
    H, W = im.rgb.shape[:2]
    cut = ((cx0 == 0 and filled[:, 0].any()) or (cx1 == W and filled[:, -1].any()),
           (cy0 == 0 and filled[0, :].any()) or (cy1 == H and filled[-1, :].any()))
    is_text, parts = _text_evidence(to_fill, reg, filled, p, cut)
    if not is_text:
        return "text"
    if shape is None:
        filled = _complete(filled, (to_fill <= p.fill_tolerance).view(np.uint8), im.max_rings)
    grow, outline, outline_colour = _outline_rings(crop, to_fill, filled, fill, im.max_rings, im.typical_outline, p)
    if border > p.max_border_share and (outline == 0 or not _ringed(
            crop, filled, outline_colour, grow, p.min_cut_outline, p)):
        return "border"  # a bubble cut by the frame is outlined all along the rest of its edge
    mask = cv2.dilate(filled, _disk(grow)) if grow else filled
    info = {"fill": tuple(int(c) for c in fill), "outline_px": outline, "text_parts": parts,
            "solidity": float(solidity), "grow": grow, "outline_colour": outline_colour}
    return (cx0, cy0, cx1, cy1), mask, info


def _ringed(pixels: np.ndarray, blob: np.ndarray, colour, rings: int, share: float, p: BubbleParams) -> bool:
    """Is one of the first ``rings`` one-pixel rings around ``blob`` at least ``share`` of the line
    ``colour``? One ring is enough: the first may be a blend with the fill, the last with what lies
    beyond; where the frame edge cuts a bubble it cuts the rings off too, and only the rest is read."""
    dist = cv2.distanceTransform(1 - blob, cv2.DIST_L2, 3)
    for d in range(1, rings + 1):
        ring = (dist > d - 1) & (dist <= d)
        same = _colour_distance(pixels[ring], colour) <= p.ink_contrast * 0.75
        if same.size and float(same.mean()) >= share:
            return True
    return False


# --------------------------------------------------------------------------------------------
# Thought trails
# --------------------------------------------------------------------------------------------
def _trail(im: _Image, taken: np.ndarray, box: tuple[int, int, int, int], info: dict) -> list[tuple]:
    """Small outlined circles of the bubble's fill leading away from it (a thought bubble's trail):
    [(box, mask)], or [] unless there is a chain of at least two.

    A circle is a round, flat, text-free blob of the fill colour within ``trail_reach`` bubble
    half-sizes, apart from anything taken, ringed by the bubble's line colour; it gets the bubble's
    outline width. The chain starts within two of its circle's diameters of the bubble, and each
    next circle, no larger, lies within two diameters of the one before: a lone white circle beside a
    bubble (a hand, a door knob, a window pane) is not a trail."""
    p = im.p
    grow, colour = info["grow"], info["outline_colour"]
    if colour is None or not grow:
        return []
    bx, by, bw, bh = cv2.boundingRect(taken[box[1]:box[3], box[0]:box[2]])
    x0, y0 = box[0] + bx, box[1] + by
    wx0, wy0, wx1, wy1 = _crop_box(im, (x0, y0, x0 + bw, y0 + bh), int(p.trail_reach * max(bw, bh) / 2))
    free = (taken[wy0:wy1, wx0:wx1] == 0) & ~im.wall[wy0:wy1, wx0:wx1]
    near = (_near(im.rgb[wy0:wy1, wx0:wx1], info["fill"], p.fill_tolerance) & free).view(np.uint8)
    n, labels, stats, centres = cv2.connectedComponentsWithStats(near, connectivity=4)
    largest = p.max_trail_part * cv2.countNonZero(taken[y0:y0 + bh, x0:x0 + bw])
    circles = []  # (centre x, y in the picture, radius, box, shape)
    for i in range(1, n):
        cx, cy, cw, ch, area = (int(v) for v in stats[i])
        if not p.min_trail_px <= area <= largest or max(cw, ch) > 1.5 * min(cw, ch) or area < 0.6 * cw * ch:
            continue  # not a small round blob
        sx0, sy0, sx1, sy1 = _crop_box(im, (wx0 + cx, wy0 + cy, wx0 + cx + cw, wy0 + cy + ch), grow + 2)
        blob = (labels[sy0 - wy0:sy1 - wy0, sx0 - wx0:sx1 - wx0] == i).astype(np.uint8)
        if blob.shape != (sy1 - sy0, sx1 - sx0) or cv2.countNonZero(_fill_holes(blob)) > 1.1 * area:
            continue  # cut by the search window, or holding marks (text, a pattern)
        part = im.rgb[sy0:sy1, sx0:sx1]
        if float(cv2.meanStdDev(part, mask=blob)[1].max()) > p.max_fill_std:
            continue
        # Completed as the bubble's fill was (a small blob's rim, cut off by the edge map, is a
        # large share of it: reach bounds what is added).
        blob = _complete(blob, _near(part, info["fill"], p.fill_tolerance), grow + 2, max_added=1.0)
        (_, _), radius = cv2.minEnclosingCircle(cv2.findNonZero(blob))
        if cv2.countNonZero(blob) < 0.7 * np.pi * radius ** 2:
            continue  # not round: a window pane, a square button
        shape = cv2.dilate(blob, _disk(grow))
        if taken[sy0:sy1, sx0:sx1][shape > 0].any() or not _ringed(part, blob, colour, grow + 1, p.outline_frac, p):
            continue
        centre = (wx0 + centres[i][0], wy0 + centres[i][1])
        circles.append((centre, radius, (sx0, sy0, sx1, sy1), shape))
    return [(box, shape) for _, _, box, shape in _chain(circles, taken[wy0:wy1, wx0:wx1], (wx0, wy0))]


def _chain(circles: list, bubble: np.ndarray, origin: tuple[int, int]) -> list:
    """The longest run of circles from the bubble outward (see ``_trail``); [] when shorter than two."""
    if len(circles) < 2:
        return []
    to_bubble = cv2.distanceTransform((bubble == 0).astype(np.uint8), cv2.DIST_L2, 3)
    gap = lambda c: float(to_bubble[int(c[0][1]) - origin[1], int(c[0][0]) - origin[0]]) - c[1]
    best: list = []
    for first in (c for c in circles if gap(c) <= 4 * c[1]):
        chain, rest = [first], [c for c in circles if c is not first]
        while True:
            last = chain[-1]
            nexts = [c for c in rest if c[1] <= 1.15 * last[1]
                     and np.hypot(c[0][0] - last[0][0], c[0][1] - last[0][1]) - c[1] - last[1] <= 4 * last[1]]
            if not nexts:
                break
            step = min(nexts, key=lambda c: np.hypot(c[0][0] - last[0][0], c[0][1] - last[0][1]))
            chain.append(step)
            rest.remove(step)
        best = max(best, chain, key=len)
    return best if len(best) >= 2 else []


# --------------------------------------------------------------------------------------------
# The detector
# --------------------------------------------------------------------------------------------
def _regions(im: _Image, seed: _Seed):
    """The fill region(s) a seed leads to, each as (box, region, shape or None)."""
    flooded = _flood(im, seed)
    if flooded is None:
        return []
    box, region = flooded
    if not seed.dark:
        return [(box, region, None)]
    x0, y0 = box[:2]
    labels, stats = _dark_shapes(region, im.p, im.area)
    out = []
    for label in np.flatnonzero(stats[:, cv2.CC_STAT_AREA] >= im.p.min_area * im.area):
        if label == 0:
            continue
        bx, by, bw, bh, area = (int(v) for v in stats[label])
        sub = (labels[by:by + bh, bx:bx + bw] == label).astype(np.uint8)
        fill = region[by:by + bh, bx:bx + bw] & sub
        if area - cv2.countNonZero(fill) < im.p.min_ink * area:
            continue  # no room for text in it: a dark brick, a door, a coat
        out.append(((x0 + bx, y0 + by, x0 + bx + bw, y0 + by + bh), fill, sub))
    return out


def detect_bubbles(rgb: np.ndarray, params: BubbleParams | None = None) -> tuple[np.ndarray, list[Bubble]]:
    """The bubble mask (uint8, 255 = bubble, the image's size) and one ``Bubble`` per bubble found.

    Flat light (or black) regions are seeds, largest first; each seed's fill region (a flood fill
    within ``fill_tolerance`` of its colour) is judged once: a seed inside a region already judged
    starts nothing."""
    p = params or BubbleParams()
    H, W = rgb.shape[:2]
    scale = min(1.0, p.work_side / max(H, W))
    work = rgb if scale == 1.0 else cv2.resize(rgb, (round(W * scale), round(H * scale)), interpolation=cv2.INTER_AREA)
    if not (work.flags.c_contiguous and work.flags.writeable):
        work = work.copy()  # cv2.floodFill takes the picture as an in/out argument, even in mask-only mode
    im = _Image(work, p)
    h, w = work.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    found: list[tuple[tuple[int, int, int, int], dict]] = []
    for seed in _seeds(im):
        for box, region, shape in _regions(im, seed):
            result = _judge(im, seed.colour, box, region, shape)
            if TRACE is not None:
                TRACE.append((box, tuple(int(c) for c in seed.colour), result if isinstance(result, str) else "bubble"))
            if isinstance(result, str):
                continue
            (x0, y0, x1, y1), sub, info = result
            mask[y0:y1, x0:x1] |= sub
            for (tx0, ty0, tx1, ty1), part in _trail(im, mask, (x0, y0, x1, y1), info):
                mask[ty0:ty1, tx0:tx1] |= part
                x0, y0, x1, y1 = min(x0, tx0), min(y0, ty0), max(x1, tx1), max(y1, ty1)
            found.append(((x0, y0, x1, y1), info))
    if scale != 1.0:
        mask = (cv2.resize(mask.astype(np.float32), (W, H), interpolation=cv2.INTER_LINEAR) >= 0.5).astype(np.uint8)
    mask *= 255
    bubbles = []
    for (x0, y0, x1, y1), info in found:
        box = (int(x0 / scale), int(y0 / scale), min(W, int(np.ceil(x1 / scale))), min(H, int(np.ceil(y1 / scale))))
        sub = mask[box[1]:box[3], box[0]:box[2]]
        bubbles.append(Bubble(box=_tight_box(sub, box), area=float(cv2.countNonZero(sub)) / (H * W),
                              fill=info["fill"], outline_px=info["outline_px"], text_parts=info["text_parts"],
                              solidity=info["solidity"]))
    bubbles.sort(key=lambda b: (b.box[1], b.box[0]))
    return mask, bubbles


def _tight_box(sub: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = cv2.boundingRect(sub)
    if not w:
        return box
    return box[0] + x, box[1] + y, box[0] + x + w, box[1] + y + h


def remove_bubbles(rgb: np.ndarray, params: BubbleParams | None = None, method: str = "smooth",
                   grow: int = 2) -> tuple[np.ndarray, np.ndarray, list[Bubble]]:
    """(cleaned image, removed mask, bubbles). The removed mask is the detected one grown by
    ``grow`` px (JPEG smears an outline a pixel or two past its edge; left in, inpainting would
    spread it into the hole); 255 = removed, at the image's size."""
    mask, bubbles = detect_bubbles(rgb, params)
    if not bubbles:
        return rgb, mask, bubbles
    if grow > 0:
        mask = cv2.dilate(mask, _disk(grow))
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
