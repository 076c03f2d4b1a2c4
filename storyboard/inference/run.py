"""What ``inference_trigger.py`` does after parsing its flags: prompts checked, model loaded, images
written with a sidecar JSONL.

``--output x.png`` writes one image there (several: ``x-000.png``, ``x-001.png``, ... and the sidecar
``x.jsonl``); ``--output folder/`` writes ``0000-<seed>.png``, ... and ``folder/images.jsonl``. Every
prompt is checked against the checkpoint before the model loads, so a wrong trigger costs no
loading time.
"""
from __future__ import annotations

import argparse
import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from storyboard.artifacts.read import read_checkpoint
from storyboard.core.cli import UserError, format_table
from storyboard.core.records import read_jsonl, write_jsonl
from storyboard.core.vocabulary import load_vocabulary
from storyboard.inference.jobs import Job, run_jobs
from storyboard.inference.prompt_files import read_prompts_file
from storyboard.inference.prompts import prepare_prompt
from storyboard.inference.settings import base_from_args, settings_from_args

IMAGE_SUFFIXES = (".png",)


@dataclass
class InferenceResult:
    images: list[dict]
    sidecar: Path
    load_seconds: float
    generate_seconds: float

    def summary_table(self) -> str:
        rows = [(m["file"], m["seed"], (m["prompt"][:60] + "…") if len(m["prompt"]) > 61 else m["prompt"])
                for m in self.images]
        per_s = len(self.images) / self.generate_seconds if self.generate_seconds else 0.0
        return (format_table(rows, header=("image", "seed", "prompt"))
                + f"\n{len(self.images)} image(s) in {self.generate_seconds:.1f} s ({per_s:.2f} img/s; loading "
                  f"{self.load_seconds:.1f} s); settings in each PNG and in {self.sidecar}")


def output_paths(output: Path, count: int, seeds: Sequence[int]) -> tuple[list[Path], Path]:
    """Where ``count`` images go and the sidecar JSONL: ``x.png`` (one image), ``x-000.png ...``
    (several, sidecar ``x.jsonl``) or a folder (``0000-<seed>.png``, sidecar ``images.jsonl``)."""
    if output.suffix.lower() in IMAGE_SUFFIXES:
        if output.exists() and output.is_dir():
            raise UserError(f"--output {output} is a folder; name a .png file or a folder without a suffix")
        if count == 1:
            return [output], output.with_suffix(".jsonl")
        return ([output.with_name(f"{output.stem}-{n:03d}{output.suffix}") for n in range(count)],
                output.with_suffix(".jsonl"))
    if output.suffix and not output.is_dir():
        raise UserError(f"--output {output}: images are written as PNG; name a .png file or a folder")
    if output.exists() and not output.is_dir():
        raise UserError(f"--output {output} is a file, not a folder")
    return [output / f"{n:04d}-{seed}.png" for n, seed in enumerate(seeds)], output / "images.jsonl"


def _merge_sidecar(sidecar: Path, metas: Sequence[dict]) -> None:
    """Rewrite the sidecar: earlier lines for other files kept, lines for the files just written replaced."""
    names = {m["file"] for m in metas}
    kept = []
    if sidecar.is_file():
        kept = [item.record for item in read_jsonl(sidecar)
                if item.record is not None and item.record.get("file") not in names]
    write_jsonl(sidecar, [*kept, *metas])


def _records(args: argparse.Namespace) -> list[dict]:
    if args.prompts_file:
        return read_prompts_file(args.prompts_file)
    if args.prompt is not None or args.shot:
        return [{"prompt": args.prompt or ""}]
    raise UserError("give --prompt, --shot or --prompts-file")


def run_inference(args: argparse.Namespace, warn=print) -> InferenceResult:
    """Everything ``inference_trigger.py`` does after parsing its flags (module doc)."""
    settings = settings_from_args(args)
    vocab = load_vocabulary(args.vocabulary)
    if args.num_images < 1:
        raise UserError(f"--num-images {args.num_images} must be at least 1")
    records = _records(args)
    base = base_from_args(args)  # a folder or one checkpoint file, checked before anything loads
    scales = {float(r.get("lora_scale", settings.lora_scale)) for r in records}
    fuse = not args.no_fuse and len(scales) == 1 and scales == {settings.lora_scale}

    ckpt = read_checkpoint(args.checkpoint, vocab) if args.checkpoint else None
    # Prompts are checked before the model loads: a wrong trigger costs no loading time.
    planned: list[tuple[dict, str, str, int]] = []
    for record in records:
        shot = record.get("shot") or record.get("shot_size") or args.shot
        try:
            prompt = prepare_prompt(record["prompt"], shot, vocab, ckpt)
        except UserError as exc:
            where = f"{args.prompts_file} line {record['line']}: " if args.prompts_file and "line" in record else ""
            raise UserError(f"{where}{exc}") from None
        negative = record.get("negative_prompt", settings.negative_prompt) or ""
        seed0 = int(record.get("seed", args.seed))
        for n in range(args.num_images):
            planned.append((record, prompt, negative, seed0 + n))
    outputs, sidecar = output_paths(Path(args.output).expanduser(), len(planned), [p[3] for p in planned])

    from storyboard.inference.pipeline import load_trigger_pipeline  # noqa: PLC0415 (heavy: torch and diffusers load only once the flags, checkpoint and prompts are checked)

    tp = load_trigger_pipeline(base, ckpt, vocab=vocab, device=args.device, dtype=args.dtype,
                               lora_scale=settings.lora_scale, fuse=fuse, compile=args.compile,
                               allow_base_mismatch=args.allow_base_mismatch, warn=warn)
    started = time.perf_counter()
    metas: list[dict] = []
    by_scale: dict[float, list[Job]] = {}
    for (record, prompt, negative, seed), out in zip(planned, outputs):
        extra = {k: v for k, v in record.items() if k not in ("prompt", "negative_prompt", "seed", "line")}
        by_scale.setdefault(float(record.get("lora_scale", settings.lora_scale)), []).append(
            Job(prompt, negative, seed, out, extra))
    for scale, jobs in by_scale.items():
        metas += run_jobs(tp, jobs, dataclasses.replace(settings, lora_scale=scale), batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    _merge_sidecar(sidecar, metas)
    return InferenceResult(metas, sidecar, tp.load_seconds, seconds)
