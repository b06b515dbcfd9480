"""Static performance report for an H100, made on a machine with no GPU: every Triton kernel compiled for sm_90
(bench/sm90.py), its registers, spills, shared memory, occupancy and inner-loop instruction mix from the SASS; the
CUDA C++ kernels' resource usage from nvcc; and a predicted time per headline case from the model below.

    .venv/bin/python bench/static_gpu.py        # writes bench/results/static-sm90/report.md and predicted.csv

Model (one H100 SXM: 132 SMs, 4 schedulers per SM issuing one warp instruction per clock each, 1.98 GHz boost,
3.35 TB/s DRAM, tensor cores 494.7 TFLOP/s TF32 and 989.4 bf16, dense):
- executed MACs: what the kernel's tiles compute, padding lanes and the zeros of the Toeplitz band included
  (formulas in `executed_macs`).
- issue time = executed MACs x (warp instructions per MAC in the hot loop, from the SASS) / (132 x 4 x clock),
  divided by the occupancy efficiency min(1, resident warps per scheduler / 4) (fewer warps cannot hide the
  load latency) and by the wave efficiency (last partial wave of programs). Instructions outside the hot loop
  are ignored (prologue, epilogue, the torch sum of grad-weight's partial sums).
- tensor time = 2 x executed MACs / tensor-core peak (HGMMA kernels only).
- memory time = minimum bytes (bench/counts.py conventions: every tensor read or written once) / 3.35 TB/s; L2 is
  assumed to serve the re-reads of halos and of x per kernel row.
- predicted = max(issue, tensor, memory) + 4 us launch; bound = memory when the memory time is the largest,
  else compute. floor = max(useful FLOPs / the peak of the unit the kernel runs on, minimum bytes / bandwidth).
- grad-weight's programs: its tiles times the reduction splits the kernel picks on 132 SMs.
- the autotuned kernels: the candidate with the smallest predicted time (what autotuning should find).
"""
from __future__ import annotations

import argparse
import csv
import glob
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import triton  # noqa: E402

from bench import counts, sm90, suites  # noqa: E402

CLOCK = 1.98e9
ISSUE_PER_SM = 4
BANDWIDTH = 3.35e12
FFMA_PEAK = 66.9e12
TENSOR_PEAK = {"fp32": 494.7e12, "bf16": 989.4e12}  # fp32 = TF32 (the default: cuDNN's allow_tf32 is True)
LAUNCH_S = 4e-6
HEADLINE = [c for c in suites.replknet31b() if c.name.endswith(("s1", "s2", "s3", "s4"))] + \
    [c for c in suites.slak() if c.name == "slak-s1-51x5"] + \
    [c for c in suites.rednet50() if c.name in ("rednet50-s1", "rednet50-s2", "rednet50-s2-stride2")]
DTYPES = {"fp32": "fp32-tf32", "bf16": "bf16"}
DIRECTIONS = ("forward", "grad-input", "grad-weight")
OUT = os.path.join(ROOT, "bench", "results", "static-sm90")


# ----------------------------------------------------------------------------------------------------------------
# SASS


def parse_sass(text):
    """[(address, opcode with modifiers, operands)] of the instructions."""
    out = []
    for m in re.finditer(r"/\*([0-9a-f]{4,})\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Za-z0-9_.]*)\s*([^;]*);", text):
        out.append((int(m.group(1), 16), m.group(2), m.group(3)))
    return out


def mac_per_instruction(op):
    """Multiply-adds one warp's issue of the instruction performs."""
    name = op.split(".")[0]
    if name in ("FFMA", "DFMA"):
        return 32
    if name == "HFMA2":
        return 64
    if name == "HMMA":
        m, n, k = (int(v) for v in re.match(r"HMMA\.(\d\d)(\d)(\d+)", op).groups())
        return m * n * k
    if name == "HGMMA":  # one warpgroup instruction, issued by each of its 4 warps
        m, n, k = (int(v) for v in re.match(r"HGMMA\.(\d+)x(\d+)x(\d+)", op).groups())
        return m * n * k // 4
    return 0


