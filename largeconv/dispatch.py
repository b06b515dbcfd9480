"""Which backend runs a call.

Backends: "torch" (reference), "cpu", "triton", "cuda", and "auto". The most specific choice wins: the call's
`backend=` argument, then a module's `backend=`, then `use_backend(...)`, then the LARGECONV_BACKEND environment
variable; "auto" (or nothing) at one level defers to the next. An explicit backend that cannot run a call raises a
clear error; "auto" falls back.

"auto": the fastest backend that can run the call, measured once per (op, direction, device, dtype, layout, shape
bucket) and cached, like cudnn.benchmark: among {cpu, torch} for CPU tensors (the "cpu" compositions win at large
kernels, PyTorch's own call at small ones), among {cuda, triton, torch} for CUDA tensors. During CUDA graph capture
nothing is measured: an uncached key goes to torch.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import statistics
import threading
import time

import torch

from .arguments import is_channels_last

BACKENDS = ("auto", "torch", "cpu", "triton", "cuda")
_MODULES = {"torch": "largeconv.reference", "cpu": "largeconv.cpu", "triton": "largeconv.kernels",
            "cuda": "largeconv.cuda"}
_GPU_CANDIDATES = ("cuda", "triton", "torch")
_CPU_CANDIDATES = ("cpu", "torch")

_local = threading.local()
_auto_cache: dict[tuple, str] = {}


def check_backend_name(name, argument="backend"):
    if name is not None and name not in BACKENDS:
        raise ValueError(f"{argument} must be one of {BACKENDS} or None, got {name!r}")


@contextlib.contextmanager
def use_backend(name: str):
    """Run the enclosed calls on backend `name` unless a call or module pins its own."""
    check_backend_name(name)
    stack = _local.__dict__.setdefault("stack", [])
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def requested_backend(*choices) -> str:
    """The first choice that is not None/"auto" among `choices`, the context manager and the environment."""
    env = os.environ.get("LARGECONV_BACKEND") or None
    check_backend_name(env, "LARGECONV_BACKEND")
    stack = getattr(_local, "stack", [])
    for choice in (*choices, stack[-1] if stack else None, env):
        check_backend_name(choice)
        if choice not in (None, "auto"):
            return choice
    return "auto"


def backend_module(name: str):
    return importlib.import_module(_MODULES[name])


def unsupported_reason(backend: str, op: str, x: torch.Tensor, kernel_size) -> str | None:
    """None if `backend` can run `op` on tensors like `x` with this kernel size, else why not."""
    try:
        module = backend_module(backend)
    except ImportError as error:  # e.g. triton not installed
        return f"backend {backend!r} cannot be imported: {error}"
    return module.unsupported_reason(op, x, tuple(kernel_size))


def select(op: str, direction: str, backend: str, x: torch.Tensor, kernel_size, run_args: tuple):
    """The backend module that runs `op`'s `direction` ("forward", "grad_input", "grad_weight").

    `run_args` are the arguments of that backend function, used by "auto" to time the candidates once.
    """
    if backend != "auto":
        reason = unsupported_reason(backend, op, x, kernel_size)
        if reason is not None:
            raise RuntimeError(f"{op}: backend {backend!r} cannot run this call: {reason}")
        return backend_module(backend)
    on_gpu = x.device.type == "cuda"
    names = _GPU_CANDIDATES if on_gpu else _CPU_CANDIDATES
    candidates = [name for name in names if unsupported_reason(name, op, x, kernel_size) is None]
    key = (op, direction, x.device, x.dtype, is_channels_last(x), _shape_bucket(x, kernel_size, run_args))
    if key not in _auto_cache:
        if len(candidates) == 1 or (on_gpu and torch.cuda.is_current_stream_capturing()):
            return backend_module("torch")
        _auto_cache[key] = _fastest(op, direction, candidates, run_args, on_gpu)
    return backend_module(_auto_cache[key])


def _bucket(n: int) -> int:
    """Round up to a power of two, so nearby sizes share one measurement."""
    return 1 << max(int(n) - 1, 0).bit_length()


def _shape_bucket(x, kernel_size, run_args):
    # kernel size, stride, padding and dilation exactly; batch, channels and spatial size bucketed
    params = tuple(arg if isinstance(arg, (int, tuple)) else None for arg in run_args[2:])
    return (tuple(_bucket(n) for n in x.shape), tuple(kernel_size), params)


def _fastest(op, direction, candidates, run_args, on_gpu):
    repeats = 5 if on_gpu else 3
    timings = {}
    for name in candidates:
        fn = getattr(backend_module(name), f"{op}_{direction}")
        fn(*run_args)  # warm-up: compiles, autotunes, faults pages in
        timings[name] = statistics.median(_elapsed_ms(fn, run_args, on_gpu) for _ in range(repeats))
    return min(timings, key=timings.get)


def _elapsed_ms(fn, args, on_gpu):
    if on_gpu:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    start = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - start) * 1e3


def auto_choices() -> dict:
    """What "auto" has picked so far (for the benchmark and for users who want to see it)."""
    return dict(_auto_cache)
