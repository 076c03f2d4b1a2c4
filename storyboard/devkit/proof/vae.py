"""The world's VAE: diffusers' own ``AutoencoderKL`` at toy width, trained on the base renders.

Three encoder blocks give a factor of 4 (64 px -> 16x16x4 latents; SD's factor 8 would leave 8x8,
too coarse for a small figure). It trains on random crops, which the convolutional network does not
mind and which cost a quarter of full images, with an L1 loss and a tiny KL term (as SD's VAE: the
latent space must stay close to a Gaussian, but reconstructions matter most). The scaling factor is
measured afterwards, as SD's 0.18215 was: one over the standard deviation of the latents.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from diffusers import AutoencoderKL

from storyboard.devkit.proof.config import VaeConfig


def build_vae(cfg: VaeConfig, size: int):
    n = len(cfg.channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=cfg.latent_channels, layers_per_block=1,
        block_out_channels=tuple(cfg.channels), down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, norm_num_groups=8, sample_size=size,
        mid_block_add_attention=False,  # plain convolutions: quick on CPU, and crops see the same maths
    )


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float32 in [-1, 1], the pipeline's pixel range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()


def _random_crops(batch: torch.Tensor, crop: int, gen: torch.Generator) -> torch.Tensor:
    n, _, h, w = batch.shape
    if crop >= h:
        return batch
    ys = torch.randint(0, h - crop + 1, (n,), generator=gen)
    xs = torch.randint(0, w - crop + 1, (n,), generator=gen)
    return torch.stack([b[:, y:y + crop, x:x + crop] for b, y, x in zip(batch, ys.tolist(), xs.tolist())])


def train_vae(images: np.ndarray, cfg: VaeConfig, seed: int, device: str = "cpu", log=print):
    """Train a fresh VAE on ``images``; returns (vae in eval mode, on the CPU, and the loss history).
    Batches are drawn on the CPU from one generator, so the same seed picks the same crops anywhere."""
    torch.manual_seed(seed)
    vae = build_vae(cfg, images.shape[1]).to(device)
    data = to_tensor(images)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.learning_rate, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / cfg.steps, 1.0))))
    history = []
    vae.train()
    for step in range(cfg.steps):
        idx = torch.randint(0, len(data), (cfg.batch_size,), generator=gen)
        x = _random_crops(data[idx], cfg.crop, gen).to(device)
        dist = vae.encode(x).latent_dist
        recon = vae.decode(dist.sample()).sample
        loss = (recon - x).abs().mean() + cfg.kl_weight * dist.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        history.append(round(float(loss.detach()), 5))
        if (step + 1) % 100 == 0:
            log(f"  vae step {step + 1}/{cfg.steps}: loss {np.mean(history[-100:]):.4f}")
    vae.eval()
    return vae.cpu(), history


@torch.no_grad()
def latent_scale(vae, images: np.ndarray, batch: int = 256) -> float:
    """1 / std of the latent means: what SD's ``scaling_factor`` is, so the UNet sees unit variance."""
    means = [vae.encode(to_tensor(images[i:i + batch])).latent_dist.mean for i in range(0, len(images), batch)]
    return float(1.0 / torch.cat(means).std())


@torch.no_grad()
def reconstruct(vae, images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Encode (the mean) and decode: what the VAE keeps of each image, uint8 like the input."""
    out = [to_uint8(vae.decode(vae.encode(to_tensor(images[i:i + batch])).latent_dist.mean).sample)
           for i in range(0, len(images), batch)]
    return np.concatenate(out)


@torch.no_grad()
def encode_latents(vae, images: np.ndarray, batch: int = 256) -> torch.Tensor:
    """Latent distribution parameters (mean, log-variance) of every image, for the base's training."""
    return torch.cat([vae.encode(to_tensor(images[i:i + batch])).latent_dist.parameters
                      for i in range(0, len(images), batch)])


@torch.no_grad()
def random_decodes(vae, count: int, seed: int, size: int = 16) -> np.ndarray:
    """Decoded random latents: blobs and textures with no person, what a failed generation looks like
    (the judge learns them as "nobody", so garbage is never counted as a long shot)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn((count, vae.config.latent_channels, size, size), generator=gen) / vae.config.scaling_factor
    return np.concatenate([to_uint8(vae.decode(z[i:i + 256]).sample) for i in range(0, count, 256)])
