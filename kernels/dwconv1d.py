"""Triton kernels for depthwise 1-D convolution (largeconv.dwconv1d): forward, grad-input and grad-weight.

x (N, C, L) contiguous, weight (C*m, 1, K), padding (left, right); output channel o reads input channel o // m.
Each program owns a tile of BLOCK_C channels x BLOCK_L positions of one sample (a 1-D tile: no height-1 2-D tile)
and loops over the K taps with direct multiply-adds, accumulating in fp32 (fp64 for fp64 inputs).
- forward: y[n, o, j] = sum_k w[o, k] x[n, o // m, j*s + k*d - left] (+ b[o]);
- grad-input: gx[n, c, i] = sum over the m outputs o of c and the taps k with (i + left - k*d) = j*s, 0 <= j < Lo,
  of g[n, o, j] w[o, k] (a gather: no atomics);
- grad-weight: one program per (channel tile, tap) sums g[n, o, j] x[n, o // m, j*s + k*d - left] over n and j in a
  fixed order (deterministic, no atomics).
Offsets of (n, c) rows are int64. Not tuned on a GPU yet (the tile sizes are a first guess).

Stride 1, one output channel per input channel, fp16/bf16/fp32 (the Conformer case) take banded Toeplitz matrix
products instead, like the 2-D NCHW kernels (kernels/dwconv.py) but with the band built once per program: a
program owns one channel and ROW_TILES tiles of BLOCK_M rows, a row being one sample's block of BLOCK_W outputs. Its
window is the BLOCK_J inputs the block reads (starting ALIGN-aligned, so its loads are 16-byte vectors) and
  out[row, w] = sum_t window[row, t] * T[t, w],  T[t, w] = weight[k] for t = w + k*d + shift (0 elsewhere),
one tl.dot per tile (tensor cores: fp16/bf16, fp32 as TF32 where cuDNN may use it, else 3xTF32). grad-input is the
same product of grad_out with the flipped filter. grad-weight sums the Gram matrix G^T @ window over the rows (G: the
rows' BLOCK_W output gradients) and reads tap k off its diagonal t = w + k*d + shift; each program sums a split of
a channel's rows, and a second kernel adds the splits in a fixed order (deterministic). The direct kernels above
took ~7 instructions and 2 scalar loads per multiply-add on sm_90 (bench/NOTES.md). As in kernels/dwconv.py, a
tile whose product is not finite is summed again tap by tap over real operands only, so a NaN/Inf input reaches
the outputs F.conv1d puts it in and no others.

Each entry point plans its launch (kernels/dwconv.py's Launch) with `_plan_*(..., gpu=...)`, then runs it; tests run
the GPU's plan under the interpreter and bench/sm90.py compiles it for sm_90.
"""
import os

import torch
import triton
import triton.language as tl

from largeconv.arguments import conv_output_size

from .dwconv import Launch, _accumulate, _dot_precision, _has_non_finite, _strip_align, _toeplitz_precision

_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def unsupported_reason(x):
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _INTERPRETED):
        return "needs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
    if x.dtype not in _DTYPES:
        return f"{x.dtype} not supported (float16, bfloat16, float32, float64)"
    return None


