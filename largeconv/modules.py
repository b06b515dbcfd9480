"""Drop-in modules: `LargeDWConv2d` (an nn.Conv2d whose forward is largeconv.dwconv2d) and `Involution2d` (the
RedNet module)."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F
from torch.nn.utils import parametrize

from .arguments import conv_geometry, conv_output_size
from .dispatch import check_backend_name
from .fused_involution import involution2d_fused
from .ops import dwconv2d, involution2d


class DepthwiseAttributes:
    """What LargeDWConv2d and LargeDWConv1d add to nn.Conv2d / nn.Conv1d's attributes. (Their forward is
    nn.ConvNd's, which calls the _conv_forward they override.)"""

    @property
    def channels(self) -> int:
        return self.in_channels

    @property
    def channel_multiplier(self) -> int:
        return self.out_channels // self.in_channels


class LargeDWConv2d(DepthwiseAttributes, nn.Conv2d):
    """Depthwise conv, a drop-in for nn.Conv2d(channels, channels * channel_multiplier, kernel_size,
    groups=channels, ...). It *is* an nn.Conv2d (isinstance holds; in_channels, out_channels, kernel_size, stride,
    padding, dilation, groups, padding_mode, weight, bias, ... are nn.Conv2d's), so code written for nn.Conv2d
    (BN fusion, weight-init loops, official re-parameterization code) works on it, and an nn.Conv2d state_dict
    loads unchanged. Only the forward differs: it runs largeconv.dwconv2d on the chosen backend.

    The constructor is also that of the official implicit-GEMM class, DepthWiseConv2dImplicitGEMM(channels, kernel,
    bias=...). padding defaults to dilation * (kernel_size - 1) // 2 (size kept at stride 1 for odd kernels); an
    int, a pair, "same" or "valid" are accepted as in nn.Conv2d. Only padding_mode="zeros" is supported.
    """

    def __init__(self, channels, kernel_size, stride=1, padding=None, dilation=1, bias=True,
                 channel_multiplier=1, backend="auto", device=None, dtype=None, padding_mode="zeros"):
        check_backend_name(backend)
        for name, value in (("channels", channels), ("channel_multiplier", channel_multiplier)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode must be 'zeros' (LargeDWConv2d pads with zeros only; use nn.Conv2d "
                             f"for other modes), got {padding_mode!r}")
        kernel_size, stride, padding, dilation = conv_geometry(kernel_size, stride, padding, dilation)
        super().__init__(channels, channels * channel_multiplier, kernel_size, stride, padding, dilation,
                         groups=channels, bias=bias, padding_mode="zeros", device=device, dtype=dtype)
        self.backend = backend

    def _conv_forward(self, x, weight, bias):
        # nn.Conv2d code paths that pass their own weight (weight standardisation, ...) come through here too
        if self.padding_mode != "zeros":
            raise ValueError(f"LargeDWConv2d supports padding_mode='zeros' only, got {self.padding_mode!r}")
        if x.dim() == 3:  # unbatched (C, H, W), as nn.Conv2d accepts
            return dwconv2d(x.unsqueeze(0), weight, bias, self.stride, self.padding, self.dilation,
                            backend=self.backend).squeeze(0)
        return dwconv2d(x, weight, bias, self.stride, self.padding, self.dilation, backend=self.backend)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, backend="auto") -> "LargeDWConv2d":
        """A LargeDWConv2d computing what `conv` computes, sharing its parameters (so optimisers that hold them keep
        working). `conv` is a depthwise nn.Conv2d with zero padding, or a subclass of it whose forward is a plain
        depthwise conv (see `depthwise_padding`: e.g. the official DepthWiseConv2dImplicitGEMM, which declares
        padding 0 but pads K // 2). Raises ValueError saying why otherwise."""
        padding, reason = depthwise_padding(conv)
        if reason is not None:
            raise ValueError(f"from_conv2d: {reason}")
        return cls._sharing(conv, padding, backend)

    @classmethod
    def _sharing(cls, conv, padding, backend):
        module = cls(conv.in_channels, conv.kernel_size, conv.stride, padding, conv.dilation,
                     bias=conv.bias is not None, channel_multiplier=conv.out_channels // conv.in_channels,
                     backend=backend, device="meta")
        module.weight = conv.weight
        module.bias = conv.bias
        return module.train(conv.training)

    def extra_repr(self):
        text = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")
        if self.bias is None:
            text += ", bias=False"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text


