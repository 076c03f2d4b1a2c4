"""CLIP from local files: an open_clip model loaded in the forms a user has on disk, never downloading.

* ``--clip-model ViT-B-32 --clip-checkpoint ViT-B-32-openai.pt``: an open_clip architecture name plus a
  checkpoint file. ``.safetensors`` is read with safetensors; ``.pt`` / ``.pth`` / ``.bin`` with
  ``torch.load(weights_only=True)`` (no pickled code runs). OpenAI's own release files are TorchScript
  archives, which ``weights_only`` cannot open: those are read with ``torch.jit.load`` (TorchScript,
  not pickle) and only their tensors are used. A file that holds no CLIP, or a CLIP of another
  architecture, is one clear error naming the file and the architecture (and what the file looks like).
* ``--clip-model local-dir:FOLDER``: open_clip's folder form (``open_clip_config.json`` + weights).
* ``--clip-model path/to/config.json --clip-checkpoint weights``: a model config registered with
  ``open_clip.add_model_config`` (its file stem becomes the name), then the checkpoint as above.

``load_clip`` returns a ``ClipModel`` with its fingerprint (architecture + weights' content + the
preprocessing), which names its embedding cache; ``encode_texts`` gives normalised text features (the
zero-shot judge and validation's CLIP score use them).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.convert import convert_state_dict
from open_clip.factory import _find_checkpoint_in_dir
from open_clip.model import convert_to_custom_text_state_dict
from safetensors.torch import load_file

from storyboard.clustering.decode import DECODE_VERSION
from storyboard.core.cli import UserError
from storyboard.core.records import atomic_write_json
from storyboard.core.runtime import resolve_device, sha256_file


class FileHashMemo:
    """Content hashes of big files (checkpoints), remembered by path, size and mtime in a JSON file."""

    def __init__(self, path: Path | None):
        self.path = path

    def get(self, file: Path) -> str:
        file = Path(file).resolve()
        stat = file.stat()
        key = f"{file}|{stat.st_size}|{stat.st_mtime_ns}"
        memo: dict = {}
        if self.path and self.path.is_file():
            try:
                memo = json.loads(self.path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                memo = {}
        if key in memo:
            return memo[key]
        digest = sha256_file(file)
        if self.path:
            memo[key] = digest
            with suppress(OSError):  # a read-only cache folder only costs a re-hash next time
                atomic_write_json(self.path, memo)
        return digest


@dataclass
class ClipModel:
    """An open_clip model ready to embed: model, eval preprocess, tokenizer, and what it is."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    name: str  # as the user named it
    fingerprint: str  # sha256 over architecture, weights and preprocessing
    device: Any
    info: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        size = getattr(self.model.visual, "image_size", 224)
        return int(max(size) if isinstance(size, (tuple, list)) else size)

    @property
    def embed_dim(self) -> int:
        return int(self.info.get("embed_dim") or 0)

    @property
    def uses_fp16(self) -> bool:
        return getattr(self.device, "type", str(self.device)) == "cuda"


def _is_torchscript_archive(path: Path) -> bool:
    """OpenAI's CLIP release files are TorchScript zips (they hold code/ and constants.pkl)."""
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n or n.startswith("code/")
                                                                   for n in names)


