"""Drop-in modules: `LargeDWConv2d` (for a depthwise nn.Conv2d) and `Involution2d` (the RedNet module)."""
from __future__ import annotations

import math

import torch
from torch import nn
import torch.nn.functional as F

from .arguments import conv_geometry, conv_output_size
from .dispatch import check_backend_name
from .ops import dwconv2d, involution2d


class LargeDWConv2d(nn.Module):
    """Depthwise conv, a drop-in for nn.Conv2d(channels, channels * channel_multiplier, kernel_size,
    groups=channels, ...): same parameter names and shapes, so an nn.Conv2d state_dict loads unchanged.

    padding defaults to dilation * (kernel_size - 1) // 2 (size kept at stride 1 for odd kernels); an int, a pair,
    "same" or "valid" are accepted as in nn.Conv2d.
    """

    def __init__(self, channels, kernel_size, stride=1, padding=None, dilation=1, bias=True,
                 channel_multiplier=1, backend="auto", device=None, dtype=None):
        super().__init__()
        check_backend_name(backend)
        if channels < 1 or channel_multiplier < 1:
            raise ValueError(f"channels and channel_multiplier must be >= 1, got {channels}, {channel_multiplier}")
        self.channels = channels
        self.channel_multiplier = channel_multiplier
        self.kernel_size, self.stride, self.padding, self.dilation = conv_geometry(kernel_size, stride, padding,
                                                                                  dilation)
        self.backend = backend
        factory = {"device": device, "dtype": dtype}
        self.weight = nn.Parameter(torch.empty(channels * channel_multiplier, 1, *self.kernel_size, **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(channels * channel_multiplier, **factory))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self):
        # nn.Conv2d's initialisation, so a swapped-in module trains the same way
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.kernel_size[0] * self.kernel_size[1])
            nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, x):
        return dwconv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, backend=self.backend)

    @classmethod
    def from_conv2d(cls, conv: nn.Conv2d, backend="auto") -> "LargeDWConv2d":
        """A LargeDWConv2d sharing `conv`'s parameters (so optimisers that hold them keep working)."""
        reason = depthwise_ineligibility(conv)
        if reason is not None:
            raise ValueError(f"from_conv2d: {reason}")
        module = cls(conv.in_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation,
                     bias=conv.bias is not None, channel_multiplier=conv.out_channels // conv.in_channels,
                     backend=backend, device="meta")
        module.weight = conv.weight
        module.bias = conv.bias
        return module

    def extra_repr(self):
        text = (f"{self.channels}, {self.channels * self.channel_multiplier}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}")
        if self.bias is None:
            text += ", bias=False"
        if self.backend != "auto":
            text += f", backend={self.backend!r}"
        return text


def depthwise_ineligibility(conv) -> str | None:
    """None if `conv` is a plain depthwise nn.Conv2d that LargeDWConv2d reproduces exactly, else why not."""
    if type(conv) is not nn.Conv2d:
        return f"expected an nn.Conv2d, got {type(conv).__name__}"
    if conv.groups != conv.in_channels or conv.out_channels % conv.in_channels:
        return (f"not depthwise: groups={conv.groups}, in_channels={conv.in_channels}, "
                f"out_channels={conv.out_channels}")
    if conv.padding_mode != "zeros":
        return f"padding_mode {conv.padding_mode!r} is not supported (only 'zeros')"
    return None


class _ConvModule(nn.Module):
    """conv (+ BN + ReLU), with the attribute names of mmcv's ConvModule so RedNet checkpoints load."""

    def __init__(self, in_channels, out_channels, norm_and_relu):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=not norm_and_relu)
        if norm_and_relu:
            self.bn = nn.BatchNorm2d(out_channels)
            self.activate = nn.ReLU(inplace=True)

    def forward(self, x):
        x = self.conv(x)
        if hasattr(self, "bn"):
            x = self.activate(self.bn(x))
        return x


class Involution2d(nn.Module):
    """RedNet's involution: a kernel generated per pixel from the input (1x1 conv -> BN -> ReLU -> 1x1 conv),
    applied per group of `group_channels` channels.

    State-dict keys are the official module's (conv1.conv.weight, conv1.bn.*, conv2.conv.weight,
    conv2.conv.bias). With stride s > 1 the kernel is generated from AvgPool2d(s, s, ceil_mode=True) of the input:
    identical to the official module when H and W are divisible by s, and still exactly Ho x Wo when they are not
    (the last, partial window averages the pixels it covers), where the official module's kernel is too small.
    """

    def __init__(self, channels, kernel_size=7, stride=1, group_channels=16, reduction_ratio=4, dilation=1,
                 backend="auto"):
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
        self.conv1 = _ConvModule(channels, channels // reduction_ratio, norm_and_relu=True)
        self.conv2 = _ConvModule(channels // reduction_ratio, kernel_size * kernel_size * self.groups,
                                 norm_and_relu=False)

    def _kernel_input(self, x):
        out_hw = [conv_output_size(n, self.kernel_size, self.stride, 2 * self.padding, self.dilation)
                  for n in x.shape[2:]]
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        if list(x.shape[2:]) != out_hw:  # even kernel sizes: the unfold grid is not the pooled grid
            x = F.adaptive_avg_pool2d(x, out_hw)
        return x

    def forward(self, x):
        weight = self.conv2(self.conv1(self._kernel_input(x)))
        return involution2d(x, weight, self.kernel_size, self.stride, self.padding, self.dilation,
                            backend=self.backend)

    def extra_repr(self):
        return (f"{self.channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"group_channels={self.group_channels}, dilation={self.dilation}, backend={self.backend!r}")
