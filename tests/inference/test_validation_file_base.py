"""Validation on a base given as one checkpoint file: the bare-base column from the file is the
folder's, and its run record says what the base was."""
from __future__ import annotations

import json
import sys

import numpy as np

from storyboard.core.records import write_jsonl
from storyboard.core.vocabulary import load_vocabulary
from storyboard.devkit.single_file import write_single_file
from storyboard.inference.prompt_files import make_validation_records

from support import run_command
from trigger_helpers import VALIDATION, pixels


def test_validation_base_column_from_a_single_file_is_the_folders(tiny_models, tmp_path):
    base_file = write_single_file(tiny_models / "model_sd", tmp_path / "tiny-v1-5.safetensors")
    prompts = tmp_path / "v.jsonl"
    write_jsonl(prompts, make_validation_records(load_vocabulary(), ["a man"], [0], ["full", "close_up"],
                                                 ["eye_level"], ["outdoor"]))
    common = ["--base-only", "--prompts", prompts, "--steps", 2, "--no-report", "--device", "cpu"]
    runs = {"file": ["--base-model", base_file, "--base-config", tiny_models / "model_sd"],
            "folder": ["--base-model", tiny_models / "model_sd"]}
    for name, base in runs.items():
        proc = run_command([sys.executable, VALIDATION / "run_validation.py", *base, *common,
                            "--output-dir", tmp_path / name], cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    made = sorted(p.name for p in (tmp_path / "file" / "base").glob("*.png"))
    assert len(made) == 2 and made == sorted(p.name for p in (tmp_path / "folder" / "base").glob("*.png"))
    for name in made:
        assert np.array_equal(pixels(tmp_path / "file" / "base" / name), pixels(tmp_path / "folder" / "base" / name))
    record = json.loads((tmp_path / "file" / "base" / "run.json").read_text(encoding="utf-8"))["base"]
    assert (record["format"], record["family"], record["config"]) == ("single_file", "sd1",
                                                                     str(tiny_models / "model_sd"))
    assert json.loads((tmp_path / "folder" / "base" / "run.json").read_text(encoding="utf-8"))["base"]["format"] == \
        "folder"
