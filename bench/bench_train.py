"""Training images/s and peak memory: our trainer against a plain diffusers-example loop, with the rows
that attribute the gap, on the full-size Stable Diffusion 1.5 architecture with random weights, 512 px.

    python bench/bench_train.py                 # CPU: batch 1, 3 steps, 2 repeats (slow: about an hour on 2 cores)
    python bench/bench_train.py                 # on a GPU the same command runs the GPU set:
                                                #   bf16, batch 4, 12 steps (2 untimed), 2 repeats
    python bench/bench_train.py --batch-sizes 1 4 --repeats 3 --configs baseline ours
    python bench/bench_train.py --tiny [--precision bf16]
                                                # smoke run (seconds, any machine): storyboard.devkit.tiny's toy
                                                #   model at 64 px, every configuration; proves the bench
                                                #   runs, measures nothing

Speed does not depend on the weights, so nothing is downloaded: UNet, VAE and text encoder are built
from SD1.5's published configs (``sd15_random.py``) with random weights, the tokenizer is the real CLIP
BPE (built offline); the folder is saved once (fp16 safetensors, ~2 GB) under ``--work`` and reused. The
data set is 8 generated 512 px images with trigger captions. ``--tiny`` swaps in the toy model at 64 px.

Every row trains the same thing: two trigger tokens, LoRA rank 4 on the UNet attention and on the text
encoder, AdamW, the same learning rates. The rows (``--configs`` picks some):

* ``baseline``: the diffusers LoRA example's loop as users run it: frozen weights cast to the
  mixed-precision dtype, trainable ones fp32, accelerate autocast, ``torch.optim.AdamW`` (its default
  foreach implementation), each batch's PNGs decoded and run through the VAE inside the step, the whole
  token-embedding table trainable with the other rows restored after each step (the textual-inversion
  example's way), no TF32, no gradient checkpointing, PyTorch SDPA attention (diffusers' default);
* ``baseline+cache``: the same with every image's latent distribution computed before the timer
  (and the VAE moved off the device), sampled each step as ours does: what latent caching buys;
* ``ours``: the trainer itself (``storyboard.train.run``, what ``train_trigger02.py`` calls) with
  ``--cache_latents --allow_tf32``; fused AdamW on CUDA, the two trigger rows as their own parameter;
* ``ours-nocache``: ours without ``--cache_latents``: the same gap seen from our side;
* ``ours+table``: ours with the token rows trained the examples' way: the whole base table made
  trainable (fp32, a dense gradient, AdamW state for all 49,408 rows, clipped with the rest) and its
  rows restored after every optimizer step: what training two rows apart buys;
* ``ours+gc``: ours with ``--gradient_checkpointing`` (on GPU and with ``--tiny``): memory for time;
* ``ours+compile``: ours under ``torch.compile`` (``--compile``; accelerate's inductor backend).

How it measures. One child process runs every run of the plan in turn (imports paid once, which keeps
the GPU lease short): for each repeat and batch size every configuration, in the opposite order on
every other repeat, so a slow spell of a shared machine does not land on one row. images/s counts the
steps after ``--warmup`` (each step timed with a CUDA sync, data loading included) and the best of the
``--repeats`` runs is the row's figure (all runs are in the JSON). Peak memory is per run: on CUDA
``max_memory_allocated`` after a reset at the run's start (the memory still allocated at that start is
recorded too, and is ~0); on CPU the peak resident memory of the process during the run (``VmHWM``
reset through ``/proc/self/clear_refs``), which includes the ~0.5 GB of loaded libraries. Our trainer's
final export, reload check and previews are skipped (they are not steps). Before each run TF32 is put
back to PyTorch's defaults, so only ``ours`` rows run with it.

Results: each run's figures are written to the JSON (``--json``, default under ``--results``) as soon as
they exist, so a run cut short (a GPU lease's time limit) keeps what it measured; the table at the end.
A crashed child (a segfault, an out-of-memory kill) loses only the run in flight: a new child takes the
rest.

Why this module is long: the baseline loop, the trainer's variants and the runner that alternates them
are one measurement, kept in one file that runs on a bare GPU machine by itself.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
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
# name -> (label, side, options); the table's order
CONFIGS = {
    "baseline": ("baseline (diffusers example)", "baseline", {}),
    "baseline+cache": ("baseline + latent cache", "baseline", {"cache": True}),
    "ours-nocache": ("ours without latent cache", "ours", {"cache": False}),
    "ours+table": ("ours + whole-table token training", "ours", {"whole_table": True}),
    "ours": ("ours", "ours", {}),
    "ours+gc": ("ours + gradient checkpointing", "ours", {"checkpointing": True}),
    "ours+compile": ("ours + torch.compile", "ours", {"compile": True}),
}
DEFAULT_CONFIGS = ("baseline", "baseline+cache", "ours-nocache", "ours+table", "ours")


# --------------------------------------------------------------------------------------------
# The data
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
# Memory and step timing, per run (child process)
# --------------------------------------------------------------------------------------------
def _resident_peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class RunMeter:
    """Peak memory of one run inside a long-lived process: CUDA's allocator statistics, or on the CPU
    the process's peak resident memory after resetting it (``/proc/self/clear_refs``)."""

    def __init__(self, device):
        import torch

        self.device = device
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
            self.at_start = int(torch.cuda.memory_allocated(device))
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
                self.at_start = _resident_peak_kib() * 1024
            except OSError:
                self.at_start = None  # no reset possible: peak is the whole process's

    def peak(self) -> int:
        import torch

        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.at_start is None:
            import resource

            return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024
        return _resident_peak_kib() * 1024


