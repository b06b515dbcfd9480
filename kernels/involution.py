"""Triton involution kernels: fused forward, grad-input and grad-weight (contract: largeconv/backend_api.md).

No kernel materialises the unfolded (K²-times larger) tensor. The kernels are layout-agnostic through strides:
NCHW and channels_last differ only in the channel block chosen on the host (short for NCHW, whose pixels are
contiguous; up to 64 for channels_last, whose channels are contiguous), and Triton specialises stride-1
arguments, so it knows the contiguous axis of each tile and lays threads along it (coalesced accesses).

- forward: a program owns a tile of output pixels x a block of one group's channels. Per tap it loads the tile's
  weights once and applies them to every channel of the block; the shifted input tiles overlap between taps
  and are served from cache, so DRAM sees each input and weight element about once per tile.
- grad-input: a gather, no atomics. With stride s, input pixels are split into s*s phase classes
  (h % s, w % s); inside a class a tap either hits every pixel (at output index pixel // s + const) or none,
  so a program skips whole taps instead of masking most of its lanes (the price: at s > 1 its NCHW stores are
  strided by s; the other classes' programs fill the gaps).
- grad-weight: per output pixel and tap, a reduction over the group's channels of grad_out * shifted x.

Tiles are [pixels, channels], pixels first: where neither axis of a load is contiguous (NCHW x at stride 2),
triton 3.6.0 (the GPU box's) lays a warp along the first axis, so it reads 32 pixels 2 apart (2-3 lines) rather
than 16 channels (16 lines); 3.8.0 breaks that tie towards the last axis. Along a contiguous axis (NCHW pixel rows,
channels_last channels) both lay the warp there.

Addressing: 64-bit scalar base per program (batch, first channel), tile offsets relative to it in IDX, which is
int32 unless one image of some tensor spans 2**31 elements (int32 offsets need fewer registers in most
configurations: ptxas for sm_90 reports up to 40% fewer). Tensors with more than 2**31 elements in total are fine
either way.
"""
import torch
import triton
import triton.language as tl

from largeconv.arguments import memory_format_of

from .dwconv import Launch

# Tile offsets are int32 while every image (one batch entry) of every tensor spans fewer elements than this.
_INT32_SPAN = 2**31
# Decided once, as triton.jit decides whether the kernels below are interpreted (TRITON_INTERPRET=1 at import).
_INTERPRET = bool(triton.knobs.runtime.interpret)


def _prune(configs, named_args, **kwargs):
    """Configs whose pixel block holds whole tile rows (BLOCK_P >= BLOCK_W) with 2..16 tile elements per thread
    and no pixel block far beyond the pixel count (else the one with the most elements per thread)."""
    block_c, npix, block_w = kwargs["BLOCK_C"], named_args["NPIX"], kwargs["BLOCK_W"]
    max_p = max(16, block_w, triton.next_power_of_2(npix))

    def per_thread(cfg):
        return block_c * cfg.kwargs["BLOCK_P"] / (32 * cfg.num_warps)

    fits = [cfg for cfg in configs if block_w <= cfg.kwargs["BLOCK_P"] <= max_p]
    return [cfg for cfg in fits if 2 <= per_thread(cfg) <= 16] or [max(fits, key=per_thread)]


def _configs(gpu=not _INTERPRET):
    # The pixel block and warp count are tuned per shape on a GPU; the interpreter runs one config, untimed.
    if not gpu:
        return [triton.Config({"BLOCK_P": 64}, num_warps=4)]
    return [triton.Config({"BLOCK_P": bp}, num_warps=nw, num_stages=1)
            for bp in (16, 32, 64, 128, 256) for nw in (2, 4, 8)]


def _autotune(fn):
    return triton.autotune(_configs(), key=["NPIX", "CPG", "K", "STRIDE", "BLOCK_C", "BLOCK_W", "IDX"],
                           prune_configs_by={"early_config_prune": _prune})(fn)


