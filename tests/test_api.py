"""Public API behaviour: bad input, backend selection, LargeDWConv2d and convert."""
import copy
import time

import pytest
import torch
from torch import nn
import torch.nn.functional as F

import largeconv
from largeconv import dispatch
from numerics import assert_close, involution_unfold


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


# ---- bad input: every public entry names the argument, what was expected and what was got ----------------------

DWCONV_BAD = [
    (lambda: largeconv.dwconv2d(_x(3, 8, 8), _x(3, 1, 3, 3)), ValueError, r"x must be 4-D .* got shape \(3, 8, 8\)"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 3, 3)), ValueError, r"weight must be \(C\*m, 1, Kh, Kw\)"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 2, 3, 3)), ValueError, r"weight must be \(C\*m, 1, Kh, Kw\)"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(4, 1, 3, 3)), ValueError, r"weight has 4 output channels.*3 input"),
    (lambda: largeconv.dwconv2d(torch.ones(1, 3, 8, 8, dtype=torch.int64), _x(3, 1, 3, 3)), TypeError,
     r"x must be a floating-point tensor.*torch.int64"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3, dtype=torch.float64)), TypeError,
     r"weight dtype torch.float64 does not match x dtype torch.float32"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), _x(4)), ValueError, r"bias must have shape \(3,\)"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), stride=0, padding=1), ValueError,
     r"stride must be >= 1"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), dilation=(1, 0)), ValueError,
     r"dilation must be >= 1"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), padding=-1), ValueError, r"padding must be >= 0"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), padding=(1, -1)), ValueError,
     r"padding must be >= 0, got \(1, -1\)"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), padding="full"), ValueError,
     r"padding must be 'same', 'valid'"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), stride=2, padding="same"), ValueError,
     r"padding='same' needs stride 1"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), stride=1.5), TypeError,
     r"stride must be an int or a pair of ints"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 4, 4), _x(3, 1, 7, 7), padding=0), ValueError,
     r"kernel \(7, 7\).*larger than the padded input"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), padding=0, dilation=4), ValueError,
     r"kernel \(3, 3\) with dilation \(4, 4\) is larger than the padded input"),
    (lambda: largeconv.dwconv2d("x", _x(3, 1, 3, 3)), TypeError, r"x must be a torch.Tensor, got str"),
    (lambda: largeconv.dwconv2d(_x(1, 3, 8, 8), _x(3, 1, 3, 3), backend="fast"), ValueError,
     r"backend must be one of"),
]

INVOLUTION_BAD = [
    (lambda: largeconv.involution2d(_x(1, 4, 8, 8), _x(1, 27, 8, 8), 3), ValueError,
     r"the 3 groups of weight .* do not divide the 4 channels"),
    (lambda: largeconv.involution2d(_x(1, 4, 8, 8), _x(1, 10, 8, 8), 3), ValueError,
     r"weight has 10 channels, which is not a positive multiple of kernel_size\*\*2 = 9"),
    (lambda: largeconv.involution2d(_x(1, 4, 8, 8), _x(1, 18, 7, 8), 3), ValueError,
     r"weight spatial size \(7, 8\) does not match the output size \(8, 8\)"),
    (lambda: largeconv.involution2d(_x(1, 4, 9, 9), _x(1, 18, 4, 4), 3, stride=2), ValueError,
     r"weight spatial size \(4, 4\) does not match the output size \(5, 5\)"),
    (lambda: largeconv.involution2d(_x(2, 4, 8, 8), _x(1, 18, 8, 8), 3), ValueError,
     r"weight batch 1 does not match x batch 2"),
    (lambda: largeconv.involution2d(_x(4, 8, 8), _x(1, 18, 8, 8), 3), ValueError, r"x must be 4-D"),
    (lambda: largeconv.involution2d(_x(1, 4, 8, 8), _x(1, 18, 8, 8), 3, stride=0), ValueError,
     r"stride must be >= 1"),
    (lambda: largeconv.involution2d(_x(1, 4, 8, 8), _x(1, 18, 8, 8), 3, padding=-1), ValueError,
     r"padding must be >= 0"),
    (lambda: largeconv.involution2d(_x(1, 4, 8, 8), _x(1, 18, 8, 8, dtype=torch.float16), 3), TypeError,
     r"weight dtype torch.float16 does not match x dtype torch.float32"),
    (lambda: largeconv.involution2d(_x(1, 4, 8, 8).int(), _x(1, 18, 8, 8), 3), TypeError,
     r"x must be a floating-point tensor"),
    (lambda: largeconv.involution2d(_x(1, 4, 8, 8), _x(1, 18, 8, 8), 3.0), TypeError,
     r"kernel_size must be an int"),
]


