"""Validation and normalisation of the public ops' arguments.

Every public entry goes through here, so a bad argument gets one clear error naming it, what was expected and what
was got, before any kernel sees it. Backends then receive normalised tuples (see backend_api.md).
"""
from __future__ import annotations

import numbers

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def is_int(value) -> bool:
    """An integer as F.conv2d takes one: Python and numpy integers, not bools."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def pair(value, name: str) -> tuple[int, int]:
    """An int or a pair of ints -> (a, b) of Python ints."""
    if is_int(value):
        return (int(value), int(value))
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(is_int(v) for v in value):
        return (int(value[0]), int(value[1]))
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")


def conv_geometry(kernel_size, stride, padding, dilation):
    """A module's (kernel_size, stride, padding, dilation) as pairs; padding None -> d*(k-1)//2 (the size is kept
    at stride 1 for odd kernels); a padding string ("same", "valid") is kept as it is."""
    kernel_size, stride, dilation = pair(kernel_size, "kernel_size"), pair(stride, "stride"), pair(dilation, "dilation")
    if padding is None:
        padding = tuple(d * (k - 1) // 2 for k, d in zip(kernel_size, dilation))
    padding = padding if isinstance(padding, str) else pair(padding, "padding")
    return kernel_size, stride, padding, dilation


def _check_tensor(t, name: str, op: str):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{op}: {name} must be a floating-point tensor (float16/bfloat16/float32/float64), "
                        f"got {t.dtype}")


def _check_same(x, other, name: str, op: str):
    if other.dtype != x.dtype:
        raise TypeError(f"{op}: {name} dtype {other.dtype} does not match x dtype {x.dtype}")
    if other.device != x.device:
        raise RuntimeError(f"{op}: {name} is on {other.device} but x is on {x.device}")


def _positive(values: tuple[int, int], name: str, op: str):
    if min(values) < 1:
        raise ValueError(f"{op}: {name} must be >= 1, got {values}")


def dwconv2d_arguments(x, weight, bias, stride, padding, dilation):
    """Check dwconv2d's arguments; return (stride, padding (top, bottom, left, right), dilation, out_hw)."""
    op = "dwconv2d"
    _check_tensor(x, "x", op)
    _check_tensor(weight, "weight", op)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4 or weight.shape[1] != 1:
        raise ValueError(f"{op}: weight must be (C*m, 1, Kh, Kw), got shape {tuple(weight.shape)}")
    _check_same(x, weight, "weight", op)
    channels, out_channels = x.shape[1], weight.shape[0]
    if channels == 0 and out_channels != 0 or channels and out_channels % channels:
        raise ValueError(f"{op}: weight has {out_channels} output channels, which is not a multiple "
                         f"(channel multiplier) of the {channels} input channels of x")
    if bias is not None:
        _check_tensor(bias, "bias", op)
        _check_same(x, bias, "bias", op)
        if tuple(bias.shape) != (out_channels,):
            raise ValueError(f"{op}: bias must have shape ({out_channels},), got {tuple(bias.shape)}")
    stride = pair(stride, "stride")
    dilation = pair(dilation, "dilation")
    _positive(stride, "stride", op)
    _positive(dilation, "dilation", op)
    kernel = (int(weight.shape[2]), int(weight.shape[3]))  # ints, not traced sizes, under torch.jit.trace
    if min(kernel) < 1:
        raise ValueError(f"{op}: kernel size must be >= 1, got {kernel}")
    padding4 = _padding4(padding, kernel, stride, dilation, op)
    out_h, out_w = dwconv2d_output_hw(x.shape, kernel, stride, padding4, dilation)
    if out_h < 1 or out_w < 1:
        top, bottom, left, right = padding4
        raise ValueError(f"{op}: the (dilated) kernel {kernel} with dilation {dilation} is larger than the padded "
                         f"input {(x.shape[2] + top + bottom, x.shape[3] + left + right)}; output would be "
                         f"{out_h}x{out_w}")
    return stride, padding4, dilation, (out_h, out_w)


def conv_output_size(size, kernel, stride, padding_total, dilation):
    return (size + padding_total - dilation * (kernel - 1) - 1) // stride + 1


