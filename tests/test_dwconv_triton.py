"""The Triton depthwise-conv kernels (kernels/dwconv.py), called directly, against the float64 F.conv2d reference.

Without a GPU they run on tiny CPU tensors under TRITON_INTERPRET=1 (set by conftest.py before triton is imported).
Every allocation is poisoned with NaN while a kernel runs, so an output element left unwritten fails.
"""
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings, strategies as st

from largeconv.arguments import dwconv2d_output_hw, is_channels_last
from largeconv.kernels import dwconv as dw
from numerics import assert_close, assert_nonfinite_like, nonfinite_references, poisoned_allocations

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(dw.unsupported_reason(torch.empty(1, 1, 1, 1, device=DEVICE), (1, 1)) is not None,
                                reason="Triton kernels cannot run here (CPU needs TRITON_INTERPRET=1)")


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
    """fp32 without TF32: IEEE dots, 3xTF32 in the NCHW forward and grad-input (the interpreter computes every dot
    exactly, so the fp32 tests here cannot check 3xTF32's accuracy: the GPU kit's smoke stage does, at 1e-5)."""
    assert dw._dot_precision(torch.float32) == "ieee"
    assert dw._toeplitz_precision(torch.float32) == "tf32x3"
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    assert dw._dot_precision(torch.float32) == dw._toeplitz_precision(torch.float32) == "tf32"
    assert dw._dot_precision(torch.float64) == dw._toeplitz_precision(torch.float64) == "ieee"
    x, weight, bias, stride, padding, dilation = make("3x3", torch.float32, False)
    for tf32, precision in ((True, "tf32"), (False, "tf32x3")):
        monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
        _, launch = dw._plan_forward(x, weight, bias, stride, padding, dilation, gpu=True)
        assert launch.meta["PRECISION"] == precision
        assert launch.meta["STACK"], "an 8-row map: tiles stack the images' rows"
        assert launch.configs == dw._toeplitz_configs(gpu=True, wide=True, precision=precision, stack=True)


def test_toeplitz_configs_follow_the_precision():
    """3xTF32 gets its own (non-spilling) tiles: the autotuner prunes by PRECISION as well as by element size, and
    never to nothing (a list the GPU kit cut to other configs still runs)."""
    key = dw._config_key
    tf32x3 = dw._toeplitz_configs(gpu=True, wide=True, precision="tf32x3")
    wide = dw._toeplitz_configs(gpu=True, wide=True, precision="tf32")
    assert {key(c) for c in tf32x3} != {key(c) for c in wide}
    every = wide + dw._toeplitz_configs(gpu=True, wide=False) + tf32x3
    args = {"x_ptr": torch.empty(1, dtype=torch.float32)}
    for precision, expected in (("tf32x3", tf32x3), ("tf32", wide), ("ieee", wide)):
        kept = dw._prune_toeplitz(every, args, PRECISION=precision)
        assert {key(c) for c in kept} == {key(c) for c in expected}, precision
    others = [c for c in wide if key(c) not in {key(t) for t in tf32x3}]
    assert dw._prune_toeplitz(others, args, PRECISION="tf32x3") == others
    assert "PRECISION" in dw._TOEPLITZ_KEY  # the autotuner's choice per precision (cuDNN's setting may change)
    stacked = dw._prune_toeplitz(every, args, PRECISION="tf32", STACK=True)  # small maps: 16-column tiles only
    assert stacked and {key(c) for c in stacked} < {key(c) for c in wide}
    assert all(c.kwargs["BLOCK_W"] == 16 for c in stacked)


@pytest.mark.parametrize("stack", [False, True], ids=["per-image-tiles", "stacked-tiles"])
def test_nchw_tiles_per_image_and_stacked(monkeypatch, stack):
    """NCHW tiles hold one image's rows or the rows of several images one after another (_stacks: small maps);
    both tilings on the same shapes, a tile ending partway through an image (3 images of 7 rows in 16-row tiles),
    clean and with NaN/Inf in x and grad_out."""
    monkeypatch.setattr(dw, "_stacks", lambda inp, out, stride: stack)
    check(*make((3, 2, 1, 7, 9, (5, 3), (1, 1), (2, 2, 1, 1), (1, 1), True), torch.float32, False))
    x, weight, bias, stride, padding, dilation, grad_out = nonfinite_case("5x5", False)
    check_nonfinite(spoil(x), weight, bias, stride, padding, dilation, spoil(grad_out))


# Non-finite values. (N, C, multiplier, H, W, (Kh, Kw), stride, padding, dilation, bias); symmetric padding, so that
# F.conv2d pads by itself as it does in a model.
NONFINITE_CASES = {
    "5x5": (1, 2, 1, 12, 12, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), True),
    "stride2": (2, 2, 1, 11, 13, (5, 5), (2, 2), (2, 2, 2, 2), (1, 1), False),
    "dilation2": (1, 2, 1, 12, 11, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2), True),
    "rect-7x3-m2": (1, 2, 2, 10, 9, (7, 3), (1, 2), (3, 3, 1, 1), (1, 1), True),
    # C == 1 is NCHW in either layout: several 16x16 output tiles and strip chunks; a NaN in one tile
    "nchw-multi-tile": (1, 1, 1, 20, 40, (3, 19), (1, 1), (1, 1, 9, 9), (1, 1), True),
}


