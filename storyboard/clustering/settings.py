"""The clustering stage's settings, and the checks of its flags that need nothing loaded (no torch, no
scikit-learn): the front door parses its flags into ``ClusteringSettings`` with these."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path

from storyboard.core.cli import UserError
from storyboard.engine.work import EngineSettings

NAMING_PATHS = ("manual", "labels", "zero-shot", "estimator")
DEFAULT_NAMING = ("manual", "labels", "zero-shot", "estimator")


@dataclass
class ClusteringSettings:
    metadata: Path  # Dataset_fin/metadata.jsonl: the output (and, unless --input, the input)
    input: Path | None = None
    prebalance: Path | None = None  # default: metadata_prebalance.jsonl beside metadata
    data_root: Path | None = None  # what file_name is relative to; default: the metadata's folder
    rejects: Path | None = None  # default: clustering.rejects.jsonl beside metadata
    clip_model: str = "ViT-B-32"
    clip_checkpoint: Path | None = None
    clip_checkpoint_fallbacks: tuple[Path, ...] = ()  # tried in order when clip_checkpoint is absent
    clip_quick_gelu: str = "auto"
    device: str = "auto"
    batch_size: int = 64
    workers: int | None = None
    fast_decode: bool = True
    cache_dir: Path = Path("Dataset_clustering_method/embedding_cache")
    shard: str | None = None
    dedupe_threshold: float = 0.97
    k: int | None = None
    k_range: tuple[int, int] = (2, 16)
    pca: int = 0
    seed: int = 0
    naming: tuple[str, ...] = DEFAULT_NAMING
    cluster_labels: Path | None = None
    min_purity: float = 0.5
    min_labelled: int = 2
    estimate: bool = True
    estimator_bounds: Path | None = None
    balance_target: str | int | None = "median"
    repeat: bool = False
    max_repeat: int = 3
    gallery_dir: Path | None = Path("Dataset_clustering_method/gallery")
    gallery_per_cluster: int = 12
    vocabulary: Path | None = None
    engine: EngineSettings = field(default_factory=EngineSettings)  # where the embedding is encoded

    def as_config(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else list(map(str, v)) if isinstance(v, tuple)
                    else asdict(v) if is_dataclass(v) else v)
                for k, v in self.__dict__.items()}


def check_settings(s: ClusteringSettings) -> None:
    """The settings' own mistakes, as one line each, before any input is read."""
    if s.dedupe_threshold <= 0:
        raise UserError("--dedupe-threshold must be above 0 (use a value above 1 to turn near-duplicates off)")
    if s.batch_size < 1:
        raise UserError("--batch-size must be at least 1")
    parse_target(s.balance_target)


def parse_k_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in str(text).replace(":", "-").split("-"))
    except ValueError:
        raise UserError(f"--k-range must look like 2-16 (got {text!r})") from None
    if lo < 2 or hi < lo:
        raise UserError(f"--k-range {text}: needs 2 <= low <= high")
    return lo, hi


def parse_naming(text: str | Sequence[str]) -> tuple[str, ...]:
    items = [s.strip() for s in (text.split(",") if isinstance(text, str) else text) if s.strip()]
    unknown = [s for s in items if s not in NAMING_PATHS]
    if unknown or not items:
        raise UserError(f"--naming takes a comma-separated list of {', '.join(NAMING_PATHS)} (got {text!r})")
    return tuple(dict.fromkeys(items))


def parse_target(text: str | int | None) -> str | int | None:
    if text in (None, "none", "off", ""):
        return None
    if isinstance(text, int) or str(text).isdigit():
        value = int(text)
        if value < 1:
            raise UserError("--balance-target must be a positive count, min, median, max or none")
        return value
    if text in ("min", "median", "max"):
        return str(text)
    raise UserError(f"--balance-target must be a count, min, median, max or none (got {text!r})")
