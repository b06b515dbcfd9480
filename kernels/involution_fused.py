"""Triton kernels for involution fused with its span conv (largeconv/fused_involution.py).

The involution kernel of a tile of P output pixels of one group is a [P, Cr] @ [Cr, K*K] product (reduced pixels
times the group's rows of the span weight, plus the bias), computed with tl.dot into a [P, T] register tile
(T = K*K rounded up to a power of two, taps beyond K*K masked) and never written to memory. Each pixel-tap pair of
the tile reads x at its own shifted position, so the aggregation is, per channel, a [P, T] gather of x times the
kernel tile, summed over taps.

- forward: a program owns (image, tile of output pixels, group): kernel tile by tl.dot, then one [P, T] gather and
  row sum per channel of the group.
- backward, three kernels, none with atomics (deterministic):
  - grad reduced: a program owns (image, tile) and loops over groups: the kernel gradient of the tile,
    dK[p, t] = sum_c dy[c, p] * x[c, shifted(p, t)], times the group's span rows (tl.dot), summed over groups.
  - grad span weight and bias: a program owns (group, run of tiles across the batch) and recomputes dK per tile,
    summing dK^T @ reduced (tl.dot) and dK's column sums in registers; it writes one partial per program, and the
    partials are added by torch in a fixed order.
  - grad x: a gather over the input pixels (phase classes for stride > 1, as kernels/involution.py), where each
    tap's kernel value at the output pixel it comes from is recomputed as a Cr-long dot of reduced with the span
    row (cheap for RedNet's Cr = C/4 at early layers; Cr/16 times the aggregation's loads per group at C = 512).
  So dK is computed twice, and the kernel once more in grad x: recomputation instead of kernel-sized traffic.

Accumulation is fp32 (fp64 for fp64 inputs); fp32 dots use TF32 only where torch.backends.cudnn allows it, as in
kernels/dwconv.py. Offsets: 64-bit per-program bases, IDX-typed (int32 unless an image spans 2**31 elements) tiles.
"""
import torch
import triton
import triton.language as tl

from largeconv.arguments import memory_format_of

from .dwconv import Launch, _cast_out, _dot_precision, _emulate_bf16
from .involution import _INT32_SPAN, _INTERPRET, _block_w, _grad_input_program, _tiles

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# Reduced channels per dot step: the [P, R] and [R, T] operands stay small, a loop covers any Cr.
_MAX_BLOCK_R = 64


def unsupported_reason(x, kernel_size):
    if not (x.is_cuda or (x.device.type == "cpu" and _INTERPRET)):
        return "needs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1 set before triton is imported)"
    if x.dtype not in _DTYPES:
        return f"{x.dtype} not supported"
    if kernel_size[0] * kernel_size[1] > 256:
        return f"kernel {kernel_size[0]}x{kernel_size[1]} has more than 256 taps (a [P, taps] register tile)"
    return None


@triton.jit
def _kernel_tile(r_base, srr, r_poffs, pmask, sw_base, sws0, sws1, sb_base, tap, tmask, CR,
                 HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr):
    """The group's kernel on a tile: [P, T] = reduced[P, Cr] @ span_weight[g*K*K + t, :]^T (+ bias)."""
    rr = tl.arange(0, BLOCK_R)
    acc = tl.zeros((BLOCK_P, BLOCK_T), dtype=ACC)
    for r0 in range(0, CR, BLOCK_R):
        rmask = r0 + rr < CR
        rv = tl.load(r_base + ((r0 + rr) * srr)[None, :] + r_poffs[:, None], mask=pmask[:, None] & rmask[None, :],
                     other=0.0)
        sw = tl.load(sw_base + (tap * sws0)[None, :] + ((r0 + rr) * sws1)[:, None],
                     mask=rmask[:, None] & tmask[None, :], other=0.0)
        if EMULATE_BF16:  # the interpreter has no bf16 dot
            rv = rv.to(tl.float32)
            sw = sw.to(tl.float32)
        acc = tl.dot(rv, sw, acc, input_precision=PRECISION, out_dtype=ACC)
    if HAS_BIAS:
        acc += tl.load(sb_base + tap, mask=tmask, other=0.0).to(ACC)[None, :]
    return acc


