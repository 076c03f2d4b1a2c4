"""Phases 3-5 of the full run: k-means over the kept rows, each cluster's name from the ``--naming``
paths (a person's labels, the tag majority, CLIP zero-shot, the OpenCV estimator), and each row's shot
size (its own tag, else its cluster's name).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storyboard.clustering.clip import ClipModel
from storyboard.clustering.cluster import (
    Clustering,
    ClusterName,
    choose_k,
    clustering_id,
    load_manual_labels,
    name_clusters,
    reduce,
    run_kmeans,
)
from storyboard.clustering.measure import measure_rows
from storyboard.clustering.rows import Row, reject_row
from storyboard.clustering.settings import ClusteringSettings
from storyboard.clustering.shots import ClipZeroShotJudge, OpenCVShotEstimator, ShotGuess
from storyboard.core.cli import UserError
from storyboard.core.records import StageRecords, read_json_object
from storyboard.core.vocabulary import Vocabulary


@dataclass
class Clusters:
    """Phase 3's k-means over the kept rows."""
    clustering: Clustering
    k_scores: dict[int, float]  # silhouette score per k tried (empty with --k)
    pca: dict
    id: str  # clustering_id: ties a hand-written --cluster-labels file to this clustering


@dataclass
class Naming:
    """Phase 4: each cluster's name, and the estimator's guess per row (None when it did not run)."""
    names: list[ClusterName]
    guesses: list[ShotGuess] | None
    estimates: list[str | None] | None


def cluster_rows(stage: StageRecords, rows: list[Row], feats: np.ndarray, s: ClusteringSettings,
                  model_fingerprint: str) -> Clusters:
    x, pca_info = reduce(feats, s.pca, s.seed)
    if s.k is not None:
        k, k_scores = s.k, {}
    else:
        k, k_scores = choose_k(x, s.k_range, s.seed)
    clustering = run_kmeans(x, k, s.seed)
    cid = clustering_id([r.key for r in rows], clustering.k, s.seed, s.pca, model_fingerprint)
    stage.extra["clusters (k)"] = clustering.k
    return Clusters(clustering, k_scores, pca_info, cid)


def naming_evidence(rows: list[Row], feats: np.ndarray, clusters: Clusters, s: ClusteringSettings, clip: ClipModel,
                     vocab: Vocabulary) -> Naming:
    """Name each cluster from the paths of --naming: hand labels, tag majority, zero-shot CLIP, estimator."""
    tags = [r.tag for r in rows]
    zero_shot_judge = ClipZeroShotJudge.from_clip(clip, vocab)
    zero_shot = [g.shot_size for g in zero_shot_judge.judge_features(feats)]
    estimates = guesses = None
    if s.estimate or "estimator" in s.naming:
        estimator = OpenCVShotEstimator(vocab, _read_bounds(s.estimator_bounds))
        measurements = measure_rows(estimator, rows, Path(s.cache_dir))
        guesses = [estimator.classify(m) for m in measurements]
        estimates = [g.shot_size for g in guesses]
    k = clusters.clustering.k
    manual = load_manual_labels(Path(s.cluster_labels), vocab, k, clusters.id) if s.cluster_labels else None
    names = name_clusters(clusters.clustering.labels, k, s.naming, tags, zero_shot, estimates, manual,
                          s.min_purity, s.min_labelled)
    return Naming(names, guesses, estimates)


def shot_sizes(stage: StageRecords, rows: list[Row], clustering: Clustering, names: list[ClusterName],
                naming: tuple[str, ...]) -> tuple[list[str | None], list[int]]:
    """Each row's shot size (its tag, else its cluster's name) and the rows that have one; rejects the rest."""
    final: list[str | None] = [row.tag or names[clustering.labels[i]].label for i, row in enumerate(rows)]
    labelled = [i for i, shot in enumerate(final) if shot]
    for i, shot in enumerate(final):
        if not shot:
            c = int(clustering.labels[i])
            reject_row(stage, rows[i], "no_shot_size",
                    f"no tag label, and cluster {c} got no name from --naming {','.join(naming)}", cluster=c)
    return final, labelled


def _read_bounds(path: Path | None) -> dict[str, float] | None:
    if not path:
        return None
    data = read_json_object(path, "--estimator-bounds file",
                            holding="a JSON object mapping shot size keys to face-share numbers")
    bounds = data.get("bounds", data)
    if not isinstance(bounds, dict) or not all(isinstance(v, (int, float)) for v in bounds.values()):
        raise UserError(f"--estimator-bounds {path} must map shot size keys to face-share numbers")
    return {str(k): float(v) for k, v in bounds.items()}
