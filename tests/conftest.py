"""Test set-up.

The default run is the CPU suite: the Triton kernels run on CPU tensors under the interpreter, which must be
switched on before triton is first imported (pytest_configure runs before test modules are imported). The GPU run
(`pytest -m gpu`) compiles them for the device instead.
"""
import os
import sys

import pytest
import torch


def _gpu_run(config):
    return (config.getoption("markexpr") or "").strip() == "gpu"


def pytest_configure(config):
    if not _gpu_run(config):
        assert "triton" not in sys.modules, "triton was imported before TRITON_INTERPRET could be set"
        os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fixed_custom_op_overhead(monkeypatch):
    """auto's settle charges the custom ops' per-direction cost, measured once per process by calling the torch
    backend (dispatch.custom_op_overhead): tests that record or time backend calls would see those calls, so every
    test charges a fixed 0.3 ms; tests of the measurement set None themselves."""
    from largeconv import dispatch
    for device in ("cpu", "cuda"):
        monkeypatch.setitem(dispatch.CUSTOM_OP_OVERHEAD_S, device, 3e-4)


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    """fp32 is held to 1e-5 relative, so every test starts with TF32 off for convs (PyTorch's default is on; the
    triton and cuda kernels follow torch.backends.cudnn.allow_tf32). A test of TF32 turns it on itself."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
