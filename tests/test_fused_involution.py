"""Involution fused with its 1x1 span conv (largeconv.involution2d_fused, Involution2d(fused=True)) against the
unfused definition, F.conv2d 1x1 then unfold-multiply-sum (tests/numerics.py, independent of largeconv), in float64:
outputs and every gradient (x, reduced, span weight, span bias; the module's parameters), on "torch", "cpu" and
"triton" (the interpreter, tests/conftest.py). Outputs are poisoned with NaN before kernels run, so an unwritten
element fails.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import largeconv
from largeconv import cpu as cpu_backend, dispatch
from largeconv.fused_involution import DOUBLE_BACKWARD_ERROR
from largeconv.kernels import involution_fused as triton_fused
from numerics import assert_close, involution_unfold, layout, poisoned_allocations, randomize_bn

BACKENDS = ["torch", "cpu", "triton"]
LOW_PRECISION = (torch.float16, torch.bfloat16)


def out_size(n, k, stride, padding, dilation):
    return (n + 2 * padding - dilation * (k - 1) - 1) // stride + 1


def make(b, c, g, h, w, k, cr, stride=1, dilation=1, bias=True, dtype=torch.float32, channels_last=False,
         weight_4d=True, seed=None):
    """Fresh random (x, reduced, span_weight, span_bias, grad_out) in `dtype` and layout."""
    gen = None if seed is None else torch.Generator().manual_seed(seed)
    p = dilation * (k - 1) // 2
    ho, wo = out_size(h, k, stride, p, dilation), out_size(w, k, stride, p, dilation)
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def rand(*shape):
        return torch.randn(shape, generator=gen).to(dtype)

    x, reduced, grad = (rand(*s).contiguous(memory_format=fmt) for s in ((b, c, h, w), (b, cr, ho, wo),
                                                                          (b, c, ho, wo)))
    span_weight = rand(g * k * k, cr, 1, 1) if weight_4d else rand(g * k * k, cr)
    return x, reduced, span_weight / cr ** 0.5, rand(g * k * k) if bias else None, grad


def unfused(x, reduced, span_weight, span_bias, k, stride, padding, dilation):
    """The definition: the span conv's output is the involution kernel."""
    kernel = F.conv2d(reduced, span_weight.reshape(span_weight.shape[0], -1, 1, 1), span_bias)
    return involution_unfold(x, kernel, k, stride, padding, dilation)


def differentiable(tensors):
    return [None if t is None else t.detach().requires_grad_() for t in tensors]


def reference(inputs, grad, k, stride, padding, dilation, dtype=torch.float64):
    """Output and grads (x, reduced, span_weight, span_bias) of the unfused definition in `dtype`."""
    inputs = differentiable([None if t is None else t.to(dtype) for t in inputs])
    out = unfused(*inputs, k, stride, padding, dilation)
    wanted = [t for t in inputs if t is not None]
    grads = list(torch.autograd.grad(out, wanted, grad.to(dtype)))
    return [out.detach()] + grads + ([None] if inputs[3] is None else [])


def run_fused(backend, inputs, grad, k, stride, padding, dilation):
    inputs = differentiable(inputs)
    with poisoned_allocations():
        out = largeconv.involution2d_fused(*inputs, k, stride, padding, dilation, backend=backend)
        wanted = [t for t in inputs if t is not None]
        grads = list(torch.autograd.grad(out, wanted, grad))
    return [out.detach()] + grads + ([None] if inputs[3] is None else [])


NAMES = ("output", "grad x", "grad reduced", "grad span_weight", "grad span_bias")


def compare(results, inputs, grad, k, stride, padding, dilation, low_reference=None):
    exact = reference(inputs, grad, k, stride, padding, dilation)
    low = [None] * 5
    if inputs[0].dtype in LOW_PRECISION:
        low = low_reference or reference(inputs, grad, k, stride, padding, dilation, inputs[0].dtype)
    for name, got, ref, ref_low, like in zip(NAMES, results, exact, low, (grad, *inputs)):
        if ref is None:
            assert got is None, name
            continue
        assert got.dtype == inputs[0].dtype, f"{name}: dtype {got.dtype}"
        assert got.shape == like.shape, f"{name}: shape {tuple(got.shape)}, expected {tuple(like.shape)}"
        if got.dim() == 4 and name != "grad span_weight":
            assert got.is_contiguous(memory_format=layout(like)), f"{name}: memory format must follow the input's"
        assert_close(got, ref, ref_low, name)


