"""The JSONL records the stages pass on, and the rules every stage keeps when it reads and writes them.

* Reading takes files as users really write them: UTF-8 with or without a BOM (UTF-16 with a BOM
  too), CRLF or LF, blank lines. A malformed line is not an exception: it comes back as an item with
  its line number and a ``RecordError`` so the stage can send it to rejects.
* Unknown fields are never dropped: a record is a plain ``dict`` that each stage adds fields to.
* A path inside a record is relative to a data root; ``resolve_under`` refuses absolute paths and
  anything that escapes the root (``..``, symlinks out).
* Every file is written atomically (temp file in the same folder, fsync, rename), so an interrupted
  stage leaves either the old file or the new one, never half of one.
* Accounting: ``StageRecords`` holds a stage's output and rejects files and checks, when it closes,
  that every record it read went to exactly one of them.
"""
from __future__ import annotations

import codecs
import io
import json
import os
import platform
import shutil
import sys
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from storyboard.core.cli import UserError, format_table

# The reasons a record can be rejected for: one small fixed set, shared by every stage.
REJECT_REASONS: dict[str, str] = {
    "malformed_json": "the line is not one JSON object",
    "missing_field": "a field the stage needs is absent or empty",
    "wrong_type": "a field holds the wrong kind of value (a number where text belongs, ...)",
    "missing_image": "the image file named by the record does not exist",
    "unreadable_image": "the image file exists but cannot be decoded",
    "image_too_large": "the image has more pixels than the decompression-bomb limit (--max-pixels)",
    "path_escape": "the record's path is absolute or leaves its data root",
    "duplicate": "the same record or the same image was already kept",
    "no_shot_size": "no shot size from the record's tags nor from its cluster, so no trigger token to train",
    "balanced_out": "left out to balance the shot sizes (its shot size has more records than the target)",
    "conflicting_labels": "the record carries two different values for one label",
    "unmatched_title": "the film title matches no canonical title",
    "ambiguous_title": "the film title matches several canonical titles equally well",
    "worker_failed": "the worker process handling the record died on every retry (a crash in a decoder or a model, "
                     "out of memory), or the record's work raised an error the stage did not expect",
}

# The fields a record may carry, who sets them and what they hold. Records may hold others too;
# they travel untouched. Types are the JSON types a stage checks with ``check_fields``.
FIELDS: dict[str, tuple[tuple[type, ...], str]] = {
    "id": ((str,), "stable id of one still, unique in a data set"),
    "image": ((str,), "image path relative to the image root (raw and metadata stages)"),
    "title": ((str,), "film title as the raw data spells it"),
    "title_canonical": ((str,), "the canonical title it matched"),
    "title_score": ((int, float), "match score, 0..100"),
    "caption_ko": ((str,), "Korean caption"),
    "tags_ko": ((list,), "Korean tags (list of strings)"),
    "caption_en": ((str,), "English caption"),
    "text": ((str,), "the prompt text training reads (imagefolder convention)"),
    "file_name": ((str,), "image path relative to Dataset_fin (imagefolder convention)"),
    "shot_size": ((str, type(None)), "shot size key from the vocabulary, or null"),
    "angle": ((str, type(None)), "camera angle key from the vocabulary, or null"),
    "location": ((str, type(None)), "location key from the vocabulary, or null"),
    "cluster": ((int,), "k-means cluster index"),
    "cluster_distance": ((int, float), "distance to the cluster centroid"),
    "bubble_mask_file": ((str,), "bubble mask PNG relative to the data root (white = removed)"),
    "lineart_file": ((str,), "line-art image relative to the data root"),
    "small_file": ((str,), "the square's small PNG copy relative to the data root, for embedding and previews"),
}


class RecordError(Exception):
    """Why one record cannot go on: a reason from REJECT_REASONS and a human detail."""

    def __init__(self, reason: str, detail: str):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class AccountingError(RuntimeError):
    """A stage lost or doubled a record: a bug in the stage, never the user's fault."""


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------
@dataclass
class JsonlItem:
    """One non-blank line of a JSONL file: a record, or the error that kept it from being one."""

    source: str
    line: int
    raw: str
    record: dict | None = None
    error: RecordError | None = None


