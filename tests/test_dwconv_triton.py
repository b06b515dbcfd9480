"""The Triton depthwise-conv kernels (kernels/dwconv.py), called directly, against the float64 F.conv2d reference.

Without a GPU they run on tiny CPU tensors under TRITON_INTERPRET=1 (set by conftest.py before triton is imported).
Every allocation is poisoned with NaN while a kernel runs, so an output element left unwritten fails.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from largeconv.arguments import is_channels_last
from largeconv.kernels import dwconv as dw
from numerics import assert_close, poisoned_allocations

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(dw.unsupported_reason(torch.empty(1, 1, 1, 1, device=DEVICE), (1, 1)) is not None,
                                reason="Triton kernels cannot run here (CPU needs TRITON_INTERPRET=1)")


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    """fp32 is held to 1e-5 relative, so keep the kernels off TF32 (they follow cuDNN's convolution setting)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)


# (N, C, multiplier, H, W, (Kh, Kw), stride, padding (top, bottom, left, right), dilation, bias)
CASES = {
    "3x3": (2, 3, 1, 8, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), True),
    "stride2-odd": (2, 2, 1, 9, 11, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), True),
    "dilation2-large": (1, 2, 1, 12, 11, (9, 9), (1, 1), (8, 8, 8, 8), (2, 2), False),
    "rect-7x3": (2, 2, 1, 10, 7, (7, 3), (1, 1), (3, 3, 1, 1), (1, 1), True),
    "rect-3x7": (1, 3, 1, 7, 10, (3, 7), (1, 2), (1, 1, 3, 3), (1, 1), True),
    "rect-1x5": (2, 2, 1, 5, 9, (1, 5), (1, 1), (0, 0, 2, 2), (1, 1), True),
    "even-4x4-same": (2, 2, 1, 8, 7, (4, 4), (1, 1), (1, 2, 1, 2), (1, 1), True),
    "kernel-larger-than-input": (1, 2, 1, 5, 6, (13, 11), (1, 1), (6, 6, 5, 5), (1, 1), True),
    "k1": (2, 3, 1, 5, 7, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1), True),
    "h1": (2, 2, 1, 1, 9, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), True),
    "w1": (2, 2, 1, 9, 1, (5, 1), (2, 1), (2, 2, 0, 0), (1, 1), True),
    "multiplier2": (2, 3, 2, 7, 8, (3, 5), (1, 1), (1, 1, 2, 2), (1, 1), True),
    "asymmetric": (1, 3, 1, 9, 10, (3, 4), (2, 1), (0, 3, 2, 1), (1, 2), True),
    "tall-31x5": (1, 2, 1, 16, 6, (31, 5), (1, 1), (3, 27, 2, 2), (1, 1), True),
    # C == 1 is NCHW in either layout: several output tiles and strip chunks of the Toeplitz kernels (16x16 tiles
    # under the interpreter), two kernel-column tiles in grad-weight
    "nchw-multi-tile-5x37": (1, 1, 2, 18, 34, (5, 37), (1, 1), (2, 2, 18, 18), (1, 1), True),
    "nchw-multi-tile-stride2": (1, 1, 1, 20, 40, (3, 19), (2, 2), (1, 1, 9, 9), (1, 1), True),
}
DTYPE_CASES = ["3x3", "stride2-odd", "multiplier2", "asymmetric"]


def make(case, dtype, channels_last):
    n, c, m, h, w, (kh, kw), stride, padding, dilation, bias = CASES[case] if isinstance(case, str) else case
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c, h, w, device=DEVICE).to(dtype).contiguous(memory_format=fmt)
    weight = torch.randn(c * m, 1, kh, kw, device=DEVICE).to(dtype)
    b = torch.randn(c * m, device=DEVICE).to(dtype) if bias else None
    return x, weight, b, stride, padding, dilation


def reference(x, weight, bias, stride, padding, dilation, grad_out, dtype):
    """F.conv2d on the explicitly padded input, and its gradients, computed in `dtype`."""
    top, bottom, left, right = padding
    x = x.detach().to(dtype).requires_grad_()
    weight = weight.detach().to(dtype).requires_grad_()
    bias = None if bias is None else bias.to(dtype)
    out = F.conv2d(F.pad(x, (left, right, top, bottom)), weight, bias, stride, 0, dilation, groups=x.shape[1])
    grad_x, grad_w = torch.autograd.grad(out, (x, weight), grad_out.to(dtype))
    return out.detach(), grad_x, grad_w