def classify(op):
    name = op.split(".")[0]
    width = re.search(r"\.(128|64|U16|S16|U8|S8)\b", op)
    bits = {"128": 128, "64": 64, "U16": 16, "S16": 16, "U8": 8, "S8": 8}[width.group(1)] if width else 32
    if name in ("FFMA", "DFMA", "HFMA2", "HMMA", "HGMMA", "FMUL", "FADD", "DMUL", "DADD"):
        return name if name != "FMUL" and name != "FADD" else "FMUL/FADD"
    if name in ("LDG", "LDGSTS", "UTMALDG", "UBLKCP"):
        return f"{name}.{bits}" if name in ("LDG", "LDGSTS") else name
    if name in ("LDS", "LDSM", "STS"):
        return f"{name}.{bits}" if name != "LDSM" else name
    if name in ("STG", "RED", "ATOM", "ATOMG"):
        return f"{name}.{bits}"
    if name in ("ISETP", "FSETP", "DSETP", "PLOP3", "P2R", "R2P", "VOTE"):
        return "predicate"
    if name in ("IMAD", "IADD3", "LEA", "SHF", "LOP3", "IMNMX", "IABS", "SEL", "MOV", "PRMT", "SHL", "SHR",
                "IMUL", "LEA.HI", "UIMAD", "UIADD3", "ULEA", "USHF", "ULOP3", "UMOV", "USEL", "UISETP", "IDP"):
        return "integer"
    if name.startswith("U"):
        return "integer"
    if name in ("F2F", "F2FP", "I2F", "F2I", "I2FP"):
        return "convert"
    return "other"


def hot_loop(instructions):
    """The innermost loop (backward branch) with the most multiply-adds; the whole kernel if no loop has any."""
    loops = [(target, addr) for addr, op, args in instructions if op.startswith("BRA")
             for target in [int(m.group(1), 16) for m in [re.search(r"0x([0-9a-f]+)", args)] if m] if target < addr]
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    best, best_macs = None, 0
    for lo, hi in inner:
        body = [i for i in instructions if lo <= i[0] <= hi]
        macs = sum(mac_per_instruction(op) for _, op, _ in body)
        if macs > best_macs:
            best, best_macs = body, macs
    return best if best is not None else instructions


def loop_mix(text):
    body = hot_loop(parse_sass(text))
    mix = Counter(classify(op) for _, op, _ in body)
    macs = sum(mac_per_instruction(op) for _, op, _ in body)
    return dict(instructions=len(body), macs=macs, mix=mix)


# ----------------------------------------------------------------------------------------------------------------
# occupancy


def occupancy(registers, shared, num_warps):
    """Resident programs per SM and warps per scheduler on an H100 (registers allocated per warp in 256s)."""
    h = sm90.H100
    regs_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_regs = h["regs_per_sm"] // (regs_per_warp * num_warps)
    by_smem = h["smem_per_sm"] // (shared + 1024) if shared else h["max_blocks_per_sm"]  # 1 KB reserved/block
    by_threads = h["max_threads_per_sm"] // (32 * num_warps)
    blocks = min(by_regs, by_smem, by_threads, h["max_blocks_per_sm"])
    return blocks, blocks * num_warps / 4


# ----------------------------------------------------------------------------------------------------------------
# work per launch


