"""What ``inference_trigger.py`` does after parsing its flags: prompts read as given (Korean ones put
in English, ``prompt_language``), their triggers planned and checked (``prompts``), model loaded,
images written with a sidecar JSONL.

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
from dataclasses import dataclass, field
from pathlib import Path

from storyboard.artifacts.read import Checkpoint, read_checkpoint
from storyboard.core.cli import UserError, format_table
from storyboard.core.records import read_jsonl, write_jsonl
from storyboard.core.vocabulary import Vocabulary, load_vocabulary
from storyboard.inference.jobs import Job, run_jobs
from storyboard.inference.prompt_files import read_prompts_file
from storyboard.inference.prompt_language import (
    CACHE_FILE,
    PromptLanguage,
    check_translate_flags,
    make_prompt_translator,
    split_prompt,
    to_english,
)
from storyboard.inference.prompts import TriggerPlan, apply_trigger, plan_trigger
from storyboard.inference.settings import base_from_args, settings_from_args

IMAGE_SUFFIXES = (".png",)


@dataclass
class PlannedPrompt:
    """One prompt: as given, the shot it asks for, its English form and the prompt used."""

    record: dict
    given: str
    plan: TriggerPlan
    language: PromptLanguage
    prompt: str = ""
    inserted: str | None = None  # the trigger put in front of it, when one was

    def trigger_note(self, with_checkpoint: bool) -> str:
        if not with_checkpoint:
            return "none (bare base: plain words)"
        if self.plan.term is None:
            return "none (no shot words found)"
        token = self.plan.token
        if self.plan.source == "--shot":
            return f"{token} (--shot {self.plan.found}{', inserted' if self.inserted else ''})"
        if self.inserted:
            return f"{token} inserted (for {self.plan.found!r})"
        return f"{token} (in the prompt)"

    def fields(self, with_checkpoint: bool) -> dict:
        """What the sidecar and the PNG keep beside the prompt used."""
        out: dict = {"prompt_given": self.given,
                     "trigger": {"token": self.plan.token, "from": self.plan.source or None,
                                 "found": self.plan.found or None, "inserted": self.inserted,
                                 "note": self.trigger_note(with_checkpoint)}}
        translation = self.language.record()
        if translation:
            out["translation"] = translation
        return out


@dataclass
class InferenceResult:
    images: list[dict]
    sidecar: Path
    load_seconds: float
    generate_seconds: float
    notes: list[str] = field(default_factory=list)

    def summary_table(self) -> str:
        rows = [(m["file"], m["seed"], m.get("trigger", {}).get("note", ""), _short(m["prompt"]))
                for m in self.images]
        per_s = len(self.images) / self.generate_seconds if self.generate_seconds else 0.0
        return (format_table(rows, header=("image", "seed", "trigger", "prompt used"))
                + "".join(f"\n{note}" for note in self.notes)
                + f"\n{len(self.images)} image(s) in {self.generate_seconds:.1f} s ({per_s:.2f} img/s; loading "
                  f"{self.load_seconds:.1f} s); settings in each PNG and in {self.sidecar}")


def _short(text: str, width: int = 60) -> str:
    return (text[:width] + "…") if len(text) > width + 1 else text


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


def plan_prompts(args: argparse.Namespace, records: Sequence[dict], vocab: Vocabulary,
                 ckpt: Checkpoint | None) -> list[PlannedPrompt]:
    """Every prompt's shot planned and checked against the checkpoint, with nothing loaded."""
    planned = []
    for record in records:
        shot = record.get("shot") or record.get("shot_size") or args.shot
        given = (record["prompt"] or "").strip()
        try:
            plan = plan_trigger(given, shot, vocab, ckpt)
        except UserError as exc:
            where = f"{args.prompts_file} line {record['line']}: " if args.prompts_file and "line" in record else ""
            raise UserError(f"{where}{exc}") from None
        planned.append(PlannedPrompt(record, given, plan, PromptLanguage(given, split_prompt(given, vocab),
                                                                          backend=args.translate)))
    return planned


