"""The names inside a trained folder (the package docstring describes each file) and the layers its
LoRA is trained on. Nothing here reads or writes a file."""
from __future__ import annotations

from pathlib import Path

LORA_FILE = "pytorch_lora_weights.safetensors"  # diffusers format
WEBUI_LORA_FILE = "lora_webui.safetensors"  # kohya / A1111 keys
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
