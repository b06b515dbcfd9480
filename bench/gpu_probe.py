"""Follow-up probes for what a GPU run of the kit found (bench/results/h100, 2026-11-27): run on the GPU box.

    python3 bench/gpu_probe.py profile     per backend (torch, cuda, triton, auto) on small layers: GPU ms of fwd and
                                           fwd+bwd (do_bench) next to host ms per fwd+bwd call, and the profiler's
                                           top ops by self CPU time for auto and cuda (the kit saw a ~1 ms floor)
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
        "dw2d_out_size": lambda: ops.dwconv2d_forward(x4, w4, None, [1, 1], [0, 0, 0, 0], [1, 1],
                                                      torch.empty_like(x4)),
        "dw2d_dtype": lambda: ops.dwconv2d_forward(x4, w4.half(), None, [1, 1], [2, 2, 2, 2], [1, 1],
                                                   torch.empty_like(x4)),
        "dw2d_cpu_tensor": lambda: ops.dwconv2d_forward(x4.cpu(), w4, None, [1, 1], [2, 2, 2, 2], [1, 1],
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
                if backend in ("cuda", "auto") and n == 1 and k == 13:
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


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "profile"
    {"profile": profile, "throws": throws}.get(what, lambda: throw(sys.argv[2]))()
