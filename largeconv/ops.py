"""The functional API (`dwconv2d`, `involution2d`) and their torch.library custom ops.

Each op is three custom ops in the namespace `largeconv` (forward, grad-input, grad-weight) with fake kernels
(torch.compile, meta tensors) and autograd. The ops take the backend name as an argument and ask
`dispatch.run` to run each direction on its backend, at run time, so "auto" measures on real tensors in
eager and compiled code alike. Plain eager calls run the same implementations and the same autograd functions
without the dispatcher (`eager_function`, `dispatcher_needed`): its custom-op path cost more than a small layer's
kernel on a GPU.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.autograd.forward_ad as forward_ad
from torch import Tensor

from . import dispatch, reference
from .arguments import dwconv2d_arguments, dwconv2d_output_hw, involution2d_arguments, memory_format_of


def _empty(shape, like, memory_format):
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)


def bias_grad(grad):
    """grad (N, C, *spatial) summed over all but C: each (n, c) over space by PyTorch's cascaded sum (fp32 for
    fp16/bf16), then the N partial sums in float64 for fp32 (they can nearly cancel) and fp32 for fp16/bf16; cast
    back. Two stages because a float64 sum of the whole tensor converts it first (10x slower)."""
    half = grad.dtype in (torch.float16, torch.bfloat16)
    partial = grad.sum(tuple(range(2, grad.dim())), dtype=torch.float32 if half else None)
    return partial.sum(0, dtype=torch.float32 if half else torch.float64).to(grad.dtype)


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


def _composite_needed() -> bool:
    """True under forward-mode AD (forward_ad, torch.func.jvp) and torch.func transforms (grad, vmap, jacrev, ...):
    a torch.library custom op has no jvp and no setup_context-style autograd, so these would get zero tangents or an
    error. There the ops run as compositions of PyTorch's own differentiable ops (the "torch" backend), which support
    every transform; plain autograd, double backward and torch.compile keep the custom ops."""
    if torch.compiler.is_compiling():
        return False
    return forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()


def eager_function(impl, setup_context, backward):
    """A custom op's implementation under a torch.autograd.Function with the op's own autograd (the functions given
    to register_autograd), for eager calls: they skip the dispatcher's custom-op path, which costs ~20 us a call
    without grad and ~45 us with it on a 2-core Xeon (bench/NOTES.md), several times a small layer's kernel on a GPU.
    The backward is the op's: it calls the grad custom ops where autograd records them (double backward) and their
    implementations otherwise (`_grad_op`)."""
    class EagerOp(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *args):
            output = impl(*args)
            setup_context(ctx, args, output)
            return output

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    return EagerOp.apply


def dispatcher_needed(*tensors) -> bool:
    """True where a call must go through the custom op itself: under torch.compile or export, the JIT tracer
    (torch.onnx.export(dynamo=False)), a dispatch or function mode (make_fx, FakeTensorMode, a torch.device
    context), and for tensor subclasses or devices other than CPU and CUDA (meta tensors take the fake kernels)."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing() or bool(torch._C._len_torch_dispatch_stack())
            or torch._C._is_torch_function_mode_enabled()
            or any(t is not None and (type(t) not in _PLAIN_TENSORS or t.device.type not in ("cpu", "cuda"))
                   for t in tensors))


def _grad_op(op, impl, grad):
    """In a backward: the grad custom op `op` where autograd records it (create_graph: double backward) or something
    traces the backward, else its implementation `impl` (no dispatcher: ~20 us less per direction)."""
    return op if torch.is_grad_enabled() or dispatcher_needed(grad) else impl


# ---- depthwise convolution -------------------------------------------------------------------------------------

def _dwconv2d_impl(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: list[int], padding: list[int],
                   dilation: list[int], backend: str) -> Tensor:
    layout = memory_format_of(x)
    x, weight = x.contiguous(memory_format=layout), weight.contiguous()
    bias = None if bias is None else bias.contiguous()
    out_hw = dwconv2d_output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    if x.numel() == 0 or weight.numel() == 0:
        return _empty((x.shape[0], weight.shape[0], *out_hw), x, layout)
    args = (x, weight, bias, tuple(stride), tuple(padding), tuple(dilation))
    out = dispatch.run("dwconv2d", "forward", backend, x, weight.shape[2:], args)
    return out.contiguous(memory_format=layout)


_dwconv2d = torch.library.custom_op("largeconv::dwconv2d", _dwconv2d_impl, mutates_args=())


