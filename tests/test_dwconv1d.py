"""largeconv.dwconv1d and LargeDWConv1d against F.conv1d in float64 (issue #15 part 2)."""
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
import torch.nn.functional as F
from torch import nn

import largeconv
from largeconv import cpu
from largeconv.conv1d import LargeDWConv1d, dwconv1d

from numerics import assert_close, poisoned_allocations

BACKENDS = ["torch", "cpu", "triton", "auto"]  # triton runs under TRITON_INTERPRET=1 (tests/conftest.py)

# (N, C, L, m, K, stride, padding, dilation, bias): odd/even K, "same" (asymmetric for even K), "valid", int and
# 1-tuple padding, stride 2/3, dilation, channel multiplier, no bias, K longer than L with padding, padding larger
# than the kernel's span, spans of several 32-wide blocks.
CASES = [
    (2, 5, 23, 1, 7, 1, "same", 1, True),
    (1, 3, 17, 2, 6, 1, "same", 1, False),
    (1, 2, 15, 1, 4, 1, "same", 3, True),
    (2, 4, 19, 1, 5, 2, 2, 1, True),
    (1, 3, 20, 3, 4, 3, (1,), 2, True),
    (2, 2, 9, 1, 13, 1, 6, 1, True),
    (1, 6, 40, 1, 31, 1, "valid", 1, False),
    (1, 3, 10, 1, 3, 1, 4, 1, True),
    (1, 4, 70, 1, 31, 1, "same", 2, True),  # the cpu path's band spans 3 blocks of 32
    (1, 2, 100, 1, 65, 1, "same", 1, False),  # span 64: exactly 2 blocks past the first
    (2, 3, 64, 1, 31, 1, "same", 1, True),  # the cpu path reads x where it lies (blocks of 32), three bands
    (1, 2, 48, 1, 9, 1, 20, 1, True),  # padding past the span: output blocks no input block reaches
]


def _inputs(n, c, length, m, k, bias, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, length, generator=gen)
    w = torch.randn(c * m, 1, k, generator=gen) / k ** 0.5
    b = torch.randn(c * m, generator=gen) if bias else None
    return x.to(dtype), w.to(dtype), None if b is None else b.to(dtype)


def _run(fn, x, w, b, grad_seed=1):
    inputs = [t.detach().requires_grad_() for t in (x, w, b) if t is not None]
    out = fn(*inputs) if b is not None else fn(*inputs, None)
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_seed)).to(out.dtype)
    return out.detach(), torch.autograd.grad(out, inputs, grad)


def _reference(x, w, b, stride, padding, dilation, dtype):
    """F.conv1d with the raw user arguments, in `dtype`."""
    x, w, b = (None if t is None else t.to(dtype) for t in (x, w, b))
    return _run(lambda x, w, b: F.conv1d(x, w, b, stride, padding, dilation, groups=x.shape[1]), x, w, b)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_matches_conv1d_float64(backend, case):
    n, c, length, m, k, stride, padding, dilation, bias = case
    x, w, b = _inputs(n, c, length, m, k, bias, torch.float32)
    out, grads = _run_poisoned(backend, x, w, b, stride, padding, dilation)
    ref, ref_grads = _reference(x, w, b, stride, padding, dilation, torch.float64)
    assert_close(out, ref)
    for name, got, want in zip(("grad x", "grad weight", "grad bias"), grads, ref_grads):
        assert_close(got, want, what=name)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(length=st.integers(1, 90), kernel=st.integers(1, 40), dilation=st.integers(1, 3),
       pads=st.tuples(st.integers(0, 50), st.integers(0, 50)), block=st.sampled_from([4, 5, 8, 16]))
def test_cpu_banded_path_every_geometry(monkeypatch, length, kernel, dilation, pads, block):
    """The "cpu" backend's blocked Toeplitz products (stride 1) for any length, kernel, dilation and padding, with
    blocks short enough that a kernel spans many bands; x used where it lies when the block divides its length."""
    span = dilation * (kernel - 1)
    if length + sum(pads) <= span:
        return
    monkeypatch.setattr(cpu, "CONV1D_BLOCKS", (block,))
    monkeypatch.setattr(cpu, "CONV1D_CHUNK_ELEMS", 1)  # one channel per chunk: the chunk loop runs
    x, w, b = _inputs(2, 3, length, 1, kernel, True, torch.float64)
    op = torch.ops.largeconv.dwconv1d  # the op takes (left, right) padding, as "same" makes for even spans
    out, grads = _run(lambda x, w, b: op(x, w, b, 1, list(pads), dilation, "cpu"), x, w, b)
    ref, ref_grads = _reference(F.pad(x, pads), w, b, 1, 0, dilation, torch.float64)
    assert_close(out, ref)
    assert_close(grads[0], ref_grads[0][:, :, pads[0]:pads[0] + length], what="grad x")
    for name, got, want in zip(("grad weight", "grad bias"), grads[1:], ref_grads[1:]):
        assert_close(got, want, what=name)


