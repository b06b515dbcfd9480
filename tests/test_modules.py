"""LargeDWConv2d as a true nn.Conv2d (attributes, official-style code, init loops, timm's fuse helpers), convert's
rules (nn.Conv2d subclasses, timm's Conv2dSame, the default kernel-size threshold) and Involution2d's factory
arguments. Small shapes only."""
import warnings

import pytest
import torch

from torch import nn
import torch.nn.functional as F

import largeconv
from largeconv import Involution2d, LargeDWConv2d
from largeconv.convert import DEFAULT_MIN_KERNEL_SIZE
from numerics import assert_close, randomize_bn, rel_error

CONV2D_ATTRIBUTES = ("in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
                     "padding_mode", "transposed", "output_padding", "_reversed_padding_repeated_twice")


def reference(module, x):
    """The module's conv computed by F.conv2d in float64 from its own attributes."""
    bias = None if module.bias is None else module.bias.double()
    return F.conv2d(x.double(), module.weight.double(), bias, module.stride, module.padding, module.dilation,
                    module.groups)


# ---- LargeDWConv2d is an nn.Conv2d ------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs", [
    dict(kernel_size=7),
    dict(kernel_size=(5, 3), stride=2, padding=1, dilation=(1, 2), bias=False, channel_multiplier=2),
    dict(kernel_size=4, padding="same"),
    dict(kernel_size=3, padding="valid", dilation=2),
])
def test_has_every_nn_conv2d_attribute(kwargs):
    torch.manual_seed(0)
    module = LargeDWConv2d(6, **kwargs)
    multiplier = kwargs.get("channel_multiplier", 1)
    k = kwargs["kernel_size"]
    padding = kwargs.get("padding", (k - 1) // 2 if isinstance(k, int) else None)
    conv = nn.Conv2d(6, 6 * multiplier, k, kwargs.get("stride", 1), padding, kwargs.get("dilation", 1),
                     groups=6, bias=kwargs.get("bias", True))
    assert isinstance(module, nn.Conv2d)
    for name in CONV2D_ATTRIBUTES:
        assert getattr(module, name) == getattr(conv, name), name
    assert module.weight.shape == conv.weight.shape and (module.bias is None) == (conv.bias is None)
    x = torch.randn(2, 6, 11, 10)
    assert_close(module(x), reference(module, x))
    assert_close(module(x[0]), reference(module, x[:1])[0])  # unbatched (C, H, W), as nn.Conv2d
    assert module.channels == 6 and module.channel_multiplier == multiplier  # the old names still read


def test_padding_mode_other_than_zeros_is_a_clear_error():
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'.*'reflect'"):
        LargeDWConv2d(4, 3, padding_mode="reflect")
    module = LargeDWConv2d(4, 3)
    module.padding_mode = "circular"  # changed afterwards, as code written for nn.Conv2d may do
    with pytest.raises(ValueError, match="padding_mode='zeros' only, got 'circular'"):
        module(torch.randn(1, 4, 5, 5))
    with pytest.raises(ValueError, match="channels must be an int >= 1"):
        LargeDWConv2d(0, 3)


def test_official_implicit_gemm_constructor_form():
    """DepthWiseConv2dImplicitGEMM(channels, kernel, bias=...): size-keeping padding K // 2, as its forward does."""
    torch.manual_seed(1)
    module = LargeDWConv2d(8, 13, bias=False)
    assert module.padding == (6, 6) and module.bias is None and module.groups == module.out_channels == 8
    x = torch.randn(2, 8, 15, 14)
    assert_close(module(x), reference(module, x))


def fold_bn_like_official_code(seq):
    """What official re-parameterization code does with a conv + BN (RepLKNet's fuse_bn / deep_fuse_BN): read the
    conv's weight and nn.Conv2d attributes, build a new conv of the same class from them."""
    conv, bn = seq.conv, seq.bn
    std = (bn.running_var + bn.eps).sqrt()
    weight = conv.weight * (bn.weight / std).reshape(-1, 1, 1, 1)
    bias = bn.bias - bn.running_mean * bn.weight / std
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True)
    fused.weight.data, fused.bias.data = weight.detach(), bias.detach()
    return fused


