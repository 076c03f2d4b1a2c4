"""Shared by the inference and validation tests: a folder laid out like the seed's root, checkpoint
copies and edits, pixels.

The ``trained_checkpoint`` fixture (``conftest.py`` beside this file) is the real trainer's output.

``seed_root(tmp, tiny_models, checkpoint)`` makes ``tmp/model_sd`` and ``tmp/model_sd_weight/train_fs``
(symlinks), which is what the seed's command lines expect to find in the current folder.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from support import REPO

INFERENCE = REPO / "inference_trigger.py"
TRAIN = REPO / "train_trigger02.py"
VALIDATION = REPO / "validation"
TRAINED_TOKENS = ["<fs_trg>", "<ms_trg>"]


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
