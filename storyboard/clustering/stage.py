"""The clustering stage: finalized records -> CLIP embeddings -> shot clusters -> the balanced
``Dataset_fin/metadata.jsonl`` that training reads as it is.

Input and output (``plan_inputs``). The stage rewrites ``Dataset_fin/metadata.jsonl`` in place, so it
never reads the file it writes: the finalize stage's file is first copied to
``Dataset_fin/metadata_prebalance.jsonl`` and that copy is the input. A re-run recognises its own output
(its records carry ``shot_size_source``) and reads the pre-balance copy again, so running twice gives
the same file; when ``03_finalize_dataset.py`` has written a new ``metadata.jsonl`` since, that one is
copied over the old pre-balance file first. ``--input`` reads another file and leaves the copy alone.
An empty or unusable input stops the stage before anything is written.

Each record of the output keeps every field it came with and gains:

* ``shot_size`` (the final key), ``shot_size_tag`` (what the tags said, or null),
  ``shot_size_source``: ``tag`` (its own tag label) or, for a record without one, the path that named its
  cluster: ``manual`` / ``labels`` / ``zero-shot`` / ``estimator``; ``shot_size_inferred`` (not from its tag);
* ``cluster``, ``cluster_distance`` (to the centre, in the clustered space), ``cluster_label``,
  ``cluster_label_source``, ``cluster_purity``, ``clustering_id``;
* ``shot_size_estimate`` and ``shot_size_estimate_score`` (the OpenCV estimator, when it ran);
* ``text`` starting with the trigger token (``<fs_trg>, full shot, ...``), the old text kept as
  ``text_before_trigger``, ``trigger_token``; ``image_sha256``; ``balance_copy`` (0, or n for the n-th
  repeat a balanced set added).

Rejects (``Dataset_fin/clustering.rejects.jsonl``): bad lines, missing or unreadable images,
``duplicate`` (with ``duplicate_of``: the id it repeats, and the similarity), ``no_shot_size``,
``balanced_out``. The gallery, ``clustering_report.json`` and ``cluster_labels.template.json`` go to the
gallery folder.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from storyboard.clustering.cluster import (
    DEFAULT_NAMING,
    BalancePlan,
    Clustering,
    ClusterName,
    balance,
    choose_k,
    clustering_id,
    find_duplicates,
    load_manual_labels,
    name_clusters,
    parse_target,
    reduce,
    run_kmeans,
    trigger_text,
)
from storyboard.clustering.embed import (
    EmbeddingCache,
    Processes,
    current_processes,
    hash_files,
    iter_embeddings,
    load_clip,
    parse_shard,
    shard_indices,
)
from storyboard.clustering.shots import (
    ClipZeroShotJudge,
    Measurement,
    OpenCVShotEstimator,
    ShotEvaluation,
    ShotGuess,
    evaluate,
)
from storyboard.core.cli import UserError, format_table, progress
from storyboard.core.records import (
    JsonlItem,
    RecordError,
    StageRecords,
    atomic_write,
    atomic_write_bytes,
    atomic_write_json,
    check_fields,
    dumps_record,
    harmonize_field_types,
    read_json_object,
    read_jsonl,
    resolve_under,
)
from storyboard.core.vocabulary import Term, Vocabulary, load_vocabulary

PREBALANCE_NAME = "metadata_prebalance.jsonl"
OWN_MARKER = "shot_size_source"  # a field only this stage writes: marks its own output
FLUSH_EVERY = 1024  # embeddings written to the cache at least this often (a killed run keeps them)
ESTIMATOR_MAX_SIDE = 768  # images are measured at most this large (ratios do not depend on scale)


@dataclass
class ClusteringSettings:
    metadata: Path  # Dataset_fin/metadata.jsonl: the output (and, unless --input, the input)
    input: Path | None = None
    prebalance: Path | None = None  # default: metadata_prebalance.jsonl beside metadata
    data_root: Path | None = None  # what file_name is relative to; default: the metadata's folder
    rejects: Path | None = None  # default: clustering.rejects.jsonl beside metadata
    clip_model: str = "ViT-B-32"
    clip_checkpoint: Path | None = None
    clip_checkpoint_fallbacks: tuple[Path, ...] = ()  # tried in order when clip_checkpoint is absent
    clip_quick_gelu: str = "auto"
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    fast_decode: bool = True
    cache_dir: Path = Path("Dataset_clustering_method/embedding_cache")
    shard: str | None = None
    dedupe_threshold: float = 0.97
    k: int | None = None
    k_range: tuple[int, int] = (2, 16)
    pca: int = 0
    seed: int = 0
    naming: tuple[str, ...] = DEFAULT_NAMING
    cluster_labels: Path | None = None
    min_purity: float = 0.5
    min_labelled: int = 2
    estimate: bool = True
    estimator_bounds: Path | None = None
    balance_target: str | int | None = "median"
    repeat: bool = False
    max_repeat: int = 3
    gallery_dir: Path | None = Path("Dataset_clustering_method/gallery")
    gallery_per_cluster: int = 12
    vocabulary: Path | None = None

    def as_config(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(map(str, v)) if isinstance(v, tuple) else v)
                for k, v in self.__dict__.items()}


# --------------------------------------------------------------------------------------------
# Which file to read
# --------------------------------------------------------------------------------------------
@dataclass
class Inputs:
    input: Path
    data_root: Path
    output: Path
    prebalance: Path | None
    copy_from: Path | None = None  # a new finalize output to copy to the pre-balance file first


def first_record(path: Path) -> dict | None:
    for item in read_jsonl(path):
        if item.record is not None:
            return item.record
    return None


def is_balanced_set(path: Path) -> bool:
    """Whether ``path`` is this stage's output (the balanced set with trigger captions)."""
    first = first_record(path) if path.is_file() else None
    return first is not None and OWN_MARKER in first


