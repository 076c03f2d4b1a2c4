"""What a prompt becomes: the trigger rules.

``plan_trigger`` reads the prompt as the user wrote it, in English or Korean: the shot it asks for
comes from ``--shot`` (``full``, ``풀샷``, ``FS``, ``<fs_trg>``), a trigger already in the prompt, or the
shot words in it, found with the vocabulary the tag stage uses (``full shot``, ``풀샷``, ``전신샷``,
``FS``, ...). Two that disagree are one error; so is a shot whose trigger the checkpoint did not
train (the error lists the ones it did). ``apply_trigger`` then puts the trigger (and the shot's
words, when the prompt lacks them) in front of the English prompt, where training captions have it.
A prompt holding a trained token outside the vocabulary (``--new_tokens <my_trg>``) is the user's own
scheme and is left alone. On the bare base (``checkpoint=None``) each trigger is replaced by its
plain words instead (``plain_prompt``), which is what ``validation/base_valid.sh`` compares against,
and what CLIP reads in the validation report.
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from storyboard.artifacts.read import Checkpoint
from storyboard.core.cli import UserError
from storyboard.core.vocabulary import Term, TermMatch, Vocabulary

TOKEN_RE = re.compile(r"<[^<>\s]+>")


class UntrainedTriggerError(UserError):
    """A prompt asks for a trigger the checkpoint did not train (validation skips such prompts)."""

    def __init__(self, message: str, token: str):
        super().__init__(message)
        self.token = token


@dataclass(frozen=True)
class TriggerPlan:
    """The shot a prompt asks for, and where that came from (``--shot``, ``trigger``, ``words``)."""

    term: Term | None = None
    source: str = ""
    found: str = ""  # the spelling that named it (``풀샷``, ``full shot``, ``<fs_trg>``)

    @property
    def token(self) -> str | None:
        return self.term.token if self.term else None


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


def _untrained(token: str, checkpoint: Checkpoint, why: str = "") -> UntrainedTriggerError:
    listed = ", ".join(f"{t} ({checkpoint.initializers.get(t, '')})" for t in checkpoint.tokens) or "none"
    message = f"{why}{token} was not trained by checkpoint {checkpoint.path}; it trained: {listed}"
    return UntrainedTriggerError(message, token)


def plan_trigger(prompt: str, shot: str | None, vocab: Vocabulary, checkpoint: Checkpoint | None) -> TriggerPlan:
    """The shot ``prompt`` (as given, any language) asks for, checked (module doc). Raises
    ``UserError`` for two shots that disagree and ``UntrainedTriggerError`` for one the checkpoint lacks."""
    trained = checkpoint.tokens if checkpoint else []
    present = triggers_in(prompt, vocab, trained)
    own = [t for t in present if vocab.shot_for_token(t) is None]  # the user's own tokens
    for token in present:
        if checkpoint is not None and token not in trained:
            raise _untrained(token, checkpoint)
    matches = vocab.find(prompt, kind="shot_size")
    named: dict[str, TermMatch] = {}
    for m in matches:
        named.setdefault(m.term.key, m)  # the first spelling of each shot size
    if shot:
        term = resolve_shot(shot, vocab)
        tokens = [m.term.token for m in matches if m.text == m.term.token]
        if tokens and term.token not in tokens:
            raise UserError(f"--shot {shot} asks for {term.token} but the prompt already holds "
                            f"{', '.join(dict.fromkeys(tokens))}; drop one of the two")
        others = sorted(set(named) - {term.key})
        if others:
            raise UserError(f"--shot {shot} ({term.name}) but the prompt names another shot size "
                            f"({', '.join(named[k].text for k in others)}); drop one of the two")
        plan = TriggerPlan(term, "--shot", shot)
    elif len(named) > 1:
        raise UserError("the prompt names " + " and ".join(f"{m.text!r} ({m.term.name})" for m in named.values())
                        + ": two shot sizes; keep one")
    elif named and not own:
        match = next(iter(named.values()))
        plan = TriggerPlan(match.term, "trigger" if match.text == match.term.token else "words", match.text)
    else:
        return TriggerPlan()
    if checkpoint is not None and plan.token not in trained:
        why = "" if plan.source == "trigger" else f"{plan.found!r} asks for {plan.token}, but "
        raise _untrained(plan.token, checkpoint, why) from None
    return plan


def apply_trigger(prompt: str, plan: TriggerPlan, vocab: Vocabulary, checkpoint: Checkpoint | None) -> str:
    """The English prompt with the planned trigger in front (its words too when the prompt lacks
    them); on the bare base the plain words instead of any trigger."""
    prompt = (prompt or "").strip()
    if checkpoint is None:
        if plan.term is not None and plan.source == "--shot":
            has_words = any(m.term.key == plan.term.key for m in vocab.find(TOKEN_RE.sub(" ", prompt), "shot_size"))
            prompt = prompt if has_words else _join(plan.term.name, prompt)
        return plain_prompt(prompt, vocab)
    if plan.term is None or plan.token in prompt:
        return prompt
    has_words = any(m.term.key == plan.term.key for m in vocab.find(prompt, kind="shot_size"))
    return _join(plan.token, prompt) if has_words else _join(plan.token, plan.term.name, prompt)


def prepare_prompt(prompt: str, shot: str | None, vocab: Vocabulary, checkpoint: Checkpoint | None) -> str:
    """Apply the trigger rules (module doc) to one English prompt."""
    prompt = (prompt or "").strip()
    return apply_trigger(prompt, plan_trigger(prompt, shot, vocab, checkpoint), vocab, checkpoint)
