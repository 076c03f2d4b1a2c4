"""Fixtures of the base-model tests: single checkpoint files written from the tiny models, and our
shipped configurations with the tiny models' sizes put in (so a tiny file takes exactly the path a
real one takes: detection, our configuration, the tokenizer built offline, ``from_single_file``)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from base_helpers import TINY


@pytest.fixture(scope="session")
def single_files(tiny_models: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``{tiny folder name: <name>.safetensors}``: each tiny model as one original-layout file."""
    from storyboard.devkit.single_file import write_single_file

    out = tmp_path_factory.mktemp("single_files")
    return {name: write_single_file(tiny_models / name, out / f"{name}.safetensors") for name in TINY}


@pytest.fixture
def tiny_shipped_configs(tiny_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Our ``base_configs/`` with each family's component configs replaced by the tiny model's
    (model_index.json and the scheduler stay ours), installed in place of the real ones."""
    from storyboard.artifacts import base_load, base_model

    root = tmp_path / "base_configs"
    shutil.copytree(base_model.CONFIGS_DIR, root)
    for name, (_, config, _) in TINY.items():
        for target in {config, "sd2"} if config == "sd2_v" else {config}:  # SD 2.x: epsilon and v alike
            for part in ("unet", "vae", "text_encoder", "text_encoder_2"):
                source = tiny_models / name / part / "config.json"
                if source.is_file():
                    value = json.loads(source.read_text(encoding="utf-8"))
                    (root / target / part / "config.json").write_text(json.dumps(value), encoding="utf-8")
    monkeypatch.setattr(base_model, "CONFIGS_DIR", root)
    monkeypatch.setattr(base_load, "_config_dirs", {})  # built tokenizers are per configuration folder
    return root