def cdiv(a, b):
    return -(-a // b)


def gpu_splits(units, programs):
    """grad-weight's reduction splits on an H100 (kernels/dwconv.py's _num_splits with 132 SMs)."""
    return max(1, min(cdiv(4 * sm90.H100["sms"], programs), cdiv(units, 8), 65535))


def executed_macs(case, direction, layout, config, kind):
    """Multiply-adds the kernel's tiles compute, masked lanes and Toeplitz zeros included, and the program count."""
    n, c, h, w = case.shape
    kh, kw = case.kernel
    s, d = case.stride, case.dilation
    t = config.kwargs
    if case.op == "involution2d":
        k = kh
        pad = d * (k - 1) // 2
        ho, wo = ((size + 2 * pad - d * (k - 1) - 1) // s + 1 for size in (h, w))
        groups, cpg = case.groups, c // case.groups
        bc, bp = min(triton.next_power_of_2(cpg), 64 if layout == "channels_last" else 16), t["BLOCK_P"]
        if direction == "forward":
            progs = n * groups * cdiv(cpg, bc) * cdiv(ho * wo, bp)
            return progs * bc * bp * k * k, progs
        if direction == "grad-input":
            hs, ws = cdiv(h, s), cdiv(w, s)
            progs = n * groups * s * s * cdiv(cpg, bc) * cdiv(hs * ws, bp)
            return progs * bc * bp * cdiv(k, s) ** 2, progs
        bc = min(triton.next_power_of_2(cpg), 64)
        progs = n * groups * cdiv(ho * wo, bp)
        return progs * bp * k * k * cdiv(cpg, bc) * bc, progs
    ph, pw = d * (kh - 1) // 2, d * (kw - 1) // 2
    ho, wo = (h + 2 * ph - d * (kh - 1) - 1) // s + 1, (w + 2 * pw - d * (kw - 1) - 1) // s + 1
    if layout == "nchw" and direction != "grad-weight":
        bh, bw, bj = t["BLOCK_H"], t["BLOCK_W"], t["BLOCK_J"]
        if direction == "forward":
            progs = n * c * cdiv(ho, bh) * cdiv(wo, bw)
            strip = (bw - 1) * s + (kw - 1) * d + 1
        else:
            progs = n * c * cdiv(h, bh) * cdiv(w, bw)
            strip = (bw - 1 + (kw - 1) * d) // s + 1
        return progs * kh * cdiv(strip, bj) * bh * bw * bj, progs
    if layout == "nchw":  # grad-weight: [BKH, q] @ [q, BKW] per chunk of q = BLOCK_R rows x BLOCK_Q columns
        bkh, bkw, br, bq = t["BLOCK_KH"], t["BLOCK_KW"], t["BLOCK_R"], t["BLOCK_Q"]
        tiles = c * cdiv(kh, bkh) * cdiv(kw, bkw)
        splits = gpu_splits(cdiv(n * h, br), tiles)
        return tiles * cdiv(n * h, br) * cdiv(wo, bq) * bkh * bkw * br * bq, tiles * splits
    if direction == "forward":
        bp, bc = t["BLOCK_P"], t["BLOCK_C"]
        progs = n * cdiv(ho * wo, bp) * cdiv(c, bc)
        return progs * bp * bc * kh * kw, progs
    if direction == "grad-input":
        bp, bc = t["BLOCK_P"], t["BLOCK_C"]
        progs = n * cdiv(h * w, bp) * cdiv(c, bc)
        return progs * bp * bc * kh * kw, progs
    bp, bkw, bc = t["BLOCK_P"], t["BLOCK_KW"], t["BLOCK_C"]
    progs = kh * cdiv(kw, bkw) * cdiv(c, bc)
    splits = gpu_splits(n * cdiv(ho * wo, bp), progs)
    return progs * bkw * bc * n * cdiv(ho * wo, bp) * bp, progs * splits


def useful(case, direction, itemsize):
    """(useful FLOPs, minimum bytes) of one direction (bench/counts.py conventions)."""
    n, c, h, w = case.shape
    if case.op == "involution2d":
        f = counts.involution2d_counts(n, c, h, w, case.kernel[0], case.groups, case.stride, None, case.dilation,
                                       itemsize, "fwd")
        ho, wo = f["out_h"], f["out_w"]
        x, o, wt = n * c * h * w, n * c * ho * wo, n * case.groups * case.kernel[0] ** 2 * ho * wo
    else:
        f = counts.dwconv2d_counts(n, c, h, w, case.kernel, case.stride, None, case.dilation, itemsize=itemsize)
        ho, wo = f["out_h"], f["out_w"]
        x, o, wt = n * c * h * w, n * c * ho * wo, c * case.kernel[0] * case.kernel[1]
    flops = f["flops"]
    elems = {"forward": x + wt + o, "grad-input": o + wt + x, "grad-weight": o + x + wt}[direction]
    return flops, elems * itemsize


# ----------------------------------------------------------------------------------------------------------------
# planning the headline launches


def plan(case, dtype_mode, layout):
    """{direction: Launch} for a headline case, with the GPU's tiles (tensors are never read: empty is fine)."""
    from largeconv.kernels import dwconv as dw, involution as inv
    dtype = getattr(torch, sm90.DTYPE_MODES[dtype_mode][0])
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    n, c, h, w = case.shape
    x = torch.empty(n, c, h, w, dtype=dtype).contiguous(memory_format=fmt)
    if case.op == "dwconv2d":
        kh, kw = case.kernel
        weight = torch.empty(c, 1, kh, kw, dtype=dtype)
        geometry = ((case.stride,) * 2, (kh // 2, kh // 2, kw // 2, kw // 2), (case.dilation,) * 2)
        y, fwd = dw._plan_forward(x, weight, None, *geometry, gpu=True)
        grad = torch.empty(y.shape, dtype=dtype).contiguous(memory_format=fmt)
        _, gi = dw._plan_grad_input(grad, weight, x.shape, *geometry, gpu=True)
        gw, _ = dw._plan_grad_weight(grad, x, weight.shape, *geometry, gpu=True, splits=4)
    else:
        k, s = case.kernel[0], case.stride
        pad = case.dilation * (k - 1) // 2
        ho, wo = ((size + 2 * pad - case.dilation * (k - 1) - 1) // s + 1 for size in (h, w))
        weight = torch.empty(n, case.groups * k * k, ho, wo, dtype=dtype).contiguous(memory_format=fmt)
        grad = torch.empty(n, c, ho, wo, dtype=dtype).contiguous(memory_format=fmt)
        _, fwd = inv._plan_forward(x, weight, k, s, pad, case.dilation, gpu=True)
        _, gi = inv._plan_grad_input(grad, weight, x.shape, k, s, pad, case.dilation, gpu=True)
        _, gw = inv._plan_grad_weight(grad, x, weight.shape, k, s, pad, case.dilation, gpu=True)
    precision = sm90.DTYPE_MODES[dtype_mode][1]
    out = {"forward": fwd, "grad-input": gi, "grad-weight": gw}
    return {d: l._replace(meta=dict(l.meta, PRECISION=precision)) if "PRECISION" in l.meta and precision else l
            for d, l in out.items()}


def predict(case, dtype, layout, direction, launch, compiled_cache, rows):
    """Predicted ms of the best candidate config; appends one per-config row to `rows`."""
    itemsize = 4 if dtype == "fp32" else 2
    flops, min_bytes = useful(case, direction, itemsize)
    best = None
    for config in launch.configs:
        # compiled once per kernel, layout (the stride-1 arguments it specialises on), dtype and config; the
        # other shape specialisations (sizes divisible by 16) are taken from the first case that needs it
        key = (sm90.kernel_name(launch), dtype, sm90.config_name(config), layout, str(launch.meta))
        if key not in compiled_cache:
            k = sm90.compile_launch(launch, config)
            compiled_cache[key] = (k, loop_mix(sm90.sass(k.asm)))
        k, mix = compiled_cache[key]
        blocks, warps_per_sched = occupancy(k.registers, k.shared, k.num_warps)
        macs, progs = executed_macs(case, direction, layout, config, None)
        tensor = any(name.startswith(("HGMMA", "HMMA")) for name in mix["mix"])
        issue = macs * mix["instructions"] / max(mix["macs"], 1) / (sm90.H100["sms"] * ISSUE_PER_SM * CLOCK)
        waves = progs / (sm90.H100["sms"] * max(blocks, 1))
        eff = min(1.0, warps_per_sched / 4) * (waves / math.ceil(waves))
        issue /= eff
        tensor_s = 2 * macs / TENSOR_PEAK[dtype] if tensor else 0.0
        memory = min_bytes / BANDWIDTH
        total = max(issue, tensor_s, memory) + LAUNCH_S
        floor = max(flops / (TENSOR_PEAK[dtype] if tensor else FFMA_PEAK), memory)
        row = dict(case=case.name, op=case.op, layout=layout, dtype=dtype, direction=direction,
                   kernel=key[0], config=key[2], registers=k.registers, spills=k.spills, shared=k.shared,
                   blocks_per_sm=blocks, warps_per_scheduler=warps_per_sched, loop_instr=mix["instructions"],
                   loop_macs=mix["macs"], mix=mix["mix"], executed_vs_useful=2 * macs / flops,
                   issue_ms=issue * 1e3, tensor_ms=tensor_s * 1e3, memory_ms=memory * 1e3,
                   predicted_ms=total * 1e3, floor_ms=floor * 1e3,
                   bound="memory" if memory >= max(issue, tensor_s) else "compute")
        rows.append(row)
        if best is None or row["predicted_ms"] < best["predicted_ms"]:
            best = row
    return best


# ----------------------------------------------------------------------------------------------------------------
# csrc


def nvcc_resource_usage():
    """(file, kernel, registers, spill stores, spill loads, shared, stack) of every csrc/*.cu kernel for sm_90."""
    from torch.utils.cpp_extension import include_paths
    nvcc = os.environ.get("NVCC") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc")
                                      else "nvcc")
    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cu"))):
        # device code only (--cubin) with setup.py's flags; ptxas -v prints the resource usage
        cmd = [nvcc, "--cubin", "-arch=sm_90", "-O3", "-std=c++20", "-o", os.devnull, "--resource-usage",
               "-Xptxas", "-v", *[f"-I{p}" for p in include_paths(device_type="cuda")], f"-I{ROOT}/csrc", path]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            rows.append((os.path.basename(path), "COMPILE FAILED", proc.stderr[-300:], "", "", "", ""))
            continue
        current = None
        for line in proc.stderr.splitlines():
            m = re.search(r"Compiling entry function '(\w+)' for 'sm_90", line) or \
                re.search(r"Function properties for (\w+)", line)
            if m:
                current = m.group(1)
            m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
            if m and current:
                spill = m.groups()
            m = re.search(r"Used (\d+) registers.*?(?:(\d+) bytes smem)?", line)
            if m and current and "registers" in line:
                smem = re.search(r"(\d+) bytes smem", line)
                rows.append((os.path.basename(path), demangle(current), int(m.group(1)), int(spill[1]),
                             int(spill[2]), int(smem.group(1)) if smem else 0, int(spill[0])))
    return rows


def demangle(name):
    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    except OSError:
        return name


# ----------------------------------------------------------------------------------------------------------------
# report


MIX_COLUMNS = ["FFMA", "HGMMA", "DFMA", "LDG.32", "LDG.64", "LDG.128", "LDG.16", "LDS.32", "LDS.64", "LDS.128",
               "STS.32", "STS.64", "STS.128", "LDGSTS.32", "LDGSTS.64", "LDGSTS.128", "integer", "predicate",
               "convert", "other"]


def write(rows, best_rows, cuda_rows, seconds):
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "predicted.csv"), "w", newline="") as f:
        cols = ["case", "op", "backend", "dtype", "direction", "predicted_ms", "floor_ms", "bound"]
        writer = csv.DictWriter(f, cols)
        writer.writeheader()
        for r in best_rows:
            writer.writerow(dict(case=r["case"], op=r["op"], backend=f"triton-{r['layout']}", dtype=r["dtype"],
                                 direction=r["direction"], predicted_ms=f"{r['predicted_ms']:.4f}",
                                 floor_ms=f"{r['floor_ms']:.4f}", bound=r["bound"]))
    lines = [
        "# Static sm_90 report (H100, no GPU used)",
        "",
        f"Generated by `.venv/bin/python bench/static_gpu.py` on {time.strftime('%Y-%m-%d')} with triton "
        f"{triton.__version__}, torch {torch.__version__} ({seconds:.0f} s). Every number here comes from the "
        "compiler (ptxas via Triton, nvcc) or from the model in bench/static_gpu.py's docstring; nothing was "
        "run on a GPU. The first GPU run checks the predictions (bench/NOTES.md, \"Static sm_90 report\").",
        "",
        "## Predicted H100 times (best candidate config per launch)",
        "",
        "| case | layout | dtype | direction | config | regs | spills | smem B | blocks/SM | warps/sched "
        "| executed/useful | issue ms | tensor ms | memory ms | predicted ms | floor ms | bound |",
        "|" + "---|" * 17,
    ]
    for r in best_rows:
        lines.append(f"| {r['case']} | {r['layout']} | {r['dtype']} | {r['direction']} | {r['config']} | "
                     f"{r['registers']} | {r['spills']} | {r['shared']} | {r['blocks_per_sm']} | "
                     f"{r['warps_per_scheduler']:.1f} | {r['executed_vs_useful']:.2f} | {r['issue_ms']:.3f} | "
                     f"{r['tensor_ms']:.3f} | {r['memory_ms']:.3f} | {r['predicted_ms']:.3f} | "
                     f"{r['floor_ms']:.3f} | {r['bound']} |")
    lines += ["", "## Every kernel x config x dtype: resources, occupancy and hot-loop instruction mix", "",
              "Hot loop = the innermost loop of the SASS with the most multiply-adds; counts are warp instructions "
              "in one pass of it (LDG/LDS/STS/LDGSTS by width in bits; integer = address and index arithmetic, "
              "predicate = compares and predicate logic). MAC/instr = multiply-adds per warp instruction of the "
              "loop.", "",
              "| kernel | dtype | layout | config | regs | spills | smem B | blocks/SM | warps/sched | loop instr "
              "| MAC/instr | " + " | ".join(MIX_COLUMNS) + " |",
              "|" + "---|" * (11 + len(MIX_COLUMNS))]
    seen = set()
    for r in rows:
        key = (r["kernel"], r["dtype"], r["layout"], r["config"])
        if key in seen:
            continue
        seen.add(key)
        lines.append(f"| {r['kernel']} | {r['dtype']} | {r['layout']} | {r['config']} | {r['registers']} | "
                     f"{r['spills']} | {r['shared']} | {r['blocks_per_sm']} | {r['warps_per_scheduler']:.1f} | "
                     f"{r['loop_instr']} | {r['loop_macs'] / max(r['loop_instr'], 1):.1f} | "
                     + " | ".join(str(r["mix"].get(c, 0)) for c in MIX_COLUMNS) + " |")
    lines += ["", "## CUDA C++ kernels (csrc/): nvcc --resource-usage -Xptxas -v, sm_90", "",
              "| file | kernel | registers | spill stores B | spill loads B | static smem B (dynamic is set at launch) | stack B |", "|---|---|---|---|---|---|---|"]
    for row in cuda_rows:
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    with open(os.path.join(OUT, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-cuda", action="store_true", help="skip the nvcc resource usage of csrc/")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    start = time.perf_counter()
    rows, best_rows, cache = [], [], {}
    for case in HEADLINE:
        for dtype, mode in DTYPES.items():
            for layout in sm90.LAYOUTS:
                for direction, launch in plan(case, mode, layout).items():
                    best = predict(case, dtype, layout, direction, launch, cache, rows)
                    best_rows.append(best)
                    print(f"{case.name} {dtype} {layout} {direction}: {best['predicted_ms']:.3f} ms "
                          f"(floor {best['floor_ms']:.3f}, {best['bound']})", flush=True)
    cuda_rows = [] if args.no_cuda else nvcc_resource_usage()
    write(rows, best_rows, cuda_rows, time.perf_counter() - start)
    print(f"wrote {OUT}/report.md and predicted.csv")


if __name__ == "__main__":
    main()