@_dwconv2d.register_fake
def _(x, weight, bias, stride, padding, dilation, backend):
    out_hw = dwconv2d_output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    return _empty((x.shape[0], weight.shape[0], *out_hw), x, memory_format_of(x))


def _dwconv2d_grad_input_impl(grad_out: Tensor, weight: Tensor, input_shape: list[int], stride: list[int],
                              padding: list[int], dilation: list[int], backend: str) -> Tensor:
    layout = memory_format_of(grad_out)
    grad_out, weight = grad_out.contiguous(memory_format=layout), weight.contiguous()
    if grad_out.numel() == 0 or weight.numel() == 0:
        return _empty(input_shape, grad_out, layout).zero_()
    args = (grad_out, weight, tuple(input_shape), tuple(stride), tuple(padding), tuple(dilation))
    grad_in = dispatch.run("dwconv2d", "grad_input", backend, grad_out, weight.shape[2:], args)
    return grad_in.contiguous(memory_format=layout)


_dwconv2d_grad_input = torch.library.custom_op("largeconv::dwconv2d_grad_input", _dwconv2d_grad_input_impl,
                                               mutates_args=())


@_dwconv2d_grad_input.register_fake
def _(grad_out, weight, input_shape, stride, padding, dilation, backend):
    return _empty(input_shape, grad_out, memory_format_of(grad_out))


def _dwconv2d_grad_weight_impl(grad_out: Tensor, x: Tensor, weight_shape: list[int], stride: list[int],
                               padding: list[int], dilation: list[int], backend: str) -> Tensor:
    layout = memory_format_of(x)
    grad_out, x = grad_out.contiguous(memory_format=layout), x.contiguous(memory_format=layout)
    if grad_out.numel() == 0:
        return x.new_zeros(weight_shape)
    args = (grad_out, x, tuple(weight_shape), tuple(stride), tuple(padding), tuple(dilation))
    return dispatch.run("dwconv2d", "grad_weight", backend, x, weight_shape[2:], args).contiguous()


_dwconv2d_grad_weight = torch.library.custom_op("largeconv::dwconv2d_grad_weight", _dwconv2d_grad_weight_impl,
                                                mutates_args=())


@_dwconv2d_grad_weight.register_fake
def _(grad_out, x, weight_shape, stride, padding, dilation, backend):
    return x.new_empty(weight_shape)


