"""The "triton" backend: Triton kernels for depthwise conv and involution (installed as `largeconv.kernels`).

Implements the contract in largeconv/backend_api.md. On CUDA tensors the kernels compile for the GPU; on CPU
tensors they run only under TRITON_INTERPRET=1 (set before triton is first imported), which the tests use.
"""
from .dwconv import dwconv2d_forward, dwconv2d_grad_input, dwconv2d_grad_weight
from .involution import involution2d_forward, involution2d_grad_input, involution2d_grad_weight
from .dwconv1d import dwconv1d_forward, dwconv1d_grad_input, dwconv1d_grad_weight
from . import dwconv as _dwconv, dwconv1d as _dwconv1d, involution as _involution

__all__ = ["unsupported_reason", "dwconv2d_forward", "dwconv2d_grad_input", "dwconv2d_grad_weight",
           "involution2d_forward", "involution2d_grad_input", "involution2d_grad_weight",
           "dwconv1d_forward", "dwconv1d_grad_input", "dwconv1d_grad_weight"]


def unsupported_reason(op, x, kernel_size):
    if op == "dwconv1d":
        return _dwconv1d.unsupported_reason(x)
    module = {"dwconv2d": _dwconv, "involution2d": _involution}[op]
    return module.unsupported_reason(x, kernel_size)
