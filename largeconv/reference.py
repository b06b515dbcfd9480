"""The "torch" backend: obviously-correct oracles built from F.conv2d and F.unfold / F.fold.

Tests compare every other backend against these, computed in float64. They follow backend_api.md.
"""
import torch
import torch.nn.functional as F
from torch.nn.grad import conv1d_input, conv1d_weight, conv2d_input, conv2d_weight

from .arguments import memory_format_of


def unsupported_reason(op, x, kernel_size):
    return None


def _pad(x, padding):
    top, bottom, left, right = padding
    return F.pad(x, (left, right, top, bottom))


def _symmetric(padding):
    """(top, left) when PyTorch can pad by itself (no copy of the input), else None."""
    top, bottom, left, right = padding
    return (top, left) if (top, left) == (bottom, right) else None


def _padded_shape(shape, padding):
    top, bottom, left, right = padding
    return (shape[0], shape[1], shape[2] + top + bottom, shape[3] + left + right)


def dwconv2d_forward(x, weight, bias, stride, padding, dilation):
    symmetric = _symmetric(padding)
    if symmetric:
        return F.conv2d(x, weight, bias, stride, symmetric, dilation, x.shape[1])
    return F.conv2d(_pad(x, padding), weight, bias, stride, 0, dilation, groups=x.shape[1])


def dwconv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    if _symmetric(padding):
        return conv2d_input(input_shape, weight, grad_out, stride, _symmetric(padding), dilation,
                            groups=input_shape[1]).contiguous(memory_format=memory_format_of(grad_out))
    top, _, left, _ = padding
    height, width = input_shape[2], input_shape[3]
    grad_padded = conv2d_input(_padded_shape(input_shape, padding), weight, grad_out, stride, 0, dilation,
                               groups=input_shape[1])
    return grad_padded[:, :, top:top + height, left:left + width].contiguous(memory_format=memory_format_of(grad_out))


def dwconv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    if _symmetric(padding):
        return conv2d_weight(x, weight_shape, grad_out, stride, _symmetric(padding), dilation, groups=x.shape[1])
    return conv2d_weight(_pad(x, padding), weight_shape, grad_out, stride, 0, dilation, groups=x.shape[1])


def dwconv2d_reference(x, weight, bias=None, stride=1, padding=0, dilation=1):
    """F.conv2d with groups = channels: the definition dwconv2d must match."""
    return F.conv2d(x, weight, bias, stride, padding, dilation, groups=x.shape[1])


def _unfold(x, kernel_size, stride, padding, dilation, out_hw):
    """(B, C, H, W) -> (B, C, K*K, Ho, Wo): the K*K-times larger tensor the fused kernels avoid."""
    cols = F.unfold(x, kernel_size, dilation, padding, stride)
    return cols.reshape(x.shape[0], x.shape[1], kernel_size * kernel_size, *out_hw)


