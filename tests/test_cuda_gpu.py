"""The "cuda" backend (largeconv.cuda, the extension largeconv._C) on a GPU, against float64 references:
RepLKNet-31B and RedNet-50 stage shapes at batch 2 plus edge cases, fp32 / fp16 / bf16, NCHW and channels_last;
depthwise Conv1d at Conformer shapes plus edge cases.
Outputs are allocated NaN-poisoned (tests/numerics.py), so an element a kernel forgets to write fails.

Run with `pytest -m gpu tests/test_cuda_gpu.py` on a machine with a GPU and the extension built."""
import pytest
import torch
import torch.nn.functional as F

import largeconv.cuda as cuda_backend
from numerics import assert_close, poisoned_allocations, rel_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda_backend.is_available(), reason="the CUDA extension largeconv._C is not built"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}


def randn(shape, dtype, layout, scale=1.0):
    return (torch.randn(shape, device="cuda", dtype=torch.float32) * scale).to(dtype).contiguous(
        memory_format=LAYOUTS[layout])


def expect_layout(t, layout):
    assert t.is_contiguous(memory_format=LAYOUTS[layout]), f"result is not {layout}-contiguous: {t.stride()}"


# ---- depthwise convolution ------------------------------------------------------------------------------------

def dw_reference(x, weight, bias, grad, stride, padding, dilation, dtype):
    """Output, grad-input and grad-weight by autograd through F.conv2d, computed in `dtype`."""
    x_, w_ = (t.detach().to(dtype).requires_grad_() for t in (x, weight))
    b_ = None if bias is None else bias.detach().to(dtype)
    top, bottom, left, right = padding
    out = F.conv2d(F.pad(x_, (left, right, top, bottom)), w_, b_, stride, 0, dilation, groups=x.shape[1])
    grad_x, grad_w = torch.autograd.grad(out, (x_, w_), grad.to(dtype))
    return out.detach(), grad_x, grad_w


def check_dwconv(n, c, h, w, kernel, dtype, layout, stride=(1, 1), dilation=(1, 1), padding=None, mult=1,
                 bias=True):
    kh, kw = kernel
    if padding is None:  # "same" at stride 1: the odd pixel of an even kernel goes bottom / right
        ph, pw = dilation[0] * (kh - 1), dilation[1] * (kw - 1)
        padding = (ph // 2, ph - ph // 2, pw // 2, pw - pw // 2)
    x = randn((n, c, h, w), dtype, layout)
    weight = randn((c * mult, 1, kh, kw), dtype, "nchw", scale=1.0 / (kh * kw) ** 0.5)
    b = randn((c * mult,), dtype, "nchw") if bias else None
    args = (tuple(stride), tuple(padding), tuple(dilation))

    with poisoned_allocations():
        out = cuda_backend.dwconv2d_forward(x, weight, b, *args)
    grad = randn(out.shape, dtype, layout)
    with poisoned_allocations():
        grad_x = cuda_backend.dwconv2d_grad_input(grad, weight, x.shape, *args)
        grad_w = cuda_backend.dwconv2d_grad_weight(grad, x, weight.shape, *args)
    torch.cuda.synchronize()

    ref = dw_reference(x, weight, b, grad, stride, padding, dilation, torch.float64)
    low = dw_reference(x, weight, b, grad, stride, padding, dilation, dtype) if dtype != torch.float32 else [None] * 3
    for name, got, want, want_low in zip(("forward", "grad_input", "grad_weight"), (out, grad_x, grad_w), ref, low):
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
        assert_close(got, want, want_low, what=name)
    expect_layout(out, layout)
    expect_layout(grad_x, layout)


REPLKNET_31B = [(2, 128, 56, 56, 31), (2, 256, 28, 28, 29), (2, 512, 14, 14, 27), (2, 1024, 7, 7, 13)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", REPLKNET_31B, ids=lambda s: "x".join(map(str, s)))
def test_dwconv_replknet_stages(shape, dtype, layout):
    n, c, h, w, k = shape
    check_dwconv(n, c, h, w, (k, k), dtype, layout)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(2, 64, 14, 14, (27, 27)), (64, 512, 14, 14, (27, 27)), (3, 16, 5, 9, (9, 17))],
                         ids=lambda s: "x".join(map(str, s[:4])) + f"-k{s[4][0]}x{s[4][1]}")
