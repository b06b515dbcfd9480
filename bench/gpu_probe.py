"""Follow-up probes for what a GPU run of the kit found (bench/results/h100, 2026-11-27): run on the GPU box.

    python3 bench/gpu_probe.py ncu [OUT]   Nsight Compute on one launch of each kernel the static model leans on an
                                           assumption for (NCU_CASES: mma.sync TF32 / 3xTF32 / bf16 tensor pipes,
                                           the dense products' cuBLAS GEMMs, Triton's Toeplitz dots, the involution's
                                           memory traffic): duration, tensor and FMA pipe busy %, instructions,
                                           DRAM / L2 / shared bytes; raw CSV to OUT/ncu.csv and a table to stdout,
                                           next to bench/results/static-sm90/predicted.csv. Needs the extension
                                           built (the kit's build stage) and ncu; ~1-2 minutes. --rehearse: the
                                           cases once on CPU tensors (torch backend), no ncu (tests)

    python3 bench/gpu_probe.py profile     per backend (torch, cuda, triton, auto) on small layers: GPU ms of fwd and
                                           fwd+bwd (do_bench) next to host ms per fwd+bwd call, and the profiler's
                                           top ops by self CPU time for auto and cuda (the kit saw a ~1 ms floor)
    python3 bench/gpu_probe.py involution  the cuda backend's involution on RedNet-50's layers, bf16 and fp32:
                                           each direction alone and the layer's fwd+bwd (ms, % of the copy
                                           bandwidth, the kernels launched), after a batch-2 check against float64
                                           (--rehearse: CPU, torch backend, batch 2). `ncu OUT --involution`:
                                           Nsight Compute on the banded tensor-core involution kernels instead
    python3 bench/gpu_probe.py throws      every largeconv_C op called with a bad argument, each in its own process:
                                           "RuntimeError: ..." or "crashed (signal N)" (the kit's pytest segfaulted)
    python3 bench/gpu_probe.py throw NAME  one of them, in this process (for cuda-gdb's backtrace)
"""
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _bad_calls():
    """name -> a call that must raise RuntimeError (each a different check of csrc/binding.cpp)."""
    import largeconv.cuda  # noqa: F401  (loads the extension)
    ops = torch.ops.largeconv_C
    x4 = torch.randn(2, 8, 20, 20, device="cuda")
    w4 = torch.randn(8, 1, 5, 5, device="cuda")
    x3 = torch.randn(2, 8, 50, device="cuda")
    w3 = torch.randn(8, 1, 5, device="cuda")
    return {
        "dw2d_out_size": lambda: ops.dwconv2d_forward(x4, w4, None, [1, 1], [0, 0, 0, 0], [1, 1], False,
                                                      torch.empty_like(x4)),
        "dw2d_dtype": lambda: ops.dwconv2d_forward(x4, w4.half(), None, [1, 1], [2, 2, 2, 2], [1, 1], False,
                                                   torch.empty_like(x4)),
        "dw2d_cpu_tensor": lambda: ops.dwconv2d_forward(x4.cpu(), w4, None, [1, 1], [2, 2, 2, 2], [1, 1], False,
                                                        torch.empty_like(x4)),
        "dw1d_out_size": lambda: ops.dwconv1d_forward(x3, w3, None, 1, [0, 0], 1, torch.empty_like(x3)),
        "dw1d_dtype": lambda: ops.dwconv1d_forward(x3, w3.half(), None, 1, [2, 2], 1, torch.empty_like(x3)),
        "dw1d_noncontig": lambda: ops.dwconv1d_forward(x3.transpose(1, 2).contiguous().transpose(1, 2), w3, None, 1,
                                                       [2, 2], 1, torch.empty_like(x3)),
        "inv_out_size": lambda: ops.involution2d_forward(x4, torch.randn(2, 9, 20, 20, device="cuda"), 3, 1, 0, 1,
                                                         torch.empty_like(x4)),
        "torch_check_only": lambda: torch.empty(2, device="cuda").view(3),  # torch's own throw, for comparison
    }


def throws():
    import largeconv.cuda
    print(f"extension built: {largeconv.cuda.is_available()}", flush=True)
    names = list(_bad_calls())
    procs = {name: subprocess.Popen([sys.executable, __file__, "throw", name], stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True) for name in names}
    for name, proc in procs.items():
        out, _ = proc.communicate(timeout=120)
        last = [line for line in out.splitlines() if line.strip()][-1:] or ["(no output)"]
        verdict = f"crashed (signal {-proc.returncode})" if proc.returncode < 0 else f"exit {proc.returncode}"
        print(f"{name:<18} {verdict:<20} {last[0][:160]}", flush=True)


