# dedl: two commands.
#   make book   install (if needed), execute every notebook at ci scale, write the HTML book to _build/html
#   make test   install (if needed), then the whole test suite: unit tests, notebooks (nbval), the built book
#
# Both create the virtual environment .venv on first use. PyTorch is installed first, at the version
# pinned here and nowhere else; `dedl` and its extras come after, so nothing pulls another torch build.
# GPU users: install the CUDA build of torch==$(TORCH_VERSION) into .venv first, or pass its wheel index
# as TORCH_INDEX_URL (see README.md).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
TORCH_VERSION := 2.13.0
TORCH_INDEX_URL ?=
DEDL_SCALE ?= ci
# Workers for the test suite (pytest-xdist); each runs single-threaded torch.
TEST_WORKERS ?= 2
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.dedl-installed
JB_FLAGS := -W -n --keep-going
CHROMIUM := /usr/bin/chromium

.PHONY: help install book test chromium clean distclean torch-version

help:
	@echo "make book       build the executable book into _build/html (DEDL_SCALE=$(DEDL_SCALE))"
	@echo "make test       run the whole test suite (unit tests, notebooks, rendered book)"
	@echo "make install    only create .venv and install torch==$(TORCH_VERSION) and dedl[book,test]"
	@echo "make clean      remove _build (the HTML book and the execution cache)"
	@echo "make distclean  remove _build and .venv"
	@echo "make torch-version  print the pinned torch version ($(TORCH_VERSION))"

torch-version:
	@echo $(TORCH_VERSION)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependencies (pyproject.toml) or the torch pin (this file) change.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install "torch==$(TORCH_VERSION)" $(if $(TORCH_INDEX_URL),--index-url $(TORCH_INDEX_URL))
	$(BIN)/python -m pip install -e ".[book,test]"
	@touch $@

install: $(STAMP)

# One torch thread, as in `make test`: training results move with the thread count, and this way the
# book prints exactly the numbers whose claims the tests asserted on the same machine.
book: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" DEDL_SCALE=$(DEDL_SCALE) \
	  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
	  $(BIN)/jupyter-book build $(JB_FLAGS) .
	@echo "The book is in _build/html; open _build/html/index.html"

# The browser test (tests/test_book.py) needs Debian's Chromium; install it when we can.
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium) \
	      || echo "warning: could not install chromium; the browser test will be skipped"; \
	  else \
	    echo "warning: $(CHROMIUM) is missing; install Debian's chromium (as root: apt-get install -y chromium)" \
	         "or the browser test will be skipped"; \
	  fi; \
	fi

# Every notebook runs top to bottom at ci scale with CUDA hidden (nbval, --nbval-lax: a cell that
# raises fails; outputs are not compared). Two workers, one torch thread each, one file per worker.
test: $(STAMP) chromium
	PATH="$(CURDIR)/$(BIN):$$PATH" CUDA_VISIBLE_DEVICES= DEDL_SCALE=ci \
	  OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 PYDEVD_DISABLE_FILE_VALIDATION=1 \
	  $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile --nbval-lax --nbval-current-env \
	  -ra --durations=20 $(PYTEST_ARGS) tests chapters

clean:
	rm -rf _build

distclean: clean
	rm -rf $(VENV)