def involution2d_forward(x, weight, kernel_size, stride, padding, dilation):
    batch, channels = x.shape[:2]
    out_hw = tuple(weight.shape[2:])
    groups = weight.shape[1] // (kernel_size * kernel_size)
    cols = _unfold(x, kernel_size, stride, padding, dilation, out_hw)
    cols = cols.reshape(batch, groups, channels // groups, kernel_size * kernel_size, *out_hw)
    kernel = weight.reshape(batch, groups, 1, kernel_size * kernel_size, *out_hw)
    out = (cols * kernel).sum(dim=3).reshape(batch, channels, *out_hw)
    return out.contiguous(memory_format=memory_format_of(x))


def involution2d_grad_input(grad_out, weight, input_shape, kernel_size, stride, padding, dilation):
    batch, channels = input_shape[:2]
    out_hw = tuple(weight.shape[2:])
    taps = kernel_size * kernel_size
    groups = weight.shape[1] // taps
    grad = grad_out.reshape(batch, groups, channels // groups, 1, *out_hw)
    kernel = weight.reshape(batch, groups, 1, taps, *out_hw)
    cols = (grad * kernel).reshape(batch, channels * taps, out_hw[0] * out_hw[1])
    grad_in = F.fold(cols, tuple(input_shape[2:]), kernel_size, dilation, padding, stride)
    return grad_in.contiguous(memory_format=memory_format_of(grad_out))


def involution2d_grad_weight(grad_out, x, weight_shape, kernel_size, stride, padding, dilation):
    batch, channels = x.shape[:2]
    out_hw = tuple(weight_shape[2:])
    taps = kernel_size * kernel_size
    groups = weight_shape[1] // taps
    cols = _unfold(x, kernel_size, stride, padding, dilation, out_hw)
    cols = cols.reshape(batch, groups, channels // groups, taps, *out_hw)
    grad = grad_out.reshape(batch, groups, channels // groups, 1, *out_hw)
    grad_w = (cols * grad).sum(dim=2).reshape(batch, groups * taps, *out_hw)
    return grad_w.contiguous(memory_format=memory_format_of(x))


def involution2d_reference(x, weight, kernel_size, stride=1, padding=None, dilation=1):
    """The unfold -> multiply -> sum definition of involution."""
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    return involution2d_forward(x, weight, kernel_size, stride, padding, dilation)


# ---- involution fused with its span conv (largeconv/fused_involution.py) -----------------------------------------

def span_kernel(reduced, span_weight, span_bias):
    """The involution kernel (B, G*K*K, Ho, Wo): the 1x1 "span" conv of `reduced` (span_weight is (G*K*K, Cr))."""
    return F.conv2d(reduced, span_weight[:, :, None, None], span_bias)


def involution2d_fused_forward(x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation):
    weight = span_kernel(reduced, span_weight, span_bias)
    return involution2d_forward(x, weight, kernel_size, stride, padding, dilation)


def involution2d_fused_backward(grad_out, x, reduced, span_weight, span_bias, kernel_size, stride, padding,
                                dilation):
    """(grad x, grad reduced, grad span_weight (G*K*K, Cr), grad span_bias (G*K*K,)): the unfused chain rule, with
    the whole kernel tensor and its gradient materialised."""
    weight = span_kernel(reduced, span_weight, span_bias)
    grad_x = involution2d_grad_input(grad_out, weight, tuple(x.shape), kernel_size, stride, padding, dilation)
    grad_kernel = involution2d_grad_weight(grad_out, x, tuple(weight.shape), kernel_size, stride, padding, dilation)
    grad_reduced = F.conv2d(grad_kernel, span_weight.t()[:, :, None, None])
    grad_span_weight = torch.einsum("bkhw,brhw->kr", grad_kernel, reduced)
    grad_span_bias = grad_kernel.sum((0, 2, 3))
    return grad_x, grad_reduced.contiguous(memory_format=memory_format_of(x)), grad_span_weight, grad_span_bias


# ---- depthwise conv1d (largeconv/conv1d.py): padding is (left, right) -------------------------------------------

def dwconv1d_forward(x, weight, bias, stride, padding, dilation):
    if padding[0] != padding[1]:
        x, padding = F.pad(x, padding), (0, 0)
    return F.conv1d(x, weight, bias, stride, padding[0], dilation, groups=x.shape[1])


def dwconv1d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    left, right = padding
    shape = (*input_shape[:2], input_shape[2] + left + right - 2 * min(left, right))
    grad = conv1d_input(shape, weight, grad_out, stride, min(left, right), dilation, groups=input_shape[1])
    return grad if left == right else grad[:, :, left - min(left, right):][:, :, :input_shape[2]].contiguous()


def dwconv1d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    if padding[0] != padding[1]:
        x, padding = F.pad(x, padding), (0, 0)
    return conv1d_weight(x, weight_shape, grad_out, stride, padding[0], dilation, groups=x.shape[1])
