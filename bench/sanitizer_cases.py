"""Every kernel of the "cuda" backend once, on small random inputs, checked against float64 references, for

    compute-sanitizer --tool memcheck python bench/sanitizer_cases.py      # also: racecheck, synccheck, initcheck
    compute-sanitizer --tool racecheck python bench/sanitizer_cases.py --quick   # one case per op, fp32, NCHW

Covers fp32 / fp16 / bf16, NCHW and channels_last, stride 2 with odd sizes, dilation, rectangular and even kernels,
channel multipliers, involution groups wider than one channel chunk, and sizes that force the one-thread-per-output
fallback kernels (dilations whose tiles cannot fit in shared memory). Outputs are NaN-poisoned before each call.
Then, in the full run only, the fused involution (largeconv.involution2d_fused), whose only GPU kernels are Triton's
(kernels/involution_fused.py): one small case, fp32, NCHW, each autotuned kernel at its first tile config (no
autotuning under the tool; compiling its four kernels costs ~3 s of CPU, bench/gpu_check.sh); `--fused-by S`: only
if the run is less than S seconds old by then (bench/gpu_kit.py passes its limit less 8 s, so a slow run of the
cuda cases is not cut by it), else it prints "involution2d_fused: not run".
Exit status 1 on any mismatch, 2 when the extension or a GPU is missing.
"""
import contextlib
import math
import sys
import time
from pathlib import Path

START = time.monotonic()
import torch  # noqa: E402
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import largeconv.cuda as cuda_backend  # noqa: E402

TOLERANCE = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}  # relative L2 vs float64
TF32_TOLERANCE = 2e-3  # fp32 dwconv2d with TF32 allowed (PyTorch's default for convs: its tensor-core kernels)
LAYOUTS = {"nchw": torch.contiguous_format, "cl": torch.channels_last}

# (n, c, h, w, (kh, kw), stride, dilation, padding (top, bottom, left, right), multiplier)
DW_CASES = [
    (2, 3, 9, 11, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1),
    (2, 4, 13, 15, (7, 7), (2, 2), (1, 1), (3, 3, 3, 3), 1),
    (1, 4, 12, 13, (5, 5), (1, 1), (2, 2), (4, 4, 4, 4), 1),
    (1, 3, 20, 18, (13, 3), (1, 1), (1, 1), (6, 6, 1, 1), 1),
    (2, 2, 8, 9, (4, 4), (1, 1), (1, 1), (1, 2, 1, 2), 1),
    (1, 2, 20, 20, (31, 31), (1, 1), (1, 1), (15, 15, 15, 15), 1),
    (1, 2, 70, 75, (15, 15), (1, 1), (1, 1), (7, 7, 7, 7), 1),  # fp16/bf16: the tensor-core kernel's 2 x 2 tiles
    (2, 3, 10, 9, (3, 5), (2, 1), (1, 2), (1, 1, 4, 4), 2),
    (1, 2, 12, 12, (63, 63), (1, 1), (8, 8), (248, 248, 248, 248), 1),  # fallback kernels
]
# (b, c, h, w, k, groups, stride, padding, dilation)
INV_CASES = [
    (2, 32, 12, 11, 7, 2, 1, 3, 1),
    (2, 16, 13, 11, 3, 1, 2, 1, 1),
    (1, 8, 10, 10, 5, 2, 1, 4, 2),
    (1, 40, 8, 9, 3, 2, 1, 1, 1),  # 20 channels per group: two chunks in grad-weight
    (1, 4, 6, 6, 15, 1, 1, 112, 16),  # fallback kernels
]
# (b, c, h, w, k, groups, stride, reduced channels): odd sizes, stride 2 (grad-x phase classes), partial pixel tiles,
# 16 channels per group, Cr = 8 (one masked reduced-channel block)
FUSED_CASES = [(2, 32, 11, 9, 7, 2, 2, 8)]


def rel_error(got, want):
    got, want = got.double().cpu(), want.double().cpu()
    if torch.isnan(got).any():
        return math.inf
    return ((got - want).norm() / want.norm().clamp_min(1e-300)).item()


def poisoned_empty(original):
    def empty(*args, **kwargs):
        return original(*args, **kwargs).fill_(float("nan"))
    return empty


