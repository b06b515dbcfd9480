"""Involution on every backend that runs here against the float64 unfold definition (tests/numerics.py).

Through the public API (autograd: output, grad x, grad weight) for "torch", "cpu" and "triton" (the interpreter,
tests/conftest.py), and through the backend functions directly (memory format, dtype, fresh outputs). Outputs are
poisoned with NaN before kernels run, so an unwritten element fails.
"""
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import largeconv
from largeconv import cpu as cpu_backend, kernels as triton_backend
from largeconv.kernels import involution as triton_involution
from numerics import assert_close, involution_unfold, layout, poisoned_allocations

BACKENDS = ["torch", "cpu", "triton"]
DIRECT = {"cpu": cpu_backend, "triton": triton_backend}
LOW_PRECISION = (torch.float16, torch.bfloat16)


def default_padding(kernel_size, dilation):
    return dilation * (kernel_size - 1) // 2


def out_size(n, kernel_size, stride, padding, dilation):
    return (n + 2 * padding - dilation * (kernel_size - 1) - 1) // stride + 1


def make(b, c, g, h, w, k, stride=1, padding=None, dilation=1, dtype=torch.float32, channels_last=False,
         seed=None):
    """Fresh random x (B, C, H, W), weight (B, G*K*K, Ho, Wo) and output gradient, in `dtype` and layout."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    p = default_padding(k, dilation) if padding is None else padding
    ho, wo = out_size(h, k, stride, p, dilation), out_size(w, k, stride, p, dilation)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    shapes = ((b, c, h, w), (b, g * k * k, ho, wo), (b, c, ho, wo))
    return tuple(torch.randn(s, generator=gen).to(dtype).contiguous(memory_format=fmt) for s in shapes)


def run(backend, x, weight, grad, k, stride, padding, dilation):
    """largeconv.involution2d's output and gradients (x, weight) on `backend`, with allocations poisoned."""
    x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
    with poisoned_allocations():
        out = largeconv.involution2d(x, weight, k, stride, padding, dilation, backend=backend)
        grad_x, grad_w = torch.autograd.grad(out, (x, weight), grad)
    return out.detach(), grad_x, grad_w


def reference(x, weight, grad, k, stride, padding, dilation, dtype=torch.float64):
    """The unfold definition (written from the design, not largeconv's "torch" backend) with the raw arguments,
    and its autograd gradients, computed in `dtype`."""
    x, weight = x.detach().to(dtype).requires_grad_(), weight.detach().to(dtype).requires_grad_()
    out = involution_unfold(x, weight, k, stride, padding, dilation)
    grad_x, grad_w = torch.autograd.grad(out, (x, weight), grad.to(dtype))
    return out.detach(), grad_x, grad_w


def truncated_bf16(t):
    """t rounded toward zero to bfloat16 (the low 16 bits of the fp32 pattern dropped)."""
    bits = t.float().view(torch.int32) & -65536
    return bits.view(torch.float32).to(torch.bfloat16)


def compare(backend, results, x, weight, grad, k, stride, padding, dilation):
    """Output, grad x, grad weight vs the float64 reference (and the same-dtype one for fp16/bf16)."""
    exact = reference(x, weight, grad, k, stride, padding, dilation)
    if x.dtype in LOW_PRECISION:
        low = reference(x, weight, grad, k, stride, padding, dilation, x.dtype)
        if backend == "triton" and x.dtype == torch.bfloat16 and triton_involution._INTERPRET:
            # The interpreter converts fp32 to bf16 by truncation (a GPU rounds to nearest even), which alone
            # doubles the rounding error; judge against that rounding of the exact result instead.
            low = tuple(truncated_bf16(r) for r in exact)
    else:
        low = (None, None, None)
    fmt = layout(x)
    for name, got, ref, ref_low in zip(("output", "grad x", "grad weight"), results, exact, low):
        assert got.dtype == x.dtype, f"{name}: dtype {got.dtype}, expected {x.dtype}"
        assert got.is_contiguous(memory_format=fmt), f"{name}: memory format must follow the input's ({fmt})"
        assert_close(got, ref, ref_low, name)


