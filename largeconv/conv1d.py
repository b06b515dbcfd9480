"""Depthwise 1-D convolution with large kernels (Conformer-style, K = 15-65): `dwconv1d`, its custom ops and
`LargeDWConv1d`.

    largeconv.dwconv1d(x, weight, bias=None, stride=1, padding="same", dilation=1)   # == F.conv1d(..., groups=C)

Built like ops.dwconv2d: three torch.library custom ops (forward, grad-input, grad-weight) with fake kernels and
autograd (the grad ops differentiable too), autocast like F.conv1d, and PyTorch's own F.conv1d under forward-mode
AD / torch.func transforms. Backends (each module's dwconv1d_* functions, chosen by dispatch.run like dwconv2d's):
- "torch": F.conv1d and torch.nn.grad (largeconv/reference.py, the oracle);
- "cpu": at stride 1 with one output per channel, blocked Toeplitz matrix products (windows of the input times a band
  of the kernel) batched over channels, one sample and a cache-sized chunk of channels at a time; otherwise, or where
  that result is not finite, the 2-D "cpu" backend on the free (N, C, 1, L) view, (1, K) kernel (largeconv/cpu.py);
- "triton": kernels/dwconv1d.py: banded Toeplitz products on tensor cores at stride 1 with one output per channel
  (fp16/bf16/fp32), else a (channels x length) tile of direct multiply-adds;
- "cuda": csrc/dwconv1d.cuh, an input strip and the taps staged in shared memory, 12 outputs per thread;
- "auto": as for dwconv2d (largeconv/dispatch.py): measured once per key, or by the fixed rule.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from . import dispatch, reference
from .arguments import _check_same, _check_tensor, conv_output_size, is_int
from .modules import DepthwiseAttributes
from .ops import (_autocast, _composite_needed, _grad_op, auto_chose_torch, bias_grad, dispatcher_needed,
                  eager_function, eager_signature, register_bilinear_double_backward, remembered_torch_call)

OP = "dwconv1d"
# convert() swaps a depthwise nn.Conv1d from this kernel size on: measured 2026-11-27 (2-thread Xeon @ 2.80GHz,
# shared) at K = 31 only, where the cpu path ran fwd+bwd 1.2-1.5x and auto 1.4-1.8x faster than F.conv1d at Conformer
# shapes (bench/results/cpu/conv1d.md); smaller K not measured yet. auto's fixed rule uses the same size.
DEFAULT_MIN_KERNEL_SIZE = 31


# ---- arguments ---------------------------------------------------------------------------------------------------

def _single(value, name):
    if is_int(value):
        return int(value)
    if isinstance(value, (tuple, list)) and len(value) == 1 and is_int(value[0]):
        return int(value[0])
    raise TypeError(f"{OP}: {name} must be an int or a 1-tuple of ints, got {value!r}")


def dwconv1d_arguments(x, weight, bias, stride, padding, dilation):
    """Check dwconv1d's arguments; return (stride, (left, right), dilation, out_length) as ints."""
    _check_tensor(x, "x", OP)
    _check_tensor(weight, "weight", OP)
    if x.dim() != 3:
        raise ValueError(f"{OP}: x must be 3-D (N, C, L), got shape {tuple(x.shape)}")
    if weight.dim() != 3 or weight.shape[1] != 1:
        raise ValueError(f"{OP}: weight must be (C*m, 1, K), got shape {tuple(weight.shape)}")
    _check_same(x, weight, "weight", OP)
    channels, out_channels = x.shape[1], weight.shape[0]
    if channels == 0 and out_channels != 0 or channels and out_channels % channels:
        raise ValueError(f"{OP}: weight has {out_channels} output channels, which is not a multiple "
                         f"(channel multiplier) of the {channels} input channels of x")
    if bias is not None:
        _check_tensor(bias, "bias", OP)
        _check_same(x, bias, "bias", OP)
        if tuple(bias.shape) != (out_channels,):
            raise ValueError(f"{OP}: bias must have shape ({out_channels},), got {tuple(bias.shape)}")
    stride, dilation = _single(stride, "stride"), _single(dilation, "dilation")
    for name, value in (("stride", stride), ("dilation", dilation)):
        if value < 1:
            raise ValueError(f"{OP}: {name} must be >= 1, got {value}")
    kernel = int(weight.shape[2])
    if kernel < 1:
        raise ValueError(f"{OP}: kernel size must be >= 1, got {kernel}")
    if padding == "valid":
        pads = (0, 0)
    elif padding == "same":
        if stride != 1:
            raise ValueError(f"{OP}: padding='same' needs stride 1 (as in F.conv1d), got stride {stride}")
        total = dilation * (kernel - 1)
        pads = (total // 2, total - total // 2)  # the odd element goes to the right, like F.conv1d
    elif isinstance(padding, str):
        raise ValueError(f"{OP}: padding must be 'same', 'valid', an int or a 1-tuple, got {padding!r}")
    else:
        p = _single(padding, "padding")
        if p < 0:
            raise ValueError(f"{OP}: padding must be >= 0, got {p}")
        pads = (p, p)
    out_length = conv_output_size(x.shape[2], kernel, stride, sum(pads), dilation)
    if out_length < 1:
        raise ValueError(f"{OP}: the (dilated) kernel {kernel} with dilation {dilation} is larger than the padded "
                         f"input {x.shape[2] + sum(pads)}; output length would be {out_length}")
    return stride, pads, dilation, out_length


def _out_length(length, kernel, stride, padding, dilation):
    return conv_output_size(length, kernel, stride, padding[0] + padding[1], dilation)


# ---- backends: forward(x, w, b, s, (left, right), d), grad_input(g, w, x_shape, ...), grad_weight(g, x, w_shape, ...)

# ---- custom ops --------------------------------------------------------------------------------------------------

def _dwconv1d_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, padding: list[int],
                   dilation: int, backend: str) -> Tensor:
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    length = _out_length(x.shape[2], weight.shape[2], stride, padding, dilation)
    if x.numel() == 0 or weight.numel() == 0:
        return x.new_empty((x.shape[0], weight.shape[0], length))
    args = (x, weight, bias, stride, tuple(padding), dilation)
    return dispatch.run(OP, "forward", backend, x, (weight.shape[2],), args).contiguous()