def depthwise_ineligibility(conv) -> str | None:
    """None if `conv` is built like a depthwise conv that LargeDWConv2d can run (an nn.Conv2d, or subclass, with
    groups == in_channels, zero padding, a plain weight), else why not. Whether a subclass's own forward computes
    that conv is `depthwise_padding`'s question."""
    if not isinstance(conv, nn.Conv2d):
        return f"expected an nn.Conv2d, got {type(conv).__name__}"
    if isinstance(conv.weight, nn.parameter.UninitializedParameter):
        return "the weight is not initialised yet (a lazy module: run one forward first)"
    if conv.transposed:
        return "a transposed convolution"
    if conv.groups != conv.in_channels or conv.out_channels % conv.in_channels:
        return (f"not depthwise: groups={conv.groups}, in_channels={conv.in_channels}, "
                f"out_channels={conv.out_channels}")
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} is not supported (only 'zeros')"
    # the swap would drop these: a weight computed by a parametrization or a hook (weight_norm, spectral_norm),
    # or hooks that transform inputs or outputs
    if parametrize.is_parametrized(conv):
        return "its weight is parametrized (torch.nn.utils.parametrize)"
    if conv._forward_pre_hooks or conv._forward_hooks:
        return "it has forward hooks (e.g. weight_norm), which the swap would drop"
    return None


def _own_forward(conv) -> bool:
    """True if conv's class replaces nn.Conv2d's computation (forward or _conv_forward)."""
    cls = type(conv)
    return cls.forward is not nn.Conv2d.forward or cls._conv_forward is not nn.Conv2d._conv_forward


def depthwise_padding(conv):
    """(padding, None) with the padding under which LargeDWConv2d computes what `conv` computes, or (None, why not).

    The rule: an nn.Conv2d, or a subclass keeping nn.Conv2d's forward, computes F.conv2d with its own attributes, so
    its padding is its `padding`. A subclass with its own forward (the official DepthWiseConv2dImplicitGEMM of
    RepLKNet, SLaK and UniRepLKNet, timm's Conv2dSame, anything else) is trusted only as far as it is observed:
    its output on random probe inputs of both parities in H and W (so an input-dependent padding, such as
    TF "SAME" at stride 2, shows) must equal the depthwise conv of its weight and bias, in float64, at its declared
    padding, at the size-keeping d * (K - 1) // 2 or at "same" (stride 1), the first that fits. Otherwise it is
    not converted.
    """
    reason = depthwise_ineligibility(conv)
    if reason is not None:
        return None, reason
    if isinstance(conv, LargeDWConv2d) or not _own_forward(conv):
        return conv.padding, None
    return _probe_padding(conv)


_PROBE_CHANNELS = 8  # output channels checked against the float64 reference (the probe is about geometry)


