"""Clustering and the balanced set: duplicates, k, the naming paths, balancing, the trigger text, and the
front door run as a user runs it (with its bad-input messages)."""
from __future__ import annotations

import contextlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from storyboard.clustering.cluster import (
    balance,
    choose_k,
    find_duplicates,
    load_manual_labels,
    majority,
    name_clusters,
    run_kmeans,
    trigger_text,
)
from storyboard.clustering.settings import parse_naming, parse_target
from storyboard.core.cli import UserError
from storyboard.core.vocabulary import load_vocabulary

from clustering_helpers import FRONT_DOOR, SHOTS, make_dataset
from support import read_jsonl, run_front_door

VOCAB = load_vocabulary()
ORDER = [t.key for t in VOCAB.shot_sizes]


def blobs(centres: int, per: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    points = [rng.normal(0, 1, dim) * 5 + rng.normal(0, 0.2, (per, dim)) for _ in range(centres)]
    return np.concatenate(points).astype(np.float32)


# -- duplicates ------------------------------------------------------------------------------
def test_near_duplicate_collapses_onto_the_preferred_kept_one():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(5, 8)).astype(np.float32)
    feats[3] = feats[1] + 0.01 * rng.normal(size=8)  # a planted near-copy of 1
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    keys = ["a", "b", "c", "d", "a"]  # 4 has the same bytes as 0
    dups = find_duplicates(feats, keys, order=[0, 1, 2, 3, 4], threshold=0.99)
    found = {(d.index, d.of, d.exact) for d in dups}
    assert found == {(3, 1, False), (4, 0, True)}
    # preference decides which one stays: prefer 3 over 1
    dups = find_duplicates(feats, keys, order=[0, 3, 2, 1, 4], threshold=0.99)
    assert {(d.index, d.of) for d in dups} == {(1, 3), (4, 0)}
    # a threshold above 1 keeps near-copies, still collapses identical bytes
    assert [(d.index, d.exact) for d in find_duplicates(feats, keys, [0, 1, 2, 3, 4], 1.01)] == [(4, True)]


# -- k ------------------------------------------------------------------------------------------
def test_k_chosen_by_silhouette_finds_the_planted_clusters():
    x = blobs(3, 12)
    k, scores = choose_k(x, (2, 6), seed=0)
    assert k == 3 and set(scores) == {2, 3, 4, 5, 6} and scores[3] == max(scores.values())


def test_kmeans_numbers_clusters_by_size_and_refuses_k_above_n():
    x = np.concatenate([blobs(1, 10, seed=1), blobs(1, 4, seed=2)])
    c = run_kmeans(x, 2, seed=0)
    assert (c.labels == 0).sum() == 10 and (c.labels == 1).sum() == 4 and c.distances.shape == (14,)
    with pytest.raises(UserError, match="larger than the number of images"):
        run_kmeans(x, 15, seed=0)
    assert choose_k(x[:2], (2, 6), 0)[0] == 1  # too few to choose: one cluster


# -- naming -------------------------------------------------------------------------------------
def test_label_majority_with_purity_and_the_priority_order():
    clusters = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
    tags = ["full", "full", "full", "long", "close_up", "medium", None, None, None]
    zero = ["long"] * 9
    est = ["full", "full", "long", "long", "close_up", "close_up", "close_up", "medium", "medium"]
    names = name_clusters(clusters, 3, ("labels", "zero-shot"), tags, zero, est, None, min_purity=0.6, min_labelled=2)
    assert (names[0].label, names[0].source, names[0].purity) == ("full", "labels", 0.75)
    assert names[1].source == "zero-shot" and names[1].answers["labels"].note.startswith("purity")  # 50 % < 60 %
    assert names[2].label == "long" and names[2].answers["labels"].n == 0
    by_estimator = name_clusters(clusters, 3, ("estimator",), tags, zero, est, None, 0.6, 2)
    assert [n.label for n in by_estimator] == ["full", "close_up", "medium"]
    assert by_estimator[1].purity == 1.0
    only_labels = name_clusters(clusters, 3, ("labels",), tags, None, None, None, 0.6, 2)
    assert only_labels[2].label is None  # nothing answers: its untagged records get no shot size


