"""The training loop: trigger tokens + LoRA on a Stable Diffusion 1.x/2.x model.

``train(args)`` reads like a diffusers training example, in phases:

  0. check   every input (flags, base folder, data set, tokens) before anything heavy is loaded
  1. load    tokenizer + tokens, text encoder, VAE, UNet, noise scheduler  (``models``)
  2. adapt   trigger rows (``tokens``), LoRA through peft, dtypes, memory savers  (``models``)
  3. prepare data (optionally cached latents), optimizer, schedule, resume, ``accelerator.prepare``
  4. train   micro-batches -> loss (``step``) -> backward -> clip -> step, checkpoints and previews on the way
  5. save    export every format, reload each through plain diffusers, previews, manifest  (``save``)

What differs from the examples, and why:
* The token rows are a separate small parameter (``TriggerEmbedding``): the base rows cannot move.
* All randomness is a function of ``(seed, micro-batch, process)`` (noise, timesteps, dropout, data
  order, augmentations), so a resumed run continues bit for bit (see ``data`` and ``checkpoints``).
* Steps, epochs and the learning-rate schedule are counted once for all processes: the schedule is
  stepped here once per optimizer step, not handed to ``accelerator.prepare`` (which would step it
  once per process).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState, PartialState
from accelerate.utils import ProjectConfiguration
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from storyboard.artifacts.base_model import base_fingerprint
from storyboard.artifacts.layout import embedding_file
from storyboard.core.cli import UserError, progress
from storyboard.core.runtime import quiet_libraries
from storyboard.train.args import check_precision, output_dir
from storyboard.train.checkpoint_folders import RESUME_MUST_MATCH, check_resume_compatible, list_checkpoints
from storyboard.train.checkpoints import load_checkpoint, restore_rng_states, rng_states, save_checkpoint
from storyboard.train.context import RunContext, TrainResult
from storyboard.train.data import (
    CaptionPolicy,
    ImagePolicy,
    StepBatchSampler,
    TriggerDataset,
    cache_latents,
    make_loader,
)
from storyboard.train.inputs import CheckedInputs, DataScan, check_inputs
from storyboard.train.models import Denoiser, Models, adapt_models, load_models, make_optimizer, named_trainables
from storyboard.train.preview import previews
from storyboard.train.save import export_weights, finish, peak_memory
from storyboard.train.step import fixed_noise_loss, micro_batch_loss
from storyboard.train.token_specs import TriggerSpec

logger = logging.getLogger("storyboard.train")


# --------------------------------------------------------------------------------------------
# Phase 0/1 helpers
# --------------------------------------------------------------------------------------------
def make_accelerator(args, out: Path, precision: str) -> Accelerator:
    trackers = None if args.report_to == "none" else args.report_to
    try:
        # cpu=True without a GPU: otherwise processes started by `accelerate launch --multi_gpu` on a
        # CPU machine would each train alone instead of forming one gloo group.
        accelerator = Accelerator(mixed_precision=precision, log_with=trackers, cpu=not torch.cuda.is_available(),
                                  project_config=ProjectConfiguration(project_dir=str(out),
                                                                      logging_dir=str(out / args.logging_dir)))
    except ValueError as exc:
        raise UserError(f"--mixed_precision {precision}: {exc}") from None
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world != accelerator.num_processes:
        raise UserError(f"{world} processes were started but accelerate joined {accelerator.num_processes}; "
                        "check the accelerate configuration (`accelerate env`)")
    return accelerator


def tracker_init_kwargs(args, out: Path) -> dict:
    """Every tracker writes under ``--output_dir/--logging_dir``: tensorboard through accelerate's
    ``logging_dir``, wandb (its offline runs, its media) through ``dir``, unless ``WANDB_DIR`` says
    where."""
    if args.report_to in ("wandb", "all") and not os.environ.get("WANDB_DIR"):
        (out / args.logging_dir).mkdir(parents=True, exist_ok=True)
        return {"wandb": {"dir": str(out / args.logging_dir)}}
    return {}


def quiet_logs(main: bool) -> None:
    """The libraries' bars off and their notices from warnings up (errors only on the other
    processes); our own log lines plain, on stderr."""
    quiet_libraries(logging.WARNING if main else logging.ERROR)
    logging.basicConfig(format="%(message)s", level=logging.INFO if main else logging.ERROR, stream=sys.stderr)


def data_fingerprint(items) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.path.name}\t{item.caption}\n".encode())
    return h.hexdigest()[:16]


def resume_config(args, specs, precision, base_fp, data_fp, num_processes) -> dict:
    cfg = {k: getattr(args, k) for k in RESUME_MUST_MATCH if hasattr(args, k)}
    cfg.update(new_tokens_resolved=[s.token for s in specs], initializers_resolved=[s.initializer for s in specs],
               mixed_precision_resolved=precision, base_fingerprint=base_fp, data_fingerprint=data_fp,
               num_processes=num_processes)
    return json.loads(json.dumps(cfg, default=str))


# --------------------------------------------------------------------------------------------
# Phase 2/3 helpers
# --------------------------------------------------------------------------------------------
def make_dataset(args, scan: DataScan, specs: list[TriggerSpec], models: Models, accelerator: Accelerator,
                 weight_dtype: torch.dtype) -> TriggerDataset:
    """The data set with its augmentations; with ``--cache_latents`` every image goes through the VAE
    once here, and the VAE leaves the GPU."""
    images = ImagePolicy(args.resolution, args.center_crop, args.random_flip)
    captions = CaptionPolicy(tuple(s.token for s in specs), args.shuffle_caption, args.keep_tokens,
                             args.caption_tag_dropout_rate, args.caption_dropout_rate)
    latents = None
    if args.cache_latents:
        wrap = (lambda xs: progress(xs, "caching latents", unit="batch")) if accelerator.is_main_process else None
        latents = cache_latents(scan.items, images, models.vae, accelerator.device, weight_dtype,
                                batch_size=args.train_batch_size, progress=wrap)
        models.vae.to("cpu")  # only its config is needed from here on
    return TriggerDataset(scan.items, models.tokenizer, captions, images, args.seed, latents)


def count_steps(args, num_items: int, num_processes: int) -> tuple[int, int]:
    """(images per optimizer step over all processes, optimizer steps to train)."""
    global_batch = args.train_batch_size * num_processes * args.gradient_accumulation_steps
    micro_per_epoch = math.ceil(num_items / (args.train_batch_size * num_processes))
    steps_per_epoch = math.ceil(micro_per_epoch / args.gradient_accumulation_steps)
    return global_batch, args.max_train_steps or args.num_train_epochs * steps_per_epoch


def resume(ctx: RunContext, resume_from: Path | None, optimizer, lr_scheduler, trainables: dict,
           res_cfg: dict) -> tuple[int, dict | None]:
    """Before ``accelerator.prepare``: the trained tensors, optimizer and schedule of ``resume_from``
    (when given). Returns the step to start from and the checkpoint's blob (its grad scaler and RNG
    states are restored after ``prepare``)."""
    args, main, out = ctx.args, ctx.accelerator.is_main_process, output_dir(ctx.args)
    if resume_from is None:
        if args.resume_from_checkpoint and main:
            logger.info(f"no checkpoint in {out}; starting a new run")
        elif main and list_checkpoints(out):
            logger.warning(f"{out} holds checkpoints of an earlier run; this run's will join them "
                           "(--resume_from_checkpoint latest continues that run instead)")
        return 0, None
    saved, tensors, blob = load_checkpoint(resume_from)
    check_resume_compatible(saved.state, res_cfg, resume_from)
    missing = sorted(set(trainables) - set(tensors))
    if missing:
        raise UserError(f"checkpoint {resume_from} lacks {len(missing)} trained tensors (e.g. {missing[0]})")
    with torch.no_grad():
        for name, p in trainables.items():
            p.copy_(tensors[name].to(p.device, p.dtype))
    optimizer.load_state_dict(blob["optimizer"])
    lr_scheduler.load_state_dict(blob["lr_scheduler"])
    ctx.loss_history = list(saved.state.get("loss_history", []))
    ctx.eval_before = saved.state.get("fixed_noise_loss_start")
    if main:
        logger.info(f"resuming from {resume_from} at step {saved.step}")
    return saved.step, blob


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def train(args: argparse.Namespace, checked: CheckedInputs | None = None) -> TrainResult:
    """The phases of the module docstring, in order; the summary rows come back on the main process."""
    # ---- 0. check everything that needs no model ---------------------------------------------
    checked = checked or check_inputs(args)
    base, scan, specs, out = checked.base, checked.scan, checked.specs, checked.output_dir

    # ---- 1. accelerate + models, 2. adapt them -----------------------------------------------
    precision = check_precision(args.mixed_precision)
    accelerator = make_accelerator(args, out, precision)
    main = accelerator.is_main_process
    quiet_logs(main)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    models = load_models(args, base.model, specs, weight_dtype)
    adapt_models(args, models, weight_dtype, accelerator.device)
    if main:
        logger.info(f"base {base.model.describe()}; {len(scan.items)} images "
                    f"({len(scan.bad)} bad records skipped); tokens: "
                    + ", ".join(f"{s.token}<-{s.initializer!r}" for s in specs))

    # ---- 3. data, optimizer, schedule, resume, prepare ---------------------------------------
    dataset = make_dataset(args, scan, specs, models, accelerator, weight_dtype)
    global_batch, max_steps = count_steps(args, len(dataset), accelerator.num_processes)
    trainables = named_trainables(models)
    optimizer = make_optimizer(args, trainables, accelerator.device)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=max_steps, num_cycles=args.lr_num_cycles, power=args.lr_power)
    base_fp = base_fingerprint(base.model)
    res_cfg = resume_config(args, specs, precision, base_fp, data_fingerprint(scan.items), accelerator.num_processes)
    tokens_info = [dict(t, embedding_file=embedding_file(t["token"])) for t in models.added.as_dict()]
    ctx = RunContext(args, accelerator, models, Denoiser(models.unet, models.text_encoder), weight_dtype, precision,
                     base, base_fp, "sd_v2" if base.cross_attention_dim == 1024 else "sd_v1", tokens_info,
                     len(dataset), global_batch, max_steps)
    start_step, blob = resume(ctx, checked.resume_from, optimizer, lr_scheduler, trainables, res_cfg)
    ctx.model, optimizer = accelerator.prepare(ctx.model, optimizer)
    if blob is not None:
        if blob.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(blob["scaler"])
        restore_rng_states(blob["rng"])
    if args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name,
                                  config={k: v for k, v in res_cfg.items() if isinstance(v, (int, float, str, bool))},
                                  init_kwargs=tracker_init_kwargs(args, out))
    if start_step == 0 and main:
        ctx.eval_before = fixed_noise_loss(ctx, dataset, args.eval_loss_images)

    # ---- 4. train ----------------------------------------------------------------------------
    exit_code = run_steps(ctx, dataset, optimizer, lr_scheduler, trainables, start_step, res_cfg)
    if exit_code:
        accelerator.end_training()
        return TrainResult(out, ctx.args.debug_stop_after_step or 0, exit_code)

    # ---- 5. save, reload-check, preview ------------------------------------------------------
    result = TrainResult(out, max_steps)
    if main:
        ctx.eval_after = fixed_noise_loss(ctx, dataset, args.eval_loss_images)
        result = finish(ctx, out, max_steps)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def save_training_checkpoint(ctx: RunContext, optimizer, lr_scheduler, trainables, step: int,
                             res_cfg: dict) -> Path | None:
    acc, args = ctx.accelerator, ctx.args
    path = None
    if acc.is_main_process:
        blob = {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None, "rng": rng_states()}
        state = {"global_step": step, "loss_history": ctx.loss_history, "resume_config": res_cfg,
                 "fixed_noise_loss_start": ctx.eval_before}
        path = save_checkpoint(output_dir(args), step, trainables, blob, state,
                               export=lambda d: export_weights(ctx, d, step, final=False),
                               total_limit=args.checkpoints_total_limit)
        logger.info(f"saved {path}")
    acc.wait_for_everyone()
    return path


def run_steps(ctx: RunContext, dataset: TriggerDataset, optimizer, lr_scheduler, trainables, start_step: int,
              res_cfg: dict) -> int:
    """Optimizer steps ``start_step .. max_steps-1``; returns a non-zero code when stopped early."""
    args, acc = ctx.args, ctx.accelerator
    accum = args.gradient_accumulation_steps
    sampler = StepBatchSampler(len(dataset), args.train_batch_size, args.seed, start_step * accum,
                               ctx.max_steps * accum, acc.num_processes, acc.process_index)
    loader = make_loader(dataset, sampler, args.dataloader_num_workers, pin_memory=acc.device.type == "cuda")
    batches = iter(loader)
    token_param = [p for n, p in trainables.items() if n.endswith("token_embedding.trigger")]
    clip_params = list(trainables.values())
    bar = tqdm(total=ctx.max_steps, initial=start_step, desc="training", unit="step", dynamic_ncols=True,
               disable=not acc.is_main_process or bool(os.environ.get("STORYBOARD_NO_PROGRESS")))
    ctx.model.train()
    for step in range(start_step, ctx.max_steps):
        started = time.perf_counter()
        step_loss = torch.zeros((), device=acc.device)
        for j in range(accum):
            m = step * accum + j
            batch = next(batches)
            sync = j == accum - 1
            with contextlib.nullcontext() if sync else acc.no_sync(ctx.model):
                loss = micro_batch_loss(ctx, batch, m)
                if args.debug_nan_at_step is not None and step + 1 == args.debug_nan_at_step:
                    loss = loss * float("nan")
                acc.backward(loss / accum)
            step_loss += loss.detach() / accum
        mean_loss = acc.reduce(step_loss, reduction="mean").item()
        if not math.isfinite(mean_loss):
            found = list_checkpoints(output_dir(args))
            last = f"the last good checkpoint is {found[-1][1]}" if found else "no checkpoint was saved yet"
            raise UserError(f"the loss became {mean_loss} at step {step + 1}; stopped without saving ({last}); "
                            "lower the learning rates or use --mixed_precision bf16/no, then "
                            "--resume_from_checkpoint latest")
        if args.max_grad_norm > 0:
            acc.clip_grad_norm_(clip_params, args.max_grad_norm)
        if args.token_training_steps is not None and step >= args.token_training_steps:
            for p in token_param:
                p.grad = None  # pivotal tuning: the token rows stay as they are from here on
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        global_step = step + 1
        ctx.loss_history.append(round(mean_loss, 6))
        if acc.device.type == "cuda":
            torch.cuda.synchronize()
        ctx.step_times.append(time.perf_counter() - started)
        lrs = {f"lr/{g.get('name', i)}": g["lr"] for i, g in enumerate(optimizer.param_groups)}
        bar.update(1)
        bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr_scheduler.get_last_lr()[0]:.2e}")
        if args.report_to != "none":
            acc.log({"loss": mean_loss, **lrs}, step=global_step)

        saved = None
        if global_step % args.checkpointing_steps == 0 and global_step < ctx.max_steps:
            saved = save_training_checkpoint(ctx, optimizer, lr_scheduler, trainables, global_step, res_cfg)
        if (args.validation_steps and global_step % args.validation_steps == 0 and global_step < ctx.max_steps
                and args.num_validation_images > 0):
            run_previews(ctx, global_step, saved)
        if args.debug_stop_after_step is not None and global_step >= args.debug_stop_after_step:
            bar.close()
            if acc.is_main_process:
                print(f"stopped after step {global_step} (--debug_stop_after_step)", file=sys.stderr)
            return 3
    bar.close()
    ctx.train_peak = peak_memory(acc.device)
    return 0


def run_previews(ctx: RunContext, step: int, weights_dir: Path | None) -> None:
    """Preview images from exported files (a checkpoint's, or a temporary export)."""
    acc, args = ctx.accelerator, ctx.args
    if acc.is_main_process:
        tmp = None
        if weights_dir is None:
            tmp = output_dir(args) / f".preview-{os.getpid()}"
            export_weights(ctx, tmp, step, final=False)
            weights_dir = tmp
        try:
            previews(ctx, weights_dir, output_dir(args) / "validation" / f"step-{step:06d}", step)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
    acc.wait_for_everyone()


def run(args: argparse.Namespace, checked: CheckedInputs | None = None) -> int:
    """Train and print the summary (main process); the exit code for the front door.

    Under several processes every process meets the same bad input; only the main one prints it."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    try:
        result = train(args, checked)
    except UserError:
        if rank != 0:
            raise SystemExit(2) from None
        raise
    finally:
        reset_accelerate_state()
    if result.rows:
        print(result.summary_table())
    if result.exit_code == 1:
        print("error: the reload check failed; see reload_check in trigger_manifest.json", file=sys.stderr)
    return result.exit_code


def reset_accelerate_state() -> None:
    """Forget accelerate's process-wide state after a single-process run, so that another run in
    the same Python process (tests, notebooks) can pick other settings. Distributed runs keep it."""
    if PartialState._shared_state and PartialState().num_processes > 1:
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
