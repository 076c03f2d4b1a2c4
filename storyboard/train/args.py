"""The training flags, grouped, and the checks on them that need nothing loaded.

Flag names follow the diffusers training examples where one exists (``--pretrained_model_name_or_path``,
``--train_batch_size``, ``--rank``, ...) and kohya sd-scripts' where diffusers has none
(``--shuffle_caption``, ``--keep_tokens``, ``--caption_dropout_rate``, ``--cache_latents``). A flag
given twice takes its last value (argparse's rule), so ``shot_trigger_train.sh`` can put its
variables first and the user's own flags after them.
"""
from __future__ import annotations

import argparse
import math
import os
from importlib.util import find_spec
from pathlib import Path

from storyboard.core.cli import UserError, add_vocabulary_arguments

BOOL = argparse.BooleanOptionalAction
PRECISIONS = ("auto", "no", "fp16", "bf16")
TEXT_ENCODER_MODES = ("frozen", "lora", "full")
REPORTERS = ("none", "tensorboard", "wandb", "all")
LR_SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial")


def add_path_arguments(parser: argparse.ArgumentParser, model: str = "./model_sd", data: str = "./Dataset_fin",
                       output: str = "./model_sd_weight/train_fs") -> None:
    g = parser.add_argument_group("paths")
    g.add_argument("--pretrained_model_name_or_path", default=model, metavar="PATH",
                   help="base Stable Diffusion 1.x/2.x: a diffusers folder (model_index.json, unet/, vae/, "
                        "text_encoder/, tokenizer/, scheduler/) or one .safetensors / .ckpt checkpoint file as the "
                        "WebUI and ComfyUI keep them (family detected from its keys, loaded offline) "
                        "(default %(default)s)")
    g.add_argument("--base_config", default=None, metavar="DIR",
                   help="for a single-file base of a non-standard size: a diffusers folder with its configs and "
                        "tokenizer (no weights needed); default: the configuration shipped for the detected family")
    g.add_argument("--variant", default=None, help="weight variant to load from a folder, e.g. fp16 (diffusers' "
                   "--variant)")
    g.add_argument("--train_data_dir", default=data, metavar="DIR",
                   help="image folder with metadata.jsonl (imagefolder layout: file_name + text) (default %(default)s)")
    g.add_argument("--image_column", default="file_name", help="record field holding the image path, relative "
                   "to --train_data_dir (default %(default)s)")
    g.add_argument("--caption_column", default="text", help="record field holding the caption (default %(default)s)")
    g.add_argument("--skip_bad_records", action="store_true",
                   help="train without records whose image is missing or unreadable instead of stopping")
    g.add_argument("--output_dir", default=output, metavar="DIR", help="where the weights, checkpoints, previews "
                   "and logs go (default %(default)s)")
    g.add_argument("--logging_dir", default="logs", help="tracker logs, relative to --output_dir (default %(default)s)")
    add_vocabulary_arguments(parser)


def add_token_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("trigger tokens")
    g.add_argument("--new_tokens", default="", metavar="TOKENS",
                   help="comma-separated tokens to add and train, e.g. '<fs_trg>,<ms_trg>'; empty (default): every "
                        "trigger token of the shot vocabulary that occurs in the captions")
    g.add_argument("--token_initializer", default="", metavar="WORDS",
                   help="comma-separated initializer words, one per token in the same order (or one for all); each "
                        "new row starts as the mean of these words' rows; empty (default): the vocabulary's words "
                        "for each token (<fs_trg> -> 'full shot')")
    g.add_argument("--token_learning_rate", type=float, default=5e-4,
                   help="learning rate of the token rows (default %(default)s)")
    g.add_argument("--token_weight_decay", type=float, default=0.0,
                   help="AdamW weight decay of the token rows (default %(default)s)")
    g.add_argument("--token_training_steps", type=int, default=None, metavar="N",
                   help="stop training the token rows after N optimizer steps and keep training the LoRA "
                        "(pivotal tuning); default: train them for the whole run")


def add_lora_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("LoRA and text encoder")
    g.add_argument("--rank", type=int, default=4, help="LoRA rank (default %(default)s)")
    g.add_argument("--lora_alpha", type=float, default=None,
                   help="LoRA alpha; the update is scaled by alpha/rank (default: equal to --rank, scale 1)")
    g.add_argument("--lora_dropout", type=float, default=0.0, help="dropout on the LoRA input (default %(default)s)")
    g.add_argument("--lora_include_ff", action=BOOL, default=False,
                   help="also put LoRA on the UNet's feed-forward layers (default: attention q/k/v/out only)")
    g.add_argument("--learning_rate", type=float, default=1e-4,
                   help="learning rate of the UNet LoRA (default %(default)s)")
    g.add_argument("--text_encoder_mode", choices=TEXT_ENCODER_MODES, default="lora",
                   help="frozen: only the token rows learn; lora (default, as the seed): LoRA on the text "
                        "encoder's attention too; full: the whole text encoder is fine-tuned and saved")
    g.add_argument("--text_encoder_lr", type=float, default=5e-5,
                   help="learning rate of the text encoder's LoRA or weights (default %(default)s)")


