"""Shared numerics checks: compare against a float64 reference with the design's tolerances."""
import contextlib

import torch
import torch.nn.functional as F

FP32_RTOL = 1e-5
# Floors under the "2x the reference's own low-precision error" rule, so a lucky tiny reference error does not fail
# a correct kernel: about a tenth of each dtype's epsilon.
LOWP_FLOOR = {torch.float16: 1e-4, torch.bfloat16: 8e-4}


def rel_error(out, ref):
    ref = ref.double()
    denom = ref.norm().item()
    diff = (out.double() - ref).norm().item()
    return diff / denom if denom > 0 else diff


def assert_close(out, ref64, ref_lowp=None, what="output", magnitude=None):
    """out vs the float64 reference: fp32/fp64 by relative error, fp16/bf16 by 2x the same reference's error in
    that dtype (`ref_lowp`). NaN (an unwritten, poisoned element) always fails.

    `magnitude`: the same computation on the inputs' absolute values. A sum that nearly cancels cannot be
    computed to 1e-5 of its (small) result in fp32, only to 1e-5 of the summed magnitudes (the classic bound
    |fl(sum) - sum| <= n*eps*sum|terms|), so the fp32 bound is scaled by |magnitude| / |ref| (>= 1)."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != {tuple(ref64.shape)}"
    assert not torch.isnan(out).any(), f"{what}: NaN in output (unwritten element?)"
    err = rel_error(out, ref64)
    if out.dtype in LOWP_FLOOR:
        assert ref_lowp is not None, "low-precision checks need the reference computed in that dtype"
        bound = max(2 * rel_error(ref_lowp, ref64), LOWP_FLOOR[out.dtype])
    else:
        bound = FP32_RTOL if out.dtype == torch.float32 else 1e-10
        if magnitude is not None and ref64.norm() > 0:
            bound *= max(1.0, (magnitude.double().norm() / ref64.double().norm()).item())
    assert err <= bound, f"{what}: relative error {err:.3g} > {bound:.3g} ({out.dtype})"


def layout(t):
    """PyTorch's memory format of `t`: channels_last when it is channels_last-contiguous and not NCHW-contiguous,
    else NCHW (a tensor that is both, e.g. one channel or 1x1, counts as NCHW). Written here, not imported from
    largeconv.arguments, so that a bug there cannot move the tests' expectation along with the code."""
    channels_last = t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
    return torch.channels_last if channels_last else torch.contiguous_format


@contextlib.contextmanager
def poisoned_allocations():
    """Make torch.empty / empty_like / new_empty return NaN-filled (or sentinel-filled) tensors, so a kernel that
    leaves an output element unwritten fails the comparison instead of passing on leftover memory."""
    originals = (torch.empty, torch.empty_like, torch.Tensor.new_empty)

    def poison(t):
        return t.fill_(float("nan") if t.is_floating_point() else -1234567)

    def empty(*args, **kwargs):
        return poison(originals[0](*args, **kwargs))

    def empty_like(*args, **kwargs):
        return poison(originals[1](*args, **kwargs))

    def new_empty(self, *args, **kwargs):
        return poison(originals[2](self, *args, **kwargs))

    torch.empty, torch.empty_like, torch.Tensor.new_empty = empty, empty_like, new_empty
    try:
        yield
    finally:
        torch.empty, torch.empty_like, torch.Tensor.new_empty = originals


