"""Clean Korean captions and tags and read the shot labels out of them (stage 01).

Cleaning (``clean_caption``, ``clean_tags``), in this order:
1. ``textnorm.normalize`` (NFC, full-width forms, one space);
2. HTML entities decoded (twice, for ``&amp;lt;``) and tags / comments removed (``<br>`` -> space);
3. hashtags taken out of the caption and added to the tags (``#풀샷`` -> tag ``풀샷``);
4. bracketed notes removed from the caption: ``[...]``, ``【...】``, ``〔...〕`` (parentheses stay:
   they usually carry content, not editorial notes);
5. emoji and pictographs removed (with their variation selectors and joiners);
6. runs of punctuation collapsed (``!!!`` -> ``!``, ``?!?!`` -> ``?!``, ``.....`` -> ``...``) and spaces
   before punctuation dropped.
A tag that names one vocabulary term as a whole (``풀 샷``, ``풀쇼트``, ``FULL SHOT``) is rewritten to that
term's first Korean spelling (``풀샷``), so spelling variants collapse; tags are de-duplicated in order.

Labels (``find_labels``): every vocabulary term found (``Vocabulary.find``) in the cleaned tags and the
cleaned caption, plus a label the record already carries (``shot_size`` etc., e.g. on a re-run).
Two different shot sizes reject the record (``conflicting_labels``); no shot size leaves ``shot_size``
null. Two different angles or locations leave that field null and are listed in ``label_conflicts``
(only a shot-size clash spoils a training example). ``labels_from`` says where each label came from.
"""
from __future__ import annotations

import html
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from storyboard.core.cli import UserError, progress
from storyboard.core.records import RecordError, StageRecords, check_fields
from storyboard.core.textnorm import normalize
from storyboard.core.vocabulary import KINDS, Term, Vocabulary
from storyboard.metadata.memo import Memo, terms_in
from storyboard.metadata.raw_fields import has_records, map_raw_text_fields

LABEL_FIELDS = tuple(KINDS.values())  # shot_size, angle, location
SOURCES = ("tags", "caption", "field")  # where a label may come from, most trusted first

_HTML_TAG = re.compile(r"<!--.*?-->|</?[A-Za-z][A-Za-z0-9]*(?:\s[^<>]*)?/?>", re.S)
_HTML_BLOCK = re.compile(r"</?(?:br|p|div|li|ul|ol|tr|td|th|h[1-6]|hr|table|blockquote)\b[^<>]*>", re.I)
_HASHTAG = re.compile(r"#+([^\s#,.!?;:()\[\]{}<>\"'`~]+)")
_NOTE = re.compile(r"\[[^\[\]]*\]|【[^【】]*】|〔[^〔〕]*〕")
_EMOJI = re.compile(
    "[\U0001F000-\U0001FAFF\U00002600-\U000027BF\U00002300-\U000023FF\U00002B00-\U00002BFF"
    "\U0001FC00-\U0001FFFF\U000E0020-\U000E007F\uFE0E\uFE0F\u200D\u20E3\u3030\u303D]"
)
_PUNCT_RUN = re.compile(r"[!?！？]{2,}|([~,，·])\1+|\.{2,}|…+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([!?.,~…])")
_TAG_EDGES = re.compile(r"^[\s#\[\]【】〔〕()<>\"'`*·•\-_,.;:!?~]+|[\s\[\]【】〔〕()<>\"'`*·•\-_,.;:!?~]+$")
_TAG_SPLIT = re.compile(r"[,，、;；|/／\n]+|\s+(?=#)")


# --------------------------------------------------------------------------------------------
# Cleaning
# --------------------------------------------------------------------------------------------
def _strip_html(text: str) -> str:
    for _ in range(2):
        decoded = html.unescape(text)
        if decoded == text:
            break
        text = decoded
    text = _HTML_BLOCK.sub(" ", text)  # block tags separate words; inline ones (<b>, <span>) do not
    return _HTML_TAG.sub("", text)


def _collapse_punct(match: re.Match) -> str:
    run = match.group(0)
    if run[0] in "!?！？":
        return "".join(dict.fromkeys(run.replace("！", "!").replace("？", "?")))
    if run[0] in ".…":
        return "..."
    return run[0]