def has_lines(path: Path) -> bool:
    return any(True for _ in read_jsonl(path))


def plan_inputs(s: ClusteringSettings) -> Inputs:
    """Decide what to read (see the module doc); raises before anything is written."""
    output = Path(s.metadata)
    root = Path(s.data_root) if s.data_root else output.parent
    prebalance = Path(s.prebalance) if s.prebalance else output.with_name(PREBALANCE_NAME)
    if s.input and Path(s.input).resolve() != output.resolve():
        source = Path(s.input)
        if not source.is_file():
            raise UserError(f"--input not found: {source}")
        if not has_lines(source):
            raise UserError(f"--input {source} holds no records; nothing was written")
        return Inputs(source, root, output, None)
    if output.is_file() and has_lines(output):
        if is_balanced_set(output):
            if not prebalance.is_file():
                raise UserError(f"{output} is already this stage's output and its input copy {prebalance} is missing: "
                                f"re-run 03_finalize_dataset.py, or pass --input")
            return Inputs(prebalance, root, output, prebalance)
        return Inputs(prebalance, root, output, prebalance, copy_from=output)
    if output.is_file():
        raise UserError(f"{output} holds no records (did 03_finalize_dataset.py finish?); nothing was written")
    if prebalance.is_file():
        return Inputs(prebalance, root, output, prebalance)
    raise UserError(f"{output} not found: run Data_preprocessing_method/03_finalize_dataset.py first, or pass --input")


def copy_atomically(src: Path, dst: Path) -> None:
    with open(src, "rb") as fh:
        atomic_write_bytes(dst, fh.read())


# --------------------------------------------------------------------------------------------
# Embedding with the cache
# --------------------------------------------------------------------------------------------
@dataclass
class EmbedOutcome:
    features: dict[str, np.ndarray]  # key -> feature, for every key asked that could be embedded
    failed: dict[str, tuple[str, str]]  # key -> (reason, detail)
    embedded_now: int
    cache_hits: int
    seconds: float