def dwconv_case(case, dtype, layout):
    n, c, h, w, (kh, kw), stride, dilation, padding, mult = case
    fmt = LAYOUTS[layout]
    x = torch.randn(n, c, h, w, device="cuda").to(dtype).contiguous(memory_format=fmt)
    weight = (torch.randn(c * mult, 1, kh, kw, device="cuda") / math.sqrt(kh * kw)).to(dtype)
    bias = torch.randn(c * mult, device="cuda").to(dtype)
    out = cuda_backend.dwconv2d_forward(x, weight, bias, stride, padding, dilation)
    grad = torch.randn(out.shape, device="cuda").to(dtype).contiguous(memory_format=fmt)
    grad_x = cuda_backend.dwconv2d_grad_input(grad, weight, x.shape, stride, padding, dilation)
    grad_w = cuda_backend.dwconv2d_grad_weight(grad, x, weight.shape, stride, padding, dilation)

    x64, w64 = (t.detach().cpu().double().requires_grad_() for t in (x, weight))
    top, bottom, left, right = padding
    ref = F.conv2d(F.pad(x64, (left, right, top, bottom)), w64, bias.cpu().double(), stride, 0, dilation, groups=c)
    ref_x, ref_w = torch.autograd.grad(ref, (x64, w64), grad.cpu().double())
    return {"forward": (out, ref), "grad_input": (grad_x, ref_x), "grad_weight": (grad_w, ref_w)}


