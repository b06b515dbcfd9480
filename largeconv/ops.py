"""The functional API (`dwconv2d`, `involution2d`) and their torch.library custom ops.

Each op is three custom ops in the namespace `largeconv` (forward, grad-input, grad-weight) with fake kernels
(torch.compile, meta tensors) and autograd. The ops take the backend name as an argument and ask
`dispatch.select` which backend module runs each direction, at run time, so "auto" measures on real tensors in
eager and compiled code alike.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch
from .arguments import dwconv2d_arguments, dwconv2d_output_hw, involution2d_arguments, memory_format_of


def _run(op, direction, backend, x, kernel_size, args):
    module = dispatch.select(op, direction, backend, x, kernel_size, args)
    return getattr(module, f"{op}_{direction}")(*args)


def _empty(shape, like, memory_format):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)


def _bias_grad_dtype(dtype):
    # float64 for fp32: the sum over N*H*W can nearly cancel, and this memory-bound reduction costs the same
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else torch.float64


def _autocast(*tensors):
    """Cast like F.conv2d does under torch.autocast: eligible floats go to the autocast dtype."""
    if not isinstance(tensors[0], Tensor):
        return tensors  # argument checks report it
    device = tensors[0].device.type
    if device not in ("cuda", "cpu") or not torch.is_autocast_enabled(device):
        return tensors
    dtype = torch.get_autocast_dtype(device)
    return tuple(t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != torch.float64 else t
                 for t in tensors)


# ---- depthwise convolution -------------------------------------------------------------------------------------

@torch.library.custom_op("largeconv::dwconv2d", mutates_args=())
def _dwconv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
              dilation: list[int], backend: str) -> Tensor:
    layout = memory_format_of(x)
    x, weight = x.contiguous(memory_format=layout), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    out_hw = dwconv2d_output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    if x.numel() == 0 or weight.numel() == 0:
        return _empty((x.shape[0], weight.shape[0], *out_hw), x, layout)
    args = (x, weight, bias, tuple(stride), tuple(padding), tuple(dilation))
    out = _run("dwconv2d", "forward", backend, x, weight.shape[2:], args)
    return out.contiguous(memory_format=layout)


@_dwconv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, backend):
    out_hw = dwconv2d_output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    return _empty((x.shape[0], weight.shape[0], *out_hw), x, memory_format_of(x))


@torch.library.custom_op("largeconv::dwconv2d_grad_input", mutates_args=())
def _dwconv2d_grad_input(grad_out: Tensor, weight: Tensor, input_shape: list[int], stride: list[int],
                         padding: list[int], dilation: list[int], backend: str) -> Tensor:
    layout = memory_format_of(grad_out)
    grad_out, weight = grad_out.contiguous(memory_format=layout), weight.contiguous()
    if grad_out.numel() == 0 or weight.numel() == 0:
        return _empty(input_shape, grad_out, layout).zero_()
    args = (grad_out, weight, tuple(input_shape), tuple(stride), tuple(padding), tuple(dilation))
    grad_in = _run("dwconv2d", "grad_input", backend, grad_out, weight.shape[2:], args)
    return grad_in.contiguous(memory_format=layout)


@_dwconv2d_grad_input.register_fake
def _(grad_out, weight, input_shape, stride, padding, dilation, backend):
    return _empty(input_shape, grad_out, memory_format_of(grad_out))


@torch.library.custom_op("largeconv::dwconv2d_grad_weight", mutates_args=())
def _dwconv2d_grad_weight(grad_out: Tensor, x: Tensor, weight_shape: list[int], stride: list[int],
                          padding: list[int], dilation: list[int], backend: str) -> Tensor:
    layout = memory_format_of(x)
    grad_out, x = grad_out.contiguous(memory_format=layout), x.contiguous(memory_format=layout)
    if grad_out.numel() == 0:
        return x.new_zeros(weight_shape)
    args = (grad_out, x, tuple(weight_shape), tuple(stride), tuple(padding), tuple(dilation))
    return _run("dwconv2d", "grad_weight", backend, x, weight_shape[2:], args).contiguous()


@_dwconv2d_grad_weight.register_fake
def _(grad_out, x, weight_shape, stride, padding, dilation, backend):
    return x.new_empty(weight_shape)


def _dwconv2d_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.params = (stride, padding, dilation, backend)


def _dwconv2d_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad = grad.contiguous(memory_format=memory_format_of(x))
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.largeconv.dwconv2d_grad_input(grad, weight, list(x.shape), *ctx.params)
        grad_x = grad_x.contiguous(memory_format=memory_format_of(x))  # a 1x1 grad is both layouts: take x's
    if ctx.needs_input_grad[1]:
        grad_w = torch.ops.largeconv.dwconv2d_grad_weight(grad, x, list(weight.shape), *ctx.params)
    if ctx.needs_input_grad[2]:
        grad_b = grad.sum((0, 2, 3), dtype=_bias_grad_dtype(grad.dtype)).to(grad.dtype)
    return grad_x, grad_w, grad_b, None, None, None, None


_dwconv2d.register_autograd(_dwconv2d_backward, setup_context=_dwconv2d_setup_context)


def dwconv2d(x, weight, bias=None, stride=1, padding="same", dilation=1, backend=None):
    """Depthwise 2-D convolution: F.conv2d(x, weight, bias, stride, padding, dilation, groups=C), fast.

    x (N, C, H, W) NCHW or channels_last; weight (C*m, 1, Kh, Kw); bias (C*m,) or None. padding: int, pair,
    "same" or "valid". backend: None/"auto", "torch", "cpu", "triton" or "cuda" (see largeconv.dispatch).
    """
    x, weight, bias = _autocast(x, weight, bias)
    stride, padding, dilation, _ = dwconv2d_arguments(x, weight, bias, stride, padding, dilation)
    backend = dispatch.requested_backend(backend)
    x = x.contiguous(memory_format=memory_format_of(x))
    return torch.ops.largeconv.dwconv2d(x, weight, bias, list(stride), list(padding), list(dilation), backend)


# ---- involution ------------------------------------------------------------------------------------------------

@torch.library.custom_op("largeconv::involution2d", mutates_args=())
def _involution2d(x: Tensor, weight: Tensor, kernel_size: int, stride: int, padding: int, dilation: int,
                  backend: str) -> Tensor:
    layout = memory_format_of(x)
    x, weight = x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
    if x.numel() == 0:
        return _empty((x.shape[0], x.shape[1], *weight.shape[2:]), x, layout)
    args = (x, weight, kernel_size, stride, padding, dilation)
    out = _run("involution2d", "forward", backend, x, (kernel_size, kernel_size), args)
    return out.contiguous(memory_format=layout)


@_involution2d.register_fake
def _(x, weight, kernel_size, stride, padding, dilation, backend):
    return _empty((x.shape[0], x.shape[1], *weight.shape[2:]), x, memory_format_of(x))


@torch.library.custom_op("largeconv::involution2d_grad_input", mutates_args=())
def _involution2d_grad_input(grad_out: Tensor, weight: Tensor, input_shape: list[int], kernel_size: int,
                             stride: int, padding: int, dilation: int, backend: str) -> Tensor:
    layout = memory_format_of(grad_out)
    grad_out, weight = grad_out.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
    if grad_out.numel() == 0:
        return _empty(input_shape, grad_out, layout).zero_()
    args = (grad_out, weight, tuple(input_shape), kernel_size, stride, padding, dilation)
    grad_in = _run("involution2d", "grad_input", backend, grad_out, (kernel_size, kernel_size), args)
    return grad_in.contiguous(memory_format=layout)


@_involution2d_grad_input.register_fake
def _(grad_out, weight, input_shape, kernel_size, stride, padding, dilation, backend):
    return _empty(input_shape, grad_out, memory_format_of(grad_out))


@torch.library.custom_op("largeconv::involution2d_grad_weight", mutates_args=())
def _involution2d_grad_weight(grad_out: Tensor, x: Tensor, weight_shape: list[int], kernel_size: int,
                              stride: int, padding: int, dilation: int, backend: str) -> Tensor:
    layout = memory_format_of(x)
    grad_out, x = grad_out.contiguous(memory_format=layout), x.contiguous(memory_format=layout)
    if x.numel() == 0:
        return _empty(weight_shape, x, layout).zero_()
    args = (grad_out, x, tuple(weight_shape), kernel_size, stride, padding, dilation)
    grad_w = _run("involution2d", "grad_weight", backend, x, (kernel_size, kernel_size), args)
    return grad_w.contiguous(memory_format=layout)


@_involution2d_grad_weight.register_fake
def _(grad_out, x, weight_shape, kernel_size, stride, padding, dilation, backend):
    return _empty(weight_shape, x, memory_format_of(x))


def _involution2d_setup_context(ctx, inputs, output):
    x, weight, kernel_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.params = (kernel_size, stride, padding, dilation, backend)


def _involution2d_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad = grad.contiguous(memory_format=memory_format_of(x))
    grad_x = grad_w = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.largeconv.involution2d_grad_input(grad, weight, list(x.shape), *ctx.params)
        grad_x = grad_x.contiguous(memory_format=memory_format_of(x))  # a 1x1 grad is both layouts: take x's
    if ctx.needs_input_grad[1]:
        grad_w = torch.ops.largeconv.involution2d_grad_weight(grad, x, list(weight.shape), *ctx.params)
    return grad_x, grad_w, None, None, None, None, None


_involution2d.register_autograd(_involution2d_backward, setup_context=_involution2d_setup_context)


def involution2d(x, weight, kernel_size, stride=1, padding=None, dilation=1, backend=None):
    """Involution: a per-pixel, per-group kernel_size x kernel_size kernel applied to x (see the design).

    x (B, C, H, W); weight (B, G*K*K, Ho, Wo) with G dividing C. padding defaults to dilation*(K-1)//2.
    """
    x, weight = _autocast(x, weight)
    stride, padding, dilation, _, _ = involution2d_arguments(x, weight, kernel_size, stride, padding, dilation)
    backend = dispatch.requested_backend(backend)
    layout = memory_format_of(x)
    x, weight = x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
    return torch.ops.largeconv.involution2d(x, weight, kernel_size, stride, padding, dilation, backend)