_dwconv1d = torch.library.custom_op("largeconv::dwconv1d", _dwconv1d_impl, mutates_args=())


@_dwconv1d.register_fake
def _(x, weight, bias, stride, padding, dilation, backend):
    return x.new_empty((x.shape[0], weight.shape[0], _out_length(x.shape[2], weight.shape[2], stride, padding,
                                                                 dilation)))


def _dwconv1d_grad_input_impl(grad_out: Tensor, weight: Tensor, input_shape: list[int], stride: int,
                              padding: list[int], dilation: int, backend: str) -> Tensor:
    grad_out, weight = grad_out.contiguous(), weight.contiguous()
    if grad_out.numel() == 0 or weight.numel() == 0:
        return grad_out.new_zeros(input_shape)
    args = (grad_out, weight, tuple(input_shape), stride, tuple(padding), dilation)
    return dispatch.run(OP, "grad_input", backend, grad_out, (weight.shape[2],), args).contiguous()


_dwconv1d_grad_input = torch.library.custom_op("largeconv::dwconv1d_grad_input", _dwconv1d_grad_input_impl,
                                               mutates_args=())


@_dwconv1d_grad_input.register_fake
def _(grad_out, weight, input_shape, stride, padding, dilation, backend):
    return grad_out.new_empty(input_shape)


