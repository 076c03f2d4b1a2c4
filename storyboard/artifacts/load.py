"""A base model plus a trained folder in a diffusers pipeline, loaded the way a user loads them.

``load_trained_pipeline`` is the whole recipe (and what docs/training.md shows): the base with
``StableDiffusionPipeline.from_pretrained`` (a folder) or ``.from_single_file`` (one checkpoint file;
``storyboard.artifacts.base_load``), then ``load_lora_weights`` on the trained folder, then
``load_textual_inversion`` per embedding file (or, for a fully tuned text encoder, the saved
``text_encoder/`` and ``tokenizer/``). The trainer's previews and ``inference_trigger.py`` both load
through it, so what they show is what users get.
"""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import torch
import transformers
from transformers import CLIPTextModel, CLIPTokenizer

from storyboard.artifacts.base_load import load_base_pipeline
from storyboard.artifacts.base_model import BaseModel, resolve_base
from storyboard.artifacts.layout import LORA_FILE, TEXT_ENCODER_DIR, TOKENIZER_DIR
from storyboard.artifacts.read import read_manifest


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' notes while diffusers grows the table for a textual inversion
    ("The new embeddings will be initialized from a multivariate normal ..."): the row is
    overwritten by the loaded embedding right after."""
    before = transformers.utils.logging.get_verbosity()
    transformers.utils.logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers.utils.logging.set_verbosity(before)


def load_trained_pipeline(base: BaseModel | str | Path, weights_dir: str | Path, *, lora_file: str = LORA_FILE,
                          dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """A fresh pipeline: the base model (a ``BaseModel``, or a folder / file path) + the LoRA file + the
    trigger embeddings in ``weights_dir``. ``dtype`` None means fp32 (whatever dtype the base was saved in)."""
    dtype = dtype or torch.float32
    base = base if isinstance(base, BaseModel) else resolve_base(base)

    weights_dir = Path(weights_dir)
    manifest = read_manifest(weights_dir)
    kwargs = {}
    if manifest.get("text_encoder_mode") == "full":
        kwargs = {"text_encoder": CLIPTextModel.from_pretrained(weights_dir / TEXT_ENCODER_DIR, dtype=dtype),
                  "tokenizer": CLIPTokenizer.from_pretrained(weights_dir / TOKENIZER_DIR)}
    pipe = load_base_pipeline(base, dtype=dtype, **kwargs)
    pipe.load_lora_weights(weights_dir, weight_name=lora_file)
    if manifest.get("text_encoder_mode") != "full":
        with quiet_transformers():
            for token in manifest["tokens"]:
                pipe.load_textual_inversion(str(weights_dir / token["embedding_file"]), token=token["token"])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)
