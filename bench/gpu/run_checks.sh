#!/usr/bin/env bash
# The GPU session's one prepared call: what the issues ask of a GPU, in priority order, inside a hard
# cap of TOTAL seconds (345: the H200 lease's 6 minutes with a margin), each step also under its own
# limit so one hang cannot eat the others. Run from the repository root on the device machine after
# `bash bench/gpu/fetch_wheels.sh` here:
#   device run: command "bash bench/gpu/run_checks.sh", carry [".whl"], timeout_s 400
# That leaves a rerun in the 15-minute budget: machine start (1-2 min) + at most 6 min, twice.
#
# Budget on the H200 (16 cores), in seconds, from `python bench/gpu/estimate_budget.py` (2026-11-30):
# "expected" takes the CPU parts as the CPU seconds measured on this project's 2-core CPU machine, which
# other jobs shared (imports 9.4, each SD1.5 load 9.4; no credit for the host's 16 cores or faster
# cores), and the GPU parts from their floating-point work (flop_counter: UNet 0.80 TFLOP forward +
# 0.92 backward per 512-px image, VAE encoder 1.12, decoder 2.52) at 50 TFLOP/s effective (public eager
# SD1.5 figures for H100-class GPUs: 30-80); "worst" is 25 TFLOP/s and every figure x1.5.
#   step             limit  expected  worst   what
#   wheels + env         -      25       38   pip install --target of .whl (26 MB), versions, nvidia-smi
#   build               50      26       39   random SD1.5 drawn on the GPU, saved fp16; the bench's LoRA
#   bench_inference    115      76      153   3 sides x 2 alternating repeats, 30 steps, batch 4, fp16
#   bench_train        175     158      258   5 rows x 2 alternating repeats, batch 4, 8 steps, bf16
#   bench_embed         45      30       45   ViT-B-32 on cuda: 256 PNGs via an OpenAI-style .pt, 256 JPEGs
#   smoke_fp16          40      30       45   the tiny benches under fp16 (the GradScaler path)
#   total (cap 345)            345      577   the first four: 285 expected, 488 worst
# The steps run in that order (the surer cost first); each gets the smaller of its limit and what is
# left of the cap (a step with under 15 s left is skipped, said in steps.txt). Expected, the four that
# carry the targets end by 285 s and the last two share the rest (the smoke run may be cut short). In
# the worst case bench_inference finishes its first repeat of all three sides inside its limit (113 s),
# bench_train, with the 148 s left, every row once, and the embedding and smoke steps give way. Either
# way the script ends by 345 s (+10 s for a kill), inside the device call's timeout_s 400, and the
# 15-minute budget holds two such calls with a machine start each.
#
# Results land in $OUT as they are measured (the device returns at most 8 files; these are 6):
#   steps.txt            environment, then one line per step (exit code, seconds, limit)
#   log.txt              every step's output, appended as it runs
#   bench_train.json     rewritten after every run (complete: false until the table is in)
#   bench_inference.json rewritten after every timed repeat
#   bench_embed_png.json, bench_embed_jpg.json
# A run cut short still returns what it measured. Locally, OUT defaults to bench/results/gpu.
#
# Dry run on a CPU machine (the tiny models, every limit and the cap multiplied by SCALE; ~15 min on
# 2 shared cores):
#   NO_WHEELS=1 PYTHON=.venv/bin/python DEVICE=cpu TINY=1 SCALE=8 bash bench/gpu/run_checks.sh
# and with SCALE=1 it shows what a cut-short run returns.
set -uo pipefail   # no -e: a failed step is logged and the next one still runs