@torch.no_grad()
def _probe_padding(conv):
    name = type(conv).__name__
    weight, bias = conv.weight, conv.bias
    if weight.device.type == "meta":
        return None, f"{name} has its own forward and its weight is on the meta device, so it cannot be checked"
    if max(conv.stride) > 2:
        return None, f"{name} has its own forward and stride {conv.stride} > 2, which the probe does not cover"
    # in order of preference: a number where one fits (code written for nn.Conv2d reads padding as numbers)
    candidates = [conv.padding, tuple(d * (k - 1) // 2 for k, d in zip(conv.kernel_size, conv.dilation))]
    if conv.stride == (1, 1):
        candidates.append("same")
    extent = [d * (k - 1) + 1 for k, d in zip(conv.kernel_size, conv.dilation)]
    channels = torch.linspace(0, conv.out_channels - 1, min(_PROBE_CHANNELS, conv.out_channels)).long().unique()
    channels = channels.to(weight.device)
    w = weight.detach()[channels].double()
    b = None if bias is None else bias.detach()[channels].double()
    tolerance = 1e-2 if weight.dtype in (torch.float16, torch.bfloat16) else 1e-4
    passed = set(range(len(candidates)))
    for parity in (0, 1):  # (even H, odd W), then (odd H, even W)
        hw = [n + 4 + (n + parity + i) % 2 for i, n in enumerate(extent)]
        x = torch.randn(2, conv.in_channels, *hw, device=weight.device, dtype=weight.dtype)
        try:
            out = conv(x)
        except Exception as error:  # e.g. a CUDA-only extension given CPU tensors
            return None, f"{name} has its own forward, which failed on a probe input: {error}"
        out = out[:, channels].double()
        x_in = x.double()[:, channels // (conv.out_channels // conv.in_channels)]
        for index in list(passed):  # one group per checked channel: its input channel, its kernel
            ref = F.conv2d(x_in, w, b, conv.stride, candidates[index], conv.dilation, len(channels))
            if ref.shape != out.shape or (out - ref).norm() > tolerance * ref.norm():
                passed.discard(index)
    if not passed:
        return None, (f"{name} has its own forward, which does not compute a plain depthwise conv of its weight "
                      f"and bias at padding {conv.padding}, 'same' or the size-keeping padding")
    return candidates[min(passed)], None


class _ConvModule(nn.Module):
    """conv (+ BN + ReLU), with the attribute names of mmcv's ConvModule so RedNet checkpoints load."""

    def __init__(self, in_channels, out_channels, norm_and_relu, device=None, dtype=None):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=not norm_and_relu, device=device, dtype=dtype)
        if norm_and_relu:
            self.bn = nn.BatchNorm2d(out_channels, device=device, dtype=dtype)
            self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.activate(self.bn(x))
        return x


def _ceil_avg_pool(x, stride, out_h, out_w):
    """AvgPool2d(stride, stride, ceil_mode=True) with out_h = ceil(H / stride): the last, partial window averages the
    pixels it covers. Written as the mean over zero-padded windows divided by the covered fraction, so that under
    dynamic shapes the output size is out_h by construction (avg_pool2d's ceil_mode size rule, and a reshape into
    blocks, add guards that torch.export cannot prove, so H and W could not be dynamic at stride 2)."""
    height, width = x.shape[2:]
    pad = (0, out_w * stride - width, 0, out_h * stride - height)
    if not torch.compiler.is_compiling() and pad == (0, 0, 0, 0):
        # eager, whole windows: avg_pool2d itself, without the padded copy of x that its backward would keep
        # (traced code keeps one graph for every H and W)
        return F.avg_pool2d(x, stride, stride)

    def window_means(t):
        return F.avg_pool2d(F.pad(t, pad), stride, stride)

    return window_means(x) / window_means(x.new_ones(1, 1, height, width))


class Involution2d(nn.Module):
    """RedNet's involution: a kernel generated per pixel from the input (1x1 conv -> BN -> ReLU -> 1x1 conv),
    applied per group of `group_channels` channels.

    State-dict keys are the official module's (conv1.conv.weight, conv1.bn.*, conv2.conv.weight,
    conv2.conv.bias). With stride s > 1 the kernel is generated from AvgPool2d(s, s, ceil_mode=True) of the input
    (computed so that H and W can be dynamic under torch.compile and torch.export):
    identical to the official module when H and W are divisible by s, and still exactly Ho x Wo when they are not
    (the last, partial window averages the pixels it covers), where the official module's kernel is too small.
    """

    def __init__(self, channels, kernel_size=7, stride=1, group_channels=16, reduction_ratio=4, dilation=1,
                 backend="auto", device=None, dtype=None, fused=False):
        super().__init__()
        check_backend_name(backend)
        if channels % group_channels:
            raise ValueError(f"group_channels={group_channels} must divide channels={channels}")
        if channels // reduction_ratio < 1:
            raise ValueError(f"reduction_ratio={reduction_ratio} leaves no channels of {channels}")
        self.channels, self.kernel_size, self.stride, self.dilation = channels, kernel_size, stride, dilation
        self.group_channels = group_channels
        self.groups = channels // group_channels
        self.padding = dilation * (kernel_size - 1) // 2
        self.backend = backend
        # fused: conv2 (the span conv) runs inside the aggregation (largeconv.involution2d_fused), so its output, the
        # (B, G*K*K, Ho, Wo) kernel, is never written; same parameters and state_dict either way
        self.fused = bool(fused)
        factory = {"device": device, "dtype": dtype}
        self.conv1 = _ConvModule(channels, channels // reduction_ratio, norm_and_relu=True, **factory)
        self.conv2 = _ConvModule(channels // reduction_ratio, kernel_size * kernel_size * self.groups,
                                 norm_and_relu=False, **factory)

    def _kernel_input(self, x):
        out_h, out_w = (conv_output_size(n, self.kernel_size, self.stride, 2 * self.padding, self.dilation)
                        for n in x.shape[2:])
        if 2 * self.padding != self.dilation * (self.kernel_size - 1):
            # even kernel with odd dilation: the unfold grid is not the pooled grid
            return F.adaptive_avg_pool2d(x, (out_h, out_w))
        if self.stride == 1:
            return x
        return _ceil_avg_pool(x, self.stride, out_h, out_w)

    def forward(self, x):
        reduced = self.conv1(self._kernel_input(x))
        if self.fused:
            return involution2d_fused(x, reduced, self.conv2.conv.weight, self.conv2.conv.bias, self.kernel_size,
                                      self.stride, self.padding, self.dilation, backend=self.backend)
        return involution2d(x, self.conv2(reduced), self.kernel_size, self.stride, self.padding, self.dilation,
                            backend=self.backend)

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"group_channels={self.group_channels}, dilation={self.dilation}, backend={self.backend!r}, "
                f"fused={self.fused}")