def _reset_tf32() -> None:
    """PyTorch's defaults (the trainer's --allow_tf32 sets them process-wide)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True


def _rate(step_seconds: list[float], batch: int, warmup: int) -> float:
    timed = step_seconds[warmup:]
    return batch * len(timed) / sum(timed)


# --------------------------------------------------------------------------------------------
# The baseline: a plain loop with the diffusers examples' defaults
# --------------------------------------------------------------------------------------------
def _baseline_models(base: Path, device, weight_dtype):
    """The examples' setup: tokens added and initialised from their words, LoRA on UNet attention and
    text encoder, the whole token table trainable (fp32), frozen weights in the compute dtype."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from peft import LoraConfig, inject_adapter_in_model
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(base, subfolder="tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(base, subfolder="text_encoder")
    vae = AutoencoderKL.from_pretrained(base, subfolder="vae")
    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    noise_scheduler = DDPMScheduler.from_pretrained(base, subfolder="scheduler")
    tokenizer.add_tokens([t for t, _ in TOKENS])
    text_encoder.resize_token_embeddings(len(tokenizer))
    ids = tokenizer.convert_tokens_to_ids([t for t, _ in TOKENS])
    table = text_encoder.get_input_embeddings().weight
    with torch.no_grad():
        for token_id, (_, words) in zip(ids, TOKENS):
            table[token_id] = table[tokenizer(words, add_special_tokens=False).input_ids].mean(0)
    for model in (unet, vae, text_encoder):
        model.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=RANK, init_lora_weights="gaussian",
                                       target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]), text_encoder)
    text_encoder.get_input_embeddings().weight.requires_grad_(True)
    for model in (unet, vae, text_encoder):
        model.to(device, dtype=weight_dtype)
    for model in (unet, text_encoder):  # cast_training_params: trainable weights in fp32
        for p in model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    if weight_dtype != torch.float32:
        # The trainable table is fp32 (textual-inversion example), the rest of the encoder is in the compute
        # dtype (LoRA example): its rows go on in that dtype, as they do in ours. Left fp32, the residual
        # stream meets bf16 LayerNorm weights, which CUDA autocast upcasts but CPU autocast refuses.
        text_encoder.get_input_embeddings().register_forward_hook(lambda module, inputs, out: out.to(weight_dtype))
    return tokenizer, text_encoder, vae, unet, noise_scheduler, ids