def embed_keys(clip, cache: EmbeddingCache, keyed_paths: dict[str, Path], s: ClusteringSettings,
               tag: str = "", desc: str = "embedding") -> EmbedOutcome:
    """Features for each key (content hash -> one path holding that content); embeds only what the
    cache lacks and adds it to the cache in parts as it goes."""
    started = time.time()
    known = cache.load()
    todo = [(k, p) for k, p in keyed_paths.items() if k not in known]
    hits = len(keyed_paths) - len(todo)
    failed: dict[str, tuple[str, str]] = {}
    pending_keys: list[str] = []
    pending: list[np.ndarray] = []
    done = 0
    for batch in iter_embeddings(clip, [p for _, p in todo], batch_size=s.batch_size, workers=s.workers,
                                 fast_decode=s.fast_decode, desc=desc):
        for row, index in enumerate(batch.indices):
            pending_keys.append(todo[index][0])
            pending.append(batch.features[row])
        for index, error in batch.failed:
            failed[todo[index][0]] = error
        if len(pending_keys) >= FLUSH_EVERY:
            cache.add(pending_keys, np.stack(pending), tag)
            done += len(pending_keys)
            pending_keys, pending = [], []
    if pending_keys:
        cache.add(pending_keys, np.stack(pending), tag)
        done += len(pending_keys)
    known = cache.load()
    features = {k: known[k] for k in keyed_paths if k in known}
    return EmbedOutcome(features, failed, done, hits, time.time() - started)


def _clip_for(s: ClusteringSettings, procs: Processes | None = None):
    """Load the CLIP model; a missing default checkpoint falls back to the seed's second file name.
    Under ``accelerate launch`` with --device auto, each process takes the device accelerate gave it."""
    checkpoint = s.clip_checkpoint
    if checkpoint is not None and not Path(checkpoint).is_file():
        for candidate in s.clip_checkpoint_fallbacks:
            if Path(candidate).is_file():
                checkpoint = Path(candidate)
                break
        else:
            tried = " or ".join(str(p) for p in (s.clip_checkpoint, *s.clip_checkpoint_fallbacks))
            raise UserError(f"CLIP checkpoint not found: {tried}; put the seed's ViT-B-32-openai.pt there, or pass "
                            f"--clip-checkpoint PATH (or --clip-model local-dir:FOLDER)")
    hash_memo = Path(s.cache_dir) / "file_hashes.json"
    device = s.device
    if procs is not None and procs.state is not None and device in ("auto", None, ""):
        device = str(procs.state.device)
    return load_clip(s.clip_model, checkpoint, device=device, quick_gelu=s.clip_quick_gelu, hash_memo=hash_memo)


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


def _valid_paths(inputs: Inputs) -> list[tuple[int, Path]]:
    out = []
    for position, item in enumerate(read_jsonl(inputs.input)):
        if item.record is None:
            continue
        try:
            path = resolve_under(inputs.data_root, item.record.get("file_name"))
        except RecordError:
            continue
        if path.is_file():
            out.append((position, path))
    return out


def embed_share(s: ClusteringSettings, shard: tuple[int, int], procs: Processes) -> ShareResult:
    inputs = plan_inputs(s)
    if inputs.copy_from is not None:
        inputs.input = inputs.copy_from  # shards read the new finalize output as it is; the full run copies it
    clip = _clip_for(s, procs)
    cache = EmbeddingCache(s.cache_dir, clip.fingerprint, clip.info)
    valid = _valid_paths(inputs)
    picked = set(shard_indices(len(valid), shard, procs))
    paths = [p for i, (_, p) in enumerate(valid) if i in picked]
    hashes = hash_files(paths, desc="hashing")
    keyed = {h: p for h, p in zip(hashes, paths) if isinstance(h, str)}
    tag = f"shard{shard[0]}of{shard[1]}-p{procs.index}of{procs.count}"
    outcome = embed_keys(clip, cache, keyed, s, tag=tag)
    return ShareResult(shard, procs, len(valid), len(paths), outcome, cache.folder)


