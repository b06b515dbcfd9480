"""Roofline benchmark of largeconv: every op x backend x shape x dtype x direction against PyTorch, on one device.

    python bench/roofline.py                          # "cpu-default" on CPU, "gpu" suite on a GPU
    python bench/roofline.py --suite replknet31b,rednet50 --dtypes fp32,bf16 --out bench/out
    python bench/roofline.py --compare OTHER.csv      # per-case ratios of OTHER.csv against OUT/results.csv

It measures the device's peaks (bench/peaks.py), times each case with warm-up, synchronisation and the median of
many repeats while rotating among several random input sets, and writes OUT/results.csv (one row per measurement),
results.md, roofline.png, speedup_vs_kernel.png (when a suite has a kernel-size sweep), peaks.json and
environment.txt. Backends:
  torch          PyTorch eager, called directly: F.conv2d on NCHW (dwconv), the unfold reference (involution)
  torch_cl       dwconv only: F.conv2d with input and weight in channels_last
  torch_compile  involution only: torch.compile of the unfold reference
  cpu, triton, cuda, auto   largeconv.dwconv2d / involution2d with backend=...
  cpu_cl, triton_cl, cuda_cl, auto_cl   the same on channels_last inputs (not in the default --backends)
Peak memory is the most memory allocated during one call beyond what existed before it: on GPU
torch.cuda.max_memory_allocated() minus memory_allocated() before; on CPU the running sum of the allocations and
frees the torch profiler records (profile_memory=True) during the call, i.e. the same quantity for the CPU allocator.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import itertools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # keep the CPU profiler (peak memory) quiet

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.append(str(ROOT))  # `bench` from the source tree; an installed largeconv still wins

from bench import counts, peaks as peaks_mod, suites  # noqa: E402
from bench.rows import num, read_csv  # noqa: E402,F401  (read_csv: for users of this module)
import largeconv  # noqa: E402
from largeconv import dispatch  # noqa: E402
from largeconv.reference import involution2d_reference  # noqa: E402

# "fp32" is exact fp32 for every backend and baseline (TF32 off); "tf32" the same data with TF32 allowed for convs
# (torch.backends.cudnn.allow_tf32), as PyTorch's default on GPUs leaves it
DTYPES = {"fp32": torch.float32, "tf32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
          "fp64": torch.float64}
BASELINES = {"dwconv2d": ("torch", "torch_cl"), "involution2d": ("torch", "torch_compile")}
LARGECONV_BACKENDS = ("cpu", "triton", "cuda", "auto")
ALL_BACKENDS = ("torch", "torch_cl", "torch_compile") + LARGECONV_BACKENDS
CHANNELS_LAST_BACKENDS = tuple(f"{name}_cl" for name in LARGECONV_BACKENDS)  # largeconv's, on channels_last inputs


def channels_last(backend):
    return backend == "torch_cl" or backend in CHANNELS_LAST_BACKENDS


def largeconv_backend(backend):
    """The largeconv backend a benchmark backend name runs ("cuda_cl" -> "cuda"), or None for PyTorch's."""
    name = backend.removesuffix("_cl") if backend in CHANNELS_LAST_BACKENDS else backend
    return name if name in LARGECONV_BACKENDS else None

COLUMNS = [
    "date", "device", "device_type", "torch_version", "triton_version", "largeconv_version", "threads", "loadavg",
    "background_cpu", "suite", "case", "op", "backend", "dtype", "direction", "layout",
    "n", "c", "h", "w", "kh", "kw", "stride", "dilation", "groups", "out_h", "out_w",
    "status", "reason", "time_ms", "repeats", "input_sets", "attempts",
    "flops", "flops_dense", "min_bytes", "ai", "gflops", "gbs",
    "peak_fma_gflops", "peak_bw_gbs", "roof_gflops", "roof_bound", "roof_fraction",
    "speedup_vs_torch", "speedup_vs_torch_cl", "speedup_vs_compile", "speedup_vs_best_torch",
    "peak_mem_mb", "mem_vs_torch", "rel_err", "check",
]


# ---- inputs and the functions under test ---------------------------------------------------------------------

