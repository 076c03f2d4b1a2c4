"""One base model checkpoint file in the original (LDM) layout, the form the A1111 WebUI, ComfyUI and
kohya sd-scripts keep: its tensor names read without loading weights, its family and prediction type
detected from them.

Reading: a ``.safetensors`` file's header is JSON (8 bytes of length, then names, dtypes, shapes and
offsets), read here with the standard library; one tensor can be read from its offsets without torch.
A ``.ckpt`` (``.pt``, ``.pth``) is a pickle: only torch's restricted unpickler
(``torch.load(..., weights_only=True)``, memory-mapped so no weight is read) may open it, and a file
that needs anything beyond tensors and plain containers (a PyTorch Lightning callback, an
``argparse.Namespace`` of hyperparameters, ...) is refused with one line naming what it wanted:
unpickling such a file can run any code it carries.

Family, from the tensor names (the ones diffusers and ComfyUI look at):

==========  =============================================================================
SDXL        ``conditioner.embedders.0.transformer.`` (CLIP-L) + ``conditioner.embedders.1.model.`` (OpenCLIP bigG)
SD 2.x      ``cond_stage_model.model.`` (OpenCLIP ViT-H)
SD 1.x      ``cond_stage_model.transformer.`` (OpenAI CLIP ViT-L)
==========  =============================================================================

The UNet (``model.diffusion_model.``), VAE (``first_stage_model.``) and text encoder must all be in the
file; an inpainting or instruct-pix2pix UNet (9 or 8 input channels), an SDXL refiner, a LoRA or an
embedding is named as what it is and refused.

Prediction type: SD 2.x comes as 512-px epsilon (2.x-base) and 768-px v-prediction models with the
same tensors, so the names cannot tell them apart. In order, the first that speaks decides:
``--prediction-type``; a ``v_pred`` marker tensor (how NoobAI-style v-prediction files say it); the
safetensors metadata ``modelspec.prediction_type`` (or ``modelspec.architecture`` ending in ``-v``,
Stability's model spec that kohya writes); a ``<file stem>.yaml`` beside the file with
``parameterization: "v"`` (the A1111 WebUI's convention); for SD 2.x, ComfyUI's rule (the spread of the
last output block's ``transformer_blocks.0.norm1.bias`` above 0.09 means v); else epsilon. The
description says which one decided.
"""
from __future__ import annotations

import json
import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from storyboard.core.cli import UserError

SAFETENSORS_SUFFIX = ".safetensors"
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth")
SINGLE_FILE_SUFFIXES = (SAFETENSORS_SUFFIX, *PICKLE_SUFFIXES)
UNET = "model.diffusion_model."
VAE = "first_stage_model."
SD1_TEXT = "cond_stage_model.transformer."
SD2_TEXT = "cond_stage_model.model."
SDXL_TEXT = "conditioner.embedders.0.transformer."
SDXL_TEXT_2 = "conditioner.embedders.1.model."
SDXL_REFINER_TEXT = "conditioner.embedders.0.model."
V_PREDICTION, EPSILON = "v_prediction", "epsilon"
COMFY_V_THRESHOLD = 0.09  # ComfyUI's supported_models.SD20.model_type
_NP_DTYPES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": "bf16"}


@dataclass
class FileKeys:
    """The tensors of a checkpoint file, by name: shapes (and, for safetensors, where each one lies)."""

    path: Path
    shapes: dict[str, tuple[int, ...]]
    metadata: dict[str, str] = field(default_factory=dict)
    _header: dict = field(default_factory=dict, repr=False)  # safetensors: name -> header entry
    _data_start: int = 0
    _tensors: dict | None = field(default=None, repr=False)  # .ckpt: name -> memory-mapped tensor

    def has_prefix(self, prefix: str) -> bool:
        return any(k.startswith(prefix) for k in self.shapes)

    def first(self, prefix: str, suffix: str) -> str | None:
        """The first name (sorted) that starts with ``prefix`` and ends with ``suffix``."""
        return next((k for k in sorted(self.shapes) if k.startswith(prefix) and k.endswith(suffix)), None)

    def values(self, name: str) -> np.ndarray:
        """One tensor's values as float64 (read from its byte range; nothing else is loaded)."""
        if self._tensors is not None:
            return self._tensors[name].detach().float().numpy().astype(np.float64)
        entry = self._header[name]
        start, end = entry["data_offsets"]
        with open(self.path, "rb") as fh:
            fh.seek(self._data_start + start)
            raw = fh.read(end - start)
        kind = _NP_DTYPES.get(entry["dtype"])
        if kind is None:
            raise UserError(f"{self.path}: tensor {name} has dtype {entry['dtype']}, not a float")
        if kind == "bf16":  # bfloat16 is the top half of a float32
            return (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)
        return np.frombuffer(raw, kind).astype(np.float64)


