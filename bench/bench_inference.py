"""Inference images/s: our pipeline (LoRA fused, trigger tokens loaded) against a plain diffusers pipeline
with the same LoRA loaded unfused, on the full-size Stable Diffusion 1.5 architecture with random weights.

    python bench/bench_inference.py                       # CPU: 512 px, 2 steps, 1 image (slow: minutes)
    python bench/bench_inference.py --full                # GPU: 512 px, 30 steps, 8 images, fp16
    python bench/bench_inference.py --full --compile      # + torch.compile on our side
    python bench/bench_inference.py --tiny [--dtype bf16]  # smoke run (seconds, any machine): storyboard.devkit.tiny's
                                                          #   toy model, 64 px; proves the bench runs, measures nothing

Speed does not depend on the weights, so nothing is downloaded: the UNet, VAE and text encoder are built
from SD1.5's own configs (written below) with random weights, the tokenizer is the real CLIP BPE
(built offline, as ``storyboard.devkit.tiny`` does), and everything is saved as a diffusers folder (fp16
safetensors, ~2 GB, in a temp folder). A trigger checkpoint for it (LoRA rank 16 on the UNet attention
and the text encoder, two trigger tokens, the trainer's manifest) is written beside it. ``--tiny`` uses
``storyboard.devkit.tiny``'s toy model instead (saved the same way) at 64 px, 2 images in one batch.

Both sides load from those folders, in the same run, one after the other:

* **ours**: ``storyboard.inference.pipeline.load_trigger_pipeline`` -- what ``inference_trigger.py`` and validation
  run: LoRA fused into the weights (no LoRA layers left), tokens loaded, channels-last and TF32 on GPU;
* **plain**: ``StableDiffusionPipeline.from_pretrained`` + ``load_lora_weights`` (unfused) +
  ``load_textual_inversion``, the diffusers docs' recipe.

Each side first runs one warm-up call (not timed), then ``--images`` images (``--batch-size`` per call)
with the same prompt containing a trigger and the same seeds. Prints one table (images/s, seconds per
image, speed-up; on CPU also the process's CPU seconds per image, steadier than wall time on a shared
machine) and writes it as JSON under ``--results`` (default ``bench/results/``). "ours" is timed as
``inference_trigger.py`` runs it, PNG encoding and metadata included; "plain" only makes the images.
"""
from __future__ import annotations

import argparse
import gc
import json
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storyboard.core.cli import format_table  # noqa: E402
from storyboard.core.runtime import add_dtype_argument  # noqa: E402

RESULTS = REPO / "bench" / "results"
PROMPT = "<fs_trg>, full shot, eye level, outdoor, a man in a grey coat"

from sd15_random import build_random_sd15, build_tiny_sd  # noqa: E402  (SD1.5 configs, random weights)

TOKENS = [("<fs_trg>", "full shot"), ("<ms_trg>", "medium shot")]
LORA_RANK = 16


