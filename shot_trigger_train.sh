#!/usr/bin/env bash
# Train the shot-size trigger tokens (<fs_trg>, <ms_trg>, ...) + LoRA with accelerate.
#
#   bash shot_trigger_train.sh \
#     --pretrained_model_name_or_path ./model_sd \
#     --train_data_dir ./Dataset_fin \
#     --output_dir ./model_sd_weight/train_fs
#
# Edit the variables below (or pass any train_trigger02.py flag after the script's name: a flag on
# the command line comes after these and wins). Paths are relative to the folder you run it from.
# Every flag is described in docs/training.md and by `python train_trigger02.py --help`.
# No need to activate a virtual environment: launcher_env.sh picks the project's .venv (or yours).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"   # train_trigger02.py sits beside this script

# ---- what to train --------------------------------------------------------------------------
NEW_TOKENS=""                 # comma-separated, e.g. "<fs_trg>,<ms_trg>"; empty: every trigger of the
                              # shot vocabulary that appears in the captions
TOKEN_INITIALIZER=""          # comma-separated words, one per token (or one for all), e.g.
                              # "full shot,medium shot"; empty: the vocabulary's words for each token
TEXT_ENCODER_MODE="lora"      # frozen | lora (the seed: text encoder tuned with the tokens) | full

# ---- paths ----------------------------------------------------------------------------------
MODEL_DIR="./model_sd"                       # base SD 1.x/2.x: a diffusers folder or one .safetensors / .ckpt file
DATA_DIR="./Dataset_fin"                     # images + metadata.jsonl (file_name, text)
OUTPUT_DIR="./model_sd_weight/train_fs"      # LoRA, embeddings, manifest, checkpoints, previews

# ---- data -----------------------------------------------------------------------------------
RESOLUTION=512                # training size in pixels (multiple of 8)
FLIP="--random_flip"          # --random_flip or --no-random_flip (a mirror keeps the shot size)
SHUFFLE="--shuffle_caption"   # --shuffle_caption or --no-shuffle_caption (the trigger stays first)
CAPTION_DROPOUT=0.05          # share of samples trained with an empty caption
CACHE="--cache_latents"       # --cache_latents (encode each image once) or --no-cache_latents
WORKERS=2                     # data loading processes

# ---- model / optimiser ----------------------------------------------------------------------
BATCH_SIZE=4                  # per process
GRAD_ACCUM=1                  # micro-batches per optimizer step
RANK=16                       # LoRA rank
LORA_ALPHA=16                 # LoRA alpha (scale = alpha / rank)
UNET_LR=1e-4                  # UNet LoRA learning rate
TEXT_ENCODER_LR=5e-5          # text-encoder LoRA learning rate
TOKEN_LR=5e-4                 # trigger-token rows learning rate
LR_SCHEDULER="constant"       # constant | cosine | linear | ...
WARMUP_STEPS=0
MAX_TRAIN_STEPS=3000
PRECISION="auto"              # auto (bf16 on GPUs that have it, else fp16; no on CPU) | no | fp16 | bf16
SNR_GAMMA=5.0                 # min-SNR-gamma weighting
SEED=0

# ---- checkpoints / previews / logging -------------------------------------------------------
CHECKPOINT_STEPS=500
CHECKPOINT_LIMIT=3
RESUME=""                     # "latest": continue the newest checkpoint in OUTPUT_DIR (after an interruption)
VALIDATION_STEPS=500
REPORT_TO="tensorboard"       # tensorboard (OUTPUT_DIR/logs: tensorboard --logdir OUTPUT_DIR/logs) | wandb
                              # (WANDB_API_KEY from the environment, or WANDB_MODE=offline) | all | none

# ---- how accelerate runs it -----------------------------------------------------------------
# PYTHON: the project's .venv, else your active environment; set it to choose (see launcher_env.sh).
source "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/launcher_env.sh"  # beside the real file, if this is a link
# The accelerate command: `$PYTHON -m accelerate.commands.accelerate_cli` (the `accelerate` program of
# that Python, found without PATH); set ACCELERATE="accelerate" (or a path) to use another one.
ACCELERATE_CMD=("$PYTHON" -m accelerate.commands.accelerate_cli)
if [[ -n "${ACCELERATE:-}" ]]; then ACCELERATE_CMD=("$ACCELERATE"); fi
# Extra `accelerate launch` flags. Empty: your `accelerate config` if you made one, else one process
# (CPU, or all GPUs of this machine). Examples: (--num_processes 1)  (--cpu)
# (--multi_gpu --num_processes 4)  (--mixed_precision bf16)  (--dynamo_backend inductor: torch.compile). From the environment:
# ACCELERATE_LAUNCH_ARGS="--multi_gpu --num_processes 2" bash shot_trigger_train.sh ...
read -r -a ACCELERATE_ARGS <<< "${ACCELERATE_LAUNCH_ARGS:-}"

echo "== accelerate environment ==" >&2
"${ACCELERATE_CMD[@]}" env >&2 || echo "(accelerate env failed; continuing)" >&2
echo "== accelerate launch ${ACCELERATE_ARGS[*]:-} train_trigger02.py (Python: $PYTHON) ==" >&2

exec "${ACCELERATE_CMD[@]}" launch ${ACCELERATE_ARGS[@]+"${ACCELERATE_ARGS[@]}"} "$HERE/train_trigger02.py" \
  --pretrained_model_name_or_path "$MODEL_DIR" \
  --train_data_dir "$DATA_DIR" \
  --output_dir "$OUTPUT_DIR" \
  --new_tokens "$NEW_TOKENS" \
  --token_initializer "$TOKEN_INITIALIZER" \
  --text_encoder_mode "$TEXT_ENCODER_MODE" \
  --resolution "$RESOLUTION" \
  $FLIP $SHUFFLE $CACHE \
  --caption_dropout_rate "$CAPTION_DROPOUT" \
  --dataloader_num_workers "$WORKERS" \
  --train_batch_size "$BATCH_SIZE" \
  --gradient_accumulation_steps "$GRAD_ACCUM" \
  --rank "$RANK" \
  --lora_alpha "$LORA_ALPHA" \
  --learning_rate "$UNET_LR" \
  --text_encoder_lr "$TEXT_ENCODER_LR" \
  --token_learning_rate "$TOKEN_LR" \
  --lr_scheduler "$LR_SCHEDULER" \
  --lr_warmup_steps "$WARMUP_STEPS" \
  --max_train_steps "$MAX_TRAIN_STEPS" \
  --mixed_precision "$PRECISION" \
  --snr_gamma "$SNR_GAMMA" \
  --seed "$SEED" \
  --checkpointing_steps "$CHECKPOINT_STEPS" \
  --checkpoints_total_limit "$CHECKPOINT_LIMIT" \
  --resume_from_checkpoint "$RESUME" \
  --validation_steps "$VALIDATION_STEPS" \
  --report_to "$REPORT_TO" \
  "$@"
