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
Finding one and checking that a resume may continue it: ``storyboard.train.checkpoint_folders``.
"""
from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from storyboard.core.cli import UserError
from storyboard.core.records import atomic_dir
from storyboard.train.checkpoint_folders import STATE_DIR, list_checkpoints


@dataclass
class Checkpoint:
    path: Path
    step: int
    state: dict


def load_checkpoint(path: Path) -> tuple[Checkpoint, dict[str, torch.Tensor], dict]:
    """The checkpoint's state, trainable tensors and optimizer/scheduler/scaler/RNG blob."""
    state_dir = path / STATE_DIR
    try:
        state = json.loads((state_dir / "state.json").read_text(encoding="utf-8"))
        tensors = load_file(str(state_dir / "trainable.safetensors"))
        blob = torch.load(state_dir / "optimizer.pt", map_location="cpu", weights_only=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"checkpoint {path} cannot be read ({exc}); resume from another one") from None
    return Checkpoint(path, int(state["global_step"]), state), tensors, blob


def rng_states() -> dict:
    # Only tensors and plain values, so the blob loads with torch.load(weights_only=True).
    name, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos),
                                                      int(has_gauss), float(cached)],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: Mapping) -> None:
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
