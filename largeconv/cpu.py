"""The "cpu" backend: fast compositions of PyTorch ops for CPU tensors (backend_api.md).

Depthwise conv: for kernels from 13x13 up all three directions are FFT correlations/convolutions on a grid only
as large as the input plus one side's padding (the weight gradient summed over the batch before its one inverse
FFT); smaller kernels run forward and grad-input through oneDNN on channels_last (fast, unlike its NCHW path, so
inputs are converted) and the weight gradient as one multiply-reduce per tap. fp16/bf16 inputs are computed in fp32.
An FFT's error is spread over the whole plane in proportion to the plane's rms, so planes with outliers are redone
in float64 and planes holding NaN/Inf (or with a non-finite weight) by F.conv2d in float64 (see _plane_tiers).
"""

import math

import torch
import torch.nn.functional as F

from .arguments import conv_output_size, dwconv2d_output_hw, memory_format_of

# Above this many taps the FFT weight gradient beats one multiply-reduce pass per tap.
FFT_MIN_TAPS = 26
# From this many taps FFT forward / grad-input beat oneDNN's channels_last depthwise conv: measured 2026-11-22 on
# the 2-core EPYC at (8, 128, 56x56), forward K=9 16.5 vs 17.2 ms (oneDNN ahead), K=13 24.2 vs 16.0, K=25 78.7 vs 24.1.
FFT_CONV_MIN_TAPS = 169


def unsupported_reason(op, x, kernel_size):
    if x.device.type != "cpu":
        return f"needs CPU tensors, got {x.device.type}"
    return None


def _compute_dtype(dtype):
    return torch.float64 if dtype == torch.float64 else torch.float32


def _channels_last(t):
    return t.to(_compute_dtype(t.dtype)).contiguous(memory_format=torch.channels_last)


def _restore(result, like):
    """Back to the caller's dtype and layout."""
    return result.to(like.dtype).contiguous(memory_format=memory_format_of(like))


def dwconv2d_forward(x, weight, bias, stride, padding, dilation):
    if not _use_fft(weight.shape):
        return _restore(_forward_direct(x, weight, bias, stride, padding, dilation), x)
    out = _forward_fft(x, weight, bias, stride, padding, dilation)
    channels, multiplier = x.shape[1], weight.shape[0] // x.shape[1]
    per_channel = out.view(x.shape[0], channels, multiplier, *out.shape[2:])
    for tier, n, c in _flagged(_plane_tiers(x, weight)):  # input plane (n, c) feeds outputs (n, c*m .. c*m + m-1)
        xs = x[n, c].unsqueeze(0)
        ws = weight.view(channels, multiplier, *weight.shape[1:])[c].flatten(0, 1)
        bs = None if bias is None else bias.view(channels, multiplier)[c].flatten()
        if tier == EXACT:
            redo = _forward_exact(xs, ws, bs, stride, padding, dilation)
        else:
            redo = _forward_fft(xs, ws, bs, stride, padding, dilation, torch.float64)
        per_channel[n, c] = redo.reshape(len(n), multiplier, *out.shape[2:]).to(out.dtype)
    return _restore(out, x)


def _forward_direct(x, weight, bias, stride, padding, dilation):
    top, bottom, left, right = padding
    xc = _channels_last(x)
    if (top, left) != (bottom, right):
        xc, pad = F.pad(xc, (left, right, top, bottom)), (0, 0)
    else:
        pad = (top, left)
    w = weight.to(xc.dtype)
    b = None if bias is None else bias.to(xc.dtype)
    return F.conv2d(xc, w, b, stride, pad, dilation, groups=x.shape[1])


def dwconv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    if not _use_fft(weight.shape):
        return _restore(_grad_input_direct(grad_out, weight, input_shape, stride, padding, dilation), grad_out)
    grad_in = _grad_input_fft(grad_out, weight, input_shape, stride, padding, dilation)
    batch, channels, height, width = input_shape
    multiplier = weight.shape[0] // channels
    g = grad_out.view(batch, channels, multiplier, *grad_out.shape[2:])
    tiers = _plane_tiers(grad_out, weight).view(batch, channels, multiplier).amax(2)
    for tier, n, c in _flagged(tiers):  # grad_in[n, c] gathers grad_out[n, c*m .. c*m + m-1]
        gs = g[n, c].flatten(0, 1).unsqueeze(0)
        ws = weight.view(channels, multiplier, *weight.shape[1:])[c].flatten(0, 1)
        shape = (1, len(n), height, width)
        if tier == EXACT:
            redo = _grad_input_direct(gs.double(), ws.double(), shape, stride, padding, dilation)
        else:
            redo = _grad_input_fft(gs, ws, shape, stride, padding, dilation, torch.float64)
        grad_in[n, c] = redo[0].to(grad_in.dtype)
    return _restore(grad_in, grad_out)


def _grad_input_direct(grad_out, weight, input_shape, stride, padding, dilation):
    # The transposed conv with padding (top, left) starts at input row 0; output_padding supplies the rows a
    # stride skipped at the end, and any extra row from asymmetric "same" padding is cropped.
    top, bottom, left, right = padding
    assert top <= bottom and left <= right, "normalised padding puts the odd pixel at the bottom/right"
    height, width = input_shape[2:]
    extra = []
    for size, out, k, s, d, lo in ((height, grad_out.shape[2], weight.shape[2], stride[0], dilation[0], top),
                                   (width, grad_out.shape[3], weight.shape[3], stride[1], dilation[1], left)):
        produced = (out - 1) * s - 2 * lo + d * (k - 1) + 1
        extra.append(max(0, size - produced))
    g = _channels_last(grad_out)
    grad_in = F.conv_transpose2d(g, weight.to(g.dtype), None, stride, (top, left), tuple(extra),
                                 groups=input_shape[1], dilation=dilation)
    return grad_in[:, :, :height, :width]


