"""The training loop: trigger tokens + LoRA on a Stable Diffusion 1.x/2.x model.

``train(args)`` reads like a diffusers training example, in phases:

  0. check   every input (flags, base folder, data set, tokens) before anything heavy is loaded
  1. load    tokenizer + tokens, text encoder, VAE, UNet, noise scheduler
  2. adapt   trigger rows (storyboard.train.tokens), LoRA through peft, dtypes, memory savers
  3. prepare data (optionally cached latents), optimizer, schedule, resume, ``accelerator.prepare``
  4. train   micro-batches -> loss -> backward -> clip -> step, checkpoints and previews on the way
  5. save    export every format, reload each through plain diffusers, previews, manifest

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
import copy
import hashlib
import json
import logging
import math
import os
import resource
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from storyboard.artifacts import export
from storyboard.core.cli import UserError, format_table
from storyboard.train import checkpoints as ckpt
from storyboard.train.args import check_precision, output_dir
from storyboard.train.data import (
    CaptionPolicy,
    ImagePolicy,
    StepBatchSampler,
    TriggerDataset,
    cache_latents,
    derive_seed,
    epochs_seen,
    make_loader,
)
from storyboard.train.inputs import CheckedInputs, check_inputs
from storyboard.train.preview import default_prompts, load_trained_pipeline, log_previews, make_previews
from storyboard.train.tokens import (
    AddedTokens,
    add_trigger_tokens,
    check_new_tokens,
    install_trigger_embedding,
    merge_trigger_embedding,
    trigger_rows,
)

logger = logging.getLogger("storyboard.train")


@dataclass
class TrainResult:
    output_dir: Path
    global_step: int
    exit_code: int = 0
    rows: list[tuple[str, object]] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    def summary_table(self) -> str:
        return f"training: {self.output_dir}\n" + format_table(self.rows, header=("", "value"))


class Denoiser(nn.Module):
    """Text encoder + UNet as one module, so one DDP wrapper synchronises both."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, input_ids, noisy_latents, timesteps):
        hidden = self.text_encoder(input_ids, return_dict=False)[0]
        return self.unet(noisy_latents, timesteps, hidden, return_dict=False)[0]


# --------------------------------------------------------------------------------------------
# Phase 0/1 helpers
# --------------------------------------------------------------------------------------------
def make_accelerator(args, out: Path, precision: str):
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

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


def quiet_libraries(main: bool) -> None:
    import diffusers
    import transformers

    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    level = logging.WARNING if main else logging.ERROR
    transformers.utils.logging.set_verbosity(level)
    diffusers.utils.logging.set_verbosity(level)
    logging.basicConfig(format="%(message)s", level=logging.INFO if main else logging.ERROR, stream=sys.stderr)


def data_fingerprint(items) -> str:
    h = hashlib.sha256()
    for item in items:
        h.update(f"{item.path.name}\t{item.caption}\n".encode())
    return h.hexdigest()[:16]


# --------------------------------------------------------------------------------------------
# Phase 1/2: models
# --------------------------------------------------------------------------------------------
@dataclass
class Models:
    tokenizer: object
    text_encoder: object
    vae: object
    unet: object
    noise_scheduler: object
    added: AddedTokens
    unet_lora_config: object = None
    te_lora_config: object = None


