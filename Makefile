# make run / make test from a fresh clone: create .venv, install, run the default study / the tests.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Where no GPU is visible, install the CPU build of torch first (a bare `torch` pulls a CUDA build).
TORCH_CPU ?= torch==2.13.0
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo yes)
ARGS ?=

.PHONY: install run test lint dashboard clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifneq ($(HAS_GPU),yes)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH_CPU)"
endif
	$(PY) -m pip install --quiet -e ".[test]"
	$(PY) -c "import torch, optuna, hydra, optuna_dashboard, cmaes, numpy; print('installed: torch', torch.__version__, '| optuna', optuna.__version__)"
	touch $@

run: install
	$(PY) -m study.run $(ARGS)

test: install
	$(PY) -m pytest -q $(ARGS)

lint: install
	$(VENV)/bin/ruff check study kernels tests bench

dashboard: install
	$(PY) -m study.dashboard $(ARGS)

clean:
	rm -rf $(VENV)
