"""Static performance report for an H100, made on a machine with no GPU: every Triton kernel compiled for sm_90
(bench/sm90.py), its registers, spills, shared memory, occupancy and inner-loop instruction mix from the SASS; the
CUDA C++ kernels' resource usage from nvcc; and a predicted time per headline case from the model below.

    .venv-triton36/bin/python bench/static_gpu.py   # writes bench/results/static-sm90/report.md and predicted.csv
    .venv/bin/python bench/static_gpu.py --compare bench/results/h100/results.csv   # a GPU run vs predicted.csv

Run it under the Triton version the GPU runs (3.6.0 on the H100 box, .venv-triton36): versions lay out the same
load differently (the NCHW involution loads: coalesced under 3.8.0, 16 lines per warp load under 3.6.0).

Model (one H100 SXM: 132 SMs, 4 schedulers per SM issuing one warp instruction per clock each, 1.98 GHz boost,
3.35 TB/s DRAM, tensor cores 494.7 TFLOP/s TF32 and 989.4 bf16, dense):
- dtypes: fp32 as the GPU kit times it, with cuDNN's TF32 off (the NCHW dwconv dots then run as the kernels choose:
  IEEE, which Triton lowers to FFMA from shared memory, or 3xTF32, three tensor-core products per dot); tf32
  (PyTorch's default for convolutions) for the kernels with a dot; bf16. Planned under that setting, as they run.
- executed MACs: what the kernel's tiles compute, padding lanes and the zeros of the Toeplitz band included
  (formulas in `executed_macs`).
- passes of the hot loop (per warp): executed MACs / the MACs of the tile's dot x warps for the NCHW dwconv kernels
  (one dot per pass), else executed MACs / the multiply-adds of one pass in the SASS.
- issue time = passes x warp instructions of the hot loop (from the SASS) / (132 x 4 x clock),
  divided by the occupancy efficiency min(1, resident warps per scheduler / 4) (fewer warps cannot hide the
  load latency) and by the wave efficiency (last partial wave of programs). Instructions outside the hot loop
  are ignored (prologue, epilogue, the torch sum of grad-weight's partial sums).
- L1 time = passes of the hot loop x its wavefronts / (132 x clock), divided by the wave efficiency: the L1/shared
  data pipe of an SM moves one 128-byte wavefront per clock. A global load instruction costs the 128-byte lines
  its warp touches (coalescing: the kernel's own addresses, from one program run by Triton's interpreter, read
  with the thread layout Triton chose, from its GPU IR); a shared load 32 lanes x its width / 128 bytes, times the
  bank conflicts of an FMA dot's operand reads (the most distinct words one bank serves, from the shared and
  register layouts); an LDSM 4.
- tensor time = 2 x executed MACs x products per dot (3 for tf32x3) / tensor-core peak (HGMMA/HMMA kernels).
- memory time = minimum bytes (bench/counts.py conventions: every tensor read or written once) / 3.35 TB/s.
- L2 time = passes x the bytes of the hot loop's L1-bypassing loads (LDGSTS.BYPASS: 16-byte cp.async, which Triton
  always emits as cp.async.cg whatever the load's cache_modifier) / 7 TB/s (L2_BANDWIDTH, an estimate), divided by
  the wave efficiency. Other global loads are taken to hit L1 when they re-read (halos, x per kernel row): no term.
  Added 2026-11-28 (session 9): the NCHW Toeplitz kernels re-read their x strip per kernel row that way, ~5.6 GB
  from L2 for RepLKNet-31B s1's bf16 forward, more than the L1 term saw.
- memory-latency time = passes of the hot loop x its memory rounds x 500 ns / (132 x resident warps per SM),
  divided by the wave efficiency. Why: a kernel can be bound by neither a pipe nor DRAM bandwidth but by waiting:
  a warp that must have a load's data before it issues the next load waits a round trip each time, and only the
  other resident warps fill that time (Little's law: bytes in flight = bandwidth x latency; the report gives the
  DRAM bytes this leaves in flight per SM, where 3.35 TB/s x ~700 ns needs ~18 KB). Rounds per pass come from the
  SASS (`load_batches`): walking the loop in order, a stall on an LDG's register costs a round when that LDG was
  issued after the previous stall (ptxas often reuses a few registers for a tile's loads, so a 17-load pass waits
  4 times); a cp.async loop waits once per pass with num_stages - 1 passes prefetched. 500 ns is an effective
  round trip (L1, L2 and DRAM latencies mixed), fitted on one measured row, RedNet-50 s1 fp32 NCHW forward
  (H100 run 2, bench/results/h100/run2/model_correction.md); the model has no cache simulation to split it.
- predicted = max(issue, L1, tensor, memory, memory latency) + 4 us launch; bound = the largest (compute: issue or
  tensor; latency: the memory-latency time).
  A launch that always follows (NCHW grad-input's non-finite redo, which on finite data only reads the gradient)
  adds its memory time + 4 us.
  floor = max(useful FLOPs / the peak of the unit the kernel runs on, minimum bytes / bandwidth).
- grad-weight's programs: its tiles times the reduction splits the kernel picks on 132 SMs.
- the autotuned kernels: the candidate with the smallest predicted time (what autotuning should find).
- the CUDA tensor-core kernels (csrc/dwconv.cuh, fp16/bf16 NCHW; cuda_mma_rows): their plans replayed in Python,
  loop counts from their SASS, the same issue / L1 / tensor / DRAM terms, mma.sync at MMA_SYNC_SHARE of the peak.
- the CUDA involution kernels (csrc/involution.cuh, RedNet's K = 7; cuda_involution_rows): likewise, with the
  memory-latency term counted per block (its staging and its kernel rows' weight loads).
  The other CUDA kernels get resource usage only (their predictions are hand counts in bench/NOTES.md).

Changed after the first H100 run (2026-11-27; bench/results/h100/measured_vs_predicted.md has every row before and
after), where the model was off by more than 2x:
(1) fp32 was compiled with TF32, but the kit times fp32 with TF32 off: the NCHW dwconv dots then run on FFMA, and
    RepLKNet-31B s1 fp32 was predicted 5-7x too fast (forward 2.49 ms, measured 17.5; now 9.24).
(2) the L1 time. Under triton 3.6.0 a warp of the NCHW involution loads spans 16 channels x 2 pixels (the GPU IR's
    layout: threadsPerWarp [16, 2], order [0, 1]; 3.8.0 lays it along the pixels), so each load touches 16 lines,
    at one 128-byte wavefront per clock. RedNet-50 s1 was predicted 6-12x too fast (forward 0.107 ms,
    measured 1.29; now 1.33), and bf16 takes as long as fp32 (the same lines). The FMA dot's operand reads add the
    bank conflicts of its unswizzled, K-contiguous B tile (16 lanes on one bank group).
(3) an HFMA2 of -RZ and RZ (ptxas's move of a constant) counted 64 multiply-adds; it counts none.
(4) the kernels measured ran IEEE fp32 dots; since 6db7e3f the NCHW forward and grad-input run them as 3xTF32,
    whose SASS computes a dot in 3 or more tensor-core products: the passes of the dot kernels now come from the
    tile's dot, not from the loop's multiply-adds, and the tensor time counts the 3 products.
Changed after the second H100 run (2026-11-27, bench/results/h100/run2/model_correction.md): the NCHW involution
rows were predicted 1.6-2.3x too fast (RedNet-50 s1 forward 0.142 ms, measured 0.323, 27% of the DRAM roof). The
memory-latency term: the tap loop's SASS waits on its loads 1-4 times per tap, with num_stages=1 and 6-16 warps
per SM to overlap them. Every autotuner candidate was timed on the GPU and none beat 0.32 ms, so the term must
bind for all of them; counting a pass as one wait (all its loads in flight at once) does not (a candidate whose
kw loop ptxas unrolls, P32-w4, would be predicted 0.17 ms), counting rounds does.
"""
from __future__ import annotations

import argparse
import csv
import glob
import itertools
import math
import os
import re
import subprocess
import sys
import time
from collections import Counter

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402
import triton  # noqa: E402

from bench import counts, sm90, suites  # noqa: E402

CLOCK = 1.98e9
ISSUE_PER_SM = 4
BANDWIDTH = 3.35e12
FFMA_PEAK = 66.9e12
TENSOR_PEAK = {"float32": 494.7e12, "bfloat16": 989.4e12}  # by operand dtype: fp32 operands run as TF32
PRODUCTS = {"tf32x3": 3}  # tensor-core products per dot, by its input precision (1 otherwise)
L1_LINE = 128  # bytes: the L1/shared data pipe moves one 128-byte wavefront per clock per SM
# L2 -> SM bandwidth, an estimate, not measured here: ~5.5 TB/s measured by Chips and Cheese on an H100 PCIe (114 SMs
# at 1.755 GHz, "Nvidia's H100: Funny L2, and Tons of Bandwidth", 2023), scaled by SMs x clock to the SXM (132, 1.98)
L2_BANDWIDTH = 7.0e12
LAUNCH_S = 4e-6
# one round trip of a warp's global loads, effective (docstring: memory latency): fitted on one H100 row
MEMORY_LATENCY_S = 500e-9
HEADLINE = [c for c in suites.replknet31b() if c.name.endswith(("s1", "s2", "s3", "s4"))] + \
    [c for c in suites.slak() if c.name == "slak-s1-51x5"] + \
    [c for c in suites.rednet50() if c.name in ("rednet50-s1", "rednet50-s2", "rednet50-s2-stride2")]
CASES = {c.name: c for c in HEADLINE}
# fp32 is what the GPU kit times (TF32 off: tl.dot in IEEE precision, which Triton lowers to FFMA, no tensor cores);
# tf32 (PyTorch's default for convolutions) only for the launches with a dot, the others being the fp32 ones.
DTYPES = {"fp32": "fp32-ieee", "tf32": "fp32-tf32", "bf16": "bf16"}
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


def mac_per_instruction(op, args=""):
    """Multiply-adds one warp's issue of the instruction performs (an HFMA2 of -RZ and RZ is ptxas's way to
    move a constant into a register: none)."""
    name = op.split(".")[0]
    if name in ("FFMA", "DFMA"):
        return 32
    if name == "HFMA2":
        return 0 if re.match(r"\s*\w+, -?RZ, -?RZ,", args) else 64
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


def all_loops(instructions):
    """(first, last) address of each loop: a backward branch and its target."""
    return [(target, addr) for addr, op, args in instructions if op.startswith("BRA")
            for target in [int(m.group(1), 16) for m in [re.search(r"0x([0-9a-f]+)", args)] if m] if target < addr]


def inner_loops(instructions):
    """The instructions of each innermost loop (a backward branch with no loop inside it)."""
    loops = all_loops(instructions)
    inner = [lp for lp in loops if not any(o != lp and lp[0] <= o[0] and o[1] <= lp[1] for o in loops)]
    return [[i for i in instructions if lo <= i[0] <= hi] for lo, hi in inner]


def hot_loop(instructions):
    """The innermost loop with the most multiply-adds; the whole kernel if no loop has any."""
    best, best_macs = None, 0
    for body in inner_loops(instructions):
        macs = sum(mac_per_instruction(op, args) for _, op, args in body)
        if macs > best_macs:
            best, best_macs = body, macs
    return best if best is not None else instructions


def registers(operands):
    """General registers an operand list names (R4.64 is R4 and R5, R4.128 R4 to R7; RZ none)."""
    out = []
    for m in re.finditer(r"\bR(\d+)(?:\.(64|128))?\b", operands):
        out += [int(m.group(1)) + i for i in range({"64": 2, "128": 4}.get(m.group(2), 1))]
    return out


# opcodes whose first operand is not a register they write (an address, a barrier, a branch target)
NO_DESTINATION = ("ST", "STG", "STS", "STL", "RED", "BRA", "BAR", "EXIT", "DEPBAR", "LDGDEPBAR", "WARPSYNC", "NOP",
                  "CALL", "RET", "MEMBAR", "ERRBAR", "CCTL", "LDGSTS", "UTMALDG", "UBLKCP", "SYNCS", "ARRIVES")


