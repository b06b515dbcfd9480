"""Python side of the GPU run kit (bench/gpu_check.sh runs one stage per process, each under its own `timeout`).

    python bench/gpu_kit.py STAGE --out DIR [--rehearse]

Stages: env, smoke, timings, sanitizer, auto, model, pytest, summary (`--backend triton|cuda` for smoke and
timings). Every stage appends its rows to DIR/results.csv (bench/roofline.py's columns) as soon as they are measured,
so a stage cut at its budget keeps what it measured; it ends with one row of suite "kit" that says what it did.
`--rehearse` runs the same code on CPU: tiny shapes, the Triton interpreter, GPU-only steps recorded as skipped.
Stdlib imports only at the top: the env stage may first have to make largeconv importable.
"""
from __future__ import annotations

import argparse
import csv
import fcntl
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for path in (str(ROOT), str(ROOT / "tests")):  # bench.* and tests/numerics.py from the source tree
    if path not in sys.path:
        sys.path.append(path)

SMOKE_DTYPES = ("fp32", "tf32", "fp16", "bf16", "fp64")
LAYOUTS = ("nchw", "channels_last")
DIRECTIONS = ("forward", "grad_input", "grad_weight")


# ---- shared helpers ---------------------------------------------------------------------------------------------

def append_rows(out, rows):
    """Append rows to out/results.csv now (a header first if the file is new); safe across worker processes."""
    from bench.roofline import COLUMNS, fmt_csv
    with open(Path(out) / "results.csv", "a", newline="") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        if f.seek(0, os.SEEK_END) == 0:
            writer.writeheader()
        for row in rows:
            writer.writerow({k: fmt_csv(row.get(k, "")) for k in COLUMNS})


def read_rows(out):
    from bench.rows import read_csv
    path = Path(out) / "results.csv"
    return read_csv(path) if path.exists() else []


FAILED = []  # statuses that make the stage's process exit 1


def kit_row(out, stage, status, note):
    """The stage's one-line account (suite "kit"), read back by the summary."""
    if status in ("FAIL", "error"):
        FAILED.append(status)
    append_rows(out, [dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), suite="kit", case=stage, status=status,
                           reason=note)])
    print(f"{stage}: {status}: {note}", flush=True)


def device_for(args):
    import torch
    return torch.device("cpu" if args.rehearse else "cuda")


def env_columns(device, suite):
    from bench import roofline
    return roofline.environment(device, argparse.Namespace(suite=suite))


def set_tf32(on):
    """TF32 for convolutions on or off. The legacy flag: the kernels read it back through the per-op API
    (kernels/dwconv.py), while setting the per-op API makes every later read of the legacy flag raise
    (bench/roofline.py reads it)."""
    import torch
    torch.backends.cudnn.allow_tf32 = on


def autotuners():
    """Every autotuned Triton kernel of the package (kernels/*.py)."""
    from triton.runtime.autotuner import Autotuner
    from largeconv.kernels import dwconv, involution
    return [obj for module in (dwconv, involution) for obj in vars(module).values() if isinstance(obj, Autotuner)] \
        + fused_autotuners()


def fused_autotuners():
    """The fused involution's autotuned kernels (kernels/involution_fused.py builds them into a dict at import, on a
    GPU only; its grad-span kernel has one config and no autotuner)."""
    from largeconv.kernels import involution_fused
    return list(involution_fused._AUTOTUNED.values())


def save_autotune_picks(out):
    """OUT/autotune.json: the tile config each autotuned kernel picked, per autotune key, rewritten after every timed
    case (a stage cut at its budget keeps what it had), so a timed row can be set beside the static model's
    prediction for the config that ran (bench/static_gpu.py predicts the best candidate; the GPU may pick another)."""
    picks = {}
    for tuner in autotuners():
        for key, config in getattr(tuner, "cache", {}).items():
            picks.setdefault(tuner.fn.__name__, []).append({"key": [str(k) for k in key], "config": str(config)})
    path = Path(out) / "autotune.json"
    path.with_suffix(".tmp").write_text(json.dumps(picks, indent=1))
    path.with_suffix(".tmp").replace(path)  # whole or not at all, if the stage is killed while writing


def restrict_autotune(index, count):
    """Keep configs[index::count] of every autotuned kernel (one config when count >= the number of configs), so
    compile time is bounded and parallel workers compile disjoint configs into the shared Triton cache."""
    for tuner in autotuners():
        configs = tuner.configs[index % len(tuner.configs)::count] or [tuner.configs[index % len(tuner.configs)]]
        tuner.configs = configs


def quick_autotune(warmup_ms=5, rep_ms=20):
    """Time each autotune candidate for ~25 ms whatever the Triton version's default (older ones: 25 + 100 ms): the
    involution kernels have up to 15 candidates per direction and shape, and the choice only needs to separate
    configs, not time them finely."""
    import triton.testing

    def bench(kernel_call, quantiles):
        return triton.testing.do_bench(kernel_call, warmup=warmup_ms, rep=rep_ms, quantiles=quantiles)
    for tuner in autotuners():
        tuner._do_bench = bench  # read through a property in triton 3.x
        if not isinstance(getattr(type(tuner), "do_bench", None), property):
            tuner.__dict__["do_bench"] = bench  # a cached_property or a plain attribute in other versions


def in_workers(function, tasks, workers):
    """function(task) for every task, in `workers` spawned processes (one CUDA context and one compiler each)."""
    if workers <= 1:
        return [function(task) for task in tasks]
    import multiprocessing
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(function, tasks, chunksize=1)


def cores():
    return len(os.sched_getaffinity(0))


def stage_deadline(default_s):
    """When the stage's budget (GPU_KIT_STAGE_BUDGET, from bench/gpu_check.sh) runs out."""
    return time.time() + float(os.environ.get("GPU_KIT_STAGE_BUDGET", default_s))


# ---- env --------------------------------------------------------------------------------------------------------

def run_text(cmd, timeout=30):
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return (proc.stdout + proc.stderr).strip()
    except (OSError, subprocess.SubprocessError) as error:
        return f"({cmd[0]}: {error})"


def ensure_installed():
    """Make largeconv (with largeconv.kernels) importable: an editable install into this Python, reusing its
    torch/triton (no network on the GPU box), without the CUDA extension (built in the background)."""
    try:
        import largeconv.kernels  # noqa: F401
        return "largeconv already importable"
    except ImportError:
        pass
    env = dict(os.environ, LARGECONV_BUILD_CUDA="0", PIP_NO_INDEX="1")
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e",
                           str(ROOT)], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"pip install -e failed:\n{proc.stdout}\n{proc.stderr}")
    check = subprocess.run([sys.executable, "-c", "import largeconv.kernels"], capture_output=True, text=True,
                           cwd="/")  # as the later stages will import it, in fresh processes
    if check.returncode != 0:
        raise SystemExit(f"largeconv.kernels is not importable after the install:\n{check.stderr}")
    return "installed largeconv (editable, no extension)"


def tool_version(name):
    lines = run_text([name, "--version"]).splitlines()
    return f"{name}: {lines[-1] if lines else '?'}"


def stage_env(args):
    """Each line goes to DIR/environment.txt and the log as soon as it is known, cheapest and most valuable first: the
    first GPU run's env stage was cut at its budget and, writing at the end, left nothing."""
    path = Path(args.out) / "environment.txt"
    path.write_text("")

    def note(line):
        with open(path, "a") as f:
            f.write(line + "\n")
        print(line, flush=True)

    note(f"date: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}")
    smi = ["nvidia-smi", "--query-gpu=name,compute_cap,driver_version,memory.total,memory.used,clocks.sm,"
           "clocks.max.sm,clocks.mem,clocks.max.mem,temperature.gpu,power.draw,power.limit,pstate",
           "--format=csv"]
    note("nvidia-smi: " + (run_text(smi).replace("\n", "\n  ") if not args.rehearse else "not run (rehearsal)"))
    import torch
    import triton
    note(f"python {sys.version.split()[0]} ({sys.executable}), {cores()} cores")
    note(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cudnn {torch.backends.cudnn.version()}, "
         f"triton {triton.__version__}")
    device = "no CUDA device"
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        device = (f"{p.name}, sm_{p.major}{p.minor}, {p.multi_processor_count} SMs, L2 {p.L2_cache_size >> 20} MiB, "
                  f"{p.total_memory / 2**30:.1f} GiB")
    note(f"device: {device}")
    note(tool_version("nvcc"))
    note(tool_version("compute-sanitizer"))
    note(ensure_installed())
    from bench.roofline import git_state  # imports largeconv
    note(f"tree: {git_state()}")
    import largeconv
    import largeconv.cuda
    note(f"largeconv {largeconv.__version__}, cuda extension: "
         f"{'built' if largeconv.cuda.is_available() else 'not built (yet)'}")
    kit_row(args.out, "env", "ok", device)


# ---- smoke: every kernel x direction x dtype x layout against float64 --------------------------------------------

def smoke_cases(rehearse):
    from bench.suites import dw, inv
    if rehearse:  # tiny stand-ins: a rectangular kernel taller than the map, an involution with stride 2
        return [dw("smoke-7x3-5x9", 1, 3, 5, 9, (7, 3)),
                inv("smoke-inv-k3-s2", 1, 8, 16, 16, k=3, stride=2, group_channels=4)]
    # RedNet-50 stage 3 at stride 1: fp16/bf16 NCHW forward runs the cuda backend's banded tensor-core involution (14
    # columns: copies of 2 values), which only pytest -m gpu had checked on a GPU (H200 run 1); its grad-input and
    # grad-weight the FMA kernels on 16-bit tiles (since 2026-11-29)
    return [dw("smoke-replknet31b-k31", 1, 128, 56, 56, 31), dw("smoke-replknet31b-k13-7x7", 1, 1024, 7, 7, 13),
            dw("smoke-slak-51x5", 1, 124, 56, 56, (51, 5)),
            inv("smoke-rednet50-k7-s2", 1, 128, 56, 56, k=7, stride=2), inv("smoke-rednet50-k7-s3", 1, 256, 14, 14)]


