"""The models of a run: the base's parts loaded (phase 1), then adapted for training (phase 2: the
trigger rows, LoRA through peft, dtypes, memory savers), and the optimizer over what trains.

Frozen weights sit in the compute dtype, trainable ones in fp32 (so no fp16 gradients are unscaled):
the UNet and VAE load straight in the compute dtype, the text encoder in fp32 (its new rows start from
fp32 means), and the frozen parts are cast afterwards. A single-file base loads whole through
diffusers' ``from_single_file`` in fp32 (``storyboard.artifacts.base_load``), then the UNet and VAE are cast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers import CLIPTextModel, CLIPTokenizer

from storyboard.artifacts.base_load import base_scheduler, base_tokenizer, load_base_pipeline
from storyboard.artifacts.base_model import BaseModel
from storyboard.artifacts.layout import TEXT_ENCODER_TARGETS, UNET_ATTENTION_TARGETS, UNET_FF_TARGETS
from storyboard.core.cli import UserError
from storyboard.train.data import derive_seed
from storyboard.train.token_specs import TriggerSpec
from storyboard.train.tokens import AddedTokens, add_trigger_tokens, check_new_tokens, install_trigger_embedding


class Denoiser(nn.Module):
    """Text encoder + UNet as one module, so one DDP wrapper synchronises both."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet = unet
        self.text_encoder = text_encoder

    def forward(self, input_ids, noisy_latents, timesteps):
        hidden = self.text_encoder(input_ids, return_dict=False)[0]
        return self.unet(noisy_latents, timesteps, hidden, return_dict=False)[0]


@dataclass
class Models:
    """The base's parts as training holds them, and the LoRA configs ``adapt_models`` added."""

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


def load_models(args, base_model: BaseModel, specs: list[TriggerSpec],
                weight_dtype: torch.dtype = torch.float32) -> Models:
    """The base's parts: UNet and VAE straight in the compute dtype (whatever dtype the folder was
    saved in), the text encoder in fp32 (its new rows start from fp32 means; frozen parts are cast
    later), the tokenizer with the trigger tokens added."""
    if base_model.is_file:
        return _load_single_file(args, base_model, specs, weight_dtype)
    base = base_model.path
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


def _load_single_file(args, base: BaseModel, specs: list[TriggerSpec], weight_dtype: torch.dtype) -> Models:
    """The same parts from one checkpoint file: the tokenizer (its configuration's) checked first, then
    the whole pipeline in fp32, then the UNet and VAE cast to the compute dtype."""
    tokenizer = _load("tokenizer", base_tokenizer, base)
    check_new_tokens(tokenizer, specs, str(base.path))  # fail fast, before the big weights load
    pipe = load_base_pipeline(base, dtype=torch.float32, tokenizer=tokenizer)
    noise_scheduler = base_scheduler(base, DDPMScheduler)  # the file's prediction type (module base_model)
    if args.prediction_type:
        noise_scheduler.register_to_config(prediction_type=args.prediction_type)
    added = add_trigger_tokens(tokenizer, pipe.text_encoder, specs, str(base.path))
    return Models(tokenizer, pipe.text_encoder, pipe.vae.to(weight_dtype), pipe.unet.to(weight_dtype),
                  noise_scheduler, added)


def adapt_models(args, models: Models, weight_dtype: torch.dtype, device) -> None:
    """Freeze, add the trainable parts (token rows, LoRA), cast frozen weights to ``weight_dtype``."""
    unet, te, vae = models.unet, models.text_encoder, models.vae
    unet.requires_grad_(False)
    vae.requires_grad_(False)
    te.requires_grad_(args.text_encoder_mode == "full")

    torch.manual_seed(derive_seed(args.seed, "lora-init"))
    targets = UNET_ATTENTION_TARGETS + (UNET_FF_TARGETS if args.lora_include_ff else [])
    models.unet_lora_config = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                         init_lora_weights="gaussian", target_modules=targets)
    unet.add_adapter(models.unet_lora_config)
    if args.text_encoder_mode == "lora":
        models.te_lora_config = LoraConfig(r=args.rank, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                                           init_lora_weights="gaussian", target_modules=TEXT_ENCODER_TARGETS)
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
        import bitsandbytes as bnb  # noqa: PLC0415 (optional: installed only for --use_8bit_adam, checked with the flags)

        return bnb.optim.AdamW8bit(param_groups, **kwargs)
    if torch.device(device).type == "cuda":
        kwargs["fused"] = True  # one kernel for all parameters; same maths as the default
    return torch.optim.AdamW(param_groups, **kwargs)
