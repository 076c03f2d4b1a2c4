"""Collect: merge raw crawl JSONL into one record per still, with titles matched and duplicates merged.

``collect(config)`` streams in two passes so memory stays flat in the number of records:

* **pass 1** reads every raw line once: maps raw fields (``caption`` -> ``caption_ko``, ``tags`` ->
  ``tags_ko``), normalises text (``textnorm``), checks field types, resolves the image under the image
  root (``records.resolve_under``), hashes its bytes and verifies its header (PIL ``verify``), and
  matches its title. A record that fails goes to rejects right there. One that passes is written to a
  spool file beside the output and counted in the *dedupe index*: per image content hash, the richest
  record so far and the captions/tags of the others. The index is the only thing that grows with the
  data (one small entry per distinct image).
* **pass 2** streams the spool: the winner of each hash is written, with the other records' captions
  and tags merged into it; every other member goes to rejects as ``duplicate`` naming the winner. A
  record that was "best so far" in pass 1 but lost later is therefore rejected, never written too.

The richest record is the one that fills more of the fields the pipeline learns from (caption,
tags); among equals the one read first wins. Nothing is lost either way: the others' captions and
tags are merged into it. ``id`` is the first 16 hex digits of the image's SHA-256, so it is
the same on every run and for every spelling of the image's path.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import unicodedata
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from storyboard.core.cli import UserError, progress
from storyboard.core.records import RecordError, StageRecords, check_fields, resolve_under
from storyboard.core.textnorm import normalize
from storyboard.metadata.raw_fields import has_records, map_raw_text_fields
from storyboard.metadata.titles import DEFAULT_MARGIN, DEFAULT_MIN_SCORE, TitleIndex, load_titles

ID_LENGTH = 16  # hex digits of the content hash used as the record id
_HASH_CACHE_LIMIT = 200_000  # paths remembered between records pointing at the same file
MERGE_LIMIT = 64  # duplicates whose caption/tags are merged into one kept record (the rest: counted)


@dataclass
class CollectConfig:
    inputs: Sequence[Path]
    image_root: Path
    output: Path
    rejects: Path | None = None
    titles: Path | None = None
    min_score: float = DEFAULT_MIN_SCORE
    margin: float = DEFAULT_MARGIN

    def as_dict(self) -> dict[str, Any]:
        return {k: [str(p) for p in v] if isinstance(v, (list, tuple)) else (str(v) if isinstance(v, Path) else v)
                for k, v in self.__dict__.items()}


class TitleRejectedError(RecordError):
    """An unmatched or ambiguous title, with the candidates that were weighed."""

    def __init__(self, reason: str, detail: str, candidates: list[dict]):
        super().__init__(reason, detail)
        self.candidates = candidates


# --------------------------------------------------------------------------------------------
# Images: find, hash, verify (cached per file)
# --------------------------------------------------------------------------------------------
class ImageChecker:
    """Resolves a record's image under the root and returns (relative path, sha256 hex)."""

    def __init__(self, root: Path):
        self.root = Path(os.path.normpath(root))
        self._cache: dict[str, tuple[int, int, str | RecordError]] = {}
        self.hashed = 0

    def locate(self, relative: object) -> Path:
        path = resolve_under(self.root, relative)
        if path.exists():
            return path
        # The same Korean name in the other Unicode form (macOS writes NFD, most crawlers NFC).
        for form in ("NFC", "NFD"):
            alt = resolve_under(self.root, unicodedata.normalize(form, str(relative)))
            if alt.exists():
                return alt
        raise RecordError("missing_image", f"image {relative!r} not found under {str(self.root)!r}")

    def check(self, relative: object) -> tuple[str, str]:
        path = self.locate(relative)
        rel = path.relative_to(self.root).as_posix()
        try:
            st = os.stat(path)
        except OSError as exc:
            raise RecordError("unreadable_image", f"image {rel!r}: {exc.strerror}") from None
        cached = self._cache.get(rel)
        if cached is None or cached[:2] != (st.st_size, st.st_mtime_ns):
            if len(self._cache) >= _HASH_CACHE_LIMIT:
                self._cache.clear()
            cached = self._cache[rel] = (st.st_size, st.st_mtime_ns, self._digest(path, rel))
        outcome = cached[2]
        if isinstance(outcome, RecordError):
            raise outcome
        return rel, outcome

    def _digest(self, path: Path, rel: str) -> str | RecordError:
        if path.is_dir():
            return RecordError("unreadable_image", f"image {rel!r} is a folder")
        try:
            data = path.read_bytes()
        except OSError as exc:
            return RecordError("unreadable_image", f"image {rel!r}: {exc.strerror}")
        if not data:
            return RecordError("unreadable_image", f"image {rel!r} is empty (0 bytes)")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with Image.open(io.BytesIO(data)) as im:
                    im.verify()
        except Image.DecompressionBombError:
            pass  # the header was read (that is how PIL knows); the image stage applies its pixel limit
        except Image.UnidentifiedImageError:
            return RecordError("unreadable_image", f"image {rel!r} is not in an image format PIL knows")
        except Exception as exc:  # PIL raises many kinds for bad files; all mean "cannot be decoded"
            return RecordError("unreadable_image", f"image {rel!r} cannot be read: {type(exc).__name__}: {exc}")
        self.hashed += 1
        return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------------------------
