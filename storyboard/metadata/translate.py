"""Korean -> English prompts (stage 02).

Each record gets ``text``, the English prompt training reads: the label words from the vocabulary
table (``shot_size``, ``angle``, ``location`` -> ``"full shot, eye level, outdoor"``), then the
English caption. Shot, angle and location words never go through a model: before the caption is
translated, every word (eojeol) holding a vocabulary term is taken out of it (``풀샷으로 강가를 걷는 남자``
-> ``강가를 걷는 남자``), since the labels already say it, deterministically.

The free text goes through ``--backend``:
* ``table``: vocabulary only. The caption is dropped (``caption_en`` null), ``text`` is the label words.
* ``marian``: a local MarianMT folder (opus-mt-ko-en layout, ``--model``), batched, on GPU when present
  (``storyboard.metadata.marian``, loaded only for this backend).
* ``none``: the Korean is kept as the "translation" (for multilingual text encoders, or for checking).

Non-vocabulary tags are translated the same way into ``tags_en`` (vocabulary tags become their English
names). Identical strings are translated once per run, and a cache file (JSONL, one
``{"backend", "model", "source", "target"}`` per line, keyed by backend + model fingerprint + source
text, rewritten atomically) carries translations over to the next run.
"""
from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from storyboard.core.cli import UserError, progress
from storyboard.core.records import RecordError, StageRecords, atomic_write, check_fields, read_jsonl
from storyboard.core.textnorm import normalize
from storyboard.core.vocabulary import Vocabulary, normalize_text
from storyboard.metadata.memo import Memo, term_named
from storyboard.metadata.raw_fields import has_records, map_raw_text_fields

BACKENDS = ("table", "marian", "none")
CACHE_NAME = "translation_cache.jsonl"  # default cache file, beside the output
CHUNK_RECORDS = 2048  # records read before their new strings are translated together
CACHE_SAVE_SECONDS = 300  # during long runs the cache is also saved this often
LABEL_FIELDS = ("shot_size", "angle", "location")


class Translator(Protocol):
    backend: str
    fingerprint: str

    def translate(self, texts: Sequence[str]) -> list[str]: ...


class KeepKorean:
    """``--backend none``: the source text is its own translation."""

    backend, fingerprint = "none", "identity"

    def translate(self, texts: Sequence[str]) -> list[str]:
        return list(texts)


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------
class TranslationCache:
    """Translations keyed by (backend, model fingerprint, source). Entries of other models are kept."""

    def __init__(self, path: Path | None, backend: str, fingerprint: str):
        self.path, self.backend, self.fingerprint = path, backend, fingerprint
        self.entries: dict[tuple[str, str, str], str] = {}
        self.loaded = self.ignored_lines = self.added = 0
        if path is not None and path.is_file():
            for item in read_jsonl(path):
                entry = item.record
                fields = ("backend", "model", "source", "target")
                if item.error or not all(isinstance(entry.get(k), str) for k in fields):
                    self.ignored_lines += 1  # a damaged cache line only costs a re-translation
                    continue
                self.entries[(entry["backend"], entry["model"], entry["source"])] = entry["target"]
                self.loaded += 1
        self._saved_at = time.monotonic()

    def get(self, source: str) -> str | None:
        return self.entries.get((self.backend, self.fingerprint, source))

    def put(self, source: str, target: str) -> None:
        self.entries[(self.backend, self.fingerprint, source)] = target
        self.added += 1

    def save(self, force: bool = True) -> None:
        if self.path is None or not self.added:
            return
        if not force and time.monotonic() - self._saved_at < CACHE_SAVE_SECONDS:
            return
        with atomic_write(self.path) as fh:
            for (backend, model, source), target in self.entries.items():
                fh.write(json.dumps({"backend": backend, "model": model, "source": source, "target": target},
                                    ensure_ascii=False) + "\n")
        self._saved_at = time.monotonic()


# --------------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------------
def strip_vocabulary_words(caption: str, vocabulary: Vocabulary) -> str:
    """The caption without the words (space-separated eojeols) that hold a vocabulary term."""
    return _strip_memo(vocabulary, caption)


def _strip(vocabulary: Vocabulary, caption: str) -> str:
    norm = normalize_text(caption)
    matches = vocabulary.find(norm)
    if not matches:
        return caption
    words = norm.split(" ")
    starts, pos = [], 0
    for word in words:
        starts.append(pos)
        pos += len(word) + 1
    drop = set()
    for m in matches:
        drop.update(i for i, s in enumerate(starts) if s < m.end and s + len(words[i]) > m.start)
    original = caption.split(" ")
    keep_from = original if len(original) == len(words) else words  # NFKC kept the word count: keep the raw forms
    kept = " ".join(w for i, w in enumerate(keep_from) if i not in drop)
    return normalize(kept).strip(" ,.;:·-")


_strip_memo = Memo(_strip)


def label_term(vocabulary: Vocabulary, value: object, kind: str):
    """The term a label field names (its key, as stage 01 writes it, or any spelling), else None."""
    if isinstance(value, str):
        for term in vocabulary.of_kind(kind):
            if term.key == value:
                return term
    return vocabulary.lookup(value, kind=kind)


def check_record(raw: dict, vocabulary: Vocabulary) -> dict:
    record = map_raw_text_fields(dict(raw))
    check_fields(record, optional=("caption_ko", "tags_ko", *LABEL_FIELDS))
    for name in LABEL_FIELDS:
        value = record.get(name)
        if value is not None and label_term(vocabulary, value, name) is None:
            raise RecordError("wrong_type", f"field {name!r} holds {value!r}, which is not a {name} of the vocabulary")
    return record