def load_batches(body):
    """How the hot loop waits on global memory, from its SASS (one warp, one pass): `loads` = its global load
    instructions (LDG into registers, LDGSTS = cp.async into shared memory); `before_wait` = the LDGs issued before
    the first instruction that reads a register an LDG of the pass loads (the warp's loads in flight at once);
    `rounds` = the memory round trips a pass waits for in turn: an instruction reading a pending LDG's register
    stalls the warp, and costs a round when that LDG was issued after the previous stall (one issued before it
    has had that stall's time to arrive; loads are taken to complete in issue order). A cp.async loop waits once
    per pass (DEPBAR.LE SB0, N), with N of its commit groups (LDGDEPBAR) still in flight: 1 / (1 + N / groups
    per pass) rounds. 0 when the loop has no global load."""
    pending = {}  # register -> body index of the LDG loading it, until a stall covers it
    loads = before = groups = rounds = 0
    last_stall, depbar = -1, None
    for index, (_, op, args) in enumerate(body):
        name = op.split(".")[0]
        parts = args.split(",")
        if name in NO_DESTINATION:
            reads, writes = registers(args), []
        else:
            reads, writes = registers(",".join(parts[1:])), registers(parts[0])
        waits = [pending[r] for r in reads if r in pending]
        if waits:
            rounds += max(waits) > last_stall
            last_stall = index
            pending.clear()  # in-order completion: every load issued so far has arrived
        for r in writes:
            pending.pop(r, None)
        if name == "LDG":
            loads += 1
            before += last_stall < 0
            pending.update((r, index) for r in writes)
        elif name == "LDGSTS":
            loads += 1
        elif name == "LDGDEPBAR":
            groups += 1
        elif name == "DEPBAR":
            m = re.search(r"SB0,\s*(0x[0-9a-f]+|\d+)", args)
            depbar = int(m.group(1), 0) if m else 0
    if not rounds and loads and groups and depbar is not None:
        rounds = 1 / (1 + depbar / groups)
    return dict(loads=loads, before_wait=before, rounds=rounds)


def l2_bytes(body):
    """Bytes one warp's pass of the loop reads past L1 (LDGSTS.BYPASS: cp.async.cg), all 32 lanes active."""
    return sum(32 * int(re.search(r"\.(128|64|32)\b", op).group(1)) // 8
               for _, op, _ in body if op.startswith("LDGSTS") and "BYPASS" in op)


def loop_mix(text):
    body = hot_loop(parse_sass(text))
    mix = Counter(classify(op) for _, op, _ in body)
    macs = sum(mac_per_instruction(op, args) for _, op, args in body)
    return dict(instructions=len(body), macs=macs, mix=mix, l2_bytes=l2_bytes(body), **load_batches(body))


def l1_wavefronts(mix, lines_per_access, bank_conflicts):
    """128-byte wavefronts of the L1/shared data pipe per pass of the hot loop, per warp: a global load (LDG,
    LDGSTS) touches `lines_per_access` lines (coalescing, from the address probe), a shared load moves 32 lanes x its
    width times `bank_conflicts` (modelled for the operands of FMA dots only), a shared store 32 lanes x its width,
    an LDSM four wavefronts."""
    total = 0.0
    for name, count in mix.items():
        kind, _, bits = name.partition(".")
        if kind in ("LDG", "LDGSTS"):
            total += count * lines_per_access
        elif kind in ("LDS", "STS"):
            total += count * max(1.0, 32 * int(bits) / 8 / L1_LINE) * (bank_conflicts if kind == "LDS" else 1.0)
        elif kind == "LDSM":
            total += count * 4
    return total


# ----------------------------------------------------------------------------------------------------------------
# coalescing: the 128-byte lines a warp's global load touches, from the kernel's own addresses and Triton's layout


