"""Tiny stand-ins for the line-art stage's models: an SDXL base, an SDXL ControlNet and the
controlnet_aux annotator files, with the real layouts, so the stage runs offline in tests and the demo.

Builders (each fills an empty folder, deterministically from the seed; ``storyboard.devkit.tiny`` registers
them and adds its marker/skip logic):

``build_tiny_sdxl(folder, seed)`` -> an SDXL diffusers folder written by
``StableDiffusionXLPipeline.save_pretrained``: UNet2DConditionModel with SDXL's
``addition_embed_type="text_time"`` (blocks (32, 64), cross-attention 80 = the two text encoders'
hidden sizes side by side), CLIPTextModel + CLIPTextModelWithProjection (2 layers, widths 32 and 48,
the full 49,408-token vocabulary; the widths differ, as SDXL's 768 and 1280 do, because diffusers
tells the two encoders of a single file apart by their width), the real CLIP BPE tokenizer twice
(``tokenizer_2`` pads with "!" as SDXL's does), an AutoencoderKL with SDXL's scale factor 8 and
scaling factor 0.13025, SDXL's EulerDiscreteScheduler config. Loads with
``StableDiffusionXLPipeline.from_pretrained(folder)`` or as the base of
``StableDiffusionXLControlNetPipeline.from_pretrained(folder, controlnet=...)``.

``build_tiny_sdxl_controlnet(folder, seed)`` -> ``ControlNetModel.from_unet(<that UNet>)`` saved with
``save_pretrained``: ``ControlNetModel.from_pretrained(folder)``.

``build_tiny_annotators(folder, seed)`` -> ``sk_model.pth`` and ``sk_model2.pth`` (controlnet_aux's
lineart ``Generator(3, 1, 3)``) and ``netG.pth`` (lineart_anime's ``UnetGenerator(3, 1, 8, 64)``), the
files ``LineartDetector.from_pretrained(folder)`` / ``LineartAnimeDetector.from_pretrained(folder)``
read. Their loaders fix the full architectures (4.3 M and 54 M parameters), so the weights cannot be
made small; instead every tensor is a strided view into one shared pool of 2^20 random numbers
(std 0.02), which ``torch.save`` stores once: ~4 MB a file instead of 17 / 218 MB. They are plain
state dicts of tensors and load with ``torch.load(..., weights_only=True)``.

Folder names used by the stage's defaults (``Data_preprocessing_Line/01_preprocessing.py``):
``model_sdxl/``, ``controlnet_lineart_sdxl/``, ``annotators/``.
"""
from __future__ import annotations

import functools
import math
import shutil
import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from storyboard.core.clip_tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, OPEN_CLIP_PAD, build_clip_tokenizer

FOLDERS = {"model_sdxl": "build_tiny_sdxl", "controlnet_lineart_sdxl": "build_tiny_sdxl_controlnet",
           "annotators": "build_tiny_annotators"}
POOL_SIZE = 1 << 20
TEXT_WIDTH = 32  # the first text encoder (CLIP-L's place)
TEXT_WIDTH_2 = 48  # the second (OpenCLIP bigG's); the UNet's cross-attention takes both: 80
TIME_EMBED = 8  # addition_time_embed_dim: six micro-conditioning numbers, 8 wide each


def _tiny_sdxl_unet(seed: int):

    torch.manual_seed(seed)
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        # SDXL's order: a plain block first, attention deeper.
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, transformer_layers_per_block=(1, 2),
        cross_attention_dim=TEXT_WIDTH + TEXT_WIDTH_2, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + TEXT_WIDTH_2,  # time ids + pooled text
    )


def _text_config(width: int = TEXT_WIDTH, **extra):
    return CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=width, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=CLIP_CONTEXT_LENGTH, hidden_act="gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, **extra)