# --------------------------------------------------------------------------------------------
# Estimator measurements, cached by image content
# --------------------------------------------------------------------------------------------
class MeasureCache:
    """(image sha256, content box) -> OpenCV measurement, as JSONL parts under ``root/signature/``."""

    def __init__(self, root: Path, signature: str):
        self.folder = Path(root) / "opencv" / signature
        self.data: dict[str, dict] = {}
        if self.folder.is_dir():
            for part in sorted(self.folder.glob("part-*.jsonl")):
                for item in read_jsonl(part):
                    if item.record and "key" in item.record:
                        self.data[item.record["key"]] = item.record["m"]

    def add(self, entries: dict[str, dict]) -> None:
        if not entries:
            return
        path = self.folder / f"part-{time.strftime('%Y%m%d%H%M%S')}-{uuid.uuid4().hex[:8]}.jsonl"
        with atomic_write(path) as fh:
            for key, m in entries.items():
                fh.write(dumps_record({"key": key, "m": m}) + "\n")
        self.data.update(entries)


def content_box(record: dict) -> list[float] | None:
    """The picture's box inside a finalized square (``square`` + ``source_size``) as fractions of the
    square (x0, y0, x1, y1), else None."""
    square = record.get("square")
    if not isinstance(square, dict) or not record.get("source_size"):
        return None
    try:
        from storyboard.images.squares import box_to_square, transform_from_record

        w, h = record["source_size"]
        size = float(square["size"])
        x0, y0, x1, y1 = box_to_square([0, 0, w, h], transform_from_record(record))
    except Exception:  # an odd transform only costs the trimming fallback
        return None
    box = [max(0.0, x0 / size), max(0.0, y0 / size), min(1.0, x1 / size), min(1.0, y1 / size)]
    return box if box[2] > box[0] and box[3] > box[1] else None


def _load_small(path: Path, max_side: int) -> np.ndarray:
    from storyboard.clustering.embed import open_for_embedding

    img = open_for_embedding(path, max_side)
    scale = max_side / max(img.size)
    if scale < 1:
        from PIL import Image

        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    return np.asarray(img)


def prefetch(pool, fn, jobs, ahead: int):
    """``map(fn, jobs)`` in order, with at most ``ahead`` results computed in advance (bounded memory)."""
    from collections import deque

    pending: deque = deque()
    for job in jobs:
        pending.append(pool.submit(fn, job))
        if len(pending) > ahead:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def measure_rows(estimator: OpenCVShotEstimator, rows: list[Row], cache_root: Path) -> list[Measurement]:
    cache = MeasureCache(cache_root, f"{estimator.signature}-max{ESTIMATOR_MAX_SIDE}")
    todo = []
    keys = []
    for row in rows:
        box = content_box(row.record)
        key = f"{row.key}:{','.join(f'{v:.4f}' for v in box)}" if box else row.key
        keys.append(key)
        if key not in cache.data:
            todo.append((key, row.path, box))
    fresh: dict[str, dict] = {}
    from concurrent.futures import ThreadPoolExecutor

    def load(job):
        key, path, box = job
        try:
            rgb = _load_small(path, ESTIMATOR_MAX_SIDE)
        except RecordError:
            return key, None, box
        return key, rgb, box

    with ThreadPoolExecutor(max_workers=2) as pool:  # decode the next images while OpenCV measures this one
        for key, rgb, box in progress(prefetch(pool, load, todo, ahead=4), desc="estimating shot sizes",
                                      total=len(todo), unit="img"):
            if rgb is None:
                fresh[key] = Measurement("none").to_json()
                continue
            if box is not None:  # fractions of the square -> pixels of the (possibly shrunk) image
                h, w = rgb.shape[:2]
                box = [box[0] * w, box[1] * h, box[2] * w, box[3] * h]
            fresh[key] = estimator.measure(rgb, box).to_json()
            if len(fresh) >= FLUSH_EVERY:
                cache.add(fresh)
                fresh = {}
    cache.add(fresh)
    return [Measurement.from_json(cache.data[k]) for k in keys]


