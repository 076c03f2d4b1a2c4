"""Shared by the inference and validation tests: a real trained checkpoint and a folder laid out like
the seed's root.

``trained_checkpoint`` runs the real trainer (``train_trigger02.py``, as a user runs it) for 2 steps at
64 px on four noise images captioned with ``<fs_trg>`` and ``<ms_trg>``, on the tiny base model. It is
built once per test session (both test modules import the fixture; the second finds the finished
folder on disk). Treat it as read-only; copy it to change it.

``seed_root(tmp, tiny_models, checkpoint)`` makes ``tmp/model_sd`` and ``tmp/model_sd_weight/train_fs``
(symlinks), which is what the seed's command lines expect to find in the current folder.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
INFERENCE = REPO / "inference_trigger.py"
TRAIN = REPO / "train_trigger02.py"
VALIDATION = REPO / "validation"
TRAINED_TOKENS = ["<fs_trg>", "<ms_trg>"]


def script_env(**extra: str) -> dict:
    return dict(os.environ, STORYBOARD_NO_PROGRESS="1", PYTHONPATH=str(REPO), **extra)


def run_script(args, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], cwd=cwd, env=env or script_env(), text=True,
                          capture_output=True, timeout=timeout)


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
    """A training output folder made by train_trigger02.py (2 steps, 64 px, tokens <fs_trg> <ms_trg>)."""
    root = tmp_path_factory.getbasetemp() / "trigger_checkpoint"
    out = root / "train_fs"
    if (out / "trigger_manifest.json").is_file():
        return out
    data = _make_dataset(root / "Dataset_fin")
    proc = run_script([sys.executable, TRAIN, "--pretrained_model_name_or_path", tiny_models / "model_sd",
                       "--train_data_dir", data, "--output_dir", out, "--resolution", 64, "--max_train_steps", 2,
                       "--train_batch_size", 2, "--num_validation_images", 0, "--eval_loss_images", 0, "--seed", 0],
                      cwd=root)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


def seed_root(tmp: Path, tiny_models: Path, checkpoint: Path) -> Path:
    """``tmp`` laid out like the seed's root: model_sd/ and model_sd_weight/train_fs/."""
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "model_sd").symlink_to(tiny_models / "model_sd", target_is_directory=True)
    (tmp / "model_sd_weight").mkdir()
    (tmp / "model_sd_weight" / "train_fs").symlink_to(checkpoint, target_is_directory=True)
    return tmp


def copy_checkpoint(checkpoint: Path, dest: Path) -> Path:
    shutil.copytree(checkpoint, dest)
    return dest


def edit_manifest(checkpoint: Path, edit) -> None:
    path = checkpoint / "trigger_manifest.json"
    manifest = json.loads(path.read_text(encoding="utf-8"))
    edit(manifest)
    path.write_text(json.dumps(manifest), encoding="utf-8")


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.int16)
