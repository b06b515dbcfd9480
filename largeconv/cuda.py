"""The "cuda" backend: the CUDA C++ kernels of csrc/, built as the extension `largeconv._C` (backend_api.md).

Each function allocates its result here (so a test can poison the allocation) and calls the `largeconv_C` op that
fills it. Kernel designs are described at the top of csrc/dwconv.cuh, csrc/dwconv1d.cuh and csrc/involution.cuh.
Importing this module never fails: without the extension, `unsupported_reason` says how to build it.
"""
import importlib
import os

import torch
import torch.nn.functional as F

from .arguments import (cuda_matmul_fp32_precision, cudnn_conv_allows_tf32, dwconv2d_output_hw, is_channels_last,
                        memory_format_of)

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
# PyTorch allows it for its convs, else as 3xTF32 (about fp32's accuracy). Small maps that every output's window
# covers whole run as dense products instead (below). channels_last calls the NCHW tensor-core kernels take in
# fp16/bf16 or TF32 run on NCHW copies (through_nchw).

# csrc/dwconv.cuh's bounds for its tensor-core kernels (kMmaMinKw, kMmaMaxKw, kWgMaxK; a test keeps them equal)
MMA_MIN_KW, MMA_MAX_K, WGRAD_MMA_MAX_K = 13, 65, 32


def through_nchw(t, channels, weight_shape, stride, dilation, direction) -> bool:
    """Whether a channels_last call (`t` the tensor it reads: x, or grad_out for grad-input) runs faster on NCHW
    copies: where the NCHW tensor-core kernels take it (unit stride and dilation, a channel multiplier of 1,
    13 <= kw, kernel sides <= 65, grad-weight <= 32; sm_80+) in fp16/bf16, or fp32 with TF32 allowed. The
    channels_last kernels run FMA: on an H200 (2026-11-28, RepLKNet-31B stage 1, bf16) 2.82 ms forward against
    0.447 NCHW; the copies cost ~0.05 ms there (predicted: two passes over 51 MB at the copy bandwidth). Exact fp32
    (3xTF32 on NCHW, FMA on channels_last) is not measured: it stays on channels_last."""
    kh, kw = weight_shape[2:]
    limit = WGRAD_MMA_MAX_K if direction == "grad_weight" else MMA_MAX_K
    return (is_channels_last(t) and (t.dtype != torch.float32 or cudnn_conv_allows_tf32())
            and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and weight_shape[0] == channels
            and MMA_MIN_KW <= kw <= limit and kh <= limit and torch.cuda.get_device_capability(t.device) >= (8, 0))


def _nchw(t):
    return t.contiguous(memory_format=torch.contiguous_format)


def dwconv2d_forward(x, weight, bias, stride, padding, dilation):
    if through_nchw(x, x.shape[1], weight.shape, stride, dilation, "forward"):
        out = dwconv2d_forward(_nchw(x), weight, bias, stride, padding, dilation)
        return out.contiguous(memory_format=torch.channels_last)
    out_h, out_w = dwconv2d_output_hw(x.shape, weight.shape[2:], stride, padding, dilation)
    out = _empty((x.shape[0], weight.shape[0], out_h, out_w), x)
    if covers_whole_map(x, x.shape, weight.shape, stride, padding, dilation) and not small_plane(x):
        return dense_forward(x, weight, bias, padding, out)
    torch.ops.largeconv_C.dwconv2d_forward(x, weight, bias, list(stride), list(padding), list(dilation),
                                           cudnn_conv_allows_tf32(), out)
    return out


