"""``make proof``'s path in miniature: a seconds-scale world (``--tiny``: a few dozen renders, a few
training steps; it proves that the path runs, not that the method learns) through the same code and the
same front doors (``shot_trigger_train.sh``, ``validation/base_valid.sh``, ``validation/validation.sh``
with ``JUDGE=``), so the proof cannot rot. The full proof is a benchmark: docs/proof.md.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

from storyboard.devkit.demo import proof_section
from storyboard.devkit.proof.build import build_world
from storyboard.devkit.proof.config import WorldConfig, tiny_world_config, world_dir
from storyboard.devkit.proof.page import wilson

from support import assert_one_line_error, run_command, user_env

STEPS = ("training set", "training", "validation prompts", "base validation", "trained validation + report")


def _proof(work, cache, *extra):
    return run_command([sys.executable, "-m", "storyboard.devkit.proof", "--tiny", "--work", work, "--world-cache",
                        cache, "--workers", 1, *extra], env=user_env(), timeout=900)


@pytest.fixture(scope="module")
def proof_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("proof")
    proc = _proof(root / "proof_run", root / "cache")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return root, proc


def test_the_miniature_runs_the_front_doors_and_writes_the_page(proof_run):
    root, proc = proof_run
    work = root / "proof_run"
    world = world_dir(root / "cache", tiny_world_config())
    assert (world / "world.json").is_file() and (world / "model_sd" / "model_index.json").is_file()
    # laid out like the seed's root, model_sd being the world's SD folder
    assert (work / "model_sd").resolve() == (world / "model_sd").resolve()
    # Dataset_fin came through collect -> 01 -> 02 -> 03 -> clustering, every render kept, trigger captions
    figures = json.loads((work / "proof.json").read_text())
    assert [s["written"] for s in figures["data_stages"].values()] == [12] * 5
    records = [json.loads(line) for line in (work / "Dataset_fin" / "metadata.jsonl").read_text().splitlines()]
    assert len(records) == 12 and all(r["text"].startswith(("<cu_trg>, close-up", "<ms_trg>, medium shot",
                                                             "<ls_trg>, long shot")) for r in records)
    assert {r["shot_size"] for r in records} == {"close_up", "medium", "long"}
    assert all(r["shot_size_source"] == "tag" and r["balance_copy"] == 0 for r in records)
    manifest = json.loads((work / "model_sd_weight" / "train_proof" / "trigger_manifest.json").read_text())
    assert manifest["training"]["final"] and manifest["training"]["global_step"] == 2
    for step in ("collect_title_matches.py", "01_preprocess_tags.py", "02_translate.py", "03_finalize_dataset.py",
                 "run_clip_clustering.py", "shot_trigger_train.sh", "base_valid.sh", "validation.sh",
                 "make_validation_jsonl.py"):
        assert step in proc.stdout
    # the learned judge judged the report, its held-out accuracy in its name
    fidelity = json.loads((work / "validation" / "output" / "report" / "fidelity.json").read_text())
    judge = json.loads((world / "judge" / "judge.json").read_text())["accuracy"]
    assert fidelity["judge"].startswith("learned judge shot_judge.safetensors")
    assert f"{100 * judge['renders']:.1f} % renders" in fidelity["judge"]
    assert fidelity["columns"] == ["base", "train_proof"]
    assert {c: fidelity["total"][c]["n"] for c in fidelity["columns"]} == {"base": 6, "train_proof": 6}
    assert len(list((work / "validation" / "output" / "report").glob("grid-*.png"))) == 3
    # the page: fidelity with intervals, grids, loss curve, judge confusion, times, configuration
    page = (work / "index.html").read_text(encoding="utf-8")
    for part in ("Trigger fidelity", "95 % interval", "grid-close_up-01.png", "<polyline", "held-out renders",
                 "Time of each phase", "base UNet (3 steps)", "render_size", "NOT reached",
                 "Training set, through the data stages"):
        assert part in page, part
    total = figures["fidelity"]["all"]["train_proof"]
    assert tuple(total["wilson95"]) == pytest.approx(wilson(total["matched"], total["n"]))


def test_a_second_run_reuses_everything(proof_run):
    root, _ = proof_run
    work = root / "proof_run"
    manifest = work / "model_sd_weight" / "train_proof" / "trigger_manifest.json"
    before = manifest.stat().st_mtime_ns
    proc = _proof(work, root / "cache")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "is cached" in proc.stdout and "building world" not in proc.stdout
    for step in STEPS:
        assert f"[proof] {step}: done before with the same inputs; skipped" in proc.stdout, step
    assert manifest.stat().st_mtime_ns == before
    # (the first run did run each step: the fixture's output holds every front door's command line)


def test_the_world_is_found_by_fingerprint_and_a_changed_config_rebuilds(proof_run, tmp_path):
    root, _ = proof_run
    tiny = tiny_world_config()
    logs: list[str] = []
    folder, done = build_world(root / "cache", tiny, log=logs.append)
    assert folder == world_dir(root / "cache", tiny) and any("is cached" in line for line in logs)
    changed = tiny.with_changes({"base": {"steps": 4}})
    assert changed.fingerprint() != tiny.fingerprint()
    logs.clear()
    other, record = build_world(root / "cache", changed, log=logs.append)
    assert other != folder and record["config"]["base"]["steps"] == 4
    assert any("building world" in line for line in logs) and "base UNet (4 steps)" in record["seconds"]
    # a folder whose world.json names another fingerprint (copied or renamed by hand) is not trusted
    stray = world_dir(tmp_path, tiny)
    stray.mkdir(parents=True)
    (stray / "world.json").write_text(json.dumps({**done, "fingerprint": changed.fingerprint()}))
    logs.clear()
    build_world(tmp_path, tiny, log=logs.append)
    assert any("building world" in line for line in logs)


def test_the_default_world_is_the_cached_research_world():
    """The defaults are the research world's configuration (its cache folder is reused as it is)."""
    assert WorldConfig().fingerprint()[:12] == "d77705958bbe"


def test_a_bad_config_is_one_line(tmp_path):
    bad = tmp_path / "world.json"
    bad.write_text(json.dumps({"base": {"stepz": 3}}))
    proc = run_command([sys.executable, "-m", "storyboard.devkit.proof", "--tiny", "--config", bad, "--work",
                        tmp_path / "w", "--world-cache", tmp_path / "c"], env=user_env())
    assert_one_line_error(proc, "--config", "stepz")
    assert not os.path.exists(tmp_path / "c")


def test_the_demo_page_links_the_proof_once_it_exists(tmp_path):
    page = tmp_path / "proof_run" / "index.html"
    absent = proof_section(page)  # control: no page yet, no link, and the section says how to get one
    assert not absent.links and "make proof" in absent.text
    page.parent.mkdir()
    page.write_text("<html></html>")
    assert proof_section(page).links == [("proof_run/index.html", page)]
