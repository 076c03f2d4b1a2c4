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


TRAIN_ROWS = {"baseline", "baseline+cache", "ours-nocache", "ours+table", "ours", "ours+gc"}


def test_bench_train_tiny_bf16_measures_every_configuration(work, tmp_path):
    """Every attribution row, twice, alternating; the rows train what their names say: the whole-table
    row hands the optimizer the 49,408 base rows the baseline also trains, the others do not."""
    json_path = tmp_path / "train.json"
    proc = _bench("bench_train.py", "--tiny", "--precision", "bf16", "--work", work, "--json", json_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(json_path.read_text())
    assert report["complete"] is True and report["tiny"] is True and report["resolution"] == 64
    assert (report["steps"], report["warmup"], report["repeats"]) == (3, 1, 2)
    order = [(r["repeat"], r["config"]) for r in report["runs"]]
    first = [c for rep, c in order if rep == 0]
    assert set(first) == TRAIN_ROWS and [c for rep, c in order if rep == 1] == first[::-1]  # alternated
    rows = {r["config"]: r for r in report["results"]}
    assert set(rows) == TRAIN_ROWS
    for row in rows.values():
        assert row["precision"] == "bf16" and row["batch"] == 2 and not row["errors"]
        assert row["images_per_s"] > 0 and row["peak_memory_bytes"] > 0 and row["speedup_vs_baseline"] > 0
    assert rows["baseline"]["speedup_vs_baseline"] == 1.0
    table_rows = 49408 * 32  # the tiny text encoder's base rows x width
    trainable = {name: row["trainable_params"] for name, row in rows.items()}
    assert trainable["ours+table"] - trainable["ours"] == table_rows
    assert trainable["baseline"] == trainable["baseline+cache"] == trainable["ours+table"]  # same things trained
    assert trainable["ours"] == trainable["ours-nocache"] == trainable["ours+gc"]
    assert report["table"] in proc.stdout  # the printed table is the saved one
    assert all(row["label"] in report["table"] for row in rows.values())


def test_bench_inference_tiny_bf16_compares_ours_with_plain(work, tmp_path):
    """bf16: the mixed-precision branch (fp32 is the CPU default that tests/test_inference.py runs). Three
    sides, two alternating repeats, and the same image from each."""
    from storyboard.inference.pngmeta import read_png_metadata

    proc = _bench("bench_inference.py", "--tiny", "--dtype", "bf16", "--work", work, "--results", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = _one_json(tmp_path, "inference-tiny-*.json")
    assert report["tiny"] is True and report["dtype"] == "bf16" and report["complete"] is True
    assert (report["size"], report["images"], report["batch_size"], report["repeats"]) == (64, 2, 2, 2)
    sides = ["ours (fused LoRA, tokens)", "plain + fuse_lora()", "plain (LoRA unfused)"]
    assert [r["side"] for r in report["runs"]] == sides + sides[::-1]
    rows = {r["pipeline"]: r for r in report["results"]}
    assert set(rows) == set(sides)
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 and r["load_s"] >= 0 for r in rows.values())
    same = report["same_image"]
    assert same["reference"] == "plain + fuse_lora()" and same["lora_effect_max"] > 0
    assert same["ours (fused LoRA, tokens)"]["same"] is True
    assert report["table"] in proc.stdout and all(name in report["table"] for name in rows)
    # our side wrote its images as inference_trigger.py does, saying the dtype they were made in
    meta = read_png_metadata(work / "images" / "ours-1.png")
    assert meta["dtype"] == "bfloat16" and meta["width"] == 64


def test_same_image_check_says_no_when_a_side_differs_or_the_lora_does_nothing(monkeypatch):
    """The bench's same-image verdict can fail: a side off by more than the tolerance, or a LoRA whose
    own effect is too small to tell a fused LoRA from none."""
    import importlib.util

    import numpy as np

    monkeypatch.syspath_prepend(str(BENCH))  # the script imports sd15_random from its own folder
    spec = importlib.util.spec_from_file_location("bench_inference", BENCH / "bench_inference.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    rng = np.random.default_rng(0)
    reference = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    no_lora = np.clip(reference.astype(int) + 40, 0, 255).astype(np.uint8)
    one_off = reference.copy()
    one_off[0, 0, 0] ^= 1
    ours, fused, unfused = bench.SIDES
    firsts = {ours: one_off, fused: reference, unfused: reference}
    assert all(v["same"] for k, v in bench.same_image_check(firsts, no_lora, 2).items() if k in bench.SIDES)
    far = np.clip(reference.astype(int) + 9, 0, 255).astype(np.uint8)
    verdict = bench.same_image_check(dict(firsts, **{ours: far}), no_lora, 2)
    assert verdict[ours]["same"] is False and verdict[unfused]["same"] is True
    blind = bench.same_image_check(firsts, reference, 2)  # the LoRA changes nothing: no verdict is possible
    assert not any(blind[side]["same"] for side in bench.SIDES)


@pytest.mark.parametrize("script, flags", [("bench_train.py", ["--precision", "fp16"]),
                                           ("bench_inference.py", ["--dtype", "fp16", "--device", "cpu"])])
def test_fp16_on_the_cpu_is_one_clear_line(tmp_path, script, flags):
    proc = _bench(script, "--tiny", *flags, "--work", tmp_path / "work", "--results", tmp_path,
                  env=user_env(CUDA_VISIBLE_DEVICES=""))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"{script}: error: ") and "fp16" in lines[0] and "GPU" in lines[0]
    assert not list(tmp_path.glob("*.json"))
