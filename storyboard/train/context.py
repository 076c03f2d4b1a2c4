"""What one training run holds while it runs (``RunContext``: flags, accelerator, models, dtypes, base,
tokens, counters, timings) and what it ends with (``TrainResult``). The loop, the step, the previews
and the save all read the same context.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from storyboard.core.cli import format_table
from storyboard.train.inputs import BaseModelInfo
from storyboard.train.models import Models


@dataclass
class TrainResult:
    """The output folder, the step reached, the exit code for the front door and the summary rows."""

    output_dir: Path
    global_step: int
    exit_code: int = 0
    rows: list[tuple[str, object]] = field(default_factory=list)
    manifest: dict = field(default_factory=dict)

    def summary_table(self) -> str:
        return f"training: {self.output_dir}\n" + format_table(self.rows, header=("", "value"))


@dataclass
class RunContext:
    """The run's flags and parts, and what it measures on the way (losses, step times, peak memory)."""

    args: argparse.Namespace
    accelerator: Accelerator
    models: Models
    model: object
    weight_dtype: torch.dtype
    precision: str
    base: BaseModelInfo
    base_fp: str
    base_version: str
    tokens_info: list[dict]
    num_items: int
    global_batch: int
    max_steps: int
    loss_history: list[float] = field(default_factory=list)
    eval_before: float | None = None
    eval_after: float | None = None
    step_times: list[float] = field(default_factory=list)
    train_peak: int | None = None  # peak memory up to the last step (before saving and the reload check)
    last_export: dict = field(default_factory=dict)

    def images_per_s(self) -> float | None:
        times = self.step_times[1:] or self.step_times  # the first step includes warm-up
        return round(self.global_batch * len(times) / sum(times), 4) if times and sum(times) > 0 else None
