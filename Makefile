# Two commands set everything up: `make demo` and `make test` create .venv when missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv demo test lint bench bench-accuracy clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# constraints.txt pins every version (CPU torch==2.13.0 included) for reproducible runs
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Prefect's local ephemeral API keeps its database inside the project (.prefect/).
demo: $(STAMP)
	PREFECT_HOME=$(CURDIR)/.prefect $(VENV)/bin/calcpipe demo demo_out

# pytest exits 5 when it collects no test; that is not a failure of the suite.
test: $(STAMP)
	$(PY) -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check calcpipe flows tests bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(PY) bench/bench_load_volume.py
	$(PY) bench/bench_scoring.py
	$(PY) bench/bench_masks.py
	$(PY) bench/bench_synthetic.py
	$(PY) bench/bench_discovery.py
	$(PY) bench/bench_segmentation.py
	$(PY) bench/bench_host_cpu.py
	$(PY) bench/bench_pipeline.py
	$(PY) bench/bench_planning.py

# accuracy of the shipped model: about 10 minutes on 2 cores (outside CI)
bench-accuracy: $(STAMP)
	$(PY) bench/bench_accuracy.py

clean:
	rm -rf $(VENV) demo_out .prefect .pytest_cache .mypy_cache .ruff_cache build *.egg-info
