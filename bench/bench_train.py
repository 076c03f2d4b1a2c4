"""Training images/s and peak memory: our trainer against a plain diffusers-example loop, on the
full-size Stable Diffusion 1.5 architecture with random weights, at 512 px.

    python bench/bench_train.py                 # CPU: batch 1, 3 steps each (slow: ~10 minutes on 2 cores)
    python bench/bench_train.py --batch-sizes 1 4 --steps 4
    python bench/bench_train.py                 # on a GPU the same command runs the GPU set:
                                                #   bf16, batch 1 and 4, 20 steps, ours with and
                                                #   without gradient checkpointing

Speed does not depend on the weights, so nothing is downloaded: UNet, VAE and text encoder are built
from SD1.5's published configs (written below) with random weights, the tokenizer is the real CLIP
BPE (built offline, as ``storyboard.tiny`` does); the folder is saved once (fp16 safetensors, ~2 GB)
under ``--work`` and reused. The data set is 8 generated 512 px images with trigger captions.

Both sides train the same thing: two trigger tokens, LoRA rank 4 on the UNet attention and on the
text encoder (the seed tunes the text encoder with the tokens), AdamW, same learning rates.

* **baseline**: a plain loop with the diffusers LoRA example's defaults: frozen weights cast to the
  mixed-precision dtype, trainable ones fp32, accelerate autocast, ``torch.optim.AdamW`` (default
  implementation), the VAE encoding every batch (no latent cache), the whole token-embedding table
  trainable with the other rows restored after each step (the textual-inversion example's way), no
  gradient checkpointing, no compile, PyTorch SDPA attention (diffusers' default).
* **ours**: ``train_trigger02.py`` itself, as users run it, with ``--cache_latents`` (and fused AdamW,
  TF32, the small trigger-row parameter it always uses); on GPU also with ``--gradient_checkpointing``.

Each configuration runs in its own child process, so its peak memory is its own: GPU
``torch.cuda.max_memory_allocated`` during training; on CPU the child's peak resident memory
(``ru_maxrss``, which includes loading the model). images/s counts only steps after the first
``--warmup`` (compilation, allocator and cache warm-up). Prints one table and writes it as JSON
under ``bench/results/``.
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

from storyboard.cli import format_table  # noqa: E402

RESULTS = REPO / "bench" / "results"

from sd15_random import build_random_sd15  # noqa: E402  (SD1.5 configs, random weights)
TOKENS = (("<fs_trg>", "full shot"), ("<ms_trg>", "medium shot"))
RANK, UNET_LR, TE_LR, TOKEN_LR = 4, 1e-4, 5e-5, 5e-4
RESOLUTION = 512


# --------------------------------------------------------------------------------------------
# The model folder and the data
# --------------------------------------------------------------------------------------------
def build_data(folder: Path, n: int = 8) -> Path:
    """``n`` 512 px images (random shapes), captions starting with a trigger."""
    if (folder / "metadata.jsonl").is_file():
        return folder
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n):
        token, words = TOKENS[i % len(TOKENS)]
        pixels = (rng.random((RESOLUTION // 8, RESOLUTION // 8, 3)) * 255).astype("uint8")
        Image.fromarray(pixels).resize((RESOLUTION, RESOLUTION), Image.Resampling.BICUBIC).save(
            folder / "images" / f"{i:03d}.png")
        lines.append(json.dumps({"file_name": f"images/{i:03d}.png", "text": f"{token}, {words}, a person {i}"}))
    (folder / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


# --------------------------------------------------------------------------------------------
# The baseline: a plain loop with the diffusers examples' defaults (runs in a child process)
# --------------------------------------------------------------------------------------------
def baseline(base: Path, data: Path, batch: int, steps: int, precision: str, warmup: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from PIL import Image
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
    orig_embeds = emb.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
    keep[ids] = False
    unet_params = [p for p in unet.parameters() if p.requires_grad]
    te_params = [p for n, p in text_encoder.named_parameters() if p.requires_grad and "token_embedding" not in n]
    optimizer = torch.optim.AdamW([{"params": unet_params, "lr": UNET_LR}, {"params": te_params, "lr": TE_LR},
                                   {"params": [emb], "lr": TOKEN_LR}], weight_decay=1e-2)
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]

    def load(rec):
        image = Image.open(data / rec["file_name"]).convert("RGB").resize((RESOLUTION, RESOLUTION))
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
        loss = F.mse_loss(pred.float(), noise.float())
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
         env: dict) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "train_trigger02.py"), "--pretrained_model_name_or_path", str(base),
           "--train_data_dir", str(data), "--output_dir", str(out), "--resolution", str(RESOLUTION),
           "--train_batch_size", str(batch), "--max_train_steps", str(steps), "--rank", str(RANK),
           "--learning_rate", str(UNET_LR), "--text_encoder_lr", str(TE_LR), "--token_learning_rate", str(TOKEN_LR),
           "--mixed_precision", precision, "--cache_latents", "--allow_tf32", "--num_validation_images", "0",
           "--eval_loss_images", "0", "--checkpointing_steps", str(10**6), "--dataloader_num_workers", "0",
           "--new_tokens", ",".join(t for t, _ in TOKENS)]
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
    result = baseline(Path(args.base), Path(args.data), args.batch, args.steps, args.precision, args.warmup)
    print("RESULT " + json.dumps(result))


def run_baseline(base: Path, data: Path, batch: int, steps: int, precision: str, warmup: int, env: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", "--base", str(base), "--data", str(data), "--batch", str(batch),
           "--steps", str(steps), "--precision", precision, "--warmup", str(warmup)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"baseline failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "storyboard_bench_train",
                        help="where the random SD1.5 folder and the data are kept between runs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="default: 1 on CPU, 1 4 on GPU")
    parser.add_argument("--steps", type=int, default=None, help="steps per configuration (default: 3 CPU, 20 GPU)")
    parser.add_argument("--warmup", type=int, default=1, help="steps not timed (default %(default)s)")
    parser.add_argument("--precision", default=None, help="default: bf16 on GPU (fp16 without bf16), no on CPU")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    for name in ("--base", "--data", "--batch"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.batch = int(args.batch)
        child(args)
        return

    import torch

    gpu = torch.cuda.is_available()
    batches = args.batch_sizes or ([1, 4] if gpu else [1])
    steps = args.steps or (20 if gpu else 3)
    precision = args.precision or (("bf16" if torch.cuda.is_bf16_supported() else "fp16") if gpu else "no")
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"
    env = dict(os.environ, STORYBOARD_NO_PROGRESS="1")
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    print(f"building / reusing the random SD1.5 folder under {args.work} ...", file=sys.stderr)
    base = build_random_sd15(args.work / "sd15_random")
    data = build_data(args.work / "Dataset_fin")
    configs = [("baseline (diffusers example)", None)] + [("ours", False)] + ([("ours + gradient checkpointing", True)] if gpu else [])
    rows, results = [], []
    for batch in batches:
        base_result = None
        for label, checkpointing in configs:
            print(f"batch {batch}: {label} ...", file=sys.stderr)
            if checkpointing is None:
                r = run_baseline(base, data, batch, steps, precision, args.warmup, env)
                base_result = r
            else:
                r = ours(base, data, args.work / "out", batch, steps, precision, checkpointing, env)
            speedup = r["images_per_s"] / base_result["images_per_s"] if base_result else None
            mem = r["peak_memory_bytes"] / 2**30
            rows.append((label, batch, precision, f"{r['images_per_s']:.3f}",
                         f"{speedup:.2f}x" if speedup else "", f"{mem:.2f}"))
            results.append({"config": label, "batch": batch, "precision": precision, **r,
                            "speedup_vs_baseline": speedup})
    table = format_table(rows, header=("configuration", "batch", "precision", "images/s", "vs baseline",
                                       "peak GiB"))
    stamp = time.strftime("%Y-%m-%d")
    print(f"\nTraining, SD1.5 architecture (random weights), {RESOLUTION} px, {steps} steps "
          f"({args.warmup} untimed), {device}, {stamp}")
    print(table)
    print("peak memory: GPU max_memory_allocated" if gpu else
          "peak memory: the child process's peak resident memory (includes loading the model)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"bench_train-{'gpu' if gpu else 'cpu'}-{stamp}.json"
    path.write_text(json.dumps({"device": device, "date": stamp, "resolution": RESOLUTION, "steps": steps,
                                "warmup": args.warmup, "results": results, "table": table,
                                "seconds": round(time.time() - started, 1)}, indent=2) + "\n")
    print(f"written {path}")


if __name__ == "__main__":
    main()