# The dedupe index
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class _Group:
    """All accepted-so-far records of one image: who wins, and what the others bring to merge."""

    first_seq: int
    best_seq: int
    best_rank: tuple
    best_ref: str
    count: int = 1
    others: list | None = None  # (seq, ref, caption, tags) of members after the first


def richness(record: dict) -> int:
    """How many of the fields this pipeline learns from a record fills (caption, tags). Richer
    wins; among equals the first read wins (input order is the user's order of trust). Extra raw
    fields do not count: one crawler's habit of adding ``likes`` must not outrank another's caption."""
    return sum(1 for name in ("caption_ko", "tags_ko") if record.get(name))


def _merge(winner: dict, members: list[tuple[int, str, str | None, list | None]], winner_seq: int,
           count: int) -> dict:
    """Fold the other members' captions and tags into the winner (new fields, nothing dropped).
    Past ``MERGE_LIMIT`` members only the count is kept (the members themselves are in rejects)."""
    out = dict(winner)
    caption = out.get("caption_ko") or ""
    alternatives = list(out.get("caption_ko_alternatives") or [])
    tags = list(out.get("tags_ko") or [])
    merged_from = list(out.get("merged_from") or [])
    for seq, ref, other_caption, other_tags in members:
        if seq == winner_seq:
            continue
        merged_from.append(ref)
        if other_caption and other_caption != caption and other_caption not in alternatives:
            alternatives.append(other_caption)
        tags += [t for t in other_tags or [] if t not in tags]
    if alternatives:
        out["caption_ko_alternatives"] = alternatives
    if tags:
        out["tags_ko"] = tags
    out["merged_from"] = list(dict.fromkeys(merged_from))
    if count > len(members):
        out["merged_count"] = count - 1
    return out


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
def input_files(paths: Sequence[Path], exclude: Sequence[Path] = ()) -> list[tuple[Path, str]]:
    """(file, name used in ``raw_ref``) for every input; a folder contributes its ``*.jsonl``."""
    skip = {Path(p).resolve() for p in exclude}
    files: list[tuple[Path, str]] = []
    for given in paths:
        given = Path(given)
        if given.is_dir():
            found = [p for p in sorted(given.rglob("*.jsonl"))
                     if not p.name.startswith(".") and not p.name.endswith(".rejects.jsonl")
                     and p.resolve() not in skip]
            if not found:
                raise UserError(f"no .jsonl files in input folder {given}")
            files += [(p, p.relative_to(given).as_posix()) for p in found]
        elif given.is_file():
            files.append((given, given.name))
        else:
            raise UserError(f"input not found: {given}")
    return files


@dataclass
class _Pass1:
    index: dict[bytes, _Group] = field(default_factory=dict)
    seq: int = 0
    title_how: dict[str, int] = field(default_factory=dict)


def _prepare(raw: dict, images: ImageChecker, titles: TitleIndex | None, pass1: _Pass1) -> tuple[dict, str]:
    """One raw record -> (record, content hash); raises RecordError for any reason to reject."""
    record = map_raw_text_fields(dict(raw))
    if isinstance(record.get("title"), str):
        record["title"] = normalize(record["title"])  # a title of spaces is a missing title
    check_fields(record, required=("image", "title"), optional=("id", "title_canonical", "title_score"))
    rel, digest = images.check(record["image"])
    if rel != record["image"]:
        record.setdefault("image_raw", record["image"])
        record["image"] = rel
    if titles is None:
        record["title_canonical"], record["title_score"] = record["title"], None
        how = "passed_through"
    else:
        match = titles.match(record["title"])
        if match.how == "unmatched":
            near = "; ".join(f"{c['title']} {c['score']}" for c in match.candidates) or "none"
            raise TitleRejectedError("unmatched_title", f"title {record['title']!r} matches no canonical title "
                                f"(needs score {titles.min_score:g}; nearest: {near})", match.candidates)
        if match.how == "ambiguous":
            names = "; ".join(f"{c['title']} ({c['year']}) {c['score']}" for c in match.candidates)
            raise TitleRejectedError("ambiguous_title", f"title {record['title']!r} matches several: {names}",
                                     match.candidates)
        entry, how = match.entry, match.how
        record.update(title_canonical=entry.title, title_score=round(match.score, 1), title_match=how)
        if entry.original_title:
            record["title_original"] = entry.original_title
        if entry.year:
            record["title_year"] = entry.year
    pass1.title_how[how] = pass1.title_how.get(how, 0) + 1
    new_id = digest[:ID_LENGTH]
    if record.get("id") not in (None, new_id):
        record.setdefault("id_raw", record["id"])
    record["id"] = new_id
    return record, digest


