"""CLIP image embeddings, cached: the encode loop (``iter_embeddings``: batched, normalised, fp16
autocast on a GPU, fed by ``decode``'s workers) and the stage's use of it (``embed_keys``: only what the
cache lacks is embedded, and added to the cache in parts as it goes; ``shard_indices``: this process's
share of the input).
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
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


@dataclass
class EmbedBatch:
    indices: list[int]
    features: np.ndarray  # (len(indices), dim) float32, L2-normalised
    failed: list[tuple[int, tuple[str, str]]]  # (index, (reason, detail))


def iter_embeddings(clip: ClipModel, paths: Sequence[Path], batch_size: int = 64, workers: int | None = None,
                    fast_decode: bool = True, desc: str = "embedding") -> Iterator[EmbedBatch]:
    """Embed ``paths`` in batches, decoding the next batches while the model encodes this one; yields
    as it goes. ``workers`` > 0: that many DataLoader worker processes decode (a GPU, or many cores);
    0: decoding threads in this process, one per core (a few CPU cores, where worker processes would compete
    with the encoder's threads); None: chosen by device (``default_workers``)."""
    if not paths:
        return
    workers = default_workers(clip.device) if workers is None else workers
    dataset = ImageFiles(paths, clip.preprocess, clip.image_size if fast_decode else None)
    cuda = clip.device.type == "cuda"
    batches = ramp_batches(len(paths), batch_size)
    if workers > 0:
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=workers, collate_fn=collate,
                            pin_memory=cuda, worker_init_fn=worker_init, prefetch_factor=4, persistent_workers=False)
    else:
        loader = thread_loader(dataset, batches, threads=cpu_count())
    autocast = torch.autocast("cuda", dtype=torch.float16) if cuda else nullcontext()
    bar = progress(range(len(paths)), desc=desc, total=len(paths), unit="img")
    bar_iter = getattr(bar, "update", None)
    with torch.inference_mode(), autocast:
        for indices, tensor, failed in loader:
            if tensor is not None:
                feats = clip.model.encode_image(tensor.to(clip.device, non_blocking=True))
                feats = torch.nn.functional.normalize(feats.float(), dim=-1).cpu().numpy()
            else:
                feats = np.zeros((0, clip.embed_dim), np.float32)
            if bar_iter:
                bar_iter(len(indices) + len(failed))
            yield EmbedBatch(indices, feats, failed)
    if hasattr(bar, "close"):
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