def throw(name):
    call = _bad_calls()[name]
    torch.cuda.synchronize()
    try:
        call()
        torch.cuda.synchronize()
        print("NO ERROR RAISED")
    except RuntimeError as error:
        print(f"RuntimeError: {str(error).splitlines()[0]}")


def profile():
    import triton.testing
    import largeconv
    cases = [(1, 1024, 7, 7, 13), (8, 1024, 7, 7, 13), (1, 128, 56, 56, 31)]
    for n, c, h, w, k in cases:
        x = torch.randn(n, c, h, w, device="cuda", requires_grad=True)
        weight = torch.randn(c, 1, k, k, device="cuda", requires_grad=True)
        bias = torch.randn(c, device="cuda", requires_grad=True)
        grad = torch.randn(n, c, h, w, device="cuda")
        for backend in ("torch", "cuda", "auto"):
            def fwd():
                return largeconv.dwconv2d(x, weight, bias, padding=k // 2, backend=backend)

            def fwdbwd():
                torch.autograd.grad(fwd(), (x, weight, bias), grad)
            try:
                for _ in range(3):
                    fwdbwd()
                torch.cuda.synchronize()
                start = time.perf_counter()
                for _ in range(20):
                    fwdbwd()
                host_ms = (time.perf_counter() - start) / 20 * 1e3  # host time per call, GPU queue not drained
                torch.cuda.synchronize()
                ms_f = triton.testing.do_bench(fwd, warmup=10, rep=40)
                ms_fb = triton.testing.do_bench(fwdbwd, warmup=10, rep=40)
                print(f"({n},{c},{h},{w}) K={k} {backend:<6} fwd {ms_f:.3f} ms  fwdbwd {ms_fb:.3f} ms  "
                      f"host per fwdbwd {host_ms:.3f} ms", flush=True)
                if backend in ("cuda", "auto") and k == 13:  # H200 run 1: auto 0.46x PyTorch at batch 8
                    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
                        for _ in range(5):
                            fwdbwd()
                        torch.cuda.synchronize()
                    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18,
                                                    max_name_column_width=60), flush=True)
                    print(prof.key_averages().table(sort_by="self_device_time_total", row_limit=8,
                                                    max_name_column_width=60), flush=True)
            except Exception as error:  # noqa: BLE001  (a probe reports and goes on)
                print(f"({n},{c},{h},{w}) K={k} {backend}: {type(error).__name__}: {str(error)[:200]}", flush=True)
    import largeconv.dispatch as dispatch
    print("auto picked:", dispatch.auto_choices(), flush=True)


