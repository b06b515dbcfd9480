"""Every derivative F.conv2d has: double backward, forward-mode AD (forward_ad, torch.func.jvp), torch.func.grad,
jacrev, vmap; checked in float64 against PyTorch's own ops differentiated the same way. Never zeros."""
import importlib

import numpy as np
import pytest
import torch
import torch.autograd.forward_ad as forward_ad
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

import largeconv
from largeconv.dispatch import backend_module

BACKENDS = ["torch", "cpu", "triton"]
F64 = dict(dtype=torch.float64)


def _unfold_involution(x, weight, kernel_size, stride, padding, dilation):
    """The definition (design.md), written here independently of largeconv."""
    batch, channels = x.shape[:2]
    groups = weight.shape[1] // kernel_size ** 2
    out_hw = weight.shape[2:]
    cols = F.unfold(x, kernel_size, dilation, padding, stride).view(batch, groups, channels // groups,
                                                                   kernel_size ** 2, *out_hw)
    return (cols * weight.view(batch, groups, 1, kernel_size ** 2, *out_hw)).sum(3).view(batch, channels, *out_hw)


# (kernel, stride, padding, dilation): odd, even "same" (asymmetric), strided, dilated, FFT-sized (13x13 on cpu)
DW_CASES = [(3, 1, "same", 1), (4, 1, "same", 1), (3, 2, 1, 1), (3, 1, 2, 2), (13, 1, "same", 1)]


def _dw_inputs(kernel, multiplier=2):
    x = torch.randn(1, 2, 6, 7, **F64)
    w = torch.randn(2 * multiplier, 1, kernel, kernel, **F64)
    b = torch.randn(2 * multiplier, **F64)
    return x, w, b


# The Triton interpreter takes ~40 s per gradgradcheck: it runs the first case only (the grad ops' correctness on every
# geometry is checked by the other test files; here it is their wiring into double backward).
DOUBLE_BACKWARD = [(backend, case) for backend in BACKENDS for case in DW_CASES
                   if backend != "triton" or case == DW_CASES[0]]


@pytest.mark.parametrize("backend,case", DOUBLE_BACKWARD, ids=str)
def test_dwconv_double_backward(backend, case):
    kernel, stride, padding, dilation = case
    x, w, b = (t.requires_grad_() for t in _dw_inputs(kernel))

    def f(x, w, b):
        return largeconv.dwconv2d(x, w, b, stride, padding, dilation, backend=backend)

    assert gradgradcheck(f, (x, w, b), fast_mode=True)


@pytest.mark.parametrize("backend", BACKENDS)
def test_dwconv_double_backward_matches_f_conv2d(backend):
    """A gradient penalty (d/dw of |dL/dx|^2) equals F.conv2d's."""
    x, w, _ = _dw_inputs(3)

    def penalty_grad(conv):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        (grad_x,) = torch.autograd.grad(conv(xr, wr).square().sum(), xr, create_graph=True)
        return torch.autograd.grad(grad_x.square().sum(), (xr, wr))

    ours = penalty_grad(lambda a, b: largeconv.dwconv2d(a, b, backend=backend))
    ref = penalty_grad(lambda a, b: F.conv2d(a, b, None, 1, "same", 1, a.shape[1]))
    for o, r in zip(ours, ref):
        assert torch.allclose(o, r, rtol=1e-9, atol=1e-9)
        assert r.abs().max() > 0


