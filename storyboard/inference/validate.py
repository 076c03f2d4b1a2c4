"""Validation prompts and the sharded, resumable validation run.

``make_validation_records`` builds the prompt set from the shot vocabulary (shot size x angle x
location x subjects x seeds); ``validation/make_validation_jsonl.py`` writes it as
``validation/validation.jsonl``, a file meant to be edited by hand afterwards.

``run_validation`` makes every prompt's image for the bare base model and/or each checkpoint, under
``<output-dir>/<column>/<id>.png`` (column = ``base`` or the checkpoint folder's name). Under
``accelerate launch`` every process takes its own contiguous shard of the images still to make
(accelerate's ``PartialState``; the same split as ``PartialState.split_between_processes``), so N GPUs
(or N CPU processes) share the work without hand-made ``CUDA_VISIBLE_DEVICES`` loops. An image depends
only on its prompt, seed and settings, never on its shard, so 1 and 4 processes give the same files.

Resuming: an image whose PNG exists and records the same settings (prompt, seed, steps, size,
sampler, model and checkpoint hashes, ...) is skipped; one made with other settings is made again.
After each column the main process rewrites ``<column>/images.jsonl`` (the sidecar: every image's
fields) and ``<column>/run.json``; at the end it writes the report (``storyboard.inference.report``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from storyboard.core.cli import UserError, format_table
from storyboard.core.records import atomic_write_json, read_jsonl, write_jsonl
from storyboard.core.vocabulary import Vocabulary, load_vocabulary
from storyboard.inference.generate import (
    Checkpoint,
    Job,
    Settings,
    base_fingerprint,
    check_base_folder,
    plain_prompt,
    prepare_prompt,
    read_checkpoint,
    read_png_metadata,
    resolve_device,
    resolve_dtype,
    run_jobs,
)

T = TypeVar("T")
BASE_COLUMN = "base"
SIDECAR = "images.jsonl"


# --------------------------------------------------------------------------------------------
# The prompt set
# --------------------------------------------------------------------------------------------
def _pick(kind: str, wanted: Sequence[str] | None, vocab: Vocabulary):
    terms = vocab.of_kind(kind)
    if not wanted:
        return list(terms)
    picked = []
    for value in wanted:
        term = vocab.lookup(value, kind=kind)
        if term is None:
            raise UserError(f"unknown {kind.replace('_', ' ')} {value!r}; known: {', '.join(t.key for t in terms)}")
        picked.append(term)
    return list(dict.fromkeys(picked))


def make_validation_records(vocab: Vocabulary, subjects: Sequence[str], seeds: Sequence[int],
                            shots: Sequence[str] | None = None, angles: Sequence[str] | None = None,
                            locations: Sequence[str] | None = None, negative_prompt: str = "") -> list[dict]:
    """One record per shot size x angle x location x subject x seed, shot sizes outermost.

    The prompt has the training captions' shape: ``<fs_trg>, full shot, eye level, outdoor, <subject>``.
    """
    if not subjects:
        raise UserError("give at least one subject")
    if not seeds:
        raise UserError("give at least one seed")
    records = []
    for shot in _pick("shot_size", shots, vocab):
        for angle in _pick("angle", angles, vocab):
            for location in _pick("location", locations, vocab):
                for s, subject in enumerate(subjects):
                    for seed in seeds:
                        record = {
                            "id": f"{shot.key}-{angle.key}-{location.key}-p{s}-s{seed}",
                            "prompt": ", ".join([shot.token, shot.name, angle.name, location.name, subject]),
                            "shot_size": shot.key, "angle": angle.key, "location": location.key,
                            "subject": subject, "seed": int(seed),
                        }
                        if negative_prompt:
                            record["negative_prompt"] = negative_prompt
                        records.append(record)
    return records


def read_validation_prompts(path: str | Path, vocab: Vocabulary) -> list[dict]:
    """Read ``validation.jsonl``; fills ``id`` and ``shot_size`` where a hand-written line lacks them.
    A malformed line, a line without a prompt or a repeated id is an error (it is a config file)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"validation prompts not found: {path} (write them with validation/make_validation_jsonl.py)")
    records: list[dict] = []
    seen: dict[str, int] = {}
    for item in read_jsonl(path):
        if item.error:
            raise UserError(f"{path} line {item.line}: {item.error.detail}")
        record = dict(item.record)
        if not isinstance(record.get("prompt"), str) or not record["prompt"].strip():
            raise UserError(f"{path} line {item.line}: needs a text field 'prompt'")
        seed = record.setdefault("seed", 0)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise UserError(f"{path} line {item.line}: 'seed' must be a whole number")
        if not record.get("id"):
            digest = hashlib.sha1(f"{record['prompt']}|{seed}".encode()).hexdigest()[:8]
            record["id"] = f"line{item.line:05d}-{digest}"
        record["id"] = re.sub(r"[^\w.\-]+", "_", str(record["id"])).strip("._") or f"line{item.line:05d}"
        if record["id"] in seen:
            raise UserError(f"{path} line {item.line}: id {record['id']!r} repeats line {seen[record['id']]}")
        seen[record["id"]] = item.line
        if not record.get("shot_size"):
            found = vocab.find(record["prompt"], kind="shot_size")
            record["shot_size"] = found[0].term.key if found else None
        record["line"] = item.line
        records.append(record)
    if not records:
        raise UserError(f"{path} holds no prompts")
    return records