def read_file_keys(path: Path) -> FileKeys:
    """The tensor names and shapes of a ``.safetensors`` or ``.ckpt`` file (no weights read)."""
    if path.suffix.lower() == SAFETENSORS_SUFFIX:
        return _read_safetensors_header(path)
    return _read_pickle_keys(path)


def safetensors_header(path: Path) -> tuple[dict, int]:
    """A ``.safetensors`` file's JSON header (tensor entries and ``__metadata__``) and its length, read
    without torch or any weight; ``ValueError`` when the file is not one, ``OSError`` when unreadable."""
    with open(path, "rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > 100_000_000 or length > path.stat().st_size:
            raise ValueError("header length out of range")
        header = json.loads(fh.read(length))  # a UnicodeDecodeError is a ValueError too
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return header, length


def _read_safetensors_header(path: Path) -> FileKeys:
    try:
        header, length = safetensors_header(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path} is not a readable .safetensors file ({exc})") from None
    metadata = header.pop("__metadata__", None) or {}
    shapes = {name: tuple(entry.get("shape", ())) for name, entry in header.items() if isinstance(entry, dict)}
    return FileKeys(path, shapes, {str(k): str(v) for k, v in metadata.items()}, header, 8 + length)


def _read_pickle_keys(path: Path) -> FileKeys:
    import torch  # noqa: PLC0415 (a .ckpt is a pickle: only torch's restricted unpickler may list its tensors; taken for .ckpt files only)

    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # the pre-zip torch.save format
    except pickle.UnpicklingError as exc:
        raise UserError(pickle_refusal(path, str(exc))) from None
    except (RuntimeError, OSError, EOFError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path} is not a readable checkpoint ({first})") from None
    while isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # PyTorch Lightning's wrapper (diffusers unwraps it the same way)
    if not isinstance(obj, dict):
        raise UserError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    return FileKeys(path, {k: tuple(v.shape) for k, v in tensors.items()}, _tensors=tensors)


def pickle_refusal(path: Path, detail: str) -> str:
    """One line: why a .ckpt that needs full unpickling is refused, and what to do instead."""
    found = re.search(r"GLOBAL ([\w.]+)", detail)
    what = f"a pickled {found.group(1)} object" if found else "pickled Python objects"
    return (f"{path} holds {what}, not only tensors: loading it needs Python's pickle, which can run code the "
            f"file carries, so it is refused (only torch.load(..., weights_only=True) is used here); use the "
            f"model's .safetensors release, or, if you trust where this file came from, convert it to "
            f".safetensors once and pass that")


# --------------------------------------------------------------------------------------------
# What the file is
# --------------------------------------------------------------------------------------------
FAMILY_LABELS = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


def detect_family(keys: FileKeys) -> tuple[str, str]:
    """``(family, evidence)`` with family ``sd1`` | ``sd2`` | ``sdxl``, or a ``UserError`` saying what
    the file is instead."""
    path = keys.path
    if not keys.has_prefix(UNET):
        raise UserError(f"{path} is not a Stable Diffusion checkpoint: {_what_else(keys)}")
    if keys.has_prefix(SDXL_TEXT_2) and keys.has_prefix(SDXL_TEXT):
        family, evidence = "sdxl", f"{SDXL_TEXT}* + {SDXL_TEXT_2}* keys"
    elif keys.has_prefix(SDXL_REFINER_TEXT):
        raise UserError(f"{path} is an SDXL refiner (one OpenCLIP encoder, {SDXL_REFINER_TEXT}*); give the SDXL "
                        f"base model")
    elif keys.has_prefix(SD2_TEXT):
        family, evidence = "sd2", f"{SD2_TEXT}* keys (OpenCLIP ViT-H text encoder)"
    elif keys.has_prefix(SD1_TEXT):
        family, evidence = "sd1", f"{SD1_TEXT}* keys (OpenAI CLIP text encoder)"
    else:
        raise UserError(f"{path} holds a UNet ({UNET}*) but no text encoder this pipeline knows "
                        f"({SD1_TEXT}*, {SD2_TEXT}* or {SDXL_TEXT_2}*): not an SD 1.x / 2.x / SDXL checkpoint")
    conv_in = keys.shapes.get(f"{UNET}input_blocks.0.0.weight", ())
    if len(conv_in) == 4 and conv_in[1] != 4:
        kind = {9: "an inpainting", 8: "an instruct-pix2pix"}.get(conv_in[1], f"a {conv_in[1]}-channel")
        raise UserError(f"{path} is {kind} model (its UNet takes {conv_in[1]} channels); give a text-to-image "
                        f"base model (4 channels)")
    if not keys.has_prefix(VAE):
        raise UserError(f"{path} holds no VAE ({VAE}*); give a full checkpoint (UNet, VAE and text encoder)")
    return family, evidence


def _what_else(keys: FileKeys) -> str:
    names = list(keys.shapes)
    if any(k.startswith(("lora_unet_", "lora_te", "unet.", "text_encoder.")) for k in names):
        return "it is a LoRA (pass it as a trained folder, not as the base)"
    if names and all(k in ("emb_params", "clip_l", "clip_g") or k.startswith("string_to_param") for k in names):
        return "it is a textual-inversion embedding"
    if any(k.startswith(("encoder.", "decoder.")) for k in names):
        return "it looks like a VAE alone"
    if any(k.startswith(("double_blocks.", "joint_blocks.", "model.diffusion_model.joint_blocks.")) for k in names):
        return "it is another model family (SD3 / Flux), which this pipeline does not load"
    return f"no UNet ({UNET}*) among its {len(names)} tensors"


def _normalize_prediction(value: str) -> str | None:
    value = value.strip().lower().replace("-", "_")
    if value in ("v", "v_prediction", "velocity", "v_pred"):
        return V_PREDICTION
    if value in ("epsilon", "eps", "noise"):
        return EPSILON
    return None


def _last_attention_norm(keys: FileKeys) -> str | None:
    """``output_blocks.<last>.1.transformer_blocks.0.norm1.bias`` (``.11.`` in SD 2.x, ComfyUI's key)."""
    found = [k for k in keys.shapes if k.startswith(f"{UNET}output_blocks.")
             and k.endswith(".1.transformer_blocks.0.norm1.bias")]
    return max(found, key=lambda k: int(k[len(f"{UNET}output_blocks."):].split(".")[0])) if found else None


def detect_prediction(keys: FileKeys, family: str, given: str | None = None) -> tuple[str, str]:
    """``(prediction_type, evidence)``: the first of the sources in the module doc that speaks."""
    if given:
        return given, "--prediction-type"
    if "v_pred" in keys.shapes:
        return V_PREDICTION, "the file's v_pred marker"
    meta = keys.metadata
    declared = _normalize_prediction(meta.get("modelspec.prediction_type", ""))
    if declared:
        return declared, "its modelspec.prediction_type metadata"
    if meta.get("modelspec.architecture", "").endswith("-v"):
        return V_PREDICTION, f"its modelspec.architecture metadata ({meta['modelspec.architecture']})"
    yaml = keys.path.with_suffix(".yaml")
    if yaml.is_file():
        found = re.search(r"^\s*parameterization:\s*[\"']?(\w+)", yaml.read_text(encoding="utf-8", errors="replace"),
                          re.MULTILINE)
        kind = _normalize_prediction(found.group(1)) if found else EPSILON
        return kind or EPSILON, f"{yaml.name} beside it (parameterization)"
    if family == "sd2":
        name = _last_attention_norm(keys)
        if name is not None:
            spread = float(np.std(keys.values(name)))
            kind = V_PREDICTION if spread > COMFY_V_THRESHOLD else EPSILON
            return kind, (f"ComfyUI's rule: {name.removeprefix(UNET)} spread {spread:.3f} "
                          f"{'>' if kind == V_PREDICTION else '<='} {COMFY_V_THRESHOLD}")
    return EPSILON, "the default (nothing in the file says v-prediction)"
