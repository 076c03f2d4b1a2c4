"""validation/: the prompt set, sharding, resuming, the report, and validation.sh / base_valid.sh under
accelerate launch with two CPU processes in a folder laid out like the seed's root."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from storyboard.core.cli import UserError
from storyboard.core.vocabulary import load_vocabulary
from storyboard.inference.prompt_files import make_validation_records, read_validation_prompts
from storyboard.inference.validate import shard

from support import run_command, user_env
from trigger_helpers import VALIDATION, pixels, seed_root


@pytest.fixture(scope="module")
def vocab():
    return load_vocabulary()


def _small_prompts(path: Path, vocab, shots=("full", "medium", "close_up"), seeds=(0, 1)) -> Path:
    from storyboard.core.records import write_jsonl

    write_jsonl(path, make_validation_records(vocab, ["a man"], list(seeds), list(shots), ["eye_level"], ["outdoor"]))
    return path


# --------------------------------------------------------------------------------------------
# The prompt set
# --------------------------------------------------------------------------------------------
def test_default_prompt_set_is_the_full_cross_product(vocab):
    records = make_validation_records(vocab, ["a", "b"], [0, 1])
    n = len(vocab.shot_sizes) * len(vocab.angles) * len(vocab.locations) * 2 * 2
    assert len(records) == n and len({r["id"] for r in records}) == n
    for r in records:
        term = vocab.get("shot_size", r["shot_size"])
        assert r["prompt"].startswith(f"{term.token}, {term.name}, ")


def test_committed_validation_jsonl_matches_the_generator(vocab):
    """validation/validation.jsonl is what make_validation_jsonl.py writes with its defaults."""
    committed = read_validation_prompts(VALIDATION / "validation.jsonl", vocab)
    assert 100 <= len(committed) <= 600
    sys.path.insert(0, str(VALIDATION))
    try:
        import make_validation_jsonl as mvj
    finally:
        sys.path.remove(str(VALIDATION))
    fresh = make_validation_records(vocab, mvj.SUBJECTS, mvj.SEEDS, mvj.SHOTS, mvj.ANGLES, mvj.LOCATIONS,
                                    mvj.NEGATIVE_PROMPT)
    assert [r["id"] for r in committed] == [r["id"] for r in fresh]


def test_subset_flags_and_korean_shot_names(tmp_path, vocab):
    out = tmp_path / "v.jsonl"
    proc = run_command([sys.executable, VALIDATION / "make_validation_jsonl.py", "--shots", "풀샷", "medium",
                       "--angles", "eye_level", "--locations", "outdoor", "--subjects", "a man", "--seeds", 0,
                       "--output", out], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    records = read_validation_prompts(out, vocab)
    assert [r["shot_size"] for r in records] == ["full", "medium"]
    bad = run_command([sys.executable, VALIDATION / "make_validation_jsonl.py", "--shots", "wide-ish", "--output", out],
                     cwd=tmp_path)
    assert bad.returncode == 2 and "unknown shot size 'wide-ish'" in bad.stderr


def test_hand_edited_lines(tmp_path, vocab):
    path = tmp_path / "v.jsonl"
    path.write_text('\ufeff{"prompt": "<ms_trg>, a woman"}\r\n\r\n{"prompt": "a street at night", "seed": 3}\n',
                    encoding="utf-8")
    records = read_validation_prompts(path, vocab)
    assert [r["shot_size"] for r in records] == ["medium", None]
    assert records[0]["seed"] == 0 and records[1]["seed"] == 3
    assert len({r["id"] for r in records}) == 2
    path.write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="repeats line 1"):
        read_validation_prompts(path, vocab)
    path.write_text('{"prompt": "x"}\n{"prompt": \n', encoding="utf-8")
    with pytest.raises(UserError, match="line 2"):
        read_validation_prompts(path, vocab)


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_processes", [1, 2, 3, 4])
@pytest.mark.parametrize("count", [0, 1, 3, 7, 384])
def test_shards_cover_every_prompt_exactly_once(num_processes, count):
    items = list(range(count))
    shards = [shard(items, num_processes, i) for i in range(num_processes)]
    assert sorted(x for s in shards for x in s) == items  # every prompt, none twice
    assert [x for s in shards for x in s] == items  # contiguous, in order (like split_between_processes)
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


SPLIT_COUNTS = (0, 1, 2, 3, 4, 7, 11)
SPLIT_SCRIPT = """
import json, sys
from accelerate import PartialState
from storyboard.inference.validate import shard

