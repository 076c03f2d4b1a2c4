"""The two runs the clustering stage can do, once its inputs are planned: a share's embedding (``--shard``,
or one process under ``accelerate launch``: embed into the cache and stop) and the full run.

The full run, in phases: read the rows; hash and embed them (cached); collapse duplicates; cluster and
name the clusters (``naming``); balance and write (``balancing``); then, with the output in place, the
report and the gallery (``report``).

A heavy module (torch, open_clip and scikit-learn through its imports): ``stage.run_clip_clustering``
imports it only after the settings and inputs are checked.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storyboard.clustering.balancing import balance_shots, write_records
from storyboard.clustering.cache import EmbeddingCache, hash_files
from storyboard.clustering.clip import ClipModel
from storyboard.clustering.cluster import find_duplicates
from storyboard.clustering.embed import EmbedOutcome, embed_keys, load_clip_for, shard_indices
from storyboard.clustering.inputs import Inputs, copy_atomically
from storyboard.clustering.naming import cluster_rows, naming_evidence, shot_sizes
from storyboard.clustering.report import (
    Clustered,
    ClusteringResult,
    agreements,
    build_report,
    write_report_and_gallery,
)
from storyboard.clustering.rows import Row, read_rows, reject_row
from storyboard.clustering.settings import ClusteringSettings
from storyboard.core.cli import UserError, format_table
from storyboard.core.records import RecordError, StageRecords, read_jsonl, resolve_under
from storyboard.core.runtime import Processes
from storyboard.core.vocabulary import Vocabulary
from storyboard.engine.run import Engine


# --------------------------------------------------------------------------------------------
# One shard (or one process under accelerate launch): embed only
# --------------------------------------------------------------------------------------------
@dataclass
class ShareResult:
    shard: tuple[int, int]
    processes: Processes
    records: int
    mine: int
    outcome: EmbedOutcome
    cache: Path

    def summary_text(self) -> str:
        o = self.outcome
        rows = [("records in the input", self.records), ("this process's share", self.mine),
                ("embedded now", o.embedded_now), ("already cached", o.cache_hits), ("unreadable", len(o.failed)),
                ("seconds", round(o.seconds, 1))]
        parts = [f"shard {self.shard[0]}/{self.shard[1]}"] if self.shard[1] > 1 else []
        if self.processes.count > 1:
            parts.append(f"process {self.processes.index} of {self.processes.count}")
        who = ", ".join(parts)
        then = ("merge the shards' caches with --merge-caches, then run without --shard" if self.shard[1] > 1
                else "the main process clusters once every process has cached its share")
        return f"clustering ({who}): embeddings cached in {self.cache}\n" + format_table(rows, header=("", "count")) \
            + "\n" + then


def _valid_paths(source: Path, data_root: Path) -> list[tuple[int, Path]]:
    out = []
    for position, item in enumerate(read_jsonl(source)):
        if item.record is None:
            continue
        try:
            path = resolve_under(data_root, item.record.get("file_name"))
        except RecordError:
            continue
        if path.is_file():
            out.append((position, path))
    return out


def embed_share(s: ClusteringSettings, inputs: Inputs, shard: tuple[int, int], procs: Processes) -> ShareResult:
    # Shards read the new finalize output as it is; the full run copies it.
    source = inputs.copy_from if inputs.copy_from is not None else inputs.input
    clip = load_clip_for(s, procs)
    cache = EmbeddingCache(s.cache_dir, clip.fingerprint, clip.info)
    valid = _valid_paths(source, inputs.data_root)
    picked = set(shard_indices(len(valid), shard, procs))
    paths = [p for i, (_, p) in enumerate(valid) if i in picked]
    hashes = hash_files(paths, desc="hashing")
    keyed = {h: p for h, p in zip(hashes, paths) if isinstance(h, str)}
    tag = f"shard{shard[0]}of{shard[1]}-p{procs.index}of{procs.count}"
    outcome = embed_keys(clip, cache, keyed, s, tag=tag)
    return ShareResult(shard, procs, len(valid), len(paths), outcome, cache.folder)


# --------------------------------------------------------------------------------------------
# The full run
# --------------------------------------------------------------------------------------------
def cluster_all(s: ClusteringSettings, inputs: Inputs, vocab: Vocabulary,
                engine: Engine | None = None) -> ClusteringResult:
    """The full run; ``engine``: where the embedding is encoded (default: here)."""
    clip = load_clip_for(s)
    cache = EmbeddingCache(s.cache_dir, clip.fingerprint, clip.info)
    if inputs.copy_from is not None:
        copy_atomically(inputs.copy_from, inputs.prebalance)
    order = [t.key for t in vocab.shot_sizes]
    stage = _open_stage(s, inputs, clip)
    with stage:
        rows = read_rows(stage, inputs, vocab)
        # 1. content hashes, embeddings (cached)
        rows = _hash_rows(stage, rows)
        rows, feats = _embed_rows(stage, rows, clip, cache, s, inputs.input, engine)
        stage.config["engine"] = engine.info() if engine is not None else {"name": "in-process"}
        # 2. duplicates
        rows, feats, warnings = _collapse_duplicates(stage, rows, feats, s.dedupe_threshold)
        # 3. k-means
        clusters = cluster_rows(stage, rows, feats, s, clip.fingerprint)
        # 4. evidence for naming
        naming = naming_evidence(rows, feats, clusters, s, clip, vocab)
        # 5. each record's shot size
        final, labelled = shot_sizes(stage, rows, clusters.clustering, naming.names, s.naming)
        # 6. balance
        plan, repeats_of = balance_shots(stage, rows, final, labelled, clusters.clustering, order, s)
        # 7. write
        write_records(stage, rows, final, labelled, plan, repeats_of, clusters, naming, vocab)
        done = Clustered(rows, feats, clusters, naming, final, labelled, plan, warnings)

    # 8. agreement, report, gallery (after the output is safely in place)
    agreement, est_agreement = agreements(done, order)
    report = build_report(s, inputs, clip.info, stage, done, agreement, est_agreement)
    result = ClusteringResult(stage, clusters.clustering.k, clusters.k_scores, naming.names, plan, agreement,
                              est_agreement, None, None, warnings)
    if cache.parts() and len(cache.parts()) > 16:
        cache.compact()
    if s.gallery_dir:
        result.report, result.gallery = write_report_and_gallery(Path(s.gallery_dir), s, vocab, done, report,
                                                                  agreement, est_agreement)
    return result


def _open_stage(s: ClusteringSettings, inputs: Inputs, clip: ClipModel) -> StageRecords:
    stage = StageRecords(inputs.output, rejects=s.rejects or inputs.output.with_name("clustering.rejects.jsonl"),
                         stage="clustering", config={**s.as_config(), "input": str(inputs.input),
                                                     "model": clip.info, "model_fingerprint": clip.fingerprint})
    stage.run_info = inputs.output.with_name("clustering.run.json")
    return stage


def _hash_rows(stage: StageRecords, rows: list[Row]) -> list[Row]:
    """Rows whose image could be read, each with its content hash as ``key``."""
    usable = []
    for row, h in zip(rows, hash_files([r.path for r in rows])):
        if isinstance(h, Exception):
            reject_row(stage, row, "unreadable_image", f"cannot read {row.path.name}: {h}")
            continue
        row.key = h
        usable.append(row)
    return usable


def _embed_rows(stage: StageRecords, rows: list[Row], clip: ClipModel, cache: EmbeddingCache, s: ClusteringSettings,
                source: Path, engine: Engine | None) -> tuple[list[Row], np.ndarray]:
    """The rows CLIP could embed and their features (one row each); identical images are embedded once."""
    keyed: dict[str, Path] = {}
    smalls: dict[str, Path] = {}
    for row in rows:
        if row.key not in keyed:
            keyed[row.key] = row.path
            if row.small is not None:
                smalls[row.key] = row.small
    outcome = embed_keys(clip, cache, keyed, s, smalls=smalls, engine=engine)
    embedded = []
    for row in rows:
        if row.key in outcome.failed:
            reason, detail = outcome.failed[row.key]
            reject_row(stage, row, reason, detail)
        else:
            embedded.append(row)
    stage.extra["embedded now"] = outcome.embedded_now
    stage.extra["embeddings from cache"] = outcome.cache_hits
    if not embedded:
        raise UserError(f"no image of {source} could be decoded; nothing was written (see the messages above)")
    feats = np.stack([outcome.features[r.key] for r in embedded]).astype(np.float32)
    return embedded, feats


def _collapse_duplicates(stage: StageRecords, rows: list[Row], feats: np.ndarray,
                         threshold: float) -> tuple[list[Row], np.ndarray, list[str]]:
    """Reject exact and near duplicates; returns the kept rows, their features and any warning."""
    # the copy kept should carry a tag label when one does, so prefer those, then input order
    preference = sorted(range(len(rows)), key=lambda i: (rows[i].tag is None, i))
    dups = find_duplicates(feats, [r.key for r in rows], preference, threshold)
    dropped = {d.index for d in dups}
    for d in dups:
        kept = rows[d.of]
        how = "the same image bytes as" if d.exact else f"a near-duplicate (cosine {d.similarity:.4f}) of"
        reject_row(stage, rows[d.index], "duplicate", f"{how} {kept.id}", duplicate_of=kept.id,
                similarity=d.similarity)
    keep_idx = [i for i in range(len(rows)) if i not in dropped]
    stage.extra["duplicates collapsed"] = len(dups)
    warnings: list[str] = []
    if len(dups) > 0.5 * (len(dups) + len(keep_idx)) and threshold <= 1:
        warnings.append(f"warning: --dedupe-threshold {threshold} collapsed {len(dups)} of "
                        f"{len(dups) + len(keep_idx)} images as near-duplicates; if they are not, this model "
                        f"does not tell them apart at that threshold (raise it, or use real CLIP weights)")
    return [rows[i] for i in keep_idx], feats[keep_idx], warnings
