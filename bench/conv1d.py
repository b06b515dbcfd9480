"""Depthwise Conv1d at Conformer shapes: F.conv1d vs largeconv.dwconv1d (cpu and auto), forward and forward+backward.

    python bench/conv1d.py [--kernel 31] [--dtypes fp32 bf16] [--repeats 3] [--wait-quiet 120]
                           [--out bench/results/cpu/conv1d.md]

Each time is the fastest of `--repeats` calls after one warm-up call (auto's measuring first call is the warm-up);
the machine is shared, so the fastest call is the least disturbed one. Writes a markdown table.
"""
import argparse
import datetime
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import largeconv  # noqa: E402
from bench.roofline import wait_until_quiet  # noqa: E402

SHAPES = [(32, 512, 1000), (8, 1024, 4000)]  # (N, C, L): Conformer-style batches of speech frames
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def cpu_name():
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def best_time(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def rows(kernel, dtype, repeats):
    for shape in SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen).to(dtype).requires_grad_()
        w = (torch.randn(shape[1], 1, kernel, generator=gen) / kernel ** 0.5).to(dtype).requires_grad_()
        b = torch.randn(shape[1], generator=gen).to(dtype).requires_grad_()
        grad = torch.randn(shape, generator=gen).to(dtype)
        calls = {"F.conv1d": lambda x, w, b: F.conv1d(x, w, b, padding="same", groups=x.shape[1]),
                 "dwconv1d cpu": lambda x, w, b: largeconv.dwconv1d(x, w, b, backend="cpu"),
                 "dwconv1d auto": lambda x, w, b: largeconv.dwconv1d(x, w, b, backend="auto")}
        times = {}
        for name, fn in calls.items():
            with torch.no_grad():
                forward = best_time(lambda: fn(x, w, b), repeats)
            both = best_time(lambda: torch.autograd.grad(fn(x, w, b), (x, w, b), grad), repeats)
            times[name] = (forward, both)
        base = times["F.conv1d"]
        for name, (forward, both) in times.items():
            yield (shape, name, forward * 1e3, both * 1e3, base[0] / forward, base[1] / both)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kernel", type=int, default=31)
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--wait-quiet", type=float, default=0, help="wait up to this many s for idle cores")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "cpu", "conv1d.md"))
    args = parser.parse_args(argv)
    if args.wait_quiet:
        wait_until_quiet(args.wait_quiet)
    start, load_before = time.time(), os.getloadavg()[0]
    lines = ["| dtype | (N, C, L) | call | forward ms | fwd+bwd ms | forward vs F.conv1d | fwd+bwd vs F.conv1d |",
             "|---|---|---|---:|---:|---:|---:|"]
    for dtype in args.dtypes:
        for shape, name, forward, both, s_forward, s_both in rows(args.kernel, DTYPES[dtype], args.repeats):
            lines.append(f"| {dtype} | {shape} | {name} | {forward:.1f} | {both:.1f} | {s_forward:.2f}x | "
                         f"{s_both:.2f}x |")
            print(lines[-1], flush=True)
    header = [f"# Depthwise Conv1d, K = {args.kernel}, padding 'same', with bias",
              "",
              f"date: {datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds')}; "
              f"device: {cpu_name()}, {torch.get_num_threads()} threads "
              f"(a shared machine); torch {torch.__version__}; wall time {time.time() - start:.0f} s; "
              f"load average (1 min) before / after: {load_before:.2f} / {os.getloadavg()[0]:.2f}",
              f"timing: fastest of {args.repeats} calls after a warm-up call; fwd+bwd = forward + gradients of "
              "x, weight and bias", ""]
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as file:
        file.write("\n".join(header + lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
