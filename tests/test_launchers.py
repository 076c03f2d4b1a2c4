"""The four launchers run without an activated virtual environment: each sources launcher_env.sh, which
finds the project's .venv (or the active environment, or PYTHON), and says in one line how to get one
when there is none. The shell a new user has: no venv on PATH, no VIRTUAL_ENV, no PYTHON."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from support import REPO, VENV_BIN, run_command

LAUNCHERS = {  # launcher -> the front door it runs (which the fake checkout links to the real one)
    "shot_trigger_train.sh": "train_trigger02.py",
    "inference_trigger2.sh": "inference_trigger.py",
    "validation/validation.sh": "validation/run_validation.py",
    "validation/base_valid.sh": "validation/run_validation.py",
}


def bare_env(**extra: str) -> dict[str, str]:
    """A login shell's environment without any Python environment: the system PATH only."""
    env = {k: v for k, v in os.environ.items() if k in ("HOME", "LANG", "LC_ALL", "TMPDIR", "USER")}
    env.update(PATH="/usr/bin:/bin", OMP_NUM_THREADS="1", STORYBOARD_NO_PROGRESS="1")
    env.update(extra)
    return env


def checkout(tmp_path: Path, with_venv: bool) -> Path:
    """A copy of the launchers laid out as in the repository; the front doors are links to the real
    ones (they import the package from where they really are); ``.venv`` links to this test's venv."""
    root = tmp_path / "repo"
    for launcher, front_door in LAUNCHERS.items():
        for name in (launcher, front_door):
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            if name == launcher:
                shutil.copy(REPO / name, root / name)
            elif not (root / name).exists():
                (root / name).symlink_to(REPO / name)
    shutil.copy(REPO / "launcher_env.sh", root / "launcher_env.sh")
    if with_venv:
        (root / ".venv").symlink_to(VENV_BIN.parent, target_is_directory=True)
    return root


def test_the_system_shell_has_no_python_with_the_requirements():
    """The premise of the tests below (else they would prove nothing)."""
    proc = run_command(["bash", "-c", "command -v accelerate || python3 -c 'import accelerate'"], env=bare_env())
    assert proc.returncode != 0, proc.stdout


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_without_any_environment_each_launcher_says_how_to_get_one(tmp_path, launcher):
    root = checkout(tmp_path, with_venv=False)
    proc = run_command(["bash", root / launcher, "--help"], cwd=tmp_path, env=bare_env())
    assert proc.returncode == 2, proc.stdout + proc.stderr
    [line] = proc.stderr.strip().splitlines()
    name = Path(launcher).name
    assert line.startswith(f"{name}: error: no Python with the project's requirements found"), line
    assert "make setup" in line and "source .venv/bin/activate" in line and "not found" not in line


def test_train_launcher_uses_the_project_venv(tmp_path):
    """Today's failure (`exec: accelerate: not found`) is gone: accelerate runs from the .venv's Python."""
    root = checkout(tmp_path, with_venv=True)
    proc = run_command(["bash", root / "shot_trigger_train.sh", "--help"], cwd=tmp_path, env=bare_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "--pretrained_model_name_or_path" in proc.stdout and "--report_to" in proc.stdout
    assert f"(Python: {root}/.venv/bin/python)" in proc.stderr


def test_inference_launcher_uses_the_project_venv_and_honours_python(tmp_path):
    root = checkout(tmp_path, with_venv=True)
    proc = run_command(["bash", root / "inference_trigger2.sh", "--help"], cwd=tmp_path, env=bare_env())
    assert proc.returncode == 0, proc.stderr
    assert "--translate" in proc.stdout
    # PYTHON set to one without the requirements: one line naming it
    proc = run_command(["bash", root / "inference_trigger2.sh", "--help"], cwd=tmp_path,
                       env=bare_env(PYTHON="/usr/bin/env"))
    [line] = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "inference_trigger2.sh: error: PYTHON=/usr/bin/env cannot import" in line, line
    # PYTHON set to this venv's interpreter works without a .venv in the checkout
    bare = checkout(tmp_path / "other", with_venv=False)
    proc = run_command(["bash", bare / "inference_trigger2.sh", "--help"], cwd=tmp_path,
                       env=bare_env(PYTHON=sys.executable))
    assert proc.returncode == 0, proc.stderr