def check(backend, inputs, grad, k, stride=1, padding=None, dilation=1):
    compare(run_fused(backend, inputs, grad, k, stride, padding, dilation), inputs, grad, k, stride, padding,
            dilation)


# (B, C, G, H, W), K, Cr, stride, dilation, bias
CASES = [
    ((2, 8, 2, 7, 6), 3, 5, 1, 1, True),      # G > 1, K = 3
    ((1, 4, 1, 9, 8), 3, 3, 2, 1, True),      # stride 2, odd H, G = 1
    ((1, 4, 2, 9, 9), 3, 4, 1, 2, False),     # dilation 2, no span bias
    ((1, 6, 3, 8, 7), 7, 6, 1, 1, True),      # K = 7 (taps padded to 64), K larger than the map's half
    ((2, 4, 2, 9, 10), 7, 2, 2, 1, False),    # K = 7 at stride 2, Cr = 2, no bias
    ((1, 4, 1, 10, 8), 5, 20, 2, 2, True),    # stride 2 with dilation 2, Cr = 20 (> one 16-wide dot block at 16)
    ((1, 32, 2, 5, 6), 3, 70, 1, 1, True),    # 16 channels per group, Cr = 70: two reduced-channel blocks of 64
    ((2, 6, 2, 6, 7), 3, 4, 1, 1, True),      # 3 channels per group: the kernels' two-channel steps end on one
]


