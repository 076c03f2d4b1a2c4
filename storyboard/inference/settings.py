"""How images are made: the sampling settings every PNG records, the samplers, and the flags for both.

``add_model_arguments`` (how the pipeline loads) and ``add_sampling_arguments`` (how each image is
made) are shared by ``inference_trigger.py`` and ``validation/run_validation.py``; ``settings_from_args``
checks the values before anything is loaded.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from storyboard.artifacts.base_model import PREDICTION_TYPES, BaseModel, resolve_base
from storyboard.artifacts.read import Checkpoint
from storyboard.artifacts.samplers import BASE_SCHEDULER_LABELS as BASE_SCHEDULER_LABELS  # the base's own, by class
from storyboard.core.cli import UserError
from storyboard.core.runtime import add_dtype_argument

# --scheduler name -> (diffusers class, extra config, the A1111 sampler label written into PNGs).
SCHEDULERS: dict[str, tuple[str, dict, str]] = {
    "default": ("", {}, ""),  # whatever the base model's scheduler_config.json says
    "ddim": ("DDIMScheduler", {}, "DDIM"),
    "pndm": ("PNDMScheduler", {"skip_prk_steps": True}, "PLMS"),
    "euler": ("EulerDiscreteScheduler", {}, "Euler"),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}, "Euler a"),
    "heun": ("HeunDiscreteScheduler", {}, "Heun"),
    "lms": ("LMSDiscreteScheduler", {}, "LMS"),
    "dpm2": ("KDPM2DiscreteScheduler", {}, "DPM2"),
    "dpm2_a": ("KDPM2AncestralDiscreteScheduler", {}, "DPM2 a"),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}, "DPM++ 2M"),
    "dpmpp_2m_karras": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "use_karras_sigmas": True},
                        "DPM++ 2M Karras"),
    "dpmpp_2m_sde": ("DPMSolverMultistepScheduler", {"algorithm_type": "sde-dpmsolver++"}, "DPM++ 2M SDE"),
    "dpmpp_2m_sde_karras": ("DPMSolverMultistepScheduler",
                            {"algorithm_type": "sde-dpmsolver++", "use_karras_sigmas": True}, "DPM++ 2M SDE Karras"),
    "unipc": ("UniPCMultistepScheduler", {}, "UniPC"),
    "deis": ("DEISMultistepScheduler", {}, "DEIS"),
    "lcm": ("LCMScheduler", {}, "LCM"),
}


@dataclass
class Settings:
    """How images are made; everything here is written into each PNG."""

    steps: int = 30
    guidance: float = 7.5
    width: int | None = None  # None: the base model's native size (512 for SD1.5, 768 for SD2 768-v)
    height: int | None = None
    scheduler: str = "default"
    negative_prompt: str = ""
    lora_scale: float = 1.0

    def check(self) -> None:
        for name, value in (("--width", self.width), ("--height", self.height)):
            if value is not None and (value <= 0 or value % 8):
                raise UserError(f"{name} {value} is not a positive multiple of 8 (Stable Diffusion's VAE needs one)")
        if self.steps < 1:
            raise UserError(f"--steps {self.steps} must be at least 1")
        if self.scheduler not in SCHEDULERS:
            raise UserError(f"unknown --scheduler {self.scheduler!r}; choose from {', '.join(SCHEDULERS)}")

    def sized(self, native: int) -> Settings:
        """These settings with an unset width or height filled in with the base model's native size."""
        return Settings(**{**self.__dict__, "width": self.width or native, "height": self.height or native})


