"""The line-art stage: finalized records in, ``lineart/<name>.png`` + ``lineart_file`` out (see
``storyboard.images.lineart`` for the backends, resume and output layout)."""
from __future__ import annotations

import hashlib
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import cv2
import numpy as np

from storyboard.core.cli import UserError, progress
from storyboard.core.imageio import load_rgb, read_image_bytes
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
from storyboard.images.lineart import MODEL_BACKENDS, OUT_DIR, LineartSettings, check_settings, cpu_lines, record_seed

STATE_DIR = ".state"


@dataclass
class _Item:
    item: Any  # JsonlItem
    error: RecordError | None = None
    name: str = ""
    source: Path | None = None
    sha: str = ""
    additions: dict | None = None  # set when finished (now or by an earlier run)


def lineart_name(file_name: str) -> str:
    """``images/x.png`` -> ``x``; another folder is kept in the name (``a/b/x.png`` -> ``a__b__x``)."""
    parts = PurePosixPath(file_name.replace("\\", "/")).with_suffix("").parts
    if len(parts) > 1 and parts[0] == "images":
        parts = parts[1:]
    return "__".join(p for p in parts if p not in ("", ".", ".."))


def _state_file(out: Path, name: str) -> Path:
    return out / STATE_DIR / f"{name}.json"


def _read_state(out: Path, name: str) -> dict | None:
    return read_json_object_or_none(_state_file(out, name))


def _plan(items, data_dir: Path, out: Path, s: LineartSettings) -> list[_Item]:
    planned, names, key = [], set(), s.key()
    for item in items:
        entry = _Item(item, item.error)
        planned.append(entry)
        if entry.error is not None:
            continue
        try:
            check_fields(item.record, required=("file_name",))
            entry.source = resolve_under(data_dir, item.record["file_name"])
            entry.name = lineart_name(item.record["file_name"])
            if entry.name.lower() in names:
                raise RecordError("duplicate", f"{item.record['file_name']!r} gives a line-art name already used")
            names.add(entry.name.lower())
            entry.sha = hashlib.sha256(read_image_bytes(entry.source)).hexdigest()
        except RecordError as exc:
            entry.error = exc
            continue
        state = _read_state(out, entry.name)
        if state and state.get("source_sha256") == entry.sha and state.get("settings_key") == key \
                and (data_dir / state["additions"]["lineart_file"]).is_file():
            entry.additions = state["additions"]
    return planned


def _save(entry: _Item, lines: np.ndarray, data_dir: Path, out: Path, s: LineartSettings) -> None:
    rel = f"{out.relative_to(data_dir).as_posix()}/{entry.name}.png"
    image = lines if lines.ndim == 2 else cv2.cvtColor(lines, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError(f"could not encode the line art of {entry.name}")
    atomic_write_bytes(data_dir / rel, buf.tobytes())
    additions: dict[str, Any] = {"lineart_file": rel, "lineart_backend": s.backend}
    if s.backend == "sdxl-controlnet":
        additions["lineart_seed"] = record_seed(s.seed, str(entry.item.record.get("id", entry.name)))
    atomic_write_json(_state_file(out, entry.name),
                      {"source_sha256": entry.sha, "settings_key": s.key(), "additions": additions})
    entry.additions = additions


def _cpu_job(args):
    try:
        return cpu_lines(args)
    except RecordError as exc:
        return exc
    except Exception as exc:  # one odd image must not stop the run
        return RecordError("unreadable_image", f"failed while drawing lines: {type(exc).__name__}: {exc}")


def _run_cpu(todo: list[_Item], data_dir: Path, out: Path, s: LineartSettings, workers: int) -> None:
    params = {k: v for k, v in asdict(s).items() if k.startswith(("xdog_", "canny_"))}
    jobs = [(str(e.source), s.backend, s.size, params) for e in todo]
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=multiprocessing.get_context("spawn")) as pool:
            results = pool.map(_cpu_job, jobs)
            for entry, result in progress(zip(todo, results), desc="line art", total=len(todo), unit="img"):
                _keep(entry, result, data_dir, out, s)
    else:
        for entry, job in progress(list(zip(todo, jobs)), desc="line art", total=len(todo), unit="img"):
            _keep(entry, _cpu_job(job), data_dir, out, s)


def _keep(entry: _Item, result, data_dir: Path, out: Path, s: LineartSettings) -> None:
    if isinstance(result, RecordError):
        entry.error = result
    else:
        _save(entry, result, data_dir, out, s)


