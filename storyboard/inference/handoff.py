"""What each PNG tells the A1111 WebUI and ComfyUI, so that pasting or dropping it there redraws it
with the trained files.

Our diffusers prompt names a trigger by its token (``<fs_trg>``). The WebUI names a textual inversion
by its file stem and applies a LoRA only through a ``<lora:NAME:SCALE>`` tag whose NAME is the stem of
the LoRA file in its ``models/Lora``; ComfyUI writes ``embedding:fs_trg`` and loads the LoRA in a node.
So, for a user who copied the trained folder's files where those tools keep them:

* ``webui_prompt``: ``<fs_trg>, full shot, outdoor`` -> ``fs_trg, full shot, outdoor, <lora:train_fs:1>``
  (``train_fs.safetensors`` is the run-named LoRA file the trainer writes); the ``Lora hashes`` key is
  that NAME, as the WebUI writes it and reads it back when it pastes;
* ``comfyui_chunks``: the ComfyUI graph of the same image (``storyboard.artifacts.comfyui``), as the
  ``prompt`` (API form) and ``workflow`` (editor form) text chunks ComfyUI writes and reads.

The exact diffusers prompt stays in the ``storyboard`` chunk and the sidecar JSONL.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storyboard.artifacts.base_model import BaseModel
from storyboard.artifacts.comfyui import WorkflowSettings, api_workflow, comfyui_prompt, ui_workflow
from storyboard.artifacts.layout import WEBUI_LORA_FILE, named_webui_lora
from storyboard.artifacts.read import Checkpoint
from storyboard.artifacts.samplers import comfyui_sampler
from storyboard.inference.pngmeta import a1111_parameters


def embedding_stems(ckpt: Checkpoint | None) -> dict[str, str]:
    """Trained token -> the stem of its embedding file (the word the WebUI and ComfyUI use)."""
    if ckpt is None:
        return {}
    return {token: path.stem if path is not None else token.strip("<>") for token, path in ckpt.embeddings.items()}


def webui_lora_name(ckpt: Checkpoint | None) -> str | None:
    """The LoRA file's stem as the WebUI lists it: the run-named file the manifest names (``train_fs``),
    else ``lora_webui`` (folders from before that file); None without a LoRA."""
    if ckpt is None or ckpt.lora_file is None:
        return None
    name = named_webui_lora(ckpt.manifest)
    if not (ckpt.path / name).is_file():
        name = WEBUI_LORA_FILE
    return Path(name).stem


def _with_stems(prompt: str, stems: Mapping[str, str]) -> str:
    """Each token replaced by its stem, set off by spaces where it touched a word."""
    if not stems:
        return prompt
    pattern = re.compile("|".join(re.escape(t) for t in sorted(stems, key=len, reverse=True)))

    def replace(match: re.Match) -> str:
        text, start, end = match.string, match.start(), match.end()
        before = " " if start and (text[start - 1].isalnum() or text[start - 1] == "_") else ""
        after = " " if end < len(text) and (text[end].isalnum() or text[end] == "_") else ""
        return before + stems[match.group()] + after

    return pattern.sub(replace, prompt)


def webui_prompt(prompt: str, ckpt: Checkpoint | None, lora_scale: float | None) -> str:
    """Our prompt in the WebUI's form (module doc); the bare base's prompt is already plain."""
    text = _with_stems(prompt, embedding_stems(ckpt))
    name = webui_lora_name(ckpt)
    if name is not None:
        text = f"{text.rstrip().rstrip(',')}, <lora:{name}:{float(lora_scale if lora_scale is not None else 1):g}>"
    return text


def webui_fields(meta: Mapping[str, Any], ckpt: Checkpoint | None) -> dict[str, Any]:
    """``webui_prompt``, ``lora_hashes`` keyed by the ``<lora:NAME:...>`` NAME, and the ``parameters`` text."""
    out: dict[str, Any] = {"webui_prompt": webui_prompt(meta["prompt"], ckpt, meta.get("lora_scale"))}
    name = webui_lora_name(ckpt)
    if meta.get("lora_hashes") and name is not None:
        out["lora_hashes"] = {name: next(iter(meta["lora_hashes"].values()))}
    out["parameters"] = a1111_parameters({**meta, **out})
    return out


def comfyui_checkpoint_name(base: Path | BaseModel) -> str:
    """How ComfyUI lists the base in ``models/checkpoints``: a single file by its name, a diffusers
    folder as the file a user would convert it to (``model_sd.safetensors``)."""
    path = base.path if isinstance(base, BaseModel) else Path(base)
    return path.name if path.is_file() else f"{path.name}.safetensors"


def comfyui_chunks(meta: Mapping[str, Any], ckpt: Checkpoint | None, base: Path | BaseModel) -> dict[str, str]:
    """ComfyUI's ``prompt`` and ``workflow`` chunks for one image ({} when its settings are outside
    what ComfyUI's nodes accept, e.g. an 8-pixel-wide image)."""
    sampler_name, scheduler = comfyui_sampler(meta.get("sampler"))
    name = webui_lora_name(ckpt)
    settings = WorkflowSettings(
        ckpt_name=comfyui_checkpoint_name(base), prompt=comfyui_prompt(meta["prompt"], embedding_stems(ckpt)),
        negative=meta.get("negative_prompt") or "", lora_name=f"{name}.safetensors" if name else None,
        lora_scale=float(meta.get("lora_scale") or 1.0), seed=int(meta["seed"]) % 2**64,  # as torch.manual_seed
        steps=int(meta["steps"]), cfg=float(meta["cfg_scale"]), sampler_name=sampler_name, scheduler=scheduler,
        width=int(meta["width"]), height=int(meta["height"]), filename_prefix=Path(str(meta.get("file", "image"))).stem)
    try:
        graph = api_workflow(settings)
    except ValueError:
        return {}
    return {"prompt": json.dumps(graph, ensure_ascii=False),
            "workflow": json.dumps(ui_workflow(graph), ensure_ascii=False)}