def add_model_arguments(parser: argparse.ArgumentParser, base_default: Path | None = None) -> None:
    """--base-model, --base-config, --prediction-type, --device, --dtype, --compile, --allow-base-mismatch:
    how the pipeline is loaded."""
    group = parser.add_argument_group("model")
    group.add_argument("--base-model", type=Path, default=base_default, required=base_default is None,
                       help="base Stable Diffusion 1.x/2.x: a diffusers folder, or one .safetensors / .ckpt checkpoint "
                            "file as the WebUI and ComfyUI keep them (family detected from its keys; loaded offline) "
                            "(default: %(default)s)")
    group.add_argument("--base-config", type=Path, default=None,
                       help="for a single-file base of a non-standard size: a diffusers folder with its configs and "
                            "tokenizer (no weights needed); default: the configuration shipped for the detected family")
    group.add_argument("--prediction-type", choices=PREDICTION_TYPES, default=None,
                       help="what the base predicts, when its file cannot say (SD 2.x 512-px models are epsilon, "
                            "768-px ones v_prediction); default: detected (see docs/inference_validation.md)")
    group.add_argument("--device", default="auto", help="cuda, cuda:1, mps, cpu or auto (default: %(default)s)")
    add_dtype_argument(group, help_auto="fp16 on a GPU, fp32 on CPU")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the UNet (pays off past a few dozen images)")
    group.add_argument("--no-fuse", action="store_true",
                       help="keep the LoRA unfused (slower per step; only needed to change --lora-scale between calls)")
    group.add_argument("--allow-base-mismatch", action="store_true",
                       help="load a checkpoint on a base other than the one it was trained on (the fingerprint check "
                            "becomes a warning)")


def add_sampling_arguments(parser: argparse.ArgumentParser, defaults: Settings | None = None) -> None:
    """--steps, --guidance, --scheduler, --negative-prompt, --lora-scale, --width, --height, --batch-size."""
    d = defaults or Settings()
    group = parser.add_argument_group("sampling")
    group.add_argument("--negative-prompt", default=d.negative_prompt, help="negative prompt (default: none)")
    group.add_argument("--steps", type=int, default=d.steps, help="denoising steps (default: %(default)s)")
    group.add_argument("--guidance", type=float, default=d.guidance, help="CFG scale (default: %(default)s)")
    group.add_argument("--scheduler", default=d.scheduler, choices=list(SCHEDULERS),
                       help="sampler; default = the base model's own (default: %(default)s)")
    group.add_argument("--lora-scale", type=float, default=d.lora_scale, help="LoRA strength (default: %(default)s)")
    group.add_argument("--width", type=size_arg, default=d.width,
                       help="image width, a multiple of 8 (default: the base model's native size, 512 for SD1.5)")
    group.add_argument("--height", type=size_arg, default=d.height,
                       help="image height, a multiple of 8 (default: the base model's native size)")
    group.add_argument("--batch-size", type=int, default=1, help="images per pipeline call (default: %(default)s)")


def base_from_args(args: argparse.Namespace, checkpoint: Checkpoint | None = None) -> BaseModel:
    """``--base-model`` checked and described (``--base-config``, ``--prediction-type``); no weights read.

    Without ``--prediction-type``, a checkpoint trained with ``--prediction_type`` other than its base's
    own keeps what its manifest recorded: it was trained to predict that, so it must be sampled so."""
    flag = getattr(args, "prediction_type", None)
    base = resolve_base(args.base_model, config=getattr(args, "base_config", None), prediction_type=flag)
    recorded = trained_prediction(checkpoint)
    if flag is None and recorded is not None and recorded != base.prediction_type:
        base = resolve_base(args.base_model, config=getattr(args, "base_config", None), prediction_type=recorded)
        base.evidence["prediction"] = f"{checkpoint.path.name}/trigger_manifest.json"
    return base


def trained_prediction(checkpoint: Checkpoint | None) -> str | None:
    """The prediction type a training output was trained with (its manifest's ``base_model``)."""
    recorded = checkpoint.manifest.get("base_model") if checkpoint is not None else None
    value = recorded.get("prediction_type") if isinstance(recorded, dict) else None
    return value if value in PREDICTION_TYPES else None


def size_arg(value: str) -> int | None:
    """An image side in pixels; ``auto`` (or empty) = the base model's native size."""
    if value.strip().lower() in ("", "auto", "native"):
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in pixels: {value!r} (or auto)") from None


def settings_from_args(args: argparse.Namespace) -> Settings:
    settings = Settings(steps=args.steps, guidance=args.guidance, width=args.width, height=args.height,
                        scheduler=args.scheduler, negative_prompt=args.negative_prompt or "",
                        lora_scale=args.lora_scale)
    settings.check()
    if getattr(args, "batch_size", 1) < 1:
        raise UserError(f"--batch-size {args.batch_size} must be at least 1")
    return settings
