"""Speech-bubble masks: measured against the sample generator's exact masks, across its drawing styles."""
from __future__ import annotations

import json
from collections import defaultdict

import cv2
import numpy as np
import pytest
from PIL import Image

from storyboard.core.imageio import load_rgb
from storyboard.images.bubbles import (
    INPAINT_METHODS,
    BubbleParams,
    bubble_scores,
    detect_bubbles,
    inpaint,
    remove_bubbles,
)

TARGET_IOU = 0.85
MAX_FP_AREA = 0.005


@pytest.fixture(scope="module")
def scored(sample_data):
    """Every sample image scored once: (truth entry, scores, predicted mask, true mask)."""
    truth = json.loads((sample_data / "ground_truth.json").read_text(encoding="utf-8"))
    rows = []
    for rel, info in truth["images"].items():
        rgb = load_rgb(sample_data / "images" / rel).rgb
        true_mask = None
        if info["bubble_mask"]:
            true_mask = np.asarray(Image.open(sample_data / info["bubble_mask"]).convert("L")) > 0
        pred, _ = detect_bubbles(rgb)
        rows.append((rel, info, bubble_scores(pred, true_mask), pred > 0, true_mask))
    return rows


def test_mean_iou_over_images_with_bubbles_meets_the_target(scored):
    ious = [s["iou"] for _, _, s, _, _ in scored if s["has_truth"]]
    assert len(ious) >= 8
    assert np.mean(ious) >= TARGET_IOU, f"mean IoU {np.mean(ious):.3f} over {len(ious)} images"


def test_no_false_bubbles_on_images_without_any(scored):
    clean = [(rel, s["fp_area"]) for rel, _, s, _, _ in scored if not s["has_truth"]]
    assert len(clean) >= 5
    worst = max(clean, key=lambda x: x[1])
    assert worst[1] < MAX_FP_AREA, f"{worst[0]}: {worst[1]:.2%} of the image wrongly masked"