def _text_lines(path: Path) -> Iterator[tuple[int, bytes | str]]:
    """Yield (line number, line) without its line ending; bytes for UTF-8, str for UTF-16 files."""
    with open(path, "rb") as fh:
        head = fh.read(4)
        fh.seek(0)
        if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            with io.TextIOWrapper(fh, encoding="utf-16", newline="") as text:
                for number, line in enumerate(text, start=1):
                    yield number, line.rstrip("\r\n")
            return
        for number, line in enumerate(fh, start=1):
            if number == 1 and line.startswith(codecs.BOM_UTF8):
                line = line[len(codecs.BOM_UTF8):]
            yield number, line.rstrip(b"\r\n")


_JSON_TYPE_NAMES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


def read_jsonl(path: str | os.PathLike) -> Iterator[JsonlItem]:
    """Stream a JSONL file. Blank lines are skipped; every other line becomes one ``JsonlItem``."""
    path = Path(path)
    for number, line in _text_lines(path):
        if isinstance(line, bytes):
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raw = line.decode("utf-8", errors="replace")
                error = RecordError("malformed_json", f"not UTF-8 ({exc.reason})")
                yield JsonlItem(str(path), number, raw, error=error)
                continue
        else:
            text = line
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            error = RecordError("malformed_json", f"{path.name} line {number}: {exc.msg} at column {exc.colno}")
            yield JsonlItem(str(path), number, text, error=error)
            continue
        if not isinstance(value, dict):
            kind = _JSON_TYPE_NAMES.get(type(value), type(value).__name__)
            error = RecordError("malformed_json", f"{path.name} line {number}: a JSON {kind}, not an object")
            yield JsonlItem(str(path), number, text, error=error)
            continue
        yield JsonlItem(str(path), number, text, record=value)


def load_jsonl(path: str | os.PathLike) -> list[dict]:
    """All records of a file that must be clean (our own outputs); the first bad line is an error."""
    records = []
    for item in read_jsonl(path):
        if item.error:
            raise item.error
        records.append(item.record)
    return records