def read_state_dict(path: Path) -> tuple[dict, str]:
    """The tensors of a checkpoint file and its format; ``UserError`` when it cannot be read safely."""
    if not path.is_file():
        raise UserError(f"CLIP checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            return dict(load_file(str(path), device="cpu")), "safetensors"
        except Exception as exc:  # safetensors raises its own error types
            raise UserError(f"{path} is not a readable .safetensors file ({type(exc).__name__}: {exc})") from None
    if _is_torchscript_archive(path):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                return dict(torch.jit.load(str(path), map_location="cpu").state_dict()), "torchscript"
        except Exception as exc:
            raise UserError(f"{path} looks like a TorchScript archive but cannot be loaded ({exc})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            value = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{path} is not a checkpoint torch.load(weights_only=True) can read: {first[:300]}") from None
    if isinstance(value, dict):
        for key in ("state_dict", "model", "model_state_dict"):
            if isinstance(value.get(key), dict):
                value = value[key]
                break
    if not isinstance(value, dict) or not all(hasattr(v, "shape") for v in value.values()):
        kind = type(value).__name__
        raise UserError(f"{path} holds a {kind}, not a state dict of tensors (expected a CLIP checkpoint)")
    return dict(value), "torch"


def _clean_state_dict(state: dict) -> dict:
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    for key in ("input_resolution", "context_length", "vocab_size"):  # OpenAI's extra entries
        state.pop(key, None)
    return state


def looks_like_clip(state: dict) -> bool:
    keys = state.keys()
    has_visual = any(k.startswith("visual.") for k in keys)
    has_text = any(k.startswith(("token_embedding.", "text.", "transformer.")) for k in keys) \
        or "text_projection" in keys
    return has_visual and has_text


def describe_clip_state(state: dict) -> str:
    """What a CLIP state dict looks like, e.g. 'ViT: width 768, 12 layers, patch 32, 224 px, embed 512'."""
    parts = []
    conv = state.get("visual.conv1.weight")
    if conv is not None:
        layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
        patch = conv.shape[-1]
        pos = state.get("visual.positional_embedding")
        grid = round((pos.shape[0] - 1) ** 0.5) if pos is not None else 0
        parts.append(f"ViT: width {conv.shape[0]}, {layers} layers, patch {patch}, {grid * patch} px")
    proj = state.get("text_projection")
    if proj is not None and hasattr(proj, "shape") and len(proj.shape) == 2:
        parts.append(f"embed {proj.shape[1]}")
    return ", ".join(parts) or "not a ViT CLIP"


def guess_architectures(state: dict) -> list[str]:
    """open_clip architecture names whose config matches the checkpoint's ViT shape."""
    conv = state.get("visual.conv1.weight")
    proj = state.get("text_projection")
    pos = state.get("visual.positional_embedding")
    if conv is None or proj is None or pos is None:
        return []
    layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    patch = conv.shape[-1]
    image = round((pos.shape[0] - 1) ** 0.5) * patch
    names = []
    for name in open_clip.list_models():
        cfg = open_clip.get_model_config(name) or {}
        vision = cfg.get("vision_cfg", {})
        if "timm_model_name" in vision or "hf_model_name" in cfg.get("text_cfg", {}) \
                or "multimodal_cfg" in cfg or cfg.get("custom_text"):
            continue
        shape = (vision.get("width"), vision.get("layers"), vision.get("patch_size"), vision.get("image_size"),
                 cfg.get("embed_dim"))
        if shape == (conv.shape[0], layers, patch, image, proj.shape[1]):
            names.append(name)
    return [n for n in names if "quickgelu" not in n.lower()][:3] or names[:3]


def _mismatch_summary(model, state: dict) -> str:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    bits = []
    if shapes:
        k = shapes[0]
        bits.append(f"{len(shapes)} tensors differ in shape (e.g. {k}: file {'x'.join(map(str, state[k].shape))}, "
                    f"architecture {'x'.join(map(str, own[k].shape))})")
    if missing:
        bits.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        bits.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    return "; ".join(bits)


def _register_config(model_name: str) -> str:
    """A ``*.json`` model config path -> registered with open_clip; returns the name to create."""
    path = Path(model_name)
    if not path.is_file():
        raise UserError(f"CLIP model config not found: {model_name}")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"CLIP model config {model_name} is not valid JSON ({exc})") from None
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise UserError(f"{model_name} is not an open_clip model config (it needs vision_cfg and text_cfg)")
    open_clip.add_model_config(path)
    return path.stem


def load_clip(model_name: str, checkpoint: str | os.PathLike | None = None, device: str | None = "auto",
              quick_gelu: str = "auto", hash_memo: Path | None = None) -> ClipModel:
    """Load an open_clip model from local files (see the module doc for the accepted forms)."""
    dev = resolve_device(device)
    memo = FileHashMemo(hash_memo)
    if not model_name:
        raise UserError("no CLIP model named (--clip-model ViT-B-32, local-dir:FOLDER or a config .json)")
    if model_name.startswith("local-dir:"):
        built = _from_folder(model_name, checkpoint, memo)
    else:
        built = _from_architecture(model_name, checkpoint, quick_gelu, memo)
    model = built.model.to(dev).eval()
    preprocess_cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    fp_source = json.dumps({"arch": built.arch, "weights": built.weight_hash, "preprocess": preprocess_cfg,
                            "decode": DECODE_VERSION}, sort_keys=True, default=str)
    fingerprint = hashlib.sha256(fp_source.encode()).hexdigest()
    with torch.no_grad():
        embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None \
            else int(model.encode_image(torch.zeros(1, 3, 224, 224, device=dev)).shape[1])
    info = {"model": model_name, "checkpoint": str(checkpoint) if checkpoint else None, "format": built.fmt,
            "described": built.described, "weights_sha256": built.weight_hash, "embed_dim": embed_dim,
            "preprocess": preprocess_cfg, "looks_like": describe_clip_state(built.state)}
    return ClipModel(model, built.preprocess, built.tokenizer, model_name, fingerprint, dev, info)


