# Two commands do everything on a fresh clone: `make demo` and `make test`.
# Both (re)create .venv through scripts/bootstrap.sh when it is missing or stale.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.bootstrap-stamp

.PHONY: venv test test-slow lint demo bench clean-venv

$(STAMP): pyproject.toml scripts/bootstrap.sh
	bash scripts/bootstrap.sh

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check metaacdc tests scripts
	$(BIN)/ruff format --check metaacdc tests scripts
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest -q

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# Meta-trains Conv4 ACDC-net on the embedded synthetic source, then evaluates it.
demo: $(STAMP)
	rm -rf runs/demo
	$(BIN)/metaacdc train --config configs/demo.yaml --out runs/demo
	$(BIN)/metaacdc evaluate runs/demo --tasks 500

bench: $(STAMP)
	$(BIN)/python scripts/bench_acdc.py

clean-venv:
	rm -rf $(VENV)
