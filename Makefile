# The two commands a new user runs (README): `make demo` and `make test`.
# Both create .venv and install everything from nothing on first use.
# A third, `make proof`, is a benchmark: evidence that a trigger works, on a world trained here
# (docs/proof.md; about 90 min from nothing on 2 CPU cores, 4-7 once the world is cached).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

WORLD_CACHE ?= .proof_cache

.PHONY: setup demo test lint clean proof

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

demo: setup
	$(PY) -m storyboard.devkit.demo

# Builds (or reuses, by the configuration's fingerprint) the proof world in $(WORLD_CACHE), then runs
# the real front doors on it in proof_run/ and writes proof_run/index.html.
proof: setup
	$(PY) -m storyboard.devkit.proof --world-cache $(WORLD_CACHE)

# ruff (style, imports at the top) and import-linter (layers, no cycles, no devkit in the product):
# both configured in pyproject.toml; `make test` fails when either fails.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: setup lint
	STORYBOARD_NO_PROGRESS=1 $(PY) -m pytest -q

clean:
	rm -rf demo_run proof_run .pytest_cache
