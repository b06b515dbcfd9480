"""Involution on CPU: forward+backward time and peak memory of the "cpu" backend vs the unfold reference.

The design's CPU target: at (8, 256, 56x56, K=7, G=16), cpu fwd+bwd >= 5x faster than the unfold reference with
<= 1/10 of its peak memory. Each variant runs in its own subprocess, so its peak resident memory is its own; the
peak is the high-water mark of resident memory during the first fwd+bwd (reset just before it through
/proc/self/clear_refs) minus the resident memory before it (inputs already allocated). Time is the median of the
following runs. No assertions: this prints the numbers and the ratios.

Run it on a quiet machine (see `uptime`): with several threads every op waits for its slowest thread, so another
busy process on one core can slow the many short ops of the cpu backend 10-20x; `--threads 1` is much less
sensitive to that.

    .venv/bin/python bench/involution_cpu_check.py [--repeats 3] [--threads N] [--shape 8 256 56 56 7 16]
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time

VARIANTS = ("cpu", "cpu-nhwc", "torch", "unfold")
DESCRIPTION = {
    "cpu": 'largeconv.involution2d(backend="cpu"), NCHW',
    "cpu-nhwc": 'largeconv.involution2d(backend="cpu"), channels_last',
    "torch": 'largeconv.involution2d(backend="torch") (unfold forward, fold grads)',
    "unfold": "involution2d_reference (unfold -> mul -> sum) under autograd",
}


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak():
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # resets VmHWM (peak resident set size) to the current RSS


def child(variant, shape, repeats, threads):
    import torch

    import largeconv
    from largeconv.reference import involution2d_reference

    if threads:
        torch.set_num_threads(threads)
    batch, channels, height, width, k, groups = shape
    fmt = torch.channels_last if variant == "cpu-nhwc" else torch.contiguous_format
    gen = torch.Generator().manual_seed(0)

    def inputs(batch, channels, height, width):
        pad = (k - 1) // 2
        out_h, out_w = height + 2 * pad - k + 1, width + 2 * pad - k + 1
        shapes = ((batch, channels, height, width), (batch, groups * k * k, out_h, out_w), (batch, channels, out_h, out_w))
        x, weight, grad = (torch.randn(s, generator=gen).contiguous(memory_format=fmt) for s in shapes)
        return x.requires_grad_(), weight.requires_grad_(), grad

    def step(x, weight, grad):
        start = time.perf_counter()
        if variant == "unfold":
            out = involution2d_reference(x, weight, k)
        else:
            out = largeconv.involution2d(x, weight, k, backend=variant.split("-")[0])
        out.backward(grad)
        return time.perf_counter() - start

    step(*inputs(1, groups, 8, 8))  # first-call costs (lazy imports, op registration) outside the measurement
    x, weight, grad = inputs(batch, channels, height, width)
    resident = _status_kib("VmRSS")
    _reset_peak()
    first = step(x, weight, grad)
    peak_kib = _status_kib("VmHWM") - resident
    times = []
    for _ in range(repeats):
        x.grad = weight.grad = None
        times.append(step(x, weight, grad))
    print(json.dumps(dict(variant=variant, first_s=first, median_s=statistics.median(times), times=times,
                          peak_mib=peak_kib / 1024, threads=torch.get_num_threads(), torch=torch.__version__)))


def cpu_name():
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed runs after the first (default 3)")
    parser.add_argument("--shape", type=int, nargs=6, default=[8, 256, 56, 56, 7, 16], metavar=("B", "C", "H", "W", "K", "G"))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--child", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.shape, args.repeats, args.threads)

    print(f"date: {datetime.datetime.now().isoformat(timespec='seconds')}")
    print(f"machine: {cpu_name()}, {os.cpu_count()} cores, load average at start {os.getloadavg()}")
    print(f"shape (B, C, H, W, K, G) = {tuple(args.shape)}, fp32, forward + backward (grads of x and weight)")
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, "--child", variant, "--repeats", str(args.repeats),
               "--threads", str(args.threads), "--shape", *map(str, args.shape)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        results[variant] = json.loads(out.strip().splitlines()[-1])
        r = results[variant]
        print(f"  {variant:9s} median {r['median_s']:8.3f} s  (first {r['first_s']:.3f} s, runs "
              f"{', '.join(f'{t:.3f}' for t in r['times'])})  peak +{r['peak_mib']:8.1f} MiB   {DESCRIPTION[variant]}")
    print(f"torch {results[args.variants[0]]['torch']}, {results[args.variants[0]]['threads']} threads; "
          f"load average at end {os.getloadavg()}")
    if "unfold" in results:
        ref = results["unfold"]
        for variant in ("cpu", "cpu-nhwc"):
            if variant in results:
                r = results[variant]
                print(f"{variant}: {ref['median_s'] / r['median_s']:.1f}x faster than the unfold reference, "
                      f"peak memory {r['peak_mib'] / ref['peak_mib']:.4f} of it "
                      f"(1/{ref['peak_mib'] / max(r['peak_mib'], 1e-9):.0f})")


if __name__ == "__main__":
    main()