def _run_models(todo: list[_Item], data_dir: Path, out: Path, s: LineartSettings) -> None:
    from storyboard.images.lineart_models import ModelBackend  # noqa: PLC0415 (heavy: loads torch only after the records are planned and a model backend is asked for)

    backend = ModelBackend(s)
    bar = progress(None, desc=f"line art ({s.backend})", total=len(todo), unit="img")
    for start in range(0, len(todo), s.batch_size):
        batch, images = [], []
        for entry in todo[start:start + s.batch_size]:
            try:
                rgb = load_rgb(entry.source).rgb
            except RecordError as exc:
                entry.error = exc
                continue
            size = s.size or max(rgb.shape[:2])
            if rgb.shape[:2] != (size, size):
                rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
            batch.append(entry)
            images.append(rgb)
        if not batch:
            continue
        # One batch shares a size; squares from one finalize run always do.
        size = images[0].shape[0]
        images = [im if im.shape[0] == size else cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
                  for im in images]
        seeds = [record_seed(s.seed, str(e.item.record.get("id", e.name))) for e in batch]
        for entry, lines in zip(batch, backend.run(images, size, seeds)):
            _save(entry, lines, data_dir, out, s)
        bar.update(len(batch))
    bar.close()


def prune(out: Path, data_dir: Path, keep: set[str]) -> int:
    """Remove line art (and state) of images no longer in the input, and temp files of killed runs."""
    removed = 0
    own = f".tmp-{os.getpid()}"  # this run's own open outputs
    for folder in (out, out / STATE_DIR):
        for path in folder.glob(".*.tmp-*") if folder.is_dir() else []:
            if not path.name.endswith(own):
                path.unlink(missing_ok=True)
                removed += 1
    for state_file in sorted((out / STATE_DIR).glob("*.json")) if (out / STATE_DIR).is_dir() else []:
        if state_file.stem in keep:
            continue
        state = _read_state(out, state_file.stem) or {}
        rel = (state.get("additions") or {}).get("lineart_file")
        if rel and (data_dir / rel).is_file():
            (data_dir / rel).unlink()
            removed += 1
        state_file.unlink(missing_ok=True)
        removed += 1
    return removed


def run_lineart(metadata: Path, data_dir: Path, output: Path, settings: LineartSettings, workers: int = 1,
                config: dict | None = None, out_dir: str = OUT_DIR) -> StageRecords:
    """Run the stage; ``output`` may be ``metadata`` itself (rewritten atomically at the end).
    ``out_dir``: the line-art folder inside ``data_dir`` (another one keeps a second backend's
    results beside the first)."""
    metadata, data_dir, output = Path(metadata), Path(data_dir), Path(output)
    if not metadata.is_file():
        raise UserError(f"metadata file not found: {metadata} (run 03_finalize_dataset.py first)")
    if not data_dir.is_dir():
        raise UserError(f"data folder not found: {data_dir}")
    s = check_settings(settings)
    parts = Path(out_dir).parts
    if not parts or Path(out_dir).is_absolute() or ".." in parts or parts[0] in ("images", "masks", ".state"):
        raise UserError(f"--out-dir {out_dir!r}: a new folder name inside the data folder")
    out = data_dir / out_dir
    (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
    planned = _plan(list(read_jsonl(metadata)), data_dir, out, s)  # all read before the output is opened
    todo = [e for e in planned if e.error is None and e.additions is None]
    reused = sum(1 for e in planned if e.error is None and e.additions is not None)
    if todo and s.backend in MODEL_BACKENDS:
        _run_models(todo, data_dir, out, s)
    elif todo:
        _run_cpu(todo, data_dir, out, s, workers)

    config = dict(config or {}, settings=dict(asdict(s)), settings_key=s.key(), workers=workers)
    stage = StageRecords(output, rejects=out / "rejects.jsonl", stage="lineart", config=config)
    stage.run_info = out / "run.json"
    with stage:
        for entry in planned:
            stage.count_read()
            if entry.error is not None:
                stage.reject_item(entry.item, entry.error)
            else:
                stage.accept({**entry.item.record, **entry.additions})
        stage.extra["line art made"] = sum(1 for e in todo if e.error is None)
        stage.extra["line art reused (resume)"] = reused
        stage.extra["stale files removed"] = prune(out, data_dir, {e.name for e in planned if e.name})
    return stage
