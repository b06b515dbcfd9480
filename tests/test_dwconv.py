"""largeconv.dwconv2d on every backend that runs here against the float64 F.conv2d reference."""
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st, HealthCheck

import largeconv
from numerics import assert_close, layout, poisoned_allocations

CPU_BACKENDS = ["torch", "cpu", "triton"]  # triton runs under TRITON_INTERPRET=1 (tests/conftest.py)


def output_grad(shape, dtype):
    """The output gradient every run and reference uses: one fixed random tensor, rounded to the inputs' dtype."""
    return torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)


def run(backend, x, weight, bias, stride, padding, dilation):
    """Output and gradients (x, weight, bias) of dwconv2d on `backend`, with outputs poisoned before kernels run."""
    x = x.detach().requires_grad_()
    weight = weight.detach().requires_grad_()
    bias = None if bias is None else bias.detach().requires_grad_()
    with poisoned_allocations():
        out = largeconv.dwconv2d(x, weight, bias, stride, padding, dilation, backend=backend)
        grad = output_grad(out.shape, x.dtype).contiguous(memory_format=layout(out))
        inputs = [t for t in (x, weight, bias) if t is not None]
        grads = torch.autograd.grad(out, inputs, grad)
    return out.detach(), grads


def reference(x, weight, bias, stride, padding, dilation, dtype=torch.float64, absolute=False):
    """F.conv2d called with the user's raw arguments (the definition: no largeconv argument handling or autograd
    involved) and its autograd gradients, computed in `dtype` (on |inputs| and |grad| if `absolute`)."""
    inputs = [None if t is None else t.detach().to(dtype) for t in (x, weight, bias)]
    if absolute:
        inputs = [None if t is None else t.abs() for t in inputs]
    inputs = [None if t is None else t.requires_grad_() for t in inputs]
    with warnings.catch_warnings():  # an even kernel with "same" makes F.conv2d copy the input: fine here
        warnings.filterwarnings("ignore", "Using padding='same' with even kernel")
        out = F.conv2d(*inputs, stride, padding, dilation, groups=x.shape[1])
    grad = output_grad(out.shape, x.dtype).to(dtype)
    grads = torch.autograd.grad(out, [t for t in inputs if t is not None], grad.abs() if absolute else grad)
    return out.detach(), grads


def check(backend, x, weight, bias=None, stride=1, padding=0, dilation=1):
    out, grads = run(backend, x, weight, bias, stride, padding, dilation)
    ref, ref_grads = reference(x, weight, bias, stride, padding, dilation)
    low, low_grads = (reference(x, weight, bias, stride, padding, dilation, x.dtype)
                      if x.dtype in (torch.float16, torch.bfloat16) else (None, [None] * len(grads)))
    assert out.dtype == x.dtype
    # layouts as F.conv2d's: the output follows the input's, and so does grad x, also when the output is 1x1 (and
    # so both layouts at once)
    assert out.is_contiguous(memory_format=layout(ref)), f"output memory format must be {layout(ref)}, as F.conv2d's"
    assert grads[0].is_contiguous(memory_format=layout(ref_grads[0])), \
        f"grad x memory format must be {layout(ref_grads[0])}, as F.conv2d's"
    assert all(g.is_contiguous() for g in grads[1:]), "grad weight and grad bias must be contiguous"
    mag, mag_grads = reference(x, weight, bias, stride, padding, dilation, absolute=True)
    assert_close(out, ref, low, "output", mag)
    for name, g, r, l, m in zip(("grad x", "grad weight", "grad bias"), grads, ref_grads, low_grads, mag_grads):
        assert g.dtype == x.dtype
        assert_close(g, r, l, name, m)


def make(n, c, h, w, kernel, multiplier=1, bias=True, dtype=torch.float32, channels_last=False):
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    x = torch.randn(n, c, h, w).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight = torch.randn(c * multiplier, 1, kh, kw).to(dtype)
    b = torch.randn(c * multiplier).to(dtype) if bias else None
    return x, weight, b


