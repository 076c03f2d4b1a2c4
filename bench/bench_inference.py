"""Inference images/s: our pipeline (LoRA fused, trigger tokens loaded) against plain diffusers with the
same LoRA, fused by diffusers' own ``fuse_lora()`` and unfused, on the full-size Stable Diffusion 1.5
architecture with random weights; and a check that all of them make the same image.

    python bench/bench_inference.py                       # CPU: 512 px, 2 steps, 1 image, 2 repeats (slow: minutes)
    python bench/bench_inference.py --full                # GPU: 512 px, 30 steps, 4 images in one batch, fp16
    python bench/bench_inference.py --full --compile      # + torch.compile on our side
    python bench/bench_inference.py --tiny [--dtype bf16]  # smoke run (seconds, any machine): storyboard.devkit.tiny's
                                                          #   toy model, 64 px; proves the bench runs, measures nothing
    python bench/bench_inference.py --full --prepare-only --work DIR   # build the model and checkpoint, nothing else

Speed does not depend on the weights, so nothing is downloaded: the UNet, VAE and text encoder are built
from SD1.5's own configs (``sd15_random.py``) with random weights, the tokenizer is the real CLIP BPE
(built offline), and everything is saved as a diffusers folder (fp16 safetensors, ~2 GB). A trigger
checkpoint for it (LoRA rank 16 on the UNet attention and the text encoder, two trigger tokens, the
trainer's manifest) is written beside it. Both are kept under ``--work`` (built once; a temp folder
without it). ``--tiny`` uses ``storyboard.devkit.tiny``'s toy model instead (saved the same way) at 64 px.

Three sides, all loaded from those folders and held at once:

* **ours**: ``storyboard.inference.pipeline.load_trigger_pipeline`` -- what ``inference_trigger.py`` and
  validation run: checks, LoRA fused into the weights on the CPU before the move (no LoRA layers left),
  tokens loaded, channels-last and TF32 on GPU; timed as ``inference_trigger.py`` runs it, PNG encoding
  and metadata included;
* **plain + fuse_lora()**: ``StableDiffusionPipeline.from_pretrained`` + ``load_lora_weights`` +
  ``load_textual_inversion``, then diffusers' own ``fuse_lora()`` and ``unload_lora_weights()`` (the
  diffusers docs' recipe for a fused LoRA); only makes the images;
* **plain (LoRA unfused)**: the same without fusing.

Each side first runs one warm-up call (not timed; the same batch shape, 2 steps); then ``--repeats``
times, each side in turn (in the opposite order on every other repeat), ``--images`` images
(``--batch-size`` per call) with the same prompt containing a trigger and the same seeds; the best
repeat is the side's figure. Prints one table (images/s, seconds per image, speed-up over the unfused
side; on CPU also the process's CPU seconds per image, steadier than wall time on a shared machine)
and writes it as JSON (``--json``, default under ``--results``), each side's figures as soon as they
exist.

Same image: the first image of each side's first timed batch (same prompt, same seed) is compared with
the image of plain diffusers' ``fuse_lora()`` side (the operation ours performs), in 8-bit levels,
beside the LoRA's own effect on it (the unfused pipeline with its LoRA disabled, one untimed call). A
side makes the same image when its largest difference is at most ``--same-tolerance`` levels (default:
2 in fp32, 12 in fp16 / bf16, where 30 steps of half-precision rounding in other kernel orders add up)
and under a fifth of the LoRA's effect. If ours does not, the bench says NO in the table and exits 3
after writing everything. The unfused side's difference is reported too: it is what fusing itself
changes (in half precision the merged weights are rounded, so a small LoRA partly rounds away).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import replace
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
LORA_B_STD = 0.05  # the update B @ A is then ~0.4 of SD1.5's weights' scale (~0.07 of the tiny model's)


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
    for model in (unet, text_encoder):  # non-zero B so the LoRA really changes the output, also after
        for name, param in model.named_parameters():  # fusing in half precision (the same-image control)
            if "lora_B" in name:
                torch.nn.init.normal_(param, std=LORA_B_STD)
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


def timed(call_pipe, images: int, batch: int, sync) -> tuple[float, float, list]:
    """(wall seconds, CPU seconds of this process, the images) for ``images`` images. On a shared CPU
    machine the CPU seconds are the steadier figure (other processes' load stretches the wall time)."""
    started, cpu_started = time.perf_counter(), time.process_time()
    done, made = 0, []
    while done < images:
        n = min(batch, images - done)
        made += call_pipe(n, done)
        done += n
    sync()
    return time.perf_counter() - started, time.process_time() - cpu_started, made


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--full", action="store_true", help="the GPU setting: 30 steps, 4 images, batch 4, fp16")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: storyboard.devkit.tiny's toy model, 64 px, 2 steps, 2 images in one batch")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default 2; 30 with --full)")
    parser.add_argument("--images", type=int, default=None,
                        help="timed images per side and repeat (default 1; 4 with --full, 2 with --tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per call (default 1; 4 with --full)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default 512; 64 with --tiny)")
    parser.add_argument("--device", default="auto", help="auto, cuda or cpu")
    add_dtype_argument(parser, help_auto="fp16 on GPU, fp32 on CPU; bf16 runs on both")
    parser.add_argument("--compile", action="store_true", help="torch.compile our UNet (GPU; warm-up pays for it)")
    parser.add_argument("--work", type=Path, default=None, help="keep the random model here (default: a temp folder)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON (default %(default)s)")
    parser.add_argument("--json", type=Path, default=None,
                        help="the JSON file itself (default: inference-[tiny-]DATE.json under --results)")
    parser.add_argument("--repeats", type=int, default=2, help="timed rounds per side; the best counts "
                        "(default %(default)s)")
    parser.add_argument("--same-tolerance", type=float, default=None,
                        help="largest difference in 8-bit levels that still counts as the same image "
                             "(default: 2 in fp32, 12 in fp16/bf16)")
    parser.add_argument("--prepare-only", action="store_true", help="build the model and checkpoint under --work, "
                        "then stop (the GPU check builds them before its time-limited steps)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.steps = args.steps or (30 if args.full else 2)
    args.images = args.images or (4 if args.full else 2 if args.tiny else 1)
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
    """Drop what a side held, so the next one starts with the same free memory."""
    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def plain_pipeline(base: Path, ckpt: Path, device, dtype, fuse: bool):
    """The diffusers docs' recipe: from_pretrained + load_lora_weights + load_textual_inversion, and for
    the fused side ``fuse_lora()`` + ``unload_lora_weights()`` (after the move, as a user does)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(base, dtype=dtype, safety_checker=None,
                                                   requires_safety_checker=False)
    pipe.load_lora_weights(ckpt)
    for token, _ in TOKENS:
        pipe.load_textual_inversion(str(ckpt / "embeddings" / f"{token.strip('<>')}.safetensors"), token=token)
    pipe.set_progress_bar_config(disable=True)
    pipe.to(device)
    if fuse:
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    return pipe


SIDES = ("ours (fused LoRA, tokens)", "plain + fuse_lora()", "plain (LoRA unfused)")


def load_sides(args, base: Path, ckpt: Path, device, dtype_name: str) -> dict:
    """Every side's callable ``(n, first) -> images`` and its load seconds."""
    import torch

    from storyboard.core.runtime import resolve_dtype
    from storyboard.inference.jobs import Job, run_jobs
    from storyboard.inference.pipeline import load_trigger_pipeline
    from storyboard.inference.settings import Settings

    dtype = resolve_dtype(dtype_name, device)
    settings = Settings(steps=args.steps, guidance=7.5, width=args.size, height=args.size)
    out_dir = args.work_dir / "images"
    sides = {}
    t0 = time.perf_counter()
    tp = load_trigger_pipeline(base, ckpt, device=str(device), dtype=dtype_name, compile=args.compile)
    assert tp.fused and not tp.pipe.get_list_adapters(), "ours should hold no LoRA layers"

    def ours(n, first, steps=args.steps):
        jobs = [Job(PROMPT, "", args.seed + first + k, out_dir / f"ours-{first + k}.png") for k in range(n)]
        run_jobs(tp, jobs, replace(settings, steps=steps), batch_size=n, show_progress=False)
        return [job.output for job in jobs]  # read back after the clock stops (as_array)

    sides[SIDES[0]] = (ours, time.perf_counter() - t0, tp.pipe)
    for name, fuse in ((SIDES[1], True), (SIDES[2], False)):
        t0 = time.perf_counter()
        pipe = plain_pipeline(base, ckpt, device, dtype, fuse)
        assert bool(pipe.get_list_adapters()) is not fuse, f"{name}: LoRA layers {'left' if fuse else 'missing'}"

        def plain(n, first, steps=args.steps, pipe=pipe):
            gens = [torch.Generator("cpu").manual_seed(args.seed + first + k) for k in range(n)]
            with torch.inference_mode():
                images = pipe([PROMPT] * n, num_inference_steps=steps, guidance_scale=7.5, width=args.size,
                              height=args.size, generator=gens).images
            return images

        sides[name] = (plain, time.perf_counter() - t0, pipe)
    return sides


def as_array(image):
    """An image as 8-bit RGB pixels: a PIL image, or a PNG file ours wrote."""
    import numpy as np
    from PIL import Image

    if isinstance(image, Path):
        with Image.open(image) as im:
            return np.asarray(im.convert("RGB"))
    return np.asarray(image.convert("RGB"))


def lora_effect(pipe, args):
    """The unfused side's first image with its LoRA switched off: what the LoRA changes (the control)."""
    import numpy as np
    import torch

    pipe.disable_lora()
    try:
        with torch.inference_mode():
            image = pipe(PROMPT, num_inference_steps=args.steps, guidance_scale=7.5, width=args.size,
                         height=args.size, generator=torch.Generator("cpu").manual_seed(args.seed)).images[0]
    finally:
        pipe.enable_lora()
    return np.asarray(image)


def same_image_check(firsts: dict, no_lora, tolerance: float) -> dict:
    """Each side's first image against plain diffusers' ``fuse_lora()`` side (the same operation ours
    does), beside the LoRA's own effect on that image (the control: a LoRA that changes nothing would
    make every side "the same"). The unfused side's difference is what fusing itself changes (half-
    precision rounding of the merged weights); it is reported, and judged by the same rule."""
    import numpy as np

    reference = firsts[SIDES[1]].astype(np.int16)
    effect = np.abs(no_lora.astype(np.int16) - reference)
    out = {"reference": SIDES[1], "lora_effect_max": int(effect.max()),
           "lora_effect_mean": round(float(effect.mean()), 3), "reference_std": round(float(reference.std()), 2),
           "tolerance": tolerance}
    for name, image in firsts.items():
        diff = np.abs(image.astype(np.int16) - reference)
        same = bool(diff.max() <= tolerance and diff.max() < effect.max() / 5 and reference.std() > 1)
        out[name] = {"max": int(diff.max()), "mean": round(float(diff.mean()), 3), "same": same}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)

    import torch

    from storyboard.core.runtime import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype_name = args.dtype if args.dtype != "auto" else ("fp16" if device.type == "cuda" else "fp32")
    resolve_dtype(dtype_name, device)  # fp16 on the CPU: one clear line (run_main)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)
    tolerance = args.same_tolerance if args.same_tolerance is not None else (2 if dtype_name == "fp32" else 12)

    work = args.work or Path(tempfile.mkdtemp(prefix="bench-inference-"))
    args.work_dir = work
    base, ckpt = prepare_models(work, args.tiny, args.seed)
    if args.prepare_only:
        return 0
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    model = "storyboard.devkit.tiny toy model" if args.tiny else "SD1.5 architecture, random weights"
    stamp = time.strftime("%Y-%m-%dT%H-%M-%S")
    args.results.mkdir(parents=True, exist_ok=True)
    # A smoke run never overwrites real figures, and is told apart from them by its name.
    path = args.json or args.results / f"inference-{'tiny-' if args.tiny else ''}{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    report = {"date": stamp, "device": device_name, "model": model, "tiny": args.tiny, "dtype": dtype_name,
              "size": args.size, "steps": args.steps, "images": args.images, "batch_size": args.batch_size,
              "repeats": args.repeats, "compile": args.compile, "complete": False, "runs": [], "results": [],
              "same_image": None, "table": ""}
    write_json(path, report)

    sides = load_sides(args, base, ckpt, device, dtype_name)
    firsts = {}
    for call, _, _ in sides.values():  # warm-up (untimed): compilation, allocator, kernel choice; the same
        call(min(args.batch_size, args.images), 0, min(args.steps, 2))  # shapes as a timed call, fewer steps
        sync()
    for repeat in range(args.repeats):
        for name in (SIDES if repeat % 2 == 0 else SIDES[::-1]):
            call = sides[name][0]
            seconds, cpu_s, images = timed(call, args.images, args.batch_size, sync)
            firsts.setdefault(name, as_array(images[0]))
            report["runs"].append({"side": name, "repeat": repeat, "seconds": seconds, "cpu_seconds": cpu_s,
                                   "images_per_s": args.images / seconds})
            write_json(path, report)
            print(f"  repeat {repeat + 1}, {name}: {args.images / seconds:.4f} images/s", file=sys.stderr, flush=True)
    check = same_image_check(firsts, lora_effect(sides[SIDES[2]][2], args), tolerance)
    report["same_image"] = check

    best = {name: min((r for r in report["runs"] if r["side"] == name), key=lambda r: r["seconds"]) for name in SIDES}
    base_rate, base_cpu = args.images / best[SIDES[2]]["seconds"], best[SIDES[2]]["cpu_seconds"]
    rows, results = [], []
    for name in SIDES:
        r, load_s = best[name], sides[name][1]
        rate = args.images / r["seconds"]
        same = check[name]
        rows.append((name, f"{rate:.4f}", f"{r['seconds'] / args.images:.2f}", f"{rate / base_rate:.2f}x",
                     f"{r['cpu_seconds'] / args.images:.1f}", f"{base_cpu / r['cpu_seconds']:.2f}x", f"{load_s:.1f}",
                     f"{'yes' if same['same'] else 'NO'} ({same['max']}/{same['mean']:.2f})"))
        results.append({"pipeline": name, "load_s": round(load_s, 2), "seconds": round(r["seconds"], 3),
                        "cpu_seconds": round(r["cpu_seconds"], 3), "images_per_s": rate,
                        "speedup_vs_unfused": rate / base_rate, "same_image": same})
    print(f"\n{model}, {args.size}x{args.size}, {args.steps} steps, CFG 7.5, {args.images} image(s) per repeat, "
          f"batch {args.batch_size}, best of {args.repeats}, {dtype_name}, {device_name}"
          f"{', torch.compile' if args.compile else ''}")
    table = format_table(rows, header=("pipeline", "images/s", "s/image", "speed-up", "CPU s/image", "CPU speed-up",
                                       "load s", "same image as fuse_lora() (max/mean)"))
    print(table)
    print(f"same image as plain + fuse_lora(): largest difference at most {tolerance} levels and under a fifth of "
          f"the LoRA's own effect (max {check['lora_effect_max']}, mean {check['lora_effect_mean']} levels); the "
          f"unfused side's difference is what fusing itself rounds away")
    report.update(results=results, table=table, complete=True)
    write_json(path, report)
    print(f"written {path}")
    sides.clear()
    release(device)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if check[SIDES[0]]["same"] else 3  # ours against plain diffusers' own fuse_lora()


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    from storyboard.core.cli import run_main

    run_main(main)