def build_checkpoint(base: Path, out: Path, seed: int) -> Path:
    """A trigger checkpoint for ``base`` in the trainer's layout: LoRA (UNet attention + text encoder),
    one embedding per token, trigger_manifest.json with the base's fingerprint."""
    import torch
    from diffusers import UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    from storyboard.artifacts import write
    from storyboard.artifacts.base_model import base_fingerprint
    from storyboard.artifacts.layout import (
        MANIFEST_FORMAT,
        TEXT_ENCODER_TARGETS,
        UNET_ATTENTION_TARGETS,
        embedding_file,
    )

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    unet_cfg = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                          target_modules=UNET_ATTENTION_TARGETS)
    te_cfg = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                        target_modules=TEXT_ENCODER_TARGETS)
    inject_adapter_in_model(unet_cfg, unet)
    inject_adapter_in_model(te_cfg, text_encoder)
    for model in (unet, text_encoder):  # non-zero B so the LoRA really changes the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.01)
    write.save_diffusers_lora(out, get_peft_model_state_dict(unet),
                              {f"text_model.{k}" if not k.startswith("text_model.") else k: v
                               for k, v in get_peft_model_state_dict(text_encoder).items()},
                              write.lora_metadata(unet_cfg), write.lora_metadata(te_cfg))
    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    tokens = []
    for n, (token, init) in enumerate(TOKENS):
        save_file({"emb_params": torch.randn(1, text_encoder.config.hidden_size) * 0.01},
                  str(out / embedding_file(token)))
        tokens.append({"token": token, "token_id": len(tokenizer) + n, "initializer": init,
                       "embedding_file": embedding_file(token)})
    manifest = {"format": MANIFEST_FORMAT, "tokens": tokens, "text_encoder_mode": "lora",
                "base_model": {"path": str(base), "fingerprint": base_fingerprint(base),
                               "tokenizer_size": len(tokenizer)},
                "tokenizer_size": len(tokenizer) + len(TOKENS),
                "lora": {"rank": LORA_RANK, "alpha": LORA_RANK}, "note": "bench: random weights"}
    write.write_manifest(out, manifest)
    return out