# --------------------------------------------------------------------------------------------
# The full run
# --------------------------------------------------------------------------------------------
@dataclass
class Row:
    item: JsonlItem
    record: dict
    path: Path
    tag: str | None
    key: str = ""

    @property
    def id(self) -> str:
        return str(self.record.get("id") or self.record.get("file_name"))


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
            lines.append(f"tag labels vs OpenCV estimator: {e.exact:.0%} agree, {e.within_one:.0%} within one step (n={e.n})")
        lines += self.extra_lines
        if self.gallery:
            lines.append(f"gallery: {self.gallery}")
        return "\n".join(lines)


def run_clip_clustering(s: ClusteringSettings):
    """The stage's one entry point: a shard's embedding (``--shard`` / ``accelerate launch``) or the
    full run. Returns ``ShareResult`` or ``ClusteringResult`` (both have ``summary_text()``)."""
    if s.dedupe_threshold <= 0:
        raise UserError("--dedupe-threshold must be above 0 (use a value above 1 to turn near-duplicates off)")
    if s.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    parse_target(s.balance_target)
    procs = current_processes(s.device)
    shard = parse_shard(s.shard)
    if shard[1] > 1 or procs.count > 1:
        share = embed_share(s, shard, procs)
        procs.wait()
        if shard[1] > 1 or not procs.is_main:
            return share
    return cluster_all(s, load_vocabulary(s.vocabulary))


def _read_rows(stage: StageRecords, inputs: Inputs, vocab: Vocabulary) -> list[Row]:
    """The input's records whose image exists and whose shot-size tag (if any) the vocabulary knows;
    raises before anything is written when there is none."""
    rows = []
    for item in stage.read_from(inputs.input):
        record = item.record
        try:
            check_fields(record, required=("file_name",), optional=("shot_size", "text"))
            path = resolve_under(inputs.data_root, record["file_name"])
            if not path.is_file():
                raise RecordError("missing_image", f"no file at {path}")
            tag = None
            if record.get("shot_size"):
                term = vocab.lookup(record["shot_size"], "shot_size")
                if term is None:
                    raise RecordError("wrong_type", f"shot_size {record['shot_size']!r} is not a shot size of the vocabulary")
                tag = term.key
        except RecordError as exc:
            stage.reject_item(item, exc)
            continue
        rows.append(Row(item, record, path, tag))
    if stage.read == 0:
        raise UserError(f"{inputs.input} holds no records; nothing was written")
    if not rows:
        why = ", ".join(f"{n} {r}" for r, n in sorted(stage.rejected_by_reason.items()))
        raise UserError(f"none of the {stage.read} records of {inputs.input} is usable ({why}); nothing was written")
    return rows


def _reject(stage: StageRecords, row: Row, reason: str, detail: str, **more: Any) -> None:
    stage.reject(reason, detail, record=row.record, source=row.item.source, line=row.item.line, **more)


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


def cluster_all(s: ClusteringSettings, vocab: Vocabulary) -> ClusteringResult:
    inputs = plan_inputs(s)
    clip = _clip_for(s)
    cache = EmbeddingCache(s.cache_dir, clip.fingerprint, clip.info)
    if inputs.copy_from is not None:
        copy_atomically(inputs.copy_from, inputs.prebalance)
    order = [t.key for t in vocab.shot_sizes]
    stage = _open_stage(s, inputs, clip)
    with stage:
        rows = _read_rows(stage, inputs, vocab)
        # 1. content hashes, embeddings (cached)
        rows = _hash_rows(stage, rows)
        rows, feats = _embed_rows(stage, rows, clip, cache, s, inputs.input)
        # 2. duplicates
        rows, feats, warnings = _collapse_duplicates(stage, rows, feats, s.dedupe_threshold)
        # 3. k-means
        clusters = _cluster_rows(stage, rows, feats, s, clip.fingerprint)
        # 4. evidence for naming
        naming = _naming_evidence(rows, feats, clusters, s, clip, vocab)
        # 5. each record's shot size
        final, labelled = _shot_sizes(stage, rows, clusters.clustering, naming.names, s.naming)
        # 6. balance
        plan, repeats_of = _balance_shots(stage, rows, final, labelled, clusters.clustering, order, s)
        # 7. write
        _write_records(stage, rows, final, labelled, plan, repeats_of, clusters, naming, vocab)
        done = Clustered(rows, feats, clusters, naming, final, labelled, plan, warnings)

    # 8. agreement, report, gallery (after the output is safely in place)
    agreement, est_agreement = _agreements(done, order)
    report = _report(s, inputs, clip.info, stage, done, agreement, est_agreement)
    result = ClusteringResult(stage, clusters.clustering.k, clusters.k_scores, naming.names, plan, agreement,
                              est_agreement, None, None, warnings)
    if cache.parts() and len(cache.parts()) > 16:
        cache.compact()
    if s.gallery_dir:
        result.report, result.gallery = _write_report_and_gallery(Path(s.gallery_dir), s, vocab, done, report,
                                                                  agreement, est_agreement)
    return result


