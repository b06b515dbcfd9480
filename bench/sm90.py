"""Compile Triton kernels for sm_90 (H100) on a machine with no GPU, and read what the compiler made of them.

A stand-in Triton driver reports an sm_90 target, so `JITFunction.warmup` specialises the arguments as a real
launch would (pointer alignment, integers equal to 1 or divisible by 16) and compiles to PTX and a cubin with the
ptxas Triton ships; nothing is launched. `cuobjdump -res-usage` on the cubin gives registers and local memory
(spills), `cuobjdump -sass` the machine code.

    from bench.sm90 import compile_for_sm90, sass
    k = compile_for_sm90(kernel, args, BLOCK=64, num_warps=4)   # kernel: a @triton.jit function (or autotuner)
    k.registers, k.spills, k.shared, k.compile_s; sass(k.asm)

Run in a process where TRITON_INTERPRET is not 1: under the interpreter, triton.jit makes functions that cannot
compile. Works with triton 3.6 to 3.8 (the GPU box's version and the newest).
"""
import contextlib
import os
import re
import subprocess
import tempfile
import time
from typing import NamedTuple

import triton
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime import driver as _driver_config

SM90 = GPUTarget("cuda", 90, 32)
# H100 SXM: registers and shared memory per SM, the most shared memory one block may use (227 KB), SMs.
H100 = dict(sms=132, regs_per_sm=65536, smem_per_sm=228 * 1024, smem_per_block=227 * 1024,
            max_threads_per_sm=2048, max_blocks_per_sm=32, max_regs_per_thread=255)


class Sm90Driver(DriverBase):
    """A Triton driver for a GPU that is not there: it only answers what compiling needs."""

    @classmethod
    def is_active(cls):
        return False  # never picked by Triton's own driver discovery

    def get_current_target(self):
        return SM90

    def get_current_device(self):
        # Not an int: JITFunction caches its binder (which holds the target) per device, so a process that also
        # has a real GPU never mixes its kernels with these.
        return "sm90-standin"

    def get_current_stream(self, device=None):
        return 0

    def get_active_torch_device(self):
        import torch
        return torch.device("cpu")

    def map_python_to_cpp_type(self, ty):
        raise NotImplementedError("the sm_90 stand-in driver compiles only; it builds no launcher")

    def get_benchmarker(self):
        raise NotImplementedError("the sm_90 stand-in driver compiles only; it runs nothing")


@contextlib.contextmanager
def sm90_driver():
    """Make the stand-in driver Triton's active one; the previous driver is restored afterwards."""
    # Read the private slot: the `active` property would create the default driver, which raises with no GPU.
    previous = _driver_config._active
    _driver_config.set_active(Sm90Driver())
    try:
        yield
    finally:
        _driver_config._active = previous


class Sm90Kernel(NamedTuple):
    asm: dict          # "ttir", "ttgir", "llir", "ptx", "cubin" (bytes)
    registers: int     # per thread
    spills: int        # bytes of local memory per thread (ptxas spills; Triton kernels have no local arrays)
    shared: int        # bytes of shared memory per block (Triton's dynamic allocation plus any static)
    num_warps: int
    compile_s: float   # wall time of warmup (short when Triton's on-disk cache had the kernel)


def tool(name):
    """Path of a CUDA tool Triton ships (ptxas, cuobjdump, nvdisasm)."""
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)


def _run_on_cubin(cubin, *flags):
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([tool("cuobjdump"), *flags, f.name], check=True, capture_output=True,
                              text=True).stdout


def resource_usage(cubin):
    """(registers, local bytes, static shared bytes) of the one kernel in a cubin, from cuobjdump -res-usage."""
    out = _run_on_cubin(cubin, "-res-usage")
    fields = dict(re.findall(r"(REG|STACK|SHARED|LOCAL):(\d+)", out))
    return int(fields["REG"]), int(fields["LOCAL"]), int(fields["SHARED"])


def sass(asm):
    """The SASS (machine code) of a compiled kernel, as text."""
    return _run_on_cubin(asm["cubin"], "-sass")


def compile_for_sm90(kernel, args, **meta):
    """Compile `kernel` for sm_90 with these arguments (tensors on any device: only their dtype and alignment
    matter) and constexprs/options in `meta` (block sizes, num_warps, num_stages). An autotuned kernel is
    compiled as its underlying function, so `meta` must name one config's values."""
    fn = getattr(kernel, "fn", kernel)  # triton.autotune / heuristics wrappers hold the JITFunction in .fn
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    with sm90_driver():
        start = time.perf_counter()
        compiled = fn.warmup(*args, grid=(1,), **meta)
        compile_s = time.perf_counter() - start
    registers, local, static_shared = resource_usage(compiled.asm["cubin"])
    md = compiled.metadata
    return Sm90Kernel(compiled.asm, registers, local, md.shared + static_shared, md.num_warps, compile_s)