def _case_id(case):
    shape, k, cr, s, d, bias = case
    return "x".join(map(str, shape)) + f"_k{k}cr{cr}s{s}d{d}" + ("" if bias else "_nobias")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_matches_unfused_fp32(backend, case):
    shape, k, cr, stride, dilation, bias = case
    *inputs, grad = make(*shape, k, cr, stride, dilation, bias)
    check(backend, inputs, grad, k, stride, None, dilation)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_non_finite_input_stays_where_the_unfused_layer_puts_it(backend):
    """Inf and NaN in the second of two groups of x, Inf in its first channel (3 channels per group: the kernels'
    two-channel steps end on one, next to it): every result has the unfused layer's NaN/Inf pattern and its
    finite values, and the first group's span-weight rows stay finite."""
    *inputs, grad = make(2, 6, 2, 6, 7, 3, 4, seed=3)
    inputs[0][0, 3, 2, 3] = float("inf")
    inputs[0][1, 5, 4, 4] = float("nan")
    results = run_fused(backend, inputs, grad, 3, 1, None, 1)
    for name, got, want in zip(NAMES, results, reference(inputs, grad, 3, 1, None, 1)):
        assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.isinf(), want.isinf()), name
        assert got.isfinite().any(), name
        assert_close(got[want.isfinite()], want[want.isfinite()], what=name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_layouts_and_2d_span_weight(backend, channels_last):
    """channels_last inputs (results follow x's layout), a (G*K*K, Cr) span weight, explicit padding."""
    *inputs, grad = make(2, 6, 3, 7, 8, 3, 4, 2, 1, channels_last=channels_last, weight_4d=False)
    check(backend, inputs, grad, 3, 2, 1, 1)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("dtype", [torch.float64, *LOW_PRECISION], ids=str)
def test_dtypes(backend, dtype):
    """float64 to 1e-10; fp16/bf16 within 2x the error of the unfused definition computed in that dtype."""
    for channels_last in (False, True):
        *inputs, grad = make(2, 8, 2, 7, 6, 3, 5, 1, 1, dtype=dtype, channels_last=channels_last)
        check(backend, inputs, grad, 3)


@pytest.mark.parametrize("block_elems", [1, 300, 2500], ids=lambda n: f"kernel{n}")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_cpu_pieces(monkeypatch, block_elems, channels_last):
    """The cpu backend's pieces of the kernel tensor: single rows of one image, bands of rows (the grad-x of
    overlapping bands added up), and runs of whole images, all covering the whole tensor."""
    monkeypatch.setattr(cpu_backend, "FUSED_KERNEL_ELEMS", block_elems)
    monkeypatch.setattr(cpu_backend, "FUSED_MIN_PIECES", 1)
    for stride, dilation in ((1, 1), (2, 2)):
        *inputs, grad = make(3, 4, 2, 9, 7, 3, 3, stride, dilation, channels_last=channels_last)
        check("cpu", inputs, grad, 3, stride, None, dilation)


def _pieces(monkeypatch, block_elems):
    """The (batch slice, rows) pieces the cpu backend uses for x (3, 4, 9, 7), K = 3, G = 2 at this budget."""
    monkeypatch.setattr(cpu_backend, "FUSED_KERNEL_ELEMS", block_elems)
    monkeypatch.setattr(cpu_backend, "FUSED_MIN_PIECES", 1)
    return list(cpu_backend._fused_pieces(3, 9, 2 * 9 * 7))


def test_cpu_pieces_shapes(monkeypatch):
    """The budgets above give the piece shapes they are meant to test."""
    assert all(r1 - r0 == 1 for _, r0, r1 in _pieces(monkeypatch, 1))
    assert {r1 - r0 for _, r0, r1 in _pieces(monkeypatch, 300)} == {2, 1}  # bands of 2 rows, 9 = 4*2 + 1
    assert [(bs.start, r0, r1) for bs, r0, r1 in _pieces(monkeypatch, 2500)] == [(0, 0, 9), (2, 0, 9)]
    monkeypatch.undo()  # the defaults: runs of at most 1/4 of the batch, whole images below 2**20 kernel elements
    assert [(bs.start, bs.stop) for bs, _, _ in cpu_backend._fused_pieces(16, 7, 100)] == [(i, i + 4)
                                                                                            for i in range(0, 16, 4)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend):
    x, reduced, weight, bias, _ = make(1, 4, 2, 5, 6, 3, 3, 2, 1, dtype=torch.float64)
    inputs = differentiable((x, reduced, weight, bias))

    def f(*args):
        return largeconv.involution2d_fused(*args, 3, 2, None, 1, backend=backend)

    # the interpreter runs ~1 s per backward: fast mode (one random direction) for triton
    assert torch.autograd.gradcheck(f, inputs, fast_mode=backend == "triton")


def test_forward_ad_matches_reference():
    """torch.func.jvp (forward-mode AD) equals the jvp of the unfused definition."""
    *inputs, _ = make(2, 4, 2, 7, 6, 3, 3, 2, 1, dtype=torch.float64)
    tangents = tuple(torch.randn_like(t) for t in inputs)

    def ours(*args):
        return largeconv.involution2d_fused(*args, 3, 2)

    def ref(*args):
        return unfused(*args, 3, 2, 1, 1)

    out, jvp = torch.func.jvp(ours, tuple(inputs), tangents)
    ref_out, ref_jvp = torch.func.jvp(ref, tuple(inputs), tangents)
    assert_close(out, ref_out, what="output under jvp")
    assert_close(jvp, ref_jvp, what="jvp")


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_double_backward_raises(backend):
    """A gradient of the gradients (here a gradient penalty) is refused with a clear error, never zeros."""
    *inputs, grad = make(1, 4, 2, 6, 6, 3, 3, dtype=torch.float64)
    inputs = differentiable(inputs)
    out = largeconv.involution2d_fused(*inputs, 3, backend=backend)
    grad_x, = torch.autograd.grad(out, inputs[0], grad, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward.*use fused=False"):
        grad_x.square().sum().backward()
    module = largeconv.Involution2d(16, 3, fused=True, backend=backend).double()
    x = torch.randn(1, 16, 6, 6, dtype=torch.float64, requires_grad=True)
    grad_x, = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=r"Involution2d\(\.\.\., fused=False\)"):
        torch.autograd.grad(grad_x.sum(), module.conv2.conv.weight)


def test_double_backward_message():
    assert "not supported" in DOUBLE_BACKWARD_ERROR and "fused=False" in DOUBLE_BACKWARD_ERROR


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend):
    """An empty batch or no channels: empty output, zero grads for reduced and the span parameters."""
    for shape in ((0, 4, 2, 6, 5), (2, 0, 2, 6, 5)):
        *inputs, grad = make(*shape, 3, 3)
        out, grad_x, grad_r, grad_w, grad_b = run_fused(backend, inputs, grad, 3, 1, None, 1)
        assert out.shape == grad.shape and grad_x.shape == inputs[0].shape
        for name, g, like in (("reduced", grad_r, inputs[1]), ("span_weight", grad_w, inputs[2]),
                              ("span_bias", grad_b, inputs[3])):
            assert g.shape == like.shape and torch.equal(g, torch.zeros_like(g)), name