def register_bilinear_double_backward(grad_input, grad_weight, forward, grad_input_op, grad_weight_op,
                                     weight_layout=lambda grad_w, weight: grad_w):
    """Make an op's two grad ops (custom ops taking (grad_out, weight or x, shape, *params)) differentiable.

    The ops are bilinear in (x, weight), so each direction's derivatives are the other two directions: with
    gx = grad_input(g, w) and gw = grad_weight(g, x), <gx, Gx> = <g, op(Gx, w)> and <gw, Gw> = <g, op(x, Gw)>.
    This gives double backward (gradient penalties, MAML). `forward(x, w, params)` calls the op; the *_op arguments
    are the torch.ops handles of the grad ops (called through the dispatcher, so they are differentiable too)."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0], inputs[1])
        ctx.params, ctx.unused = tuple(inputs[3:]), (None,) * (len(inputs) - 2)

    def grad_input_backward(ctx, grad_grad_x):
        grad_out, weight = ctx.saved_tensors
        d_grad_out = forward(grad_grad_x, weight, ctx.params) if ctx.needs_input_grad[0] else None
        d_weight = None
        if ctx.needs_input_grad[1]:
            d_weight = weight_layout(grad_weight_op(grad_out, grad_grad_x, list(weight.shape), *ctx.params), weight)
        return (d_grad_out, d_weight, *ctx.unused)

    def grad_weight_backward(ctx, grad_grad_w):
        grad_out, x = ctx.saved_tensors
        d_grad_out = forward(x, grad_grad_w, ctx.params) if ctx.needs_input_grad[0] else None
        d_x = grad_input_op(grad_out, grad_grad_w, list(x.shape), *ctx.params) if ctx.needs_input_grad[1] else None
        return (d_grad_out, d_x, *ctx.unused)

    grad_input.register_autograd(grad_input_backward, setup_context=setup_context)
    grad_weight.register_autograd(grad_weight_backward, setup_context=setup_context)


def _weight_layout(grad_w, weight):
    """grad_w with weight's strides (a channels_last weight gets a channels_last gradient, as nn.Conv2d's does:
    DDP warns when a grad's strides differ from its parameter's)."""
    if grad_w.stride() == weight.stride():
        return grad_w
    return torch.empty_like(weight).copy_(grad_w)


register_bilinear_double_backward(
    _dwconv2d_grad_input, _dwconv2d_grad_weight,
    lambda x, w, params: torch.ops.largeconv.dwconv2d(x, w, None, *params),
    torch.ops.largeconv.dwconv2d_grad_input, torch.ops.largeconv.dwconv2d_grad_weight, _weight_layout)


def _dwconv2d_setup_context(ctx, inputs, output):
    x, weight, bias, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.params = (stride, padding, dilation, backend)


def _dwconv2d_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad = grad.contiguous(memory_format=memory_format_of(x))
    grad_x = grad_w = grad_b = None
    grad_input = _grad_op(torch.ops.largeconv.dwconv2d_grad_input, _dwconv2d_grad_input_impl, grad)
    grad_weight = _grad_op(torch.ops.largeconv.dwconv2d_grad_weight, _dwconv2d_grad_weight_impl, grad)
    if ctx.needs_input_grad[0]:
        grad_x = grad_input(grad, weight, list(x.shape), *ctx.params)
        grad_x = grad_x.contiguous(memory_format=memory_format_of(x))  # a 1x1 grad is both layouts: take x's
    if ctx.needs_input_grad[1]:
        grad_w = _weight_layout(grad_weight(grad, x, list(weight.shape), *ctx.params), weight)
    if ctx.needs_input_grad[2]:
        grad_b = bias_grad(grad)
    return grad_x, grad_w, grad_b, None, None, None, None


_dwconv2d.register_autograd(_dwconv2d_backward, setup_context=_dwconv2d_setup_context)
_dwconv2d_eager = eager_function(_dwconv2d_impl, _dwconv2d_setup_context, _dwconv2d_backward)


def dwconv2d(x, weight, bias=None, stride=1, padding="same", dilation=1, backend=None):
    """Depthwise 2-D convolution: F.conv2d(x, weight, bias, stride, padding, dilation, groups=C), fast.

    x (N, C, H, W) NCHW or channels_last; weight (C*m, 1, Kh, Kw); bias (C*m,) or None. padding: int, pair,
    "same" or "valid". backend: None/"auto", "torch", "cpu", "triton" or "cuda" (see largeconv.dispatch).
    """
    signature = eager_signature("dwconv2d", x, weight, bias, stride, padding, dilation, backend)
    geometry = remembered_torch_call(signature)
    if geometry is not None:
        # the same call as one where auto chose torch for every direction it runs: PyTorch's own op and autograd,
        # with no argument checks (they passed for this signature) and no custom-op machinery
        return reference.dwconv2d_forward(x, weight, bias, *geometry)
    x, weight, bias = _autocast(x, weight, bias)
    stride, padding, dilation, _ = dwconv2d_arguments(x, weight, bias, stride, padding, dilation)
    if _composite_needed():
        return reference.dwconv2d_forward(x, weight, bias, stride, padding, dilation)
    backend = dispatch.requested_backend(backend)
    x = x.contiguous(memory_format=memory_format_of(x))
    geometry = (stride, padding, dilation)
    out_shape = (x.shape[0], weight.shape[0], *dwconv2d_output_hw(x.shape, weight.shape[2:], *geometry))
    custom_args = (list(stride), list(padding), list(dilation))
    if backend == "auto" and auto_chose_torch("dwconv2d", signature, x, weight, bias, geometry, out_shape,
                                              lambda *tensors: _dwconv2d_eager(*tensors, *custom_args, "auto")):
        return reference.dwconv2d_forward(x, weight, bias, *geometry)
    op = torch.ops.largeconv.dwconv2d if dispatcher_needed(x, weight, bias) else _dwconv2d_eager
    return op(x, weight, bias, *custom_args, backend)


# ---- auto's fast path where it chose PyTorch (dwconv2d, dwconv1d) ---------------------------------------------------
# Signatures of calls where auto chose torch in every direction -> (geometry, auto-cache keys). A hit re-reads those
# keys in the auto cache, so clearing or loading choices takes effect at once. Tiny layers cost ~100 us in F.conv2d
# on CPU and every microsecond of Python before it shows, so the hit path is kept short.
_torch_calls: dict[tuple, tuple] = {}
_TORCH_CALLS_LIMIT = 4096


def eager_signature(op, x, weight, bias, stride, padding, dilation, backend):
    """What decides a call's argument checks and auto's choice, as a hashable tuple; None where the fast path must
    not be used: a pinned backend, under a compiler, a dispatch-mode tracer (make_fx must see the custom op),
    autocast, or for tensor subclasses. With unhashable arguments (lists) the call cannot be remembered, but still
    goes to PyTorch's op when auto chose torch."""
    if (backend not in (None, "auto") or type(x) is not Tensor or type(weight) not in _PLAIN_TENSORS
            or bias is not None and type(bias) not in _PLAIN_TENSORS or torch.compiler.is_compiling()
            or torch._C._len_torch_dispatch_stack() or torch._C._is_any_autocast_enabled()):
        return None
    grad = torch.is_grad_enabled()
    return (op, x.shape, x.stride(), x.dtype, x.device, grad and x.requires_grad, weight.shape, weight.dtype,
            weight.device, grad and weight.requires_grad,
            None if bias is None else (bias.shape, bias.dtype, bias.device), stride, padding, dilation)