def baseline(base: Path, data: Path, batch: int, steps: int, precision: str, resolution: int,
             cache: bool = False) -> dict:
    """The examples' loop for ``steps`` steps; each step's wall time (CUDA-synchronised)."""
    import numpy as np
    import torch
    from accelerate import Accelerator
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
    from PIL import Image
    from torch.nn.functional import mse_loss

    accelerator = Accelerator(mixed_precision=precision, cpu=not torch.cuda.is_available())
    device = accelerator.device
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    tokenizer, text_encoder, vae, unet, noise_scheduler, ids = _baseline_models(base, device, weight_dtype)
    emb = text_encoder.get_input_embeddings().weight
    orig_embeds = emb.detach().clone()
    keep = torch.ones(len(tokenizer), dtype=torch.bool, device=device)
    keep[ids] = False
    unet_params = [p for p in unet.parameters() if p.requires_grad]
    te_params = [p for n, p in text_encoder.named_parameters() if p.requires_grad and "token_embedding" not in n]
    optimizer = torch.optim.AdamW([{"params": unet_params, "lr": UNET_LR}, {"params": te_params, "lr": TE_LR},
                                   {"params": [emb], "lr": TOKEN_LR}], weight_decay=1e-2)
    trainable = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
    records = [json.loads(line) for line in (data / "metadata.jsonl").read_text().splitlines()]

    def load(rec):
        image = Image.open(data / rec["file_name"]).convert("RGB").resize((resolution, resolution))
        return torch.from_numpy(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1)

    cached = {}
    if cache:  # before the timer, as --cache_latents does; the VAE then leaves the device
        with torch.no_grad():
            for rec in records:
                pixels = load(rec)[None].to(device, dtype=weight_dtype)
                cached[rec["file_name"]] = vae.encode(pixels).latent_dist.parameters.float().cpu()[0]
        vae.to("cpu")
    unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    times = []
    for step in range(steps):
        start = time.perf_counter()
        chosen = [records[(step * batch + i) % len(records)] for i in range(batch)]
        input_ids = tokenizer([r["text"] for r in chosen], padding="max_length", truncation=True,
                              max_length=tokenizer.model_max_length, return_tensors="pt").input_ids.to(device)
        if cache:
            params = torch.stack([cached[r["file_name"]] for r in chosen]).to(device)
            latents = (DiagonalGaussianDistribution(params).sample() * vae.config.scaling_factor).to(weight_dtype)
        else:
            pixels = torch.stack([load(r) for r in chosen]).to(device, dtype=weight_dtype)
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
    return {"step_seconds": times, "trainable_params": trainable}


