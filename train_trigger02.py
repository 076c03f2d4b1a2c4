"""Train shot-size trigger tokens (<fs_trg>, <ms_trg>, ...) and a LoRA on a Stable Diffusion 1.x/2.x model.

    accelerate launch train_trigger02.py --pretrained_model_name_or_path ./model_sd \\
        --train_data_dir ./Dataset_fin --output_dir ./model_sd_weight/train_fs

Usually started through shot_trigger_train.sh, which holds the hyperparameters. Writes the diffusers
LoRA, a WebUI/kohya LoRA, one embedding file per token and trigger_manifest.json into --output_dir
(see docs/training.md). All logic lives in storyboard.train.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))

from storyboard.core.cli import run_main
from storyboard.train import run
from storyboard.train.args import build_parser

PRETRAINED_MODEL = "./model_sd"  # base SD 1.x/2.x: a diffusers folder or one .safetensors / .ckpt file
TRAIN_DATA_DIR = "./Dataset_fin"  # images + metadata.jsonl (file_name, text starting with a trigger token)
OUTPUT_DIR = "./model_sd_weight/train_fs"  # LoRA, embeddings, manifest, checkpoints, previews


def main(argv=None) -> int:
    parser = build_parser(prog=Path(sys.argv[0]).name, description=__doc__.split("\n\n")[0],
                          model=PRETRAINED_MODEL, data=TRAIN_DATA_DIR, output=OUTPUT_DIR)
    args = parser.parse_args(argv)
    return run(args)


if __name__ == "__main__":
    run_main(main)
