"""Triton kernels for depthwise 2-D convolution: forward, grad-input and grad-weight.

Contract: largeconv/backend_api.md. Padding is (top, bottom, left, right); with channel multiplier m, output
channel o reads input channel o // m. Arithmetic accumulates in fp32 (fp64 for fp64 inputs).

NCHW (a BLOCK_H x BLOCK_W tile of outputs per program: of one (n, c) plane, or on maps of at most 32 rows of
one channel's images one after another, several images a tile: _stacks, _stacked_tile):
  For each kernel row kh, the 1-D convolution of a strip of input rows with the filter row is a matrix product
  X[BLOCK_H, BLOCK_J] @ T[BLOCK_J, BLOCK_W] where T is the banded Toeplitz matrix of the filter row,
  T[j, w] = weight[kh, kw] for j = w*sw + kw*dw. tl.dot runs it on tensor cores: fp16/bf16, and fp32 as TF32 when
  torch.backends.cudnn.allow_tf32 allows it, else as 3xTF32 (about fp32's accuracy); fp64 in IEEE precision. T is
  gathered from the filter row with indices hoisted out of the kh loop. grad-input is the same product with the
  transposed band (a gather, no atomics). grad-weight is the product gy-rows-shifted-by-kh [BLOCK_KH, q] @
  x-columns-shifted-by-kw [q, BLOCK_KW] reduced over q = (n, input row, output column), fp32 in IEEE precision
  unless TF32 is allowed. A tile whose product came out NaN or Inf is summed again without tl.dot, whose zeros
  would spread a NaN/Inf operand (see "Non-finite values" below).
channels_last (a tile of BLOCK_P pixels x BLOCK_C channels, loads contiguous along C): direct loops over the taps
  (channels are independent, so there is no matrix product to form).

grad-weight is deterministic: each program owns one (channel or channel block, tap tile, split of the reduction)
and stores its partial sum (fp32, fp64 for fp64); the splits are then added by torch in a fixed order.

Offsets of (n, c) planes and of channels_last images are int64; offsets inside one H x W plane are int32.
"""
import os
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from largeconv.arguments import cudnn_conv_allows_tf32, dwconv2d_output_hw, is_channels_last

# triton.jit picks the interpreter when the module is imported, so this is the state the kernels run under.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def unsupported_reason(x, kernel_size):
    if x.device.type != "cuda" and not (x.device.type == "cpu" and _INTERPRETED):
        return "needs CUDA tensors (CPU tensors only under TRITON_INTERPRET=1)"
    if x.dtype not in _DTYPES:
        return f"{x.dtype} not supported (float16, bfloat16, float32, float64)"
    return None


# ----------------------------------------------------------------------------------------------------------------
# helpers


@triton.jit
def _cast_out(v, dtype: tl.constexpr, EMULATE_BF16: tl.constexpr):
    # The interpreter rounds fp32 -> bf16 toward zero; GPUs round to nearest even. Round the bits first there.
    if EMULATE_BF16:
        bits = v.to(tl.uint32, bitcast=True)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
        v = bits.to(tl.float32, bitcast=True)
    return v.to(dtype)


@triton.jit
def _has_non_finite(v):
    return tl.min((tl.abs(v) < float("inf")).to(tl.int32)) == 0  # NaN compares false


@triton.jit
def _accumulate(acc, a, a_ok, b, b_ok, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, DIRECT: tl.constexpr):
    """acc + a @ b, the NCHW kernels' matrix product; a_ok / b_ok: where a and b hold real operands (elsewhere
    the zeros of masked loads and of the band).
    DIRECT: the products of real operands only, added in acc's dtype, so that a zero never multiplies a NaN or Inf
    (PyTorch's CUDA depthwise kernels likewise skip padded taps). Slow: only to redo a tile whose tl.dot sum came
    out non-finite (see "Non-finite values" below)."""
    if DIRECT:  # a is M x 1 and b 1 x N: one rank-1 update
        acc += tl.where(a_ok & b_ok, a.to(acc.dtype) * b.to(acc.dtype), 0.0)
    else:
        if EMULATE_BF16:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)
    return acc


def _memory_format(channels_last):
    return torch.channels_last if channels_last else torch.contiguous_format


def _emulate_bf16(dtype):
    # The interpreter has no bf16 dot and truncates bf16 stores.
    return _INTERPRETED and dtype == torch.bfloat16


def _acc_dtype(dtype):
    return tl.float64 if dtype == torch.float64 else tl.float32


def _dot_precision(dtype):
    # Ignored for fp16/bf16 operands. fp32 uses TF32 tensor cores only where PyTorch allows them for cuDNN convs.
    if dtype == torch.float64 or (dtype == torch.float32 and not cudnn_conv_allows_tf32()):
        return "ieee"
    return "tf32"


def _toeplitz_precision(dtype):
    """The NCHW forward's and grad-input's: fp32 without TF32 as 3xTF32 (each operand split into two TF32 parts,
    three tensor-core products: about fp32's accuracy), since IEEE fp32 dots run as FMA loops (17.5 ms, 4.7% of the
    FMA roof, for RepLKNet-31B's K31 stage-1 forward on an H100). grad-weight stays IEEE: its tile spills 72-296 B
    under 3xTF32 (sm_90). The interpreter computes every dot exactly, so only a GPU run checks 3xTF32's accuracy
    (the GPU kit's smoke stage: fp32 with TF32 off, 1e-5)."""
    precision = _dot_precision(dtype)
    return "tf32x3" if dtype == torch.float32 and precision == "ieee" else precision


# Tile configs. Each helper takes `gpu`: the GPU's choice (True) or the interpreter's (False); the kernels use the
# one matching how they run. Tests run the GPU's under the interpreter too, and bench/sm90.py compiles them.

