"""CLIP image embeddings, cached: the encode loop (``iter_embeddings``: batched, normalised, fp16
autocast on a GPU, fed by ``decode``'s workers) and the stage's use of it (``embed_keys``: only what the
cache lacks is embedded, and added to the cache in parts as it goes; ``shard_indices``: this process's
share of the input).

Where the encoding runs (``storyboard.engine``): in this process (``iter_embeddings``), or on a Ray
cluster, where each actor loads the same CLIP once (``ClipEncoder``: the checkpoint at the same path on
every node, checked by its fingerprint) and takes one batch after another; the batches are the same
ones (``decode.ramp_batches``) either way, and the features come back here for the cache.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from storyboard.clustering.cache import FLUSH_EVERY, EmbeddingCache
from storyboard.clustering.clip import ClipModel, load_clip
from storyboard.clustering.decode import (
    ImageFiles,
    collate,
    cpu_count,
    default_workers,
    ramp_batches,
    thread_loader,
    worker_init,
)
from storyboard.clustering.settings import ClusteringSettings
from storyboard.core.cli import UserError, progress
from storyboard.core.runtime import Processes
from storyboard.engine.run import Engine
from storyboard.engine.work import Work


@dataclass
class EmbedBatch:
    indices: list[int]
    features: np.ndarray  # (len(indices), dim) float32, L2-normalised
    failed: list[tuple[int, tuple[str, str]]]  # (index, (reason, detail))


def encode(clip: ClipModel, tensor) -> np.ndarray:
    """L2-normalised image features of a preprocessed batch (call under inference mode / autocast)."""
    if tensor is None:
        return np.zeros((0, clip.embed_dim), np.float32)
    feats = clip.model.encode_image(tensor.to(clip.device, non_blocking=True))
    return torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()


def _autocast(clip: ClipModel):
    return torch.autocast("cuda", dtype=torch.float16) if clip.device.type == "cuda" else nullcontext()


def iter_embeddings(clip: ClipModel, paths: Sequence[Path], batch_size: int = 64, workers: int | None = None,
                    fast_decode: bool = True, desc: str = "embedding",
                    smalls: Sequence[Path | None] | None = None) -> Iterator[EmbedBatch]:
    """Embed ``paths`` in batches, decoding the next batches while the model encodes this one; yields
    as it goes. ``workers`` > 0: that many DataLoader worker processes decode (a GPU, or many cores);
    0: decoding threads in this process, one per core (a few CPU cores, where worker processes would compete
    with the encoder's threads); None: chosen by device (``default_workers``). ``smalls``: each file's
    small copy or None (``decode.open_smallest``)."""
    if not paths:
        return
    workers = default_workers(clip.device) if workers is None else workers
    dataset = ImageFiles(paths, clip.preprocess, clip.image_size if fast_decode else None, smalls)
    cuda = clip.device.type == "cuda"
    batches = ramp_batches(len(paths), batch_size)
    if workers > 0:
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                            pin_memory=cuda, worker_init_fn=worker_init, prefetch_factor=4, persistent_workers=False)
    else:
        # A 256 px small copy decodes in ~5 ms against ~125 ms of ViT-B-32 encoding on a CPU: decoding
        # threads beside the encoder then cost more than they overlap (a preempted OpenMP thread holds up
        # its team; measured on 2 cores, the same run: 85 % of the bare loop with threads, 96 % in line)
        cheap = smalls is not None and all(smalls)
        loader = thread_loader(dataset, batches, threads=0 if cheap else cpu_count())
    bar = progress(range(len(paths)), desc=desc, total=len(paths), unit="img")
    bar_iter = getattr(bar, "update", None)
    with torch.inference_mode(), _autocast(clip):
        for indices, tensor, failed in loader:
            feats = encode(clip, tensor)
            if bar_iter:
                bar_iter(len(indices) + len(failed))
            yield EmbedBatch(indices, feats, failed)
    if hasattr(bar, "close"):
        bar.close()


# --------------------------------------------------------------------------------------------
# The same batches on a Ray cluster
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClipSpec:
    """What a worker needs to load the CLIP this process loaded (paths as they are on every node)."""

    model: str
    checkpoint: str | None
    device: str
    quick_gelu: str
    fingerprint: str  # the driver's: a worker whose files differ refuses to embed
    fast_decode: bool


def clip_spec(clip: ClipModel, s: ClusteringSettings) -> ClipSpec:
    """The loaded model's files as absolute paths (a worker's current folder is not ours)."""
    model = clip.name
    if model.startswith("local-dir:"):
        model = "local-dir:" + str(Path(model[len("local-dir:"):]).expanduser().resolve())
    elif model.endswith(".json"):
        model = str(Path(model).resolve())
    checkpoint = clip.info.get("checkpoint")
    return ClipSpec(model, str(Path(checkpoint).expanduser().resolve()) if checkpoint else None, s.device,
                    s.clip_quick_gelu, clip.fingerprint, s.fast_decode)


class ClipEncoder:
    """CLIP loaded once per worker (a Ray actor); called with one batch of (index, path, small copy),
    returns its ``EmbedBatch``: decoded on the worker's own CPUs (threads), encoded, normalised."""

    def __init__(self, spec: ClipSpec):
        self.clip = load_clip(spec.model, spec.checkpoint, device=spec.device, quick_gelu=spec.quick_gelu)
        if self.clip.fingerprint != spec.fingerprint:
            raise UserError(f"the CLIP files {spec.model} {spec.checkpoint or ''} on a Ray worker differ from this "
                            "machine's (every node needs the same checkpoint at the same path)")
        self.min_side = self.clip.image_size if spec.fast_decode else None
        self.threads = max(1, torch.get_num_threads())

    def __call__(self, batch: list[tuple[int, str, str | None]]) -> EmbedBatch:
        dataset = ImageFiles([p for _, p, _ in batch], self.clip.preprocess, self.min_side,
                             [small for _, _, small in batch])
        with ThreadPoolExecutor(self.threads) as pool:
            positions, tensor, failed = collate(list(pool.map(dataset.__getitem__, range(len(batch)))))
        with torch.inference_mode(), _autocast(self.clip):
            feats = encode(self.clip, tensor)
        return EmbedBatch([batch[k][0] for k in positions], feats, [(batch[k][0], e) for k, e in failed])