def add_data_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("data")
    g.add_argument("--resolution", type=int, default=512,
                   help="training size in pixels, a multiple of 8 (default %(default)s)")
    g.add_argument("--center_crop", action=BOOL, default=True,
                   help="crop the centre after resizing (default); --no-center_crop crops at random. A random crop "
                        "moves the framing, which is what a shot size is, so centre is the default here")
    g.add_argument("--random_flip", action=BOOL, default=False, help="flip images horizontally at random")
    g.add_argument("--shuffle_caption", action=BOOL, default=False,
                   help="shuffle the comma-separated tags of each caption; the trigger token (and the first "
                        "--keep_tokens tags) stay first")
    g.add_argument("--keep_tokens", type=int, default=1,
                   help="leading tags never shuffled or dropped (default %(default)s)")
    g.add_argument("--caption_dropout_rate", type=float, default=0.0,
                   help="share of samples trained with an empty caption (default %(default)s)")
    g.add_argument("--caption_tag_dropout_rate", type=float, default=0.0,
                   help="chance of dropping each tag after the kept ones (default %(default)s)")
    g.add_argument("--cache_latents", action=BOOL, default=False,
                   help="encode every image with the VAE once before training (both flips when --random_flip) "
                        "instead of at every step; needs --center_crop")
    g.add_argument("--dataloader_num_workers", type=int, default=0, help="data loading processes (default %(default)s)")


def add_optimization_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("optimisation")
    g.add_argument("--train_batch_size", type=int, default=4, help="images per process per step (default %(default)s)")
    g.add_argument("--max_train_steps", type=int, default=None,
                   help="optimizer steps to train; overrides --num_train_epochs")
    g.add_argument("--num_train_epochs", type=int, default=10,
                   help="epochs, when --max_train_steps is not given (default %(default)s)")
    g.add_argument("--gradient_accumulation_steps", type=int, default=1,
                   help="micro-batches per optimizer step (default %(default)s)")
    g.add_argument("--gradient_checkpointing", action=BOOL, default=False, help="recompute activations to save memory")
    g.add_argument("--lr_scheduler", choices=LR_SCHEDULERS, default="constant", help="(default %(default)s)")
    g.add_argument("--lr_warmup_steps", type=int, default=0, help="(default %(default)s)")
    g.add_argument("--lr_num_cycles", type=int, default=1, help="cycles of cosine_with_restarts (default %(default)s)")
    g.add_argument("--lr_power", type=float, default=1.0, help="power of the polynomial schedule (default %(default)s)")
    g.add_argument("--adam_beta1", type=float, default=0.9)
    g.add_argument("--adam_beta2", type=float, default=0.999)
    g.add_argument("--adam_weight_decay", type=float, default=1e-2,
                   help="AdamW weight decay of LoRA / text encoder (default %(default)s)")
    g.add_argument("--adam_epsilon", type=float, default=1e-8)
    g.add_argument("--max_grad_norm", type=float, default=1.0,
                   help="gradient clipping; 0 turns it off (default %(default)s)")
    g.add_argument("--use_8bit_adam", action="store_true", help="bitsandbytes' 8-bit AdamW (must be installed)")
    g.add_argument("--snr_gamma", type=float, default=None, help="min-SNR-gamma loss weighting, e.g. 5.0 (default off)")
    g.add_argument("--noise_offset", type=float, default=0.0, help="noise offset, e.g. 0.05 (default %(default)s)")
    g.add_argument("--prediction_type", choices=("epsilon", "v_prediction"), default=None,
                   help="training target; default: the base folder's scheduler config, or what a single file's "
                        "keys, metadata or .yaml say (SD 2.x 768-px models are v_prediction)")
    g.add_argument("--mixed_precision", choices=PRECISIONS, default="auto",
                   help="auto (default): accelerate's setting when it has one, else bf16 on GPUs that have it, "
                        "fp16 on other GPUs, no on CPU. Trainable weights stay fp32 in every mode")
    g.add_argument("--enable_xformers_memory_efficient_attention", action="store_true",
                   help="xformers attention (must be installed); default: PyTorch SDPA")
    g.add_argument("--allow_tf32", action="store_true", help="TF32 matmuls on Ampere+ GPUs")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of everything random; a run is reproducible (default %(default)s)")


