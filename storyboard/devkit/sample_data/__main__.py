"""Command line: ``python -m storyboard.devkit.sample_data --out DIR [--seed 0] [--count 60] [--force]``."""
from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from storyboard.core.cli import format_table, run_main
from storyboard.devkit.sample_data import GENERATOR_VERSION, MIN_COUNT, already_generated, generate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m storyboard.devkit.sample_data",
        description="Draw a small raw data set like the pipeline's real input (film stills and storyboard "
                    "frames with Korean metadata, speech bubbles, odd file forms, planted faults) plus its "
                    "ground truth. Same seed and count give byte-identical files.",
    )
    parser.add_argument("--out", type=Path, required=True,
                        help="folder to create (replaced if it holds another sample set)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--count", type=int, default=60,
                        help=f"number of drawn images, at least {MIN_COUNT} (default: 60)")
    parser.add_argument("--force", action="store_true", help="regenerate even if the same set is already there")
    return parser


def _summary(truth: dict) -> str:
    images = [e for e in truth["images"].values() if not e["duplicate_of"]]
    by_shot = Counter((e["shot_size"], e["kind"]) for e in images)
    shots = list(dict.fromkeys(e["shot_size"] for e in sorted(images, key=lambda e: e["person_height_frac"])))
    rows = [(shot, by_shot[(shot, "still")], by_shot[(shot, "conti")]) for shot in shots]
    table = format_table(rows, header=["shot size", "stills", "conti"])
    faults = ", ".join(f"{f['fault']} ({f['source']}:{f['line']})" for f in truth["faults"])
    with_bubbles = sum(1 for e in images if e["bubbles"])
    return (f"{table}\n{len(truth['images'])} image files ({with_bubbles} with bubbles), "
            f"{len(truth['records'])} records; planted faults: {faults}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.force and already_generated(args.out, args.seed, args.count):
        print(f"{args.out}: already generated (seed {args.seed}, count {args.count}, version {GENERATOR_VERSION}); "
              "--force regenerates")
        return 0
    start = time.perf_counter()
    truth = generate(args.out, seed=args.seed, count=args.count, force=args.force)
    print(_summary(truth))
    print(f"wrote {args.out} in {time.perf_counter() - start:.1f} s (seed {args.seed}); ground truth: "
          f"{args.out / 'ground_truth.json'}", file=sys.stdout)
    return 0


if __name__ == "__main__":
    sys.argv[0] = "python -m storyboard.devkit.sample_data"  # error lines name the command, not __main__.py
    run_main(main)
