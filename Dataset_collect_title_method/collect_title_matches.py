"""Merge raw crawl JSONL into one record per still: titles matched to the canonical list, text
normalised, duplicates (same record, or the same image under another name) merged, missing and
unreadable images rejected. Writes the input of ``Data_preprocessing_method/01_preprocess_tags.py``.

Run from inside ``Dataset_collect_title_method/`` (paths below are relative to the working folder):

    python collect_title_matches.py --input ../sample_data/raw --image-root ../sample_data/images \
        --titles ../sample_data/titles.csv

Writes ``metadata_raw.jsonl`` + ``metadata_raw.rejects.jsonl`` + ``metadata_raw.run.json``.
See docs/metadata_stages.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from storyboard.core.cli import run_main
from storyboard.metadata.collect import CollectConfig, collect

INPUT = ["raw"]  # raw crawl JSONL files, or folders of them (every *.jsonl inside, sorted)
IMAGE_ROOT = "images"  # the folder the records' "image" paths are relative to
TITLES = None  # canonical titles list (CSV or JSONL: title, original_title, year, aliases); None = titles pass through
OUTPUT = "../Data_preprocessing_method/metadata_raw.jsonl"  # where 01_preprocess_tags.py reads it
REJECTS = None  # None = beside the output, as metadata_raw.rejects.jsonl
MIN_SCORE = 85.0  # fuzzy title matches below this score are unmatched
AMBIGUITY_MARGIN = 3.0  # two films within this many points of the best make a title ambiguous


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--input", nargs="+", type=Path, default=[Path(p) for p in INPUT],
                        help="raw JSONL files or folders of them")
    parser.add_argument("--image-root", "--image_root", type=Path, default=Path(IMAGE_ROOT),
                        help="folder the records' image paths are relative to")
    parser.add_argument("--titles", type=Path, default=Path(TITLES) if TITLES else None,
                        help="canonical titles list, CSV or JSONL; without it titles pass through normalised")
    parser.add_argument("--output", type=Path, default=Path(OUTPUT), help="output JSONL")
    parser.add_argument("--rejects", type=Path, default=Path(REJECTS) if REJECTS else None,
                        help="rejects JSONL (default: <output>.rejects.jsonl)")
    parser.add_argument("--min-score", type=float, default=MIN_SCORE, help="lowest fuzzy title score accepted (0..100)")
    parser.add_argument("--ambiguity-margin", type=float, default=AMBIGUITY_MARGIN,
                        help="films this close to the best score make a title ambiguous")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    stage = collect(CollectConfig(
        inputs=args.input, image_root=args.image_root, output=args.output, rejects=args.rejects,
        titles=args.titles, min_score=args.min_score, margin=args.ambiguity_margin,
    ))
    print(stage.summary_table())
    return 0


if __name__ == "__main__":
    run_main(main)
