"""The two crawl files, their per-line ground truth, and the five planted faults.

crawl_a.jsonl is clean-ish (LF, tags mostly lists); crawl_b.jsonl is what a Windows crawler leaves
(UTF-8 BOM, CRLF, a blank line, tags mostly comma strings, other key order, an extra ``likes``
field). Films 1-2 are only in crawl_a, 5-6 only in crawl_b, 3-4 split between them: the crawls
overlap in films, and (apart from the planted duplicate) never in records.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass, field

import numpy as np

from storyboard.core.records import dumps_record
from storyboard.core.vocabulary import Vocabulary
from storyboard.devkit.sample_data.metadata import (
    CRAWLS,
    FAULTS,
    FILMS,
    Film,
    caption,
    spell,
    tags,
    tags_field,
    title_variant,
)


@dataclass
class Item:
    """One image as the crawls describe it."""

    path: str
    film: Film
    kind: str
    labels: dict              # planted shot_size / angle / location
    features: list[str]


@dataclass
class Line:
    record: dict | None       # None: the text is written as it is (the malformed line)
    truth: dict
    text: str | None = None
    key: str = ""
    refers: Line | None = field(default=None, repr=False)  # the kept line a duplicate repeats


def _record(rng, vocab: Vocabulary, item: Item, crawl: str, k: int, omit_shot: bool,
            tag_labels: dict | None = None) -> Line:
    if tag_labels is None:
        tag_labels = {
            "shot_size": None if omit_shot else item.labels["shot_size"],
            "angle": item.labels["angle"] if rng.random() < 0.8 else None,
            "location": item.labels["location"] if rng.random() < 0.85 else None,
        }
    fields = {
        "image": item.path,
        "title": title_variant(item.film, k),
        "caption": caption(rng, item.features, item.film, item.kind),
        "tags": tags_field(rng, tags(rng, vocab, tag_labels, item.film), crawl),
    }
    number = int(rng.integers(10000, 99999))
    if crawl == CRAWLS[0]:
        record = {**fields, "source_url": f"https://movie.example.com/stills/{number}",
                  "scene": f"S#{int(rng.integers(1, 120))}",
                  "crawled_at": f"2024-03-{int(rng.integers(1, 29)):02d}T{int(rng.integers(0, 24)):02d}:"
                                f"{int(rng.integers(0, 60)):02d}:{int(rng.integers(0, 60)):02d}+09:00"}
    else:  # another crawler: other key order, other date format, one more field
        record = {"title": fields["title"], "image": fields["image"], "tags": fields["tags"],
                  "caption": fields["caption"],
                  "scene": int(rng.integers(1, 120)), "source_url": f"https://cine.example.kr/photo?id={number}",
                  "crawled_at": f"2024/05/{int(rng.integers(1, 29)):02d} {int(rng.integers(0, 24)):02d}:"
                                f"{int(rng.integers(0, 60)):02d}", "likes": int(rng.integers(0, 5000))}
    truth = {"image": item.path, "expected": "kept", "stage": None, "title": item.film.title, **item.labels,
             "tag_shot_size": tag_labels["shot_size"], "tag_angle": tag_labels["angle"],
             "tag_location": tag_labels["location"]}
    return Line(record, truth)


def _crawl_of(rng, film: Film) -> str:
    index = FILMS.index(film)
    if index < 2:
        return CRAWLS[0]
    if index >= 4:
        return CRAWLS[1]
    return CRAWLS[int(rng.integers(2))]


def _add_conflict(rng, vocab: Vocabulary, line: Line) -> None:
    """A second, different shot size in the tags: only the tag stage can see the conflict."""
    shots = [t.key for t in vocab.shot_sizes]
    own = line.truth["tag_shot_size"]
    far = [s for s in shots if abs(shots.index(s) - shots.index(own)) >= 2]
    other = str(rng.choice(far))
    extra = spell(rng, vocab, "shot_size", other, 0.0)
    tag_value = line.record["tags"]
    line.record["tags"] = tag_value + [extra] if isinstance(tag_value, list) else f"{tag_value}, {extra}"
    line.truth.update(expected="conflicting_labels", stage="tags", tag_shot_size=None, conflicting=[own, other])


def _plant(rng, vocab, lines: dict[str, list[Line]], items: list[Item], copy: tuple[str, str], missing: str) -> None:
    """The five faults, one each. Duplicates go to crawl_b so the copy in crawl_a is the one kept."""
    a, b = lines[CRAWLS[0]], lines[CRAWLS[1]]
    original_path, copy_path = copy
    plain = [ln for ln in a if ln.truth["image"] != original_path and ln.truth["tag_shot_size"]]
    picks = rng.choice(len(plain), size=2, replace=False)
    conflict, repeated = plain[int(picks[0])], plain[int(picks[1])]
    _add_conflict(rng, vocab, conflict)

    def insert(line: Line) -> None:
        b.insert(int(rng.integers(1, len(b) + 1)), line)

    dup = Line(dict(repeated.record), {**repeated.truth, "expected": "duplicate", "stage": "collect"}, refers=repeated)
    insert(dup)
    original = next(ln for ln in a if ln.truth["image"] == original_path)
    item = next(it for it in items if it.path == original_path)
    # The copy's tags name the same labels as the original's (other spellings): a stage that merges
    # a duplicate's tags into the kept record then still ends with the original's labels.
    same = {name: original.truth[f"tag_{name}"] for name in ("shot_size", "angle", "location")}
    twin = _record(rng, vocab, Item(copy_path, item.film, item.kind, item.labels, item.features), CRAWLS[1], 3, False,
                   tag_labels=same)
    twin.truth.update(expected="duplicate", stage="collect")
    twin.refers = original
    insert(twin)
    lost = _record(rng, vocab, Item(missing, item.film, "still", dict(item.labels), ["sky"]), CRAWLS[1], 1, False)
    lost.truth.update(expected="missing_image", stage="collect", shot_size=None, angle=None, location=None)
    insert(lost)
    # A crawler that died mid-line and wrote the record again on the next line.
    at = int(rng.integers(1, len(b)))
    while b[at].truth["expected"] != "kept":
        at = (at + 1) % len(b)
    text = dumps_record(b[at].record)
    cut = text.index('"caption"') + 14
    b.insert(at, Line(None, {"image": b[at].truth["image"], "expected": "malformed_json", "stage": "collect"},
                      text=text[:cut]))


def build_crawls(rng: np.random.Generator, vocab: Vocabulary, items: list[Item], copy: tuple[str, str],
                 missing: str) -> tuple[dict[str, bytes], dict[str, dict], list[dict]]:
    """(file name -> bytes, "<file>:<line>" -> truth, faults) for both crawls."""
    lines: dict[str, list[Line]] = {name: [] for name in CRAWLS}
    no_shot = {int(i) for i in rng.choice(len(items), size=max(2, len(items) // 10), replace=False)}
    for k, item in enumerate(items):
        crawl = _crawl_of(rng, item.film) if item.path != copy[0] else CRAWLS[0]
        lines[crawl].append(_record(rng, vocab, item, crawl, k, k in no_shot and item.path != copy[0]))
    for name in CRAWLS:
        lines[name] = [lines[name][int(i)] for i in rng.permutation(len(lines[name]))]
    _plant(rng, vocab, lines, items, copy, missing)
    files, truth = {}, {}
    for name, crawl_lines in lines.items():
        windows = name == CRAWLS[1]
        texts, number = [], 0
        blank_after = len(crawl_lines) // 2 if windows else -1
        for i, line in enumerate(crawl_lines):
            number += 1
            line.key = f"{name}:{number}"
            texts.append(line.text if line.record is None else dumps_record(line.record))
            if i == blank_after:  # a stray empty line; line numbers count it, as editors do
                texts.append("")
                number += 1
        newline = "\r\n" if windows else "\n"
        data = newline.join(texts) + newline
        files[name] = (codecs.BOM_UTF8 if windows else b"") + data.encode("utf-8")
    faults = []
    for crawl_lines in lines.values():
        for line in crawl_lines:
            if line.refers is not None:
                line.truth["duplicate_of"] = line.refers.key
            truth[line.key] = line.truth
    for line in (ln for lns in lines.values() for ln in lns if ln.truth["expected"] != "kept"):
        fault = _fault_name(line)
        source, number = line.key.rsplit(":", 1)
        faults.append({"fault": fault, "source": source, "line": int(number), "image": line.truth["image"],
                       "expected_reason": FAULTS[fault][0], "stage": FAULTS[fault][1],
                       **({"duplicate_of": line.truth["duplicate_of"]} if "duplicate_of" in line.truth else {})})
    return files, truth, sorted(faults, key=lambda f: list(FAULTS).index(f["fault"]))


def _fault_name(line: Line) -> str:
    expected = line.truth["expected"]
    if expected == "duplicate":
        same_record = line.refers is not None and line.refers.record == line.record
        return "duplicate_record" if same_record else "duplicate_image"
    return expected
