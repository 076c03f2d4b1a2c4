"""Which training set ``Dataset_fin/metadata.jsonl`` holds: the finalize stage's, or the balanced one.

The finalize stage (03) writes the file; the clustering stage rewrites it in place as the balanced set,
whose records carry ``shot_size_source``, a field only that stage writes. Both need to tell the two
apart: clustering to read its input from the pre-balance copy instead of its own output, finalize to
warn that re-running it replaced the balanced set that training reads.
"""
from __future__ import annotations

from pathlib import Path

from storyboard.core.records import read_jsonl

BALANCED_MARKER = "shot_size_source"  # a field only the clustering stage writes: marks its own output


def first_record(path: Path) -> dict | None:
    """The first well-formed record of a JSONL file, or None."""
    for item in read_jsonl(path):
        if item.record is not None:
            return item.record
    return None


def is_balanced_set(path: Path) -> bool:
    """Whether ``path`` is the clustering stage's output (the balanced set with trigger captions)."""
    first = first_record(path) if path.is_file() else None
    return first is not None and BALANCED_MARKER in first