def test_official_style_code_and_init_loops_work_on_converted_models():
    torch.manual_seed(2)
    seq = nn.Sequential()
    seq.add_module("conv", nn.Conv2d(8, 8, 9, padding=4, groups=8, bias=False))
    seq.add_module("bn", nn.BatchNorm2d(8))
    model = nn.Sequential(nn.Conv2d(3, 8, 1), seq)
    randomize_bn(model)
    largeconv.convert(model, min_kernel_size=1)
    assert isinstance(seq.conv, LargeDWConv2d)
    model.eval()
    x = torch.randn(2, 3, 12, 12)
    with torch.no_grad():
        expected = model(x)
        model[1] = fold_bn_like_official_code(seq)
        assert rel_error(model(x), expected) <= 1e-5
    # weight-init loops over nn.Conv2d reach the converted layers (SLaK and ConvNeXt init with trunc_normal_)
    converted = largeconv.convert(nn.Sequential(nn.Conv2d(4, 4, 11, padding=5, groups=4)), min_kernel_size=1)
    before = converted[0].weight.detach().clone()
    for m in converted.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    assert not torch.equal(converted[0].weight, before) and not converted[0].bias.any()


def test_timm_repvit_fuse_on_converted_block():
    """timm's RepVGG-style depthwise block (RepViT) fuses itself by reading conv.groups, stride, padding, ... ."""
    repvit = pytest.importorskip("timm.models.repvit")
    torch.manual_seed(3)
    block = repvit.RepVggDw(8, 3)
    randomize_bn(block)
    largeconv.convert(block, min_kernel_size=1)
    assert isinstance(block.conv.c, LargeDWConv2d)
    block.eval()
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        expected = block(x)
        fused = block.fuse()
        assert rel_error(fused(x), expected) <= 1e-5


def test_state_dict_and_deepcopy():
    import copy
    module = LargeDWConv2d(4, 5, channel_multiplier=2, backend="torch")
    clone = copy.deepcopy(module)
    assert clone.backend == "torch" and torch.equal(clone.weight, module.weight)
    conv = nn.Conv2d(4, 8, 5, padding=2, groups=4)
    conv.load_state_dict(module.state_dict())
    x = torch.randn(1, 4, 7, 7)
    assert_close(module(x), conv.double()(x.double()))


# ---- convert: subclasses of nn.Conv2d ---------------------------------------------------------------------------

class ImplicitGEMMLookAlike(nn.Conv2d):
    """Built like the official DepthWiseConv2dImplicitGEMM(channels, kernel, bias): nn.Conv2d attributes with
    padding 0, a forward of its own that pads K // 2 and adds the bias afterwards (here computed with the
    project's reference backend)."""

    def __init__(self, channels, kernel, bias=False):
        super().__init__(channels, channels, kernel, groups=channels, bias=bias)

    def forward(self, x):
        out = largeconv.dwconv2d(x, self.weight, None, padding=self.kernel_size[0] // 2, backend="torch")
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


class ShiftedConv(nn.Conv2d):
    """A depthwise-looking subclass whose forward is not a plain conv: convert must leave it."""

    def forward(self, x):
        return super().forward(x) + 1


def test_convert_official_implicit_gemm_class():
    torch.manual_seed(4)
    model = nn.Sequential(ImplicitGEMMLookAlike(6, 13, bias=True), nn.ReLU(), ImplicitGEMMLookAlike(6, 7))
    x = torch.randn(2, 6, 16, 15)
    with torch.no_grad():
        expected = model(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        largeconv.convert(model, min_kernel_size=1)
    assert [type(m) for m in model] == [LargeDWConv2d, nn.ReLU, LargeDWConv2d]
    assert model[0].padding == (6, 6) and model[2].padding == (3, 3)  # the padding its forward applied
    assert_close(model(x), expected.double())


def test_convert_leaves_subclasses_that_are_not_plain_convs():
    torch.manual_seed(5)
    model = nn.Sequential(ShiftedConv(4, 4, 9, padding=4, groups=4))
    with pytest.warns(UserWarning, match="left ShiftedConv as it is"):
        largeconv.convert(model, min_kernel_size=1)
    assert type(model[0]) is ShiftedConv
    with pytest.raises(ValueError, match="does not compute a plain depthwise conv"):
        LargeDWConv2d.from_conv2d(ShiftedConv(4, 4, 9, groups=4))


def test_convert_timm_conv2d_same():
    """Stride 1 (even kernels: static TF "SAME") converts to padding "same"; stride 2 pads by each input's size,
    which no fixed padding reproduces: left alone."""
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(6)
    model = nn.Sequential(layers.Conv2dSame(6, 6, 4, groups=6), layers.Conv2dSame(6, 6, 5, stride=2, groups=6))
    with pytest.warns(UserWarning, match="left Conv2dSame"):
        largeconv.convert(model, min_kernel_size=1)
    assert type(model[0]) is LargeDWConv2d and model[0].padding == "same"
    assert type(model[1]) is layers.Conv2dSame
    for size in (12, 13):
        x = torch.randn(2, 6, size, size + 1)
        with torch.no_grad():
            expected = F.conv2d(F.pad(x.double(), (1, 2, 1, 2)), model[0].weight.double(), model[0].bias.double(),
                                groups=6)
            assert_close(model[0](x), expected)


def test_convert_leaves_hooked_parametrized_and_converted_convs():
    weight_normed = nn.utils.parametrizations.weight_norm(nn.Conv2d(4, 4, 9, padding=4, groups=4))
    hooked = nn.Conv2d(4, 4, 9, padding=4, groups=4)
    hooked.register_forward_hook(lambda module, args, out: out * 2)
    done = LargeDWConv2d(4, 9, backend="torch")
    model = nn.Sequential(weight_normed, hooked, done)
    largeconv.convert(model, min_kernel_size=1)
    assert model[0] is weight_normed and model[1] is hooked and model[2] is done


def test_convert_default_threshold_keeps_small_kernels():
    """By default only kernels with >= DEFAULT_MIN_KERNEL_SIZE**2 taps are converted (rectangular ones by area)."""
    size = DEFAULT_MIN_KERNEL_SIZE["cpu"]
    small, large = size - 2, size
    model = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, small, padding="same", groups=4),
                          nn.Conv2d(4, 4, large, padding="same", groups=4),
                          nn.Conv2d(4, 4, (size * size, 1), padding="same", groups=4))
    largeconv.convert(model)
    assert [type(m) for m in model] == [nn.Conv2d, nn.Conv2d, LargeDWConv2d, LargeDWConv2d]
    with pytest.raises(ValueError, match="min_kernel_size must be None or an int >= 1"):
        largeconv.convert(model, min_kernel_size=0)


