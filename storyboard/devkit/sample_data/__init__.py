"""The sample data generator: a small raw data set that looks like the pipeline's real input, with
its ground truth, so every stage can be run and scored without the real (copyrighted) data.

    python -m storyboard.devkit.sample_data --out DIR [--seed 0] [--count 60] [--force]

Same seed and count -> byte-identical files; another seed -> another data set. About a second per
ten images on one CPU core. What lands in DIR:

``images/``            film stills in per-title folders (``images/기생충/장면 01.jpg``) and storyboard
                       ("conti") frames under ``images/conti/``: one person each (a real face photo,
                       scikit-image's astronaut, on a drawn body) at a known shot size, camera angle and
                       location; speech bubbles with Korean text on about 60 %; file forms as found in
                       the wild (JPEG, PNG, RGBA with transparent margins, L, P, GIF, an EXIF-rotated
                       JPEG, ``.JPG``, Korean names with spaces, one byte-identical copy).
``raw/crawl_a.jsonl``,  two overlapping crawls (the pipeline's raw metadata): ``image`` (relative to
``raw/crawl_b.jsonl``  ``images/``), ``title`` (spelled many ways), ``caption`` (Korean), ``tags`` (list
                       or comma string) and extra fields. Five planted faults, one of each kind.
``titles.csv``         the canonical titles: title, original_title, year, aliases (``|``-separated).
``truth/masks/``       one exact bubble mask per image with bubbles (white = bubble), upright size.
``ground_truth.json``  everything above as data (schema below); written last, so its presence
                       means the set is complete.

Ground truth (``ground_truth.json``)::

    generator, generator_version, seed, count, read_order: [crawl file names, in reading order]
    images: {path under images/: {
        kind: still|conti, shot_size, angle, location, title (canonical), film_original,
        size: [w, h] (upright, as a viewer shows it), stored_size: [w, h] (as the pixels are stored),
        mode (PIL mode as saved: RGB|RGBA|L|P), format (JPEG|PNG|GIF), exif_orientation: int|null,
        content_box: [x0, y0, x1, y1] (the picture: conti panel, area between transparent margins),
        face_box, person_box: [x0, y0, x1, y1]|null (pixels, x1/y1 exclusive, clipped to content_box),
        face_cut, person_cut: bool (the box touches the content edge: cut by the frame),
        face_height_frac, person_height_frac: planned unclipped height / content height,
        horizon_frac: horizon row / content height (null when looking straight up or down),
        rotation_deg (dutch tilt), features: [what the background shows],
        bubbles: [{shape, tail, vertical, box, outline_px, fill, text}], bubble_mask: path|null,
        sha256, duplicate_of: path|null, records: [record keys], kept_record: key|null}}
    records: {"<crawl file>:<line>": {image, expected: kept|<reject reason>, stage: null|collect|tags,
        title (canonical), shot_size, angle, location (planted), tag_shot_size, tag_angle, tag_location
        (what the tags name; null when absent), [duplicate_of: key], [conflicting: [shot, shot]]}}
    faults: [{fault, source, line, image, expected_reason, stage, [duplicate_of]}]
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from storyboard.core.cli import UserError, progress
from storyboard.core.records import atomic_dir, atomic_write_json, read_json_object_or_none
from storyboard.core.vocabulary import load_vocabulary
from storyboard.devkit.sample_data.bubbles import draw_bubbles
from storyboard.devkit.sample_data.crawls import Item, build_crawls
from storyboard.devkit.sample_data.files import encode_image, encode_mask
from storyboard.devkit.sample_data.metadata import CRAWLS, FILMS, titles_csv
from storyboard.devkit.sample_data.plan import MIN_COUNT, ImageSpec, make_plan
from storyboard.devkit.sample_data.scenes import conti_page, conti_sketch, film_grade, render_scene

__all__ = ["generate", "already_generated", "GENERATOR_VERSION", "MIN_COUNT"]

GENERATOR = "storyboard.devkit.sample_data"
GENERATOR_VERSION = 2  # 2: captions never invisible: pen-drawn boxes in grey conti frames, no black box on black
TRUTH_FILE = "ground_truth.json"
NOTE_PLACES = {"indoor": ["거실", "반지하 방", "부엌", "복도", "사무실", "계단"],
               "outdoor": ["골목", "강변", "들판", "옥상", "버스 정류장", "논두렁"]}


def _box(mask: np.ndarray, content) -> tuple[list[int] | None, bool]:
    """Bounding box of a mask ([x0, y0, x1, y1], exclusive ends) and whether the content edge cuts it."""
    ys, xs = np.nonzero(mask)
    if not len(xs):
        return None, False
    box = [int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1]
    cut = box[0] <= content[0] or box[1] <= content[1] or box[2] >= content[2] or box[3] >= content[3]
    return box, bool(cut)


def _page(rng: np.random.Generator, spec: ImageSpec, scene) -> np.ndarray:
    """The scene as a graded film still, or as a pencil storyboard panel with a scene note."""
    w, h = spec.size
    x0, y0, x1, y1 = spec.content
    if spec.kind == "conti":
        places = NOTE_PLACES[spec.location]
        number, cut = int(rng.integers(1, 90)), int(rng.integers(1, 12))
        note = f"S#{number}  C{cut}   {rng.choice(places)} / {rng.choice(['낮', '밤', '새벽'])}"
        gray = conti_page(rng, conti_sketch(rng, scene.rgb), (w, h), spec.content, note)
        return np.repeat(gray[..., None], 3, axis=2)
    page = np.zeros((h, w, 3), np.uint8)
    page[y0:y1, x0:x1] = film_grade(rng, scene.rgb)
    return page


def render_image(spec: ImageSpec, seed: int) -> tuple[bytes, np.ndarray | None, dict]:
    """One image of the plan: (file bytes, bubble mask or None, ground-truth entry)."""
    rng = np.random.default_rng([seed, 1000 + spec.index])
    x0, y0, x1, y1 = spec.content
    scene = render_scene(rng, spec.shot, spec.angle, spec.location, (x1 - x0, y1 - y0))
    page = _page(rng, spec, scene)
    w, h = spec.size
    face, person = np.zeros((h, w), bool), np.zeros((h, w), bool)
    face[y0:y1, x0:x1], person[y0:y1, x0:x1] = scene.face, scene.person
    face_box, face_cut = _box(face, spec.content)
    person_box, person_cut = _box(person, spec.content)
    page, mask, bubbles = draw_bubbles(rng, page, spec.content, face_box, spec.bubbles, gray=spec.kind == "conti")
    data, facts = encode_image(page, spec.content, spec.save, quality=int(rng.integers(82, 95)))
    entry = {
        "kind": spec.kind, "shot_size": spec.shot, "angle": spec.angle, "location": spec.location,
        "title": spec.film.title, "film_original": spec.film.original, "size": [w, h], **facts,
        "content_box": list(spec.content), "face_box": face_box, "face_cut": face_cut,
        "person_box": person_box, "person_cut": person_cut, **scene.info,
        "bubbles": bubbles, "bubble_mask": None, "sha256": hashlib.sha256(data).hexdigest(), "duplicate_of": None,
    }
    return data, (mask if bubbles else None), entry


def _write(path: Path, data: bytes) -> None:
    # Plain writes: the whole set is built in a temp folder that is renamed into place at the end.
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _copy_name(path: str) -> str:
    stem, dot, ext = path.rpartition(".")
    return f"{stem} (1).{ext}"  # what a browser calls a second download of the same file


def _build(folder: Path, seed: int, count: int) -> dict:
    vocab = load_vocabulary()
    specs = make_plan(np.random.default_rng([seed, 0]), count, [t.key for t in vocab.shot_sizes])
    images: dict[str, dict] = {}
    payload: dict[str, bytes] = {}
    for spec in progress(specs, desc="sample images", total=len(specs), unit="img"):
        data, mask, entry = render_image(spec, seed)
        _write(folder / "images" / spec.path, data)
        if mask is not None:
            entry["bubble_mask"] = f"truth/masks/{spec.path.rpartition('.')[0]}.png"
            _write(folder / entry["bubble_mask"], encode_mask(mask))
        images[spec.path] = entry
        payload[spec.path] = data
    source = next(s for s in specs if s.copy_source)
    copy = _copy_name(source.path)
    _write(folder / "images" / copy, payload[source.path])
    images[copy] = {**images[source.path], "duplicate_of": source.path}
    missing = f"{FILMS[0].folder}/{FILMS[0].still_name.format(n=99)}.jpg"
    assert missing not in images
    items = [Item(s.path, s.film, s.kind, {"shot_size": s.shot, "angle": s.angle, "location": s.location},
                  images[s.path]["features"]) for s in specs]
    files, records, faults = build_crawls(np.random.default_rng([seed, 1]), vocab, items, (source.path, copy), missing)
    for name, data in files.items():
        _write(folder / "raw" / name, data)
    _write(folder / "titles.csv", titles_csv())
    for path, entry in images.items():
        entry["records"] = [key for key, r in records.items() if r["image"] == path]
        entry["kept_record"] = next((key for key in entry["records"] if records[key]["expected"] == "kept"), None)
    return {"generator": GENERATOR, "generator_version": GENERATOR_VERSION, "seed": seed, "count": count,
            "read_order": list(CRAWLS), "images": dict(sorted(images.items())), "records": records, "faults": faults}


def _read_truth(out: Path) -> dict | None:
    truth = read_json_object_or_none(out / TRUTH_FILE)
    return truth if truth is not None and truth.get("generator") == GENERATOR else None


def already_generated(out: str | os.PathLike, seed: int, count: int) -> dict | None:
    """The ground truth of a finished set in ``out`` made with this seed, count and version, else None."""
    truth = _read_truth(Path(out).expanduser())
    made = (truth.get("generator_version"), truth.get("seed"), truth.get("count")) if truth else None
    return truth if made == (GENERATOR_VERSION, seed, count) else None


def generate(out: str | os.PathLike, seed: int = 0, count: int = 60, force: bool = False) -> dict:
    """Write the sample set into ``out`` and return its ground truth (see the module docstring).

    A finished set with the same seed, count and generator version is left untouched and its ground
    truth returned, unless ``force``. A set made with other settings is replaced; a folder holding
    anything else is refused. The set is built in a hidden folder beside ``out`` and renamed into
    place, so an interrupted run leaves either the old set or the new one, never half of one."""
    if count < MIN_COUNT:
        raise UserError(f"--count must be at least {MIN_COUNT} (to hold every shot size, file form and fault)")
    out = Path(out).expanduser()
    if not force and (done := already_generated(out, seed, count)) is not None:
        return done
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    if out.exists() and any(out.iterdir()) and _read_truth(out) is None:
        raise UserError(f"{out} is not empty and holds no sample set; choose a new or empty folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(out) as tmp:
        truth = _build(tmp, seed, count)
        atomic_write_json(tmp / TRUTH_FILE, truth)
    return truth
