"""The proof world's configuration, its fingerprint, the cache folder it lives in, and the phase clock.

Everything that changes what the world *is* (sizes, counts, seeds, architectures, training lengths)
sits in ``WorldConfig``; its fingerprint (SHA-256 of the sorted JSON plus ``WORLD_VERSION``) names the
cache folder, so a changed value builds a new world and an unchanged one is reused. Bump
``WORLD_VERSION`` when the code changes what a configuration builds.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import resource
import time
from dataclasses import dataclass, field
from pathlib import Path

WORLD_VERSION = 1
DONE = "world.json"  # written last into a world folder: its presence means the world is complete


@dataclass(frozen=True)
class RenderConfig:
    shots: tuple[str, ...] = ("close_up", "medium", "long")
    angles: tuple[str, ...] = ("eye_level", "high", "low")
    locations: tuple[str, ...] = ("indoor", "outdoor")
    size: int = 32            # the world's resolution (px, square)
    render_size: int = 128    # drawn at this size, then area-downscaled: cleaner small figures, same cost
    base_count: int = 6000    # renders the base model is pre-trained on
    judge_count: int = 3000   # renders the judge learns from (and is tested on), never seen by the base
    empty_count: int = 1000   # backgrounds without the figure: the judge's "nobody" class (+ half as many
    #                           decoded random latents)


@dataclass(frozen=True)
class VaeConfig:
    channels: tuple[int, ...] = (16, 32, 64)   # 3 blocks: factor 4 (32 px -> 8x8 latents)
    latent_channels: int = 4
    steps: int = 600
    batch_size: int = 32
    crop: int = 32            # trained on random crops: it is convolutional, and a crop costs a quarter
    learning_rate: float = 1e-3
    kl_weight: float = 1e-6


@dataclass(frozen=True)
class BaseConfig:
    channels: tuple[int, ...] = (32, 64, 64)
    attention: tuple[bool, ...] = (False, True, True)   # cross-attention per level (8x8, 4x4, 2x2 latents at 32 px)
    layers_per_block: int = 1
    heads: int = 4
    text_width: int = 64
    text_layers: int = 2
    steps: int = 4000
    batch_size: int = 32
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    ema_decay: float = 0.995
    caption_dropout: float = 0.1   # empty captions, so classifier-free guidance works


@dataclass(frozen=True)
class JudgeConfig:
    pixels: int = 32          # the judge looks at a pixels x pixels thumbnail (all three colours)
    width: int = 16           # channels of its first convolution (then 2x, 4x)
    epochs: int = 12          # the cached world's judge was refit for 30 epochs afterwards: docs/proof.md
    held_out: float = 0.3     # share of the judge's renders kept for the held-out accuracy


@dataclass(frozen=True)
class WorldConfig:
    seed: int = 0
    render: RenderConfig = field(default_factory=RenderConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    base: BaseConfig = field(default_factory=BaseConfig)
    judge: JudgeConfig = field(default_factory=JudgeConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> WorldConfig:
        parts = {"render": RenderConfig, "vae": VaeConfig, "base": BaseConfig, "judge": JudgeConfig}
        kwargs = {}
        for key, value in data.items():
            if key in parts:
                value = parts[key](**{k: tuple(v) if isinstance(v, list) else v for k, v in value.items()})
            kwargs[key] = value
        return cls(**kwargs)

    def with_changes(self, changes: dict) -> WorldConfig:
        """This configuration with ``changes`` (``{"base": {"steps": 10}}``) applied on top: a partial
        JSON file of values, as ``--config`` takes."""
        merged = self.to_dict()
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                unknown = set(value) - set(merged[key])
                if unknown:
                    raise KeyError(f"{key}.{sorted(unknown)[0]}")
                merged[key].update(value)
            elif key in merged:
                merged[key] = value
            else:
                raise KeyError(key)
        return WorldConfig.from_dict(merged)

    def fingerprint(self) -> str:
        text = json.dumps({"version": WORLD_VERSION, **self.to_dict()}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()


def world_dir(root: str | os.PathLike, config: WorldConfig) -> Path:
    """Where the world of ``config`` is cached under ``root``: one folder per fingerprint."""
    return Path(root).expanduser() / f"world-{config.fingerprint()[:12]}"


def read_done(folder: Path, config: WorldConfig | None = None) -> dict | None:
    """The record of a finished world in ``folder``, or None when it is absent, unfinished, or (with
    ``config``) records another fingerprint than ``config``'s (a folder renamed by hand is rebuilt)."""
    path = folder / DONE
    if not path.is_file():
        return None
    try:
        done = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if config is not None and done.get("fingerprint") != config.fingerprint():
        return None
    return done


def cpu_seconds() -> float:
    """CPU time of this process and its finished children: on a shared machine the wall clock says
    how busy the others were, the CPU time what the work itself cost."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


class PhaseClock:
    """Wall-clock and CPU seconds per named phase, in order (for the report and the docs)."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.cpu: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, name: str, log=print):
        started, cpu0 = time.perf_counter(), cpu_seconds()
        log(f"[proof] {name} ...")
        try:
            yield
        finally:
            took, cpu = time.perf_counter() - started, cpu_seconds() - cpu0
            self.seconds[name] = round(self.seconds.get(name, 0.0) + took, 1)
            self.cpu[name] = round(self.cpu.get(name, 0.0) + cpu, 1)
            log(f"[proof] {name}: {took:.1f} s wall, {cpu:.1f} s CPU, load {os.getloadavg()[0]:.1f}")


def tiny_world_config() -> WorldConfig:
    """A seconds-scale world through the same code (the test suite's miniature; it proves nothing
    about learning, only that the path runs)."""
    return WorldConfig(
        render=RenderConfig(size=32, render_size=32, base_count=24, judge_count=24, empty_count=8),
        vae=VaeConfig(channels=(8, 16, 16), steps=3, batch_size=4, crop=16),
        base=BaseConfig(channels=(32, 32, 32), heads=2, text_width=32, text_layers=1, steps=3, batch_size=4,
                        warmup_steps=1),
        judge=JudgeConfig(pixels=32, width=4, epochs=1),
    )