@pytest.mark.parametrize("call, error, message", DWCONV_BAD + INVOLUTION_BAD)
def test_bad_input_is_named(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_module_bad_arguments():
    with pytest.raises(ValueError, match="backend must be one of"):
        largeconv.LargeDWConv2d(4, 7, backend="gpu")
    with pytest.raises(ValueError, match="group_channels=3 must divide channels=8"):
        largeconv.Involution2d(8, group_channels=3)
    with pytest.raises(ValueError, match="not depthwise"):
        largeconv.LargeDWConv2d.from_conv2d(nn.Conv2d(4, 4, 3))
    with pytest.raises(ValueError, match="padding_mode 'reflect'"):
        largeconv.LargeDWConv2d.from_conv2d(nn.Conv2d(4, 4, 3, groups=4, padding_mode="reflect"))


# ---- backend selection ------------------------------------------------------------------------------------------

def test_backend_precedence(monkeypatch):
    monkeypatch.delenv("LARGECONV_BACKEND", raising=False)
    assert dispatch.requested_backend(None) == "auto"
    monkeypatch.setenv("LARGECONV_BACKEND", "torch")
    assert dispatch.requested_backend(None) == "torch"
    with largeconv.use_backend("cpu"):
        assert dispatch.requested_backend(None) == "cpu"          # context manager beats the environment
        assert dispatch.requested_backend("auto") == "cpu"        # "auto" defers
        assert dispatch.requested_backend(None, "triton") == "triton"  # a module's choice beats the context
        assert dispatch.requested_backend("torch", "triton") == "torch"  # the call beats everything
    monkeypatch.setenv("LARGECONV_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="LARGECONV_BACKEND must be one of"):
        dispatch.requested_backend(None)


def _record_calls(monkeypatch, delay_s=None):
    """Patch the dwconv forward of "torch" and "cpu" to record which runs (and optionally slow one down)."""
    calls = []
    for name in ("torch", "cpu"):
        module = dispatch.backend_module(name)
        original = module.dwconv2d_forward

        def recorded(*args, _name=name, _original=original):
            calls.append(_name)
            if delay_s and _name in delay_s:
                time.sleep(delay_s[_name])
            return _original(*args)
        monkeypatch.setattr(module, "dwconv2d_forward", recorded)
    return calls


def test_backend_actually_used(monkeypatch):
    """The chosen backend's function is the one that runs."""
    calls = _record_calls(monkeypatch)
    x, w = _x(1, 2, 6, 6), _x(2, 1, 3, 3)
    monkeypatch.delenv("LARGECONV_BACKEND", raising=False)
    with largeconv.use_backend("torch"):
        largeconv.dwconv2d(x, w)
    monkeypatch.setenv("LARGECONV_BACKEND", "torch")
    largeconv.dwconv2d(x, w)
    largeconv.LargeDWConv2d(2, 3, backend="cpu")(x)
    assert calls == ["torch", "torch", "cpu"]


@pytest.mark.parametrize("slow", ["cpu", "torch"])
def test_auto_measures_once_and_picks_the_faster(monkeypatch, slow):
    monkeypatch.delenv("LARGECONV_BACKEND", raising=False)
    monkeypatch.setattr(dispatch, "_auto_cache", {})
    calls = _record_calls(monkeypatch, delay_s={slow: 0.02})
    x, w = _x(1, 3, 7, 7), _x(3, 1, 5, 5)
    largeconv.dwconv2d(x, w)
    assert set(calls) == {"cpu", "torch"}  # both timed on the first call
    fast = "torch" if slow == "cpu" else "cpu"
    assert list(dispatch.auto_choices().values()) == [fast]
    calls.clear()
    largeconv.dwconv2d(_x(1, 3, 7, 7), w)  # same shape bucket: no new measurement
    assert calls == [fast]


def test_auto_measures_each_layout(monkeypatch):
    """NCHW and channels_last of one shape run different code at different speeds: auto measures each (two cache
    entries) instead of reusing the NCHW timing for channels_last."""
    monkeypatch.delenv("LARGECONV_BACKEND", raising=False)
    monkeypatch.setattr(dispatch, "_auto_cache", {})
    calls = _record_calls(monkeypatch)
    x, w = _x(1, 3, 7, 7), _x(3, 1, 5, 5)
    largeconv.dwconv2d(x, w)
    calls.clear()
    largeconv.dwconv2d(x.contiguous(memory_format=torch.channels_last), w)
    assert set(calls) == {"cpu", "torch"}, f"channels_last was not measured (ran {calls})"
    assert len(dispatch.auto_choices()) == 2


def test_explicit_backend_that_cannot_run_raises():
    x, w = _x(1, 2, 6, 6), _x(2, 1, 3, 3)
    with pytest.raises(RuntimeError, match="backend 'cuda' cannot run this call: .*"):
        largeconv.dwconv2d(x, w, backend="cuda")


# ---- LargeDWConv2d and convert -----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [dict(kernel_size=7, padding=3), dict(kernel_size=(5, 3), stride=2, padding=1),
                                    dict(kernel_size=4, padding="same", bias=False), dict(kernel_size=3, dilation=2,
                                                                                          padding=2)])
