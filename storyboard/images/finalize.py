"""The finalize stage: translated records + images -> ``Dataset_fin`` (squares, bubble masks, metadata).

For every record of ``metadata_translated.jsonl`` (in input order):

1. open ``record["image"]`` under the image root (``records.resolve_under``) with ``imageio.load_rgb``
   (EXIF rotation, odd modes, bombs and broken files -> rejects);
2. find and paint out speech bubbles (``bubbles.remove_bubbles``); the mask is saved at the source's
   upright size as ``masks/<name>.png`` (white = removed);
3. make the square (``squares.make_square``: ``--fit pad|crop|subject``) and save it as
   ``images/<name>.<format>``;
4. write the record: every input field kept, plus ``file_name`` (imagefolder), ``source_size``,
   ``source_sha256``, ``source_mode``, ``source_format``, ``exif_orientation``, ``square`` (the
   transform: ``core.geometry.box_to_square`` / ``box_to_source``), ``subject_box``/``subject_from`` (with
   ``--fit subject``), ``bubble_mask_file``, ``bubbles`` and ``bubble_area``.

Output: ``OUT/metadata.jsonl``, ``OUT/rejects.jsonl``, ``OUT/run.json``, ``OUT/images/``,
``OUT/masks/``, ``OUT/small/`` (each square box-reduced by the integer factor ``size // small_size``, when
that is 2 or more, as PNG: what embedding, the gallery and the contact sheet read instead of the full
square; with the default 1024 and 256 it is exactly the 256 px image the embedding's reduced decode of
the full square gives) and ``OUT/.state/`` (one small JSON per finished image: source hash + settings key + what it
added to its record).

Resume: an image whose ``.state`` entry matches its source bytes (SHA-256) and the settings is not
decoded again; its outputs are reused. Every file is written atomically and the state entry last, so
a run killed at any moment (even ``kill -9``) leaves only finished images marked, and the next run
produces the same folder as one uninterrupted run. A full (unsharded) run ends by deleting leftover
temp files and the outputs of images no longer in the input.

Where the work runs (``storyboard.engine``): in this process or ``workers`` spawned processes, or as
Ray tasks on a cluster (``--ray-address``); each image is written by whoever processes it, the
records are written here, in input order, at the end. The files are the same either way.

Shards: ``--shard i/n`` takes the records whose position in the input is ``i`` modulo ``n``; it writes
``OUT/shards/metadata.i-of-n.jsonl`` (+ rejects, run) and the images/masks of its records, never
``OUT/metadata.jsonl``. Copy the shards' ``OUT`` folders together (or share one) and run once without
``--shard``: every image is already done, so that run only writes the final metadata.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from storyboard.core.cli import UserError, progress
from storyboard.core.imageio import load_rgb_bytes, read_image_bytes
from storyboard.core.records import (
    RecordError,
    StageRecords,
    atomic_write_bytes,
    atomic_write_json,
    check_fields,
    read_json_object_or_none,
    read_jsonl,
    resolve_under,
)
from storyboard.engine.run import Engine
from storyboard.engine.work import EngineSettings, Work
from storyboard.images.bubbles import INPAINT_METHODS, METHOD_VERSION, remove_bubbles
from storyboard.images.squares import FITS, PAD_FILLS, detect_subject, make_square

# Bump when this stage's output for the same input and settings changes (resume keys include it).
STAGE_VERSION = 1
IMAGE_FORMATS = ("png", "jpg", "webp")
STATE_DIR = ".state"
SMALL_DIR = "small"
REQUIRED_FIELDS = ("id", "image", "text")


@dataclass(frozen=True)
class FinalizeSettings:
    """Everything that changes the bytes this stage writes for one image."""

    size: int = 1024
    fit: str = "pad"
    pad_fill: str = "edge"
    bubbles: bool = True
    inpaint: str = "smooth"
    image_format: str = "png"
    quality: int = 95  # jpg / webp
    small_size: int = 256  # the small copy's least side (0: none)
    max_pixels: int = 89_478_485

    def key(self) -> str:
        data = asdict(self)
        data.pop("max_pixels")  # decides rejects, never the bytes of an accepted image
        data["stage_version"] = STAGE_VERSION
        data["bubble_version"] = METHOD_VERSION if self.bubbles else None
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]

    def check(self) -> None:
        if not 16 <= self.size <= 8192:
            raise UserError(f"--size {self.size} is out of range (16..8192)")
        if self.fit not in FITS:
            raise UserError(f"--fit {self.fit!r}: choose from {', '.join(FITS)}")
        if self.pad_fill not in PAD_FILLS:
            raise UserError(f"--pad-fill {self.pad_fill!r}: choose from {', '.join(PAD_FILLS)}")
        if self.inpaint not in INPAINT_METHODS:
            raise UserError(f"--inpaint {self.inpaint!r}: choose from {', '.join(INPAINT_METHODS)}")
        if self.image_format not in IMAGE_FORMATS:
            raise UserError(f"--format {self.image_format!r}: choose from {', '.join(IMAGE_FORMATS)}")
        if not 1 <= self.quality <= 100:
            raise UserError(f"--quality {self.quality} is out of range (1..100)")
        if self.small_size and self.small_size < 16:
            raise UserError(f"--small-size {self.small_size}: 0 (none) or at least 16")

    @property
    def writes_small(self) -> bool:
        """A small copy only where it is at least 2x smaller than the square (else the square is small)."""
        return bool(self.small_size) and self.size // self.small_size >= 2


# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^\w.-]+", re.UNICODE)


def safe_name(record_id: str, taken: set[str]) -> str:
    """A file stem for a record id: readable (Korean kept, NFC), no path characters, unique even on
    case-insensitive file systems; a short hash of the id is appended when the id had to change."""
    nfc = unicodedata.normalize("NFC", record_id)
    stem = _UNSAFE.sub("_", nfc).strip("._")[:80] or "image"
    if stem != record_id or stem.lower() in taken:
        stem = f"{stem}-{hashlib.sha1(record_id.encode('utf-8')).hexdigest()[:8]}"
    while stem.lower() in taken:  # only when two different ids hash alike after cleaning
        stem += "_"
    taken.add(stem.lower())
    return stem


# --------------------------------------------------------------------------------------------
# One image (runs in a worker process)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Task:
    name: str
    source: str  # absolute path of the source image
    out: str
    settings: FinalizeSettings


def encode_image(rgb, image_format: str, quality: int) -> bytes:
    """RGB array -> file bytes (OpenCV's encoders: fast, and the same the bench's bare loop uses)."""
    bgr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    if image_format == "png":
        ok, buf = cv2.imencode(".png", bgr, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    elif image_format == "jpg":
        ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    else:
        ok, buf = cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, quality])
    if not ok:
        raise RuntimeError(f"could not encode a {rgb.shape} image as {image_format}")
    return buf.tobytes()


def _state_path(out: Path, name: str) -> Path:
    return out / STATE_DIR / f"{name}.json"


def read_state(out: Path, name: str) -> dict | None:
    return read_json_object_or_none(_state_path(out, name))


def _finished(state: dict | None, out: Path, sha: str, key: str) -> bool:
    return bool(state and state.get("source_sha256") == sha and state.get("settings_key") == key
                and all((out / f).is_file() for f in state.get("files", [])))


def process_image(task: Task) -> dict:
    """Do one image; returns {"additions": {...}, "cached": bool} or {"reason": ..., "detail": ...}."""
    try:
        return _process_image(task)
    except RecordError as exc:
        return {"reason": exc.reason, "detail": exc.detail}
    except Exception as exc:  # one odd image must not stop a long run; it goes to rejects
        return {"reason": "unreadable_image", "detail": f"failed while processing: {type(exc).__name__}: {exc}"}


def _process_image(task: Task) -> dict:
    out, s, source = Path(task.out), task.settings, Path(task.source)
    data = read_image_bytes(source)
    sha = hashlib.sha256(data).hexdigest()
    key = s.key()
    state = read_state(out, task.name)
    if _finished(state, out, sha, key):
        return {"additions": state["additions"], "cached": True}

    loaded = load_rgb_bytes(data, source.name, s.max_pixels)
    rgb = loaded.rgb
    width, height = loaded.size
    additions: dict[str, Any] = {
        "file_name": f"images/{task.name}.{s.image_format}",
        "source_size": [width, height],
        "source_sha256": sha,
        "source_mode": loaded.mode,
        "source_format": loaded.format,
        "exif_orientation": loaded.exif_orientation,
    }
    files = [additions["file_name"]]
    if s.bubbles:
        rgb, mask, found = remove_bubbles(rgb, method=s.inpaint)
        mask_file = f"masks/{task.name}.png"
        atomic_write_bytes(out / mask_file, _encode_mask(mask))
        additions["bubble_mask_file"] = mask_file
        additions["bubbles"] = [{"box": list(b.box), "area": round(b.area, 5)} for b in found]
        additions["bubble_area"] = round(float((mask > 0).mean()), 5)
        files.append(mask_file)
    subject_box = None
    if s.fit == "subject":
        subject_box, subject_from = detect_subject(rgb)
        additions["subject_box"] = [int(v) for v in subject_box]
        additions["subject_from"] = subject_from
    square, transform = make_square(rgb, s.size, s.fit, s.pad_fill, subject_box)
    additions["square"] = transform.as_record()
    atomic_write_bytes(out / additions["file_name"], encode_image(square, s.image_format, s.quality))
    if s.writes_small:
        additions["small_file"] = f"{SMALL_DIR}/{task.name}.png"
        atomic_write_bytes(out / additions["small_file"], encode_image(small_copy(square, s.small_size), "png", 0))
        files.append(additions["small_file"])
    # The state entry is written last: it exists only when every file it names is complete.
    atomic_write_json(_state_path(out, task.name),
                      {"source_sha256": sha, "settings_key": key, "files": files, "additions": additions})
    return {"additions": additions, "cached": False}


def small_copy(square, small_size: int):
    """The square box-averaged by the integer factor ``side // small_size`` (Pillow's ``reduce``: what
    ``clustering.decode.open_for_embedding`` does to a full square it opens for a smaller model input)."""
    factor = max(1, square.shape[0] // small_size)
    if factor == 1:
        return square
    return np.asarray(Image.fromarray(square).reduce(factor))


def _encode_mask(mask) -> bytes:
    ok, buf = cv2.imencode(".png", mask, [cv2.IMWRITE_PNG_COMPRESSION, 6])
    if not ok:
        raise RuntimeError("could not encode a bubble mask")
    return buf.tobytes()


def init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already; threads inside would only fight


def _failed(task: Task, detail: str) -> dict:
    return {"reason": "worker_failed", "detail": f"{task.name}: {detail}"}


FINALIZE_WORK = Work("finalize", function=process_image, setup=init_worker, failed=_failed, jobs_per_task=4)


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------
@dataclass
class _Planned:
    item: Any  # JsonlItem
    error: RecordError | None = None
    name: str | None = None


def _plan(metadata: Path, image_root: Path) -> list[_Planned]:
    """Every line of the input with its fate decided where it can be without the image: the field
    checks, the path guard, duplicates (by id, across the whole file, so shards agree) and names."""
    planned, seen, taken = [], set(), set()
    for item in read_jsonl(metadata):
        entry = _Planned(item, item.error)
        if entry.error is None:
            record = item.record
            try:
                check_fields(record, required=REQUIRED_FIELDS)
                resolve_under(image_root, record["image"])
                if record["id"] in seen:
                    raise RecordError("duplicate", f"id {record['id']!r} appears earlier in {metadata.name}")
            except RecordError as exc:
                entry.error = exc
            else:
                seen.add(record["id"])
                entry.name = safe_name(record["id"], taken)
        planned.append(entry)
    return planned


def prune(out: Path, keep: set[str]) -> int:
    """Delete what earlier runs left that this run did not produce: temp files of killed runs, and
    the state entries (and the files they name) of images no longer in the input. Returns a count."""
    removed = 0
    own = f".tmp-{os.getpid()}"
    for folder in (out, out / "images", out / "masks", out / SMALL_DIR, out / STATE_DIR):
        if folder.is_dir():
            for path in folder.glob(".*.tmp-*"):
                if path.is_file() and not path.name.endswith(own):
                    path.unlink(missing_ok=True)
                    removed += 1
    state_dir = out / STATE_DIR
    referenced: set[str] = set()
    if state_dir.is_dir():
        for state_file in sorted(state_dir.glob("*.json")):
            name = state_file.stem
            files = (read_state(out, name) or {}).get("files", [])
            if name in keep:
                referenced.update(files)
                continue
            for rel in files:
                target = (out / rel).resolve()
                if out.resolve() in target.parents and target.is_file():
                    target.unlink()
                    removed += 1
            state_file.unlink(missing_ok=True)
            removed += 1
    # Outputs of a kept image made under other settings (e.g. images/x.png after --format jpg).
    for sub in ("images", "masks", SMALL_DIR):
        folder = out / sub
        if folder.is_dir():
            for path in folder.iterdir():
                if path.is_file() and path.stem in keep and f"{sub}/{path.name}" not in referenced:
                    path.unlink()
                    removed += 1
    return removed


def finalize_dataset(metadata: Path, image_root: Path, out: Path, settings: FinalizeSettings,
                     workers: int = 1, shard: tuple[int, int] | None = (0, 1),
                     config: dict | None = None, engine: EngineSettings | None = None) -> StageRecords:
    """Run the stage (see the module doc); returns the closed ``StageRecords`` for its summary.
    ``shard``: ``(i, n)`` as ``core.runtime.parse_shard`` gives it; ``(0, 1)`` (or None) is the whole input,
    not a shard. ``engine``: where the images are made (default: here, ``workers`` processes)."""
    settings.check()
    metadata, image_root, out = Path(metadata), Path(image_root), Path(out)
    if not metadata.is_file():
        raise UserError(f"metadata file not found: {metadata}")
    if not image_root.is_dir():
        raise UserError(f"image root is not a folder: {image_root}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file, not a folder")
    planned = _plan(metadata, image_root)
    shard = shard if shard and shard[1] > 1 else None
    if shard:
        i, n = shard
        planned = [p for index, p in enumerate(planned) if index % n == i]
        output = out / "shards" / f"metadata.{i}-of-{n}.jsonl"
    else:
        output = out
    # Workers on other machines open the same absolute paths (shared storage).
    tasks = [Task(p.name, str(resolve_under(image_root, p.item.record["image"]).resolve()), str(out.resolve()),
                  settings) for p in planned if p.error is None]
    with Engine(engine or EngineSettings()) as runner:  # joins a cluster (or fails) before anything is written
        for sub in ("images", "masks", SMALL_DIR, STATE_DIR):
            (out / sub).mkdir(parents=True, exist_ok=True)
        config = dict(config or {}, settings=asdict(settings), settings_key=settings.key(),
                      workers=workers, shard=f"{shard[0]}/{shard[1]}" if shard else None)
        with StageRecords(output, stage="finalize", config=config) as stage:
            results = runner.map(tasks, replace(FINALIZE_WORK, processes=workers))
            _collect(stage, planned, results)
            stage.config["engine"] = runner.info()
            if not shard:
                stage.extra["stale files removed"] = prune(out, {p.name for p in planned if p.name})
    return stage


def _collect(stage: StageRecords, planned: list[_Planned], results) -> None:
    """Every planned record to the output or the rejects, in input order."""
    cached = made = 0
    for entry in progress(planned, desc="finalize", total=len(planned), unit="img"):
        stage.count_read()
        item = entry.item
        if entry.error is not None:
            stage.reject_item(item, entry.error)
            continue
        result = next(results)
        if "reason" in result:
            stage.reject(result["reason"], result["detail"], record=item.record, source=item.source, line=item.line)
            continue
        cached += result["cached"]
        made += not result["cached"]
        stage.accept({**item.record, **result["additions"]})
    stage.extra["images made"] = made
    stage.extra["images reused (resume)"] = cached
