"""What "auto" costs on its own: the per-call overhead where it picks PyTorch, and its first (measuring) call.

    .venv/bin/python bench/overhead.py [--out bench/out] [--device cpu|cuda] [--wait-quiet 60]

Rows (overhead.csv / overhead.md in --out):
- per-call: largeconv.dwconv2d (auto, after its first call) against a direct F.conv2d call on tiny shapes where auto
  picks PyTorch, forward and forward+backward, and LargeDWConv2d against nn.Conv2d; target <= 1.3x (design.md).
- custom-op path: forward+backward with backend="torch" (every direction through the custom ops' path, on
  PyTorch's kernels) against F.conv2d's: the per-direction cost of the custom ops (auto's settle times a call both
  ways before keeping it on them).
- first call: auto's first forward+backward of a fresh shape (the measurement included) against one call of each
  backend it could run, and its peak memory against each backend's; targets: time <= 2x the slowest candidate's
  single call, memory about the chosen backend's (never the unfold reference's K*K blow-up).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import sys
import time
from unittest import mock

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import largeconv  # noqa: E402
from largeconv import dispatch  # noqa: E402
from bench.roofline import peak_memory_mb, synchronize, wait_until_quiet  # noqa: E402

TINY = [(1, 8, 8, 8, 3), (2, 32, 16, 16, 3), (1, 64, 14, 14, 5)]
# (op, shape, kernel, groups): the two cases of issue #13 item 6
FIRST_CALL = {"cpu": [("involution2d", (8, 256, 56, 56), 7, 16), ("dwconv2d", (4, 128, 56, 56), 31, None)],
              "cuda": [("involution2d", (64, 256, 56, 56), 7, 16), ("dwconv2d", (64, 128, 56, 56), 31, None)]}


def per_call_rows(device, choose_by="measure"):
    """choose_by "table": auto picks by its fixed rule (LARGECONV_AUTO=table, as under deterministic mode) instead
    of measuring, which on a GPU would compile the Triton candidates for these shapes (seconds the GPU kit cannot
    spare); where the rule gives torch every direction the calls take the same fast path as after a measured
    choice."""
    with mock.patch.dict(os.environ, {"LARGECONV_AUTO": "table"} if choose_by == "table" else {}):
        return [row for n, c, h, w, k in TINY for row in _per_call_case(device, n, c, h, w, k)]


def _per_call_case(device, n, c, h, w, k):
    x = torch.randn(n, c, h, w, device=device)
    weight = torch.randn(c, 1, k, k, device=device)
    xg, wg = x.clone().requires_grad_(), weight.clone().requires_grad_()

    def direct():
        return F.conv2d(x, weight, None, 1, k // 2, 1, c)

    def ours():
        return largeconv.dwconv2d(x, weight)

    def direct_fb():
        F.conv2d(xg, wg, None, 1, k // 2, 1, c).sum().backward()

    def ours_fb():
        largeconv.dwconv2d(xg, wg).sum().backward()

    def custom_op_fb():  # every direction through the custom ops' path, on PyTorch's own kernels
        largeconv.dwconv2d(xg, wg, backend="torch").sum().backward()

    module = largeconv.LargeDWConv2d(c, k, device=device).requires_grad_(False)
    reference_module = torch.nn.Conv2d(c, c, k, padding=k // 2, groups=c, device=device).requires_grad_(False)
    reference_module.load_state_dict(module.state_dict())

    ours_fb()  # auto's measurement (or the fixed rule's choice) happens here, before timing
    module(x)
    rows = []
    for direction, mine, theirs in (("fwd", ours, direct), ("fwdbwd", ours_fb, direct_fb),
                                    ("module fwd", lambda: module(x), lambda: reference_module(x))):
        t_mine, t_theirs = interleaved_times(mine, theirs, device)
        rows.append({"kind": "per-call", "case": f"({n},{c},{h}x{w}) K{k}", "direction": direction,
                     "auto_ms": t_mine * 1e3, "reference_ms": t_theirs * 1e3, "ratio": t_mine / t_theirs,
                     "target": "<= 1.3", "auto_choice": _choices(x, (k, k))})
    # What a call whose directions run on the custom ops costs beyond PyTorch's own, per direction (no target; on a
    # GPU these kernels take microseconds: host time)
    t_mine, t_theirs = interleaved_times(custom_op_fb, direct_fb, device, rounds=10)  # ~0.1 ms resolution is enough
    rows.append({"kind": "custom-op path", "case": f"({n},{c},{h}x{w}) K{k}", "direction": "fwdbwd",
                 "auto_ms": t_mine * 1e3, "reference_ms": t_theirs * 1e3, "ratio": t_mine / t_theirs,
                 "target": f"none: {(t_mine - t_theirs) / 3 * 1e3:.3f} ms per direction",
                 "auto_choice": "torch backend, every direction through the custom ops"})
    return rows


def interleaved_times(mine, theirs, device, rounds=40, batch=20):
    """Seconds per call of each, in alternating batches with the fastest batch of each kept (dispatch's timer, the
    one auto's settle uses): the overhead is a few microseconds on calls of ~100 us, below this machine's noise for
    one-shot medians. Wall time, so host-side cost counts on a GPU too."""
    return tuple(dispatch.interleaved_wall_times([mine, theirs], device, batch, enough_s=math.inf, max_rounds=rounds))


def _choices(x, kernel):
    picked = {key[1]: name for key, name in {**dispatch._table_choices, **dispatch.auto_choices()}.items()
              if key[2] == str(x.device) and key[5] == tuple(dispatch._bucket(s) for s in x.shape)
              and key[6] == kernel}
    return " ".join(f"{d}={picked.get(d, '?')}" for d in ("forward", "grad_input", "grad_weight"))


def _inputs(op, shape, kernel, groups, device):
    x = torch.randn(*shape, device=device, requires_grad=True)
    if op == "dwconv2d":
        w = torch.randn(shape[1], 1, kernel, kernel, device=device, requires_grad=True)
        return lambda backend: largeconv.dwconv2d(x, w, backend=backend).sum().backward()
    w = torch.randn(shape[0], shape[1] // groups * kernel * kernel, *shape[2:], device=device, requires_grad=True)
    return lambda backend: largeconv.involution2d(x, w, kernel, backend=backend).sum().backward()


def first_call_rows(device):
    rows = []
    for op, shape, kernel, groups in FIRST_CALL[device.type]:
        run = _inputs(op, shape, kernel, groups, device)
        candidates = dispatch._candidates(op, torch.empty(0, device=device), (kernel, kernel))
        single, memory = {}, {}
        for name in candidates:
            run(name)  # warm-up (compiles on GPU)
            synchronize(device)
            start = time.perf_counter()
            run(name)
            synchronize(device)
            single[name] = time.perf_counter() - start
            memory[name] = peak_memory_mb(lambda: run(name), device)
        dispatch._auto_cache.clear()
        synchronize(device)
        start = time.perf_counter()
        run("auto")
        synchronize(device)
        first = time.perf_counter() - start
        dispatch._auto_cache.clear()
        auto_memory = peak_memory_mb(lambda: run("auto"), device)
        slowest = max(single.values())
        rows.append({"kind": "first-call", "case": f"{op} {tuple(shape)} K{kernel}" + (f" G{shape[1] // groups}"
                                                                                        if groups else ""),
                     "direction": "fwdbwd", "auto_ms": first * 1e3, "reference_ms": slowest * 1e3,
                     "ratio": first / slowest, "target": "<= 2 (x slowest candidate's single call)",
                     "auto_choice": " ".join(f"{d}={n}" for (o, d, *_), n in dispatch.auto_choices().items()
                                             if o == op),
                     "single_call_ms": " ".join(f"{n}={t * 1e3:.1f}" for n, t in single.items()),
                     "peak_mb": " ".join(f"{n}={m:.0f}" for n, m in memory.items()) + f" auto={auto_memory:.0f}"})
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/out")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--wait-quiet", type=float, default=0, help="wait up to this many s for idle cores (CPU)")
    parser.add_argument("--skip-first-call", action="store_true", help="only the per-call rows (quick)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if device.type == "cpu" and args.wait_quiet:
        wait_until_quiet(args.wait_quiet)
    rows = per_call_rows(device) + ([] if args.skip_first_call else first_call_rows(device))
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for row in rows:
        row.update(device=args.device if device.type == "cpu" else torch.cuda.get_device_name(device),
                   date=stamp, torch=torch.__version__, threads=torch.get_num_threads())
    os.makedirs(args.out, exist_ok=True)
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with open(os.path.join(args.out, "overhead.csv"), "w", newline="") as file:
        writer = csv.DictWriter(file, fields)
        writer.writeheader()
        writer.writerows(rows)
    lines = [f"# auto's own cost ({rows[0]['device']}, {stamp}, torch {torch.__version__})", "",
             "| kind | case | dir | auto ms | reference ms | ratio | target | choices | details |",
             "| --- | --- | --- | ---: | ---: | ---: | --- | --- | --- |"]
    for r in rows:
        details = " ".join(filter(None, (r.get("single_call_ms") and f"single: {r['single_call_ms']};",
                                         r.get("peak_mb") and f"peak MB: {r['peak_mb']}")))
        lines.append(f"| {r['kind']} | {r['case']} | {r['direction']} | {r['auto_ms']:.3f} | "
                     f"{r['reference_ms']:.3f} | {r['ratio']:.2f} | {r['target']} | {r['auto_choice']} | {details} |")
    with open(os.path.join(args.out, "overhead.md"), "w") as file:
        file.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