@pytest.mark.parametrize("backend,stride", [("torch", 1), ("torch", 2), ("cpu", 1), ("cpu", 2), ("triton", 2)])
def test_involution_double_backward(backend, stride):
    x = torch.randn(1, 4, 5, 6, **F64, requires_grad=True)
    out_hw = ((5 - 1) // stride + 1, (6 - 1) // stride + 1)
    w = torch.randn(1, 2 * 9, *out_hw, **F64, requires_grad=True)
    assert gradgradcheck(lambda x, w: largeconv.involution2d(x, w, 3, stride, backend=backend), (x, w),
                         fast_mode=True)


def _tangents(*tensors):
    return tuple(torch.randn_like(t) for t in tensors)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", DW_CASES[:4], ids=str)
def test_dwconv_jvp(backend, case):
    kernel, stride, padding, dilation = case
    x, w, b = _dw_inputs(kernel)
    primals, tangents = (x, w, b), _tangents(x, w, b)
    _, ours = torch.func.jvp(lambda x, w, b: largeconv.dwconv2d(x, w, b, stride, padding, dilation,
                                                                backend=backend), primals, tangents)
    _, ref = torch.func.jvp(lambda x, w, b: F.conv2d(x, w, b, stride, padding, dilation, groups=2),
                            primals, tangents)
    assert ref.abs().max() > 0
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("module_form", [False, True])
def test_dwconv_forward_ad(module_form):
    x, w, b = _dw_inputs(5, multiplier=1)
    tx = torch.randn_like(x)
    _, ref = torch.func.jvp(lambda x: F.conv2d(x, w, b, 1, 2, 1, groups=2), (x,), (tx,))
    conv = largeconv.LargeDWConv2d(2, 5, dtype=torch.float64)
    with torch.no_grad():
        conv.weight.copy_(w)
        conv.bias.copy_(b)
    with forward_ad.dual_level():
        dual = forward_ad.make_dual(x, tx)
        out = conv(dual) if module_form else largeconv.dwconv2d(dual, w, b, padding=2)
        tangent = forward_ad.unpack_dual(out).tangent
    assert tangent is not None and torch.allclose(tangent, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_involution_jvp(backend, stride):
    x = torch.randn(2, 4, 5, 6, **F64)
    out_hw = ((5 - 1) // stride + 1, (6 - 1) // stride + 1)
    w = torch.randn(2, 2 * 9, *out_hw, **F64)
    tangents = _tangents(x, w)
    _, ours = torch.func.jvp(lambda x, w: largeconv.involution2d(x, w, 3, stride, backend=backend), (x, w), tangents)
    _, ref = torch.func.jvp(lambda x, w: _unfold_involution(x, w, 3, stride, 1, 1), (x, w), tangents)
    assert ref.abs().max() > 0
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-10)


def test_func_transforms():
    """torch.func.grad, jacrev and vmap(grad(...)) (per-sample gradients) work and equal F.conv2d's."""
    x, w, _ = _dw_inputs(3, multiplier=1)

    def ours(x, w):
        return largeconv.dwconv2d(x, w)

    def ref(x, w):
        return F.conv2d(x, w, None, 1, "same", 1, groups=2)

    for transform in (lambda f: torch.func.grad(lambda x, w: f(x, w).square().sum(), argnums=(0, 1)),
                      lambda f: torch.func.jacrev(f, argnums=1),
                      lambda f: torch.func.vmap(torch.func.grad(lambda x, w: f(x[None], w).square().sum(),
                                                                argnums=1), in_dims=(0, None))):
        got, expected = transform(ours)(x, w), transform(ref)(x, w)
        for g, e in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected)):
            assert torch.allclose(g, e, rtol=1e-10, atol=1e-10)
    xi, wi = torch.randn(3, 2, 4, 5, 5, **F64), torch.randn(3, 2, 9, 5, 5, **F64)
    batched = torch.func.vmap(lambda x, w: largeconv.involution2d(x, w, 3))(xi, wi)
    assert torch.allclose(batched, torch.stack([_unfold_involution(a, b, 3, 1, 1, 1) for a, b in zip(xi, wi)]))


def test_grad_ops_gradcheck_direct():
    """The grad ops are differentiable when called directly (torch.ops), as autograd's double backward calls them."""
    g = torch.randn(1, 4, 6, 7, **F64, requires_grad=True)
    w = torch.randn(4, 1, 3, 3, **F64, requires_grad=True)
    x = torch.randn(1, 2, 6, 7, **F64, requires_grad=True)
    geometry = ([1, 1], [1, 1, 1, 1], [1, 1], "cpu")
    assert gradcheck(lambda g, w: torch.ops.largeconv.dwconv2d_grad_input(g, w, [1, 2, 6, 7], *geometry), (g, w))
    assert gradcheck(lambda g, x: torch.ops.largeconv.dwconv2d_grad_weight(g, x, [4, 1, 3, 3], *geometry), (g, x))


def test_weight_grad_keeps_the_weight_layout():
    """A channels_last weight (model.to(memory_format=torch.channels_last) makes one) gets a gradient with its strides,
    as nn.Conv2d's does: DDP warns when grad strides differ from the parameter's bucket view."""
    conv = largeconv.LargeDWConv2d(4, 3).to(memory_format=torch.channels_last)
    reference = torch.nn.Conv2d(4, 4, 3, padding=1, groups=4).to(memory_format=torch.channels_last)
    assert conv.weight.stride() != torch.empty(conv.weight.shape).stride()  # the case is real
    x = torch.randn(2, 4, 8, 8).contiguous(memory_format=torch.channels_last)
    (ours,) = torch.autograd.grad(conv(x).sum(), conv.weight)  # the raw gradient, as DDP's hooks see it
    (theirs,) = torch.autograd.grad(reference(x).sum(), reference.weight)
    assert ours.stride() == conv.weight.stride() == theirs.stride()