def test_dwconv_dense_on_covered_maps(shape, dtype):
    """Maps every output's window covers run as dense products (cuda.covers_whole_map; RepLKNet-31B s3 at batch
    64 among them): the float64 checks, NaN-poisoned outputs, bias, on the GPU's cuBLAS."""
    n, c, h, w, kernel = shape
    padding = ((kernel[0] - 1) // 2,) * 2 + ((kernel[1] - 1) // 2,) * 2
    probe = torch.empty(n, c, h, w, device="cuda", dtype=dtype)
    assert cuda_backend.covers_whole_map(probe, probe.shape, (c, 1, *kernel), (1, 1), padding, (1, 1))
    check_dwconv(n, c, h, w, kernel, dtype, "nchw")


@pytest.mark.parametrize("shape", [(2, 128, 56, 56, 31), (2, 512, 14, 14, 27), (2, 1024, 7, 7, 13),
                                   (2, 12, 32, 40, 51)], ids=lambda s: "x".join(map(str, s)))
def test_dwconv_fp32_with_tf32_allowed(shape, monkeypatch):
    """fp32 where torch.backends.cudnn.allow_tf32 allows TF32 (PyTorch's default): NCHW large kernels run one TF32
    product (csrc/dwconv.cuh corr_tf32_kernel; wgrad_tf32_kernel up to 32x32), held to the design's 1e-3. The other
    tests run with TF32 off (tests/conftest.py), where the same kernels run 3xTF32 on maps of 14x14 and more."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    n, c, h, w, k = shape
    x = randn((n, c, h, w), torch.float32, "nchw")
    weight = randn((c, 1, k, k), torch.float32, "nchw", scale=1.0 / k)
    b = randn((c,), torch.float32, "nchw")
    args = ((1, 1), (k // 2,) * 4, (1, 1))
    with poisoned_allocations():
        out = cuda_backend.dwconv2d_forward(x, weight, b, *args)
        grad = randn(out.shape, torch.float32, "nchw")
        grad_x = cuda_backend.dwconv2d_grad_input(grad, weight, x.shape, *args)
        grad_w = cuda_backend.dwconv2d_grad_weight(grad, x, weight.shape, *args)
    ref = dw_reference(x, weight, b, grad, (1, 1), args[1], (1, 1), torch.float64)
    # maps the kernel covers run dense products, exact while torch's matmuls are ("ieee", the default)
    dense = cuda_backend.covers_whole_map(x, x.shape, weight.shape, *args)
    for name, got, want in zip(("forward", "grad_input", "grad_weight"), (out, grad_x, grad_w), ref):
        err = rel_error(got, want)
        assert err <= 1e-3, f"{name}: relative error {err:.3g} > 1e-3"
        if not dense and (name != "grad_weight" or k <= 32):  # TF32 shows: ignoring the setting would be ~1e-7 off
            assert err > 1e-6, f"{name}: relative error {err:.3g}: exact fp32, TF32 not used"


def test_auto_measures_tf32_apart(monkeypatch):
    """auto's cache keeps fp32 with TF32 allowed apart from exact fp32 (their fastest backends differ), and auto's
    calls honour the setting: within the design's 1e-3 with TF32 (cuDNN may run depthwise convs exactly anyway),
    fp32-exact without."""
    import largeconv
    from largeconv import dispatch
    x = randn((2, 16, 28, 28), torch.float32, "nchw")
    weight = randn((16, 1, 31, 31), torch.float32, "nchw", scale=1.0 / 31)
    geometry = ((1, 1), (15, 15, 15, 15), (1, 1))
    exact_key = dispatch.cache_key("dwconv2d", "forward", x, (31, 31), geometry)
    want = F.conv2d(x.double(), weight.double(), None, 1, 15, 1, 16)
    exact = rel_error(largeconv.dwconv2d(x, weight, None, 1, 15), want)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    tf32_key = dispatch.cache_key("dwconv2d", "forward", x, (31, 31), geometry)
    assert tf32_key != exact_key and tf32_key[3] == "float32-tf32", (exact_key, tf32_key)
    assert exact <= 1e-5, f"exact fp32 under auto: relative error {exact:.3g}"
    tf32 = rel_error(largeconv.dwconv2d(x, weight, None, 1, 15), want)
    assert tf32 <= 1e-3, f"TF32 allowed, under auto: relative error {tf32:.3g}"
    assert tf32_key in dispatch.auto_choices() and exact_key in dispatch.auto_choices()


DW_EDGE_CASES = {
    # name: (n, c, h, w, kernel, extra keyword arguments)
    "k1": (2, 8, 9, 10, (1, 1), {}),
    "k_bigger_than_map": (2, 8, 5, 6, (13, 13), {}),
    "stride2_odd": (2, 16, 15, 17, (5, 5), {"stride": (2, 2), "padding": (2, 2, 2, 2)}),
    "stride2_k3_valid": (2, 16, 15, 16, (3, 3), {"stride": (2, 2), "padding": (0, 0, 0, 0)}),
    "dilation2": (2, 8, 20, 21, (5, 5), {"dilation": (2, 2)}),
    "dilation3_k7": (1, 8, 30, 30, (7, 7), {"dilation": (3, 3)}),
    "rect_51x5": (2, 12, 32, 40, (51, 5), {}),
    "rect_5x51": (2, 12, 32, 40, (5, 51), {}),
    "even_4x4_same": (2, 8, 13, 14, (4, 4), {}),
    "multiplier2": (2, 8, 16, 16, (7, 7), {"mult": 2}),
    "multiplier3_stride2": (2, 6, 17, 15, (5, 5), {"mult": 3, "stride": (2, 2), "padding": (2, 2, 2, 2)}),
    "mixed_stride_dilation": (2, 6, 21, 19, (5, 3), {"stride": (2, 1), "dilation": (1, 2), "padding": (3, 1, 2, 2)}),
    "padding_beyond_kernel": (1, 4, 9, 9, (3, 3), {"padding": (5, 4, 0, 6)}),
    "no_bias": (2, 8, 12, 12, (9, 9), {"bias": False}),
    "wide_map": (1, 16, 9, 300, (13, 13), {}),
    "k63": (1, 4, 40, 40, (63, 63), {}),
    "odd_channels_slak": (2, 249, 20, 20, (47, 5), {}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DW_EDGE_CASES)
def test_dwconv_edge_cases(case, dtype, layout):
    n, c, h, w, kernel, kwargs = DW_EDGE_CASES[case]
    check_dwconv(n, c, h, w, kernel, dtype, layout, **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_dwconv_grad_weight_is_deterministic(layout):
    x = randn((4, 64, 56, 56), torch.float32, layout)
    grad = randn((4, 64, 56, 56), torch.float32, layout)
    args = ((1, 1), (15, 15, 15, 15), (1, 1))
    first = cuda_backend.dwconv2d_grad_weight(grad, x, (64, 1, 31, 31), *args)
    second = cuda_backend.dwconv2d_grad_weight(grad, x, (64, 1, 31, 31), *args)
    assert torch.equal(first, second)


# ---- depthwise convolution 1-D -----------------------------------------------------------------------------------

def dw1d_reference(x, weight, bias, grad, stride, padding, dilation, dtype):
    """Output, grad-input and grad-weight by autograd through F.conv1d, computed in `dtype`."""
    x_, w_ = (t.detach().to(dtype).requires_grad_() for t in (x, weight))
    b_ = None if bias is None else bias.detach().to(dtype)
    out = F.conv1d(F.pad(x_, padding), w_, b_, stride, 0, dilation, groups=x.shape[1])
    grad_x, grad_w = torch.autograd.grad(out, (x_, w_), grad.to(dtype))
    return out.detach(), grad_x, grad_w


def check_dwconv1d(n, c, length, k, dtype, stride=1, dilation=1, padding=None, mult=1, bias=True):
    if padding is None:  # "same": the odd element of an even kernel goes right, as in F.conv1d
        total = dilation * (k - 1)
        padding = (total // 2, total - total // 2)
    x = randn((n, c, length), dtype, "nchw")
    weight = randn((c * mult, 1, k), dtype, "nchw", scale=1.0 / k ** 0.5)
    b = randn((c * mult,), dtype, "nchw") if bias else None
    args = (stride, tuple(padding), dilation)

    with poisoned_allocations():
        out = cuda_backend.dwconv1d_forward(x, weight, b, *args)
    grad = randn(out.shape, dtype, "nchw")
    with poisoned_allocations():
        grad_x = cuda_backend.dwconv1d_grad_input(grad, weight, x.shape, *args)
        grad_w = cuda_backend.dwconv1d_grad_weight(grad, x, weight.shape, *args)
    torch.cuda.synchronize()

    ref = dw1d_reference(x, weight, b, grad, stride, padding, dilation, torch.float64)
    low = dw1d_reference(x, weight, b, grad, stride, padding, dilation, dtype) if dtype != torch.float32 else [None] * 3
    for name, got, want, want_low in zip(("forward", "grad_input", "grad_weight"), (out, grad_x, grad_w), ref, low):
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
        assert got.is_contiguous(), f"{name}: not contiguous"
        assert_close(got, want, want_low, what=name)


CONFORMER = [(2, 256, 1000, 31), (2, 512, 400, 31), (1, 1024, 4000, 31), (4, 144, 250, 15)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", CONFORMER, ids=lambda s: "x".join(map(str, s)))
def test_dwconv1d_conformer(shape, dtype):
    n, c, length, k = shape
    check_dwconv1d(n, c, length, k, dtype)


DW1D_EDGE_CASES = {
    # name: (n, c, length, k, extra keyword arguments)
    "k3": (2, 16, 100, 3, {}),
    "k7": (2, 16, 100, 7, {}),
    "k1": (2, 8, 50, 1, {}),
    "k65_runtime_k": (2, 16, 300, 65, {}),
    "k33_full_step_plus_one": (2, 8, 200, 33, {}),
    "k4_even_same": (2, 8, 77, 4, {}),
    "stride2_odd": (2, 16, 301, 31, {"stride": 2, "padding": (15, 15)}),
    "stride3_mult3": (2, 6, 100, 5, {"stride": 3, "padding": (0, 4), "mult": 3}),
    "dilation2": (2, 16, 300, 31, {"dilation": 2}),
    "stride2_dilation2_asym": (2, 8, 160, 31, {"stride": 2, "dilation": 2, "padding": (31, 30)}),
    "asymmetric_padding": (2, 16, 150, 31, {"padding": (20, 10)}),
    "multiplier2": (2, 16, 200, 31, {"mult": 2}),
    "length_below_k": (2, 8, 10, 31, {}),
    "tiny_length": (1, 4, 3, 7, {}),
    "valid": (2, 8, 100, 31, {"padding": (0, 0)}),
    "padding_beyond_kernel": (1, 4, 9, 3, {"padding": (5, 6)}),
    "long_row_tiles": (1, 8, 5000, 31, {}),
    "odd_channels": (3, 249, 333, 31, {}),
    "no_bias": (2, 16, 120, 31, {"bias": False}),
    "huge_dilation_fallback": (1, 4, 200, 65, {"dilation": 1000, "padding": (32000, 32000)}),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", DW1D_EDGE_CASES)
def test_dwconv1d_edge_cases(case, dtype):
    n, c, length, k, kwargs = DW1D_EDGE_CASES[case]
    check_dwconv1d(n, c, length, k, dtype, **kwargs)


def test_dwconv1d_grad_weight_is_deterministic():
    x = randn((8, 512, 1000), torch.float32, "nchw")
    grad = randn((8, 512, 1000), torch.float32, "nchw")
    args = (1, (15, 15), 1)
    first = cuda_backend.dwconv1d_grad_weight(grad, x, (512, 1, 31), *args)
    second = cuda_backend.dwconv1d_grad_weight(grad, x, (512, 1, 31), *args)
    assert torch.equal(first, second)


def test_dwconv1d_public_api_on_cuda_backend():
    """largeconv.dwconv1d(backend="cuda") and its autograd against F.conv1d (fp32)."""
    import largeconv
    x = randn((2, 64, 300), torch.float32, "nchw").requires_grad_()
    w = randn((64, 1, 31), torch.float32, "nchw", scale=0.2).requires_grad_()
    b = randn((64,), torch.float32, "nchw").requires_grad_()
    out = largeconv.dwconv1d(x, w, b, backend="cuda")
    grads = torch.autograd.grad(out.square().sum(), (x, w, b))
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, w, b))
    want = F.conv1d(x64, w64, b64, padding="same", groups=64)
    want_grads = torch.autograd.grad(want.square().sum(), (x64, w64, b64))
    assert_close(out.detach(), want.detach(), what="forward")
    for name, got, ref in zip(("grad_x", "grad_w", "grad_b"), grads, want_grads):
        assert_close(got, ref, what=name)


def test_dwconv1d_ops_reject_bad_arguments():
    x = randn((2, 8, 50), torch.float32, "nchw")
    weight = randn((8, 1, 5), torch.float32, "nchw")
    with pytest.raises(RuntimeError, match="does not match"):
        torch.ops.largeconv_C.dwconv1d_forward(x, weight, None, 1, [0, 0], 1, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.largeconv_C.dwconv1d_forward(x, weight.half(), None, 1, [2, 2], 1, torch.empty_like(x))
    with pytest.raises(RuntimeError, match="contiguous"):
        torch.ops.largeconv_C.dwconv1d_forward(x.transpose(1, 2).contiguous().transpose(1, 2), weight, None, 1,
                                               [2, 2], 1, torch.empty_like(x))


# ---- involution -------------------------------------------------------------------------------------------------

def involution_unfold(x, weight, k, s, p, d):
    """The definition: unfold, multiply by the per-pixel kernel, sum over the K*K taps."""
    b, c, _, _ = x.shape
    groups, (ho, wo) = weight.shape[1] // (k * k), weight.shape[2:]
    cols = F.unfold(x, k, d, p, s).view(b, groups, c // groups, k * k, ho, wo)
    return (cols * weight.view(b, groups, 1, k * k, ho, wo)).sum(3).view(b, c, ho, wo)


def inv_reference(x, weight, grad, k, s, p, d, dtype):
    x_, w_ = (t.detach().to(dtype).requires_grad_() for t in (x, weight))
    out = involution_unfold(x_, w_, k, s, p, d)
    grad_x, grad_w = torch.autograd.grad(out, (x_, w_), grad.to(dtype))
    return out.detach(), grad_x, grad_w


def off_by_one_element(t):
    """t's values in a tensor that starts one element into its storage (a view can: 16-bit rows then sit 2 bytes
    off a 4-byte boundary, where the CUDA involution stages through registers instead of 4-byte copies)."""
    storage = torch.empty(t.numel() + 1, device=t.device, dtype=t.dtype)
    if t.is_contiguous():
        out = storage[1:].view(t.shape)
    else:  # channels_last
        n, c, h, w = t.shape
        out = storage[1:].view(n, h, w, c).permute(0, 3, 1, 2)
    out.copy_(t)
    return out


def check_involution(b, c, h, w, k, groups, dtype, layout, s=1, p=None, d=1, misaligned=False):
    p = d * (k - 1) // 2 if p is None else p
    ho, wo = ((size + 2 * p - d * (k - 1) - 1) // s + 1 for size in (h, w))
    x = randn((b, c, h, w), dtype, layout)
    x = off_by_one_element(x) if misaligned else x
    weight = randn((b, groups * k * k, ho, wo), dtype, layout, scale=1.0 / k)
    with poisoned_allocations():
        out = cuda_backend.involution2d_forward(x, weight, k, s, p, d)
    grad = randn(out.shape, dtype, layout)
    grad = off_by_one_element(grad) if misaligned else grad
    with poisoned_allocations():
        grad_x = cuda_backend.involution2d_grad_input(grad, weight, x.shape, k, s, p, d)
        grad_w = cuda_backend.involution2d_grad_weight(grad, x, weight.shape, k, s, p, d)
    torch.cuda.synchronize()

    ref = inv_reference(x, weight, grad, k, s, p, d, torch.float64)
    low = inv_reference(x, weight, grad, k, s, p, d, dtype) if dtype != torch.float32 else [None] * 3
    for name, got, want, want_low in zip(("forward", "grad_input", "grad_weight"), (out, grad_x, grad_w), ref, low):
        assert got.dtype == dtype, f"{name}: dtype {got.dtype}"
        assert_close(got, want, want_low, what=name)
    for t in (out, grad_x, grad_w):
        expect_layout(t, layout)


REDNET_50 = [(2, 64, 56, 56, 1), (2, 128, 28, 28, 1), (2, 256, 14, 14, 1), (2, 512, 7, 7, 1),
             (2, 64, 56, 56, 2), (2, 128, 28, 28, 2), (2, 256, 14, 14, 2)]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", REDNET_50, ids=lambda s: "x".join(map(str, s[:4])) + f"_s{s[4]}")
def test_involution_rednet_stages(shape, dtype, layout):
    b, c, h, w, s = shape
    check_involution(b, c, h, w, 7, c // 16, dtype, layout, s=s)


INV_EDGE_CASES = {
    # name: (b, c, h, w, k, groups, extra keyword arguments)
    "k3": (2, 32, 17, 19, 3, 2, {}),
    "k15_bigger_than_map": (2, 16, 10, 9, 15, 1, {}),
    "dilation2": (2, 32, 20, 20, 3, 2, {"d": 2}),
    "stride2_odd": (2, 32, 13, 11, 7, 2, {"s": 2}),
    "stride3_dilation2": (1, 16, 20, 23, 5, 1, {"s": 3, "d": 2, "p": 1}),
    "no_padding": (2, 16, 12, 12, 5, 1, {"p": 0}),
    "wide_group_48ch": (2, 96, 14, 14, 7, 2, {}),  # 48 channels per group: three chunks in grad-weight
    "one_channel_per_group": (2, 8, 11, 12, 3, 8, {}),
    "wide_map": (1, 32, 6, 200, 7, 2, {}),
    "misaligned_rednet": (2, 32, 12, 12, 7, 2, {"misaligned": True}),
    # 16-bit banded kernels by copies of one value: odd widths, maps grown by padding 5 and shrunk by padding 1
    "rednet_odd_width_padding5": (2, 32, 9, 13, 7, 2, {"p": 5}),
    "rednet_odd_wide_padding1": (1, 16, 11, 61, 7, 1, {"p": 1}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", INV_EDGE_CASES)
def test_involution_edge_cases(case, dtype, layout):
    b, c, h, w, k, groups, kwargs = INV_EDGE_CASES[case]
    check_involution(b, c, h, w, k, groups, dtype, layout, **kwargs)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("w", [16, 14, 7])
def test_involution_non_finite_values_stay_where_unfold_puts_them(w, stride, dtype, layout):
    """RedNet's shape (K = 7, 16 channels a group; fp16/bf16 NCHW at stride 1: the banded tensor-core kernels, whose
    zero band entries meet other pixels' inputs, staged by copies of 4, 2 and 1 values at widths 16, 14 and 7): Inf
    and NaN in x, an Inf weight on a tap over padding (0 * Inf = NaN) and a NaN in grad_out land exactly where the
    float64 unfold definition puts them, finite values elsewhere."""
    b, c, h, k, groups, p = 2, 32, 12, 7, 2, 3
    ho, wo = ((size + 2 * p - k) // stride + 1 for size in (h, w))
    x = randn((b, c, h, w), dtype, layout)
    weight = randn((b, groups * k * k, ho, wo), dtype, layout, scale=1.0 / k)
    grad = randn((b, c, ho, wo), dtype, layout)
    x[0, 1, 2, 3], x[1, 20, 5, w - 2] = float("inf"), float("nan")
    weight[1, k * k, 0, 0] = float("inf")  # group 1, tap (0, 0) of output (0, 0): over the top-left padding
    grad[0, 5, 1, 2] = float("nan")
    with poisoned_allocations():
        out = cuda_backend.involution2d_forward(x, weight, k, stride, p, 1)
        grad_x = cuda_backend.involution2d_grad_input(grad, weight, x.shape, k, stride, p, 1)
        grad_w = cuda_backend.involution2d_grad_weight(grad, x, weight.shape, k, stride, p, 1)
    torch.cuda.synchronize()
    ref = inv_reference(x, weight, grad, k, stride, p, 1, torch.float64)
    low = inv_reference(x, weight, grad, k, stride, p, 1, dtype) if dtype != torch.float32 else [None] * 3
    for name, got, want, want_low in zip(("forward", "grad_input", "grad_weight"), (out, grad_x, grad_w), ref, low):
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), name
        assert want.isfinite().any(), name
        finite = want.isfinite()
        assert_close(got[finite], want[finite], None if want_low is None else want_low[finite], what=name)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("stride, p", [(2, 3), (2, 2), (3, 3)])
def test_involution_strided_grad_input_non_finite_in_a_later_column_tile(stride, p, dtype, layout):
    """RedNet's strided grad-input over 90 columns: two column tiles of 64 (two pixels a thread), the second staging
    grad_out from column (64 + p - 6) // stride. A NaN and an Inf there reach only the pixels the unfold definition
    says (a tap past the kernel once multiplied its zero weight by that staged value: NaN in the second tile,
    2026-11-29, csrc/ emulator; stride 2 now takes pixel pairs, stride 3 still has taps past the kernel)."""
    b, c, h, w, k, groups = 1, 16, 13, 90, 7, 1
    ho, wo = ((size + 2 * p - k) // stride + 1 for size in (h, w))
    x = randn((b, c, h, w), dtype, layout)
    weight = randn((b, groups * k * k, ho, wo), dtype, layout, scale=1.0 / k)
    grad = randn((b, c, ho, wo), dtype, layout)
    col = (64 + p - (k - 1)) // stride
    grad[0, 5, 1, col], grad[0, 9, 3, col] = float("nan"), float("inf")
    with poisoned_allocations():
        grad_x = cuda_backend.involution2d_grad_input(grad, weight, x.shape, k, stride, p, 1)
    torch.cuda.synchronize()
    want = inv_reference(x, weight, grad, k, stride, p, 1, torch.float64)[1]
    assert torch.equal(grad_x.isnan(), want.isnan()) and torch.equal(grad_x.isinf(), want.isinf())
    assert want.isnan().any() and want.isfinite()[..., 64:].any()


# ---- the backend's contract -------------------------------------------------------------------------------------

def test_unsupported_reason_on_cuda_tensors():
    x = torch.randn(1, 2, 5, 5, device="cuda")
    assert cuda_backend.unsupported_reason("dwconv2d", x, (31, 31)) is None
    assert cuda_backend.unsupported_reason("involution2d", x.half(), (7, 7)) is None
    assert "float64" in cuda_backend.unsupported_reason("dwconv2d", x.double(), (3, 3))
    assert "exceeds the maximum" in cuda_backend.unsupported_reason("dwconv2d", x, (129, 5))
    assert "exceeds the maximum" in cuda_backend.unsupported_reason("involution2d", x, (33, 33))
    x1 = torch.randn(1, 2, 5, device="cuda")
    assert cuda_backend.unsupported_reason("dwconv1d", x1, (31,)) is None
    assert cuda_backend.unsupported_reason("dwconv1d", x1.bfloat16(), (65,)) is None
    assert "float64" in cuda_backend.unsupported_reason("dwconv1d", x1.double(), (31,))
    assert "exceeds the maximum 1023 of" in cuda_backend.unsupported_reason("dwconv1d", x1, (1025,))


def test_ops_reject_mixed_layouts_and_dtypes():
    x = randn((2, 8, 10, 10), torch.float32, "cl")
    weight = randn((8, 1, 3, 3), torch.float32, "nchw")
    out_nchw = torch.empty(2, 8, 10, 10, device="cuda")
    with pytest.raises(RuntimeError, match="one memory format"):
        torch.ops.largeconv_C.dwconv2d_forward(x, weight, None, [1, 1], [1, 1, 1, 1], [1, 1], False, out_nchw)
    with pytest.raises(RuntimeError, match="dtype"):
        torch.ops.largeconv_C.dwconv2d_forward(x, weight.half(), None, [1, 1], [1, 1, 1, 1], [1, 1], False,
                                               torch.empty_like(x))
    with pytest.raises(RuntimeError, match="does not match"):
        torch.ops.largeconv_C.dwconv2d_forward(x, weight, None, [1, 1], [0, 0, 0, 0], [1, 1], False,
                                               torch.empty_like(x))


def test_runs_on_the_current_stream_and_device():
    x = randn((2, 32, 28, 28), torch.float32, "nchw")
    weight = randn((32, 1, 7, 7), torch.float32, "nchw")
    args = ((1, 1), (3, 3, 3, 3), (1, 1))
    expected = cuda_backend.dwconv2d_forward(x, weight, None, *args)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        out = cuda_backend.dwconv2d_forward(x, weight, None, *args)
    torch.cuda.current_stream().wait_stream(stream)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