state = PartialState(cpu=True)
splits = {}
for count in map(int, sys.argv[2:]):
    items = list(range(count))
    with state.split_between_processes(items) as mine:
        splits[count] = {"accelerate": list(mine), "ours": shard(items, state.num_processes, state.process_index)}
with open(f"{sys.argv[1]}/{state.process_index}.json", "w") as fh:
    json.dump({"index": state.process_index, "processes": state.num_processes, "splits": splits}, fh)
"""


def test_shard_matches_accelerate_split(tmp_path):
    """Under ``accelerate launch`` with three processes each one's shard is what accelerate's own
    ``PartialState.split_between_processes`` hands it. Controls: there really were three processes,
    their shards differ and together hold every item once (one process, where a shard is
    everything, would fail here), and a round-robin split, which also covers everything, disagrees
    with accelerate's, so equality with accelerate's contiguous split is not automatic."""
    script = tmp_path / "split.py"
    script.write_text(SPLIT_SCRIPT, encoding="utf-8")
    (tmp_path / "out").mkdir()
    proc = run_command(["accelerate", "launch", "--multi_gpu", "--num_processes", 3, script, tmp_path / "out",
                        *SPLIT_COUNTS],
                       cwd=tmp_path, env=user_env(CUDA_VISIBLE_DEVICES=""))
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = [json.loads((tmp_path / "out" / f"{i}.json").read_text()) for i in range(3)]
    assert [(s["index"], s["processes"]) for s in seen] == [(0, 3), (1, 3), (2, 3)]
    for count in SPLIT_COUNTS:
        items = list(range(count))
        got = [s["splits"][str(count)] for s in seen]
        assert [g["ours"] for g in got] == [g["accelerate"] for g in got], count
        shards = [g["accelerate"] for g in got]
        assert sorted(x for s in shards for x in s) == items  # every item, none twice
        if count >= 3:
            assert all(s and s != t for s, t in zip(shards, shards[1:])), shards  # the processes split the work
        round_robin = [items[i::3] for i in range(3)]
        if count >= 4:
            assert round_robin != shards, count  # another full cover that accelerate does not use


# --------------------------------------------------------------------------------------------
# Running, resuming
# --------------------------------------------------------------------------------------------
def _args(tiny_models: Path, prompts: Path, out: Path, checkpoints=(), base_only=False, **over) -> argparse.Namespace:
    values = {"base_model": tiny_models / "model_sd", "checkpoint": list(checkpoints), "base_only": base_only,
              "prompts": prompts, "limit": 0, "output_dir": out, "overwrite": False, "no_report": True,
              "device": "cpu", "dtype": "auto", "compile": False, "no_fuse": False, "allow_base_mismatch": False,
              "negative_prompt": "", "steps": 2, "guidance": 7.5, "scheduler": "default", "lora_scale": 1.0,
              "width": None, "height": None, "batch_size": 2, "clip_model": "", "clip_checkpoint": "",
              "vocabulary": None}
    values.update(over)
    return argparse.Namespace(**values)


def test_resume_skips_finished_images(tmp_path, tiny_models, trained_checkpoint, vocab):
    from storyboard.inference.validate import run_validation

    prompts = _small_prompts(tmp_path / "v.jsonl", vocab)
    out = tmp_path / "output"
    args = _args(tiny_models, prompts, out, [trained_checkpoint])
    first = run_validation(args, log=lambda *a: None)
    [col] = first.columns
    assert (len(col.jobs), col.made, col.skipped) == (4, 4, {"<cu_trg>": 2})  # close-up was not trained
    files = sorted((out / "train_fs").glob("*.png"))
    stamps = {f: f.stat().st_mtime_ns for f in files}

    again = run_validation(args, log=lambda *a: None)
    assert again.columns[0].made == 0 and all(f.stat().st_mtime_ns == stamps[f] for f in files)

    files[0].unlink()  # one image lost: only it is made again
    third = run_validation(args, log=lambda *a: None)
    assert third.columns[0].made == 1 and third.columns[0].stale == 0

    changed = run_validation(_args(tiny_models, prompts, out, [trained_checkpoint], steps=3), log=lambda *a: None)
    assert changed.columns[0].made == 4 and changed.columns[0].stale == 4  # other settings: made again
    sidecar = [json.loads(line) for line in (out / "train_fs" / "images.jsonl").read_text().splitlines()]
    assert len(sidecar) == 4 and {r["steps"] for r in sidecar} == {3}


def test_checkpoint_trained_for_v_prediction_is_validated_as_it(tmp_path, tiny_models, trained_checkpoint, vocab):
    """A column whose checkpoint was trained to predict v on an epsilon base is sampled as v-prediction
    (its run.json says so) and its images differ from the same weights sampled as epsilon; the base
    column keeps the base's own. Control: with ``--prediction-type epsilon`` the same column makes
    exactly the epsilon column's images, so the difference is the prediction type alone."""
    from storyboard.inference.validate import run_validation

    v_checkpoint = tmp_path / "train_v"
    shutil.copytree(trained_checkpoint, v_checkpoint)
    manifest = json.loads((v_checkpoint / "trigger_manifest.json").read_text())
    manifest["base_model"]["prediction_type"] = "v_prediction"
    (v_checkpoint / "trigger_manifest.json").write_text(json.dumps(manifest))
    prompts = _small_prompts(tmp_path / "v.jsonl", vocab, shots=("medium",), seeds=(0, 1))

    def columns(out: Path, **over) -> dict[str, tuple[str, list]]:
        run_validation(_args(tiny_models, prompts, out, [trained_checkpoint, v_checkpoint], base_only=True, **over),
                       log=lambda *a: None)
        return {name: (json.loads((out / name / "run.json").read_text())["base"]["prediction_type"],
                       [pixels(p) for p in sorted((out / name).glob("*.png"))])
                for name in ("base", "train_fs", "train_v")}

    recorded = columns(tmp_path / "recorded")
    assert [recorded[n][0] for n in ("base", "train_fs", "train_v")] == ["epsilon", "epsilon", "v_prediction"]
    assert len(recorded["train_v"][1]) == 2
    for eps, v in zip(recorded["train_fs"][1], recorded["train_v"][1]):
        assert np.abs(eps - v).max() > 10
    flagged = columns(tmp_path / "flagged", prediction_type="epsilon")
    assert flagged["train_v"][0] == "epsilon"
    for eps, v in zip(recorded["train_fs"][1], flagged["train_v"][1]):
        assert np.array_equal(eps, v)


