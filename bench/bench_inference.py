"""Inference images/s: our pipeline (LoRA fused, trigger tokens loaded) against a plain diffusers pipeline
with the same LoRA loaded unfused, on the full-size Stable Diffusion 1.5 architecture with random weights.

    python bench/bench_inference.py                       # CPU: 512 px, 2 steps, 1 image (slow: minutes)
    python bench/bench_inference.py --full                # GPU: 512 px, 30 steps, 8 images, fp16
    python bench/bench_inference.py --full --compile      # + torch.compile on our side

Speed does not depend on the weights, so nothing is downloaded: the UNet, VAE and text encoder are built
from SD1.5's own configs (written below) with random weights, the tokenizer is the real CLIP BPE
(built offline, as ``storyboard.tiny`` does), and everything is saved as a diffusers folder (fp16
safetensors, ~2 GB, in a temp folder). A trigger checkpoint for it (LoRA rank 16 on the UNet attention
and the text encoder, two trigger tokens, the trainer's manifest) is written beside it.

Both sides load from those folders, in the same run, one after the other:

* **ours**: ``storyboard.generate.load_trigger_pipeline`` -- what ``inference_trigger.py`` and validation
  run: LoRA fused into the weights (no LoRA layers left), tokens loaded, channels-last and TF32 on GPU;
* **plain**: ``StableDiffusionPipeline.from_pretrained`` + ``load_lora_weights`` (unfused) +
  ``load_textual_inversion``, the diffusers docs' recipe.

Each side first runs one warm-up call (not timed), then ``--images`` images (``--batch-size`` per call)
with the same prompt containing a trigger and the same seeds. Prints one table (images/s, seconds per
image, speed-up; on CPU also the process's CPU seconds per image, steadier than wall time on a shared
machine) and writes it as JSON under ``bench/results/``.
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

from storyboard.cli import format_table  # noqa: E402

RESULTS = REPO / "bench" / "results"
PROMPT = "<fs_trg>, full shot, eye level, outdoor, a man in a grey coat"

from sd15_random import SD15_TEXT, build_random_sd15  # noqa: E402  (SD1.5 configs, random weights)
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

    from storyboard import export

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    unet_cfg = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                          target_modules=export.UNET_ATTENTION_TARGETS)
    te_cfg = LoraConfig(r=LORA_RANK, lora_alpha=LORA_RANK, init_lora_weights="gaussian",
                        target_modules=export.TEXT_ENCODER_TARGETS)
    inject_adapter_in_model(unet_cfg, unet)
    inject_adapter_in_model(te_cfg, text_encoder)
    for model in (unet, text_encoder):  # non-zero B so the LoRA really changes the output
        for name, param in model.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=0.01)
    export.save_diffusers_lora(out, get_peft_model_state_dict(unet),
                               {f"text_model.{k}" if not k.startswith("text_model.") else k: v
                                for k, v in get_peft_model_state_dict(text_encoder).items()},
                               export.lora_metadata(unet_cfg), export.lora_metadata(te_cfg))
    (out / "embeddings").mkdir(parents=True, exist_ok=True)
    tokens = []
    for n, (token, init) in enumerate(TOKENS):
        save_file({"emb_params": torch.randn(1, SD15_TEXT["hidden_size"]) * 0.01},
                  str(out / "embeddings" / f"{token.strip('<>')}.safetensors"))
        tokens.append({"token": token, "token_id": len(tokenizer) + n, "initializer": init,
                       "embedding_file": f"embeddings/{token.strip('<>')}.safetensors"})
    manifest = {"format": export.MANIFEST_FORMAT, "tokens": tokens, "text_encoder_mode": "lora",
                "base_model": {"path": str(base), "fingerprint": export.base_fingerprint(base),
                               "tokenizer_size": len(tokenizer)},
                "tokenizer_size": len(tokenizer) + len(TOKENS),
                "lora": {"rank": LORA_RANK, "alpha": LORA_RANK}, "note": "bench: random weights"}
    export.write_manifest(out, manifest)
    return out


def plain_pipeline(base: Path, ckpt: Path, device, dtype):
    """The diffusers docs' recipe: from_pretrained + load_lora_weights (unfused) + load_textual_inversion."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=dtype, safety_checker=None, requires_safety_checker=False)
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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--full", action="store_true", help="the GPU setting: 30 steps, 8 images, batch 4, fp16")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 2; 30 with --full)")
    parser.add_argument("--images", type=int, default=None, help="timed images per side (default 1; 8 with --full)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per call (default 1; 4 with --full)")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels (default 512)")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    parser.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                        help="auto: fp16 on GPU, fp32 on CPU")
    parser.add_argument("--compile", action="store_true", help="torch.compile our UNet (GPU; warm-up pays for it)")
    parser.add_argument("--work", type=Path, default=None, help="keep the random model here (default: a temp folder)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps = args.steps or (30 if args.full else 2)
    images = args.images or (8 if args.full else 1)
    batch = args.batch_size or (4 if args.full else 1)

    import torch

    from storyboard.generate import Job, Settings, load_trigger_pipeline, resolve_device, resolve_dtype, run_jobs

    device = resolve_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    dtype = resolve_dtype(dtype_name, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    base, ckpt = work / "model_sd", work / "train_bench"
    t0 = time.perf_counter()
    if not (base / "model_index.json").is_file():
        build_random_sd15(base, args.seed)
    if not (ckpt / "trigger_manifest.json").is_file():
        build_checkpoint(base, ckpt, args.seed)
    print(f"random SD1.5 + trigger checkpoint ready in {time.perf_counter() - t0:.0f} s under {work}", flush=True)

    results = []
    settings = Settings(steps=steps, guidance=7.5, width=args.size, height=args.size)
    out_dir = work / "images"

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
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

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
    print(f"\nSD1.5 architecture, random weights, {args.size}x{args.size}, {steps} steps, CFG 7.5, {images} image(s), "
          f"batch {batch}, {dtype_name}, {device_name}{', torch.compile' if args.compile else ''}")
    print(format_table(rows, header=("pipeline", "images/s", "s/image", "speed-up", "CPU s/image", "CPU speed-up",
                                     "load s")))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    (RESULTS / f"inference-{stamp}.json").write_text(json.dumps({
        "date": stamp, "device": device_name, "dtype": dtype_name, "size": args.size, "steps": steps, "images": images,
        "batch_size": batch, "compile": args.compile,
        "results": [{"pipeline": n, "load_s": round(load, 2), "seconds": round(s, 3), "cpu_seconds": round(c, 3),
                     "images_per_s": images / s} for n, load, s, c in results]}, indent=2) + "\n")
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
