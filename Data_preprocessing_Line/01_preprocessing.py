"""Line-art versions of the finalized images (the seed's SDXL ControlNet-lineart method, or a
weight-free or annotator-only backend), recorded as ``lineart_file`` on each record.

Run from inside ``Data_preprocessing_Line/`` after ``03_finalize_dataset.py``; every path is a flag
whose default follows the seed's layout, so with the models in place nothing needs editing:

    python 01_preprocessing.py                                   # sdxl-controlnet, ../model_sdxl etc.
    python 01_preprocessing.py --backend xdog                    # no weights at all
    python 01_preprocessing.py --backend lineart --annotators ../annotators

Writes ``../Dataset_fin/lineart/<name>.png`` (``--out-dir``), rewrites ``../Dataset_fin/metadata.jsonl`` with
``lineart_file`` (atomically; ``--output`` writes elsewhere), and ``../Dataset_fin/lineart/rejects.jsonl``
+ ``run.json``. Resumable: a re-run skips finished images. ``--ray-address`` draws on a Ray cluster
(docs/scaling.md). See docs/image_stages.md.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os

from storyboard.core.cli import UserError, run_main
from storyboard.core.runtime import add_dtype_argument
from storyboard.engine.work import add_engine_arguments, engine_settings
from storyboard.images.lineart import BACKENDS, DEFAULT_NEGATIVE, DEFAULT_PROMPT, DETECTORS, LineartSettings
from storyboard.images.lineart_stage import run_lineart

DATA_DIR = "../Dataset_fin"  # the finalized data set (file_name paths are relative to it)
METADATA = None  # None = <data-dir>/metadata.jsonl
OUTPUT = None  # None = the metadata file itself, rewritten with lineart_file
OUT_DIR = "lineart"  # folder inside --data-dir for the line-art images, rejects.jsonl and run.json
BACKEND = "sdxl-controlnet"  # xdog | canny | lineart | lineart_anime | sdxl-controlnet (the seed's)
ANNOTATORS = "../annotators"  # controlnet_aux folder: sk_model.pth, sk_model2.pth (lineart), netG.pth (anime)
BASE_MODEL = "../model_sdxl"  # SDXL base: a diffusers folder or one .safetensors / .ckpt file (WebUI style)
BASE_CONFIG = None  # only for a single-file base of a non-standard size: a diffusers folder with its configs
CONTROLNET = "../controlnet_lineart_sdxl"  # SDXL ControlNet trained on lineart, diffusers layout
DETECTOR = "lineart"  # control image for sdxl-controlnet: lineart | lineart_anime | xdog | canny
SIZE = None  # output side; None = the finalized images' size (1024)
DETECT_RESOLUTION = 512  # annotator input resolution (capped at the output size)
STEPS = 30
GUIDANCE_SCALE = 7.0
CONTROLNET_SCALE = 1.0
SEED = 0  # base seed; each record's seed is derived from it and its id, and kept in the record
BATCH_SIZE = 4
DEVICE = "auto"  # auto = cuda when a GPU is present, else Apple's mps, else cpu
DTYPE = "auto"  # auto = fp16 on a GPU, fp32 on the CPU (also fp16 | bf16 | fp32)
WORKERS = None  # processes for xdog / canny; None = one per CPU core
RAY_ADDRESS = None  # None = in process; "local", "auto" or "host:port" = drawn on Ray (models as actors)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path(DATA_DIR), help="finalized data set folder")
    parser.add_argument("--metadata", type=Path, default=Path(METADATA) if METADATA else None,
                        help="input records (default: <data-dir>/metadata.jsonl)")
    parser.add_argument("--output", type=Path, default=Path(OUTPUT) if OUTPUT else None,
                        help="output records (default: the input, rewritten)")
    parser.add_argument("--out-dir", default=OUT_DIR, help="line-art folder inside --data-dir")
    parser.add_argument("--backend", choices=BACKENDS, default=BACKEND, help="how line art is made")
    parser.add_argument("--size", type=int, default=SIZE, help="output side in pixels (default: the input's)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="processes for xdog / canny")
    group = parser.add_argument_group("annotators (lineart, lineart_anime, and the control image)")
    group.add_argument("--annotators", type=Path, default=Path(ANNOTATORS), help="controlnet_aux annotator folder")
    group.add_argument("--detect-resolution", type=int, default=DETECT_RESOLUTION, help="annotator input size")
    group.add_argument("--coarse", action="store_true", help="lineart: use the coarse model (sk_model2.pth)")
    group = parser.add_argument_group("sdxl-controlnet")
    group.add_argument("--base-model", type=Path, default=Path(BASE_MODEL),
                       help="SDXL base: a diffusers folder or one .safetensors / .ckpt checkpoint file")
    group.add_argument("--base-config", type=Path, default=Path(BASE_CONFIG) if BASE_CONFIG else None,
                       help="for a single-file base of a non-standard size: a diffusers folder with its configs and "
                            "tokenizers (default: the SDXL configuration shipped with the pipeline)")
    group.add_argument("--controlnet", type=Path, default=Path(CONTROLNET), help="SDXL ControlNet-lineart folder")
    group.add_argument("--detector", choices=DETECTORS, default=DETECTOR, help="what makes the control image")
    group.add_argument("--prompt", default=DEFAULT_PROMPT, help="clean-line-art prompt")
    group.add_argument("--negative-prompt", default=DEFAULT_NEGATIVE)
    group.add_argument("--num-inference-steps", dest="steps", type=int, default=STEPS)
    group.add_argument("--guidance-scale", type=float, default=GUIDANCE_SCALE)
    group.add_argument("--controlnet-conditioning-scale", dest="controlnet_scale", type=float, default=CONTROLNET_SCALE)
    group.add_argument("--seed", type=int, default=SEED)
    group.add_argument("--batch-size", type=int, default=BATCH_SIZE)
    group.add_argument("--device", default=DEVICE)
    add_dtype_argument(group, help_auto="fp16 on a GPU, fp32 on the CPU")
    parser.set_defaults(dtype=DTYPE)
    add_engine_arguments(parser, RAY_ADDRESS, models=True)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    metadata = args.metadata or args.data_dir / "metadata.jsonl"
    output = args.output or metadata
    workers = args.workers if args.workers is not None else (os.cpu_count() or 1)
    if workers < 1:
        raise UserError(f"--workers {workers}: needs at least 1")
    settings = LineartSettings(
        backend=args.backend, size=args.size, detector=args.detector, detect_resolution=args.detect_resolution,
        coarse=args.coarse, annotators=str(args.annotators), base_model=str(args.base_model),
        base_config=str(args.base_config) if args.base_config else None, controlnet=str(args.controlnet),
        prompt=args.prompt, negative_prompt=args.negative_prompt, steps=args.steps,
        guidance_scale=args.guidance_scale, controlnet_scale=args.controlnet_scale, seed=args.seed,
        batch_size=args.batch_size, device=args.device, dtype=args.dtype)
    config = {"data_dir": str(args.data_dir), "metadata": str(metadata), "output": str(output)}
    stage = run_lineart(metadata, args.data_dir, output, settings, workers=workers, config=config,
                        out_dir=args.out_dir, engine=engine_settings(args))
    print(stage.summary_table())
    return 0


if __name__ == "__main__":
    run_main(main)