def test_base_column_uses_plain_words(tmp_path, tiny_models, vocab):
    from storyboard.inference.validate import run_validation

    prompts = _small_prompts(tmp_path / "v.jsonl", vocab, shots=("full",), seeds=(0,))
    run_validation(_args(tiny_models, prompts, tmp_path / "out", base_only=True), log=lambda *a: None)
    [meta] = [json.loads(line) for line in (tmp_path / "out" / "base" / "images.jsonl").read_text().splitlines()]
    assert meta["prompt"] == "full shot, eye level, outdoor, a man"
    assert meta["prompt_asked"].startswith("<fs_trg>, full shot") and meta["lora_hashes"] == {}


# --------------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------------
class AlwaysFull:
    """A fake judge: every image is a full shot."""

    name = "always-full"

    def judge(self, images):
        from types import SimpleNamespace

        return [SimpleNamespace(shot_size="full", score=1.0) for _ in images]


def test_fidelity_table_counts(tmp_path, tiny_models, trained_checkpoint, vocab):
    from storyboard.inference.report import write_report
    from storyboard.inference.validate import run_validation

    prompts = _small_prompts(tmp_path / "v.jsonl", vocab)
    out = tmp_path / "out"
    run_validation(_args(tiny_models, prompts, out, base_only=True), log=lambda *a: None)
    run_validation(_args(tiny_models, prompts, out, [trained_checkpoint]), log=lambda *a: None)
    result = write_report(out, read_validation_prompts(prompts, vocab), vocab, AlwaysFull(), log=lambda *a: None)
    table = result.fidelity
    assert table.columns == ["base", "train_fs"]
    assert table.counts[("full", "base")] == (2, 2) and table.counts[("medium", "base")] == (0, 2)
    assert table.counts[("full", "train_fs")] == (2, 2) and ("close_up", "train_fs") not in table.counts
    assert table.totals("base") == (2, 6) and table.totals("train_fs") == (2, 4)
    page = result.index.read_text(encoding="utf-8")
    assert "Trigger fidelity" in page and "2/6 (33%)" in page and "always-full" in page
    assert [p.name for _, p in result.grids] == ["grid-close_up-01.png", "grid-medium-01.png", "grid-full-01.png"]
    from PIL import Image

    with Image.open(result.grids[0][1]) as grid:  # 2 rows x (base + train_fs) cells of 64 px
        assert grid.height >= 2 * 64 and grid.width >= 2 * 64

    from storyboard.inference.report import read_report_summary  # what the demo index shows

    (header, rows), grids, index = read_report_summary(out)
    assert header[1:] == ["base", "train_fs"] and rows[-1] == ["all", "2/6 (33%)", "2/4 (50%)"]
    assert len(grids) == 3 and index == result.index


