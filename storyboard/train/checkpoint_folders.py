"""Where training checkpoints live, which one ``--resume_from_checkpoint`` continues, and whether it may.

``output_dir/checkpoint-<step>/`` is finished once its ``training_state/state.json`` exists (a
checkpoint is written into a temporary folder and renamed into place, see
``storyboard.train.checkpoints``). A resume must share every setting that changes what a step
computes (``RESUME_MUST_MATCH``); nothing here loads a tensor, so these checks run with the other
input checks, before any model loads.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from storyboard.core.cli import UserError

STATE_DIR = "training_state"
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")

# Settings that change what a step computes: a resume with other values would not continue the
# same run. Everything else (paths, logging, previews, workers, total steps) may change.
RESUME_MUST_MATCH = (
    "new_tokens_resolved", "initializers_resolved", "rank", "lora_alpha", "lora_dropout", "lora_include_ff",
    "text_encoder_mode", "learning_rate", "text_encoder_lr", "token_learning_rate", "token_weight_decay",
    "token_training_steps", "resolution", "center_crop", "random_flip", "shuffle_caption", "keep_tokens",
    "caption_dropout_rate", "caption_tag_dropout_rate", "train_batch_size", "gradient_accumulation_steps",
    "num_processes", "lr_scheduler", "lr_warmup_steps", "adam_beta1", "adam_beta2", "adam_weight_decay",
    "adam_epsilon", "max_grad_norm", "use_8bit_adam", "snr_gamma", "noise_offset", "prediction_type", "seed",
    "mixed_precision_resolved", "base_fingerprint", "data_fingerprint",
)


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    """Finished checkpoints under ``output_dir``, oldest first."""
    found = []
    if output_dir.is_dir():
        for child in output_dir.iterdir():
            match = CHECKPOINT_RE.match(child.name)
            if match and (child / STATE_DIR / "state.json").is_file():
                found.append((int(match.group(1)), child))
    return sorted(found)


def find_checkpoint(output_dir: Path, spec: str | None) -> Path | None:
    """``latest`` -> the newest checkpoint (None when there is none); a path -> that checkpoint."""
    if not spec:
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1][1] if found else None
    for candidate in (Path(spec).expanduser(), output_dir / spec):
        if (candidate / STATE_DIR / "state.json").is_file():
            return candidate
    raise UserError(f"--resume_from_checkpoint {spec}: no checkpoint there (a checkpoint folder holds "
                    f"{STATE_DIR}/state.json); use 'latest' or a folder like {output_dir / 'checkpoint-500'}")


def check_resume_compatible(saved: Mapping, current: Mapping, path: Path) -> None:
    """Refuse a resume whose settings would change what the remaining steps compute."""
    saved_cfg = saved.get("resume_config", {})
    diffs = [k for k in RESUME_MUST_MATCH if saved_cfg.get(k) != current.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: {saved_cfg.get(k)!r} -> {current.get(k)!r}" for k in diffs[:4])
        raise UserError(f"cannot resume from {path}: it was trained with other settings ({detail}); resume with "
                        "the same flags, or start a new --output_dir")
