"""A base model plus a trained folder, loaded once, checked first, LoRA fused: ``load_trigger_pipeline``.

One loader for everyone: ``inference_trigger.py``, the sharded validation (``storyboard.inference.validate``)
and the bench. It runs every check first (the base, a diffusers folder or one checkpoint file
(``storyboard.artifacts.base_model``), the checkpoint folder, the base fingerprint
the trainer recorded, the tokens against the base's tokenizer and text encoder: each mismatch is one
``UserError`` line, before any weight loads), then the plain diffusers calls a user makes
(``storyboard.artifacts.load.load_trained_pipeline``), then fuses the LoRA into the weights::

    pipe.fuse_lora(lora_scale=s); pipe.unload_lora_weights()      # fused: no LoRA cost per step

``TriggerPipeline`` wraps the loaded pipeline with what each PNG must record (hashes, sampler label,
dtype) and makes one batch of images, each from its own CPU generator.
"""
from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import diffusers
import torch

from storyboard import __version__
from storyboard.artifacts.base_load import load_base_pipeline
from storyboard.artifacts.base_model import BaseModel, base_fingerprint, resolve_base
from storyboard.artifacts.checks import check_tokens
from storyboard.artifacts.load import load_trained_pipeline
from storyboard.artifacts.read import Checkpoint, manifest_fingerprint, read_checkpoint
from storyboard.core.cli import UserError
from storyboard.core.runtime import quiet_libraries, resolve_device, resolve_dtype
from storyboard.core.vocabulary import Vocabulary, load_vocabulary
from storyboard.inference.pngmeta import a1111_parameters
from storyboard.inference.prompts import prepare_prompt
from storyboard.inference.settings import BASE_SCHEDULER_LABELS, SCHEDULERS, Settings


@dataclass
class TriggerPipeline:
    """A diffusers pipeline with (or without) one checkpoint applied, plus what PNGs must record."""

    pipe: Any
    base: BaseModel
    checkpoint: Checkpoint | None
    vocab: Vocabulary
    device: torch.device
    dtype: torch.dtype
    fused: bool
    lora_scale: float
    model_hash: str
    checkpoint_hashes: dict = field(default_factory=dict)
    load_seconds: float = 0.0
    base_scheduler_cls: Any = None  # the base model's own sampler, for --scheduler default
    base_scheduler_config: dict = field(default_factory=dict)

    @property
    def column(self) -> str:
        return self.checkpoint.name if self.checkpoint else "base"

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    def resolve(self, settings: Settings) -> Settings:
        """``settings`` with the size filled in from the base model when not given."""
        return settings.sized(self.native_size)

    def prepare_prompt(self, prompt: str, shot: str | None = None) -> str:
        return prepare_prompt(prompt, shot, self.vocab, self.checkpoint)

    def set_scheduler(self, name: str) -> str:
        """Switch the sampler; returns its WebUI label."""
        cls_name, extra, label = SCHEDULERS[name]
        if cls_name:
            cls = getattr(diffusers, cls_name)
            self.pipe.scheduler = cls.from_config(self.base_scheduler_config, **extra)
            return label
        self.pipe.scheduler = self.base_scheduler_cls.from_config(self.base_scheduler_config)
        return BASE_SCHEDULER_LABELS.get(type(self.pipe.scheduler).__name__, type(self.pipe.scheduler).__name__)

    def set_lora_scale(self, scale: float) -> None:
        if self.checkpoint is None or self.checkpoint.lora_file is None or scale == self.lora_scale:
            return
        if self.fused:
            raise UserError("the LoRA is fused at one scale; load with --no-fuse to change --lora-scale between calls")
        adapters = sorted({a for names in self.pipe.get_list_adapters().values() for a in names})
        self.pipe.set_adapters(adapters, adapter_weights=[scale] * len(adapters))
        self.lora_scale = scale

    def metadata(self, prompt: str, negative: str, seed: int, settings: Settings, sampler: str) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "prompt": prompt, "negative_prompt": negative, "steps": settings.steps, "sampler": sampler,
            "scheduler": settings.scheduler, "cfg_scale": settings.guidance, "seed": seed,
            "width": settings.width, "height": settings.height, "model_hash": self.model_hash,
            "model": self.base.name, "checkpoint": str(self.checkpoint.path) if self.checkpoint else None,
            "lora_hashes": ({self.checkpoint.name: self.checkpoint_hashes["lora"]}
                            if self.checkpoint and self.checkpoint_hashes.get("lora") else {}),
            "lora_scale": self.lora_scale if self.checkpoint and self.checkpoint.lora_file else None,
            "ti_hashes": dict(self.checkpoint_hashes.get("ti", {})),
            "text_encoder_hash": self.checkpoint_hashes.get("text_encoder"),
            "dtype": str(self.dtype).replace("torch.", ""),
            "version": f"storyboard-trigger {__version__}",
        }
        meta["parameters"] = a1111_parameters(meta)
        return meta

    def generate(self, prompts: Sequence[str], negatives: Sequence[str], seeds: Sequence[int], settings: Settings):
        """One pipeline call; each image gets its own CPU generator, so an image depends only on its
        seed, never on its batch or its shard."""
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]
        with torch.inference_mode():
            out = self.pipe(
                prompt=list(prompts), negative_prompt=list(negatives) if any(negatives) else None,
                num_inference_steps=settings.steps, guidance_scale=settings.guidance,
                width=settings.width, height=settings.height, generator=generators,
            )
        return out.images


