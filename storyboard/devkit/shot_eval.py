"""How well the OpenCV shot-size estimator (``storyboard.clustering.shots``) judges images whose shot size
is known: the sample generator's ground truth, or real faces composited at known shot sizes.

    python -m storyboard.devkit.shot_eval --sample-data DIR [--out DIR]
    python -m storyboard.devkit.shot_eval --composites N [--out DIR]

prints exact and within-one-step accuracy (with the default face-share bounds and, 2-fold, with bounds
fitted on the other half) and writes ``estimator_accuracy.json`` (its ``fitted_bounds`` is what
``run_clip_clustering.py --estimator-bounds`` takes) and a confusion matrix PNG. A development tool: no
product module imports it.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storyboard.clustering.gallery import plot_confusion
from storyboard.clustering.shots import (
    Measurement,
    OpenCVShotEstimator,
    ShotEvaluation,
    evaluate,
    fit_face_bounds,
)
from storyboard.core.cli import UserError, progress, run_main
from storyboard.core.imageio import load_rgb
from storyboard.core.records import RecordError, atomic_write_json, read_json_object
from storyboard.core.vocabulary import Vocabulary, load_vocabulary
from storyboard.devkit.shot_composites import FRAMING, composite


def load_ground_truth(root: Path) -> list[tuple[Path, dict]]:
    """(image path, ground-truth entry) for every image of a sample-data folder with a shot size."""
    truth_file = root / "ground_truth.json"
    if not truth_file.is_file():
        raise UserError(f"{root} holds no ground_truth.json (make one with python -m storyboard.devkit.sample_data "
                        f"--out {root})")
    truth = read_json_object(truth_file, "ground truth file")
    items = []
    for rel, info in (truth.get("images") or {}).items():
        if not isinstance(info, dict) or not info.get("shot_size"):
            continue
        for base in (root / "images", root):
            if (base / rel).is_file():
                items.append((base / rel, info))
                break
    if not items:
        raise UserError(f"{truth_file} lists no image with a shot size that exists under {root}")
    return items


@dataclass
class EstimatorReport:
    default: ShotEvaluation
    calibrated: ShotEvaluation | None
    by_kind: dict[str, ShotEvaluation]
    bounds: dict[str, float]
    fitted_bounds: dict[str, float] | None
    detectors: dict[str, int]
    skipped: int

    def to_json(self) -> dict:
        return {"default_bounds": self.default.to_json(), "calibrated_cross_validated": self.calibrated.to_json()
                if self.calibrated else None, "by_kind": {k: v.to_json() for k, v in self.by_kind.items()},
                "bounds": self.bounds, "fitted_bounds": self.fitted_bounds, "detectors": self.detectors,
                "skipped_unreadable": self.skipped}


def evaluate_estimator(items: Sequence[tuple], estimator: OpenCVShotEstimator | None = None,
                       calibrate: bool = True) -> EstimatorReport:
    """``items``: (image path or RGB array, true shot key, kind[, content box]). Measures once; scores the
    default bounds and, with ``calibrate``, bounds fitted on one half and scored on the other (2-fold)."""
    estimator = estimator or OpenCVShotEstimator()
    order = estimator.order
    measured: list[tuple[Measurement, str, str]] = []
    skipped = 0
    for image, key, kind, *box in progress(items, desc="measuring", total=len(items), unit="img"):
        try:
            rgb = image if isinstance(image, np.ndarray) else load_rgb(image).rgb
        except RecordError:
            skipped += 1
            continue
        measured.append((estimator.measure(rgb, box[0] if box else None), key, kind))
    truth = [k for _, k, _ in measured]
    guesses = [estimator.classify(m).shot_size for m, _, _ in measured]
    default = evaluate(truth, guesses, order, "default bounds")
    by_kind = {}
    for kind in sorted({k for _, _, k in measured}):
        idx = [i for i, (_, _, k) in enumerate(measured) if k == kind]
        by_kind[kind] = evaluate([truth[i] for i in idx], [guesses[i] for i in idx], order, kind)
    detectors: dict[str, int] = {}
    for m, _, _ in measured:
        detectors[m.kind] = detectors.get(m.kind, 0) + 1
    calibrated = fitted = None
    if calibrate and len(measured) >= 8:
        rng = np.random.default_rng(0)
        folds = rng.permutation(len(measured)) % 2
        predicted: list[str | None] = [None] * len(measured)
        for f in (0, 1):
            train = [i for i in range(len(measured)) if folds[i] != f]
            bounds = fit_face_bounds([measured[i][0] for i in train], [truth[i] for i in train], order,
                                     estimator.bounds)
            fold_est = _with_bounds(estimator, bounds)
            for i in range(len(measured)):
                if folds[i] == f:
                    predicted[i] = fold_est.classify(measured[i][0]).shot_size
        calibrated = evaluate(truth, predicted, order, "bounds fitted on the other half")
        fitted = fit_face_bounds([m for m, _, _ in measured], truth, order, estimator.bounds)
    return EstimatorReport(default, calibrated, by_kind, dict(estimator.bounds), fitted, detectors, skipped)


def _with_bounds(estimator: OpenCVShotEstimator, bounds: dict[str, float]) -> OpenCVShotEstimator:
    clone = object.__new__(OpenCVShotEstimator)
    clone.__dict__.update(estimator.__dict__)
    clone.bounds = {k: float(bounds[k]) for k in estimator.order}
    return clone


def composite_items(n_per_shot: int, seed: int = 0,
                    vocabulary: Vocabulary | None = None) -> list[tuple[np.ndarray, str, str]]:
    """Real faces composited at known shot sizes (``storyboard.devkit.shot_composites``), several frame sizes."""
    sizes = [(640, 360), (480, 360), (270, 480), (640, 480), (400, 300), (360, 640)]
    keys = [t.key for t in (vocabulary or load_vocabulary()).shot_sizes if t.key in FRAMING]
    items = []
    for key in keys:
        for i in range(n_per_shot):
            w, h = sizes[(i + seed) % len(sizes)]
            c = composite(key, w, h, seed=seed * 1000 + i)
            items.append((np.asarray(c.image), key, "composite"))
    return items


def write_estimator_report(report: EstimatorReport, out: Path, title: str) -> list[Path]:
    """``estimator_accuracy.json`` + a confusion matrix PNG per evaluation under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    written = [out / "estimator_accuracy.json"]
    atomic_write_json(written[0], {"title": title, **report.to_json()})
    ev = report.default
    png = out / "estimator_confusion.png"
    plot_confusion(ev.confusion, ev.order, ev.order + ["none"], png,
                   f"{title}: {ev.exact:.0%} exact, {ev.within_one:.0%} within one (n={ev.n})",
                   xlabel="estimated", ylabel="true")
    written.append(png)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storyboard.devkit.shot_eval",
                                     description="Measure the OpenCV shot-size estimator against known shot sizes.")
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--sample-data", type=Path,
                     help="a folder written by python -m storyboard.devkit.sample_data (ground_truth.json)")
    src.add_argument("--composites", type=int, metavar="N", help="instead: N real-face composites per shot size")
    parser.add_argument("--out", type=Path, default=None,
                        help="write estimator_accuracy.json and the confusion PNG here")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocabulary", type=Path, default=None)
    args = parser.parse_args(argv)
    vocab = load_vocabulary(args.vocabulary)
    estimator = OpenCVShotEstimator(vocab)
    if args.sample_data:
        items = [(path, info["shot_size"], str(info.get("kind", "image")), info.get("content_box"))
                 for path, info in load_ground_truth(args.sample_data)]
        title = f"OpenCV estimator on {args.sample_data}"
    else:
        items = composite_items(args.composites, args.seed, vocab)
        title = f"OpenCV estimator on {len(items)} real-face composites"
    report = evaluate_estimator(items, estimator)
    print(title)
    print(report.default.table())
    for kind, ev in report.by_kind.items():
        print(f"  {kind}: {ev.exact:.0%} exact, {ev.within_one:.0%} within one step (n={ev.n})")
    if report.calibrated:
        print(f"  with bounds fitted on the other half (2-fold): {report.calibrated.exact:.0%} exact, "
              f"{report.calibrated.within_one:.0%} within one step")
    print("  detectors: " + ", ".join(f"{k} {v}" for k, v in sorted(report.detectors.items())))
    if args.out:
        for path in write_estimator_report(report, args.out, title):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    run_main(main)