def check(backend, x, weight, grad, k, stride=1, padding=None, dilation=1):
    results = run(backend, x, weight, grad, k, stride, padding, dilation)
    compare(backend, results, x, weight, grad, k, stride, padding, dilation)


def check_direct(backend, x, weight, grad, k, stride=1, padding=None, dilation=1):
    """The backend's three functions called as ops.py calls them; results are fresh tensors."""
    module = DIRECT[backend]
    p = default_padding(k, dilation) if padding is None else padding
    with poisoned_allocations():
        results = (module.involution2d_forward(x, weight, k, stride, p, dilation),
                   module.involution2d_grad_input(grad, weight, tuple(x.shape), k, stride, p, dilation),
                   module.involution2d_grad_weight(grad, x, tuple(weight.shape), k, stride, p, dilation))
    inputs = {t.untyped_storage().data_ptr() for t in (x, weight, grad)}
    assert not any(r.untyped_storage().data_ptr() in inputs for r in results), "results must be new tensors"
    compare(backend, results, x, weight, grad, k, stride, p, dilation)


# (B, C, G, H, W), K, stride, padding, dilation
EDGE_CASES = [
    ((2, 4, 2, 7, 6), 1, 1, None, 1),     # K = 1
    ((1, 4, 2, 3, 4), 7, 1, None, 1),     # K larger than the map
    ((1, 2, 1, 4, 5), 15, 1, None, 1),    # K = 15
    ((1, 4, 2, 5, 6), 4, 1, None, 1),     # even K: default padding shrinks the map
    ((2, 6, 3, 7, 9), 3, 2, None, 1),     # stride 2, odd H and W
    ((1, 4, 2, 8, 7), 5, 2, 1, 1),        # stride 2, explicit padding below the default
    ((1, 4, 2, 9, 9), 3, 1, None, 2),     # dilation 2
    ((1, 4, 1, 10, 8), 5, 2, 2, 2),       # stride 2 with dilation 2 (some phase classes get no tap), G = 1
    ((1, 4, 2, 6, 7), 3, 3, 2, 1),        # stride 3
    ((1, 4, 2, 13, 11), 5, 3, 4, 2),      # stride 3, dilation 2: one phase's taps 2 offsets apart
    ((1, 4, 2, 14, 15), 3, 2, 3, 4),      # stride 2, dilation 4: 2 offsets apart, odd phases get no tap
    ((2, 3, 3, 5, 6), 3, 1, 0, 1),        # G = C, no padding
    ((1, 2, 1, 1, 5), 3, 1, None, 1),     # H = 1
    ((1, 2, 1, 5, 5), 3, 1, 0, 2),        # 1x1 output: its layout is ambiguous, grad x must still follow x's
    ((1, 40, 2, 4, 5), 3, 1, 1, 1),       # 20 channels per group: several channel blocks per group
    ((1, 130, 1, 3, 4), 3, 2, 1, 1),      # 130 channels per group: the grad-weight reduction loops over blocks
]


def _case_id(case):
    shape, k, s, p, d = case
    return "x".join(map(str, shape)) + f"_k{k}s{s}p{p}d{d}"


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", EDGE_CASES, ids=_case_id)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_edge_cases_fp32(backend, case, channels_last):
    shape, k, stride, padding, dilation = case
    tensors = make(*shape, k, stride, padding, dilation, channels_last=channels_last)
    check(backend, *tensors, k, stride, padding, dilation)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_backend_functions(backend, dtype, channels_last):
    """Every dtype and layout through the backend functions directly, on stride 1 and stride 2 with dilation."""
    for shape, k, stride, padding, dilation in (((2, 6, 2, 6, 7), 3, 1, None, 1), ((1, 4, 2, 9, 8), 5, 2, 3, 2)):
        tensors = make(*shape, k, stride, padding, dilation, dtype, channels_last)
        check_direct(backend, *tensors, k, stride, padding, dilation)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", LOW_PRECISION, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_low_precision(backend, dtype, channels_last):
    tensors = make(2, 8, 2, 8, 7, 5, dtype=dtype, channels_last=channels_last)
    check(backend, *tensors, 5)