def _acc(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _config(dtype, gpu=not _INTERPRETED):
    """The (BLOCK_C channels x BLOCK_L positions) tile: the GPU's (gpu=True) or the interpreter's, whose small
    tiles also exercise the tile edges in the tests. One config, no autotuning."""
    if not gpu:
        return triton.Config({"BLOCK_C": 16, "BLOCK_L": 32}, num_warps=4)
    # fp64 doubles the registers of the accumulator tile: with 4 warps ptxas (sm_90) spills 64-80 B per thread in
    # forward and grad-input at 255 registers; 8 warps halve the tile per thread (~183 registers, no spills).
    return triton.Config({"BLOCK_C": 32, "BLOCK_L": 128}, num_warps=8 if dtype == torch.float64 else 4)


@triton.jit
def _cast_out(v, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    # The interpreter rounds fp32 -> bf16 toward zero; GPUs round to nearest even. Round the bits first there.
    if EMULATE_BF16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _forward_kernel(x_ptr, w_ptr, b_ptr, y_ptr, C, L, Co, Lo, K, s, left, d, m,
                    HAS_BIAS: tl.constexpr, ACC: tl.constexpr, EMULATE_BF16: tl.constexpr,
                    BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    n = tl.program_id(0)
    o = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    j = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    o_ok = o < Co
    j_ok = j < Lo
    x_rows = x_ptr + (n.to(tl.int64) * C + o // m) * L
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    for k in range(K):
        i = j * s + k * d - left
        ok = j_ok & (i >= 0) & (i < L)
        xv = tl.load(x_rows[:, None] + i[None, :], mask=o_ok[:, None] & ok[None, :], other=0.0)
        wv = tl.load(w_ptr + o * K + k, mask=o_ok, other=0.0)
        acc += xv.to(ACC) * wv.to(ACC)[:, None]
    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=o_ok, other=0.0).to(ACC)[:, None]
    y_rows = y_ptr + (n.to(tl.int64) * Co + o) * Lo
    tl.store(y_rows[:, None] + j[None, :], _cast_out(acc, y_ptr.dtype.element_ty, EMULATE_BF16),
             mask=o_ok[:, None] & j_ok[None, :])


@triton.jit
def _grad_input_kernel(g_ptr, w_ptr, gx_ptr, C, L, Co, Lo, K, s, left, d, m,
                       ACC: tl.constexpr, EMULATE_BF16: tl.constexpr,
                       BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    n = tl.program_id(0)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    i = tl.program_id(2) * BLOCK_L + tl.arange(0, BLOCK_L)
    c_ok = c < C
    i_ok = i < L
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    for r in range(m):
        o = c * m + r
        g_rows = g_ptr + (n.to(tl.int64) * Co + o) * Lo
        for k in range(K):
            t = i + left - k * d  # = j * s for the output j this tap connects to i
            j = t // s
            ok = i_ok & (t >= 0) & (j * s == t) & (j < Lo)
            gv = tl.load(g_rows[:, None] + j[None, :], mask=c_ok[:, None] & ok[None, :], other=0.0)
            wv = tl.load(w_ptr + o * K + k, mask=c_ok, other=0.0)
            acc += gv.to(ACC) * wv.to(ACC)[:, None]
    gx_rows = gx_ptr + (n.to(tl.int64) * C + c) * L
    tl.store(gx_rows[:, None] + i[None, :], _cast_out(acc, gx_ptr.dtype.element_ty, EMULATE_BF16),
             mask=c_ok[:, None] & i_ok[None, :])


@triton.jit
def _grad_weight_kernel(g_ptr, x_ptr, gw_ptr, N, C, L, Co, Lo, K, s, left, d, m,
                        ACC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
    o = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k = tl.program_id(1)
    o_ok = o < Co
    acc = tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC)
    for n in range(N):
        g_rows = g_ptr + (o.to(tl.int64) + n * Co) * Lo  # n is a plain int under the interpreter
        x_rows = x_ptr + ((o // m).to(tl.int64) + n * C) * L
        for start in range(0, Lo, BLOCK_L):
            j = start + tl.arange(0, BLOCK_L)
            i = j * s + k * d - left
            ok = (j < Lo) & (i >= 0) & (i < L)
            mask = o_ok[:, None] & ok[None, :]
            gv = tl.load(g_rows[:, None] + j[None, :], mask=mask, other=0.0)
            xv = tl.load(x_rows[:, None] + i[None, :], mask=mask, other=0.0)
            acc += gv.to(ACC) * xv.to(ACC)
    tl.store(gw_ptr + o * K + k, tl.sum(acc, axis=1), mask=o_ok)


# ---- stride 1, one output per channel: banded Toeplitz products (see the module docstring) ------------------------

@triton.jit
def _row_blocks(rows, nblk):
    """Sample and output block of each row."""
    return rows // nblk, rows % nblk


@triton.jit
def _windows(in_ptr, rows, n_rows, nblk, C, c, L, left, shift, ALIGN: tl.constexpr, BLOCK_W: tl.constexpr,
             BLOCK_J: tl.constexpr):
    """The BLOCK_J inputs of channel c that each row's block of outputs reads, from column blk*BLOCK_W - left -
    shift (a multiple of ALIGN) on, zero outside the input; and where they are real."""
    n, blk = _row_blocks(rows, nblk)
    start = blk * BLOCK_W - left - shift
    base = (n.to(tl.int64) * C + c) * L + start
    if ALIGN > 1:
        start = tl.multiple_of(start, ALIGN)
        base = tl.multiple_of(base, ALIGN)
    t = tl.arange(0, BLOCK_J)
    cols = start[:, None] + t[None, :]
    ok = (rows < n_rows)[:, None] & (cols >= 0) & (cols < L)
    return tl.load(in_ptr + base[:, None] + t[None, :], mask=ok, other=0.0), ok


@triton.jit
def _taps_direct(in_ptr, w_row, rows, n_rows, nblk, C, c, L, left, K, d, FLIP: tl.constexpr, ACC: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr):
    """The tile's correlation tap by tap, over real operands only (a zero never multiplies a NaN or Inf): the redo
    of a tile whose banded product came out non-finite."""
    n, blk = _row_blocks(rows, nblk)
    base = (n.to(tl.int64) * C + c) * L
    acc = tl.zeros([BLOCK_M, BLOCK_W], dtype=ACC)
    for k in range(K):
        cols = (blk * BLOCK_W - left + k * d)[:, None] + tl.arange(0, BLOCK_W)[None, :]
        ok = (rows < n_rows)[:, None] & (cols >= 0) & (cols < L)
        xv = tl.load(in_ptr + base[:, None] + cols, mask=ok, other=0.0)
        wk = tl.load(w_row + (K - 1 - k if FLIP else k))
        acc += tl.where(ok, xv.to(ACC) * wk.to(ACC), 0.0)
    return acc


@triton.jit
def _corr_toeplitz_kernel(in_ptr, w_ptr, b_ptr, out_ptr, C, L_in, L_out, n_rows, K, left, d,
                          FLIP: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                          EMULATE_BF16: tl.constexpr, ALIGN: tl.constexpr, BLOCK_M: tl.constexpr,
                          BLOCK_W: tl.constexpr, BLOCK_J: tl.constexpr, ROW_TILES: tl.constexpr):
    """out[n, c, j] = (bias[c] +) sum_k w_c[k] in[n, c, j + k*d - left], w_c = weight row c (reversed when FLIP)."""
    c = tl.program_id(0)
    if ALIGN > 1:  # the planner checked both lengths are multiples of ALIGN: this tells the compiler
        L_in = L_in // ALIGN * ALIGN
        L_out = L_out // ALIGN * ALIGN
    nblk = tl.cdiv(L_out, BLOCK_W)
    shift = (ALIGN - left % ALIGN) % ALIGN  # the window starts `shift` columns before the block's first input
    w_row = w_ptr + c * K
    t = tl.arange(0, BLOCK_J)[:, None]
    w = tl.arange(0, BLOCK_W)[None, :]
    tap = t - w - shift  # = k*d where band column w meets window column t
    band_ok = (tap >= 0) & (tap < K * d) & (tap % d == 0)
    k = tap // d
    band = tl.load(w_row + (K - 1 - k if FLIP else k), mask=band_ok, other=0.0)
    for tile in range(ROW_TILES):
        rows = (tl.program_id(1) * ROW_TILES + tile) * BLOCK_M + tl.arange(0, BLOCK_M)
        xs, x_ok = _windows(in_ptr, rows, n_rows, nblk, C, c, L_in, left, shift, ALIGN, BLOCK_W, BLOCK_J)
        acc = _accumulate(tl.zeros([BLOCK_M, BLOCK_W], dtype=ACC), xs, x_ok, band, band_ok, PRECISION,
                          EMULATE_BF16, False)
        if _has_non_finite(acc):
            acc = _taps_direct(in_ptr, w_row, rows, n_rows, nblk, C, c, L_in, left, K, d, FLIP, ACC, BLOCK_M,
                               BLOCK_W)
        if HAS_BIAS:
            acc += tl.load(b_ptr + c).to(ACC)
        n, blk = _row_blocks(rows, nblk)
        j = blk[:, None] * BLOCK_W + tl.arange(0, BLOCK_W)[None, :]
        ok = (rows < n_rows)[:, None] & (j < L_out)
        out_rows = (n.to(tl.int64) * C + c) * L_out
        tl.store(out_ptr + out_rows[:, None] + j, _cast_out(acc, out_ptr.dtype.element_ty, EMULATE_BF16), mask=ok)


@triton.jit
def _grad_weight_toeplitz_kernel(g_ptr, x_ptr, part_ptr, C, L, Lo, n_rows, K, left, d, TILES,
                                 ACC: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
                                 ALIGN: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_W: tl.constexpr,
                                 BLOCK_J: tl.constexpr):
    """part[split, c, k] = sum over the split's rows of g[n, c, j] x[n, c, j + k*d - left]: TILES tiles of rows."""
    c = tl.program_id(0)
    split = tl.program_id(1)
    if ALIGN > 1:
        L = L // ALIGN * ALIGN
        Lo = Lo // ALIGN * ALIGN
    nblk = tl.cdiv(Lo, BLOCK_W)
    shift = (ALIGN - left % ALIGN) % ALIGN
    wcol = tl.arange(0, BLOCK_W)
    gram = tl.zeros([BLOCK_W, BLOCK_J], dtype=ACC)
    for tile in range(TILES):
        rows = (split * TILES + tile) * BLOCK_M + tl.arange(0, BLOCK_M)
        n, blk = _row_blocks(rows, nblk)
        j = blk[:, None] * BLOCK_W + wcol[None, :]
        g_ok = (rows < n_rows)[:, None] & (j < Lo)
        g_base = (n.to(tl.int64) * C + c) * Lo + blk * BLOCK_W
        if ALIGN > 1:
            g_base = tl.multiple_of(g_base, ALIGN)
        gs = tl.load(g_ptr + g_base[:, None] + wcol[None, :], mask=g_ok, other=0.0)
        xs, x_ok = _windows(x_ptr, rows, n_rows, nblk, C, c, L, left, shift, ALIGN, BLOCK_W, BLOCK_J)
        gram = _accumulate(gram, tl.trans(gs), tl.trans(g_ok), xs, x_ok, PRECISION, EMULATE_BF16, False)
    out = part_ptr + (split * tl.num_programs(0) + c) * K
    if not _has_non_finite(gram):
        # tap k is the diagonal t = w + k*d + shift: shear each row w left by w + shift (one gather), then sum
        # the columns (31 masked sums of the whole tile took 8x the instructions of the products, sm_90)
        col = tl.arange(0, BLOCK_J)[None, :]
        src = col + wcol[:, None] + shift
        sheared = tl.gather(gram, tl.minimum(src, BLOCK_J - 1), 1)
        diagonals = tl.sum(tl.where(src < BLOCK_J, sheared, 0.0), axis=0)  # [c] = sum of diagonal c
        c_tap = tl.arange(0, BLOCK_J)
        tl.store(out + c_tap // d, diagonals, mask=(c_tap % d == 0) & (c_tap < K * d))
    else:  # tap by tap over real operands only (see _taps_direct)
        for k in range(K):
            acc = tl.zeros([BLOCK_M, BLOCK_W], dtype=ACC)
            for tile in range(TILES):
                rows = (split * TILES + tile) * BLOCK_M + tl.arange(0, BLOCK_M)
                n, blk = _row_blocks(rows, nblk)
                j = blk[:, None] * BLOCK_W + wcol[None, :]
                i = j + k * d - left
                ok = (rows < n_rows)[:, None] & (j < Lo) & (i >= 0) & (i < L)
                row = n.to(tl.int64) * C + c
                gv = tl.load(g_ptr + row[:, None] * Lo + j, mask=ok, other=0.0)
                xv = tl.load(x_ptr + row[:, None] * L + i, mask=ok, other=0.0)
                acc += tl.where(ok, gv.to(ACC) * xv.to(ACC), 0.0)
            tl.store(out + k, tl.sum(acc))


@triton.jit
def _sum_splits_kernel(part_ptr, out_ptr, count, SPLITS, BLOCK: tl.constexpr):
    """out[i] = sum over s of part[s, i], s in order (deterministic)."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = i < count
    total = tl.load(part_ptr + i, mask=ok, other=0.0)
    for s in range(1, SPLITS):
        total += tl.load(part_ptr + s * count + i, mask=ok, other=0.0)
    tl.store(out_ptr + i, total, mask=ok)


def _toeplitz_config(span, align, dtype, gpu=not _INTERPRETED):
    """The banded path's tiles for a filter reaching `span` = d*(K-1) + 1 inputs, or None where it does not apply.
    BLOCK_J = the power of two holding BLOCK_W + span - 1 + (align - 1): at K = 31 a row of 64 outputs takes 128
    window columns (2x the direct multiply-adds, on tensor cores). Limits (sm_90, bench/sm90.py): a 256-column
    window of fp32 needs 280 KB of shared memory (227 KB at most); exact fp32 (3xTF32: each operand split in two)
    spilled 240-376 B at 64 outputs a row (triton 3.6.0), so it takes 16 (112-232 registers up to 128 columns, which
    is its limit); fp64 keeps the direct kernels."""
    three_pass = dtype == torch.float32 and _toeplitz_precision(dtype) == "tf32x3"
    block_w = 16 if three_pass or not gpu else 64
    block_j = triton.next_power_of_2(block_w + span - 1 + align - 1)
    if dtype == torch.float64 or block_j > (256 if dtype.itemsize == 2 else 128):
        return None
    if not gpu:
        return triton.Config({"BLOCK_M": 16, "BLOCK_W": block_w, "BLOCK_J": block_j, "ROW_TILES": 2}, num_warps=1)
    # fp32 operands hold twice the registers: 8 warps (the 3xTF32 tile spilled on 8, not on 4)
    warps = 8 if (dtype == torch.float32 and not three_pass) or block_j > 128 else 4
    return triton.Config({"BLOCK_M": 64, "BLOCK_W": block_w, "BLOCK_J": block_j, "ROW_TILES": 4},
                         num_warps=warps, num_stages=3)


def _toeplitz_plan(t, other, weight_shape, channels, stride, dilation, gpu):
    """(config, ALIGN) of the banded path for a correlation reading `t` and writing rows like `other`, or None:
    only at stride 1 with one output channel per input channel (x has `channels`)."""
    if stride != 1 or weight_shape[0] != channels:
        return None
    kernel = weight_shape[2]
    align = min(_strip_align(t, 1), _strip_align(other, 1))
    config = _toeplitz_config(dilation * (kernel - 1) + 1, align, t.dtype, gpu)
    return None if config is None else (config, align)


def _sms(device):
    """SMs the grad-weight splits fill; 2 off a GPU, so that the interpreter's tests split the reduction too."""
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 2


def _plan_corr_toeplitz(inp, weight, bias, out, left, dilation, flip, plan):
    config, align = plan
    n, c, length = inp.shape
    rows = n * triton.cdiv(out.shape[2], config.kwargs["BLOCK_W"])
    per_program = config.kwargs["BLOCK_M"] * config.kwargs["ROW_TILES"]
    grid = (c, triton.cdiv(rows, per_program))
    meta = dict(FLIP=flip, HAS_BIAS=bias is not None, ACC=_acc(inp.dtype), PRECISION=_toeplitz_precision(inp.dtype),
                EMULATE_BF16=_emulate_bf16(inp.dtype), ALIGN=align)
    args = (inp, weight, bias if bias is not None else weight, out, c, length, out.shape[2], rows, weight.shape[2],
            left, dilation)
    return Launch(_corr_toeplitz_kernel, grid, args, meta, [config], out)


def _emulate_bf16(dtype):
    return _INTERPRETED and dtype == torch.bfloat16


def _plan_forward(x, weight, bias, stride, padding, dilation, gpu=not _INTERPRETED):
    """(output, Launch)."""
    N, C, L = x.shape
    Co, _, K = weight.shape
    Lo = conv_output_size(L, K, stride, padding[0] + padding[1], dilation)
    y = torch.empty((N, Co, Lo), dtype=x.dtype, device=x.device)
    plan = _toeplitz_plan(x, y, weight.shape, C, stride, dilation, gpu)
    if plan is not None:
        return y, _plan_corr_toeplitz(x, weight, bias, y, padding[0], dilation, False, plan)
    b = bias if bias is not None else weight  # never read when HAS_BIAS is False

    def grid(meta):
        return (N, triton.cdiv(Co, meta["BLOCK_C"]), triton.cdiv(Lo, meta["BLOCK_L"]))
    meta = dict(HAS_BIAS=bias is not None, ACC=_acc(x.dtype), EMULATE_BF16=_emulate_bf16(x.dtype))
    return y, Launch(_forward_kernel, grid, (x, weight, b, y, C, L, Co, Lo, K, stride, padding[0], dilation, Co // C),
                     meta, [_config(x.dtype, gpu)], y)


def _plan_grad_input(grad_out, weight, input_shape, stride, padding, dilation, gpu=not _INTERPRETED):
    """(grad input, Launch)."""
    N, C, L = input_shape
    Co, _, K = weight.shape
    Lo = grad_out.shape[2]
    gx = torch.empty((N, C, L), dtype=grad_out.dtype, device=grad_out.device)
    plan = _toeplitz_plan(grad_out, gx, weight.shape, C, stride, dilation, gpu)
    if plan is not None:  # gx[i] = sum_k w[k] g[i + left - k*d]: g correlated with the flipped filter
        return gx, _plan_corr_toeplitz(grad_out, weight, None, gx, dilation * (K - 1) - padding[0], dilation, True,
                                       plan)

    def grid(meta):
        return (N, triton.cdiv(C, meta["BLOCK_C"]), triton.cdiv(L, meta["BLOCK_L"]))
    meta = dict(ACC=_acc(grad_out.dtype), EMULATE_BF16=_emulate_bf16(grad_out.dtype))
    return gx, Launch(_grad_input_kernel, grid,
                      (grad_out, weight, gx, C, L, Co, Lo, K, stride, padding[0], dilation, Co // C),
                      meta, [_config(gx.dtype, gpu)], gx)


def _plan_grad_weight(grad_out, x, weight_shape, stride, padding, dilation, gpu=not _INTERPRETED):
    """(grad weight in the accumulator dtype, fp32 or fp64 for fp64; Launch): the caller casts it to x's dtype."""
    N, C, L = x.shape
    Co, _, K = weight_shape
    Lo = grad_out.shape[2]
    gw = torch.empty(weight_shape, dtype=torch.float64 if x.dtype == torch.float64 else torch.float32,
                     device=x.device)
    plan = _toeplitz_plan(x, grad_out, weight_shape, C, stride, dilation, gpu)
    if plan is not None:
        config, align = plan
        rows = N * triton.cdiv(Lo, config.kwargs["BLOCK_W"])
        tiles = triton.cdiv(rows, config.kwargs["BLOCK_M"])
        splits = min(tiles, triton.cdiv(4 * _sms(x.device), Co))  # about 4 programs per SM
        per_split = triton.cdiv(tiles, splits)
        splits = triton.cdiv(tiles, per_split)
        part = torch.empty((splits, Co, K), dtype=torch.float32, device=x.device)
        meta = dict(ACC=tl.float32, PRECISION=_dot_precision(x.dtype), EMULATE_BF16=_emulate_bf16(x.dtype),
                    ALIGN=align)
        block = 256
        finish = Launch(_sum_splits_kernel, (triton.cdiv(Co * K, block),), (part, gw, Co * K, splits),
                        dict(BLOCK=block), [triton.Config({}, num_warps=4)], gw)
        # 8 warps on a GPU: the fp32 Gram tile (BLOCK_W x BLOCK_J) and the fp16 operands held 253 registers on 4
        # warps and spilled 48 B under triton 3.8 (sm_90)
        config = triton.Config({k: v for k, v in config.kwargs.items() if k != "ROW_TILES"},
                               num_warps=8 if gpu else config.num_warps, num_stages=config.num_stages)
        return gw, Launch(_grad_weight_toeplitz_kernel, (Co, splits),
                          (grad_out, x, part, C, L, Lo, rows, K, padding[0], dilation, per_split), meta, [config],
                          part, finish)

    def grid(meta):
        return (triton.cdiv(Co, meta["BLOCK_C"]), K)
    return gw, Launch(_grad_weight_kernel, grid,
                      (grad_out, x, gw, N, C, L, Co, Lo, K, stride, padding[0], dilation, Co // C),
                      dict(ACC=_acc(x.dtype)), [_config(x.dtype, gpu)], gw)


def dwconv1d_forward(x, weight, bias, stride, padding, dilation):
    y, launch = _plan_forward(x, weight, bias, stride, padding, dilation)
    launch()
    return y


def dwconv1d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    gx, launch = _plan_grad_input(grad_out, weight, input_shape, stride, padding, dilation)
    launch()
    return gx


def dwconv1d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    gw, launch = _plan_grad_weight(grad_out, x, weight_shape, stride, padding, dilation)
    launch()
    return gw.to(x.dtype)
