"""Export: torch.export (save/load, run_decompositions) and ONNX (dynamo and legacy exporters) run in onnxruntime
with the eager outputs, with no extra argument at export time (largeconv registers its decompositions on import)."""
import io
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.fx.experimental.proxy_tensor import make_fx

import largeconv
from largeconv import Involution2d, LargeDWConv2d
from largeconv.reparam import ReparamLargeKernelConv

from numerics import FP32_RTOL, randomize_bn, rel_error


# batch, height and width stay symbolic in the exported models; they are run on a second size too
DYNAMIC = ({0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim("height", min=8, max=512),
            3: torch.export.Dim("width", min=8, max=512)},)


def _dw(**kwargs):
    torch.manual_seed(0)
    return LargeDWConv2d(**kwargs).eval()


def _involution(stride, fused=False):
    torch.manual_seed(0)
    module = Involution2d(16, kernel_size=7, stride=stride, group_channels=4, fused=fused).eval()
    randomize_bn(module)
    return module


def _deployed_replknet_block():
    torch.manual_seed(0)
    block = ReparamLargeKernelConv(8, kernel_size=13, small_kernel=5).eval()
    randomize_bn(block)
    return block.reparameterize()


# (model factory, input (N, C, H, W), channels_last)
CASES = {
    "odd_kernel": (lambda: _dw(channels=8, kernel_size=7), (2, 8, 15, 15), False),
    "even_kernel_same": (lambda: _dw(channels=8, kernel_size=4, padding="same"), (2, 8, 15, 15), False),
    "stride2_dilation2_rectangular": (lambda: _dw(channels=8, kernel_size=(5, 3), stride=2, dilation=2),
                                      (2, 8, 17, 16), False),
    "multiplier_channels_last": (lambda: _dw(channels=8, kernel_size=7, channel_multiplier=2, bias=False),
                                 (2, 8, 15, 15), True),
    "involution_stride1": (lambda: _involution(1), (2, 16, 12, 12), False),
    "involution_stride2": (lambda: _involution(2), (2, 16, 12, 12), False),
    "involution_fused": (lambda: _involution(1, fused=True), (2, 16, 12, 12), False),
    "replknet_deployed": (_deployed_replknet_block, (2, 8, 16, 16), False),
}


def _input(shape, channels_last):
    x = torch.randn(shape)
    return x.to(memory_format=torch.channels_last) if channels_last else x


def _needs(module, why):
    return pytest.importorskip(module, reason=f"{module} is not installed ({why}; pip install {module})")


def _run_onnx(model_bytes, x):
    ort = _needs("onnxruntime", "it runs the exported models")
    session = ort.InferenceSession(model_bytes, providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {session.get_inputs()[0].name: x.contiguous().numpy()})
    return torch.from_numpy(out)


def _other_size(shape):
    batch, channels, height, width = shape
    return (batch + 1, channels, height + 5, width + 2)


def _check_against_eager(model, model_bytes, shapes, channels_last):
    for shape in shapes:
        x = _input(shape, channels_last)
        with torch.no_grad():
            expected = model(x)
        out = _run_onnx(model_bytes, x)
        assert out.shape == expected.shape
        assert rel_error(out, expected) <= FP32_RTOL, f"input {shape}: onnxruntime differs from eager"


def _op_types(model_bytes):
    import onnx
    return {node.op_type for node in onnx.load_from_string(model_bytes).graph.node}


@pytest.mark.parametrize("case", list(CASES))
def test_onnx_dynamo_export_matches_eager(case, tmp_path):
    _needs("onnxscript", "torch.onnx.export(dynamo=True) needs it")
    make, shape, channels_last = CASES[case]
    torch.manual_seed(1)
    model, x = make(), _input(shape, channels_last)
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=DYNAMIC, verbose=False)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    model_bytes = path.read_bytes()
    if "involution" not in case:
        assert "Conv" in _op_types(model_bytes)  # a standard ONNX Conv: what TensorRT and friends run fast
    _check_against_eager(model, model_bytes, (shape, _other_size(shape)), channels_last)


@pytest.mark.parametrize("case", ["odd_kernel", "stride2_dilation2_rectangular", "multiplier_channels_last",
                                  "involution_stride2", "replknet_deployed", "even_kernel_same"])
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")  # deprecated, works
def test_onnx_legacy_export_matches_eager(case):
    make, shape, channels_last = CASES[case]
    torch.manual_seed(1)
    model, x = make(), _input(shape, channels_last)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x,), buffer, dynamo=False, input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    _check_against_eager(model, buffer.getvalue(), (shape, (shape[0] + 1, *shape[1:])), channels_last)


