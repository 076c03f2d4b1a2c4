"""Clean the Korean captions and tags (HTML remnants, emoji, hashtags, bracketed notes, repeated
punctuation, spelling variants) and read the shot size, camera angle and location out of them.

Run from inside ``Data_preprocessing_method/`` (the seed's command line):

    python 01_preprocess_tags.py --input metadata_raw.jsonl --output metadata_clean.jsonl

Writes ``metadata_clean.jsonl`` + ``metadata_clean.rejects.jsonl`` + ``metadata_clean.run.json``.
See docs/metadata_stages.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse

from storyboard.core.cli import add_jsonl_stage_arguments, add_vocabulary_arguments, run_main
from storyboard.core.vocabulary import load_vocabulary
from storyboard.metadata.tags import preprocess_tags

INPUT = "metadata_raw.jsonl"  # written by Dataset_collect_title_method/collect_title_matches.py
OUTPUT = "metadata_clean.jsonl"  # read by 02_translate.py
REJECTS = None  # None = beside the output, as metadata_clean.rejects.jsonl


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_jsonl_stage_arguments(parser, INPUT, OUTPUT, REJECTS, input_help="JSONL from collect_title_matches.py")
    add_vocabulary_arguments(parser)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    vocabulary = load_vocabulary(args.vocabulary)
    config = {"input": str(args.input), "output": str(args.output),
              "rejects": str(args.rejects) if args.rejects else None,
              "vocabulary": str(args.vocabulary) if args.vocabulary else None}
    stage = preprocess_tags(args.input, args.output, args.rejects, vocabulary, config=config)
    print(stage.summary_table())
    return 0


if __name__ == "__main__":
    run_main(main)
