"""Validation previews, made from the files just saved and loaded the way a user loads them.

``load_trained_pipeline`` is the whole recipe a user follows (and what the docs show): the base
folder with ``StableDiffusionPipeline.from_pretrained``, then ``load_lora_weights`` on the output
folder, then ``load_textual_inversion`` per embedding file (or, for a fully tuned text encoder, the
saved ``text_encoder/`` and ``tokenizer/``). A preview therefore shows what users will get, not
what the training process holds in memory.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from storyboard.artifacts import export


def load_trained_pipeline(base: str | Path, weights_dir: str | Path, *, lora_file: str = export.DIFFUSERS_LORA,
                          dtype: torch.dtype | None = None, device: str | torch.device = "cpu"):
    """A fresh pipeline: the base model + the LoRA file + the trigger embeddings in ``weights_dir``.
    ``dtype`` None means fp32 (whatever dtype the base folder was saved in)."""
    from diffusers import StableDiffusionPipeline

    dtype = dtype or torch.float32

    weights_dir = Path(weights_dir)
    manifest = export.read_manifest(weights_dir)
    kwargs = {}
    if manifest.get("text_encoder_mode") == "full":
        from transformers import CLIPTextModel, CLIPTokenizer

        kwargs = {"text_encoder": CLIPTextModel.from_pretrained(weights_dir / "text_encoder", dtype=dtype),
                  "tokenizer": CLIPTokenizer.from_pretrained(weights_dir / "tokenizer")}
    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False, **kwargs)
    pipe.load_lora_weights(weights_dir, weight_name=lora_file)
    if manifest.get("text_encoder_mode") != "full":
        with export.quiet_transformers():
            for token in manifest["tokens"]:
                pipe.load_textual_inversion(str(weights_dir / token["embedding_file"]), token=token["token"])
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


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
    import numpy as np

    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            arrays = np.stack([np.asarray(img) for _, _, img in made])
            tracker.writer.add_images("validation", arrays, step, dataformats="NHWC")
        elif tracker.name == "wandb":
            import wandb

            tracker.log({"validation": [wandb.Image(img, caption=prompt) for prompt, _, img in made]}, step=step)
