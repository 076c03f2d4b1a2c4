"""Images to model inputs, for embedding: opened at reduced size where that is cheap, and decoded ahead
of the model by worker processes or threads.

When the model's input is much smaller than the file, JPEGs are decoded at reduced size (libjpeg's DCT
scaling, ``Image.draft``) and other formats box-averaged by an integer factor before the model's own
resize: several times cheaper, and the features change by less than one resize filter differs from
another. The next batches are decoded while the model encodes this one: torch ``DataLoader`` worker
processes on a GPU, decoding threads (one per core) on a CPU, where worker processes compete with
torch's own threads (see bench/bench_embed.py); the first batches are small, so the model starts at once.
"""
from __future__ import annotations

import os
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from storyboard.core.imageio import DEFAULT_MAX_PIXELS, to_rgb_array
from storyboard.core.records import RecordError

# Bump when the decode/preprocess path changes what a feature is, so old cache entries are not reused.
DECODE_VERSION = 2


def open_for_embedding(path: str | os.PathLike, min_side: int | None = None):
    """An upright RGB PIL image whose short side is still >= ``min_side`` (None: full size): JPEGs
    decoded at a reduced DCT scale, other formats box-averaged by an integer factor after decoding.
    ``RecordError`` when the file cannot be decoded."""
    path = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                w, h = img.size
                if w * h > DEFAULT_MAX_PIXELS:
                    raise RecordError("unreadable_image", f"{path.name} is {w}x{h}, over the pixel limit")
                if getattr(img, "n_frames", 1) > 1:
                    img.seek(0)
                if min_side and img.format == "JPEG" and min(w, h) >= 2 * min_side:
                    scale = min_side / min(w, h)
                    img.draft("RGB", (max(1, int(w * scale + 0.999)), max(1, int(h * scale + 0.999))))
                img.load()
                upright = ImageOps.exif_transpose(img)
                if upright.mode == "RGB" and not upright.info.get("icc_profile"):
                    out = upright  # already what the model takes: skip a copy through numpy
                else:
                    out = Image.fromarray(to_rgb_array(upright))
                factor = min(out.size) // min_side if min_side else 1
                # Box-average by an integer factor first (what the JPEG DCT scaling does for JPEGs): the
                # bicubic resize after it then works on a small image, several times cheaper.
                return out.reduce(factor) if factor >= 2 else out
    except FileNotFoundError:
        raise RecordError("missing_image", f"no file at {path}") from None
    except RecordError:
        raise
    except UnidentifiedImageError:
        raise RecordError("unreadable_image", f"{path.name} is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, MemoryError,
            Image.DecompressionBombError) as exc:
        raise RecordError("unreadable_image", f"{path.name}: {type(exc).__name__}: {exc}") from None


def open_smallest(path: str | os.PathLike, small: str | os.PathLike | None, min_side: int | None):
    """``open_for_embedding`` of the small copy when there is one whose short side is still at least
    ``min_side``, else of ``path`` (no ``min_side``: a full-size decode, always of ``path``)."""
    if small is not None and min_side:
        try:
            with Image.open(small) as img:
                big_enough = min(img.size) >= min_side
            if big_enough:
                return open_for_embedding(small, min_side)
        except (OSError, RecordError, ValueError, SyntaxError):
            pass  # a missing or broken small copy only costs the full file's decode
    return open_for_embedding(path, min_side)


class ImageFiles:
    """A map-style dataset: index -> (index, preprocessed tensor or None, error detail). ``smalls``: each
    file's small copy, or None (see ``open_smallest``)."""

    def __init__(self, paths: Sequence[Path], preprocess: Callable, min_side: int | None,
                 smalls: Sequence[Path | None] | None = None):
        self.paths = list(paths)
        self.preprocess = preprocess
        self.min_side = min_side
        self.smalls = list(smalls) if smalls is not None else [None] * len(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        try:
            image = open_smallest(self.paths[i], self.smalls[i], self.min_side)
            return i, self.preprocess(image), None
        except RecordError as exc:
            return i, None, (exc.reason, exc.detail)
        except Exception as exc:  # a preprocess failure on a strange image is that image's problem
            return i, None, ("unreadable_image", f"{Path(self.paths[i]).name}: {type(exc).__name__}: {exc}")


def collate(items):
    ok = [(i, t) for i, t, e in items if t is not None]
    failed = [(i, e) for i, t, e in items if t is None]
    tensor = torch.stack([t for _, t in ok]) if ok else None
    return [i for i, _ in ok], tensor, failed


def worker_init(_):
    torch.set_num_threads(1)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def default_workers(device) -> int:
    """Decoding worker processes: several on a GPU (the CPU is free to decode while the GPU encodes);
    on a CPU, none up to 8 cores (decoding threads instead: measured on 2 cores, a worker process
    competing with torch's threads costs more than it overlaps), then one per 8 cores."""
    cpus = cpu_count()
    if getattr(device, "type", str(device)) == "cuda":
        return max(1, min(8, cpus - 1))
    return 0 if cpus <= 8 else min(4, cpus // 8)


def ramp_batches(n: int, batch_size: int, first: int = 4) -> list[list[int]]:
    """Batches of ``first``, twice that, ... up to ``batch_size`` images, then ``batch_size`` each: the
    model starts on the first few decoded images instead of idling until a whole batch is decoded."""
    batches, start, size = [], 0, max(1, min(first, batch_size))
    while start < n:
        batches.append(list(range(start, min(n, start + size))))
        start += size
        size = min(batch_size, size * 2)
    return batches


def thread_loader(dataset: ImageFiles, batches: list[list[int]], ahead: int = 2, threads: int = 2):
    """The DataLoader's job in background threads of this process: decoding (which releases the GIL)
    overlaps encoding without another process competing with torch's threads for the cores. Images
    are decoded one per task on ``threads`` threads, so while the encoder waits for a batch every
    core decodes (one thread left a core idle then: PNG 65 % -> 66-71 % of the bare loop on 2 cores).
    ``threads=0``: each batch decoded in line, between encodes (for cheap decodes; ``iter_embeddings``)."""
    if threads <= 0:
        yield from (collate([dataset[i] for i in batch]) for batch in batches)
        return
    pool = ThreadPoolExecutor(max_workers=max(1, threads))
    pending: deque = deque()

    def collated(futures):
        return collate([f.result() for f in futures])

    try:
        for batch in batches:
            pending.append([pool.submit(dataset.__getitem__, i) for i in batch])
            if len(pending) > ahead:
                yield collated(pending.popleft())
        while pending:
            yield collated(pending.popleft())
    finally:
        for futures in pending:
            for future in futures:
                future.cancel()
        pool.shutdown(wait=True)
