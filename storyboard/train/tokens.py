"""Trigger tokens: add them to a CLIP tokenizer, initialise their rows, train only those rows.

A trigger token (``<fs_trg>``) is one new word in the tokenizer and one new row in the text
encoder's token-embedding table. Its row starts as the mean of its initializer words' rows
("full shot" -> mean of the rows of ``full`` and ``shot``) and is the only row that learns.

How the other 49,408 rows are kept bit-identical to the base model: not by a gradient hook or by
restoring them after each optimizer step (the diffusers textual-inversion example's way, which
still hands the whole table to the optimizer and keeps Adam state for it), but by construction.
``TriggerEmbedding`` replaces the encoder's ``nn.Embedding`` with a frozen copy of the base table
plus a small trainable ``(n_new, dim)`` parameter; ids below the base vocabulary size read the
frozen table, the new ids read the trainable rows. The optimizer never sees the base rows, weight
decay cannot touch them, and the optimizer state is ``n_new x dim`` instead of ``49,408 x dim``.
``merge_trigger_embedding`` puts a plain ``nn.Embedding`` back (for saving a full text encoder).
Which tokens, and from which words, is decided before any model loads: ``storyboard.train.token_specs``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from storyboard.core.cli import UserError
from storyboard.train.token_specs import TriggerSpec


@dataclass
class AddedTokens:
    """What ``add_trigger_tokens`` did: ids of the new tokens and of their initializer words."""

    specs: list[TriggerSpec]
    token_ids: list[int]
    initializer_ids: list[list[int]]
    base_vocab_size: int
    initial_rows: torch.Tensor | None = field(repr=False, default=None)  # (n_new, dim), fp32

    def as_dict(self) -> list[dict]:
        return [
            {"token": s.token, "token_id": i, "initializer": s.initializer, "initializer_ids": ids,
             "shot_size": s.shot_size}
            for s, i, ids in zip(self.specs, self.token_ids, self.initializer_ids)
        ]


# --------------------------------------------------------------------------------------------
# Adding them to a tokenizer + text encoder
# --------------------------------------------------------------------------------------------
def initializer_token_ids(tokenizer, words: str) -> list[int]:
    """The tokenizer's ids for ``words`` without the start/end tokens."""
    return list(tokenizer(words, add_special_tokens=False).input_ids)


def check_new_tokens(tokenizer, specs: Sequence[TriggerSpec], model_name: str = "the base model") -> list[list[int]]:
    """Refuse tokens the tokenizer already knows and initializers that tokenize to nothing;
    returns each initializer's ids."""
    vocab = tokenizer.get_vocab()
    init_ids = []
    for spec in specs:
        if spec.token in vocab:
            raise UserError(f"token {spec.token} already exists in the tokenizer of {model_name} "
                            f"(id {vocab[spec.token]}); "
                            "pick another token or start from the original base model")
        ids = initializer_token_ids(tokenizer, spec.initializer)
        if not ids:
            raise UserError(f"initializer {spec.initializer!r} of {spec.token} tokenizes to nothing; give real words "
                            "with --token_initializer")
        init_ids.append(ids)
    return init_ids


def add_trigger_tokens(tokenizer, text_encoder, specs: Sequence[TriggerSpec],
                       model_name: str = "the base model") -> AddedTokens:
    """Add ``specs`` to ``tokenizer``, grow ``text_encoder``'s table, initialise the new rows.

    Each new row is the mean of its initializer words' rows (one word: that word's row). Rows of
    the base vocabulary are copied unchanged. Call ``install_trigger_embedding`` next to train.
    """
    init_ids = check_new_tokens(tokenizer, specs, model_name)
    base_size = len(tokenizer)
    added = tokenizer.add_tokens([s.token for s in specs])
    if added != len(specs):
        raise UserError(f"the tokenizer added {added} of {len(specs)} tokens; check --new_tokens for duplicates")
    token_ids = tokenizer.convert_tokens_to_ids([s.token for s in specs])
    for spec, token_id in zip(specs, token_ids):
        ids = tokenizer(spec.token, add_special_tokens=False).input_ids
        if list(ids) != [token_id]:
            raise UserError(f"token {spec.token} does not tokenize to one id after adding it (got {list(ids)})")

    table = text_encoder.get_input_embeddings().weight
    if table.shape[0] != base_size:
        raise UserError(f"{model_name}: the text encoder has {table.shape[0]} token rows but the tokenizer "
                        f"{base_size} tokens; the folder's tokenizer and text encoder do not belong together")
    text_encoder.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        rows = torch.stack([table[ids].float().mean(dim=0) for ids in init_ids])
        table[token_ids] = rows.to(table.dtype)
    return AddedTokens(list(specs), list(token_ids), init_ids, base_size, rows.clone())


class TriggerEmbedding(nn.Module):
    """A token-embedding table whose base rows are frozen and whose last rows are trainable.

    ``base`` holds rows ``0 .. base_size-1`` (requires_grad False); ``trigger`` holds the new rows
    (an ``nn.Parameter``, kept in fp32 for training). Its output equals ``nn.Embedding`` over the
    concatenated table, without ever building that table in the forward pass.
    """

    def __init__(self, weight: torch.Tensor, base_size: int):
        super().__init__()
        self.base_size = base_size
        self.base = nn.Embedding.from_pretrained(weight[:base_size].detach().clone(), freeze=True)
        self.trigger = nn.Parameter(weight[base_size:].detach().clone().float())

    @property
    def weight(self) -> torch.Tensor:
        """The whole table (a new tensor; for readers such as transformers' helpers)."""
        return torch.cat([self.base.weight, self.trigger.to(self.base.weight.dtype)])

    @property
    def num_embeddings(self) -> int:
        return self.base_size + self.trigger.shape[0]

    @property
    def embedding_dim(self) -> int:
        return self.base.embedding_dim

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        is_new = input_ids >= self.base_size
        out = self.base(input_ids.clamp(max=self.base_size - 1))
        new = self.trigger.to(out.dtype)[(input_ids - self.base_size).clamp(min=0)]
        return torch.where(is_new.unsqueeze(-1), new, out)


def install_trigger_embedding(text_encoder, base_size: int):
    """Swap the encoder's token embedding for a frozen-base + trainable-trigger-rows module; returns it."""
    table = text_encoder.get_input_embeddings()
    module = TriggerEmbedding(table.weight, base_size)
    module.to(table.weight.device)
    text_encoder.set_input_embeddings(module)
    return module


def find_trigger_embedding(text_encoder):
    """The installed trigger embedding module, or None."""
    module = text_encoder.get_input_embeddings()
    return module if hasattr(module, "trigger") and hasattr(module, "base_size") else None


def trigger_rows(text_encoder):
    """The current trigger rows, ``(n_new, dim)`` fp32 on CPU, detached."""
    module = find_trigger_embedding(text_encoder)
    if module is not None:
        return module.trigger.detach().float().cpu().clone()
    raise ValueError("the text encoder has no trigger embedding installed")


def merge_trigger_embedding(text_encoder):
    """Put a plain ``nn.Embedding`` holding base + trigger rows back into the encoder (in place)."""
    module = find_trigger_embedding(text_encoder)
    if module is None:
        return text_encoder
    weight = module.weight.detach().clone()
    text_encoder.set_input_embeddings(nn.Embedding.from_pretrained(weight, freeze=False))
    return text_encoder
