"""Measured peaks of the device the benchmark runs on, and datasheet figures for known GPUs.

What is measured (all in GB/s and GFLOP/s):
- bandwidth: `dst.copy_(src)` of a large fp32 buffer (far larger than the last-level cache), counting bytes read
  plus bytes written.
- matmul_<dtype>: a large square matmul, 2*n^3 FLOPs. On GPU fp32 is measured with TF32 off, and tf32 separately.
- fma_fp32: the roof for depthwise conv and involution (they cannot use matrix units as written).
  GPU: a small Triton kernel where every thread keeps a few fp32 values in registers and runs a long chain of
  independent fused multiply-adds on them (8 chains, so FMA latency is hidden); memory traffic is negligible.
  CPU: the fp32 SIMD FMA units are the very units sgemm runs on (no AMX or separate matrix units on this class of
  CPU), and MKL/oneDNN sgemm issues FMAs at ~90-100% of their rate, so the fp32 matmul is the tight, attainable
  FMA roof. (In-place `addcmul_` loops on a cache-resident buffer measure op dispatch and load ports, not the FMA
  units: 6-16 GFLOP/s against 170 for sgemm on a 2-core EPYC, so they would draw a roof below real kernels.)
"""
from __future__ import annotations

import statistics
import time

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the CPU path needs no triton
    triton = None

FMA_CHAINS = 8  # independent accumulators per element (hides FMA latency)
FMA_UNROLL = 4  # FMAs per chain per loop iteration

if triton is not None:
    @triton.jit
    def fma_chain_kernel(x_ptr, out_ptr, n, iters, BLOCK: tl.constexpr, UNROLL: tl.constexpr):
        """Each element: 8 independent chains a = a * b + c, iters * UNROLL long, all in registers."""
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        x = tl.load(x_ptr + offs, mask=mask, other=0.0)
        b = x * 1e-3 + 0.999  # |b| < 1 and small c: the chains converge, never overflow or go denormal
        c = x * 1e-3
        a0, a1, a2, a3 = x, x + 1.0, x + 2.0, x + 3.0
        a4, a5, a6, a7 = x + 4.0, x + 5.0, x + 6.0, x + 7.0
        for _ in range(iters):
            for _u in tl.static_range(UNROLL):
                a0 = a0 * b + c
                a1 = a1 * b + c
                a2 = a2 * b + c
                a3 = a3 * b + c
                a4 = a4 * b + c
                a5 = a5 * b + c
                a6 = a6 * b + c
                a7 = a7 * b + c
        tl.store(out_ptr + offs, ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7)), mask=mask)

# Dense (no sparsity) datasheet figures, GB/s and GFLOP/s. fma_fp32 = non-tensor-core FP32.
DATASHEETS = {
    "H100 SXM": dict(bandwidth=3350.0, fma_fp32=66900.0, matmul_tf32=494700.0, matmul_bf16=989400.0,
                     matmul_fp16=989400.0),
    "H100 PCIe": dict(bandwidth=2000.0, fma_fp32=51200.0, matmul_tf32=378000.0, matmul_bf16=756000.0,
                      matmul_fp16=756000.0),
    "H100 NVL": dict(bandwidth=3900.0, fma_fp32=60000.0, matmul_tf32=418000.0, matmul_bf16=835000.0,
                     matmul_fp16=835000.0),
    "H200": dict(bandwidth=4800.0, fma_fp32=66900.0, matmul_tf32=494700.0, matmul_bf16=989400.0,
                 matmul_fp16=989400.0),
}


def datasheet_for(device_name: str):
    """(label, figures) of the datasheet matching a device name such as 'NVIDIA H100 80GB HBM3', else None."""
    name = device_name.upper()
    if "H200" in name:
        return "H200", DATASHEETS["H200"]
    if "H100" in name:
        if "PCIE" in name:
            return "H100 PCIe", DATASHEETS["H100 PCIe"]
        if "NVL" in name:
            return "H100 NVL", DATASHEETS["H100 NVL"]
        return "H100 SXM", DATASHEETS["H100 SXM"]
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() + f" ({torch.get_num_threads()} threads)"
    except OSError:
        pass
    return f"cpu ({torch.get_num_threads()} threads)"