def test_opcheck():
    *inputs, grad = make(2, 4, 2, 7, 6, 3, 3, 2)
    x, reduced, weight, bias = inputs
    weight = weight.flatten(1)
    params = (3, 2, 1, 1, "cpu")
    torch.library.opcheck(torch.ops.largeconv.involution2d_fused,
                          (x.requires_grad_(), reduced.requires_grad_(), weight.requires_grad_(),
                           bias.requires_grad_(), *params))
    torch.library.opcheck(torch.ops.largeconv.involution2d_fused_backward,
                          (grad, x.detach(), reduced.detach(), weight.detach(), bias.detach(), *params))


# ---- bad input ----------------------------------------------------------------------------------------------------

def _bad(**changes):
    x, reduced, weight, bias, _ = make(1, 4, 2, 8, 8, 3, 3)
    args = dict(x=x, reduced=reduced, span_weight=weight, span_bias=bias, kernel_size=3)
    args.update(changes)
    return lambda: largeconv.involution2d_fused(**args)


BAD_INPUTS = [
    (_bad(x=torch.randn(4, 8, 8)), ValueError, r"x must be 4-D"),
    (_bad(x=torch.randn(1, 4, 8, 8).int()), TypeError, r"x must be a floating-point"),
    (_bad(x=torch.randn(1, 3, 8, 8)), ValueError, r"2 groups of span_weight .* do not divide the 3 channels of x"),
    (_bad(x=[1.0]), TypeError, r"x must be a torch.Tensor"),
    (_bad(reduced=torch.randn(3, 8, 8)), ValueError, r"reduced must be 4-D"),
    (_bad(reduced=torch.randn(1, 3, 8, 8).double()), TypeError, r"reduced dtype torch.float64 does not match x"),
    (_bad(reduced=torch.randn(2, 3, 8, 8)), ValueError, r"reduced batch 2 does not match x batch 1"),
    (_bad(reduced=torch.randn(1, 3, 7, 8)), ValueError, r"reduced spatial size \(7, 8\) does not match the output"),
    (_bad(reduced=torch.randn(1, 5, 8, 8)), ValueError, r"span_weight takes 3 input channels but reduced has 5"),
    (_bad(reduced=torch.randn(1, 3, 8, 8).to(torch.int64)), TypeError, r"reduced must be a floating-point"),
    (_bad(span_weight=torch.randn(18, 3, 3, 3)), ValueError, r"span_weight must be \(G\*K\*K, Cr, 1, 1\)"),
    (_bad(span_weight=torch.randn(17, 3)), ValueError, r"span_weight has 17 output channels, which is not a"),
    (_bad(span_weight=torch.randn(18, 3).half()), TypeError, r"span_weight dtype torch.float16 does not match"),
    (_bad(span_weight=None), TypeError, r"span_weight must be a torch.Tensor"),
    (_bad(span_bias=torch.randn(17)), ValueError, r"span_bias must have shape \(18,\)"),
    (_bad(span_bias=torch.randn(18).double()), TypeError, r"span_bias dtype torch.float64 does not match"),
    (_bad(span_bias=torch.arange(18)), TypeError, r"span_bias must be a floating-point"),
    (_bad(kernel_size=3.0), TypeError, r"kernel_size must be an int"),
    (_bad(kernel_size=0), ValueError, r"kernel_size must be >= 1"),
    (_bad(kernel_size=5), ValueError, r"span_weight has 18 output channels, which is not a positive multiple of "
                                      r"kernel_size\*\*2 = 25"),
    (_bad(stride=0), ValueError, r"stride must be >= 1"),
    (_bad(stride=(1, 1)), TypeError, r"stride must be an int"),
    (_bad(padding=-1), ValueError, r"padding must be >= 0"),
    (_bad(padding="same"), TypeError, r"padding must be an int or None"),
    (_bad(dilation=0), ValueError, r"dilation must be >= 1"),
    (_bad(backend="tpu"), ValueError, r"backend must be one of"),
]