@st.composite
def configs(draw, max_size=10, max_kernel=7):
    k = draw(st.integers(1, max_kernel))
    stride, dilation = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    padding = draw(st.one_of(st.none(), st.integers(0, 4)))
    p = default_padding(k, dilation) if padding is None else padding
    smallest = max(1, dilation * (k - 1) + 1 - 2 * p)  # at least one output pixel
    h = draw(st.integers(smallest, max(smallest, max_size)))
    w = draw(st.integers(smallest, max(smallest, max_size)))
    groups, per_group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return dict(shape=(draw(st.integers(1, 2)), groups * per_group, groups, h, w), k=k, stride=stride,
                padding=padding, dilation=dilation, channels_last=draw(st.booleans()),
                seed=draw(st.integers(0, 2**31 - 1)))


def _check_config(backend, cfg):
    tensors = make(*cfg["shape"], cfg["k"], cfg["stride"], cfg["padding"], cfg["dilation"],
                   channels_last=cfg["channels_last"], seed=cfg["seed"])
    check(backend, *tensors, cfg["k"], cfg["stride"], cfg["padding"], cfg["dilation"])


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_random_configs(backend, cfg):
    _check_config(backend, cfg)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(max_size=6, max_kernel=5))
def test_random_configs_triton(cfg):
    _check_config("triton", cfg)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    x, weight, grad = make(0, 4, 2, 6, 5, 3)
    out, grad_x, grad_w = run(backend, x, weight, grad, 3, 1, None, 1)
    assert out.shape == grad.shape == (0, 4, 6, 5)
    assert grad_x.shape == x.shape and grad_w.shape == weight.shape


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_channels(backend):
    """No channels: an empty output, and a weight gradient that is not empty but zero, and must be written
    (allocations are poisoned, so leftover memory cannot pass for zeros)."""
    x, weight, grad = make(2, 0, 2, 6, 5, 3)
    out, grad_x, grad_w = run(backend, x, weight, grad, 3, 1, None, 1)
    assert out.shape == grad.shape == (2, 0, 6, 5) and grad_x.shape == x.shape
    assert grad_w.shape == weight.shape and torch.equal(grad_w, torch.zeros_like(grad_w)), grad_w


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_contiguous_inputs(backend):
    """A transposed x and a channel-sliced weight (neither NCHW- nor channels_last-contiguous)."""
    x = torch.randn(2, 7, 6, 4).transpose(1, 3)  # (2, 4, 6, 7)
    weight = torch.randn(2, 2 * 2 * 9, 3, 4)[:, ::2]  # (2, 18, 3, 4): G = 2, K = 3, stride 2
    grad = torch.randn(2, 4, 3, 4)
    check(backend, x, weight, grad, 3, 2)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_triton_int64_offsets(monkeypatch, channels_last):
    """The 64-bit tile-offset variant (used when one image spans 2**31 elements) gives the same results."""
    monkeypatch.setattr(triton_involution, "_INT32_SPAN", 1)
    tensors = make(2, 6, 2, 7, 6, 3, 2, channels_last=channels_last)
    check_direct("triton", *tensors, 3, 2)


# 1: one group per block; 100: two of the first case's three groups (40 elements each) per block; 400: whole images
@pytest.mark.parametrize("block_elems", [1, 100, 400], ids=lambda n: f"block{n}")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cpu_blocking(monkeypatch, block_elems, channels_last):
    """Blocks of single groups, of several groups and of several images all cover the whole tensor."""
    monkeypatch.setattr(cpu_backend, "INVOLUTION_BLOCK_ELEMS", block_elems)
    tensors = make(3, 6, 3, 5, 4, 3, channels_last=channels_last)
    check_direct("cpu", *tensors, 3)
    tensors = make(3, 6, 3, 7, 6, 3, 2, 1, 2, channels_last=channels_last)
    check_direct("cpu", *tensors, 3, 2, 1, 2)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_gradcheck_float64(backend):
    x, weight, _ = make(1, 4, 2, 5, 6, 3, 2, 1, 2, dtype=torch.float64)
    inputs = (x.requires_grad_(), weight.requires_grad_())
    assert torch.autograd.gradcheck(lambda a, b: largeconv.involution2d(a, b, 3, 2, 1, 2, backend=backend), inputs)