def _first_pass(stage: StageRecords, files: list[tuple[Path, str]], images: ImageChecker,
                titles: TitleIndex | None, spool) -> _Pass1:
    pass1 = _Pass1()
    for path, name in files:
        for item in progress(stage.read_from(path), desc=f"collect {name}", unit="rec"):
            try:
                record, digest = _prepare(item.record, images, titles, pass1)
            except TitleRejectedError as err:
                stage.reject_item(item, err, candidates=err.candidates)
                continue
            except RecordError as err:
                stage.reject_item(item, err)
                continue
            ref = record.setdefault("raw_ref", f"{name}:{item.line}")
            seq, pass1.seq = pass1.seq, pass1.seq + 1
            key, rank = bytes.fromhex(digest), (richness(record), -seq)
            group = pass1.index.get(key)
            if group is None:
                pass1.index[key] = _Group(first_seq=seq, best_seq=seq, best_rank=rank, best_ref=ref)
            else:
                group.count += 1
                if group.others is None:
                    group.others = []
                if len(group.others) < MERGE_LIMIT:
                    group.others.append((seq, ref, record.get("caption_ko"), record.get("tags_ko")))
                if rank > group.best_rank:
                    group.best_seq, group.best_rank, group.best_ref = seq, rank, ref
            spool.write(json.dumps({"seq": seq, "hash": digest, "source": str(path), "line": item.line,
                                    "ref": ref, "record": record}, ensure_ascii=False) + "\n")
    return pass1


def _second_pass(stage: StageRecords, spool_path: Path, pass1: _Pass1) -> int:
    """Write winners (merged), reject the other members. Returns how many duplicates were merged."""
    firsts: dict[bytes, tuple] = {}  # first member of each multi-record group, met before its winner
    merged = 0
    with open(spool_path, encoding="utf-8") as fh:
        for line in progress(fh, desc="collect write", total=pass1.seq, unit="rec"):
            entry = json.loads(line)
            key, seq, record = bytes.fromhex(entry["hash"]), entry["seq"], entry["record"]
            group = pass1.index[key]
            if group.count > 1 and seq == group.first_seq:
                firsts[key] = (seq, entry["ref"], record.get("caption_ko"), record.get("tags_ko"))
            if seq == group.best_seq:
                if group.count > 1:
                    record = _merge(record, [firsts[key], *group.others], seq, group.count)
                    merged += group.count - 1
                    del firsts[key]
                stage.accept(record)
                continue
            stage.reject("duplicate", f"same image content as {group.best_ref} (sha256 {entry['hash'][:ID_LENGTH]}); "
                         "its caption and tags were merged into that record",
                         record=record, source=entry["source"], line=entry["line"], kept_id=record["id"])
    return merged


def collect(config: CollectConfig) -> StageRecords:
    """Run the stage; returns the closed ``StageRecords`` (for its summary)."""
    if not config.image_root.is_dir():
        raise UserError(f"image root is not a folder: {config.image_root}")
    files = input_files(config.inputs, exclude=[config.output])
    empty = [name for path, name in files if not has_records(path)]
    if len(empty) == len(files):
        raise UserError(f"no records to collect: {', '.join(empty)} {'is' if len(empty) == 1 else 'are'} empty")
    titles = TitleIndex(load_titles(config.titles), config.min_score, config.margin) if config.titles else None
    images = ImageChecker(config.image_root)
    output = config.output
    spool_path = output.parent / f".{output.name}.spool-{os.getpid()}"
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        with StageRecords(output, config.rejects, stage="collect", config=config.as_dict()) as stage:
            with open(spool_path, "w", encoding="utf-8", newline="\n") as spool:
                pass1 = _first_pass(stage, files, images, titles, spool)
            merged = _second_pass(stage, spool_path, pass1)
            stage.extra.update({
                "input files": len(files), "empty input files": len(empty), "distinct images": len(pass1.index),
                "images hashed": images.hashed, "duplicates merged": merged,
                **{f"titles {how.replace('_', ' ')}": n for how, n in sorted(pass1.title_how.items())},
            })
    finally:
        spool_path.unlink(missing_ok=True)
    return stage
