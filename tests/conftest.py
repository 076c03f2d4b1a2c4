"""Fixtures shared by the test modules. Keep each one small and documented; heavy ones session-scoped."""
from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding every tiny model of ``storyboard.tiny`` (model_sd/, clip/, ...), built once.

    Treat it as read-only: it is shared by the whole session. A test that needs to change a model
    copies it first (or builds its own with ``build_all(tmp_path, only=[...])``).
    """
    from storyboard.tiny import build_all

    out = tmp_path_factory.mktemp("tiny_models")
    build_all(out, seed=0)
    return out
