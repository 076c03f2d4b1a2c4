"""The embedding cache, keyed by image content: one folder per model fingerprint (architecture + weights'
content + the preprocessing), holding ``part-*.npz`` files of (image content sha256 -> normalised feature).

Every run and every shard adds its own part file atomically, so processes never write the same file; a
re-run or a grown data set embeds only images whose content is new. ``merge_caches`` folds caches from
several machines (and the many small parts of one) into one part per model. ``hash_files`` gives the
content keys. Needs no torch: ``--merge-caches`` runs without loading a model.
"""
from __future__ import annotations

import io
import json
import os
import re
import time
import uuid
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storyboard.core.cli import UserError, format_table, progress
from storyboard.core.records import atomic_write_bytes, atomic_write_json
from storyboard.core.runtime import sha256_file

CACHE_FORMAT = 1
FLUSH_EVERY = 1024  # entries written to a cache at least this often (a killed run keeps them)


def hash_files(paths: Sequence[Path], workers: int = 8, desc: str = "hashing") -> list[str | Exception]:
    """sha256 of each file (hashlib releases the GIL, so threads overlap the reads); an OSError in place
    of the hash for a file that cannot be read."""

    def one(path: Path) -> str | Exception:
        try:
            return sha256_file(path)
        except OSError as exc:
            return exc

    if not paths:
        return []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return list(progress(pool.map(one, paths), desc=desc, total=len(paths), unit="file"))


_PART = re.compile(r"^part-[\w.-]+\.npz$")


class EmbeddingCache:
    """image sha256 -> feature, for one model, in ``<root>/<fingerprint[:16]>/part-*.npz``."""

    def __init__(self, root: str | os.PathLike, fingerprint: str, model_info: dict | None = None):
        self.root = Path(root)
        self.fingerprint = fingerprint
        self.folder = self.root / fingerprint[:16]
        self.model_info = dict(model_info or {})
        self._data: dict[str, np.ndarray] | None = None

    def parts(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if _PART.match(p.name))

    def load(self) -> dict[str, np.ndarray]:
        if self._data is None:
            data: dict[str, np.ndarray] = {}
            for part in self.parts():
                keys, feats = read_part(part)
                for k, v in zip(keys, feats):
                    data[k] = v
            self._data = data
        return self._data

    def __contains__(self, key: str) -> bool:
        return key in self.load()

    def get(self, key: str) -> np.ndarray | None:
        return self.load().get(key)

    def add(self, keys: Sequence[str], features: np.ndarray, tag: str = "") -> Path | None:
        """Write one new part (atomically); nothing when ``keys`` is empty."""
        if not len(keys):
            return None
        self._write_meta()
        name = f"part-{time.strftime('%Y%m%d%H%M%S')}-{tag + '-' if tag else ''}{uuid.uuid4().hex[:8]}.npz"
        path = self.folder / name
        write_part(path, list(keys), np.asarray(features, np.float32))
        data = self.load()
        for k, v in zip(keys, features):
            data[k] = np.asarray(v, np.float32)
        return path

    def compact(self) -> int:
        """Fold every part into one; returns how many parts were folded."""
        parts = self.parts()
        if len(parts) <= 1:
            return 0
        data = {}
        for part in parts:
            keys, feats = read_part(part)
            data.update(zip(keys, feats))
        keys = sorted(data)
        write_part(self.folder / f"part-{time.strftime('%Y%m%d%H%M%S')}-merged-{uuid.uuid4().hex[:8]}.npz",
                   keys, np.stack([data[k] for k in keys]))
        for part in parts:
            part.unlink(missing_ok=True)
        self._data = None
        return len(parts)

    def _write_meta(self) -> None:
        meta = self.folder / "model.json"
        if not meta.is_file():
            atomic_write_json(meta, {"format": CACHE_FORMAT, "fingerprint": self.fingerprint, **self.model_info})


def write_part(path: Path, keys: list[str], features: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.savez(buffer, keys=np.asarray(keys, dtype="U64"), features=np.asarray(features, np.float32))
    atomic_write_bytes(path, buffer.getvalue())


def read_part(path: Path) -> tuple[list[str], np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = [str(k) for k in npz["keys"]]
            feats = np.asarray(npz["features"], np.float32)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise UserError(f"embedding cache part {path} is unreadable ({exc}); delete it and re-run") from None
    if len(keys) != len(feats):
        raise UserError(f"embedding cache part {path} is inconsistent ({len(keys)} keys, {len(feats)} rows)")
    return keys, feats


@dataclass
class MergeSummary:
    destination: Path
    models: list[tuple[str, int, int, int]]  # (fingerprint[:16], parts read, entries before, entries after)

    def table(self) -> str:
        rows = [(fp, parts, before, after) for fp, parts, before, after in self.models]
        return f"merged caches into {self.destination}\n" + format_table(
            rows, header=("model", "parts folded", "entries before", "entries after"))


def merge_caches(sources: Sequence[str | os.PathLike], destination: str | os.PathLike) -> MergeSummary:
    """Copy every model's entries from ``sources`` into ``destination`` and fold each model's parts into
    one. Sources are left as they were. With no sources, only folds the destination's parts."""
    dest = Path(destination)
    folders: dict[str, list[Path]] = {}
    for source in [dest, *map(Path, sources)]:
        if not source.exists():
            if source == dest:
                continue
            raise UserError(f"cache folder not found: {source}")
        if not source.is_dir():
            raise UserError(f"{source} is not a cache folder")
        found = [p for p in source.iterdir() if p.is_dir() and (p / "model.json").is_file()]
        if source != dest and not found:
            raise UserError(f"{source} holds no embedding cache (no */model.json inside)")
        for model_dir in found:
            folders.setdefault(model_dir.name, []).append(model_dir)
    results = []
    for short, dirs in sorted(folders.items()):
        meta = json.loads((dirs[0] / "model.json").read_text(encoding="utf-8"))
        info = {k: v for k, v in meta.items() if k not in ("format", "fingerprint")}
        cache = EmbeddingCache(dest, meta.get("fingerprint", short), info)
        before = len(cache.load()) if cache.folder.is_dir() else 0
        dest_parts = cache.parts()
        data = dict(cache.load())
        parts_read = len(dest_parts)
        for folder in dirs:
            if folder.resolve() == cache.folder.resolve():
                continue
            for part in sorted(p for p in folder.iterdir() if _PART.match(p.name)):
                keys, feats = read_part(part)
                data.update(zip(keys, feats))
                parts_read += 1
        if not data:
            continue
        keys = sorted(data)
        cache._write_meta()
        write_part(cache.folder / f"part-{time.strftime('%Y%m%d%H%M%S')}-merged-{uuid.uuid4().hex[:8]}.npz",
                   keys, np.stack([data[k] for k in keys]))
        for part in dest_parts:  # only after the merged part is safely in place
            part.unlink(missing_ok=True)
        results.append((short, parts_read, before, len(keys)))
    if not results:
        raise UserError(f"nothing to merge: no embedding cache in {', '.join(map(str, sources)) or dest}")
    return MergeSummary(dest, results)