def test_manual_labels_json(tmp_path):
    path = tmp_path / "labels.json"
    path.write_text(json.dumps({"clustering_id": "abc", "clusters": {"0": "풀샷", "1": "close-up", "2": ""}}),
                    encoding="utf-8")
    assert load_manual_labels(path, VOCAB, 3, "abc") == {0: "full", 1: "close_up"}
    names = name_clusters(np.array([0, 1, 2]), 3, ("manual", "labels"), [None] * 3, None, None, {0: "full"}, 0.5, 1)
    assert (names[0].label, names[0].source) == ("full", "manual") and names[1].label is None
    with pytest.raises(UserError, match="written for clustering abc"):
        load_manual_labels(path, VOCAB, 3, "other")
    with pytest.raises(UserError, match="does not exist"):
        load_manual_labels(path, VOCAB, 1, "abc")
    path.write_text(json.dumps({"clusters": {"0": "banana"}}), encoding="utf-8")
    with pytest.raises(UserError, match="not a shot size"):
        load_manual_labels(path, VOCAB, 3, "x")


def test_naming_flag_and_majority_ties():
    assert parse_naming("labels, estimator") == ("labels", "estimator")
    with pytest.raises(UserError):
        parse_naming("labels,guess")
    assert majority(["full", "long", None]).label == "full"  # ties: sorted order, deterministic


# -- balancing ----------------------------------------------------------------------------------
def test_balancing_counts():
    shots = ["full"] * 10 + ["long"] * 4 + ["close_up"] * 2
    tagged = [i % 2 == 0 for i in range(16)]
    dist = [float(i) for i in range(16)]
    plan = balance(shots, tagged, dist, ORDER, "median", repeat=False, max_repeat=3, seed=0)
    assert plan.target == 4
    assert plan.per_shot["full"] == {"before": 10, "kept": 4, "dropped": 6, "repeats": 0, "after": 4}
    assert plan.per_shot["close_up"]["after"] == 2 and len(plan.keep) + len(plan.dropped) == 16
    kept_full = [i for i in plan.keep if shots[i] == "full"]
    assert all(tagged[i] for i in kept_full)  # tag-labelled records are kept first

    plan = balance(shots, tagged, dist, ORDER, 6, repeat=True, max_repeat=2, seed=0)
    assert plan.per_shot["long"] == {"before": 4, "kept": 4, "dropped": 0, "repeats": 2, "after": 6}
    assert plan.per_shot["close_up"]["after"] == 4  # at most 2 copies of each of its 2 records
    assert plan.per_shot["full"]["after"] == 6
    again = balance(shots, tagged, dist, ORDER, 6, repeat=True, max_repeat=2, seed=0)
    assert again.keep == plan.keep and again.repeats == plan.repeats  # seeded

    assert balance(shots, tagged, dist, ORDER, None, False, 3, 0).dropped == []
    assert parse_target("min") == "min" and parse_target("12") == 12 and parse_target("none") is None
    with pytest.raises(UserError):
        parse_target("most")


# -- text ---------------------------------------------------------------------------------------
def test_trigger_token_leads_the_text():
    full, medium = VOCAB.get("shot_size", "full"), VOCAB.get("shot_size", "medium")
    assert trigger_text("full shot, eye level, outdoor, a man walks, slowly", full, VOCAB) \
        == "<fs_trg>, full shot, eye level, outdoor, a man walks, slowly"
    assert trigger_text("eye level, outdoor, a man", full, VOCAB) == "<fs_trg>, full shot, eye level, outdoor, a man"
    assert trigger_text("<fs_trg>, full shot, indoor", medium, VOCAB) == "<ms_trg>, medium shot, indoor"
    once = trigger_text("close-up, a face", full, VOCAB)
    assert trigger_text(once, full, VOCAB) == once == "<fs_trg>, full shot, a face"
    assert trigger_text(None, full, VOCAB) == "<fs_trg>, full shot"


