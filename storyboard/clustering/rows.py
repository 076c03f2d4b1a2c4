"""The clustering stage's input records, one ``Row`` each: the record, its image, its tag's shot size,
and (once hashed) its content key. Every phase rejects through ``reject_row``, so each record read ends
in the output or in the rejects with its file and line.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storyboard.clustering.inputs import Inputs
from storyboard.core.cli import UserError
from storyboard.core.records import JsonlItem, RecordError, StageRecords, check_fields, resolve_under
from storyboard.core.vocabulary import Vocabulary


@dataclass
class Row:
    item: JsonlItem
    record: dict
    path: Path
    tag: str | None
    key: str = ""
    small: Path | None = None  # finalize's small copy of the image (``small_file``), when it is there

    @property
    def id(self) -> str:
        return str(self.record.get("id") or self.record.get("file_name"))


def read_rows(stage: StageRecords, inputs: Inputs, vocab: Vocabulary) -> list[Row]:
    """The input's records whose image exists and whose shot-size tag (if any) the vocabulary knows;
    raises before anything is written when there is none."""
    rows = []
    for item in stage.read_from(inputs.input):
        record = item.record
        try:
            check_fields(record, required=("file_name",), optional=("shot_size", "text"))
            path = resolve_under(inputs.data_root, record["file_name"])
            if not path.is_file():
                raise RecordError("missing_image", f"no file at {path}")
            tag = None
            if record.get("shot_size"):
                term = vocab.lookup(record["shot_size"], "shot_size")
                if term is None:
                    raise RecordError("wrong_type",
                                      f"shot_size {record['shot_size']!r} is not a shot size of the vocabulary")
                tag = term.key
        except RecordError as exc:
            stage.reject_item(item, exc)
            continue
        rows.append(Row(item, record, path, tag, small=small_copy(inputs.data_root, record)))
    if stage.read == 0:
        raise UserError(f"{inputs.input} holds no records; nothing was written")
    if not rows:
        why = ", ".join(f"{n} {r}" for r, n in sorted(stage.rejected_by_reason.items()))
        raise UserError(f"none of the {stage.read} records of {inputs.input} is usable ({why}); nothing was written")
    return rows


def small_copy(data_root: Path, record: dict) -> Path | None:
    """The record's ``small_file`` when it names a file under the data root; an odd value is ignored
    (the full image is read instead), never a reason to reject the record."""
    rel = record.get("small_file")
    if not isinstance(rel, str) or not rel:
        return None
    try:
        path = resolve_under(data_root, rel)
    except RecordError:
        return None
    return path if path.is_file() else None


def reject_row(stage: StageRecords, row: Row, reason: str, detail: str, **more: Any) -> None:
    stage.reject(reason, detail, record=row.record, source=row.item.source, line=row.item.line, **more)