# involution at stride 2 has batch, H and W dynamic too (issue 13, item 9: avg_pool2d's ceil_mode size rule used to
# add a parity guard on H and W that torch.export rejected)
@pytest.mark.parametrize("case", ["even_kernel_same", "involution_stride1", "involution_stride2", "involution_fused"])
def test_torch_export_save_load_and_decompositions(case, tmp_path):
    make, shape, channels_last = CASES[case]
    torch.manual_seed(1)
    model, x = make(), _input(shape, channels_last)
    with torch.no_grad():
        expected = model(x)
    program = torch.export.export(model, (x,), dynamic_shapes=DYNAMIC)
    custom_ops = {torch.ops.largeconv.dwconv2d.default, torch.ops.largeconv.involution2d.default,
                  torch.ops.largeconv.involution2d_fused.default}
    targets = {node.target for node in program.graph.nodes if node.op == "call_function"}
    assert targets & custom_ops, "torch.export keeps the largeconv op as one node"

    path = tmp_path / "model.pt2"
    torch.export.save(program, path)
    loaded = torch.export.load(path)
    assert torch.equal(loaded.module()(x), expected)  # the same op and backend: bit-identical

    decomposed = program.run_decompositions()
    targets = {node.target for node in decomposed.graph.nodes if node.op == "call_function"}
    assert not targets & custom_ops
    assert all(getattr(t, "namespace", "aten") == "aten" for t in targets), targets
    x2 = _input(_other_size(shape), channels_last)
    with torch.no_grad():
        assert rel_error(decomposed.module()(x2), model(x2)) <= FP32_RTOL


def test_conv1d_exports_to_onnx_and_torch_export(tmp_path):
    """LargeDWConv1d (a Conformer conv module's depthwise conv): ONNX (dynamo) holds a standard Conv and matches
    eager in onnxruntime for a second batch and length; torch.export keeps the op, round-trips through save/load and
    decomposes to aten."""
    _needs("onnxscript", "torch.onnx.export(dynamo=True) needs it")
    ort = _needs("onnxruntime", "it runs the exported models")
    torch.manual_seed(0)
    model = largeconv.LargeDWConv1d(8, 31).eval()
    x, x2 = torch.randn(2, 8, 50), torch.randn(3, 8, 77)
    dynamic = ({0: torch.export.Dim("batch", min=1, max=64), 2: torch.export.Dim("length", min=32, max=4096)},)
    with torch.no_grad():
        expected, expected2 = model(x), model(x2)
    program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=dynamic, verbose=False)
    path = tmp_path / "model.onnx"
    program.save(str(path))
    assert "Conv" in _op_types(path.read_bytes())
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for inputs, want in ((x, expected), (x2, expected2)):
        got = torch.from_numpy(session.run(None, {name: inputs.numpy()})[0])
        assert rel_error(got, want) <= FP32_RTOL

    exported = torch.export.export(model, (x,), dynamic_shapes=dynamic)
    targets = {node.target for node in exported.graph.nodes if node.op == "call_function"}
    assert torch.ops.largeconv.dwconv1d.default in targets
    torch.export.save(exported, tmp_path / "model.pt2")
    assert torch.equal(torch.export.load(tmp_path / "model.pt2").module()(x), expected)
    decomposed = exported.run_decompositions()
    targets = {node.target for node in decomposed.graph.nodes if node.op == "call_function"}
    assert all(getattr(t, "namespace", "aten") == "aten" for t in targets), targets
    with torch.no_grad():
        assert rel_error(decomposed.module()(x2), expected2) <= FP32_RTOL


def test_decompositions_only_apply_when_exporting():
    """Tracing outside torch.export (torch.compile, make_fx) keeps the custom op, so compiled code runs the fast
    kernels, not the F.conv2d / unfold composite."""
    x, w = torch.randn(2, 4, 9, 9), torch.randn(4, 1, 7, 7)
    involution_weight = torch.randn(2, 49, 9, 9)
    graph = make_fx(lambda x: (largeconv.dwconv2d(x, w), largeconv.involution2d(x, involution_weight, 7)))(x)
    targets = {node.target for node in graph.graph.nodes}
    assert torch.ops.largeconv.dwconv2d.default in targets
    assert torch.ops.largeconv.involution2d.default in targets


def test_no_extra_argument_needed_for_a_model_with_both_modules():
    """A plain user model, exported with only the usual arguments."""
    _needs("onnxscript", "torch.onnx.export(dynamo=True) needs it")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), LargeDWConv2d(16, 9), nn.ReLU(),
                          Involution2d(16, kernel_size=5, group_channels=8)).eval()
    randomize_bn(model)
    x = torch.randn(1, 3, 14, 14)
    program = torch.onnx.export(model, (x,), dynamo=True, verbose=False)
    with torch.no_grad():
        expected = model(x)
    out = _run_onnx(program.model_proto.SerializeToString(), x)
    assert rel_error(out, expected) <= FP32_RTOL


def test_inductor_compiles_models_when_largeconv_is_imported_first():
    """Regression: the export decompositions (CompositeImplicitAutograd kernels) used to land in inductor's
    decomposition table when largeconv was imported before inductor, and every torch.compile then failed with
    "both a fallback and a decomp for same op". A fresh process, so the import order is the user's."""
    script = """
import torch, largeconv
import torch.nn.functional as F
conv = largeconv.LargeDWConv2d(4, 13, backend="cpu")
x = torch.randn(2, 4, 16, 16, requires_grad=True)
out = torch.compile(conv)(x)
out.square().sum().backward()
ref = F.conv2d(x.detach().double(), conv.weight.detach().double(), conv.bias.detach().double(), 1, 6, 1, 4)
assert (out.detach().double() - ref).abs().max() < 1e-4, "wrong output"
assert conv.weight.grad is not None and x.grad is not None
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