def dwconv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    if weight_shape[2] * weight_shape[3] < FFT_MIN_TAPS:
        return _grad_weight_direct(grad_out, x, weight_shape, stride, padding, dilation).to(x.dtype)
    grad_w = _grad_weight_fft(grad_out, x, weight_shape, stride, padding, dilation)
    # Unlike an output pixel, every tap sums over whole planes, so F.conv2d's own error grows with an outlier as the
    # FFT's does (measured 0.2-1.9x F.conv2d's max error with 1e4 outliers in x or grad_out, at 24^2 K13 and 56^2
    # K31): no range check. NaN/Inf in any plane of output channel o (grad_out[:, o], x[:, o // m]), or an overflow,
    # makes all of the FFT's channel non-finite: those channels are redone by F.conv2d's backward in float64.
    bad = (~torch.isfinite(grad_w)).flatten(1).any(1).nonzero().flatten()
    if len(bad):
        multiplier = weight_shape[0] // x.shape[1]
        redo = _grad_weight_exact(grad_out[:, bad], x[:, bad // multiplier], (len(bad), 1, *weight_shape[2:]),
                                  stride, padding, dilation)
        grad_w[bad] = redo.reshape(len(bad), *grad_w.shape[1:]).to(grad_w.dtype)
    return grad_w.reshape(weight_shape).to(x.dtype)


def _grad_weight_direct(grad_out, x, weight_shape, stride, padding, dilation):
    top, bottom, left, right = padding
    xp = F.pad(x.to(_compute_dtype(x.dtype)), (left, right, top, bottom))
    multiplier = weight_shape[0] // x.shape[1]
    if multiplier > 1:
        xp = xp.repeat_interleave(multiplier, dim=1)  # output channel o reads input channel o // m
    return _correlate_taps(grad_out.to(xp.dtype), xp, weight_shape[2:], stride, dilation).reshape(weight_shape)


def _padded64(x, padding):
    """x in float64 and the padding left for F.conv2d: padded explicitly only where asymmetric, as F.conv2d itself
    does for "same" (so NaN/Inf meet the zero padding as in the caller's F.conv2d)."""
    top, bottom, left, right = padding
    if (top, left) == (bottom, right):
        return x.double(), (top, left)
    return F.pad(x.double(), (left, right, top, bottom)), (0, 0)


def _forward_exact(x, weight, bias, stride, padding, dilation):
    x64, pad = _padded64(x, padding)
    bias = None if bias is None else bias.double()
    return F.conv2d(x64, weight.double(), bias, stride, pad, dilation, groups=x.shape[1])


def _grad_weight_exact(grad_out, x, weight_shape, stride, padding, dilation):
    x64, pad = _padded64(x, padding)
    return torch.ops.aten.convolution_backward(grad_out.double(), x64, x64.new_empty(weight_shape), None, stride, pad,
                                               dilation, False, (0, 0), x.shape[1], (False, True, False))[1]


def _correlate_taps(g, xp, kernel, stride, dilation):
    """grad_w[o, i, j] = sum over n, h, w of g[n, o, h, w] * xp[n, o, h*s + i*d, w*s + j*d], one tap at a time."""
    out_h, out_w = g.shape[2:]
    taps = torch.empty(g.shape[1], *kernel, dtype=g.dtype)
    for i in range(kernel[0]):
        for j in range(kernel[1]):
            r, c = i * dilation[0], j * dilation[1]
            window = xp[:, :, r:r + (out_h - 1) * stride[0] + 1:stride[0], c:c + (out_w - 1) * stride[1] + 1:stride[1]]
            taps[:, i, j] = torch.einsum("nchw,nchw->c", g, window)
    return taps


# ---- which planes the FFT may compute ----------------------------------------------------------------------------
# An FFT's rounding error lands on every output of a plane, about eps * the plane's rms * |w|, where a direct sum's
# error is eps * the magnitudes in each output's own window. On a plane of uniform magnitude the FFT is as accurate
# as F.conv2d (measured 0.2-0.3x its max error on randn), but where a region is much smaller than the plane's rms
# (an outlier patch raises the rms: 1e4 in a map of 1e-2 cost 1e4x F.conv2d's error far from the patch) the FFT's
# error there is that much larger. So each plane's rms is compared with its quietest 8x8 block (about the smallest
# window of an FFT-sized kernel; all-zero blocks, e.g. after a ReLU, are left out, and partial edge blocks average
# too few pixels to judge): up to FFT_MAX_RANGE the FFT runs in the compute dtype, up to FFT64_MAX_RANGE in float64
# (eps 5e8x smaller); beyond that, or with NaN/Inf (which an FFT spreads over the whole plane as NaN), the plane
# goes to F.conv2d and its backward in float64 (EXACT: F.conv2d's own NaN/Inf behaviour, no error left at fp32).
# Cost: one pass over the input of forward and grad-input (randn planes are never flagged: their ratio is below 2).
# The weight gradient needs no range check (see dwconv2d_grad_weight).
FFT_MAX_RANGE = 16
FFT64_MAX_RANGE = 1e8
FFT, FFT64, EXACT = 0, 1, 2


def _plane_tiers(t, weight=None):
    """(N, C) int tensor: FFT, FFT64 or EXACT for each plane of t; every plane EXACT if `weight` is not finite."""
    dtype = _compute_dtype(t.dtype)
    block = (min(8, t.shape[2]), min(8, t.shape[3]))
    ms = F.avg_pool2d(t.to(dtype).square(), block, ceil_mode=True)  # mean squares of the blocks
    mean = ms.mean((2, 3))  # NaN or Inf where the plane holds NaN/Inf (or squares past the dtype's range)
    full = ms[:, :, :t.shape[2] // block[0], :t.shape[3] // block[1]]
    quietest = full.masked_fill(full == 0, float("inf")).amin((2, 3))
    ratio = mean / quietest  # of mean squares, so compared with the ranges squared; 0 for zero planes
    wider = FFT64 if dtype == torch.float32 else EXACT  # float64 has no wider dtype to go to
    tiers = torch.where(ratio > FFT_MAX_RANGE ** 2, wider, FFT)
    tiers[(ratio > FFT64_MAX_RANGE ** 2) | ~torch.isfinite(mean)] = EXACT
    if weight is not None and not bool(torch.isfinite(weight).all()):
        tiers.fill_(EXACT)  # the FFT of a non-finite kernel is NaN everywhere
    return tiers


def _flagged(tiers):
    """(tier, index tensors...) for each tier above FFT present in `tiers`."""
    for tier in (FFT64, EXACT):
        where = (tiers == tier).nonzero(as_tuple=True)
        if len(where[0]):
            yield (tier, *where)


# ---- the FFT formulation for large kernels ------------------------------------------------------------------------
# All three directions are circular correlations/convolutions on an FFT grid of size S per dimension. The input is
# NOT padded: the padding is the kernel's offset (-top, -left) on the circular grid, and S >= H + max(top, bottom)
# makes every wrapped index land on the zeros past the input's end, so S is smaller than the padded input
# (72 instead of 90 for 56x56 at K=31: 0.64x the transform work).

def _use_fft(weight_shape):
    return weight_shape[2] * weight_shape[3] >= FFT_CONV_MIN_TAPS


def _fft_grid(input_hw, output_hw, kernel, stride, padding, dilation):
    top, bottom, left, right = padding
    sizes = []
    for n, o, k, s, d, lo, hi in zip(input_hw, output_hw, kernel, stride, dilation, (top, left), (bottom, right)):
        sizes.append(_fft_size(max(n + max(lo, hi), d * (k - 1) + 1, (o - 1) * s + 1)))
    return tuple(sizes)


def _kernel_spectrum(weight, size, padding, dilation, dtype):
    """FFT of the dilated kernel placed at offset (-top, -left) on the circular grid."""
    kh, kw = weight.shape[2:]
    grid = weight.new_zeros(weight.shape[0], *size, dtype=dtype)
    grid[:, :dilation[0] * (kh - 1) + 1:dilation[0], :dilation[1] * (kw - 1) + 1:dilation[1]] = weight[:, 0]
    grid = torch.roll(grid, shifts=(-padding[0], -padding[2]), dims=(1, 2))
    return torch.fft.rfft2(grid)


def _spread(g, stride):
    """The strided gradient placed on the stride-1 grid (zeros between)."""
    if stride == (1, 1):
        return g
    spread = g.new_zeros(*g.shape[:2], (g.shape[2] - 1) * stride[0] + 1, (g.shape[3] - 1) * stride[1] + 1)
    spread[:, :, ::stride[0], ::stride[1]] = g
    return spread


def _forward_fft(x, weight, bias, stride, padding, dilation, dtype=None):
    """out[u, v] = sum_ab w[a, b] x[u*s + a*d - top, v*s + b*d - left]."""
    dtype = dtype or _compute_dtype(x.dtype)
    out_hw = dwconv2d_output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    size = _fft_grid(x.shape[2:], out_hw, weight.shape[2:], stride, padding, dilation)
    spectrum = torch.fft.rfft2(x.to(dtype), s=size)
    multiplier = weight.shape[0] // x.shape[1]
    if multiplier > 1:
        spectrum = spectrum.repeat_interleave(multiplier, dim=1)
    # conj_physical_, not .conj(): a lazy conj bit is lost when the op runs under torch.compile (inductor's first
    # call came out wrong).
    spectrum = spectrum * _kernel_spectrum(weight, size, padding, dilation, dtype).conj_physical_()
    corr = torch.fft.irfft2(spectrum, s=size)
    out = corr[:, :, :(out_hw[0] - 1) * stride[0] + 1:stride[0], :(out_hw[1] - 1) * stride[1] + 1:stride[1]]
    return out if bias is None else out + bias.to(dtype).view(1, -1, 1, 1)


def _grad_input_fft(grad_out, weight, input_shape, stride, padding, dilation, dtype=None):
    """The adjoint: the spread gradient convolved with the kernel, summed over each channel's m outputs."""
    dtype = dtype or _compute_dtype(grad_out.dtype)
    size = _fft_grid(input_shape[2:], grad_out.shape[2:], weight.shape[2:], stride, padding, dilation)
    spectrum = torch.fft.rfft2(_spread(grad_out.to(dtype), stride), s=size)
    spectrum = spectrum * _kernel_spectrum(weight, size, padding, dilation, dtype)
    batch, channels = input_shape[:2]
    if weight.shape[0] != channels:
        spectrum = spectrum.view(batch, channels, -1, *spectrum.shape[2:]).sum(2)
    return torch.fft.irfft2(spectrum, s=size)[:, :, :input_shape[2], :input_shape[3]]


def _grad_weight_fft(grad_out, x, weight_shape, stride, padding, dilation, dtype=None):
    """grad_w[o, a, b] = sum over n, i, j of g[n, o, i, j] x[n, o // m, i*s + a*d - top, j*s + b*d - left]: the
    correlation of x with the spread gradient for all taps at once, summed over the batch before one inverse FFT."""
    dtype = dtype or _compute_dtype(x.dtype)
    top, _, left, _ = padding
    size = _fft_grid(x.shape[2:], grad_out.shape[2:], weight_shape[2:], stride, padding, dilation)
    x_spectrum = torch.fft.rfft2(x.to(dtype), s=size)
    multiplier = weight_shape[0] // x.shape[1]
    if multiplier > 1:
        x_spectrum = x_spectrum.repeat_interleave(multiplier, dim=1)
    g_spectrum = torch.fft.rfft2(_spread(grad_out.to(dtype), stride), s=size)
    corr = torch.fft.irfft2((x_spectrum * g_spectrum.conj_physical_()).sum(0), s=size)  # not .conj(): above
    corr = torch.roll(corr, shifts=(top, left), dims=(1, 2))  # lag a*d - top sits at index (a*d - top) mod S
    kh, kw = weight_shape[2:]
    return corr[:, :dilation[0] * (kh - 1) + 1:dilation[0], :dilation[1] * (kw - 1) + 1:dilation[1]]


def _fft_size(n):
    """The smallest 2^a 3^b 5^c >= n: FFTs of sizes with a large prime factor (86 = 2 * 43) are much slower."""
    size = n
    while True:
        rest = size
        for prime in (2, 3, 5):
            while rest % prime == 0:
                rest //= prime
        if rest == 1:
            return size
        size += 1


# ---- involution (CPU) ----

# Involution runs as shift-and-accumulate: one fused multiply-add pass per tap over a strided view of the padded
# input, so nothing K*K times larger than the input exists. Everything is computed on NCHW tensors (channels_last
# inputs are converted on entry and results back on exit: per-tap passes over NCHW views run 2-3x faster than over
# channels_last ones), in blocks of images or groups small enough to stay in cache across their K*K passes.

# Output elements per block (4 MB at fp32).
INVOLUTION_BLOCK_ELEMS = 1 << 20


def _involution_blocks(batch, groups, group_elems):
    """(batch slice, group slice) pieces of about INVOLUTION_BLOCK_ELEMS elements: runs of whole images when an
    image is small, else runs of groups of one image."""
    per_image = groups * group_elems
    if per_image <= INVOLUTION_BLOCK_ELEMS:
        step = INVOLUTION_BLOCK_ELEMS // per_image
        for b in range(0, batch, step):
            yield slice(b, b + step), slice(None)
    else:
        step = max(1, INVOLUTION_BLOCK_ELEMS // group_elems)
        for b in range(batch):
            for g in range(0, groups, step):
                yield slice(b, b + 1), slice(g, g + step)


def _phase_rows(phase, padding, stride, size):
    """Where x's rows lie in one row phase of the zero-padded x (padded rows phase, phase + stride, ...): (first
    phase row holding an x row, that x row, how many x rows). The same for columns."""
    first = max(0, -(-(padding - phase) // stride))
    start = phase + first * stride - padding
    return first, start, max(0, -(-(size - start) // stride))


def _zero_phases(shape, padding, stride, dtype):
    """Zeros in the layout of _phases for an NCHW `shape`: phases[a][b] holds padded rows a, a + stride, ... and
    padded columns b, b + stride, ..."""
    batch, channels, height, width = shape
    hp, wp = height + 2 * padding, width + 2 * padding
    return [[torch.zeros((batch, channels, -(-(hp - a) // stride), -(-(wp - b) // stride)), dtype=dtype)
             for b in range(stride)] for a in range(stride)]


def _phases(x, padding, stride, dtype):
    """The zero-padded NCHW x in `dtype`, split by phase: phases[a][b][..., i, j] = padded x at row a + i*stride,
    column b + j*stride (stride 1: the padded x). Every tap then reads a contiguous window of one phase: per-tap
    passes over stride-2 views ran 2.5x slower (RedNet-50's stride-2 layer, 2-core Xeon)."""
    height, width = x.shape[2:]
    xs = _to_nchw(x, dtype)
    phases = _zero_phases(x.shape, padding, stride, dtype)
    for a, row in enumerate(phases):
        i0, r0, rows = _phase_rows(a, padding, stride, height)
        for b, phase in enumerate(row):
            j0, c0, cols = _phase_rows(b, padding, stride, width)
            phase[..., i0:i0 + rows, j0:j0 + cols] = xs[..., r0::stride, c0::stride]
    return phases


def _from_phases(phases, padding, stride, height, width, out=None):
    """The inverse of _phases, cropped to x's (height, width): the gradient the taps added into the phases; written
    into `out` if given."""
    batch, channels = phases[0][0].shape[:2]
    if out is None:
        out = torch.empty((batch, channels, height, width), dtype=phases[0][0].dtype)
    for a, row in enumerate(phases):
        i0, r0, rows = _phase_rows(a, padding, stride, height)
        for b, phase in enumerate(row):
            j0, c0, cols = _phase_rows(b, padding, stride, width)
            out[..., r0::stride, c0::stride] = phase[..., i0:i0 + rows, j0:j0 + cols]
    return out


def _tap_windows(phases, kernel_size, stride, dilation, out_hw):
    """The window of `phases` (_phases' layout, one block of it) that each tap reads, in tap order (kh * K + kw).
    Tap (kh, kw) reads phase (kh*d % s, kw*d % s) at offset (kh*d // s, kw*d // s); one phase's taps sit at offsets
    d / gcd(d, s) apart, so one unfold per phase and an unbind per row make every window: ~1 us a tap, where
    slicing each window in Python cost ~8 us, as much as a 7x7 map's whole pass (RedNet-50 stage 4)."""
    out_h, out_w = out_hw
    step = dilation // math.gcd(dilation, stride)
    grids, windows = {}, []
    for kh in range(kernel_size):
        a, i = (kh * dilation) % stride, (kh * dilation) // stride
        for kw in range(kernel_size):
            b, j = (kw * dilation) % stride, (kw * dilation) // stride
            if (a, b) not in grids:  # the phase's first tap has its smallest offsets
                unfolded = phases[a][b][..., i:, j:].unfold(-2, out_h, step).unfold(-2, out_w, step)
                grids[a, b] = i, j, [row.unbind(-3) for row in unfolded.unbind(-4)]
            i0, j0, grid = grids[a, b]
            windows.append(grid[(i - i0) // step][(j - j0) // step])
    return windows


def _block(phases, bs, gs):
    """Images bs, groups gs of grouped phases."""
    return [[phase[bs, gs] for phase in row] for row in phases]


def _grouped(phases, groups):
    return [[phase.unflatten(1, (groups, -1)) for phase in row] for row in phases]


def _to_nchw(t, dtype):
    """t as an NCHW-contiguous tensor in `dtype`. A channels_last t goes image by image through 2-D transposing
    copies, which PyTorch blocks for the cache: ~4x faster than one 4-D permuting copy."""
    if t.is_contiguous():
        return t.to(dtype)
    batch, channels, height, width = t.shape
    out = torch.empty((batch, channels, height, width), dtype=dtype)
    pixel_rows = t.permute(0, 2, 3, 1).reshape(batch, height * width, channels)
    for b in range(batch):
        out[b].view(channels, height * width).copy_(pixel_rows[b].t())
    return out


def _padded_nchw(x, padding, dtype):
    """Zero-padded NCHW copy of x in `dtype`."""
    batch, channels, height, width = x.shape
    xp = torch.zeros((batch, channels, height + 2 * padding, width + 2 * padding), dtype=dtype)
    xp[:, :, padding:padding + height, padding:padding + width] = x if x.is_contiguous() else _to_nchw(x, dtype)
    return xp


def _nchw(t, dtype, groups):
    """t as an NCHW tensor in `dtype`, its channels split into (groups, channels per group)."""
    return _to_nchw(t, dtype).unflatten(1, (groups, -1))


def involution2d_forward(x, weight, kernel_size, stride, padding, dilation, out=None):
    """`out`, if given: an NCHW-strided (B, C, Ho, Wo) tensor (a view may do) in the compute dtype, written and
    returned."""
    batch, channels = x.shape[:2]
    taps = kernel_size * kernel_size
    groups = weight.shape[1] // taps
    out_hw = tuple(weight.shape[2:])
    dtype = _compute_dtype(x.dtype)
    phases = _grouped(_phases(x, padding, stride, dtype), groups)
    w = _nchw(weight, dtype, groups)
    given = out is not None
    if not given:
        out = torch.empty((batch, channels, *out_hw), dtype=dtype)
    out5 = out.unflatten(1, (groups, -1))
    for bs, gs in _involution_blocks(batch, groups, channels // groups * out_hw[0] * out_hw[1]):
        ob = out5[bs, gs]
        windows = _tap_windows(_block(phases, bs, gs), kernel_size, stride, dilation, out_hw)
        for t, (xb, wt) in enumerate(zip(windows, w[bs, gs].unsqueeze(2).unbind(3))):
            if t == 0:
                torch.mul(xb, wt, out=ob)
            else:
                ob.addcmul_(xb, wt)
    return out if given else _restore(out, x)


def involution2d_grad_input(grad_out, weight, input_shape, kernel_size, stride, padding, dilation):
    phases = _involution_grad_phases(grad_out, weight, input_shape, kernel_size, stride, padding, dilation)
    return _restore(_from_phases(phases, padding, stride, *input_shape[2:]), grad_out)


def _involution_grad_phases(grad_out, weight, input_shape, kernel_size, stride, padding, dilation):
    """The input gradient, as the phases of the zero-padded input (_phases' layout) in the compute dtype."""
    batch, channels, height, width = input_shape
    taps = kernel_size * kernel_size
    groups = weight.shape[1] // taps
    out_hw = tuple(weight.shape[2:])
    dtype = _compute_dtype(grad_out.dtype)
    dy = _nchw(grad_out, dtype, groups)
    w = _nchw(weight, dtype, groups)
    # Each tap adds into a window of the zero-padded gradient's phases (the transpose of the forward's read), so no
    # tap needs bounds handling; the phases are put back together and cropped at the end.
    phases = _zero_phases(input_shape, padding, stride, dtype)
    grouped = _grouped(phases, groups)
    for bs, gs in _involution_blocks(batch, groups, channels // groups * height * width):
        dyb = dy[bs, gs]
        windows = _tap_windows(_block(grouped, bs, gs), kernel_size, stride, dilation, out_hw)
        for window, wt in zip(windows, w[bs, gs].unsqueeze(2).unbind(3)):
            window.addcmul_(dyb, wt)
    return phases


def involution2d_grad_weight(grad_out, x, weight_shape, kernel_size, stride, padding, dilation):
    batch, channels = x.shape[:2]
    taps = kernel_size * kernel_size
    groups = weight_shape[1] // taps
    out_hw = tuple(weight_shape[2:])
    dtype = _compute_dtype(x.dtype)
    phases = _grouped(_phases(x, padding, stride, dtype), groups)
    dy = _nchw(grad_out, dtype, groups)
    grad_w = torch.empty(tuple(weight_shape), dtype=dtype)
    gw5 = grad_w.unflatten(1, (groups, taps))
    for bs, gs in _involution_blocks(batch, groups, channels // groups * out_hw[0] * out_hw[1]):
        dyb = dy[bs, gs]
        products = torch.empty(dyb.shape, dtype=dtype)  # one buffer for all taps: a fresh one costs page faults
        windows = _tap_windows(_block(phases, bs, gs), kernel_size, stride, dilation, out_hw)
        for window, gt in zip(windows, gw5[bs, gs].unbind(2)):
            torch.mul(dyb, window, out=products)
            torch.sum(products, dim=2, out=gt)
    return _restore(grad_w, x)


# ---- involution fused with its span conv (largeconv/fused_involution.py) -----------------------------------------

# The involution kernel (B, G*K*K, Ho, Wo) is made from `reduced` by the 1x1 span conv one piece at a time (runs of
# whole images, or bands of output rows of one image when an image's kernel is larger than this many elements), used
# by the shift-and-accumulate passes above while it is in cache, and dropped; backward makes each piece again.
# So the full kernel tensor and its gradient never exist, and autograd saves x and reduced only.
FUSED_KERNEL_ELEMS = 1 << 20
# A run of images holds at most 1/FUSED_MIN_PIECES of the batch, so the piece-sized temporaries (the kernel, its
# gradient, padded copies) stay a small part of the memory even for small layers (measured on RedNet-50 stage 4,
# B = 8 and 32: 1/4 of the batch gives 0.43-0.49 of the unfused peak, 1/8 0.35-0.39 but up to 2x the time).
FUSED_MIN_PIECES = 4


def _fused_pieces(batch, out_h, row_elems):
    """(batch slice, first output row, end row) pieces whose kernel has at most about FUSED_KERNEL_ELEMS elements;
    `row_elems` is the kernel's size per output row of one image (G*K*K*Wo)."""
    if out_h * row_elems <= FUSED_KERNEL_ELEMS:
        step = max(1, min(FUSED_KERNEL_ELEMS // (out_h * row_elems), batch // FUSED_MIN_PIECES))
        for b in range(0, batch, step):
            yield slice(b, b + step), 0, out_h
    else:
        rows = max(1, FUSED_KERNEL_ELEMS // row_elems)
        for b in range(batch):
            for r in range(0, out_h, rows):
                yield slice(b, b + 1), r, min(r + rows, out_h)


def _span_kernel_piece(reduced, span_weight, span_bias, dtype):
    """One piece of the kernel: the 1x1 conv of reduced (n, Cr, h, w) as one batched matmul, (n, G*K*K, h, w) in
    dtype. bmm on the expanded weight writes the product as it lies; matmul's broadcasting computed it transposed
    and copied it (RedNet-50 stage 4, 8 images: 1.3 against 1.8 ms with the bias, 2-core EPYC)."""
    n, cr, h, w = reduced.shape
    weights, r = span_weight.expand(n, -1, -1), _to_nchw(reduced, dtype).reshape(n, cr, h * w)
    if span_bias is None:
        return torch.bmm(weights, r).view(n, -1, h, w)
    return torch.baddbmm(span_bias[:, None].expand(n, -1, h * w), weights, r).view(n, -1, h, w)


def _fused_input(x, bs, r0, r1, geometry, padded):
    """x's part read by output rows [r0, r1) of images bs, with the padding the backend functions then apply: x's
    images as they are for whole images, else (no padding) a band of the zero-padded x."""
    kernel_size, stride, padding, dilation = geometry
    if padded is None:
        return x[bs], padding, 0
    top = r0 * stride
    return padded[bs, :, top:(r1 - 1) * stride + dilation * (kernel_size - 1) + 1].contiguous(), 0, top


def involution2d_fused_forward(x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation):
    batch, channels = x.shape[:2]
    out_h, out_w = reduced.shape[2:]
    dtype = _compute_dtype(x.dtype)
    weight, bias = span_weight.to(dtype), None if span_bias is None else span_bias.to(dtype)
    geometry = (kernel_size, stride, padding, dilation)
    pieces = list(_fused_pieces(batch, out_h, weight.shape[0] * out_w))
    banded = any(r1 - r0 < out_h for _, r0, r1 in pieces)
    xs = _to_nchw(x, dtype)
    padded = _padded_nchw(xs, padding, dtype) if banded else None
    out = torch.empty((batch, channels, out_h, out_w), dtype=x.dtype, memory_format=memory_format_of(x))
    direct = out.dtype == dtype and out.is_contiguous()  # the pieces' passes write into out itself: no copy
    for bs, r0, r1 in pieces:
        kernel = _span_kernel_piece(reduced[bs, :, r0:r1], weight, bias, dtype)
        x_part, pad, _ = _fused_input(xs, bs, r0, r1, geometry, padded)
        if direct:
            involution2d_forward(x_part, kernel, kernel_size, stride, pad, dilation, out=out[bs, :, r0:r1])
        else:
            out[bs, :, r0:r1] = involution2d_forward(x_part, kernel, kernel_size, stride, pad, dilation)
    return out


def involution2d_fused_backward(grad_out, x, reduced, span_weight, span_bias, kernel_size, stride, padding,
                                dilation):
    batch, channels, height, width = x.shape
    out_h, out_w = reduced.shape[2:]
    spans, cr = span_weight.shape
    dtype = _compute_dtype(x.dtype)
    weight, bias = span_weight.to(dtype), None if span_bias is None else span_bias.to(dtype)
    geometry = (kernel_size, stride, padding, dilation)
    pieces = list(_fused_pieces(batch, out_h, spans * out_w))
    banded = any(r1 - r0 < out_h for _, r0, r1 in pieces)
    xs, dys = _to_nchw(x, dtype), _to_nchw(grad_out, dtype)
    padded = _padded_nchw(xs, padding, dtype) if banded else None
    # bands add their grad-x into a padded buffer (their input rows overlap); whole images write theirs directly
    grad_x = torch.zeros(padded.shape, dtype=dtype) if banded else torch.empty((batch, channels, height, width),
                                                                                dtype=dtype)
    grad_reduced = torch.empty((batch, cr, out_h, out_w), dtype=dtype)
    # sums over the pieces: the span weight's in the compute dtype (as a conv's weight gradient), the bias's in
    # float64 (as ops.py does for dwconv's bias gradient: a sum over all pixels can nearly cancel)
    grad_weight, grad_bias = torch.zeros((spans, cr), dtype=dtype), torch.zeros(spans, dtype=torch.float64)
    for bs, r0, r1 in pieces:
        r = _to_nchw(reduced[bs, :, r0:r1], dtype)
        n, hw = r.shape[0], (r1 - r0) * out_w
        kernel = _span_kernel_piece(r, weight, bias, dtype)
        x_part, pad, top = _fused_input(xs, bs, r0, r1, geometry, padded)
        dy = dys[bs, :, r0:r1]
        phases = _involution_grad_phases(dy, kernel, tuple(x_part.shape), kernel_size, stride, pad, dilation)
        if banded:
            grad_x[bs, :, top:top + x_part.shape[2]] += _from_phases(phases, pad, stride, *x_part.shape[2:])
        else:  # straight into grad x: no piece-sized copy
            _from_phases(phases, pad, stride, height, width, out=grad_x[bs])
        del kernel, phases  # freed before the kernel gradient's pass allocates its own piece-sized buffers
        grad_kernel = involution2d_grad_weight(dy, x_part, (n, spans, r1 - r0, out_w), kernel_size, stride, pad,
                                               dilation).reshape(n, spans, hw)
        grad_r = torch.bmm(weight.t().expand(n, -1, -1), grad_kernel)
        grad_reduced[bs, :, r0:r1] = grad_r.view(n, cr, r1 - r0, out_w)
        grad_weight.addbmm_(grad_kernel, r.reshape(n, cr, hw).transpose(1, 2))  # summed over the images
        grad_bias += grad_kernel.sum((0, 2))
    if banded:
        grad_x = grad_x[:, :, padding:padding + height, padding:padding + width]
    return (_restore(grad_x, x), _restore(grad_reduced, reduced), grad_weight.to(span_weight.dtype),
            grad_bias.to(span_weight.dtype))


# ---- depthwise conv1d (largeconv/conv1d.py): padding is (left, right) -------------------------------------------

def _geometry2d(stride, padding, dilation):
    return (1, stride), (0, 0, *padding), (1, dilation)


# The CPU path for stride 1 and one output per channel: blocked Toeplitz products. Cut the output into blocks of B:
# output block b of channel c is window_b @ T_c, where window_b is the B + span inputs it reads (span = d*(K-1); zero
# padding included) and T_c[t, i] = w[c, k] for t = i + k*d (a (B + span) x B band of the Toeplitz matrix): B + span
# multiply-adds per output, 2x the direct sum at K = 31, B = 32, at matmul speed. One sample and a chunk of channels
# at a time, so that the padded rows and windows stay in cache between the copy that makes them and the matmul that
# reads them (measured 2026-11-27, (32, 512, 1000) K=31 fp32: 0.7 ms a sample; the earlier bands over x where it lay
# ran three small matmuls and two partial adds per sample, 1.6-2 ms), batched over the chunk's channels. The bias rides along as one more
# window column of ones and one more row of T. The weight gradient is the same map read backwards:
# sum over samples of g_blocks^T @ windows, whose diagonal i + k*d, summed over i, is tap k. Other calls use the 2-D
# "cpu" backend on the free (N, C, 1, L) view with a (1, K) kernel.
CONV1D_BLOCKS = (32, 25, 40, 24, 20, 16)
CONV1D_CHUNK_ELEMS = 1 << 19


def _conv1d_block(length):
    """The output block length B: the first of CONV1D_BLOCKS dividing `length` (the products then land in the
    result as it lies), else the first (the last block is cropped). Measured fastest at B = 25-40 for K = 31
    (notes: bench/NOTES.md)."""
    return next((block for block in CONV1D_BLOCKS if length % block == 0), CONV1D_BLOCKS[0])


def _banded(weight_shape, channels, stride):
    """Whether the blocked products apply: stride 1, one output channel per input channel."""
    return stride == 1 and weight_shape[0] == channels


def _all_finite(t):
    """The blocked products multiply every input of a window by the band's zeros too, so one Inf/NaN spreads over
    its block (0 * Inf = NaN) where F.conv1d confines it to the outputs that read it: a non-finite result (from
    non-finite inputs, or an overflow) is redone by the other path. min and max propagate NaN, so two finite
    extremes mean every element is finite (one pass, no bool tensor)."""
    return bool(torch.isfinite(torch.stack(torch.aminmax(t))).all())


def _band_rows(block, kernel, dilation):
    """Row t = i + k*d of the (C, B + span, B) band for each (k, i), and column i: where tap k meets output i."""
    i = torch.arange(block)
    rows = i + dilation * torch.arange(kernel)[:, None]  # (K, B)
    return rows, i.expand_as(rows)


class _Windows:
    """The windows of a sample's chunk of channels: the B + span inputs (zero padding included) each output block
    reads, in a reusable (chunk, blocks, B + span [+ 1]) buffer; the extra column is ones (the bias row's partner)."""

    def __init__(self, channels, length, left, block, blocks, span, dtype, ones_column):
        # sample column j sits at padded column j + left; columns before 0 (left < 0) are never read
        self.skip, self.left = max(0, -left), max(0, left)
        self.padded = torch.zeros(channels, max(blocks * block + span, self.left + length - self.skip), dtype=dtype)
        self.view = self.padded.as_strided((channels, blocks, block + span), (self.padded.stride(0), block, 1))
        self.buffer = torch.empty(channels, blocks, block + span + ones_column, dtype=dtype)
        if ones_column:
            self.buffer[:, :, -1] = 1

    def of(self, rows):
        """The windows of `rows` (a sample's channels c0:c1, at most the buffer's channels)."""
        count, kept = rows.shape[0], rows[:, self.skip:]
        self.padded[:count, self.left:self.left + kept.shape[1]] = kept
        self.buffer[:count, :, :self.view.shape[2]] = self.view[:count]
        return self.buffer[:count]


def _channel_chunks(channels, per_channel):
    """Channel ranges whose windows (per_channel elements each) fill about CONV1D_CHUNK_ELEMS: a chunk's rows, windows
    and products stay in cache from the copy that makes them to the matmul that reads them."""
    count = -(-channels // max(1, min(channels, CONV1D_CHUNK_ELEMS // per_channel)))
    chunk = -(-channels // count)  # equal chunks: no small last one
    return chunk, [(c0, min(channels, c0 + chunk)) for c0 in range(0, channels, chunk)]


def _banded_correlate(x, weight, bias, left, out_len, dilation):
    """out[n, c, j] = bias[c] + sum_k weight[c, 0, k] x[n, c, j + k*d - left] (zero outside x) for j < out_len, in
    x's dtype (computed in the compute dtype)."""
    (batch, channels, length), kernel = x.shape, weight.shape[2]
    span, block, dtype = dilation * (kernel - 1), _conv1d_block(out_len), _compute_dtype(x.dtype)
    blocks = -(-out_len // block)
    has_bias = bias is not None
    band = torch.zeros(channels, block + span + has_bias, block, dtype=dtype)
    rows, columns = _band_rows(block, kernel, dilation)
    band[:, rows, columns] = weight.to(dtype)[:, 0, :, None]
    if has_bias:
        band[:, -1] = bias.to(dtype)[:, None]
    chunk, chunks = _channel_chunks(channels, blocks * (block + span + has_bias))
    windows = _Windows(chunk, length, left, block, blocks, span, dtype, has_bias)
    out = torch.empty(batch, channels, out_len, dtype=x.dtype)
    in_place = x.dtype == dtype and blocks * block == out_len  # else each chunk goes through a scratch
    scratch = None if in_place else torch.empty(chunk, blocks * block, dtype=dtype)
    for n in range(batch):
        for c0, c1 in chunks:
            target = out[n, c0:c1] if in_place else scratch[:c1 - c0]
            torch.bmm(windows.of(x[n, c0:c1]), band[c0:c1], out=target.view(c1 - c0, blocks, block))
            if not in_place:
                out[n, c0:c1] = target[:, :out_len]
    return out


def dwconv1d_forward(x, weight, bias, stride, padding, dilation):
    if _banded(weight.shape, x.shape[1], stride):
        out_len = conv_output_size(x.shape[2], weight.shape[2], stride, padding[0] + padding[1], dilation)
        out = _banded_correlate(x, weight, bias, padding[0], out_len, dilation)
        if _all_finite(out):
            return out
    out = dwconv2d_forward(x.unsqueeze(2), weight.unsqueeze(2), bias, *_geometry2d(stride, padding, dilation))
    return out.squeeze(2).contiguous()


def dwconv1d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    if _banded(weight.shape, input_shape[1], stride):
        # gx[i] = sum_k w[k] g[i + left - k*d]: the correlation of g, shifted right by d*(K-1) - left, with flipped w
        span = dilation * (weight.shape[2] - 1)
        grad = _banded_correlate(grad_out, weight.flip(2), None, span - padding[0], input_shape[2], dilation)
        if _all_finite(grad):
            return grad
    shape = (*input_shape[:2], 1, input_shape[2])
    grad = dwconv2d_grad_input(grad_out.unsqueeze(2), weight.unsqueeze(2), shape,
                               *_geometry2d(stride, padding, dilation))
    return grad.squeeze(2).contiguous()


def dwconv1d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    if _banded(weight_shape, x.shape[1], stride):
        grad = _banded_grad_weight(grad_out, x, weight_shape, padding[0], dilation)
        if grad is not None:
            return grad
    shape = (weight_shape[0], 1, 1, weight_shape[2])
    grad = dwconv2d_grad_weight(grad_out.unsqueeze(2), x.unsqueeze(2), shape, *_geometry2d(stride, padding, dilation))
    return grad.reshape(weight_shape)


def _banded_grad_weight(grad_out, x, weight_shape, left, dilation):
    """gw from the blocked products, or None where a non-finite input or an overflow made them non-finite (an
    Inf/NaN anywhere in a sample's block reaches the whole Gram matrix of that block: checked on the small result)."""
    # gw[c, k] = sum over n, j of g[n, c, j] x[n, c, j + k*d - left] = sum over samples of (g's blocks^T @ x's
    # windows)[c, i, i + k*d], summed over i
    (batch, channels, length), kernel, out_len = x.shape, weight_shape[2], grad_out.shape[2]
    span, block, dtype = dilation * (kernel - 1), _conv1d_block(out_len), _compute_dtype(x.dtype)
    blocks = -(-out_len // block)
    chunk, chunks = _channel_chunks(channels, blocks * (block + span))
    windows = _Windows(chunk, length, left, block, blocks, span, dtype, False)
    # g's rows as (blocks, B) where they lie when B divides out_len, else copied into zeros
    in_place = grad_out.dtype == dtype and blocks * block == out_len
    grads = None if in_place else torch.zeros(chunk, blocks, block, dtype=dtype)
    gram = torch.zeros(channels, block, block + span, dtype=dtype)
    for n in range(batch):
        for c0, c1 in chunks:
            if in_place:
                g = grad_out[n, c0:c1].view(c1 - c0, blocks, block)
            else:
                g = grads[:c1 - c0]
                g.view(c1 - c0, -1)[:, :out_len] = grad_out[n, c0:c1]
            gram[c0:c1].baddbmm_(g.transpose(1, 2), windows.of(x[n, c0:c1]))
    if not _all_finite(gram):
        return None
    rows, columns = _band_rows(block, kernel, dilation)
    return gram[:, columns, rows].sum(2).to(x.dtype).reshape(weight_shape)
