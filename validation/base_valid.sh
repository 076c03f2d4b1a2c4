#!/usr/bin/env bash
# Baseline: the same validation prompts on the bare base model (no LoRA, no trigger tokens; each
# trigger replaced by its plain words, "<fs_trg>, full shot" -> "full shot"), same seeds, into
# $OUTPUT_DIR/base/: the "base" column of the report that validation.sh writes.
#
#   cd validation && bash base_valid.sh
#
# Edit the variables below or set them in the environment; command-line flags are passed last and win.
# Keep the sampling settings equal to validation.sh's, or the comparison is not like for like.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

BASE_MODEL="${BASE_MODEL:-$HERE/../model_sd}"     # base SD 1.x/2.x: a diffusers folder or one .safetensors / .ckpt file
PROMPTS="${PROMPTS:-$HERE/validation.jsonl}"      # prompts (make_validation_jsonl.py)
OUTPUT_DIR="${OUTPUT_DIR:-$HERE/output}"          # images go to OUTPUT_DIR/base/

STEPS="${STEPS:-30}"                  # denoising steps
GUIDANCE="${GUIDANCE:-7.5}"           # CFG scale
SCHEDULER="${SCHEDULER:-default}"     # default (the base's own), ddim, euler, euler_a, dpmpp_2m, unipc, ...
WIDTH="${WIDTH:-auto}"                # image size; auto: the base model's native size
HEIGHT="${HEIGHT:-auto}"
BATCH_SIZE="${BATCH_SIZE:-1}"         # images per pipeline call and process
DTYPE="${DTYPE:-auto}"                # auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16

CLIP_MODEL="${CLIP_MODEL:-}"              # CLIP for the report's judge and score; empty: the OpenCV estimator
CLIP_CHECKPOINT="${CLIP_CHECKPOINT:-}"
JUDGE="${JUDGE:-}"                        # a learned shot judge file (.safetensors, e.g. the proof world's); empty: CLIP or OpenCV

# PYTHON: the project's .venv, else your active environment; PYTHON=/path/to/python to choose.
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../launcher_env.sh"  # beside the real file, if this is a link
DEVICE="${DEVICE:-auto}"                      # auto (each process's GPU, else CPU) or cpu
# Flags for `accelerate launch`: empty = your `accelerate config`, else one process per GPU; see validation.sh.
ACCELERATE_ARGS="${ACCELERATE_ARGS:-}"
read -r -a LAUNCH_ARGS <<< "$ACCELERATE_ARGS"

ARGS=(
  --base-only
  --base-model "$BASE_MODEL"
  --prompts "$PROMPTS"
  --output-dir "$OUTPUT_DIR"
  --steps "$STEPS" --guidance "$GUIDANCE" --scheduler "$SCHEDULER"
  --width "$WIDTH" --height "$HEIGHT"
  --batch-size "$BATCH_SIZE" --dtype "$DTYPE"
  --clip-model "$CLIP_MODEL" --clip-checkpoint "$CLIP_CHECKPOINT" --judge "$JUDGE"
  --device "$DEVICE"
  "$@"
)

# Check everything once, in one process (a mistake is one line, not a traceback per process) ...
"$PYTHON" "$HERE/run_validation.py" --preflight "${ARGS[@]}"
# ... then every process takes its share of the images.
"$PYTHON" -m accelerate.commands.launch "${LAUNCH_ARGS[@]}" "$HERE/run_validation.py" "${ARGS[@]}"