def add_checkpoint_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("checkpoints")
    g.add_argument("--checkpointing_steps", type=int, default=500,
                   help="save output_dir/checkpoint-N every N steps (default %(default)s)")
    g.add_argument("--checkpoints_total_limit", type=int, default=None, help="keep only the newest N checkpoints")
    g.add_argument("--resume_from_checkpoint", default=None, metavar="PATH|latest",
                   help="continue from a checkpoint folder, or 'latest' in --output_dir (starts fresh when there is "
                        "none)")


def add_validation_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("validation and logging")
    g.add_argument("--validation_prompt", nargs="+", default=None, metavar="PROMPT",
                   help="prompts for preview images; default: '<token>, a person' for each token")
    g.add_argument("--num_validation_images", type=int, default=2,
                   help="images per prompt; 0 turns previews off (default %(default)s)")
    g.add_argument("--validation_steps", type=int, default=None,
                   help="make previews every N steps (default: only at the end)")
    g.add_argument("--validation_inference_steps", type=int, default=25, help="(default %(default)s)")
    g.add_argument("--validation_guidance_scale", type=float, default=7.5, help="(default %(default)s)")
    g.add_argument("--eval_loss_images", type=int, default=4,
                   help="images for the fixed-noise loss measured before and after training "
                        "(default %(default)s; 0: off)")
    g.add_argument("--report_to", choices=REPORTERS, default="tensorboard",
                   help="where the loss, learning rates and preview images go: tensorboard (event files in "
                        "OUTPUT_DIR/logs; `tensorboard --logdir OUTPUT_DIR/logs`), wandb (reads WANDB_API_KEY from "
                        "the environment; WANDB_MODE=offline keeps the run in OUTPUT_DIR/logs/wandb), all, or none "
                        "(default %(default)s, as in the diffusers examples)")
    g.add_argument("--tracker_project_name", default="storyboard-trigger")
    # Hidden switches for the tests: simulate an interruption, or a diverging loss.
    g.add_argument("--debug_stop_after_step", type=int, default=None, help=argparse.SUPPRESS)
    g.add_argument("--debug_nan_at_step", type=int, default=None, help=argparse.SUPPRESS)


