"""The demo's clustering step (issue 5), kept beside the stage so ``storyboard/demo.py`` needs one line:
``("clustering", step_clustering)`` in ``STEPS``, after the finalize step (it reads ``Dataset_fin/``).

It runs, from the demo's work folder (laid out like the seed's root):

1. ``python -m storyboard.devkit.shot_eval --sample-data sample_data --out Dataset_clustering_method/estimator``:
   the OpenCV shot-size estimator measured on the sample generator's ground truth;
2. ``python Dataset_clustering_method/run_clip_clustering.py --clip-model local-dir:clip ...``: the
   stage with the tiny CLIP. Its clusters are meaningless (random weights, whose features are nearly
   alike, hence the high --dedupe-threshold); the demo shows the machinery, the label-majority path
   and the estimator.
"""
from __future__ import annotations

import json
from pathlib import Path

from storyboard.core.html import Section

REPO_ROOT = Path(__file__).resolve().parents[2]
FRONT_DOOR = REPO_ROOT / "Dataset_clustering_method" / "run_clip_clustering.py"
DEMO_ARGS = ("--clip-model", "local-dir:clip", "--naming", "labels,estimator", "--dedupe-threshold", "0.9995")


def step_clustering(demo) -> Section:
    work = Path(demo.work)
    est_dir = work / "Dataset_clustering_method" / "estimator"
    demo.python("-m", "storyboard.devkit.shot_eval", "--sample-data", "sample_data", "--out", est_dir)
    command = demo.python(FRONT_DOOR, *DEMO_ARGS)
    gallery = work / "Dataset_clustering_method" / "gallery"
    report = json.loads((gallery / "clustering_report.json").read_text(encoding="utf-8"))
    accuracy = json.loads((est_dir / "estimator_accuracy.json").read_text(encoding="utf-8"))["default_bounds"]
    per_shot = report["balance"]["per_shot"]
    agreement = report.get("agreement_tags_vs_estimator") or {}
    text = (f"k = {report['k']} clusters from the tiny CLIP (meaningless: random weights); shot sizes from the tags "
            f"and, for untagged records, from their cluster (named by the tag majority, else the estimator). "
            f"OpenCV estimator on the sample ground truth: {accuracy['exact']:.0%} exact, "
            f"{accuracy['within_one']:.0%} within one step (n={accuracy['n']}); against the tags of the "
            f"finalized images: {agreement.get('exact', 0):.0%} exact.")
    return Section(
        "Shot clustering and the balanced set",
        text,
        links=[("gallery (clusters, shot sizes, confusion matrices)", gallery / "index.html"),
               ("Dataset_fin/metadata.jsonl (balanced, trigger tokens)", work / "Dataset_fin" / "metadata.jsonl"),
               ("clustering rejects", work / "Dataset_fin" / "clustering.rejects.jsonl"),
               ("clustering report", gallery / "clustering_report.json"),
               ("estimator accuracy (JSON)", est_dir / "estimator_accuracy.json")],
        thumbs=[(est_dir / "estimator_confusion.png", "estimator vs ground truth"),
                (gallery / "confusion_tags_vs_estimator.png", "estimator vs tags (finalized images)")],
        table=(("shot size", "before", "left out", "repeats", "after"),
               [(s, v["before"], v["dropped"], v["repeats"], v["after"]) for s, v in per_shot.items()]),
        command=command,
    )