def spoil(t, count=3):
    """t with NaN, +Inf and -Inf (cycled) at `count` random elements."""
    t = t.clone()
    flat = t.view(-1) if t.is_contiguous() else t.permute(0, 2, 3, 1).view(-1)  # channels_last storage order
    for i, where in enumerate(torch.randperm(t.numel(), device=t.device)[:count].tolist()):
        flat[where] = (float("nan"), float("inf"), -float("inf"))[i % 3]
    return t


def check_nonfinite(x, weight, bias, stride, padding, dilation, grad_out,
                    directions=("output", "grad input", "grad weight")):
    with poisoned_allocations():
        out = dw.dwconv2d_forward(x, weight, bias, stride, padding, dilation)
        grad_x = dw.dwconv2d_grad_input(grad_out, weight, x.shape, stride, padding, dilation)
        grad_w = dw.dwconv2d_grad_weight(grad_out, x, weight.shape, stride, padding, dilation)
    refs = nonfinite_references(x, weight, bias, stride, padding, dilation, grad_out)
    for name, got, ref in zip(("output", "grad input", "grad weight"), (out, grad_x, grad_w), refs):
        if name in directions:
            assert_nonfinite_like(got, ref, name)


def nonfinite_case(case, channels_last):
    """A case's inputs and a grad_out, all finite."""
    x, weight, bias, stride, padding, dilation = make(NONFINITE_CASES[case], torch.float32, channels_last)
    ho, wo = dwconv2d_output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    grad_out = torch.randn(x.shape[0], weight.shape[0], ho, wo, device=DEVICE).contiguous(
        memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    return x, weight, bias, stride, padding, dilation, grad_out


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("case", NONFINITE_CASES)
def test_nonfinite_inputs_stay_local(case, channels_last):
    """NaN/Inf in x and in grad_out reach only the outputs that read them (the Toeplitz band's zeros must not
    multiply them)."""
    if channels_last and case.startswith("nchw-"):
        pytest.skip("one channel: NCHW in either layout")
    x, weight, bias, stride, padding, dilation, grad_out = nonfinite_case(case, channels_last)
    check_nonfinite(spoil(x), weight, bias, stride, padding, dilation, spoil(grad_out))


CL_GRAD_INPUT_INF_TAP = ("channels_last grad-input adds a zero times the tap for taps that reach no output "
                         "(NaN for an Inf tap); skipping them (tl.where) spills 24 B in fp32 under triton 3.8")


@pytest.mark.parametrize("layout", ["nchw", "channels_last", pytest.param(
    "channels_last-grad-input", marks=pytest.mark.xfail(strict=True, reason=CL_GRAD_INPUT_INF_TAP))])
@pytest.mark.parametrize("case", ["5x5", "stride2", "rect-7x3-m2"])
def test_nonfinite_weight_tap(case, layout):
    """A NaN or Inf filter tap: every output reading a pixel through it is NaN/Inf, the others stay as F.conv2d
    has them."""
    torch.manual_seed(0)  # where spoil puts its NaN/Inf: a random NaN can hide the channels_last defect (an XPASS)
    x, weight, bias, stride, padding, dilation, grad_out = nonfinite_case(case, layout != "nchw")
    directions = {"nchw": ("output", "grad input", "grad weight"), "channels_last": ("output", "grad weight"),
                  "channels_last-grad-input": ("grad input",)}[layout]
    weight = spoil(weight, count=2)
    weight[-1, 0, 0, -1] = -float("inf")  # and a corner tap, which some pixels never meet
    check_nonfinite(x, weight, bias, stride, padding, dilation, grad_out, directions)


@pytest.mark.skipif(not dw._INTERPRETED, reason="the GPU's tiles run on a GPU through the entry points")
def test_nonfinite_gpu_tiles():
    """The GPU's NCHW tiles (each autotune candidate, a split grad-weight reduction) keep NaN/Inf local too."""
    x, weight, bias, stride, padding, dilation, grad_out = nonfinite_case("stride2", False)
    x, grad_out = spoil(x), spoil(grad_out)
    refs = nonfinite_references(x, weight, bias, stride, padding, dilation, grad_out)
    y, forward = dw._plan_forward(x, weight, bias, stride, padding, dilation, gpu=True)
    gx, grad_input = dw._plan_grad_input(grad_out, weight, x.shape, stride, padding, dilation, gpu=True)
    grad_weight, finish = dw._plan_grad_weight(grad_out, x, weight.shape, stride, padding, dilation, gpu=True,
                                               splits=3)
    assert grad_weight.out.shape[0] > 1, "the reduction should be split"
    for name, launch, result, ref in zip(("output", "grad input", "grad weight"), (forward, grad_input, grad_weight),
                                         (lambda: y, lambda: gx, finish), refs):
        for config in launch.configs:
            launch.out.fill_(float("nan"))
            launch.run(config)
            assert_nonfinite_like(result(), ref, f"{name} {config}")