def _run_poisoned(backend, x, w, b, stride, padding, dilation):
    with poisoned_allocations():
        return _run(lambda x, w, b: dwconv1d(x, w, b, stride, padding, dilation, backend=backend), x, w, b)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_dtypes(backend, dtype, multiplier):
    x, w, b = _inputs(2, 4, 33, multiplier, 9, True, dtype)
    out, grads = _run_poisoned(backend, x, w, b, 1, "same", 1)
    ref, ref_grads = _reference(x, w, b, 1, "same", 1, torch.float64)
    assert out.dtype == dtype and all(g.dtype == dtype for g in grads)
    if dtype == torch.float64:
        lowp, lowp_grads = None, (None,) * 3
    else:  # the same computation by PyTorch in fp32 rounded to the dtype sets the bound (tests/numerics.py)
        lowp, lowp_grads = (t.to(dtype) if isinstance(t, torch.Tensor) else tuple(g.to(dtype) for g in t)
                            for t in _reference(x, w, b, 1, "same", 1, torch.float32))
    assert_close(out, ref, lowp)
    for name, got, want, low in zip(("grad x", "grad weight", "grad bias"), grads, ref_grads, lowp_grads):
        assert_close(got, want, low, what=name)


def test_large_kernel_conformer_like():
    """K = 31 at a (small) Conformer-like shape on the fast CPU path, fp32 vs float64."""
    x, w, b = _inputs(2, 16, 200, 1, 31, True, torch.float32)
    out, grads = _run_poisoned("cpu", x, w, b, 1, "same", 1)
    ref, ref_grads = _reference(x, w, b, 1, "same", 1, torch.float64)
    assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        assert_close(got, want)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_gradcheck_and_gradgradcheck(backend):
    x, w, b = (t.requires_grad_() for t in _inputs(1, 2, 11, 2, 4, True, torch.float64))
    fn = lambda x, w, b: dwconv1d(x, w, b, 2, 1, 2, backend=backend)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, w, b), fast_mode=True)
    assert torch.autograd.gradgradcheck(fn, (x, w, b), fast_mode=True)


def test_opcheck():
    x, w, b = _inputs(2, 3, 12, 2, 5, True, torch.float32)
    g = torch.randn(2, 6, 12)
    for op, args in ((torch.ops.largeconv.dwconv1d.default, (x, w, b, 1, [2, 2], 1, "cpu")),
                     (torch.ops.largeconv.dwconv1d_grad_input.default, (g, w, [2, 3, 12], 1, [2, 2], 1, "cpu")),
                     (torch.ops.largeconv.dwconv1d_grad_weight.default, (g, x, [6, 1, 5], 1, [2, 2], 1, "cpu"))):
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor",
                                                    "test_aot_dispatch_dynamic"))


def test_compile_fullgraph():
    module = LargeDWConv1d(4, 7, backend="cpu")
    x = torch.randn(2, 4, 20, requires_grad=True)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    out = compiled(x)
    out.sum().backward()
    ref = F.conv1d(x.detach().double(), module.weight.double(), module.bias.double(), padding=3, groups=4)
    assert_close(out.detach(), ref)
    assert x.grad is not None and module.weight.grad is not None