def make_inputs(case, dtype, device, seed):
    """One random input set: x, the op's weight and a grad_out (never zeros)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    kh, kw = case.kernel
    ho_wo = output_hw(case)
    randn = lambda *shape: torch.randn(shape, generator=gen, device=device)  # noqa: E731
    x = randn(*case.shape)
    if case.op == "dwconv2d":
        weight = randn(case.c, 1, kh, kw) / (kh * kw) ** 0.5
    else:
        weight = randn(case.n, case.groups * kh * kw, *ho_wo) / kh
    grad = randn(case.n, case.c, *ho_wo)
    return {k: v.to(dtype=dtype) for k, v in dict(x=x, weight=weight, grad=grad).items()}


class InputSets:
    """Random input sets of one case and dtype, made on first use and kept for every backend."""

    def __init__(self, case, dtype, device):
        self.case, self.dtype, self.device, self.made = case, dtype, device, {}

    def __getitem__(self, i):
        if i not in self.made:
            self.made[i] = make_inputs(self.case, self.dtype, self.device, seed=1000 + i)
        return self.made[i]


def output_hw(case):
    (kh, kw), (ph, pw) = case.kernel, case.padding
    return (counts.out_size(case.h, kh, case.stride, ph, ph, case.dilation),
            counts.out_size(case.w, kw, case.stride, pw, pw, case.dilation))


def case_counts(case, dtype, direction):
    itemsize = torch.empty((), dtype=dtype).element_size()
    if case.op == "dwconv2d":
        return counts.dwconv2d_counts(case.n, case.c, case.h, case.w, case.kernel, case.stride, case.padding,
                                      case.dilation, itemsize=itemsize, direction=direction)
    return counts.involution2d_counts(case.n, case.c, case.h, case.w, case.kernel[0], case.groups, case.stride,
                                      case.padding[0], case.dilation, itemsize=itemsize, direction=direction)


def op_function(case, backend, compile_cache):
    """fn(x, weight) for this backend, or raise an exception whose message says why it cannot run."""
    stride, padding, dilation = case.stride, case.padding, case.dilation
    if case.op == "dwconv2d":
        if backend in ("torch", "torch_cl"):
            return lambda x, w: F.conv2d(x, w, None, stride, padding, dilation, groups=x.shape[1])
        return lambda x, w: largeconv.dwconv2d(x, w, None, stride, padding, dilation,
                                               backend=largeconv_backend(backend))
    k = case.kernel[0]
    if backend in ("torch", "torch_compile"):
        fn = lambda x, w: involution2d_reference(x, w, k, stride, padding[0], dilation)  # noqa: E731
        if backend == "torch_compile":
            if "fn" not in compile_cache:
                for name in ("cache_size_limit", "recompile_limit"):  # one compile per shape and direction
                    if hasattr(torch._dynamo.config, name):
                        setattr(torch._dynamo.config, name, max(getattr(torch._dynamo.config, name), 256))
                compile_cache["fn"] = torch.compile(involution2d_reference, dynamic=False)
            compiled = compile_cache["fn"]
            fn = lambda x, w: compiled(x, w, k, stride, padding[0], dilation)  # noqa: E731
        return fn
    return lambda x, w: largeconv.involution2d(x, w, k, stride, padding[0], dilation,
                                               backend=largeconv_backend(backend))


def skip_reason(case, backend, device, args):
    """Why `backend` is not measured on this case, or None."""
    if backend == "torch_cl" and case.op != "dwconv2d":
        return "not applicable"
    if backend == "torch_compile" and case.op != "involution2d":
        return "not applicable"
    if backend == "torch_compile" and not args.compile:
        return ("torch.compile baseline off (default on CPU: inductor builds C++ per shape, ~30 s each); "
                "pass --compile")
    name = largeconv_backend(backend)
    if name == "triton" and device.type == "cpu":
        return ("Triton on CPU tensors runs only under TRITON_INTERPRET=1, an interpreter for tests, not a "
                "performance path")
    if name == "cuda" and device.type != "cuda":
        return "the CUDA extension needs CUDA tensors"
    if name not in (None, "auto"):
        x = torch.empty(case.shape, device=device)
        return dispatch.unsupported_reason(name, case.op, x, case.kernel)
    return None


def first_line(error):
    text = str(error).strip().splitlines()
    return text[0][:200] if text else type(error).__name__


# ---- timing ---------------------------------------------------------------------------------------------------

def prepare(direction, fn, inputs, backend):
    """An argument-free callable running `direction` once on one input set (bwd: its forward is run here)."""
    x, w, g = inputs["x"], inputs["weight"], inputs["grad"]
    if channels_last(backend):
        x, w, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, w, g))
    if direction == "fwd":
        def call():
            with torch.no_grad():
                return fn(x, w)
        return call
    x, w = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    if direction == "bwd":
        out = fn(x, w)
        return lambda: torch.autograd.grad(out, (x, w), g, retain_graph=True)

    def call():
        out = fn(x, w)
        return out, torch.autograd.grad(out, (x, w), g)
    return call


class OtherWork:
    """CPU cores used by other processes since construction: machine busy time (/proc/stat) minus this process's
    own CPU time, over the wall time. NaN where /proc/stat is missing (not Linux)."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                fields = [int(v) for v in f.readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
        own = sum(os.times()[:2])  # user + system of this process, all threads
        return time.perf_counter(), busy, own

    def cores(self):
        end = self._sample()
        if self.start is None or end is None or end[0] - self.start[0] < 0.05:
            return float("nan")
        wall, busy, own = (b - a for a, b in zip(self.start, end))
        return max(0.0, (busy - own) / wall)


def wait_until_quiet(max_wait, cores=0.25, window=1.0):
    """Wait (at most max_wait s) until other processes use less than `cores` CPU cores; return the last reading."""
    deadline = time.time() + max_wait
    while True:
        monitor = OtherWork()
        time.sleep(window)
        busy = monitor.cores()
        if not busy > cores or time.time() >= deadline:  # NaN (not Linux) counts as quiet
            return busy


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(prepare_set, n_sets, device, min_time, min_reps=3, max_reps=100, warmup_s=0.1):
    """(median seconds, repeats, sets used, cores used by other processes meanwhile (CPU; NaN on GPU)).

    prepare_set(i) returns a callable running one call on input set i. Warm-up on set 0 (compiles, autotunes,
    lets "auto" measure; on CPU for >= warmup_s), then rotate among the sets. On CPU only as many sets are prepared as there
    will be repeats (a slow baseline needs few), each with its own graph for bwd.
    """
    calls = [prepare_set(0)]
    calls[0]()
    synchronize(device)
    warm_start = time.perf_counter()
    while True:  # at least one more call, and on CPU >= warmup_s in all (clocks ramp up after idle waits)
        t = time.perf_counter()
        calls[0]()
        synchronize(device)
        first = time.perf_counter() - t
        if device.type == "cuda" or time.perf_counter() - warm_start >= warmup_s:
            break
    if device.type == "cuda":
        import triton.testing
        calls += [prepare_set(i) for i in range(1, n_sets)]
        counter = itertools.count()
        rotate = lambda: calls[next(counter) % len(calls)]()  # noqa: E731
        ms = triton.testing.do_bench(rotate, warmup=10, rep=max(20, int(min_time * 1000)), return_mode="median")
        return ms / 1e3, next(counter), len(calls), float("nan")
    planned = int(min(max_reps, max(min_reps, min_time / max(first, 1e-9))))
    calls += [prepare_set(i) for i in range(1, min(n_sets, planned))]
    times = []
    monitor = OtherWork()
    start = time.perf_counter()
    while len(times) < max_reps and (len(times) < min_reps or time.perf_counter() - start < min_time):
        t = time.perf_counter()
        calls[len(times) % len(calls)]()
        times.append(time.perf_counter() - t)
    return statistics.median(times), len(times), len(calls), monitor.cores()


