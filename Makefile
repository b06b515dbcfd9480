# Two commands do all set-up: `make test` and `make bench`. Each creates or reuses the virtual environment .venv:
# - on a machine with registry access and no torch, it installs CPU-usable torch, triton and the test tools;
# - on a GPU box with torch/triton/pytest preinstalled and no network, it reuses those system packages;
# then installs largeconv in editable mode (building the CUDA extension when a CUDA torch and nvcc are present).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torchvision only for timm (a test converts a timm ConvNeXt); 2.14.1 is the torch this machine class serves.
REQUIREMENTS := torch==2.14.1 torchvision==0.29.1 numpy pytest pytest-xdist hypothesis matplotlib tqdm timm \
                ninja setuptools wheel onnx onnxruntime onnxscript
NEEDED_MODULES := torch triton pytest hypothesis matplotlib tqdm timm numpy setuptools onnx onnxruntime onnxscript
# xdist workers: one per core (tests are CPU-bound); override with `make test WORKERS=0`
WORKERS ?= auto

.PHONY: test bench venv clean

venv: $(VENV)/.largeconv-installed

$(VENV)/.largeconv-installed: setup.py pyproject.toml $(wildcard csrc/*)
	@set -e; \
	if [ ! -x $(PY) ]; then $(PYTHON) -m venv --system-site-packages $(VENV); fi; \
	if ! $(PY) -c "import torch" 2>/dev/null && $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "reusing the packages of $(PYTHON) (it is itself a virtual environment)"; \
	  $(PYTHON) -c "import site; print('\n'.join(site.getsitepackages()))" \
	    > $$($(PY) -c "import site; print(site.getsitepackages()[0])")/_outer_site_packages.pth; \
	fi; \
	missing=$$($(PY) -c "import importlib.util as u; print(' '.join(m for m in '$(NEEDED_MODULES)'.split() if u.find_spec(m) is None))"); \
	if [ -n "$$missing" ]; then echo "installing (missing: $$missing)"; $(PY) -m pip install -q $(REQUIREMENTS); fi; \
	$(PY) -m pip install -q --no-build-isolation --no-deps -e . ; \
	touch $@

test: venv
	$(PY) -m pytest -q -n $(WORKERS) tests

bench: venv
	$(PY) bench/roofline.py

clean:
	rm -rf $(VENV) build *.egg-info largeconv/_C*.so bench/out