def _load(what: str, fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise UserError(f"cannot load the {what} of the base model: {first}") from None


def load_models(args, base: Path, specs, weight_dtype: torch.dtype = torch.float32) -> Models:
    """The base's parts: UNet and VAE straight in the compute dtype (whatever dtype the folder was
    saved in), the text encoder in fp32 (its new rows start from fp32 means; frozen parts are cast
    later), the tokenizer with the trigger tokens added."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = _load("tokenizer", CLIPTokenizer.from_pretrained, base, subfolder="tokenizer")
    check_new_tokens(tokenizer, specs, str(base))  # fail fast, before the big weights load
    text_encoder = _load("text encoder", CLIPTextModel.from_pretrained, base, subfolder="text_encoder",
                         variant=args.variant, dtype=torch.float32)
    vae = _load("VAE", AutoencoderKL.from_pretrained, base, subfolder="vae", variant=args.variant, dtype=weight_dtype)
    unet = _load("UNet", UNet2DConditionModel.from_pretrained, base, subfolder="unet", variant=args.variant,
                 dtype=weight_dtype)
    noise_scheduler = _load("scheduler", DDPMScheduler.from_pretrained, base, subfolder="scheduler")
    if args.prediction_type:
        noise_scheduler.register_to_config(prediction_type=args.prediction_type)
    added = add_trigger_tokens(tokenizer, text_encoder, specs, str(base))
    return Models(tokenizer, text_encoder, vae, unet, noise_scheduler, added)


def adapt_models(args, models: Models, weight_dtype: torch.dtype, device) -> None:
    """Freeze, add the trainable parts (token rows, LoRA), cast frozen weights to ``weight_dtype``."""
    from peft import LoraConfig, inject_adapter_in_model

    unet, te, vae = models.unet, models.text_encoder, models.vae
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    te.requires_grad_(args.text_encoder_mode == "full")

    torch.manual_seed(derive_seed(args.seed, "lora-init"))
    targets = export.UNET_ATTENTION_TARGETS + (export.UNET_FF_TARGETS if args.lora_include_ff else [])
    models.unet_lora_config = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                         init_lora_weights="gaussian", target_modules=targets)
    unet.add_adapter(models.unet_lora_config)
    if args.text_encoder_mode == "lora":
        models.te_lora_config = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                           init_lora_weights="gaussian", target_modules=export.TEXT_ENCODER_TARGETS)
        inject_adapter_in_model(models.te_lora_config, te)
    # After peft, which marks everything but its own layers as frozen: base rows frozen, new rows trainable.
    trigger = install_trigger_embedding(te, models.added.base_vocab_size)
    assert trigger.trigger.requires_grad and not trigger.base.weight.requires_grad

    # Frozen weights in the compute dtype, trainable ones in fp32 (no "unscale FP16 gradients").
    vae.to(device)
    unet.to(device)  # both loaded in weight_dtype already (load_models)
    te.to(device, dtype=weight_dtype if args.text_encoder_mode != "full" else torch.float32)
    for module in (unet, te):
        for p in module.parameters():
            if p.requires_grad:
                p.data = p.data.float()
    trigger.trigger.data = models.added.initial_rows.to(device).clone()  # fp32 means, not a half-precision copy

    if args.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if args.text_encoder_mode != "frozen":
            te.gradient_checkpointing_enable()
    if args.enable_xformers_memory_efficient_attention:
        enable_xformers(unet)


def enable_xformers(unet) -> None:
    """xformers attention, or one line saying why not. Installed is not enough: diffusers refuses it
    without CUDA, and a wheel built for another torch fails its first kernel call."""
    try:
        unet.enable_xformers_memory_efficient_attention()
    except (ImportError, ValueError, RuntimeError, NotImplementedError) as exc:
        first = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0][:300]
        raise UserError(f"--enable_xformers_memory_efficient_attention: xformers does not work here ({first}); "
                        "drop the flag (PyTorch's SDPA attention is the default)") from None


def named_trainables(models: Models) -> dict[str, nn.Parameter]:
    out = {}
    for prefix, module in (("unet", models.unet), ("text_encoder", models.text_encoder)):
        for name, p in module.named_parameters():
            if p.requires_grad:
                out[f"{prefix}.{name}"] = p
    return out


def make_optimizer(args, trainables: dict[str, nn.Parameter], device):
    """Three groups, each with its own learning rate: UNet LoRA, text encoder (LoRA or full), token rows."""
    groups = {"unet": [], "text_encoder": [], "tokens": []}
    for name, p in trainables.items():
        if name.endswith("token_embedding.trigger"):
            groups["tokens"].append(p)
        elif name.startswith("unet."):
            groups["unet"].append(p)
        else:
            groups["text_encoder"].append(p)
    settings = {"unet": (args.learning_rate, args.adam_weight_decay),
                "text_encoder": (args.text_encoder_lr, args.adam_weight_decay),
                "tokens": (args.token_learning_rate, args.token_weight_decay)}
    param_groups = [{"params": ps, "lr": settings[g][0], "weight_decay": settings[g][1], "name": g}
                    for g, ps in groups.items() if ps]
    kwargs = {"betas": (args.adam_beta1, args.adam_beta2), "eps": args.adam_epsilon}
    if args.use_8bit_adam:
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(param_groups, **kwargs)
    if torch.device(device).type == "cuda":
        kwargs["fused"] = True  # one kernel for all parameters; same maths as the default
    return torch.optim.AdamW(param_groups, **kwargs)


# --------------------------------------------------------------------------------------------
# Phase 4: one micro-batch
# --------------------------------------------------------------------------------------------
def latents_of(batch, vae, generator, weight_dtype, device) -> torch.Tensor:
    from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

    if "latent_params" in batch:
        dist = DiagonalGaussianDistribution(batch["latent_params"].to(device))
    else:
        with torch.no_grad():
            dist = vae.encode(batch["pixel_values"].to(device, dtype=weight_dtype)).latent_dist
    latents = dist.sample(generator=generator).float()
    return latents * vae.config.scaling_factor


def denoising_loss(pred, target, timesteps, noise_scheduler, snr_gamma) -> torch.Tensor:
    loss = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
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


def micro_batch_loss(ctx, batch, m: int) -> torch.Tensor:
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
def fixed_noise_loss(ctx, dataset: TriggerDataset, count: int) -> float | None:
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
            total += F.mse_loss(pred.float(), target_for(scheduler, mean, noise, t).float()).item()
            n += 1
    model.train()
    return total / n


# --------------------------------------------------------------------------------------------
# Phase 5: saving
# --------------------------------------------------------------------------------------------
def export_weights(ctx, target: Path, step: int, final: bool) -> list[Path]:
    """Write every user-facing format of the current weights into ``target``; returns the files."""
    args, models = ctx.args, ctx.models
    unet = ctx.accelerator.unwrap_model(ctx.model).unet
    te = ctx.accelerator.unwrap_model(ctx.model).text_encoder
    target.mkdir(parents=True, exist_ok=True)
    unet_state = export.lora_state(unet)
    te_state = export.lora_state(te, prefix_text_model=True) if args.text_encoder_mode == "lora" else None
    rows = trigger_rows(te)
    files = [export.save_diffusers_lora(target, unet_state, te_state, export.lora_metadata(models.unet_lora_config),
                                        export.lora_metadata(models.te_lora_config) if te_state else None)]
    tokens = ctx.tokens_info
    comment = "trigger tokens: " + ", ".join(f"{t['token']} ({t['embedding_file']})" for t in tokens)
    files.append(export.save_webui_lora(target, unet_state, te_state, args.rank, args.lora_alpha,
                                        ctx.base_version, comment))
    files += export.save_embeddings(target, tokens, rows)
    if args.text_encoder_mode == "full":
        merged = merge_trigger_embedding(copy.deepcopy(te).float())
        export.save_full_text_encoder(target, merged, models.tokenizer)
        files += sorted(p for p in (target / "text_encoder").rglob("*") if p.is_file())
        del merged
    ctx.last_export = {"unet_state": unet_state, "te_state": te_state, "rows": rows}
    manifest = build_manifest(ctx, target, step, files, final)
    files.append(export.write_manifest(target, manifest))
    return files


def build_manifest(ctx, target: Path, step: int, files: list[Path], final: bool) -> dict:
    args = ctx.args
    hyper = {k: (str(v) if isinstance(v, Path) else v) for k, v in sorted(vars(args).items())
             if not k.startswith("debug_")}
    history = ctx.loss_history
    tail = history[-10:]
    return {
        "format": export.MANIFEST_FORMAT,
        "tokens": ctx.tokens_info,
        "text_encoder_mode": args.text_encoder_mode,
        "base_model": {"path": str(ctx.base.path), "fingerprint": ctx.base_fp, "pipeline": ctx.base.pipeline_class,
                       "version": ctx.base_version, "tokenizer_size": ctx.models.added.base_vocab_size,
                       "prediction_type": ctx.models.noise_scheduler.config.prediction_type},
        "tokenizer_size": len(ctx.models.tokenizer),
        "lora": {"rank": args.rank, "alpha": args.lora_alpha, "scale": args.lora_alpha / args.rank,
                 "dropout": args.lora_dropout, "unet_targets": sorted(ctx.models.unet_lora_config.target_modules),
                 "text_encoder_targets": sorted(ctx.models.te_lora_config.target_modules)
                 if ctx.models.te_lora_config else []},
        "files": {"diffusers_lora": export.DIFFUSERS_LORA, "webui_lora": export.WEBUI_LORA,
                  "embeddings": [t["embedding_file"] for t in ctx.tokens_info],
                  "text_encoder": "text_encoder" if args.text_encoder_mode == "full" else None,
                  "sha256": export.files_table(target, [f for f in files if f.suffix == ".safetensors"])},
        "training": {
            "global_step": step, "max_train_steps": ctx.max_steps, "final": final,
            "epochs": round(epochs_seen(step * args.gradient_accumulation_steps, args.train_batch_size,
                                        ctx.accelerator.num_processes, ctx.num_items), 4),
            "images_seen": step * ctx.global_batch, "num_images": ctx.num_items,
            "num_processes": ctx.accelerator.num_processes, "mixed_precision": ctx.precision,
            "first_loss": history[0] if history else None, "final_loss": history[-1] if history else None,
            "final_loss_mean10": sum(tail) / len(tail) if tail else None,
            "fixed_noise_loss_start": ctx.eval_before, "fixed_noise_loss_end": ctx.eval_after,
            "images_per_s": ctx.images_per_s(),
            "peak_memory_bytes": ctx.train_peak or peak_memory(ctx.accelerator.device),
            "device": str(ctx.accelerator.device), "distributed_type": str(ctx.accelerator.distributed_type),
        },
        "hyperparameters": hyper,
        "versions": export.library_versions(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def peak_memory(device) -> int:
    if torch.device(device).type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux: KiB -> bytes; whole process


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
@dataclass
class RunContext:
    args: argparse.Namespace
    accelerator: object
    models: Models
    model: object
    weight_dtype: torch.dtype
    precision: str
    base: object
    base_fp: str
    base_version: str
    tokens_info: list[dict]
    num_items: int
    global_batch: int
    max_steps: int
    loss_history: list[float] = field(default_factory=list)
    eval_before: float | None = None
    eval_after: float | None = None
    step_times: list[float] = field(default_factory=list)
    train_peak: int | None = None  # peak memory up to the last step (before saving and the reload check)
    last_export: dict = field(default_factory=dict)

    def images_per_s(self) -> float | None:
        times = self.step_times[1:] or self.step_times  # the first step includes warm-up
        return round(self.global_batch * len(times) / sum(times), 4) if times and sum(times) > 0 else None


def resume_config(args, specs, precision, base_fp, data_fp, num_processes) -> dict:
    cfg = {k: getattr(args, k) for k in ckpt.RESUME_MUST_MATCH if hasattr(args, k)}
    cfg.update(new_tokens_resolved=[s.token for s in specs], initializers_resolved=[s.initializer for s in specs],
               mixed_precision_resolved=precision, base_fingerprint=base_fp, data_fingerprint=data_fp,
               num_processes=num_processes)
    return json.loads(json.dumps(cfg, default=str))


def train(args: argparse.Namespace, checked: CheckedInputs | None = None) -> TrainResult:
    # ---- 0. check everything that needs no model ---------------------------------------------
    checked = checked or check_inputs(args)
    base, scan, specs, out, resume_from = checked.base, checked.scan, checked.specs, checked.output_dir, checked.resume_from

    # ---- 1. accelerate + models --------------------------------------------------------------
    precision = check_precision(args.mixed_precision)
    accelerator = make_accelerator(args, out, precision)
    main = accelerator.is_main_process
    quiet_libraries(main)
    if args.allow_tf32 and torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision, torch.float32)
    models = load_models(args, base.path, specs, weight_dtype)
    adapt_models(args, models, weight_dtype, accelerator.device)
    if main:
        logger.info(f"base {base.path} ({base.pipeline_class}, {base.prediction_type}); {len(scan.items)} images "
                    f"({len(scan.bad)} bad records skipped); tokens: "
                    + ", ".join(f"{s.token}<-{s.initializer!r}" for s in specs))

    # ---- 2. data -----------------------------------------------------------------------------
    images = ImagePolicy(args.resolution, args.center_crop, args.random_flip)
    captions = CaptionPolicy(tuple(s.token for s in specs), args.shuffle_caption, args.keep_tokens,
                             args.caption_tag_dropout_rate, args.caption_dropout_rate)
    latents = None
    if args.cache_latents:
        from storyboard.core.cli import progress

        wrap = (lambda xs: progress(xs, "caching latents", unit="batch")) if main else None
        latents = cache_latents(scan.items, images, models.vae, accelerator.device, weight_dtype,
                                batch_size=args.train_batch_size, progress=wrap)
        models.vae.to("cpu")  # only its config is needed from here on
    dataset = TriggerDataset(scan.items, models.tokenizer, captions, images, args.seed, latents)
    procs = accelerator.num_processes
    global_batch = args.train_batch_size * procs * args.gradient_accumulation_steps
    micro_per_epoch = math.ceil(len(dataset) / (args.train_batch_size * procs))
    steps_per_epoch = math.ceil(micro_per_epoch / args.gradient_accumulation_steps)
    max_steps = args.max_train_steps or args.num_train_epochs * steps_per_epoch

    # ---- 3. optimizer, schedule, resume, prepare ----------------------------------------------
    from diffusers.optimization import get_scheduler

    trainables = named_trainables(models)
    optimizer = make_optimizer(args, trainables, accelerator.device)
    lr_scheduler = get_scheduler(args.lr_scheduler, optimizer=optimizer, num_warmup_steps=args.lr_warmup_steps,
                                 num_training_steps=max_steps, num_cycles=args.lr_num_cycles, power=args.lr_power)
    base_fp = export.base_fingerprint(base.path)
    res_cfg = resume_config(args, specs, precision, base_fp, data_fingerprint(scan.items), procs)
    model = Denoiser(models.unet, models.text_encoder)
    tokens_info = [dict(t, embedding_file=f"{export.EMBEDDINGS_DIR}/{t['token'].strip('<>')}.safetensors")
                   for t in models.added.as_dict()]
    ctx = RunContext(args, accelerator, models, model, weight_dtype, precision, base, base_fp,
                     "sd_v2" if base.cross_attention_dim == 1024 else "sd_v1", tokens_info, len(dataset),
                     global_batch, max_steps)
    start_step = 0
    blob = None
    if resume_from is not None:
        saved, tensors, blob = ckpt.load_checkpoint(resume_from)
        ckpt.check_resume_compatible(saved.state, res_cfg, resume_from)
        missing = sorted(set(trainables) - set(tensors))
        if missing:
            raise UserError(f"checkpoint {resume_from} lacks {len(missing)} trained tensors (e.g. {missing[0]})")
        with torch.no_grad():
            for name, p in trainables.items():
                p.copy_(tensors[name].to(p.device, p.dtype))
        optimizer.load_state_dict(blob["optimizer"])
        lr_scheduler.load_state_dict(blob["lr_scheduler"])
        start_step = saved.step
        ctx.loss_history = list(saved.state.get("loss_history", []))
        ctx.eval_before = saved.state.get("fixed_noise_loss_start")
        if main:
            logger.info(f"resuming from {resume_from} at step {start_step}")
    elif args.resume_from_checkpoint and main:
        logger.info(f"no checkpoint in {out}; starting a new run")
    elif main and ckpt.list_checkpoints(out):
        logger.warning(f"{out} holds checkpoints of an earlier run; this run's will join them "
                       "(--resume_from_checkpoint latest continues that run instead)")
    ctx.model, optimizer = accelerator.prepare(model, optimizer)
    if blob is not None:
        if blob.get("scaler") is not None and accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(blob["scaler"])
        ckpt.restore_rng_states(blob["rng"])

    if args.report_to != "none":
        accelerator.init_trackers(args.tracker_project_name,
                                  config={k: v for k, v in res_cfg.items() if isinstance(v, (int, float, str, bool))})
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
        result = finish(ctx, out, max_steps, dataset)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def save_training_checkpoint(ctx, optimizer, lr_scheduler, trainables, step: int, res_cfg: dict) -> Path | None:
    acc, args = ctx.accelerator, ctx.args
    path = None
    if acc.is_main_process:
        blob = {"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict(),
                "scaler": acc.scaler.state_dict() if acc.scaler is not None else None, "rng": ckpt.rng_states()}
        state = {"global_step": step, "loss_history": ctx.loss_history, "resume_config": res_cfg,
                 "fixed_noise_loss_start": ctx.eval_before}
        path = ckpt.save_checkpoint(output_dir(args), step, trainables, blob, state,
                                    export=lambda d: export_weights(ctx, d, step, final=False),
                                    total_limit=args.checkpoints_total_limit)
        logger.info(f"saved {path}")
    acc.wait_for_everyone()
    return path


def run_steps(ctx, dataset, optimizer, lr_scheduler, trainables, start_step: int, res_cfg: dict) -> int:
    """Optimizer steps ``start_step .. max_steps-1``; returns a non-zero code when stopped early."""
    from tqdm.auto import tqdm

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
            found = ckpt.list_checkpoints(output_dir(args))
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


def run_previews(ctx, step: int, weights_dir: Path | None) -> None:
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


def previews(ctx, weights_dir: Path, out: Path, step: int) -> list[Path]:
    args, acc = ctx.args, ctx.accelerator
    if args.num_validation_images <= 0:
        return []
    dtype = ctx.weight_dtype if acc.device.type == "cuda" else None
    pipe = load_trained_pipeline(ctx.base.path, weights_dir, dtype=dtype, device=acc.device)
    prompts = args.validation_prompt or default_prompts([t["token"] for t in ctx.tokens_info])
    made = make_previews(pipe, prompts, args.num_validation_images, args.seed, args.validation_inference_steps,
                         args.validation_guidance_scale, args.resolution, out)
    log_previews(acc, step, made)
    del pipe
    if acc.device.type == "cuda":
        torch.cuda.empty_cache()
    return [path for _, path, _ in made]


def finish(ctx, out: Path, step: int, dataset) -> TrainResult:
    """Final export into ``out``, the reload check, previews, and the summary."""
    files = export_weights(ctx, out, step, final=True)
    state = ctx.last_export
    scale = ctx.args.lora_alpha / ctx.args.rank
    check = export.reload_check(ctx.base.path, out, state["unet_state"], state["te_state"], ctx.tokens_info,
                                state["rows"], scale)
    preview_files = previews(ctx, out, out / "validation" / f"step-{step:06d}", step)
    manifest = build_manifest(ctx, out, step, files, final=True)
    manifest["reload_check"] = check
    manifest["previews"] = [str(p.relative_to(out)) for p in preview_files]
    export.write_manifest(out, manifest)
    write_loss_log(out, ctx.loss_history)

    t = manifest["training"]
    rows: list[tuple[str, object]] = [
        ("steps", f"{step} ({t['epochs']} epochs, {t['images_seen']} images seen of {t['num_images']})"),
        ("processes", f"{t['num_processes']} ({t['distributed_type']}, {t['device']}, precision {t['mixed_precision']})"),
        ("tokens", ", ".join(f"{x['token']} (id {x['token_id']})" for x in ctx.tokens_info)),
        ("loss first -> last10", _fmt_pair(t["first_loss"], t["final_loss_mean10"])),
        ("fixed-noise loss", _fmt_pair(t["fixed_noise_loss_start"], t["fixed_noise_loss_end"])),
        ("images/s (after step 1)", t["images_per_s"]),
        ("peak memory", f"{t['peak_memory_bytes'] / 2**30:.2f} GiB"),
    ]
    rows += [(name, f"{info['bytes'] / 1024:.1f} KiB") for name, info in manifest["files"]["sha256"].items()]
    rows.append(("reload check", "ok: every key loaded, every row equal" if check["ok"]
                 else "FAILED: " + "; ".join(check["problems"])))
    rows.append(("previews", f"{len(preview_files)} in {out / 'validation'}" if preview_files else "off"))
    return TrainResult(out, step, 0 if check["ok"] else 1, rows, manifest)


def _fmt_pair(a, b) -> str:
    return "n/a" if a is None or b is None else f"{a:.4f} -> {b:.4f}"


def write_loss_log(out: Path, history: list[float]) -> None:
    from storyboard.core.records import atomic_write

    with atomic_write(out / "logs" / "loss.jsonl") as fh:
        for i, loss in enumerate(history, start=1):
            fh.write(json.dumps({"step": i, "loss": loss}) + "\n")


def run(args: argparse.Namespace, checked: CheckedInputs | None = None) -> int:
    """Train and print the summary (main process); the exit code for the front door.

    Under several processes every process meets the same bad input; only the main one prints it."""
    rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0)
    try:
        result = train(args, checked)
    except UserError:
        if rank != 0:
            raise SystemExit(2)
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
    from accelerate.state import AcceleratorState, GradientState, PartialState

    if PartialState._shared_state and PartialState().num_processes > 1:
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
