"""The package's shape, checked: stages visible from ``ls storyboard/``, short functions and modules,
thin front doors that never reach into the devkit, and ``--help`` that does not wait for torch.

ruff (style, imports at the top) and import-linter (layers, no cycles, no devkit in the product) run
in ``make test`` before pytest; their configuration is in ``pyproject.toml``."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from support import REPO, run_front_door

PACKAGE = REPO / "storyboard"
STAGE_PACKAGES = {"core", "metadata", "images", "clustering", "artifacts", "train", "inference", "engine", "devkit"}
MAX_FUNCTION_LINES = 100
MAX_MODULE_LINES = 600
LONG_MODULE_NOTE = "Why this module is long:"  # the docstring line a longer module must carry
FRONT_DOORS = [
    "Dataset_collect_title_method/collect_title_matches.py",
    "Data_preprocessing_method/01_preprocess_tags.py",
    "Data_preprocessing_method/02_translate.py",
    "Data_preprocessing_method/03_finalize_dataset.py",
    "Data_preprocessing_Line/01_preprocessing.py",
    "Data_preprocessing_Line/contact_sheet.py",
    "Dataset_clustering_method/run_clip_clustering.py",
    "train_trigger02.py",
    "inference_trigger.py",
    "validation/run_validation.py",
    "validation/report.py",
    "validation/make_validation_jsonl.py",
]
HEAVY = ("torch", "diffusers", "transformers", "open_clip", "peft", "accelerate", "ray")


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_the_stages_show_in_the_package_listing():
    entries = {p.name for p in PACKAGE.iterdir() if not p.name.startswith((".", "__"))}
    assert entries == STAGE_PACKAGES, f"storyboard/ should hold the stage packages only, found {sorted(entries)}"
    for name in STAGE_PACKAGES:
        init = PACKAGE / name / "__init__.py"
        assert init.is_file() and ast.get_docstring(ast.parse(init.read_text())), f"{name}/ needs a docstring"


def test_functions_are_short():
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines} lines)")
    assert not long, "functions over ~100 lines:\n" + "\n".join(long)


def test_long_modules_say_why():
    unexplained = []
    for path in _modules():
        text = path.read_text(encoding="utf-8")
        if text.count("\n") > MAX_MODULE_LINES and LONG_MODULE_NOTE not in (ast.get_docstring(ast.parse(text)) or ""):
            unexplained.append(f"{path.relative_to(REPO)} ({text.count(chr(10))} lines)")
    assert not unexplained, f"modules over {MAX_MODULE_LINES} lines without '{LONG_MODULE_NOTE}':\n" + \
        "\n".join(unexplained)


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_front_doors_never_import_the_devkit(front_door):
    tree = ast.parse((REPO / front_door).read_text(encoding="utf-8"))
    imported = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module]
    imported += [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    assert not [m for m in imported if m.startswith("storyboard.devkit")], imported
    assert [m for m in imported if m.startswith("storyboard")], f"{front_door} should call into the package"


@pytest.mark.parametrize("front_door", FRONT_DOORS)
def test_help_answers_without_loading_torch(front_door):
    """``--help`` (and every flag check) runs before any heavy library is imported: a user's typo costs
    a second, not the ten it takes to import torch and diffusers on a cold machine."""
    probe = (f"import runpy, sys; sys.argv = [{front_door!r}, '--help']\n"
             "try:\n    runpy.run_path(sys.argv[0], run_name='__main__')\nexcept SystemExit:\n    pass\n"
             f"print('HEAVY', sorted(m for m in {HEAVY!r} if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "HEAVY []", proc.stdout.strip().splitlines()[-1]


def test_demo_and_tool_modules_run_as_documented(tmp_path):
    for module in ("storyboard.devkit.demo", "storyboard.devkit.tiny", "storyboard.devkit.sample_data"):
        proc = run_front_door("-m", module, "--help", cwd=REPO)
        assert proc.returncode == 0 and "usage:" in proc.stdout, proc.stderr
