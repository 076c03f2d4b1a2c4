# The two commands a new user runs (README): `make demo` and `make test`.
# Both create .venv and install everything from nothing on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps -e .
	touch $(STAMP)

demo: setup
	$(PY) -m storyboard.devkit.demo

# ruff (style, imports at the top) and import-linter (layers, no cycles, no devkit in the product):
# both configured in pyproject.toml; `make test` fails when either fails.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: setup lint
	STORYBOARD_NO_PROGRESS=1 $(PY) -m pytest -q

clean:
	rm -rf demo_run .pytest_cache
