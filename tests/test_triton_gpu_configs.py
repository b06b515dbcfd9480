"""The Triton kernels with the tile configs, block sizes and grad-weight split counts a GPU uses, run under the
interpreter on tiny cases against the float64 F.conv2d / F.unfold reference.

The entry points pick interpreter-sized tiles when interpreted (kernels/dwconv.py, kernels/involution.py), so
without this file the code paths a GPU takes (its autotune candidates, channels_last channel blocks, several
grad-weight splits) would run nowhere before a GPU does. Every planned launch is run once per config, its output
filled with NaN before each run.
"""
import pytest
import torch
import torch.nn.functional as F

from largeconv.kernels import dwconv as dw, dwconv1d as dw1, involution as inv
from numerics import assert_close, involution_unfold

pytestmark = pytest.mark.skipif(torch.cuda.is_available() or not dw._INTERPRETED,
                                reason="runs the GPU configs under TRITON_INTERPRET=1 on CPU tensors")

SPLITS = 3  # grad-weight reduction slices (a GPU picks ~4 x SMs / programs)


def run_each_config(launch):
    """Run a planned launch once per tile config, output poisoned before each; yield after each run."""
    assert launch.configs, "no tile config planned"
    for config in launch.configs:
        launch.out.fill_(float("nan"))
        launch.run(config)
        yield config


# (N, C, multiplier, H, W, (Kh, Kw), stride, padding (top, bottom, left, right), dilation), layouts. Small: the
# interpreter pays per operation, and GPU tiles make few but long programs.
DWCONV_CASES = {
    # 2 and 3 output-column tiles of 32 and 16, Toeplitz strips cut at the input's edge
    "7x5-wide-rows": ((1, 1, 1, 9, 35, (7, 5), (1, 1), (3, 3, 2, 2), (1, 1)), ["nchw"]),
    # 3 pixel tiles of 64, the last one partly masked
    "7x5": ((1, 2, 1, 12, 11, (7, 5), (1, 1), (3, 3, 2, 2), (1, 1)), ["channels_last"]),
    "stride2-dilation2-m2": ((1, 2, 2, 13, 11, (5, 3), (2, 2), (4, 3, 2, 2), (2, 2)), ["nchw", "channels_last"]),
    # 72 channels: two channel blocks of 64, the second partly masked
    "wide-3x3": ((2, 72, 1, 5, 6, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), ["channels_last"]),
    # 7x7 maps of 19 images (RepLKNet's stage 4, K13 reaching across each map): 133 rows a channel, stacked into
    # NCHW tiles of 64 rows that hold several images and end partway through one
    "7x7-maps": ((19, 2, 1, 7, 7, (13, 13), (1, 1), (6, 6, 6, 6), (1, 1)), ["nchw"]),
    # 66-row maps: one image a tile, two row tiles of 64, the second nearly empty (128-row tiles: one)
    "tall-maps": ((2, 1, 1, 66, 9, (5, 3), (1, 1), (2, 2, 1, 1), (1, 1)), ["nchw"]),
}


@pytest.fixture(autouse=True)
def no_tf32(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)  # fp32 is checked to 1e-5


@pytest.mark.parametrize("case, layout", [(case, layout) for case, (_, layouts) in DWCONV_CASES.items()
                                          for layout in layouts])
def test_dwconv_gpu_configs(case, layout):
    n, c, m, h, w, (kh, kw), stride, padding, dilation = DWCONV_CASES[case][0]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(n, c, h, w).contiguous(memory_format=fmt)
    weight = torch.randn(c * m, 1, kh, kw)
    bias = torch.randn(c * m)
    top, bottom, left, right = padding
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    ref = F.conv2d(F.pad(x64, (left, right, top, bottom)), w64, bias.double(), stride, 0, dilation, groups=c)
    grad_out = torch.randn(ref.shape).contiguous(memory_format=fmt)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x64, w64), grad_out.double())

    y, launch = dw._plan_forward(x, weight, bias, stride, padding, dilation, gpu=True)
    # small maps at stride 1 with m = 1 stack several images' rows in a tile (7x7-maps: 19 images in 3 tiles)
    assert launch.meta.get("STACK", False) == (layout == "nchw" and h <= 32 and stride == (1, 1) and m == 1)
    for config in run_each_config(launch):
        assert_close(y, ref, what=f"forward {config}")
    gx, launch = dw._plan_grad_input(grad_out, weight, x.shape, stride, padding, dilation, gpu=True)
    for config in run_each_config(launch):
        assert_close(gx, ref_gx, what=f"grad input {config}")
    launch, finish = dw._plan_grad_weight(grad_out, x, weight.shape, stride, padding, dilation, gpu=True,
                                          splits=SPLITS)
    assert launch.out.shape[0] > 1, "the reduction should be split"
    for config in run_each_config(launch):
        assert_close(finish(), ref_gw, what=f"grad weight {config}")


