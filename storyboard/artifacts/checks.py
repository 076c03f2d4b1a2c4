"""Whether a trained folder's tokens fit a base model, checked before the pipeline loads.

A folder trained on one base and loaded on another fails late and obscurely inside diffusers (a
token that already exists, a table of the wrong size, an embedding of the wrong width); here each
of those is one ``UserError`` naming both. Reads the base's tokenizer (transformers; for a single-file
base the one its configuration builds) and the embedding files' headers (safetensors), no weights.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors import safe_open

from storyboard.artifacts.base_load import base_tokenizer
from storyboard.artifacts.base_model import BaseModel
from storyboard.artifacts.read import Checkpoint
from storyboard.core.cli import UserError


def check_tokens(ckpt: Checkpoint, base_model: BaseModel) -> None:
    """Refuse a checkpoint whose tokens do not fit the base's tokenizer and text encoder, before loading."""
    base = base_model.path
    tokenizer = base_tokenizer(base_model)
    base_len = len(tokenizer)
    existing = [t for t in ckpt.tokens if t in tokenizer.get_vocab()]
    if existing:
        raise UserError(f"the base tokenizer of {base} already holds {', '.join(existing)}: load the checkpoint on the "
                        f"plain base model it was trained from")
    base_info = ckpt.manifest.get("base_model") if isinstance(ckpt.manifest.get("base_model"), Mapping) else {}
    trained_base = base_info.get("tokenizer_size")
    trained_size = ckpt.manifest.get("tokenizer_size")
    if (isinstance(trained_base, int) and trained_base != base_len) or (
            isinstance(trained_size, int) and trained_size != base_len + len(ckpt.tokens)):
        was = trained_base if isinstance(trained_base, int) else trained_size - len(ckpt.tokens)
        raise UserError(f"tokenizer size mismatch: checkpoint {ckpt.path} was trained on a base tokenizer of {was} "
                        f"tokens (+ {len(ckpt.tokens)} trigger tokens), but {base} has {base_len}; "
                        f"use the base model it was trained on")
    te_config = base_model.config("text_encoder")
    width = te_config.get("hidden_size") or te_config.get("text_config", {}).get("hidden_size")
    for file in ckpt.embeddings.values():
        if file is not None and width and embedding_width(file) != width:
            raise UserError(f"{file} is a {embedding_width(file)}-wide embedding but the text encoder of {base} is "
                            f"{width} wide: the checkpoint was trained on another kind of base model")
    if ckpt.text_encoder_dir is not None:
        rows = json.loads((ckpt.text_encoder_dir / "config.json").read_text(encoding="utf-8")).get("vocab_size")
        if isinstance(rows, int) and rows != base_len + len(ckpt.tokens):
            raise UserError(f"tokenizer size mismatch: {ckpt.text_encoder_dir} has {rows} token rows, the base "
                            f"tokenizer {base_len} + {len(ckpt.tokens)} trigger tokens")


def embedding_width(file: Path) -> int:
    """The width of the one tensor an embedding file holds (read from its header)."""
    with safe_open(str(file), framework="pt") as fh:
        keys = list(fh.keys())
        if len(keys) != 1:
            raise UserError(f"{file} holds {len(keys)} tensors; a trigger embedding holds one")
        return int(fh.get_slice(keys[0]).get_shape()[-1])