# (shape n, c, h, w), kernel, multiplier, stride, padding, dilation: the edge cases
EDGE_CASES = [
    ((2, 3, 9, 9), 1, 1, 1, 0, 1),            # K = 1
    ((2, 3, 5, 6), 9, 1, 1, "same", 1),       # K larger than the input
    ((1, 2, 1, 7), (1, 3), 1, 1, "same", 1),  # H = 1
    ((1, 2, 7, 1), 3, 1, 1, (1, 1), 1),       # W = 1
    ((2, 3, 9, 7), 3, 1, 2, 1, 1),            # stride 2, odd sizes
    ((2, 2, 11, 10), 5, 1, 2, 2, 1),          # stride 2, even/odd
    ((1, 2, 12, 12), 7, 1, 1, "same", 2),     # dilation with a large kernel
    ((1, 2, 8, 8), 4, 1, 1, "same", 1),       # even kernel, asymmetric "same" padding
    ((2, 2, 9, 9), 3, 2, 1, 1, 1),            # channel multiplier 2
    ((2, 1, 6, 7), 3, 2, 1, 1, 1),            # one channel (NCHW and channels_last at once), multiplier 2: NCHW out
    ((1, 2, 6, 9), (3, 7), 1, 1, "valid", 1),  # rectangular, "valid"
    ((1, 2, 7, 6), (5, 2), 3, 2, (2, 0), (1, 2)),  # rectangular, tuple padding, stride 2, multiplier 3
    ((1, 2, 7, 8), (2, 5), 1, 1, "same", 1),  # asymmetric "same" with top != left (0, 1 rows; 2, 2 columns)
    ((2, 3, 5, 5), 5, 1, 1, 0, 1),            # 1x1 output: both layouts at once, grad x must still follow x's
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", EDGE_CASES, ids=lambda c: "x".join(map(str, c[0])) + f"_k{c[1]}")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_edge_cases_fp32(backend, case, channels_last):
    shape, kernel, multiplier, stride, padding, dilation = case
    x, weight, bias = make(*shape, kernel, multiplier, channels_last=channels_last)
    check(backend, x, weight, bias, stride, padding, dilation)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_low_precision(backend, dtype, channels_last):
    x, weight, bias = make(2, 3, 10, 9, 5, dtype=dtype, channels_last=channels_last)
    check(backend, x, weight, bias, 1, "same", 1)
    x, weight, bias = make(1, 2, 9, 8, (3, 5), multiplier=2, dtype=dtype, channels_last=channels_last)
    check(backend, x, weight, bias, 2, 1, 1)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_large_kernels(backend):
    """31x31 and the SLaK-style 51x5 / 5x51 on small maps (kernel larger than the map, "same" padding)."""
    for kernel, shape in (((31, 31), (1, 2, 20, 18)), ((51, 5), (1, 3, 12, 10)), ((5, 51), (1, 3, 10, 12))):
        x, weight, bias = make(*shape, kernel)
        check(backend, x, weight, bias, 1, "same", 1)


@pytest.mark.parametrize("kernel", [14, 16, 20])
@pytest.mark.parametrize("size", [11, 14, 17])
def test_even_large_kernels_same(kernel, size):
    """Even kernels with "same" padding pad one pixel more at the bottom/right than at the top/left; the "cpu"
    backend's FFT path (from 13x13) must size its circular grid for the larger side, or the edge wraps around.
    W = H + 1 tries a second size per case (which sizes wrap depends on the grid's 5-smooth rounding)."""
    x, weight, bias = make(1, 2, size, size + 1, kernel)
    check("cpu", x, weight, bias, 1, "same", 1)


@st.composite
def configs(draw, max_size=12):
    kh, kw = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    ph, pw = draw(st.integers(0, 4)), draw(st.integers(0, 4))
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), max_size + dh * kh))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), max_size + dw * kw))
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w)
    padding = (ph, pw) if (sh, sw) != (1, 1) else draw(st.sampled_from([(ph, pw), "same", "valid"]))
    if padding == "valid":
        h, w = max(h, dh * (kh - 1) + 1), max(w, dw * (kw - 1) + 1)
        shape = (*shape[:2], h, w)
    return dict(shape=shape, kernel=(kh, kw), multiplier=draw(st.integers(1, 2)), stride=(sh, sw),
                padding=padding, dilation=(dh, dw), bias=draw(st.booleans()), channels_last=draw(st.booleans()))


def _check_config(backend, cfg):
    x, weight, bias = make(*cfg["shape"], cfg["kernel"], cfg["multiplier"], cfg["bias"],
                           channels_last=cfg["channels_last"])
    check(backend, x, weight, bias, cfg["stride"], cfg["padding"], cfg["dilation"])


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs())
def test_random_configs(backend, cfg):
    _check_config(backend, cfg)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(max_size=6))
def test_random_configs_triton(cfg):
    _check_config("triton", cfg)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gradcheck_float64(backend):
    # the interpreter is slow and gradcheck runs the op once per input element: the smallest shape that still
    # has a rectangular kernel, stride, dilation, asymmetric padding and a multiplier
    x, weight, bias = make(1, 1, 5, 4, (2, 3), multiplier=2, dtype=torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, weight, bias))
    assert torch.autograd.gradcheck(
        lambda a, b, c: largeconv.dwconv2d(a, b, c, (2, 1), (1, 2), (1, 2), backend=backend), inputs)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_empty_batch(backend):
    """An empty batch gives an empty output and zero weight and bias grads, which must be written (allocations are
    poisoned, so leftover memory cannot pass for zeros)."""
    x, weight, bias = make(0, 3, 8, 8, 5)
    out, grads = run(backend, x, weight, bias, 1, "same", 1)
    ref, ref_grads = reference(x, weight, bias, 1, "same", 1)
    assert out.shape == ref.shape == (0, 3, 8, 8)
    for name, g, r in zip(("grad x", "grad weight", "grad bias"), grads, ref_grads):
        assert g.shape == r.shape, name
        assert torch.equal(g.double(), r), f"{name}: {g} instead of zeros"


