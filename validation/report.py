"""Write the validation report from images already made: grids (rows prompts, columns base + each
checkpoint, same seed per row), trigger fidelity (base vs each checkpoint, with counts) and, with CLIP
weights, CLIP scores.

    cd validation && python report.py
    python validation/report.py --output-dir validation/output \
        --clip-model ViT-B-32 --clip-checkpoint ViT-B-32-openai.pt
    python validation/report.py --output-dir proof_run/validation/output \
        --prompts proof_run/validation/validation.jsonl --judge proof_run/judge/shot_judge.safetensors

run_validation.py (validation.sh, base_valid.sh) writes the same report at its end; this script redoes
it alone, e.g. with CLIP weights or for a subset of columns. Judgements are cached, so a re-run judges
only new images. ``--judge FILE`` judges with a learned judge (its held-out accuracy is printed with
every figure; ``make proof`` trains one). Logic: storyboard/inference/report.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storyboard.core.cli import add_vocabulary_arguments, run_main
from storyboard.core.vocabulary import load_vocabulary
from storyboard.inference.report import add_report_arguments, report_from_args

HERE = Path(__file__).resolve().parent
PROMPTS = HERE / "validation.jsonl"  # the validation prompts (rows of the grids, shot size asked)
OUTPUT_DIR = HERE / "output"  # where validation.sh / base_valid.sh put the images; the report goes to report/


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="report.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="validation JSONL (default: %(default)s)")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR,
                        help="validation output folder (default: %(default)s)")
    parser.add_argument("--columns", nargs="+", default=None,
                        help="columns to show (folder names under --output-dir; default: base, then every checkpoint)")
    parser.add_argument("--device", default="auto", help="device for CLIP (default: %(default)s)")
    add_report_arguments(parser)
    add_vocabulary_arguments(parser)
    args = parser.parse_args(argv)

    index = report_from_args(args, args.output_dir, load_vocabulary(args.vocabulary))
    print(f"report: {index}")
    return 0


if __name__ == "__main__":
    run_main(main)