# --------------------------------------------------------------------------------------------
# Sharding
# --------------------------------------------------------------------------------------------
def shard(items: Sequence[T], num_processes: int, process_index: int) -> list[T]:
    """Process ``process_index``'s contiguous share of ``items`` (sizes differ by at most one, the
    first processes take the extra ones), as ``PartialState.split_between_processes`` splits a list."""
    if num_processes < 1 or not 0 <= process_index < num_processes:
        raise ValueError(f"process {process_index} of {num_processes}")
    per, extra = divmod(len(items), num_processes)
    start = process_index * per + min(process_index, extra)
    return list(items[start:start + per + (1 if process_index < extra else 0)])


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def native_size(base: Path) -> int:
    """The base model's native image size from its configs (unet sample_size x the VAE's factor)."""
    try:
        unet = json.loads((base / "unet" / "config.json").read_text(encoding="utf-8"))
        vae = json.loads((base / "vae" / "config.json").read_text(encoding="utf-8"))
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError, TypeError):
        raise UserError(f"{base}: cannot read unet/config.json and vae/config.json") from None


def job_key(prompt: str, negative: str, seed: int, settings: Settings, model_hash: str, hashes: dict, dtype: str) -> str:
    """What makes an image what it is; a finished PNG with the same key is not made again."""
    value = {"prompt": prompt, "negative": negative, "seed": seed, "steps": settings.steps, "cfg": settings.guidance,
             "size": [settings.width, settings.height], "scheduler": settings.scheduler,
             "lora_scale": settings.lora_scale if hashes.get("lora") else None, "model": model_hash,
             "checkpoint": hashes, "dtype": dtype}
    return hashlib.sha1(json.dumps(value, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


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
            except UserError:
                from storyboard.inference.generate import triggers_in

                for token in triggers_in(record["prompt"], vocab, ckpt.tokens):
                    if token not in ckpt.tokens:
                        plan.skipped[token] = plan.skipped.get(token, 0) + 1
                continue
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


def _state(device: str):
    """accelerate's PartialState: which process this is and which device it owns.

    CPU processes: ``accelerate launch --cpu`` starts ONE process (accelerate runs several CPU processes
    only through MPI), so several CPU processes come from ``accelerate launch --multi_gpu
    --num_processes N`` (torchrun underneath) with ``--device cpu`` or on a machine without a GPU:
    then the processes join one gloo group (DistributedType.MULTI_CPU)."""
    import torch
    from accelerate import PartialState

    cpu = device == "cpu" or (device in ("auto", None) and not torch.cuda.is_available()) \
        or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true", "yes")
    return PartialState(cpu=cpu)


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


def preflight(args: argparse.Namespace) -> str:
    """Every check a run makes before its first image, in one process and without loading a model:
    the launchers call this before ``accelerate launch`` so that a mistake is one line, not one
    traceback per process. Returns a one-line description of the run."""
    from storyboard.inference.generate import _check_tokens, manifest_fingerprint, settings_from_args

    settings_from_args(args)
    vocab = load_vocabulary(args.vocabulary)
    base = check_base_folder(args.base_model)
    records = read_validation_prompts(args.prompts, vocab)
    checkpoints = [read_checkpoint(p, vocab) for p in (args.checkpoint or [])]
    if not checkpoints and not args.base_only:
        raise UserError("no --checkpoint given; pass one or more, or --base-only for the bare base model")
    names = column_names(checkpoints)
    if checkpoints:
        fingerprint = base_fingerprint(base)
        for ckpt in checkpoints:
            recorded = manifest_fingerprint(ckpt.manifest)
            if recorded and recorded != fingerprint and not args.allow_base_mismatch:
                raise UserError(f"base model mismatch: checkpoint {ckpt.path} was trained on another base than {base} "
                                f"(fingerprints {recorded.removeprefix('sha256:')[:12]} and "
                                f"{fingerprint.removeprefix('sha256:')[:12]}); pass the base it was trained on "
                                f"(or --allow-base-mismatch)")
            _check_tokens(ckpt, base)
    if getattr(args, "clip_checkpoint", "") and not getattr(args, "clip_model", ""):
        raise UserError("--clip-checkpoint needs --clip-model (the architecture, e.g. ViT-B-32)")
    n = min(len(records), args.limit) if args.limit else len(records)
    columns = ([BASE_COLUMN] if args.base_only else []) + names
    return f"{n} prompts x {len(columns)} column(s): {', '.join(columns)}"


def run_validation(args: argparse.Namespace, log=print) -> ValidationResult:
    """Everything ``validation/run_validation.py`` does after parsing its flags (module doc)."""
    from storyboard.inference.generate import load_trigger_pipeline, settings_from_args

    settings = settings_from_args(args)
    vocab = load_vocabulary(args.vocabulary)
    base = check_base_folder(args.base_model)
    records = read_validation_prompts(args.prompts, vocab)
    if args.limit:
        records = records[: args.limit]
    checkpoints = [read_checkpoint(p, vocab) for p in (args.checkpoint or [])]
    if not checkpoints and not args.base_only:
        raise UserError("no --checkpoint given; pass one or more, or --base-only for the bare base model")
    columns: list[tuple[str, Checkpoint | None]] = [(BASE_COLUMN, None)] if args.base_only else []
    columns += list(zip(column_names(checkpoints), checkpoints))

    state = _state(args.device)
    device = state.device if args.device in ("auto", None) else resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    dtype_name = str(dtype).replace("torch.", "")
    size = native_size(base)
    settings = Settings(**{**settings.__dict__, "width": settings.width or size, "height": settings.height or size})
    model_hash = base_fingerprint(base).removeprefix("sha256:")[:10]
    out_root = Path(args.output_dir).expanduser()
    main = state.is_main_process
    say = log if main else (lambda *_: None)

    plans = []
    for name, ckpt in columns:
        started = time.perf_counter()
        plan = plan_column(name, ckpt, records, settings, vocab, out_root, model_hash, dtype_name, args.overwrite)
        state.wait_for_everyone()  # every process has listed what is left before any image is written
        mine = shard(plan.pending, state.num_processes, state.process_index)
        say(f"{name}: {len(plan.jobs)} images, {len(plan.jobs) - len(plan.pending)} already done, "
            f"{len(plan.pending)} to make on {state.num_processes} process(es)")
        if mine:
            tp = load_trigger_pipeline(base, ckpt, vocab=vocab, device=str(device), dtype=args.dtype,
                                       lora_scale=settings.lora_scale, fuse=not args.no_fuse, compile=args.compile,
                                       allow_base_mismatch=args.allow_base_mismatch, warn=say)
            run_jobs(tp, mine, settings, batch_size=args.batch_size, progress_desc=f"{name} [{state.process_index}]",
                     extra_meta={"process": state.process_index, "num_processes": state.num_processes},
                     show_progress=main)
            del tp
        plan.made = len(plan.pending)
        state.wait_for_everyone()
        plan.seconds = time.perf_counter() - started
        if main:
            metas = [m for m in (read_png_metadata(j.output) for j in plan.jobs if j.output.exists()) if m]
            write_jsonl(plan.folder / SIDECAR, metas)
            atomic_write_json(plan.folder / "run.json", {
                "column": name, "base_model": str(base), "checkpoint": str(ckpt.path) if ckpt else None,
                "prompts": str(args.prompts), "settings": settings.__dict__, "dtype": dtype_name,
                "images": len(plan.jobs), "made": plan.made, "already_done": len(plan.jobs) - len(plan.pending),
                "redone": plan.stale, "skipped_untrained": plan.skipped, "num_processes": state.num_processes,
                "seconds": round(plan.seconds, 2),
            })
        plans.append(plan)

    result = ValidationResult(out_root, plans, state.num_processes, is_main=main)
    if main and not args.no_report:
        from storyboard.inference.report import report_from_args

        result.report = report_from_args(args, out_root, vocab, log=say, records=records)
    # no barrier after the report: the other processes are done and may exit (a long CLIP report on the
    # main process must not run into the process group's timeout)
    return result