def peak_memory_mb(call, device):
    """Most memory allocated during one call beyond what was allocated before it, in MB (see module doc)."""
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        result = call()
        synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) - before
        del result
        return peak / 1e6
    from torch.profiler import ProfilerActivity, profile
    try:
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            result = call()
            del result
        events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    except Exception:  # the profiler's internals moved: leave the column empty rather than fail the run
        return float("nan")
    current = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        current += event.nbytes()
        peak = max(peak, current)
    return peak / 1e6


def input_set_count(case, dtype, device, args):
    """Enough sets that one rotation overflows the last-level cache, within the memory budget."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    ho, wo = output_hw(case)
    w_elems = case.c * case.kernel[0] * case.kernel[1] if case.op == "dwconv2d" else \
        case.n * case.groups * case.kernel[0] * case.kernel[1] * ho * wo
    set_bytes = 2 * itemsize * (case.n * case.c * case.h * case.w + w_elems + 2 * case.n * case.c * ho * wo)
    n_sets = min(args.max_sets, max(2, math.ceil(4 * last_level_cache(device) / set_bytes)))
    while n_sets > 1 and n_sets * set_bytes > args.max_mem_gb * 1e9 / 4:
        n_sets -= 1
    return n_sets, set_bytes


def workspace_bytes(case, dtype, backend):
    """Rough extra memory of the slowest backend (the unfold reference keeps K*K-times copies of x)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    ho, wo = output_hw(case)
    if case.op == "involution2d" and backend in ("torch", "torch_compile"):
        return 4 * case.n * case.c * case.kernel[0] * case.kernel[1] * ho * wo * itemsize
    return 4 * case.n * case.c * case.h * case.w * itemsize


_LLC = {}


def last_level_cache(device):
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).L2_cache_size
    if "cpu" not in _LLC:
        size = 32 << 20
        for index in (3, 2):
            try:
                text = Path(f"/sys/devices/system/cpu/cpu0/cache/index{index}/size").read_text().strip()
                size = int(text.rstrip("KMG")) << {"K": 10, "M": 20, "G": 30}.get(text[-1], 0)
                break
            except (OSError, ValueError):
                continue
        _LLC["cpu"] = size
    return _LLC["cpu"]


# ---- the run --------------------------------------------------------------------------------------------------

def environment(device, args):
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = ""
    largeconv_version = largeconv.__version__
    return dict(date=datetime.datetime.now().isoformat(timespec="seconds"), device=peaks_mod.device_name(device),
                device_type=device.type, torch_version=torch.__version__, triton_version=triton_version,
                largeconv_version=largeconv_version, threads=torch.get_num_threads(), suite=args.suite)


def reference_output(case, inputs, device):
    """Forward in fp32 through PyTorch (channels_last for dwconv: oneDNN/cuDNN are fast there), TF32 off."""
    x, w = inputs["x"].float(), inputs["weight"].float()
    with torch.no_grad(), conv_tf32(False):
        if case.op == "dwconv2d":
            x, w = x.contiguous(memory_format=torch.channels_last), w.contiguous(memory_format=torch.channels_last)
            return F.conv2d(x, w, None, case.stride, case.padding, case.dilation, groups=case.c).contiguous()
        return involution2d_reference(x, w, case.kernel[0], case.stride, case.padding[0], case.dilation)


@contextlib.contextmanager
def conv_tf32(on):
    """TF32 for fp32 convs on (the "tf32" rows) or off (every other row), restored afterwards. The legacy flag:
    largeconv reads it back through the per-op API (arguments.cudnn_conv_allows_tf32)."""
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


def tolerance(dtype, device):
    if dtype == torch.float32:
        return 5e-3 if device.type == "cuda" else 1e-4  # TF32 may be on for convs on GPU
    if dtype == torch.float64:
        return 1e-10
    return 3e-2


def run_benchmark(cases, args, device, peaks, progress=True, env=None):
    """All measurements as a list of row dicts (COLUMNS), speedups filled in."""
    from tqdm import tqdm

    env = env or environment(device, args)
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    directions = [d.strip() for d in args.directions.split(",")]
    backends = [b.strip() for b in args.backends.split(",")]
    plan = [(case, dtype, backend) for case in cases for dtype in dtypes for backend in backends
            if backend not in ("torch_cl", "torch_compile") or backend in BASELINES[case.op]]
    rows, compile_cache = [], {}
    bar = tqdm(total=len(plan) * len(directions), disable=not progress, unit="meas", dynamic_ncols=True)
    current = None
    for case, dtype_name, backend in plan:
        dtype = DTYPES[dtype_name]
        if current != (case.name, dtype_name):  # new inputs per case and dtype, shared by every backend
            current, sets, reference = (case.name, dtype_name), None, None
        n_sets, set_bytes = input_set_count(case, dtype, device, args)
        reason = skip_reason(case, backend, device, args)
        needed = n_sets * set_bytes + workspace_bytes(case, dtype, backend)
        if reason is None and needed > args.max_mem_gb * 1e9:
            reason = f"needs ~{needed / 1e9:.1f} GB, over --max-mem-gb {args.max_mem_gb:g}"
        rel_err, check = float("nan"), ""
        with conv_tf32(dtype_name == "tf32"):  # every backend and baseline of the row alike
            for direction in directions:
                bar.set_postfix_str(f"{case.name} {backend} {dtype_name} {direction}", refresh=False)
                row = dict(env, case=case.name, op=case.op, backend=backend, dtype=dtype_name, direction=direction,
                           layout="channels_last" if channels_last(backend) else "nchw",
                           n=case.n, c=case.c, h=case.h, w=case.w, kh=case.kernel[0], kw=case.kernel[1],
                           stride=case.stride, dilation=case.dilation, groups=case.groups,
                           loadavg=f"{os.getloadavg()[0]:.2f}", input_sets=n_sets,
                           peak_fma_gflops=peaks["fma_fp32"], peak_bw_gbs=peaks["bandwidth"])
                c = case_counts(case, dtype, direction)
                row.update(out_h=c["out_h"], out_w=c["out_w"], flops=c["flops"], flops_dense=c["flops_dense"],
                           min_bytes=c["min_bytes"], ai=c["flops"] / c["min_bytes"])
                if reason is not None:
                    row.update(status="skipped", reason=reason)
                else:
                    try:
                        if sets is None:
                            sets = InputSets(case, dtype, device)
                        fn = op_function(case, backend, compile_cache)
                        if check == "":
                            if reference is None:
                                reference = reference_output(case, sets[0], device)
                            out = prepare("fwd", fn, sets[0], backend)().float().contiguous()
                            rel_err = ((out - reference).norm() / reference.norm()).item()
                            check = "ok" if rel_err <= tolerance(dtype, device) else "FAIL"
                            del out
                        for attempt in range(1 + args.retries):  # re-measure when other work disturbed the timing
                            seconds, repeats, used, others = time_calls(
                                lambda i: prepare(direction, fn, sets[i], backend), n_sets, device, args.min_time,
                                args.min_reps)
                            if not others > 2 * args.quiet_cores:
                                break
                            if args.wait_quiet > 0:  # no idle wait before a measurement: clocks would drop
                                wait_until_quiet(args.wait_quiet, args.quiet_cores)
                        mem = peak_memory_mb(prepare(direction, fn, sets[0], backend), device) if args.memory \
                            else float("nan")
                        fill_measurement(row, seconds, repeats, peaks)
                        row.update(status="ok", reason="", peak_mem_mb=mem, input_sets=used, background_cpu=others,
                                   attempts=attempt + 1)
                    except Exception as error:  # record and go on: one broken backend must not stop the run
                        row.update(status="error", reason=f"{type(error).__name__}: {first_line(error)}")
                        if device.type == "cuda":
                            torch.cuda.empty_cache()
                row.update(rel_err=rel_err, check=check)
                rows.append(row)
                bar.update(1)
    bar.close()
    add_speedups(rows)
    return rows


