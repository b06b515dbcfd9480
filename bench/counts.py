"""FLOP and minimum-byte counts of depthwise conv and involution, per direction.

Conventions (see bench/NOTES.md):
- A multiply-add is 2 FLOPs. `flops` counts only the taps that land inside the input (padding taps multiply zeros
  and a kernel may skip them); `flops_dense` is the usual 2*N*C_out*Ho*Wo*Kh*Kw that counts padding taps too.
  The roofline uses `flops`, so no kernel can beat 100% by skipping zeros.
- Minimum bytes: every tensor the direction must read or write, touched exactly once, in the op's dtype (grads
  come back in the input dtype). Anything more (re-reading x per kernel row, an unfolded buffer) is the kernel's
  own traffic and shows up as a lower fraction of the roof.
- Directions: "fwd" (output), "bwd" (grad of input and of weight, from grad_out), "fwdbwd" = fwd + bwd: autograd
  returns the forward output, so the two passes cannot share traffic.
"""
from __future__ import annotations

DIRECTIONS = ("fwd", "bwd", "fwdbwd")


def out_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int) -> int:
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def inbounds_taps(size: int, kernel: int, stride: int, pad_before: int, pad_after: int, dilation: int) -> int:
    """Number of (output position, kernel tap) pairs along one axis whose input index is inside [0, size)."""
    total = 0
    for o in range(out_size(size, kernel, stride, pad_before, pad_after, dilation)):
        for k in range(kernel):
            i = o * stride + k * dilation - pad_before
            total += 0 <= i < size
    return total


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding, kernel, dilation):
    """padding: None ("same"-like, d*(K-1)//2 each side), int, (ph, pw) or (top, bottom, left, right)."""
    if padding is None:
        ph, pw = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
        return ph, ph, pw, pw
    if isinstance(padding, int):
        return padding, padding, padding, padding
    if len(padding) == 2:
        return padding[0], padding[0], padding[1], padding[1]
    return tuple(padding)


def _combine(direction, fwd, bwd):
    """(flops, flops_dense, bytes) of the direction from the per-pass counts."""
    if direction == "fwd":
        return fwd
    if direction == "bwd":
        return bwd
    if direction == "fwdbwd":
        return tuple(a + b for a, b in zip(fwd, bwd))
    raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")


def dwconv2d_counts(n, c, h, w, kernel, stride=1, padding=None, dilation=1, multiplier=1, bias=False,
                    itemsize=4, direction="fwd"):
    """Returns dict(flops, flops_dense, min_bytes, out_h, out_w) for depthwise conv (N, C, H, W) -> (N, C*m, Ho, Wo)."""
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride)
    dh, dw = _pair(dilation)
    top, bottom, left, right = _pads(padding, (kh, kw), (dh, dw))
    ho, wo = out_size(h, kh, sh, top, bottom, dh), out_size(w, kw, sw, left, right, dw)
    c_out = c * multiplier
    taps = inbounds_taps(h, kh, sh, top, bottom, dh) * inbounds_taps(w, kw, sw, left, right, dw)
    macs = n * c_out * taps
    dense_macs = n * c_out * ho * wo * kh * kw
    x_elems, out_elems, w_elems = n * c * h * w, n * c_out * ho * wo, c_out * kh * kw
    b_elems = c_out if bias else 0
    bias_flops = out_elems if bias else 0
    # forward: read x, weight (, bias); write out
    fwd = (2 * macs + bias_flops, 2 * dense_macs + bias_flops, (x_elems + w_elems + b_elems + out_elems) * itemsize)
    # backward: grad_input and grad_weight are one MAC per tap each; grad_bias is a sum over grad_out.
    # read grad_out, x, weight; write grad_x, grad_w (, grad_b)
    bwd = (4 * macs + bias_flops, 4 * dense_macs + bias_flops,
           (out_elems + x_elems + w_elems + x_elems + w_elems + b_elems) * itemsize)
    flops, flops_dense, min_bytes = _combine(direction, fwd, bwd)
    return dict(flops=flops, flops_dense=flops_dense, min_bytes=min_bytes, out_h=ho, out_w=wo)


def involution2d_counts(b, c, h, w, kernel, groups, stride=1, padding=None, dilation=1, itemsize=4,
                        direction="fwd"):
    """Returns dict(flops, flops_dense, min_bytes, out_h, out_w) for involution with weight (B, G*K*K, Ho, Wo)."""
    k, s, d = int(kernel), int(stride), int(dilation)
    p = d * (k - 1) // 2 if padding is None else int(padding)
    ho, wo = out_size(h, k, s, p, p, d), out_size(w, k, s, p, p, d)
    taps = inbounds_taps(h, k, s, p, p, d) * inbounds_taps(w, k, s, p, p, d)
    macs = b * c * taps
    dense_macs = b * c * ho * wo * k * k
    x_elems, out_elems, w_elems = b * c * h * w, b * c * ho * wo, b * groups * k * k * ho * wo
    # forward: read x, weight; write out
    fwd = (2 * macs, 2 * dense_macs, (x_elems + w_elems + out_elems) * itemsize)
    # backward: grad_x and grad_weight, one MAC per (channel, tap, pixel) each.
    # read grad_out, x, weight; write grad_x, grad_weight
    bwd = (4 * macs, 4 * dense_macs, (out_elems + x_elems + w_elems + x_elems + w_elems) * itemsize)
    flops, flops_dense, min_bytes = _combine(direction, fwd, bwd)
    return dict(flops=flops, flops_dense=flops_dense, min_bytes=min_bytes, out_h=ho, out_w=wo)


def roof(arithmetic_intensity: float, peak_flops: float, bandwidth: float):
    """Attainable FLOP/s = min(peak, AI * bandwidth), and which roof binds ("compute" or "memory")."""
    memory_roof = arithmetic_intensity * bandwidth
    if memory_roof < peak_flops:
        return memory_roof, "memory"
    return peak_flops, "compute"
