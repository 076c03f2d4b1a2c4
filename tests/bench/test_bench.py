"""The benches' smoke mode (``--tiny``): the whole code path of ``bench/bench_train.py`` and
``bench/bench_inference.py`` (model folder, child processes, baseline against ours, the table, the JSON)
on storyboard.devkit.tiny's toy model, in mixed precision too, so a GPU session does not spend its minutes on
crashes. Nothing here is a speed figure: only that each row was measured and is plausible."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from support import REPO, run_front_door, user_env

BENCH = REPO / "bench"


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """One work folder for both benches: the toy model is built once and reused, as a real --work is."""
    return tmp_path_factory.mktemp("bench_work")


def _bench(script: str, *args, env: dict | None = None) -> subprocess.CompletedProcess:
    return run_front_door(BENCH / script, *args, cwd=REPO, env=env, timeout=600)


def _one_json(folder: Path, pattern: str) -> dict:
    [path] = sorted(folder.glob(pattern))
    return json.loads(path.read_text())


def test_bench_train_tiny_bf16_measures_every_configuration(work, tmp_path):
    proc = _bench("bench_train.py", "--tiny", "--precision", "bf16", "--work", work, "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = _one_json(tmp_path, "bench_train-tiny-*.json")
    assert report["tiny"] is True and report["resolution"] == 64 and report["steps"] == 3
    rows = {r["config"]: r for r in report["results"]}
    assert set(rows) == {"baseline (diffusers example)", "ours", "ours + gradient checkpointing"}
    for row in rows.values():
        assert row["precision"] == "bf16" and row["batch"] == 2 and row["steps"] == 3
        assert row["images_per_s"] > 0 and row["peak_memory_bytes"] > 0 and row["speedup_vs_baseline"] > 0
    assert rows["baseline (diffusers example)"]["speedup_vs_baseline"] == 1.0
    assert report["table"] in proc.stdout  # the printed table is the saved one
    assert all(label in report["table"] for label in rows)


def test_bench_inference_tiny_bf16_compares_ours_with_plain(work, tmp_path):
    """bf16: the mixed-precision branch (fp32 is the CPU default that tests/test_inference.py runs)."""
    from storyboard.inference.pngmeta import read_png_metadata

    proc = _bench("bench_inference.py", "--tiny", "--dtype", "bf16", "--work", work, "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = _one_json(tmp_path, "inference-tiny-*.json")
    assert report["tiny"] is True and report["dtype"] == "bf16"
    assert (report["size"], report["images"], report["batch_size"]) == (64, 2, 2)
    rows = {r["pipeline"]: r for r in report["results"]}
    assert set(rows) == {"ours (fused LoRA, tokens)", "plain diffusers (LoRA unfused)"}
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 and r["load_s"] >= 0 for r in rows.values())
    assert report["table"] in proc.stdout and all(name in report["table"] for name in rows)
    # our side wrote its images as inference_trigger.py does, saying the dtype they were made in
    meta = read_png_metadata(work / "images" / "ours-1.png")
    assert meta["dtype"] == "bfloat16" and meta["width"] == 64


@pytest.mark.parametrize("script, flags", [("bench_train.py", ["--precision", "fp16"]),
                                           ("bench_inference.py", ["--dtype", "fp16", "--device", "cpu"])])
def test_fp16_on_the_cpu_is_one_clear_line(tmp_path, script, flags):
    proc = _bench(script, "--tiny", *flags, "--work", tmp_path / "work", "--results", tmp_path,
                  env=user_env(CUDA_VISIBLE_DEVICES=""))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"{script}: error: ") and "fp16" in lines[0] and "GPU" in lines[0]
    assert not list(tmp_path.glob("*.json"))
