"""Phase 8 of the full run, after the output is safely in place: how the tag labels agree with the
cluster names and with the estimator, ``clustering_report.json``, the template for naming clusters by
hand, the gallery, and the summary the front door prints (``ClusteringResult``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storyboard.clustering.cluster import BalancePlan, ClusterName
from storyboard.clustering.gallery import build_gallery
from storyboard.clustering.inputs import Inputs
from storyboard.clustering.naming import Clusters, Naming
from storyboard.clustering.rows import Row
from storyboard.clustering.settings import ClusteringSettings
from storyboard.clustering.shots import ShotEvaluation, evaluate
from storyboard.core.cli import format_table
from storyboard.core.records import StageRecords, atomic_write_json
from storyboard.core.vocabulary import Vocabulary


@dataclass
class ClusteringResult:
    stage: StageRecords
    k: int
    k_scores: dict[int, float]
    names: list[ClusterName]
    plan: BalancePlan
    agreement: ShotEvaluation | None
    estimator_agreement: ShotEvaluation | None
    gallery: Path | None
    report: Path | None
    extra_lines: list[str] = field(default_factory=list)

    def summary_text(self) -> str:
        lines = [self.stage.summary_table(), ""]
        rows = [(n.cluster, n.size, n.label or "-", n.source or "-", "-" if n.purity is None else f"{n.purity:.0%}")
                for n in self.names]
        lines.append(format_table(rows, header=("cluster", "images", "shot size", "named by", "purity")))
        lines.append("")
        rows = [(shot, v["before"], v["dropped"], v["repeats"], v["after"]) for shot, v in self.plan.per_shot.items()]
        lines.append(format_table(rows, header=("shot size", "before", "left out", "repeats", "after")))
        if self.agreement and self.agreement.n:
            lines.append(f"tag labels vs cluster labels: {self.agreement.exact:.0%} agree, "
                         f"{self.agreement.within_one:.0%} within one step (n={self.agreement.n})")
        if self.estimator_agreement and self.estimator_agreement.n:
            e = self.estimator_agreement
            lines.append(f"tag labels vs OpenCV estimator: {e.exact:.0%} agree, {e.within_one:.0%} within one step "
                         f"(n={e.n})")
        lines += self.extra_lines
        if self.gallery:
            lines.append(f"gallery: {self.gallery}")
        return "\n".join(lines)


@dataclass
class Clustered:
    """Everything the stage computed while writing, for the report and the gallery."""
    rows: list[Row]
    features: np.ndarray
    clusters: Clusters
    naming: Naming
    final: list[str | None]  # each row's shot size, None when it has none
    labelled: list[int]  # rows with a shot size: what ``plan`` indexes
    plan: BalancePlan
    warnings: list[str]


def agreements(done: Clustered, order: list[str]) -> tuple[ShotEvaluation | None, ShotEvaluation | None]:
    """How the tag labels agree with the cluster names and with the estimator (None without tags)."""
    tagged = [i for i, r in enumerate(done.rows) if r.tag]
    if not tagged:
        return None, None
    truth = [done.rows[i].tag for i in tagged]
    labels = done.clusters.clustering.labels
    agreement = evaluate(truth, [done.naming.names[labels[i]].label for i in tagged], order,
                         "tag labels vs cluster labels")
    estimates = done.naming.estimates
    est_agreement = evaluate(truth, [estimates[i] for i in tagged], order,
                             "tag labels vs OpenCV estimator") if estimates is not None else None
    return agreement, est_agreement


def build_report(s: ClusteringSettings, inputs: Inputs, model_info, stage: StageRecords, done: Clustered,
            agreement: ShotEvaluation | None, est_agreement: ShotEvaluation | None) -> dict[str, Any]:
    clusters = done.clusters
    report: dict[str, Any] = {
        "input": str(inputs.input), "output": str(inputs.output), "model": model_info,
        "clustering_id": clusters.id, "k": clusters.clustering.k, "k_scores": clusters.k_scores,
        "pca": clusters.pca, "naming": list(s.naming), "clusters": [n.to_json() for n in done.naming.names],
        "balance": {"target": done.plan.target, "per_shot": done.plan.per_shot},
        "agreement_tags_vs_clusters": agreement.to_json() if agreement else None,
        "agreement_tags_vs_estimator": est_agreement.to_json() if est_agreement else None,
        "summary": stage.summary(),
    }
    if done.naming.guesses is not None:
        detectors: dict[str, int] = {}
        for g in done.naming.guesses:
            detectors[g.source] = detectors.get(g.source, 0) + 1
        report["estimator_detectors"] = detectors
    return report


def write_report_and_gallery(gallery_dir: Path, s: ClusteringSettings, vocab: Vocabulary, done: Clustered,
                              report: dict[str, Any], agreement: ShotEvaluation | None,
                              est_agreement: ShotEvaluation | None) -> tuple[Path, Path]:
    """The report, a template for naming clusters by hand, and the gallery page; returns the report's
    and the gallery's paths."""
    clusters = done.clusters
    report_path = gallery_dir / "clustering_report.json"
    atomic_write_json(report_path, report)
    atomic_write_json(gallery_dir / "cluster_labels.template.json", {
        "_comment": "Name clusters by hand: set each cluster to a shot size (key or any spelling of the "
                    "vocabulary, e.g. full, 풀샷), delete the ones to leave to the other paths, save as a new file "
                    "and pass it with --cluster-labels. clustering_id ties it to this clustering.",
        "clustering_id": clusters.id,
        "clusters": {str(n.cluster): n.label for n in done.naming.names},
    })
    gallery = build_gallery(gallery_dir, s, vocab, done.rows, clusters.clustering, done.naming.names, done.final,
                            done.plan, done.labelled, agreement, est_agreement, clusters.k_scores, done.features,
                            done.naming.guesses, report)
    return report_path, gallery