# (N, C, multiplier, L, K, stride, padding (left, right), dilation). GPU tiles are 32 channels x 128 positions.
DWCONV1D_CASES = {
    # "same" with an even K (uneven padding); 2 length tiles, the second partly masked, and 3 of 32 channels
    "k6-same-two-tiles": (2, 3, 1, 150, 6, 1, (2, 3), 1),
    # 36 output channels: two channel blocks, the second partly masked; taps that skip odd input positions
    "k5-stride2-dilation2-m2": (1, 18, 2, 37, 5, 2, (4, 4), 2),
    # the banded path (stride 1, m = 1): 5 x 52 rows of 64 outputs, two programs of 4 row tiles per channel and
    # grad-weight in 3 splits; L = 3300 is a multiple of 4 (fp32 16-byte window loads) and the last block is part
    "k31-same-banded": (5, 2, 1, 3300, 31, 1, (15, 15), 1),
    # dilation 2, no padding: windows of 128 columns starting at the input's first column, a 2-column fp64 ALIGN
    "k15-dilation2-valid-banded": (2, 3, 1, 200, 15, 1, (0, 0), 2),
}
BANDED = {"k6-same-two-tiles", "k31-same-banded", "k15-dilation2-valid-banded"}  # stride 1, m = 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])  # fp64 has its own warp count
@pytest.mark.parametrize("case", DWCONV1D_CASES)
def test_dwconv1d_gpu_configs(case, dtype):
    n, c, m, length, k, stride, padding, dilation = DWCONV1D_CASES[case]
    x = torch.randn(n, c, length, dtype=dtype)
    weight = torch.randn(c * m, 1, k, dtype=dtype)
    bias = torch.randn(c * m, dtype=dtype)
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    ref = F.conv1d(F.pad(x64, padding), w64, bias.double(), stride, 0, dilation, groups=c)
    grad_out = torch.randn(ref.shape, dtype=dtype)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x64, w64), grad_out.double())

    y, launch = dw1._plan_forward(x, weight, bias, stride, padding, dilation, gpu=True)
    assert launch.configs != [dw1._config(x.dtype, gpu=False)], "the GPU's tiles"
    banded = case in BANDED and dtype != torch.float64  # fp64 keeps the direct kernels
    assert (launch.kernel is dw1._corr_toeplitz_kernel) == banded
    for config in run_each_config(launch):
        assert_close(y, ref, what=f"forward {config}")
    gx, launch = dw1._plan_grad_input(grad_out, weight, x.shape, stride, padding, dilation, gpu=True)
    for config in run_each_config(launch):
        assert_close(gx, ref_gx, what=f"grad input {config}")
    gw, launch = dw1._plan_grad_weight(grad_out, x, weight.shape, stride, padding, dilation, gpu=True)
    for config in run_each_config(launch):
        assert_close(gw, ref_gw, what=f"grad weight {config}")