def build_parser(prog: str | None = None, description: str | None = None,
                 **path_defaults: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    add_path_arguments(parser, **path_defaults)
    add_token_arguments(parser)
    add_lora_arguments(parser)
    add_data_arguments(parser)
    add_optimization_arguments(parser)
    add_checkpoint_arguments(parser)
    add_validation_arguments(parser)
    return parser


# --------------------------------------------------------------------------------------------
# Checks that need nothing loaded
# --------------------------------------------------------------------------------------------
def _require(condition: bool, message: str) -> None:
    if not condition:
        raise UserError(message)


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Refuse impossible values with one line each; fill derived defaults (``lora_alpha``)."""
    _require(args.resolution > 0 and args.resolution % 8 == 0,
             f"--resolution {args.resolution} is not a positive multiple of 8 (the VAE works in blocks of 8 pixels)")
    _require(args.rank > 0, f"--rank must be at least 1 (got {args.rank})")
    if args.lora_alpha is None:
        args.lora_alpha = float(args.rank)
    _require(args.lora_alpha > 0 and math.isfinite(args.lora_alpha),
             f"--lora_alpha must be positive (got {args.lora_alpha})")
    _require(0.0 <= args.lora_dropout < 1.0, f"--lora_dropout must be in [0, 1) (got {args.lora_dropout})")
    _require(args.train_batch_size >= 1, f"--train_batch_size must be at least 1 (got {args.train_batch_size})")
    _require(args.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be at least 1")
    _require(args.max_train_steps is None or args.max_train_steps >= 1,
             f"--max_train_steps must be at least 1 (got {args.max_train_steps})")
    _require(args.num_train_epochs >= 1, "--num_train_epochs must be at least 1")
    for name in ("learning_rate", "text_encoder_lr", "token_learning_rate"):
        value = getattr(args, name)
        _require(value > 0 and math.isfinite(value), f"--{name} must be positive (got {value})")
    for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        value = getattr(args, name)
        _require(0.0 <= value <= 1.0, f"--{name} must be between 0 and 1 (got {value})")
    _require(args.keep_tokens >= 0, "--keep_tokens must be 0 or more")
    _require(args.checkpointing_steps >= 1,
             f"--checkpointing_steps must be at least 1 (got {args.checkpointing_steps})")
    _require(args.checkpoints_total_limit is None or args.checkpoints_total_limit >= 1,
             "--checkpoints_total_limit must be at least 1")
    _require(args.token_training_steps is None or args.token_training_steps >= 0,
             "--token_training_steps must be 0 or more")
    _require(args.snr_gamma is None or args.snr_gamma > 0, "--snr_gamma must be positive")
    _require(args.noise_offset >= 0, "--noise_offset must be 0 or more")
    _require(args.num_validation_images >= 0, "--num_validation_images must be 0 or more")
    _require(args.validation_steps is None or args.validation_steps >= 1, "--validation_steps must be at least 1")
    _require(args.validation_inference_steps >= 1, "--validation_inference_steps must be at least 1")
    _require(args.dataloader_num_workers >= 0, "--dataloader_num_workers must be 0 or more")
    _require(args.eval_loss_images >= 0, "--eval_loss_images must be 0 or more")
    _require(args.max_grad_norm >= 0, "--max_grad_norm must be 0 or more")
    if args.cache_latents and not args.center_crop:
        raise UserError("--cache_latents needs --center_crop: a random crop differs at every step, so its latents "
                        "cannot be computed once")
    check_precision(args.mixed_precision)
    _check_optional_packages(args)
    return args


def training_on_gpu() -> bool:
    """Whether this run's accelerator will sit on a CUDA GPU: one is visible and neither
    ``accelerate launch --cpu`` nor ``ACCELERATE_USE_CPU`` sends the run to the CPU. (The loop builds
    its Accelerator with ``cpu=True`` whenever CUDA is missing, so MPS runs train on the CPU too.)"""
    if os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes", "y", "t", "on"):  # str_to_bool
        return False
    return _torch_cuda().is_available()


def _torch_cuda():
    """``torch.cuda``, imported only when the precision depends on the GPU: ``--help`` never pays for
    torch, and neither does the input check of a run with ``--mixed_precision no`` or ``bf16``."""
    import torch  # noqa: PLC0415 (heavy: only the precision check asks torch, after the flags are parsed)

    return torch.cuda


def resolve_precision(flag: str) -> str:
    """``auto``: accelerate's own setting if it names fp16/bf16, else bf16 on GPUs that have it,
    fp16 on other GPUs, no on CPU."""
    if flag != "auto":
        return flag
    env = os.environ.get("ACCELERATE_MIXED_PRECISION", "").lower()
    if env in ("fp16", "bf16"):
        return env
    if training_on_gpu():
        # Native bf16 only (Ampere+): the default also says yes on older GPUs that emulate it, slowly.
        return "bf16" if _torch_cuda().is_bf16_supported(including_emulation=False) else "fp16"
    return "no"


def check_precision(flag: str) -> str:
    """The resolved precision, or one line when it cannot run here. fp16 on the CPU is refused:
    accelerate turns its autocast off there (CPU autocast is bf16 only), so the fp16 UNet would meet
    fp32 inputs and stop with a dtype-mismatch traceback at the first step."""
    precision = resolve_precision(flag)
    if precision == "fp16" and not training_on_gpu():
        source = ("--mixed_precision fp16" if flag == "fp16"
                  else "--mixed_precision auto took fp16 from the accelerate configuration, but it")
        raise UserError(f"{source} needs a CUDA GPU and this run is on the CPU (accelerate has no fp16 "
                        "autocast there); use --mixed_precision bf16 or no on the CPU")
    return precision


def _check_optional_packages(args: argparse.Namespace) -> None:
    if args.use_8bit_adam and find_spec("bitsandbytes") is None:
        raise UserError("--use_8bit_adam needs bitsandbytes: pip install bitsandbytes (or drop the flag)")
    if args.enable_xformers_memory_efficient_attention and find_spec("xformers") is None:
        raise UserError("--enable_xformers_memory_efficient_attention needs xformers: pip install xformers "
                        "(or drop the flag; PyTorch's SDPA attention is the default)")
    wanted = ("tensorboard", "wandb") if args.report_to == "all" else (args.report_to,)
    if "tensorboard" in wanted and find_spec("tensorboard") is None:
        raise UserError("--report_to tensorboard needs tensorboard: pip install tensorboard")
    if "wandb" in wanted:
        if find_spec("wandb") is None:
            raise UserError("--report_to wandb needs wandb: pip install wandb")
        if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
            raise UserError("--report_to wandb: set WANDB_API_KEY in the environment (or WANDB_MODE=offline); "
                            "the key is never taken as a flag")


def output_dir(args: argparse.Namespace) -> Path:
    return Path(args.output_dir).expanduser()
