"""Make every validation prompt's image for one or more checkpoints (or the bare base), sharded across
the processes of ``accelerate launch``, resumable, then write the report.

    accelerate launch run_validation.py --base-model ../model_sd --checkpoint ../model_sd_weight/train_fs
    accelerate launch --num_processes 2 --cpu run_validation.py --base-only --width 64 --steps 4
    python run_validation.py ...                       # one process is fine too

Called by validation.sh (checkpoints) and base_valid.sh (``--base-only``). Images go to
``<output-dir>/<checkpoint folder name>/<id>.png`` (``base/`` for the bare base model, where each trigger
is replaced by its plain words), with their settings inside each PNG and in ``images.jsonl``. A re-run
skips images already made with the same settings. The report (grids, trigger fidelity, CLIP score) goes
to ``<output-dir>/report/index.html``. Logic: storyboard/inference/validate.py, storyboard/inference/report.py.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from storyboard.core.cli import add_vocabulary_arguments, run_main
from storyboard.inference.report import add_report_arguments
from storyboard.inference.settings import add_model_arguments, add_sampling_arguments
from storyboard.inference.validate import preflight, run_validation

HERE = Path(__file__).resolve().parent
BASE_MODEL = HERE.parent / "model_sd"  # base SD 1.x/2.x: a diffusers folder or one .safetensors / .ckpt file
CHECKPOINTS = [HERE.parent / "model_sd_weight" / "train_fs"]  # training output folders, one column each
PROMPTS = HERE / "validation.jsonl"  # the validation prompts (make_validation_jsonl.py)
OUTPUT_DIR = HERE / "output"  # images under OUTPUT_DIR/<checkpoint>/ and OUTPUT_DIR/base/, report under report/


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="run_validation.py", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    add_model_arguments(parser, base_default=BASE_MODEL)
    parser.add_argument("--checkpoint", nargs="+", type=Path, default=CHECKPOINTS,
                        help="one or more training output folders (the last --checkpoint given wins; "
                             "default: %(default)s)")
    parser.add_argument("--base-only", action="store_true",
                        help="the bare base model instead of checkpoints (triggers replaced by their plain words)")
    parser.add_argument("--prompts", type=Path, default=PROMPTS, help="validation JSONL (default: %(default)s)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N prompts (0: all)")
    parser.add_argument("--output-dir", type=Path, default=OUTPUT_DIR, help="output folder (default: %(default)s)")
    parser.add_argument("--overwrite", action="store_true", help="make every image again, even finished ones")
    parser.add_argument("--no-report", action="store_true", help="do not write the report at the end")
    parser.add_argument("--preflight", action="store_true",
                        help="only check the flags, folders and prompts, then exit (the launchers run this once "
                             "before accelerate launch)")
    add_sampling_arguments(parser)
    add_report_arguments(parser)
    add_vocabulary_arguments(parser)
    args = parser.parse_args(argv)
    if args.base_only:
        args.checkpoint = []

    if args.preflight:
        print(f"preflight ok: {preflight(args)}")
        return 0
    result = run_validation(args, log=print)
    if result.is_main:
        print(result.summary_table())
    return 0


if __name__ == "__main__":
    run_main(main)
