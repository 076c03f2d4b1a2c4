"""The sharded, resumable validation run (``validation/run_validation.py``).

``run_validation`` makes every prompt's image (``storyboard.inference.prompt_files``) for the bare base
model and/or each checkpoint, under ``<output-dir>/<column>/<id>.png`` (column = ``base`` or the
checkpoint folder's name). Under ``accelerate launch`` every process takes its own contiguous shard of
the images still to make (accelerate's ``PartialState``; the same split as
``PartialState.split_between_processes``), so N GPUs (or N CPU processes) share the work without
hand-made ``CUDA_VISIBLE_DEVICES`` loops. An image depends only on its prompt, seed and settings, never
on its shard, so 1 and 4 processes give the same files.

Resuming: an image whose PNG exists and records the same settings (prompt, seed, steps, size,
sampler, model and checkpoint hashes, ...) is skipped; one made with other settings is made again.
After each column the main process rewrites ``<column>/images.jsonl`` (the sidecar: every image's
fields) and ``<column>/run.json``; at the end it writes the report (``storyboard.inference.report``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from storyboard.artifacts.base_model import BaseModel, base_fingerprint
from storyboard.artifacts.read import Checkpoint, manifest_fingerprint, read_checkpoint
from storyboard.core.cli import UserError, format_table
from storyboard.core.records import atomic_write_json, write_jsonl
from storyboard.core.runtime import Processes, current_processes, resolve_device, resolve_dtype, wants_cpu
from storyboard.core.vocabulary import Vocabulary, load_vocabulary
from storyboard.inference.jobs import Job, run_jobs
from storyboard.inference.pngmeta import read_png_metadata
from storyboard.inference.prompt_files import read_validation_prompts
from storyboard.inference.prompts import UntrainedTriggerError, plain_prompt, prepare_prompt
from storyboard.inference.report import check_judge_flags, report_from_args
from storyboard.inference.settings import Settings, base_from_args, settings_from_args

T = TypeVar("T")
BASE_COLUMN = "base"
SIDECAR = "images.jsonl"


def shard(items: Sequence[T], num_processes: int, process_index: int) -> list[T]:
    """Process ``process_index``'s contiguous share of ``items`` (sizes differ by at most one, the
    first processes take the extra ones), as ``PartialState.split_between_processes`` splits a list."""
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process {process_index} of {num_processes}")
    per, extra = divmod(len(items), num_processes)
    start = process_index * per + min(process_index, extra)
    return list(items[start:start + per + (1 if process_index < extra else 0)])


def job_key(prompt: str, negative: str, seed: int, settings: Settings, model_hash: str, hashes: dict,
            dtype: str) -> str:
    """What makes an image what it is; a finished PNG with the same key is not made again."""
    value = {"prompt": prompt, "negative": negative, "seed": seed, "steps": settings.steps, "cfg": settings.guidance,
             "size": [settings.width, settings.height], "scheduler": settings.scheduler,
             "lora_scale": settings.lora_scale if hashes.get("lora") else None, "model": model_hash,
             "checkpoint": hashes, "dtype": dtype}
    return hashlib.sha1(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def sampled_model(model_hash: str, base: BaseModel) -> str:
    """The model part of a job key: the base's fingerprint, and the prediction type where it is not the
    one the base's configuration says (an image sampled as v-prediction is another image)."""
    return model_hash if base.prediction_type == base.config_prediction else f"{model_hash}:{base.prediction_type}"


# --------------------------------------------------------------------------------------------
# Columns: what each one must make, and what is already made
# --------------------------------------------------------------------------------------------
@dataclass
class ColumnPlan:
    """One column of the validation: base or one checkpoint, its images and what is left to make."""

    name: str
    checkpoint: Checkpoint | None
    folder: Path
    jobs: list[Job]
    skipped: dict[str, int] = field(default_factory=dict)  # untrained trigger -> prompts skipped
    pending: list[Job] = field(default_factory=list)
    stale: int = 0  # PNGs present but made with other settings
    made: int = 0
    seconds: float = 0.0


def column_names(checkpoints: Sequence[Checkpoint]) -> list[str]:
    """Folder names, with the parent's name prefixed where two checkpoints share one."""
    names = [c.path.name for c in checkpoints]
    out = []
    for ckpt, name in zip(checkpoints, names):
        if names.count(name) > 1 or name == BASE_COLUMN:
            name = f"{ckpt.path.resolve().parent.name}-{name}"
        out.append(name)
    if len(set(out)) != len(out):
        raise UserError(f"two checkpoints would write to the same output folder ({', '.join(out)}); rename one")
    return out


