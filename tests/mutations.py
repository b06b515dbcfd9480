"""Mutation testing: do the tests catch what a tired engineer would break?

Each mutation is one realistic slip (a swapped argument, an off-by-one, a dropped line) in the package's CPU-runnable
code. The script applies them one at a time to a TEMPORARY COPY of the repository (never to this checkout), runs the
tests named for that mutation there, and reports it "killed" (some test failed) or "survived" (all passed: a gap in
the tests), then a score line. A mutation whose original text is not found (the code moved on) is "not
applicable" and not counted: update its text. Add a mutation for every bug found, so it stays caught.

    .venv/bin/python tests/mutations.py                # all mutations (slow: minutes each on 2 cores)
    .venv/bin/python tests/mutations.py --only cpu-    # those whose name or file contains "cpu-"
    .venv/bin/python tests/mutations.py --list         # names, files and tests only
    .venv/bin/python tests/mutations.py --head         # test the committed HEAD instead of the working tree

Not collected by pytest (not test_*.py) and not run by CI.
"""
from __future__ import annotations

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Mutation:
    name: str
    file: str        # relative to the repository root
    original: str    # must occur exactly once in the file
    mutated: str
    tests: tuple     # pytest arguments (paths, node ids, -k expressions)
    why: str = ""


M = Mutation
DW, INV, API = "tests/test_dwconv.py", "tests/test_involution.py", "tests/test_api.py"
# the csrc/ kernels under the CPU emulator, one group each
EMU_DW = ("tests/test_cuda_build.py", "-k", "emulation and dwconv2d")
EMU_INV = ("tests/test_cuda_build.py", "-k", "emulation and involution2d")
MUTATIONS = [
    # ---- the four survivors of issue #17 ----
    M("cpu-fft-grid-min", "largeconv/cpu.py", "n + max(lo, hi)", "n + min(lo, hi)",
      (DW, "-k", "even_large_kernels or large_kernels"), "FFT grid one pixel short for even 'same' kernels"),
    M("ops-dwconv-grad-x-layout", "largeconv/ops.py",
      "_dwconv2d_grad_weight_impl, grad)\n    if ctx.needs_input_grad[0]:\n"
      "        grad_x = grad_input(grad, weight, list(x.shape), *ctx.params)\n"
      "        grad_x = grad_x.contiguous(memory_format=memory_format_of(x))",
      "_dwconv2d_grad_weight_impl, grad)\n    if ctx.needs_input_grad[0]:\n"
      "        grad_x = grad_input(grad, weight, list(x.shape), *ctx.params)",
      (DW, "-k", "edge_cases_fp32 and 2x3x5x5_k5"), "1x1 output: grad x of a channels_last x comes back NCHW"),
    M("args-default-padding", "largeconv/arguments.py", "d * (k - 1) // 2 for k, d", "(k - 1) // 2 * d for k, d",
      (API, "-k", "padding"), "LargeDWConv2d(C, 4, dilation=2) shrinks the map"),
    M("dispatch-auto-key-layout", "largeconv/dispatch.py", "dtype, is_channels_last(x),",
      "dtype,", (API, "-k", "auto"), "channels_last reuses the NCHW timing"),
    # ---- cpu.py ----
    M("cpu-asym-pad-order", "largeconv/cpu.py", "F.pad(xc, (left, right, top, bottom))",
      "F.pad(xc, (left, right, bottom, top))", (DW, "-k", "edge_cases_fp32 and cpu")),
    M("cpu-fft-kernel-roll", "largeconv/cpu.py", "shifts=(-padding[0], -padding[2])",
      "shifts=(-padding[0], -padding[3])", (DW, "-k", "even_large_kernels or fft_paths")),
    M("cpu-fft-grad-weight-roll", "largeconv/cpu.py", "shifts=(top, left), dims=(1, 2)",
      "shifts=(left, top), dims=(1, 2)", (DW, "-k", "large_kernels or fft_paths")),
    M("cpu-fft-stride-w", "largeconv/cpu.py", ":(out_hw[1] - 1) * stride[1] + 1:stride[1]]",
      ":(out_hw[1] - 1) * stride[1] + 1:stride[0]]", (DW, "-k", "fft_paths")),
    M("cpu-multiplier-repeat", "largeconv/cpu.py", "xp = xp.repeat_interleave(multiplier, dim=1)",
      "xp = xp.repeat(1, multiplier, 1, 1)", (DW, "-k", "edge_cases_fp32 and cpu")),
    M("cpu-bias-dropped", "largeconv/cpu.py", "b = None if bias is None else bias.to(xc.dtype)", "b = None",
      (DW, "-k", "autocast"), "caught by the autocast test's values (it used to check the dtype only)"),
    M("cpu-grad-input-extra", "largeconv/cpu.py", "extra.append(max(0, size - produced))",
      "extra.append(max(0, size - produced - 1))", (DW, "-k", "edge_cases_fp32 and cpu")),
    M("cpu-fp64-compute", "largeconv/cpu.py", "return torch.float64 if dtype == torch.float64 else torch.float32",
      "return torch.float32", (DW, "-k", "gradcheck and cpu")),
    M("cpu-involution-tap-step", "largeconv/cpu.py", "step = dilation // math.gcd(dilation, stride)",
      "step = dilation", (INV, "-k", "edge_cases_fp32 and cpu"),
      "one phase's taps sit d / gcd(d, s) apart: caught by the stride-2, dilation-4 edge case"),
    M("cpu-involution-block-groups", "largeconv/cpu.py", "yield slice(b, b + 1), slice(g, g + step)",
      "yield slice(b, b + 1), slice(g, g + 1)", (INV, "-k", "cpu_blocking")),
    # ---- reference.py (the "torch" backend; tests now compare it with F.conv2d / F.unfold themselves) ----
    M("ref-symmetric-padding", "largeconv/reference.py", "(top, left) if (top, left) == (bottom, right) else None",
      "(top, left)", (DW, "-k", "edge_cases_fp32 and torch")),
    M("ref-grad-input-crop", "largeconv/reference.py", "grad_padded[:, :, top:top + height, left:left + width]",
      "grad_padded[:, :, top:top + height, top:top + width]", (DW, "-k", "edge_cases_fp32 and torch")),
    M("ref-unfold-arg-order", "largeconv/reference.py", "F.unfold(x, kernel_size, dilation, padding, stride)",
      "F.unfold(x, kernel_size, padding, dilation, stride)", (INV, "-k", "edge_cases_fp32 and torch")),
    M("ref-fold-arg-order", "largeconv/reference.py", "input_shape[2:]), kernel_size, dilation, padding, stride)",
      "input_shape[2:]), kernel_size, padding, dilation, stride)", (INV, "-k", "edge_cases_fp32 and torch")),
    # ---- arguments.py ----
    M("args-same-odd-pixel", "largeconv/arguments.py", "pads += [total // 2, total - total // 2]",
      "pads += [total - total // 2, total // 2]", (DW, "-k", "edge_cases_fp32 and torch")),
    M("args-output-size-dilation", "largeconv/arguments.py", "size + padding_total - dilation * (kernel - 1) - 1",
      "size + padding_total - (kernel - 1) - 1", (API, "-k", "bad_input"),
      "a dilated kernel larger than the input gets F.conv2d's error, not the named one"),
    M("args-negative-padding-w", "largeconv/arguments.py", "if min(ph, pw) < 0:", "if ph < 0:",
      (API, "-k", "bad_input")),
    M("args-involution-default-padding", "largeconv/arguments.py", "padding = dilation * (kernel_size - 1) // 2",
      "padding = (kernel_size - 1) // 2", (INV, "-k", "edge_cases_fp32 and torch")),
    M("args-channels-last-test", "largeconv/arguments.py",
      "return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)",
      "return x.is_contiguous(memory_format=torch.channels_last)", (DW, INV, "-k", "edge_cases_fp32 and torch"),
      "a one-channel NCHW input counts as channels_last: NCHW in, channels_last out"),
    # ---- ops.py ----
    M("ops-grad-weight-flag", "largeconv/ops.py",
      "if ctx.needs_input_grad[1]:\n        grad_w = _weight_layout(grad_weight(",
      "if ctx.needs_input_grad[0]:\n        grad_w = _weight_layout(grad_weight(",
      (DW, "-k", "autocast")),
    M("ops-dwconv-empty-grad-weight", "largeconv/ops.py", "return x.new_zeros(weight_shape)",
      "return x.new_empty(weight_shape)", (DW, "-k", "empty_batch")),
    M("ops-involution-empty-grad-weight", "largeconv/ops.py", "return _empty(weight_shape, x, layout).zero_()",
      "return _empty(weight_shape, x, layout)", (INV, "-k", "empty")),
    M("ops-autocast-cpu", "largeconv/ops.py", 'if device not in ("cuda", "cpu") or',
      'if device != "cuda" or', (DW, "-k", "autocast")),
    # ---- modules.py (the compile tests now compare with F.conv2d / unfold, not with eager runs of the same code) ----
    M("modules-bias-dropped", "largeconv/modules.py",
      "return dwconv2d(x, weight, bias, self.stride,", "return dwconv2d(x, weight, None, self.stride,",
      (DW, "-k", "compile")),
    M("modules-involution-pool-floor", "largeconv/modules.py",
      "pad = (0, out_w * stride - width, 0, out_h * stride - height)", "pad = (0, 0, 0, 0)",
      (API, "-k", "involution")),
    # ---- dispatch.py ----
    M("dispatch-slowest", "largeconv/dispatch.py", "winner = min(timings, key=timings.get)",
      "winner = max(timings, key=timings.get)", (API, "-k", "auto")),
    M("dispatch-context-first", "largeconv/dispatch.py", "for choice in (*choices, stack[-1] if stack else None):",
      "for choice in (stack[-1] if stack else None, *choices):", (API, "-k", "precedence or actually_used")),
    # ---- kernels (Triton, under the interpreter) ----
    M("triton-dw-nhwc-grad-input-dilation", "kernels/dwconv.py", "u = w + left - kw * dw",
      "u = w + left - kw * dh", (DW, "-k", "edge_cases_fp32 and triton and nhwc")),
    M("triton-dw-grad-weight-splits", "kernels/dwconv.py", "gw = part.sum(0)\n", "gw = part[0]\n",
      ("tests/test_dwconv_triton.py", "-k", "split_reduction")),
    # ---- kernels/dwconv1d.py: the banded (Toeplitz) path ----
    M("triton-dw1d-band-shift", "kernels/dwconv1d.py", "    tap = t - w - shift  # = k*d", "    tap = t - w  # = k*d",
      ("tests/test_dwconv1d.py", "-k", "float64 and triton"), "the band ignores the aligned window's head start"),
    M("triton-dw1d-grad-input-flip", "kernels/dwconv1d.py",
      "dilation * (K - 1) - padding[0], dilation, True,", "dilation * (K - 1) - padding[0], dilation, False,",
      ("tests/test_dwconv1d.py", "-k", "float64 and triton"), "grad-input correlates with the unflipped filter"),
    M("triton-dw1d-diagonal-shift", "kernels/dwconv1d.py", "src = col + wcol[:, None] + shift",
      "src = col + wcol[:, None]", ("tests/test_dwconv1d.py", "-k", "float64 and triton"),
      "grad-weight reads the Gram matrix's diagonals one window shift off"),
    M("triton-dw1d-splits-dropped", "kernels/dwconv1d.py", "    for s in range(1, SPLITS):",
      "    for s in range(1, 1):", ("tests/test_triton_gpu_configs.py", "-k", "dwconv1d"),
      "grad-weight keeps the first split of the rows only"),
    M("triton-dw1d-no-redo", "kernels/dwconv1d.py", "        if _has_non_finite(acc):\n            acc = _taps_direct(",
      "        if False:\n            acc = _taps_direct(", ("tests/test_dwconv1d.py", "-k", "non_finite and triton"),
      "a NaN/Inf input spreads over its whole tile through the band's zeros"),
    M("triton-involution-tap-dilation", "kernels/involution.py",
      "other=0.0).to(ACC)\n            tap = tl.cast(kh * DIL, IDX) * sxh + tl.cast(kw * DIL, IDX) * sxw",
      "other=0.0).to(ACC)\n            tap = tl.cast(kh * DIL, IDX) * sxh + tl.cast(kw, IDX) * sxw",
      (INV, "-k", "edge_cases_fp32 and triton")),
    # ---- reparam.py ----
    # reparam-bn-eps and reparam-dirac-dilation survived until test_reparam got a BN with eps 0.1 and a dilated
    # RMNet block (2026-11-27)
    M("reparam-bn-eps", "largeconv/reparam.py", "torch.sqrt(bn.running_var.to(w.dtype) + bn.eps)",
      "torch.sqrt(bn.running_var.to(w.dtype))", ("tests/test_reparam.py", "-k", "fuse_conv_bn")),
    M("reparam-pad-kernel-axes", "largeconv/reparam.py", "F.pad(kernel, (dw // 2, dw // 2, dh // 2, dh // 2))",
      "F.pad(kernel, (dh // 2, dh // 2, dw // 2, dw // 2))", ("tests/test_reparam.py", "-k", "pad_kernel")),
    M("reparam-dirac-dilation", "largeconv/reparam.py", "taps.append(p // d)", "taps.append(p)",
      ("tests/test_reparam.py", "-k", "rm_convert")),
    # ---- cpu.py FFT numerics (issue 13, items 1 and 4) ----
    M("cpu-fft-conj-lazy", "largeconv/cpu.py", "_kernel_spectrum(weight, size, padding, dilation, dtype).conj_physical_()",
      "_kernel_spectrum(weight, size, padding, dilation, dtype).conj()",
      ("tests/test_cpu_fft_numerics.py", "-k", "compile_inductor_dwconv"), "inductor's first call wrong (#13.1)"),
    M("cpu-fft-grad-weight-conj-lazy", "largeconv/cpu.py", "g_spectrum.conj_physical_()", "g_spectrum.conj()",
      ("tests/test_cpu_fft_numerics.py", "-k", "compile_inductor_dwconv"), "inductor's first call wrong (#13.1)"),
    M("cpu-fft-guard-off", "largeconv/cpu.py", "FFT_MAX_RANGE = 16", "FFT_MAX_RANGE = 1e12",
      ("tests/test_cpu_fft_numerics.py", "-k", "1e4 or 1e6"), "outliers spoil the whole plane (#13.4)"),
    M("cpu-fft-nan-tier", "largeconv/cpu.py", "| ~torch.isfinite(mean)] = EXACT", "] = EXACT",
      ("tests/test_cpu_fft_numerics.py", "-k", "nan"), "one NaN makes the whole plane NaN (#13.4)"),
    M("cpu-fft-weight-nonfinite", "largeconv/cpu.py", "tiers.fill_(EXACT)", "pass",
      ("tests/test_cpu_fft_numerics.py", "-k", "weight")),
    M("cpu-fft-grad-weight-nonfinite", "largeconv/cpu.py", "    if len(bad):", "    if False:",
      ("tests/test_cpu_fft_numerics.py", "-k", "nan or inf")),
    # ---- ops.py / dispatch.py: derivatives and auto (issue 13) ----
    M("ops-no-composite-under-jvp", "largeconv/ops.py",
      "return forward_ad._current_level >= 0 or torch._C._are_functorch_transforms_active()", "return False",
      ("tests/test_derivatives.py", "-k", "jvp and torch"), "forward AD gives zero tangents"),
    M("ops-grad-input-double-backward", "largeconv/ops.py",
      "d_grad_out = forward(grad_grad_x, weight, ctx.params)",
      "d_grad_out = forward(grad_grad_x, weight.flip(-1), ctx.params)",
      ("tests/test_derivatives.py", "-k", "double_backward and torch")),
    M("ops-weight-grad-layout", "largeconv/ops.py", "if grad_w.stride() == weight.stride():", "if True:",
      ("tests/test_derivatives.py", "-k", "layout"), "DDP grad-stride warning"),
    M("dispatch-known-losers-timed", "largeconv/dispatch.py",
      "    if is_channels_last(x):\n        return False\n    if not _AVX512:",
      "    if True:\n        return False\n    if not _AVX512:",
      ("tests/test_auto.py",), "auto's first call times PyTorch's slow NCHW conv"),
    M("dispatch-table-ignored", "largeconv/dispatch.py",
      'return mode == "table" or torch.are_deterministic_algorithms_enabled()', "return False",
      ("tests/test_auto.py",), "auto not reproducible under deterministic mode"),
    M("dispatch-settle-by-estimate", "largeconv/dispatch.py",
      "torch_s, custom_s = _whole_call_times(keys, whole_call)", "torch_s, custom_s = math.inf, chosen_s",
      ("tests/test_auto.py", "-k", "settle"), "mixed choices kept on the per-direction times (H200: 0.46x)"),
    M("dispatch-settle-hooks-in-force", "largeconv/dispatch.py", "with _saved_tensor_hooks_suspended():",
      "with contextlib.nullcontext():", ("tests/test_auto.py", "-k", "settle"),
      "settle's timing inside torch.utils.checkpoint: CheckpointError (saved tensors counted)"),
    M("ops-settle-whole-call-no-backward", "largeconv/ops.py", "    if needing:\n", "    if False:\n",
      ("tests/test_auto.py", "-k", "settle"), "settle times forwards only"),
    # ---- csrc/ (run by the CPU emulator: tests/test_cuda_build.py) ----
    M("cuda-mma-band-shift", "csrc/dwconv.cuh", "bf[q][odd][0] = load_pair(f0 + 16 * q - 8 * odd);",
      "bf[q][odd][0] = load_pair(f0 + 16 * q - 6 * odd);", EMU_DW,
      "tensor-core kernels: odd n-tiles' Toeplitz fragments two taps off"),
    M("cuda-mma-no-redo", "csrc/dwconv.cuh", "if (*non_finite) {  // the direct sums over the real taps, for this",
      "if (false) {  // the direct sums over the real taps, for this",
      EMU_DW,
      "tensor-core correlation: band zeros times an Inf input left as NaN"),
    M("cuda-mma-wgrad-no-redo", "csrc/dwconv.cuh", "if (*non_finite) {  // the direct sums over the real taps, a tap",
      "if (false) {  // the direct sums over the real taps, a tap",
      EMU_DW,
      "tensor-core grad-weight: band zeros times an Inf input left as NaN"),
    M("cuda-mma-band-upper", "csrc/dwconv.cuh", "bf[q][odd][1] = load_pair(f0 + 16 * q - 8 * odd + 8);",
      "bf[q][odd][1] = load_pair(f0 + 16 * q - 8 * odd + 6);",
      EMU_DW,
      "tensor-core kernels: the upper half of each Toeplitz fragment two taps off"),
    M("cuda-mma-chunk-pair", "csrc/dwconv.cuh", "b[2] = {band[c], band[c + 1]};", "b[2] = {band[c], band[c]};",
      EMU_DW, "tensor-core correlation: a chunk pair's second B register the first's"),
    M("cuda-mma-no-lone-chunk", "csrc/dwconv.cuh", "} else if ((m % 2 == 1 ? c == 0 : c == kCh - 1) && real(m)) {",
      "} else if (false) {", EMU_DW,
      "tensor-core correlation: the lone chunks (an odd n-tile's first, an even one's last: m16n8k8) dropped"),
    M("cuda-wgrad-chain-roles-kept", "csrc/dwconv.cuh", "products(acc[0], ay), products(acc[1], ax);",
      "products(acc[0], ax), products(acc[1], ay);", EMU_DW,
      "tensor-core grad-weight: a chain's second step kept the first step's m-tile roles (m-tile 0 is the array "
      "loaded last step)"),
    M("cuda-wgrad-chain-stride", "csrc/dwconv.cuh",
      "for (int first = warp; first < imin(16, t.th); first += kMmaWarps)",
      "for (int first = warp; first < imin(8, t.th); first += kMmaWarps)", EMU_DW,
      "tensor-core grad-weight: chains started on 8 rows only (g rows 8-15 of every 16 never summed)"),
    M("cuda-mma-edges-lead-kept", "csrc/dwconv.cuh",
      "const int64_t lead = p.off_w + t.lead >= 8 * pad ? t.lead : 8 * pad - p.off_w;",
      "const int64_t lead = t.lead;", EMU_DW,
      "tensor-core correlation edges: the tile not started at a chunk boundary, so a left chunk left out as "
      "padding holds input columns"),
    M("cuda-mma-edges-right-unchecked", "csrc/dwconv.cuh",
      "band_chunks(static_cast<int>(p.kw + lead)) == ch && right >= p.in_w) {",
      "band_chunks(static_cast<int>(p.kw + lead)) == ch) {", EMU_DW,
      "tensor-core correlation edges: the last chunks left out without checking they start past the input"),
    M("cuda-mma-edges-second-chunk-dropped", "csrc/dwconv.cuh", "} else if (real(m + 1)) {", "} else if (false) {",
      EMU_DW, "tensor-core correlation edges: a pair whose first chunk is padding dropped with it (its second "
      "chunk's m16n8k8)"),
    M("cuda-mma-always-chained", "csrc/dwconv.cuh", "warp_kernel_rows(p, blk, warp), x1 == x0 + 8};",
      "warp_kernel_rows(p, blk, warp), true};", EMU_DW,
      "tensor-core correlation: a packed warp's halves in two planes taken as 8 rows apart"),
    M("cuda-mma-lead-ignored", "csrc/dwconv.cuh", "const int b = c - 16 - t.lead;", "const int b = c - 16;",
      EMU_DW, "tensor-core correlation: the tile started a column early (cp.async from an even column), the filter "
      "not shifted with it"),
    M("cuda-mma-filter-rows-swapped", "csrc/dwconv.cuh",
      "const T v0 = src[0], v1 = src[src_step], v2 = src[2 * src_step], v3 = src[3 * src_step];",
      "const T v0 = src[0], v1 = src[2 * src_step], v2 = src[src_step], v3 = src[3 * src_step];", EMU_DW,
      "tensor-core correlation: two of the four filter rows staged together swapped"),
    M("cuda-mma-filter-padding-kept", "csrc/dwconv.cuh", "if (!real) v = from_float<T>(0.f);", "(void)real;",
      EMU_DW, "tensor-core correlation: the filter's padding columns hold real taps instead of zeros"),
    M("cuda-ldmatrix-halves-swapped", "csrc/dwconv.cuh", "return (lane / 8 % 2 ? r1 : r0) + lane % 8;",
      "return (lane / 8 % 2 ? r0 : r1) + lane % 8;", EMU_DW,
      "ldmatrix A fragments (TF32 correlation, grad-weights): the two 8-row halves swapped"),
    M("cuda-ldmatrix-column-half", "csrc/dwconv.cuh", "return 16 / sizeof(T) * (lane / 16);",
      "return 16 / sizeof(T) * (lane / 8 % 2);", EMU_DW,
      "ldmatrix A fragments: a k-block's second 16 bytes given by the wrong lanes"),
    M("cuda-tf32-four-tiles-for-five", "csrc/dwconv.cuh", "if (t.nts <= 4) {", "if (t.nts <= 5) {", EMU_DW,
      "TF32 correlation: the four-n-tile row loop taken for five n-tiles"),
    M("cuda-tf32-band-upper", "csrc/dwconv.cuh", "bf[part][q][1] = float_bits(f0[part * part_elems + 8 * q + 4]);",
      "bf[part][q][1] = float_bits(f0[part * part_elems + 8 * q + 3]);",
      EMU_DW,
      "TF32 correlation: the upper half of each Toeplitz fragment one tap off"),
    M("cuda-tf32-no-small-terms", "csrc/dwconv.cuh", "tf32_row_products<kKB, 2>(row, af, bf, nts);",
      "tf32_row_products<kKB, 1>(row, af, bf, nts);", EMU_DW,
      "exact fp32 on tensor cores as one TF32 product (3xTF32's lo terms dropped): 1e-3 errors"),
    M("cuda-tf32-one-chain", "csrc/dwconv.cuh",
      "tf32_row_products<kKB, 2>(row, af, bf, nts);\n    tf32_row_products<kKB, 1>(row, af_lo, bf, nts);",
      "tf32_row_products<kKB, 2>(acc, af, bf, nts);\n    tf32_row_products<kKB, 1>(acc, af_lo, bf, nts);", EMU_DW,
      "3xTF32 with every row's mma chained into one accumulator: rounded toward zero a step at a time, 63x63 sums "
      "drift past fp32's 1e-5 (H200 run 1)"),
    M("cuda-tf32-no-redo", "csrc/dwconv.cuh", "if (*non_finite) {  // the direct sums over the taps inside the input",
      "if (false) {  // the direct sums over the taps inside the input",
      EMU_DW,
      "TF32 correlation: band zeros times an Inf input left as NaN"),
    M("cuda-mma-rows-short", "csrc/dwconv.cuh", "end = p.in_h + p.off_h - lo;", "end = p.in_h + p.off_h - lo - 1;",
      EMU_DW,
      "tensor-core correlations: a warp's last kernel row that meets the input skipped as padding"),
    M("cuda-stage-zero-fill", "csrc/common.cuh", "cp_async<4>(d + c, from + (ok ? gc : 0), ok);",
      "cp_async<4>(d + c, from + (ok ? gc : 0), true);",
      EMU_DW,
      "fp32 staging (the FMA correlations): the padding outside the input copied from the input's first element"),
    M("cuda-inv-stage-zero-fill", "csrc/involution.cuh", "cp_async<sizeof(T) * kVec>(dst + to, planes + from, ok);",
      "cp_async<sizeof(T) * kVec>(dst + to, planes + from, true);", EMU_INV,
      "involution staging by cp.async: the padding outside the input copied from the planes' first values"),
    M("cuda-inv-stage-lead", "csrc/involution.cuh", "return dst + lead;", "return dst;", EMU_INV,
      "involution staging from the copies' aligned column: the tile read that many columns off"),
    M("cuda-inv-stage-vec-width", "csrc/involution.cuh", "width % (2 * vec) == 0 &&", "", EMU_INV,
      "involution staging copies wider than the rows allow: a copy across two rows"),
    M("cuda-inv-stage-batch-tail", "csrc/involution.cuh",
      "if (zz + i * groups < nplanes) dst[to + i * dst_step] = vals[i];", "dst[to + i * dst_step] = vals[i];",
      EMU_INV, "involution staging of single 16-bit values: a batch's planes past the chunk's stored too"),
    M("cuda-inv-strided-taps", "csrc/involution.cuh", "kw0[r] = (static_cast<int>(w0) + r + p.p) % s;",
      "kw0[r] = (static_cast<int>(w0) + r + p.p + 1) % s;",
      EMU_INV,
      "strided RedNet grad-input: each pixel walks the taps of the wrong phase"),
    M("cuda-inv-pair-top", "csrc/involution.cuh", "return kPOdd && r == 0 ? 2 : 3; };",
      "return kPOdd && r == 1 ? 2 : 3; };", EMU_INV,
      "strided RedNet grad-input by pixel pairs: odd padding's pixels read each other's window values"),
    M("cuda-inv-window-parity", "csrc/involution.cuh",
      "return (staged - reinterpret_cast<const T*>(dynamic_smem())) % 2 != 0; }", "return false; }", EMU_INV,
      "involution windows read by pairs from an odd column (fp32: 8-byte loads; 16-bit: 32-bit words)"),
    M("cuda-inv-window16-lead", "csrc/involution.cuh", "const int e = 2 * q - lead;  // the value in the low half",
      "const int e = 2 * q;  // the value in the low half", EMU_INV,
      "16-bit involution windows that start odd: every value taken one column early"),
    M("cuda-inv-window-prefetch", "csrc/involution.cuh", "next[u][r] = w[r][(nk * K + u) * wstep];",
      "next[u][r] = w[r][(kh * K + u) * wstep];", EMU_INV,
      "involution forward: the weights prefetched for the next kernel row are this row's"),
    M("cuda-inv-window-wgrad-taps", "csrc/involution.cuh", "out[r][(kh * K + kw) * wstep] = from_float<T>(a[kw][r]);",
      "out[r][(kw * K + kh) * wstep] = from_float<T>(a[kw][r]);", EMU_INV,
      "involution grad-weight by windows: a kernel row's sums stored as a kernel column's"),
    M("cuda-inv-window-odd-strides", "csrc/involution.cuh", "align = imax(vec, 2);", "align = vec;",
      EMU_INV, "involution tiles of odd row strides: windows of alternate rows start at the other parity"),
    M("cuda-inv-strided-tap-past-kernel", "csrc/involution.cuh",
      "const bool on_kernel = kw0[r] + m * s < K;", "const bool on_kernel = true;", EMU_INV,
      "strided RedNet grad-input: a tap past the kernel multiplies its zero weight by a staged Inf (NaN)"),
    M("cuda-inv-strided-other-phase", "csrc/involution.cuh",
      "            if (ok[r]) acc[c][r] = fmaf(wv[r], to_float(gr[c * t.ps + col[r]]), acc[c][r]);",
      "            acc[c][r] = fmaf(wv[r], to_float(gr[c * t.ps + col[r]]), acc[c][r]);", EMU_INV,
      "strided grad-input: the other phase's taps multiply zero weights by a staged Inf (NaN)"),
    M("cuda-stage-vec-aligned", "csrc/involution.cuh",
      " &&\n         reinterpret_cast<uintptr_t>(src) % (2 * vec * elem_bytes) == 0)", ")", EMU_INV,
      "involution staging by copies of several values on a tensor that starts off their alignment"),
    M("cuda-inv-band-wait-late", "csrc/involution.cuh", "if (nt > 0) cp_async_commit();",
      "if (nt > 1) cp_async_commit();", EMU_INV,
      "banded products read the next copy group before it landed: the poison's NaN sums are taken again directly "
      "(right values), so only the emulator's count of redos on finite inputs sees it"),
    M("cuda-inv-band-wait-none", "csrc/involution.cuh", "cp_async_wait_groups<kNT - 1>();",
      "cp_async_wait_groups<kNT>();", EMU_INV, "the last copy group never waited for"),
    M("cuda-inv-band-redo", "csrc/involution.cuh", "for (int bit = 0; redo != 0; ++bit, redo >>= 1) {",
      "for (int bit = 0; false && redo != 0; ++bit, redo >>= 1) {", EMU_INV,
      "banded tensor-core involution: a non-finite sum (a NaN or Inf met off the band) kept, not taken again"),
    M("cuda-inv-band-mask", "csrc/involution.cuh", "if (on_band) mask[s >> 1] |=", "mask[s >> 1] |=", EMU_INV,
      "banded tensor-core involution: B's entries off the band hold tap 0's weight instead of zero"),
    M("cuda-inv-band-lead", "csrc/involution.cuh", "const int lead = kGradInput ? band_lead(p.p - kw, kVec) : 0;",
      "const int lead = 0;", EMU_INV,
      "banded grad-input: a tap staged from before its first column read without its lead columns"),
    M("cuda-inv-band-plan-lead", "csrc/involution.cuh",
      "band_lead(-p.p, v) <= 2 && band_lead(p.p - (kRedNetK - 1), v) <= 2", "true", EMU_INV,
      "banded kernels' copies of 4 taken where 3 lead columns push a product's band past its 16 columns"),
    M("cuda-inv-band-aligned", "csrc/involution.cuh", "reinterpret_cast<uintptr_t>(q) % (2 * v) == 0;",
      "reinterpret_cast<uintptr_t>(q) % 2 == 0;", EMU_INV,
      "banded kernels' 8- and 4-byte copies taken on tensors only 2-byte aligned"),
    M("cuda-inv-band-vec-width", "csrc/involution.cuh", "bool ok = p.w % v == 0 && p.wo % v == 0 &&", "bool ok =",
      EMU_INV, "banded kernels' copies of 4 taken on widths of 14 and 7: vectors across rows, misaligned rows"),
    M("cuda-inv-band-odd-store", "csrc/involution.cuh", "const bool second = kVec > 1 || col + 1 < out_w;",
      "const bool second = kVec > 1;", EMU_INV,
      "banded forward / grad-input at odd widths: each pair's second pixel left unwritten"),
    M("cuda-copy-vecs-zero", "csrc/common.cuh", "u[j] = ok ? bits16(from[j]) : 0u;", "u[j] = bits16(from[j]);",
      EMU_INV, "copies of single 16-bit values (odd widths) fill padding with neighbouring values instead of zeros"),
    M("cuda-stage-row-range", "csrc/involution.cuh",
      "const bool ok = static_cast<unsigned>(gr) < static_cast<unsigned>(height) &&",
      "const bool ok = gr < height &&", EMU_INV,
      "FMA kernels' staging: rows above the map (padding) read from the plane before instead of zero"),
    M("cuda-inv-band-direct-row", "csrc/involution.cuh", "const bool ok = (band >> s & 1u) && y_row &&",
      "const bool ok = (band >> s & 1u) &&", EMU_INV,
      "banded grad-input at odd widths (weights from global memory): taps whose y pixel is above or below the map "
      "read, not zero"),
    M("cuda-inv-direct-padding", "csrc/involution.cuh",
      "const bool inside = hh >= 0 && hh < p.h && ww >= 0 && ww < p.w;\n      acc = fmaf(",
      "const bool inside = hh >= 0 && hh < p.h && ww >= 0 && ww < p.w;\n      if (!inside) continue;\n"
      "      acc = fmaf(", EMU_INV,
      "direct involution forward: taps over padding skipped, so an Inf weight there gives a finite sum, not NaN"),
    M("cuda-inv-offsets-32bit", "csrc/involution.cuh",
      "  if (static_cast<int64_t>(p.groups) * p.k * p.k * p.ho * p.wo >= limit || kCB", "  if (kCB",
      EMU_INV,
      "tiled involution planned for images whose weight offsets overflow 32 bits"),
    M("cuda-dense-wgrad-flip", "largeconv/cuda.py", "b0:b0 + w + wo - 1] = taps", "b0:b0 + w + wo - 1] = taps.flip(2)",
      ("tests/test_cuda_dense.py",), "dense products: grad-weight's tap columns mirrored"),
    M("cuda-mma-packed-halo", "csrc/dwconv.cuh", "return {1, b.stage1 + v - b.rows0, v - b.rows0};",
      "return {1, b.stage1 + v - b.rows0 + 1, v - b.rows0};",
      EMU_DW,
      "tensor-core correlations, packed tiles: the next image's rows read one staged row off"),
    M("cuda-tf32-wgrad-band", "csrc/dwconv.cuh",
      "load_tf32_band<kSplit>(bf, gs + r * t.gw + kTf32Pad + quad - group, g_elems);",
      "load_tf32_band<kSplit>(bf, gs + r * t.gw + kTf32Pad + quad - group + 1, g_elems);",
      EMU_DW,
      "TF32 grad-weight: the Toeplitz fragments of g one column off"),
]


