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
def settle_by_the_direction_times(request, monkeypatch):
    """auto's settle times a call's whole forward and backward both ways (dispatch._whole_call_times); tests that
    record or fake backend calls would see those calls and times, so unless marked `timed_settle` a test compares
    the per-direction times auto measured instead, with 0.3 ms charged per direction on the custom ops."""
    from largeconv import dispatch
    monkeypatch.setattr(dispatch, "_settled", {})
    if "timed_settle" in request.keywords:
        return

    def direction_times(keys, whole_call):
        times = [dispatch._auto_times[key] for key in keys]
        custom = sum(t[dispatch._auto_cache[key]] for t, key in zip(times, keys))
        return sum(t["torch"] for t in times), custom + 3e-4 * len(keys)
    monkeypatch.setattr(dispatch, "_whole_call_times", direction_times)


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    """fp32 is held to 1e-5 relative, so every test starts with TF32 off for convs (PyTorch's default is on; the
    triton and cuda kernels follow torch.backends.cudnn.allow_tf32). A test of TF32 turns it on itself."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