def test_autocast_like_conv1d():
    x, w, b = _inputs(2, 4, 16, 1, 5, True, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dwconv1d(x, w, b, backend="cpu")
        ref = F.conv1d(x, w, b, padding="same", groups=4)
    assert out.dtype == ref.dtype == torch.bfloat16


def test_forward_ad_and_func():
    x, w, b = _inputs(1, 3, 10, 1, 3, True, torch.float64)
    tx = torch.randn_like(x)
    _, jvp = torch.func.jvp(lambda x: dwconv1d(x, w, b, backend="cpu"), (x,), (tx,))
    _, ref = torch.func.jvp(lambda x: F.conv1d(x, w, b, padding="same", groups=3), (x,), (tx,))
    assert torch.allclose(jvp, ref)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("where", ["x", "weight", "bias", "grad"])
def test_non_finite_stays_where_conv1d_puts_it(backend, where):
    """NaN/Inf in any operand (the cpu path's blocked products would spread them over a block: it must notice)."""
    x, w, b = _inputs(2, 3, 80, 1, 9, True, torch.float32)
    if where == "x":
        x[0, 1, 40], x[1, 2, 5] = float("inf"), float("nan")
    elif where == "weight":
        w[1, 0, 4] = float("inf")
    elif where == "bias":
        b[2] = float("nan")
    grad = torch.randn(2, 3, 80, generator=torch.Generator().manual_seed(1))
    if where == "grad":
        grad[1, 0, 33], grad[0, 2, 70] = float("nan"), float("-inf")

    def run(fn):
        inputs = [t.detach().requires_grad_() for t in (x, w, b)]
        out = fn(*inputs)
        return out.detach(), torch.autograd.grad(out, inputs, grad.to(out.dtype))

    out, grads = run(lambda x, w, b: dwconv1d(x, w, b, backend=backend))
    ref, ref_grads = run(lambda x, w, b: F.conv1d(x.double(), w.double(), b.double(), padding="same", groups=3))
    for got, want in zip((out, *grads), (ref, *ref_grads)):
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf())
        finite = want.isfinite()
        assert_close(got[finite], want[finite])


def test_empty_batch():
    x = torch.randn(0, 4, 10, requires_grad=True)
    w = torch.randn(4, 1, 3, requires_grad=True)
    out = dwconv1d(x, w, None, backend="cpu")
    assert out.shape == (0, 4, 10)
    out.sum().backward()
    assert torch.equal(w.grad, torch.zeros_like(w))


@pytest.mark.parametrize("args, match", [
    (dict(x=torch.randn(2, 4)), "x must be 3-D"),
    (dict(weight=torch.randn(4, 2, 3)), "weight must be"),
    (dict(weight=torch.randn(6, 1, 3)), "not a multiple"),
    (dict(bias=torch.randn(3)), "bias must have shape"),
    (dict(stride=0), "stride must be >= 1"),
    (dict(stride=2), "padding='same' needs stride 1"),
    (dict(padding="full"), "padding must be"),
    (dict(padding=-1), "padding must be >= 0"),
    (dict(dilation=(1, 1)), "dilation must be an int"),
    (dict(padding=0, weight=torch.randn(4, 1, 11)), "larger than the padded input"),
    (dict(x=torch.randn(2, 4, 10).long()), "x must be a floating-point"),
    (dict(weight=torch.randn(4, 1, 3).double()), "weight dtype"),
    (dict(backend="gpu"), "backend must be one of"),
])
def test_bad_input(args, match):
    call = dict(x=torch.randn(2, 4, 10), weight=torch.randn(4, 1, 3), bias=None)
    call.update(args)
    with pytest.raises((ValueError, TypeError), match=match):
        dwconv1d(**call)


def test_triton_needs_cuda_or_interpreter():
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run"):
        dwconv1d(torch.randn(1, 2, 8), torch.randn(2, 1, 3), backend="cuda")


def test_module_is_a_conv1d_and_from_conv1d():
    conv = nn.Conv1d(8, 16, 31, padding=15, groups=8, bias=True)
    module = LargeDWConv1d.from_conv1d(conv, backend="cpu")
    assert isinstance(module, nn.Conv1d) and module.weight is conv.weight and module.bias is conv.bias
    for name in ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                 "padding_mode"):
        assert getattr(module, name) == getattr(conv, name), name
    assert module.channel_multiplier == 2
    x = torch.randn(2, 8, 50)
    ref = F.conv1d(x.double(), conv.weight.double(), conv.bias.double(), 1, 15, 1, 8).detach()
    assert_close(module(x).detach(), ref)
    assert_close(module(x[0]).detach(), ref[0])  # unbatched
    fresh = LargeDWConv1d(8, 31, channel_multiplier=2)
    assert fresh.padding == (15,) and fresh.load_state_dict(conv.state_dict())
    with pytest.raises(ValueError, match="not depthwise"):
        LargeDWConv1d.from_conv1d(nn.Conv1d(8, 8, 31, groups=2))


def test_convert_swaps_large_depthwise_conv1d():
    model = nn.Sequential(nn.Conv1d(8, 8, 1), nn.Conv1d(8, 8, 31, padding=15, groups=8),
                          nn.Conv1d(8, 8, 3, padding=1, groups=8))
    x = torch.randn(2, 8, 40)
    with torch.no_grad():
        before = model.double()(x.double())
    model = largeconv.convert(model.float())
    assert type(model[0]) is nn.Conv1d and isinstance(model[1], LargeDWConv1d) and type(model[2]) is nn.Conv1d
    with torch.no_grad():
        assert_close(model(x), before)
