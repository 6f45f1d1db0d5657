# Two commands on a fresh machine: `make run` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup run stop test lint bench chaos clean show segments

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,demo,emulator]'
	rm -f $(VENV)/.installed-* && touch $@

setup: $(STAMP)

## run: start the local emulator, create resources, publish CDNOW, consume it, summarise
run: setup
	$(VENV)/bin/caa run

## stop: stop the local emulator that `make run` left running
stop:
	@test -x $(VENV)/bin/caa && $(VENV)/bin/caa emulator stop || true

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy .

## test: lint, type-check, unit + integration tests (starts its own emulator)
test: lint
	$(VENV)/bin/pytest

bench: setup
	$(PY) bench/pipeline.py

clean:
	rm -rf $(VENV) .caa out .pytest_cache .mypy_cache .ruff_cache
