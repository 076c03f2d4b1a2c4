"""Fixtures shared by the test modules. Keep each one small and documented; heavy ones session-scoped."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding every tiny model of ``storyboard.devkit.tiny`` (model_sd/, clip/, ...), built once.

    Treat it as read-only: it is shared by the whole session. A test that needs to change a model
    copies it first (or builds its own with ``build_all(tmp_path, only=[...])``).
    """
    from storyboard.devkit.tiny import build_all

    out = tmp_path_factory.mktemp("tiny_models")
    build_all(out, seed=0)
    return out


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sample raw data set from ``storyboard.devkit.sample_data`` (seed 0, 24 images), built once: ``images/``,
    ``raw/crawl_a.jsonl``, ``raw/crawl_b.jsonl``, ``titles.csv``, ``truth/masks/`` and
    ``ground_truth.json`` (the schema is in ``storyboard/sample_data/__init__.py``).

    Treat it as read-only: it is shared by the whole session. A test that needs to change it copies it
    first (or builds its own with ``generate(tmp_path / "set", seed=..., count=...)``).
    """
    from storyboard.devkit.sample_data import generate

    out = tmp_path_factory.mktemp("sample_data") / "set"
    generate(out, seed=0, count=24)
    return out
