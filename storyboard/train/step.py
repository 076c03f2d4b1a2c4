"""One training step's arithmetic: latents, noise, timesteps, the denoising loss (with min-SNR
weighting), and the fixed-noise loss measured before and after training.

Every random draw of micro-batch ``m`` comes from ``(seed, m, process)`` (``storyboard.train.data.derive_seed``),
so a resumed run continues bit for bit.
"""
from __future__ import annotations

import torch
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch.nn.functional import mse_loss

from storyboard.core.cli import UserError
from storyboard.train.context import RunContext
from storyboard.train.data import TriggerDataset, derive_seed


def latents_of(batch, vae, generator, weight_dtype, device) -> torch.Tensor:
    if "latent_params" in batch:
        dist = DiagonalGaussianDistribution(batch["latent_params"].to(device))
    else:
        with torch.no_grad():
            dist = vae.encode(batch["pixel_values"].to(device, dtype=weight_dtype)).latent_dist
    latents = dist.sample(generator=generator).float()
    return latents * vae.config.scaling_factor


def denoising_loss(pred, target, timesteps, noise_scheduler, snr_gamma) -> torch.Tensor:
    loss = mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    if snr_gamma:
        # min-SNR-gamma (Hang et al. 2023): weight each timestep by min(SNR, gamma) / SNR (epsilon)
        # or min(SNR, gamma) / (SNR + 1) (v-prediction).
        ac = noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
        snr = ac / (1 - ac)
        clipped = torch.clamp(snr, max=snr_gamma)
        weight = clipped / (snr + 1) if noise_scheduler.config.prediction_type == "v_prediction" else clipped / snr
        loss = loss * weight
    return loss.mean()


def target_for(noise_scheduler, latents, noise, timesteps):
    kind = noise_scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise UserError(f"unsupported prediction_type {kind!r} in the scheduler config (epsilon or v_prediction)")


def micro_batch_loss(ctx: RunContext, batch, m: int) -> torch.Tensor:
    """Loss of micro-batch ``m`` on this process; every random draw comes from ``(seed, m, process)``."""
    args, acc = ctx.args, ctx.accelerator
    device = acc.device
    g = torch.Generator(device=device).manual_seed(derive_seed(args.seed, "step", m, acc.process_index))
    latents = latents_of(batch, ctx.models.vae, g, ctx.weight_dtype, device)
    noise = torch.randn(latents.shape, generator=g, device=device)
    if args.noise_offset:
        noise = noise + args.noise_offset * torch.randn((latents.shape[0], latents.shape[1], 1, 1),
                                                        generator=g, device=device)
    scheduler = ctx.models.noise_scheduler
    timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=g,
                              device=device).long()
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = target_for(scheduler, latents, noise, timesteps)
    torch.manual_seed(derive_seed(args.seed, "dropout", m, acc.process_index))  # LoRA dropout
    with acc.autocast():
        pred = ctx.model(batch["input_ids"].to(device), noisy, timesteps)
    return denoising_loss(pred, target, timesteps, scheduler, args.snr_gamma)


@torch.no_grad()
def fixed_noise_loss(ctx: RunContext, dataset: TriggerDataset, count: int) -> float | None:
    """Mean denoising loss of the first ``count`` images at fixed timesteps and noise, without
    augmentation: comparable before and after training (the running loss jumps with its random
    timesteps)."""
    if count <= 0:
        return None
    acc, models = ctx.accelerator, ctx.models
    device = acc.device
    model = acc.unwrap_model(ctx.model)
    model.eval()
    scheduler = models.noise_scheduler
    total, n = 0.0, 0
    g = torch.Generator(device=device).manual_seed(derive_seed(ctx.args.seed, "eval"))
    fractions = (0.1, 0.3, 0.5, 0.7, 0.9)
    for index in range(min(count, len(dataset))):
        item = dataset.items[index]
        ids = dataset.tokenize(item.caption).unsqueeze(0).to(device)
        if dataset.latents is not None:
            params = dataset.latents[index][0].unsqueeze(0)
        else:
            pixels = dataset.images.load(item.path, None, flip=False).unsqueeze(0)
            params = models.vae.encode(pixels.to(device, dtype=ctx.weight_dtype)).latent_dist.parameters
        mean = params.to(device).float().chunk(2, dim=1)[0] * models.vae.config.scaling_factor
        for f in fractions:
            t = torch.tensor([int(f * scheduler.config.num_train_timesteps)], device=device)
            noise = torch.randn(mean.shape, generator=g, device=device)
            with acc.autocast():
                pred = model(ids, scheduler.add_noise(mean, noise, t), t)
            total += mse_loss(pred.float(), target_for(scheduler, mean, noise, t).float()).item()
            n += 1
    model.train()
    return total / n