SCALE="${SCALE:-1}"                 # multiplies every limit below and the cap (CPU dry run)
TOTAL=$(( ${TOTAL:-345} * SCALE ))  # hard cap for the whole script
T_BUILD=$(( ${T_BUILD:-50} * SCALE ))
T_TRAIN=$(( ${T_TRAIN:-175} * SCALE ))
T_INFER=$(( ${T_INFER:-115} * SCALE ))
T_EMBED=$(( ${T_EMBED:-45} * SCALE ))
T_SMOKE=$(( ${T_SMOKE:-40} * SCALE ))
EMBED_IMAGES="${EMBED_IMAGES:-256}"   # images per embedding run (16 composed on the CPU, the rest copies)
DEVICE="${DEVICE:-cuda}"              # cpu for a dry run
TINY="${TINY:-}"                      # 1: the benches' --tiny models (a dry run's mechanics, no figures)
SMOKE_DTYPE="${SMOKE_DTYPE:-$([[ $DEVICE == cpu ]] && echo bf16 || echo fp16)}"  # the CPU has no fp16 autocast

OUT="${OUT:-$PWD/bench/results/gpu}"
WORK="${WORK:-/tmp/storyboard_gpu}"   # the random SD1.5 is built here once; both benches reuse it
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 STORYBOARD_NO_PROGRESS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
START=$SECONDS

if [[ -d .whl && -z "${NO_WHEELS:-}" ]]; then   # NO_WHEELS=1: use this machine's packages
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/steps.txt"; exit 1; }
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1; nproc
  "$PY" - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for name in ("diffusers", "transformers", "accelerate", "peft", "open_clip"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "FAILED", type(exc).__name__, exc)
PY
  echo "== environment ready after $((SECONDS - START)) s (cap $TOTAL s)"
} > "$OUT/steps.txt" 2>&1
cat "$OUT/steps.txt"

step() {  # step NAME LIMIT COMMAND...: run under min(LIMIT, what is left of the cap), log, report
  local name="$1" limit="$2"; shift 2
  local left=$(( TOTAL - (SECONDS - START) - 5 ))
  (( left < limit )) && limit=$left
  if (( limit < 15 * SCALE )); then
    echo "== $name: skipped, ${left} s left of the ${TOTAL} s cap" | tee -a "$OUT/steps.txt"
    return
  fi
  local start=$SECONDS
  echo "==== $name (limit $limit s) $(date -u +%T)" >> "$OUT/log.txt"
  timeout --signal=INT --kill-after=10 "$limit" "$@" >> "$OUT/log.txt" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start)) s (limit $limit s; $((SECONDS - START)) s since the start)" \
    | tee -a "$OUT/steps.txt"
}

if [[ -n "$TINY" ]]; then
  SIZE=(--tiny); INFER=(--tiny); EMBED=(--size 256)
else
  SIZE=(); INFER=(--full); EMBED=()
fi
step build "$T_BUILD" "$PY" bench/bench_inference.py "${INFER[@]}" --prepare-only --work "$WORK"
step bench_inference "$T_INFER" "$PY" bench/bench_inference.py "${INFER[@]}" --work "$WORK" \
  --json "$OUT/bench_inference.json"
step bench_train "$T_TRAIN" "$PY" bench/bench_train.py "${SIZE[@]}" --work "$WORK" --json "$OUT/bench_train.json" \
  --configs baseline baseline+cache ours-nocache ours+table ours $([[ -z "$TINY" ]] && echo --steps 8)
step bench_embed "$T_EMBED" bash -c "'$PY' bench/bench_embed.py --device $DEVICE --images $EMBED_IMAGES ${EMBED[*]} \
  --batch-size 256 --format png --repeats 1 --checkpoint openai --out '$OUT/bench_embed_png.json' \
  && '$PY' bench/bench_embed.py --device $DEVICE --images $EMBED_IMAGES ${EMBED[*]} --batch-size 256 --format jpg \
  --repeats 1 --out '$OUT/bench_embed_jpg.json'"
step smoke_fp16 "$T_SMOKE" bash -c "'$PY' bench/bench_train.py --tiny --repeats 1 --precision $SMOKE_DTYPE \
  --work '$WORK' --results '$WORK/smoke' && '$PY' bench/bench_inference.py --tiny --repeats 1 --dtype $SMOKE_DTYPE \
  --work '$WORK' --results '$WORK/smoke'"

echo "== done in $((SECONDS - START)) s (cap $TOTAL s)" | tee -a "$OUT/steps.txt"
ls -la "$OUT"