def make_copy(head: bool) -> str:
    """A temporary copy of the repository's tracked files (the working tree's, or HEAD's), importable as
    `largeconv` from its root. The build output largeconv/_C*.so is copied too."""
    tmp = tempfile.mkdtemp(prefix="largeconv-mutations-")
    if head:
        archive = subprocess.run(["git", "-C", ROOT, "archive", "HEAD"], check=True, capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    else:
        files = subprocess.run(["git", "-C", ROOT, "ls-files", "-z"], check=True, capture_output=True,
                               text=True).stdout.split("\0")
        for name in filter(None, files):
            source = os.path.join(ROOT, name)
            if os.path.isfile(source):
                os.makedirs(os.path.dirname(os.path.join(tmp, name)), exist_ok=True)
                shutil.copy2(source, os.path.join(tmp, name))
    for built in glob.glob(os.path.join(ROOT, "largeconv", "_C*.so")):
        shutil.copy2(built, os.path.join(tmp, "largeconv"))
    # setup.py maps the package largeconv.kernels to the top-level kernels/; the editable install's finder would
    # resolve it to this checkout's kernels/, so give the copy its own largeconv/kernels.
    os.symlink(os.path.join("..", "kernels"), os.path.join(tmp, "largeconv", "kernels"))
    return tmp


def environment(copy: str) -> dict:
    env = dict(os.environ, PYTHONPATH=copy + os.pathsep + os.environ.get("PYTHONPATH", ""),
               PYTHONDONTWRITEBYTECODE="1")  # no stale .pyc when a same-size mutation lands in the same second
    env.pop("LARGECONV_BACKEND", None)
    return env


def check_imports_copy(copy: str, env: dict):
    probe = "import largeconv, largeconv.kernels; print(largeconv.__file__); print(largeconv.kernels.__file__)"
    result = subprocess.run([sys.executable, "-c", probe], cwd=copy, env=env, capture_output=True, text=True)
    paths = result.stdout.split()
    real = os.path.realpath(copy)
    if result.returncode or len(paths) != 2 or not all(os.path.realpath(p).startswith(real + os.sep) for p in paths):
        sys.exit(f"the copy does not import its own largeconv: {result.stdout}{result.stderr}")
    print(f"copy: {copy}\n  largeconv         -> {paths[0]}\n  largeconv.kernels -> {paths[1]}")


def first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line[:160]
    match = re.search(r"^E .*$", output, re.M)
    return match.group(0)[:160] if match else output.strip().splitlines()[-1][:160] if output.strip() else ""


def pytest_command(tests):
    return [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *tests]


def failing_baselines(chosen, copy, env, timeout) -> set:
    """The test selections (of mutations that apply) that fail on the unmutated copy: a failure under a mutation
    proves nothing for those."""
    broken = set()
    for tests in dict.fromkeys(m.tests for m in chosen if _applies(m, copy)):
        start = time.perf_counter()
        try:
            result = subprocess.run(pytest_command(tests), cwd=copy, env=env, capture_output=True, text=True,
                                    timeout=timeout)
            ok, detail = result.returncode == 0, first_failure(result.stdout + result.stderr)
        except subprocess.TimeoutExpired:
            ok, detail = False, f"timeout after {timeout:.0f} s"
        print(f"[baseline {'ok' if ok else 'FAILS'}] {' '.join(tests)}  ({time.perf_counter() - start:.1f} s)"
              + ("" if ok else f"  {detail}"), flush=True)
        if not ok:
            broken.add(tests)
    return broken


def _applies(m: Mutation, copy: str) -> bool:
    with open(os.path.join(copy, m.file)) as f:
        return f.read().count(m.original) == 1


def run_mutation(m: Mutation, copy: str, env: dict, timeout: float) -> tuple[str, str, float]:
    """(status, detail, seconds): status is killed, survived, not applicable or error."""
    path = os.path.join(copy, m.file)
    with open(path) as f:
        text = f.read()
    count = text.count(m.original)
    if count != 1:
        return "not applicable", f"original text found {count} times in {m.file}", 0.0
    command = pytest_command(m.tests)
    start = time.perf_counter()
    try:
        with open(path, "w") as f:
            f.write(text.replace(m.original, m.mutated))
        result = subprocess.run(command, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed", f"timeout after {timeout:.0f} s (a hang, or only a slow machine: check)", timeout
    finally:
        with open(path, "w") as f:
            f.write(text)
    seconds = time.perf_counter() - start
    output = result.stdout + result.stderr
    if result.returncode == 0:
        return "survived", re.sub(r"\s+", " ", output.strip().splitlines()[-1]) if output.strip() else "", seconds
    if result.returncode in (1, 2, 3):  # failures, interrupted (e.g. a collection error), internal error
        return "killed", first_failure(output), seconds
    return "error", f"pytest exit code {result.returncode}: {first_failure(output)}", seconds  # 4 usage, 5 none


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", action="append", default=[],
                        help="run the mutations whose name or file contains this text (repeatable)")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--head", action="store_true", help="mutate a copy of HEAD instead of the working tree")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per mutation's test run")
    parser.add_argument("--keep", action="store_true", help="keep the temporary copy")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip running each test selection once unmutated first (it must pass)")
    args = parser.parse_args()
    names = [m.name for m in MUTATIONS]
    assert len(set(names)) == len(names), "mutation names must be unique"
    chosen = [m for m in MUTATIONS if not args.only or any(o in m.name or o in m.file for o in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name:38} {m.file:24} {' '.join(m.tests)}")
        return 0
    if not chosen:
        sys.exit(f"no mutation matches {args.only}")
    copy = make_copy(args.head)
    try:
        env = environment(copy)
        check_imports_copy(copy, env)
        broken = set() if args.no_baseline else failing_baselines(chosen, copy, env, args.timeout)
        results = []
        for m in chosen:
            if m.tests in broken:
                results.append((m, "baseline fails"))
                print(f"[baseline fails] {m.name:38}          its tests fail without the mutation", flush=True)
                continue
            status, detail, seconds = run_mutation(m, copy, env, args.timeout)
            results.append((m, status))
            print(f"[{status:>14}] {m.name:38} {seconds:6.1f} s  {detail}", flush=True)
    finally:
        if args.keep:
            print(f"kept {copy}")
        else:
            shutil.rmtree(copy, ignore_errors=True)
    counted = [(m, s) for m, s in results if s in ("killed", "survived")]
    killed = sum(s == "killed" for _, s in counted)
    survived = [m.name for m, s in counted if s == "survived"]
    other = [f"{m.name} ({s})" for m, s in results if s not in ("killed", "survived")]
    score = 100.0 * killed / len(counted) if counted else 0.0
    print(f"score: {killed}/{len(counted)} killed ({score:.0f}%); survived: {', '.join(survived) or 'none'}; "
          f"not counted: {', '.join(other) or 'none'}")
    return 1 if survived or other else 0


if __name__ == "__main__":
    sys.exit(main())
