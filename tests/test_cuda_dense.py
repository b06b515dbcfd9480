"""The cuda backend's dense products for small maps that every output's window covers whole (largeconv/cuda.py,
covers_whole_map): plain torch, so they run here on CPU tensors, against the float64 F.conv2d reference, results
allocated NaN-poisoned. On a GPU the cuda backend routes such calls to them (tests/test_cuda_gpu.py's RepLKNet-31B
stage 3 and 4 shapes)."""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from largeconv import cuda as cuda_backend
from numerics import assert_close, assert_nonfinite_like, nonfinite_references, poisoned_allocations

UNIT = ((1, 1), (1, 1))  # stride, dilation


@st.composite
def covered_calls(draw):
    """(x, weight, bias, padding, grad_out): kernel and padding such that every output's window covers the map."""
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    dtype = draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16]))
    hw, kernel, padding = [], [], []
    for _ in range(2):
        size = draw(st.integers(1, 8))
        out = draw(st.integers(1, size + 2))
        k = draw(st.integers(size + out - 1, size + out + 4))  # covering: out - 1 <= before <= k - size
        before = draw(st.integers(out - 1, k - size))
        hw.append(size), kernel.append(k), padding.append((before, out - 1 + k - size - before))
    if kernel[0] * kernel[1] < cuda_backend.DENSE_MIN_TAPS:
        kernel[0] += cuda_backend.DENSE_MIN_TAPS  # a longer kernel covers too, padded at the end
        padding[0] = (padding[0][0], padding[0][1] + cuda_backend.DENSE_MIN_TAPS)
    padding = (*padding[0], *padding[1])
    x = torch.randn(n, c, *hw).to(dtype)
    weight = (torch.randn(c, 1, *kernel) / kernel[1]).to(dtype)
    bias = draw(st.sampled_from([None, torch.randn(c).to(dtype)]))
    out_hw = (hw[0] + padding[0] + padding[1] - kernel[0] + 1, hw[1] + padding[2] + padding[3] - kernel[1] + 1)
    return x, weight, bias, padding, torch.randn(n, c, *out_hw).to(dtype)


def conv_directions(x, weight, bias, padding, grad_out, dtype):
    """Output, grad-input and grad-weight through F.conv2d on the explicitly padded input, in `dtype`."""
    top, bottom, left, right = padding
    x_, w_ = (t.detach().to(dtype).requires_grad_() for t in (x, weight))
    out = F.conv2d(F.pad(x_, (left, right, top, bottom)), w_, None if bias is None else bias.to(dtype),
                   groups=x.shape[1])
    return (out.detach(), *torch.autograd.grad(out, (x_, w_), grad_out.to(dtype)))


def dense_directions(x, weight, bias, padding, grad_out):
    assert cuda_backend.covers_whole_map(x, x.shape, weight.shape, *UNIT[:1], padding, UNIT[1])
    with poisoned_allocations():
        out = cuda_backend.dense_forward(x, weight, bias, padding, torch.empty(grad_out.shape, dtype=x.dtype))
        grad_x = cuda_backend.dense_grad_input(grad_out, weight, padding, torch.empty_like(x))
        grad_w = cuda_backend.dense_grad_weight(grad_out, x, padding, torch.empty_like(weight))
    return out, grad_x, grad_w


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(call=covered_calls())
def test_dense_matches_float64(call):
    x, weight, bias, padding, grad_out = call
    got = dense_directions(*call)
    want = conv_directions(*call, torch.float64)
    lowp = conv_directions(*call, x.dtype) if x.dtype != torch.float32 else (None,) * 3
    for name, g, w, low in zip(("output", "grad input", "grad weight"), got, want, lowp):
        assert g.dtype == x.dtype and g.shape == w.shape, name
        assert_close(g, w, low, what=f"{name} {tuple(x.shape)} k{tuple(weight.shape[2:])} p{padding}")