def build_tiny_sdxl(folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny SDXL-layout ``StableDiffusionXLPipeline`` folder into ``folder``."""

    folder = Path(folder)
    unet = _tiny_sdxl_unet(seed)
    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=64,
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, scaling_factor=0.13025, force_upcast=True,
    )
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(_text_config(projection_dim=TEXT_WIDTH))
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(TEXT_WIDTH_2, projection_dim=TEXT_WIDTH_2))
    scheduler = EulerDiscreteScheduler(  # SDXL base's scheduler_config.json
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        prediction_type="epsilon", steps_offset=1, timestep_spacing="leading", interpolation_type="linear",
        use_karras_sigmas=False,
    )
    with tempfile.TemporaryDirectory(prefix="sdxl-tokenizers-") as scratch:
        scratch = Path(scratch)
        build_clip_tokenizer(scratch / "tokenizer")
        build_clip_tokenizer(scratch / "tokenizer_2", pad_token=OPEN_CLIP_PAD)  # open_clip's, as SDXL's
        pipe = StableDiffusionXLPipeline(
            vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
            tokenizer=CLIPTokenizer.from_pretrained(scratch / "tokenizer", model_max_length=CLIP_CONTEXT_LENGTH),
            tokenizer_2=CLIPTokenizer.from_pretrained(scratch / "tokenizer_2", model_max_length=CLIP_CONTEXT_LENGTH),
            unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True, add_watermarker=False,
        )
        if pipe.vae_scale_factor != 8:
            raise RuntimeError(f"tiny SDXL VAE scale factor is {pipe.vae_scale_factor}, SDXL's is 8")
        pipe.save_pretrained(folder, safe_serialization=True)
        # Put back the tokenizer files SDXL ships (transformers 5 would write tokenizer.json instead).
        for name in ("tokenizer", "tokenizer_2"):
            shutil.rmtree(folder / name)
            shutil.copytree(scratch / name, folder / name)
    return folder


def build_tiny_sdxl_controlnet(folder: str | Path, seed: int = 0) -> Path:
    """Write ``ControlNetModel.from_unet`` of the tiny SDXL UNet (same seed) into ``folder``."""

    folder = Path(folder)
    unet = _tiny_sdxl_unet(seed)
    torch.manual_seed(seed + 2)
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32, 96, 256))
    # from_unet copies the UNet's weights and zero-initialises the control outputs (as training
    # starts); random outputs make the tiny ControlNet actually steer the tiny UNet in tests.
    with torch.no_grad():
        for module in list(controlnet.controlnet_down_blocks) + [controlnet.controlnet_mid_block]:
            module.weight.normal_(0.0, 0.02)
    controlnet.save_pretrained(folder, safe_serialization=True)
    return folder


def _pooled_state_dict(model, seed: int) -> dict:
    """The model's state dict with every tensor replaced by a strided view into one random pool, so
    ``torch.save`` writes the pool once (the architecture's full size costs no disk)."""

    generator = torch.Generator().manual_seed(seed)
    pool = torch.randn(POOL_SIZE, generator=generator) * 0.02
    state = {}
    for index, (name, tensor) in enumerate(model.state_dict().items()):
        if not tensor.is_floating_point():
            state[name] = tensor.clone()
            continue
        shape = tuple(tensor.shape)
        if len(shape) == 0:
            state[name] = pool[index].clone()
            continue
        inner = math.prod(shape[1:])
        if inner > POOL_SIZE:
            raise RuntimeError(f"{name}: {shape} does not fit the random pool")
        # Outer rows start at different places in the pool: rows differ, the view stays in bounds.
        step = 1 if shape[0] == 1 else max(1, min(inner + 7, (POOL_SIZE - inner) // (shape[0] - 1)))
        span = step * (shape[0] - 1) + inner
        offset = (index * 7919) % (POOL_SIZE - span + 1)
        strides = (step,) + tuple(math.prod(shape[i + 1:]) for i in range(1, len(shape)))
        state[name] = pool.as_strided(shape, strides, offset)
    return state


def build_tiny_annotators(folder: str | Path, seed: int = 0) -> Path:
    """Write random-weight ``sk_model.pth``, ``sk_model2.pth`` and ``netG.pth`` into ``folder``."""
    # controlnet_aux is imported here only: its import costs seconds and prints a dozen registry
    # warnings, and only this builder needs its two network classes.
    from controlnet_aux.lineart import Generator  # noqa: PLC0415
    from controlnet_aux.lineart_anime import UnetGenerator  # noqa: PLC0415



    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    models = {
        "sk_model.pth": Generator(3, 1, 3),
        "sk_model2.pth": Generator(3, 1, 3),
        "netG.pth": UnetGenerator(3, 1, 8, 64, norm_layer=functools.partial(nn.InstanceNorm2d, affine=False,
                                                                              track_running_stats=False)),
    }
    for offset, (name, model) in enumerate(models.items()):
        torch.save(_pooled_state_dict(model, seed * 10 + offset), folder / name)
    return folder


BUILDERS = {name: globals()[builder] for name, builder in FOLDERS.items()}