def dwconv2d_output_hw(x_shape, kernel, stride, padding4, dilation):
    top, bottom, left, right = padding4
    return (conv_output_size(x_shape[2], kernel[0], stride[0], top + bottom, dilation[0]),
            conv_output_size(x_shape[3], kernel[1], stride[1], left + right, dilation[1]))


def _padding4(padding, kernel, stride, dilation, op):
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"{op}: padding='same' needs stride 1 (as in F.conv2d), got stride {stride}")
            pads = []
            for k, d in zip(kernel, dilation):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]  # the odd pixel goes to the bottom/right, like F.conv2d
            return tuple(pads)
        raise ValueError(f"{op}: padding must be 'same', 'valid', an int or a pair of ints, got {padding!r}")
    ph, pw = pair(padding, "padding")
    if min(ph, pw) < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {(ph, pw)}")
    return (ph, ph, pw, pw)


def _involution_geometry(kernel_size, stride, padding, dilation, op):
    """Involution's kernel_size, stride, padding (None -> d*(K-1)//2), dilation checked, as Python ints."""
    for name, value in (("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation)):
        if not is_int(value):
            raise TypeError(f"{op}: {name} must be an int, got {value!r}")
        if value < 1:
            raise ValueError(f"{op}: {name} must be >= 1, got {value}")
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    if not is_int(padding):
        raise TypeError(f"{op}: padding must be an int or None, got {padding!r}")
    if padding < 0:
        raise ValueError(f"{op}: padding must be >= 0, got {padding}")
    return int(kernel_size), int(stride), int(padding), int(dilation)


def involution2d_arguments(x, weight, kernel_size, stride, padding, dilation):
    """Check involution2d's arguments; return (stride, padding, dilation, groups, out_hw) as ints."""
    op = "involution2d"
    _check_tensor(x, "x", op)
    _check_tensor(weight, "weight", op)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if weight.dim() != 4:
        raise ValueError(f"{op}: weight must be 4-D (B, G*K*K, Ho, Wo), got shape {tuple(weight.shape)}")
    _check_same(x, weight, "weight", op)
    kernel_size, stride, padding, dilation = _involution_geometry(kernel_size, stride, padding, dilation, op)
    taps = kernel_size * kernel_size
    if weight.shape[1] % taps or weight.shape[1] == 0:
        raise ValueError(f"{op}: weight has {weight.shape[1]} channels, which is not a positive multiple of "
                         f"kernel_size**2 = {taps}")
    groups = weight.shape[1] // taps
    if x.shape[1] % groups:
        raise ValueError(f"{op}: the {groups} groups of weight (weight channels / kernel_size**2) do not divide "
                         f"the {x.shape[1]} channels of x")
    if weight.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: weight batch {weight.shape[0]} does not match x batch {x.shape[0]}")
    out_hw = _involution_output_hw(x, weight, "weight", kernel_size, stride, padding, dilation, op)
    return stride, padding, dilation, groups, out_hw


def _involution_output_hw(x, per_pixel, name, kernel_size, stride, padding, dilation, op):
    """(Ho, Wo) of an involution of x; `per_pixel` (the kernel, or the features it is made from) must have it."""
    out_h, out_w = (conv_output_size(n, kernel_size, stride, 2 * padding, dilation) for n in x.shape[2:])
    if out_h < 1 or out_w < 1:
        raise ValueError(f"{op}: the (dilated) kernel {kernel_size} is larger than the padded input; "
                         f"output would be {out_h}x{out_w}")
    if tuple(per_pixel.shape[2:]) != (out_h, out_w):
        raise ValueError(f"{op}: {name} spatial size {tuple(per_pixel.shape[2:])} does not match the output size "
                         f"{(out_h, out_w)} (Ho, Wo) for input {tuple(x.shape[2:])}, kernel_size {kernel_size}, "
                         f"stride {stride}, padding {padding}, dilation {dilation}")
    return out_h, out_w


def involution2d_fused_arguments(x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation):
    """Check involution2d_fused's arguments; return (span_weight as (G*K*K, Cr), kernel_size, stride, padding,
    dilation, groups), the ints as Python ints."""
    op = "involution2d_fused"
    for name, t in (("x", x), ("reduced", reduced), ("span_weight", span_weight)):
        _check_tensor(t, name, op)
    if x.dim() != 4:
        raise ValueError(f"{op}: x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if reduced.dim() != 4:
        raise ValueError(f"{op}: reduced must be 4-D (B, Cr, Ho, Wo), got shape {tuple(reduced.shape)}")
    if span_weight.dim() == 4 and tuple(span_weight.shape[2:]) == (1, 1):
        span_weight = span_weight.flatten(1)  # the 1x1 conv's weight (G*K*K, Cr, 1, 1)
    if span_weight.dim() != 2:
        raise ValueError(f"{op}: span_weight must be (G*K*K, Cr, 1, 1) or (G*K*K, Cr), got shape "
                         f"{tuple(span_weight.shape)}")
    _check_same(x, reduced, "reduced", op)
    _check_same(x, span_weight, "span_weight", op)
    kernel_size, stride, padding, dilation = _involution_geometry(kernel_size, stride, padding, dilation, op)
    taps = kernel_size * kernel_size
    spans = span_weight.shape[0]
    if spans % taps or spans == 0:
        raise ValueError(f"{op}: span_weight has {spans} output channels, which is not a positive multiple of "
                         f"kernel_size**2 = {taps}")
    groups = spans // taps
    if x.shape[1] % groups:
        raise ValueError(f"{op}: the {groups} groups of span_weight (output channels / kernel_size**2) do not "
                         f"divide the {x.shape[1]} channels of x")
    if span_weight.shape[1] != reduced.shape[1]:
        raise ValueError(f"{op}: span_weight takes {span_weight.shape[1]} input channels but reduced has "
                         f"{reduced.shape[1]}")
    if span_bias is not None:
        _check_tensor(span_bias, "span_bias", op)
        _check_same(x, span_bias, "span_bias", op)
        if tuple(span_bias.shape) != (spans,):
            raise ValueError(f"{op}: span_bias must have shape ({spans},), got {tuple(span_bias.shape)}")
    if reduced.shape[0] != x.shape[0]:
        raise ValueError(f"{op}: reduced batch {reduced.shape[0]} does not match x batch {x.shape[0]}")
    _involution_output_hw(x, reduced, "reduced", kernel_size, stride, padding, dilation, op)
    return span_weight, kernel_size, stride, padding, dilation, groups


def is_channels_last(x: torch.Tensor) -> bool:
    """True when x is laid out channels_last (and not also plain NCHW-contiguous, as when C == 1)."""
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)


def memory_format_of(x: torch.Tensor):
    """The layout backends get: channels_last stays channels_last; anything else becomes NCHW-contiguous."""
    return torch.channels_last if is_channels_last(x) else torch.contiguous_format


def cudnn_conv_allows_tf32() -> bool:
    """Whether fp32 convs may use TF32 tensor cores: torch.backends.cudnn.allow_tf32 (PyTorch's rule for its own
    convs), read through the per-op API where torch has it (reading the legacy flag raises once the two APIs were
    mixed): the conv setting, else cuDNN's, else the global one; "none" defers."""
    conv = getattr(torch.backends.cudnn, "conv", None)
    if conv is None:
        return torch.backends.cudnn.allow_tf32
    for precision in (conv.fp32_precision, torch.backends.cudnn.fp32_precision, torch.backends.fp32_precision):
        if precision != "none":
            return precision == "tf32"
    return False


def cuda_matmul_fp32_precision() -> str:
    """How torch's fp32 CUDA matmuls may round their operands: "ieee" (not at all), "tf32" or "bf16"; read through
    the per-backend API where torch has it (torch.backends.cuda.matmul.fp32_precision, else the global setting),
    which the legacy setters (allow_tf32, set_float32_matmul_precision) also write."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        return "tf32" if matmul.allow_tf32 else "ieee"
    for precision in (matmul.fp32_precision, torch.backends.fp32_precision):
        if precision != "none":
            return precision
    return "ieee"