def read_json_object(path: str | os.PathLike, what: str, holding: str = "a JSON object") -> dict:
    """A JSON object a user hands us (a config, a labels file); any problem is one ``UserError`` line
    naming ``what`` and the path. ``holding`` says what the file should hold when it is not an object."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8-sig"))
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UserError(f"{what} {path} is not valid JSON ({exc})") from None
    if not isinstance(value, dict):
        raise UserError(f"{what} {path} must hold {holding}")
    return value


def read_json_object_or_none(path: str | os.PathLike) -> dict | None:
    """A JSON object we wrote ourselves (a marker, a resume state), or None when it is absent or
    unreadable: the caller then redoes the work rather than trusting it."""
    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def check_fields(record: Mapping[str, Any], required: Iterable[str] = (), optional: Iterable[str] = ()) -> None:
    """Raise ``RecordError`` when a required field is absent/empty or any named field has the wrong type."""
    for name in required:
        value = record.get(name)
        if value is None or (isinstance(value, (str, list)) and not value):
            raise RecordError("missing_field", f"field {name!r} is missing or empty")
    for name in list(required) + list(optional):
        if name not in record or record[name] is None:
            continue
        types = FIELDS.get(name, ((object,), ""))[0]
        value = record[name]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            wanted = " or ".join(t.__name__ for t in types if t is not type(None))
            raise RecordError("wrong_type", f"field {name!r} should be {wanted}, got {type(value).__name__}")


def harmonize_field_types(records: list[dict]) -> list[str]:
    """Give each field one JSON type across ``records`` (nulls aside), as columnar readers such as
    ``datasets``' imagefolder need: a field seen with several types (two crawls spelling ``scene`` as
    ``"S#12"`` and ``12``) becomes text everywhere (JSON text for lists and objects). Whole numbers
    mixed with floats are left alone. Changes the records in place; returns the fields it changed."""
    kinds: dict[str, set[str]] = {}
    for record in records:
        for name, value in record.items():
            if value is not None:
                is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
                kind = "number" if is_number else type(value).__name__
                kinds.setdefault(name, set()).add(kind)
    mixed = sorted(name for name, seen in kinds.items() if len(seen) > 1)
    for record in records:
        for name in mixed:
            value = record.get(name)
            if value is not None and not isinstance(value, str):
                record[name] = json.dumps(value, ensure_ascii=False) if isinstance(value, (list, dict)) else str(value)
    return mixed


# --------------------------------------------------------------------------------------------
# Paths
# --------------------------------------------------------------------------------------------
def resolve_under(root: str | os.PathLike, relative: object) -> Path:
    """The path ``relative`` names under ``root``; refuses absolute paths and escapes from ``root``."""
    if not isinstance(relative, str) or not relative.strip():
        raise RecordError("missing_field", "no image path")
    if "\x00" in relative:
        raise RecordError("path_escape", "path holds a NUL byte")
    windows = PureWindowsPath(relative)
    if PurePosixPath(relative).is_absolute() or windows.is_absolute() or windows.drive:
        raise RecordError("path_escape", f"absolute path {relative!r}; paths must be relative to the data root")
    root = Path(root)
    candidate = root / PurePosixPath(relative.replace("\\", "/"))
    root_real = root.resolve()
    real = candidate.resolve()
    if real != root_real and root_real not in real.parents:
        raise RecordError("path_escape", f"path {relative!r} leaves the data root {str(root)!r}")
    return Path(os.path.normpath(candidate))


# --------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------
@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temp file beside ``path``; on success fsync and rename it over ``path``, else remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
    try:
        with open(tmp, mode, **kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_dir(final: str | os.PathLike):
    """Fill a fresh temp folder beside ``final``; on success swap it into place (an existing folder is
    moved aside first and removed after), else remove it. Readers see the old folder or the new one."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    # mkdir with the normal umask (not tempfile's 0700): the folder becomes one others read.
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
            final.rename(old)
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def atomic_write_json(path: str | os.PathLike, value: Any) -> None:
    with atomic_write(path) as fh:
        json.dump(value, fh, ensure_ascii=False, indent=2, default=str)
        fh.write("\n")


def dumps_record(record: Mapping[str, Any]) -> str:
    """One JSONL line (no newline): UTF-8 text kept readable, so Korean stays Korean."""
    return json.dumps(record, ensure_ascii=False, default=str)


def write_jsonl(path: str | os.PathLike, records: Iterable[Mapping[str, Any]]) -> int:
    """Write records atomically; returns how many."""
    count = 0
    with atomic_write(path) as fh:
        for record in records:
            fh.write(dumps_record(record) + "\n")
            count += 1
    return count


# --------------------------------------------------------------------------------------------
# Stage accounting
# --------------------------------------------------------------------------------------------
def rejects_path_for(output: str | os.PathLike) -> Path:
    """``X.jsonl`` -> ``X.rejects.jsonl``; a folder output -> ``<folder>/rejects.jsonl``."""
    output = Path(output)
    if output.suffix == ".jsonl":
        return output.with_name(output.stem + ".rejects.jsonl")
    return output / "rejects.jsonl"


def run_info_path_for(output: str | os.PathLike) -> Path:
    """Where a stage saves its resolved config and summary beside its output."""
    output = Path(output)
    if output.suffix == ".jsonl":
        return output.with_name(output.stem + ".run.json")
    return output / "run.json"