def randomize_bn(model):
    """Start every BN from non-trivial statistics and affine parameters (training then moves them further), so
    fusions are tested on BN that does something."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:  # RMNet's running BNs have no weight or bias
                    m.weight.normal_(1, 0.3)
                    m.bias.normal_(0, 0.3)
                m.momentum = 0.3


def involution_unfold(x, weight, kernel_size, stride=1, padding=None, dilation=1):
    """Involution from its definition in the design, independent of largeconv: F.unfold(x, K, d, p, s) as
    (B, G, C/G, K*K, Ho, Wo) times weight as (B, G, 1, K*K, Ho, Wo), summed over the K*K taps; padding None is
    d*(K-1)//2. Differentiable, so autograd through it (in float64) gives the reference gradients."""
    if padding is None:
        padding = dilation * (kernel_size - 1) // 2
    batch, channels = x.shape[:2]
    taps = kernel_size * kernel_size
    groups = weight.shape[1] // taps
    out_hw = weight.shape[2:]
    cols = F.unfold(x, kernel_size, dilation, padding, stride)
    cols = cols.reshape(batch, groups, channels // groups, taps, *out_hw)
    return (cols * weight.reshape(batch, groups, 1, taps, *out_hw)).sum(3).reshape(batch, channels, *out_hw)


# ---- NaN / Inf: where each element may come out non-finite ---------------------------------------------------------

def value_class(t):
    """0 finite, 1 NaN, 2 +Inf, 3 -Inf, elementwise."""
    return torch.where(t.isnan(), 1, torch.where(t == float("inf"), 2, torch.where(t == -float("inf"), 3, 0)))


def reference_skipping_padding(x, weight, bias, stride, padding, dilation, grad_out):
    """Output and gradients (float64) of the convolution in which a tap over padding adds nothing, rather than
    the padding's zero times the tap (0 * Inf = NaN): PyTorch's CUDA depthwise kernels compute it so."""
    (n, c, _, _), (co, _, kh, kw) = x.shape, weight.shape
    x = x.detach().double().requires_grad_()
    weight = weight.detach().double().requires_grad_()
    cols = F.unfold(x, (kh, kw), dilation, padding, stride).view(n, c, 1, kh * kw, -1)
    inside = F.unfold(torch.ones_like(x[:1, :1]), (kh, kw), dilation, padding, stride).view(1, 1, 1, kh * kw, -1)
    out = torch.where(inside > 0, cols * weight.view(1, c, co // c, kh * kw, 1), 0.0).sum(3)
    out = out.reshape(grad_out.shape) + (0 if bias is None else bias.double().view(-1, 1, 1))
    return (out.detach(), *torch.autograd.grad(out, (x, weight), grad_out.double()))


def nonfinite_references(x, weight, bias, stride, padding, dilation, grad_out):
    """(output, grad input, grad weight) as F.conv2d has them in each of its three ways with a NaN/Inf where a
    filter tap (or grad_out, for grad-weight) meets padding: on CPU float64 multiplies the padding's zeros (NaN),
    fp32 does so in some directions, PyTorch's CUDA kernels skip the padded tap. Elsewhere the three agree."""
    top, bottom, left, right = padding
    assert (top, left) == (bottom, right), "F.conv2d pads symmetrically"
    refs = [reference_skipping_padding(x, weight, bias, stride, (top, left), dilation, grad_out)]
    for dtype in (torch.float64, x.dtype):
        x_, w_ = x.detach().to(dtype).requires_grad_(), weight.detach().to(dtype).requires_grad_()
        ref = F.conv2d(x_, w_, None if bias is None else bias.to(dtype), stride, (top, left), dilation,
                       groups=x.shape[1])
        refs.append((ref.detach(), *torch.autograd.grad(ref, (x_, w_), grad_out.to(dtype))))
    return list(zip(*refs))


def assert_nonfinite_like(got, refs, name):
    """Every element NaN, +Inf, -Inf or finite as in one of F.conv2d's ways (`refs`); the finite ones within the
    usual bounds."""
    got_class = value_class(got)
    wrong = torch.stack([got_class != value_class(r) for r in refs]).all(0)
    assert not wrong.any(), (f"{name}: {int(wrong.sum())} of {got.numel()} elements NaN/Inf/finite unlike F.conv2d "
                             f"(NaN {int(got.isnan().sum())} vs {int(refs[0].isnan().sum())}, Inf "
                             f"{int(got.isinf().sum())} vs {int(refs[0].isinf().sum())})")
    finite = (got_class == 0) & (value_class(refs[0]) == 0)
    if finite.any():
        assert_close(got[finite], refs[0][finite], what=f"{name} (finite elements)")