def plain_pipeline(base: Path, ckpt: Path, device, dtype):
    """The diffusers docs' recipe: from_pretrained + load_lora_weights (unfused) + load_textual_inversion."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(ckpt)
    for token, _ in TOKENS:
        pipe.load_textual_inversion(str(ckpt / "embeddings" / f"{token.strip('<>')}.safetensors"), token=token)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def timed(call_pipe, images: int, batch: int, sync) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for ``images`` images. On a shared CPU machine the
    CPU seconds are the steadier figure (other processes' load stretches the wall time)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    done = 0
    while done < images:
        n = min(batch, images - done)
        call_pipe(n, done)
        done += n
    sync()
    return time.perf_counter() - started, time.process_time() - cpu_started


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--full", action="store_true", help="the GPU setting: 30 steps, 8 images, batch 4, fp16")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: storyboard.devkit.tiny's toy model, 64 px, 2 steps, 2 images in one batch")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 2; 30 with --full)")
    parser.add_argument("--images", type=int, default=None, help="timed images per side (default 1; 8 with --full)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per call (default 1; 4 with --full)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; 64 with --tiny)")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    add_dtype_argument(parser, help_auto="fp16 on GPU, fp32 on CPU; bf16 runs on both")
    parser.add_argument("--compile", action="store_true", help="torch.compile our UNet (GPU; warm-up pays for it)")
    parser.add_argument("--work", type=Path, default=None, help="keep the random model here (default: a temp folder)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.steps = args.steps or (30 if args.full else 2)
    args.images = args.images or (8 if args.full else 2 if args.tiny else 1)
    args.batch_size = args.batch_size or (4 if args.full else 2 if args.tiny else 1)
    args.size = args.size or (64 if args.tiny else 512)
    return args


def prepare_models(work: Path, tiny: bool, seed: int) -> tuple[Path, Path]:
    """The base folder and a trigger checkpoint for it under ``work``, built once (tiny and full apart)."""
    t0 = time.perf_counter()
    if tiny:
        base, ckpt = build_tiny_sd(work / "tiny_sd", seed), work / "tiny_train_bench"
    else:
        base, ckpt = build_random_sd15(work / "sd15_random", seed), work / "train_bench"
    if not (ckpt / "trigger_manifest.json").is_file():
        build_checkpoint(base, ckpt, seed)
    print(f"{'tiny model' if tiny else 'random SD1.5'} + trigger checkpoint ready in "
          f"{time.perf_counter() - t0:.0f} s under {work}", flush=True)
    return base, ckpt


def release(device) -> None:
    """Drop what the side just measured held, so the next side starts with the same free memory."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    args = parse_args(argv)
    steps, images, batch = args.steps, args.images, args.batch_size

    import torch

    from storyboard.core.runtime import resolve_device, resolve_dtype
    from storyboard.inference.jobs import Job, run_jobs
    from storyboard.inference.pipeline import load_trigger_pipeline
    from storyboard.inference.settings import Settings

    device = resolve_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    dtype = resolve_dtype(dtype_name, device)  # fp16 on the CPU: one clear line (run_main)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    base, ckpt = prepare_models(work, args.tiny, args.seed)

    results = []
    settings = Settings(steps=steps, guidance=7.5, width=args.size, height=args.size)
    out_dir = work / "images"

    # Library imports (seconds) before either clock starts: the side that went first used to pay them.
    from diffusers import StableDiffusionPipeline  # noqa: F401

    # ours
    t0 = time.perf_counter()
    held = {"tp": load_trigger_pipeline(base, ckpt, device=str(device), dtype=dtype_name, compile=args.compile)}
    load_s = time.perf_counter() - t0
    assert held["tp"].fused and not held["tp"].pipe.get_list_adapters(), "ours should hold no LoRA layers"

    def ours(n, first):
        jobs = [Job(PROMPT, "", args.seed + first + k, out_dir / f"ours-{first + k}.png") for k in range(n)]
        run_jobs(held["tp"], jobs, settings, batch_size=n, show_progress=False)

    ours(min(batch, images), 0)  # warm-up
    sync()
    seconds, cpu_s = timed(ours, images, batch, sync)
    results.append(("ours (fused LoRA, tokens)", load_s, seconds, cpu_s))
    held.clear()
    release(device)

    # plain diffusers
    t0 = time.perf_counter()
    pipe = plain_pipeline(base, ckpt, device, dtype)
    load_s = time.perf_counter() - t0
    assert pipe.get_list_adapters(), "plain should hold the LoRA unfused"

    def plain(n, first):
        gens = [torch.Generator("cpu").manual_seed(args.seed + first + k) for k in range(n)]
        with torch.inference_mode():
            pipe([PROMPT] * n, num_inference_steps=steps, guidance_scale=7.5, width=args.size, height=args.size,
                 generator=gens)

    plain(min(batch, images), 0)
    sync()
    seconds, cpu_s = timed(plain, images, batch, sync)
    results.append(("plain diffusers (LoRA unfused)", load_s, seconds, cpu_s))

    base_rate, base_cpu = images / results[1][2], results[1][3]
    rows = [(name, f"{images / s:.4f}", f"{s / images:.2f}", f"{(images / s) / base_rate:.2f}x",
             f"{cpu / images:.1f}", f"{base_cpu / cpu:.2f}x", f"{load:.1f}")
            for name, load, s, cpu in results]
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    model = "storyboard.devkit.tiny toy model" if args.tiny else "SD1.5 architecture, random weights"
    print(f"\n{model}, {args.size}x{args.size}, {steps} steps, CFG 7.5, {images} image(s), "
          f"batch {batch}, {dtype_name}, {device_name}{', torch.compile' if args.compile else ''}")
    table = format_table(rows, header=("pipeline", "images/s", "s/image", "speed-up", "CPU s/image", "CPU speed-up",
                                       "load s"))
    print(table)
    args.results.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    # A smoke run never overwrites real figures, and is told apart from them by its name.
    path = args.results / f"inference-{'tiny-' if args.tiny else ''}{stamp}.json"
    path.write_text(json.dumps({
        "date": stamp, "device": device_name, "model": model, "tiny": args.tiny, "dtype": dtype_name,
        "size": args.size, "steps": steps, "images": images, "batch_size": batch, "compile": args.compile,
        "results": [{"pipeline": n, "load_s": round(load, 2), "seconds": round(s, 3), "cpu_seconds": round(c, 3),
                     "images_per_s": images / s} for n, load, s, c in results],
        "table": table}, indent=2) + "\n")
    print(f"written {path}")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    from storyboard.core.cli import run_main

    run_main(main)
