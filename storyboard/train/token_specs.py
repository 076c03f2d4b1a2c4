"""Which trigger tokens a run trains, and the words each one's row starts from.

From ``--new_tokens`` / ``--token_initializer``, the shot vocabulary and the captions: checked while the
flags and the data set are checked, before any model loads (``storyboard.train.tokens`` then adds them to
the real tokenizer and text encoder).
"""
from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from storyboard.core.cli import UserError

TOKEN_PATTERN = re.compile(r"<[^<>\s,]+>")


@dataclass(frozen=True)
class TriggerSpec:
    """One token to add and the words its row starts from."""

    token: str
    initializer: str
    shot_size: str | None = None  # vocabulary key when the token comes from the vocabulary

    @property
    def stem(self) -> str:
        """``<fs_trg>`` -> ``fs_trg``: the embedding file's name (and the WebUI prompt word)."""
        return self.token.strip("<>")


def split_list(value: str | Sequence[str] | None) -> list[str]:
    """``"<a>,<b>"`` or ``["<a>", "<b>"]`` (or both mixed) -> ``["<a>", "<b>"]``; blanks dropped."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else list(value)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def split_initializers(value: str | Sequence[str] | None) -> list[str]:
    """Like ``split_list`` but a blank item inside a non-blank list is kept (and later refused as
    tokenizing to nothing), so ``"full shot,,close-up"`` cannot silently shift the words by one."""
    if value is None:
        return []
    text = value if isinstance(value, str) else ",".join(value)
    if not text.strip():
        return []
    return [part.strip() for part in text.split(",")]


def tokens_in_text(text: str) -> list[str]:
    """Every ``<...>`` token in a caption, in order."""
    return TOKEN_PATTERN.findall(text)


def resolve_trigger_specs(new_tokens: str | Sequence[str] | None, initializers: str | Sequence[str] | None,
                          vocabulary, captions: Iterable[str] = ()) -> list[TriggerSpec]:
    """The tokens to train and their initializers.

    ``new_tokens`` empty: every vocabulary trigger token that occurs in ``captions`` (vocabulary
    order). ``initializers`` empty: each token's initializer words from the vocabulary (a token the
    vocabulary does not know then needs one); one value: used for every token; otherwise one per
    token, in the same order.
    """
    captions = list(captions)
    seen_in_data: set[str] = set()
    for caption in captions:
        seen_in_data.update(tokens_in_text(caption))
    known = vocabulary.trigger_tokens  # token -> Term

    tokens = split_list(new_tokens)
    if not tokens:
        tokens = [t for t in known if t in seen_in_data]
        if not tokens:
            listed = ", ".join(known) or "none"
            raise UserError(
                "no trigger token to train: --new_tokens is empty and no caption holds a vocabulary trigger "
                f"({listed}); run Dataset_clustering_method/run_clip_clustering.py first (it writes the captions with "
                "their trigger first), or name the tokens with --new_tokens")
    for token in tokens:
        if not TOKEN_PATTERN.fullmatch(token):
            raise UserError(f"--new_tokens: {token!r} is not a token like <fs_trg> "
                            "(angle brackets, no spaces or commas)")
    duplicates = sorted({t for t in tokens if tokens.count(t) > 1})
    if duplicates:
        raise UserError(f"--new_tokens names {', '.join(duplicates)} more than once")
    if captions:
        unseen = [t for t in tokens if t not in seen_in_data]
        if unseen:
            raise UserError(f"token {', '.join(unseen)} appears in no caption of the data set, so it would never "
                            "be trained; drop it from --new_tokens or check the captions")

    inits = split_initializers(initializers)
    if len(inits) not in (0, 1, len(tokens)):
        raise UserError(f"--token_initializer gives {len(inits)} values for {len(tokens)} tokens; give one per "
                        "token (comma-separated, same order), one for all, or none to use the vocabulary's")
    specs = []
    for n, token in enumerate(tokens):
        term = known.get(token)
        if inits:
            init = inits[n] if len(inits) > 1 else inits[0]
        elif term is not None:
            init = term.initializer
        else:
            raise UserError(f"token {token} is not in the shot vocabulary, so it needs initializer words: "
                            "give --token_initializer")
        specs.append(TriggerSpec(token, init, term.key if term is not None else None))
    return specs