# ---- Involution2d -----------------------------------------------------------------------------------------------

def test_involution_device_and_dtype():
    module = Involution2d(16, 3, group_channels=8, dtype=torch.float64)
    assert {p.dtype for p in module.parameters()} | {b.dtype for b in module.buffers() if b.is_floating_point()} \
        == {torch.float64}
    assert module(torch.randn(1, 16, 6, 6, dtype=torch.float64)).dtype == torch.float64
    meta = Involution2d(16, 3, group_channels=8, device="meta")
    assert {p.device.type for p in meta.parameters()} == {"meta"}


# ---- dynamic shapes (issue 13, item 9) ----------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 15, 17), (1, 2, 16, 16), (2, 1, 7, 9)])
@pytest.mark.parametrize("stride", [2, 3])
def test_kernel_input_pooling_is_ceil_mode_avg_pool(shape, stride):
    from largeconv.modules import _ceil_avg_pool
    x = torch.randn(*shape, dtype=torch.float64)
    expected = F.avg_pool2d(x, stride, stride, ceil_mode=True)
    assert torch.allclose(_ceil_avg_pool(x, stride, *expected.shape[2:]), expected, rtol=1e-12, atol=1e-12)


def test_involution_dynamic_height_and_width():
    """H and W marked dynamic compile with no specialisation at stride 2 (avg_pool2d's ceil_mode size rule used to
    add a parity guard), and varying N, H, W compiles no more often than LargeDWConv2d does."""
    import torch._dynamo.testing
    module = Involution2d(16, 7, stride=2, group_channels=8).eval()
    x = torch.randn(2, 16, 15, 17)
    torch._dynamo.mark_dynamic(x, 2)
    torch._dynamo.mark_dynamic(x, 3)
    torch._dynamo.reset()
    with torch.no_grad():
        assert rel_error(torch.compile(module, backend="aot_eager", fullgraph=True)(x), module(x)) < 1e-6

    def frames(m):
        torch._dynamo.reset()
        counter = torch._dynamo.testing.CompileCounter()
        compiled = torch.compile(m, backend=counter, fullgraph=True)
        with torch.no_grad():
            for n, h, w in [(2, 12, 12), (3, 14, 17), (4, 9, 20), (2, 17, 13), (5, 22, 22)]:
                compiled(torch.randn(n, 16, h, w))
        return counter.frame_count

    assert frames(module) <= frames(LargeDWConv2d(16, 7).eval()) <= 2
