"""The line-art stage: finalized records in, ``lineart/<name>.png`` + ``lineart_file`` out (see
``storyboard.images.lineart`` for the backends, resume and output layout).

Where the drawing runs (``storyboard.engine``): here (xdog / canny in ``workers`` processes; a model
backend loaded once, batch by batch), or on a Ray cluster (``--ray-address``): xdog / canny as tasks,
the model backends as actors that each load the model once and take batch after batch. Each record's
line art and state entry are written by the worker that draws it; the records are written here.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import asdict, dataclass
from functools import partial
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
from storyboard.engine.run import Engine
from storyboard.engine.work import EngineSettings, Work
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


# --------------------------------------------------------------------------------------------
# One record's line art (runs wherever the engine puts it: here, a worker process, a Ray worker)
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LineJob:
    """One square to draw: what a worker needs, and nothing it would have to read the metadata for."""

    name: str
    source: str  # the square's absolute path (the same on every node: shared storage)
    sha: str
    seed_id: str  # the record's id, which its sdxl-controlnet seed comes from


@dataclass(frozen=True)
class Target:
    """Where the line art goes (absolute paths) and how it is drawn."""

    data_dir: str
    out: str
    settings: LineartSettings


def save_lines(job: LineJob, lines: np.ndarray, t: Target) -> dict:
    """Write one record's line art and then its state entry (atomically); returns its record fields."""
    data_dir, out, s = Path(t.data_dir), Path(t.out), t.settings
    rel = f"{out.relative_to(data_dir).as_posix()}/{job.name}.png"
    image = lines if lines.ndim == 2 else cv2.cvtColor(lines, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise RuntimeError(f"could not encode the line art of {job.name}")
    atomic_write_bytes(data_dir / rel, buf.tobytes())
    additions: dict[str, Any] = {"lineart_file": rel, "lineart_backend": s.backend}
    if s.backend == "sdxl-controlnet":
        additions["lineart_seed"] = record_seed(s.seed, job.seed_id)
    atomic_write_json(_state_file(out, job.name), {"source_sha256": job.sha, "settings_key": s.key(),
                                                   "additions": additions})
    return additions


def _rejected(exc: RecordError) -> dict:
    return {"reason": exc.reason, "detail": exc.detail}


def draw_cpu(t: Target, job: LineJob) -> dict:
    """xdog / canny for one record: ``{"additions": ...}`` or ``{"reason": ..., "detail": ...}``."""
    s = t.settings
    params = {k: v for k, v in asdict(s).items() if k.startswith(("xdog_", "canny_"))}
    try:
        lines = cpu_lines((job.source, s.backend, s.size, params))
    except RecordError as exc:
        return _rejected(exc)
    except Exception as exc:  # one odd image must not stop the run
        return {"reason": "unreadable_image", "detail": f"failed while drawing lines: {type(exc).__name__}: {exc}"}
    return {"additions": save_lines(job, lines, t)}


class ModelLines:
    """The annotator / SDXL ControlNet backend, loaded once per worker; called with a batch of jobs,
    returns one result per job (as ``draw_cpu``)."""

    def __init__(self, t: Target):
        from storyboard.images.lineart_models import ModelBackend  # noqa: PLC0415 (heavy: torch is loaded only in the worker that draws, after the records are planned)

        self.t = t
        self.backend = ModelBackend(t.settings)

    def __call__(self, batch: list[LineJob]) -> list[dict]:
        s = self.t.settings
        results: list[dict] = [{} for _ in batch]
        drawn, images = [], []
        for n, job in enumerate(batch):
            try:
                rgb = load_rgb(job.source).rgb
            except RecordError as exc:
                results[n] = _rejected(exc)
                continue
            size = s.size or max(rgb.shape[:2])
            if rgb.shape[:2] != (size, size):
                rgb = cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)
            drawn.append(n)
            images.append(rgb)
        if not drawn:
            return results
        # One batch shares a size; squares from one finalize run always do.
        size = images[0].shape[0]
        images = [im if im.shape[0] == size else cv2.resize(im, (size, size), interpolation=cv2.INTER_AREA)
                  for im in images]
        seeds = [record_seed(s.seed, batch[n].seed_id) for n in drawn]
        for n, lines in zip(drawn, self.backend.run(images, size, seeds)):
            results[n] = {"additions": save_lines(batch[n], lines, self.t)}
        return results


def _failed_one(job: LineJob, detail: str) -> dict:
    return {"reason": "worker_failed", "detail": f"{job.name}: {detail}"}


def _failed_batch(batch: list[LineJob], detail: str) -> list[dict]:
    return [_failed_one(job, detail) for job in batch]


def _draw(runner: Engine, todo: list[_Item], t: Target, workers: int) -> None:
    """Every planned record still to draw: its line art written, its ``additions`` (or ``error``) set."""
    s = t.settings
    jobs = [LineJob(e.name, str(e.source.resolve()), e.sha, str(e.item.record.get("id", e.name))) for e in todo]
    bar = progress(None, desc=f"line art ({s.backend})", total=len(todo), unit="img")
    if s.backend in MODEL_BACKENDS:
        batches = [jobs[i:i + s.batch_size] for i in range(0, len(jobs), s.batch_size)]
        work = Work("line art", model=partial(ModelLines, t), failed=_failed_batch, records=len)
        results = (r for batch in runner.map(batches, work) for r in batch)
    else:
        work = Work("line art", function=partial(draw_cpu, t), failed=_failed_one, processes=workers,
                    jobs_per_task=4)
        results = runner.map(jobs, work)
    for entry, result in zip(todo, results):
        if "reason" in result:
            entry.error = RecordError(result["reason"], result["detail"])
        else:
            entry.additions = result["additions"]
        bar.update(1)
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
                config: dict | None = None, out_dir: str = OUT_DIR,
                engine: EngineSettings | None = None) -> StageRecords:
    """Run the stage; ``output`` may be ``metadata`` itself (rewritten atomically at the end).
    ``out_dir``: the line-art folder inside ``data_dir`` (another one keeps a second backend's
    results beside the first). ``engine``: where the line art is drawn (default: here)."""
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
    planned = _plan(list(read_jsonl(metadata)), data_dir, out, s)  # all read before the output is opened
    todo = [e for e in planned if e.error is None and e.additions is None]
    reused = sum(1 for e in planned if e.error is None and e.additions is not None)
    with Engine(engine or EngineSettings(), needs_gpu=s.backend in MODEL_BACKENDS) as runner:
        (out / STATE_DIR).mkdir(parents=True, exist_ok=True)
        if todo:
            _draw(runner, todo, Target(str(data_dir.resolve()), str(out.resolve()), s), workers)
        engine_info = runner.info()

    config = dict(config or {}, settings=dict(asdict(s)), settings_key=s.key(), workers=workers, engine=engine_info)
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
