"""The held-out bubble set (storyboard/devkit/bubble_styles.py): exact masks, every style, fixed splits."""
from __future__ import annotations

import numpy as np
import pytest

from storyboard.devkit import bubble_styles as bs


def test_splits_share_no_photo_and_no_seed():
    assert not set(bs.TUNING.photos) & set(bs.HELD_OUT.photos)
    draws = [set(s.seeds) for s in bs.SPLITS.values()]
    assert len(draws) == 3 and sum(len(d) for d in draws) == len(set().union(*draws))
    seeds = [set(v) for v in bs.GENERATOR_SEEDS.values()]
    assert sum(len(v) for v in seeds) == len(set().union(*seeds))
    with pytest.raises(ValueError, match="not a held_out photo"):
        bs.styled_cases("held_out", photos=("astronaut",))


@pytest.mark.parametrize("style", bs.STYLES)
def test_the_mask_is_what_the_drawing_changed(style):
    """Outside the mask the picture is untouched (thought: but for its night grade); inside, the
    bubble's colours; the edge style touches the frame, the others stay inside it."""
    photo = bs.load_photo("rocket")
    drawn, truth, record = bs.draw_bubble(np.random.default_rng(3), photo, style)
    assert drawn.shape == photo.shape and truth.shape == photo.shape[:2] and truth.any()
    changed = np.abs(drawn.astype(int) - photo.astype(int)).max(axis=2) > 0
    if style != "thought":  # the thought style darkens the whole picture first
        assert not (changed & ~truth).sum() > 0.02 * truth.sum()  # anti-aliased rim: a sliver outside
        assert changed[truth].mean() > 0.97
    x0, y0, x1, y1 = record["box"]
    assert truth[y0:y1, x0:x1].sum() == truth.sum()
    assert record["touches_edge"] == (style == "edge")


def test_sets_hold_every_style_and_bubble_free_pictures():
    cases = bs.styled_cases("tuning", photos=("coffee",))
    assert [c.bubbles[0]["style"] for c in cases] == list(bs.STYLES)
    assert all(c.rgb.shape[:2] == c.truth.shape and max(c.rgb.shape[:2]) == bs.SIDE for c in cases)
    again = bs.styled_cases("tuning", photos=("coffee",))
    assert all((a.rgb == b.rgb).all() and (a.truth == b.truth).all() for a, b in zip(cases, again))
    free = bs.bubble_free_cases("held_out")
    names = {c.name.rsplit("/", 1)[-1] for c in free}
    assert {"page_on_desk", "printed_page_0", "skimage_page", "skimage_text"} <= names
    assert all(c.truth is None for c in free)