@dataclass
class _Built:
    """A CLIP model built on the CPU with its weights loaded, and what it was built from."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    arch: dict  # what the fingerprint names: the architecture's config (and name, QuickGELU)
    weight_hash: str
    described: str
    state: dict  # the weights as read (for ``describe_clip_state``)
    fmt: str  # safetensors, torch or torchscript


def _from_folder(model_name: str, checkpoint, memo: FileHashMemo) -> _Built:
    """``--clip-model local-dir:FOLDER``: open_clip's folder form, weights inside."""
    folder = Path(model_name[len("local-dir:"):]).expanduser()
    config = folder / "open_clip_config.json"
    if not folder.is_dir():
        raise UserError(f"CLIP folder not found: {folder} (from --clip-model {model_name})")
    if not config.is_file():
        raise UserError(f"{folder} is not an open_clip folder: it has no open_clip_config.json")
    if checkpoint:
        raise UserError(f"--clip-checkpoint is not used with --clip-model {model_name} "
                        f"(the folder holds the weights)")
    weights = _find_checkpoint_in_dir(folder)
    if weights is None:
        raise UserError(f"{folder} holds no weights (open_clip_model.safetensors or similar)")
    state, fmt = read_state_dict(Path(weights))
    state = _clean_state_dict(state)
    if not looks_like_clip(state):
        raise UserError(f"{weights} is not a CLIP checkpoint ({len(state)} tensors, "
                        f"e.g. {next(iter(state), '-')}); "
                        f"{config} describes a CLIP model")
    try:
        with QuietOpenClip():
            model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}", device="cpu")
    except Exception as exc:
        detail = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{weights} does not match the CLIP architecture in {config}: {detail}") from None
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    arch = {"config": json.loads(config.read_text(encoding="utf-8"))}
    return _Built(model, preprocess, tokenizer, arch, memo.get(Path(weights)), str(folder), state, fmt)


def _from_architecture(model_name: str, checkpoint, quick_gelu: str, memo: FileHashMemo) -> _Built:
    """``--clip-model NAME`` (or a config ``.json``) plus ``--clip-checkpoint``."""
    arch_name = _register_config(model_name) if model_name.endswith(".json") else model_name
    cfg = open_clip.get_model_config(arch_name)
    if cfg is None:
        raise UserError(f"unknown CLIP architecture {model_name!r}; use an open_clip name (ViT-B-32, ViT-B-16, "
                        f"ViT-L-14, ...: open_clip.list_models()), local-dir:FOLDER, or a model config .json")
    if not checkpoint:
        raise UserError(f"--clip-model {model_name} needs --clip-checkpoint (the weights file); none given")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise UserError(f"CLIP checkpoint not found: {path}")
    state, fmt = read_state_dict(path)
    state = _clean_state_dict(state)
    if not looks_like_clip(state):
        sample = ", ".join(list(state)[:3]) or "no tensors"
        raise UserError(f"{path} is not a CLIP checkpoint (its {len(state)} tensors look like {sample}); "
                        f"--clip-model {model_name} needs an open_clip / OpenAI CLIP state dict")
    qg = _want_quick_gelu(quick_gelu, arch_name, path, fmt)
    try:
        with QuietOpenClip():
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch_name, pretrained=None, device="cpu", force_quick_gelu=qg, pretrained_text=False)
    except Exception as exc:
        raise UserError(f"cannot build CLIP architecture {model_name}: {exc}") from None
    if "logit_scale" in state and state["logit_scale"].ndim != model.logit_scale.ndim:
        state["logit_scale"] = state["logit_scale"].reshape(model.logit_scale.shape)
    state = convert_state_dict(model, state)
    if "positional_embedding" in state and not hasattr(model, "positional_embedding"):
        state = convert_to_custom_text_state_dict(state)
    # Non-persistent buffers (the text tower's attention mask) are rebuilt by the model, not loaded.
    own = model.state_dict()
    for name, _ in model.named_buffers():
        if name in state and name not in own:
            state.pop(name)
    summary = _mismatch_summary(model, state)
    if summary:
        looks = describe_clip_state(state)
        guesses = guess_architectures(state)
        hint = f"; it matches {' / '.join(guesses)}" if guesses else ""
        raise UserError(f"{path} does not match CLIP architecture {model_name}: the file is a CLIP with "
                        f"{looks}{hint} ({summary})")
    model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()}, strict=True)
    tokenizer = open_clip.get_tokenizer(arch_name)
    arch = {"name": arch_name, "config": cfg, "quick_gelu": qg}
    return _Built(model, preprocess, tokenizer, arch, memo.get(path), f"{model_name} + {path}", state, fmt)


def _want_quick_gelu(choice: str, arch_name: str, path: Path, fmt: str) -> bool:
    """OpenAI's CLIP weights were trained with QuickGELU; open_clip's plain 'ViT-B-32' config uses GELU.
    auto: QuickGELU for OpenAI's TorchScript release files and files named *openai*."""
    if choice in ("on", "yes", "true"):
        return True
    if choice in ("off", "no", "false"):
        return False
    if choice != "auto":
        raise UserError(f"--clip-quick-gelu must be auto, on or off (got {choice!r})")
    return "quickgelu" in arch_name.lower() or fmt == "torchscript" or "openai" in path.name.lower()


class QuietOpenClip:
    """open_clip logs a warning when it builds an architecture before we load its weights ourselves;
    that warning would only mislead, so warnings are held back while a model is built."""

    def __enter__(self):
        logging.disable(logging.WARNING)
        return self

    def __exit__(self, *exc):
        logging.disable(logging.NOTSET)
        return False


def encode_texts(clip: ClipModel, texts: Sequence[str]) -> np.ndarray:
    """Normalised text features (n, dim) float32."""
    with torch.inference_mode():
        tokens = clip.tokenizer(list(texts)).to(clip.device)
        feats = clip.model.encode_text(tokens)
        return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
