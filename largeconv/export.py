"""Export support: `torch.export`, `torch.onnx.export(dynamo=True)` and the legacy TorchScript ONNX exporter.

Registered on `import largeconv`; nothing to pass at export time.

- torch.export keeps `largeconv::dwconv2d` / `involution2d` / `involution2d_fused` / `dwconv1d` as single nodes
  (save/load round-trips); `ep.run_decompositions()` lowers them to aten ops (F.conv2d / F.conv1d; a 1x1 conv and
  unfold-multiply-sum for involution) through the decompositions below.
- torch.onnx.export(dynamo=True) runs the same decompositions, so the ONNX graph holds a standard `Conv` (the
  deploy path of a re-parameterized RepLKNet) and plain ops for involution.
- the legacy exporter (dynamo=False) uses the symbolic functions below (dwconv2d and involution2d only).

How: each forward op gets a CompositeImplicitAutograd kernel in Python (`OpOverload.py_impl`), which is where
`run_decompositions()` and the ONNX exporter's decomposition table look for a custom op's decomposition. In eager
the op's own kernels have priority (torch.library.custom_op registers them as CompositeExplicitAutograd), but
tracers (make_fx, AOTAutograd under torch.compile, fake tensors) call a CompositeImplicitAutograd kernel whenever
one exists, so ours declines (returns NotImplemented) unless torch.export is running: torch.compile keeps calling
the fast kernels. (A C++-registered kernel could not decline: its result must be a Tensor.) AOTInductor compiles
under the same exporting flag and so gets the aten ops, which its C++ runtime can run.
"""
from __future__ import annotations

import torch

from . import conv1d, fused_involution, ops  # noqa: F401  (define the custom ops this module registers for)
from . import reference
from .arguments import memory_format_of


def _dwconv2d_decomposition(x, weight, bias, stride, padding, dilation, backend):
    if not torch.compiler.is_exporting():
        return NotImplemented  # torch.compile and friends: keep the custom op (its fast kernels)
    out = reference.dwconv2d_forward(x, weight, bias, stride, padding, dilation)
    return out.contiguous(memory_format=memory_format_of(x))  # the layout the custom op returns


def _involution2d_decomposition(x, weight, kernel_size, stride, padding, dilation, backend):
    if not torch.compiler.is_exporting():
        return NotImplemented
    return reference.involution2d_forward(x, weight, kernel_size, stride, padding, dilation)


def _involution2d_fused_decomposition(x, reduced, span_weight, span_bias, kernel_size, stride, padding, dilation,
                                      backend):
    if not torch.compiler.is_exporting():
        return NotImplemented
    out = reference.involution2d_fused_forward(x, reduced, span_weight, span_bias, kernel_size, stride, padding,
                                               dilation)
    return out.contiguous(memory_format=memory_format_of(x))


def _dwconv1d_decomposition(x, weight, bias, stride, padding, dilation, backend):
    if not torch.compiler.is_exporting():
        return NotImplemented
    return reference.dwconv1d_forward(x, weight, bias, stride, padding, dilation)


def _register_decompositions():
    # Inductor copies every CompositeImplicitAutograd op into its decomposition table when its module is first
    # imported, then refuses to fall back to an op it also has a decomposition for ("both a fallback and a decomp for
    # same op"): every torch.compile of a model using largeconv failed when largeconv was imported first. So that
    # table is built before ours are registered, and ours are kept out of it.
    import torch._inductor.decomposition as inductor_decomposition

    cia = torch._C.DispatchKey.CompositeImplicitAutograd
    for op, decomposition in ((torch.ops.largeconv.dwconv2d.default, _dwconv2d_decomposition),
                              (torch.ops.largeconv.involution2d.default, _involution2d_decomposition),
                              (torch.ops.largeconv.involution2d_fused.default, _involution2d_fused_decomposition),
                              (torch.ops.largeconv.dwconv1d.default, _dwconv1d_decomposition)):
        op.py_impl(cia)(decomposition)
        inductor_decomposition.decompositions.pop(op, None)


_register_decompositions()


# ---- legacy TorchScript-based ONNX exporter (torch.onnx.export(..., dynamo=False)) ----------------------------

def _static_size(value, dim, op):
    sizes = value.type().varyingSizes()
    if sizes is None or sizes[dim] is None:
        raise RuntimeError(f"largeconv.{op}: the legacy ONNX exporter needs a static size for dim {dim} of "
                           f"{value.debugName()}; use torch.onnx.export(..., dynamo=True)")
    return sizes[dim]


def _constant(g, values):
    return g.op("Constant", value_t=torch.tensor(values, dtype=torch.int64))


def _dwconv2d_symbolic(g, x, weight, bias, stride, padding, dilation, backend):
    channels = _static_size(x, 1, "dwconv2d")
    kernel = [_static_size(weight, 2, "dwconv2d"), _static_size(weight, 3, "dwconv2d")]
    top, bottom, left, right = padding
    inputs = (x, weight) if bias.node().mustBeNone() else (x, weight, bias)
    return g.op("Conv", *inputs, group_i=channels, kernel_shape_i=kernel, strides_i=stride,
                pads_i=[top, left, bottom, right], dilations_i=dilation)  # ONNX pads: begins, then ends


def _involution2d_symbolic(g, x, weight, kernel_size, stride, padding, dilation, backend):
    channels = _static_size(x, 1, "involution2d")
    taps = kernel_size * kernel_size
    groups = _static_size(weight, 1, "involution2d") // taps
    # unfold as a depthwise conv with one-hot kernels: output channel c * taps + t is tap t of channel c
    one_hot = torch.eye(taps).reshape(taps, 1, kernel_size, kernel_size).repeat(channels, 1, 1, 1)
    one_hot = g.op("CastLike", g.op("Constant", value_t=one_hot), x)
    cols = g.op("Conv", x, one_hot, group_i=channels, kernel_shape_i=[kernel_size] * 2, strides_i=[stride] * 2,
                pads_i=[padding] * 4, dilations_i=[dilation] * 2)
    cols = g.op("Reshape", cols, _constant(g, [0, groups, channels // groups, taps, -1]))
    kernel = g.op("Reshape", weight, _constant(g, [0, groups, 1, taps, -1]))
    out = g.op("ReduceSum", g.op("Mul", cols, kernel), _constant(g, [3]), keepdims_i=0)  # (B, G, C/G, Ho*Wo)
    shape = g.op("Concat", g.op("Slice", g.op("Shape", x), _constant(g, [0]), _constant(g, [2])),
                 g.op("Slice", g.op("Shape", weight), _constant(g, [2]), _constant(g, [4])), axis_i=0)
    return g.op("Reshape", out, shape)  # (B, C, Ho, Wo)


def _register_legacy_symbolics():
    from torch.onnx import register_custom_op_symbolic
    from torch.onnx.symbolic_helper import parse_args

    # opset 15: CastLike; Conv alone would do from opset 1, but one floor keeps it simple
    register_custom_op_symbolic("largeconv::dwconv2d", parse_args("v", "v", "v", "is", "is", "is", "s")(
        _dwconv2d_symbolic), 15)
    register_custom_op_symbolic("largeconv::involution2d", parse_args("v", "v", "i", "i", "i", "i", "s")(
        _involution2d_symbolic), 15)


_register_legacy_symbolics()