@pytest.mark.parametrize("shape", [(2, 3, 7, 7, 13), (1, 2, 14, 14, 27), (2, 2, 5, 5, 9)])
def test_dense_nan_and_inf_stay_local(shape):
    """NaN/Inf in x and grad_out: the products are the direct sums' own, so every element is NaN, Inf or finite
    as in F.conv2d (the padding's taps skipped, as PyTorch's CUDA kernels do), finite ones to fp32's bound."""
    n, c, h, w, k = shape
    torch.manual_seed(k)
    x, weight, grad_out = torch.randn(n, c, h, w), torch.randn(c, 1, k, k) / k, torch.randn(n, c, h, w)
    x[0, 0, 1, 2], x[-1, -1, -1, -1], x[0, -1, 0, 0] = float("inf"), float("nan"), -float("inf")
    grad_out[-1, 0, 2, 2], grad_out[0, -1, 1, 1] = -float("inf"), float("nan")
    padding = (k // 2,) * 4
    got = dense_directions(x, weight, None, padding, grad_out)
    refs = nonfinite_references(x, weight, None, (1, 1), padding, (1, 1), grad_out)
    for name, g, ref in zip(("output", "grad input", "grad weight"), got, refs):
        assert (~g.isfinite()).any(), f"{name}: the case meant to test NaN/Inf has none"
        assert_nonfinite_like(g, ref, name)


def call_covered(x_shape=(2, 4, 7, 7), kernel=(13, 13), padding=(6, 6, 6, 6), stride=(1, 1), dilation=(1, 1),
                 channels=None, dtype=torch.float32, channels_last=False):
    x = torch.randn(x_shape, dtype=dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    weight_shape = (channels or x_shape[1], 1, *kernel)
    return cuda_backend.covers_whole_map(x, x.shape, weight_shape, stride, padding, dilation)


@pytest.mark.parametrize("kwargs, expected", [
    ({}, True),
    (dict(x_shape=(2, 4, 14, 14), kernel=(27, 27), padding=(13,) * 4), True),
    (dict(x_shape=(2, 4, 14, 14), kernel=(25, 25), padding=(12,) * 4), False),  # the corner outputs miss inputs
    (dict(padding=(5, 6, 6, 6)), True),  # asymmetric and still covering: 6 output rows
    (dict(padding=(7, 5, 6, 6)), False),  # top > kh - H: the first rows' windows start below the map
    (dict(stride=(2, 2)), False),
    (dict(dilation=(1, 2), kernel=(13, 7)), False),
    (dict(channels=8), False),  # a channel multiplier
    (dict(channels_last=True), False),
    (dict(x_shape=(2, 4, 3, 3), kernel=(5, 5), padding=(2,) * 4), False),  # 25 taps: the tiled kernels keep these
    (dict(x_shape=(1, 4096, 16, 16), kernel=(31, 31), padding=(15,) * 4), False),  # matrices 256x x's size
])
def test_which_calls_go_dense(kwargs, expected):
    assert call_covered(**kwargs) is expected


def test_dense_takes_any_strides_but_channels_last():
    """grad_out of y.sum() is an expanded tensor (stride 0): the products read it as it is; channels_last inputs
    keep the tiled kernels (their results must be channels_last)."""
    x, weight = torch.randn(2, 3, 7, 7), torch.randn(3, 1, 13, 13)
    grad_out = torch.ones(1, 1, 1, 1).expand(2, 3, 7, 7)
    assert cuda_backend.covers_whole_map(grad_out, x.shape, weight.shape, (1, 1), (6,) * 4, (1, 1))
    with poisoned_allocations():
        got = cuda_backend.dense_grad_input(grad_out, weight, (6,) * 4, torch.empty_like(x))
    assert_close(got, conv_directions(x, weight, None, (6,) * 4, grad_out, torch.float64)[1])


@pytest.mark.parametrize("matmul, conv_tf32, dtype, expected", [
    ("ieee", False, torch.float32, True),
    ("tf32", False, torch.float32, False),  # the conv must stay exact, torch's matmuls would not
    ("tf32", True, torch.float32, True),
    ("tf32", False, torch.bfloat16, True),  # bf16 values are exact in TF32
    ("bf16", True, torch.float32, False),
    ("bf16", True, torch.float16, False),  # fp16 values are not exact in bf16
])
def test_dense_only_where_matmul_precision_fits(monkeypatch, matmul, conv_tf32, dtype, expected):
    monkeypatch.setattr(cuda_backend, "cuda_matmul_fp32_precision", lambda: matmul)
    monkeypatch.setattr(cuda_backend, "cudnn_conv_allows_tf32", lambda: conv_tf32)
    assert call_covered(dtype=dtype) is expected


def test_dense_not_under_deterministic_mode_without_cublas_config(monkeypatch):
    """torch raises on a cuBLAS call in deterministic mode unless CUBLAS_WORKSPACE_CONFIG is set: the tiled kernels
    (deterministic) run those calls."""
    monkeypatch.setattr(torch, "are_deterministic_algorithms_enabled", lambda: True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    assert call_covered() is False
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    assert call_covered() is True