def fill_measurement(row, seconds, repeats, peaks):
    roof_flops, bound = counts.roof(row["ai"], peaks["fma_fp32"] * 1e9, peaks["bandwidth"] * 1e9)
    achieved = row["flops"] / seconds
    row.update(time_ms=seconds * 1e3, repeats=repeats, gflops=achieved / 1e9, gbs=row["min_bytes"] / seconds / 1e9,
               roof_gflops=roof_flops / 1e9, roof_bound=bound, roof_fraction=achieved / roof_flops)


def add_speedups(rows):
    """Speedups and memory ratios against the PyTorch baselines measured on the same case, dtype and direction
    (rows may come from a CSV: values are read with num())."""
    groups = {}
    for row in rows:
        if row["status"] == "ok":
            groups.setdefault((row["case"], row["dtype"], row["direction"]), {})[row["backend"]] = row
    for group in groups.values():
        base = {name: num(group[name]["time_ms"]) for name in ALL_BACKENDS[:3] if name in group}
        torch_mem = num(group["torch"].get("peak_mem_mb")) if "torch" in group else float("nan")
        for row in group.values():
            t = num(row["time_ms"])
            for name, column in (("torch", "speedup_vs_torch"), ("torch_cl", "speedup_vs_torch_cl"),
                                 ("torch_compile", "speedup_vs_compile")):
                row[column] = base[name] / t if name in base else float("nan")
            row["speedup_vs_best_torch"] = min(base.values()) / t if base else float("nan")
            mem = num(row.get("peak_mem_mb"))
            row["mem_vs_torch"] = mem / torch_mem if torch_mem > 0 else float("nan")


# ---- outputs --------------------------------------------------------------------------------------------------

def write_csv(rows, path):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: fmt_csv(row.get(k, "")) for k in COLUMNS})


def fmt_csv(value):
    if isinstance(value, float):
        return "" if value != value else f"{value:.6g}"
    return value


def fmt(value, spec):
    value = num(value)
    return "" if value != value else format(value, spec)


