"""The OpenCV estimator's measurements of the stage's images, cached by image content (and the
picture's box inside its square) under the embedding cache folder, so a re-run measures only new images.
"""
from __future__ import annotations

import time
import uuid
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from storyboard.clustering.cache import FLUSH_EVERY
from storyboard.clustering.decode import open_for_embedding
from storyboard.clustering.rows import Row
from storyboard.clustering.shots import Measurement, OpenCVShotEstimator
from storyboard.core.cli import progress
from storyboard.core.geometry import box_to_square, transform_from_record
from storyboard.core.records import RecordError, atomic_write, dumps_record, read_jsonl

ESTIMATOR_MAX_SIDE = 768  # images are measured at most this large (ratios do not depend on scale)


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
        w, h = record["source_size"]
        size = float(square["size"])
        x0, y0, x1, y1 = box_to_square([0, 0, w, h], transform_from_record(record))
    except Exception:  # an odd transform only costs the trimming fallback
        return None
    box = [max(0.0, x0 / size), max(0.0, y0 / size), min(1.0, x1 / size), min(1.0, y1 / size)]
    return box if box[2] > box[0] and box[3] > box[1] else None


def _load_small(path: Path, max_side: int) -> np.ndarray:
    img = open_for_embedding(path, max_side)
    scale = max_side / max(img.size)
    if scale < 1:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
    return np.asarray(img)


def prefetch(pool, fn, jobs, ahead: int):
    """``map(fn, jobs)`` in order, with at most ``ahead`` results computed in advance (bounded memory)."""
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