def clean_caption(text: str) -> tuple[str, list[str]]:
    """(cleaned caption, hashtags found in it). Idempotent."""
    text = _strip_html(normalize(text))
    hashtags = [normalize(h) for h in _HASHTAG.findall(text)]
    text = _HASHTAG.sub(" ", text)
    text = _NOTE.sub(" ", text)
    text = _EMOJI.sub("", text)
    text = _PUNCT_RUN.sub(_collapse_punct, text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", normalize(text))
    return text.strip(" ,"), [h for h in hashtags if h]


def _clean_tag(vocabulary: Vocabulary, tag: str) -> str:
    tag = _EMOJI.sub("", _strip_html(normalize(tag)))
    tag = normalize(_TAG_EDGES.sub("", normalize(tag)))
    term = vocabulary.lookup(tag)
    if term is not None:
        return term.ko[0] if term.ko else term.name
    return tag


_clean_tag_memo = Memo(_clean_tag)


def clean_tag(tag: str, vocabulary: Vocabulary) -> str:
    """One tag cleaned, and rewritten to its term's first Korean spelling when it names one."""
    return _clean_tag_memo(vocabulary, tag)


def clean_tags(tags: list[str], hashtags: list[str], vocabulary: Vocabulary) -> list[str]:
    """Split, clean, canonicalise and de-duplicate tags (hashtags from the caption appended)."""
    parts = [p for tag in [*tags, *hashtags] for p in _TAG_SPLIT.split(_strip_html(normalize(tag)))]
    cleaned = (clean_tag(p, vocabulary) for p in parts)
    return list(dict.fromkeys(t for t in cleaned if t))


# --------------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------------
@dataclass
class Labels:
    values: dict[str, str | None]
    sources: dict[str, str]
    conflicts: dict[str, list[str]]
    evidence: dict[str, list[str]]


def find_labels(record: dict, tags: list[str], caption: str, vocabulary: Vocabulary) -> Labels:
    """Every label the tags, caption and existing fields name; see the module docstring."""
    found: dict[str, dict[str, tuple[str, str]]] = {f: {} for f in LABEL_FIELDS}  # field -> key -> (source, text)

    def add(term: Term, source: str, text: str) -> None:
        found[term.kind].setdefault(term.key, (source, text))

    for tag in tags:
        for term, text in terms_in(vocabulary, tag):
            add(term, "tags", text)
    for term, text in terms_in(vocabulary, caption):
        add(term, "caption", text)
    for name in LABEL_FIELDS:
        value = record.get(name)
        if value is None:
            continue
        term = vocabulary.lookup(value, kind=name)
        if term is None:
            raise RecordError("wrong_type", f"field {name!r} holds {value!r}, which is not a {name} of the vocabulary")
        add(term, "field", value)
    values, sources, conflicts, evidence = {}, {}, {}, {}
    for name, keys in found.items():
        evidence[name] = [f"{key} ({src}: {text})" for key, (src, text) in keys.items()]
        if len(keys) == 1:
            (key, (src, _)), = keys.items()
            values[name], sources[name] = key, src
        else:
            values[name] = None
            if keys:
                conflicts[name] = sorted(keys)
    return Labels(values, sources, conflicts, evidence)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
def preprocess_record(raw: dict, vocabulary: Vocabulary) -> tuple[dict, Labels]:
    """One record cleaned and labelled; raises ``RecordError`` (wrong types, conflicting shot sizes)."""
    record = map_raw_text_fields(dict(raw))
    check_fields(record, optional=("caption_ko", "tags_ko", *LABEL_FIELDS))
    caption_raw = record.get("caption_ko") or ""
    tags_raw = list(record.get("tags_ko") or [])
    caption, hashtags = clean_caption(caption_raw)
    tags = clean_tags(tags_raw, hashtags, vocabulary)
    labels = find_labels(record, tags, caption, vocabulary)
    if "shot_size" in labels.conflicts:
        raise RecordError("conflicting_labels",
                          "two shot sizes in one record: " + ", ".join(labels.evidence["shot_size"]))
    record.setdefault("caption_ko_raw", raw.get("caption_ko", raw.get("caption")))
    record.setdefault("tags_ko_raw", raw.get("tags_ko", raw.get("tags")))
    record["caption_ko"], record["tags_ko"] = caption, tags
    record.update(labels.values)
    record["labels_from"] = labels.sources
    if labels.conflicts:
        record["label_conflicts"] = labels.conflicts
    else:
        record.pop("label_conflicts", None)
    return record, labels


def preprocess_tags(input_path: Path, output: Path, rejects: Path | None, vocabulary: Vocabulary,
                    config: dict[str, Any] | None = None) -> StageRecords:
    if not Path(input_path).is_file():
        raise UserError(f"input not found: {input_path}")
    if not has_records(Path(input_path)):
        raise UserError(f"input {input_path} is empty: no records to clean (the output was left as it was)")
    counts = {"with shot size": 0, "without shot size": 0, "angle conflicts (left null)": 0,
              "location conflicts (left null)": 0}
    with StageRecords(output, rejects, stage="preprocess_tags", config=config) as stage:
        for item in progress(stage.read_from(input_path), desc="clean tags", unit="rec"):
            try:
                record, labels = preprocess_record(item.record, vocabulary)
            except RecordError as err:
                stage.reject_item(item, err)
                continue
            counts["with shot size" if record["shot_size"] else "without shot size"] += 1
            for name in ("angle", "location"):
                counts[f"{name} conflicts (left null)"] += name in labels.conflicts
            stage.accept(record)
        stage.extra.update(counts)
    return stage
