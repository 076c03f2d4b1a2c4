"""Korean prompts in English, the way stage 02 (``02_translate.py``) turns captions into training text.

SD's text encoder reads English, and the training captions are English, so a prompt written in
Korean (``풀샷, 실외, 남자가 걷는다``) is translated before it is used, with stage 02's rules and its
backends (``storyboard.metadata.translate``):

* the vocabulary's words never go through a model: each comma-separated part holding Korean has its
  vocabulary words (shot size, angle, location, in any spelling the tag stage knows) taken out and
  replaced by their English names (``풀샷`` -> ``full shot``, ``실외`` -> ``outdoor``);
* what is left is free text, handled by ``--translate``:
  ``table`` (the default) knows only the vocabulary, so free Korean words are left out of the prompt
  (and listed, so the output says so: SD's English encoder would read them as noise);
  ``marian`` translates it with a local MarianMT folder (``--translate-model``), remembered in the same
  translation cache file format as stage 02's (``translation_cache.jsonl``);
  ``none`` keeps it in Korean (for a multilingual text encoder).

Parts without Korean are kept exactly as written. Nothing here loads a model: the ``marian``
translator is built by ``make_prompt_translator`` once the flags and prompts are checked.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from storyboard.core.cli import UserError
from storyboard.core.vocabulary import Vocabulary
from storyboard.metadata.translate import (
    BACKENDS,
    CACHE_NAME,
    TranslationCache,
    Translator,
    check_marian,
    make_translator,
    prompt_text,
    strip_vocabulary_words,
)

HANGUL = re.compile(r"[\uac00-\ud7a3\u1100-\u11ff\u3131-\u318e]")
TRANSLATE_CHOICES = BACKENDS  # table | marian | none, as 02_translate.py --backend
CACHE_FILE = CACHE_NAME


@dataclass(frozen=True)
class Piece:
    """One part of a prompt: ``keep`` (written in English), ``term`` (a vocabulary word's English name)
    or ``korean`` (free Korean text for the backend)."""

    kind: str
    text: str


@dataclass
class PromptLanguage:
    """A prompt as given and what it became in English."""

    given: str
    pieces: list[Piece]
    english: str = ""
    backend: str = "table"
    left_out: list[str] = field(default_factory=list)  # Korean words the table backend could not translate

    @property
    def korean(self) -> list[str]:
        return [p.text for p in self.pieces if p.kind == "korean"]

    @property
    def translated(self) -> bool:
        return bool(HANGUL.search(self.given))

    def record(self) -> dict | None:
        """What the sidecar and the PNG keep about the translation (None for an English prompt)."""
        if not self.translated:
            return None
        return {"backend": self.backend, "english": self.english, "left_out": list(self.left_out)}


def has_korean(text: str) -> bool:
    return bool(HANGUL.search(text or ""))


def split_prompt(prompt: str, vocab: Vocabulary) -> list[Piece]:
    """The prompt's comma-separated parts; a part holding Korean becomes its vocabulary words' English
    names, then the free text left (module doc)."""
    pieces: list[Piece] = []
    for part in (prompt or "").split(","):
        part = part.strip()
        if not part:
            continue
        if not has_korean(part):
            pieces.append(Piece("keep", part))
            continue
        for name in dict.fromkeys(m.term.name for m in vocab.find(part)):
            pieces.append(Piece("term", name))
        rest = strip_vocabulary_words(part, vocab).strip()
        if rest:
            pieces.append(Piece("korean" if has_korean(rest) else "keep", rest))
    return pieces


def to_english(prompt: str, vocab: Vocabulary, backend: str, lookup: Callable[[str], str] | None = None
               ) -> PromptLanguage:
    """``prompt`` in English with ``backend``; ``lookup`` gives the ``marian`` translation of a Korean
    part (``PromptTranslator.lookup``)."""
    result = PromptLanguage(prompt, split_prompt(prompt, vocab), backend=backend)
    parts: list[str] = []
    for piece in result.pieces:
        if piece.kind != "korean" or backend == "none":
            parts.append(piece.text)
        elif backend == "marian" and lookup is not None:
            parts.append(prompt_text([lookup(piece.text)]))
        else:  # table: the vocabulary only
            words = piece.text.split()
            result.left_out += [w for w in words if has_korean(w)]
            parts.append(" ".join(w for w in words if not has_korean(w)))
    seen: set[str] = set()
    kept = [p for p in parts if p and not (p.lower() in seen or seen.add(p.lower()))]
    result.english = ", ".join(kept)
    return result


class PromptTranslator:
    """The ``marian`` backend for the Korean parts of many prompts: each distinct text translated once,
    in batches, through the translation cache."""

    def __init__(self, translator: Translator, cache: TranslationCache | None):
        self.translator, self.cache = translator, cache
        self.memory: dict[str, str] = {}
        self.translated_now = self.cache_hits = 0

    def prepare(self, texts: Sequence[str]) -> None:
        todo = []
        for text in dict.fromkeys(texts):
            cached = self.cache.get(text) if self.cache else None
            if cached is None:
                todo.append(text)
            else:
                self.memory[text] = cached
                self.cache_hits += 1
        for text, english in zip(todo, self.translator.translate(todo) if todo else []):
            self.memory[text] = english
            if self.cache:
                self.cache.put(text, english)
        self.translated_now += len(todo)
        if self.cache:
            self.cache.save()

    def lookup(self, text: str) -> str:
        return self.memory[text]


def check_translate_flags(backend: str, model: Path | None, needed: bool) -> None:
    """``--translate marian`` needs ``--translate-model`` (checked before anything loads, and only
    when some prompt has Korean left for it)."""
    if backend != "marian" or not needed:
        return
    if model is None:
        raise UserError("--translate marian needs --translate-model PATH (a local MarianMT folder, e.g. "
                        "Helsinki-NLP/opus-mt-ko-en downloaded beforehand)")
    try:
        check_marian(model, 1)
    except UserError as exc:
        raise UserError(str(exc).replace("--model", "--translate-model")) from None


def make_prompt_translator(backend: str, model: Path | None, device: str, cache_path: Path | None
                           ) -> PromptTranslator | None:
    """The ``marian`` translator with its cache (None for ``table`` and ``none``)."""
    if backend != "marian":
        return None
    translator = make_translator("marian", model, 16, device, None, None, False)
    cache = TranslationCache(cache_path, translator.backend, translator.fingerprint) if cache_path else None
    return PromptTranslator(translator, cache)
