"""The "triton" backend: Triton kernels for depthwise conv and involution (installed as `largeconv.kernels`).

Implements the contract in largeconv/backend_api.md. On CUDA tensors the kernels compile for the GPU; on CPU
tensors they run only under TRITON_INTERPRET=1 (set before triton is first imported), which the tests use.
"""
from .dwconv import dwconv2d_forward, dwconv2d_grad_input, dwconv2d_grad_weight
from .involution import involution2d_forward, involution2d_grad_input, involution2d_grad_weight
from .dwconv1d import dwconv1d_forward, dwconv1d_grad_input, dwconv1d_grad_weight
from .involution_fused import involution2d_fused_forward, involution2d_fused_backward
from . import dwconv as _dwconv, dwconv1d as _dwconv1d, involution as _involution, involution_fused as _fused

__all__ = ["unsupported_reason", "dwconv2d_forward", "dwconv2d_grad_input", "dwconv2d_grad_weight",
           "involution2d_forward", "involution2d_grad_input", "involution2d_grad_weight",
           "dwconv1d_forward", "dwconv1d_grad_input", "dwconv1d_grad_weight",
           "involution2d_fused_forward", "involution2d_fused_backward"]


def unsupported_reason(op, x, kernel_size):
    if op == "dwconv1d":
        return _dwconv1d.unsupported_reason(x)
    module = {"dwconv2d": _dwconv, "involution2d": _involution, "involution2d_fused": _fused}[op]
    return module.unsupported_reason(x, kernel_size)
