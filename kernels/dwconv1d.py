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

Each entry point plans its launch (kernels/dwconv.py's Launch) with `_plan_*(..., gpu=...)`, then runs it; tests run
the GPU's plan under the interpreter and bench/sm90.py compiles it for sm_90.
"""
import os

import torch
import triton
import triton.language as tl

from largeconv.arguments import conv_output_size

from .dwconv import Launch

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


def _emulate_bf16(dtype):
    return _INTERPRETED and dtype == torch.bfloat16


def _plan_forward(x, weight, bias, stride, padding, dilation, gpu=not _INTERPRETED):
    """(output, Launch)."""
    N, C, L = x.shape
    Co, _, K = weight.shape
    Lo = conv_output_size(L, K, stride, padding[0] + padding[1], dilation)
    y = torch.empty((N, Co, Lo), dtype=x.dtype, device=x.device)
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
