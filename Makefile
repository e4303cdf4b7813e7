# offline-cli developer commands. `make install` then `make test` is all a new machine needs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install test lint unit soak bench bench-smoke docs docs-check completions completions-check run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

install: $(BIN)/python  ## create .venv and install offline-cli with its test tools
	$(BIN)/python -m pip install --quiet -e '.[test]'

lint:  ## ruff, ruff format, mypy --strict and the import contracts (pyproject.toml)
	$(BIN)/ruff check offline_cli tests docs
	$(BIN)/ruff format --check offline_cli tests docs
	$(BIN)/mypy offline_cli docs
	$(BIN)/lint-imports --no-cache

unit:  ## the test suite without the lint step (a short chaos soak included)
	$(BIN)/python -m pytest -q

test: lint docs-check completions-check unit  ## everything CI runs

soak:  ## the long chaos soak (200 randomized trials)
	SOAK_TRIALS=$${SOAK_TRIALS:-200} $(BIN)/python -m pytest -q -m slow -s tests/test_soak.py

bench:  ## speed and memory against curl, wget, aria2c and a Python baseline (BENCH_CASES=many,throttled: some)
	$(BIN)/python bench/run.py

bench-smoke:  ## every bench section at a tiny size, once: shows it still works (CI runs it)
	$(BIN)/python bench/run.py --smoke --out bench/results/smoke.json

docs:  ## regenerate docs/cli.md from the app (commands, options, defaults, variables, examples)
	$(BIN)/python docs/generate.py docs

docs-check:  ## fail when docs/cli.md is not what the app generates (make test, so CI, runs it)
	$(BIN)/python docs/generate.py docs --check

completions:  ## regenerate the shell completion scripts in completions/
	$(BIN)/python docs/generate.py completions

completions-check:  ## fail when completions/ is not what `make completions` writes (in make test)
	$(BIN)/python docs/generate.py completions --check

.PHONY: demo
demo:  ## offline-cli against a loopback server with injected faults, as a shell transcript (no internet)
	$(BIN)/python docs/demo.py

run:  ## download URL=... into the store (make run URL=https://example.com/file)
	$(BIN)/offline-cli offline '$(URL)'

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .import_linter_cache *.egg-info