def dwconv2d_grad_input(grad_out, weight, input_shape, stride, padding, dilation):
    if through_nchw(grad_out, input_shape[1], weight.shape, stride, dilation, "grad_input"):
        grad_input = dwconv2d_grad_input(_nchw(grad_out), weight, input_shape, stride, padding, dilation)
        return grad_input.contiguous(memory_format=torch.channels_last)
    grad_input = _empty(tuple(input_shape), grad_out)
    if covers_whole_map(grad_out, input_shape, weight.shape, stride, padding, dilation) and not small_plane(grad_out):
        return dense_grad_input(grad_out, weight, padding, grad_input)
    torch.ops.largeconv_C.dwconv2d_grad_input(grad_out, weight, list(stride), list(padding), list(dilation),
                                              cudnn_conv_allows_tf32(), grad_input)
    return grad_input


def dwconv2d_grad_weight(grad_out, x, weight_shape, stride, padding, dilation):
    if through_nchw(x, x.shape[1], weight_shape, stride, dilation, "grad_weight"):
        return dwconv2d_grad_weight(_nchw(grad_out), _nchw(x), weight_shape, stride, padding, dilation)
    grad_weight = _empty(tuple(weight_shape), x, torch.contiguous_format)
    if covers_whole_map(x, x.shape, weight_shape, stride, padding, dilation) and not is_channels_last(grad_out):
        return dense_grad_weight(grad_out, x, padding, grad_weight)
    torch.ops.largeconv_C.dwconv2d_grad_weight(grad_out, x, list(stride), list(padding), list(dilation),
                                               cudnn_conv_allows_tf32(), grad_weight)
    return grad_weight


# ---- small maps that the kernel covers whole: dense products per channel ------------------------------------------
# Where every output's window spans the whole input plane (unit stride and dilation, and padding such that
# top >= Ho - 1 and top <= kh - H, the same across: "same" padding with K >= 2H - 1, as RepLKNet-31B's 14x14 K27
# and 7x7 K13 stages), channel c's conv is a dense (H*W) x (Ho*Wo) matrix of its filter taps, T[(p, q), (i, j)] =
# f[top + p - i, left + q - j], with no entry outside the filter: batched matrix products (cuBLAS) then form exactly
# the conv's products, so NaN and Inf come out as in the direct sums, and do no wasted work, where the tiled kernels
# would run every tap of the K x K window (most of it over padding). fp32 throughout (half inputs widened; their
# values are exact in TF32 too), and only where torch's fp32 matmul precision rounds no more than the conv may.

DENSE_MIN_TAPS = 49  # large kernels only: below, the tiled kernels keep the shapes they were measured on
DENSE_MAX_BYTES = 1 << 26  # the matrices' fp32 bytes at most: this, or 4x x's
# csrc/dwconv.cuh's kPlaneMaxPixels: forward and grad-input of planes this small (what they read: x, grad_out) run
# corr_plane_kernel, which sums over the pixels a window meets (predicted 0.042 ms forward at RepLKNet-31B's 7x7
# stage against the dense products' 0.217 measured on an H200); the weight gradient keeps the dense products.
PLANE_MAX_PIXELS = 64


def small_plane(t) -> bool:
    return t.shape[2] * t.shape[3] <= PLANE_MAX_PIXELS


def covers_whole_map(t, input_shape, weight_shape, stride, padding, dilation) -> bool:
    """Whether the call runs as dense products: `t` the tensor it reads (x, or grad_out for grad-input), any strides
    but channels_last."""
    n, c, h, w = input_shape
    kh, kw = weight_shape[2:]
    if tuple(stride) != (1, 1) or tuple(dilation) != (1, 1) or weight_shape[0] != c or kh * kw < DENSE_MIN_TAPS \
            or is_channels_last(t):  # results follow t's layout; these products write NCHW
        return False
    top, _, left, _ = padding
    ho, wo = dwconv2d_output_hw(input_shape, (kh, kw), stride, padding, dilation)
    if not (ho - 1 <= top <= kh - h and wo - 1 <= left <= kw - w):
        return False
    if 4 * c * h * w * ho * wo > max(DENSE_MAX_BYTES, 16 * n * c * h * w):
        return False
    if torch.are_deterministic_algorithms_enabled() and os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in (
            ":4096:8", ":16:8"):
        return False  # torch would raise on a cuBLAS call (its rule); the tiled kernels are deterministic anyway
    precision = cuda_matmul_fp32_precision()
    return precision == "ieee" or precision == "tf32" and (t.dtype != torch.float32 or cudnn_conv_allows_tf32())


