"""Write the validation prompts: shot size x angle x location x subjects x seeds, from the shot vocabulary.

    cd validation && python make_validation_jsonl.py                 # the committed validation.jsonl
    python validation/make_validation_jsonl.py --shots full medium close_up --angles eye_level \
        --locations outdoor --subjects "a man in a coat" --seeds 0 --output small.jsonl

One JSON object per line: ``id``, ``prompt`` (``<fs_trg>, full shot, eye level, outdoor, <subject>``),
``shot_size``, ``angle``, ``location``, ``subject``, ``seed`` (optionally ``negative_prompt``). The file
is meant to be edited by hand afterwards: a line needs only ``prompt`` (``seed`` defaults to 0, ``id``
and ``shot_size`` are derived). Shot words, tokens and spellings come from the vocabulary
(storyboard/core/data/vocabulary.json); the subjects are plain English and live here.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storyboard.core.cli import add_vocabulary_arguments, format_table, run_main
from storyboard.core.records import write_jsonl
from storyboard.core.vocabulary import load_vocabulary
from storyboard.inference.prompt_files import make_validation_records

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "validation.jsonl"  # where the prompts go (validation.sh reads this file by default)
SUBJECTS = [  # who is in the picture; each subject doubles the prompt count
    "a man in a grey coat",
    "a woman sitting at a table",
]
SEEDS = [0, 1]  # one image per seed for every prompt; the same seed is used for base and each checkpoint
SHOTS = None  # shot size keys to include (None: every shot size of the vocabulary)
ANGLES = None  # camera angle keys (None: all)
LOCATIONS = None  # location keys (None: all)
NEGATIVE_PROMPT = ""  # written into each line when not empty


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="make_validation_jsonl.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--output", type=Path, default=OUTPUT, help="JSONL to write (default: %(default)s)")
    parser.add_argument("--subjects", nargs="+", default=SUBJECTS, help="subjects (default: %(default)s)")
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS, help="seeds (default: %(default)s)")
    parser.add_argument("--shots", nargs="+", default=SHOTS,
                        help="shot sizes: keys, words or Korean (full, 'full shot', 풀샷); default all")
    parser.add_argument("--angles", nargs="+", default=ANGLES, help="camera angles (default all)")
    parser.add_argument("--locations", nargs="+", default=LOCATIONS, help="locations (default all)")
    parser.add_argument("--negative-prompt", default=NEGATIVE_PROMPT, help="negative prompt for every line")
    add_vocabulary_arguments(parser)
    args = parser.parse_args(argv)

    vocab = load_vocabulary(args.vocabulary)
    records = make_validation_records(vocab, args.subjects, args.seeds, args.shots, args.angles, args.locations,
                                      args.negative_prompt)
    write_jsonl(args.output, records)
    counts: dict[str, int] = {}
    for r in records:
        counts[r["shot_size"]] = counts.get(r["shot_size"], 0) + 1
    print(format_table(list(counts.items()), header=("shot size", "prompts")))
    print(f"{len(records)} prompts -> {args.output}")
    return 0


if __name__ == "__main__":
    run_main(main)
