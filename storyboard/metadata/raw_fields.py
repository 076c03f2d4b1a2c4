"""What the three metadata stages take from a crawl as it comes: whether an input file holds any record
(``has_records``), and the raw ``caption`` / ``tags`` fields mapped to record fields (``map_raw_text_fields``).

Collect maps the raw fields first; stages 01 and 02 accept raw records too, so they map them the same way.
"""
from __future__ import annotations

from pathlib import Path

from storyboard.core.records import RecordError, check_fields
from storyboard.core.textnorm import normalize, split_tags


def has_records(path: Path) -> bool:
    """Whether a file holds anything but whitespace and a BOM (without reading it all)."""
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 16):
            bare = chunk.replace(b"\xef\xbb\xbf", b"").replace(b"\xff\xfe", b"").replace(b"\xfe\xff", b"")
            if bare.strip(b" \t\r\n\x00"):
                return True
    return False


def map_raw_text_fields(record: dict) -> dict:
    """Rename raw ``caption``/``tags`` to ``caption_ko``/``tags_ko`` (when those are absent) and
    normalise them: caption NFC/one-spaced, tags a list (a comma-separated string is split).
    Wrong types raise ``RecordError`` (``wrong_type``); other fields are left as they are."""
    if "caption_ko" not in record and "caption" in record:
        record["caption_ko"] = record.pop("caption")
    if "tags_ko" not in record and "tags" in record:
        record["tags_ko"] = record.pop("tags")
    if isinstance(record.get("tags_ko"), str):
        record["tags_ko"] = split_tags(record["tags_ko"])
    check_fields(record, optional=("caption_ko", "tags_ko"))
    if isinstance(record.get("caption_ko"), str):
        record["caption_ko"] = normalize(record["caption_ko"])
    tags = record.get("tags_ko")
    if tags is not None:
        bad = [t for t in tags if not isinstance(t, str)]
        if bad:
            raise RecordError("wrong_type",
                              f"field 'tags_ko' should hold text only, got {type(bad[0]).__name__} {bad[0]!r}")
        record["tags_ko"] = list(dict.fromkeys(t for t in (normalize(x) for x in tags) if t))
    return record
