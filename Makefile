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
# triton 3.6.0, the GPU box's version, for the sm_90 compile gate (tests/test_sm90_compile.py), which compiles every
# kernel under it and under the venv's newest Triton: the two compile the same kernel differently (fp64 tl.dot
# failed under 3.6.0 only). A second small venv rather than pinning .venv to 3.6.0, so the interpreter tests keep
# running the newest Triton: it holds only triton 3.6.0 and numpy<2.4 (3.6.0's interpreter needs it), ~20 s and
# one ~190 MB wheel, and reaches torch and largeconv through .venv's site-packages (a .pth file). Where .venv's
# Triton is 3.6.0 already (the GPU box, offline), nothing is installed.
VENV36 ?= .venv-triton36
# xdist workers: one per core (tests are CPU-bound); override with `make test WORKERS=0`
WORKERS ?= auto

.PHONY: test bench venv venv-triton36 clean

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

venv-triton36: $(VENV36)/.installed

$(VENV36)/.installed: $(VENV)/.largeconv-installed
	@set -e; \
	if $(PY) -c "import sys, triton; sys.exit(triton.__version__ != '3.6.0')"; then \
	  echo "$(VENV)'s triton is 3.6.0: no second venv needed"; mkdir -p $(VENV36); \
	else \
	  $(PYTHON) -m venv $(VENV36); \
	  $(VENV36)/bin/python -m pip install -q "triton==3.6.0" "numpy<2.4"; \
	  $(PY) -c "import site; print('import site; ' + '; '.join(f'site.addsitedir({p!r})' for p in site.getsitepackages()))" \
	    > $$($(VENV36)/bin/python -c "import site; print(site.getsitepackages()[0])")/_largeconv_venv.pth; \
	fi; \
	echo '*' > $(VENV36)/.gitignore; \
	touch $@

test: venv venv-triton36
	$(PY) -m pytest -q -n $(WORKERS) tests

bench: venv
	$(PY) bench/roofline.py

clean:
	rm -rf $(VENV) $(VENV36) build *.egg-info largeconv/_C*.so bench/out
