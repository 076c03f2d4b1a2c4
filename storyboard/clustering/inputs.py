"""Which file the clustering stage reads, decided before anything is loaded or written.

The stage rewrites ``Dataset_fin/metadata.jsonl`` in place, so it never reads the file it writes: the
finalize stage's file is first copied to ``Dataset_fin/metadata_prebalance.jsonl`` and that copy is the
input. A re-run recognises its own output (``core.balanced_set``) and reads the pre-balance copy again;
when ``03_finalize_dataset.py`` has written a new ``metadata.jsonl`` since, that one is copied over the
old pre-balance file first. ``--input`` reads another file and leaves the copy alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from storyboard.clustering.settings import ClusteringSettings
from storyboard.core.balanced_set import is_balanced_set
from storyboard.core.cli import UserError
from storyboard.core.records import atomic_write_bytes, read_jsonl

PREBALANCE_NAME = "metadata_prebalance.jsonl"


@dataclass
class Inputs:
    input: Path
    data_root: Path
    output: Path
    prebalance: Path | None
    copy_from: Path | None = None  # a new finalize output to copy to the pre-balance file first


def has_lines(path: Path) -> bool:
    return any(True for _ in read_jsonl(path))


def plan_inputs(s: ClusteringSettings) -> Inputs:
    """Decide what to read (see the module doc); raises before anything is written."""
    output = Path(s.metadata)
    root = Path(s.data_root) if s.data_root else output.parent
    prebalance = Path(s.prebalance) if s.prebalance else output.with_name(PREBALANCE_NAME)
    if s.input and Path(s.input).resolve() != output.resolve():
        source = Path(s.input)
        if not source.is_file():
            raise UserError(f"--input not found: {source}")
        if not has_lines(source):
            raise UserError(f"--input {source} holds no records; nothing was written")
        return Inputs(source, root, output, None)
    if output.is_file() and has_lines(output):
        if is_balanced_set(output):
            if not prebalance.is_file():
                raise UserError(f"{output} is already this stage's output and its input copy {prebalance} is missing: "
                                f"re-run 03_finalize_dataset.py, or pass --input")
            return Inputs(prebalance, root, output, prebalance)
        return Inputs(prebalance, root, output, prebalance, copy_from=output)
    if output.is_file():
        raise UserError(f"{output} holds no records (did 03_finalize_dataset.py finish?); nothing was written")
    if prebalance.is_file():
        return Inputs(prebalance, root, output, prebalance)
    raise UserError(f"{output} not found: run Data_preprocessing_method/03_finalize_dataset.py first, or pass --input")


def copy_atomically(src: Path, dst: Path) -> None:
    with open(src, "rb") as fh:
        atomic_write_bytes(dst, fh.read())
