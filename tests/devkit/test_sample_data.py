"""The sample data generator: deterministic, complete, and exactly as messy as its ground truth says."""
from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from storyboard.core.records import read_jsonl
from storyboard.core.vocabulary import load_vocabulary
from storyboard.devkit.sample_data import generate
from storyboard.devkit.sample_data.metadata import FILMS, title_key

from support import REPO, run_command

VOCAB = load_vocabulary()
SEED, COUNT = 0, 24  # what the session fixture ``sample_data`` was made with


def truth_of(folder: Path) -> dict:
    return json.loads((folder / "ground_truth.json").read_text(encoding="utf-8"))


def all_files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def upright(path: Path) -> Image.Image:
    """An image as a viewer shows it: EXIF rotation applied, transparency over white."""
    image = ImageOps.exif_transpose(Image.open(path))
    if image.mode in ("RGBA", "LA", "P"):
        image = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        white.alpha_composite(image)
        image = white
    return image.convert("RGB")


def tag_list(value) -> list[str]:
    return value if isinstance(value, list) else [t for t in re.split(r"\s*,\s*", value) if t]


def labels_named(tags: list[str], kind: str) -> set[str]:
    return {term.key for t in tags if (term := VOCAB.lookup(t, kind)) is not None}


@pytest.fixture(scope="module")
def truth(sample_data: Path) -> dict:
    return truth_of(sample_data)


# --------------------------------------------------------------------------------------------
# Determinism and resume
# --------------------------------------------------------------------------------------------
def test_same_seed_gives_byte_identical_files_and_another_seed_differs(sample_data, tmp_path):
    again = tmp_path / "again"
    generate(again, seed=SEED, count=COUNT)
    first, second = all_files(sample_data), all_files(again)
    assert list(first) == list(second)
    assert [name for name in first if first[name] != second[name]] == []
    other = tmp_path / "other"
    generate(other, seed=SEED + 1, count=16)
    third = all_files(other)
    assert third["ground_truth.json"] != first["ground_truth.json"]
    shared = set(first) & set(third)
    images = [n for n in shared if n.startswith("images/")]
    assert sum(first[n] != third[n] for n in images) >= 0.9 * len(images)
    assert first["raw/crawl_a.jsonl"] != third["raw/crawl_a.jsonl"]


def test_a_second_run_rewrites_nothing(sample_data):
    before = {p: p.stat().st_mtime_ns for p in sample_data.rglob("*")}
    returned = generate(sample_data, seed=SEED, count=COUNT)
    assert returned == truth_of(sample_data)
    assert {p: p.stat().st_mtime_ns for p in sample_data.rglob("*")} == before


