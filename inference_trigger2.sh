#!/usr/bin/env bash
# Launcher for inference_trigger.py with its settings as variables. Edit them here, or set any of them
# in the environment; flags given on the command line are passed last and win:
#
#   bash inference_trigger2.sh
#   bash inference_trigger2.sh --shot 풀샷 --prompt "a man in a grey coat, outdoor" --num-images 4
#   PROMPT="<ms_trg>, medium shot, low angle" SEED=7 bash inference_trigger2.sh
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

BASE_MODEL="${BASE_MODEL:-./model_sd}"                        # base SD 1.x/2.x: a diffusers folder or one .safetensors / .ckpt file
CHECKPOINT="${CHECKPOINT-./model_sd_weight/train_fs}"         # training output folder; CHECKPOINT= : the bare base
PROMPT="${PROMPT:-<fs_trg>, full shot, Eye level, outdoor}"   # a trigger in the prompt is kept as it is
NEGATIVE_PROMPT="${NEGATIVE_PROMPT:-}"                        # e.g. "blurry, lowres"
OUTPUT="${OUTPUT:-./model_output/sample.png}"                 # a .png file, or a folder for several images
STEPS="${STEPS:-30}"                  # denoising steps
GUIDANCE="${GUIDANCE:-7.5}"           # CFG scale
SCHEDULER="${SCHEDULER:-default}"     # default (the base's own), ddim, euler, euler_a, dpmpp_2m, dpmpp_2m_karras, unipc, ...
SEED="${SEED:-0}"                     # first image's seed; image n uses SEED + n
NUM_IMAGES="${NUM_IMAGES:-1}"         # images per prompt
WIDTH="${WIDTH:-auto}"                # a multiple of 8; auto: the base model's native size (512 for SD1.5)
HEIGHT="${HEIGHT:-auto}"
LORA_SCALE="${LORA_SCALE:-1.0}"       # LoRA strength
DEVICE="${DEVICE:-auto}"              # auto, cuda, cuda:1, mps, cpu
DTYPE="${DTYPE:-auto}"                # auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16
# PYTHON: the project's .venv, else your active environment; PYTHON=/path/to/python to choose.
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/launcher_env.sh"  # beside the real file, if this is a link

"$PYTHON" "$HERE/inference_trigger.py" \
  --base-model "$BASE_MODEL" \
  --checkpoint "$CHECKPOINT" \
  --prompt "$PROMPT" \
  --negative-prompt "$NEGATIVE_PROMPT" \
  --output "$OUTPUT" \
  --steps "$STEPS" --guidance "$GUIDANCE" --scheduler "$SCHEDULER" \
  --seed "$SEED" --num-images "$NUM_IMAGES" \
  --width "$WIDTH" --height "$HEIGHT" \
  --lora-scale "$LORA_SCALE" --device "$DEVICE" --dtype "$DTYPE" \
  "$@"
