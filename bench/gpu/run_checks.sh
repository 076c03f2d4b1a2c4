#!/usr/bin/env bash
# The GPU session's one prepared call: everything the issues ask of a GPU, in priority order, each
# step under its own time limit so one hang cannot eat the lease. Run from the repository root on
# the device machine after `bash bench/gpu/fetch_wheels.sh` here:
#   device run: command "bash bench/gpu/run_checks.sh", carry [".whl"], timeout_s 590
# Dry run here (CPU, short limits; the fp16 smoke step then fails by design):
#   NO_WHEELS=1 PYTHON=.venv/bin/python DEVICE=cpu T_TRAIN=20 T_INFER=20 EMBED_IMAGES=8 bash bench/gpu/run_checks.sh
# Logs and JSON results land in $OUT (at most 8 files come back). Locally, OUT defaults to
# bench/results/gpu and the wheel install is skipped when .whl/ is absent.
set -uo pipefail   # no -e: a failed step is logged and the next one still runs

# ---- time limits per step (seconds); the device allows 600 s per command -------------------
# (each can be overridden from the environment, e.g. for a dry run on a CPU machine)
T_TRAIN="${T_TRAIN:-280}"     # bench_train: baseline vs ours, bf16, batch 1 and 4, +/- gradient checkpointing
T_INFER="${T_INFER:-120}"     # bench_inference --full: ours (fused) vs plain diffusers, 30 steps, 512 px
T_EMBED="${T_EMBED:-70}"      # bench_embed on cuda (fp16), PNG (model loaded from an OpenAI-style .pt) and JPEG
T_SMOKE="${T_SMOKE:-50}"      # tiny-model benches under fp16 (the other mixed-precision path)
EMBED_IMAGES="${EMBED_IMAGES:-512}"   # images per embedding run (16 composed on the CPU, the rest copies)
DEVICE="${DEVICE:-cuda}"      # cpu for a dry run here

OUT="${OUT:-$PWD/bench/results/gpu}"
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 STORYBOARD_NO_PROGRESS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"

if [[ -d .whl && -z "${NO_WHEELS:-}" ]]; then   # NO_WHEELS=1: use this machine's packages
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed" | tee "$OUT/env.txt"; exit 1; }
  export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  "$PY" - <<'PY'
import importlib, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for name in ("diffusers", "transformers", "accelerate", "peft", "open_clip"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:
        print(name, "FAILED", type(exc).__name__, exc)
PY
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step() {  # step NAME SECONDS COMMAND...: run with a limit, log to $OUT/NAME.log, report the status
  local name="$1" limit="$2"; shift 2
  local start=$SECONDS
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - start)) s (limit $limit)" | tee -a "$OUT/steps.txt"
  tail -n 25 "$OUT/$name.log"
}

WORK=/tmp/storyboard_gpu   # one folder for both: bench_inference reuses the random SD1.5 bench_train built
step bench_train "$T_TRAIN" "$PY" bench/bench_train.py --work "$WORK"
step bench_inference "$T_INFER" "$PY" bench/bench_inference.py --full --work "$WORK"
step bench_embed "$T_EMBED" bash -c "'$PY' bench/bench_embed.py --device $DEVICE --images $EMBED_IMAGES --batch-size 256 --format png --repeats 1 --checkpoint openai \
  --out bench/results/bench_embed_gpu_png.json && '$PY' bench/bench_embed.py --device $DEVICE --images $EMBED_IMAGES \
  --batch-size 256 --format jpg --repeats 1 --out bench/results/bench_embed_gpu_jpg.json"
step smoke_fp16 "$T_SMOKE" bash -c "'$PY' bench/bench_train.py --tiny --precision fp16 && '$PY' bench/bench_inference.py --tiny --dtype fp16"

# Every JSON result in one file (the device returns at most 8).
tar -czf "$OUT/results.tgz" --exclude=gpu -C bench results 2>/dev/null
ls -la "$OUT"
