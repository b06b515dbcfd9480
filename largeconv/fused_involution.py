"""Involution fused with the last layer of its kernel generation: `largeconv.involution2d_fused`.

RedNet's involution makes its per-pixel kernel with a 1x1 "span" conv (Cr -> G*K*K channels, with bias) of a
reduced feature map, then aggregates with it. The (B, G*K*K, Ho, Wo) kernel tensor is about 3x the size of x in
RedNet-50 and most of the layer's memory traffic. Here the span conv is computed inside the aggregation, a piece
(a tile of pixels, a band of rows) at a time, so the kernel tensor is never written, and the backward recomputes it.

Two custom ops in the namespace `largeconv`: `involution2d_fused` (forward) and `involution2d_fused_backward`
(the grads of x, reduced, span_weight and span_bias in one call, since all of them need the recomputed kernel and
its gradient), both run by `dispatch.run` under the op name "involution2d_fused". Double backward through them is
not supported (it raises, naming the unfused path); forward-mode AD and torch.func transforms run the composition of
PyTorch ops (the "torch" backend), which supports them.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch, reference
from .arguments import involution2d_fused_arguments, memory_format_of
from .ops import _autocast, _composite_needed, _empty

OP = "involution2d_fused"


def _contiguous(x, reduced, span_weight, span_bias):
    """x and reduced in x's layout (backend_api.md: one memory format), span_weight and span_bias plain."""
    layout = memory_format_of(x)
    return (x.contiguous(memory_format=layout), reduced.contiguous(memory_format=layout), span_weight.contiguous(),
            None if span_bias is None else span_bias.contiguous())


@torch.library.custom_op("largeconv::involution2d_fused", mutates_args=())
def _involution2d_fused(x: Tensor, reduced: Tensor, span_weight: Tensor, span_bias: Optional[Tensor],
                        kernel_size: int, stride: int, padding: int, dilation: int, backend: str) -> Tensor:
    layout = memory_format_of(x)
    x, reduced, span_weight, span_bias = _contiguous(x, reduced, span_weight, span_bias)
    if x.numel() == 0:
        return _empty((x.shape[0], x.shape[1], *reduced.shape[2:]), x, layout)
    args = (x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation)
    out = dispatch.run(OP, "forward", backend, x, (kernel_size, kernel_size), args)
    return out.contiguous(memory_format=layout)


@_involution2d_fused.register_fake
def _(x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation, backend):
    return _empty((x.shape[0], x.shape[1], *reduced.shape[2:]), x, memory_format_of(x))


@torch.library.custom_op("largeconv::involution2d_fused_backward", mutates_args=())
def _involution2d_fused_backward(grad_out: Tensor, x: Tensor, reduced: Tensor, span_weight: Tensor,
                                 span_bias: Optional[Tensor], kernel_size: int, stride: int, padding: int,
                                 dilation: int, backend: str) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    x_layout, r_layout = memory_format_of(x), memory_format_of(reduced)
    grad_out = grad_out.contiguous(memory_format=x_layout)
    x, reduced, span_weight, span_bias = _contiguous(x, reduced, span_weight, span_bias)
    if x.numel() == 0:  # no channels or no images: nothing reaches the kernel, so its parameters get zeros
        return (_empty(x.shape, x, x_layout).zero_(), torch.zeros_like(reduced, memory_format=r_layout),
                torch.zeros_like(span_weight), span_weight.new_zeros(span_weight.shape[0]))
    args = (grad_out, x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation)
    grad_x, grad_reduced, grad_weight, grad_bias = dispatch.run(OP, "backward", backend, x,
                                                                (kernel_size, kernel_size), args)
    return (grad_x.contiguous(memory_format=x_layout), grad_reduced.contiguous(memory_format=r_layout),
            grad_weight.contiguous(), grad_bias.contiguous())


@_involution2d_fused_backward.register_fake
def _(grad_out, x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation, backend):
    return (_empty(x.shape, x, memory_format_of(x)), _empty(reduced.shape, reduced, memory_format_of(reduced)),
            span_weight.new_empty(span_weight.shape), span_weight.new_empty(span_weight.shape[0]))


def _setup_context(ctx, inputs, output):
    x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, reduced, span_weight, span_bias)  # not the kernel: the backward recomputes it
    ctx.params = (kernel_size, stride, padding, dilation, backend)


def _backward(ctx, grad):
    x, reduced, span_weight, span_bias = ctx.saved_tensors
    grads = torch.ops.largeconv.involution2d_fused_backward(grad, x, reduced, span_weight, span_bias, *ctx.params)
    grad_bias = grads[3] if span_bias is not None and ctx.needs_input_grad[3] else None
    return (*(g if need else None for g, need in zip(grads[:3], ctx.needs_input_grad)), grad_bias,
            None, None, None, None, None)


_involution2d_fused.register_autograd(_backward, setup_context=_setup_context)

DOUBLE_BACKWARD_ERROR = (
    "involution2d_fused: double backward (a gradient of its gradients, e.g. a gradient penalty or "
    "create_graph=True followed by another backward) is not supported by the fused kernels; use fused=False "
    "(Involution2d(..., fused=False), or largeconv.involution2d with the span conv's output), which supports it")


def _no_double_backward_setup(ctx, inputs, output):
    pass


def _no_double_backward(ctx, *grads):
    raise RuntimeError(DOUBLE_BACKWARD_ERROR)


_involution2d_fused_backward.register_autograd(_no_double_backward, setup_context=_no_double_backward_setup)


def involution2d_fused(x, reduced, span_weight, span_bias, kernel_size, stride=1, padding=None, dilation=1,
                       backend=None):
    """Involution whose kernel is the 1x1 conv of `reduced`, without writing that kernel:

        involution2d(x, F.conv2d(reduced, span_weight.view(G*K*K, Cr, 1, 1), span_bias), kernel_size, stride,
                     padding, dilation)

    x (B, C, H, W); reduced (B, Cr, Ho, Wo) (RedNet: conv1 -> BN -> ReLU of the (pooled) input); span_weight
    (G*K*K, Cr, 1, 1) or (G*K*K, Cr); span_bias (G*K*K,) or None. Kernel channel g*K*K + kh*K + kw; channel c of x
    uses group c // (C // G). padding defaults to dilation*(K-1)//2. backend: None/"auto", "torch", "cpu",
    "triton" (largeconv.dispatch). Double backward raises (use the unfused path for it).
    """
    x, reduced, span_weight, span_bias = _autocast(x, reduced, span_weight, span_bias)
    span_weight, kernel_size, stride, padding, dilation, _ = involution2d_fused_arguments(
        x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation)
    if _composite_needed():
        return reference.involution2d_fused_forward(x, reduced, span_weight, span_bias, kernel_size, stride,
                                                    padding, dilation)
    backend = dispatch.requested_backend(backend)
    x, reduced, _, _ = _contiguous(x, reduced, span_weight, span_bias)
    return torch.ops.largeconv.involution2d_fused(x, reduced, span_weight, span_bias, kernel_size, stride, padding,
                                                  dilation, backend)