_PLAIN_TENSORS = (Tensor, torch.nn.Parameter)


def remembered_torch_call(signature):
    """The checked geometry of an earlier call with this signature, if auto chose torch for every direction of it
    and still does; else None."""
    try:
        known = _torch_calls.get(signature)
    except TypeError:  # an unhashable argument (a list): never remembered
        return None
    if known is not None and dispatch.auto_still_picks(known[1], "torch"):
        return known[0]
    return None


def auto_chose_torch(op, signature, x, weight, bias, geometry, out_shape, custom_op) -> bool:
    """Whether auto has chosen "torch" for every direction this call will run (forward; grad-input if x needs a
    gradient, of `out_shape`; grad-weight if the weight does); if so the call is remembered by its signature.
    `custom_op(x, weight, bias)` runs the call through the custom ops (for dispatch.settle)."""
    if signature is None:
        return False
    kernel = weight.shape[2:]
    keys = [dispatch.cache_key(op, "forward", x, kernel, geometry)]
    if torch.is_grad_enabled():
        if x.requires_grad:
            keys.append(dispatch.cache_key(op, "grad_input", x, kernel, geometry, out_shape))
        if weight.requires_grad:
            keys.append(dispatch.cache_key(op, "grad_weight", x, kernel, geometry))
    dispatch.settle(keys, lambda way: _whole_call(op, way, x, weight, bias, geometry, custom_op))
    if not dispatch.all_cached_as(keys, "torch"):
        return False
    try:
        if len(_torch_calls) >= _TORCH_CALLS_LIMIT:
            _torch_calls.clear()
        _torch_calls[signature] = (geometry, tuple(keys))
    except TypeError:  # unhashable: not remembered
        pass
    return True


def _whole_call(op, way, x, weight, bias, geometry, custom_op):
    """One call like this one, on detached aliases of its tensors (no copies, nothing recorded in the caller's
    graph), its forward on `way` ("torch": PyTorch's own op; "custom": `custom_op`) and the backward the call would
    run, with the output itself as its gradient (real values, and no draw on the caller's random numbers)."""
    grad_enabled = torch.is_grad_enabled()
    leaves = [t.detach().requires_grad_(grad_enabled and t.requires_grad) if t is not None else None
              for t in (x, weight, bias)]
    forward = getattr(reference, f"{op}_forward") if way == "torch" else custom_op
    out = forward(*leaves, *(geometry if way == "torch" else ()))
    needing = [t for t in leaves if t is not None and t.requires_grad]
    if needing:
        torch.autograd.grad(out, needing, out.detach())


# ---- involution ------------------------------------------------------------------------------------------------

def _involution2d_impl(x: Tensor, weight: Tensor, kernel_size: int, stride: int, padding: int, dilation: int,
                       backend: str) -> Tensor:
    layout = memory_format_of(x)
    x, weight = x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
    if x.numel() == 0:
        return _empty((x.shape[0], x.shape[1], *weight.shape[2:]), x, layout)
    args = (x, weight, kernel_size, stride, padding, dilation)
    out = dispatch.run("involution2d", "forward", backend, x, (kernel_size, kernel_size), args)
    return out.contiguous(memory_format=layout)


_involution2d = torch.library.custom_op("largeconv::involution2d", _involution2d_impl, mutates_args=())


@_involution2d.register_fake
def _(x, weight, kernel_size, stride, padding, dilation, backend):
    return _empty((x.shape[0], x.shape[1], *weight.shape[2:]), x, memory_format_of(x))


