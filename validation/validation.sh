#!/usr/bin/env bash
# Validation: every prompt of validation.jsonl for each checkpoint, sharded over all GPUs by
# `accelerate launch` (each process makes its own share of the images), resumable, then the report
# (grids base vs checkpoints, trigger fidelity, CLIP score) in $OUTPUT_DIR/report/index.html.
#
#   cd validation && bash validation.sh
#   bash validation/validation.sh --checkpoint ../model_sd_weight/a ../model_sd_weight/b --steps 20
#
# Edit the variables below, or set any of them in the environment (STEPS=20 bash validation.sh).
# Flags given on the command line are passed last, so they win over the variables.
# Run base_valid.sh too for the base model's column.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# --- what to validate ------------------------------------------------------------------------
BASE_MODEL="${BASE_MODEL:-$HERE/../model_sd}"                        # base SD 1.x/2.x: a diffusers folder or one .safetensors / .ckpt file
CHECKPOINTS=("${CHECKPOINT:-$HERE/../model_sd_weight/train_fs}")     # training output folders: ("a" "b" ...)
PROMPTS="${PROMPTS:-$HERE/validation.jsonl}"                         # prompts (make_validation_jsonl.py)
OUTPUT_DIR="${OUTPUT_DIR:-$HERE/output}"                             # images go to OUTPUT_DIR/<checkpoint name>/

# --- how to sample ---------------------------------------------------------------------------
STEPS="${STEPS:-30}"                  # denoising steps
GUIDANCE="${GUIDANCE:-7.5}"           # CFG scale
SCHEDULER="${SCHEDULER:-default}"     # default (the base's own), ddim, euler, euler_a, dpmpp_2m, unipc, ...
WIDTH="${WIDTH:-auto}"                # image size, a multiple of 8; auto: the base model's native size
HEIGHT="${HEIGHT:-auto}"
LORA_SCALE="${LORA_SCALE:-1.0}"       # LoRA strength (fused into the weights once)
BATCH_SIZE="${BATCH_SIZE:-1}"         # images per pipeline call and process (4-8 on a 24 GB GPU)
DTYPE="${DTYPE:-auto}"                # auto (fp16 on GPU, fp32 on CPU), fp32, fp16, bf16

# --- report ----------------------------------------------------------------------------------
CLIP_MODEL="${CLIP_MODEL:-}"              # e.g. ViT-B-32 (needs CLIP_CHECKPOINT); empty: the OpenCV estimator judges
CLIP_CHECKPOINT="${CLIP_CHECKPOINT:-}"    # e.g. ../Dataset_clustering_method/ViT-B-32-openai.pt
JUDGE="${JUDGE:-}"                        # a learned shot judge file (.safetensors, e.g. the proof world's); empty: CLIP or OpenCV

# --- processes -------------------------------------------------------------------------------
# PYTHON: the project's .venv, else your active environment; PYTHON=/path/to/python to choose.
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../launcher_env.sh"  # beside the real file, if this is a link
DEVICE="${DEVICE:-auto}"                      # auto (each process's GPU, else CPU) or cpu
# Flags for `accelerate launch`: empty = your `accelerate config` file if there is one, else one
# process per visible GPU. "--multi_gpu --num_processes 4": four GPUs. On a machine without a GPU (or
# with DEVICE=cpu), "--multi_gpu --num_processes 2" starts two CPU processes (accelerate's own --cpu
# flag starts only one unless MPI is installed).
ACCELERATE_ARGS="${ACCELERATE_ARGS:-}"
read -r -a LAUNCH_ARGS <<< "$ACCELERATE_ARGS"

ARGS=(
  --base-model "$BASE_MODEL"
  --checkpoint "${CHECKPOINTS[@]}"
  --prompts "$PROMPTS"
  --output-dir "$OUTPUT_DIR"
  --steps "$STEPS" --guidance "$GUIDANCE" --scheduler "$SCHEDULER"
  --width "$WIDTH" --height "$HEIGHT"
  --lora-scale "$LORA_SCALE" --batch-size "$BATCH_SIZE" --dtype "$DTYPE"
  --clip-model "$CLIP_MODEL" --clip-checkpoint "$CLIP_CHECKPOINT" --judge "$JUDGE"
  --device "$DEVICE"
  "$@"
)

# Check everything once, in one process (a mistake is one line, not a traceback per process) ...
"$PYTHON" "$HERE/run_validation.py" --preflight "${ARGS[@]}"
# ... then every process takes its share of the images.
"$PYTHON" -m accelerate.commands.launch "${LAUNCH_ARGS[@]}" "$HERE/run_validation.py" "${ARGS[@]}"
