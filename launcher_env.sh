# Sourced by the launchers (shot_trigger_train.sh, inference_trigger2.sh, validation/validation.sh,
# validation/base_valid.sh): sets PYTHON to a Python that has the project's requirements, so that a
# launcher runs without an activated virtual environment. The first of:
#   1. PYTHON, when you set it            PYTHON=/path/to/python bash shot_trigger_train.sh ...
#   2. the active environment             (source .venv/bin/activate, conda activate ...)
#   3. the project's .venv beside this file (what `make setup`, `make demo` and `make test` create)
#   4. python3 or python on PATH, when it has the requirements
# else one line saying how to get one, and exit code 2. Accelerate runs as `$PYTHON -m accelerate...`,
# so the `accelerate` command need not be on PATH either.

STORYBOARD_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

# Whether "$1" can import what every launcher needs (looked up, not imported: a fraction of a second).
storyboard_python_ok() {
  "$1" -c 'import importlib.util as u, sys; sys.exit(0 if all(u.find_spec(m) for m in ("accelerate", "diffusers", "torch")) else 1)' \
    >/dev/null 2>&1
}

if [[ -z "${PYTHON:-}" ]]; then
  for candidate in "${VIRTUAL_ENV:+$VIRTUAL_ENV/bin/python}" "${CONDA_PREFIX:+$CONDA_PREFIX/bin/python}" \
                   "$STORYBOARD_ROOT/.venv/bin/python" "$(command -v python3 || true)" "$(command -v python || true)"; do
    if [[ -n "$candidate" && -x "$candidate" ]] && storyboard_python_ok "$candidate"; then
      PYTHON="$candidate"
      break
    fi
  done
  if [[ -z "${PYTHON:-}" ]]; then
    echo "$(basename "$0"): error: no Python with the project's requirements found (no $STORYBOARD_ROOT/.venv, no active environment with accelerate); run \`make setup\` in $STORYBOARD_ROOT (it creates .venv/, which the launchers use by themselves), or activate your environment (source .venv/bin/activate), or set PYTHON=/path/to/python" >&2
    exit 2
  fi
elif ! storyboard_python_ok "$PYTHON"; then
  echo "$(basename "$0"): error: PYTHON=$PYTHON cannot import accelerate, diffusers and torch; install the requirements into it (pip install -r $STORYBOARD_ROOT/requirements.txt) or unset PYTHON to use $STORYBOARD_ROOT/.venv" >&2
  exit 2
fi