def probe_loads(case_name, mode, layout, direction, config_index, limit=64, fused_shape=None):
    """The first `limit` global loads of the middle program of one planned launch, run by Triton's interpreter
    (call this in a process started with TRITON_INTERPRET=1): [(file name, line, addresses, mask)], numpy arrays of
    the loaded block's shape; an address is the tensor's rank among the launch's tensors << 48 + the byte offset.
    With `fused_shape` (bench/sm90.py's FUSED_INVOLUTION_SHAPES form), the fused involution's launch of that shape."""
    from triton.runtime import interpreter
    if fused_shape is None:
        launch = plan(CASES[case_name], mode, layout)[direction]
    else:
        sm90.FUSED_INVOLUTION_SHAPES[case_name] = fused_shape
        launch = sm90.launches("involution2d_fused", case_name, mode, layout)[direction]
    tensors = [a for a in launch.args if isinstance(a, torch.Tensor)]
    for t in tensors:
        t.zero_()  # finite data: the kernels' path for non-finite tiles (a redo) would change the loads
    # addresses as (tensor, offset from its start): a GPU allocation starts on a line, a CPU one need not
    starts = np.array(sorted(t.data_ptr() for t in tensors), dtype=np.int64)
    builder, records = interpreter.interpreter_builder, []
    triton_dir = os.path.dirname(triton.__file__)
    masked_load = interpreter.InterpreterBuilder.create_masked_load

    class Enough(Exception):
        pass

    def recording_load(self, ptrs, mask, *args):
        frame = sys._getframe(1)
        while frame.f_code.co_filename.startswith(triton_dir):  # up to the kernel's line
            frame = frame.f_back
        addresses = ptrs.data.astype(np.int64)
        tensor = np.maximum(np.searchsorted(starts, addresses, side="right") - 1, 0)  # masked lanes may be outside
        records.append((os.path.basename(frame.f_code.co_filename), frame.f_lineno,
                        (tensor << 48) + addresses - starts[tensor], mask.data.copy()))
        if len(records) >= limit:
            raise Enough
        return masked_load(self, ptrs, mask, *args)

    interpreter.InterpreterBuilder.create_masked_load = recording_load
    builder.set_grid_idx = lambda *_: setattr(builder, "grid_idx", tuple(n // 2 for n in builder.grid_dim))
    try:
        launch.run(launch.configs[config_index])  # the middle program, again and again until `limit` loads
    except Exception:  # Enough, wrapped by the interpreter
        if len(records) < limit:
            raise
    finally:
        interpreter.InterpreterBuilder.create_masked_load = masked_load
        del builder.set_grid_idx
    return records


BLOCKED = re.compile(r"^(#\w+) = #ttg\.blocked<\{sizePerThread = \[([\d, ]+)\], threadsPerWarp = \[([\d, ]+)\], "
                     r"warpsPerCTA = \[([\d, ]+)\], order = \[([\d, ]+)\]", re.M)


def blocked_layouts(ttgir):
    """{name: (sizePerThread, threadsPerWarp, warpsPerCTA, order)} of the blocked layouts of Triton's GPU IR."""
    return {m.group(1): tuple([int(v) for v in g.split(",")] for g in m.groups()[1:])
            for m in BLOCKED.finditer(ttgir)}


def global_load_layouts(ttgir):
    """{(file name, line): (block shape, blocked layout (sizePerThread, threadsPerWarp, warpsPerCTA, order))} of the
    global loads (tt.load, cp.async) in Triton's GPU IR; a slice layout as its parent with the sliced dim of size 1."""
    blocked = blocked_layouts(ttgir)
    locs = dict(re.findall(r"^(#loc\d*) = loc\((.*)\)$", ttgir, re.M))

    def source(loc):  # a loc, or the first one it refers to (a name, an inlined call), down to "file":line
        m = re.match(r'"([^"]+)":(\d+)', locs.get(loc, ""))
        if m:  # the file's name: Triton's cache may hold the IR of the same source compiled from another path
            return os.path.basename(m.group(1)), int(m.group(2))
        ref = re.search(r"#loc\d*", locs.get(loc, ""))
        return source(ref.group(0)) if ref else None

    out = {}
    for m in re.finditer(r"(?:tt\.load|ttg\.async_copy_global_to_local) [^\n]*?: tensor<((?:\d+x)+)!tt\.ptr<\w+>, "
                         r"(?:#ttg\.slice<\{dim = (\d+), parent = (#\w+)\}>|(#\w+))>[^\n]*loc\((#loc\d*)\)", ttgir):
        shape = [int(v) for v in m.group(1).rstrip("x").split("x")]
        if m.group(2) is not None:
            shape.insert(int(m.group(2)), 1)
        layout = blocked.get(m.group(3) or m.group(4))
        where = source(m.group(5))
        if layout and where and len(shape) == len(layout[0]):
            out.setdefault(where, (shape, layout))
    return out


def warp_accesses(shape, layout, num_warps):
    """Flat element index [instructions, 32 lanes] of a blocked layout: an instruction is one register of each lane
    of one warp (elements wrap around a dim smaller than the layout's tile, as in Triton)."""
    spt, tpw, wpc, order = layout
    rank = len(shape)

    def split(ids, sizes):  # thread or warp id -> index along each dim, the dims taken fastest first (`order`)
        out = [None] * rank
        for d in order:
            out[d], ids = ids % sizes[d], ids // sizes[d]
        return out
    lane, warp = split(np.arange(32), tpw), split(np.arange(num_warps), wpc)
    regs = [min(spt[d], shape[d]) * max(1, shape[d] // (spt[d] * tpw[d] * wpc[d])) for d in range(rank)]
    reg = np.indices(regs).reshape(rank, -1)
    flat = 0
    for d in range(rank):
        tile = spt[d] * tpw[d] * wpc[d]
        coord = (reg[d] // spt[d] * tile)[None, :, None] + (warp[d] * spt[d] * tpw[d])[:, None, None] + \
            (lane[d] * spt[d])[None, None, :] + (reg[d] % spt[d])[None, :, None]
        flat = flat * shape[d] + coord % shape[d]
    return flat.reshape(-1, 32)


def lines_per_access(records, ttgir, num_warps):
    """Mean 128-byte lines a warp's global load instruction touches, over the probed loads whose layout the IR gives;
    1 when there are none. Per load site (source line): the mean over its instructions with a lane on (masked-off
    lanes touch nothing; an instruction with none on is mostly the image border of an edge program, rare in the
    whole grid); the sites weighted by the instructions they issue."""
    layouts = global_load_layouts(ttgir)
    sites = {}  # (file, line): [lines, instructions with a lane on, instructions issued]
    for file, line, addresses, mask in records:
        shape, layout = layouts.get((file, line), (None, None))
        if shape is None or math.prod(shape) != addresses.size:  # no layout, or another load of that line
            continue
        index = warp_accesses(shape, layout, num_warps)
        touched = np.where(mask.reshape(-1)[index], addresses.reshape(-1)[index] // L1_LINE, -1)
        touched.sort(axis=1)
        site = sites.setdefault((file, line), [0, 0, 0])
        site[0] += int((touched[:, 0] >= 0).sum() + (touched[:, 1:] != touched[:, :-1]).sum())
        site[1] += int((touched[:, -1] >= 0).sum())
        site[2] += len(index)
    weighted = [(issued * lines / on, issued) for lines, on, issued in sites.values() if on]
    return sum(w for w, _ in weighted) / sum(n for _, n in weighted) if weighted else 1.0


def bank_wavefronts(addresses, width):
    """Shared-memory wavefronts of one warp instruction: lanes reading `width` bytes at these byte addresses
    cost the most distinct 4-byte words any one of the 32 banks must serve (a broadcast is free)."""
    words = np.unique((addresses[:, None] // 4 + np.arange(width // 4)).ravel())
    return int(np.bincount(words % 32).max())


def dot_operand_conflicts(ttgir, num_warps):
    """Bank-conflict factor of the shared-memory reads that feed an FMA dot (tl.dot without tensor cores: fp32 in
    IEEE precision, fp64): wavefronts over their conflict-free count (32 lanes x bytes / 128), for the operand loads
    (ttg.local_load into a dot_op layout with a blocked parent); 1 when the kernel has none. Each thread reads the
    K values of its rows (A) or columns (B), vectorised along K when K is the operand's contiguous dim in shared
    memory (swizzled_shared layout)."""
    blocked = blocked_layouts(ttgir)
    shared = {m.group(1): tuple(int(v) for v in m.groups()[1:4]) + ([int(v) for v in m.group(5).split(",")],)
              for m in re.finditer(r"^(#\w+) = #ttg\.swizzled_shared<\{vec = (\d+), perPhase = (\d+), "
                                   r"maxPhase = (\d+), order = \[([\d, ]+)\]", ttgir, re.M)}
    wavefronts = ideal = 0
    for m in re.finditer(r"ttg\.local_load [^\n]*memdesc<(\d+)x(\d+)x([a-z]+)(\d+), (#\w+)[^\n]*-> tensor<[^\n]*"
                         r"#ttg\.dot_op<\{opIdx = (\d), parent = (#\w+)\}>", ttgir):
        rows, cols, bytes_ = int(m.group(1)), int(m.group(2)), int(m.group(4)) // 8
        (vec, per_phase, max_phase, order), operand = shared[m.group(5)], int(m.group(6))
        k_dim = 1 - operand  # A is [M, K], B is [K, N]
        shape = (rows, cols)
        # the M (A) or N (B) index each lane holds, per register: the parent layout with K folded to size 1
        lanes = warp_accesses([rows, 1] if operand == 0 else [1, cols], blocked[m.group(7)], num_warps)
        step = (min(vec, 16 // bytes_) if max_phase > 1 else 16 // bytes_) if order[0] == k_dim else 1
        for k in range(0, shape[k_dim], step):
            index = (lanes, k) if operand == 0 else (k, lanes)
            fast, slow = index[order[0]], index[order[1]]
            phase = (slow // per_phase) % max_phase
            offset = slow * shape[order[0]] + ((fast // vec) ^ phase) * vec + fast % vec
            for lane_offsets in offset:
                wavefronts += bank_wavefronts(lane_offsets * bytes_, step * bytes_)
                ideal += max(1.0, 32 * step * bytes_ / L1_LINE)
    return wavefronts / ideal if ideal else 1.0


def probe_pool():
    """One worker process running Triton's interpreter, for probe_loads."""
    import multiprocessing
    os.environ["TRITON_INTERPRET"] = "1"  # inherited by the spawned worker only: this process has imported triton
    try:
        return multiprocessing.get_context("spawn").Pool(1)
    finally:
        del os.environ["TRITON_INTERPRET"]


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


def executed_macs(case, direction, layout, config, kind, stacked=False):
    """Multiply-adds the kernel's tiles compute, masked lanes and Toeplitz zeros included, and the program count.
    `stacked`: the NCHW dwconv tiles take the rows of several images (kernels/dwconv.py's _stacks)."""
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
        rows = ho if direction == "forward" else h
        progs = (c * cdiv(n * rows, bh) if stacked else n * c * cdiv(rows, bh)) * \
            cdiv(wo if direction == "forward" else w, bw)
        if direction == "forward":
            strip = (bw - 1) * s + (kw - 1) * d + 1
        else:
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


def dot_macs(case, direction, layout, config):
    """Multiply-adds of the tile's tl.dot in the NCHW dwconv kernels (one per pass of their hot loop); None for the
    kernels without a dot."""
    if case.op != "dwconv2d" or layout != "nchw":
        return None
    t = config.kwargs
    if direction == "grad-weight":
        return t["BLOCK_KH"] * t["BLOCK_KW"] * t["BLOCK_R"] * t["BLOCK_Q"]
    return t["BLOCK_H"] * t["BLOCK_W"] * t["BLOCK_J"]


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
    """{direction: Launch} for a headline case, with the GPU's tiles, planned under the mode's cuDNN TF32 setting
    as the kernels would run (tensors are never read: empty is fine)."""
    from largeconv.kernels import dwconv as dw, involution as inv
    dtype_name, precision = sm90.DTYPE_MODES[dtype_mode]
    dtype = getattr(torch, dtype_name)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    n, c, h, w = case.shape
    x = torch.empty(n, c, h, w, dtype=dtype).contiguous(memory_format=fmt)
    with sm90.cudnn_conv_tf32(precision == "tf32"):
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
    return {"forward": fwd, "grad-input": gi, "grad-weight": gw}


def follower_s(launch, itemsize):
    """The launch that always follows this one (grad-input's non-finite redo): on finite data it reads what this
    launch wrote, once: memory time + a launch."""
    if launch.then is None:
        return 0.0
    return launch.then.out.numel() * itemsize / BANDWIDTH + LAUNCH_S


def loop_terms(passes, instructions, wavefronts, rounds, programs, blocks, num_warps, warps_per_sched,
               bypass_bytes=0):
    """(issue, L1, memory-latency, L2) seconds of `passes` warp passes of a hot loop (the docstring's model), each
    divided by the wave efficiency of `programs` at `blocks` resident per SM; `bypass_bytes`: l2_bytes of a pass."""
    waves = programs / (sm90.H100["sms"] * max(blocks, 1))
    wave_eff = waves / math.ceil(waves)
    issue = passes * instructions / (sm90.H100["sms"] * ISSUE_PER_SM * CLOCK) / min(1.0, warps_per_sched / 4)
    l1 = passes * wavefronts / (sm90.H100["sms"] * CLOCK)
    # memory latency: a pass waits `rounds` round trips in turn; only the SM's resident warps overlap them
    latency = passes * rounds * MEMORY_LATENCY_S / (sm90.H100["sms"] * max(blocks, 1) * num_warps)
    l2 = passes * bypass_bytes / L2_BANDWIDTH
    return issue / wave_eff, l1 / wave_eff, latency / wave_eff, l2 / wave_eff


def predict(case, dtype, mode, layout, direction, launch, compiled_cache, rows, probes):
    """Predicted ms of the best candidate config; appends one per-config row to `rows`. `probes`: a pool running
    probe_loads."""
    dtype_name = sm90.DTYPE_MODES[mode][0]
    itemsize = torch.empty(0, dtype=getattr(torch, dtype_name)).element_size()
    products = PRODUCTS.get(launch.meta.get("PRECISION"), 1)
    flops, min_bytes = useful(case, direction, itemsize)
    best = None
    for index, config in enumerate(launch.configs):
        # compiled once per kernel, layout (the stride-1 arguments it specialises on), dtype and config; the
        # other shape specialisations (sizes divisible by 16) are taken from the first case that needs it
        key = (sm90.kernel_name(launch), itemsize, sm90.config_name(config), layout, str(launch.meta))
        if key not in compiled_cache:
            k = sm90.compile_launch(launch, config)
            compiled_cache[key] = (k, loop_mix(sm90.sass(k.asm)), dot_operand_conflicts(k.asm["ttgir"], k.num_warps))
        k, mix, conflicts = compiled_cache[key]
        lines = lines_per_access(probes.apply(probe_loads, (case.name, mode, layout, direction, index)),
                                 k.asm["ttgir"], k.num_warps)
        blocks, warps_per_sched = occupancy(k.registers, k.shared, k.num_warps)
        macs, progs = executed_macs(case, direction, layout, config, None, launch.meta.get("STACK", False))
        tensor = any(name.startswith(("HGMMA", "HMMA")) for name in mix["mix"])
        # warp passes of the hot loop: one per dot of the tile where there is one (the SASS may split a dot into
        # several tensor-core products, and compute some twice), else from the loop's multiply-adds
        dot = dot_macs(case, direction, layout, config)
        passes = macs / dot * k.num_warps if dot else macs / max(mix["macs"], 1)
        issue, l1, latency, l2 = loop_terms(passes, mix["instructions"],
                                            l1_wavefronts(mix["mix"], lines, conflicts), mix["rounds"], progs,
                                            blocks, k.num_warps, warps_per_sched, mix["l2_bytes"])
        peak = TENSOR_PEAK[dtype_name] / products if tensor else FFMA_PEAK
        tensor_s = 2 * macs / peak if tensor else 0.0
        memory = min_bytes / BANDWIDTH
        warps_per_sm = max(blocks, 1) * k.num_warps
        # the same bound as Little's law: minimum (DRAM) bytes per round trip of a warp x the SM's warps
        in_flight_bytes = min_bytes / (passes * mix["rounds"]) * warps_per_sm if mix["rounds"] else 0.0
        total = max(issue, l1, l2, tensor_s, memory, latency) + LAUNCH_S + follower_s(launch, itemsize)
        floor = max(flops / peak, memory)
        bound = max((memory, "memory"), (latency, "latency"), (l1, "l1"), (l2, "l2"),
                    (max(issue, tensor_s), "compute"))[1]
        row = dict(case=case.name, op=case.op, layout=layout, dtype=dtype, direction=direction,
                   kernel=key[0], config=key[2], registers=k.registers, spills=k.spills, shared=k.shared,
                   blocks_per_sm=blocks, warps_per_scheduler=warps_per_sched, loop_instr=mix["instructions"],
                   loop_macs=mix["macs"], mix=mix["mix"], lines_per_access=lines, bank_conflicts=conflicts,
                   executed_vs_useful=2 * macs / flops, issue_ms=issue * 1e3, l1_ms=l1 * 1e3, l2_ms=l2 * 1e3,
                   tensor_ms=tensor_s * 1e3, memory_ms=memory * 1e3, loads=mix["loads"],
                   loads_before_wait=mix["before_wait"], rounds=mix["rounds"],
                   in_flight_bytes=in_flight_bytes, latency_ms=latency * 1e3, predicted_ms=total * 1e3,
                   floor_ms=floor * 1e3, bound=bound)
        rows.append(row)
        if best is None or row["predicted_ms"] < best["predicted_ms"]:
            best = row
    return best


# ----------------------------------------------------------------------------------------------------------------
# the fused involution's launches (kernels/involution_fused.py), at the GPU kit's first fused layer

# (B, C, H = W, K, stride): RedNet-50 stage 1 at batch 64 (bench/gpu_kit.py FUSED_TIMED[0]), G = C/16, Cr = C/4
FUSED_LAYER = (64, 64, 56, 7, 1)


def fused_involution_rows(probes=None):
    """Predicted ms of each fused-involution launch (fp32, TF32 off, NCHW) at FUSED_LAYER, best config: the model
    above, on the loop that gathers (the inner loop with the most LDGs; its pass is one channel step, or one tap in
    grad-input), the lines per LDG from the address probe (`probes`: a probe_pool; each launch's middle program,
    as for the headline cases), shared-memory wavefronts as l1_wavefronts counts them; no memory term (these launches read ~0.1 ms
    of DRAM in all). Passes: forward B*G*tiles programs x C/G channels; grad-reduced
    B*tiles x C channels; grad-span the same channel steps over 4 programs per SM; grad-input B*G*tiles x K*K taps;
    each x the warps, over the channels a step takes (from the kernel: 2 in the dK loop)."""
    batch, c, hw, k, stride = FUSED_LAYER
    shape = sm90.FUSED_INVOLUTION_SHAPES["kit-first-layer"] = (batch, c, hw, hw, k, stride)
    own_pool = probes is None
    probes = probe_pool() if own_pool else probes
    cpg, pixels = 16, ((hw + 2 * (k // 2) - k) // stride + 1) ** 2
    groups = c // cpg
    per_step = 2  # channels per step of _kernel_grad_tile (grad-reduced, grad-span)
    rows = []
    for direction, launch in sm90.launches("involution2d_fused", "kit-first-layer", "fp32-ieee", "nchw").items():
        best = None
        for index, config in enumerate(launch.configs):
            compiled = sm90.compile_launch(launch, config)
            records = probes.apply(probe_loads, ("kit-first-layer", "fp32-ieee", "nchw", direction, index),
                                   dict(fused_shape=shape))
            lines = lines_per_access(records, compiled.asm["ttgir"], compiled.num_warps)
            body = max(inner_loops(parse_sass(sm90.sass(compiled.asm))),
                       key=lambda b: sum(op.startswith("LDG") for _, op, _ in b))
            mix, batches = Counter(classify(op) for _, op, _ in body), load_batches(body)
            warps, tiles = compiled.num_warps, cdiv(pixels, config.kwargs["BLOCK_P"])
            programs, passes = {
                "forward": (batch * groups * tiles, batch * groups * tiles * cpg),
                "grad-reduced": (batch * tiles, batch * tiles * c / per_step),
                "grad-span": (4 * sm90.H100["sms"], batch * tiles * c / per_step),
                "grad-input": (batch * groups * tiles, batch * groups * tiles * k * k)}[direction]
            passes *= warps
            blocks, warps_per_sched = occupancy(compiled.registers, compiled.shared, warps)
            terms = dict(zip(("issue", "l1", "latency", "l2"), loop_terms(
                passes, len(body), l1_wavefronts(mix, lines, 1.0), batches["rounds"], programs, blocks, warps,
                warps_per_sched, l2_bytes(body))))
            bound = max(terms, key=terms.get)
            row = dict(direction=direction, kernel=sm90.kernel_name(launch), config=sm90.config_name(config),
                       registers=compiled.registers, spills=compiled.spills, warps_per_sm=max(blocks, 1) * warps,
                       lines_per_access=lines,
                       loop_instr=len(body), loads=batches["loads"], rounds=batches["rounds"],
                       **{f"{name}_ms": value * 1e3 for name, value in terms.items()},
                       predicted_ms=(terms[bound] + LAUNCH_S) * 1e3, bound=bound)
            if best is None or row["predicted_ms"] < best["predicted_ms"]:
                best = row
        rows.append(best)
    if own_pool:
        probes.close()
    return rows


# ----------------------------------------------------------------------------------------------------------------
# csrc


def nvcc_path():
    return os.environ.get("NVCC") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc")
                                      else "nvcc")


def second_copy_offset(elements):  # csrc/dwconv.cuh's
    return elements + (96 - elements % 64) % 64


def nvcc_resource_usage():
    """(file, kernel, registers, spill stores, spill loads, shared, stack) of every csrc/*.cu kernel for sm_90."""
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
    nvcc = nvcc_path()
    rows = []
    for path in sorted(glob.glob(os.path.join(ROOT, "csrc", "*.cu"))):
        # device code only (--cubin) with setup.py's flags (and those torch's extensions add); ptxas -v prints the
        # resource usage
        cmd = [nvcc, "--cubin", "-arch=sm_90", "-O3", "-std=c++20", *COMMON_NVCC_FLAGS, "-o", os.devnull,
               "--resource-usage",
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


# Legacy mma.sync on Hopper reaches about half of the dense tensor peak (public microbenchmarks put it at 50-62%;
# wgmma is needed for the rest): an assumption of the CUDA tensor-core rows, not measured here.
MMA_SYNC_SHARE = 0.55


def cuda_sass(source):
    """{demangled kernel name: SASS text} of csrc/<source> compiled for sm_90 (the extension's flags: setup.py's and
    the ones torch's CUDAExtension adds), and the cubin's resource usage {demangled name: (registers, stack)}. Also
    the test suite's sm_90 compile check of the sources it models (tests/test_cuda_build.py)."""
    import tempfile
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS, include_paths
    nvcc = nvcc_path()
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        subprocess.run([nvcc, "--cubin", "-arch=sm_90", "-O3", "-std=c++20", *COMMON_NVCC_FLAGS, "-o", cubin,
                        *[f"-I{p}" for p in include_paths(device_type="cuda")], f"-I{ROOT}/csrc",
                        os.path.join(ROOT, "csrc", source)], check=True, capture_output=True)
        text = subprocess.run([sm90.tool("cuobjdump"), "-sass", cubin], capture_output=True, text=True).stdout
        usage = subprocess.run([sm90.tool("cuobjdump"), "-res-usage", cubin], capture_output=True, text=True).stdout
    functions = {}
    for part in re.split(r"\n\s*Function : ", text)[1:]:
        functions[demangle(part.split("\n", 1)[0].strip())] = part
    resources = {demangle(m.group(1)): (int(m.group(2)), int(m.group(3)))
                 for m in re.finditer(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+)", usage)}
    return functions, resources


def shared_wavefronts(body, stores=False):
    """Shared-memory wavefronts of a loop's loads (and with `stores` its stores), bank-conflict free, by width
    (l1_wavefronts: 32-bit or narrower one, 64-bit two, 128-bit and ldmatrix .x4 four)."""
    kinds = ("LDS", "STS") if stores else ("LDS",)
    return l1_wavefronts(Counter(classify(op) for _, op, _ in body if op.startswith(kinds)), 0, 1.0)


def mma_loops(sass, rank=0):
    """Per-pass counts of a tensor-core kernel's loops: the hot loop (the rank-th most HMMA: instructions, HMMA,
    shared-load wavefronts: shared_wavefronts) and the staging loop (the most shared-memory stores, then global
    loads: instructions per element loaded; the non-finite redo loads as much but stores nothing)."""
    loops = inner_loops(parse_sass(sass))
    hot = sorted(loops, key=lambda b: -sum(op.startswith("HMMA") for _, op, _ in b))[rank]
    stage = max(loops, key=lambda b: (sum(op.startswith("STS") for _, op, _ in b),
                                      sum(op.startswith("LDG") for _, op, _ in b)))
    return dict(instr=len(hot), hmma=sum(op.startswith("HMMA") for _, op, _ in hot),
                lds=shared_wavefronts(hot),
                nop=sum(op.startswith(("NOP", "WARPSYNC")) for _, op, _ in hot),
                local=sum(op.startswith(("LDL", "STL")) for _, op, _ in hot),
                stage_instr=len(stage) / max(1, sum(op.startswith("LDG") for _, op, _ in stage)))


def corr_mma_loop(sass, hmma, lds):
    """Per-pass counts of corr_mma_kernel's loops: its kernel-row loop, compiled once per n-tile count and edge
    variant (the loop with `hmma` HMMA and `lds` LDS: that one's two steps; instructions, shared-load wavefronts),
    its input rows' cp.async loop (instructions per LDGSTS: a warp's 64 16-bit values) and its filter loop (the most
    STS.U16: instructions per value loaded, each stored into both copies)."""
    loops = inner_loops(parse_sass(sass))
    count = lambda body, prefix: sum(op.startswith(prefix) for _, op, _ in body)  # noqa: E731
    hot = [b for b in loops if count(b, "HMMA") == hmma and count(b, "LDS") == lds]
    assert len(hot) == 1, f"{len(hot)} loops with {hmma} HMMA and {lds} LDS"
    copies = max(loops, key=lambda b: count(b, "LDGSTS"))
    filt = max(loops, key=lambda b: count(b, "STS.U16"))
    return dict(instr=len(hot[0]), hmma=hmma, lds=shared_wavefronts(hot[0]), local=count(hot[0], ("LDL", "STL")),
                copy_instr=len(copies) / count(copies, "LDGSTS"),
                filter_instr=len(filt) / count(filt, "LDG"))


def mma_edge_chunks(kw, w, nts, chunks, tiles_w):
    """csrc/dwconv.cuh plan_corr_mma's edges for a "same" correlation of width w on an aligned even-width map (lead
    for cp.async): the chunks at each end of the band's reach left out as padding (edge_chunks), or 0."""
    pad = {3: 1, 4: 1, 5: 2}.get(chunks, 0)
    off_w = (kw - 1) // 2
    lead = off_w % 2 if off_w + off_w % 2 >= 8 * pad else 8 * pad - off_w
    right = 8 * (nts + chunks - 1 - pad) - off_w - lead
    return pad if pad and tiles_w == 1 and band_chunks(kw + lead) == chunks and right >= w else 0


def band_chunks(kw):
    """csrc/dwconv.cuh band_chunks: chunks of 8 columns an 8-column n-tile's band meets."""
    return (kw + 14) // 8


def band_step(nts, chunks, pad):
    """corr_mma_kernel's kernel-row step (band_products, load_half) for nts n-tiles and `pad` padding chunks at each
    end: (HMMA, in m16n8k16 units (an m16n8k8: half), chunk loads of a half, band loads: the chunks of the band
    some product reads)."""
    last = nts + chunks - 2
    real = lambda m: pad <= m <= last - pad  # noqa: E731
    hmma = k16 = 0
    bands = set()
    for nt, c in itertools.product(range(nts), range(chunks)):
        m = nt + c
        if m % 2 == 0 and c + 1 < chunks:  # a pair (a k-block), or its one real chunk
            hmma += real(m) or real(m + 1)
            k16 += (real(m) + real(m + 1)) / 2
            bands |= {c} if real(m) else set()
            bands |= {c + 1} if real(m + 1) else set()
        elif (c == 0 if m % 2 else c == chunks - 1) and real(m):  # a lone chunk
            hmma, k16 = hmma + 1, k16 + 0.5
            bands.add(c)
    return hmma, k16, sum(real(m) for m in range(last + 1)), len(bands)


# The CUDA tensor-core variants: (row dtype, kernel element type, TF32 products per step or None for bf16, FLOP per
# HMMA, peak). fp32 runs corr_tf32_kernel and wgrad_tf32_kernel: one TF32 product where TF32 is allowed, 3xTF32
# (exact fp32) where not.
MMA_VARIANTS = (("bf16", "__nv_bfloat16", None, 4096, "bfloat16"), ("tf32", "float", 1, 2048, "float32"),
                ("fp32", "float", 3, 2048, "float32"))


def tf32_row_nops(nts, k_blocks, products):
    """NOP / WARPSYNC a TF32 row runs besides its HMMA (csrc/dwconv.cuh tf32_row_products, sm_90 SASS): none where
    four n-tiles interleave, one per k-block and product for a pair of n-tiles and for a lone one."""
    groups = 0
    for base in range(0, 8, 4):
        tiles = nts - base
        groups += 0 if tiles >= 4 else (1 + (tiles == 3) if tiles >= 2 else int(tiles == 1))
    return groups * k_blocks * products


# cuBLAS batched GEMMs of a few hundred rows and columns: an assumption, not fitted (no GPU run of them yet)
GEMM_SHARE = 0.5


def cuda_dense_rows():
    """Predicted H100 times of the cuda backend's dense products (largeconv/cuda.py covers_whole_map: maps that
    every output's window covers, RepLKNet-31B s3 and s4 at "same" padding), NCHW, bias-free as the kit times them:
    each launch of the composition as max(FLOPs at GEMM_SHARE of the peak (fp32: FFMA; tf32: the TF32 tensor
    cores, where torch's matmul precision and the conv both allow it), bytes at BANDWIDTH) plus a launch; fp32
    buffers throughout (bf16 inputs widened as they are read, results narrowed as they are stored). Forward and
    grad-input of planes of at most PLANE_MAX_PIXELS pixels run corr_plane_kernel instead (cuda_plane_rows)."""
    rows = []
    for case in (c for c in HEADLINE if c.name.startswith("replknet31b")):
        n, c, h, w = case.shape
        if case.kernel[0] < 2 * h - 1 or case.kernel[1] < 2 * w - 1:
            continue  # not covered: the tiled kernels (cuda_mma_rows)
        x, m = n * c * h * w, c * (h * w) ** 2
        for dtype in ("fp32", "tf32", "bf16"):
            el = 2 if dtype == "bf16" else 4
            gemm = (TENSOR_PEAK["float32"] if dtype == "tf32" else FFMA_PEAK) * GEMM_SHARE
            widen = [(0, x * (el + 4))] if dtype == "bf16" else []  # x.float() (grad-weight: grad_out too)
            # the taps' matrices; the product (reads x and the matrices, writes the result); the store into NCHW
            correlation = [(0, 4 * m), *widen, (2 * n * m, 4 * (2 * x + m)), (0, 4 * x + el * x)]
            # the pairs' product; their flip; the (q, j) sums: pad the permuted pairs, sum them; the (p, i) sums
            cols = c * h * h * (2 * w - 1)
            grad_weight = [*widen, *widen, (2 * n * m, 4 * (2 * x + m)), (0, 8 * m), (0, 4 * (m + 2 * m)),
                           (0, 4 * (2 * m + cols)), (0, 4 * 4 * cols)]
            for direction, launches in (("forward", correlation), ("grad-input", correlation),
                                        ("grad-weight", grad_weight)):
                if direction != "grad-weight" and h * w <= PLANE_MAX_PIXELS:
                    continue  # corr_plane_kernel (cuda_plane_rows)
                times = [max(f / gemm, b / BANDWIDTH) + LAUNCH_S for f, b in launches]
                flops, _ = useful(case, direction, el)
                gemm_s = sum(f / gemm for f, _ in launches)
                rows.append(dict(case=case.name, dtype=dtype, direction=direction, launches=len(launches),
                                 gemm_ms=gemm_s * 1e3, memory_ms=sum(b for _, b in launches) / BANDWIDTH * 1e3,
                                 predicted_ms=sum(times) * 1e3, useful_flops=flops,
                                 floor_ms=flops / (TENSOR_PEAK["float32"] if dtype == "tf32" else FFMA_PEAK) * 1e3,
                                 bound="gemm" if gemm_s > sum(times) / 2 else "memory"))
    return rows


PLANE_MAX_PIXELS = 64  # csrc/dwconv.cuh kPlaneMaxPixels (largeconv/cuda.py keeps the same)


def cuda_plane_rows(functions):
    """Predicted H100 times of corr_plane_kernel (csrc/dwconv.cuh: forward and grad-input of planes of at most
    PLANE_MAX_PIXELS pixels, here RepLKNet-31B's 7x7 stage, where every window covers the plane): issue (a
    multiply-add per output and pixel at the covered loop's instructions per multiply-add from the SASS, its body
    unrolled by 4; the W mod 4 remainder iterations at twice that, an assumption; staging and the epilogue left
    out) plus DRAM (minimum bytes) plus a launch, the sum (the composition the H200 measured for the tiled kernels,
    no overlap assumed)."""
    rows = []
    for case in (c for c in HEADLINE if c.name.startswith("replknet31b")):
        n, c, h, w = case.shape
        if h * w > PLANE_MAX_PIXELS:
            continue
        for dtype, element in (("fp32", "float"), ("bf16", "__nv_bfloat16")):
            name = f"void largeconv::dw::corr_plane_kernel<{element}>(largeconv::dw::Corr, largeconv::dw::PlaneTile)"
            loops = inner_loops(parse_sass(functions[name]))
            covered = min((b for b in loops if sum(op.startswith("FFMA") for _, op, _ in b) == 4), key=len)
            per_fma = len(covered) / 4
            per_row = (w // 4 * 4 + 2 * (w % 4)) * per_fma
            for direction in ("forward", "grad-input"):
                warp_instr = n * c * h * w * h * per_row / 32
                issue = warp_instr / (sm90.H100["sms"] * ISSUE_PER_SM * CLOCK)
                flops, min_bytes = useful(case, direction, 2 if dtype == "bf16" else 4)
                memory = min_bytes / BANDWIDTH
                rows.append(dict(case=case.name, dtype=dtype, direction=direction, per_fma=per_fma,
                                 issue_ms=issue * 1e3, memory_ms=memory * 1e3,
                                 predicted_ms=(issue + memory + LAUNCH_S) * 1e3, floor_ms=flops / FFMA_PEAK * 1e3,
                                 bound="issue" if issue > memory else "memory"))
    return rows


def corr_blocks(n, h, ho, kh):
    """The row tiles of one plane column of a tensor-core correlation (csrc/dwconv.cuh mma_corr_blocks, mma_block,
    mma_half, warp_kernel_rows), "same" padding, unit stride: (stacks per channel, [(kernel rows its warps run in
    all, staged rows, chains, unchained rows)] per row tile), and whether the tiles are packed (a channel's planes
    stacked). Chains: corr_mma_kernel's runs of kernel rows 8 apart (up to 8 a warp), each loading a half more;
    unchained rows: the kernel rows of warps whose halves lie in two planes (both halves loaded every step)."""
    off = (kh - 1) // 2
    packed = ho % 16 == 8 and ho >= 56 and n > 1
    tiles = []
    for tile in range(cdiv((n if packed else 1) * ho, 64)):
        v = 64 * tile
        i0 = v % ho if packed else v
        rows0 = min(64, ho - i0)
        rows1 = 64 - rows0 if packed and v // ho + 1 < n else 0
        run = chains = unchained = 0
        for warp in range(cdiv(rows0 + rows1, 16)):
            begin, end = kh, 0
            for half in range(2):
                u = 16 * warp + 8 * half
                lo = i0 + u if rows1 == 0 or u < rows0 else u - rows0
                if lo < ho:
                    begin = min(begin, max(0, off - min(lo + 7, ho - 1)))
                    end = max(end, min(kh, h + off - lo))
            run += max(0, end - begin)
            chains += min(8, max(0, end - begin))
            if rows1 and 16 * warp < rows0 < 16 * warp + 16:
                unchained += max(0, end - begin)
        staged = min(64 + kh - 1, 16 * cdiv(rows0, 16) + kh - 1) if not rows1 else rows0 + rows1 + 2 * (kh - 1)
        tiles.append((run, staged, chains, unchained))
    return (1 if packed else n), tiles, packed


def wgrad_blocks_per_sm(dtype, kb):
    """csrc/dwconv.cuh kWgMmaBlocksPerSm (bf16) and wgrad_tf32_blocks_per_sm (tf32; fp32: 3xTF32, split) for a band
    of kb k-blocks: the tensor-core grad-weights' __launch_bounds__ minimum, which their plans fill."""
    if dtype == "bf16":
        return 4
    if dtype == "fp32":
        return 2 if kb >= 6 else 3 if kb >= 4 else 4
    return 4 if kb >= 6 else 5


def wgrad_splits(channels, items, blocks_per_sm, smem):
    """csrc/dwconv.cuh split_wgrad_items on an H100: the splits of a channel's items whose blocks fill their waves
    best (ties: the fewest), up to four waves."""
    slots = min(sm90.H100["smem_per_sm"] // (smem + 1024), blocks_per_sm) * sm90.H100["sms"]
    fill = lambda s: s * channels / (cdiv(s * channels, slots) * slots)  # noqa: E731
    return max(range(1, max(1, min(4 * slots // channels, items)) + 1), key=lambda s: (fill(s), -s))


def cuda_mma_rows():
    """Predicted H100 times of the CUDA tensor-core kernels (csrc/dwconv.cuh corr_mma_kernel, wgrad_mma_kernel,
    corr_tf32_kernel) at the RepLKNet-31B stages, NCHW, for MMA_VARIANTS: the plans of csrc/dwconv.cuh replayed
    here, the loops' counts from the SASS (mma_loops), and the terms of the Triton model: issue (all warp
    instructions: hot loop per kernel row or g row, staging per staged element, the epilogue left out), tensor (HMMA
    x its FLOP at MMA_SYNC_SHARE of the operand dtype's dense peak), L1 (shared_wavefronts of the hot
    loop, two per 32 staged elements), DRAM (minimum bytes). The predicted time is their sum: H200 run 1 measured
    RepLKNet-31B stage 1's forward at the sum within 7% (bf16 0.447 ms against 0.477, TF32 0.702 against 0.705,
    3xTF32 1.89 against 1.95; the largest term had said 0.159, 0.245, 0.742): at 2-6 blocks of 4 warps per SM the
    shared loads, the products and the rest do not overlap (bench/NOTES.md, session 16)."""
    functions, resources = cuda_sass("dwconv.cu")
    mma_k_blocks = lambda k: (k + 14) // 16 + 1  # noqa: E731  (csrc/dwconv.cuh)
    rows = []
    for case, (dtype, element, products, hmma_flop, peak) in itertools.product(
            [c for c in HEADLINE if c.name.startswith("replknet31b")], MMA_VARIANTS):
        n, c, h, w = case.shape
        kh, kw = case.kernel
        ho, wo = h, w  # "same", stride 1
        for direction in DIRECTIONS:
            if products == 3 and min(ho, wo) < 14:  # csrc/dwconv.cuh kSplitMinSide: the FMA kernels run
                continue
            if direction == "grad-weight" and (kw > 32 or kh > 32):
                continue
            if direction == "grad-weight" and products:  # wgrad_tf32_kernel: wgrad_mma_kernel's plan, k-blocks of 8
                tiles_h, tiles_w = cdiv(ho, 64), cdiv(wo, 64)
                th, tw = cdiv(ho, tiles_h), cdiv(cdiv(wo, tiles_w), 8) * 8
                kb = tw // 8 + 1
                name = f"void largeconv::dw::wgrad_tf32_kernel<{kb}, {str(products == 3).lower()}>(" \
                       "largeconv::dw::WGrad, largeconv::dw::MmaWGradTile)"
                parts = 2 if products == 3 else 1
                cols, gw = 8 * (kb + 3), 8 * kb + 16
                rs = cols + 4
                xrows = max(th + 31, cdiv(4 * 1024, parts * rs))
                smem = parts * (xrows * rs + th * gw) * 4 + 16
                items = n * tiles_h * tiles_w
                blocks = c * wgrad_splits(c, items, wgrad_blocks_per_sm(dtype, kb), smem)
                loops = mma_loops(functions[name])
                mts, nbs = cdiv(kh, 16), cdiv(kw, 8)
                # per g row: the loop's other instructions for the m-tiles it runs (of 2), plus the HMMA it runs and
                # their NOP / WARPSYNC (the loop holds a path for each n-tile count)
                executed = mts * nbs * kb * products
                per_row = ((loops["instr"] - loops["hmma"] - loops["nop"]) * mts / 2 + executed
                           + mts * tf32_row_nops(nbs, kb, products))
                staged = parts * ((th + 31) * cols + th * gw)
                warp_instr = c * items * (th * per_row + staged / parts / 32 * loops["stage_instr"])
                hmma = c * items * th * executed
                wavefronts = c * items * (th * loops["lds"] * mts / 2 + 2 * staged / 32)
            elif products:  # corr_tf32_kernel: k-blocks of 8, fp32 staged as kParts copies, no second filter copy
                kb = band_chunks(kw)
                name = f"void largeconv::dw::corr_tf32_kernel<{kb}, {str(products == 3).lower()}>(" \
                       "largeconv::dw::Corr, largeconv::dw::MmaTile)"
                parts = 2 if products == 3 else 1
                tiles_w = cdiv(wo, 64)
                nts = cdiv(cdiv(wo, tiles_w), 8)
                cols, fw = 8 * (8 + kb - 1), 8 * kb + 16
                rs = cols + 4
                stacks, tiles, packed = corr_blocks(n, h, ho, kh)
                smem = parts * ((64 + (2 if packed else 1) * (kh - 1)) * rs + kh * fw) * 4 + 16
                blocks = stacks * c * len(tiles) * tiles_w
                loops = mma_loops(functions[name], rank=int(nts <= 4))  # kernel-row loops for 8 n-tiles, and for 4
                # per kernel row: the loop's instructions less its products (it holds a path for each n-tile count),
                # plus the HMMA the row runs and their NOP / WARPSYNC; every k-block's A is loaded (ldmatrix, no
                # guard), whatever nts
                executed = nts * kb * products
                per_row = loops["instr"] - loops["hmma"] - loops["nop"] + executed + tf32_row_nops(nts, kb, products)
                lds_row = loops["lds"]
                warp_instr = hmma = wavefronts = 0
                for run, staged_rows, *_ in tiles:
                    staged = staged_rows * cols + kh * fw
                    per_block = run * per_row + staged / 32 * loops["stage_instr"]
                    warp_instr += stacks * c * tiles_w * per_block
                    hmma += stacks * c * tiles_w * run * nts * kb * products
                    wavefronts += stacks * c * tiles_w * (run * lds_row + 2 * parts * staged / 32)
            elif direction == "grad-weight":
                tiles_h, tiles_w = cdiv(ho, 64), cdiv(wo, 64)
                th, tw = cdiv(ho, tiles_h), cdiv(cdiv(wo, tiles_w), 8) * 8
                kb = mma_k_blocks(tw)
                name = f"void largeconv::dw::wgrad_mma_kernel<{element}, {kb}>(largeconv::dw::WGrad, " \
                       "largeconv::dw::MmaWGradTile)"
                cols, gw = 16 * (kb + 2), 16 * kb + 16
                rs = cols + 8
                xrows = max(th + 31, cdiv(4 * 1024 * 4, 2 * rs))
                gcs = second_copy_offset(th * gw)
                smem = (xrows * rs + 2 * gcs) * 2 + 16
                items = n * tiles_h * tiles_w
                blocks = c * wgrad_splits(c, items, wgrad_blocks_per_sm(dtype, kb), smem)
                mts, nbs = cdiv(kh, 16), cdiv(kw, 8)
                # kh > 16: the chained loop (two g rows 16 apart a pass, one m-tile's ldmatrix a row), and a chain's
                # first m-tile loaded once more (min(16, th) chains an item); kh <= 16: the one-m-tile loop
                loops = mma_loops(functions[name], rank=0 if mts == 2 else 1)
                share = mts * nbs * kb / loops["hmma"]  # the guards skip the n-tiles past the kernel
                chain_loads = min(16, th) * (kb + 1) if mts == 2 else 0  # ldmatrix .x4
                staged = (th + 31) * cols + 2 * th * gw
                warp_instr = c * items * (th * loops["instr"] * share + chain_loads
                                          + staged / 32 * loops["stage_instr"])
                hmma = c * items * th * mts * nbs * kb
                wavefronts = c * items * (th * loops["lds"] * share + 4 * chain_loads + 2 * staged / 32)
            else:
                off_w = (kw - 1) // 2
                lead = off_w % 2  # csrc/dwconv.cuh plan_corr_mma: off_w odd, the tile starts a column early
                chunks = band_chunks(kw + lead)
                assert chunks == band_chunks(kw)
                name = f"void largeconv::dw::corr_mma_kernel<{element}, {chunks}>(largeconv::dw::Corr, " \
                       "largeconv::dw::MmaTile)"
                tiles_w = cdiv(wo, 64)
                nts = cdiv(cdiv(wo, tiles_w), 8)
                cols, fw = 16 * cdiv(8 + chunks - 1, 2), 8 * chunks + 16
                rs = cols + 8
                fcs = second_copy_offset(kh * fw)
                stacks, tiles, packed = corr_blocks(n, h, ho, kh)
                smem = ((64 + (2 if packed else 1) * (kh - 1)) * rs + 2 * fcs) * 2 + 16
                blocks = stacks * c * len(tiles) * tiles_w
                pad = mma_edge_chunks(kw, w, nts, chunks, tiles_w)
                # the kernel-row loop of nts n-tiles (csrc/dwconv.cuh mma_kernel_rows): two steps, each one half's
                # A loads (a chunk each, the padding ones left out), the band's loads and the products, plus the
                # other half's loads where unchained (counted apart)
                step_hmma, step_k16, ka, bands = band_step(nts, chunks, pad)
                loops = corr_mma_loop(functions[name], 2 * step_hmma, 4 * ka + 2 * bands)
                per_step = (loops["instr"] - 2 * ka) / 2
                lds_step = (loops["lds"] - 2 * ka) / 2
                # staging: input rows by cp.async (4 bytes a lane: 64 values a warp copy, a wavefront each; the
                # RepLKNet maps are even and aligned), filter values kh x (fw + 1), a lane a column (2 stores a value)
                filter_instr = kh * cdiv(fw + 1, 32) * loops["filter_instr"]
                warp_instr = hmma = wavefronts = 0
                for run, staged_rows, chains, unchained in tiles:
                    copies = staged_rows * cols / 64
                    loads = (chains + unchained) * ka
                    per_block = run * per_step + loads + copies * loops["copy_instr"] + filter_instr
                    warp_instr += stacks * c * tiles_w * per_block
                    hmma += stacks * c * tiles_w * run * step_k16  # in m16n8k16 (a chunk: half of one)
                    wavefronts += stacks * c * tiles_w * (run * lds_step + loads + copies + 2 * kh * fw / 32)
            regs, stack = resources[name]
            resident, warps_per_sched = occupancy(regs, smem, 4)
            waves = blocks / (sm90.H100["sms"] * max(resident, 1))
            wave_eff = waves / math.ceil(waves)
            issue = warp_instr / (sm90.H100["sms"] * ISSUE_PER_SM * CLOCK) / min(1.0, warps_per_sched / 4) / wave_eff
            tensor = hmma * hmma_flop / (TENSOR_PEAK[peak] * MMA_SYNC_SHARE) / wave_eff
            l1 = wavefronts / (sm90.H100["sms"] * CLOCK) / wave_eff
            flops, min_bytes = useful(case, direction, 2 if dtype == "bf16" else 4)
            memory = min_bytes / BANDWIDTH
            terms = dict(issue=issue, tensor=tensor, l1=l1, memory=memory)
            bound = max(terms, key=terms.get)  # the largest part of the sum
            rows.append(dict(case=case.name, dtype=dtype, direction=direction,
                             kernel=name.split("(")[0].replace("void ", ""),
                             registers=regs, stack=stack, shared=smem, blocks=blocks, blocks_per_sm=resident,
                             hot_instr=loops["instr"], hot_hmma=loops["hmma"], hot_local=loops["local"],
                             executed_vs_useful=hmma * hmma_flop / (products or 1) / flops,
                             **{f"{k}_ms": v * 1e3 for k, v in terms.items()},
                             predicted_ms=(sum(terms.values()) + LAUNCH_S) * 1e3, floor_ms=flops / TENSOR_PEAK[peak]
                             * 1e3, bound=bound))
    return rows


# The CUDA involution kernels (csrc/involution.cuh): block threads, channels per chunk
INV_THREADS, INV_CB = 256, 16


def inv_rednet_shape(case):
    """csrc/involution.cuh rednet_shape: K = 7, 16 channels a group, dilation 1."""
    return case.kernel[0] == 7 and case.shape[1] // case.groups == INV_CB and case.dilation == 1


def inv_pixels_per_thread(case, direction):
    """csrc/involution.cuh pixels_per_thread: 2 at stride 1, dilation 1 and for RedNet's grad-input, else 1."""
    unit = case.stride == 1 and case.dilation == 1
    return 2 if unit or (direction == "grad-input" and inv_rednet_shape(case)) else 1


def involution_tile(case, direction, elem_bytes=4):
    """csrc/involution.cuh plan() replayed on an H100 for NCHW inputs of elem_bytes (aligned tensors, staged as they
    are): (bx, by, staged planes, ih, iw, chunks, shared bytes, blocks, values a staging copy (stage_vec), copies a
    row)."""
    n, c, h, w = case.shape
    k, s, d = case.kernel[0], case.stride, case.dilation
    p = d * (k - 1) // 2
    ho, wo = (h + 2 * p - d * (k - 1) - 1) // s + 1, (w + 2 * p - d * (k - 1) - 1) // s + 1
    cg = c // case.groups
    rows, cols = (h, w) if direction == "grad-input" else (ho, wo)
    rb = inv_pixels_per_thread(case, direction)
    bx = min(cdiv(cols, rb), 32)
    by = cdiv(rows, cdiv(rows, INV_THREADS // bx))
    chunks, nc, reach = cdiv(cg, INV_CB), min(cg, INV_CB), (k - 1) * d
    width = wo if direction == "grad-input" else w  # of the staged tensor
    vec = 1
    while 2 * vec * elem_bytes <= 16 and width % (2 * vec) == 0:
        vec *= 2

    def aligned_stride(n, align):  # csrc/common.cuh
        s_ = cdiv(n, align) * align
        return s_ if (s_ // align) % 2 else s_ + align

    def fill(by):
        if direction == "grad-input":
            ih, iw = (by - 1 + reach) // s + 2, (bx * rb - 1 + reach) // s + 2
        else:
            ih, iw = (by - 1) * s + reach + 1, (bx * rb - 1) * s + reach + 1
        vecs, align = cdiv(iw + vec - 1, vec), max(vec, 2)
        smem = nc * aligned_stride(ih * aligned_stride(vecs * vec, align), align) * elem_bytes
        blocks = n * case.groups * cdiv(rows, by) * cdiv(cols, bx * rb) * (1 if direction == "grad-weight"
                                                                            else chunks)
        return ih, iw, smem, blocks

    ih, iw, smem, blocks = fill(by)
    while (blocks < sm90.H100["sms"] or smem > 64 * 1024) and by > 2:
        by = (by + 1) // 2
        ih, iw, smem, blocks = fill(by)
    return bx, by, nc, ih, iw, chunks, smem, blocks, vec, cdiv(iw + vec - 1, vec)


# csrc/involution.cuh's banded tensor-core kernels (band_mma_kernel): rows per block (a warp each)
BAND_ROWS = 8


def band_tile(case, direction, elem_bytes):
    """csrc/involution.cuh plan_band() replayed for NCHW inputs of elem_bytes (aligned tensors): (n-tiles of 8 pixels
    a row, blocks, shared bytes, copies staged per block (channel operand, weights), values a copy (4, 2, 1:
    band_vec), staging round trips a block, kernel name), or None where the FMA kernels run (fp32, strides,
    grad-weight, grad-input at maps of 16 columns or fewer)."""
    n, _, h, w = case.shape
    k = case.kernel[0]
    if elem_bytes != 2 or case.stride != 1 or not inv_rednet_shape(case) or direction == "grad-weight" or \
            (direction == "grad-input" and w <= 16):
        return None
    rows, cols = h, w  # stride 1, "same" padding: output and input maps agree
    vec = 4 if w % 4 == 0 else 2 if w % 2 == 0 else 1  # (RedNet's padding 3: 1 lead column at most)
    threads = BAND_ROWS * 32

    def batches(planes, rows_, vecs):  # copy_vecs' memory round trips: 1 by cp.async, a batch of 16 copies else
        return 1 if vec > 1 else cdiv(cdiv(planes * rows_, threads // vecs), 16)

    def stride8(v):  # band_stride: 8 (mod 16)
        return v + ((8 - v % 16) + 16) % 16
    tiles = 1 if cols <= 8 else 2 if cols <= 16 else 4 if cols <= 32 else 7
    tile_cols = 8 * tiles
    a_rs, w_rs = tile_cols + 8, tile_cols + (4 if direction == "grad-input" else 0)  # grad-input's lead columns
    a_ps, w_ts = stride8((BAND_ROWS + k - 1) * a_rs), stride8(BAND_ROWS * w_rs)
    staged = vec > 1  # copies of one value: the weights from global memory in the products (a round trip)
    smem = (INV_CB * a_ps + (k * k * w_ts if staged else 0)) * 2
    copies = (INV_CB * (BAND_ROWS + k - 1) * a_rs // vec, k * k * BAND_ROWS * w_rs // vec if staged else 0)
    rounds = batches(INV_CB, BAND_ROWS + k - 1, a_rs // vec) + (batches(k * k, BAND_ROWS, w_rs // vec)
                                                                 if staged else 1)
    grad_input = str(direction == "grad-input").lower()
    name = f"void largeconv::inv::band_mma_kernel<__nv_bfloat16, {grad_input}, {tiles}, {vec}>("
    blocks = n * case.groups * cdiv(rows, BAND_ROWS) * cdiv(cols, tile_cols)
    return tiles, blocks, smem, copies, vec, rounds, name + "largeconv::inv::Inv, largeconv::inv::BandTile)"


def cuda_involution_rows(functions=None, resources=None):
    """Predicted H100 times of the CUDA involution kernels (csrc/involution.cuh, the RedNet K = 7 instantiations) at
    every RedNet-50 involution (bench/suites.py rednet50, batch 64), NCHW, fp32 and bf16: the plan replayed
    (involution_tile), loop counts from the SASS, and the Triton model's terms: issue (the hot loop per kernel row
    and the staging loops per staged element), L1 (shared_wavefronts of the hot loop, one per 32 staged
    words), DRAM (minimum bytes) and memory latency: a block's warps wait together for the weights (forward and
    grad-input: once per kernel row that reaches the pixel; grad-weight's stores do not wait) and for the staging
    (stage_vectors, the input's own dtype): once for copies by cp.async (4 bytes or more), once per eight planes a
    thread copies for single 16-bit values (loaded, then stored); its issue: the copies of the busiest thread (a
    slot of the tile's rows x copy columns, walking the planes) at the SASS loop's instructions per copy, for each
    warp with busy threads."""
    if functions is None:
        functions, resources = cuda_sass("involution.cu")
    kernels = {"forward": "forward_kernel", "grad-input": "grad_input_kernel", "grad-weight": "grad_weight_kernel"}
    rows = []
    for case in suites.rednet50():  # every RedNet-50 involution (the model is cheap; the kit times the headline)
        unit = case.stride == 1 and case.dilation == 1
        for dtype, element in (("fp32", "float"), ("bf16", "__nv_bfloat16")):
            for direction in DIRECTIONS:
                band = band_tile(case, direction, 2 if dtype == "bf16" else 4)
                if band:
                    rows.append(band_row(case, dtype, direction, band, functions, resources))
                    continue
                name = f"void largeconv::inv::{kernels[direction]}<{element}, {str(unit).lower()}, true>(" \
                       "largeconv::inv::Inv, largeconv::inv::InvTile)"
                bx, by, nc, ih, iw, chunks, smem, blocks, vec, vecs = involution_tile(
                    case, direction, 2 if dtype == "bf16" else 4)
                num_warps = cdiv(bx * by, 32)
                sass = parse_sass(functions[name])
                loops = inner_loops(sass)
                # stride 1, and 2 but for grad-input: the kernel-row loop of windows (load_window: fp32 by 8-byte
                # pairs, the first and last values alone where the window starts odd; 16-bit by 32-bit words, one
                # more where it starts odd: odd with copies of 2 or more values; its longest copy where the compiler
                # split it)
                windows = unit or (case.stride == 2 and direction != "grad-input")
                ffma_of = lambda b: sum(op.startswith("FFMA") for _, op, _ in b)  # noqa: E731
                singles = lambda b: sum(classify(op) == "LDS.32" for _, op, _ in b)  # noqa: E731
                if windows:
                    found = [b for b in loops if any(op == "LDS.64" for _, op, _ in b)] if dtype == "fp32" else \
                        [b for b in loops if singles(b)]
                    found = [b for b in found if ffma_of(b) == max(map(ffma_of, found))]
                    parity = (max if vec > 1 else min)(map(singles, found))
                    hot = max((b for b in found if singles(b) == parity), key=len)
                elif direction == "grad-input" and not unit:  # stride 2's loop of pixel pairs (7 taps a channel)
                    found = [b for b in loops if ffma_of(b) == (7 * INV_CB if case.stride == 2 else  # or any
                                                                max(map(ffma_of, loops)))]        # stride's
                    hot = max(found, key=len)
                else:
                    hot = max(loops, key=ffma_of)
                ffma = ffma_of(hot)
                # staging: the copy loop for copies of vec values (cp.async of 4, 8 or 16 bytes; single 16-bit
                # values: a global load, its stores in the loop), its instructions per copy
                copy_bytes = vec * (2 if dtype == "bf16" else 4)
                copy_op = {16: "LDGSTS.E.128", 8: "LDGSTS.E.64", 4: "LDGSTS.E", 2: "LDG.E.U16"}[copy_bytes]
                count = lambda body, op: sum(o == op for _, o, _ in body)  # noqa: E731
                copy = max((b for b in loops if count(b, copy_op) and any(o.startswith(("STS", "LDGSTS"))
                                                                           for _, o, _ in b)),
                           key=lambda b: count(b, copy_op))
                per_copy = len(copy) / count(copy, copy_op)
                threads, slots = bx * by, ih * vecs
                groups = threads // slots if threads >= slots else 1
                plane_copies = cdiv(nc, groups)  # a busy thread's planes, per slot it holds
                # passes over the slots (more slots than threads: a thread's next slot is `threads` on), each with
                # the warps that hold busy threads
                busy_warps = sum(cdiv(min(threads, groups * slots - first), 32)
                                 for first in range(0, groups * slots, threads))
                stage_warp_instr = busy_warps * plane_copies * per_copy
                stage_per_element = stage_warp_instr / (nc * ih * iw) * 32  # per 32 of the tile's staged values
                k = case.kernel[0]
                macs_per_thread = k * k * INV_CB * inv_pixels_per_thread(case, direction) * (
                    chunks if direction == "grad-weight" else 1)
                passes = macs_per_thread / ffma  # hot-loop passes per warp and block
                if direction == "grad-input" and not unit:  # strided: a pass per kernel row reaching the row
                    passes = k / case.stride
                tiles = chunks if direction == "grad-weight" else 1  # staged tiles a block
                warp_instr = blocks * (num_warps * passes * len(hot) + tiles * stage_warp_instr)
                lds = shared_wavefronts(hot)
                # a warp's 32-bit loads of the hot loop read values 2 apart (two pixels a thread, or one at stride
                # 2; strided grad-input's pixel pairs read windows one column apart): fp32, words 2 apart, two lanes
                # a bank, two wavefronts (8-byte loads of neighbouring pairs take two anyway); 16-bit, neighbouring
                # words
                lane_values = 1 if direction == "grad-input" and not unit else \
                    inv_pixels_per_thread(case, direction) * case.stride
                if dtype == "fp32" and lane_values % 2 == 0:
                    lds += sum(classify(op) == "LDS.32" for _, op, _ in hot)
                # staging: a wavefront per 32 words stored (whole rows of copies)
                wavefronts = blocks * (num_warps * passes * lds + tiles * nc * ih * vecs * copy_bytes / 128)
                staging_rounds = 1 if copy_bytes >= 4 else cdiv(plane_copies, 8)
                # weights: a kernel row's at once (RedNet's kernels), a round trip per pass of the hot loop, but for
                # the next row's loaded during a row's products (the forward, strided grad-input): one
                weight_rounds = {"forward": 1, "grad-input": k if unit else 1, "grad-weight": 0}[direction]
                rounds = (staging_rounds + weight_rounds) * (chunks if direction == "grad-weight" else 1)
                regs, stack = resources[name]
                resident, warps_per_sched = occupancy(regs, smem, num_warps)
                waves = blocks / (sm90.H100["sms"] * max(resident, 1))
                wave_eff = waves / math.ceil(waves)
                issue = warp_instr / (sm90.H100["sms"] * ISSUE_PER_SM * CLOCK) / min(1.0, warps_per_sched / 4)
                l1 = wavefronts / (sm90.H100["sms"] * CLOCK)
                latency = blocks * rounds * MEMORY_LATENCY_S / (sm90.H100["sms"] * max(resident, 1))
                flops, min_bytes = useful(case, direction, 2 if dtype == "bf16" else 4)
                terms = dict(issue=issue / wave_eff, l1=l1 / wave_eff, latency=latency / wave_eff,
                             memory=min_bytes / BANDWIDTH)
                bound = max(terms, key=terms.get)
                rows.append(dict(case=case.name, dtype=dtype, direction=direction,
                                 kernel=name.split("(")[0].replace("void ", ""), registers=regs, stack=stack,
                                 shared=smem, blocks=blocks, blocks_per_sm=resident, hot_instr=len(hot),
                                 hot_ffma=ffma, stage_instr=stage_per_element, rounds=rounds,
                                 **{f"{k}_ms": v * 1e3 for k, v in terms.items()},
                                 predicted_ms=(terms[bound] + LAUNCH_S) * 1e3, floor_ms=terms["memory"] * 1e3,
                                 roof_fraction=terms["memory"] / (terms[bound] + LAUNCH_S), bound=bound))
    return rows


def band_row(case, dtype, direction, band, functions, resources):
    """cuda_involution_rows' row for a banded tensor-core launch (forward, grad-input): issue (the hot loop per
    pass: the n-tile loop, 7 HMMA, per n-tile and warp; staging: the copy-group loop once a group and warp (tiles + 1
    groups of 8 columns, cp.async), or for copies of one value the code before the first barrier per 16-bit global
    load), L1 (shared_wavefronts of the loads
    and stores of the hot loop: the strides keep them conflict-free; two per 32 copies), tensor (the HMMA at
    MMA_SYNC_SHARE of the bf16 peak), DRAM (minimum bytes) and latency (a round trip a block for all its cp.async
    staging, one per batch of 16 copies of one value).
    The predicted time is the largest term plus the part of the smaller of issue and DRAM that does not overlap the
    other: all of it where a block stages its whole tile before computing (H200 run 1: the banded kernels measured
    issue + DRAM, 2026-11-28), the first two copy groups' share where the products start as the groups land (they
    need groups nt and nt + 1)."""
    tiles, blocks, smem, copies, vec, rounds, name = band
    sass = parse_sass(functions[name])
    loops = inner_loops(sass)
    hot = max(loops, key=lambda b: sum(op.startswith("HMMA") for _, op, _ in b))
    if not any(op.startswith("HMMA") for _, op, _ in hot):  # one n-tile: no n-tile loop, the code after the barrier
        barrier = next(i for i, (_, op, _) in enumerate(sass) if op.startswith("BAR"))
        last = max(i for i, (_, op, _) in enumerate(sass) if op.startswith("HMMA"))
        hot = sass[barrier + 1:next(i for i in range(last, len(sass)) if sass[i][1].startswith("EXIT")) + 1]
    hmma = sum(op.startswith("HMMA") for _, op, _ in hot)
    grouped = vec > 1  # staged in column groups (band_mma_kernel's ColumnCopies)
    if grouped:
        group_loop = next(b for b in loops if any(op.startswith("LDGSTS") for _, op, _ in b))
        per_copy = (tiles + 1) * len(group_loop) * 32 / (sum(copies) / BAND_ROWS)  # per 32 copies, as below
    else:  # unrolled batches of loads, then stores: the code up to the barrier (its set-up too) per load
        barrier = next(i for i, (_, op, _) in enumerate(sass) if op.startswith("BAR"))
        per_copy = barrier / sum(op.startswith("LDG") for _, op, _ in sass[:barrier])
    copies = sum(copies)
    lds = shared_wavefronts(hot, stores=True)
    passes = BAND_ROWS * tiles  # hot-loop passes per block, all warps
    warp_instr = blocks * (passes * len(hot) + copies / 32 * per_copy)
    wavefronts = blocks * (passes * lds + copies / 32 * 2)
    regs, stack = resources[name]
    resident, warps_per_sched = occupancy(regs, smem, BAND_ROWS)
    waves = blocks / (sm90.H100["sms"] * max(resident, 1))
    wave_eff = waves / math.ceil(waves)
    flops, min_bytes = useful(case, direction, 2)
    terms = dict(issue=warp_instr / (sm90.H100["sms"] * ISSUE_PER_SM * CLOCK) / min(1.0, warps_per_sched / 4),
                 l1=wavefronts / (sm90.H100["sms"] * CLOCK),
                 latency=blocks * rounds * MEMORY_LATENCY_S / (sm90.H100["sms"] * max(resident, 1)),
                 tensor=blocks * passes * hmma * 4096 / (TENSOR_PEAK["bfloat16"] * MMA_SYNC_SHARE))
    terms = {k: v / wave_eff for k, v in terms.items()}
    terms["memory"] = min_bytes / BANDWIDTH
    bound = max(terms, key=terms.get)
    exposed = (2 / (tiles + 1) if grouped else 1.0) * min(terms["issue"], terms["memory"])
    predicted = terms[bound] + exposed + LAUNCH_S
    return dict(case=case.name, dtype=dtype, direction=direction, kernel=name.split("(")[0].replace("void ", ""),
                registers=regs, stack=stack, shared=smem, blocks=blocks, blocks_per_sm=resident, hot_instr=len(hot),
                hot_ffma=0, hot_hmma=hmma, stage_instr=per_copy, rounds=rounds,
                **{f"{k}_ms": v * 1e3 for k, v in terms.items() if k != "tensor"}, exposed_ms=exposed * 1e3,
                predicted_ms=predicted * 1e3, floor_ms=terms["memory"] * 1e3,
                roof_fraction=terms["memory"] / predicted, bound=bound)


def fmt_ms(value):
    return "-" if value is None else f"{value:.3f}"


def demangle(name):
    try:
        return subprocess.run(["c++filt", name], capture_output=True, text=True).stdout.strip() or name
    except OSError:
        return name


# ----------------------------------------------------------------------------------------------------------------
# report


def source_version():
    """The commit of the kernels compiled, with "+ uncommitted changes" when kernels/ differs from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    return commit + (" + uncommitted changes" if git("status", "--porcelain", "--", "kernels") else "")


MIX_COLUMNS = ["FFMA", "HGMMA", "HMMA", "DFMA", "LDG.32", "LDG.64", "LDG.128", "LDG.16", "LDS.32", "LDS.64", "LDS.128",
               "STS.32", "STS.64", "STS.128", "LDGSTS.32", "LDGSTS.64", "LDGSTS.128", "integer", "predicate",
               "convert", "other"]


def write(rows, best_rows, cuda_rows, seconds, out=OUT, fused_rows=(), mma_rows=(), dense_rows=(),
          inv_rows=(), plane_rows=()):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "predicted.csv"), "w", newline="") as f:
        cols = ["case", "op", "backend", "dtype", "direction", "predicted_ms", "floor_ms", "bound"]
        writer = csv.DictWriter(f, cols)
        writer.writeheader()
        sources = [(r["op"], f"triton-{r['layout']}", r) for r in best_rows] + \
            [("dwconv2d", "cuda-nchw", r) for r in mma_rows] + [("dwconv2d", "cuda-dense", r) for r in dense_rows] + \
            [("dwconv2d", "cuda-plane", r) for r in plane_rows] + \
            [("involution2d", "cuda-nchw", r) for r in inv_rows]
        for op, backend, r in sources:
            writer.writerow(dict(case=r["case"], op=op, backend=backend, dtype=r["dtype"], direction=r["direction"],
                                 predicted_ms=f"{r['predicted_ms']:.4f}", floor_ms=f"{r['floor_ms']:.4f}",
                                 bound=r["bound"]))
    lines = [
        "# Static sm_90 report (H100, no GPU used)",
        "",
        f"Generated by `{os.path.join(*sys.executable.split(os.sep)[-3:])} bench/static_gpu.py` on "
        f"{time.strftime('%Y-%m-%d')} with triton {triton.__version__}, torch {torch.__version__} ({seconds:.0f} s), "
        f"kernels of commit {source_version()}. Every number here comes from the compiler (ptxas via Triton, nvcc) "
        "or from the model in bench/static_gpu.py's docstring; nothing was run on a GPU. GPU runs check the "
        "predictions (bench/NOTES.md, \"Static sm_90 report\"; bench/results/h100/measured_vs_predicted.md).",
        "",
        "## Predicted H100 times (best candidate config per launch)",
        "",
        "All times are predictions of the model (bench/static_gpu.py's docstring); latency = the memory-latency "
        "term (rounds/pass: memory round trips a warp waits for in turn per pass of the hot loop, from the SASS; "
        f"{MEMORY_LATENCY_S * 1e9:.0f} ns each, an effective latency fitted on one H100 row: "
        "bench/results/h100/run2/model_correction.md).",
        "",
        "| case | layout | dtype | direction | config | regs | spills | smem B | blocks/SM | warps/sched "
        "| executed/useful | issue ms | lines/access | bank conflicts | L1 ms | L2 ms | tensor ms | memory ms "
        "| loads/pass | before 1st wait | rounds/pass | DRAM KB in flight/SM | latency ms "
        "| predicted ms | floor ms | bound |",
        "|" + "---|" * 26,
    ]
    for r in best_rows:
        lines.append(f"| {r['case']} | {r['layout']} | {r['dtype']} | {r['direction']} | {r['config']} | "
                     f"{r['registers']} | {r['spills']} | {r['shared']} | {r['blocks_per_sm']} | "
                     f"{r['warps_per_scheduler']:.1f} | {r['executed_vs_useful']:.2f} | {r['issue_ms']:.3f} | "
                     f"{r['lines_per_access']:.2f} | {r['bank_conflicts']:.2f} | {r['l1_ms']:.3f} | {r['l2_ms']:.3f} | "
                     f"{r['tensor_ms']:.3f} | {r['memory_ms']:.3f} | {r['loads']} | {r['loads_before_wait']} | "
                     f"{r['rounds']:.2g} | {r['in_flight_bytes'] / 1024:.1f} | {r['latency_ms']:.3f} | "
                     f"{r['predicted_ms']:.3f} | "
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
    if fused_rows:
        batch, c, hw, k, stride = FUSED_LAYER
        total = sum(r["predicted_ms"] for r in fused_rows)
        lines += ["", f"## Fused involution launches at ({batch},{c},{hw},{hw}) K{k} stride {stride}, G = C/16, "
                  "Cr = C/4, fp32 (TF32 off), NCHW", "",
                  "The GPU kit's first fused layer (suite fused_launches times these launches alone). Predicted by "
                  "`fused_involution_rows` (the model above on the gathering loop; lines per access from the address "
                  f"probe). Sum of the launches: {total:.3f} ms (predicted).", "",
                  "| launch | kernel | config | regs | spills | warps/SM | loop instr | loads/pass | lines/access "
                  "| rounds/pass | issue ms | L1 ms | latency ms | predicted ms | bound |", "|" + "---|" * 15]
        lines += [f"| {r['direction']} | {r['kernel']} | {r['config']} | {r['registers']} | {r['spills']} | "
                  f"{r['warps_per_sm']} | {r['loop_instr']} | {r['loads']} | {r['lines_per_access']:.2f} | "
                  f"{r['rounds']:.2g} | "
                  f"{r['issue_ms']:.3f} | {r['l1_ms']:.3f} | {r['latency_ms']:.3f} | {r['predicted_ms']:.3f} | "
                  f"{r['bound']} |" for r in fused_rows]
    if mma_rows:
        lines += ["", "## CUDA C++ tensor-core kernels (csrc/dwconv.cuh), NCHW: predicted", "",
                  "`cuda_mma_rows` (its docstring): the kernels' plans replayed, loop counts from their sm_90 SASS; "
                  f"mma.sync taken at {MMA_SYNC_SHARE:.0%} of the operand dtype's dense peak (an assumption). Forward "
                  "and grad-input run the same kernel. bf16: mma m16n8k16; tf32: fp32 with TF32 allowed, one TF32 "
                  "product (m16n8k8); fp32: TF32 off, 3xTF32 (three products, about fp32's accuracy; the FMA kernels "
                  "below 14x14 maps). executed/useful counts one product per step. predicted = issue + tensor + "
                  "L1 + memory + a launch (the composition H200 run 1 measured; bound: the largest term). floor = "
                  "useful FLOPs at the dense peak of the operand dtype (bf16, TF32).", "",
                  "| case | dtype | direction | kernel | regs | stack B | smem B | blocks | blocks/SM | hot-loop instr | "
                  "hot-loop HMMA | executed/useful | issue ms | tensor ms | L1 ms | memory ms | predicted ms | "
                  "floor ms | bound |", "|" + "---|" * 19]
        lines += [f"| {r['case']} | {r['dtype']} | {r['direction']} | `{r['kernel']}` | {r['registers']} | {r['stack']} | "
                  f"{r['shared']} | {r['blocks']} | {r['blocks_per_sm']} | {r['hot_instr']} | {r['hot_hmma']} | "
                  f"{r['executed_vs_useful']:.2f} | {r['issue_ms']:.3f} | {r['tensor_ms']:.3f} | {r['l1_ms']:.3f} | "
                  f"{r['memory_ms']:.3f} | {r['predicted_ms']:.3f} | {r['floor_ms']:.3f} | {r['bound']} |"
                  for r in mma_rows]
    if dense_rows:
        lines += ["", "## cuda backend, dense products on covered maps (largeconv/cuda.py), NCHW: predicted", "",
                  "`cuda_dense_rows` (its docstring): where every output's window covers the map (RepLKNet-31B s3 "
                  "and s4, \"same\" padding) the cuda backend runs torch.bmm products instead of the tiled kernels "
                  f"above; each launch max(FLOPs at {GEMM_SHARE:.0%} of the peak (an assumption), bytes at HBM "
                  "bandwidth) + a launch. fp32 exact (FFMA), tf32 (TF32 allowed for convs and matmuls), bf16 "
                  "(widened to fp32). floor = useful FLOPs at the FFMA (fp32, bf16) or TF32 peak.", "",
                  "| case | dtype | direction | launches | GEMM ms | memory ms | predicted ms | floor ms | bound |",
                  "|" + "---|" * 9]
        lines += [f"| {r['case']} | {r['dtype']} | {r['direction']} | {r['launches']} | {r['gemm_ms']:.3f} | "
                  f"{r['memory_ms']:.3f} | {r['predicted_ms']:.3f} | {r['floor_ms']:.3f} | {r['bound']} |"
                  for r in dense_rows]
    if plane_rows:
        lines += ["", "## cuda backend, small planes (csrc/dwconv.cuh corr_plane_kernel), NCHW: predicted", "",
                  "`cuda_plane_rows` (its docstring): forward and grad-input of planes of at most "
                  f"{PLANE_MAX_PIXELS} pixels sum over the pixels a window meets. predicted = issue + memory + a "
                  "launch. floor = useful FLOPs at the FFMA peak.", "",
                  "| case | dtype | direction | instr per multiply-add | issue ms | memory ms | predicted ms | "
                  "floor ms | bound |", "|" + "---|" * 9]
        lines += [f"| {r['case']} | {r['dtype']} | {r['direction']} | {r['per_fma']:.1f} | {r['issue_ms']:.3f} | "
                  f"{r['memory_ms']:.3f} | {r['predicted_ms']:.3f} | {r['floor_ms']:.3f} | {r['bound']} |"
                  for r in plane_rows]
    if inv_rows:
        lines += ["", "## CUDA C++ involution kernels (csrc/involution.cuh, RedNet K = 7), NCHW: predicted", "",
                  "`cuda_involution_rows` (its docstring): the plan replayed, loop counts from the sm_90 SASS, the "
                  f"issue / L1 / DRAM terms and a memory-latency term ({MEMORY_LATENCY_S * 1e9:.0f} ns a round trip, "
                  "fitted on a Triton row, not on these kernels): rounds = the round trips a block waits for in turn. "
                  "Staging: warp instructions per 32 staged values (FMA kernels: stage_vectors' copies of up to 16 "
                  "bytes of the input's dtype) or per copy of 4, 2 or 1 16-bit values, the last template argument "
                  "(the banded tensor-core kernels, `band_mma_kernel`: hot-loop FFMA 0, their HMMA per pass in the "
                  "hot loop; one n-tile: the code after the staging). "
                  "% roof = the DRAM time of the minimum bytes / predicted. Banded kernels: predicted = the largest "
                  "term + exposed, the part of issue or DRAM (the smaller) that cannot overlap the other (band_row's "
                  "docstring; the FMA kernels: the largest term).", "",
                  "| case | dtype | direction | kernel | regs | stack B | smem B | blocks | blocks/SM | "
                  "hot-loop instr | hot-loop FFMA | staging warp instr per 32 staged | rounds/block | issue ms | "
                  "L1 ms | "
                  "latency ms | memory ms | exposed ms | predicted ms | % roof | bound |", "|" + "---|" * 21]
        lines += [f"| {r['case']} | {r['dtype']} | {r['direction']} | `{r['kernel']}` | {r['registers']} | "
                  f"{r['stack']} | {r['shared']} | {r['blocks']} | {r['blocks_per_sm']} | {r['hot_instr']} | "
                  f"{r['hot_ffma']} | {r['stage_instr']:.1f} | {r['rounds']} | {r['issue_ms']:.3f} | "
                  f"{r['l1_ms']:.3f} | {r['latency_ms']:.3f} | {r['memory_ms']:.3f} | "
                  f"{fmt_ms(r.get('exposed_ms'))} | {r['predicted_ms']:.3f} | "
                  f"{100 * r['roof_fraction']:.0f} | {r['bound']} |" for r in inv_rows]
    lines += ["", "## CUDA C++ kernels (csrc/): nvcc --resource-usage -Xptxas -v, sm_90", "",
              "| file | kernel | registers | spill stores B | spill loads B | static smem B (dynamic is set at launch) | stack B |", "|---|---|---|---|---|---|---|"]
    for row in cuda_rows:
        lines.append("| " + " | ".join(str(v) for v in row) + " |")
    with open(os.path.join(out, "report.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------------------------
# measured vs predicted


PARTS = {"fwd": ("forward",), "bwd": ("grad-input", "grad-weight"), "fwdbwd": DIRECTIONS}


def compare(results_csv, predicted_csv, baseline_csv=None):
    """Markdown table of every timed Triton row of a GPU run (bench/roofline.py's columns), and of the cuda rows
    predicted.csv has (the tensor-core kernels' NCHW RepLKNet-31B rows, or the small planes' kernel or the dense
    products' where those run, and the NCHW RedNet-50 involution rows), against predicted.csv:
    fwd = the forward's prediction, bwd = grad-input + grad-weight, fwdbwd = all three (the torch sum of
    grad-weight's partial sums and autograd's own work are not predicted); with `baseline_csv`, an older
    prediction's ratio too. Ratio = measured / predicted."""
    def predictions(path):
        return {(r["case"], r["backend"], r["dtype"], r["direction"]): float(r["predicted_ms"])
                for r in csv.DictReader(open(path))} if path else {}
    new, old = predictions(predicted_csv), predictions(baseline_csv)

    def predicted(table, r):
        # cuda, per direction: small planes' kernel, else the dense products on maps the kernel covers
        # (largeconv/cuda.py), else the tiled kernels
        backends = (["cuda-plane", "cuda-dense"] if r["backend"] == "cuda" else []) + [f"{r['backend']}-{r['layout']}"]
        parts = [next((table[k] for k in ((r["case"], b, r["dtype"], d) for b in backends) if k in table), None)
                 for d in PARTS.get(r["direction"], ())]
        return sum(parts) if parts and None not in parts else None
    lines = ["| suite | case | op | backend | dtype | layout | direction | measured ms | predicted ms | ratio "
             "| off > 2x |"
             + (" baseline predicted ms | baseline ratio | baseline off > 2x |" if old else ""),
             "|" + "---|" * (14 if old else 11)]
    for r in csv.DictReader(open(results_csv)):
        # Triton rows, and the cuda rows the CUDA sections predict (NCHW RepLKNet-31B, RedNet-50 involution)
        if r["backend"] not in ("triton", "cuda") or r["status"] != "ok" or not r["time_ms"]:
            continue
        if r["backend"] == "cuda" and predicted(new, r) is None and predicted(old, r) is None:
            continue
        measured = float(r["time_ms"])
        cells = [r["suite"], r["case"], r["op"], r["backend"], r["dtype"], r["layout"], r["direction"],
                 f"{measured:.3f}"]
        for table in (new, old) if old else (new,):
            p = predicted(table, r)
            off = p is not None and not 0.5 <= measured / p <= 2
            cells += [f"{p:.3f}", f"{measured / p:.2f}", "**yes**" if off else "no"] if p else ["-", "-", "-"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-cuda", action="store_true", help="skip the nvcc resource usage of csrc/")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated headline cases (default: all)")
    parser.add_argument("--out", default=OUT, help="folder for report.md and predicted.csv")
    parser.add_argument("--compare", metavar="RESULTS_CSV", help="print a GPU run's Triton rows against "
                        "OUT/predicted.csv (no compiling) and exit")
    parser.add_argument("--baseline", metavar="PREDICTED_CSV", help="with --compare: an older prediction too")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(args.compare, os.path.join(args.out, "predicted.csv"), args.baseline))
        return
    if os.environ.get("TRITON_INTERPRET") == "1":
        parser.error("unset TRITON_INTERPRET: interpreted kernels cannot be compiled")
    start = time.perf_counter()
    rows, best_rows, cache = [], [], {}
    with probe_pool() as probes:
        for case in (CASES[name] for name in args.cases.split(",")):
            for dtype, mode in DTYPES.items():
                for layout in sm90.LAYOUTS:
                    for direction, launch in plan(case, mode, layout).items():
                        if dtype == "tf32" and "PRECISION" not in launch.meta:
                            continue  # no dot: the fp32 kernel
                        best = predict(case, dtype, mode, layout, direction, launch, cache, rows, probes)
                        best_rows.append(best)
                        print(f"{case.name} {dtype} {layout} {direction}: {best['predicted_ms']:.3f} ms "
                              f"(floor {best['floor_ms']:.3f}, {best['bound']})", flush=True)
        fused_rows = fused_involution_rows(probes)
    for r in fused_rows:
        print(f"fused involution {r['direction']}: {r['predicted_ms']:.3f} ms ({r['bound']})", flush=True)
    cuda_rows = [] if args.no_cuda else nvcc_resource_usage()
    mma_rows = [] if args.no_cuda else cuda_mma_rows()
    for r in mma_rows:
        print(f"cuda tensor-core {r['case']} {r['dtype']} {r['direction']}: {r['predicted_ms']:.3f} ms ({r['bound']})")
    dense_rows = cuda_dense_rows()
    for r in dense_rows:
        print(f"cuda dense {r['case']} {r['dtype']} {r['direction']}: {r['predicted_ms']:.3f} ms ({r['bound']})")
    plane_rows = [] if args.no_cuda else cuda_plane_rows(cuda_sass("dwconv.cu")[0])
    for r in plane_rows:
        print(f"cuda plane {r['case']} {r['dtype']} {r['direction']}: {r['predicted_ms']:.3f} ms ({r['bound']})")
    inv_rows = [] if args.no_cuda else cuda_involution_rows()
    for r in inv_rows:
        print(f"cuda involution {r['case']} {r['dtype']} {r['direction']}: {r['predicted_ms']:.3f} ms ({r['bound']})")
    write(rows, best_rows, cuda_rows, time.perf_counter() - start, args.out, fused_rows, mma_rows, dense_rows,
          inv_rows, plane_rows)
    print(f"wrote {args.out}/report.md and predicted.csv")


if __name__ == "__main__":
    main()