# -- the front door -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_models) -> Path:
    """A project root laid out like the seed's, with a finalized data set and the tiny CLIP."""
    root = tmp_path_factory.mktemp("project")
    make_dataset(root)
    shutil.copytree(tiny_models / "clip", root / "clip")
    return root


ARGS = ["--clip-model", "local-dir:clip", "--naming", "labels,estimator", "--dedupe-threshold", "0.9999",
        "--balance-target", "3", "--k", "4"]


def test_front_door_as_a_user_runs_it(project):
    fin = project / "Dataset_fin"
    before = read_jsonl_lenient(fin / "metadata.jsonl")
    proc = run_front_door(FRONT_DOOR, *ARGS, cwd=project)
    assert proc.returncode == 0, proc.stderr
    out = read_jsonl(fin / "metadata.jsonl")
    rejects = read_jsonl(fin / "clustering.rejects.jsonl")
    run = json.loads((fin / "clustering.run.json").read_text(encoding="utf-8"))
    assert (fin / "metadata_prebalance.jsonl").read_bytes().startswith(b'{"id": "extreme_close_up-0"')
    reasons = {r["reason"] for r in rejects}
    assert {"malformed_json", "missing_image", "unreadable_image", "duplicate"} <= reasons
    dup = {r["record"]["id"]: r for r in rejects if r["reason"] == "duplicate"}
    assert dup["copy"]["duplicate_of"] == "full-1" and "same image bytes" in dup["copy"]["detail"]
    assert dup["reencoded"]["duplicate_of"] == "full-1" and dup["reencoded"]["similarity"] >= 0.9999
    # accounting: every line read went to the output or the rejects (repeats are extra copies)
    originals = [r for r in out if r["balance_copy"] == 0]
    assert run["summary"]["read"] == len(before) + 1 == len(originals) + len(rejects)
    # every earlier field kept, the new ones added, the trigger token first
    source = {r["id"]: r for r in before}
    for record in originals:
        earlier = source[record["id"]]
        assert all(record[k] == v for k, v in earlier.items() if k not in ("text", "shot_size"))
        assert record["text_before_trigger"] == earlier["text"]
        term = VOCAB.get("shot_size", record["shot_size"])
        assert record["text"].startswith(f"{term.token}, {term.name}, ") and record["trigger_token"] == term.token
        assert record["shot_size_source"] in ("tag", "labels", "estimator")
        assert record["shot_size_inferred"] == (earlier["shot_size"] is None)
        assert isinstance(record["cluster"], int) and record["cluster_distance"] >= 0
        assert record["shot_size_estimate"] in ORDER
    counts = {s: sum(r["shot_size"] == s for r in out) for s in SHOTS}
    assert max(counts.values()) <= 3  # --balance-target 3
    assert any(r["shot_size_inferred"] for r in originals)
    gallery = project / "Dataset_clustering_method" / "gallery"
    assert (gallery / "index.html").is_file() and (gallery / "confusion_tags_vs_estimator.png").is_file()
    template = json.loads((gallery / "cluster_labels.template.json").read_text(encoding="utf-8"))
    assert template["clustering_id"] == originals[0]["clustering_id"] and len(template["clusters"]) == 4
    assert "embedded now" in proc.stdout and "gallery:" in proc.stdout

    # a re-run reads the pre-balance copy, embeds nothing and writes the same file
    first = (fin / "metadata.jsonl").read_bytes()
    main_in_process(ARGS, project)
    assert (fin / "metadata.jsonl").read_bytes() == first
    assert json.loads((fin / "clustering.run.json").read_text())["summary"]["extra"]["embedded now"] == 0

    # a person's labels, written from the template, name the clusters
    template["clusters"] = {"0": "익스트림 롱샷"}
    labels = project / "my_labels.json"
    labels.write_text(json.dumps(template, ensure_ascii=False), encoding="utf-8")
    main_in_process([*ARGS[:3], "manual,labels", *ARGS[4:], "--cluster-labels", labels], project)
    report = json.loads((gallery / "clustering_report.json").read_text(encoding="utf-8"))
    assert report["clusters"][0]["source"] == "manual" and report["clusters"][0]["label"] == "extreme_long"

    # zero-shot with the tiny CLIP: meaningless labels, but every cluster gets one
    main_in_process([*ARGS[:3], "zero-shot", *ARGS[4:], "--no-estimate", "--gallery-dir", project / "g2"], project)
    report = json.loads((project / "g2" / "clustering_report.json").read_text(encoding="utf-8"))
    assert all(c["source"] == "zero-shot" and c["label"] in ORDER for c in report["clusters"])
    assert "shot_size_estimate" not in read_jsonl(fin / "metadata.jsonl")[0]
    main_in_process(ARGS, project)  # leave the default output for the tests below


