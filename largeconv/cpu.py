"""The "cpu" backend: fast compositions of PyTorch ops for CPU tensors (backend_api.md).

Depthwise conv: oneDNN is fast for depthwise conv on channels_last but slow on NCHW (~40x at K=31 on a 2-core
machine), so forward and grad-input run on channels_last whatever the input layout. Its weight gradient is slow on
both layouts, so it is computed as a correlation in the frequency domain, summed over the batch before the inverse
FFT (large kernels), or as one multiply-reduce per tap (small kernels). fp16/bf16 inputs are computed in fp32.
"""
import torch
import torch.nn.functional as F

from .arguments import memory_format_of

# Above this many taps the FFT weight gradient beats one multiply-reduce pass per tap.
FFT_MIN_TAPS = 26


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
    top, bottom, left, right = padding
    xc = _channels_last(x)
    if (top, left) != (bottom, right):
        xc, pad = F.pad(xc, (left, right, top, bottom)), (0, 0)
    else:
        pad = (top, left)
    w = weight.to(xc.dtype)
    b = None if bias is None else bias.to(xc.dtype)
    return _restore(F.conv2d(xc, w, b, stride, pad, dilation, groups=x.shape[1]), x)


def dwconv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
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
    return _restore(grad_in[:, :, :height, :width], grad_out)


def dwconv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    top, bottom, left, right = padding
    dtype = _compute_dtype(x.dtype)
    xp = F.pad(x.to(dtype), (left, right, top, bottom))
    g = grad_out.to(dtype)
    multiplier = weight_shape[0] // x.shape[1]
    if multiplier > 1:
        xp = xp.repeat_interleave(multiplier, dim=1)  # output channel o reads input channel o // m
    kh, kw = weight_shape[2:]
    if kh * kw >= FFT_MIN_TAPS:
        grad_w = _correlate_fft(g, xp, (kh, kw), stride, dilation)
    else:
        grad_w = _correlate_taps(g, xp, (kh, kw), stride, dilation)
    return grad_w.reshape(weight_shape).to(x.dtype)


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


def _correlate_fft(g, xp, kernel, stride, dilation):
    """The same correlation for all taps at once: sum_n conj(FFT(g_n)) * FFT(xp_n), one inverse FFT.

    With the strided gradient spread onto the padded grid, the lags we need (up to d*(K-1)) never wrap around.
    """
    size = xp.shape[2:]
    if stride != (1, 1):
        spread = g.new_zeros(*g.shape[:2], (g.shape[2] - 1) * stride[0] + 1, (g.shape[3] - 1) * stride[1] + 1)
        spread[:, :, ::stride[0], ::stride[1]] = g
        g = spread
    spectrum = (torch.fft.rfft2(xp, s=size) * torch.fft.rfft2(g, s=size).conj()).sum(0)
    corr = torch.fft.irfft2(spectrum, s=size)
    return corr[:, :dilation[0] * (kernel[0] - 1) + 1:dilation[0], :dilation[1] * (kernel[1] - 1) + 1:dilation[1]]


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


def _involution_taps(kernel_size, stride, dilation, out_hw):
    """(tap index, (rows, cols)): the slices of the padded input that tap (kh, kw) reads for the output pixels."""
    out_h, out_w = out_hw
    for kh in range(kernel_size):
        for kw in range(kernel_size):
            rows = slice(kh * dilation, kh * dilation + stride * (out_h - 1) + 1, stride)
            cols = slice(kw * dilation, kw * dilation + stride * (out_w - 1) + 1, stride)
            yield kh * kernel_size + kw, (rows, cols)


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


def involution2d_forward(x, weight, kernel_size, stride, padding, dilation):
    batch, channels = x.shape[:2]
    taps = kernel_size * kernel_size
    groups = weight.shape[1] // taps
    out_hw = tuple(weight.shape[2:])
    dtype = _compute_dtype(x.dtype)
    xp = _padded_nchw(x, padding, dtype).unflatten(1, (groups, -1))
    w = _nchw(weight, dtype, groups)
    out = torch.empty((batch, channels, *out_hw), dtype=dtype)
    out5 = out.unflatten(1, (groups, -1))
    for bs, gs in _involution_blocks(batch, groups, channels // groups * out_hw[0] * out_hw[1]):
        ob, xb, wb = out5[bs, gs], xp[bs, gs], w[bs, gs]
        for t, (rows, cols) in _involution_taps(kernel_size, stride, dilation, out_hw):
            if t == 0:
                torch.mul(xb[..., rows, cols], wb[:, :, 0].unsqueeze(2), out=ob)
            else:
                ob.addcmul_(xb[..., rows, cols], wb[:, :, t].unsqueeze(2))
    return _restore(out, x)


def involution2d_grad_input(grad_out, weight, input_shape, kernel_size, stride, padding, dilation):
    batch, channels, height, width = input_shape
    taps = kernel_size * kernel_size
    groups = weight.shape[1] // taps
    out_hw = tuple(weight.shape[2:])
    dtype = _compute_dtype(grad_out.dtype)
    dy = _nchw(grad_out, dtype, groups)
    w = _nchw(weight, dtype, groups)
    # Each tap adds into a strided view of a padded buffer (the transpose of the forward's read), so no tap needs
    # bounds handling; the padding is cropped at the end.
    grad_padded = torch.zeros((batch, channels, height + 2 * padding, width + 2 * padding), dtype=dtype)
    gp5 = grad_padded.unflatten(1, (groups, -1))
    for bs, gs in _involution_blocks(batch, groups, channels // groups * height * width):
        gb, dyb, wb = gp5[bs, gs], dy[bs, gs], w[bs, gs]
        for t, (rows, cols) in _involution_taps(kernel_size, stride, dilation, out_hw):
            gb[..., rows, cols].addcmul_(dyb, wb[:, :, t].unsqueeze(2))
    return _restore(grad_padded[:, :, padding:padding + height, padding:padding + width], grad_out)


def involution2d_grad_weight(grad_out, x, weight_shape, kernel_size, stride, padding, dilation):
    batch, channels = x.shape[:2]
    taps = kernel_size * kernel_size
    groups = weight_shape[1] // taps
    out_hw = tuple(weight_shape[2:])
    dtype = _compute_dtype(x.dtype)
    xp = _padded_nchw(x, padding, dtype).unflatten(1, (groups, -1))
    dy = _nchw(grad_out, dtype, groups)
    grad_w = torch.empty(tuple(weight_shape), dtype=dtype)
    gw5 = grad_w.unflatten(1, (groups, taps))
    for bs, gs in _involution_blocks(batch, groups, channels // groups * out_hw[0] * out_hw[1]):
        gb, xb, dyb = gw5[bs, gs], xp[bs, gs], dy[bs, gs]
        products = torch.empty(dyb.shape, dtype=dtype)  # one buffer for all taps: a fresh one costs page faults
        for t, (rows, cols) in _involution_taps(kernel_size, stride, dilation, out_hw):
            torch.mul(dyb, xb[..., rows, cols], out=products)
            torch.sum(products, dim=2, out=gb[:, :, t])
    return _restore(grad_w, x)
