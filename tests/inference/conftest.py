"""Fixtures of the inference and validation tests.

``trained_checkpoint`` runs the real trainer (``train_trigger02.py``, as a user runs it) for 2 steps at
64 px on four noise images captioned with ``<fs_trg>`` and ``<ms_trg>``, on the tiny base model, once
per test session. Treat it as read-only; copy it to change it.

Its LoRA learning rate is 0.1 (the trainer's default is 1e-4) so that the LoRA visibly changes the
image: at 1e-4 the largest LoRA-B value was 2e-4 and the image moved by 1/255, inside the tolerance of
the image comparisons, which then passed with the LoRA not loaded. At 0.1 (measured 2026-11-30, tiny
model, 4 steps, seed 3) the LoRA moves the image by 8 levels on average and up to 47, and half its
scale by 7 and up to 45.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from support import run_command
from trigger_helpers import TRAIN

LORA_LR = 0.1  # large enough that the LoRA visibly changes the image (module docstring)


def _make_dataset(root: Path) -> Path:
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, (token, words) in enumerate([("<fs_trg>", "full shot"), ("<ms_trg>", "medium shot")] * 2):
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(root / "images" / f"{i}.png")
        lines.append(json.dumps({"file_name": f"images/{i}.png", "text": f"{token}, {words}, eye level, outdoor"}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def trained_checkpoint(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A training output folder made by train_trigger02.py (2 steps at LoRA lr 0.1, 64 px, tokens <fs_trg>
    <ms_trg>)."""
    root = tmp_path_factory.getbasetemp() / "trigger_checkpoint"
    out = root / "train_fs"
    if (out / "trigger_manifest.json").is_file():
        return out
    data = _make_dataset(root / "Dataset_fin")
    proc = run_command([sys.executable, TRAIN, "--pretrained_model_name_or_path", tiny_models / "model_sd",
                       "--train_data_dir", data, "--output_dir", out, "--resolution", 64, "--max_train_steps", 2,
                       "--train_batch_size", 2, "--num_validation_images", 0, "--eval_loss_images", 0, "--seed", 0,
                       "--learning_rate", LORA_LR, "--text_encoder_lr", LORA_LR],
                      cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out
