"""Validation previews, made from the files just saved and loaded the way a user loads them.

The pipeline comes from ``storyboard.artifacts.load.load_trained_pipeline`` (the base, then
``load_lora_weights``, then ``load_textual_inversion`` per token: the recipe docs/training.md shows),
so a preview shows what users will get, not what the training process holds in memory.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from storyboard.artifacts.load import load_trained_pipeline
from storyboard.train.context import RunContext


def default_prompts(tokens: Sequence[str]) -> list[str]:
    return [f"{token}, a person" for token in tokens]


@torch.no_grad()
def make_previews(pipe, prompts: Sequence[str], num_images: int, seed: int, steps: int, guidance: float,
                  resolution: int, out_dir: Path) -> list[tuple[str, Path, object]]:
    """``num_images`` images per prompt, seed ``seed + k`` for image ``k``: ``[(prompt, png, PIL image)]``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    device = pipe.device
    made = []
    for p, prompt in enumerate(prompts):
        for k in range(num_images):
            generator = torch.Generator(device="cpu" if device.type == "mps" else device).manual_seed(seed + k)
            image = pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, generator=generator,
                         height=resolution, width=resolution).images[0]
            path = out_dir / f"p{p:02d}_{k:02d}.png"
            image.save(path)
            made.append((prompt, path, image))
    (out_dir / "prompts.txt").write_text("\n".join(f"p{p:02d}: {prompt}" for p, prompt in enumerate(prompts)) + "\n",
                                         encoding="utf-8")
    return made


def log_previews(accelerator, step: int, made: Sequence[tuple[str, Path, object]]) -> None:
    """Send previews to tensorboard / wandb when those trackers are on."""
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            arrays = np.stack([np.asarray(img) for _, _, img in made])
            tracker.writer.add_images("validation", arrays, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb  # noqa: PLC0415 (optional: installed only for --report_to wandb, checked with the flags)

            tracker.log({"validation": [wandb.Image(img, caption=prompt) for prompt, _, img in made]}, step=step)


def previews(ctx: RunContext, weights_dir: Path, out: Path, step: int) -> list[Path]:
    """The run's previews from the files in ``weights_dir``, into ``out``; sent to the trackers too."""
    args, acc = ctx.args, ctx.accelerator
    if args.num_validation_images <= 0:
        return []
    dtype = ctx.weight_dtype if acc.device.type == "cuda" else None
    pipe = load_trained_pipeline(ctx.base.model, weights_dir, dtype=dtype, device=acc.device)
    prompts = args.validation_prompt or default_prompts([t["token"] for t in ctx.tokens_info])
    made = make_previews(pipe, prompts, args.num_validation_images, args.seed, args.validation_inference_steps,
                         args.validation_guidance_scale, args.resolution, out)
    log_previews(acc, step, made)
    del pipe
    if acc.device.type == "cuda":
        torch.cuda.empty_cache()
    return [path for _, path, _ in made]