def test_report_with_clip_weights(tmp_path, tiny_models, vocab):
    """With CLIP weights: the zero-shot judge and the CLIP score (tiny open_clip here)."""
    from storyboard.inference.validate import run_validation

    prompts = _small_prompts(tmp_path / "v.jsonl", vocab, shots=("full", "medium"), seeds=(0,))
    out = tmp_path / "out"
    run_validation(_args(tiny_models, prompts, out, base_only=True), log=lambda *a: None)
    import importlib.util

    spec = importlib.util.spec_from_file_location("validation_report_script", VALIDATION / "report.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--prompts", str(prompts), "--output-dir", str(out),
                        "--clip-model", f"local-dir:{tiny_models / 'clip'}", "--device", "cpu"]) == 0
    assert "clip-zero-shot" in (out / "report" / "fidelity.json").read_text()
    scores = json.loads((out / "report" / "clip_scores.json").read_text())
    assert set(scores) == {"base/full-eye_level-outdoor-p0-s0", "base/medium-eye_level-outdoor-p0-s0"}
    assert all(0 <= v <= 100 for v in scores.values())
    assert "CLIP score" in (out / "report" / "index.html").read_text(encoding="utf-8")


# --------------------------------------------------------------------------------------------
# The shell launchers, two CPU processes, the seed's layout
# --------------------------------------------------------------------------------------------
def test_validation_sh_two_processes_in_seed_layout(tmp_path, tiny_models, trained_checkpoint, vocab):
    """`cd validation && bash validation.sh` (+ base_valid.sh) with the defaults pointing at ../model_sd and
    ../model_sd_weight/train_fs, under accelerate launch with two CPU processes."""
    from storyboard.inference.validate import run_validation

    root = seed_root(tmp_path / "seed", tiny_models, trained_checkpoint)
    vdir = root / "validation"
    vdir.mkdir()
    for name in ("validation.sh", "base_valid.sh", "run_validation.py"):
        (vdir / name).symlink_to(VALIDATION / name)
    _small_prompts(vdir / "validation.jsonl", vocab)
    # base_valid.sh as it comes (no accelerate config, no GPU: one process), validation.sh on two
    for script, launch, processes in (("base_valid.sh", "", 1), ("validation.sh", "--multi_gpu --num_processes 2", 2)):
        env = user_env(PYTHON=sys.executable, ACCELERATE_ARGS=launch, STEPS="2")
        proc = run_command(["bash", script], cwd=vdir, env=env)
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
        assert f"{processes} process(es)" in proc.stdout
    out = vdir / "output"
    for column, expected, processes in (("base", 6, {0}), ("train_fs", 4, {0, 1})):
        sidecar = [json.loads(line) for line in (out / column / "images.jsonl").read_text().splitlines()]
        assert len(sidecar) == expected == len({r["id"] for r in sidecar})  # every prompt once
        assert {r["process"] for r in sidecar} == processes
        assert {r["num_processes"] for r in sidecar} == {len(processes)}
    page = (out / "report" / "index.html").read_text(encoding="utf-8")
    assert "Trigger fidelity" in page and "train_fs" in page and "base" in page and "grid-full-01.png" in page

    # the same images as one process makes: an image depends on its seed, not on its shard (up to
    # float rounding: one thread per process there, two here)
    single = run_validation(_args(tiny_models, vdir / "validation.jsonl", tmp_path / "single", [trained_checkpoint],
                                  batch_size=1), log=lambda *a: None)
    assert single.columns[0].made == 4
    for png in (out / "train_fs").glob("*.png"):
        assert np.abs(pixels(png) - pixels(tmp_path / "single" / "train_fs" / png.name)).max() <= 2, png.name


def test_launcher_errors_are_one_line(tmp_path, tiny_models):
    env = user_env(PYTHON=sys.executable)
    proc = run_command(["bash", VALIDATION / "validation.sh", "--base-model", tiny_models / "model_sd", "--checkpoint",
                       tmp_path / "missing", "--width", "64"], cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    missing = tmp_path / "missing"
    assert proc.stderr.strip().splitlines() == [f"run_validation.py: error: checkpoint folder not found: {missing}"]