def _dwconv1d_grad_weight_impl(grad_out: Tensor, x: Tensor, weight_shape: list[int], stride: int,
                               padding: list[int], dilation: int, backend: str) -> Tensor:
    grad_out, x = grad_out.contiguous(), x.contiguous()
    if grad_out.numel() == 0:
        return x.new_zeros(weight_shape)
    args = (grad_out, x, tuple(weight_shape), stride, tuple(padding), dilation)
    return dispatch.run(OP, "grad_weight", backend, x, (weight_shape[2],), args).contiguous()


_dwconv1d_grad_weight = torch.library.custom_op("largeconv::dwconv1d_grad_weight", _dwconv1d_grad_weight_impl,
                                                mutates_args=())


@_dwconv1d_grad_weight.register_fake
def _(grad_out, x, weight_shape, stride, padding, dilation, backend):
    return x.new_empty(weight_shape)


register_bilinear_double_backward(
    _dwconv1d_grad_input, _dwconv1d_grad_weight,
    lambda x, w, params: torch.ops.largeconv.dwconv1d(x, w, None, *params),
    torch.ops.largeconv.dwconv1d_grad_input, torch.ops.largeconv.dwconv1d_grad_weight)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.params = (stride, padding, dilation, backend)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_input = _grad_op(torch.ops.largeconv.dwconv1d_grad_input, _dwconv1d_grad_input_impl, grad)
        grad_x = grad_input(grad, weight, list(x.shape), *ctx.params)
    if ctx.needs_input_grad[1]:
        grad_weight = _grad_op(torch.ops.largeconv.dwconv1d_grad_weight, _dwconv1d_grad_weight_impl, grad)
        grad_w = grad_weight(grad, x, list(weight.shape), *ctx.params)
    if ctx.needs_input_grad[2]:
        grad_b = bias_grad(grad)
    return grad_x, grad_w, grad_b, None, None, None, None


_dwconv1d.register_autograd(_backward, setup_context=_setup_context)
_dwconv1d_eager = eager_function(_dwconv1d_impl, _setup_context, _backward)


def dwconv1d(x, weight, bias=None, stride=1, padding="same", dilation=1, backend=None):
    """Depthwise 1-D convolution: F.conv1d(x, weight, bias, stride, padding, dilation, groups=C), fast for large K.

    x (N, C, L); weight (C*m, 1, K); bias (C*m,) or None. padding: int, 1-tuple, "same" or "valid".
    backend: None/"auto", "torch", "cpu", "triton" or "cuda" (see this module's docstring).
    """
    signature = eager_signature(OP, x, weight, bias, stride, padding, dilation, backend)
    geometry = remembered_torch_call(signature)
    if geometry is not None:  # auto chose torch for every direction of this call before (ops.dwconv2d's fast path)
        return reference.dwconv1d_forward(x, weight, bias, *geometry)
    x, weight, bias = _autocast(x, weight, bias)
    stride, padding, dilation, out_length = dwconv1d_arguments(x, weight, bias, stride, padding, dilation)
    if _composite_needed():
        return reference.dwconv1d_forward(x, weight, bias, stride, padding, dilation)
    backend = dispatch.requested_backend(backend)
    geometry, out_shape = (stride, padding, dilation), (x.shape[0], weight.shape[0], out_length)
    custom_args = (stride, list(padding), dilation)
    if backend == "auto" and auto_chose_torch(OP, signature, x, weight, bias, geometry, out_shape,
                                              lambda *tensors: _dwconv1d_eager(*tensors, *custom_args, "auto")):
        return reference.dwconv1d_forward(x, weight, bias, *geometry)
    op = torch.ops.largeconv.dwconv1d if dispatcher_needed(x, weight, bias) else _dwconv1d_eager
    return op(x, weight, bias, *custom_args, backend)


# ---- module ------------------------------------------------------------------------------------------------------