def involution_times(rehearse=False):
    """The cuda backend's involution kernels on RedNet-50's layers (batch 64, K=7, 16 channels per group), bf16 and
    fp32, NCHW: each direction alone (do_bench), its minimum bytes' share of the measured copy bandwidth, and the
    kernels it launched (profiler); first a batch-2 check of each direction against float64 (the torch backend).
    `rehearse`: the same steps on CPU tensors at batch 2 through the torch backend, timed by the clock (tests)."""
    import largeconv
    from bench import suites
    from largeconv import dispatch
    backend, device = ("torch", "cpu") if rehearse else ("cuda", "cuda")
    module = dispatch.backend_module(backend)
    from bench import peaks
    bandwidth = peaks.measure_bandwidth(torch.device(device), None if device == "cuda" else 64 << 20)
    print(f"copy bandwidth {bandwidth:.0f} GB/s (read + written)", flush=True)
    for case in suites.rednet50(batch=2 if rehearse else 64):
        k, s = case.kernel[0], case.stride
        ho, wo = ((size + 2 * (k // 2) - k) // s + 1 for size in (case.h, case.w))
        for dtype in (torch.bfloat16, torch.float32):
            try:
                print(f"{case.name} {str(dtype)[6:]}: " + _involution_check(case, dtype, module, device), flush=True)
                x = torch.randn(case.n, case.c, case.h, case.w, device=device).to(dtype)
                weight = (torch.randn(case.n, case.groups * k * k, ho, wo, device=device) / k).to(dtype)
                grad = torch.randn(case.n, case.c, ho, wo, device=device).to(dtype)
                xg, wg = x.clone().requires_grad_(), weight.clone().requires_grad_()
                calls = {"forward": lambda: module.involution2d_forward(x, weight, k, s, k // 2, 1),
                         "grad_input": lambda: module.involution2d_grad_input(grad, weight, x.shape, k, s, k // 2, 1),
                         "grad_weight": lambda: module.involution2d_grad_weight(grad, x, weight.shape, k, s, k // 2,
                                                                                1),
                         "fwd+bwd layer": lambda: torch.autograd.grad(
                             largeconv.involution2d(xg, wg, k, s, k // 2, backend=backend), (xg, wg), grad)}
                # each direction reads two of x, weight, grad and writes the third's shape; the layer runs all three
                min_bytes = sum(t.numel() * t.element_size() for t in (x, weight, grad))
                for direction, call in calls.items():
                    ms = _time_ms(call, device)
                    moved = min_bytes * (3 if direction == "fwd+bwd layer" else 1)
                    print(f"  {direction:<14} {ms:8.4f} ms  {moved / ms / 1e6:7.0f} GB/s  "
                          f"{100 * moved / ms / 1e6 / bandwidth:5.1f}% of copy  {_kernels(call, device)}", flush=True)
            except Exception as error:  # noqa: BLE001  (a probe reports and goes on)
                print(f"{case.name} {dtype}: {type(error).__name__}: {str(error)[:300]}", flush=True)


def _time_ms(call, device):
    if device == "cuda":
        import triton.testing
        return triton.testing.do_bench(call, warmup=10, rep=30)
    start = time.perf_counter()
    call()
    return (time.perf_counter() - start) * 1e3


def _kernels(call, device):
    """Names of the kernels (CUDA) or top-level ops (CPU) one call runs."""
    activity = torch.profiler.ProfilerActivity.CUDA if device == "cuda" else torch.profiler.ProfilerActivity.CPU
    with torch.profiler.profile(activities=[activity]) as prof:
        call()
        if device == "cuda":
            torch.cuda.synchronize()
    events = [e for e in prof.events() if e.device_type.name == device.upper()]
    return sorted({e.name[:60] for e in events if device == "cuda" or e.cpu_parent is None})


def _involution_check(case, dtype, module, device):
    """Batch 2 of the case, each direction against float64 (torch backend): relative L2 errors."""
    import largeconv
    k, s = case.kernel[0], case.stride
    x = torch.randn(2, case.c, case.h, case.w, device=device)
    ho, wo = ((size + 2 * (k // 2) - k) // s + 1 for size in (case.h, case.w))
    weight = torch.randn(2, case.groups * k * k, ho, wo, device=device) / k
    grad = torch.randn(2, case.c, ho, wo, device=device)
    x64, w64 = (t.double().requires_grad_() for t in (x, weight))
    ref = largeconv.involution2d(x64, w64, k, s, k // 2, backend="torch")
    refs = (ref, *torch.autograd.grad(ref, (x64, w64), grad.double()))
    xl, wl, gl = (t.to(dtype) for t in (x, weight, grad))
    got = (module.involution2d_forward(xl, wl, k, s, k // 2, 1),
           module.involution2d_grad_input(gl, wl, xl.shape, k, s, k // 2, 1),
           module.involution2d_grad_weight(gl, xl, wl.shape, k, s, k // 2, 1))
    errors = [((g.double() - r).norm() / r.norm()).item() for g, r in zip(got, refs)]
    return "batch-2 errors vs float64 " + ", ".join(f"{e:.2e}" for e in errors)


# ---- Nsight Compute ------------------------------------------------------------------------------------------------

# (name, op, backend, dtype, TF32 allowed, direction, (N, C, H, W), K): one launch each under an NVTX range of its name
# (no "/": ncu's --nvtx-include reads it as nesting); the name's case part matches bench/results/static-sm90
NCU_CASES = [
    ("replknet31b-s1.cuda.tf32.forward", "dwconv2d", "cuda", torch.float32, True, "forward", (64, 128, 56, 56), 31),
    ("replknet31b-s1.cuda.fp32.forward", "dwconv2d", "cuda", torch.float32, False, "forward", (64, 128, 56, 56), 31),
    ("replknet31b-s1.cuda.bf16.forward", "dwconv2d", "cuda", torch.bfloat16, False, "forward", (64, 128, 56, 56), 31),
    ("replknet31b-s1.cuda.tf32.grad-weight", "dwconv2d", "cuda", torch.float32, True, "grad-weight",
     (64, 128, 56, 56), 31),
    ("replknet31b-s1.cuda.bf16.grad-weight", "dwconv2d", "cuda", torch.bfloat16, False, "grad-weight",
     (64, 128, 56, 56), 31),
    ("replknet31b-s3.cuda.fp32.forward", "dwconv2d", "cuda", torch.float32, False, "forward", (64, 512, 14, 14), 27),
    ("replknet31b-s3.cuda.fp32.grad-weight", "dwconv2d", "cuda", torch.float32, False, "grad-weight",
     (64, 512, 14, 14), 27),
    ("replknet31b-s1.triton.bf16.forward", "dwconv2d", "triton", torch.bfloat16, False, "forward",
     (64, 128, 56, 56), 31),
    ("rednet50-s1.triton.fp32.forward", "involution2d", "triton", torch.float32, False, "forward", (64, 64, 56, 56), 7),
]
# `ncu OUT --involution`: the cuda bf16 NCHW involution kernels at RedNet-50 stages 1 and 3 (banded tensor-core
# forward and s1 grad-input; the FMA kernels on 16-bit tiles for grad-weight and s3 grad-input, since 2026-11-29)
INV_NCU_CASES = [(f"rednet50-{stage}.cuda.bf16.{direction}", "involution2d", "cuda", torch.bfloat16, False, direction,
                  shape, 7) for stage, shape in (("s1", (64, 64, 56, 56)), ("s3", (64, 256, 14, 14)))
                 for direction in ("forward", "grad-input", "grad-weight")]
NCU_METRICS = [
    "gpu__time_duration.sum", "sm__pipe_tensor_op_hmma_cycles_active.avg.pct_of_peak_sustained_active",
    "sm__inst_executed_pipe_tensor_op_hmma.sum", "sm__pipe_fma_cycles_active.avg.pct_of_peak_sustained_active",
    "smsp__inst_executed.sum", "sm__warps_active.avg.pct_of_peak_sustained_active", "dram__bytes.sum",
    "lts__t_bytes.sum", "l1tex__data_pipe_lsu_wavefronts_mem_shared.sum", "launch__registers_per_thread",
    "dram__throughput.avg.pct_of_peak_sustained_elapsed", "smsp__issue_active.avg.pct_of_peak_sustained_active",
    "l1tex__data_bank_conflicts_pipe_lsu_mem_shared.sum", "launch__grid_size", "launch__occupancy_limit_shared_mem",
    "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
    "smsp__average_warps_issue_stalled_mio_throttle_per_issue_active.ratio",
]


def _ncu_call(op, backend, dtype, direction, shape, k, device):
    """An argument-free callable running one direction once, on fresh random inputs."""
    import largeconv
    from largeconv import dispatch
    n, c, h, w = shape
    x = torch.randn(shape, device=device).to(dtype)
    if op == "dwconv2d":
        weight = (torch.randn(c, 1, k, k, device=device) / k).to(dtype)
        grad = torch.randn(shape, device=device).to(dtype)
        geometry = ((1, 1), (k // 2,) * 4, (1, 1))
        module = dispatch.backend_module(backend)
        if direction == "forward":
            return lambda: module.dwconv2d_forward(x, weight, None, *geometry)
        return lambda: module.dwconv2d_grad_weight(grad, x, weight.shape, *geometry)
    weight = torch.randn(n, c // 16 * k * k, h, w, device=device).to(dtype)  # RedNet: 16 channels per group
    if backend != "cuda":
        return lambda: largeconv.involution2d(x, weight, k, 1, k // 2, backend=backend)
    import largeconv.cuda as module
    grad = torch.randn(shape, device=device).to(dtype)
    return {"forward": lambda: module.involution2d_forward(x, weight, k, 1, k // 2, 1),
            "grad-input": lambda: module.involution2d_grad_input(grad, weight, x.shape, k, 1, k // 2, 1),
            "grad-weight": lambda: module.involution2d_grad_weight(grad, x, weight.shape, k, 1, k // 2, 1)}[direction]


def ncu_cases(rehearse=False, cases=NCU_CASES):
    """Each case: a warm-up call (Triton compiles and autotunes there), then one call in an NVTX range of its name."""
    device = "cpu" if rehearse else "cuda"
    for name, op, backend, dtype, tf32, direction, shape, k in cases:
        if rehearse:  # tiny, on the torch backend: the case table and the calls, not the kernels
            backend, shape = "torch", (2, 16, 7, 7)
        torch.backends.cudnn.allow_tf32 = tf32
        try:
            call = _ncu_call(op, backend, dtype, direction, shape, k, device)
            call()
            if rehearse:
                call()
            else:
                torch.cuda.synchronize()
                torch.cuda.nvtx.range_push(name)
                try:
                    call()
                    torch.cuda.synchronize()
                finally:
                    torch.cuda.nvtx.range_pop()
            print(f"{name}: ok", flush=True)
        except Exception as error:  # noqa: BLE001 - a probe reports and goes on
            print(f"{name}: {type(error).__name__}: {str(error)[:200]}", flush=True)


def ncu(out=".", cases=NCU_CASES):
    """ncu over ncu_cases (metrics it does not know are left out), then one line per case: its launches' summed
    duration, the tensor / FMA pipes' busy % of the longest launch, ... (raw rows in OUT/ncu.csv)."""
    which = ["--involution"] if cases is INV_NCU_CASES else []
    known = subprocess.run(["ncu", "--query-metrics"], capture_output=True, text=True).stdout
    metrics = [m for m in NCU_METRICS if m.split(".")[0] in known]
    csv_path = Path(out) / "ncu.csv"
    cmd = ["ncu", "--nvtx", *[a for case in cases for a in ("--nvtx-include", f"{case[0]}/")],
           "--metrics", ",".join(metrics), "--clock-control", "none", "--csv", "--page", "raw",
           "--log-file", str(csv_path), sys.executable, __file__, "ncu-cases", *which]
    print("$ " + " ".join(cmd), flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    print(proc.stdout[-4000:] + proc.stderr[-2000:], f"(ncu: exit {proc.returncode}, "
          f"{time.perf_counter() - start:.0f} s; metrics left out: {sorted(set(NCU_METRICS) - set(metrics))})",
          flush=True)
    print("\n".join(ncu_table(csv_path.read_text() if csv_path.exists() else "", metrics, cases)), flush=True)


def ncu_table(text, metrics, cases=NCU_CASES):
    """Lines, one per case, from ncu's raw CSV (`text`: log lines, a header, a units row, one row per launch): its
    launches' summed duration, then each metric of its longest launch, with units."""
    import csv
    import io
    if '"ID"' not in text:
        return ["ncu wrote no CSV rows"]
    rows = list(csv.DictReader(io.StringIO(text[text.find('"ID"'):])))
    units = next((r for r in rows if not r["ID"].strip()), {})
    launches = {}
    for row in rows:
        if row["ID"].strip().isdigit():  # a launch; its NVTX range is one of its columns
            case = next((c[0] for c in cases if c[0] in " ".join(map(str, row.values()))), "(no range)")
            launches.setdefault(case, []).append(row)

    def num(row, key):
        try:
            return float(str(row.get(key, "nan")).replace(",", ""))
        except ValueError:
            return float("nan")
    lines = []
    for case, rows_ in launches.items():
        longest = max(rows_, key=lambda r: num(r, "gpu__time_duration.sum"))
        total = sum(num(r, "gpu__time_duration.sum") for r in rows_)
        lines.append(f"{case}: {len(rows_)} launches, {total:.6g} {units.get('gpu__time_duration.sum', '')}; "
                     f"longest {longest.get('Kernel Name', '?')[:70]}: " + ", ".join(
                         f"{m} {num(longest, m):.4g} {units.get(m, '')}".rstrip()
                         for m in metrics if m != "gpu__time_duration.sum"))
    return lines


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "profile"
    chosen = INV_NCU_CASES if "--involution" in sys.argv else NCU_CASES
    if what == "ncu":
        ncu(sys.argv[2] if len(sys.argv) > 2 else ".", chosen)
    elif what == "ncu-cases":
        ncu_cases(rehearse="--rehearse" in sys.argv, cases=chosen)
    elif what == "involution":
        involution_times(rehearse="--rehearse" in sys.argv)
    else:
        {"profile": profile, "throws": throws}.get(what, lambda: throw(sys.argv[2]))()