def test_an_interrupted_run_leaves_nothing_behind(tmp_path, monkeypatch):
    import storyboard.devkit.sample_data as sd

    real, calls = sd.render_image, []

    def failing(spec, seed):
        calls.append(spec.index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(spec, seed)

    monkeypatch.setattr(sd, "render_image", failing)
    with pytest.raises(KeyboardInterrupt):
        generate(tmp_path / "set", seed=0, count=16)
    assert list(tmp_path.iterdir()) == []


def test_regenerates_for_other_settings_and_refuses_foreign_folders(tmp_path, monkeypatch):
    import storyboard.devkit.sample_data as sd
    from storyboard.core.cli import UserError

    def quick_build(folder, seed, count):  # the folder handling only; rendering is tested above
        (folder / "images").mkdir()
        (folder / "images" / f"seed{seed}.txt").write_text("x")
        return {"generator": sd.GENERATOR, "generator_version": sd.GENERATOR_VERSION, "seed": seed, "count": count}

    monkeypatch.setattr(sd, "_build", quick_build)
    out = tmp_path / "set"
    generate(out, seed=3, count=16)
    generate(out, seed=4, count=16)  # our own set with other settings is replaced, not merged
    assert truth_of(out)["seed"] == 4 and [p.name for p in (out / "images").iterdir()] == ["seed4.txt"]
    inode = (out / "images" / "seed4.txt").stat().st_ino
    generate(out, seed=4, count=16, force=True)  # --force rebuilds even the same settings
    assert (out / "images" / "seed4.txt").stat().st_ino != inode and truth_of(out)["seed"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["set"]  # no temp or old folders left
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "mine.jpg").write_bytes(b"keep")
    with pytest.raises(UserError, match="not empty"):
        generate(foreign, seed=0, count=16)
    assert (foreign / "mine.jpg").read_bytes() == b"keep"
    with pytest.raises(UserError, match="at least"):
        generate(tmp_path / "tiny", count=3)


def test_command_line(sample_data, tmp_path):
    def run(*args):
        return run_command([sys.executable, "-m", "storyboard.devkit.sample_data", *args], cwd=REPO)

    proc = run("--help")
    assert proc.returncode == 0 and "--seed" in proc.stdout and "--force" in proc.stdout
    proc = run("--out", sample_data, "--seed", SEED, "--count", COUNT)
    assert proc.returncode == 0 and "already generated" in proc.stdout
    proc = run("--out", tmp_path / "x", "--count", 2)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == ("python -m storyboard.devkit.sample_data: error: --count must be at least 16 "
                                   "(to hold every shot size, file form and fault)")


# --------------------------------------------------------------------------------------------
# Metadata and planted faults
# --------------------------------------------------------------------------------------------
def raw_lines(sample_data: Path) -> dict[str, object]:
    """"<file>:<line>" -> record, or the RecordError of a line that does not parse."""
    out = {}
    for path in sorted((sample_data / "raw").glob("*.jsonl")):
        for item in read_jsonl(path):
            out[f"{path.name}:{item.line}"] = item.record if item.error is None else item.error
    return out


def test_every_fault_is_planted_once_where_the_truth_says(sample_data, truth):
    faults = truth["faults"]
    assert Counter(f["fault"] for f in faults) == {
        "duplicate_record": 1, "duplicate_image": 1, "missing_image": 1, "malformed_json": 1, "conflicting_labels": 1}
    lines = raw_lines(sample_data)
    raw_text = {p.name: p.read_bytes().decode("utf-8-sig").splitlines() for p in (sample_data / "raw").glob("*.jsonl")}
    for fault in faults:
        key = f"{fault['source']}:{fault['line']}"
        assert truth["records"][key]["expected"] == fault["expected_reason"]
        assert truth["records"][key]["stage"] == fault["stage"]
        found = lines[key]
        kind = fault["fault"]
        if kind == "malformed_json":
            assert getattr(found, "reason", None) == "malformed_json"
            continue
        assert isinstance(found, dict) and found["image"] == fault["image"]
        if kind == "duplicate_record":
            source, number = fault["duplicate_of"].rsplit(":", 1)
            assert raw_text[source][int(number) - 1] == raw_text[fault["source"]][fault["line"] - 1]
            assert truth["records"][fault["duplicate_of"]]["expected"] == "kept"
        elif kind == "duplicate_image":
            kept = lines[fault["duplicate_of"]]
            assert kept["image"] != found["image"]
            images = sample_data / "images"
            assert (images / kept["image"]).read_bytes() == (images / found["image"]).read_bytes()
        elif kind == "missing_image":
            assert not (sample_data / "images" / found["image"]).exists()
        elif kind == "conflicting_labels":
            assert len(labels_named(tag_list(found["tags"]), "shot_size")) == 2
    # Duplicates sit after what they repeat, so the first-read copy is the one kept.
    order = list(lines)
    for fault in faults:
        if "duplicate_of" in fault:
            assert order.index(fault["duplicate_of"]) < order.index(f"{fault['source']}:{fault['line']}")


def test_every_other_record_is_clean_and_labelled_as_the_truth_says(sample_data, truth):
    lines = raw_lines(sample_data)
    assert set(lines) == set(truth["records"])
    assert sum(1 for t in truth["records"].values() if t["expected"] != "kept") == 5
    films = {f.title: f for f in FILMS}
    for key, t in truth["records"].items():
        record = lines[key]
        if t["expected"] == "malformed_json":
            continue
        assert isinstance(record, dict), key
        assert {"image", "title", "caption", "tags", "source_url", "scene", "crawled_at"} <= set(record)
        film = films[t["title"]]
        spellings = {title_key(s) for s in (film.title, film.original, *film.aliases)}
        assert title_key(record["title"]) in spellings, record["title"]
        assert VOCAB.find(record["caption"]) == [], record["caption"]
        if t["expected"] in ("missing_image", "conflicting_labels"):
            continue
        path = sample_data / "images" / record["image"]
        assert upright(path).size == tuple(truth["images"][record["image"]]["size"])
        tags = tag_list(record["tags"])
        for kind in ("shot_size", "angle", "location"):
            expected = t[f"tag_{kind}"]
            assert labels_named(tags, kind) == ({expected} if expected else set()), (key, kind, tags)
            assert expected in (None, t[kind]) and t[kind] == truth["images"][record["image"]][kind]
    tags_by_key = {k: t for k, t in truth["records"].items() if t["expected"] == "kept"}
    assert any(t["tag_shot_size"] is None for t in tags_by_key.values())  # some records name no shot size
    assert any(isinstance(r, dict) and isinstance(r["tags"], str) for r in lines.values())
    assert any(isinstance(r, dict) and isinstance(r["tags"], list) for r in lines.values())
    for info in truth["images"].values():
        kept = [k for k in info["records"] if truth["records"][k]["expected"] == "kept"]
        assert kept == ([info["kept_record"]] if info["kept_record"] else [])


def test_titles_csv_and_title_spellings(sample_data, truth):
    import csv

    with open(sample_data / "titles.csv", encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["title"] for r in rows] == [f.title for f in FILMS]
    assert all(r["original_title"] and r["year"].isdigit() and "|" in r["aliases"] for r in rows)
    spelled = {r["title"] for r in raw_lines(sample_data).values() if isinstance(r, dict)}
    assert {"살인의추억", "살인의  추억", "기생충 (2019)", "Parasite"} & spelled
    assert any(s != title_key(s) and re.search(r"[\uff01-\uff5e]", s) for s in spelled)  # full-width forms


def test_crawl_files_are_messy_but_readable(sample_data):
    a = (sample_data / "raw" / "crawl_a.jsonl").read_bytes()
    b = (sample_data / "raw" / "crawl_b.jsonl").read_bytes()
    assert b.startswith(b"\xef\xbb\xbf") and b"\r\n" in b and b"\r\n\r\n" in b
    assert not a.startswith(b"\xef\xbb\xbf") and b"\r\n" not in a
    captions = [r["caption"] for r in raw_lines(sample_data).values() if isinstance(r, dict)]
    assert any("&amp;" in c or "<br>" in c for c in captions)
    assert any("[" in c for c in captions) and any("#" in c for c in captions)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------
def test_image_files_match_their_ground_truth(sample_data, truth):
    for rel, info in truth["images"].items():
        path = sample_data / "images" / rel
        stored = Image.open(path)
        assert stored.mode == info["mode"] and stored.format == info["format"], rel
        assert list(stored.size) == info["stored_size"]
        assert list(upright(path).size) == info["size"]
        orientation = stored.getexif().get(0x0112)
        assert orientation == info["exif_orientation"]
        w, h = info["size"]
        x0, y0, x1, y1 = info["content_box"]
        assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
        for name in ("face_box", "person_box"):
            box = info[name]
            assert box and x0 <= box[0] < box[2] <= x1 and y0 <= box[1] < box[3] <= y1, (rel, name)
        assert info["person_box"][1] <= info["face_box"][1] + 1


def test_odd_file_forms_are_all_there(sample_data, truth):
    infos = [i for i in truth["images"].values() if not i["duplicate_of"]]
    forms = Counter((i["mode"], i["format"]) for i in infos)
    for form in [("RGBA", "PNG"), ("L", "PNG"), ("L", "JPEG"), ("P", "PNG"), ("P", "GIF"), ("RGB", "JPEG")]:
        assert forms[form] >= 1, form
    rotated = [rel for rel, i in truth["images"].items() if i["exif_orientation"]]
    assert len(rotated) == 1
    info = truth["images"][rotated[0]]
    assert info["exif_orientation"] in (6, 8) and info["stored_size"] == info["size"][::-1] and info["bubbles"]
    # Loading without EXIF shows it on its side; the face box only fits the upright view.
    raw = np.asarray(Image.open(sample_data / "images" / rotated[0]).convert("RGB"))
    assert raw.shape[:2] == (info["size"][0], info["size"][1])
    for rel, i in truth["images"].items():
        if i["mode"] == "RGBA":
            alpha = np.asarray(Image.open(sample_data / "images" / rel))[..., 3]
            x0, y0, x1, y1 = i["content_box"]
            assert (alpha[y0:y1, x0:x1] == 255).all() and (alpha > 0).sum() == (x1 - x0) * (y1 - y0) < alpha.size
    names = list(truth["images"])
    assert "기생충/장면 01.jpg" in names
    assert any(" " in n and re.search(r"[\uac00-\ud7a3]", n) for n in names)
    stills = [n for n, i in truth["images"].items() if i["kind"] == "still"]
    folders = {f.folder for f in FILMS}
    assert all(n.split("/")[0] in folders for n in stills)
    assert all(max(i["size"]) <= 640 for i in infos) and any(i["size"][0] < i["size"][1] for i in infos)


def test_every_shot_size_angle_and_location_is_present(truth):
    infos = [i for i in truth["images"].values() if not i["duplicate_of"]]
    assert len(infos) == COUNT
    for term in VOCAB.shot_sizes:
        kinds = {i["kind"] for i in infos if i["shot_size"] == term.key}
        assert kinds == {"still", "conti"}, term.key
    assert {i["angle"] for i in infos} == {t.key for t in VOCAB.angles}
    assert {i["location"] for i in infos} == {"indoor", "outdoor"}
    conti = sum(i["kind"] == "conti" for i in infos)
    assert 0.2 * COUNT <= conti <= 0.45 * COUNT


def test_framing_follows_the_shot_size(truth):
    ranges = {"close_up": (0.38, 0.58), "medium_close_up": (0.23, 0.32), "medium": (0.14, 0.22)}
    for rel, info in truth["images"].items():
        shot, frac = info["shot_size"], info["face_height_frac"]
        if shot == "extreme_close_up":
            assert frac > 1.0 and info["face_cut"]
        elif shot in ranges:
            lo, hi = ranges[shot]
            assert lo <= frac <= hi, (rel, frac)
        elif shot == "full":
            assert 0.78 <= info["person_height_frac"] <= 0.92
        elif shot == "long":
            assert 0.33 <= info["person_height_frac"] <= 0.52
        elif shot == "extreme_long":
            assert 0.09 <= info["person_height_frac"] <= 0.21 and not info["person_cut"]


def test_haar_finds_the_faces_of_close_stills(sample_data, truth):
    """The figure's face is a real photo: OpenCV's stock detector must find it in close stills."""
    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    found = total = 0
    for rel, info in truth["images"].items():
        if info["kind"] != "still" or info["shot_size"] not in ("close_up", "medium_close_up", "medium"):
            continue
        gray = cv2.cvtColor(np.asarray(upright(sample_data / "images" / rel)), cv2.COLOR_RGB2GRAY)
        x0, y0, x1, y1 = info["face_box"]
        hits = [(x + w / 2, y + h / 2) for x, y, w, h in cascade.detectMultiScale(gray, 1.1, 5, minSize=(20, 20))]
        found += any(x0 <= cx <= x1 and y0 <= cy <= y1 for cx, cy in hits)
        total += 1
    assert total >= 5 and found >= 0.7 * total


# --------------------------------------------------------------------------------------------
# Speech bubbles
# --------------------------------------------------------------------------------------------
def test_bubble_masks_are_exact_and_where_the_bubbles_are(sample_data, truth):
    with_bubbles = 0
    for info in truth["images"].values():
        if not info["bubbles"]:
            assert info["bubble_mask"] is None
            continue
        with_bubbles += 1
        mask_image = Image.open(sample_data / info["bubble_mask"])
        assert mask_image.mode == "L" and list(mask_image.size) == info["size"]
        mask = np.asarray(mask_image)
        assert set(np.unique(mask)) == {0, 255}
        x0, y0, x1, y1 = info["content_box"]
        assert mask[y0:y1, x0:x1].sum() == mask.sum()  # never on transparent margins or outside a panel
        union = np.zeros_like(mask, bool)
        for bubble in info["bubbles"]:
            bx0, by0, bx1, by1 = bubble["box"]
            union[by0:by1, bx0:bx1] = True
            assert mask[by0:by1, bx0:bx1].any()
        assert not (mask[~union]).any()
    infos = [i for i in truth["images"].values() if not i["duplicate_of"]]
    assert 0.45 <= sum(bool(i["bubbles"]) for i in infos) / len(infos) <= 0.75
    bubbles = [b for i in infos for b in i["bubbles"]]
    assert {b["shape"] for b in bubbles} == {"ellipse", "rounded_box", "cloud", "caption_box"}
    assert {b["tail"] for b in bubbles} == {True, False} and any(b["vertical"] for b in bubbles)
    assert {b["outline_px"] >= 3 for b in bubbles} == {True, False}
    assert any(tuple(b["fill"]) != (255, 255, 255) for b in bubbles)


def test_bubble_pixels_differ_from_a_bubble_free_render(sample_data, truth):
    """The mask is everything the bubble drawing touched: rendering the same image without bubbles
    changes exactly the masked pixels (checked on a lossless PNG still)."""
    from storyboard.devkit.sample_data import render_image
    from storyboard.devkit.sample_data.plan import make_plan

    plan = make_plan(np.random.default_rng([SEED, 0]), COUNT, [t.key for t in VOCAB.shot_sizes])
    spec = next(s for s in plan if s.bubbles and s.save in ("png", "gray_png"))
    data, mask, _ = render_image(spec, SEED)
    spec.bubbles = []
    bare, none, _ = render_image(spec, SEED)
    assert none is None
    import io

    with_px = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    bare_px = np.asarray(Image.open(io.BytesIO(bare)).convert("RGB")).astype(int)
    changed = (with_px != bare_px).any(axis=2)
    assert not (changed & ~mask).any()
    assert changed[mask].mean() > 0.95  # the rest: fill or ink that happens to equal the background
    saved = np.asarray(Image.open(sample_data / truth["images"][spec.path]["bubble_mask"])) > 0
    assert (saved == mask).all()


def test_a_tinted_caption_in_a_grey_conti_frame_is_a_pen_drawn_box():
    """In colour a tinted caption box may have no outline; in a grey pencil frame the same style would
    be grey on grey with no border, which nobody can see: there it is a white box with a pen line,
    and the bubble detector finds it. The colour version, drawn alike, keeps its tint and no line."""
    from storyboard.devkit.sample_data.bubbles import BubbleStyle, draw_bubbles
    from storyboard.images.bubbles import bubble_scores, detect_bubbles

    style = BubbleStyle("caption_box", tail=False, vertical=False, outline=0, tinted=True)
    rng = np.random.default_rng(0)
    paper = np.clip(247 + rng.normal(0, 3, (300, 400)), 0, 255).astype(np.uint8)
    paper[60:240, 40:360] = np.clip(225 + rng.normal(0, 4, (180, 320)), 0, 255).astype(np.uint8)  # a marker wash
    page = np.repeat(paper[..., None], 3, axis=2)
    grey, grey_mask, [grey_record] = draw_bubbles(np.random.default_rng(1), page.copy(), (40, 60, 360, 240), None,
                                                  [style], gray=True)
    assert grey_record["outline_px"] > 0 and grey_record["fill"] == [255, 255, 255]
    pred, found = detect_bubbles(grey)
    assert len(found) == 1 and bubble_scores(pred, grey_mask)["iou"] >= 0.85
    _, _, [colour_record] = draw_bubbles(np.random.default_rng(1), page.copy(), (40, 60, 360, 240), None, [style])
    assert colour_record["outline_px"] == 0 and colour_record["fill"] != [255, 255, 255]


def test_a_black_caption_is_never_drawn_on_black():
    """A black caption box without a line on a near-black picture would have no visible edge (no mask
    could be right): there it becomes the yellow caption; on a light picture it stays black."""
    from storyboard.devkit.sample_data.bubbles import BubbleStyle, draw_bubbles

    style = BubbleStyle("caption_box", tail=False, vertical=False, outline=0, tinted=False)
    fills = []
    for level in (15, 180):
        page = np.full((300, 400, 3), level, np.uint8)
        _, _, [record] = draw_bubbles(np.random.default_rng(1), page, (0, 0, 400, 300), None, [style])
        fills.append(record["fill"])
    assert fills == [[250, 232, 130], [18, 18, 18]]
