"""A resolved base model (``storyboard.artifacts.base_model.BaseModel``) loaded into a diffusers
pipeline, fully offline: ``load_base_pipeline``.

A folder loads with ``from_pretrained(folder, local_files_only=True)``. A single file loads with
diffusers' own ``from_single_file(file, config=<folder>, local_files_only=True)``: given a local
``config`` folder, diffusers reads every configuration and the tokenizer from it and never asks a hub
(without one it would fetch them from the Hugging Face Hub). For our configurations that folder is put
together once per process in a temporary directory: the shipped JSON files plus the CLIP tokenizer
built offline from open_clip's BPE (``storyboard.core.clip_tokenizer``; SD 2.x's and SDXL's second
tokenizer pad with ``!`` as open_clip does). When the prediction type differs from the configuration's,
the scheduler is built from it with ``prediction_type`` changed. A ``.ckpt`` reaches diffusers only
after ``base_file`` has opened it with ``weights_only=True``, and diffusers opens it the same way.
"""
from __future__ import annotations

import atexit
import shutil
import tempfile
import warnings
from pathlib import Path

import diffusers
import torch
from transformers import CLIPTokenizer

from storyboard.artifacts.base_model import BaseModel
from storyboard.core.cli import UserError
from storyboard.core.clip_tokenizer import CLIP_CONTEXT_LENGTH, OPEN_CLIP_PAD, build_clip_tokenizer

_config_dirs: dict[str, Path] = {}


def _cleanup(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


def config_folder(base: BaseModel) -> Path:
    """A complete diffusers configuration folder for ``base`` (configs + tokenizers, no weights): the
    folder itself, ``--base-config``, or ours with the tokenizer built (once per process)."""
    name = base.shipped_config
    if name is None:
        return base.config_dir
    if name not in _config_dirs:
        folder = Path(tempfile.mkdtemp(prefix=f"storyboard-{name}-"))
        atexit.register(_cleanup, folder)
        shutil.copytree(base.config_dir, folder, dirs_exist_ok=True)
        # SD 2.x's tokenizer (like SDXL's second) is open_clip's: the same BPE, padded with "!".
        build_clip_tokenizer(folder / "tokenizer", pad_token=OPEN_CLIP_PAD if base.family == "sd2" else "<|endoftext|>")
        if base.family == "sdxl":
            build_clip_tokenizer(folder / "tokenizer_2", pad_token=OPEN_CLIP_PAD)
        _config_dirs[name] = folder
    return _config_dirs[name]


def base_tokenizer(base: BaseModel) -> CLIPTokenizer:
    """The base's (first) tokenizer, loaded without its weights."""
    return CLIPTokenizer.from_pretrained(config_folder(base), subfolder="tokenizer",
                                         model_max_length=CLIP_CONTEXT_LENGTH, local_files_only=True)


def base_scheduler(base: BaseModel, cls=None):
    """The base's scheduler (or ``cls`` built from its configuration), set to its prediction type."""
    config = base.config("scheduler")
    cls = cls or getattr(diffusers, str(config.get("_class_name", "DDIMScheduler")))
    return cls.from_config({**config, "prediction_type": base.prediction_type})


def load_base_pipeline(base: BaseModel, pipeline_cls=None, *, dtype: torch.dtype = torch.float32, **components):
    """The base model in ``pipeline_cls`` (default: SD or SDXL by family), components passed in kept
    (a tuned text encoder, a ControlNet, ...). Nothing is fetched: every load is local-only."""
    if pipeline_cls is None:
        pipeline_cls = getattr(diffusers, base.pipeline_class)
    kwargs = dict(components)
    if base.family != "sdxl":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if base.prediction_type != base.config_prediction and "scheduler" not in kwargs:
        kwargs["scheduler"] = base_scheduler(base)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # torch_dtype -> dtype renames
        try:
            if not base.is_file:
                return pipeline_cls.from_pretrained(base.path, dtype=dtype, local_files_only=True, **kwargs)
            return pipeline_cls.from_single_file(str(base.path), config=str(config_folder(base)), dtype=dtype,
                                                 local_files_only=True, **kwargs)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise UserError(f"cannot load the base model {base.path}: {first}") from None