def _block_w(cols, fmt):
    """Tile width for NCHW: the grid's width rounded up to a power of two, at most 32 (a warp's row of fp32 is a
    line). 0 for channels_last, whose loads run along channels: flat pixel tiles, which keep fewer masks live
    (row tiles made ptxas spill a predicate in the channels_last grad-weight)."""
    return 0 if fmt == torch.channels_last else min(triton.next_power_of_2(cols), 32)


@triton.jit
def _pixel_tile(tile, ROWS, COLS, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr):
    """Pixels (i, j) of tile `tile` of a ROWS x COLS grid, and their mask. BLOCK_W > 0: tiles of
    BLOCK_P // BLOCK_W rows x BLOCK_W columns, row-major; BLOCK_W is a power of two, so Triton sees that each run
    of BLOCK_W pixels is contiguous along a row of NCHW memory and lays a warp's threads along it (with a flat
    index split as p // COLS, p % COLS it could not: under triton 3.6 a warp's load spanned 16 channels, 16
    lines). BLOCK_W == 0: BLOCK_P consecutive pixels of the flattened grid."""
    q = tl.arange(0, BLOCK_P)
    if BLOCK_W == 0:
        p = tile * BLOCK_P + q
        i = p // COLS
        j = p % COLS
        mask = p < ROWS * COLS
    else:
        # BLOCK_W wide, or the whole pixel block where a config's block is narrower (the autotuner prunes such
        # configs, but launches a single config unpruned: the GPU kit's workers keep one per kernel)
        TILE_W: tl.constexpr = BLOCK_W if BLOCK_W <= BLOCK_P else BLOCK_P
        tiles_w = tl.cdiv(COLS, TILE_W)
        i = (tile // tiles_w) * (BLOCK_P // TILE_W) + q // TILE_W
        j = (tile % tiles_w) * TILE_W + q % TILE_W
        mask = (i < ROWS) & (j < COLS)
    return i, j, mask


@triton.jit
def _pixel_tiles(ROWS, COLS, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr):
    if BLOCK_W == 0:
        n = tl.cdiv(ROWS * COLS, BLOCK_P)
    else:
        TILE_W: tl.constexpr = BLOCK_W if BLOCK_W <= BLOCK_P else BLOCK_P  # as _pixel_tile
        n = tl.cdiv(ROWS, BLOCK_P // TILE_W) * tl.cdiv(COLS, TILE_W)
    return n


def _tiles(rows, cols, meta):
    """_pixel_tiles on the host, for the grids."""
    if meta["BLOCK_W"] == 0:
        return triton.cdiv(rows * cols, meta["BLOCK_P"])
    tile_w = min(meta["BLOCK_W"], meta["BLOCK_P"])  # as _pixel_tile
    return triton.cdiv(rows, meta["BLOCK_P"] // tile_w) * triton.cdiv(cols, tile_w)


@_autotune
@triton.jit
def _involution_fwd_kernel(
    x_ptr, w_ptr, y_ptr,
    H, W, Ho, Wo, NPIX, G, CPG,
    sxb, sxc, sxh, sxw, swb, swc, swh, sww, syb, syc, syh, syw,
    PAD, DIL,
    K: tl.constexpr, STRIDE: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # Channel block fastest, then pixel tile: neighbouring programs share weights and input halo in L2.
    n_cblk = tl.cdiv(CPG, BLOCK_C)
    n_tiles = _pixel_tiles(Ho, Wo, BLOCK_P, BLOCK_W)
    pid = tl.program_id(0)
    cblk = pid % n_cblk
    rest = pid // n_cblk
    tile = rest % n_tiles
    bg = rest // n_tiles
    g = bg % G
    b = (bg // G).to(tl.int64)
    c0 = (g * CPG + cblk * BLOCK_C).to(tl.int64)

    i, j, pmask = _pixel_tile(tile, Ho, Wo, BLOCK_P, BLOCK_W)
    cl = tl.arange(0, BLOCK_C)
    cmask = cblk * BLOCK_C + cl < CPG
    hi0 = i * STRIDE - PAD
    wi0 = j * STRIDE - PAD

    x_base = x_ptr + b * sxb + c0 * sxc
    w_base = w_ptr + b * swb + (g * K * K).to(tl.int64) * swc
    x_offs = (hi0.to(IDX) * sxh + wi0.to(IDX) * sxw)[:, None] + (cl.to(IDX) * sxc)[None, :]
    w_offs = i.to(IDX) * swh + j.to(IDX) * sww

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for kh in range(K):
        hi = hi0 + kh * DIL
        hmask = pmask & (hi >= 0) & (hi < H)
        # unrolled: ptxas then issues a row's loads ahead of their FMAs (rolled, a warp waited on a just-issued
        # load 4 times per tap: memory-latency-bound at 27% of the HBM roof on an H100, bench/NOTES.md)
        for kw in tl.static_range(K):
            wi = wi0 + kw * DIL
            m = hmask & (wi >= 0) & (wi < W)
            wv = tl.load(w_base + tl.cast(kh * K + kw, IDX) * swc + w_offs, mask=pmask, other=0.0).to(ACC)
            tap = tl.cast(kh * DIL, IDX) * sxh + tl.cast(kw * DIL, IDX) * sxw
            xv = tl.load(x_base + tap + x_offs, mask=m[:, None] & cmask[None, :], other=0.0).to(ACC)
            acc += xv * wv[:, None]

    y_base = y_ptr + b * syb + c0 * syc
    y_offs = (i.to(IDX) * syh + j.to(IDX) * syw)[:, None] + (cl.to(IDX) * syc)[None, :]
    tl.store(y_base + y_offs, acc.to(y_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@triton.jit
def _grad_input_program(H, W, Hs, Ws, G, CPG, STRIDE: tl.constexpr, BLOCK_C: tl.constexpr,
                        BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr):
    """What a grad-input program owns (here and in involution_fused.py): image b, group g, a block of the group's
    channels (first channel c0, lanes cl / cmask) and BLOCK_P input pixels of one stride phase (rh, rw): h, w, pmask,
    and (u, v), their place on the phase's grid.
    Programs walk channel blocks, then pixel tiles, then the STRIDE*STRIDE phases, then (b, g)."""
    n_cblk = tl.cdiv(CPG, BLOCK_C)
    n_tiles = _pixel_tiles(Hs, Ws, BLOCK_P, BLOCK_W)
    pid = tl.program_id(0)
    cblk = pid % n_cblk
    rest = pid // n_cblk
    tile = rest % n_tiles
    rest = rest // n_tiles
    phase = rest % (STRIDE * STRIDE)
    bg = rest // (STRIDE * STRIDE)
    rh = phase // STRIDE
    rw = phase % STRIDE
    g = bg % G
    b = (bg // G).to(tl.int64)
    c0 = (g * CPG + cblk * BLOCK_C).to(tl.int64)
    # pixels h = rh + STRIDE*u, w = rw + STRIDE*v, with (u, v) on the phase's Hs x Ws grid
    u, v, pmask = _pixel_tile(tile, Hs, Ws, BLOCK_P, BLOCK_W)
    h = rh + STRIDE * u
    w = rw + STRIDE * v
    pmask = pmask & (h < H) & (w < W)
    cl = tl.arange(0, BLOCK_C)
    cmask = cblk * BLOCK_C + cl < CPG
    return b, g, c0, cl, cmask, rh, rw, u, v, h, w, pmask


@_autotune
@triton.jit
def _involution_grad_input_kernel(
    dy_ptr, w_ptr, dx_ptr,
    H, W, Ho, Wo, Hs, Ws, NPIX, G, CPG,
    sdyb, sdyc, sdyh, sdyw, swb, swc, swh, sww, sdxb, sdxc, sdxh, sdxw,
    PAD, DIL,
    K: tl.constexpr, STRIDE: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr,
):
    # dx[h, w] = sum over taps (kh, kw) with (h + PAD - kh*DIL) % STRIDE == 0 (same for w) of
    #            weight[tap, oi, oj] * dy[oi, oj], oi = (h + PAD - kh*DIL) // STRIDE, 0 <= oi < Ho.
    b, g, c0, cl, cmask, rh, rw, u, v, h, w, pmask = _grad_input_program(H, W, Hs, Ws, G, CPG, STRIDE,
                                                                         BLOCK_C, BLOCK_P, BLOCK_W)

    dy_base = dy_ptr + b * sdyb + c0 * sdyc
    w_base = w_ptr + b * swb + (g * K * K).to(tl.int64) * swc
    dy_coffs = (cl.to(IDX) * sdyc)[None, :]

    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for kh in range(K):
        nh = rh + PAD - kh * DIL
        if nh % STRIDE == 0:  # the whole class uses this tap row, or none of it does
            oi = u + nh // STRIDE  # exact division, so truncating and flooring agree for negative nh
            hmask = pmask & (oi >= 0) & (oi < Ho)
            for kw in range(K):
                nw = rw + PAD - kw * DIL
                if nw % STRIDE == 0:
                    oj = v + nw // STRIDE
                    m = hmask & (oj >= 0) & (oj < Wo)
                    w_offs = tl.cast(kh * K + kw, IDX) * swc + oi.to(IDX) * swh + oj.to(IDX) * sww
                    wv = tl.load(w_base + w_offs, mask=m, other=0.0).to(ACC)
                    dy_offs = dy_coffs + (oi.to(IDX) * sdyh + oj.to(IDX) * sdyw)[:, None]
                    dyv = tl.load(dy_base + dy_offs, mask=m[:, None] & cmask[None, :], other=0.0).to(ACC)
                    acc += dyv * wv[:, None]

    dx_base = dx_ptr + b * sdxb + c0 * sdxc
    dx_offs = (h.to(IDX) * sdxh + w.to(IDX) * sdxw)[:, None] + (cl.to(IDX) * sdxc)[None, :]
    tl.store(dx_base + dx_offs, acc.to(dx_ptr.dtype.element_ty), mask=pmask[:, None] & cmask[None, :])


@_autotune
@triton.jit
def _involution_grad_weight_kernel(
    dy_ptr, x_ptr, dw_ptr,
    H, W, Ho, Wo, NPIX, G, CPG,
    sdyb, sdyc, sdyh, sdyw, sxb, sxc, sxh, sxw, sdwb, sdwc, sdwh, sdww,
    PAD, DIL,
    K: tl.constexpr, STRIDE: tl.constexpr, ACC: tl.constexpr, IDX: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_W: tl.constexpr, ONE_CBLK: tl.constexpr,
):
    # dw[tap, i, j] = sum over the group's channels c of dy[c, i, j] * x[c, i*STRIDE + kh*DIL - PAD, ...].
    n_tiles = _pixel_tiles(Ho, Wo, BLOCK_P, BLOCK_W)
    pid = tl.program_id(0)
    tile = pid % n_tiles
    bg = pid // n_tiles
    g = bg % G
    b = (bg // G).to(tl.int64)
    c0 = (g * CPG).to(tl.int64)

    i, j, pmask = _pixel_tile(tile, Ho, Wo, BLOCK_P, BLOCK_W)
    hi0 = i * STRIDE - PAD
    wi0 = j * STRIDE - PAD
    cl = tl.arange(0, BLOCK_C)

    dy_base = dy_ptr + b * sdyb + c0 * sdyc
    x_base = x_ptr + b * sxb + c0 * sxc
    dw_base = dw_ptr + b * sdwb + (g * K * K).to(tl.int64) * sdwc
    dy_poffs = (i.to(IDX) * sdyh + j.to(IDX) * sdyw)[:, None]
    x_poffs = (hi0.to(IDX) * sxh + wi0.to(IDX) * sxw)[:, None]
    dw_poffs = i.to(IDX) * sdwh + j.to(IDX) * sdww

    if ONE_CBLK:  # the whole group fits one block: load grad_out once and reuse it for all K*K taps
        dyv = tl.load(dy_base + dy_poffs + (cl.to(IDX) * sdyc)[None, :],
                      mask=pmask[:, None] & (cl < CPG)[None, :], other=0.0).to(ACC)
    for kh in range(K):
        hi = hi0 + kh * DIL
        hmask = pmask & (hi >= 0) & (hi < H)
        for kw in range(K):
            wi = wi0 + kw * DIL
            m = hmask & (wi >= 0) & (wi < W)
            tap = tl.cast(kh * DIL, IDX) * sxh + tl.cast(kw * DIL, IDX) * sxw
            acc = tl.zeros((BLOCK_P,), dtype=ACC)
            for cs in range(0, CPG, BLOCK_C):
                cg = cs + cl
                cmask = cg < CPG
                if not ONE_CBLK:
                    dyv = tl.load(dy_base + dy_poffs + (cg.to(IDX) * sdyc)[None, :],
                                  mask=pmask[:, None] & cmask[None, :], other=0.0).to(ACC)
                xv = tl.load(x_base + tap + x_poffs + (cg.to(IDX) * sxc)[None, :],
                             mask=m[:, None] & cmask[None, :], other=0.0).to(ACC)
                acc += tl.sum(dyv * xv, axis=1)
            dw_offs = tl.cast(kh * K + kw, IDX) * sdwc + dw_poffs
            tl.store(dw_base + dw_offs, acc.to(dw_ptr.dtype.element_ty), mask=pmask)


def unsupported_reason(x, kernel_size):
    if x.is_cuda or (x.device.type == "cpu" and _INTERPRET):
        return None
    return "needs CUDA tensors (CPU tensors only with TRITON_INTERPRET=1 set before triton is imported)"


def _block_c(cpg, fmt):
    # NCHW keeps the channel side short so pixel runs stay long; channels_last takes up to 64 contiguous channels.
    return min(triton.next_power_of_2(cpg), 64 if fmt == torch.channels_last else 16)


def _consts(kernel_size, stride, block_c, cols, *tensors):
    """Constexprs shared by the kernels: K, stride, channel block, tile width (for a pixel grid `cols` wide, in the
    first tensor's layout), accumulator and tile-offset dtypes."""
    image_span = max(sum((n - 1) * s for n, s in zip(a.shape[1:], a.stride()[1:])) + 1 for a in tensors)
    return dict(K=kernel_size, STRIDE=stride, BLOCK_C=block_c, BLOCK_W=_block_w(cols, memory_format_of(tensors[0])),
                ACC=tl.float64 if tensors[0].dtype == torch.float64 else tl.float32,
                IDX=tl.int64 if image_span >= _INT32_SPAN else tl.int32)


# Planned launches (see dwconv.Launch): `gpu` picks the GPU's autotune candidates (pruned for the shape, as the
# autotuner prunes them) or the interpreter's; tests run the GPU's under the interpreter, bench/sm90.py compiles them.

def _launch(kernel, grid, args, consts, out, gpu, npix):
    configs = _configs(gpu)
    if len(configs) > 1:  # as triton.autotune, which prunes only when it has a choice
        configs = _prune(configs, {"NPIX": npix}, **consts)
    return Launch(kernel, grid, args, consts, configs, out)


def _plan_forward(x, weight, kernel_size, stride, padding, dilation, gpu=not _INTERPRET):
    B, C, H, W = x.shape
    G = weight.shape[1] // (kernel_size * kernel_size)
    CPG = C // G
    Ho, Wo = weight.shape[2], weight.shape[3]
    fmt = memory_format_of(x)
    y = torch.empty((B, C, Ho, Wo), device=x.device, dtype=x.dtype, memory_format=fmt)
    block_c = _block_c(CPG, fmt)
    n_cblk = triton.cdiv(CPG, block_c)
    grid = lambda meta: (B * G * n_cblk * _tiles(Ho, Wo, meta),)
    args = (x, weight, y, H, W, Ho, Wo, Ho * Wo, G, CPG, *x.stride(), *weight.stride(), *y.stride(), padding,
            dilation)
    consts = _consts(kernel_size, stride, block_c, Wo, x, weight, y)
    return y, _launch(_involution_fwd_kernel, grid, args, consts, y, gpu, Ho * Wo)


def _plan_grad_input(grad_out, weight, input_shape, kernel_size, stride, padding, dilation, gpu=not _INTERPRET):
    B, C, H, W = input_shape
    G = weight.shape[1] // (kernel_size * kernel_size)
    CPG = C // G
    Ho, Wo = grad_out.shape[2], grad_out.shape[3]
    fmt = memory_format_of(grad_out)
    dx = torch.empty((B, C, H, W), device=grad_out.device, dtype=grad_out.dtype, memory_format=fmt)
    Hs, Ws = triton.cdiv(H, stride), triton.cdiv(W, stride)  # pixels per phase class, at most
    block_c = _block_c(CPG, fmt)
    n_cblk = triton.cdiv(CPG, block_c)
    grid = lambda meta: (B * G * stride * stride * n_cblk * _tiles(Hs, Ws, meta),)
    args = (grad_out, weight, dx, H, W, Ho, Wo, Hs, Ws, Hs * Ws, G, CPG,
            *grad_out.stride(), *weight.stride(), *dx.stride(), padding, dilation)
    consts = _consts(kernel_size, stride, block_c, Ws, grad_out, weight, dx)
    return dx, _launch(_involution_grad_input_kernel, grid, args, consts, dx, gpu, Hs * Ws)


def _plan_grad_weight(grad_out, x, weight_shape, kernel_size, stride, padding, dilation, gpu=not _INTERPRET):
    B, C, H, W = x.shape
    G = weight_shape[1] // (kernel_size * kernel_size)
    CPG = C // G
    Ho, Wo = weight_shape[2], weight_shape[3]
    fmt = memory_format_of(x)
    dw = torch.empty(tuple(weight_shape), device=x.device, dtype=x.dtype, memory_format=fmt)
    # Channels are the reduction axis: whole groups of up to 64 channels in one block, so grad_out is loaded
    # once for all K*K taps.
    block_c = min(triton.next_power_of_2(CPG), 64)
    grid = lambda meta: (B * G * _tiles(Ho, Wo, meta),)
    args = (grad_out, x, dw, H, W, Ho, Wo, Ho * Wo, G, CPG,
            *grad_out.stride(), *x.stride(), *dw.stride(), padding, dilation)
    consts = dict(_consts(kernel_size, stride, block_c, Wo, grad_out, x, dw), ONE_CBLK=CPG <= block_c)
    return dw, _launch(_involution_grad_weight_kernel, grid, args, consts, dw, gpu, Ho * Wo)


def involution2d_forward(x, weight, kernel_size, stride, padding, dilation):
    y, launch = _plan_forward(x, weight, kernel_size, stride, padding, dilation)
    launch()
    return y


def involution2d_grad_input(grad_out, weight, input_shape, kernel_size, stride, padding, dilation):
    dx, launch = _plan_grad_input(grad_out, weight, input_shape, kernel_size, stride, padding, dilation)
    launch()
    return dx


def involution2d_grad_weight(grad_out, x, weight_shape, kernel_size, stride, padding, dilation):
    dw, launch = _plan_grad_weight(grad_out, x, weight_shape, kernel_size, stride, padding, dilation)
    launch()
    return dw
