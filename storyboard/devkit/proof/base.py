"""The proof world's pre-trained base: a text-conditioned UNet trained from scratch on the base renders, saved
with the VAE, a frozen random CLIP text encoder and the real CLIP tokenizer as an ordinary SD1.5-layout
diffusers folder (``StableDiffusionPipeline.from_pretrained`` loads it).

The base learns to draw the world's scenes from captions that name angle, location, subject and
background but never the shot size, so it draws every shot size and cannot be asked for one: that is
what the trigger tokens must add. The text encoder stays random and frozen (no text model can be
downloaded here); the UNet learns to read its outputs, as SD's UNet reads CLIP's. Training follows
SD's recipe at toy scale: the SD1.5 noise schedule, epsilon prediction, 10 % empty captions (so
classifier-free guidance works), min-SNR-5 weighting (it converges faster), EMA weights saved.
Because the text encoder is frozen, each caption's hidden states are computed once, not every step.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from diffusers import DDPMScheduler, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch.nn import functional
from transformers import CLIPImageProcessor, CLIPTextConfig, CLIPTextModel

from storyboard.core.clip_tokenizer import CLIP_CONTEXT_LENGTH, CLIP_VOCAB_SIZE, build_clip_tokenizer
from storyboard.devkit.proof.config import BaseConfig

# SD1.5's noise schedule, value for value (scheduler_config.json).
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
               "beta_schedule": "scaled_linear", "prediction_type": "epsilon", "set_alpha_to_one": False,
               "steps_offset": 1}
SNR_GAMMA = 5.0


def build_text_encoder(cfg: BaseConfig, seed: int):
    torch.manual_seed(seed)
    return CLIPTextModel(CLIPTextConfig(
        vocab_size=CLIP_VOCAB_SIZE, hidden_size=cfg.text_width, intermediate_size=4 * cfg.text_width,
        num_hidden_layers=cfg.text_layers, num_attention_heads=cfg.heads, max_position_embeddings=CLIP_CONTEXT_LENGTH,
        projection_dim=cfg.text_width, hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
        pad_token_id=49407,
    )).eval()


def build_unet(cfg: BaseConfig, latent_size: int, latent_channels: int, seed: int):
    torch.manual_seed(seed)
    # Cross-attention only where the map is small (8x8 and 4x4 latents by default): at 16x16 it doubled
    # the cost of a step, and what the captions (and the triggers) steer, the layout, is coarse.
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention))
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels, out_channels=latent_channels,
        layers_per_block=cfg.layers_per_block, block_out_channels=tuple(cfg.channels),
        down_block_types=down, up_block_types=up,
        cross_attention_dim=cfg.text_width, attention_head_dim=cfg.heads, norm_num_groups=32,
    )


@torch.no_grad()
def encode_captions(tokenizer, text_encoder, captions: list[str], batch: int = 512) -> torch.Tensor:
    """(N, 77, width) hidden states of each caption: the UNet's conditioning, computed once."""
    out = []
    for i in range(0, len(captions), batch):
        ids = tokenizer(captions[i:i + batch], padding="max_length", truncation=True,
                        max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
        out.append(text_encoder(ids)[0])
    return torch.cat(out)


class Ema:
    """Exponential moving average of the UNet's weights (what is saved: smoother than the last step)."""

    def __init__(self, model, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model, step: int) -> None:
        d = min(self.decay, (1 + step) / (10 + step))  # warm start: early weights are forgotten quickly
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(d).add_(v.detach(), alpha=1 - d)
            else:
                self.shadow[k].copy_(v)


def _min_snr_weight(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    ac = scheduler.alphas_cumprod[timesteps]
    snr = ac / (1 - ac)
    return torch.clamp(snr, max=SNR_GAMMA) / snr


def pretrain_unet(unet, latent_params: torch.Tensor, hidden: torch.Tensor, empty: torch.Tensor, cfg: BaseConfig,
                  scaling: float, seed: int, device: str = "cpu", log=print):
    """Train ``unet`` on (latent distribution, caption hidden states) pairs; returns (EMA state, losses).

    ``latent_params``: (N, 2C, h, w) VAE mean + log-variance, sampled afresh each step as the VAE would;
    ``hidden``: (N, 77, width); ``empty``: (1, 77, width), the empty caption's states."""
    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULE.items() if k != "set_alpha_to_one"})
    scheduler.alphas_cumprod = scheduler.alphas_cumprod.to(device)
    gen = torch.Generator().manual_seed(seed)  # every draw on the CPU: the same seed, the same batches
    unet.to(device)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.learning_rate, weight_decay=1e-2)
    warm, total = cfg.warmup_steps, cfg.steps
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s / total, 1.0))))
    ema = Ema(unet, cfg.ema_decay)
    history = []
    unet.train()
    for step in range(total):
        idx = torch.randint(0, len(latent_params), (cfg.batch_size,), generator=gen)
        latents = DiagonalGaussianDistribution(latent_params[idx]).sample(generator=gen) * scaling
        cond = hidden[idx].clone()
        cond[torch.rand(cfg.batch_size, generator=gen) < cfg.caption_dropout] = empty[0]
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
        latents, noise, t, cond = (v.to(device) for v in (latents, noise, t, cond))
        pred = unet(scheduler.add_noise(latents, noise, t), t, cond).sample
        per_image = functional.mse_loss(pred, noise, reduction="none").mean(dim=(1, 2, 3))
        loss = (per_image * _min_snr_weight(scheduler, t)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        sched.step()
        ema.update(unet, step)
        history.append(round(float(loss.detach()), 5))
        if (step + 1) % 100 == 0:
            log(f"  base step {step + 1}/{total}: loss {np.mean(history[-100:]):.4f}")
    unet.eval()
    return {k: v.cpu() for k, v in ema.shadow.items()}, history


def save_sd_folder(folder: str | Path, unet, vae, text_encoder) -> Path:
    """Write the SD1.5-layout folder (PNDM scheduler as SD1.5's, no safety checker) with the real CLIP
    tokenizer's four files, as ``storyboard.tiny`` does for its tiny model."""
    folder = Path(folder)
    with tempfile.TemporaryDirectory(prefix="clip-tokenizer-") as scratch:
        tokenizer = build_clip_tokenizer(scratch)
        pipe = StableDiffusionPipeline(
            unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
            scheduler=PNDMScheduler(**SD_SCHEDULE, skip_prk_steps=True), safety_checker=None,
            feature_extractor=CLIPImageProcessor(), requires_safety_checker=False,
        )
        pipe.save_pretrained(folder, safe_serialization=True)
        shutil.rmtree(folder / "tokenizer")
        shutil.copytree(scratch, folder / "tokenizer")
    return folder