# --------------------------------------------------------------------------------------------
# Ours: the trainer itself, in this process
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _patched(module, name: str, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield original
    finally:
        setattr(module, name, original)


@contextlib.contextmanager
def _trainer_watch(loop, whole_table: bool, seen: dict):
    """Watch one trainer run: the parameters handed to the optimizer, the step times when the steps end
    (the export, reload check and previews after them are skipped); with ``whole_table`` the token rows
    train the examples' way (module docstring)."""
    import torch

    from storyboard.train.context import TrainResult
    from storyboard.train.tokens import find_trigger_embedding

    adapt, make_optimizer = loop.adapt_models, loop.make_optimizer

    def adapt_models(args, models, weight_dtype, device):
        adapt(args, models, weight_dtype, device)
        if whole_table:
            emb = find_trigger_embedding(models.text_encoder)
            emb.base.weight.data = emb.base.weight.data.float()
            emb.base.weight.requires_grad_(True)
            if weight_dtype != torch.float32:  # as in the baseline: the fp32 table's rows go on in the compute dtype
                emb.register_forward_hook(lambda module, inputs, out: out.to(weight_dtype))
            seen["table"], seen["orig"] = emb.base.weight, emb.base.weight.detach().clone()

    def watched_optimizer(args, trainables, device):
        optimizer = make_optimizer(args, trainables, device)
        seen["trainable_params"] = sum(p.numel() for group in optimizer.param_groups for p in group["params"])
        if whole_table:
            table, orig = seen["table"], seen["orig"]
            keep = torch.ones(table.shape[0], dtype=torch.bool, device=table.device)

            def restore(*_):
                with torch.no_grad():
                    table[keep] = orig[keep]

            optimizer.register_step_post_hook(restore)
        return optimizer

    def finish(ctx, out, step):
        seen["step_seconds"] = list(ctx.step_times)
        return TrainResult(out, step)

    with (_patched(loop, "adapt_models", adapt_models), _patched(loop, "make_optimizer", watched_optimizer),
          _patched(loop, "finish", finish)):
        yield


def ours(base: Path, data: Path, out: Path, batch: int, steps: int, precision: str, resolution: int,
         cache: bool = True, checkpointing: bool = False, whole_table: bool = False, compile: bool = False) -> dict:
    """``train_trigger02.py``'s run (``storyboard.train.run``) with the bench's flags; its step times."""
    from storyboard.train import loop
    from storyboard.train import run as train_run
    from storyboard.train.args import build_parser

    argv = ["--pretrained_model_name_or_path", str(base), "--train_data_dir", str(data), "--output_dir", str(out),
            "--resolution", str(resolution), "--train_batch_size", str(batch), "--max_train_steps", str(steps),
            "--rank", str(RANK), "--learning_rate", str(UNET_LR), "--text_encoder_lr", str(TE_LR),
            "--token_learning_rate", str(TOKEN_LR), "--mixed_precision", precision, "--allow_tf32",
            "--num_validation_images", "0", "--eval_loss_images", "0", "--checkpointing_steps", str(10**6),
            "--dataloader_num_workers", "0", "--new_tokens", ",".join(t for t, _ in TOKENS),
            "--report_to", "none"]  # like the baseline loop, which logs nothing (tensorboard is the default)
    shutil.rmtree(out, ignore_errors=True)  # a fresh output folder for every run
    argv += ["--cache_latents"] if cache else []
    argv += ["--gradient_checkpointing"] if checkpointing else []
    seen: dict = {}
    # accelerate compiles the models in prepare() when this is set (what `accelerate launch
    # --dynamo_backend inductor` sets).
    env = {"ACCELERATE_DYNAMO_BACKEND": "inductor"} if compile else {}
    with _trainer_watch(loop, whole_table, seen), _environment(env):
        code = train_run(build_parser().parse_args(argv))
    if code != 0 or "step_seconds" not in seen:
        raise RuntimeError(f"the trainer stopped with exit code {code}")
    if whole_table and not bool((seen["table"].detach() == seen["orig"]).all()):
        raise RuntimeError("whole-table run: the base rows were not restored")
    return {"step_seconds": seen["step_seconds"], "trainable_params": seen["trainable_params"]}


@contextlib.contextmanager
def _environment(values: dict):
    before = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------------------------
# The child: every run of the plan, one after the other
# --------------------------------------------------------------------------------------------
def run_one(run: dict, plan: dict) -> dict:
    import torch

    from storyboard.train.loop import reset_accelerate_state

    label, side, options = CONFIGS[run["config"]]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    base, data, work = Path(plan["base"]), Path(plan["data"]), Path(plan["work"])
    _reset_tf32()
    meter = RunMeter(device)
    common = (run["batch"], plan["steps"], plan["precision"], plan["resolution"])
    try:
        if side == "baseline":
            result = baseline(base, data, *common, **options)
        else:
            result = ours(base, data, work / "out", *common, **options)
    finally:
        reset_accelerate_state()
    result.update(images_per_s=_rate(result["step_seconds"], run["batch"], plan["warmup"]),
                  peak_memory_bytes=meter.peak(), memory_at_start_bytes=meter.at_start)
    return result


def child(plan_path: Path) -> None:
    """Run the plan's runs in order; ``START``/``RESULT`` lines on stdout for the parent."""
    plan = json.loads(plan_path.read_text())
    for run in plan["runs"]:
        print("START " + json.dumps(run), flush=True)
        try:
            result = run_one(run, plan)
        except Exception as exc:  # an out-of-memory error, say: the other runs still run
            result = {"error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc) else ''}"}
        print("RESULT " + json.dumps({**run, **result}), flush=True)
        gc.collect()


def run_children(plan: dict, scratch: Path, on_result) -> None:
    """The plan's runs in child processes: one child, and a new one for the rest if a child dies."""
    remaining = list(plan["runs"])
    while remaining:
        plan_path = scratch / "plan.json"
        plan_path.write_text(json.dumps({**plan, "runs": remaining}))
        proc = subprocess.Popen([sys.executable, __file__, "--child", str(plan_path)], stdout=subprocess.PIPE,
                                text=True, bufsize=1)
        in_flight = None
        for line in proc.stdout:
            if line.startswith("START "):
                in_flight = json.loads(line[6:])
            elif line.startswith("RESULT "):
                result = json.loads(line[7:])
                remaining = [r for r in remaining if r != {k: result[k] for k in r}]
                in_flight = None
                on_result(result)
        code = proc.wait()
        if in_flight is not None:  # the child died inside a run: record it, go on with the rest
            remaining = [r for r in remaining if r != in_flight]
            on_result({**in_flight, "error": f"the child process died (exit code {code})"})
        elif code != 0 and remaining:
            raise RuntimeError(f"bench child failed (exit code {code}) before its first run")


# --------------------------------------------------------------------------------------------
# Plan, table, JSON
# --------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "storyboard_bench_train",
                        help="where the random SD1.5 folder and the data are kept between runs")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                        help="default: 1 on CPU, 4 on GPU, 2 with --tiny")
    parser.add_argument("--steps", type=int, default=None,
                        help="steps per run (default: 3 on CPU and with --tiny, 12 on GPU)")
    parser.add_argument("--warmup", type=int, default=None,
                        help="first steps of a run not timed (default: 1; 2 on GPU)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration; the best counts "
                        "(default %(default)s)")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        help="rows to measure (default: " + " ".join(DEFAULT_CONFIGS) + ", plus ours+gc on GPU "
                             "and with --tiny, plus ours+compile with --compile)")
    parser.add_argument("--precision", default=None, choices=PRECISIONS,
                        help="default: bf16 on GPU (fp16 without bf16), no on CPU; bf16 also runs on CPU")
    parser.add_argument("--tiny", action="store_true",
                        help="smoke run: storyboard.devkit.tiny's toy model at 64 px, every configuration (seconds)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for the JSON (default %(default)s)")
    parser.add_argument("--json", type=Path, default=None,
                        help="the JSON file itself (default: bench_train-[tiny-]{cpu,gpu}-DATE.json under --results)")
    parser.add_argument("--compile", action="store_true",
                        help="also ours under torch.compile (accelerate's dynamo backend 'inductor'); each such run "
                             "first pays the compilation (minutes for SD1.5)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def plan(args, gpu: bool) -> dict:
    """What this run measures: model, size, batches, steps, precision, configurations, and the runs in
    their alternating order."""
    import torch

    native_bf16 = gpu and torch.cuda.is_bf16_supported(including_emulation=False)  # not emulated (pre-Ampere)
    precision = args.precision or (("bf16" if native_bf16 else "fp16") if gpu else "no")
    if precision == "fp16" and not gpu:
        # accelerate has no fp16 autocast on the CPU: the baseline's fp16 UNet would meet fp32 inputs.
        print("bench_train.py: error: --precision fp16 needs a CUDA GPU; use bf16 or no on the CPU", file=sys.stderr)
        raise SystemExit(2)
    steps = args.steps or (12 if gpu and not args.tiny else 3)
    warmup = args.warmup if args.warmup is not None else (2 if gpu and not args.tiny else 1)
    if steps <= warmup or args.repeats < 1:
        print(f"bench_train.py: error: --steps {steps} leaves no timed step after --warmup {warmup} "
              f"(or --repeats < 1)", file=sys.stderr)
        raise SystemExit(2)
    configs = list(args.configs or DEFAULT_CONFIGS)
    if args.configs is None and (gpu or args.tiny):
        configs.append("ours+gc")
    if args.compile and "ours+compile" not in configs:
        configs.append("ours+compile")
    configs.sort(key=list(CONFIGS).index)
    batches = args.batch_sizes or ([2] if args.tiny else [4] if gpu else [1])
    runs = []
    for repeat in range(args.repeats):
        for batch in batches:
            order = configs if repeat % 2 == 0 else configs[::-1]
            runs += [{"repeat": repeat, "batch": batch, "config": name} for name in order]
    return {"precision": precision, "configs": configs, "batches": batches, "steps": steps, "warmup": warmup,
            "repeats": args.repeats, "resolution": TINY_RESOLUTION if args.tiny else RESOLUTION, "runs": runs}


def best_rows(configs: list[str], batches: list[int], runs: list[dict], precision: str) -> tuple[list, list]:
    """Per (batch, configuration): the best images/s of its runs, its speed-up over the baseline's best,
    the peak memory (the largest of its runs), trainable parameters."""
    rows, results = [], []
    for batch in batches:
        best = {}
        for name in configs:
            done = [r for r in runs if r["config"] == name and r["batch"] == batch and "error" not in r]
            if done:
                best[name] = max(done, key=lambda r: r["images_per_s"])
        for name in configs:
            done = [r for r in runs if r["config"] == name and r["batch"] == batch]
            if not done:
                continue
            label = CONFIGS[name][0]
            errors = [r["error"] for r in done if "error" in r]
            if name not in best:
                rows.append((label, batch, precision, "failed", "", "", "", "", errors[0][:60]))
                results.append({"config": name, "label": label, "batch": batch, "errors": errors})
                continue
            r = best[name]
            base = best.get("baseline")
            speedup = r["images_per_s"] / base["images_per_s"] if base else None
            peak = max(x["peak_memory_bytes"] for x in done if "error" not in x)
            every = ", ".join(f"{x['images_per_s']:.3f}" for x in done if "error" not in x)
            rows.append((label, batch, precision, f"{r['images_per_s']:.3f}", every,
                         f"{speedup:.2f}x" if speedup else "", f"{peak / 2**30:.2f}",
                         f"{r['trainable_params'] / 1e6:.2f} M", "; ".join(e[:60] for e in errors)))
            results.append({"config": name, "label": label, "batch": batch, "precision": precision,
                            "images_per_s": r["images_per_s"], "runs_images_per_s": every,
                            "speedup_vs_baseline": speedup, "peak_memory_bytes": peak,
                            "trainable_params": r["trainable_params"], "errors": errors})
    return rows, results


TABLE_HEADER = ("configuration", "batch", "precision", "images/s (best)", "each run", "vs baseline", "peak GiB",
                "trainable", "errors")


def write_json(path: Path, report: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(report, indent=2) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        child(args.child)
        return 0

    import torch

    gpu = torch.cuda.is_available()
    the_plan = plan(args, gpu)
    cpu = platform.processor() or platform.machine()
    device = torch.cuda.get_device_name(0) if gpu else f"CPU ({os.cpu_count()} cores, {cpu})"
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = "storyboard.devkit.tiny toy model" if args.tiny else "SD1.5 architecture (random weights)"
    print(f"building / reusing the {model} folder under {args.work} ...", file=sys.stderr)
    base = build_tiny_sd(args.work / "tiny_sd") if args.tiny else build_random_sd15(args.work / "sd15_random")
    data = build_data(args.work / f"Dataset_fin-{the_plan['resolution']}px", resolution=the_plan["resolution"])
    stamp = time.strftime("%Y-%m-%d")
    args.results.mkdir(parents=True, exist_ok=True)
    # A smoke run never overwrites the day's real figures.
    name = f"bench_train-{'tiny-' if args.tiny else ''}{'gpu' if gpu else 'cpu'}-{stamp}.json"
    path = args.json or args.results / name
    path.parent.mkdir(parents=True, exist_ok=True)
    memory = ("GPU max_memory_allocated during the run" if gpu else
              "peak resident memory of the process during the run (libraries included)")
    report = {"device": device, "date": stamp, "model": model, "tiny": args.tiny, "resolution": the_plan["resolution"],
              "steps": the_plan["steps"], "warmup": the_plan["warmup"], "repeats": the_plan["repeats"],
              "precision": the_plan["precision"], "peak_memory": memory, "complete": False, "runs": [],
              "results": [], "table": ""}
    write_json(path, report)

    def on_result(result: dict) -> None:
        # Each figure as soon as it exists: a run cut short (a GPU lease's time limit) keeps them.
        report["runs"].append(result)
        write_json(path, report)
        what = (f"{result['images_per_s']:.3f} images/s, peak {result['peak_memory_bytes'] / 2**30:.2f} GiB"
                if "error" not in result else f"FAILED: {result['error']}")
        print(f"  repeat {result['repeat'] + 1}, batch {result['batch']}, {CONFIGS[result['config']][0]}: {what}",
              file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        run_children({**the_plan, "base": str(base), "data": str(data), "work": str(args.work)}, Path(scratch),
                     on_result)
    rows, results = best_rows(the_plan["configs"], the_plan["batches"], report["runs"], the_plan["precision"])
    table = format_table(rows, header=TABLE_HEADER)
    print(f"\nTraining, {model}, {the_plan['resolution']} px, {the_plan['steps']} steps "
          f"({the_plan['warmup']} untimed), best of {the_plan['repeats']} alternating runs, {device}, {stamp}")
    print(table)
    print(f"peak memory: {memory}")
    report.update(results=results, table=table, complete=True, seconds=round(time.time() - started, 1))
    write_json(path, report)
    print(f"written {path}")
    return 1 if any(r.get("errors") for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