def _lost_batch(batch: list[tuple[int, str, str | None]], detail: str) -> EmbedBatch:
    return EmbedBatch([], np.zeros((0, 0), np.float32), [(i, ("worker_failed", detail)) for i, _, _ in batch])


def embed_batches(clip: ClipModel, paths: Sequence[Path], smalls: Sequence[Path | None], s: ClusteringSettings,
                  engine: Engine | None, desc: str = "embedding") -> Iterator[EmbedBatch]:
    """``iter_embeddings``, here or on the engine's Ray cluster (the same batches, in the same order)."""
    jobs = [[(i, str(Path(paths[i]).resolve()), str(Path(smalls[i]).resolve()) if smalls[i] else None)
             for i in batch] for batch in ramp_batches(len(paths), s.batch_size)]
    if engine is None or not engine.on_ray:
        yield from iter_embeddings(clip, paths, batch_size=s.batch_size, workers=s.workers,
                                   fast_decode=s.fast_decode, desc=desc, smalls=smalls)
        return
    work = Work("CLIP encode", model=partial(ClipEncoder, clip_spec(clip, s)), failed=_lost_batch, records=len)
    bar = progress(None, desc=desc, total=len(paths), unit="img")
    for batch in engine.map(jobs, work):
        bar.update(len(batch.indices) + len(batch.failed))
        yield batch
    bar.close()



def shard_indices(n: int, shard: tuple[int, int], processes: Processes) -> list[int]:
    """Positions (of ``n`` inputs) this process embeds: shard i/n split again among the processes."""
    index, count = shard
    total = count * processes.count
    mine = index * processes.count + processes.index
    return list(range(mine, n, total))


@dataclass
class EmbedOutcome:
    features: dict[str, np.ndarray]  # key -> feature, for every key asked that could be embedded
    failed: dict[str, tuple[str, str]]  # key -> (reason, detail)
    embedded_now: int
    cache_hits: int
    seconds: float


def embed_keys(clip: ClipModel, cache: EmbeddingCache, keyed_paths: dict[str, Path], s: ClusteringSettings,
               tag: str = "", desc: str = "embedding", smalls: dict[str, Path] | None = None,
               engine: Engine | None = None) -> EmbedOutcome:
    """Features for each key (content hash -> one path holding that content; ``smalls``: key -> its small
    copy); embeds only what the cache lacks and adds it to the cache in parts as it goes. ``engine``:
    where the encoding runs (default: here)."""
    started = time.time()
    known = cache.load()
    smalls = smalls or {}
    todo = [(k, p) for k, p in keyed_paths.items() if k not in known]
    hits = len(keyed_paths) - len(todo)
    failed: dict[str, tuple[str, str]] = {}
    pending_keys: list[str] = []
    pending: list[np.ndarray] = []
    done = 0
    for batch in embed_batches(clip, [p for _, p in todo], [smalls.get(k) for k, _ in todo], s, engine, desc):
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


def load_clip_for(s: ClusteringSettings, procs: Processes | None = None) -> ClipModel:
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