@pytest.mark.parametrize("call, error, message", BAD_INPUTS, ids=[m for _, _, m in BAD_INPUTS])
def test_bad_input(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "backend" in message or str(info.value).startswith("involution2d_fused: "), info.value


def test_bad_device():
    """Mixed devices name the argument (meta tensors stand in for a second device)."""
    x, reduced, weight, bias, _ = make(1, 4, 2, 8, 8, 3, 3)
    with pytest.raises(RuntimeError, match="involution2d_fused: reduced is on meta but x is on cpu"):
        largeconv.involution2d_fused(x, reduced.to("meta"), weight, bias, 3)
    with pytest.raises(RuntimeError, match="involution2d_fused: span_bias is on meta but x is on cpu"):
        largeconv.involution2d_fused(x, reduced, weight, bias.to("meta"), 3)


def test_explicit_backend_that_cannot_run():
    x, reduced, weight, bias, _ = make(1, 4, 2, 8, 8, 3, 3)
    with pytest.raises(RuntimeError, match="involution2d_fused: backend 'cuda' cannot run this call"):
        largeconv.involution2d_fused(x, reduced, weight, bias, 3, backend="cuda")


def test_auto_picks_cpu_and_never_runs_the_unfold_reference(monkeypatch):
    """auto on CPU: the cpu backend (the torch one is the unfold reference, known to lose), in measured and in
    table mode; results equal the definition."""
    from largeconv import reference as torch_backend

    def refuse(*args):
        raise AssertionError("auto ran the unfold reference")

    monkeypatch.setattr(torch_backend, "involution2d_fused_forward", refuse)
    monkeypatch.setattr(torch_backend, "involution2d_fused_backward", refuse)
    for mode in ("measure", "table"):
        monkeypatch.setenv("LARGECONV_AUTO", mode)
        dispatch._auto_cache.clear()
        *inputs, grad = make(2, 8, 2, 7, 6, 3, 5)
        check("auto", inputs, grad, 3)
        chosen = {key[1]: name for key, name in dispatch.auto_choices().items() if key[0] == "involution2d_fused"}
        assert chosen == ({"forward": "cpu", "backward": "cpu"} if mode == "measure" else {}), chosen


# ---- the module -----------------------------------------------------------------------------------------------------

def _module_pair(channels=32, kernel_size=3, stride=1, dilation=1, backend="cpu", dtype=torch.float64):
    torch.manual_seed(0)
    plain = largeconv.Involution2d(channels, kernel_size, stride, group_channels=8, dilation=dilation,
                                   backend=backend, dtype=dtype)
    randomize_bn(plain)
    with torch.no_grad():
        plain.conv2.conv.bias.normal_()
    fused = largeconv.Involution2d(channels, kernel_size, stride, group_channels=8, dilation=dilation,
                                   backend=backend, dtype=dtype, fused=True)
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def _module_results(module, x, grad):
    x = x.detach().requires_grad_()
    with poisoned_allocations():
        out = module(x)
        grads = torch.autograd.grad(out, [x, *module.parameters()], grad)
    return [out.detach(), *grads]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("geometry", [(3, 1, 1), (7, 2, 1), (3, 1, 2)], ids=["k3", "k7s2", "k3d2"])
def test_module_matches_unfused(backend, geometry):
    """Involution2d(fused=True) vs fused=False in float64 (train mode, random BN): output, input grad and the grad
    of every parameter (conv1, BN, conv2's weight and bias); odd sizes so stride 2 pools a partial window."""
    k, stride, dilation = geometry
    plain, fused = _module_pair(32, k, stride, dilation, backend="torch")
    fused.backend = backend
    x = torch.randn(2, 32, 9, 7, dtype=torch.float64)
    grad = torch.randn(plain(x).shape, dtype=torch.float64)
    names = ["output", "grad x"] + [f"grad {n}" for n, _ in plain.named_parameters()]
    for name, got, ref in zip(names, _module_results(fused, x, grad), _module_results(plain, x, grad)):
        assert_close(got, ref, what=name)


def test_module_state_dict_and_repr():
    plain, fused = _module_pair(backend="auto")
    assert list(plain.state_dict()) == list(fused.state_dict())
    assert list(fused.state_dict()) == ["conv1.conv.weight", "conv1.bn.weight", "conv1.bn.bias",
                                        "conv1.bn.running_mean", "conv1.bn.running_var",
                                        "conv1.bn.num_batches_tracked", "conv2.conv.weight", "conv2.conv.bias"]
    assert "fused=True" in repr(fused) and "fused=False" in repr(plain)
    plain.load_state_dict(fused.state_dict())  # and back


def test_module_eval_fp32():
    plain, fused = _module_pair(backend="cpu", dtype=torch.float32)
    plain.eval(), fused.eval()
    x = torch.randn(2, 32, 8, 8)
    with torch.no_grad():
        assert_close(fused(x), plain.double()(x.double()), what="eval output")


def test_module_autocast_bf16():
    """Under torch.autocast("cpu", bfloat16) the fused module runs in bf16, within 2x the unfused module's error
    under the same autocast (vs float64)."""
    plain, fused = _module_pair(backend="cpu", dtype=torch.float32)
    x = torch.randn(2, 32, 8, 8)
    exact = copy.deepcopy(plain).double()(x.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got, low = fused(x), plain(x)
    assert got.dtype == torch.bfloat16 and low.dtype == torch.bfloat16
    assert_close(got, exact, low, "output under autocast")


def test_torch_compile_inductor_first_call():
    """torch.compile(fullgraph=True) with the default inductor backend: the first call's output and grads equal
    the eager unfused module's (float32 vs float64 reference)."""
    plain, fused = _module_pair(backend="cpu", dtype=torch.float32)
    # an op after the involution, so the graph relies on the fake (meta) kernels' shapes and layouts too
    reference_module = torch.nn.Sequential(copy.deepcopy(plain).double(), torch.nn.Tanh())
    compiled = torch.compile(torch.nn.Sequential(fused, torch.nn.Tanh()), fullgraph=True)
    x = torch.randn(2, 32, 9, 7)
    grad = torch.randn(2, 32, 9, 7)
    got = _module_results(compiled, x, grad)
    ref = _module_results(reference_module, x.double(), grad.double())
    names = ["output", "grad x"] + [f"grad {n}" for n, _ in fused.named_parameters()]
    for name, g, r in zip(names, got, ref):
        assert_close(g, r, what=f"compiled, first call: {name}")


# ---- the Triton kernels with the GPU's tile configs ------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available() or not triton_fused._INTERPRET,
                    reason="runs the GPU configs under TRITON_INTERPRET=1 on CPU tensors")
@pytest.mark.parametrize("case", [((1, 32, 2, 9, 10), 3, 20, 1, 1, True), ((1, 16, 1, 9, 8), 7, 70, 2, 1, False),
                                  ((1, 4, 1, 3, 37), 3, 4, 1, 1, True)],  # two pixel-tile columns of 32
                         ids=["k3", "k7s2-cr70", "wide-rows"])
def test_triton_gpu_configs(case):
    """Every GPU tile config of every launch (grad-span with one tile per program, so several partials), output
    poisoned before each run: the code paths a GPU takes run here first."""
    shape, k, cr, stride, dilation, bias = case
    *inputs, grad = make(*shape, k, cr, stride, dilation, bias, weight_4d=False)
    x, reduced, weight, span_bias = inputs
    p = dilation * (k - 1) // 2
    exact = reference(inputs, grad, k, stride, p, dilation)
    y, launch = triton_fused._plan_forward(x, reduced, weight, span_bias, k, stride, p, dilation, gpu=True)
    assert len(launch.configs) > 1
    for config in launch.configs:
        y.fill_(float("nan"))
        launch.run(config)
        assert_close(y, exact[0], what=f"forward {config}")
    with poisoned_allocations():
        launches, finish = triton_fused._plan_backward(grad, x, reduced, weight, span_bias, k, stride, p, dilation,
                                                       gpu=True, tiles_per_program=1)
    configs = {name: launch.configs for name, launch in launches.items()}
    for i in range(max(len(c) for c in configs.values())):
        for name, launch in launches.items():
            launch.out.fill_(float("nan"))
            launch.run(configs[name][i % len(configs[name])])
        results = finish()
        for name, got, ref in zip(NAMES[1:], results, exact[1:]):
            if ref is not None:
                assert_close(got, ref, what=f"{name}, configs #{i}")


# ---- the benchmark ------------------------------------------------------------------------------------------------

def test_benchmark_runs(tmp_path):
    """bench/fused_involution.py on the smallest layer at batch 1: both variants measured, outputs agree, the md
    labels the GPU rows predicted; the bytes model counts the kernel tensor's traffic for the unfused layer only."""
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import fused_involution as bench

    bench.main(["--out", str(tmp_path), "--batches", "1", "--layers", "stage4", "--min-time", "0.01",
                "--wait-quiet", "0"])
    rows = list(__import__("csv").DictReader(open(tmp_path / "fused_involution.csv")))
    assert [r["variant"] for r in rows] == ["unfused", "fused"]
    assert all(float(r["time_ms"]) > 0 and float(r["peak_mem_mb"]) > 0 for r in rows)
    assert float(rows[0]["rel_err"]) < 1e-5
    assert "(predicted)" in (tmp_path / "fused_involution.md").read_text()
    unfused, fused = (sum(bench.bytes_model(8, 64, 56, 1)[v]) for v in ("unfused", "fused"))
    kernel_mb, out_mb = 8 * 4 * 49 * 56 * 56 * 4 / 1e6, 8 * 64 * 56 * 56 * 4 / 1e6  # (B, G*K*K, Ho, Wo), (B, C, ..)
    # the kernel: written, read (forward), read (grad x); its gradient: written, read twice; and one more read of
    # grad_out (the unfused grad-x and grad-kernel passes each read it, the fused minimum once)
    assert unfused - fused == pytest.approx(6 * kernel_mb + out_mb)


def test_benchmark_pairs_its_timings(monkeypatch):
    """paired_times alternates which variant runs first in a round, and its speedup is the median of the rounds'
    ratios, not the ratio of the medians: on a clock where the rounds' (unfused, fused) seconds are (3, 2), (3, 2),
    (6, 2), (6, 2), (9, 6), the speedup is 1.5 (the ratio of the medians would be 6 / 2 = 3)."""
    import sys
    from pathlib import Path
    root = str(Path(__file__).resolve().parents[1])
    if root not in sys.path:
        sys.path.insert(0, root)
    from bench import fused_involution as bench

    seconds = {"u": [1, 3, 3, 6, 6, 9], "f": [1, 2, 2, 2, 2, 6]}  # the first of each: the warm-up call
    now, order = [0.0], []

    def call(name):
        def run():
            order.append(name)
            now[0] += seconds[name][order.count(name) - 1]
        return run

    monkeypatch.setattr(bench.time, "perf_counter", lambda: now[0])
    unfused, fused, rounds, speedup, _ = bench.paired_times([call("u")], [call("f")], min_time=0, min_rounds=5)
    assert rounds == 5
    assert order[2:] == ["u", "f", "f", "u", "u", "f", "f", "u", "u", "f"]  # after the two warm-up calls
    assert (unfused, fused, speedup) == (6, 2, 1.5)
