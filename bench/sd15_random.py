"""The full-size Stable Diffusion 1.5 architecture with random weights, for the benchmarks.

Speed and memory do not depend on the weights, so the benches build SD1.5's published component
configs (value for value) with random weights instead of downloading a checkpoint.
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from storyboard.records import atomic_dir

MARKER = ".sd15_random_done"

SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, act_fn="silu", center_input_sample=False,
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, norm_eps=1e-5,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu", scaling_factor=0.18215,
)
SD15_TEXT = dict(
    vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
    max_position_embeddings=77, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
    bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      skip_prk_steps=True, set_alpha_to_one=False, steps_offset=1, prediction_type="epsilon")


def build_random_sd15(folder: Path, seed: int = 0) -> Path:
    """A random-weight SD1.5 diffusers folder (fp16 safetensors, the real CLIP tokenizer), built once."""
    folder = Path(folder)
    if (folder / MARKER).is_file():
        return folder
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

    from storyboard.tiny import build_clip_tokenizer

    torch.manual_seed(seed)
    with atomic_dir(folder) as tmp, tempfile.TemporaryDirectory() as scratch:
        pipe = StableDiffusionPipeline(
            unet=UNet2DConditionModel(**SD15_UNET), vae=AutoencoderKL(**SD15_VAE),
            text_encoder=CLIPTextModel(CLIPTextConfig(**SD15_TEXT)), tokenizer=build_clip_tokenizer(scratch),
            scheduler=PNDMScheduler(**SD15_SCHEDULER), feature_extractor=CLIPImageProcessor(),
            safety_checker=None, requires_safety_checker=False)
        pipe.to(torch.float16)
        pipe.save_pretrained(tmp, safe_serialization=True)
        # SD1.5's own tokenizer files (vocab.json + merges.txt), as a downloaded checkpoint has them.
        shutil.rmtree(tmp / "tokenizer")
        shutil.copytree(scratch, tmp / "tokenizer")
        (tmp / MARKER).write_text(f"sd15 random, seed {seed}\n")
    return folder
