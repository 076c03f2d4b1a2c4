"""What a prompt becomes: the trigger rules.

``prepare_prompt``: ``--shot full`` / ``--shot 풀샷`` puts that shot's token and its words in front of
a plain prompt; a prompt that already holds a trigger is left alone; a trigger the checkpoint did not
train is an error listing those it did. On the bare base (``checkpoint=None``) each trigger is
replaced by its plain words instead (``plain_prompt``), which is what ``validation/base_valid.sh``
compares against, and what CLIP reads in the validation report.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from storyboard.artifacts.read import Checkpoint
from storyboard.core.cli import UserError
from storyboard.core.vocabulary import Term, Vocabulary

TOKEN_RE = re.compile(r"<[^<>\s]+>")


def triggers_in(prompt: str, vocab: Vocabulary, extra: Iterable[str] = ()) -> list[str]:
    """The trigger tokens a prompt holds: vocabulary tokens and any token in ``extra``, in order."""
    known = set(vocab.trigger_tokens) | set(extra)
    return [m.group() for m in TOKEN_RE.finditer(prompt) if m.group() in known]


def resolve_shot(shot: str, vocab: Vocabulary) -> Term:
    """``full``, ``full shot``, ``풀샷``, ``FS``, ``<fs_trg>`` ... -> the shot-size term."""
    term = vocab.lookup(shot, kind="shot_size")
    if term is None:
        known = ", ".join(f"{t.key} ({t.ko[0] if t.ko else t.name})" for t in vocab.shot_sizes)
        raise UserError(f"unknown shot size {shot!r}; known: {known}")
    return term


def _join(*parts: str) -> str:
    return ", ".join(p.strip().strip(",").strip() for p in parts if p and p.strip().strip(","))


def _dedupe_segments(prompt: str) -> str:
    """Drop repeated comma-separated segments (case-insensitive), keeping the first."""
    seen, kept = set(), []
    for segment in prompt.split(","):
        norm = segment.strip().lower()
        if not norm or norm in seen:
            continue
        seen.add(norm)
        kept.append(segment.strip())
    return ", ".join(kept)


def plain_prompt(prompt: str, vocab: Vocabulary, words: Mapping[str, str] | None = None) -> str:
    """Each trigger replaced by its plain words (``<fs_trg>, full shot`` -> ``full shot``)."""
    words = dict(words or {})
    for token, term in vocab.trigger_tokens.items():
        words.setdefault(token, term.name)
    rest = TOKEN_RE.sub(" ", prompt)
    named = {m.term.key for m in vocab.find(rest, kind="shot_size")}

    def replace(match: re.Match) -> str:
        term = vocab.shot_for_token(match.group())
        if term is not None and term.key in named:  # the prompt already says it in words
            return ""
        return words.get(match.group(), match.group())

    return _dedupe_segments(TOKEN_RE.sub(replace, prompt))


def prepare_prompt(prompt: str, shot: str | None, vocab: Vocabulary, checkpoint: Checkpoint | None) -> str:
    """Apply the trigger rules (module doc) to one prompt."""
    prompt = (prompt or "").strip()
    trained = checkpoint.tokens if checkpoint else []
    present = triggers_in(prompt, vocab, trained)
    if shot:
        term = resolve_shot(shot, vocab)
        if present:
            if term.token not in present:
                raise UserError(f"--shot {shot} asks for {term.token} but the prompt already holds "
                                f"{', '.join(present)}; drop one of the two")
        else:
            others = {m.term.key for m in vocab.find(prompt, kind="shot_size")} - {term.key}
            if others:
                raise UserError(f"--shot {shot} ({term.name}) but the prompt names another shot size "
                                f"({', '.join(sorted(others))}); drop one of the two")
            has_words = any(m.term.key == term.key for m in vocab.find(prompt, kind="shot_size"))
            prompt = _join(term.token, prompt) if has_words else _join(term.token, term.name, prompt)
            present = [term.token]
    if checkpoint is None:
        return plain_prompt(prompt, vocab)
    missing = [t for t in present if t not in trained]
    if missing:
        listed = ", ".join(f"{t} ({checkpoint.initializers.get(t, '')})" for t in trained) or "none"
        raise UserError(f"{', '.join(dict.fromkeys(missing))} was not trained by checkpoint {checkpoint.path}; "
                        f"it trained: {listed}")
    return prompt