def _open_stage(s: ClusteringSettings, inputs: Inputs, clip) -> StageRecords:
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
            _reject(stage, row, "unreadable_image", f"cannot read {row.path.name}: {h}")
            continue
        row.key = h
        usable.append(row)
    return usable


def _embed_rows(stage: StageRecords, rows: list[Row], clip, cache: EmbeddingCache, s: ClusteringSettings,
                source: Path) -> tuple[list[Row], np.ndarray]:
    """The rows CLIP could embed and their features (one row each); identical images are embedded once."""
    keyed: dict[str, Path] = {}
    for row in rows:
        keyed.setdefault(row.key, row.path)
    outcome = embed_keys(clip, cache, keyed, s)
    embedded = []
    for row in rows:
        if row.key in outcome.failed:
            reason, detail = outcome.failed[row.key]
            _reject(stage, row, reason, detail)
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
        _reject(stage, rows[d.index], "duplicate", f"{how} {kept.id}", duplicate_of=kept.id,
                similarity=d.similarity)
    keep_idx = [i for i in range(len(rows)) if i not in dropped]
    stage.extra["duplicates collapsed"] = len(dups)
    warnings: list[str] = []
    if len(dups) > 0.5 * (len(dups) + len(keep_idx)) and threshold <= 1:
        warnings.append(f"warning: --dedupe-threshold {threshold} collapsed {len(dups)} of "
                        f"{len(dups) + len(keep_idx)} images as near-duplicates; if they are not, this model "
                        f"does not tell them apart at that threshold (raise it, or use real CLIP weights)")
    return [rows[i] for i in keep_idx], feats[keep_idx], warnings