def _toeplitz_configs(gpu=not _INTERPRETED, wide=False, precision=None, stack=False):
    """The autotune candidates of the NCHW forward and grad-input kernels; `wide`: fp32/fp64 operands;
    `precision`: their dots' (_toeplitz_precision); `stack`: tiles stacking several images' rows (_stacks), which
    take the 16-column tiles only (small maps; the 32-column ones spilled 8-56 B with the per-row arithmetic)."""
    if stack and gpu:
        return [c for c in _toeplitz_configs(gpu, wide, precision) if c.kwargs["BLOCK_W"] == 16]
    if not gpu:  # the interpreter would run every config; the smallest tiles also exercise the tile edges
        return [triton.Config({"BLOCK_H": 16, "BLOCK_W": 16, "BLOCK_J": 16}, num_warps=1)]
    # BLOCK_W + (Kw - 1) close to BLOCK_J keeps the zeros of the band low: 32/64 suits Kw ~ 31, 16/32 Kw <= 17.
    if precision == "tf32x3":
        # 3xTF32 holds each operand twice (high and low part): the 8-warp 64x32x64 tile below reaches 255
        # registers and spills 24-32 B under triton 3.8 (sm_90, bench/sm90.py); these two stay at 205-240
        # registers without spills under 3.6 and 3.8. A K31 strip (BLOCK_W + 30 columns) is 2 chunks of 32.
        return [
            triton.Config({"BLOCK_H": 64, "BLOCK_W": 32, "BLOCK_J": 32}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_H": 64, "BLOCK_W": 16, "BLOCK_J": 32}, num_warps=4, num_stages=3),
        ]
    if wide:
        # fp32 and fp64 dots hold twice the registers of fp16/bf16 ones: with 4 warps the 64x32 tile (and the
        # 128-row ones) sit at 255 registers and spill 8-376 B (sm_90, bench/sm90.py); the same tile on 8 warps
        # uses 164-199 registers and does not spill, in TF32 and fp64 (and IEEE fp32, which no longer runs here).
        return [
            triton.Config({"BLOCK_H": 64, "BLOCK_W": 32, "BLOCK_J": 64}, num_warps=8, num_stages=3),
            triton.Config({"BLOCK_H": 64, "BLOCK_W": 16, "BLOCK_J": 32}, num_warps=4, num_stages=3),
        ]
    return [
        triton.Config({"BLOCK_H": 64, "BLOCK_W": 32, "BLOCK_J": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_H": 128, "BLOCK_W": 32, "BLOCK_J": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_H": 64, "BLOCK_W": 16, "BLOCK_J": 32}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_H": 128, "BLOCK_W": 16, "BLOCK_J": 16}, num_warps=4, num_stages=3),
    ]


def _config_key(config):
    return tuple(sorted(config.kwargs.items())), config.num_warps, config.num_stages


def _all_toeplitz_configs():
    """The three lists, for the autotuner; _prune_toeplitz keeps the one matching the call's dtype and precision."""
    configs, keys = [], set()
    for wide, precision in ((False, None), (True, None), (True, "tf32x3")):
        for c in _toeplitz_configs(wide=wide, precision=precision):
            if _config_key(c) not in keys:
                configs.append(c)
                keys.add(_config_key(c))
    return configs


def _prune_toeplitz(configs, named_args, **kwargs):
    wide = next(v for v in named_args.values() if isinstance(v, torch.Tensor)).element_size() >= 4
    # only GPUs autotune among several
    keep = {_config_key(c) for c in _toeplitz_configs(gpu=True, wide=wide, precision=kwargs.get("PRECISION"),
                                                      stack=kwargs.get("STACK", False))}
    # the GPU run kit may have cut the autotuner's list to a few configs (bench/gpu_kit.py): then run those
    return [c for c in configs if _config_key(c) in keep] or configs


# PRECISION too: cuDNN's TF32 setting may change between calls, and each precision has its own candidates
_TOEPLITZ_KEY = ["Ho", "Wo", "H", "W", "Kh", "Kw", "sh", "sw", "dh", "dw", "PRECISION"]


def _cl_config(channels, gpu=not _INTERPRETED):
    """Tiles of the channels_last forward and grad-input kernels."""
    if not gpu:  # fewer, larger programs run faster in the interpreter
        return triton.Config({"BLOCK_P": 128, "BLOCK_C": 4}, num_warps=4)
    return triton.Config({"BLOCK_P": 64, "BLOCK_C": min(64, max(16, triton.next_power_of_2(channels)))}, num_warps=4)


def _grad_weight_nchw_config(Kh, Kw, Wo, gpu=not _INTERPRETED):
    """Tap tiles of 16 or 32; a reduction chunk is BLOCK_R input rows x BLOCK_Q output columns."""
    block_kh, block_kw = (min(32, max(16, triton.next_power_of_2(k))) for k in (Kh, Kw))
    block_q = min(64, max(16, triton.next_power_of_2(Wo))) if gpu else 16
    return triton.Config({"BLOCK_KH": block_kh, "BLOCK_KW": block_kw, "BLOCK_R": (64 if gpu else 32) // block_q,
                          "BLOCK_Q": block_q}, num_warps=4)


def _grad_weight_nhwc_config(Co, gpu=not _INTERPRETED):
    if not gpu:
        return triton.Config({"BLOCK_P": 128, "BLOCK_KW": 4, "BLOCK_C": 4}, num_warps=4)
    return triton.Config({"BLOCK_P": 16, "BLOCK_KW": 8, "BLOCK_C": min(32, max(16, triton.next_power_of_2(Co)))},
                         num_warps=4)


def _num_splits(units, programs, device):
    """Splits of a grad-weight reduction over `units` work items, so that the grid fills the GPU."""
    if device.type != "cuda":
        return 1
    target = 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(triton.cdiv(target, programs), triton.cdiv(units, 8), 65535))


class Launch(NamedTuple):
    """One kernel launch, planned and not yet run: the entry points run it; tests run it with the GPU's tile
    configs under the interpreter; bench/sm90.py compiles it for sm_90 with each config."""
    kernel: object        # what the entry point launches: a triton.autotune wrapper or a JITFunction
    grid: object          # tuple, or callable of the launch's meta-parameters
    args: tuple
    meta: dict            # constexprs fixed by the call (flags, dtypes), not the tiles
    configs: list         # tile configs: the autotune candidates, or the one config the entry point chose
    out: torch.Tensor     # what the kernel writes (outputs, or grad-weight's partial sums)
    then: "Launch | None" = None  # a launch that always follows this one (grad-input's non-finite redo)

    def __call__(self):
        if isinstance(self.kernel, triton.runtime.Autotuner):  # the autotuner picks the tiles
            self.kernel[self.grid](*self.args, **self.meta)
            if self.then is not None:
                self.then()
        else:
            self.run(self.configs[0])

    def run(self, config):
        """Launch with one given tile config (bypassing any autotuner), then the launch that follows it."""
        fn = self.kernel.fn if isinstance(self.kernel, triton.runtime.Autotuner) else self.kernel
        fn[self.grid](*self.args, **self.meta, **config.all_kwargs())
        if self.then is not None:
            self.then()


# ----------------------------------------------------------------------------------------------------------------
# NCHW kernels (Toeplitz tl.dot)
#
# Non-finite values: in tl.dot a NaN or Inf operand times a zero of the band (or of a masked load) gives NaN, which
# would reach outputs that never read that operand. So each kernel checks its tile's sum (on the device, no host
# sync; once per program, outside the loops) and, where any element came out NaN or Inf, sums the tile again
# without tl.dot (_accumulate's DIRECT mode). A finite element is right as it is: a non-finite operand makes every
# element of its row (or column) of the product non-finite, so it cannot hide. grad-input does that check in a
# second kernel launched after it (_grad_input_nchw_redo_kernel, over the gradient it wrote): with the redo inline,
# its 64x32x64 bf16 tile took 189 registers instead of 128 and the static report predicted it 1.45x slower.


# Rows of a stacked tile past the last image (_stacked_tile): far below every map, so every bounds test drops them.
_NO_ROW = tl.constexpr(1 << 20)


@triton.jit
def _stacked_tile(N, channels, rows_per_image, cols, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """A stacked tile (STACK; _stacks on the host): a channel's rows of all its images are one sequence, image after
    image, cut into tiles of BLOCK_H rows, so the rows of several small images fill one tile (7x7 maps used 7 of 64
    rows a tile) and each kernel row's band is loaded once for all of them. Returns the channel, the tile's first
    image n0, each row's row in its image (_NO_ROW past the last image) and image - n0, and the first column; the
    tiles of a channel are neighbours in the grid."""
    pid = tl.program_id(0)
    tiles_w = tl.cdiv(cols, BLOCK_W)
    tiles = tl.cdiv(N * rows_per_image, BLOCK_H) * tiles_w
    tile = pid % tiles
    r0 = (tile // tiles_w) * BLOCK_H
    r = r0 + tl.arange(0, BLOCK_H)
    n0 = r0 // rows_per_image
    rows = tl.where(r < N * rows_per_image, r % rows_per_image, _NO_ROW)
    return pid // tiles, n0, rows, r // rows_per_image - n0, (tile % tiles_w) * BLOCK_W


@triton.jit
def _fwd_nchw_sum(x_plane, w_row0, oh0, ow0, H, W, Kh, Kw, sh, sw, top, left, dh, dw, stacked_rows, image_offsets,
                  ACC: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr, DIRECT: tl.constexpr,
                  ALIGN: tl.constexpr, STACK: tl.constexpr,
                  BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_J: tl.constexpr):
    """The tile's outputs (bias not added), strip chunk by strip chunk: output rows oh0... of the plane at x_plane,
    or with STACK output rows stacked_rows[r] of the planes at x_plane + image_offsets[r] (_stacked_tile). ALIGN
    (stride 1, W a multiple of it; see _strip_align): the strip starts ALIGN-aligned and its column mask is constant
    over runs of ALIGN, so the x loads are vectorised; the band shifts by the columns the strip starts early."""
    cols = tl.arange(0, BLOCK_W)
    jj = tl.arange(0, BLOCK_J)
    # Kernel rows that reach an input row of this tile, and strip columns j (input column iw0 + j) inside the input.
    if STACK:
        rows = stacked_rows
        kh_lo = tl.cdiv(tl.maximum(top - tl.max(rows) * sh, 0), dh)
        kh_hi = tl.minimum(Kh, (tl.maximum(H - 1 + top - tl.min(rows) * sh, -1) + dh) // dh)
    else:
        rows = oh0 + tl.arange(0, BLOCK_H)
        kh_lo = tl.cdiv(tl.maximum(top - (oh0 + BLOCK_H - 1) * sh, 0), dh)
        kh_hi = tl.minimum(Kh, (tl.maximum(H - 1 + top - oh0 * sh, -1) + dh) // dh)
    iw0 = ow0 * sw - left
    span = (BLOCK_W - 1) * sw + (Kw - 1) * dw + 1  # strip columns the band reaches
    if ALIGN > 1:  # (tl.multiple_of does not reach arguments and loop counters: these products tell the compiler)
        W = W // ALIGN * ALIGN
        shift = (iw0 % ALIGN + ALIGN) % ALIGN
        iw0 = tl.multiple_of(iw0 - shift, ALIGN)
        span = tl.cdiv(span + shift, ALIGN) * ALIGN  # the extra columns meet zeros of the band
        if STACK:
            image_offsets = tl.multiple_of(image_offsets, ALIGN)  # whole planes of whole ALIGN runs
    else:
        shift = 0
    j_lo = tl.maximum(-iw0, 0)
    j_hi = tl.minimum(span, W - iw0)

    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    for j0 in range(j_lo, j_hi, BLOCK_J):
        if ALIGN > 1:
            j0 = j0 // ALIGN * ALIGN
        j = j0 + jj
        j_ok = j < j_hi
        # Toeplitz band: strip column j feeds output column w through tap kw when j = w*sw + kw*dw + shift.
        d = j[:, None] - cols[None, :] * sw - shift
        t_ok = (d >= 0) & (d < Kw * dw) & (d % dw == 0)
        t_off = d // dw
        for kh in range(kh_lo, kh_hi):
            ih = rows * sh - top + kh * dh
            x_ok = ((ih >= 0) & (ih < H))[:, None] & j_ok[None, :]
            if STACK:
                xs = tl.load(x_plane + (image_offsets + ih * W)[:, None] + (iw0 + j)[None, :], mask=x_ok, other=0.0)
            else:
                xs = tl.load(x_plane + ih[:, None] * W + (iw0 + j)[None, :], mask=x_ok, other=0.0)
            band = tl.load(w_row0 + kh * Kw + t_off, mask=t_ok, other=0.0)
            acc = _accumulate(acc, xs, x_ok, band, t_ok, PRECISION, EMULATE_BF16, DIRECT)
    return acc


@triton.autotune(configs=_all_toeplitz_configs(), key=_TOEPLITZ_KEY,
                 prune_configs_by={"early_config_prune": _prune_toeplitz})
@triton.jit
def _fwd_nchw_kernel(x_ptr, w_ptr, b_ptr, y_ptr,
                     N, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m,
                     HAS_BIAS: tl.constexpr, ACC: tl.constexpr, PRECISION: tl.constexpr,
                     EMULATE_BF16: tl.constexpr, ALIGN: tl.constexpr, STACK: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_J: tl.constexpr):
    if STACK:  # the rows of several images (stride 1, m = 1: _stacks)
        o, n, stacked, images, ow0 = _stacked_tile(N, Co, Ho, Wo, BLOCK_H, BLOCK_W)
        plane = n * Co + o  # the tile's first image
        oh0 = 0
    else:  # one image's rows; the tiles of one plane are neighbours in the grid (L2 reuse)
        pid = tl.program_id(0)
        tiles_w = tl.cdiv(Wo, BLOCK_W)
        tiles = tl.cdiv(Ho, BLOCK_H) * tiles_w
        plane = pid // tiles  # n * Co + o
        tile = pid % tiles
        n = plane // Co
        o = plane % Co
        oh0 = (tile // tiles_w) * BLOCK_H
        ow0 = (tile % tiles_w) * BLOCK_W
        stacked = 0
        images = 0
    plane_start = (n * C + o // m).to(tl.int64) * H * W
    if ALIGN > 1:
        plane_start = tl.multiple_of(plane_start, ALIGN)
    x_plane = x_ptr + plane_start
    w_row0 = w_ptr + o * Kh * Kw

    args = (x_plane, w_row0, oh0, ow0, H, W, Kh, Kw, sh, sw, top, left, dh, dw, stacked, images * (C * H * W))
    acc = _fwd_nchw_sum(*args, ACC, PRECISION, EMULATE_BF16, False, ALIGN, STACK, BLOCK_H, BLOCK_W, BLOCK_J)
    if _has_non_finite(acc):  # redo without tl.dot (see above), one strip column at a time
        acc = _fwd_nchw_sum(*args, ACC, PRECISION, EMULATE_BF16, True, 1, STACK, BLOCK_H, BLOCK_W, 1)

    if HAS_BIAS:
        acc += tl.load(b_ptr + o).to(ACC)
    out_cols = ow0 + tl.arange(0, BLOCK_W)
    y_plane = y_ptr + plane.to(tl.int64) * Ho * Wo
    if STACK:
        y_ok = (stacked < Ho)[:, None] & (out_cols < Wo)[None, :]
        y_rows = images * (Co * Ho * Wo) + stacked * Wo
    else:
        rows = oh0 + tl.arange(0, BLOCK_H)
        y_ok = (rows < Ho)[:, None] & (out_cols < Wo)[None, :]
        y_rows = rows * Wo
    tl.store(y_plane + y_rows[:, None] + out_cols[None, :],
             _cast_out(acc, y_ptr.dtype.element_ty, EMULATE_BF16), mask=y_ok)


@triton.jit
def _grad_input_nchw_sum(gy_ptr, w_ptr, n, c, h0, w0, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m,
                         stacked_rows, images, ACC: tl.constexpr, PRECISION: tl.constexpr,
                         EMULATE_BF16: tl.constexpr, DIRECT: tl.constexpr, ALIGN: tl.constexpr, STACK: tl.constexpr,
                         BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_J: tl.constexpr):
    """The tile's input gradients, chunk of output columns by chunk: input rows h0... of image n, or with STACK
    input rows stacked_rows[r] of images n + images[r] (_stacked_tile). ALIGN: as in _fwd_nchw_sum, for gy's rows
    (the extra output columns the aligned chunks take in meet zeros of the band)."""
    cols = tl.arange(0, BLOCK_W)
    jj = tl.arange(0, BLOCK_J)
    # Input (h, w) receives from output (oh, ow) through tap (kh, kw) when h + top = oh*sh + kh*dh and
    # w + left = ow*sw + kw*dw. Only the kernel rows and output columns that reach this tile are visited.
    if STACK:
        rows = stacked_rows
        kh_lo = tl.cdiv(tl.maximum(tl.min(rows) + top - (Ho - 1) * sh, 0), dh)
        kh_hi = tl.minimum(Kh, (tl.max(rows) + top) // dh + 1)
    else:
        rows = h0 + tl.arange(0, BLOCK_H)
        kh_lo = tl.cdiv(tl.maximum(h0 + top - (Ho - 1) * sh, 0), dh)
        kh_hi = tl.minimum(Kh, (h0 + BLOCK_H - 1 + top) // dh + 1)
    ow_lo = tl.cdiv(tl.maximum(w0 + left - (Kw - 1) * dw, 0), sw)
    ow_hi = tl.minimum(Wo, (w0 + BLOCK_W - 1 + left) // sw + 1)
    if ALIGN > 1:  # products, not tl.multiple_of, which does not reach arguments and loop counters
        Wo = Wo // ALIGN * ALIGN
        ow_lo = ow_lo // ALIGN * ALIGN
        ow_hi = tl.minimum(Wo, tl.cdiv(ow_hi, ALIGN) * ALIGN)

    acc = tl.zeros([BLOCK_H, BLOCK_W], dtype=ACC)
    for j0 in range(ow_lo, ow_hi, BLOCK_J):
        if ALIGN > 1:
            j0 = j0 // ALIGN * ALIGN
        ow = j0 + jj
        ow_ok = ow < ow_hi
        # Transposed band: output column ow feeds input column w0 + w through tap kw when the gap is kw*dw.
        d = (w0 + left + cols)[None, :] - ow[:, None] * sw
        t_ok = (d >= 0) & (d < Kw * dw) & (d % dw == 0)
        t_off = d // dw
        for r in range(m):
            o = c * m + r
            gy_plane = gy_ptr + (n * Co + o).to(tl.int64) * Ho * Wo  # Wo: a multiple of ALIGN, as above
            w_row0 = w_ptr + o * Kh * Kw
            for kh in range(kh_lo, kh_hi):
                t = rows + top - kh * dh  # = oh * sh when this row is reached
                oh = t // sh
                g_ok = ((t >= 0) & (t % sh == 0) & (oh < Ho))[:, None] & ow_ok[None, :]
                if STACK:
                    image_rows = images * (Co * Ho * Wo)
                    if ALIGN > 1:
                        image_rows = tl.multiple_of(image_rows, ALIGN)
                    g = tl.load(gy_plane + (image_rows + oh * Wo)[:, None] + ow[None, :], mask=g_ok, other=0.0)
                else:
                    g = tl.load(gy_plane + oh[:, None] * Wo + ow[None, :], mask=g_ok, other=0.0)
                band = tl.load(w_row0 + kh * Kw + t_off, mask=t_ok, other=0.0)
                acc = _accumulate(acc, g, g_ok, band, t_ok, PRECISION, EMULATE_BF16, DIRECT)
    return acc


@triton.jit
def _grad_input_nchw_tile(N, C, H, W, STACK: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """This program's tile of grad-input: image n, channel c, first row h0 and column w0 (STACK: the first image,
    and each row's row and image - n from _stacked_tile); the tile's addresses (offsets from gx_ptr), their mask."""
    if STACK:
        c, n, stacked, images, w0 = _stacked_tile(N, C, H, W, BLOCK_H, BLOCK_W)
        h0 = 0
        cols = w0 + tl.arange(0, BLOCK_W)
        offsets = (n * C + c).to(tl.int64) * H * W + (images * (C * H * W) + stacked * W)[:, None] + cols[None, :]
        mask = (stacked < H)[:, None] & (cols < W)[None, :]
    else:
        pid = tl.program_id(0)
        tiles_w = tl.cdiv(W, BLOCK_W)
        tiles = tl.cdiv(H, BLOCK_H) * tiles_w
        plane = pid // tiles  # n * C + c
        tile = pid % tiles
        h0 = (tile // tiles_w) * BLOCK_H
        w0 = (tile % tiles_w) * BLOCK_W
        rows = h0 + tl.arange(0, BLOCK_H)
        cols = w0 + tl.arange(0, BLOCK_W)
        offsets = plane.to(tl.int64) * H * W + rows[:, None] * W + cols[None, :]
        mask = (rows < H)[:, None] & (cols < W)[None, :]
        n = plane // C
        c = plane % C
        stacked = 0
        images = 0
    return n, c, h0, w0, offsets, mask, stacked, images


@triton.autotune(configs=_all_toeplitz_configs(), key=_TOEPLITZ_KEY,
                 prune_configs_by={"early_config_prune": _prune_toeplitz})
@triton.jit
def _grad_input_nchw_kernel(gy_ptr, w_ptr, gx_ptr,
                            N, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m,
                            ACC: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
                            ALIGN: tl.constexpr, STACK: tl.constexpr,
                            BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_J: tl.constexpr):
    n, c, h0, w0, offsets, gx_ok, stacked, images = _grad_input_nchw_tile(N, C, H, W, STACK, BLOCK_H, BLOCK_W)
    acc = _grad_input_nchw_sum(gy_ptr, w_ptr, n, c, h0, w0, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m,
                               stacked, images, ACC, PRECISION, EMULATE_BF16, False, ALIGN, STACK,
                               BLOCK_H, BLOCK_W, BLOCK_J)
    tl.store(gx_ptr + offsets, _cast_out(acc, gx_ptr.dtype.element_ty, EMULATE_BF16), mask=gx_ok)


@triton.jit
def _grad_input_nchw_redo_kernel(gy_ptr, w_ptr, gx_ptr,
                                 N, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m,
                                 ACC: tl.constexpr, EMULATE_BF16: tl.constexpr, STACK: tl.constexpr,
                                 BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr):
    """After _grad_input_nchw_kernel, on what it wrote: a tile with a NaN or Inf is summed again without tl.dot (see
    "Non-finite values" above), one output column at a time. A finite tile is only read."""
    n, c, h0, w0, offsets, gx_ok, stacked, images = _grad_input_nchw_tile(N, C, H, W, STACK, BLOCK_H, BLOCK_W)
    if _has_non_finite(tl.load(gx_ptr + offsets, mask=gx_ok, other=0.0).to(tl.float32)):
        acc = _grad_input_nchw_sum(gy_ptr, w_ptr, n, c, h0, w0, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh,
                                   dw, m, stacked, images, ACC, "ieee", EMULATE_BF16, True, 1, STACK,
                                   BLOCK_H, BLOCK_W, 1)  # no dot
        tl.store(gx_ptr + offsets, _cast_out(acc, gx_ptr.dtype.element_ty, EMULATE_BF16), mask=gx_ok)


@triton.jit
def _grad_weight_nchw_sum(gy_ptr, x_ptr, o, c, kh, kw, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw,
                          r_start, r_end, ACC: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
                          DIRECT: tl.constexpr, ALIGN: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_KW: tl.constexpr,
                          BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr):
    """The tap tile's sum over the reduction rows [r_start, r_end), in chunks of BLOCK_R rows x BLOCK_Q columns.
    ALIGN (see _strip_align, for gy's rows): gy's loads are vectorised (x's cannot be: each row of the x operand
    starts one column after the previous one)."""
    if ALIGN > 1:  # products, not tl.multiple_of, which does not reach arguments and loop counters
        Wo = Wo // ALIGN * ALIGN
    kh_ok = kh < Kh
    kw_ok = kw < Kw
    q = tl.arange(0, BLOCK_R * BLOCK_Q)
    q_row = q // BLOCK_Q
    q_col = q % BLOCK_Q
    acc = tl.zeros([BLOCK_KH, BLOCK_KW], dtype=ACC)
    for row0 in range(r_start, r_end, BLOCK_R):
        row = row0 + q_row  # n * H + ih
        row_ok = row < r_end
        n = row // H
        ih = row - n * H
        x_row = (n * C + c).to(tl.int64) * H * W + ih * W
        gy_plane = (n * Co + o).to(tl.int64) * Ho * Wo
        t = ih[None, :] + top - kh[:, None] * dh  # = oh * sh where gy row oh meets input row ih at tap kh
        oh = t // sh
        a_ok = (t >= 0) & (t % sh == 0) & (oh < Ho) & kh_ok[:, None] & row_ok[None, :]
        a_row = gy_plane[None, :] + oh * Wo
        for col0 in range(0, Wo, BLOCK_Q):
            if ALIGN > 1:
                col0 = col0 // ALIGN * ALIGN
            ow = col0 + q_col
            ow_ok = ow < Wo
            a = tl.load(gy_ptr + a_row + ow[None, :], mask=a_ok & ow_ok[None, :], other=0.0)
            iw = ow[:, None] * sw - left + kw[None, :] * dw
            b_ok = (row_ok & ow_ok)[:, None] & (iw >= 0) & (iw < W) & kw_ok[None, :]
            b = tl.load(x_ptr + x_row[:, None] + iw, mask=b_ok, other=0.0)
            acc = _accumulate(acc, a, a_ok & ow_ok[None, :], b, b_ok, PRECISION, EMULATE_BF16, DIRECT)
    return acc


@triton.jit
def _grad_weight_nchw_kernel(gy_ptr, x_ptr, part_ptr,
                             C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m,
                             total_rows, rows_per_split,
                             ACC: tl.constexpr, PRECISION: tl.constexpr, EMULATE_BF16: tl.constexpr,
                             ALIGN: tl.constexpr, BLOCK_KH: tl.constexpr, BLOCK_KW: tl.constexpr,
                             BLOCK_R: tl.constexpr, BLOCK_Q: tl.constexpr):
    # dW[o, kh, kw] = sum over (n, input row ih, output column ow) of
    #   gy[n, o, (ih + top - kh*dh) / sh, ow]  (only where that row index is a whole number)
    #   * x[n, o // m, ih, ow*sw - left + kw*dw]
    # i.e. A[kh, q] @ B[q, kw] with q = (n, ih, ow) in chunks of BLOCK_R input rows x BLOCK_Q output columns.
    pid = tl.program_id(0)
    split = tl.program_id(1)
    kw_tiles = tl.cdiv(Kw, BLOCK_KW)
    taps = tl.cdiv(Kh, BLOCK_KH) * kw_tiles
    o = pid // taps
    tap = pid % taps
    c = o // m
    kh = (tap // kw_tiles) * BLOCK_KH + tl.arange(0, BLOCK_KH)
    kw = (tap % kw_tiles) * BLOCK_KW + tl.arange(0, BLOCK_KW)
    r_start = split * rows_per_split
    r_end = tl.minimum(total_rows, r_start + rows_per_split)

    args = (gy_ptr, x_ptr, o, c, kh, kw, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, r_start, r_end)
    acc = _grad_weight_nchw_sum(*args, ACC, PRECISION, EMULATE_BF16, False, ALIGN, BLOCK_KH, BLOCK_KW, BLOCK_R,
                                BLOCK_Q)
    if _has_non_finite(acc):  # redo without tl.dot (see above), one product at a time
        acc = _grad_weight_nchw_sum(*args, ACC, PRECISION, EMULATE_BF16, True, 1, BLOCK_KH, BLOCK_KW, 1, 1)

    part = part_ptr + ((split * Co + o) * Kh + kh[:, None]) * Kw + kw[None, :]
    tl.store(part, acc, mask=(kh < Kh)[:, None] & (kw < Kw)[None, :])


# ----------------------------------------------------------------------------------------------------------------
# channels_last kernels (direct; weights transposed to (Kh*Kw, Co) so a tap's channel vector is contiguous)


@triton.jit
def _fwd_nhwc_kernel(x_ptr, wt_ptr, b_ptr, y_ptr,
                     C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m,
                     HAS_BIAS: tl.constexpr, ACC: tl.constexpr, EMULATE_BF16: tl.constexpr,
                     BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    p_tiles = tl.cdiv(Ho * Wo, BLOCK_P)
    n = pid // p_tiles
    p = (pid % p_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    o = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < Ho * Wo
    o_ok = o < Co
    oh = p // Wo
    ow = p % Wo
    ci = o // m
    x_img = x_ptr + n.to(tl.int64) * H * W * C

    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for kh in range(Kh):
        ih = oh * sh - top + kh * dh
        h_ok = p_ok & (ih >= 0) & (ih < H)
        for kw in range(Kw):
            iw = ow * sw - left + kw * dw
            ok = h_ok & (iw >= 0) & (iw < W)
            pix = (ih * W + iw).to(tl.int64) * C
            xv = tl.load(x_img + pix[:, None] + ci[None, :], mask=ok[:, None] & o_ok[None, :], other=0.0)
            wv = tl.load(wt_ptr + (kh * Kw + kw) * Co + o, mask=o_ok, other=0.0)
            acc += xv.to(ACC) * wv.to(ACC)[None, :]

    if HAS_BIAS:
        acc += tl.load(b_ptr + o, mask=o_ok, other=0.0).to(ACC)[None, :]
    y_img = y_ptr + n.to(tl.int64) * Ho * Wo * Co
    tl.store(y_img + (p.to(tl.int64) * Co)[:, None] + o[None, :],
             _cast_out(acc, y_ptr.dtype.element_ty, EMULATE_BF16), mask=p_ok[:, None] & o_ok[None, :])


@triton.jit
def _grad_input_nhwc_kernel(gy_ptr, wt_ptr, gx_ptr,
                            C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m,
                            ACC: tl.constexpr, EMULATE_BF16: tl.constexpr,
                            BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    p_tiles = tl.cdiv(H * W, BLOCK_P)
    n = pid // p_tiles
    p = (pid % p_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    p_ok = p < H * W
    c_ok = c < C
    h = p // W
    w = p % W
    gy_img = gy_ptr + n.to(tl.int64) * Ho * Wo * Co

    acc = tl.zeros([BLOCK_P, BLOCK_C], dtype=ACC)
    for r in range(m):
        o = c * m + r
        for kh in range(Kh):
            t = h + top - kh * dh  # = oh * sh when output row oh reaches h through kh
            oh = t // sh
            h_ok = p_ok & (t >= 0) & (t % sh == 0) & (oh < Ho)
            for kw in range(Kw):
                u = w + left - kw * dw
                ow = u // sw
                ok = h_ok & (u >= 0) & (u % sw == 0) & (ow < Wo)
                pix = (oh * Wo + ow).to(tl.int64) * Co
                g = tl.load(gy_img + pix[:, None] + o[None, :], mask=ok[:, None] & c_ok[None, :], other=0.0)
                wv = tl.load(wt_ptr + (kh * Kw + kw) * Co + o, mask=c_ok, other=0.0)
                acc += g.to(ACC) * wv.to(ACC)[None, :]

    gx_img = gx_ptr + n.to(tl.int64) * H * W * C
    tl.store(gx_img + (p.to(tl.int64) * C)[:, None] + c[None, :],
             _cast_out(acc, gx_ptr.dtype.element_ty, EMULATE_BF16), mask=p_ok[:, None] & c_ok[None, :])


@triton.jit
def _grad_weight_nhwc_kernel(gy_ptr, x_ptr, part_ptr,
                             N, C, H, W, Co, Ho, Wo, Kh, Kw, sh, sw, top, left, dh, dw, m, chunks_per_split,
                             ACC: tl.constexpr,
                             BLOCK_P: tl.constexpr, BLOCK_KW: tl.constexpr, BLOCK_C: tl.constexpr):
    # One kernel row kh, BLOCK_KW taps of it and BLOCK_C channels per program; the gy tile is loaded once per
    # pixel chunk and reused for all BLOCK_KW taps. Products are summed over pixels once, at the end.
    pid = tl.program_id(0)
    split = tl.program_id(2)
    kw_tiles = tl.cdiv(Kw, BLOCK_KW)
    kh = pid // kw_tiles
    kw = (pid % kw_tiles) * BLOCK_KW + tl.arange(0, BLOCK_KW)
    o = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    kw_ok = kw < Kw
    o_ok = o < Co
    ci = o // m

    chunks_per_image = tl.cdiv(Ho * Wo, BLOCK_P)
    ch_start = split * chunks_per_split
    ch_end = tl.minimum(N * chunks_per_image, ch_start + chunks_per_split)
    acc = tl.zeros([BLOCK_P, BLOCK_KW, BLOCK_C], dtype=ACC)
    for chunk in range(ch_start, ch_end):
        n = chunk // chunks_per_image
        p = (chunk % chunks_per_image) * BLOCK_P + tl.arange(0, BLOCK_P)
        p_ok = p < Ho * Wo
        oh = p // Wo
        ow = p % Wo
        gy_pix = n.to(tl.int64) * Ho * Wo * Co + p.to(tl.int64) * Co
        g = tl.load(gy_ptr + gy_pix[:, None] + o[None, :], mask=p_ok[:, None] & o_ok[None, :], other=0.0)
        ih = oh * sh - top + kh * dh
        iw = ow[:, None] * sw - left + kw[None, :] * dw
        ok = (p_ok & (ih >= 0) & (ih < H))[:, None] & (iw >= 0) & (iw < W) & kw_ok[None, :]
        x_pix = n.to(tl.int64) * H * W * C + (ih[:, None] * W + iw).to(tl.int64) * C
        xv = tl.load(x_ptr + x_pix[:, :, None] + ci[None, None, :],
                     mask=ok[:, :, None] & o_ok[None, None, :], other=0.0)
        acc += g.to(ACC)[:, None, :] * xv.to(ACC)

    part = part_ptr + ((split * Kh + kh) * Kw + kw[:, None]) * Co + o[None, :]
    tl.store(part, tl.sum(acc, axis=0), mask=kw_ok[:, None] & o_ok[None, :])


# ----------------------------------------------------------------------------------------------------------------
# entry points


def _geometry(stride, padding, dilation):
    (sh, sw), (top, _, left, _), (dh, dw) = stride, padding, dilation
    return sh, sw, top, left, dh, dw


def _plan_forward(x, weight, bias, stride, padding, dilation, gpu=not _INTERPRETED):
    """(output, Launch or None when the output is empty)."""
    N, C, H, W = x.shape
    Co, _, Kh, Kw = weight.shape
    Ho, Wo = dwconv2d_output_hw(x.shape, (Kh, Kw), stride, padding, dilation)
    cl = is_channels_last(x)
    y = torch.empty((N, Co, Ho, Wo), device=x.device, dtype=x.dtype, memory_format=_memory_format(cl))
    if y.numel() == 0:
        return y, None
    geom = _geometry(stride, padding, dilation)
    b = bias if bias is not None else weight  # never read when HAS_BIAS is False
    meta = dict(HAS_BIAS=bias is not None, ACC=_acc_dtype(x.dtype), EMULATE_BF16=_emulate_bf16(x.dtype))
    if cl:
        config = _cl_config(Co, gpu)
        wt = weight.reshape(Co, Kh * Kw).t().contiguous()
        grid = (N * triton.cdiv(Ho * Wo, config.kwargs["BLOCK_P"]), triton.cdiv(Co, config.kwargs["BLOCK_C"]))
        return y, Launch(_fwd_nhwc_kernel, grid, (x, wt, b, y, C, H, W, Co, Ho, Wo, Kh, Kw, *geom, Co // C),
                         meta, [config], y)

    stack = _stacks(x, y, stride)

    def grid(meta):
        rows = N * Ho if stack else N * triton.cdiv(Ho, meta["BLOCK_H"]) * meta["BLOCK_H"]
        return (Co * triton.cdiv(rows, meta["BLOCK_H"]) * triton.cdiv(Wo, meta["BLOCK_W"]),)
    precision = _toeplitz_precision(x.dtype)
    return y, Launch(_fwd_nchw_kernel, grid, (x, weight, b, y, N, C, H, W, Co, Ho, Wo, Kh, Kw, *geom, Co // C),
                     dict(meta, PRECISION=precision, ALIGN=_strip_align(x, stride[1]), STACK=stack),
                     _toeplitz_configs(gpu, x.element_size() >= 4, precision, stack), y)


def _stacks(inp, out, stride):
    """Whether the NCHW forward or grad-input stacks the rows of several images in a tile (_stacked_tile): maps of
    at most 32 rows (out, the tiled tensor; RepLKNet-31B's stages 2-4 are 28x28 to 7x7; at 56 rows one image fills
    7/8 of a 64-row tile and the wider per-image tiles predict faster), stride 1, one output channel per input
    channel (the per-row arithmetic of the general case spilled on sm_90), and every offset from a tile's first
    image within int32."""
    n, c, h, w = out.shape
    images = 128 // max(h, 1) + 2  # the most a 128-row tile reaches
    small = images * max(inp[0].numel(), out[0].numel()) < 2 ** 31 if n else False
    return h <= 32 and tuple(stride) == (1, 1) and inp.shape[1] == c and small


def _strip_align(t, stride_w):
    """Columns per 16-byte run that an NCHW kernel may load as one vector from t's rows: the largest power of two
    up to 16 bytes dividing the row length (and t's start), at stride 1 (a strided strip is not contiguous); 1 =
    scalar loads. The tiles' BLOCK_W are multiples of 16, so tile starts keep the alignment."""
    if stride_w != 1:
        return 1
    align = 16 // t.element_size()
    while align > 1 and (t.shape[-1] % align or t.data_ptr() % (align * t.element_size())):
        align //= 2
    return align


def _plan_grad_input(grad_out, weight, input_shape, stride, padding, dilation, gpu=not _INTERPRETED):
    """(grad input, Launch or None when it is empty)."""
    N, C, H, W = input_shape
    _, Co, Ho, Wo = grad_out.shape
    Kh, Kw = weight.shape[2:]
    cl = is_channels_last(grad_out)
    gx = torch.empty((N, C, H, W), device=grad_out.device, dtype=grad_out.dtype, memory_format=_memory_format(cl))
    if gx.numel() == 0:
        return gx, None
    geom = _geometry(stride, padding, dilation)
    meta = dict(ACC=_acc_dtype(gx.dtype), EMULATE_BF16=_emulate_bf16(gx.dtype))
    if cl:
        config = _cl_config(C, gpu)
        wt = weight.reshape(Co, Kh * Kw).t().contiguous()
        grid = (N * triton.cdiv(H * W, config.kwargs["BLOCK_P"]), triton.cdiv(C, config.kwargs["BLOCK_C"]))
        return gx, Launch(_grad_input_nhwc_kernel, grid,
                          (grad_out, wt, gx, C, H, W, Co, Ho, Wo, Kh, Kw, *geom, Co // C), meta, [config], gx)

    stack = _stacks(grad_out, gx, stride)

    def grid(meta):
        rows = N * H if stack else N * triton.cdiv(H, meta["BLOCK_H"]) * meta["BLOCK_H"]
        return (C * triton.cdiv(rows, meta["BLOCK_H"]) * triton.cdiv(W, meta["BLOCK_W"]),)
    precision = _toeplitz_precision(gx.dtype)
    args = (grad_out, weight, gx, N, C, H, W, Co, Ho, Wo, Kh, Kw, *geom, Co // C)
    redo_config = (_REDO_CONFIG_STACKED if stack else _REDO_CONFIG) if gpu else _REDO_CONFIG_INTERPRETED
    redo = Launch(_grad_input_nchw_redo_kernel, grid, args, dict(meta, STACK=stack), [redo_config], gx)
    return gx, Launch(_grad_input_nchw_kernel, grid, args,
                      dict(meta, PRECISION=precision, ALIGN=_strip_align(grad_out, stride[1]), STACK=stack),
                      _toeplitz_configs(gpu, gx.element_size() >= 4, precision, stack), gx, redo)


# The redo's tiles: on a GPU a 4-warp 32x64 tile reads gx in whole lines; the interpreter's match its main tiles.
_REDO_CONFIG = triton.Config({"BLOCK_H": 32, "BLOCK_W": 64}, num_warps=4)
_REDO_CONFIG_STACKED = triton.Config({"BLOCK_H": 16, "BLOCK_W": 32}, num_warps=4)  # 32x64, 16x64 spilled (sm_90)
_REDO_CONFIG_INTERPRETED = triton.Config({"BLOCK_H": 16, "BLOCK_W": 16}, num_warps=1)


def _plan_grad_weight(grad_out, x, weight_shape, stride, padding, dilation, gpu=not _INTERPRETED, splits=None):
    """(Launch, finish): the kernel writes partial sums of `splits` slices of the reduction (default: enough to
    fill the GPU, 1 off it); finish() adds them up and returns the weight gradient."""
    N, C, H, W = x.shape
    _, Co, Ho, Wo = grad_out.shape
    _, _, Kh, Kw = weight_shape
    geom = _geometry(stride, padding, dilation)
    part_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    if grad_out.is_contiguous() and x.is_contiguous():  # NCHW (also when one of them is C == 1 or H == W == 1)
        config = _grad_weight_nchw_config(Kh, Kw, Wo, gpu)
        block_kh, block_kw, block_r = (config.kwargs[k] for k in ("BLOCK_KH", "BLOCK_KW", "BLOCK_R"))
        programs = Co * triton.cdiv(Kh, block_kh) * triton.cdiv(Kw, block_kw)
        splits = splits or _num_splits(triton.cdiv(N * H, block_r), programs, x.device)
        rows_per_split = triton.cdiv(triton.cdiv(N * H, splits), block_r) * block_r
        splits = triton.cdiv(N * H, rows_per_split)
        part = torch.empty((splits, Co, Kh, Kw), device=x.device, dtype=part_dtype)
        launch = Launch(_grad_weight_nchw_kernel, (programs, splits),
                        (grad_out, x, part, C, H, W, Co, Ho, Wo, Kh, Kw, *geom, Co // C, N * H, rows_per_split),
                        dict(ACC=_acc_dtype(x.dtype), PRECISION=_dot_precision(x.dtype),
                             EMULATE_BF16=_emulate_bf16(x.dtype), ALIGN=_strip_align(grad_out, 1)), [config], part)
        to_weight_order = None  # partial sums are (split, Co, Kh, Kw)
    else:  # channels_last (ops.py hands both tensors over in one memory format)
        config = _grad_weight_nhwc_config(Co, gpu)
        block_p, block_kw, block_c = (config.kwargs[k] for k in ("BLOCK_P", "BLOCK_KW", "BLOCK_C"))
        programs = Kh * triton.cdiv(Kw, block_kw) * triton.cdiv(Co, block_c)
        chunks = N * triton.cdiv(Ho * Wo, block_p)
        splits = splits or _num_splits(chunks, programs, x.device)
        chunks_per_split = triton.cdiv(chunks, splits)
        splits = triton.cdiv(chunks, chunks_per_split)
        part = torch.empty((splits, Kh, Kw, Co), device=x.device, dtype=part_dtype)
        grid = (Kh * triton.cdiv(Kw, block_kw), triton.cdiv(Co, block_c), splits)
        launch = Launch(_grad_weight_nhwc_kernel, grid,
                        (grad_out, x, part, N, C, H, W, Co, Ho, Wo, Kh, Kw, *geom, Co // C, chunks_per_split),
                        dict(ACC=_acc_dtype(x.dtype)), [config], part)
        to_weight_order = (2, 0, 1)  # partial sums are (split, Kh, Kw, Co)

    def finish():
        gw = part.sum(0)
        if to_weight_order is not None:
            gw = gw.permute(to_weight_order)
        return gw.reshape(Co, 1, Kh, Kw).to(x.dtype).contiguous()
    return launch, finish


def dwconv2d_forward(x, weight, bias, stride, padding, dilation):
    y, launch = _plan_forward(x, weight, bias, stride, padding, dilation)
    if launch is not None:
        launch()
    return y


def dwconv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    gx, launch = _plan_grad_input(grad_out, weight, input_shape, stride, padding, dilation)
    if launch is not None:
        launch()
    return gx


def dwconv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    launch, finish = _plan_grad_weight(grad_out, x, weight_shape, stride, padding, dilation)
    launch()
    return finish()
