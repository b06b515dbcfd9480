"""largeconv: fast large-kernel depthwise convolution and involution for PyTorch.

    largeconv.dwconv2d(x, weight, bias=None, stride=1, padding="same", dilation=1)    # == F.conv2d(..., groups=C)
    largeconv.involution2d(x, weight, kernel_size, stride=1, padding=None, dilation=1)
    largeconv.involution2d_fused(x, reduced, span_weight, span_bias, kernel_size, ...)  # kernel = 1x1 conv, fused
    largeconv.LargeDWConv2d, largeconv.Involution2d, largeconv.convert(model)
    with largeconv.use_backend("triton"): ...        # or LARGECONV_BACKEND=triton, or backend= per call/module
"""
__version__ = "0.1.0"

from .dispatch import BACKENDS, use_backend
from .ops import dwconv2d, involution2d
from .fused_involution import involution2d_fused
from .modules import Involution2d, LargeDWConv2d
from .convert import convert
from .conv1d import LargeDWConv1d, dwconv1d
from . import export  # registers torch.export / ONNX export support for the custom ops

__all__ = ["__version__", "BACKENDS", "use_backend", "dwconv2d", "involution2d", "involution2d_fused", "dwconv1d",
           "LargeDWConv2d", "Involution2d", "LargeDWConv1d", "convert"]