# (B, C, G, H, W, K, stride, dilation)
INVOLUTION_CASES = {
    "k3": (1, 32, 2, 5, 6, 3, 1, 1),
    "k5-stride2-dilation2": (1, 16, 1, 9, 10, 3, 2, 2),
    # 37 and 35 columns: two pixel-tile columns of 32, the second mostly masked, and rows split over tiles
    "wide-rows": (1, 4, 1, 3, 37, 3, 1, 1),
    "wide-rows-stride2": (1, 4, 2, 5, 70, 3, 2, 1),
}


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("case", INVOLUTION_CASES)
def test_involution_gpu_configs(case, layout):
    b, c, g, h, w, k, stride, dilation = INVOLUTION_CASES[case]
    pad = dilation * (k - 1) // 2
    ho, wo = ((size + 2 * pad - dilation * (k - 1) - 1) // stride + 1 for size in (h, w))
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(b, c, h, w).contiguous(memory_format=fmt)
    weight = torch.randn(b, g * k * k, ho, wo).contiguous(memory_format=fmt)
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    ref = involution_unfold(x64, w64, k, stride, pad, dilation)
    grad_out = torch.randn(ref.shape).contiguous(memory_format=fmt)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x64, w64), grad_out.double())

    y, launch = inv._plan_forward(x, weight, k, stride, pad, dilation, gpu=True)
    assert len(launch.configs) > 1, "the GPU's autotune candidates"
    for config in run_each_config(launch):
        assert_close(y, ref, what=f"forward {config}")
    gx, launch = inv._plan_grad_input(grad_out, weight, x.shape, k, stride, pad, dilation, gpu=True)
    for config in run_each_config(launch):
        assert_close(gx, ref_gx, what=f"grad input {config}")
    gw, launch = inv._plan_grad_weight(grad_out, x, weight.shape, k, stride, pad, dilation, gpu=True)
    for config in run_each_config(launch):
        assert_close(gw, ref_gw, what=f"grad weight {config}")


def test_involution_runs_a_config_the_prune_drops():
    """A pixel block narrower than the tile width (BLOCK_P 16, 32-wide rows) is pruned when the autotuner has a
    choice, but a single config runs unpruned (the GPU kit's workers keep one per kernel): it must still cover every
    pixel. Its first GPU run divided by zero on RedNet's stride-2 layer."""
    b, c, g, h, w, k, stride, dilation = INVOLUTION_CASES["wide-rows-stride2"]
    pad = dilation * (k - 1) // 2
    x = torch.randn(b, c, h, w)
    ho, wo = ((size + 2 * pad - dilation * (k - 1) - 1) // stride + 1 for size in (h, w))
    weight = torch.randn(b, g * k * k, ho, wo)
    x64, w64 = x.double().requires_grad_(), weight.double().requires_grad_()
    ref = involution_unfold(x64, w64, k, stride, pad, dilation)
    grad_out = torch.randn(ref.shape)
    ref_gx, ref_gw = torch.autograd.grad(ref, (x64, w64), grad_out.double())
    narrow = next(cfg for cfg in inv._configs(gpu=True) if cfg.kwargs["BLOCK_P"] == 16)
    plans = [(inv._plan_forward(x, weight, k, stride, pad, dilation, gpu=True), ref),
             (inv._plan_grad_input(grad_out, weight, x.shape, k, stride, pad, dilation, gpu=True), ref_gx),
             (inv._plan_grad_weight(grad_out, x, weight.shape, k, stride, pad, dilation, gpu=True), ref_gw)]
    for (out, launch), expected in plans:
        assert launch.meta["BLOCK_W"] == 32 and narrow not in launch.configs, "the case must hit a pruned config"
        launch.out.fill_(float("nan"))
        launch.run(narrow)
        assert_close(out, expected, what=f"{launch.kernel.fn.__name__} {narrow}")


def test_toeplitz_tiles_follow_the_dtype_and_never_prune_to_nothing():
    """fp32/fp64 get the 8-warp tiles that do not spill (bench/sm90.py), fp16/bf16 the 4-warp ones; when the GPU run
    kit has cut the autotuner's list to configs of the other kind, those still run (an empty list would raise)."""
    every = dw._all_toeplitz_configs() if not dw._INTERPRETED else None
    wide, narrow = dw._toeplitz_configs(gpu=True, wide=True), dw._toeplitz_configs(gpu=True, wide=False)
    key = dw._config_key
    assert {key(c) for c in wide} != {key(c) for c in narrow}
    for dtype, expected in ((torch.float32, wide), (torch.float64, wide), (torch.bfloat16, narrow),
                            (torch.float16, narrow)):
        args = {"x_ptr": torch.empty(1, dtype=dtype), "C": 3}
        both = wide + [c for c in narrow if key(c) not in {key(w) for w in wide}]  # as the autotuner holds them
        kept = dw._prune_toeplitz(both, args)
        assert sorted(key(c) for c in kept) == sorted(key(c) for c in expected), dtype
        other = narrow if expected is wide else wide
        only_other = [c for c in other if key(c) not in {key(e) for e in expected}]
        assert dw._prune_toeplitz(only_other, args) == only_other, dtype
    if every is not None:  # on a GPU the autotuner holds both lists
        assert {key(c) for c in every} == {key(c) for c in wide + narrow}