def test_every_drawing_style_is_found(scored):
    """Per bubble (IoU inside its own box): every shape, tails, vertical text, thin and thick
    outlines, tinted and black fills -- not one drawing style."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for _, info, _, pred, true in scored:
        for bubble in info["bubbles"]:
            x0, y0, x1, y1 = bubble["box"]
            x0, y0 = max(0, x0 - 3), max(0, y0 - 3)
            p, t = pred[y0:y1 + 3, x0:x1 + 3], true[y0:y1 + 3, x0:x1 + 3]
            iou = (p & t).sum() / max((p | t).sum(), 1)
            kinds = [bubble["shape"], "tail" if bubble["tail"] else "no tail",
                     "vertical" if bubble["vertical"] else "horizontal",
                     "no outline" if bubble["outline_px"] == 0 else ("thin" if bubble["outline_px"] <= 2 else "thick"),
                     "white" if tuple(bubble["fill"]) == (255, 255, 255) else "tinted/black"]
            for kind in kinds:
                by_kind[kind].append(iou)
    assert {"ellipse", "rounded_box", "cloud", "caption_box", "tail", "vertical", "thin", "thick"} <= set(by_kind)
    for kind, ious in by_kind.items():
        assert np.mean(ious) >= 0.75, f"{kind}: mean per-bubble IoU {np.mean(ious):.2f} over {len(ious)}"


def _drawn_bubble(vertical: bool = False, outline: int = 3, fill=(255, 255, 255), background=None):
    """A bubble drawn with OpenCV only (no font files): ellipse + tail, outline, 'text' marks."""
    rng = np.random.default_rng(3)
    page = background if background is not None else rng.integers(60, 200, (240, 320, 3)).astype(np.uint8)
    page = cv2.GaussianBlur(page, (0, 0), 2)
    shape = np.zeros(page.shape[:2], np.uint8)
    cv2.ellipse(shape, (160, 100), (90, 50), 0, 0, 360, 1, -1)
    cv2.fillPoly(shape, [np.array([[150, 130], [180, 130], [200, 190]], np.int32)], 1)
    outer = cv2.dilate(shape, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * outline + 1,) * 2))
    page[outer > 0] = (20, 20, 20)
    page[shape > 0] = fill
    text = "ABC DEF" if not vertical else "A"
    if vertical:
        for i, char in enumerate("ABCD"):
            cv2.putText(page, char, (152, 75 + 17 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    else:
        cv2.putText(page, text, (115, 108), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    return page, outer > 0


@pytest.mark.parametrize("vertical, outline, fill", [(False, 3, (255, 255, 255)), (True, 1, (224, 238, 255)),
                                                     (False, 5, (255, 248, 200))])
def test_a_drawn_bubble_is_masked_with_its_outline_and_tail(vertical, outline, fill):
    page, truth = _drawn_bubble(vertical, outline, fill)
    mask, bubbles = detect_bubbles(page)
    assert len(bubbles) == 1
    scores = bubble_scores(mask, truth)
    assert scores["iou"] >= 0.9, scores
    assert abs(bubbles[0].outline_px - outline) <= 1


def test_texture_and_flat_regions_without_text_are_left_alone():
    rng = np.random.default_rng(0)
    noise = cv2.GaussianBlur(rng.integers(0, 255, (240, 320, 3)).astype(np.uint8), (0, 0), 1.5)
    page = noise.copy()
    cv2.ellipse(page, (160, 120), (80, 50), 0, 0, 360, (255, 255, 255), -1)  # an empty white ellipse
    cv2.ellipse(page, (160, 120), (80, 50), 0, 0, 360, (20, 20, 20), 3)
    for image in (noise, page):
        mask, bubbles = detect_bubbles(image)
        assert not bubbles and not mask.any()


def test_inpainting_changes_only_the_mask_and_blends_with_the_surroundings():
    background = np.full((240, 320, 3), (90, 140, 200), np.uint8)
    page, _ = _drawn_bubble(background=background.copy())
    for method in INPAINT_METHODS:
        cleaned, removed, bubbles = remove_bubbles(page, method=method)
        assert bubbles and removed.shape == page.shape[:2]
        outside = removed == 0
        assert (cleaned[outside] == page[outside]).all(), method
        inside = cleaned[removed > 0].astype(int)
        close = (np.abs(inside - (90, 140, 200)).max(axis=1) <= 12).mean()
        assert close >= 0.99, f"{method}: {1 - close:.1%} of the painted pixels keep a ghost of outline or text"
    assert inpaint(page, np.zeros(page.shape[:2], np.uint8)) is page


def test_bubble_scores():
    pred = np.zeros((10, 10), np.uint8)
    true = np.zeros((10, 10), bool)
    assert bubble_scores(pred, None) == {"has_truth": False, "iou": None, "fp_area": 0.0, "fn_area": 0.0}
    pred[0:2, 0:5] = 255
    true[0:2, 0:10] = True
    s = bubble_scores(pred, true)
    assert s["iou"] == 0.5 and s["fp_area"] == 0.0 and s["fn_area"] == 0.1 and s["has_truth"]
    assert bubble_scores(pred, None)["fp_area"] == 0.1
    with pytest.raises(ValueError):
        bubble_scores(pred, np.zeros((5, 5), bool))


# --------------------------------------------------------------------------------------------
# Held out: pictures and seeds the detector was never tuned on (storyboard/devkit/bubble_styles.py)
# --------------------------------------------------------------------------------------------
HELD_OUT_IOU = 0.90
MISSED = 0.5


def _background(seed: int, dark: bool = False) -> np.ndarray:
    """A busy 1024 x 768 picture: blurred coloured noise (dark: a night scene)."""
    rng = np.random.default_rng(seed)
    page = cv2.GaussianBlur(rng.integers(0, 255, (768, 1024, 3)).astype(np.uint8), (0, 0), 3)
    page = cv2.normalize(page, None, 40, 215, cv2.NORM_MINMAX)
    return (page * 0.3).astype(np.uint8) if dark else page


def _per_bubble(pred: np.ndarray, truth: np.ndarray, records: list[dict]) -> list[float]:
    from storyboard.devkit.bubble_styles import bubble_iou

    return [bubble_iou(pred, truth, r["box"]) for r in records]


@pytest.fixture(scope="module")
def held_out_photos():
    from storyboard.devkit.bubble_styles import styled_cases

    return styled_cases("held_out", photos=("rocket", "chelsea"))


def test_held_out_photo_styles_meet_the_targets(held_out_photos):
    """Every style the generator never draws (tall vertical, thought on a dark busy background, shout,
    tinted box, cut by the frame) on held-out photos: mean IoU >= 0.90, no bubble missed."""
    from storyboard.devkit.bubble_styles import STYLES

    assert sorted({c.bubbles[0]["style"] for c in held_out_photos}) == sorted(STYLES)
    ious, worst = [], []
    for case in held_out_photos:
        pred, _ = detect_bubbles(case.rgb)
        ious.append(bubble_scores(pred, case.truth)["iou"] or 0.0)
        worst += [(iou, case.name) for iou in _per_bubble(pred, case.truth, case.bubbles)]
    assert np.mean(ious) >= HELD_OUT_IOU, f"mean IoU {np.mean(ious):.3f}"
    assert min(worst)[0] > MISSED, f"missed: {min(worst)}"


def _held_out_generator_scores(root):
    """Whole-image IoUs, per-bubble IoUs and false-positive areas on a 24-image sample set drawn with the
    first generator seed the detector was never tuned on or looked at (50; tuning: 0-3)."""
    from storyboard.devkit.bubble_styles import GENERATOR_HELD_OUT_SEEDS
    from storyboard.devkit.sample_data import generate

    truth = generate(root, seed=GENERATOR_HELD_OUT_SEEDS[0], count=24)
    ious, per_bubble, fps = [], [], []
    for rel, info in truth["images"].items():
        rgb = load_rgb(root / "images" / rel).rgb
        true = (np.asarray(Image.open(root / info["bubble_mask"]).convert("L")) > 0) if info["bubble_mask"] else None
        pred, _ = detect_bubbles(rgb)
        scores = bubble_scores(pred, true)
        if true is None:
            fps.append(scores["fp_area"])
            continue
        ious.append(scores["iou"] or 0.0)
        per_bubble += [(iou, rel) for iou in _per_bubble(pred, true, info["bubbles"])]
    return ious, per_bubble, fps


@pytest.fixture(scope="module")
def held_out_generator(tmp_path_factory):
    return _held_out_generator_scores(tmp_path_factory.mktemp("held_out"))


def test_held_out_generator_seed_mean_iou_and_false_bubbles(held_out_generator):
    """Held-out generator seed: mean IoU and false-positive area meet the targets."""
    ious, _, fps = held_out_generator
    assert len(ious) >= 8 and len(fps) >= 5
    assert np.mean(ious) >= HELD_OUT_IOU, f"mean IoU {np.mean(ious):.3f}"
    assert max(fps) < MAX_FP_AREA


@pytest.mark.xfail(strict=True, reason="target not met (issue 13 blocked): on held-out seed 50 a black caption "
                   "box whose text fills the box is missed (docs/image_stages.md, round 4); strict, so a detector "
                   "that finds it turns this into a failure that asks for the mark to be removed")
def test_held_out_generator_seed_misses_no_bubble(held_out_generator):
    """Held-out generator seed: every bubble found (its own IoU above the 'missed' line)."""
    _, per_bubble, _ = held_out_generator
    assert min(per_bubble)[0] > MISSED, f"missed: {min(per_bubble)}"


def test_no_false_bubbles_on_held_out_photos_and_pages():
    """Bubble-free held-out pictures: photos, at night, printed pages, a page lying on a desk (a white
    region full of text inside a darker surround), scikit-image's scanned page. Negative control:
    without the text-layout tests (text block share, centring, margin) the page on the desk is a bubble."""
    from storyboard.devkit.bubble_styles import bubble_free_cases

    cases = bubble_free_cases("held_out")
    assert {"page_on_desk", "printed_page_0", "skimage_page", "rocket_night"} <= {c.name.split("/")[-1] for c in cases}
    for case in cases:
        pred, _ = detect_bubbles(case.rgb)
        assert (pred > 0).mean() < MAX_FP_AREA, f"{case.name}: {(pred > 0).mean():.2%} masked"
    [desk] = [c for c in cases if c.name.endswith("page_on_desk")]
    no_layout = BubbleParams(max_text_block=1.0, max_text_offset=10.0, min_text_margin=0.0, min_small_block_margin=0.0)
    assert (detect_bubbles(desk.rgb, no_layout)[0] > 0).mean() > MAX_FP_AREA


# --------------------------------------------------------------------------------------------
# The new cues, each with the feature switched off as its negative control
# --------------------------------------------------------------------------------------------
def test_a_bubble_cut_by_the_frame_is_found_only_with_the_cut_rule():
    from storyboard.devkit.bubble_styles import draw_bubble

    for seed in range(20):  # the first draw the frame cuts deeply (over a fifth of its edge on the frame)
        page, truth, record = draw_bubble(np.random.default_rng(seed), _background(seed), "edge")
        rim = np.concatenate([truth[0], truth[-1], truth[:, 0], truth[:, -1]]).sum()
        if rim > 0.2 * (truth.astype(np.uint8) - cv2.erode(truth.astype(np.uint8), np.ones((3, 3)))).sum():
            break
    else:
        pytest.fail("no deeply cut bubble in 20 draws")
    assert record["touches_edge"]
    pred, found = detect_bubbles(page)
    assert len(found) == 1 and bubble_scores(pred, truth)["iou"] >= 0.9
    old_rule = BubbleParams(max_cut_border_share=BubbleParams().max_border_share)
    assert not detect_bubbles(page, old_rule)[1]
    # A white wall at the frame edge with marks in the middle but no outline is no bubble.
    wall = _background(1)
    wall[:, :300] = 245
    cv2.putText(wall, "EXIT  B2", (60, 380), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (20, 20, 20), 2, cv2.LINE_AA)
    assert not detect_bubbles(wall)[1]


def test_shout_spikes_and_thought_trails_are_masked():
    """Spike tips (the edge map cuts them off the fill) are added back, and a thought bubble's
    trailing circles join it; with either switched off, less of the truth is covered."""
    from storyboard.images import bubbles

    shout, shout_truth, record = draw_bubble_on(3, "shout")
    pred = detect_bubbles(shout)[0] > 0
    assert _per_bubble(pred, shout_truth, [record])[0] >= 0.9 and not (pred & ~shout_truth).any()
    original = bubbles._complete
    try:
        bubbles._complete = lambda filled, near, reach: filled
        without = detect_bubbles(shout)[0] > 0
    finally:
        bubbles._complete = original
    missed, missed_without = (shout_truth & ~pred).sum(), (shout_truth & ~without).sum()
    assert missed < 0.75 * missed_without, (missed, missed_without)

    thought, thought_truth, record = draw_bubble_on(5, "thought")
    pred, _ = detect_bubbles(thought)
    no_trail = detect_bubbles(thought, BubbleParams(trail_reach=0.0))[0]
    trail = thought_truth & ~cv2.dilate(no_trail, np.ones((9, 9), np.uint8)).astype(bool)  # the circles
    assert trail.sum() > 50
    assert (pred[trail] > 0).mean() >= 0.6 and (no_trail[trail] > 0).mean() == 0
    assert _per_bubble(pred, thought_truth, [record])[0] >= 0.9


def draw_bubble_on(seed: int, style: str):
    from storyboard.devkit.bubble_styles import draw_bubble

    return draw_bubble(np.random.default_rng(seed), _background(seed, dark=style == "thought"), style)


def _wall_of_windows() -> np.ndarray:
    """A light wall inside a panel line with a grid of hatched windows in its middle: like a text block
    in a bubble by every layout test (centred, with air all around), but one mark repeated."""
    rng = np.random.default_rng(7)
    page = cv2.GaussianBlur(rng.integers(40, 200, (320, 480, 3)).astype(np.uint8), (0, 0), 1.5)
    x0, y0, x1, y1 = 300, 10, 460, 190
    page[y0:y1, x0:x1] = 227
    cv2.rectangle(page, (x0 - 2, y0 - 2), (x1 + 1, y1 + 1), (30, 30, 30), 2)
    side, gap = 22, 16
    left, top = (x0 + x1 - (2 * side + gap)) // 2, (y0 + y1 - (3 * side + 2 * gap)) // 2
    for r in range(3):
        for c in range(2):
            window = np.full((side, side, 3), 227, np.uint8)
            for k in range(-side, side, 4):
                cv2.line(window, (k, side), (k + side, 0), (60, 60, 60), 1)
            cv2.rectangle(window, (0, 0), (side - 1, side - 1), (30, 30, 30), 1)
            wx, wy = left + c * (side + gap), top + r * (side + gap)
            page[wy:wy + side, wx:wx + side] = window
    return page


def test_a_grid_of_windows_is_no_text():
    """Glyph parts differ in size and sit close; a wall's windows are one size, set apart by about
    their size. Negative control: with the repeated-mark test off, the wall is a bubble."""
    wall = _wall_of_windows()
    assert not detect_bubbles(wall)[1]
    assert len(detect_bubbles(wall, BubbleParams(min_part_size_spread=0.0))[1]) == 1


def test_a_stray_speck_does_not_decide_the_text_layout():
    """A speck near the edge (a fleck of outline trapped where a tail meets a cloud) would put the text
    block against the edge; left out as a speck, the bubble is found. Negative control: with no part
    counted as apart from the text, the same bubble is missed."""
    page, truth = _drawn_bubble()
    page[54:56, 160:162] = 20  # 2 x 2 px, 4 px inside the top of the fill, far from the text
    mask, found = detect_bubbles(page)
    assert len(found) == 1 and bubble_scores(mask, truth)["iou"] >= 0.9
    assert not detect_bubbles(page, BubbleParams(speck_gap=1e9))[1]