def involution_case(case, dtype, layout):
    b, c, h, w, k, groups, s, p, d = case
    fmt = LAYOUTS[layout]
    ho, wo = ((size + 2 * p - d * (k - 1) - 1) // s + 1 for size in (h, w))
    x = torch.randn(b, c, h, w, device="cuda").to(dtype).contiguous(memory_format=fmt)
    weight = (torch.randn(b, groups * k * k, ho, wo, device="cuda") / k).to(dtype).contiguous(memory_format=fmt)
    out = cuda_backend.involution2d_forward(x, weight, k, s, p, d)
    grad = torch.randn(out.shape, device="cuda").to(dtype).contiguous(memory_format=fmt)
    grad_x = cuda_backend.involution2d_grad_input(grad, weight, x.shape, k, s, p, d)
    grad_w = cuda_backend.involution2d_grad_weight(grad, x, weight.shape, k, s, p, d)

    x64, w64 = (t.detach().cpu().double().requires_grad_() for t in (x, weight))
    cols = F.unfold(x64, k, d, p, s).view(b, groups, c // groups, k * k, ho, wo)
    ref = (cols * w64.view(b, groups, 1, k * k, ho, wo)).sum(3).view(b, c, ho, wo)
    ref_x, ref_w = torch.autograd.grad(ref, (x64, w64), grad.cpu().double())
    return {"forward": (out, ref), "grad_input": (grad_x, ref_x), "grad_weight": (grad_w, ref_w)}


@contextlib.contextmanager
def fused_kernel_settings():
    """While the Triton fused kernels run: torch.empty NaN-filled (they allocate their outputs and grad-span
    partials with it), and fp32 dots in IEEE fp32 (they use TF32 where cuDNN convs may, PyTorch's default)."""
    original, tf32 = torch.empty, torch.backends.cudnn.allow_tf32

    def empty(*args, **kwargs):
        t = original(*args, **kwargs)
        return t.fill_(float("nan")) if t.is_floating_point() else t.fill_(-1234567)
    torch.empty, torch.backends.cudnn.allow_tf32 = empty, False
    try:
        yield
    finally:
        torch.empty, torch.backends.cudnn.allow_tf32 = original, tf32


def fused_involution_case(case, dtype, layout, device="cuda"):
    """The Triton backend's involution2d_fused forward and backward (x, reduced, span weight, span bias) against
    the float64 unfused definition on CPU (F.conv2d 1x1, then unfold-multiply-sum). `device` "cpu" runs the same
    under TRITON_INTERPRET=1 (tests/test_gpu_kit.py)."""
    from largeconv import kernels as triton_backend
    from largeconv.kernels import involution_fused
    for tuner in involution_fused._AUTOTUNED.values():  # first config: no timing loop under the tool
        tuner.configs = tuner.configs[:1]
    b, c, h, w, k, groups, s, cr = case
    p = (k - 1) // 2
    fmt = LAYOUTS[layout]
    ho, wo = ((size + 2 * p - k) // s + 1 for size in (h, w))
    x = torch.randn(b, c, h, w, device=device).to(dtype).contiguous(memory_format=fmt)
    reduced = torch.randn(b, cr, ho, wo, device=device).to(dtype).contiguous(memory_format=fmt)
    span_weight = (torch.randn(groups * k * k, cr, device=device) / math.sqrt(cr)).to(dtype)
    span_bias = torch.randn(groups * k * k, device=device).to(dtype)
    grad = torch.randn(b, c, ho, wo, device=device).to(dtype).contiguous(memory_format=fmt)
    with fused_kernel_settings():
        out = triton_backend.involution2d_fused_forward(x, reduced, span_weight, span_bias, k, s, p, 1)
        grads = triton_backend.involution2d_fused_backward(grad, x, reduced, span_weight, span_bias, k, s, p, 1)

    inputs64 = [t.detach().cpu().double().requires_grad_() for t in (x, reduced, span_weight, span_bias)]
    x64, r64, w64, b64 = inputs64
    kernel = F.conv2d(r64, w64.view(groups * k * k, cr, 1, 1), b64)
    cols = F.unfold(x64, k, 1, p, s).view(b, groups, c // groups, k * k, ho, wo)
    ref = (cols * kernel.view(b, groups, 1, k * k, ho, wo)).sum(3).view(b, c, ho, wo)
    refs = torch.autograd.grad(ref, inputs64, grad.cpu().double())
    names = ("forward", "grad_input", "grad_reduced", "grad_span_weight", "grad_span_bias")
    return {name: pair for name, pair in zip(names, zip((out, *grads), (ref, *refs)))}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    quick = "--quick" in argv  # the slow tools (racecheck): one case per op
    fused_by = float(argv[argv.index("--fused-by") + 1]) if "--fused-by" in argv else math.inf
    if not torch.cuda.is_available():
        print("no CUDA device")
        return 2
    reason = cuda_backend.unsupported_reason("dwconv2d", torch.empty(1, 1, 1, 1, device="cuda"), (3, 3))
    if reason:
        print(reason)
        return 2
    cuda_backend._empty = poisoned_empty(cuda_backend._empty)
    torch.manual_seed(0)
    failures = runs = 0
    # (name, dtype, TF32 allowed, tolerance): fp32 is IEEE fp32 only with TF32 off (it is on by default for convs)
    modes = [(str(dtype)[6:], dtype, False, tol) for dtype, tol in TOLERANCE.items()]
    modes.append(("tf32", torch.float32, True, TF32_TOLERANCE))
    modes, layouts = (modes[:1], ["nchw"]) if quick else (modes, list(LAYOUTS))
    for name, dtype, tf32, tol in modes:
        torch.backends.cudnn.allow_tf32 = tf32
        for layout in layouts:
            for op, cases, run in (("dwconv2d", DW_CASES, dwconv_case), ("involution2d", INV_CASES, involution_case)):
                if tf32 and op != "dwconv2d":
                    continue  # only dwconv2d has TF32 kernels
                for case in cases[:1] if quick else cases:
                    results = run(case, dtype, layout)
                    torch.cuda.synchronize()
                    for direction, (got, want) in results.items():
                        runs += 1
                        err = rel_error(got, want)
                        if not err <= tol:
                            failures += 1
                            print(f"FAIL {op} {direction} {name} {layout} {case}: relative error {err:.3g}")
    torch.backends.cudnn.allow_tf32 = False
    for case in [] if quick else FUSED_CASES:  # after the cuda kernels, and only with time left for it
        if time.monotonic() - START > fused_by:
            print(f"involution2d_fused: not run, {time.monotonic() - START:.0f} s into the run (--fused-by "
                  f"{fused_by:g})")
            continue
        results = fused_involution_case(case, torch.float32, "nchw")
        torch.cuda.synchronize()
        for direction, (got, want) in results.items():
            runs += 1
            err = rel_error(got, want)
            if not err <= TOLERANCE[torch.float32]:
                failures += 1
                print(f"FAIL involution2d_fused (triton) {direction} fp32 nchw {case}: relative error {err:.3g}")
    print(f"{runs - failures}/{runs} kernel results match the float64 reference")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
