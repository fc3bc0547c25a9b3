# Two commands do everything on a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eo pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WBCVAE := $(VENV)/bin/wbcvae
STAMP := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)
SHARED_DATA ?= ../shared/data
DEMO_DIR ?= demo
# Quiet pip's notes about the machine's empty local indexes; real errors still fail the target.
PIP_FILTER := grep -v -e "is ignored: it is neither a file nor a directory" || true

.PHONY: help setup test test-all demo train-image train-rna segment features align trajectory bench clean

help:
	@echo "make demo    - set up, then run the whole pipeline on the embedded synthetic world"
	@echo "make test    - set up, then run the fast test suite (make test-all adds the slow tests)"
	@echo "make setup   - create $(VENV) and install wbcvae into it (idempotent)"
	@echo "make train-image | train-rna | segment | features | align | trajectory | bench"

setup: $(STAMP)

$(STAMP):
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing wbcvae and its dependencies into $(VENV) (first time: a few minutes)"
	@$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' 2>&1 | $(PIP_FILTER)
	@$(PY) -c "import wbcvae, torch, torchvision, lightning" && rm -f $(VENV)/.installed-* && touch $@

test: setup
	$(PY) -m pytest -q -m "not slow"

test-all: setup
	$(PY) -m pytest -q

demo: setup
	$(WBCVAE) data synth $(DEMO_DIR)/world --cells-per-class 24 --rna-cells 1500 --seed 0 --overwrite
	$(WBCVAE) data summary $(DEMO_DIR)/world
	@if [ -d $(SHARED_DATA)/pbc_sample ]; then $(WBCVAE) data summary $(SHARED_DATA)/pbc_sample; \
	 else echo "skipping pbc_sample summary: $(SHARED_DATA)/pbc_sample not found"; fi
	@if [ -d $(SHARED_DATA)/vangalen2019 ]; then $(WBCVAE) data summary $(SHARED_DATA)/vangalen2019; \
	 else echo "skipping van Galen summary: $(SHARED_DATA)/vangalen2019 not found"; fi
	$(WBCVAE) data montage $(DEMO_DIR)/world --real $(SHARED_DATA)/pbc_sample --out $(DEMO_DIR)/montage.png

segment features align trajectory bench train-image train-rna:
	@echo "make $@: not implemented yet (see the open issues); nothing was run." >&2; exit 1

clean:
	rm -rf $(DEMO_DIR) runs .pytest_cache