def test_numpy_integers_are_accepted():
    x, w = torch.randn(1, 2, 9, 9), torch.randn(2, 1, 3, 3)
    got = largeconv.dwconv2d(x, w, stride=np.int64(2), padding=(np.int32(1), np.int64(0)), dilation=np.int64(1))
    assert torch.allclose(got, F.conv2d(x, w, None, 2, (1, 0), 1, 2), atol=1e-5)
    weight = torch.randn(1, 9, 5, 5)
    out = largeconv.involution2d(torch.randn(1, 2, 9, 9), weight, np.int64(3), stride=np.int64(2))
    assert out.shape == (1, 2, 5, 5)
    assert backend_module("torch") is largeconv.reference


EAGER_OPS = {  # a call of the public function, the module of its custom ops, argument shapes (float64)
    "dwconv2d": (lambda x, w: largeconv.dwconv2d(x, w, backend="cpu"), "ops", (2, 3, 9, 8), (3, 1, 5, 5)),
    "dwconv1d": (lambda x, w: largeconv.dwconv1d(x, w, backend="cpu"), "conv1d", (2, 3, 40), (3, 1, 9)),
    "involution2d": (lambda x, w: largeconv.involution2d(x, w, 3, backend="cpu"), "ops", (2, 4, 7, 6), (2, 9, 7, 6)),
}


@pytest.mark.parametrize("name", EAGER_OPS)
def test_eager_calls_skip_the_dispatcher_and_give_the_same_derivatives(monkeypatch, name):
    """Eager forward and backward run the custom ops' implementations without the dispatcher (largeconv.ops.
    eager_function); double backward records the grad custom ops; meta tensors still take the fake kernels. Each
    result against PyTorch's own op differentiated the same way, in float64."""
    call, module_name, x_shape, w_shape = EAGER_OPS[name]
    module = importlib.import_module(f"largeconv.{module_name}")
    direct = []  # grad implementations called directly (eager backward), not through their custom ops
    for direction in ("grad_input", "grad_weight"):
        impl = getattr(module, f"_{name}_{direction}_impl")
        monkeypatch.setattr(module, f"_{name}_{direction}_impl",
                            lambda *a, _d=direction, _impl=impl: direct.append(_d) or _impl(*a))
    x, w = torch.randn(x_shape, **F64, requires_grad=True), torch.randn(w_shape, **F64, requires_grad=True)
    reference = {"dwconv2d": lambda x, w: F.conv2d(x, w, None, 1, "same", 1, x.shape[1]),
                 "dwconv1d": lambda x, w: F.conv1d(x, w, None, 1, "same", 1, x.shape[1]),
                 "involution2d": lambda x, w: _unfold_involution(x, w, 3, 1, 1, 1)}[name]
    out, expected = call(x, w), reference(x, w)
    assert type(out.grad_fn).__name__ == "EagerOpBackward"  # the custom op's node would be named after the op
    grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, (x, w), grad_out)
    assert direct == ["grad_input", "grad_weight"]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(grads, torch.autograd.grad(expected, (x, w), grad_out))

    def second_order(fn):  # the gradient of <grads, v> with respect to (x, w), an unused input as zeros
        grads = torch.autograd.grad(fn(x, w), (x, w), grad_out, create_graph=True)
        second = torch.autograd.grad(sum((g * v).sum() for g, v in zip(grads, directions)), (x, w),
                                     allow_unused=True)
        return [torch.zeros_like(t) if s is None else s for s, t in zip(second, (x, w))]
    directions = [torch.randn_like(x), torch.randn_like(w)]
    direct.clear()
    ours = second_order(call)
    assert direct == []  # create_graph: the grad custom ops, which autograd records
    torch.testing.assert_close(ours, second_order(reference))
    assert all(s.abs().sum() > 0 for s in ours)
    meta = call(torch.empty(x_shape, device="meta"), torch.empty(w_shape, device="meta"))
    assert meta.device.type == "meta" and meta.shape == out.shape