def check(x, weight, bias, stride, padding, dilation):
    fmt = torch.channels_last if is_channels_last(x) else torch.contiguous_format
    with poisoned_allocations():
        out = dw.dwconv2d_forward(x, weight, bias, stride, padding, dilation)
    grad_out = torch.randn(out.shape, device=DEVICE).to(x.dtype).contiguous(memory_format=fmt)
    with poisoned_allocations():
        grad_x = dw.dwconv2d_grad_input(grad_out, weight, x.shape, stride, padding, dilation)
        grad_w = dw.dwconv2d_grad_weight(grad_out, x, weight.shape, stride, padding, dilation)

    refs = reference(x, weight, bias, stride, padding, dilation, grad_out, torch.float64)
    lowp = (reference(x, weight, bias, stride, padding, dilation, grad_out, x.dtype)
            if x.dtype in (torch.float16, torch.bfloat16) else (None, None, None))
    for name, got, ref, low in zip(("output", "grad input", "grad weight"), (out, grad_x, grad_w), refs, lowp):
        assert got.dtype == x.dtype, f"{name}: dtype {got.dtype}"
        assert_close(got, ref, low, name)
    assert out.is_contiguous(memory_format=fmt), "output must keep the input's memory format"
    # the contract: grad input in grad_out's format as is_channels_last reads it (a 1x1 output is both, read NCHW)
    grad_fmt = torch.channels_last if is_channels_last(grad_out) else torch.contiguous_format
    assert grad_x.is_contiguous(memory_format=grad_fmt), "grad input must keep grad_out's memory format"
    assert grad_w.is_contiguous()


@pytest.mark.parametrize("case, channels_last", [
    pytest.param(case, cl, id=f"{case}-{'channels_last' if cl else 'nchw'}")
    for case in CASES for cl in (False, True) if not (cl and case.startswith("nchw-"))])
def test_fp32(case, channels_last):
    check(*make(case, torch.float32, channels_last))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=["fp16", "bf16", "fp64"])
@pytest.mark.parametrize("case", DTYPE_CASES)
def test_other_dtypes(case, dtype, channels_last):
    check(*make(case, dtype, channels_last))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_grad_weight_split_reduction(monkeypatch, channels_last):
    """The partial sums of several reduction splits add up (on a GPU the split count follows the SM count)."""
    monkeypatch.setattr(dw, "_num_splits", lambda units, programs, device: 3)
    check(*make((2, 2, 2, 9, 8, (5, 3), (2, 1), (2, 2, 1, 1), (1, 1), False), torch.float32, channels_last))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_configs(data):
    draw = data.draw
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    sh, sw, dh, dw_ = (draw(st.integers(1, 3)) for _ in range(4))
    padding = tuple(draw(st.integers(0, 4)) for _ in range(4))
    # input at least as large as the dilated kernel minus the padding, so the output is not empty
    h = max(1, dh * (kh - 1) + 1 - padding[0] - padding[1]) + draw(st.integers(0, 6))
    w = max(1, dw_ * (kw - 1) + 1 - padding[2] - padding[3]) + draw(st.integers(0, 6))
    case = (draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 2)), h, w, (kh, kw),
            (sh, sw), padding, (dh, dw_), draw(st.booleans()))
    check(*make(case, torch.float32, draw(st.booleans())))


def test_unsupported_reason():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        assert dw.unsupported_reason(torch.empty(1, 1, 4, 4, device=DEVICE, dtype=dtype), (63, 63)) is None
    assert "int32" in dw.unsupported_reason(torch.empty(1, 1, 4, 4, device=DEVICE, dtype=torch.int32), (3, 3))


def test_tf32_follows_cudnn_setting(monkeypatch):
    assert dw._dot_precision(torch.float32) == "ieee"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert dw._dot_precision(torch.float32) == "tf32"
    assert dw._dot_precision(torch.float64) == "ieee"
