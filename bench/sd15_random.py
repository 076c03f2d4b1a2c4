"""The full-size Stable Diffusion 1.5 architecture with random weights, for the benchmarks.

Speed and memory do not depend on the weights, so the benches build SD1.5's published component
configs (value for value) with random weights instead of downloading a checkpoint. ``build_tiny_sd``
saves ``storyboard.devkit.tiny``'s toy model the same way, for the benches' ``--tiny`` smoke mode.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from storyboard.core.records import atomic_dir

MARKER = ".sd15_random_done"

SD15_UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768, "attention_head_dim": 8, "norm_num_groups": 32, "act_fn": "silu",
    "center_input_sample": False, "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0,
    "mid_block_scale_factor": 1, "norm_eps": 1e-5,
}
SD15_VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "norm_num_groups": 32, "act_fn": "silu", "scaling_factor": 0.18215,
}
SD15_TEXT = {
    "vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
    "num_attention_heads": 12, "max_position_embeddings": 77, "projection_dim": 768, "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5, "bos_token_id": 49406, "eos_token_id": 49407, "pad_token_id": 49407,
}
SD15_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "skip_prk_steps": True, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}


def build_random_sd15(folder: Path, seed: int = 0) -> Path:
    """A random-weight SD1.5 diffusers folder (fp16 safetensors, the real CLIP tokenizer), built once."""
    return _save_random_pipeline(folder, seed, _sd15_components, "sd15 random")


def build_tiny_sd(folder: Path, seed: int = 0) -> Path:
    """``storyboard.devkit.tiny``'s toy SD1.5-layout model, saved exactly like the random SD1.5 (fp16
    safetensors, SD1.5's tokenizer files, the marker): the benches' ``--tiny`` smoke mode runs every
    code path of a real bench, loading included, in seconds."""
    from storyboard.devkit.tiny import _tiny_sd_components

    return _save_random_pipeline(folder, seed, _tiny_sd_components, "storyboard.devkit.tiny model_sd")


def _sd15_components(seed: int) -> dict:
    """SD1.5's parts with random weights, drawn on the GPU when there is one: filling 1.1 billion
    random numbers takes ~35 CPU seconds, a GPU lease's time (the weights then differ from a CPU
    build's; no figure depends on them)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        models = {"unet": UNet2DConditionModel(**SD15_UNET), "vae": AutoencoderKL(**SD15_VAE),
                  "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT))}
    return {**models, "scheduler": PNDMScheduler(**SD15_SCHEDULER), "feature_extractor": CLIPImageProcessor()}


def _save_random_pipeline(folder: Path, seed: int, components, label: str) -> Path:
    """Build ``components(seed)`` into a pipeline and save it into ``folder`` once (atomic, marker)."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return folder
    import torch
    from diffusers import StableDiffusionPipeline

    from storyboard.core.clip_tokenizer import build_clip_tokenizer

    with atomic_dir(folder) as tmp, tempfile.TemporaryDirectory() as scratch:
        pipe = StableDiffusionPipeline(**components(seed), tokenizer=build_clip_tokenizer(scratch),
                                       safety_checker=None, requires_safety_checker=False)
        # fp16 on disk, as SD1.5 checkpoints are shared: loaders meet the same dtype as with a real one.
        pipe.to("cpu", torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True)
        # SD1.5's own tokenizer files (vocab.json + merges.txt), as a downloaded checkpoint has them.
        shutil.rmtree(tmp / "tokenizer")
        shutil.copytree(scratch, tmp / "tokenizer")
        (tmp / MARKER).write_text(f"{label}, seed {seed}\n")
    return folder
