"""Images to make, made: one ``Job`` per image, written atomically with the settings inside its PNG
(for us, for the A1111 WebUI and for ComfyUI: ``storyboard.inference.pngmeta``, ``handoff``).

``run_jobs`` works with any loaded ``TriggerPipeline`` (``storyboard.inference.pipeline``); both
``inference_trigger.py`` and the validation run hand it their jobs.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm.auto import tqdm

from storyboard.core.cli import progress
from storyboard.core.records import atomic_write_bytes
from storyboard.inference.handoff import comfyui_chunks, webui_fields
from storyboard.inference.pngmeta import png_bytes
from storyboard.inference.settings import Settings

if TYPE_CHECKING:
    from storyboard.inference.pipeline import TriggerPipeline


@dataclass
class Job:
    """One image to make: its final prompt, seed and file, plus the record it came from."""

    prompt: str
    negative_prompt: str
    seed: int
    output: Path
    record: dict = field(default_factory=dict)


def batched(items: Sequence[Job], size: int) -> Iterator[list[Job]]:
    for start in range(0, len(items), size):
        yield list(items[start:start + size])


def run_jobs(tp: TriggerPipeline, jobs: Sequence[Job], settings: Settings, batch_size: int = 1,
             progress_desc: str = "images", extra_meta: Mapping[str, Any] | None = None,
             show_progress: bool = True) -> list[dict]:
    """Make every job's image with the loaded pipeline ``tp`` and write it (PNG + text chunks)
    atomically; return their metadata."""
    settings = tp.resolve(settings)
    sampler = tp.set_scheduler(settings.scheduler)
    tp.set_lora_scale(settings.lora_scale)
    written: list[dict] = []
    if show_progress:
        bar = progress(None, desc=progress_desc, total=len(jobs), unit="img")
    else:
        bar = tqdm(total=len(jobs), disable=True)
    for batch in batched(jobs, batch_size):
        images = tp.generate([j.prompt for j in batch], [j.negative_prompt for j in batch], [j.seed for j in batch],
                             settings)
        for job, image in zip(batch, images):
            meta = {**job.record, **tp.metadata(job.prompt, job.negative_prompt, job.seed, settings, sampler),
                    **(extra_meta or {}), "file": job.output.name}
            meta.update(webui_fields(meta, tp.checkpoint))
            chunks = comfyui_chunks(meta, tp.checkpoint, tp.base)
            atomic_write_bytes(job.output, png_bytes(image, meta, chunks))
            written.append(meta)
        bar.update(len(batch))
    bar.close()
    return written
