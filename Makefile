# XXPO Lab: `make book` builds the website, `make test` runs every test. Both set everything up first.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
WHEELS := /opt/wheels
SITE := _build/html
FAST_SITE := _build/fast/_build/html
export XXPO_CACHE ?= $(CURDIR)/.xxpo_cache
# every pytest layer: a skip is a failure, and the count of tests run goes to $(COUNTS) (tests/layer.py)
PYTEST := $(PY) -m pytest -p tests.layer
COUNTS := _build/test-counts.txt

.PHONY: help setup book fast serve test test-unit test-notebooks test-book test-browser test-colab test-verl gpu-check \
        browser-deps lint sync bench mutate clean clean-cache

help:
	@echo "make book    set up .venv, build the website ($(SITE)) with every chapter executed in full mode, check it in a browser"
	@echo "make test    set up and run every test layer (unit, notebooks, book build, browser, Colab path, verl)"
	@echo "make fast    build the website in fast mode (XXPO_FAST=1) into $(FAST_SITE)"
	@echo "make serve   serve the built website on http://127.0.0.1:8000"
	@echo "make sync    rewrite the notebooks' install cells from _config.yml and strip outputs"
	@echo "make lint    ruff"
	@echo "make bench   run the benchmarks (benchmarks/README.md)"
	@echo "make gpu-check  execute every chapter on CUDA (DEVICE=cpu FAST=1 for a dry run): time, memory, claims -> benchmarks/gpu.md"
	@echo "make mutate  mutation testing of the math, the loop and the config (tests/README.md), one to two hours"
	@echo "make clean   remove the built site; make clean-cache removes cached warm starts and runs"

setup: $(STAMP)

VERL_VENV := .venv-verl
VERL_STAMP := $(VERL_VENV)/.installed
# verl pins transformers below the book's version: its integration is tested in an environment of its own, which
# chapter 13 also calls (verl's loss on the chapter's batch), so the book and the notebook tests build it first
# (verl ships a top-level `tests` package, so the layer plugin is loaded as `layer` from tests/)
$(VERL_STAMP): requirements-verl.txt pyproject.toml
	@test -x $(VERL_VENV)/bin/python || $(PYTHON) -m venv $(VERL_VENV)
	$(VERL_VENV)/bin/python -m pip install -q $(if $(wildcard $(WHEELS)),--find-links $(WHEELS)) torch==2.13.0
	$(VERL_VENV)/bin/python -m pip install -q -r requirements-verl.txt
	$(VERL_VENV)/bin/python -m pip install -q --no-deps -e .
	@touch $(VERL_STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(if $(wildcard $(WHEELS)),--find-links $(WHEELS)) torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $(STAMP)

book: setup browser-deps $(VERL_STAMP)
	@mkdir -p _build && rm -f $(COUNTS)
	XXPO_BOOK=1 $(VENV)/bin/jupyter-book build . --all -W -n --keep-going
	$(call timed,browser tests of the full site (non-local requests blocked),XXPO_SITE=$(SITE) $(PYTEST) tests/browser -q)
	@echo "The website is in $(SITE)/index.html (make serve shows it on http://127.0.0.1:8000)"

fast: setup $(VERL_STAMP)
	XXPO_FAST=1 XXPO_BOOK=1 $(VENV)/bin/jupyter-book build . --all --path-output _build/fast -W -n --keep-going
	@echo "The fast-mode website is in $(FAST_SITE)/index.html"

serve:
	@test -f $(SITE)/index.html || { echo "no site yet: run make book"; exit 1; }
	$(PY) -m http.server 8000 --bind 127.0.0.1 --directory $(SITE)

# ------------------------------------------------------------------------------------------ tests
# each layer prints its wall time; CI (.ci/run) runs `make test`
define timed
	@start=$$(date +%s); echo "== $(1) =="; export XXPO_LAYER="$(1)" XXPO_COUNTS=$(CURDIR)/$(COUNTS); $(2); status=$$?; \
	 echo "== $(1): $$(( $$(date +%s) - start )) s =="; exit $$status
endef

test: setup browser-deps $(VERL_STAMP)
	@start=$$(date +%s); mkdir -p _build; rm -f $(COUNTS); \
	 $(MAKE) --no-print-directory test-unit test-notebooks test-book test-browser test-colab test-verl; status=$$?; \
	 echo "== tests run per layer (a skip fails its layer) =="; cat $(COUNTS) 2>/dev/null; \
	 echo "== make test: $$(( $$(date +%s) - start )) s, exit $$status =="; exit $$status

test-unit: setup
	$(call timed,layer 1: unit tests,$(PYTEST) tests/unit -n 2 -q)

test-notebooks: setup $(VERL_STAMP)
	$(call timed,layer 2: notebooks in fast mode,XXPO_FAST=1 OMP_NUM_THREADS=1 $(PYTEST) --nbmake --nbmake-timeout=600 -n 2 -q chapters)

test-book: setup $(VERL_STAMP)
	$(call timed,layer 3: fast book build with warnings as errors,rm -rf _build/fast && XXPO_FAST=1 XXPO_BOOK=1 $(VENV)/bin/jupyter-book build . --all --path-output _build/fast -W -n --keep-going)

test-browser: setup browser-deps
	$(call timed,layer 4: browser tests of the built site,$(PYTEST) tests/browser -q)

test-colab: setup
	$(call timed,layer 5: Colab install path in a fresh venv,$(PYTEST) tests/colab -q)

test-verl: $(VERL_STAMP)
	$(call timed,layer 6: the verl integration against verl's own code in its environment,PYTHONPATH=$(CURDIR)/tests $(VERL_VENV)/bin/python -m pytest -p layer tests/verl -q)

browser-deps:
	@command -v chromium >/dev/null || { echo "installing Debian's chromium"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# ------------------------------------------------------------------------------------------ helpers
lint: setup
	$(VENV)/bin/ruff check xxpo_lab tests benchmarks chapters/_sync.py chapters/_ext

sync: setup
	$(PY) chapters/_sync.py

gpu-check: setup
	$(PY) benchmarks/gpu_check.py --device $(or $(DEVICE),cuda) $(if $(FAST),--fast)

bench: setup
	$(PY) benchmarks/bench_step.py --steps 40 --rounds 6 --out benchmarks/results.json
	$(PY) benchmarks/bench_scaling.py --steps 20 --rounds 4 --out benchmarks/scaling.json

# mutmut mutates losses, blocks, advantages, loop and config one change at a time and runs the unit tests
# that cover each change (pyproject.toml [tool.mutmut]); its progress goes to _build/mutate.log
mutate: setup
	rm -rf mutants && mkdir -p _build
	$(VENV)/bin/mutmut run --max-children 2 > _build/mutate.log 2>&1 || { tail -c 3000 _build/mutate.log; exit 1; }
	$(PY) tests/mutation_score.py

clean:
	rm -rf _build

clean-cache:
	rm -rf $(XXPO_CACHE)
