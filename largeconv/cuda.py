"""The "cuda" backend: the CUDA C++ kernels of csrc/, built as the extension `largeconv._C` (backend_api.md).

Each function allocates its result here (so a test can poison the allocation) and calls the `largeconv_C` op that
fills it. Kernel designs are described at the top of csrc/dwconv.cuh, csrc/dwconv1d.cuh and csrc/involution.cuh.
Importing this module never fails: without the extension, `unsupported_reason` says how to build it.
"""
import importlib

import torch

from .arguments import cudnn_conv_allows_tf32, dwconv2d_output_hw, memory_format_of

BUILD_HINT = ("the CUDA extension largeconv._C is not built: install with a CUDA build of torch and nvcc present, "
              "or FORCE_CUDA=1 pip install --no-build-isolation -e .")
DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Larger kernels would work, but only on the slow fallback kernels (dwconv1d: its tile holds any K up to ~2000 at
# dilation 1; beyond a thousand taps the weight gradient's (K / 8)-group blocks stop being a sensible shape).
MAX_KERNEL = {"dwconv2d": 127, "involution2d": 31, "dwconv1d": 1023}

try:
    _C = importlib.import_module("largeconv._C")  # loading the library registers torch.ops.largeconv_C
    _LOAD_ERROR = None
except Exception as error:  # not built, or built against another torch / CUDA (undefined symbols, ...)
    _C, _LOAD_ERROR = None, error


def is_available() -> bool:
    return _C is not None


def unsupported_reason(op, x, kernel_size):
    if op not in MAX_KERNEL:
        return f"the cuda backend has no {op} kernel"
    if _C is None:
        if torch.version.cuda is None:
            return (f"this torch ({torch.__version__}) is a CPU-only build, so the CUDA extension largeconv._C "
                    "cannot be built or run: install a CUDA build of torch, then rebuild largeconv")
        if isinstance(_LOAD_ERROR, ModuleNotFoundError) and _LOAD_ERROR.name == "largeconv._C":
            return BUILD_HINT
        return f"the CUDA extension largeconv._C failed to load ({_LOAD_ERROR}); rebuild it: {BUILD_HINT}"
    if x.device.type != "cuda":
        return f"needs CUDA tensors, got {x.device.type}"
    if x.dtype not in DTYPES:
        return (f"{x.dtype} is not supported by the cuda backend (float32, float16, bfloat16 are: its kernels "
                "accumulate in fp32; use backend 'triton' or 'torch' for float64)")
    limit = MAX_KERNEL[op]
    if max(kernel_size) > limit:
        return (f"kernel {'x'.join(map(str, kernel_size))} exceeds the maximum "
                f"{'x'.join([str(limit)] * len(kernel_size))} of the cuda backend")
    return None


def _empty(shape, like, memory_format=None):
    if memory_format is None:
        memory_format = memory_format_of(like)
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=memory_format)


# ---- depthwise convolution ------------------------------------------------------------------------------------

# fp32 NCHW large kernels run on tensor cores (csrc/dwconv.cuh, corr_tf32_kernel, wgrad_tf32_kernel): in TF32 where
# PyTorch allows it for its convs, else as 3xTF32 (about fp32's accuracy).
def dwconv2d_forward(x, weight, bias, stride, padding, dilation):
    out_h, out_w = dwconv2d_output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    out = _empty((x.shape[0], weight.shape[0], out_h, out_w), x)
    torch.ops.largeconv_C.dwconv2d_forward(x, weight, bias, list(stride), list(padding), list(dilation),
                                           cudnn_conv_allows_tf32(), out)
    return out


def dwconv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    grad_input = _empty(tuple(input_shape), grad_out)
    torch.ops.largeconv_C.dwconv2d_grad_input(grad_out, weight, list(stride), list(padding), list(dilation),
                                              cudnn_conv_allows_tf32(), grad_input)
    return grad_input


def dwconv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    grad_weight = _empty(tuple(weight_shape), x, torch.contiguous_format)
    torch.ops.largeconv_C.dwconv2d_grad_weight(grad_out, x, list(stride), list(padding), list(dilation),
                                               cudnn_conv_allows_tf32(), grad_weight)
    return grad_weight


# ---- depthwise convolution 1-D (x (N, C, L), always contiguous; padding (left, right); stride, dilation ints) --------

def _conv1d_length(length, kernel, stride, padding, dilation):
    return (length + padding[0] + padding[1] - dilation * (kernel - 1) - 1) // stride + 1


def dwconv1d_forward(x, weight, bias, stride, padding, dilation):
    out = _empty((x.shape[0], weight.shape[0], _conv1d_length(x.shape[2], weight.shape[2], stride, padding, dilation)),
                 x, torch.contiguous_format)
    torch.ops.largeconv_C.dwconv1d_forward(x, weight, bias, stride, list(padding), dilation, out)
    return out


def dwconv1d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    grad_input = _empty(tuple(input_shape), grad_out, torch.contiguous_format)
    torch.ops.largeconv_C.dwconv1d_grad_input(grad_out, weight, stride, list(padding), dilation, grad_input)
    return grad_input


def dwconv1d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    grad_weight = _empty(tuple(weight_shape), x, torch.contiguous_format)
    torch.ops.largeconv_C.dwconv1d_grad_weight(grad_out, x, stride, list(padding), dilation, grad_weight)
    return grad_weight


# ---- involution -------------------------------------------------------------------------------------------------

def involution2d_forward(x, weight, kernel_size, stride, padding, dilation):
    out = _empty((x.shape[0], x.shape[1], weight.shape[2], weight.shape[3]), x)
    torch.ops.largeconv_C.involution2d_forward(x, weight, kernel_size, stride, padding, dilation, out)
    return out


def involution2d_grad_input(grad_out, weight, input_shape, kernel_size, stride, padding, dilation):
    grad_input = _empty(tuple(input_shape), grad_out)
    torch.ops.largeconv_C.involution2d_grad_input(grad_out, weight, kernel_size, stride, padding, dilation,
                                                  grad_input)
    return grad_input


def involution2d_grad_weight(grad_out, x, weight_shape, kernel_size, stride, padding, dilation):
    grad_weight = _empty(tuple(weight_shape), grad_out)
    torch.ops.largeconv_C.involution2d_grad_weight(grad_out, x, kernel_size, stride, padding, dilation,
                                                   grad_weight)
    return grad_weight