def _dense_taps(weight, in_hw, out_hw, padding):
    """(C, H*W, Ho*Wo) fp32: [c, (p, q), (i, j)] = weight[c, 0, top + p - i, left + q - j]."""
    c, _, kh, kw = weight.shape
    (h, w), (ho, wo), top, left = in_hw, out_hw, padding[0], padding[2]
    flipped = weight.reshape(c, kh, kw).flip(1, 2).float()  # [c, kh - 1 - a, kw - 1 - b] = f[c, a, b]
    # with p' = H - 1 - p: f[top + p - i] = flipped[kh - top - H + p' + i], one window of `flipped` per (p', q')
    windows = flipped.as_strided((c, h, w, ho, wo), (kh * kw, kw, 1, kw, 1), (kh - top - h) * kw + kw - left - w)
    return windows.flip(1, 2).reshape(c, h * w, ho * wo)


def _as_matrices(t):
    """(N, C, H, W) -> its (C, N, H*W) view (fp32)."""
    n, c = t.shape[:2]
    return t.float().reshape(n, c, -1).transpose(0, 1)


def _store(result, into):
    """(C, N, M) fp32 into the NCHW tensor `into`."""
    into.view(into.shape[0], into.shape[1], -1).transpose(0, 1).copy_(result)
    return into


def dense_forward(x, weight, bias, padding, out):
    result = torch.bmm(_as_matrices(x), _dense_taps(weight, x.shape[2:], out.shape[2:], padding))
    if bias is not None:
        result += bias.float().view(-1, 1, 1)
    return _store(result, out)


def dense_grad_input(grad_out, weight, padding, grad_input):
    taps = _dense_taps(weight, grad_input.shape[2:], grad_out.shape[2:], padding)
    return _store(torch.bmm(_as_matrices(grad_out), taps.transpose(1, 2)), grad_input)


def _antidiagonal_sums(t):
    """(..., R, S) -> (..., R + S - 1): [..., k] = sum over r of t[..., r, k - r] (rows shifted right by r, summed)."""
    *batch, r, s = t.shape
    padded = F.pad(t, (0, r)).reshape(*batch, r * (s + r))
    return padded[..., :r * (s + r - 1)].reshape(*batch, r, s + r - 1).sum(-2)


def dense_grad_weight(grad_out, x, padding, grad_weight):
    (_, c, h, w), (ho, wo) = x.shape, grad_out.shape[2:]
    kh, kw = grad_weight.shape[2:]
    top, left = padding[0], padding[2]
    # pairs[c, p', q', i, j] = sum_n x[n, c, H - 1 - p', W - 1 - q'] grad_out[n, c, i, j]: tap (a, b) of the
    # flipped filter is (kh - top - H + p' + i, kw - left - W + q' + j), so the taps are the sums over p' + i, q' + j
    pairs = torch.bmm(_as_matrices(x).transpose(1, 2), _as_matrices(grad_out)).view(c, h, w, ho, wo).flip(1, 2)
    cols = _antidiagonal_sums(pairs.permute(0, 1, 3, 2, 4))  # (c, p', i, W + Wo - 1)
    taps = _antidiagonal_sums(cols.permute(0, 3, 1, 2)).transpose(1, 2)  # (c, H + Ho - 1, W + Wo - 1)
    flipped = torch.zeros(c, kh, kw, dtype=torch.float32, device=x.device)
    a0, b0 = kh - top - h, kw - left - w
    flipped[:, a0:a0 + h + ho - 1, b0:b0 + w + wo - 1] = taps
    grad_weight.copy_(flipped.flip(1, 2).view(grad_weight.shape))
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