def _involution2d_grad_input_impl(grad_out: Tensor, weight: Tensor, input_shape: list[int], kernel_size: int,
                                  stride: int, padding: int, dilation: int, backend: str) -> Tensor:
    layout = memory_format_of(grad_out)
    grad_out, weight = grad_out.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
    if grad_out.numel() == 0:
        return _empty(input_shape, grad_out, layout).zero_()
    args = (grad_out, weight, tuple(input_shape), kernel_size, stride, padding, dilation)
    grad_in = dispatch.run("involution2d", "grad_input", backend, grad_out, (kernel_size, kernel_size), args)
    return grad_in.contiguous(memory_format=layout)


_involution2d_grad_input = torch.library.custom_op("largeconv::involution2d_grad_input", _involution2d_grad_input_impl,
                                                   mutates_args=())


@_involution2d_grad_input.register_fake
def _(grad_out, weight, input_shape, kernel_size, stride, padding, dilation, backend):
    return _empty(input_shape, grad_out, memory_format_of(grad_out))


def _involution2d_grad_weight_impl(grad_out: Tensor, x: Tensor, weight_shape: list[int], kernel_size: int,
                                   stride: int, padding: int, dilation: int, backend: str) -> Tensor:
    layout = memory_format_of(x)
    grad_out, x = grad_out.contiguous(memory_format=layout), x.contiguous(memory_format=layout)
    if x.numel() == 0:
        return _empty(weight_shape, x, layout).zero_()
    args = (grad_out, x, tuple(weight_shape), kernel_size, stride, padding, dilation)
    grad_w = dispatch.run("involution2d", "grad_weight", backend, x, (kernel_size, kernel_size), args)
    return grad_w.contiguous(memory_format=layout)


_involution2d_grad_weight = torch.library.custom_op("largeconv::involution2d_grad_weight",
                                                    _involution2d_grad_weight_impl, mutates_args=())


@_involution2d_grad_weight.register_fake
def _(grad_out, x, weight_shape, kernel_size, stride, padding, dilation, backend):
    return _empty(weight_shape, x, memory_format_of(x))


register_bilinear_double_backward(
    _involution2d_grad_input, _involution2d_grad_weight,
    lambda x, w, params: torch.ops.largeconv.involution2d(x, w, *params),
    torch.ops.largeconv.involution2d_grad_input, torch.ops.largeconv.involution2d_grad_weight)


def _involution2d_setup_context(ctx, inputs, output):
    x, weight, kernel_size, stride, padding, dilation, backend = inputs
    ctx.save_for_backward(x, weight)
    ctx.params = (kernel_size, stride, padding, dilation, backend)


def _involution2d_backward(ctx, grad):
    x, weight = ctx.saved_tensors
    grad = grad.contiguous(memory_format=memory_format_of(x))
    grad_x = grad_w = None
    grad_input = _grad_op(torch.ops.largeconv.involution2d_grad_input, _involution2d_grad_input_impl, grad)
    grad_weight = _grad_op(torch.ops.largeconv.involution2d_grad_weight, _involution2d_grad_weight_impl, grad)
    if ctx.needs_input_grad[0]:
        grad_x = grad_input(grad, weight, list(x.shape), *ctx.params)
        grad_x = grad_x.contiguous(memory_format=memory_format_of(x))  # a 1x1 grad is both layouts: take x's
    if ctx.needs_input_grad[1]:
        grad_w = grad_weight(grad, x, list(weight.shape), *ctx.params)
    return grad_x, grad_w, None, None, None, None, None


_involution2d.register_autograd(_involution2d_backward, setup_context=_involution2d_setup_context)
_involution2d_eager = eager_function(_involution2d_impl, _involution2d_setup_context, _involution2d_backward)


def involution2d(x, weight, kernel_size, stride=1, padding=None, dilation=1, backend=None):
    """Involution: a per-pixel, per-group kernel_size x kernel_size kernel applied to x (see the design).

    x (B, C, H, W); weight (B, G*K*K, Ho, Wo) with G dividing C. padding defaults to dilation*(K-1)//2.
    """
    x, weight = _autocast(x, weight)
    stride, padding, dilation, _, _ = involution2d_arguments(x, weight, kernel_size, stride, padding, dilation)
    kernel_size = int(kernel_size)  # a numpy integer passes the checks; the custom op takes a Python int
    if _composite_needed():
        return reference.involution2d_forward(x, weight, kernel_size, stride, padding, dilation)
    backend = dispatch.requested_backend(backend)
    layout = memory_format_of(x)
    x, weight = x.contiguous(memory_format=layout), weight.contiguous(memory_format=layout)
    op = torch.ops.largeconv.involution2d if dispatcher_needed(x, weight) else _involution2d_eager
    return op(x, weight, kernel_size, stride, padding, dilation, backend)
