"""Speech-bubble masks: measured against the sample generator's exact masks, across its drawing styles."""
from __future__ import annotations

import json
from collections import defaultdict

import cv2
import numpy as np
import pytest
from PIL import Image

from storyboard.core.imageio import load_rgb
from storyboard.images.bubbles import INPAINT_METHODS, bubble_scores, detect_bubbles, inpaint, remove_bubbles

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