def test_shards_then_merge_then_the_full_run_embeds_nothing(project, tmp_path):
    for i in (0, 1):
        main_in_process([*ARGS, "--shard", f"{i}/2", "--cache-dir", tmp_path / f"cache{i}"], project)
    assert not (tmp_path / "cache1" / "nothing").exists()
    main_in_process(["--merge-caches", tmp_path / "cache0", tmp_path / "cache1", "--cache-dir", tmp_path / "merged"],
                    project)
    main_in_process([*ARGS, "--cache-dir", tmp_path / "merged", "--gallery-dir", tmp_path / "g"], project)
    run = json.loads((project / "Dataset_fin" / "clustering.run.json").read_text(encoding="utf-8"))
    assert run["summary"]["extra"]["embedded now"] == 0


def test_bad_inputs_are_one_line_and_change_nothing(project, tmp_path):
    fin = project / "Dataset_fin"
    good = (fin / "metadata.jsonl").read_bytes()
    # k larger than the data
    code, err = main_error([*ARGS[:-2], "--k", "500"], project)
    assert code == 2 and "--k 500 is larger than the number of images" in err
    assert (fin / "metadata.jsonl").read_bytes() == good
    # an empty finalize output: nothing is written over anything
    empty = tmp_path / "empty"
    (empty / "Dataset_fin").mkdir(parents=True)
    (empty / "Dataset_fin" / "metadata.jsonl").write_text("\n", encoding="utf-8")
    proc = run_front_door(FRONT_DOOR, "--clip-model", "local-dir:clip", cwd=empty)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "holds no records" in proc.stderr
    assert not (empty / "Dataset_fin" / "metadata_prebalance.jsonl").exists()
    # a checkpoint that is not CLIP: one line naming the file and the architecture
    import torch

    torch.save({"conv.weight": torch.zeros(2, 2)}, project / "unet.pt")
    code, err = main_error(["--clip-checkpoint", "unet.pt"], project)
    assert code == 2 and err.strip().count("\n") == 0 and "unet.pt" in err and "ViT-B-32" in err
    # the seed's default weights are absent here: the message says where they were looked for
    code, err = main_error([], project)
    assert code == 2 and "ViT-B-32-openai.pt" in err and "clip-vit-b-32.pt" in err
    assert (fin / "metadata.jsonl").read_bytes() == good


# -- helpers ------------------------------------------------------------------------------------
def read_jsonl_lenient(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError):
            out.append(json.loads(line))
    return out


def _front_door_main():
    import importlib.util


    spec = importlib.util.spec_from_file_location("run_clip_clustering", FRONT_DOOR)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def main_in_process(args, cwd: Path) -> None:
    """The front door's main() in this process (the imports are paid once), from ``cwd``."""
    import os

    old = os.getcwd()
    os.chdir(cwd)
    try:
        os.environ["STORYBOARD_NO_PROGRESS"] = "1"
        assert _front_door_main()([str(a) for a in args]) == 0
    finally:
        os.chdir(old)


def main_error(args, cwd: Path) -> tuple[int, str]:
    """Exit code and stderr of a failing run, through run_main as a user's run goes."""
    import contextlib
    import io
    import os

    from storyboard.core.cli import run_main

    old = os.getcwd()
    os.chdir(cwd)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exit_info:
            run_main(_front_door_main(), [str(a) for a in args])
    finally:
        os.chdir(old)
    return exit_info.value.code, err.getvalue()
