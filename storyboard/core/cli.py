"""What every front door shares: one-line errors, progress bars, argument groups, the summary table.

A front door (a script under one of the seed's folder names) builds an ``argparse`` parser from the
``add_*_arguments`` functions here and in the stage modules, then calls ``run_main(main)``. A user's
mistake raises ``UserError`` anywhere below and reaches the terminal as one line, never a traceback.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


class UserError(Exception):
    """A mistake in what the user handed us (a path, a flag, a file). Shown as one line, exit code 2."""


def run_main(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a front door's ``main`` and turn user errors into one clear line on stderr."""
    prog = Path(sys.argv[0]).name
    try:
        code = main(argv)
    except UserError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; finished outputs are kept and a re-run resumes", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


def progress(iterable: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterable[T]:
    """A tqdm bar on stderr; quiet when STORYBOARD_NO_PROGRESS is set (tests, logs)."""
    disable = bool(os.environ.get("STORYBOARD_NO_PROGRESS"))
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, dynamic_ncols=True)


def existing_path(kind: str = "path") -> Callable[[str], Path]:
    """An argparse ``type`` that refuses a path that does not exist, naming what was expected."""

    def check(value: str) -> Path:
        path = Path(value).expanduser()
        if not path.exists():
            raise argparse.ArgumentTypeError(f"{kind} not found: {value}")
        return path

    return check


def add_jsonl_stage_arguments(parser: argparse.ArgumentParser, input_default: str, output_default: str,
                              rejects_default: str | None, input_help: str) -> None:
    """--input / --output / --rejects of a JSONL -> JSONL stage (defaults: the front door's constants)."""
    parser.add_argument("--input", type=Path, default=Path(input_default), help=input_help)
    parser.add_argument("--output", type=Path, default=Path(output_default), help="output JSONL")
    parser.add_argument("--rejects", type=Path, default=Path(rejects_default) if rejects_default else None,
                        help="rejects JSONL (default: <output>.rejects.jsonl)")


def add_vocabulary_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shot vocabulary")
    group.add_argument(
        "--vocabulary",
        type=Path,
        default=None,
        help="JSON file that extends (or, with \"replace\": true, replaces) the built-in shot vocabulary",
    )


# A cell that reads as a figure: 12, -0.5, 1,234, 97%, 1.5x, 3.2 GiB, 40 s, "-" (no value).
_NUMBER_CELL = re.compile(r"^(-|[-+]?[\d.,]+(e[-+]?\d+)?\s*(%|x|×|s|ms|[KMG]i?B|/s)?)$", re.IGNORECASE)


def display_width(text: str) -> int:
    """Columns a terminal gives ``text``: Korean (and other East Asian wide) characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(cell: str, width: int, right: bool) -> str:
    fill = " " * (width - display_width(cell))
    return fill + cell if right else cell + fill


def format_table(rows: Sequence[Sequence[object]], header: Sequence[str] | None = None) -> str:
    """A plain fixed-width table: columns of numbers right-aligned, any other column (and the first)
    left-aligned, so a key/value table with long text values stays readable."""
    all_rows = [list(map(str, header))] if header else []
    all_rows += [list(map(str, row)) for row in rows]
    if not all_rows:
        return ""
    widths = [max(display_width(row[i]) for row in all_rows if i < len(row)) for i in range(len(all_rows[0]))]
    body = all_rows[1:] if header else all_rows
    numeric = [i > 0 and all(_NUMBER_CELL.match(row[i]) for row in body if i < len(row)) for i in range(len(widths))]
    lines = []
    for n, row in enumerate(all_rows):
        cells = [_pad(c, w, right=num) for c, w, num in zip(row, widths, numeric)]
        lines.append("  ".join(cells).rstrip())
        if header and n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