def test_opcheck():
    x, weight, bias = make(2, 3, 9, 8, (3, 5), multiplier=2)
    params = ([1, 2], [1, 1, 2, 2], [1, 1], "cpu")
    out = torch.ops.largeconv.dwconv2d(x, weight, bias, *params)
    grad = torch.randn_like(out)
    for op, args in ((torch.ops.largeconv.dwconv2d, (x.requires_grad_(), weight.requires_grad_(), bias, *params)),
                     (torch.ops.largeconv.dwconv2d_grad_input, (grad, weight.detach(), list(x.shape), *params)),
                     (torch.ops.largeconv.dwconv2d_grad_weight, (grad, x.detach(), list(weight.shape), *params))):
        torch.library.opcheck(op, args)


def test_compile_module_fullgraph():
    torch._dynamo.reset()
    module = largeconv.LargeDWConv2d(4, 7, channel_multiplier=2)
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 4, 12, 12, requires_grad=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.sum(), (x, module.weight, module.bias))
    # against the definition: F.conv2d in float64 with the module's default padding d*(k-1)//2 = 3
    params = [t.detach().double().requires_grad_() for t in (x, module.weight, module.bias)]
    expected = F.conv2d(*params, 1, 3, 1, groups=4)
    assert_close(out, expected, what="compiled output")
    for name, a, b in zip(("x", "weight", "bias"), grads, torch.autograd.grad(expected.sum(), params)):
        assert_close(a, b, what=f"compiled grad {name}")


def test_autocast_like_conv2d():
    """Under torch.autocast the op runs in the autocast dtype, like F.conv2d, and grads come back in fp32."""
    x, weight, bias = make(2, 3, 10, 10, 5)
    weight.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = largeconv.dwconv2d(x, weight, bias, 1, "same")
        expected = F.conv2d(x, weight, bias, 1, "same", 1, 3)
    assert out.dtype == expected.dtype == torch.bfloat16
    exact = F.conv2d(*(t.detach().bfloat16().double() for t in (x, weight, bias)), 1, "same", 1, 3)
    assert_close(out, exact, expected, "autocast output")
    (grad_w,) = torch.autograd.grad(out.float().sum(), weight)
    assert grad_w.dtype == torch.float32


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_autocast_mixed_inputs(backend):
    """bf16 activations with an fp32 weight and bias work under autocast and give F.conv2d's values: autocast
    rounds the weight and bias to bf16, and the result is within 2x the error of F.conv2d's own bf16 call."""
    x, weight, bias = make(1, 2, 6, 6, 3)
    x = x.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = largeconv.dwconv2d(x, weight, bias, 1, 1, backend=backend)
        expected = F.conv2d(x, weight, bias, 1, 1, 1, 2)
    assert out.dtype == expected.dtype == torch.bfloat16
    exact = F.conv2d(*(t.bfloat16().double() for t in (x, weight, bias)), 1, 1, 1, 2)
    assert_close(out, exact, expected, "autocast mixed-input output")


def test_non_contiguous_input():
    x = torch.randn(2, 8, 9, 3).transpose(1, 3)  # (2, 3, 9, 8), neither NCHW nor channels_last
    weight = torch.randn(3, 1, 3, 3)
    check("cpu", x, weight, None, 1, 1, 1)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(cfg=configs())
def test_cpu_fft_paths(monkeypatch, cfg):
    """The "cpu" backend's FFT forward / grad-input / grad-weight (used from 25x25 and 6x5 taps up) on every kind
    of configuration: thresholds lowered so that small kernels take them too."""
    from largeconv import cpu
    monkeypatch.setattr(cpu, "FFT_CONV_MIN_TAPS", 1)
    monkeypatch.setattr(cpu, "FFT_MIN_TAPS", 1)
    _check_config("cpu", cfg)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bias_grad_sums_cancelling_partials_accurately(dtype):
    """The bias gradient's per-sample partial sums can be large and cancel: summed in float64 (fp32 for bf16), the
    result is far closer to the float64 sum than F.conv2d's own bias gradient (fp32: 0.03 against 1.3 here)."""
    from largeconv.ops import bias_grad
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(1, 3, 5, 5, generator=gen).expand(64, 3, 5, 5) * 1e4
    grad = (torch.cat([base[:32], -base[32:]]) + torch.rand(64, 3, 5, 5, generator=gen)).to(dtype)
    expected = grad.double().sum((0, 2, 3))  # ~ 64*25*0.5 = 800 out of terms of 1e4
    bias = torch.zeros(3, dtype=dtype, requires_grad=True)
    F.conv2d(torch.randn(64, 3, 5, 5, dtype=dtype), torch.randn(3, 1, 3, 3, dtype=dtype), bias, 1, 1, 1,
             3).backward(grad)
    pytorch_error = (bias.grad.double() - expected).abs().max()
    got = bias_grad(grad)
    assert got.dtype == dtype
    error = (got.double() - expected).abs().max()
    # fp32: ours 0.029 (each sample's 25 terms in fp32, off by ~1e-2), one fp32 sum of everything 0.11, F.conv2d's
    # 1.3; bf16: the cast back dominates
    assert error <= {torch.float32: 0.05, torch.bfloat16: 8.0}[dtype] and error <= pytorch_error, (error,
                                                                                                pytorch_error)