def test_opcheck():
    x, weight, grad = make(2, 4, 2, 7, 6, 3, 2)
    params = (3, 2, 1, 1, "cpu")
    for op, args in ((torch.ops.largeconv.involution2d, (x.requires_grad_(), weight.requires_grad_(), *params)),
                     (torch.ops.largeconv.involution2d_grad_input, (grad, weight.detach(), list(x.shape), *params)),
                     (torch.ops.largeconv.involution2d_grad_weight, (grad, x.detach(), list(weight.shape), *params))):
        torch.library.opcheck(op, args)


def test_backends_accept_cpu_tensors():
    x = torch.randn(1, 4, 5, 5)
    assert cpu_backend.unsupported_reason("involution2d", x, (7, 7)) is None
    assert triton_backend.unsupported_reason("involution2d", x, (7, 7)) is None  # under TRITON_INTERPRET=1


COMPILE_CHECK = r"""
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from largeconv.kernels import involution as inv

assert not inv._INTERPRET
nchw_unit = {"sxw", "sww", "syw", "sdyw", "sdxw", "sdww"}
nhwc_unit = {"sxc", "swc", "syc", "sdyc", "sdxc", "sdwc"}
variants = [("*fp32", tl.float32, tl.int32, nchw_unit, 3, 2, 16, True),
            ("*bf16", tl.float32, tl.int32, nhwc_unit, 7, 1, 64, False),
            ("*fp16", tl.float32, tl.int64, set(), 5, 2, 16, True),
            ("*fp64", tl.float64, tl.int32, nchw_unit, 1, 1, 4, True)]
for kernel in (inv._involution_fwd_kernel, inv._involution_grad_input_kernel, inv._involution_grad_weight_kernel):
    fn = kernel.fn
    for ptr, acc, idx, unit, k, stride, block_c, one_cblk in variants:
        consts = dict(K=k, STRIDE=stride, ACC=acc, IDX=idx, BLOCK_C=block_c, BLOCK_P=64, ONE_CBLK=one_cblk)
        consts = {n: v for n, v in consts.items() if n in fn.arg_names}
        consts.update({n: 1 for n in unit if n in fn.arg_names})
        signature = {n: "constexpr" if n in consts else ptr if n.endswith("_ptr") else "i32" for n in fn.arg_names}
        triton.compile(ASTSource(fn, signature, consts), target=GPUTarget("cuda", 90, 32),
                       options=dict(num_warps=4, num_stages=1))
print("compiled")
"""


def test_triton_kernels_compile_for_sm90():
    """The interpreter accepts code a GPU compile rejects: compile every kernel for sm_90 (Triton's ptxas runs on
    the CPU, no GPU needed) in a fresh interpreter-free process."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, "-c", COMPILE_CHECK], env=env, capture_output=True, text=True)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stride", [1, 2])
def test_non_finite_values_stay_where_unfold_puts_them(backend, stride):
    """Inf and NaN in x, an Inf kernel value on a tap that reads padding (0 * Inf = NaN there too), and a NaN in
    grad_out: output, grad x and grad weight hold NaN/Inf exactly where the float64 unfold definition does, and its
    finite values elsewhere (no backend may spread them through a pass, a window or a block)."""
    x, weight, grad = make(2, 6, 2, 9, 8, 3, stride)
    x[0, 1, 2, 3], x[1, 4, 5, 5] = float("inf"), float("nan")
    weight[1, 9 + 0, 0, 0] = float("inf")  # group 1, tap (0, 0) at output (0, 0): reads the top-left padding
    grad[0, 5, 1, 2] = float("nan")
    results = run(backend, x, weight, grad, 3, stride, None, 1)
    for name, got, want in zip(("output", "grad x", "grad weight"), results,
                               reference(x, weight, grad, 3, stride, None, 1)):
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), name
        assert want.isfinite().any(), name
        assert_close(got[want.isfinite()], want[want.isfinite()], None, name)