class LargeDWConv1d(DepthwiseAttributes, nn.Conv1d):
    """Depthwise Conv1d, a drop-in for nn.Conv1d(channels, channels * channel_multiplier, kernel_size,
    groups=channels, ...): it *is* an nn.Conv1d (every attribute and the state_dict are nn.Conv1d's); its forward
    runs largeconv.dwconv1d. padding defaults to dilation * (kernel_size - 1) // 2; int, 1-tuple, "same", "valid"
    as in nn.Conv1d. Only padding_mode="zeros"."""

    def __init__(self, channels, kernel_size, stride=1, padding=None, dilation=1, bias=True,
                 channel_multiplier=1, backend="auto", device=None, dtype=None, padding_mode="zeros"):
        dispatch.check_backend_name(backend)
        for name, value in (("channels", channels), ("channel_multiplier", channel_multiplier)):
            if not is_int(value) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (LargeDWConv1d pads with zeros only; use nn.Conv1d "
                             f"for other modes), got {padding_mode!r}")
        kernel_size, stride, dilation = (_single(v, n) for v, n in ((kernel_size, "kernel_size"), (stride, "stride"),
                                                                    (dilation, "dilation")))
        if padding is None:
            padding = dilation * (kernel_size - 1) // 2
        super().__init__(channels, channels * channel_multiplier, kernel_size, stride, padding, dilation,
                         groups=channels, bias=bias, padding_mode="zeros", device=device, dtype=dtype)
        self.backend = backend

    def _conv_forward(self, x, weight, bias):
        if self.padding_mode != "zeros":
            raise ValueError(f"LargeDWConv1d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        if x.dim() == 2:  # unbatched (C, L), as nn.Conv1d accepts
            return dwconv1d(x.unsqueeze(0), weight, bias, self.stride, self.padding, self.dilation,
                            backend=self.backend).squeeze(0)
        return dwconv1d(x, weight, bias, self.stride, self.padding, self.dilation, backend=self.backend)

    @classmethod
    def from_conv1d(cls, conv: nn.Conv1d, backend="auto") -> "LargeDWConv1d":
        """A LargeDWConv1d computing what the depthwise nn.Conv1d `conv` computes, sharing its parameters."""
        reason = conv1d_ineligibility(conv)
        if reason is not None:
            raise ValueError(f"from_conv1d: {reason}")
        module = cls(conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     bias=conv.bias is not None, channel_multiplier=conv.out_channels // conv.in_channels,
                     backend=backend, device="meta")
        module.weight, module.bias = conv.weight, conv.bias
        return module.train(conv.training)

    def extra_repr(self):
        return super().extra_repr() + f", backend={self.backend!r}"


def conv1d_ineligibility(conv) -> str | None:
    """None if `conv` is a plain depthwise nn.Conv1d that LargeDWConv1d reproduces, else why not."""
    if not isinstance(conv, nn.Conv1d):
        return f"expected an nn.Conv1d, got {type(conv).__name__}"
    if conv.groups != conv.in_channels or conv.out_channels % conv.in_channels:
        return (f"not depthwise (groups={conv.groups}, in_channels={conv.in_channels}, "
                f"out_channels={conv.out_channels})")
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} is not 'zeros'"
    if conv._forward_hooks or conv._forward_pre_hooks or hasattr(conv, "parametrizations"):
        return "it has hooks or parametrized weights"
    if type(conv).forward is not nn.Conv1d.forward or type(conv)._conv_forward is not nn.Conv1d._conv_forward:
        return f"{type(conv).__name__} has its own forward"
    return None


def converted_conv1d(conv, backend="auto", min_kernel_size=None):
    """convert()'s rule for nn.Conv1d: the LargeDWConv1d replacing `conv`, or None to leave it."""
    if isinstance(conv, LargeDWConv1d) or conv1d_ineligibility(conv) is not None:
        return None
    if conv.kernel_size[0] < (min_kernel_size or DEFAULT_MIN_KERNEL_SIZE):
        return None
    return LargeDWConv1d.from_conv1d(conv, backend)