def _cluster_rows(stage: StageRecords, rows: list[Row], feats: np.ndarray, s: ClusteringSettings,
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


def _naming_evidence(rows: list[Row], feats: np.ndarray, clusters: Clusters, s: ClusteringSettings, clip,
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


def _shot_sizes(stage: StageRecords, rows: list[Row], clustering: Clustering, names: list[ClusterName],
                naming: tuple[str, ...]) -> tuple[list[str | None], list[int]]:
    """Each row's shot size (its tag, else its cluster's name) and the rows that have one; rejects the rest."""
    final: list[str | None] = [row.tag or names[clustering.labels[i]].label for i, row in enumerate(rows)]
    labelled = [i for i, shot in enumerate(final) if shot]
    for i, shot in enumerate(final):
        if not shot:
            c = int(clustering.labels[i])
            _reject(stage, rows[i], "no_shot_size",
                    f"no tag label, and cluster {c} got no name from --naming {','.join(naming)}", cluster=c)
    return final, labelled


def _balance_shots(stage: StageRecords, rows: list[Row], final: list[str | None], labelled: list[int],
                   clustering: Clustering, order: list[str],
                   s: ClusteringSettings) -> tuple[BalancePlan, dict[int, list[int]]]:
    """The balance plan over the labelled rows, rejecting what it leaves out; also each row's repeat
    copy numbers (by row index)."""
    plan = balance([final[i] for i in labelled], [rows[i].tag is not None for i in labelled],
                   [float(clustering.distances[i]) for i in labelled], order, parse_target(s.balance_target),
                   s.repeat, s.max_repeat, s.seed)
    for j in plan.dropped:
        i = labelled[j]
        info = plan.per_shot[final[i]]
        _reject(stage, rows[i], "balanced_out",
                f"{final[i]} has {info['before']} records, over the target of {plan.target}", shot_size=final[i])
    repeats_of: dict[int, list[int]] = {}
    for j, copy_number in plan.repeats:
        repeats_of.setdefault(labelled[j], []).append(copy_number)
    return plan, repeats_of


def _final_record(row: Row, term: Term, name: ClusterName, cluster: int, distance: float, cid: str,
                  guess: ShotGuess | None, vocab: Vocabulary) -> dict:
    """The output record: the input's fields plus the stage's (see the module doc)."""
    out = dict(row.record)
    out.update({
        "shot_size": term.key,
        "shot_size_tag": row.record.get("shot_size"),
        "shot_size_source": "tag" if row.tag else name.source,
        "shot_size_inferred": row.tag is None,
        "cluster": cluster,
        "cluster_distance": round(distance, 5),
        "cluster_label": name.label,
        "cluster_label_source": name.source,
        "cluster_purity": name.purity,
        "clustering_id": cid,
    })
    if guess is not None:
        out["shot_size_estimate"] = guess.shot_size
        out["shot_size_estimate_score"] = round(guess.score, 3)
    out["text_before_trigger"] = row.record.get("text")
    out["text"] = trigger_text(row.record.get("text"), term, vocab)
    out["trigger_token"] = term.token
    out["image_sha256"] = row.key
    out["balance_copy"] = 0
    return out


def _write_records(stage: StageRecords, rows: list[Row], final: list[str | None], labelled: list[int],
                   plan: BalancePlan, repeats_of: dict[int, list[int]], clusters: Clusters, naming: Naming,
                   vocab: Vocabulary) -> None:
    """Write the kept records in input order, each followed by its repeats."""
    clustering = clusters.clustering
    kept = sorted(labelled[j] for j in plan.keep)
    outputs = []
    for i in kept:
        c = int(clustering.labels[i])
        guess = naming.guesses[i] if naming.guesses is not None else None
        out = _final_record(rows[i], vocab.get("shot_size", final[i]), naming.names[c], c,
                            float(clustering.distances[i]), clusters.id, guess, vocab)
        outputs.append((out, repeats_of.get(i, [])))
    # One type per field, so datasets' imagefolder loader reads the final set too.
    stage.extra["fields made text (mixed types)"] = ", ".join(
        harmonize_field_types([out for out, _ in outputs])) or "none"
    for out, repeats in outputs:
        stage.accept(out)
        for n in repeats:
            stage.accept({**out, "balance_copy": n}, repeat=True)
    stage.extra["shot sizes from tags"] = sum(1 for i in kept if rows[i].tag)
    stage.extra["shot sizes inferred"] = sum(1 for i in kept if not rows[i].tag)
    stage.extra["repeats added"] = len(plan.repeats)


def _agreements(done: Clustered, order: list[str]) -> tuple[ShotEvaluation | None, ShotEvaluation | None]:
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


def _report(s: ClusteringSettings, inputs: Inputs, model_info, stage: StageRecords, done: Clustered,
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


def _write_report_and_gallery(gallery_dir: Path, s: ClusteringSettings, vocab: Vocabulary, done: Clustered,
                              report: dict[str, Any], agreement: ShotEvaluation | None,
                              est_agreement: ShotEvaluation | None) -> tuple[Path, Path]:
    """The report, a template for naming clusters by hand, and the gallery page; returns the report's
    and the gallery's paths."""
    from storyboard.clustering.gallery import build_gallery

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


def _read_bounds(path: Path | None) -> dict[str, float] | None:
    if not path:
        return None
    data = read_json_object(path, "--estimator-bounds file",
                            holding="a JSON object mapping shot size keys to face-share numbers")
    bounds = data.get("bounds", data)
    if not isinstance(bounds, dict) or not all(isinstance(v, (int, float)) for v in bounds.values()):
        raise UserError(f"--estimator-bounds {path} must map shot size keys to face-share numbers")
    return {str(k): float(v) for k, v in bounds.items()}
