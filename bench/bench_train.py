"""Training images/s and peak memory: our trainer against a plain diffusers-example loop, on the
full-size Stable Diffusion 1.5 architecture with random weights, at 512 px.

    python bench/bench_train.py                 # CPU: batch 1, 3 steps each (slow: ~10 minutes on 2 cores)
    python bench/bench_train.py --batch-sizes 1 4 --steps 4
    python bench/bench_train.py                 # on a GPU the same command runs the GPU set:
                                                #   bf16, batch 1 and 4, 20 steps, ours with and
                                                #   without gradient checkpointing
    python bench/bench_train.py --tiny [--precision bf16]
                                                # smoke run (seconds, any machine): storyboard.devkit.tiny's toy
                                                #   model at 64 px, every configuration of the GPU set;
                                                #   proves the bench runs, measures nothing

Speed does not depend on the weights, so nothing is downloaded: UNet, VAE and text encoder are built
from SD1.5's published configs (written below) with random weights, the tokenizer is the real CLIP
BPE (built offline, as ``storyboard.devkit.tiny`` does); the folder is saved once (fp16 safetensors, ~2 GB)
under ``--work`` and reused. The data set is 8 generated 512 px images with trigger captions.
``--tiny`` swaps in ``storyboard.devkit.tiny``'s toy model (saved the same way) at 64 px.

Both sides train the same thing: two trigger tokens, LoRA rank 4 on the UNet attention and on the
text encoder (the seed tunes the text encoder with the tokens), AdamW, same learning rates.

* **baseline**: a plain loop with the diffusers LoRA example's defaults: frozen weights cast to the
  mixed-precision dtype, trainable ones fp32, accelerate autocast, ``torch.optim.AdamW`` (default
  implementation), the VAE encoding every batch (no latent cache), the whole token-embedding table
  trainable with the other rows restored after each step (the textual-inversion example's way; in
  mixed precision the fp32 table's output goes on in the compute dtype, as the rest of the encoder), no
  gradient checkpointing, no compile, PyTorch SDPA attention (diffusers' default).
* **ours**: ``train_trigger02.py`` itself, as users run it, with ``--cache_latents`` (and fused AdamW,
  TF32, the small trigger-row parameter it always uses); on GPU (and with ``--tiny``) also with
  ``--gradient_checkpointing``.

Each configuration runs in its own child process, so its peak memory is its own: GPU
``torch.cuda.max_memory_allocated`` during training; on CPU the child's peak resident memory
(``ru_maxrss``, which includes loading the model). images/s counts only steps after the first
``--warmup`` (compilation, allocator and cache warm-up) for the baseline; the trainer always leaves
out its first step (its manifest's ``images_per_s``), so keep ``--warmup 1`` for a like-for-like
figure. Prints one table and writes it as JSON under ``--results`` (default ``bench/results/``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from storyboard.core.cli import format_table  # noqa: E402

RESULTS = REPO / "bench" / "results"

from sd15_random import build_random_sd15, build_tiny_sd  # noqa: E402  (SD1.5 configs, random weights)

TOKENS = (("<fs_trg>", "full shot"), ("<ms_trg>", "medium shot"))
RANK, UNET_LR, TE_LR, TOKEN_LR = 4, 1e-4, 5e-5, 5e-4
RESOLUTION, TINY_RESOLUTION = 512, 64
PRECISIONS = ("no", "fp16", "bf16")


# --------------------------------------------------------------------------------------------
# The model folder and the data
# --------------------------------------------------------------------------------------------
def build_data(folder: Path, n: int = 8, resolution: int = RESOLUTION) -> Path:
    """``n`` images of ``resolution`` px (random shapes), captions starting with a trigger."""
    if (folder / "metadata.jsonl").is_file():
        return folder
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        token, words = TOKENS[i % len(TOKENS)]
        pixels = (rng.random((resolution // 8, resolution // 8, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).resize((resolution, resolution), Image.Resampling.BICUBIC).save(
            folder / "images" / f"{i:03d}.png")
        lines.append(json.dumps({"file_name": f"images/{i:03d}.png", "text": f"{token}, {words}, a person {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------
# The baseline: a plain loop with the diffusers examples' defaults (runs in a child process)
# --------------------------------------------------------------------------------------------
def baseline(base: Path, data: Path, batch: int, steps: int, precision: str, warmup: int,
             resolution: int = RESOLUTION) -> dict:
    import numpy as np
    import torch
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from PIL import Image
    from torch.nn.functional import mse_loss
    from transformers import CLIPTextModel, CLIPTokenizer

    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")

    # textual-inversion example: add tokens, init from words, train the whole table, restore others
    tokenizer.add_tokens([t for t, _ in TOKENS])
    text_encoder.resize_token_embeddings(len(tokenizer))
    ids = tokenizer.convert_tokens_to_ids([t for t, _ in TOKENS])
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token_id, (_, words) in zip(ids, TOKENS):
            table[token_id] = table[tokenizer(words, add_special_tokens=False).input_ids].mean(0)
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    text_encoder.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), text_encoder)
    text_encoder.get_input_embeddings().weight.requires_grad_(True)
    unet.to(device, dtype=weight_dtype)
    vae.to(device, dtype=weight_dtype)
    text_encoder.to(device, dtype=weight_dtype)
    for model in (unet, text_encoder):  # cast_training_params: trainable weights in fp32
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    emb = text_encoder.get_input_embeddings().weight
    if weight_dtype != torch.float32:
        # The trainable table is fp32 (textual-inversion example), the rest of the encoder is in the compute
        # dtype (LoRA example): its rows go on in that dtype, as they do in ours. Left fp32, the residual
        # stream meets bf16 LayerNorm weights, which CUDA autocast upcasts but CPU autocast refuses.
        text_encoder.get_input_embeddings().register_forward_hook(lambda module, inputs, out: out.to(weight_dtype))
    orig_embeds = emb.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
    keep[ids] = False
    unet_params = [p for p in unet.parameters() if p.requires_grad]
    te_params = [p for n, p in text_encoder.named_parameters() if p.requires_grad and "token_embedding" not in n]
    optimizer = torch.optim.AdamW([{"params": unet_params, "lr": UNET_LR}, {"params": te_params, "lr": TE_LR},
                                   {"params": [emb], "lr": TOKEN_LR}], weight_decay=1e-2)
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]

    def load(rec):
        image = Image.open(data / rec["file_name"]).convert("RGB").resize((resolution, resolution))
        return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1)

    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        chosen = [records[(step * batch + i) % len(records)] for i in range(batch)]
        pixels = torch.stack([load(r) for r in chosen]).to(device, dtype=weight_dtype)
        input_ids = tokenizer([r["text"] for r in chosen], padding="max_length", truncation=True,
                              max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
        latents = vae.encode(pixels).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],), device=device)
        noisy = noise_scheduler.add_noise(latents, noise, t)
        with accelerator.autocast():
            hidden = text_encoder(input_ids, return_dict=False)[0]
            pred = unet(noisy, t, hidden, return_dict=False)[0]
        loss = mse_loss(pred.float(), noise.float())
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(unet_params + te_params + [emb], 1.0)
        optimizer.step()
        optimizer.zero_grad()
        with torch.no_grad():  # the textual-inversion example keeps the other rows by restoring them
            accelerator.unwrap_model(text_encoder).get_input_embeddings().weight[keep] = orig_embeds[keep]
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    timed = times[warmup:]
    return {"images_per_s": batch * len(timed) / sum(timed), "peak_memory_bytes": _peak(device), "steps": steps}


def _peak(device) -> int:
    import torch

    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


# --------------------------------------------------------------------------------------------
# Ours: the trainer itself, through its front door
# --------------------------------------------------------------------------------------------
def ours(base: Path, data: Path, out: Path, batch: int, steps: int, precision: str, checkpointing: bool,
         env: dict, resolution: int = RESOLUTION) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "train_trigger02.py"), "--pretrained_model_name_or_path", str(base),
           "--train_data_dir", str(data), "--output_dir", str(out), "--resolution", str(resolution),
           "--train_batch_size", str(batch), "--max_train_steps", str(steps), "--rank", str(RANK),
           "--learning_rate", str(UNET_LR), "--text_encoder_lr", str(TE_LR), "--token_learning_rate", str(TOKEN_LR),
           "--mixed_precision", precision, "--cache_latents", "--allow_tf32", "--num_validation_images", "0",
           "--eval_loss_images", "0", "--checkpointing_steps", str(10**6), "--dataloader_num_workers", "0",
           "--new_tokens", ",".join(t for t, _ in TOKENS),
           "--report_to", "none"]  # like the baseline loop, which logs nothing (tensorboard is the default)
    if checkpointing:
        cmd.append("--gradient_checkpointing")
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"trainer failed:\n{proc.stderr[-3000:]}")
    training = json.loads((out / "trigger_manifest.json").read_text())["training"]
    return {"images_per_s": training["images_per_s"], "peak_memory_bytes": training["peak_memory_bytes"],
            "steps": steps}


def child(args) -> None:
    """One baseline configuration in this (child) process; prints one JSON line."""
    result = baseline(Path(args.base), Path(args.data), args.batch, args.steps, args.precision, args.warmup,
                      args.resolution)
    print("RESULT " + json.dumps(result))


def run_baseline(base: Path, data: Path, batch: int, steps: int, precision: str, warmup: int, env: dict,
                 resolution: int = RESOLUTION) -> dict:
    cmd = [sys.executable, __file__, "--child", "--base", str(base), "--data", str(data), "--batch", str(batch),
           "--steps", str(steps), "--precision", precision, "--warmup", str(warmup), "--resolution", str(resolution)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"baseline failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "storyboard_bench_train",
                        help="where the random SD1.5 folder and the data are kept between runs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: 1 on CPU, 1 4 on GPU, 2 with --tiny")
    parser.add_argument("--steps", type=int, default=None, help="steps per configuration (default: 3 CPU, 20 GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="baseline steps not timed (default %(default)s)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="default: bf16 on GPU (fp16 without bf16), no on CPU; bf16 also runs on CPU")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: storyboard.devkit.tiny's toy model at 64 px, every configuration (seconds)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON (default %(default)s)")
    parser.add_argument("--compile", action="store_true",
                        help="also ours under torch.compile (accelerate's dynamo backend 'inductor'); each such run "
                             "first pays the compilation (minutes for SD1.5)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--base", "--data", "--batch", "--resolution"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.steps is not None and args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} leaves no timed step after --warmup {args.warmup}")
    return args


def plan(args, gpu: bool) -> dict:
    """What this run measures: model, size, batches, steps, precision and configurations."""
    import torch

    native_bf16 = gpu and torch.cuda.is_bf16_supported(including_emulation=False)  # not emulated (pre-Ampere)
    precision = args.precision or (("bf16" if native_bf16 else "fp16") if gpu else "no")
    if precision == "fp16" and not gpu:
        # accelerate has no fp16 autocast on the CPU: the baseline's fp16 UNet would meet fp32 inputs.
        print("bench_train.py: error: --precision fp16 needs a CUDA GPU; use bf16 or no on the CPU", file=sys.stderr)
        raise SystemExit(2)
    # The GPU set has a gradient-checkpointing row; --tiny runs it everywhere so that path is exercised.
    configs = [("baseline (diffusers example)", None, False), ("ours", False, False)]
    if gpu or args.tiny:
        configs.append(("ours + gradient checkpointing", True, False))
    if args.compile:
        configs.append(("ours + torch.compile", False, True))
    return {"precision": precision, "configs": configs,
            "resolution": TINY_RESOLUTION if args.tiny else RESOLUTION,
            "batches": args.batch_sizes or ([2] if args.tiny else [1, 4] if gpu else [1]),
            "steps": args.steps or (20 if gpu and not args.tiny else 3)}


def measure(base: Path, data: Path, work: Path, run: dict, warmup: int, env: dict) -> tuple[list, list]:
    """Every configuration at every batch size, each in its own process: (table rows, JSON results)."""
    rows, results = [], []
    precision, steps, resolution = run["precision"], run["steps"], run["resolution"]
    for batch in run["batches"]:
        base_result = None
        for label, checkpointing, compiled in run["configs"]:
            print(f"batch {batch}: {label} ...", file=sys.stderr)
            if checkpointing is None:
                r = run_baseline(base, data, batch, steps, precision, warmup, env, resolution)
                base_result = r
            else:
                # accelerate compiles the models in prepare() when this is set (what `accelerate launch
                # --dynamo_backend inductor` sets); images/s counts from step 2, after the compilation.
                r = ours(base, data, work / "out", batch, steps, precision, checkpointing,
                         dict(env, ACCELERATE_DYNAMO_BACKEND="inductor") if compiled else env, resolution)
            speedup = r["images_per_s"] / base_result["images_per_s"] if base_result else None
            mem = r["peak_memory_bytes"] / 2**30
            rows.append((label, batch, precision, f"{r['images_per_s']:.3f}",
                         f"{speedup:.2f}x" if speedup else "", f"{mem:.2f}"))
            results.append({"config": label, "batch": batch, "precision": precision, **r,
                            "speedup_vs_baseline": speedup})
            # Each figure as soon as it exists: a run cut short (a GPU lease's time limit) keeps them.
            print(f"  {label}, batch {batch}: {r['images_per_s']:.3f} images/s"
                  f"{f', {speedup:.2f}x the baseline' if speedup else ''}, peak {mem:.2f} GiB",
                  file=sys.stderr, flush=True)
    return rows, results


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.child:
        args.batch, args.resolution = int(args.batch), int(args.resolution)
        child(args)
        return

    import torch

    gpu = torch.cuda.is_available()
    run = plan(args, gpu)
    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores, {cpu})"
    env = dict(os.environ, STORYBOARD_NO_PROGRESS="1")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = "storyboard.devkit.tiny toy model" if args.tiny else "SD1.5 architecture (random weights)"
    print(f"building / reusing the {model} folder under {args.work} ...", file=sys.stderr)
    base = build_tiny_sd(args.work / "tiny_sd") if args.tiny else build_random_sd15(args.work / "sd15_random")
    data = build_data(args.work / f"Dataset_fin-{run['resolution']}px", resolution=run["resolution"])
    rows, results = measure(base, data, args.work, run, args.warmup, env)
    table = format_table(rows, header=("configuration", "batch", "precision", "images/s", "vs baseline",
                                       "peak GiB"))
    stamp = time.strftime("%Y-%m-%d")
    print(f"\nTraining, {model}, {run['resolution']} px, {run['steps']} steps "
          f"({args.warmup} untimed), {device}, {stamp}")
    print(table)
    print("peak memory: GPU max_memory_allocated" if gpu else
          "peak memory: the child process's peak resident memory (includes loading the model)")
    args.results.mkdir(parents=True, exist_ok=True)
    # A smoke run never overwrites the day's real figures.
    path = args.results / f"bench_train-{'tiny-' if args.tiny else ''}{'gpu' if gpu else 'cpu'}-{stamp}.json"
    path.write_text(json.dumps({"device": device, "date": stamp, "model": model, "tiny": args.tiny,
                                "resolution": run["resolution"], "steps": run["steps"], "warmup": args.warmup,
                                "results": results, "table": table,
                                "seconds": round(time.time() - started, 1)}, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