def test_conv2d_state_dict_loads(kwargs):
    conv = nn.Conv2d(6, 12, groups=6, **kwargs)
    module = largeconv.LargeDWConv2d(6, kwargs["kernel_size"], stride=kwargs.get("stride", 1),
                                     padding=kwargs["padding"], dilation=kwargs.get("dilation", 1),
                                     bias=kwargs.get("bias", True), channel_multiplier=2)
    assert module.state_dict().keys() == conv.state_dict().keys()
    module.load_state_dict(conv.state_dict())
    x = _x(2, 6, 11, 10)
    assert_close(module(x), conv.double()(x.double()))


def test_default_padding_keeps_size_and_repr():
    module = largeconv.LargeDWConv2d(8, 31)
    assert module(_x(1, 8, 20, 24)).shape == (1, 8, 20, 24)
    assert repr(module) == ("LargeDWConv2d(8, 8, kernel_size=(31, 31), stride=(1, 1), padding=(15, 15), "
                            "dilation=(1, 1))")
    assert "backend='torch'" in repr(largeconv.LargeDWConv2d(8, 3, bias=False, backend="torch"))


@pytest.mark.parametrize("kernel, dilation", [(4, 2), (2, 3), (6, 2), ((4, 5), (3, 2))], ids=str)
def test_default_padding_even_kernels_with_dilation(kernel, dilation):
    """The default padding is d*(k-1)//2 (the design): with even kernels and dilation the output is nn.Conv2d's
    with that padding, in size and values."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    dh, dw = (dilation, dilation) if isinstance(dilation, int) else dilation
    padding = (dh * (kh - 1) // 2, dw * (kw - 1) // 2)
    module = largeconv.LargeDWConv2d(3, kernel, dilation=dilation)
    conv = nn.Conv2d(3, 3, kernel, padding=padding, dilation=dilation, groups=3).double()
    conv.load_state_dict(module.state_dict())
    x = _x(2, 3, 12, 13)
    assert_close(module(x), conv(x.double()))


def test_from_conv2d_shares_parameters():
    conv = nn.Conv2d(4, 4, 5, padding=2, groups=4)
    module = largeconv.LargeDWConv2d.from_conv2d(conv)
    assert module.weight is conv.weight and module.bias is conv.bias
    x = _x(2, 4, 9, 9)
    assert_close(module(x), conv(x).double())


def test_convert_swaps_depthwise_convs_only():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.Sequential(nn.Conv2d(8, 8, 7, padding=3, groups=8), nn.ReLU()),
        nn.Conv2d(8, 16, 5, padding=2, groups=8),   # depthwise with multiplier 2
        nn.Conv2d(16, 16, 3, padding=1, groups=4),  # grouped, not depthwise
        nn.Conv2d(16, 16, 3, padding=1, groups=16, padding_mode="circular"),  # not zero padding
    )
    x = _x(2, 3, 12, 12)
    expected = model(x)
    largeconv.convert(model, min_kernel_size=1)  # every eligible conv, whatever its size
    kinds = [type(m).__name__ for m in (model[0], model[1][0], model[2], model[3], model[4])]
    assert kinds == ["Conv2d", "LargeDWConv2d", "LargeDWConv2d", "Conv2d", "Conv2d"]
    assert_close(model(x), expected.double())
    assert type(largeconv.convert(nn.Conv2d(4, 4, 3, groups=4), min_kernel_size=1)) is largeconv.LargeDWConv2d
    small = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    assert type(largeconv.convert(small, min_kernel_size=5)[0]) is nn.Conv2d
    # by default small kernels stay PyTorch's (faster end to end) and large ones are converted
    mixed = largeconv.convert(nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                            nn.Conv2d(4, 4, 31, padding=15, groups=4)))
    assert [type(m).__name__ for m in mixed] == ["Conv2d", "LargeDWConv2d"]


def test_involution_module_keys_and_shapes():
    module = largeconv.Involution2d(32, kernel_size=7, stride=2, group_channels=16, reduction_ratio=4)
    keys = set(module.state_dict().keys())
    assert keys == {"conv1.conv.weight", "conv1.bn.weight", "conv1.bn.bias", "conv1.bn.running_mean",
                    "conv1.bn.running_var", "conv1.bn.num_batches_tracked", "conv2.conv.weight", "conv2.conv.bias"}
    assert module.conv2.conv.weight.shape == (7 * 7 * 2, 8, 1, 1)
    for size in (14, 15, 13):  # divisible and not divisible by the stride: the kernel branch must give Ho x Wo
        out = module(_x(2, 32, size, size + 1))
        expected = ((size - 1) // 2 + 1, size // 2 + 1)
        assert out.shape == (2, 32, *expected)


def test_involution_module_matches_official_formula():
    """With H, W divisible by the stride: AvgPool -> conv1 (conv, BN, ReLU) -> conv2 -> unfold-weight-sum."""
    torch.manual_seed(0)
    module = largeconv.Involution2d(16, kernel_size=3, stride=2, group_channels=8).eval()
    x = _x(2, 16, 8, 8)
    kernel = module.conv2.conv(module.conv1.activate(module.conv1.bn(module.conv1.conv(F.avg_pool2d(x, 2, 2)))))
    unfolded = F.unfold(x, 3, 1, 1, 2).view(2, 2, 8, 9, 4, 4)
    expected = (kernel.view(2, 2, 1, 9, 4, 4) * unfolded).sum(3).view(2, 16, 4, 4)
    assert_close(module(x), expected.double())


def test_compile_involution_module_fullgraph():
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = largeconv.Involution2d(16, kernel_size=3, stride=2, group_channels=8).eval()
    compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 16, 9, 9, requires_grad=True)
    out = compiled(x)
    grads = torch.autograd.grad(out.sum(), (x, module.conv2.conv.weight))
    # against the definition in float64: kernel from AvgPool(2, ceil_mode) -> conv1 -> conv2, then unfold-multiply-sum
    ref_module = copy.deepcopy(module).double()
    x64 = x.detach().double().requires_grad_()
    kernel = ref_module.conv2(ref_module.conv1(F.avg_pool2d(x64, 2, 2, ceil_mode=True)))
    expected = involution_unfold(x64, kernel, 3, 2, 1, 1)
    assert_close(out, expected, what="compiled output")
    ref_grads = torch.autograd.grad(expected.sum(), (x64, ref_module.conv2.conv.weight))
    for name, a, b in zip(("x", "conv2 weight"), grads, ref_grads):
        assert_close(a, b, what=f"compiled grad {name}")
