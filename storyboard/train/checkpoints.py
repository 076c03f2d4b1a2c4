"""Training checkpoints: save every N steps, keep the newest K, resume exactly.

``output_dir/checkpoint-<step>/`` is a complete output folder (the LoRA files, embeddings and
manifest of that step, usable for validation and inference like the final one) plus
``training_state/``:

* ``trainable.safetensors``: every trainable tensor, fp32, by name (``unet.*``, ``text_encoder.*``);
* ``optimizer.pt``: optimizer, learning-rate scheduler and fp16 grad-scaler states, and the RNG
  states of this process (kept for completeness: the loop derives all of its randomness from
  ``(seed, step)``, see ``storyboard.train.data``);
* ``state.json``: the global step, the loss history, and the settings a resume must share.

A checkpoint is written into a hidden temporary folder and renamed into place, so a crash while
saving leaves the previous checkpoints untouched and never a half one that ``latest`` would pick.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from storyboard.core.cli import UserError
from storyboard.core.records import atomic_dir

if TYPE_CHECKING:
    import torch

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


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict


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


def load_checkpoint(path: Path) -> tuple[Checkpoint, dict[str, torch.Tensor], dict]:
    """The checkpoint's state, trainable tensors and optimizer/scheduler/scaler/RNG blob."""
    import torch
    from safetensors.torch import load_file

    state_dir = path / STATE_DIR
    try:
        state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(state_dir / "trainable.safetensors"))
        blob = torch.load(state_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({exc}); resume from another one") from None
    return Checkpoint(path, int(state["global_step"]), state), tensors, blob


def check_resume_compatible(saved: Mapping, current: Mapping, path: Path) -> None:
    """Refuse a resume whose settings would change what the remaining steps compute."""
    saved_cfg = saved.get("resume_config", {})
    diffs = [k for k in RESUME_MUST_MATCH if saved_cfg.get(k) != current.get(k)]
    if diffs:
        detail = "; ".join(f"{k}: {saved_cfg.get(k)!r} -> {current.get(k)!r}" for k in diffs[:4])
        raise UserError(f"cannot resume from {path}: it was trained with other settings ({detail}); resume with "
                        "the same flags, or start a new --output_dir")


def rng_states() -> dict:
    import numpy as np
    import torch

    # Only tensors and plain values, so the blob loads with torch.load(weights_only=True).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                      int(has_gauss), float(cached)],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping) -> None:
    import numpy as np
    import torch

    random.setstate(states["python"])
    name, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available() and len(states["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(output_dir: Path, step: int, trainable: Mapping[str, torch.Tensor], blob: Mapping,
                    state: Mapping, export: Callable[[Path], object] | None = None,
                    total_limit: int | None = None) -> Path:
    """Write ``checkpoint-<step>`` atomically (temp folder + rename), then drop old ones past ``total_limit``."""
    import torch
    from safetensors.torch import save_file

    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / f"checkpoint-{step}"
    with atomic_dir(final) as tmp:
        state_dir = tmp / STATE_DIR
        state_dir.mkdir(parents=True)
        tensors = {name: t.detach().float().cpu().contiguous() for name, t in trainable.items()}
        save_file(tensors, str(state_dir / "trainable.safetensors"))
        torch.save(dict(blob), state_dir / "optimizer.pt")
        (state_dir / "state.json").write_text(json.dumps(dict(state), indent=2, default=str) + "\n", encoding="utf-8")
        if export is not None:
            export(tmp)
    if total_limit:
        for _, path in list_checkpoints(output_dir)[:-total_limit]:
            shutil.rmtree(path, ignore_errors=True)
    return final
