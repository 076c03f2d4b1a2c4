"""Build the training folder: speech bubbles painted out, 1024x1024 squares, imagefolder metadata.

Run from inside ``Data_preprocessing_method/`` (the seed's command line):

    python 03_finalize_dataset.py --image-root /path/to/images --metadata metadata_translated.jsonl --out ../Dataset_fin

Writes ``Dataset_fin/images/``, ``Dataset_fin/masks/`` (bubble masks at the source size, white =
removed), ``Dataset_fin/metadata.jsonl`` (``file_name`` + ``text`` + every earlier field + the square
transform), ``Dataset_fin/rejects.jsonl`` and ``Dataset_fin/run.json``. Resumable (a re-run skips
finished images), parallel (``--workers``), shardable (``--shard i/n``), and runs on a Ray cluster with
``--ray-address`` (docs/scaling.md). See docs/image_stages.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os

from storyboard.core.balanced_set import is_balanced_set
from storyboard.core.cli import UserError, run_main
from storyboard.core.runtime import parse_shard
from storyboard.engine.work import add_engine_arguments, engine_settings
from storyboard.images.bubbles import INPAINT_METHODS
from storyboard.images.finalize import IMAGE_FORMATS, FinalizeSettings, finalize_dataset
from storyboard.images.squares import FITS, PAD_FILLS

IMAGE_ROOT = None  # folder the records' "image" paths are relative to (required: the seed passes it)
METADATA = "metadata_translated.jsonl"  # written by 02_translate.py
OUT = "../Dataset_fin"  # the training folder (imagefolder layout)
SIZE = 1024  # side of the square images
FIT = "pad"  # pad: whole image on a square | crop: centre square | subject: square around the subject
PAD_FILL = "edge"  # with --fit pad: edge (the image's border colour) | blur (a blurred copy of itself)
BUBBLES = True  # find speech bubbles / caption boxes and paint them out
INPAINT = "smooth"  # smooth (push-pull fill: no streaks, fastest) | telea | ns (OpenCV inpainting)
FORMAT = "png"  # png | jpg | webp
QUALITY = 95  # jpg / webp quality
SMALL_SIZE = 256  # side of the small copies (small/<name>.png) clustering, gallery and contact sheet read; 0 = none
WORKERS = None  # processes; None = one per CPU core
SHARD = None  # "i/n": only this machine's share of the records
MAX_PIXELS = 89_478_485  # larger images are rejected as decompression bombs (Pillow's default limit)
RAY_ADDRESS = None  # None = in process; "local", "auto" or "host:port" = the images are made on Ray


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--image-root", type=Path, default=Path(IMAGE_ROOT) if IMAGE_ROOT else None,
                        help="folder the records' image paths are relative to")
    parser.add_argument("--metadata", type=Path, default=Path(METADATA), help="JSONL from 02_translate.py")
    parser.add_argument("--out", type=Path, default=Path(OUT), help="output folder (imagefolder layout)")
    group = parser.add_argument_group("images")
    group.add_argument("--size", type=int, default=SIZE, help="side of the square images in pixels")
    group.add_argument("--fit", choices=FITS, default=FIT, help="how a non-square image becomes square")
    group.add_argument("--pad-fill", choices=PAD_FILLS, default=PAD_FILL, help="what fills the padding (--fit pad)")
    group.add_argument("--bubbles", action=argparse.BooleanOptionalAction, default=BUBBLES,
                       help="find and paint out speech bubbles and caption boxes")
    group.add_argument("--inpaint", choices=INPAINT_METHODS, default=INPAINT, help="how bubbles are painted out")
    group.add_argument("--format", dest="image_format", choices=IMAGE_FORMATS, default=FORMAT, help="image file format")
    group.add_argument("--quality", type=int, default=QUALITY, help="jpg / webp quality")
    group.add_argument("--small-size", type=int, default=SMALL_SIZE,
                       help="least side of the small copy written beside each square (small/), 0 = none")
    group.add_argument("--max-pixels", type=int, default=MAX_PIXELS,
                       help="reject images with more pixels than this (decompression-bomb guard)")
    group = parser.add_argument_group("scale-out")
    group.add_argument("--workers", type=int, default=WORKERS,
                       help="worker processes (default: one per CPU core; with --ray-address, Ray's workers instead)")
    group.add_argument("--shard", default=SHARD, metavar="I/N",
                       help="process only records whose position is I modulo N (see docs/image_stages.md)")
    add_engine_arguments(parser, RAY_ADDRESS)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.image_root is None:
        raise UserError("--image-root is required: the folder the records' \"image\" paths are relative to")
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise UserError(f"--workers {workers}: needs at least 1")
    settings = FinalizeSettings(size=args.size, fit=args.fit, pad_fill=args.pad_fill, bubbles=args.bubbles,
                                inpaint=args.inpaint, image_format=args.image_format, quality=args.quality,
                                small_size=args.small_size, max_pixels=args.max_pixels)
    config = {"image_root": str(args.image_root), "metadata": str(args.metadata), "out": str(args.out)}
    shard = parse_shard(args.shard)
    # Re-running this stage after clustering replaces the balanced set that training reads.
    replacing_balanced = shard[1] == 1 and is_balanced_set(Path(args.out) / "metadata.jsonl")
    stage = finalize_dataset(args.metadata, args.image_root, args.out, settings, workers=workers,
                             shard=shard, config=config, engine=engine_settings(args))
    print(stage.summary_table())
    if replacing_balanced:
        print(f"note: this replaced the balanced set that run_clip_clustering.py had written in {args.out}; "
              "run Dataset_clustering_method/run_clip_clustering.py again before training")
    return 0


if __name__ == "__main__":
    run_main(main)
