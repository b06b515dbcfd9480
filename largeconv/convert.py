"""Swap the depthwise convolutions of an existing model for LargeDWConv2d."""
from torch import nn

from .modules import LargeDWConv2d, depthwise_ineligibility


def convert(model: nn.Module, backend="auto", min_kernel_size=1) -> nn.Module:
    """Replace, in place, every plain depthwise nn.Conv2d of `model` whose kernel has at least `min_kernel_size`
    in each dimension by a LargeDWConv2d sharing its parameters; outputs are unchanged. Returns `model`
    (a bare depthwise nn.Conv2d passed in is returned converted)."""
    def eligible(module):
        return depthwise_ineligibility(module) is None and min(module.kernel_size) >= min_kernel_size

    if eligible(model):
        return LargeDWConv2d.from_conv2d(model, backend)
    for name, child in model.named_children():
        if eligible(child):
            setattr(model, name, LargeDWConv2d.from_conv2d(child, backend))
        else:
            convert(child, backend, min_kernel_size)
    return model