def _plan(record: dict, vocabulary: Vocabulary, backend: str) -> tuple[str, list[tuple[str, str | None]]]:
    """(caption source text, [(tag, English name or None = needs translating)]). The table backend
    drops the caption, so it skips the vocabulary scan of it."""
    source = "" if backend == "table" else strip_vocabulary_words(record.get("caption_ko") or "", vocabulary)
    tags = []
    for tag in record.get("tags_ko") or []:
        (term,) = term_named(vocabulary, tag)
        tags.append((tag, term.name if term else None))
    return source, tags


def prompt_text(words: Iterable[str | None]) -> str:
    """``["full shot", "outdoor", "A man walks."]`` -> ``"full shot, outdoor, a man walks"``."""
    parts = []
    for word in words:
        word = (word or "").strip().rstrip(".").strip()
        first = word.split(" ", 1)[0]
        if first[:1].isupper() and first != "I" and (len(first) == 1 or not first.isupper()):
            word = word[0].lower() + word[1:]  # "A man" -> "a man"; "NASA", "I" stay
        if word:
            parts.append(word)
    return ", ".join(parts)


def _finish(record: dict, plan: tuple[str, list], lookup, vocabulary: Vocabulary, backend: str) -> dict:
    source, tags = plan
    labels = [label_term(vocabulary, record[f], f).name for f in LABEL_FIELDS if record.get(f)]
    caption_en = None if backend == "table" else (lookup(source) if source else "")
    tags_en = []
    for tag, english in tags:
        english = english or (None if backend == "table" else lookup(tag))
        if english and english not in tags_en:
            tags_en.append(english)
    out = dict(record)
    out["caption_en"], out["tags_en"] = caption_en, tags_en
    out["text"] = prompt_text([*labels, caption_en])
    return out


def translate_records(input_path: Path, output: Path, rejects: Path | None, vocabulary: Vocabulary,
                      translator: Translator | None, cache: TranslationCache | None,
                      config: dict[str, Any] | None = None) -> StageRecords:
    """Run the stage. ``translator`` None means the table backend."""
    if not Path(input_path).is_file():
        raise UserError(f"input not found: {input_path}")
    if not has_records(Path(input_path)):
        raise UserError(f"input {input_path} is empty: no records to translate (the output was left as it was)")
    backend = translator.backend if translator else "table"
    counts = {"texts to translate": 0, "translated now": 0, "cache hits": 0}
    # Without a cache file, an in-memory one still translates each distinct string once per run.
    store = cache if cache is not None or translator is None \
        else TranslationCache(None, backend, translator.fingerprint)

    def lookup(text: str) -> str:
        return store.get(text)

    def flush(stage: StageRecords, chunk: list[tuple[dict, tuple]]) -> None:
        if translator is not None:
            needed = [s for _, (source, tags) in chunk for s in [source, *(t for t, en in tags if en is None)] if s]
            missing = [text for text in dict.fromkeys(needed) if store.get(text) is None]
            for text, english in zip(missing, translator.translate(missing) if missing else []):
                store.put(text, english)
            counts["texts to translate"] += len(needed)
            counts["translated now"] += len(missing)
            counts["cache hits"] = counts["texts to translate"] - counts["translated now"]
            store.save(force=False)
        for record, plan in chunk:
            stage.accept(_finish(record, plan, lookup, vocabulary, backend))

    try:
        with StageRecords(output, rejects, stage="translate", config=config) as stage:
            chunk: list[tuple[dict, tuple]] = []
            for item in progress(stage.read_from(input_path), desc=f"translate ({backend})", unit="rec"):
                try:
                    record = check_record(item.record, vocabulary)
                except RecordError as err:
                    stage.reject_item(item, err)
                    continue
                chunk.append((record, _plan(record, vocabulary, backend)))
                if len(chunk) >= CHUNK_RECORDS:
                    flush(stage, chunk)
                    chunk = []
            flush(stage, chunk)
            stage.extra.update({"backend": backend, **({} if translator is None else counts)})
            if cache is not None:
                stage.extra.update({"cache entries loaded": cache.loaded, "cache file": str(cache.path)})
                if cache.ignored_lines:
                    stage.extra["cache lines ignored (damaged)"] = cache.ignored_lines
    finally:
        if cache is not None:
            cache.save()
    return stage


def check_marian(model: Path | None, batch_size: int) -> None:
    """What ``--backend marian`` needs, checked before torch and transformers are loaded."""
    if model is None:
        raise UserError("--backend marian needs --model PATH (a local opus-mt-ko-en style folder)")
    model = Path(model)
    if not (model / "config.json").is_file() or not (model / "source.spm").is_file():
        raise UserError(f"--model {model}: not a MarianMT folder (needs config.json, source.spm, "
                        "target.spm, vocab.json and the weights, as in Helsinki-NLP/opus-mt-ko-en)")
    if batch_size < 1:
        raise UserError("--batch-size must be at least 1")


def make_translator(backend: str, model: Path | None, batch_size: int, device: str,
                    max_new_tokens: int | None, num_beams: int | None, fp16: bool) -> Translator | None:
    if backend not in BACKENDS:
        raise UserError(f"unknown --backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "table":
        return None
    if backend == "none":
        return KeepKorean()
    check_marian(model, batch_size)
    from storyboard.metadata.marian import MarianTranslator  # noqa: PLC0415 (heavy: loads torch/transformers only after the flags are checked)

    return MarianTranslator(model, batch_size, device, max_new_tokens, num_beams, fp16)
