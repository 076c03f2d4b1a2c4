"""The names inside a trained folder (the package docstring describes each file) and the layers its
LoRA is trained on. Nothing here reads or writes a file."""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers format
WEBUI_LORA_FILE = "lora_webui.safetensors"  # kohya / A1111 keys (the fixed name; the run-named file's alias)
COMFYUI_WORKFLOW_FILE = "comfyui_workflow.json"  # ComfyUI API-format graph: base + this LoRA + a shot prompt
EMBEDDINGS_DIR = "embeddings"  # one <stem>.safetensors per trigger token
TEXT_ENCODER_DIR = "text_encoder"  # only with --text_encoder_mode full
TOKENIZER_DIR = "tokenizer"  # only with --text_encoder_mode full
MANIFEST_FILE = "trigger_manifest.json"
MANIFEST_FORMAT = "storyboard-trigger/1"
EMBEDDING_KEY = "emb_params"  # the one tensor in an embedding file (the A1111 / diffusers key)

UNET_ATTENTION_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_FF_TARGETS = ["ff.net.0.proj", "ff.net.2"]  # with --lora_include_ff
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def embedding_file(token: str) -> str:
    """``<fs_trg>`` -> ``embeddings/fs_trg.safetensors``, relative to the folder (the stem is the WebUI's
    prompt word)."""
    return f"{EMBEDDINGS_DIR}/{token.strip('<>')}.safetensors"


def embedding_path(folder: Path, token: str) -> Path:
    return folder / embedding_file(token)


def webui_lora_stem(run_name: str, step: int | None = None) -> str:
    """The name the WebUI and ComfyUI show for this run's LoRA, kohya's way: the run's folder name
    (``train_fs``), with ``-step00000500`` for a checkpoint's export. Characters the WebUI's
    ``<lora:NAME:SCALE>`` cannot hold (``:``, ``,``, ``<``, ``>``, spaces, ...) become ``_``."""
    stem = re.sub(r"[^\w.\-]+", "_", run_name).strip("._") or "lora"
    if stem in (Path(LORA_FILE).stem, Path(WEBUI_LORA_FILE).stem):
        stem += "_run"  # never the name of the two fixed files
    return stem if step is None else f"{stem}-step{step:08d}"


def webui_lora_file(run_name: str, step: int | None = None) -> str:
    """``train_fs`` -> ``train_fs.safetensors`` (see ``webui_lora_stem``)."""
    return f"{webui_lora_stem(run_name, step)}.safetensors"


def named_webui_lora(manifest: Mapping) -> str:
    """The WebUI LoRA file a manifest names: the run-named file, or ``lora_webui.safetensors`` in
    folders written before it existed."""
    files = manifest.get("files") if isinstance(manifest, Mapping) else None
    name = files.get("webui_lora") if isinstance(files, Mapping) else None
    return name if isinstance(name, str) and name else WEBUI_LORA_FILE
