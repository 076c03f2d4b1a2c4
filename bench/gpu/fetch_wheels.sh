#!/usr/bin/env bash
# Run here (a machine with pip access) before a GPU session: downloads bench/gpu/wheels.txt as
# Python 3.12 x86-64 wheels into .whl/ (git-ignored), which the device call carries.
#   bash bench/gpu/fetch_wheels.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="$ROOT/.whl"                 # carried to the GPU machine (device run: carry [".whl"])
PYTHON_VERSION="3.12"             # the GPU image's python3
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

mkdir -p "$DEST"
grep -q '^/.whl/$' "$ROOT/.git/info/exclude" 2>/dev/null || echo "/.whl/" >> "$ROOT/.git/info/exclude"
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done
grep -v '^\s*#' "$ROOT/bench/gpu/wheels.txt" | grep -v '^\s*$' \
  | xargs python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
      --implementation cp "${platform_args[@]}" -d "$DEST"
du -sh "$DEST"