@triton.jit
def _kernel_grad_tile(x_base, sxc, x_offs, m, dy_base, sdyc, dy_poffs, pmask, CPG,
                      ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr):
    """dK[p, t] = sum over the group's channels c of dy[c, p] * x[c, shifted(p, t)]. Two channels a step: the step
    waits for its loads once, so each round trip to memory brings twice the loads (one channel a step was bound by
    those waits: bench/NOTES.md, the fused involution's section)."""
    acc = tl.zeros((BLOCK_P, BLOCK_T), dtype=ACC)
    for c in range(0, CPG, 2):
        second = c + 1 < CPG
        dy0 = tl.load(dy_base + c * sdyc + dy_poffs, mask=pmask, other=0.0).to(ACC)
        x0 = tl.load(x_base + c * sxc + x_offs, mask=m, other=0.0).to(ACC)
        dy1 = tl.load(dy_base + (c + 1) * sdyc + dy_poffs, mask=pmask & second, other=0.0).to(ACC)
        x1 = tl.load(x_base + (c + 1) * sxc + x_offs, mask=m & second, other=0.0).to(ACC)
        acc += dy0[:, None] * x0
        acc += dy1[:, None] * x1
    return acc


@triton.jit
def _tile_geometry(tile, Wo, NPIX, H, W, sxh, sxw, PAD, DIL, K: tl.constexpr, STRIDE: tl.constexpr,
                   IDX: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_T: tl.constexpr):
    """A tile's output pixels (i, j), the taps, and x's offsets and mask for every (pixel, tap) pair."""
    p = tile * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < NPIX
    i = p // Wo
    j = p % Wo
    tap = tl.arange(0, BLOCK_T)
    tmask = tap < K * K
    hi = (i * STRIDE - PAD)[:, None] + (tap // K * DIL)[None, :]
    wi = (j * STRIDE - PAD)[:, None] + (tap % K * DIL)[None, :]
    m = pmask[:, None] & tmask[None, :] & (hi >= 0) & (hi < H) & (wi >= 0) & (wi < W)
    x_offs = hi.to(IDX) * sxh + wi.to(IDX) * sxw
    return i, j, pmask, tap, tmask, x_offs, m


@triton.jit
def _fused_fwd_kernel(
    x_ptr, r_ptr, sw_ptr, sb_ptr, y_ptr,
    H, W, Wo, NPIX, G, CPG, CR,
    sxb, sxc, sxh, sxw, srb, srr, srh, srw, sws0, sws1, syb, syc, syh, syw,
    PAD, DIL,
    K: tl.constexpr, STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # Group fastest: the programs of one tile run together and share its reduced pixels and x halo in L2.
    pid = tl.program_id(0)
    n_tiles = tl.cdiv(NPIX, BLOCK_P)
    g = pid % G
    tile = (pid // G) % n_tiles
    b = (pid // G // n_tiles).to(tl.int64)
    i, j, pmask, tap, tmask, x_offs, m = _tile_geometry(tile, Wo, NPIX, H, W, sxh, sxw, PAD, DIL, K, STRIDE, IDX,
                                                        BLOCK_P, BLOCK_T)
    kern = _kernel_tile(r_ptr + b * srb, srr, i.to(IDX) * srh + j.to(IDX) * srw, pmask,
                        sw_ptr + (g * K * K).to(tl.int64) * sws0, sws0, sws1, sb_ptr + g * K * K, tap, tmask, CR,
                        HAS_BIAS, ACC, PRECISION, EMULATE_BF16, BLOCK_P, BLOCK_R, BLOCK_T)
    c0 = (g * CPG).to(tl.int64)
    x_base = x_ptr + b * sxb + c0 * sxc
    y_base = y_ptr + b * syb + c0 * syc
    y_poffs = i.to(IDX) * syh + j.to(IDX) * syw
    for c in range(CPG):
        xv = tl.load(x_base + c * sxc + x_offs, mask=m, other=0.0).to(ACC)
        yv = tl.sum(xv * kern, axis=1)
        tl.store(y_base + c * syc + y_poffs, _cast_out(yv, y_ptr.dtype.element_ty, EMULATE_BF16), mask=pmask)


@triton.jit
def _fused_grad_reduced_kernel(
    dy_ptr, x_ptr, sw_ptr, dr_ptr,
    H, W, Wo, NPIX, G, CPG, CR,
    sdyb, sdyc, sdyh, sdyw, sxb, sxc, sxh, sxw, sws0, sws1, sdrb, sdrr, sdrh, sdrw,
    PAD, DIL,
    K: tl.constexpr, STRIDE: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # grad reduced[r, p] = sum over groups g and taps t of dK_g[p, t] * span_weight[g*K*K + t, r]; a program owns
    # BLOCK_R reduced channels of a tile and loops over the groups (no cross-program sum).
    pid = tl.program_id(0)
    n_rblk = tl.cdiv(CR, BLOCK_R)
    n_tiles = tl.cdiv(NPIX, BLOCK_P)
    rblk = pid % n_rblk
    tile = (pid // n_rblk) % n_tiles
    b = (pid // n_rblk // n_tiles).to(tl.int64)
    i, j, pmask, tap, tmask, x_offs, m = _tile_geometry(tile, Wo, NPIX, H, W, sxh, sxw, PAD, DIL, K, STRIDE, IDX,
                                                        BLOCK_P, BLOCK_T)
    rr = rblk * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rr < CR
    dy_poffs = i.to(IDX) * sdyh + j.to(IDX) * sdyw
    acc = tl.zeros((BLOCK_P, BLOCK_R), dtype=ACC)
    for g in range(G):
        c0 = (g * CPG).to(tl.int64)
        dk = _kernel_grad_tile(x_ptr + b * sxb + c0 * sxc, sxc, x_offs, m, dy_ptr + b * sdyb + c0 * sdyc, sdyc,
                               dy_poffs, pmask, CPG, ACC, BLOCK_P, BLOCK_T)
        sw = tl.load(sw_ptr + ((g * K * K + tap) * sws0)[:, None] + (rr * sws1)[None, :],
                     mask=tmask[:, None] & rmask[None, :], other=0.0)
        if EMULATE_BF16:
            sw = sw.to(tl.float32)
        else:  # fp16/bf16: the tensor-core dtype (the unfused path rounds dK to it too)
            dk = dk.to(sw.dtype)
        acc = tl.dot(dk, sw, acc, input_precision=PRECISION, out_dtype=ACC)
    dr_offs = (rr.to(IDX) * sdrr)[None, :] + (i.to(IDX) * sdrh + j.to(IDX) * sdrw)[:, None]
    tl.store(dr_ptr + b * sdrb + dr_offs, _cast_out(acc, dr_ptr.dtype.element_ty, EMULATE_BF16),
             mask=pmask[:, None] & rmask[None, :])


@triton.jit
def _fused_grad_span_kernel(
    dy_ptr, x_ptr, r_ptr, dsw_ptr, dsb_ptr,
    H, W, Wo, NPIX, G, CPG, CR, N_TILES, TILES_PER_PROG,
    sdyb, sdyc, sdyh, sdyw, sxb, sxc, sxh, sxw, srb, srr, srh, srw,
    PAD, DIL,
    K: tl.constexpr, STRIDE: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr, PRECISION: tl.constexpr,
    EMULATE_BF16: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_T: tl.constexpr,
):
    # Partial (per program) span-weight gradient sum over its tiles of dK^T @ reduced, [T, R], and bias gradient
    # (column sums of dK); program = (run of TILES_PER_PROG (image, tile) pairs, group, reduced-channel block).
    pid = tl.program_id(0)
    n_rblk = tl.cdiv(CR, BLOCK_R)
    rblk = pid % n_rblk
    g = (pid // n_rblk) % G
    run = pid // n_rblk // G
    rr = rblk * BLOCK_R + tl.arange(0, BLOCK_R)
    rmask = rr < CR
    c0 = (g * CPG).to(tl.int64)
    acc = tl.zeros((BLOCK_T, BLOCK_R), dtype=ACC)
    acc_b = tl.zeros((BLOCK_T,), dtype=ACC)
    for n in range(run * TILES_PER_PROG, tl.minimum(run * TILES_PER_PROG + TILES_PER_PROG, N_TILES)):
        b = (n // tl.cdiv(NPIX, BLOCK_P)).to(tl.int64)
        tile = n % tl.cdiv(NPIX, BLOCK_P)
        i, j, pmask, tap, tmask, x_offs, m = _tile_geometry(tile, Wo, NPIX, H, W, sxh, sxw, PAD, DIL, K, STRIDE,
                                                            IDX, BLOCK_P, BLOCK_T)
        dk = _kernel_grad_tile(x_ptr + b * sxb + c0 * sxc, sxc, x_offs, m, dy_ptr + b * sdyb + c0 * sdyc, sdyc,
                               i.to(IDX) * sdyh + j.to(IDX) * sdyw, pmask, CPG, ACC, BLOCK_P, BLOCK_T)
        acc_b += tl.sum(dk, axis=0)
        rv = tl.load(r_ptr + b * srb + (rr.to(IDX) * srr)[None, :] + (i.to(IDX) * srh + j.to(IDX) * srw)[:, None],
                     mask=pmask[:, None] & rmask[None, :], other=0.0)
        if EMULATE_BF16:
            rv = rv.to(tl.float32)
        else:
            dk = dk.to(rv.dtype)
        acc = tl.dot(tl.trans(dk), rv, acc, input_precision=PRECISION, out_dtype=ACC)
    # partials: [programs, G*K*K (taps padded to BLOCK_T per group), Cr], written whole (the padded taps are zero)
    tap = tl.arange(0, BLOCK_T)
    part = pid // n_rblk  # = run * G + g
    part_offs = (part * BLOCK_T + tap).to(tl.int64)[:, None] * CR + rr[None, :]
    tl.store(dsw_ptr + part_offs, acc, mask=rmask[None, :])
    if rblk == 0:
        tl.store(dsb_ptr + part.to(tl.int64) * BLOCK_T + tap, acc_b)


@triton.jit
def _fused_grad_input_kernel(
    dy_ptr, r_ptr, sw_ptr, sb_ptr, dx_ptr,
    H, W, Ho, Wo, Hs, Ws, NPIX, G, CPG, CR,
    sdyb, sdyc, sdyh, sdyw, srb, srr, srh, srw, sws0, sws1, sdxb, sdxc, sdxh, sdxw,
    PAD, DIL,
    K: tl.constexpr, STRIDE: tl.constexpr, HAS_BIAS: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    EMULATE_BF16: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
    BLOCK_R: tl.constexpr,
):
    # dx[h, w] = sum over taps (kh, kw) with (h + PAD - kh*DIL) % STRIDE == 0 (same for w) of
    #            kernel[tap, oi, oj] * dy[oi, oj], oi = (h + PAD - kh*DIL) // STRIDE; the kernel value recomputed
    #            as reduced[:, oi, oj] . span_weight[g*K*K + tap, :] (+ bias). Layout as kernels/involution.py.
    b, g, c0, cl, cmask, rh, rw, u, v, h, w, pmask = _grad_input_program(H, W, Hs, Ws, G, CPG, STRIDE,
                                                                         BLOCK_C, BLOCK_P, BLOCK_W)
    rl = tl.arange(0, BLOCK_R)

    dy_base = dy_ptr + b * sdyb + c0 * sdyc
    r_base = r_ptr + b * srb
    sw_base = sw_ptr + (g * K * K).to(tl.int64) * sws0
    dy_coffs = (cl.to(IDX) * sdyc)[:, None]

    acc = tl.zeros((BLOCK_C, BLOCK_P), dtype=ACC)
    for kh in range(K):
        nh = rh + PAD - kh * DIL
        if nh % STRIDE == 0:  # the whole class uses this tap row, or none of it does
            oi = u + nh // STRIDE
            hmask = pmask & (oi >= 0) & (oi < Ho)
            for kw in range(K):
                nw = rw + PAD - kw * DIL
                if nw % STRIDE == 0:
                    oj = v + nw // STRIDE
                    m = hmask & (oj >= 0) & (oj < Wo)
                    r_poffs = (oi.to(IDX) * srh + oj.to(IDX) * srw)[None, :]
                    kv = tl.zeros((BLOCK_P,), dtype=ACC)
                    for r0 in range(0, CR, BLOCK_R):
                        rmask = r0 + rl < CR
                        rv = tl.load(r_base + ((r0 + rl).to(IDX) * srr)[:, None] + r_poffs,
                                     mask=rmask[:, None] & m[None, :], other=0.0).to(ACC)
                        sw = tl.load(sw_base + (kh * K + kw) * sws0 + (r0 + rl) * sws1, mask=rmask,
                                     other=0.0).to(ACC)
                        kv += tl.sum(rv * sw[:, None], axis=0)
                    if HAS_BIAS:
                        kv += tl.load(sb_ptr + g * K * K + kh * K + kw).to(ACC)
                    dy_offs = dy_coffs + (oi.to(IDX) * sdyh + oj.to(IDX) * sdyw)[None, :]
                    dyv = tl.load(dy_base + dy_offs, mask=cmask[:, None] & m[None, :], other=0.0).to(ACC)
                    acc += dyv * kv[None, :]

    dx_base = dx_ptr + b * sdxb + c0 * sdxc
    dx_offs = (cl.to(IDX) * sdxc)[:, None] + (h.to(IDX) * sdxh + w.to(IDX) * sdxw)[None, :]
    tl.store(dx_base + dx_offs, _cast_out(acc, dx_ptr.dtype.element_ty, EMULATE_BF16),
             mask=cmask[:, None] & pmask[None, :])


# ---- planning -----------------------------------------------------------------------------------------------------
# Tile configs: a GPU autotunes among its candidates (bench/sm90.py compiles each; tests run each under the
# interpreter); the interpreter runs one small config. The grad-span kernel has one config, since its partial
# buffer and tile runs are sized on the host from the tile.

_GPU = not _INTERPRET
_GPU_CONFIGS = {  # kernel -> (BLOCK_P values, num_warps values)
    "_fused_fwd_kernel": ((32, 64), (4, 8)),
    "_fused_grad_reduced_kernel": ((32, 64), (4, 8)),
    "_fused_grad_span_kernel": ((32,), (8,)),  # 8 warps: ~128 registers (4 warps: 185-245)
    "_fused_grad_input_kernel": ((32, 64, 128), (4,)),
}
_KEY = ["NPIX", "CPG", "CR", "K", "STRIDE", "IDX", "BLOCK_T", "BLOCK_W"]


def _configs(name, gpu):
    if not gpu:
        return [triton.Config({"BLOCK_P": 16}, num_warps=4)]
    block_ps, warps = _GPU_CONFIGS[name]
    return [triton.Config({"BLOCK_P": bp}, num_warps=nw, num_stages=1) for bp in block_ps for nw in warps]


# The autotuned entry points a GPU launches (built at import, like triton.autotune elsewhere).
_AUTOTUNED = {} if not _GPU else {
    fn.__name__: triton.autotune(_configs(fn.__name__, True), key=[k for k in _KEY if k in fn.arg_names])(fn)
    for fn in (_fused_fwd_kernel, _fused_grad_reduced_kernel, _fused_grad_input_kernel)}


def _launch(kernel, gpu, grid, args, consts, out):
    """A planned launch with the GPU's configs (`gpu`) or the interpreter's; on a GPU through the autotuner."""
    configs = _configs(kernel.__name__, gpu)
    return Launch(_AUTOTUNED.get(kernel.__name__, kernel) if gpu and _GPU else kernel, grid, args, consts, configs,
                  out)


def _consts(x, kernel_size, stride, cr, *tensors):
    image_span = max(sum((n - 1) * s for n, s in zip(a.shape[1:], a.stride()[1:])) + 1 for a in tensors)
    return dict(K=kernel_size, STRIDE=stride, ACC=tl.float64 if x.dtype == torch.float64 else tl.float32,
                IDX=tl.int64 if image_span >= _INT32_SPAN else tl.int32, EMULATE_BF16=_emulate_bf16(x.dtype),
                BLOCK_R=max(16, min(triton.next_power_of_2(max(cr, 1)), _MAX_BLOCK_R)))


def _block_t(kernel_size):
    return max(16, triton.next_power_of_2(kernel_size * kernel_size))  # tl.dot needs >= 16


def _plan_forward(x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation, gpu=_GPU):
    B, C, H, W = x.shape
    spans, cr = span_weight.shape
    G = spans // (kernel_size * kernel_size)
    Ho, Wo = reduced.shape[2:]
    y = torch.empty((B, C, Ho, Wo), device=x.device, dtype=x.dtype, memory_format=memory_format_of(x))
    grid = lambda meta: (B * G * triton.cdiv(Ho * Wo, meta["BLOCK_P"]),)  # noqa: E731
    has_bias = span_bias is not None
    args = (x, reduced, span_weight, span_bias if has_bias else span_weight, y, H, W, Wo, Ho * Wo, G, C // G, cr,
            *x.stride(), *reduced.stride(), *span_weight.stride(), *y.stride(), padding, dilation)
    consts = dict(_consts(x, kernel_size, stride, cr, x, reduced, y), HAS_BIAS=has_bias,
                  PRECISION=_dot_precision(x.dtype), BLOCK_T=_block_t(kernel_size))
    return y, _launch(_fused_fwd_kernel, gpu, grid, args, consts, y)


def _tiles_per_program(n_tiles, groups, device):
    """Tiles per grad-span program: about 4 programs per SM over all (run, group) pairs on a GPU, so the partials
    stay few (a few MB at most); 2 under the interpreter (several partials, so their sum is exercised)."""
    if device.type == "cuda":
        programs = 4 * torch.cuda.get_device_properties(device).multi_processor_count
        return max(1, triton.cdiv(n_tiles * groups, programs))
    return 2


def _plan_backward(grad_out, x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation, gpu=_GPU,
                   tiles_per_program=None):
    """({name: Launch}, finish): run the launches, then finish() returns (grad x, grad reduced, grad span_weight,
    grad span_bias)."""
    B, C, H, W = x.shape
    spans, cr = span_weight.shape
    taps = kernel_size * kernel_size
    G = spans // taps
    CPG = C // G
    Ho, Wo = reduced.shape[2:]
    fmt = memory_format_of(x)
    block_t = _block_t(kernel_size)
    precision = _dot_precision(x.dtype)
    has_bias = span_bias is not None
    base = _consts(x, kernel_size, stride, cr, grad_out, x, reduced)
    n_rblk = triton.cdiv(cr, base["BLOCK_R"])
    launches = {}

    d_reduced = torch.empty(reduced.shape, device=x.device, dtype=x.dtype, memory_format=fmt)
    grid = lambda meta: (B * n_rblk * triton.cdiv(Ho * Wo, meta["BLOCK_P"]),)  # noqa: E731
    args = (grad_out, x, span_weight, d_reduced, H, W, Wo, Ho * Wo, G, CPG, cr, *grad_out.stride(), *x.stride(),
            *span_weight.stride(), *d_reduced.stride(), padding, dilation)
    consts = dict(base, PRECISION=precision, BLOCK_T=block_t)
    launches["grad-reduced"] = _launch(_fused_grad_reduced_kernel, gpu, grid, args, consts, d_reduced)

    # per-program partial sums, every element written (padded taps as zeros), then summed in a fixed order
    (span_config,) = _configs(_fused_grad_span_kernel.__name__, gpu)
    n_tiles = B * triton.cdiv(Ho * Wo, span_config.kwargs["BLOCK_P"])
    per_program = tiles_per_program or _tiles_per_program(n_tiles, G, x.device)
    runs = triton.cdiv(n_tiles, per_program)
    acc_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    d_weight_parts = torch.empty((runs * G, block_t, cr), device=x.device, dtype=acc_dtype)
    d_bias_parts = torch.empty((runs * G, block_t), device=x.device, dtype=acc_dtype)
    args = (grad_out, x, reduced, d_weight_parts, d_bias_parts, H, W, Wo, Ho * Wo, G, CPG, cr, n_tiles, per_program,
            *grad_out.stride(), *x.stride(), *reduced.stride(), padding, dilation)
    launches["grad-span"] = _launch(_fused_grad_span_kernel, gpu, (runs * G * n_rblk,), args, consts, d_weight_parts)

    Hs, Ws = triton.cdiv(H, stride), triton.cdiv(W, stride)
    dx = torch.empty((B, C, H, W), device=x.device, dtype=x.dtype, memory_format=fmt)
    block_c = min(triton.next_power_of_2(CPG), 64)  # the whole group where it fits: the recomputed kernel is shared
    n_cblk = triton.cdiv(CPG, block_c)
    # tiles of whole rows of the phase grid in every config (see kernels/involution.py's _pixel_tile)
    block_w = min(_block_w(Ws, fmt), *(c.kwargs["BLOCK_P"] for c in _configs("_fused_grad_input_kernel", gpu)))
    grid = lambda meta: (B * G * stride * stride * n_cblk * _tiles(Hs, Ws, meta),)  # noqa: E731
    args = (grad_out, reduced, span_weight, span_bias if has_bias else span_weight, dx, H, W, Ho, Wo, Hs, Ws,
            Hs * Ws, G, CPG, cr, *grad_out.stride(), *reduced.stride(), *span_weight.stride(), *dx.stride(), padding,
            dilation)
    consts = dict(base, HAS_BIAS=has_bias, BLOCK_C=block_c, BLOCK_W=block_w)
    launches["grad-input"] = _launch(_fused_grad_input_kernel, gpu, grid, args, consts, dx)

    def finish():
        d_weight = d_weight_parts.view(runs, G, block_t, cr).sum(0)[:, :taps].reshape(spans, cr)
        d_bias = d_bias_parts.view(runs, G, block_t).sum(0)[:, :taps].reshape(spans)
        return dx, d_reduced, d_weight.to(span_weight.dtype), d_bias.to(span_weight.dtype)

    return launches, finish


def involution2d_fused_forward(x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation):
    y, launch = _plan_forward(x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation)
    launch()
    return y


def involution2d_fused_backward(grad_out, x, reduced, span_weight, span_bias, kernel_size, stride, padding,
                                dilation):
    launches, finish = _plan_backward(grad_out, x, reduced, span_weight, span_bias, kernel_size, stride, padding,
                                      dilation)
    for launch in launches.values():
        launch()
    return finish()