def put_in_english(planned: Sequence[PlannedPrompt], args: argparse.Namespace, vocab: Vocabulary,
                   ckpt: Checkpoint | None, cache_path: Path) -> list[str]:
    """Each prompt in English (``--translate``) with its trigger applied; returns notes for the table."""
    korean = [text for p in planned for text in p.language.korean]
    translator = None
    if korean and args.translate == "marian":
        translator = make_prompt_translator("marian", args.translate_model, args.device,
                                            None if args.no_translation_cache else args.translation_cache or cache_path)
        translator.prepare(korean)
    notes = []
    for p in planned:
        p.language = to_english(p.given, vocab, args.translate, translator.lookup if translator else None)
        p.prompt = apply_trigger(p.language.english, p.plan, vocab, ckpt)
        p.inserted = p.plan.token if ckpt is not None and p.plan.token and p.plan.token not in p.language.english \
            else None
        if p.language.translated:
            notes.append(f"translated (--translate {args.translate}): {p.given!r} -> {p.language.english!r}")
        if p.language.left_out:
            notes.append(f"left out (--translate table knows only the vocabulary's words): "
                         f"{' '.join(p.language.left_out)}; --translate marian --translate-model DIR translates them")
    if translator is not None:
        notes.append(f"MarianMT: {translator.translated_now} text(s) translated, "
                     f"{translator.cache_hits} from the cache")
    return list(dict.fromkeys(notes))


def run_inference(args: argparse.Namespace, warn=print) -> InferenceResult:
    """Everything ``inference_trigger.py`` does after parsing its flags (module doc)."""
    settings = settings_from_args(args)
    vocab = load_vocabulary(args.vocabulary)
    if args.num_images < 1:
        raise UserError(f"--num-images {args.num_images} must be at least 1")
    records = _records(args)
    scales = {float(r.get("lora_scale", settings.lora_scale)) for r in records}
    fuse = not args.no_fuse and len(scales) == 1 and scales == {settings.lora_scale}

    ckpt = read_checkpoint(args.checkpoint, vocab) if args.checkpoint else None
    base = base_from_args(args, ckpt)  # a folder or one checkpoint file, checked before anything loads
    # Prompts are checked before anything loads: a wrong trigger costs no loading time.
    prompts = plan_prompts(args, records, vocab, ckpt)
    check_translate_flags(args.translate, args.translate_model, any(p.language.korean for p in prompts))
    planned: list[tuple[PlannedPrompt, str, int]] = []
    for p in prompts:
        negative = p.record.get("negative_prompt", settings.negative_prompt) or ""
        seed0 = int(p.record.get("seed", args.seed))
        planned += [(p, negative, seed0 + n) for n in range(args.num_images)]
    outputs, sidecar = output_paths(Path(args.output).expanduser(), len(planned), [p[2] for p in planned])
    notes = put_in_english(prompts, args, vocab, ckpt, sidecar.parent / CACHE_FILE)

    from storyboard.inference.pipeline import load_trigger_pipeline  # noqa: PLC0415 (heavy: torch and diffusers load only once the flags, checkpoint and prompts are checked)

    tp = load_trigger_pipeline(base, ckpt, vocab=vocab, device=args.device, dtype=args.dtype,
                               lora_scale=settings.lora_scale, fuse=fuse, compile=args.compile,
                               allow_base_mismatch=args.allow_base_mismatch, warn=warn)
    started = time.perf_counter()
    metas: list[dict] = []
    by_scale: dict[float, list[Job]] = {}
    for (p, negative, seed), out in zip(planned, outputs):
        extra = {k: v for k, v in p.record.items() if k not in ("prompt", "negative_prompt", "seed", "line")}
        extra.update(p.fields(ckpt is not None))
        by_scale.setdefault(float(p.record.get("lora_scale", settings.lora_scale)), []).append(
            Job(p.prompt, negative, seed, out, extra))
    for scale, jobs in by_scale.items():
        metas += run_jobs(tp, jobs, dataclasses.replace(settings, lora_scale=scale), batch_size=args.batch_size)
    seconds = time.perf_counter() - started
    _merge_sidecar(sidecar, metas)
    return InferenceResult(metas, sidecar, tp.load_seconds, seconds, notes)
