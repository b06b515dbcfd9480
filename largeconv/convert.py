"""Swap the depthwise convolutions of an existing model for LargeDWConv2d."""
import warnings

from torch import nn

from .conv1d import converted_conv1d
from .modules import LargeDWConv2d, _own_forward, depthwise_ineligibility, depthwise_padding

# By default a kernel is converted only from this size up (kh * kw >= size**2), per device type: below it PyTorch's
# own depthwise conv is as fast, or "auto" cannot be trusted to see the difference, and the custom op's per-call cost
# makes the model slower end to end. Measured on CPU (2-core EPYC, shared, 1 thread, CPU time, 2026-11-27):
# - layers, nn.Conv2d vs LargeDWConv2d("auto") at ConvNeXt-T's shapes (128^2 input, batch 2): forward slower for
#   every K <= 7 (0.48-0.86x); forward+backward K=3 0.87-0.99x, K=5 0.66-0.79x, K=7 0.73-1.33x, K=9 1.52x;
# - whole models (bench/results/cpu/models.md): a UniRepLKNet-T-like net with 13x13 kernels on 16^2-4^2 maps ran
#   inference 0.76-0.81x and trained 0.97-1.05x when its 13x13 layers were converted; 27-31 kernels win 1.6-2.8x.
# CUDA: not measured on a GPU yet; the CPU value until bench/models.py (--min-kernel-size) measures it there.
DEFAULT_MIN_KERNEL_SIZE = {"cpu": 15, "cuda": 15}


def default_min_kernel_size(device_type: str) -> int:
    return DEFAULT_MIN_KERNEL_SIZE.get(device_type, DEFAULT_MIN_KERNEL_SIZE["cpu"])


def convert(model: nn.Module, backend="auto", min_kernel_size=None) -> nn.Module:
    """Replace, in place, the depthwise convolutions of `model` by LargeDWConv2d modules sharing their parameters;
    outputs are unchanged. Returns `model` (a bare depthwise conv passed in is returned converted).

    Converted: depthwise nn.Conv2d (groups == in_channels, any channel multiplier, zero padding) with at least
    min_kernel_size**2 taps (kh * kw, so SLaK's 51x5 counts as large), and subclasses of nn.Conv2d whose forward
    computes such a conv (the official DepthWiseConv2dImplicitGEMM; see modules.depthwise_padding for the rule).
    Left alone: other convs, already converted ones, convs with hooks or parametrized weights, and timm's
    Conv2dSame at stride 2 (its padding depends on each input's size, which no fixed padding reproduces; at
    stride 1 it is padding "same" and is converted). Depthwise nn.Conv1d become LargeDWConv1d from
    conv1d.DEFAULT_MIN_KERNEL_SIZE (31) on, or from min_kernel_size when given.

    min_kernel_size=None uses DEFAULT_MIN_KERNEL_SIZE for the device the weights are on, chosen so that convert
    does not make a model slower end to end (small kernels stay PyTorch's); min_kernel_size=1 converts every
    depthwise conv.
    """
    if min_kernel_size is not None and (not isinstance(min_kernel_size, int) or min_kernel_size < 1):
        raise ValueError(f"min_kernel_size must be None or an int >= 1, got {min_kernel_size!r}")

    def converted(module):
        """The LargeDWConv2d replacing `module`, or None to leave it (and look inside it)."""
        if isinstance(module, nn.Conv1d):
            return converted_conv1d(module, backend, min_kernel_size)
        if isinstance(module, LargeDWConv2d) or depthwise_ineligibility(module) is not None:
            return None
        threshold = min_kernel_size or default_min_kernel_size(module.weight.device.type)
        if module.kernel_size[0] * module.kernel_size[1] < threshold * threshold:
            return None
        padding, reason = depthwise_padding(module)
        if reason is not None:
            if _own_forward(module):  # a depthwise-looking subclass left alone: say why
                warnings.warn(f"largeconv.convert: left {type(module).__name__} as it is: {reason}", stacklevel=3)
            return None
        return LargeDWConv2d._sharing(module, padding, backend)

    def walk(module):
        for name, child in module.named_children():
            replacement = converted(child)
            if replacement is None:
                walk(child)
            else:
                setattr(module, name, replacement)

    replacement = converted(model)
    if replacement is not None:
        return replacement
    walk(model)
    return model