def check_checkpoint_fits(ckpt: Checkpoint, base: BaseModel, fingerprint: str, allow_base_mismatch: bool,
                          warn: Callable[[str], object]) -> None:
    """The base is the one the checkpoint was trained on (or ``--allow-base-mismatch`` says to go on)
    and its tokens fit the base's tokenizer and text encoder."""
    recorded = manifest_fingerprint(ckpt.manifest)
    if recorded and recorded != fingerprint:
        message = (f"base model mismatch: checkpoint {ckpt.path} was trained on a base with fingerprint "
                   f"{recorded.removeprefix('sha256:')[:12]}, but {base.path} has "
                   f"{fingerprint.removeprefix('sha256:')[:12]}")
        if not allow_base_mismatch:
            raise UserError(message + "; pass the base it was trained on (or --allow-base-mismatch)")
        warn(f"warning: {message} (--allow-base-mismatch)")
    check_tokens(ckpt, base)


def _load_pipe(base: BaseModel, ckpt: Checkpoint | None, torch_dtype: torch.dtype):
    """The diffusers pipeline: the bare base, or the base with the checkpoint's files (the user's calls)."""
    if ckpt is None:
        return load_base_pipeline(base, dtype=torch_dtype)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch_dtype -> dtype renames
        try:
            return load_trained_pipeline(base, ckpt.path, dtype=torch_dtype, device="cpu")
        except (ValueError, RuntimeError, KeyError, OSError) as exc:
            raise UserError(f"checkpoint {ckpt.path} does not load on {base.path}: "
                            f"{str(exc).strip().splitlines()[0][:300]}") from None


def load_trigger_pipeline(base: BaseModel | str | os.PathLike,
                          checkpoint: str | os.PathLike | Checkpoint | None = None, *,
                          vocab: Vocabulary | None = None, device: str | None = "auto", dtype: str = "auto",
                          lora_scale: float = 1.0, fuse: bool = True, compile: bool = False,
                          allow_base_mismatch: bool = False, warn=print) -> TriggerPipeline:
    """Load ``base`` (a ``BaseModel``, or a folder / single-file path) and apply a training output
    folder to it (module doc): every check first, then the plain diffusers calls a user makes, then
    the LoRA fused at ``lora_scale``."""
    started = time.perf_counter()
    vocab = vocab or load_vocabulary()
    base = base if isinstance(base, BaseModel) else resolve_base(base)
    if base.is_file:
        warn(f"base model: {base.describe()}")
    ckpt = checkpoint
    if checkpoint is not None and not isinstance(checkpoint, Checkpoint):
        ckpt = read_checkpoint(checkpoint, vocab)
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    fingerprint = base_fingerprint(base)
    if ckpt is not None:
        check_checkpoint_fits(ckpt, base, fingerprint, allow_base_mismatch, warn)

    quiet_libraries()
    pipe = _load_pipe(base, ckpt, torch_dtype)
    pipe.set_progress_bar_config(disable=True)
    base_scheduler_cls, base_scheduler_config = type(pipe.scheduler), dict(pipe.scheduler.config)
    hashes: dict = {}
    fused = False
    if ckpt is not None:
        adapters = sorted({a for names in pipe.get_list_adapters().values() for a in names})
        if adapters:
            if fuse:
                pipe.fuse_lora(lora_scale=lora_scale, adapter_names=adapters)
                pipe.unload_lora_weights()  # the fused weights stay; the LoRA layers (and their cost) go
                fused = True
            else:
                pipe.set_adapters(adapters, adapter_weights=[lora_scale] * len(adapters))
        hashes = ckpt.hashes()
    pipe.to(dev)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if compile:
        pipe.unet = torch.compile(pipe.unet, fullgraph=False)
    return TriggerPipeline(pipe=pipe, base=base, checkpoint=ckpt, vocab=vocab, device=dev, dtype=torch_dtype,
                           fused=fused, lora_scale=lora_scale, model_hash=fingerprint.removeprefix("sha256:")[:10],
                           checkpoint_hashes=hashes, load_seconds=time.perf_counter() - started,
                           base_scheduler_cls=base_scheduler_cls, base_scheduler_config=base_scheduler_config)
