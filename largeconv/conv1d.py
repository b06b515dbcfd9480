"""Depthwise 1-D convolution with large kernels (Conformer-style, K = 15-65): `dwconv1d`, its custom ops and
`LargeDWConv1d`.

    largeconv.dwconv1d(x, weight, bias=None, stride=1, padding="same", dilation=1)   # == F.conv1d(..., groups=C)

Built like ops.dwconv2d: three torch.library custom ops (forward, grad-input, grad-weight) with fake kernels and
autograd (the grad ops differentiable too), autocast like F.conv1d, and PyTorch's own F.conv1d under forward-mode
AD / torch.func transforms. Backends, each as three functions below:
- "torch": F.conv1d and torch.nn.grad (the oracle);
- "cpu": at stride 1 with one output per channel and finite inputs, one batched Toeplitz matmul over channels per
  direction (see TOEPLITZ_BLOCK); otherwise the 2-D "cpu" backend on the free (N, C, 1, L) view, (1, K) kernel;
- "triton": kernels/dwconv1d.py, a (channels x length) tile;
- "auto": on CPU, cpu or torch; on CUDA, triton or torch; measured once per (direction, dtype, shape bucket,
  geometry) like dispatch's "auto", or by `_table_choice` under deterministic mode / LARGECONV_AUTO=table.
The choice is made here, not by dispatch.run: dispatch's backend modules implement the 2-D ops only.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.grad import conv1d_input, conv1d_weight

from . import cpu, dispatch
from .arguments import _check_same, _check_tensor, conv_output_size, is_int
from .ops import _autocast, _bias_grad_dtype, _composite_needed

OP = "dwconv1d"
# "auto" under its fixed rule (no timing) picks the fused backend from this kernel size on, else PyTorch. CPU:
# measured 2026-11-27 (2-thread Xeon @ 2.80GHz, shared) at K = 31 only, where the cpu path ran fwd+bwd 1.2-1.5x and
# measured auto 1.4-1.8x faster than F.conv1d at Conformer shapes (bench/results/cpu/conv1d.md); smaller K not
# measured yet. CUDA: a guess until a GPU measures it.
TABLE_MIN_KERNEL = {"cpu": 31, "cuda": 31}
# convert() swaps a depthwise nn.Conv1d from this kernel size on (the same evidence as TABLE_MIN_KERNEL["cpu"]).
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

def _torch_forward(x, weight, bias, stride, padding, dilation):
    if padding[0] != padding[1]:
        x, padding = F.pad(x, padding), (0, 0)
    return F.conv1d(x, weight, bias, stride, padding[0], dilation, groups=x.shape[1])


def _torch_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    left, right = padding
    shape = (*input_shape[:2], input_shape[2] + left + right - 2 * min(left, right))
    grad = conv1d_input(shape, weight, grad_out, stride, min(left, right), dilation, groups=input_shape[1])
    return grad if left == right else grad[:, :, left - min(left, right):][:, :, :input_shape[2]].contiguous()


def _torch_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    if padding[0] != padding[1]:
        x, padding = F.pad(x, padding), (0, 0)
    return conv1d_weight(x, weight_shape, grad_out, stride, padding[0], dilation, groups=x.shape[1])


def _geometry2d(stride, padding, dilation):
    return (1, stride), (0, 0, *padding), (1, dilation)


# The CPU path for stride 1 and one output per channel: per channel c, a 1-D correlation of B outputs is a matrix
# product with the banded Toeplitz matrix T_c[t, i] = w[c, k] at t = i + k*d, so the whole layer is one batched
# matmul over channels: (C, blocks, B + d*(K-1)) windows of the padded input (a strided view, rows overlapping)
# times (C, B + d*(K-1), B). ~2x the multiply-adds of the direct sum at K = 31, B = 32, but at matmul speed and
# with no channels_last copies. Each sample's row is padded to a multiple S of B so that all samples' blocks form
# one row stride; the blocks that straddle two samples are computed and dropped. Other calls use the 2-D "cpu"
# backend on the free (N, C, 1, L) view with a (1, K) kernel.
TOEPLITZ_BLOCK = 32


def _toeplitz_fits(weight_shape, channels, stride, *tensors):
    """The matmul multiplies every input of a block by the band's zeros too, so one Inf/NaN would spread over its
    block (0 * Inf = NaN) where F.conv1d confines it to the outputs that read it: non-finite inputs take the other
    path."""
    return stride == 1 and weight_shape[0] == channels and all(bool(torch.isfinite(t).all()) for t in tensors)


def _segments(x, left, out_len, span):
    """x (N, C, L) as (C, N*S + tail) in the compute dtype: sample n's row at [n*S + left, n*S + left + L), zeros
    elsewhere; S is a multiple of the block, at least out_len rounded up to blocks + span and left + L."""
    block = TOEPLITZ_BLOCK
    n, c, length = x.shape
    blocks = -(-out_len // block)
    seg = -(-max(blocks * block + span, left + length) // block) * block
    rows = x.new_zeros((c, n * seg + span), dtype=cpu._compute_dtype(x.dtype))
    rows[:, :n * seg].view(c, n, seg)[:, :, left:left + length] = x.transpose(0, 1)
    return rows, seg


def _windows(rows, span):
    block = TOEPLITZ_BLOCK
    count = (rows.shape[1] - span) // block
    return rows.as_strided((rows.shape[0], count, block + span), (rows.stride(0), block, 1))


def _toeplitz(weight, dilation, dtype):
    """(C, B + d*(K-1), B) with T[c, i + k*d, i] = weight[c, 0, k]."""
    block = TOEPLITZ_BLOCK
    channels, _, kernel = weight.shape
    span = dilation * (kernel - 1)
    rows = torch.arange(block) + dilation * torch.arange(kernel)[:, None]  # (K, B): t = i + k*d
    flat = (rows * block + torch.arange(block)).reshape(1, -1).expand(channels, -1)
    values = weight.to(dtype)[:, 0, :, None].expand(channels, kernel, block).reshape(channels, -1)
    return torch.zeros(channels, (block + span) * block, dtype=dtype).scatter_(1, flat, values).view(
        channels, block + span, block)


def _toeplitz_correlate(x, weight, left, out_len, dilation):
    """out[n, c, j] = sum_k weight[c, 0, k] xpad[n, c, j + k*d] for j < out_len, xpad = x shifted right by left."""
    span = dilation * (weight.shape[2] - 1)
    rows, seg = _segments(x, left, out_len, span)
    out = torch.bmm(_windows(rows, span), _toeplitz(weight, dilation, rows.dtype))  # (C, N*S/B, B)
    return out.view(x.shape[1], x.shape[0], seg)[:, :, :out_len].transpose(0, 1)


def _cpu_forward(x, weight, bias, stride, padding, dilation):
    if not _toeplitz_fits(weight.shape, x.shape[1], stride, x, weight):
        out = cpu.dwconv2d_forward(x.unsqueeze(2), weight.unsqueeze(2), bias,
                                   *_geometry2d(stride, padding, dilation))
        return out.squeeze(2).contiguous()
    out_len = _out_length(x.shape[2], weight.shape[2], stride, padding, dilation)
    out = _toeplitz_correlate(x, weight, padding[0], out_len, dilation)
    if bias is not None:
        out = out + bias.to(out.dtype)[:, None]
    return out.to(x.dtype).contiguous()


def _cpu_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    span = dilation * (weight.shape[2] - 1)
    if not _toeplitz_fits(weight.shape, input_shape[1], stride, grad_out, weight) or padding[0] > span:
        shape = (*input_shape[:2], 1, input_shape[2])
        grad = cpu.dwconv2d_grad_input(grad_out.unsqueeze(2), weight.unsqueeze(2), shape,
                                       *_geometry2d(stride, padding, dilation))
        return grad.squeeze(2).contiguous()
    # gx[i] = sum_k w[k] g[i + left - k*d]: the correlation of g, shifted right by d*(K-1) - left, with flipped w
    grad = _toeplitz_correlate(grad_out, weight.flip(2), span - padding[0], input_shape[2], dilation)
    return grad.to(grad_out.dtype).contiguous()


def _cpu_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    if not _toeplitz_fits(weight_shape, x.shape[1], stride, grad_out, x):
        shape = (weight_shape[0], 1, 1, weight_shape[2])
        grad = cpu.dwconv2d_grad_weight(grad_out.unsqueeze(2), x.unsqueeze(2), shape,
                                        *_geometry2d(stride, padding, dilation))
        return grad.reshape(weight_shape)
    # gw[c, k] = sum over n, j of g[n, c, j] xpad[n, c, j + k*d]: M = G^T @ windows, then gw[k] = sum_i M[i, i + k*d]
    block, kernel, out_len = TOEPLITZ_BLOCK, weight_shape[2], grad_out.shape[2]
    span = dilation * (kernel - 1)
    rows, seg = _segments(x, padding[0], out_len, span)
    g = torch.zeros(x.shape[1], x.shape[0], seg, dtype=rows.dtype)  # zeros past out_len: straddling blocks add 0
    g[:, :, :out_len] = grad_out.transpose(0, 1)
    m = torch.bmm(g.view(x.shape[1], -1, block).transpose(1, 2), _windows(rows, span)[:, :g.shape[1] * seg // block])
    diagonal = (torch.arange(block)[:, None] * (block + span + 1) + dilation * torch.arange(kernel)).flatten()
    grad = m.flatten(1)[:, diagonal].view(-1, block, kernel).sum(1)
    return grad.to(x.dtype).reshape(weight_shape)


def _triton_functions():
    from .kernels import dwconv1d as kernels  # triton is optional
    return kernels.dwconv1d_forward, kernels.dwconv1d_grad_input, kernels.dwconv1d_grad_weight


_DIRECTIONS = ("forward", "grad_input", "grad_weight")
_BACKENDS = {"torch": lambda: (_torch_forward, _torch_grad_input, _torch_grad_weight),
             "cpu": lambda: (_cpu_forward, _cpu_grad_input, _cpu_grad_weight),
             "triton": _triton_functions}


def unsupported_reason(backend, x) -> str | None:
    if backend == "torch":
        return None
    if backend == "cpu":
        return None if x.device.type == "cpu" else f"needs CPU tensors, got {x.device.type}"
    if backend == "triton":
        try:
            from .kernels import dwconv1d as kernels
        except ImportError as error:
            return f"backend 'triton' cannot be imported: {error}"
        return kernels.unsupported_reason(x)
    return f"backend {backend!r} has no dwconv1d (backends: {tuple(_BACKENDS)})"


def _function(backend, direction):
    return _BACKENDS[backend]()[_DIRECTIONS.index(direction)]


_auto_cache: dict[tuple, str] = {}


def _table_choice(x, kernel, candidates):
    fused = "cpu" if x.device.type == "cpu" else "triton"
    order = (fused, "torch") if kernel >= TABLE_MIN_KERNEL.get(x.device.type, 31) else ("torch",)
    return next((name for name in order if name in candidates), "torch")


def _run(direction, backend, x, kernel, args):
    """Run `direction` on `backend`; "auto" measures the candidates once per key (or follows the table)."""
    if backend != "auto":
        reason = unsupported_reason(backend, x)
        if reason is not None:
            raise RuntimeError(f"{OP}: backend {backend!r} cannot run this call: {reason}")
        return _function(backend, direction)(*args)
    candidates = [name for name in (("cpu", "torch") if x.device.type == "cpu" else ("triton", "torch"))
                  if unsupported_reason(name, x) is None]
    on_gpu = x.device.type == "cuda"
    if dispatch.by_table() or (on_gpu and torch.cuda.is_current_stream_capturing()):
        return _function(_table_choice(x, kernel, candidates), direction)(*args)
    key = dispatch.cache_key(OP, direction, x, (kernel,), args[-3:])
    name = _auto_cache.get(key)
    if name is not None:
        return _function(name, direction)(*args)
    timings, results = {}, {}
    for name in candidates:
        fn = _function(name, direction)
        if on_gpu:
            fn(*args)  # compile / warm up
        timings[name], results[name] = dispatch._timed(fn, args, on_gpu)
    _auto_cache[key] = min(timings, key=timings.get)
    return results[_auto_cache[key]]


# ---- custom ops --------------------------------------------------------------------------------------------------

@torch.library.custom_op("largeconv::dwconv1d", mutates_args=())
def _dwconv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: int, padding: list[int], dilation: int,
              backend: str) -> Tensor:
    x, weight = x.contiguous(), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    length = _out_length(x.shape[2], weight.shape[2], stride, padding, dilation)
    if x.numel() == 0 or weight.numel() == 0:
        return x.new_empty((x.shape[0], weight.shape[0], length))
    args = (x, weight, bias, stride, tuple(padding), dilation)
    return _run("forward", backend, x, weight.shape[2], args).contiguous()


@_dwconv1d.register_fake
def _(x, weight, bias, stride, padding, dilation, backend):
    return x.new_empty((x.shape[0], weight.shape[0], _out_length(x.shape[2], weight.shape[2], stride, padding,
                                                                 dilation)))


@torch.library.custom_op("largeconv::dwconv1d_grad_input", mutates_args=())
def _dwconv1d_grad_input(grad_out: Tensor, weight: Tensor, input_shape: list[int], stride: int,
                         padding: list[int], dilation: int, backend: str) -> Tensor:
    grad_out, weight = grad_out.contiguous(), weight.contiguous()
    if grad_out.numel() == 0 or weight.numel() == 0:
        return grad_out.new_zeros(input_shape)
    args = (grad_out, weight, tuple(input_shape), stride, tuple(padding), dilation)
    return _run("grad_input", backend, grad_out, weight.shape[2], args).contiguous()


@_dwconv1d_grad_input.register_fake
def _(grad_out, weight, input_shape, stride, padding, dilation, backend):
    return grad_out.new_empty(input_shape)


@torch.library.custom_op("largeconv::dwconv1d_grad_weight", mutates_args=())
def _dwconv1d_grad_weight(grad_out: Tensor, x: Tensor, weight_shape: list[int], stride: int, padding: list[int],
                          dilation: int, backend: str) -> Tensor:
    grad_out, x = grad_out.contiguous(), x.contiguous()
    if grad_out.numel() == 0:
        return x.new_zeros(weight_shape)
    args = (grad_out, x, tuple(weight_shape), stride, tuple(padding), dilation)
    return _run("grad_weight", backend, x, weight_shape[2], args).contiguous()


@_dwconv1d_grad_weight.register_fake
def _(grad_out, x, weight_shape, stride, padding, dilation, backend):
    return x.new_empty(weight_shape)


# Bilinear in (x, weight), as dwconv2d (see ops.py): each direction's derivatives are the other two directions.

def _grad_input_setup_context(ctx, inputs, output):
    grad_out, weight, input_shape, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(grad_out, weight)
    ctx.params = (stride, padding, dilation, backend)


def _grad_input_backward(ctx, grad_grad_x):
    grad_out, weight = ctx.saved_tensors
    d_grad_out = d_weight = None
    if ctx.needs_input_grad[0]:
        d_grad_out = torch.ops.largeconv.dwconv1d(grad_grad_x, weight, None, *ctx.params)
    if ctx.needs_input_grad[1]:
        d_weight = torch.ops.largeconv.dwconv1d_grad_weight(grad_out, grad_grad_x, list(weight.shape), *ctx.params)
    return d_grad_out, d_weight, None, None, None, None, None


def _grad_weight_setup_context(ctx, inputs, output):
    grad_out, x, weight_shape, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(grad_out, x)
    ctx.params = (stride, padding, dilation, backend)


def _grad_weight_backward(ctx, grad_grad_w):
    grad_out, x = ctx.saved_tensors
    d_grad_out = d_x = None
    if ctx.needs_input_grad[0]:
        d_grad_out = torch.ops.largeconv.dwconv1d(x, grad_grad_w, None, *ctx.params)
    if ctx.needs_input_grad[1]:
        d_x = torch.ops.largeconv.dwconv1d_grad_input(grad_out, grad_grad_w, list(x.shape), *ctx.params)
    return d_grad_out, d_x, None, None, None, None, None


_dwconv1d_grad_input.register_autograd(_grad_input_backward, setup_context=_grad_input_setup_context)
_dwconv1d_grad_weight.register_autograd(_grad_weight_backward, setup_context=_grad_weight_setup_context)


def _setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.params = (stride, padding, dilation, backend)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad = grad.contiguous()
    grad_x = grad_w = grad_b = None
    if ctx.needs_input_grad[0]:
        grad_x = torch.ops.largeconv.dwconv1d_grad_input(grad, weight, list(x.shape), *ctx.params)
    if ctx.needs_input_grad[1]:
        grad_w = torch.ops.largeconv.dwconv1d_grad_weight(grad, x, list(weight.shape), *ctx.params)
    if ctx.needs_input_grad[2]:
        grad_b = grad.sum((0, 2), dtype=_bias_grad_dtype(grad.dtype)).to(grad.dtype)
    return grad_x, grad_w, grad_b, None, None, None, None


_dwconv1d.register_autograd(_backward, setup_context=_setup_context)


def dwconv1d(x, weight, bias=None, stride=1, padding="same", dilation=1, backend=None):
    """Depthwise 1-D convolution: F.conv1d(x, weight, bias, stride, padding, dilation, groups=C), fast for large K.

    x (N, C, L); weight (C*m, 1, K); bias (C*m,) or None. padding: int, 1-tuple, "same" or "valid".
    backend: None/"auto", "torch", "cpu" or "triton" (see this module's docstring).
    """
    x, weight, bias = _autocast(x, weight, bias)
    stride, padding, dilation, _ = dwconv1d_arguments(x, weight, bias, stride, padding, dilation)
    if _composite_needed():
        return _torch_forward(x, weight, bias, stride, padding, dilation)
    backend = dispatch.requested_backend(backend)
    return torch.ops.largeconv.dwconv1d(x, weight, bias, stride, list(padding), dilation, backend)


# ---- module ------------------------------------------------------------------------------------------------------

class LargeDWConv1d(nn.Conv1d):
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

    @property
    def channels(self) -> int:
        return self.in_channels

    @property
    def channel_multiplier(self) -> int:
        return self.out_channels // self.in_channels

    def forward(self, x):
        return self._conv_forward(x, self.weight, self.bias)

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
