"""What every test folder needs: where the repository is, and running a front door as a user would.

Tests live beside their stage (``tests/metadata/``, ``tests/images/``, ``tests/clustering/``,
``tests/train/``, ``tests/inference/``, ``tests/core/``, ``tests/devkit/``); a folder's own helpers sit in it
(``metadata_helpers.py``, ...). ``tests/conftest.py`` holds the shared session fixtures (``tiny_models``,
``sample_data``) and puts this folder on ``sys.path``, so ``from support import ...`` works everywhere.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


def user_env(**extra: str) -> dict[str, str]:
    """The environment a user's shell has: the venv's ``bin`` first on PATH (launchers call
    ``accelerate``), the repository importable, one thread per process (2 shared cores), no progress
    bars in captured output."""
    env = dict(os.environ)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "STORYBOARD_NO_PROGRESS": "1",
                "PYTHONUNBUFFERED": "1"})
    env.pop("ACCELERATE_LAUNCH_ARGS", None)  # a developer's own launcher settings must not leak in
    env.update(extra)
    return env


def run_command(argv, cwd: Path | None = None, env: dict | None = None,
                timeout: int = 300) -> subprocess.CompletedProcess:
    """Run a command line (``bash x.sh ...``, ``python -m ...``) the way a user types it; output captured."""
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env or user_env(), text=True,
                          capture_output=True, timeout=timeout)


def run_front_door(script: Path | str, *args: object, cwd: Path | None = None, env: dict | None = None,
                   timeout: int = 300, check: bool = False) -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS...`` from ``cwd``, as a user runs a front door; ``check`` asserts exit 0."""
    proc = run_command([sys.executable, script, *args], cwd=cwd, env=env, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stderr + proc.stdout
    return proc


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """A user's mistake: exit 2 and one ``error:`` line naming each fragment, never a traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert "error:" in line, proc.stderr
    for fragment in fragments:
        assert fragment in line, line
    return line


def read_jsonl(path: Path) -> list[dict]:
    """Records of a JSONL file we wrote (blank lines skipped)."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