def torch_dtype(name):
    import torch
    return {"fp32": torch.float32, "tf32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
            "fp64": torch.float64}[name]


def op_call(case, backend):
    """fn(x, weight, bias) through the public API with the raw user arguments, and the same in PyTorch."""
    import torch.nn.functional as F
    import largeconv
    from largeconv.reference import involution2d_reference
    if case.op == "dwconv2d":
        args = (case.stride, case.padding, case.dilation)
        return (lambda x, w, b: largeconv.dwconv2d(x, w, b, *args, backend=backend),
                lambda x, w, b: F.conv2d(x, w, b, *args, groups=x.shape[1]))
    args = (case.kernel[0], case.stride, case.padding[0], case.dilation)
    return (lambda x, w, b: largeconv.involution2d(x, w, *args, backend=backend),
            lambda x, w, b: involution2d_reference(x, w, *args))


def three_directions(fn, x, w, b, g):
    """(output, grad-input, grad-weight) of fn, all detached."""
    import torch
    x, w = x.detach().requires_grad_(), w.detach().requires_grad_()
    out = fn(x, w, b)
    grad_x, grad_w = torch.autograd.grad(out, (x, w), g)
    return out.detach(), grad_x, grad_w


def smoke_one(case, dtype_name, layout, backend, device):
    """Rows for the three directions of one case, dtype and layout."""
    import torch
    import numerics
    from bench import roofline
    dtype = torch_dtype(dtype_name)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    base = dict(suite="smoke", case=case.name, op=case.op, backend=backend, dtype=dtype_name, layout=layout,
                n=case.n, c=case.c, h=case.h, w=case.w, kh=case.kernel[0], kw=case.kernel[1], stride=case.stride,
                dilation=case.dilation, groups=case.groups)
    fresh = roofline.make_inputs(case, torch.float64, device, seed=int.from_bytes(os.urandom(4), "little"))
    x, w, g = (fresh[k].to(dtype) for k in ("x", "weight", "grad"))
    x, g = x.contiguous(memory_format=fmt), g.contiguous(memory_format=fmt)
    if case.op == "involution2d":
        w = w.contiguous(memory_format=fmt)
    b = torch.randn(case.c, dtype=torch.float64, device=device).to(dtype) if case.op == "dwconv2d" else None
    fn, ref_fn = op_call(case, backend)
    start = time.perf_counter()
    set_tf32(dtype_name == "tf32")
    try:
        with numerics.poisoned_allocations():
            got = three_directions(fn, x, w, b, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        up = lambda t: None if t is None else t.double()  # noqa: E731
        ref = three_directions(ref_fn, up(x), up(w), up(b), up(g))
        low = three_directions(ref_fn, x, w, b, g) if dtype in numerics.LOWP_FLOOR else (None,) * 3
    except Exception as error:  # noqa: BLE001 - recorded, the next case runs
        set_tf32(False)
        return [dict(base, direction=d, status="error", reason=f"{type(error).__name__}: {str(error)[:200]}")
                for d in DIRECTIONS]
    set_tf32(False)
    rows = []
    for direction, out, want, want_low in zip(DIRECTIONS, got, ref, low):
        err = numerics.rel_error(out, want)
        if dtype in numerics.LOWP_FLOOR:
            bound = max(2 * numerics.rel_error(want_low, want), numerics.LOWP_FLOOR[dtype])
        else:
            bound = {"fp32": numerics.FP32_RTOL, "tf32": 1e-3, "fp64": 1e-10}[dtype_name]
        ok = (not torch.isnan(out).any().item() and err <= bound and out.shape == want.shape
              and out.dtype == dtype and (direction == "grad_weight" or out.is_contiguous(memory_format=fmt)))
        rows.append(dict(base, direction=direction, status="ok", rel_err=err, check="ok" if ok else "FAIL",
                         out_h=got[0].shape[2], out_w=got[0].shape[3],
                         reason=f"bound {bound:.2g}; {seconds * 1e3:.0f} ms for 3 directions, compile included"))
    return rows


# ---- depthwise Conv1d: smoke rows and timings (bench/roofline.py has no 1-D op: its own small harness here) ------

def conv1d_smoke_cases(rehearse):
    """(name, n, c, length, kernel, stride, padding, dilation): public dwconv1d arguments."""
    if rehearse:
        return [("smoke-conv1d-k7", 1, 4, 40, 7, 1, "same", 1), ("smoke-conv1d-k5-s2-d2", 1, 4, 33, 5, 2, 3, 2)]
    return [("smoke-conv1d-conformer-k31", 1, 512, 1000, 31, 1, "same", 1),
            ("smoke-conv1d-k31-s2-d2", 1, 64, 301, 31, 2, 15, 2)]


def conv1d_smoke_one(case, dtype_name, backend, device):
    """Rows for the three directions of one Conv1d case and dtype, against float64 F.conv1d."""
    import torch
    import torch.nn.functional as F
    import numerics
    import largeconv
    name, n, c, length, k, stride, padding, dilation = case
    dtype = torch_dtype(dtype_name)
    base = dict(suite="smoke", case=name, op="dwconv1d", backend=backend, dtype=dtype_name, layout="ncl", n=n, c=c,
                h=1, w=length, kh=1, kw=k, stride=stride, dilation=dilation, groups=c)
    gen = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(4), "little"))
    randn = lambda *shape, scale=1.0: (torch.randn(shape, generator=gen, device=device, dtype=torch.float64)  # noqa
                                       * scale).to(dtype)
    x, w, b = randn(n, c, length), randn(c, 1, k, scale=k ** -0.5), randn(c)
    fn = lambda x, w, b: largeconv.dwconv1d(x, w, b, stride, padding, dilation, backend=backend)  # noqa: E731
    ref_fn = lambda x, w, b: F.conv1d(x, w, b, stride, padding, dilation, groups=c)  # noqa: E731
    start = time.perf_counter()
    set_tf32(dtype_name == "tf32")
    try:
        g = randn(*ref_fn(x.double(), w.double(), b.double()).shape)
        with numerics.poisoned_allocations():
            got = three_directions(fn, x, w, b, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        ref = three_directions(ref_fn, x.double(), w.double(), b.double(), g.double())
        low = three_directions(ref_fn, x, w, b, g) if dtype in numerics.LOWP_FLOOR else (None,) * 3
    except Exception as error:  # noqa: BLE001 - recorded, the next case runs
        set_tf32(False)
        return [dict(base, direction=d, status="error", reason=f"{type(error).__name__}: {str(error)[:200]}")
                for d in DIRECTIONS]
    set_tf32(False)
    rows = []
    for direction, out, want, want_low in zip(DIRECTIONS, got, ref, low):
        err = numerics.rel_error(out, want)
        if dtype in numerics.LOWP_FLOOR:
            bound = max(2 * numerics.rel_error(want_low, want), numerics.LOWP_FLOOR[dtype])
        else:
            bound = {"fp32": numerics.FP32_RTOL, "tf32": 1e-3, "fp64": 1e-10}[dtype_name]
        ok = (not torch.isnan(out).any().item() and err <= bound and out.shape == want.shape and out.dtype == dtype
              and out.is_contiguous())
        rows.append(dict(base, direction=direction, status="ok", rel_err=err, check="ok" if ok else "FAIL",
                         out_h=1, out_w=got[0].shape[2],
                         reason=f"bound {bound:.2g}; {seconds * 1e3:.0f} ms for 3 directions, compile included"))
    return rows


CONV1D_TIMED = [(32, 512, 1000), (8, 1024, 4000)]  # (N, C, L), K = 31, padding "same": Conformer shapes
CONV1D_KERNEL = 31


def conv1d_inputs(n, c, length, k, dtype, device):
    """x, weight, bias (leaves needing grad) and an output gradient of a Conformer-style Conv1d, seeded."""
    import torch
    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(n, c, length, generator=gen, device=device).to(dtype).requires_grad_()
    w = (torch.randn(c, 1, k, generator=gen, device=device) * k ** -0.5).to(dtype).requires_grad_()
    b = torch.randn(c, generator=gen, device=device).to(dtype).requires_grad_()
    return x, w, b, torch.randn(n, c, length, generator=gen, device=device).to(dtype)


def median_seconds(fn, device, rehearse):
    """Median seconds of fn(): CUDA events via triton's do_bench on a GPU (the Conv1d rows' and the fused launches'
    tensors are larger than L2, so no input rotation), perf_counter on CPU."""
    import statistics
    import torch
    if device.type == "cuda":
        import triton.testing
        fn()
        torch.cuda.synchronize()
        return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median") / 1e3
    fn()
    times = []
    for _ in range(2 if rehearse else 5):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def conv1d_timings(args, backends):
    """dwconv1d K = 31 at Conformer shapes, fwd and fwd+bwd, fp32 and bf16: `backends` against F.conv1d ("torch")
    and cuDNN on the (N, C, 1, L) channels_last view ("torch_cl"), timed in this process unless results.csv has them.
    Rows of suite "conv1d"; returns them."""
    import torch
    import torch.nn.functional as F
    import numerics
    from bench import counts, roofline
    import largeconv
    import largeconv.dispatch as dispatch
    device = device_for(args)
    shapes = [(2, 8, 64)] if args.rehearse else CONV1D_TIMED
    dtypes = ("fp32",) if args.rehearse else ("fp32", "bf16")
    peaks_path = Path(args.out) / "peaks.json"
    peaks = json.loads(peaks_path.read_text()) if peaks_path.exists() else None
    env = env_columns(device, "conv1d")
    done = {(r["case"], r["dtype"], r["direction"], r["backend"]) for r in read_rows(args.out)
            if r["suite"] == "conv1d" and r["status"] == "ok"}
    measured = []
    k = CONV1D_KERNEL
    for n, c, length in shapes:
        case = f"conv1d-{n}x{c}x{length}-k{k}"
        for dtype_name in dtypes:
            dtype = torch_dtype(dtype_name)
            x, w, b, g = conv1d_inputs(n, c, length, k, dtype, device)
            calls = {"torch": lambda x, w, b: F.conv1d(x, w, b, padding="same", groups=c),
                     "torch_cl": lambda x, w, b: F.conv2d(
                         x.unsqueeze(2).contiguous(memory_format=torch.channels_last), w.unsqueeze(2), b,
                         padding="same", groups=c).squeeze(2)}
            for name in backends:
                calls[name] = lambda x, w, b, name=name: largeconv.dwconv1d(x, w, b, backend=name)
            with torch.no_grad():
                want = F.conv1d(x.double(), w.double(), b.double(), padding="same", groups=c)
            elem = x.element_size()
            flops_fwd = 2 * n * c * length * k
            bytes_fwd = (2 * n * c * length + c * k) * elem
            rows = []
            for backend, fn in calls.items():
                for direction in ("fwd", "fwdbwd"):
                    if (case, dtype_name, direction, backend) in done:
                        continue
                    row = dict(env, suite="conv1d", case=case, op="dwconv1d", backend=backend, dtype=dtype_name,
                               direction=direction, layout="ncl", n=n, c=c, h=1, w=length, kh=1, kw=k, stride=1,
                               dilation=1, groups=c, out_h=1, out_w=length, check="")
                    reason = None if backend in ("torch", "torch_cl") else \
                        dispatch.unsupported_reason(backend, "dwconv1d", x, (k,))
                    if reason:  # e.g. the cuda backend in a CPU rehearsal
                        rows.append(dict(row, status="skipped", reason=reason))
                        continue
                    # fwd+bwd: forward, grad-input (the same FLOPs), grad-weight (likewise); bytes: x, y | g, w, gx
                    # | g, x (every tensor once per direction)
                    row["flops"] = flops_fwd * (3 if direction == "fwdbwd" else 1)
                    row["min_bytes"] = bytes_fwd + (4 * n * c * length * elem if direction == "fwdbwd" else 0)
                    row["ai"] = row["flops"] / row["min_bytes"]
                    try:
                        if direction == "fwd":
                            with torch.no_grad():
                                out = fn(x, w, b)
                                err = numerics.rel_error(out, want)
                                seconds = median_seconds(lambda: fn(x, w, b), device, args.rehearse)
                            bound = 1e-5 if dtype == torch.float32 else 3e-2  # a sanity check: smoke checks bf16
                            row.update(rel_err=err, check="ok" if err <= bound else "FAIL",
                                       reason=f"forward vs float64 F.conv1d, bound {bound:g}")
                        else:
                            seconds = median_seconds(lambda: torch.autograd.grad(fn(x, w, b), (x, w, b), g), device,
                                                  args.rehearse)
                    except Exception as error:  # noqa: BLE001 - recorded, the next one runs
                        row.update(status="error", reason=f"{type(error).__name__}: {str(error)[:200]}")
                        rows.append(row)
                        continue
                    row.update(status="ok", time_ms=seconds * 1e3, gflops=row["flops"] / seconds / 1e9,
                               gbs=row["min_bytes"] / seconds / 1e9)
                    if peaks:
                        roof_flops, bound_kind = counts.roof(row["ai"], peaks["fma_fp32"] * 1e9,
                                                             peaks["bandwidth"] * 1e9)
                        row.update(roof_gflops=roof_flops / 1e9, roof_bound=bound_kind,
                                   roof_fraction=row["flops"] / seconds / roof_flops)
                    rows.append(row)
            key = lambda r: (r["case"], r["dtype"], r["direction"])  # noqa: E731
            mine = {key(r) for r in rows}
            baselines = [r for r in read_rows(args.out) if r["suite"] == "conv1d" and key(r) in mine
                         and r["backend"] in ("torch", "torch_cl")]
            roofline.add_speedups(baselines + rows)
            append_rows(args.out, rows)
            save_autotune_picks(args.out)
            measured += rows
            for r in rows:
                if r["status"] == "ok":
                    print(f"{r['case']:<24} {r['backend']:<9} {dtype_name:<5} {r['direction']:<7} "
                          f"{r['time_ms']:9.3f} ms  x F.conv1d {r.get('speedup_vs_torch', float('nan')):6.2f}  "
                          f"x best {r.get('speedup_vs_best_torch', float('nan')):6.2f}  {r.get('check', '')}",
                          flush=True)
                else:
                    print(f"{r['case']:<24} {r['backend']:<9} {dtype_name:<5} {r['direction']:<7} {r['status']}: "
                          f"{r['reason']}", flush=True)
    return measured


def record_launches(out, rows, label):
    """Append timing rows to results.csv and print each, `label(row)` first; returns the rows."""
    append_rows(out, rows)
    for r in rows:
        text = f"{r['time_ms']:9.3f} ms" if r["status"] == "ok" else f"{r['status']}: {r['reason']}"
        print(f"{label(r)} {text}", flush=True)
    return rows


def issue_seconds(fn, device, reps):
    """Host seconds to issue one fn() (perf_counter over `reps` calls with no synchronisation in between; at most a
    few hundred launches, well inside the launch queue, so the host never waits on the GPU). Where it matches fn's
    median_seconds, the host and not the GPU sets fn's time."""
    import torch
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    seconds = (time.perf_counter() - start) / reps
    sync()
    return seconds


def conv1d_launch_timings(args, backend):
    """Where a Conv1d fwd+bwd's time goes, on the first Conformer shape, fp32 and bf16 (suite "conv1d_launches"): each
    direction of `backend` alone (its dwconv1d_forward, _grad_input and _grad_weight: no op wrappers, no autograd),
    the bias gradient's sum, and the host's time to issue one whole fwd+bwd through largeconv.dwconv1d (and through
    F.conv1d, backend "torch"). H100 run 2 timed the cuda fwd+bwd at 0.63-0.90 ms where its forward alone took
    0.09-0.11 ms, and the kernels' own traffic predicts ~0.2 ms: these rows say whether the host or a kernel (the
    weight gradient?) holds the rest. About a second."""
    import torch
    import torch.nn.functional as F
    import largeconv
    import largeconv.dispatch as dispatch
    from largeconv.ops import bias_grad
    device = device_for(args)
    n, c, length = (2, 8, 64) if args.rehearse else CONV1D_TIMED[0]
    k, pad = CONV1D_KERNEL, (CONV1D_KERNEL // 2, CONV1D_KERNEL // 2)
    module = dispatch.backend_module(backend)
    env = env_columns(device, "conv1d_launches")
    rows = []
    for dtype_name in ("fp32",) if args.rehearse else ("fp32", "bf16"):
        x, w, b, g = conv1d_inputs(n, c, length, k, torch_dtype(dtype_name), device)
        xd, wd, bd = x.detach(), w.detach(), b.detach()
        row = dict(env, case=f"conv1d-{n}x{c}x{length}-k{k}", op="dwconv1d", dtype=dtype_name, layout="ncl", n=n,
                   c=c, h=1, w=length, kh=1, kw=k, stride=1, dilation=1, groups=c, out_h=1, out_w=length, check="")
        reason = dispatch.unsupported_reason(backend, "dwconv1d", xd, (k,))
        if reason:  # e.g. the cuda backend in a CPU rehearsal
            rows.append(dict(row, backend=backend, direction="forward", status="skipped", reason=reason))
            continue
        timed = {
            (backend, "forward", "alone"): lambda: module.dwconv1d_forward(xd, wd, bd, 1, pad, 1),
            (backend, "grad_input", "alone"): lambda: module.dwconv1d_grad_input(g, wd, tuple(xd.shape), 1, pad, 1),
            (backend, "grad_weight", "alone"): lambda: module.dwconv1d_grad_weight(g, xd, tuple(wd.shape), 1, pad, 1),
            ("torch", "bias_grad", "alone"): lambda: bias_grad(g),
            (backend, "fwdbwd_issue", "issue"): lambda: torch.autograd.grad(
                largeconv.dwconv1d(x, w, b, backend=backend), (x, w, b), g),
            ("torch", "fwdbwd_issue", "issue"): lambda: torch.autograd.grad(
                F.conv1d(x, w, b, padding="same", groups=c), (x, w, b), g)}
        for (name, direction, kind), fn in timed.items():
            try:
                seconds = (median_seconds(fn, device, args.rehearse) if kind == "alone"
                           else issue_seconds(fn, device, 3 if args.rehearse else 20))
                rows.append(dict(row, backend=name, direction=direction, status="ok", time_ms=seconds * 1e3,
                                 reason="host time to issue one fwd+bwd" if kind == "issue"
                                 else f"{direction} alone (backend function, no autograd)"))
            except Exception as error:  # noqa: BLE001 - recorded, the next one runs
                rows.append(dict(row, backend=name, direction=direction, status="error",
                                 reason=f"{type(error).__name__}: {str(error)[:200]}"))
    return record_launches(args.out, rows, lambda r: f"{r['case']:<24} {r['backend']:<7} {r['dtype']:<5} "
                                                     f"{r['direction']:<13}")


# ---- the fused involution (largeconv.involution2d_fused, Triton only): smoke rows and whole-layer timings ---------

FUSED_DTYPES = ("fp32", "fp16", "bf16")
FUSED_RESULTS = ("forward", "grad_input", "grad_reduced", "grad_span_weight", "grad_span_bias")
FUSED_K, FUSED_GROUP_CHANNELS, FUSED_REDUCTION = 7, 16, 4  # RedNet-50 (bench/fused_involution.py)


def fused_smoke_cases(rehearse):
    """(name, n, c, h, w, k, stride, group channels, reduced channels Cr): the public op's arguments."""
    if rehearse:
        return [("smoke-fused-k3", 1, 8, 7, 6, 3, 1, 4, 5), ("smoke-fused-k7-s2", 1, 16, 9, 10, 7, 2, 16, 4)]
    return [("smoke-fused-rednet50-s1", 1, 64, 56, 56, 7, 1, 16, 16),
            ("smoke-fused-rednet50-s2-stride2", 1, 128, 56, 56, 7, 2, 16, 32)]


def fused_smoke_one(case, dtype_name, layout, backend, device):
    """Rows for the output and the four gradients (x, reduced, span weight, span bias) of involution2d_fused on
    `backend`, against the torch backend in float64; fp16/bf16 within 2x the torch backend's own error in that
    dtype (the kit's rule), results NaN-poisoned."""
    import torch
    import numerics
    import largeconv
    name, n, c, h, w, k, stride, group_channels, cr = case
    dtype = torch_dtype(dtype_name)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    groups, pad = c // group_channels, (k - 1) // 2
    ho, wo = ((size + 2 * pad - k) // stride + 1 for size in (h, w))
    base = dict(suite="smoke", case=name, op="involution2d_fused", backend=backend, dtype=dtype_name, layout=layout,
                n=n, c=c, h=h, w=w, kh=k, kw=k, stride=stride, dilation=1, groups=groups, out_h=ho, out_w=wo)
    gen = torch.Generator(device=device).manual_seed(int.from_bytes(os.urandom(4), "little"))
    randn = lambda *shape, scale=1.0: (torch.randn(shape, generator=gen, device=device, dtype=torch.float64)  # noqa
                                       * scale).to(dtype)
    inputs = (randn(n, c, h, w).contiguous(memory_format=fmt), randn(n, cr, ho, wo).contiguous(memory_format=fmt),
              randn(groups * k * k, cr, 1, 1, scale=cr ** -0.5), randn(groups * k * k))
    g = randn(n, c, ho, wo).contiguous(memory_format=fmt)

    def five(backend_name, tensors, grad):
        tensors = [t.detach().requires_grad_() for t in tensors]
        out = largeconv.involution2d_fused(*tensors, k, stride, pad, 1, backend=backend_name)
        return (out.detach(), *torch.autograd.grad(out, tensors, grad))

    start = time.perf_counter()
    set_tf32(False)
    try:
        with numerics.poisoned_allocations():
            got = five(backend, inputs, g)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        ref = five("torch", [t.double() for t in inputs], g.double())
        low = five("torch", inputs, g) if dtype in numerics.LOWP_FLOOR else (None,) * 5
    except Exception as error:  # noqa: BLE001 - recorded, the next case runs
        return [dict(base, direction=d, status="error", reason=f"{type(error).__name__}: {str(error)[:200]}")
                for d in FUSED_RESULTS]
    rows = []
    for direction, out, want, want_low, like in zip(FUSED_RESULTS, got, ref, low, (g, *inputs)):
        err = numerics.rel_error(out, want)
        if dtype in numerics.LOWP_FLOOR:
            bound = max(2 * numerics.rel_error(want_low, want), numerics.LOWP_FLOOR[dtype])
        else:
            bound = numerics.FP32_RTOL
        layout_ok = like.dim() != 4 or direction == "grad_span_weight" or out.is_contiguous(memory_format=fmt)
        ok = (not torch.isnan(out).any().item() and err <= bound and out.shape == like.shape and out.dtype == dtype
              and layout_ok)
        rows.append(dict(base, direction=direction, status="ok", rel_err=err, check="ok" if ok else "FAIL",
                         reason=f"bound {bound:.2g}; {seconds * 1e3:.0f} ms for the output and 4 grads, compile "
                                "included"))
    return rows


# Whole RedNet-50 involution layers (Involution2d(C, 7, stride, group_channels=16, reduction_ratio=4)), forward +
# backward, fused=True against fused=False with the same parameters: ((case, batch, C, H = W, stride), dtypes) in
# order of value. The unfused layers' involution shapes are headline cases (rednet50-s1, -s2-stride2, -s3 in these
# dtypes), so the prewarm has their kernels; stage 3 in bf16 is left out (33 more involution compiles).
FUSED_TIMED = [(("rednet50-s1-layer", 64, 64, 56, 1), ("fp32", "bf16")),
               (("rednet50-s2-stride2-layer", 64, 128, 56, 2), ("fp32", "bf16")),
               (("rednet50-s3-layer", 64, 256, 14, 1), ("fp32",))]
FUSED_TARGET = 2.0  # issue 15: fused >= 2x the unfused layer's forward+backward on a GPU
FUSED_CAP_S = 30  # the fused timings stop starting layers after this long (estimate 12-18 s; bench/gpu_check.sh)


def fused_plan(rehearse):
    if rehearse:
        return [(("tiny-layer-s2", 1, 16, 8, 2), ("fp32",))]
    return FUSED_TIMED


def fused_layers(channels, stride, dtype, device):
    """(unfused, fused) Involution2d with the same parameters."""
    import torch
    import largeconv
    torch.manual_seed(0)
    make = lambda fused: largeconv.Involution2d(  # noqa: E731
        channels, FUSED_K, stride, FUSED_GROUP_CHANNELS, FUSED_REDUCTION, device=device, dtype=dtype, fused=fused)
    plain, fused = make(False), make(True)
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def fused_prewarm(layer, dtype_name, device):
    """One forward+backward of the fused layer on the triton backend (compiles the configs the autotuners hold)."""
    import torch
    _, batch, c, hw, stride = layer
    _, fused = fused_layers(c, stride, torch_dtype(dtype_name), device)
    fused.backend = "triton"
    x = torch.randn(batch, c, hw, hw, device=device, dtype=torch_dtype(dtype_name), requires_grad=True)
    out = fused(x)
    torch.autograd.grad(out, [x, *fused.parameters()], torch.randn_like(out))


def fused_pair(args, layer, dtype_name, backend, row):
    """The unfused and the fused row of one layer, dtype and backend (both variants on `backend`)."""
    import torch
    import numerics
    from bench import roofline
    from bench.fused_involution import bytes_model
    device = device_for(args)
    _, batch, c, hw, stride = layer
    dtype = torch_dtype(dtype_name)
    plain, fused = fused_layers(c, stride, dtype, device)
    plain.backend = fused.backend = backend
    gen = torch.Generator(device=device).manual_seed(0)
    sets = [(torch.randn(batch, c, hw, hw, generator=gen, device=device).to(dtype).requires_grad_(),
             torch.randn(batch, c, row["out_h"], row["out_w"], generator=gen, device=device).to(dtype))
            for _ in range(2)]
    # the sanity check: output and grad x of the fused layer against the unfused one's (run first: compiles and
    # autotunes, and auto picks its backends)
    x, g = sets[0]
    results = []
    for module in (plain, fused):
        out = module(x)
        results.append((out.detach(), torch.autograd.grad(out, x, g)[0]))
    err = max(numerics.rel_error(a, b) for a, b in zip(results[1], results[0]))
    bound = numerics.FP32_RTOL if dtype == torch.float32 else 3e-2
    del results, out
    model = bytes_model(batch, c, hw, stride, elem=x.element_size())
    rows = []
    for variant, module in (("unfused", plain), ("fused", fused)):
        def prepare(i, module=module):
            x, g = sets[i]
            wanted = [x, *module.parameters()]
            return lambda: torch.autograd.grad(module(x), wanted, g)

        seconds, repeats, n_sets, _ = roofline.time_calls(prepare, len(sets), device,
                                                          0.01 if args.rehearse else 0.06,
                                                          min_reps=2 if args.rehearse else 3)
        min_bytes = sum(model[variant]) * 1e6  # bench/fused_involution.py: the minimum traffic of the layer
        r = dict(row, op="involution2d_fused" if variant == "fused" else "involution2d", backend=backend,
                 status="ok", time_ms=seconds * 1e3, repeats=repeats, input_sets=n_sets, min_bytes=min_bytes,
                 gbs=min_bytes / seconds / 1e9, reason=f"Involution2d(fused={variant == 'fused'})",
                 peak_mem_mb=roofline.peak_memory_mb(prepare(0), device) if device.type == "cuda" else "")
        if variant == "fused":
            ratio = rows[0]["time_ms"] / r["time_ms"]
            r.update(rel_err=err, check="ok" if err <= bound else "FAIL",
                     reason=f"Involution2d(fused=True): x{ratio:.2f} the unfused layer (target >= {FUSED_TARGET:g}x: "
                            f"{'met' if ratio >= FUSED_TARGET else 'not met'}); output and grad x vs the unfused "
                            f"layer's: bound {bound:g}")
        rows.append(r)
    return rows


def fused_launch_timings(args, layer, dtype_name):
    """Each launch of the fused involution alone (forward; backward: grad-reduced, grad-span, grad-input), the
    autotuned ones at their picks, on one layer's involution shape: rows of suite "fused_launches", so the next
    change aims at the launch the layer's time goes to (the layer rows time the whole Involution2d). The
    static sm_90 estimates to set beside them: bench/NOTES.md, the fused involution's section."""
    import torch
    from largeconv.kernels import involution_fused as fused
    device = device_for(args)
    name, batch, c, hw, stride = layer
    dtype, k, pad = torch_dtype(dtype_name), FUSED_K, FUSED_K // 2
    groups, cr = c // FUSED_GROUP_CHANNELS, c // FUSED_REDUCTION
    out_hw = (hw + 2 * pad - k) // stride + 1
    gen = torch.Generator(device=device).manual_seed(0)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device=device).to(dtype)  # noqa: E731
    x, reduced, grad = randn(batch, c, hw, hw), randn(batch, cr, out_hw, out_hw), randn(batch, c, out_hw, out_hw)
    weight, bias = randn(groups * k * k, cr) / cr ** 0.5, randn(groups * k * k)
    gpu = device.type == "cuda"
    set_tf32(False)
    _, forward = fused._plan_forward(x, reduced, weight, bias, k, stride, pad, 1, gpu=gpu)
    backward, _ = fused._plan_backward(grad, x, reduced, weight, bias, k, stride, pad, 1, gpu=gpu)
    row = dict(env_columns(device, "fused_launches"), case=name, op="involution2d_fused", backend="triton",
               dtype=dtype_name, layout="nchw", n=batch, c=c, h=hw, w=hw, kh=k, kw=k, stride=stride, dilation=1,
               groups=groups, out_h=out_hw, out_w=out_hw, check="")
    rows = []
    for direction, launch in {"forward": forward, **backward}.items():
        try:
            seconds = median_seconds(launch, device, args.rehearse)
            rows.append(dict(row, direction=direction, status="ok", time_ms=seconds * 1e3,
                             reason=f"{direction} launch of the fused involution alone"))
        except Exception as error:  # noqa: BLE001 - recorded, the next one runs
            rows.append(dict(row, direction=direction, status="error",
                             reason=f"{type(error).__name__}: {str(error)[:200]}"))
    return record_launches(args.out, rows, lambda r: f"{r['case']:<26} fused launch {r['direction']:<13}")


def fused_timings(args, backends, cap_s=None):
    """Involution2d(fused=True) vs fused=False, forward+backward of the whole layer (grads of x and of every
    parameter), on each of `backends` (both variants on the same one), NCHW: rows of suite "fused_involution", op
    involution2d (unfused) or involution2d_fused, the fused row's reason giving the ratio; its check: the fused
    layer's output and grad x against the unfused layer's in the same dtype (a sanity check; the smoke checks
    accuracy). Layers not started within `cap_s` get rows "skipped". Returns the rows."""
    import torch
    cap_s = FUSED_CAP_S * (4 if args.rehearse else 1) if cap_s is None else cap_s
    device = device_for(args)
    torch.backends.cudnn.benchmark = True  # the layers' convolutions (conv1, the unfused span conv) at their best
    env = env_columns(device, "fused_involution")
    deadline = time.perf_counter() + cap_s
    measured = []
    for layer, dtypes in fused_plan(args.rehearse):
        name, batch, c, hw, stride = layer
        out_hw = (hw + 2 * (FUSED_K // 2) - FUSED_K) // stride + 1
        for dtype_name in dtypes:
            row = dict(env, suite="fused_involution", case=name, dtype=dtype_name, direction="fwdbwd",
                       layout="nchw", n=batch, c=c, h=hw, w=hw, kh=FUSED_K, kw=FUSED_K, stride=stride, dilation=1,
                       groups=c // FUSED_GROUP_CHANNELS, out_h=out_hw, out_w=out_hw, check="")
            rows = []
            for backend in backends:
                if time.perf_counter() > deadline:
                    rows += [dict(row, op=op, backend=backend, status="skipped",
                                  reason=f"the fused timings' cap of {cap_s:g} s was spent")
                             for op in ("involution2d", "involution2d_fused")]
                    continue
                set_tf32(False)
                try:
                    rows += fused_pair(args, layer, dtype_name, backend, row)
                except Exception as error:  # noqa: BLE001 - recorded, the next one runs
                    rows += [dict(row, op=op, backend=backend, status="error",
                                  reason=f"{type(error).__name__}: {str(error)[:200]}")
                             for op in ("involution2d", "involution2d_fused")]
            append_rows(args.out, rows)
            if not measured and any(r["status"] == "ok" for r in rows):
                # the first layer and dtype timed: where its fused time goes, launch by launch (~1 s)
                fused_launch_timings(args, layer, dtype_name)
            save_autotune_picks(args.out)
            measured += rows
            for r in rows:
                text = f"{r['time_ms']:9.3f} ms  {r['reason']}" if r["status"] == "ok" else \
                    f"{r['status']}: {r['reason']}"
                print(f"{r['case']:<26} {r['op']:<18} {r['backend']:<7} {r['dtype']:<5} {text} {r['check']}",
                      flush=True)
    return measured


def fused_ratios(rows):
    """{(case, dtype, backend): (unfused ms, fused ms)} of the pairs timed in `rows` (results.csv rows)."""
    pairs = {}
    for r in rows:
        if r["suite"] == "fused_involution" and r["status"] == "ok":
            variant = "fused" if r["op"] == "involution2d_fused" else "unfused"
            pairs.setdefault((r["case"], r["dtype"], r["backend"]), {})[variant] = float(r["time_ms"])
    return {key: (p["unfused"], p["fused"]) for key, p in pairs.items() if len(p) == 2}


def fused_smoked(backend, dtype_name):
    return backend == "triton" and dtype_name in FUSED_DTYPES


def smoke_worker(task):
    """One worker: its (dtype, layout) pairs x every case; one fixed tile config per autotuned kernel."""
    backend, pairs, index, out, rehearse = task
    args = argparse.Namespace(rehearse=rehearse)
    device = device_for(args)
    if backend == "triton":
        restrict_autotune(index, 1 << 30)  # one config each, a different one per worker: compile time known
    env = env_columns(device, "smoke")
    counts = {"checked": 0, "FAIL": 0, "error": 0}
    for dtype_name, layout in pairs:
        # Conv1d has one layout: its cases run with the first one
        conv1d = [("1d", case) for case in conv1d_smoke_cases(rehearse)] if layout == LAYOUTS[0] else []
        # the fused involution: Triton only (no cuda kernels), fp32/fp16/bf16
        fused = [("fused", case) for case in fused_smoke_cases(rehearse)] if fused_smoked(backend, dtype_name) \
            else []
        for kind, case in [("2d", case) for case in smoke_cases(rehearse)] + conv1d + fused:
            if kind == "fused":
                one = fused_smoke_one(case, dtype_name, layout, backend, device)
            elif kind == "1d":
                one = conv1d_smoke_one(case, dtype_name, backend, device)
            else:
                one = smoke_one(case, dtype_name, layout, backend, device)
            rows = [dict(env, **row) for row in one]
            append_rows(out, rows)
            for row in rows:
                counts["checked"] += 1
                counts["FAIL"] += row.get("check") == "FAIL"
                counts["error"] += row["status"] == "error"
                if row.get("check") != "ok":
                    print(f"{row.get('check') or row['status']}: {backend} {row['case']} {dtype_name} {row['layout']} "
                          f"{row['direction']} rel_err {row.get('rel_err', '')} {row.get('reason', '')}",
                          flush=True)
    return counts


def stage_smoke(args):
    import largeconv.dispatch as dispatch
    import torch
    device = device_for(args)
    probe = torch.empty(1, 1, 1, 1, device=device)
    reason = dispatch.unsupported_reason(args.backend, "dwconv2d", probe, (3, 3))
    if reason:
        return kit_row(args.out, f"smoke-{args.backend}", "skipped", reason)
    dtypes = [d for d in SMOKE_DTYPES if args.backend != "cuda" or d != "fp64"]  # the cuda backend has no fp64
    pairs = [(d, layout) for d in dtypes for layout in LAYOUTS]
    workers = min(len(pairs), args.workers or max(1, cores() - 4))  # leave cores to the CUDA build
    tasks = [(args.backend, pairs[i::workers], i, args.out, args.rehearse) for i in range(workers)]
    results = in_workers(smoke_worker, tasks, workers)
    total = {k: sum(r[k] for r in results) for k in results[0]}
    status = "ok" if total["FAIL"] == 0 and total["error"] == 0 else "FAIL"
    fused_dtypes = sum(fused_smoked(args.backend, d) for d in dtypes)
    fused = (f" + fused involution {fused_dtypes} dtypes x 2 layouts x {len(fused_smoke_cases(args.rehearse))} "
             f"shapes x {len(FUSED_RESULTS)} results") if fused_dtypes else ""
    kit_row(args.out, f"smoke-{args.backend}", status,
            f"{total['checked']} results checked ({len(dtypes)} dtypes x (2 layouts x {len(smoke_cases(args.rehearse))}"
            f" shapes + {len(conv1d_smoke_cases(args.rehearse))} Conv1d shapes) x 3 directions{fused}): "
            f"{total['FAIL']} FAIL, {total['error']} errors; {workers} workers")


# ---- timings ----------------------------------------------------------------------------------------------------

def headline(rehearse):
    """(case, dtypes) in order of value: a stage cut at its budget loses the least useful ones."""
    from bench import suites
    if rehearse:
        return [(case, ("fp32", "tf32") if case.op == "dwconv2d" else ("fp32",)) for case in suites.tiny()]
    by_name = {c.name: c for c in suites.replknet31b() + suites.slak() + suites.unireplknet() + suites.rednet50()}
    plan = [("replknet31b-s1", ("fp32", "bf16", "tf32")), ("rednet50-s1", ("fp32", "bf16")),
            ("replknet31b-s4", ("fp32", "bf16")), ("slak-s1-51x5", ("fp32",)), ("rednet50-s2-stride2", ("fp32",)),
            ("replknet31b-s1", ("fp16",)), ("replknet31b-s2", ("fp32", "bf16")), ("replknet31b-s3", ("fp32",)),
            ("unireplknet-28", ("fp32",)), ("unireplknet-14", ("fp32",)), ("unireplknet-7", ("fp32",)),
            ("slak-s2-49x5", ("fp32",)), ("slak-s3-47x5", ("fp32",)), ("rednet50-s2", ("fp32",)),
            ("rednet50-s3", ("fp32",)), ("rednet50-s4", ("fp32",)), ("rednet50-s4-stride2", ("fp32",)),
            ("slak-s1-51x5", ("bf16",)), ("rednet50-s2-stride2", ("bf16",)), ("rednet50-s2", ("bf16",)),
            ("rednet50-s3", ("bf16",)), ("rednet50-s4", ("bf16",))]
    return [(by_name[name], dtypes) for name, dtypes in plan]


# timings-cuda times these right after its first case: the banded tensor-core involution (bf16, stride 1) has run
# once (H200 run 1, stage 1 only: 2-2.3x its prediction), the layers after stage 1 never
CUDA_EARLY = ("rednet50-s1", "rednet50-s2", "rednet50-s3", "rednet50-s4")


def bench_args(args, backends, directions="fwd,bwd,fwdbwd", compile=False):
    from bench import roofline
    argv = ["--device", "cpu" if args.rehearse else "cuda", "--backends", backends, "--directions", directions,
            "--out", str(args.out), "--no-progress", "--retries", "0"]
    argv += ["--min-time", "0.01", "--min-reps", "2", "--no-memory"] if args.rehearse else []
    argv += ["--compile"] if compile else ["--no-compile"]
    return roofline.parse_args(argv)


def load_peaks(args, device):
    from bench import peaks as peaks_mod
    path = Path(args.out) / "peaks.json"
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    peaks = peaks_mod.measure_peaks(device, quick=args.rehearse)
    path.write_text(json.dumps(peaks, indent=1))
    print(f"peaks ({time.perf_counter() - start:.1f} s): " + "; ".join(peaks_mod.format_peaks(peaks)), flush=True)
    return peaks


def measure(args, plan, backends, suite, directions="fwd,bwd,fwdbwd", compile=False, note=None):
    """roofline.run_benchmark one (case, dtype) at a time, rows appended as they come; speedups against the
    PyTorch baselines already in results.csv when this call measures none itself. Returns the rows."""
    import torch
    from bench import roofline
    device = device_for(args)
    torch.backends.cudnn.benchmark = True  # PyTorch at its best
    set_tf32(False)  # fp32 rows are exact fp32 (roofline.run_benchmark turns TF32 on for the "tf32" rows alone)
    peaks = load_peaks(args, device)
    bargs = bench_args(args, backends, directions, compile)
    measured = []
    for case, dtypes in plan:
        for dtype in dtypes:
            bargs.dtypes, bargs.suite = dtype, suite
            rows = roofline.run_benchmark([case], bargs, device, peaks, progress=False)
            key = lambda r: (r["case"], r["dtype"], r["direction"])  # noqa: E731
            mine = {key(r) for r in rows}
            baselines = [r for r in read_rows(args.out) if key(r) in mine and r["backend"] in roofline.BASELINES[
                case.op]]
            roofline.add_speedups(baselines + rows)
            text = note() if note else ""
            for row in rows:
                row["suite"] = suite
                if text and row["backend"] == "auto" and row["status"] == "ok":
                    row["reason"] = text
            append_rows(args.out, rows)
            save_autotune_picks(args.out)
            measured += rows
            for r in rows:
                if r["status"] == "ok":
                    print(f"{r['case']:<22} {r['backend']:<13} {dtype:<5} {r['direction']:<7} "
                          f"{r['time_ms']:9.3f} ms  x torch {r.get('speedup_vs_torch', float('nan')):6.2f}  "
                          f"x best {r.get('speedup_vs_best_torch', float('nan')):6.2f}  "
                          f"{100 * r['roof_fraction']:5.1f}% roof  {r['check']}", flush=True)
                elif r["reason"] != "not applicable":
                    print(f"{r['case']:<22} {r['backend']:<13} {dtype:<5} {r['direction']:<7} {r['status']}: "
                          f"{r['reason']}", flush=True)
    return measured


def prewarm_worker(task):
    """Compile (and autotune among) configs[index::count] of every Triton kernel for the planned shapes, NCHW,
    into the shared on-disk Triton cache; the timing process then finds every config compiled."""
    index, count, plan_names, rehearse, fused_jobs = task
    import torch
    fused_configs = {tuner: list(tuner.configs) for tuner in fused_autotuners()}
    restrict_autotune(index, count)
    quick_autotune()
    plan = [(case, dtypes) for case, dtypes in headline(rehearse) + weak_plan(rehearse) if case.name in plan_names]
    device = device_for(argparse.Namespace(rehearse=rehearse))
    done = 0
    for case, dtypes in plan:
        for dtype_name in dtypes:
            try:
                from bench import roofline
                inputs = roofline.make_inputs(case, torch_dtype(dtype_name), device, seed=index)
                fn, _ = op_call(case, "triton")
                with roofline.conv_tf32(dtype_name == "tf32"):  # TF32 dots are other kernels
                    three_directions(fn, inputs["x"], inputs["weight"], None, inputs["grad"])
                done += 1
            except Exception as error:  # noqa: BLE001 - the timing process compiles what is missing
                print(f"prewarm {index}: {case.name} {dtype_name}: {type(error).__name__}: {error}", flush=True)
    for layer, dtype_name, config in fused_jobs:  # config j of every fused autotuner (a job per config: they have
        for tuner, configs in fused_configs.items():  # 3-4 configs, fewer than the workers)
            tuner.configs = [configs[config % len(configs)]]
        try:
            fused_prewarm(layer, dtype_name, device)
            done += 1
        except Exception as error:  # noqa: BLE001 - the timing process compiles what is missing
            print(f"prewarm {index}: fused {layer[0]} {dtype_name} config {config}: {type(error).__name__}: {error}",
                  flush=True)
    return done


def prewarm(args, plan, fused=()):
    """Compile the Triton kernels of `plan` ((case, dtypes)) and of the fused layers `fused` ((layer, dtypes),
    FUSED_TIMED) in parallel workers."""
    if args.rehearse:  # nothing to compile under the interpreter; still run the code once, in this process
        workers = 1
    else:
        workers = args.workers or max(1, cores() - 4)  # leave cores to the CUDA build
    start = time.perf_counter()
    names = [case.name for case, _ in plan]
    configs = max([len(tuner.configs) for tuner in fused_autotuners()] or [1])
    jobs = [(layer, dtype, j) for layer, dtypes in fused for dtype in dtypes for j in range(configs)]
    done = in_workers(prewarm_worker, [(i, workers, names, args.rehearse, jobs[i::workers]) for i in range(workers)],
                      workers)
    print(f"prewarm: {sum(done)} case-dtypes compiled by {workers} workers in {time.perf_counter() - start:.1f} s",
          flush=True)


def stage_timings(args):
    import largeconv.dispatch as dispatch
    import torch
    device = device_for(args)
    reason = dispatch.unsupported_reason(args.backend, "dwconv2d", torch.empty(1, 1, 1, 1, device=device), (3, 3))
    if reason and not args.rehearse:
        return kit_row(args.out, f"timings-{args.backend}", "skipped", reason)
    plan = headline(args.rehearse)
    if args.backend == "triton":
        prewarm(args, plan, fused_plan(args.rehearse))
        quick_autotune()
        mine = "torch,torch_cl,triton,cpu" if args.rehearse else "torch,torch_cl,triton"  # CPU: triton is skipped
        # torch.compile of the involution reference: one case (inductor compiles per shape and direction), right
        # after the first involution case, before the long tail of cases
        first_inv = next(i for i, (case, _) in enumerate(plan) if case.op == "involution2d")
        rows = measure(args, plan[:first_inv + 1], mine, "headline")
        rows += measure(args, [(plan[first_inv][0], ("fp32",))], "torch_compile", "headline",
                        compile=not args.rehearse)
        rows += conv1d_timings(args, ["triton", "cpu"] if args.rehearse else ["triton"])  # a few seconds
        rows += conv1d_launch_timings(args, "cpu" if args.rehearse else "triton")  # the interpreter: ~10 s
        # the fused involution's layers (12-18 s, at most FUSED_CAP_S); the unfused involution autotuned here is
        # reused by the headline RedNet cases below (the same shapes)
        fused = fused_timings(args, ["triton", "auto"])
        rows += fused
        rows += measure(args, plan[first_inv + 1:], mine, "headline")
    else:  # the most valuable 2-D case, RedNet-50's involutions (CUDA_EARLY), Conv1d (no compile: a few seconds),
        # the first case on channels_last inputs, then the rest
        early = [(case, dtypes) for case, dtypes in plan[1:] if case.name in CUDA_EARLY]
        rest = [(case, dtypes) for case, dtypes in plan[1:] if case.name not in CUDA_EARLY]
        rows = measure(args, plan[:1], args.backend, "headline")
        rows += backend_timings(args, early)
        rows += conv1d_timings(args, [args.backend])
        rows += conv1d_launch_timings(args, args.backend)
        rows += measure(args, plan[:1], f"{args.backend}_cl", "headline")
        rows += backend_timings(args, rest)
    ok = [r for r in rows if r["status"] == "ok"]
    fails = sum(r["check"] == "FAIL" for r in ok)
    note = f"{len(ok)} timed, {sum(r['status'] == 'error' for r in rows)} errors, {fails} failed checks"
    if args.backend == "triton":
        ratios = [u / f for u, f in fused_ratios(fused).values()]
        note += (f"; fused involution: {len(ratios)} layer pairs, x{min(ratios):.2f}-x{max(ratios):.2f} the unfused "
                 f"layer, target >= {FUSED_TARGET:g}x met by {sum(r >= FUSED_TARGET for r in ratios)}"
                 if ratios else "; fused involution: no pair timed")
    kit_row(args.out, f"timings-{args.backend}", "ok" if not fails else "FAIL", note)


def backend_timings(args, plan):
    """args.backend on `plan`'s (case, dtypes), one at a time; PyTorch's rows first where timings-triton, cut at its
    budget, left a RepLKNet-31B stage without them (issue 12's fwd+bwd target is a ratio to them): a few seconds of
    NCHW and cuDNN calls per case-dtype."""
    timed = {(r["case"], r["dtype"]) for r in read_rows(args.out) if r["backend"] == "torch" and r["status"] == "ok"}
    rows = []
    for case, dtypes in plan:
        for dtype in dtypes:
            baselines = "torch,torch_cl," if case.name.startswith("replknet31b") and (case.name, dtype) not in \
                timed else ""
            rows += measure(args, [(case, (dtype,))], baselines + args.backend, "headline")
    return rows


# ---- auto -------------------------------------------------------------------------------------------------------

def weak_plan(rehearse):
    from bench import suites
    if rehearse:
        return [(suites.dw("weak-tiny-b1", 1, 8, 6, 6, 5), ("fp32",))]
    return [(case, ("fp32",)) for case in suites.weak_spots()]


def stage_auto(args):
    import largeconv.dispatch as dispatch
    plan = weak_plan(args.rehearse)
    if not args.rehearse:
        prewarm(args, plan)
        quick_autotune()
    seen = set()

    def picked():  # what auto chose for the calls of the case just measured, and each candidate's timed ms
        new = {k: v for k, v in dispatch.auto_choices().items() if k not in seen}
        seen.update(new)

        def timed(key):
            times = dispatch._auto_times.get(key, {})
            return f" ({', '.join(f'{name} {1e3 * t:.3f}' for name, t in times.items())} ms)" if times else ""
        text = ", ".join(f"{k[1] if isinstance(k, tuple) and len(k) > 1 else k}={v}{timed(k)}" for k, v in new.items())
        return f"auto picked: {text}" if text else ""

    per_call_worst = per_call_rows(args)
    rows = measure(args, plan, "torch,torch_cl,auto", "weak", directions="fwd,fwdbwd", note=picked)
    ratios = [float(r["speedup_vs_best_torch"]) for r in rows if r["status"] == "ok" and r["backend"] == "auto"]
    worst = min(ratios) if ratios else float("nan")
    kit_row(args.out, "auto", "ok" if worst >= 0.95 else "slow",
            f"{len(ratios)} auto rows; worst ratio to the best of PyTorch {worst:.2f}; tiny layers' per-call cost at "
            f"worst {per_call_worst:.2f}x PyTorch's own call (target <= 1.3)")


def per_call_rows(args):
    """bench/overhead.py's per-call rows (design: auto on tiny layers where it picks torch costs <= 1.3x F.conv2d
    per call), host time included; auto picks by its fixed rule, which gives these tiny layers to torch (no Triton
    compile, a few seconds in all)."""
    from bench import overhead
    rows = overhead.per_call_rows(device_for(args), choose_by="table")
    targeted = [r for r in rows if r["kind"] == "per-call"]  # the custom-op path rows are information
    append_rows(args.out, [dict(date=time.strftime("%Y-%m-%dT%H:%M:%S"), suite="per-call", case=r["case"],
                                op="dwconv2d", backend="auto" if r in targeted else "torch",
                                direction=r["direction"], time_ms=r["auto_ms"],
                                speedup_vs_torch=r["reference_ms"] / r["auto_ms"], status="ok",
                                check=("ok" if r["ratio"] <= 1.3 else "FAIL") if r in targeted else "",
                                reason=f"{r['kind']}: {r['ratio']:.2f}x the PyTorch call ({r['reference_ms']:.3f} ms); "
                                       f"{r['target'] if r not in targeted else 'choices ' + str(r['auto_choice'])}")
                           for r in rows])
    return max(r["ratio"] for r in targeted)


# ---- compute-sanitizer ------------------------------------------------------------------------------------------

def sanitize(out, tool, extra, seconds):
    """bench/sanitizer_cases.py under compute-sanitizer's `tool` (no tool: the script alone), cut after `seconds`;
    one row; returns (exit code or "timeout ...", note)."""
    cmd = (["compute-sanitizer", "--tool", tool, "--error-exitcode", "9"] if tool else []) + \
        [sys.executable, str(ROOT / "bench" / "sanitizer_cases.py"), *extra]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as cut:
        text = "".join(t.decode() if isinstance(t, bytes) else t for t in (cut.stdout, cut.stderr) if t)
        code = f"timeout after {seconds} s"
    print(f"$ {' '.join(cmd)}\n{text[-6000:]}", flush=True)
    summary = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    matched = re.findall(r"(\d+)/(\d+) kernel results match", text)
    fused = " (the fused involution case not run: no time left)" if "involution2d_fused: not run" in text else ""
    note = (f"{tool or 'no tool'}: exit {code}, {summary[-1] if summary else '?'} errors, "
            f"{'/'.join(matched[-1]) if matched else '?'} results match{fused}, {time.perf_counter() - start:.0f} s")
    append_rows(out, [dict(suite="sanitizer", case=tool or "none", backend="cuda", status="ok" if code == 0 else
                           "error", reason=note, check="ok" if code == 0 else "FAIL")])
    return code, note


# Seconds each tool may run (H100, 2026-11-27: memcheck took 15 s; racecheck was cut at 12 s, and ran clean within
# ~35 s beside a pytest run); the sanitizer stage's budget in bench/gpu_check.sh covers both.
MEMCHECK_S, RACECHECK_S = 25, 35


def stage_sanitizer(args):
    import largeconv.cuda
    if args.rehearse:  # no GPU, no tool: the script alone (it exits 2 without a GPU), so the code around it runs
        code, note = sanitize(args.out, None, ["--quick"], 120)
        return kit_row(args.out, "sanitizer", "skipped" if code == 2 else "error", f"rehearsal: {note}")
    if not largeconv.cuda.is_available():
        return kit_row(args.out, "sanitizer", "skipped", "the CUDA extension is not built")
    # memcheck of every case first, then racecheck (slow) on one small case per op; a cut memcheck leaves racecheck
    # its time. memcheck's run ends with the fused involution's Triton kernels, started only while 8 s are left.
    results = [sanitize(args.out, "memcheck", ["--fused-by", str(MEMCHECK_S - 8)], MEMCHECK_S),
               sanitize(args.out, "racecheck", ["--quick"], RACECHECK_S)]
    kit_row(args.out, "sanitizer", "ok" if all(code == 0 for code, _ in results) else "FAIL",
            "; ".join(note for _, note in results))


# ---- model: whole models with and without largeconv (bench/models.py) --------------------------------------------

def stage_model(args):
    """RepLKNet-31B, then RedNet-50: a training step and an inference forward, PyTorch against largeconv.convert;
    each model's rows appended when it is done (bench/models.py's own files go to a scratch folder: $OUT may hold
    only 8 files)."""
    import tempfile
    from bench import models
    device = device_for(args)
    if not args.rehearse:
        quick_autotune()  # new layer shapes: auto's first calls autotune the Triton candidates
    env = env_columns(device, "model")
    # what the pipeline gave this stage, less the time to start and to write: a model cut in the middle is lost
    deadline = stage_deadline(40) - 10
    done = []
    with tempfile.TemporaryDirectory() as scratch:
        for name in ("replknet31b", "rednet50"):
            left = deadline - time.time()
            if left <= 0:
                break
            argv = ["--models", name, "--device", device.type, "--repeats", "1" if args.rehearse else "3",
                    "--budget-s", str(left), "--out", scratch] + (["--smoke"] if args.rehearse else [])
            rows = models.main(argv)
            append_rows(args.out, [dict(env, suite="model", case=f"{r['model']}-{r['phase']}", op=r["phase"],
                                        backend=r["variant"], dtype="fp32", n=r["batch"], h=r["resolution"],
                                        w=r["resolution"], status="ok", time_ms=r["median_ms"],
                                        repeats=r["repeats"], speedup_vs_torch=r["speedup"],
                                        reason=f"{r['converted']} layers converted")
                                   for r in rows])
            done += [f"{r['model']} {r['phase']} x{r['speedup']:.2f}" for r in rows if r["variant"] == "largeconv"]
    kit_row(args.out, "model", "ok" if done else "skipped", "; ".join(done) or "no time left")


# ---- pytest -m gpu, cheap tests first ---------------------------------------------------------------------------

def cost(node_id):
    """Rough cost of a test from its id: the product of the sizes in its parameters (shapes), 1 without."""
    product = 1
    for number in re.findall(r"\d+", node_id.split("[", 1)[1] if "[" in node_id else ""):
        product *= max(1, int(number))
    return product


def pytest_collection_modifyitems(items):
    """Pytest hook (`-p bench.gpu_kit`): run the cheapest tests first; stable, so file order among equals."""
    items.sort(key=lambda item: cost(item.nodeid))


# A test that kills the process (the first GPU run: a segfault in one test, ~296 never ran) is deselected and the
# run restarted, at most PYTEST_RERUNS times and while PYTEST_RERUN_MIN_S of the stage's budget are left.
PYTEST_RERUNS, PYTEST_RERUN_MIN_S = 3, 10
# faulthandler's frames (pytest turns it on), innermost first; helpers in the test file are passed over
TEST_FRAME = re.compile(r'File "[^"]*/tests/test_\w+\.py", line \d+ in (test\w*)')


def crashed_test(output):
    """The test function the crash happened in (the crashing thread's innermost test frame), or None."""
    match = TEST_FRAME.search(output.rsplit("Current thread", 1)[-1])
    return match.group(1) if match else None


def run_streamed(cmd, cwd):
    """(return code, output) of cmd; its output is passed on as it comes, so a run cut by the stage's timeout keeps
    what it printed."""
    print("$ " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        print(line, end="", flush=True)
        lines.append(line)
    return proc.wait(), "".join(lines)


def stage_pytest(args):
    import importlib.util
    deadline = stage_deadline("inf")
    files = [str(f.relative_to(ROOT)) for f in sorted((ROOT / "tests").glob("test_*.py"))
             if "mark.gpu" in f.read_text()]  # collecting only these saves the imports of the rest
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-p", "bench.gpu_kit", "-p", "no:cacheprovider", "-q",
           "-rfE", "--durations=10", *files]
    cmd += ["-n", "0"] if importlib.util.find_spec("xdist") else []
    crashed = []
    while True:
        deselect = ["-k", " and ".join(f"not {t}" for t in crashed)] if crashed else []
        code, output = run_streamed(cmd + deselect, ROOT)
        if code >= 0 and "Fatal Python error" not in output:
            break
        test = crashed_test(output)
        rerun = test is not None and len(crashed) < PYTEST_RERUNS and time.time() < deadline - PYTEST_RERUN_MIN_S
        crashed.append(test or "a test not named in the traceback")
        # said now: a rerun cut by the stage's timeout writes no final row
        kit_row(args.out, "pytest", "FAIL", f"{crashed[-1]} crashed pytest (exit {code}); "
                + ("rerun without it" if rerun else "no rerun"))
        if not rerun:
            break
    tally = next((line.strip("= ") for line in reversed(output.splitlines())  # "1 failed, 2 passed in 3.1s"
                  if re.search(r"\b\d+ \w+.* in [\d.]+s\b|no tests ran", line)), "no pytest tally")
    kit_row(args.out, "pytest", "ok" if code == 0 and not crashed else "FAIL",
            (f"crashed: {', '.join(crashed)}; " if crashed else "") + tally[:200])


# ---- summary ----------------------------------------------------------------------------------------------------

def fused_summary(rows):
    """The fused involution's table: per layer, dtype and backend, unfused and fused ms (forward+backward) and the
    ratio against the target; pairs not timed say why."""
    from bench.rows import num
    fused = [r for r in rows if r["suite"] == "fused_involution"]
    if not fused:
        return []
    lines = ["", f"{'fused involution layer':<26} {'dtype':<5} {'backend':<7} {'unfused ms':>10} {'fused ms':>9} "
             f"{'x unfused':>9}  target >= {FUSED_TARGET:g}x"]
    timed = fused_ratios(fused)
    for key in dict.fromkeys((r["case"], r["dtype"], r["backend"]) for r in fused):
        case, dtype, backend = key
        if key in timed:
            unfused, fast = timed[key]
            check = next(r["check"] for r in fused if (r["case"], r["dtype"], r["backend"]) == key
                         and r["op"] == "involution2d_fused")
            lines.append(f"{case:<26} {dtype:<5} {backend:<7} {unfused:>10.3f} {fast:>9.3f} {unfused / fast:>9.2f}  "
                         f"{'met' if unfused / fast >= FUSED_TARGET else 'not met'}"
                         f"{'' if check == 'ok' else f' (check {check}: fused and unfused outputs differ)'}")
        else:
            why = next((f"{r['status']}: {r['reason']}" for r in fused if (r["case"], r["dtype"], r["backend"]) == key
                        and r["status"] != "ok"), "incomplete")
            lines.append(f"{case:<26} {dtype:<5} {backend:<7} {'-':>10} {'-':>9} {'-':>9}  not timed ({why[:80]})")
    for r in (r for r in rows if r["suite"] == "fused_launches"):
        text = f"{num(r['time_ms']):9.3f} ms" if r["status"] == "ok" else f"{r['status']}: {r['reason'][:80]}"
        lines.append(f"{r['case']:<26} {r['dtype']:<5} fused launch {r['direction']:<13} {text}")
    return lines


def stage_summary(args):
    from bench.rows import num
    out = Path(args.out)
    lines = [f"{'stage':<16} {'status':<9} {'seconds':>8} {'budget':>7}  note"]
    notes = {r["case"]: (r["status"], r["reason"]) for r in read_rows(out) if r["suite"] == "kit"}
    if (out / "stages.csv").exists():
        for r in csv.DictReader(open(out / "stages.csv")):
            note = next((v[1] for k, v in notes.items() if k.startswith(r["stage"])), "")
            lines.append(f"{r['stage']:<16} {r['status']:<9} {num(r['seconds']):>8.1f} {r['budget']:>7}  {note}")
    conv1d = [r for r in read_rows(out) if r["suite"] == "conv1d" and r["status"] == "ok"
              and r["backend"] not in ("torch", "torch_cl")]
    if conv1d:
        lines += ["", f"{'conv1d case':<24} {'backend':<8} {'dtype':<5} {'dir':<7} {'ms':>9} {'x F.conv1d':>10} "
                  f"{'x best':>7}"]
        lines += [f"{r['case']:<24} {r['backend']:<8} {r['dtype']:<5} {r['direction']:<7} {num(r['time_ms']):>9.3f} "
                  f"{num(r['speedup_vs_torch']):>10.2f} {num(r['speedup_vs_best_torch']):>7.2f}" for r in conv1d]
    launches = [r for r in read_rows(out) if r["suite"] == "conv1d_launches"]
    if launches:
        lines += ["", f"{'conv1d launches':<24} {'backend':<8} {'dtype':<5} {'part':<13} {'ms':>9}"]
        lines += [f"{r['case']:<24} {r['backend']:<8} {r['dtype']:<5} {r['direction']:<13} "
                  + (f"{num(r['time_ms']):>9.3f}" if r["status"] == "ok" else f"{r['status']}: {r['reason'][:60]}")
                  for r in launches]
    lines += fused_summary(read_rows(out))
    rows = [r for r in read_rows(out) if r["suite"] in ("headline", "weak") and r["status"] == "ok"]
    lines += ["", f"{'headline case':<24} {'backend':<8} {'dtype':<5} {'dir':<7} {'ms':>9} {'x PyTorch':>9} "
              f"{'x best':>7} {'% roof':>7}"]
    cases = list(dict.fromkeys(r["case"] for r in rows))[:3]
    for case in cases:
        for r in rows:
            if r["case"] == case and r["backend"] in ("triton", "cuda", "auto", "cpu") and r["direction"] != "bwd":
                lines.append(f"{case:<24} {r['backend']:<8} {r['dtype']:<5} {r['direction']:<7} "
                             f"{num(r['time_ms']):>9.3f} {num(r['speedup_vs_torch']):>9.2f} "
                             f"{num(r['speedup_vs_best_torch']):>7.2f} {100 * num(r['roof_fraction']):>7.1f}")
    text = "\n".join(lines) + "\n"
    (out / "summary.txt").write_text(text)
    print(text, end="")


# ---- main -------------------------------------------------------------------------------------------------------

STAGES = {"env": stage_env, "smoke": stage_smoke, "timings": stage_timings, "sanitizer": stage_sanitizer,
          "auto": stage_auto, "model": stage_model, "pytest": stage_pytest, "summary": stage_summary}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("stage", choices=STAGES)
    p.add_argument("--out", required=True)
    p.add_argument("--backend", default="triton", choices=("triton", "cuda"))
    p.add_argument("--rehearse", action="store_true", help="CPU: tiny shapes, Triton interpreter")
    p.add_argument("--workers", type=int, default=0, help="processes for the smoke and the prewarm (0: by cores)")
    args = p.parse_args(argv)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    hang = os.environ.get("GPU_KIT_HANG", "")  # test hook: "STAGE" or "STAGE:ignore-term" never returns
    if hang.split(":")[0] == args.stage:
        if hang.endswith(":ignore-term"):
            import signal
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print(f"GPU_KIT_HANG: {args.stage} hangs", flush=True)
        while True:
            time.sleep(1)
    STAGES[args.stage](args)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