def write_markdown(rows, peaks, path, env_lines):
    lines = ["# largeconv roofline benchmark", ""] + [f"- {line}" for line in env_lines] + ["", "## Measured peaks", ""]
    lines += [f"- {line}" for line in peaks_mod.format_peaks(peaks)]
    lines += [f"- bandwidth: {peaks['bandwidth_method']}", f"- FMA roof: {peaks['fma_method']}", ""]
    lines += ["Roof for both ops: min(fma_fp32, AI x bandwidth), AI = useful FLOPs / minimum bytes "
              "(bench/counts.py). `x torch`: speedup over PyTorch eager NCHW (dwconv) or the unfold reference "
              "(involution); `x best torch`: over the fastest PyTorch baseline measured.", ""]
    lines += ["## Overview", ""] + overview_lines(rows) + ["## Every measurement", ""]
    ok = [r for r in rows if r["status"] == "ok"]
    for op in ("dwconv2d", "involution2d"):
        for direction in counts.DIRECTIONS:
            for dtype in DTYPES:
                sel = [r for r in ok if r["op"] == op and r["direction"] == direction and r["dtype"] == dtype]
                if not sel:
                    continue
                lines += [f"### {op} {direction} {dtype}", "",
                          "| case | shape | backend | ms | GFLOP/s | GB/s | AI | % roof | x torch | x best torch | "
                          "peak MB | x torch mem | check |",
                          "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
                for r in sel:
                    lines.append(
                        f"| {r['case']} | {shape_text(r)} | {r['backend']} | {fmt(r['time_ms'], '.3f')} | "
                        f"{fmt(r['gflops'], '.1f')} | {fmt(r['gbs'], '.1f')} | {fmt(r['ai'], '.1f')} | "
                        f"{fmt(100 * num(r['roof_fraction']), '.1f')} | {fmt(r.get('speedup_vs_torch'), '.2f')} | "
                        f"{fmt(r.get('speedup_vs_best_torch'), '.2f')} | {fmt(r.get('peak_mem_mb'), '.1f')} | "
                        f"{fmt(r.get('mem_vs_torch'), '.3f')} | {r.get('check', '')} |")
                lines.append("")
    lines += ["## Summary", "", "```"] + summary_lines(rows) + ["```", ""]
    skipped = {}
    for r in rows:
        if r["status"] != "ok" and r["reason"] != "not applicable":
            key = (r["status"], r["op"], r["backend"], r["reason"])
            skipped[key] = skipped.get(key, 0) + 1
    if skipped:
        lines += ["## Not measured", "", "| status | op | backend | reason | rows |",
                  "| --- | --- | --- | --- | ---: |"]
        lines += [f"| {s} | {op} | {b} | {reason} | {n} |" for (s, op, b, reason), n in sorted(skipped.items())]
        lines.append("")
    Path(path).write_text("\n".join(lines))


def overview_lines(rows, backend="auto"):
    """One compact table per op and dtype: PyTorch baselines against `backend`, every direction side by side."""
    ok = {(r["case"], r["dtype"], r["direction"], r["backend"]): r for r in rows if r["status"] == "ok"}
    lines = []
    for op in ("dwconv2d", "involution2d"):
        other = "torch_cl" if op == "dwconv2d" else "torch_compile"
        for dtype in DTYPES:
            cases = list(dict.fromkeys(r["case"] for r in rows if r["op"] == op and r["dtype"] == dtype and
                                       (r["case"], dtype, r["direction"], backend) in ok))
            if not cases:
                continue
            lines += [f"**{op} {dtype}**: ms of PyTorch (`torch`, `{other}`) and of largeconv `{backend}`; "
                      f"x = speedup of `{backend}` over `torch` (over the best PyTorch); % of the attainable roof", "",
                      "| case | shape | dir | torch ms | " + other + " ms | " + backend + " ms | x torch (x best) | "
                      "% roof | mem / torch |", "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
            for case in cases:
                for direction in counts.DIRECTIONS:
                    r = ok.get((case, dtype, direction, backend))
                    if r is None:
                        continue
                    t = ok.get((case, dtype, direction, "torch"), {}).get("time_ms")
                    o = ok.get((case, dtype, direction, other), {}).get("time_ms")
                    lines.append(f"| {case} | {shape_text(r)} | {direction} | {fmt(t, '.2f')} | {fmt(o, '.2f')} | "
                                 f"{fmt(r['time_ms'], '.2f')} | {fmt(r.get('speedup_vs_torch'), '.2f')} "
                                 f"({fmt(r.get('speedup_vs_best_torch'), '.2f')}) | "
                                 f"{fmt(100 * num(r['roof_fraction']), '.1f')} | {fmt(r.get('mem_vs_torch'), '.2f')} |")
            lines.append("")
    return lines


def shape_text(r):
    text = f"({r['n']},{r['c']},{r['h']}x{r['w']}) K{r['kh']}x{r['kw']}"
    if str(r["stride"]) != "1":
        text += f" s{r['stride']}"
    if r["op"] == "involution2d":
        text += f" G{r['groups']}"
    return text


def geomean(values):
    values = [v for v in values if v == v and v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else float("nan")


def summary_lines(rows):
    """Per op, direction, dtype, backend: cases, geomean/min speedup over torch and best torch, median % roof."""
    groups = {}
    for r in rows:
        if r["status"] == "ok":
            groups.setdefault((r["op"], r["direction"], r["dtype"], r["backend"]), []).append(r)
    header = f"{'op':<13} {'dir':<7} {'dtype':<5} {'backend':<14} {'cases':>5} {'x torch':>8} {'min':>6} " \
             f"{'x best':>7} {'min':>6} {'%roof':>6} {'x mem':>7}"
    lines = [header]
    for (op, direction, dtype, backend), sel in groups.items():
        sp = [num(r.get("speedup_vs_torch")) for r in sel]
        best = [num(r.get("speedup_vs_best_torch")) for r in sel]
        mem = [num(r.get("mem_vs_torch")) for r in sel]
        fr = [100 * num(r["roof_fraction"]) for r in sel]
        lines.append(f"{op:<13} {direction:<7} {dtype:<5} {backend:<14} {len(sel):>5} {geomean(sp):>8.2f} "
                     f"{min(sp):>6.2f} {geomean(best):>7.2f} {min(best):>6.2f} {statistics.median(fr):>6.1f} "
                     f"{geomean(mem):>7.3f}")
    n_skip = sum(r["status"] == "skipped" and r["reason"] != "not applicable" for r in rows)
    n_err = sum(r["status"] == "error" for r in rows)
    n_fail = sum(r.get("check") == "FAIL" and r["status"] == "ok" for r in rows)
    busy = [r for r in rows if r["status"] == "ok" and r.get("device_type") == "cpu" and
            num(r.get("background_cpu")) > 0.5]
    if busy:
        lines.append(f"warning: {len(busy)} CPU rows were timed while other processes used > 0.5 cores "
                     "(column background_cpu)")
    targets = target_lines(rows)
    if targets:
        lines += ["", "design targets, backend auto:"] + targets
    lines.append(f"skipped: {n_skip}  errors: {n_err}  failed correctness checks: {n_fail}  (details in results.md)")
    return lines


def _kmax(r):
    return max(int(r["kh"]), int(r["kw"]))


# (device type, description, which rows, column, ">=" or "<=", threshold): the design's targets, checked on "auto"
TARGETS = [
    ("cuda", "DW fwd+bwd RepLKNet-31B K>=27: x torch NCHW >= 10", lambda r: r["op"] == "dwconv2d" and
     r["case"].startswith("replknet31b") and _kmax(r) >= 27 and r["direction"] == "fwdbwd",
     "speedup_vs_torch", ">=", 10.0),
    ("cuda", "DW fwd+bwd RepLKNet-31B K>=27: x best of torch NCHW/CL >= 3", lambda r: r["op"] == "dwconv2d" and
     r["case"].startswith("replknet31b") and _kmax(r) >= 27 and r["direction"] == "fwdbwd",
     "speedup_vs_best_torch", ">=", 3.0),
    ("cuda", "DW fwd K>=13 fp32: fraction of the attainable roof >= 0.6", lambda r: r["op"] == "dwconv2d" and
     _kmax(r) >= 13 and r["direction"] == "fwd" and r["dtype"] == "fp32", "roof_fraction", ">=", 0.6),
    ("cuda", "Table 1 sweep and weak spots: x best torch >= 1.0", lambda r: r["op"] == "dwconv2d" and
     (r["case"].startswith("table1") or r["case"].startswith("weak")), "speedup_vs_best_torch", ">=", 1.0),
    ("cuda", "involution fwd+bwd RedNet-50: x unfold reference >= 10", lambda r: r["op"] == "involution2d" and
     r["direction"] == "fwdbwd", "speedup_vs_torch", ">=", 10.0),
    ("cuda", "involution fwd+bwd RedNet-50: x torch.compile >= 2", lambda r: r["op"] == "involution2d" and
     r["direction"] == "fwdbwd", "speedup_vs_compile", ">=", 2.0),
    ("cuda", "involution fwd+bwd RedNet-50: fraction of the HBM roof >= 0.7", lambda r: r["op"] == "involution2d"
     and r["direction"] == "fwdbwd", "roof_fraction", ">=", 0.7),
    ("cuda", "involution fwd+bwd RedNet-50: peak memory / reference <= 0.1", lambda r: r["op"] == "involution2d"
     and r["direction"] == "fwdbwd", "mem_vs_torch", "<=", 0.1),
    ("cpu", "DW K=31: x torch NCHW >= 10 (each direction)", lambda r: r["op"] == "dwconv2d" and _kmax(r) == 31
     and min(int(r["kh"]), int(r["kw"])) == 31, "speedup_vs_torch", ">=", 10.0),
    ("cpu", "involution fwd+bwd: x unfold reference >= 5", lambda r: r["op"] == "involution2d" and
     r["direction"] == "fwdbwd", "speedup_vs_torch", ">=", 5.0),
    ("cpu", "involution fwd+bwd: peak memory / reference <= 0.1", lambda r: r["op"] == "involution2d" and
     r["direction"] == "fwdbwd", "mem_vs_torch", "<=", 0.1),
]


def target_lines(rows, backend="auto"):
    """The design's targets for this device type: worst measured case of `backend` against each threshold."""
    lines = []
    for device_type, text, which, column, sense, threshold in TARGETS:
        sel = [r for r in rows if r["status"] == "ok" and r["backend"] == backend and
               r["device_type"] == device_type and which(r) and num(r.get(column)) == num(r.get(column))]
        if not sel:
            continue
        pick = min if sense == ">=" else max
        worst = pick(sel, key=lambda r: num(r[column]))
        value = num(worst[column])
        ok = value >= threshold if sense == ">=" else value <= threshold
        lines.append(f"{'PASS' if ok else 'FAIL'}  {text}: worst {value:.3g} "
                     f"({worst['case']} {worst['dtype']} {worst['direction']}; {len(sel)} rows)")
    return lines


BACKEND_COLORS = {"torch": "tab:gray", "torch_cl": "tab:brown", "torch_compile": "tab:olive", "cpu": "tab:blue",
                  "triton": "tab:orange", "cuda": "tab:green", "auto": "tab:red"}


def plot_roofline(rows, peaks, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["status"] == "ok"]
    directions = [d for d in counts.DIRECTIONS if any(r["direction"] == d for r in ok)] or ["fwd"]
    fig, axes = plt.subplots(1, len(directions), figsize=(6.5 * len(directions), 5.5), squeeze=False)
    bw, fma = peaks["bandwidth"], peaks["fma_fp32"]
    ais = [num(r["ai"]) for r in ok] or [1.0]
    lo, hi = min(min(ais) / 2, 0.5 * fma / bw), max(max(ais) * 2, 4 * fma / bw)
    sheet = peaks_mod.datasheet_for(peaks["device"])
    for ax, direction in zip(axes[0], directions):
        xs = [lo * (hi / lo) ** (i / 200) for i in range(201)]
        ax.plot(xs, [min(fma, x * bw) for x in xs], color="black", lw=2,
                label=f"measured: {bw:,.0f} GB/s, FMA fp32 {fma:,.0f} GFLOP/s")
        ax.plot([fma / bw], [fma], "ko")
        ax.annotate(f"ridge {fma / bw:.1f} FLOP/B", (fma / bw, fma), textcoords="offset points", xytext=(5, -12),
                    fontsize=7)
        for key, style in (("matmul_fp32", ":"), ("matmul_tf32", ":"), ("matmul_bf16", "-."), ("matmul_fp16", "-.")):
            if key in peaks and peaks[key] > 1.05 * fma:
                ax.axhline(peaks[key], color="tab:purple", ls=style, lw=1)
                ax.annotate(f"{key} {peaks[key]:,.0f}", (lo, peaks[key]), fontsize=7, va="bottom")
        if sheet:
            label, fig_ = sheet
            ax.plot(xs, [min(fig_["fma_fp32"], x * fig_["bandwidth"]) for x in xs], color="gray", ls="--", lw=1,
                    label=f"datasheet {label}: {fig_['bandwidth']:,.0f} GB/s, fp32 {fig_['fma_fp32']:,.0f}")
            ax.axhline(fig_["matmul_bf16"], color="gray", ls="--", lw=0.8)
            ax.annotate(f"datasheet bf16 tensor {fig_['matmul_bf16']:,.0f}", (lo, fig_["matmul_bf16"]), fontsize=7,
                        va="bottom", color="gray")
        sel = [r for r in ok if r["direction"] == direction]
        for backend in BACKEND_COLORS:
            pts = [r for r in sel if r["backend"] == backend]
            for op, marker in (("dwconv2d", "o"), ("involution2d", "^")):
                p = [r for r in pts if r["op"] == op]
                if p:
                    ax.scatter([num(r["ai"]) for r in p], [num(r["gflops"]) for r in p], s=18, marker=marker,
                               color=BACKEND_COLORS[backend], alpha=0.8,
                               label=f"{backend} ({'dw' if op == 'dwconv2d' else 'inv'})" if direction ==
                               directions[0] else None)
        for case in dict.fromkeys((r["case"], r["dtype"]) for r in sel):  # label each case once: its best point
            pts = [r for r in sel if (r["case"], r["dtype"]) == case]
            best = max(pts, key=lambda r: num(r["gflops"]))
            ax.annotate(short_label(best), (num(best["ai"]), num(best["gflops"])), fontsize=5,
                        textcoords="offset points", xytext=(3, 2))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("arithmetic intensity (useful FLOPs / minimum bytes)")
        ax.set_ylabel("achieved GFLOP/s")
        ax.set_title(f"{direction}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=6, loc="lower right")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


def short_label(r):
    name = r["case"]
    for prefix in ("cpu-", "table1-", "weak-"):
        name = name.replace(prefix, "")
    return f"{name} {r['dtype']}" if r["dtype"] != "fp32" else name


def plot_speedup_vs_kernel(rows, cases, path, title):
    """Speedup over PyTorch NCHW eager against kernel size, one panel per sweep and direction."""
    sweep_of = {c.name: c.sweep for c in cases if c.sweep}
    ok = [r for r in rows if r["status"] == "ok" and r["case"] in sweep_of and r["backend"] != "torch"]
    sweeps = sorted(set(sweep_of[r["case"]] for r in ok))
    if not sweeps:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    directions = [d for d in counts.DIRECTIONS if any(r["direction"] == d for r in ok)]
    fig, axes = plt.subplots(len(sweeps), len(directions), figsize=(5 * len(directions), 3.6 * len(sweeps)),
                             squeeze=False)
    for i, sweep in enumerate(sweeps):
        for j, direction in enumerate(directions):
            ax = axes[i][j]
            sel = [r for r in ok if sweep_of[r["case"]] == sweep and r["direction"] == direction]
            for (backend, dtype) in dict.fromkeys((r["backend"], r["dtype"]) for r in sel):
                pts = sorted((int(r["kh"]), num(r.get("speedup_vs_torch"))) for r in sel
                             if r["backend"] == backend and r["dtype"] == dtype)
                ax.plot([k for k, _ in pts], [s for _, s in pts], marker="o", ms=3,
                        color=BACKEND_COLORS.get(backend), ls="-" if dtype == "fp32" else "--",
                        label=f"{backend} {dtype}")
            ax.axhline(1.0, color="black", lw=0.8)
            ax.set_yscale("log")
            ax.set_xlabel("kernel size K")
            ax.set_ylabel("speedup vs PyTorch NCHW eager")
            ax.set_title(f"{sweep} {direction}", fontsize=9)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return True


def environment_lines(env, args, load_before, load_after, seconds):
    lines = [f"device: {env['device']}", f"date: {env['date']}",
             f"torch {env['torch_version']}, triton {env['triton_version']}, largeconv {env['largeconv_version']}",
             f"threads: {env['threads']}, cores online: {os.cpu_count()}",
             f"load average (1 min) before / after: {load_before:.2f} / {load_after:.2f}",
             f"suite: {args.suite}; dtypes: {args.dtypes}; directions: {args.directions}; wall time {seconds:.0f} s",
             f"timing: median of >= {args.min_reps} repeats and >= {args.min_time:g} s per measurement"
             + f"; re-measured up to {args.retries} times when other work used > {2 * args.quiet_cores:g} cores "
             "during the timing (columns background_cpu, attempts)"
             + (f", after waiting up to {args.wait_quiet:g} s for < {args.quiet_cores:g} cores of other work"
                if args.wait_quiet > 0 else ""),
             f"python {platform.python_version()}, {platform.platform()}",
             f"largeconv tree: {git_state()}"]
    if env["device_type"] == "cpu":
        lines.append(cpu_description())
    if env["device_type"] == "cuda":
        lines.append(f"CUDA {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, "
                     f"cudnn.benchmark {torch.backends.cudnn.benchmark}")
    return lines


def git_state():
    """Commit of the source tree (read-only git query), '+ local changes' when the tree differs from it."""
    import subprocess
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                timeout=10)
        if commit.returncode != 0:
            return "no commit yet (working tree)"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + (" + local changes" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


def cpu_description():
    """CPU model, cores, last-level cache and the SIMD extensions that bound depthwise conv."""
    model, flags = platform.processor() or "cpu", set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile") if f in flags]
    llc = last_level_cache(torch.device("cpu")) >> 20
    return f"cpu: {model}, {os.cpu_count()} cores online, last-level cache {llc} MiB, SIMD: {' '.join(simd) or '?'}"


# ---- compare --------------------------------------------------------------------------------------------------

KEY = ("case", "op", "backend", "dtype", "direction")


def compare(path_a, path_b, out=print):
    """Per-case time ratios B/A of two results.csv files (speedup of B over A = A/B), then geomeans per backend."""
    a = {tuple(r[k] for k in KEY): r for r in read_csv(path_a) if r["status"] == "ok"}
    b = {tuple(r[k] for k in KEY): r for r in read_csv(path_b) if r["status"] == "ok"}
    common = [k for k in a if k in b]
    out(f"A = {path_a} ({next(iter(a.values()))['device'] if a else '?'})")
    out(f"B = {path_b} ({next(iter(b.values()))['device'] if b else '?'})")
    out(f"{'case':<28} {'backend':<13} {'dtype':<5} {'dir':<7} {'A ms':>10} {'B ms':>10} {'A/B':>7}")
    ratios = {}
    for k in common:
        ta, tb = num(a[k]["time_ms"]), num(b[k]["time_ms"])
        ratio = ta / tb
        ratios.setdefault((k[2], k[3], k[4]), []).append(ratio)
        out(f"{k[0]:<28} {k[2]:<13} {k[3]:<5} {k[4]:<7} {ta:>10.3f} {tb:>10.3f} {ratio:>7.2f}")
    out("geomean A/B (>1: B faster):")
    for (backend, dtype, direction), values in ratios.items():
        out(f"  {backend:<13} {dtype:<5} {direction:<7} {geomean(values):>7.2f}  ({len(values)} cases)")
    only = len(a) + len(b) - 2 * len(common)
    if only:
        out(f"{only} measurements appear in only one file")
    return ratios


# ---- main -----------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    gpu = torch.cuda.is_available()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--suite", default="gpu" if gpu else "cpu-default",
                   help=f"comma-separated suites: {', '.join(suites.SUITES)}")
    p.add_argument("--device", default="cuda" if gpu else "cpu")
    p.add_argument("--dtypes", default="fp32,bf16,fp16" if gpu else "fp32")
    p.add_argument("--directions", default="fwd,bwd,fwdbwd")
    p.add_argument("--backends", default=",".join(ALL_BACKENDS),
                   help="torch, torch_cl, torch_compile (baselines) and largeconv's cpu, triton, cuda, auto; "
                        "cpu_cl, triton_cl, cuda_cl, auto_cl: largeconv's on channels_last inputs")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=gpu,
                   help="measure torch.compile of the involution reference (default: on GPU only)")
    p.add_argument("--memory", action=argparse.BooleanOptionalAction, default=True, help="measure peak memory")
    p.add_argument("--min-time", type=float, default=0.05 if gpu else 0.25,
                   help="seconds of timed repeats per measurement (CPU: at least --min-reps repeats)")
    p.add_argument("--min-reps", type=int, default=3 if gpu else 5)
    p.add_argument("--max-sets", type=int, default=8, help="most input sets to rotate among")
    p.add_argument("--max-mem-gb", type=float, default=None,
                   help="skip cases needing more (default: 80%% of free GPU memory, 40%% of available RAM)")
    p.add_argument("--peaks", help="reuse peaks from this peaks.json instead of measuring")
    p.add_argument("--append", action="store_true",
                   help="merge into OUT/results.csv (replacing re-measured rows) and reuse OUT/peaks.json if there")
    p.add_argument("--out", default=str(ROOT / "bench" / "out"))
    p.add_argument("--compare", nargs="+", metavar="CSV",
                   help="compare CSV against OUT/results.csv (or two CSVs against each other) and exit")
    p.add_argument("--cases", help="only cases whose name contains one of these comma-separated strings")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="SECONDS",
                   help="CPU: before the peaks, and before re-measuring a disturbed measurement, wait up to SECONDS "
                        "until other processes use less than --quiet-cores cores (/proc/stat minus this process)")
    p.add_argument("--quiet-cores", type=float, default=0.25)
    p.add_argument("--retries", type=int, default=2,
                   help="CPU: re-measure up to this many times when other processes used more than "
                        "2 x --quiet-cores cores during the timing (column background_cpu: the last attempt's)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.max_mem_gb is None:
        args.max_mem_gb = default_memory_budget(torch.device(args.device))
    return args


def default_memory_budget(device):
    if device.type == "cuda":
        return 0.8 * torch.cuda.mem_get_info(device)[0] / 1e9
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return 0.4 * int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return 4.0


def main(argv=None):
    args = parse_args(argv)
    out = Path(args.out)
    if args.compare:
        paths = args.compare if len(args.compare) == 2 else [str(out / "results.csv"), args.compare[0]]
        compare(*paths)
        return 0
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # the PyTorch baselines at their best
    cases = suites.get_suite(args.suite)
    if args.cases:
        cases = [c for c in cases if any(part in c.name for part in args.cases.split(","))]
    load_before, start = os.getloadavg()[0], time.time()
    print(f"device: {peaks_mod.device_name(device)}; load average {load_before:.2f}; "
          f"{len(cases)} cases from suite {args.suite}", flush=True)
    if args.append and not args.peaks and (out / "peaks.json").exists():
        args.peaks = str(out / "peaks.json")
    if args.peaks:
        peaks = json.loads(Path(args.peaks).read_text())
        print(f"peaks from {args.peaks}")
    else:
        if args.wait_quiet > 0 and device.type == "cpu":
            busy = wait_until_quiet(args.wait_quiet, args.quiet_cores)
            print(f"waited for a quiet machine: other processes use {busy:.2f} cores")
        print("measuring peaks...", flush=True)
        peaks = peaks_mod.measure_peaks(device, tries=3 if device.type == "cpu" else 1)
    (out / "peaks.json").write_text(json.dumps(peaks, indent=1))
    for line in peaks_mod.format_peaks(peaks):
        print("  " + line)
    env = environment(device, args)
    rows = run_benchmark(cases, args, device, peaks, progress=not args.no_progress, env=env)
    if args.append and (out / "results.csv").exists():
        new = {tuple(str(r[k]) for k in KEY) for r in rows}
        rows = [r for r in read_csv(out / "results.csv") if tuple(r[k] for k in KEY) not in new] + rows
        add_speedups(rows)  # against baselines from either run
    seconds = time.time() - start
    env_lines = environment_lines(env, args, load_before, os.getloadavg()[0], seconds)
    if args.append and (out / "environment.txt").exists():  # keep the first run's description, log this one
        previous = (out / "environment.txt").read_text().split("\n\n")[0].splitlines()
        env_lines = previous + [f"appended {env['date']}: suite {args.suite}, cases {args.cases or 'all'}, backends "
                                f"{args.backends}, dtypes {args.dtypes}, directions {args.directions} ({seconds:.0f} s, "
                                f"load {load_before:.2f})"]
    write_csv(rows, out / "results.csv")
    write_markdown(rows, peaks, out / "results.md", env_lines)
    (out / "environment.txt").write_text("\n".join(env_lines + [""] + peaks_mod.format_peaks(peaks)) + "\n")
    title = f"{env_lines[0]} | {env_lines[1]} | {args.suite}"
    plot_roofline(rows, peaks, out / "roofline.png", title)
    known = [c for make in suites.SUITES.values() for c in make()]  # sweeps of appended rows too
    plotted = plot_speedup_vs_kernel(rows, known, out / "speedup_vs_kernel.png", title)
    print(f"\nwrote {out}/results.csv, results.md, roofline.png{', speedup_vs_kernel.png' if plotted else ''}, "
          "peaks.json, environment.txt\n")
    print("\n".join(summary_lines(rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