def plan_column(name: str, ckpt: Checkpoint | None, records: Sequence[dict], settings: Settings, vocab: Vocabulary,
                out_root: Path, model_hash: str, dtype: str, overwrite: bool) -> ColumnPlan:
    folder = out_root / name
    hashes = ckpt.hashes() if ckpt else {}
    plan = ColumnPlan(name, ckpt, folder, [])
    for record in records:
        if ckpt is None:
            prompt = plain_prompt(record["prompt"], vocab)
        else:
            try:
                prompt = prepare_prompt(record["prompt"], None, vocab, ckpt)
            except UntrainedTriggerError as exc:  # this checkpoint's column skips the shots it did not train
                plan.skipped[exc.token] = plan.skipped.get(exc.token, 0) + 1
                continue
            except UserError as exc:
                raise UserError(f"validation prompt line {record.get('line', '?')} ({record['id']}): {exc}") from None
        negative = record.get("negative_prompt", settings.negative_prompt) or ""
        key = job_key(prompt, negative, int(record["seed"]), settings, model_hash, hashes, dtype)
        extra = {k: v for k, v in record.items() if k not in ("prompt", "negative_prompt", "seed")}
        extra.update(column=name, job_key=key, prompt_asked=record["prompt"])
        job = Job(prompt, negative, int(record["seed"]), folder / f"{record['id']}.png", extra)
        plan.jobs.append(job)
        if overwrite or not job.output.exists():
            plan.pending.append(job)
            continue
        meta = read_png_metadata(job.output)
        if not meta or meta.get("job_key") != key:
            plan.pending.append(job)
            plan.stale += 1
    return plan


@dataclass
class ValidationResult:
    output_dir: Path
    columns: list[ColumnPlan]
    num_processes: int
    is_main: bool = True
    report: Path | None = None

    def summary_table(self) -> str:
        rows = []
        for col in self.columns:
            skipped = sum(col.skipped.values())
            rows.append((col.name, len(col.jobs), col.made, len(col.jobs) - len(col.pending), col.stale, skipped,
                         f"{col.seconds:.1f}"))
        table = format_table(rows, header=("column", "images", "made now", "already done", "redone (settings changed)",
                                           "skipped (trigger not trained)", "seconds"))
        notes = []
        for col in self.columns:
            if col.skipped:
                notes.append(f"{col.name}: skipped prompts whose trigger it did not train: "
                             + ", ".join(f"{t} ({n})" for t, n in col.skipped.items()))
        tail = f"\n{self.num_processes} process(es); images under {self.output_dir}"
        if self.report:
            tail += f"\nreport: {self.report}"
        return "\n".join([table, *notes]) + tail


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def preflight(args: argparse.Namespace) -> str:
    """Every check a run makes before its first image, in one process and without loading a model:
    the launchers call this before ``accelerate launch`` so that a mistake is one line, not one
    traceback per process. Returns a one-line description of the run."""
    settings_from_args(args)
    vocab = load_vocabulary(args.vocabulary)
    base = base_from_args(args)
    records = read_validation_prompts(args.prompts, vocab)
    checkpoints = [read_checkpoint(p, vocab) for p in (args.checkpoint or [])]
    if not checkpoints and not args.base_only:
        raise UserError("no --checkpoint given; pass one or more, or --base-only for the bare base model")
    names = column_names(checkpoints)
    if checkpoints:
        from storyboard.artifacts.checks import check_tokens  # noqa: PLC0415 (heavy: transformers' tokenizer, loaded only once the flags, prompts and folders are checked)

        fingerprint = base_fingerprint(base)
        for ckpt in checkpoints:
            recorded = manifest_fingerprint(ckpt.manifest)
            if recorded and recorded != fingerprint and not args.allow_base_mismatch:
                raise UserError(f"base model mismatch: checkpoint {ckpt.path} was trained on another base than "
                                f"{base.path} "
                                f"(fingerprints {recorded.removeprefix('sha256:')[:12]} and "
                                f"{fingerprint.removeprefix('sha256:')[:12]}); pass the base it was trained on "
                                f"(or --allow-base-mismatch)")
            check_tokens(ckpt, base)
    check_judge_flags(getattr(args, "clip_model", ""), getattr(args, "clip_checkpoint", ""),
                      getattr(args, "judge", "") or None, vocab)
    n = min(len(records), args.limit) if args.limit else len(records)
    columns = ([BASE_COLUMN] if args.base_only else []) + names
    about = f"; base {base.describe()}" if base.is_file else ""
    return f"{n} prompts x {len(columns)} column(s): {', '.join(columns)}{about}"