class StageRecords:
    """A stage's output and rejects files, written atomically, with the accounting rule checked.

    Use as a context manager. Each record read is counted once (``read_from`` counts for you, and
    sends malformed lines to rejects itself); each must then be passed once to ``accept`` or
    ``reject``. On a clean exit both files are renamed into place together with ``<output>.run.json``
    (the stage's config and summary); on an exception neither replaces what was there.
    """

    def __init__(self, output: str | os.PathLike, rejects: str | os.PathLike | None = None,
                 stage: str = "stage", config: Mapping[str, Any] | None = None):
        output = Path(output)
        self.output = output if output.suffix == ".jsonl" else output / "metadata.jsonl"
        self.rejects = Path(rejects) if rejects else rejects_path_for(output)
        self.run_info = run_info_path_for(output)
        self.stage = stage
        self.config = dict(config or {})
        self.read = 0
        self.written = 0
        self.rejected_by_reason: dict[str, int] = {}
        self.extra: dict[str, Any] = {}
        self._started = time.time()
        self._out_cm = self._rej_cm = None

    def __enter__(self) -> StageRecords:
        self._out_cm = atomic_write(self.output)
        self._rej_cm = atomic_write(self.rejects)
        self._out = self._out_cm.__enter__()
        self._rej = self._rej_cm.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None and self.read != self.written_inputs + self.rejected:
            exc_type = AccountingError
            exc = AccountingError(
                f"{self.stage}: read {self.read} records but wrote {self.written_inputs} and rejected {self.rejected}")
            tb = None
        # Rejects first, so the output never lands without the rejects that explain it.
        self._rej_cm.__exit__(exc_type, exc, tb)
        self._out_cm.__exit__(exc_type, exc, tb)
        if exc_type is None:
            atomic_write_json(self.run_info, self.run_record())
        elif exc_type is AccountingError:
            raise exc
        return False

    # -- counting -------------------------------------------------------------------------
    @property
    def rejected(self) -> int:
        return sum(self.rejected_by_reason.values())

    @property
    def written_inputs(self) -> int:
        return self.written - self._repeats

    _repeats = 0

    def count_read(self, n: int = 1) -> None:
        self.read += n

    def read_from(self, path: str | os.PathLike) -> Iterator[JsonlItem]:
        """Items with a record; malformed lines are counted and rejected here."""
        for item in read_jsonl(path):
            self.count_read()
            if item.error is not None:
                self.reject_item(item, item.error)
                continue
            yield item

    def accept(self, record: Mapping[str, Any], repeat: bool = False) -> None:
        """Write a record to the output. ``repeat=True`` marks an extra copy (balancing) of a record
        already accepted, so it is not counted as another input."""
        self._out.write(dumps_record(record) + "\n")
        self.written += 1
        if repeat:
            self._repeats += 1

    def reject(self, reason: str, detail: str, record: Mapping[str, Any] | None = None,
               raw: str | None = None, source: str | None = None, line: int | None = None, **more: Any) -> None:
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        entry: dict[str, Any] = {"reason": reason, "detail": detail}
        if source is not None:
            entry["source"] = source
        if line is not None:
            entry["line"] = line
        if record is not None:
            entry["record"] = dict(record)
        if raw is not None:
            entry["raw"] = raw
        entry.update(more)
        self._rej.write(dumps_record(entry) + "\n")
        self.rejected_by_reason[reason] = self.rejected_by_reason.get(reason, 0) + 1

    def reject_item(self, item: JsonlItem, error: RecordError, **more: Any) -> None:
        """Reject a line read by ``read_jsonl`` with the error found in it."""
        if item.record is not None:
            self.reject(error.reason, error.detail, record=item.record, source=item.source, line=item.line, **more)
        else:
            self.reject(error.reason, error.detail, raw=item.raw, source=item.source, line=item.line, **more)

    # -- reporting ------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "read": self.read,
            "written": self.written,
            "rejected": self.rejected,
            "rejected_by_reason": dict(sorted(self.rejected_by_reason.items())),
            "extra": dict(self.extra),
            "seconds": round(time.time() - self._started, 3),
        }

    def run_record(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "output": str(self.output),
            "rejects": str(self.rejects),
            "config": self.config,
            "summary": self.summary(),
            "python": sys.version.split()[0],
            "platform": platform.platform(),
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def summary_table(self) -> str:
        rows: list[tuple[str, object]] = [("read", self.read), ("written", self.written), ("rejected", self.rejected)]
        rows += [(f"  {reason}", n) for reason, n in sorted(self.rejected_by_reason.items())]
        rows += [(str(k), v) for k, v in self.extra.items()]
        return f"{self.stage}: {self.output}\n" + format_table(rows, header=("", "records"))