def time_call(fn, device, min_time=0.5, min_reps=5, max_reps=200):
    """Median seconds of fn() after warm-up (GPU: CUDA events; CPU: perf_counter)."""
    if device.type == "cuda":
        import triton.testing
        return triton.testing.do_bench(fn, warmup=25, rep=max(100, int(min_time * 1000)),
                                       return_mode="median") / 1e3
    fn()
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def measure_bandwidth(device, nbytes=None):
    if nbytes is None:
        nbytes = 2 << 30 if device.type == "cuda" else 512 << 20
    src = torch.randn(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = time_call(lambda: dst.copy_(src), device)
    return 2 * nbytes / seconds / 1e9


def measure_matmul(device, dtype, n=None, tf32=False):
    if n is None:
        if device.type == "cuda":
            n = 8192
        else:  # no bf16/fp16 SIMD on most CPUs: keep the slow dtypes small
            n = 2048 if dtype == torch.float32 else 512
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        seconds = time_call(lambda: a @ b, device, min_reps=3 if device.type == "cpu" else 5)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    return 2 * n ** 3 / seconds / 1e9


def measure_fma_gpu(device, iters=4096):
    """GFLOP/s of the Triton register FMA-chain kernel."""
    block = 1024
    n = torch.cuda.get_device_properties(device).multi_processor_count * 8 * block
    x = torch.rand(n, device=device)
    out = torch.empty_like(x)
    grid = (triton.cdiv(n, block),)
    fn = lambda: fma_chain_kernel[grid](x, out, n, iters, BLOCK=block, UNROLL=FMA_UNROLL, num_warps=4)  # noqa: E731
    seconds = time_call(fn, device)
    return 2 * FMA_CHAINS * FMA_UNROLL * iters * n / seconds / 1e9


def measure_peaks(device, quick=False, tries=1):
    """dict of measured peaks plus a description of each method; each peak is the best of `tries` medians
    (a peak is what the machine can do: on a shared CPU one try may be slowed by other work)."""
    device = torch.device(device)
    best = lambda fn, *a, **k: max(fn(*a, **k) for _ in range(tries))  # noqa: E731
    peaks = dict(device=device_name(device), device_type=device.type)
    peaks["bandwidth"] = best(measure_bandwidth, device, nbytes=(64 << 20) if quick else None)
    peaks["bandwidth_method"] = "dst.copy_(src) of a large fp32 buffer, bytes read + written"
    small = 256 if quick else None
    peaks["matmul_fp32"] = best(measure_matmul, device, torch.float32, n=small)
    if device.type == "cuda":
        peaks["matmul_tf32"] = best(measure_matmul, device, torch.float32, n=small, tf32=True)
    peaks["matmul_bf16"] = measure_matmul(device, torch.bfloat16, n=small if not quick else 64)
    peaks["matmul_fp16"] = measure_matmul(device, torch.float16, n=small if not quick else 64)
    if device.type == "cuda":
        peaks["fma_fp32"] = best(measure_fma_gpu, device, iters=256 if quick else 4096)
        peaks["fma_method"] = "Triton kernel: 8 independent fp32 FMA chains per element held in registers"
    else:
        peaks["fma_fp32"] = peaks["matmul_fp32"]
        peaks["fma_method"] = ("fp32 sgemm: on this CPU the matmul runs on the same SIMD FMA units, at ~90-100% "
                               "of their issue rate; see bench/peaks.py")
    peaks["threads"] = torch.get_num_threads()
    peaks["tries"] = tries
    return peaks


def format_peaks(peaks) -> list[str]:
    """Readable lines, one per measured peak, with the datasheet beside it when the device is known."""
    sheet = datasheet_for(peaks["device"])
    label, figures = sheet if sheet else ("", {})
    lines = []
    for key, unit in [("bandwidth", "GB/s"), ("fma_fp32", "GFLOP/s"), ("matmul_fp32", "GFLOP/s"),
                      ("matmul_tf32", "GFLOP/s"), ("matmul_bf16", "GFLOP/s"), ("matmul_fp16", "GFLOP/s")]:
        if key in peaks:
            extra = f" (datasheet {label}: {figures[key]:,.0f})" if key in figures else ""
            lines.append(f"{key}: {peaks[key]:,.1f} {unit}{extra}")
    if "ridge" not in peaks and peaks.get("bandwidth"):
        lines.append(f"ridge point (fma_fp32 / bandwidth): {peaks['fma_fp32'] / peaks['bandwidth']:.1f} FLOP/byte")
    return lines