def _device(device: str | None, processes: Processes):
    """The device of this process: under ``accelerate launch`` with ``--device auto`` the one
    accelerate assigned (``cuda:<local rank>``); alone with ``auto``, the CPU unless a CUDA GPU is
    visible (as accelerate's own single-process choice)."""
    if device in ("auto", None):
        if processes.state is not None:
            return processes.state.device
        return resolve_device("cpu" if wants_cpu(device) else device)
    return resolve_device(device)


def run_validation(args: argparse.Namespace, log=print) -> ValidationResult:
    """Everything ``validation/run_validation.py`` does after parsing its flags (module doc)."""
    settings = settings_from_args(args)
    vocab = load_vocabulary(args.vocabulary)
    base = base_from_args(args)
    records = read_validation_prompts(args.prompts, vocab)
    if args.limit:
        records = records[: args.limit]
    checkpoints = [read_checkpoint(p, vocab) for p in (args.checkpoint or [])]
    if not checkpoints and not args.base_only:
        raise UserError("no --checkpoint given; pass one or more, or --base-only for the bare base model")
    columns: list[tuple[str, Checkpoint | None]] = [(BASE_COLUMN, None)] if args.base_only else []
    columns += list(zip(column_names(checkpoints), checkpoints))

    from storyboard.inference.pipeline import load_trigger_pipeline  # noqa: PLC0415 (heavy: torch and diffusers load only once the flags, prompts and checkpoints are checked)

    processes = current_processes(args.device)
    device = _device(args.device, processes)
    dtype = resolve_dtype(args.dtype, device)
    dtype_name = str(dtype).replace("torch.", "")
    settings = settings.sized(base.native_size)
    model_hash = base_fingerprint(base).removeprefix("sha256:")[:10]
    out_root = Path(args.output_dir).expanduser()
    say = log if processes.is_main else (lambda *_: None)

    plans = []
    for name, ckpt in columns:
        started = time.perf_counter()
        # a checkpoint trained to predict another target than its base is sampled so (as inference_trigger.py)
        column_base = base_from_args(args, ckpt) if ckpt is not None else base
        plan = plan_column(name, ckpt, records, settings, vocab, out_root, sampled_model(model_hash, column_base),
                           dtype_name, args.overwrite)
        processes.wait()  # every process has listed what is left before any image is written
        mine = shard(plan.pending, processes.count, processes.index)
        say(f"{name}: {len(plan.jobs)} images, {len(plan.jobs) - len(plan.pending)} already done, "
            f"{len(plan.pending)} to make on {processes.count} process(es)")
        if mine:
            tp = load_trigger_pipeline(column_base, ckpt, vocab=vocab, device=str(device), dtype=args.dtype,
                                       lora_scale=settings.lora_scale, fuse=not args.no_fuse, compile=args.compile,
                                       allow_base_mismatch=args.allow_base_mismatch, warn=say)
            run_jobs(tp, mine, settings, batch_size=args.batch_size, progress_desc=f"{name} [{processes.index}]",
                     extra_meta={"process": processes.index, "num_processes": processes.count},
                     show_progress=processes.is_main)
            del tp
        plan.made = len(plan.pending)
        processes.wait()
        plan.seconds = time.perf_counter() - started
        if processes.is_main:
            _write_column_files(plan, args, column_base, settings, dtype_name, processes.count)
        plans.append(plan)

    result = ValidationResult(out_root, plans, processes.count, is_main=processes.is_main)
    if processes.is_main and not args.no_report:
        result.report = report_from_args(args, out_root, vocab, log=say, records=records)
    # no barrier after the report: the other processes are done and may exit (a long CLIP report on the
    # main process must not run into the process group's timeout)
    return result


def _write_column_files(plan: ColumnPlan, args: argparse.Namespace, base: BaseModel, settings: Settings,
                        dtype_name: str, num_processes: int) -> None:
    """``<column>/images.jsonl`` (every finished image's fields) and ``<column>/run.json``."""
    metas = [m for m in (read_png_metadata(j.output) for j in plan.jobs if j.output.exists()) if m]
    write_jsonl(plan.folder / SIDECAR, metas)
    ckpt = plan.checkpoint
    atomic_write_json(plan.folder / "run.json", {
        "column": plan.name, "base_model": str(base.path), "base": base.record(),
        "checkpoint": str(ckpt.path) if ckpt else None,
        "prompts": str(args.prompts), "settings": settings.__dict__, "dtype": dtype_name,
        "images": len(plan.jobs), "made": plan.made, "already_done": len(plan.jobs) - len(plan.pending),
        "redone": plan.stale, "skipped_untrained": plan.skipped, "num_processes": num_processes,
        "seconds": round(plan.seconds, 2),
    })
