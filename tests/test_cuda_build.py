"""The CUDA extension without a GPU: every .cu compiles for sm_80 and sm_90, the binding compiles, the kernels run
correctly under the CPU emulator (csrc/emu/), and the `largeconv_C` ops are registered when the extension is built
(or the "cuda" backend says how to build it when it is not)."""
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

import largeconv.cuda

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"
CU_FILES = sorted(CSRC.glob("*.cu"))
ARCHS = ("80", "90")

EXPECTED_SCHEMAS = {
    "dwconv2d_forward": "largeconv_C::dwconv2d_forward(Tensor x, Tensor weight, Tensor? bias, int[2] stride, "
                        "int[4] padding, int[2] dilation, bool tf32, Tensor(a!) out) -> ()",
    "dwconv2d_grad_input": "largeconv_C::dwconv2d_grad_input(Tensor grad_out, Tensor weight, int[2] stride, "
                           "int[4] padding, int[2] dilation, bool tf32, Tensor(a!) grad_input) -> ()",
    "dwconv2d_grad_weight": "largeconv_C::dwconv2d_grad_weight(Tensor grad_out, Tensor x, int[2] stride, "
                            "int[4] padding, int[2] dilation, bool tf32, Tensor(a!) grad_weight) -> ()",
    "dwconv1d_forward": "largeconv_C::dwconv1d_forward(Tensor x, Tensor weight, Tensor? bias, int stride, "
                        "int[2] padding, int dilation, Tensor(a!) out) -> ()",
    "dwconv1d_grad_input": "largeconv_C::dwconv1d_grad_input(Tensor grad_out, Tensor weight, int stride, "
                           "int[2] padding, int dilation, Tensor(a!) grad_input) -> ()",
    "dwconv1d_grad_weight": "largeconv_C::dwconv1d_grad_weight(Tensor grad_out, Tensor x, int stride, "
                            "int[2] padding, int dilation, Tensor(a!) grad_weight) -> ()",
    "involution2d_forward": "largeconv_C::involution2d_forward(Tensor x, Tensor weight, int kernel_size, int stride, "
                            "int padding, int dilation, Tensor(a!) out) -> ()",
    "involution2d_grad_input": "largeconv_C::involution2d_grad_input(Tensor grad_out, Tensor weight, int kernel_size, "
                               "int stride, int padding, int dilation, Tensor(a!) grad_input) -> ()",
    "involution2d_grad_weight": "largeconv_C::involution2d_grad_weight(Tensor grad_out, Tensor x, int kernel_size, "
                                "int stride, int padding, int dilation, Tensor(a!) grad_weight) -> ()",
}


def _nvcc():
    found = shutil.which("nvcc")
    if found:
        return found
    from torch.utils.cpp_extension import CUDA_HOME
    candidate = Path(CUDA_HOME or "/usr/local/cuda") / "bin" / "nvcc"
    return str(candidate) if candidate.exists() else None


def _torch_includes():
    from torch.utils.cpp_extension import include_paths
    return [*include_paths(device_type="cuda"), sysconfig.get_paths()["include"]]


def _abi_flag():
    return f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"


def _run(cmd, what, timeout=900):
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{what} failed ({proc.returncode}):\n{' '.join(map(str, cmd))}\n" \
                                 f"{proc.stdout[-8000:]}\n{proc.stderr[-8000:]}"
    return proc


def test_there_are_cuda_sources():
    assert CU_FILES, "no .cu files in csrc/"


# Sources whose sm_90 compile the static model tests below do (bench/static_gpu.py cuda_sass: the same nvcc flags,
# SASS identical with torch's extension flags, 2026-11-29): not compiled again here (each arch ~1 min of CI). sm_80
# and sm_90 compile the same code (the sources branch on the arch only below sm_80: checked below), so the one
# compile covers both archs' front end; only ptxas differs.
MODELED_FOR_SM90 = {"dwconv.cu", "involution.cu"}


@pytest.mark.parametrize("source", CU_FILES, ids=lambda p: p.name)
def test_cu_compiles_for_sm80_and_sm90(source):
    """Every .cu compiles with torch's extension flags for the GPU archs: sm_80 and sm_90 here, or sm_90 in
    test_static_model_of_the_tensor_core_kernels / _involution_kernels (MODELED_FOR_SM90)."""
    arch_tests = re.findall(r"__CUDA_ARCH__\s*([<>=!]+)\s*(\d+)",
                            "\n".join(p.read_text() for p in [*CSRC.glob("*.cu"), *CSRC.glob("*.cuh")]))
    assert arch_tests and set(arch_tests) == {("<", "800")}, f"arch branches at or above sm_80: {arch_tests}"
    if source.name in MODELED_FOR_SM90:  # the model compiles it for sm_90
        assert f'cuda_sass("{source.name}")' in (ROOT / "bench" / "static_gpu.py").read_text()
        return
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (not on PATH, no CUDA_HOME/bin/nvcc): CUDA compile check skipped")
    includes = _torch_includes()
    if not any((Path(d) / "c10" / "cuda" / "CUDAGuard.h").exists() for d in includes):
        pytest.skip("this torch installation ships no c10/cuda headers: CUDA compile check skipped")
    from torch.utils.cpp_extension import COMMON_NVCC_FLAGS
    gencode = [flag for arch in ARCHS for flag in ("-gencode", f"arch=compute_{arch},code=sm_{arch}")]
    # The flags torch's CUDAExtension uses, the archs in one invocation, object discarded.
    _run([nvcc, "-c", str(source), "-o", os.devnull, "-std=c++20", "-O3", *gencode, *COMMON_NVCC_FLAGS,
          _abi_flag(), "-Xcompiler", "-fPIC", *[f"-I{d}" for d in includes]], f"nvcc {source.name}")


def _cxx():
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def test_binding_compiles():
    cxx = _cxx()
    if cxx is None:
        pytest.skip("no C++ compiler found")
    _run([cxx, "-std=c++20", "-fPIC", "-fsyntax-only", _abi_flag(), str(CSRC / "binding.cpp"),
          *[f"-I{d}" for d in _torch_includes()]], "compiling binding.cpp")


def test_binding_never_streams_numbers_into_error_messages():
    """binding.cpp builds its messages as strings (CHECK_ARG -> message()): with libstdc++ linked statically (the GPU
    box's compiler, 2026-11-27) TORCH_CHECK(cond, "n = ", n) segfaulted there, and printed "n = " with no number here
    (g++ -static-libstdc++, bench/NOTES.md). So TORCH_CHECK appears once, in CHECK_ARG's definition."""
    source = (CSRC / "binding.cpp").read_text()
    uses = [line.strip() for line in source.splitlines() if "TORCH_CHECK(" in line]
    assert uses == ["#define CHECK_ARG(cond, ...) TORCH_CHECK(cond, ::largeconv::message(__VA_ARGS__))"], uses
    assert "stringstream" not in source and "c10::str(" not in source
    assert source.count("CHECK_ARG(") > 20  # every argument check goes through it


def test_python_knows_the_tensor_core_bounds():
    """largeconv/cuda.py's copy of csrc/dwconv.cuh's bounds (through_nchw sends channels_last calls to the NCHW
    tensor-core kernels by them; small planes skip the dense products for corr_plane_kernel) equals the C++
    constants."""
    from largeconv import cuda
    source = (CSRC / "dwconv.cuh").read_text()

    def constant(name):
        return int(re.search(rf"\b{name} = (\d+)", source).group(1))
    assert (cuda.MMA_MIN_KW, cuda.MMA_MAX_K, cuda.WGRAD_MMA_MAX_K, cuda.PLANE_MAX_PIXELS) == (
        constant("kMmaMinKw"), constant("kMmaMaxKw"), constant("kWgMaxK"), constant("kPlaneMaxPixels"))


@pytest.mark.parametrize("dtype, tf32, layout, kernel, stride, mult, direction, expected", [
    (torch.bfloat16, False, "cl", 31, 1, 1, "forward", True),
    (torch.float16, False, "cl", 13, 1, 1, "grad_input", True),
    (torch.float32, True, "cl", 31, 1, 1, "grad_weight", True),   # TF32 allowed: tensor cores
    (torch.float32, False, "cl", 31, 1, 1, "forward", False),     # exact fp32: not measured, stays
    (torch.bfloat16, False, "nchw", 31, 1, 1, "forward", False),  # NCHW already
    (torch.bfloat16, False, "cl", 31, 2, 1, "forward", False),    # stride 2: FMA kernels either way
    (torch.bfloat16, False, "cl", 7, 1, 1, "forward", False),     # below 13 columns
    (torch.bfloat16, False, "cl", 31, 1, 2, "forward", False),    # a channel multiplier
    (torch.bfloat16, False, "cl", 63, 1, 1, "forward", True),
    (torch.bfloat16, False, "cl", 63, 1, 1, "grad_weight", False),  # grad-weight's tensor cores stop at 32
])
def test_channels_last_calls_that_take_the_nchw_tensor_core_kernels(monkeypatch, dtype, tf32, layout, kernel,
                                                                    stride, mult, direction, expected):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (9, 0))
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", tf32)
    x = torch.randn(2, 8, 20, 20, dtype=dtype)
    if layout == "cl":
        x = x.contiguous(memory_format=torch.channels_last)
    weight_shape = (8 * mult, 1, kernel, kernel)
    assert largeconv.cuda.through_nchw(x, 8, weight_shape, (stride, stride), (1, 1), direction) == expected
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))  # no mma.sync
    assert not largeconv.cuda.through_nchw(x, 8, weight_shape, (stride, stride), (1, 1), direction)


# The emulation test's case groups: the binary runs the cases whose names contain every filter. dwconv2d in parts
# (by device, dtype and layout), so that test workers share its ~11 minutes (the naive device alone took 393 s).
EMU_GROUPS = {"dwconv1d": ("dwconv1d[",), "involution2d": ("involution[",),
              **{f"dwconv2d-{part.replace(' ', '-')}": ("dwconv[", f"] {part} ")
                 for part in ("roomy f32", "roomy tf32", "roomy f16", "roomy bf16", "small", "naive f32 NCHW",
                              "naive f32 NHWC")}}


@pytest.fixture(scope="module")
def emu_test_exe(tmp_path_factory):
    """csrc/emu/emu_test.cpp built once (with AddressSanitizer and UBSan where the compiler has them)."""
    cxx = _cxx()
    if cxx is None:
        pytest.skip("no C++ compiler found")
    tmp_path = tmp_path_factory.mktemp("emu")
    exe = tmp_path / "emu_test"
    sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined"]
    probe = subprocess.run([cxx, *sanitize, "-x", "c++", "-", "-o", str(tmp_path / "probe")], input="int main(){}",
                           capture_output=True, text=True)
    if probe.returncode != 0:
        sanitize = []  # no sanitizer runtime here: still run, without the out-of-bounds checks
    # -g1: line tables only (the sanitizers' reports keep file:line; full debug info took ~30% more build time)
    _run([cxx, "-std=c++20", "-O1", "-g1", *sanitize, "-DLARGECONV_EMULATE", f"-I{CSRC}",
          str(CSRC / "emu" / "emu_test.cpp"), "-pthread", "-o", str(exe)], "compiling the emulation test")
    return exe


@pytest.mark.parametrize("group", EMU_GROUPS)
def test_kernels_under_cpu_emulation(emu_test_exe, group):
    """csrc/emu/emu_test.cpp runs the real kernels on CPU threads (with AddressSanitizer and a checked
    __syncthreads) against float64 references: all ops, dtypes, layouts, and the tiled / shrunk / fallback plans."""
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=1")
    proc = subprocess.run([str(emu_test_exe), *EMU_GROUPS[group]], cwd=emu_test_exe.parent, capture_output=True,
                          text=True, timeout=1800, env=env)
    failures = [line for line in proc.stdout.splitlines() if line.startswith("FAIL")]
    assert proc.returncode == 0 and not failures, \
        "emulated kernels failed:\n" + "\n".join(failures[:30]) + f"\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    lines = proc.stdout.splitlines()
    summary = re.fullmatch(r"(\d+)/(\d+) cases passed, \d+ kernel launches", lines[-1] if lines else "")
    assert summary, f"no summary line:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    passed, ran = map(int, summary.groups())
    assert ran > 0 and passed == ran, f"filter {EMU_GROUPS[group]!r} ran {ran} cases, {passed} passed"


# ---- the built extension (or the reason it is missing) ---------------------------------------------------------

def test_import_cuda_backend_never_fails():
    assert isinstance(largeconv.cuda.is_available(), bool)


@pytest.mark.skipif(largeconv.cuda.is_available(), reason="the extension is built")
def test_unbuilt_extension_says_how_to_build():
    reason = largeconv.cuda.unsupported_reason("dwconv2d", torch.randn(1, 2, 5, 5), (3, 3))
    assert reason is not None and "largeconv._C" in reason
    assert "FORCE_CUDA=1 pip install --no-build-isolation -e ." in reason
    assert largeconv.cuda.unsupported_reason("involution2d", torch.randn(1, 2, 5, 5), (3, 3)) == reason
    assert largeconv.cuda.unsupported_reason("dwconv1d", torch.randn(1, 2, 5), (31,)) == reason


@pytest.mark.skipif(not largeconv.cuda.is_available(), reason="the CUDA extension largeconv._C is not built")
def test_ops_are_registered_with_their_schemas():
    for name, schema in EXPECTED_SCHEMAS.items():
        packet = getattr(torch.ops.largeconv_C, name)
        assert str(packet.default._schema) == schema


@pytest.mark.skipif(not largeconv.cuda.is_available(), reason="the CUDA extension largeconv._C is not built")
def test_built_extension_rejects_cpu_tensors_clearly():
    x = torch.randn(1, 2, 5, 5)
    assert largeconv.cuda.unsupported_reason("dwconv2d", x, (3, 3)) == "needs CUDA tensors, got cpu"
    assert largeconv.cuda.unsupported_reason("involution2d", x, (3, 3)) == "needs CUDA tensors, got cpu"
    assert largeconv.cuda.unsupported_reason("dwconv1d", torch.randn(1, 2, 5), (31,)) == "needs CUDA tensors, got cpu"
    assert "has no conv3d kernel" in largeconv.cuda.unsupported_reason("conv3d", x, (3, 3))
    # No CPU kernel is registered: the dispatcher refuses rather than touching host memory as device memory.
    with pytest.raises((NotImplementedError, RuntimeError)):
        torch.ops.largeconv_C.dwconv2d_forward(x, torch.randn(2, 1, 3, 3), None, [1, 1], [1, 1, 1, 1], [1, 1],
                                               False, torch.empty(1, 2, 5, 5))


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))


def _static_rows(function):
    """bench/static_gpu.<function>() run in a fresh process (nvcc on the PATH the model uses, Triton not interpreted),
    or the test skipped where nvcc is missing."""
    if _nvcc() is None:
        pytest.skip("nvcc not found")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["NVCC"] = _nvcc()
    code = f"import json; from bench import static_gpu; print(json.dumps(static_gpu.{function}()))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_static_model_of_the_tensor_core_kernels():
    """bench/static_gpu.py's section on the CUDA tensor-core kernels finds, in their sm_90 SASS, each kernel it plans
    for RepLKNet-31B's stages (bf16; fp32 as TF32 and as 3xTF32) and its HMMA loop, and that loop does not touch
    local memory (a spill there would cost more than the tensor cores save)."""
    rows = _static_rows("cuda_mma_rows")
    assert {(r["case"], r["dtype"], r["direction"]) for r in rows} == {
        (f"replknet31b-s{s}", dtype, d) for s in range(1, 5) for dtype in ("bf16", "tf32", "fp32")
        for d in ("forward", "grad-input", "grad-weight") if dtype != "fp32" or s < 4}  # 3xTF32 from 14x14 maps
    for r in rows:
        assert r["hot_local"] == 0 and r["hot_hmma"] > 0 and r["executed_vs_useful"] >= 1, r
        assert r["predicted_ms"] >= r[f"{r['bound']}_ms"] > 0, r


def test_static_model_of_the_involution_kernels():
    """bench/static_gpu.py's section on the CUDA involution kernels finds, in their sm_90 SASS, each RedNet-50
    involution's kernel, its FFMA (or, banded, HMMA) loop and its NCHW staging loops; the FMA kernels stage the
    input's own values by copies of up to 16 bytes (stage_vectors: cp.async, one round trip a block; single 16-bit
    values through registers, one per eight planes a thread copies) at a few warp instructions per 32 staged
    values, the banded kernels by copies of 4, 2 or 1 values at a bounded cost each; the FMA kernels' hot loops read
    windows by fp32 8-byte pairs (their 32-bit loads two lanes a bank) or 16-bit 32-bit words; no prediction beats
    the DRAM time of the minimum bytes."""
    from bench import suites
    rows = _static_rows("cuda_involution_rows")
    assert {(r["case"], r["dtype"], r["direction"]) for r in rows} == {
        (c.name, dtype, d) for c in suites.rednet50() for dtype in ("fp32", "bf16")
        for d in ("forward", "grad-input", "grad-weight")}
    band = {(r["case"], r["direction"]) for r in rows if "::band_" in r["kernel"]}
    # the banded tensor-core kernels: bf16 forward at stride 1 (copies of 4 values at RedNet-50's 56 and 28 columns,
    # of 2 at 14, of 1 at 7), grad-input from 28 columns; the FMA kernels for the rest
    assert band == {(f"rednet50-s{s}", "forward") for s in range(1, 5)} | {
        (f"rednet50-s{s}", "grad-input") for s in (1, 2)}
    assert {r["kernel"][-2] for r in rows if "::band_" in r["kernel"] and r["case"] == "rednet50-s4"} == {"1"}
    for r in rows:
        assert (r["hot_hmma"] > 0 if (r["case"], r["direction"]) in band and r["dtype"] == "bf16"
                else r["hot_ffma"] > 0), r
        assert r["stage_instr"] > 0 and r["blocks_per_sm"] >= 1, r
        assert r["predicted_ms"] >= r["memory_ms"] > 0 and r["roof_fraction"] <= 1, r
        assert r["rounds"] >= 1, r
        if "::band_" in r["kernel"]:  # per copy and thread: copy_vecs, no division by a run-time value (single
            # values four a thread and row through registers)
            assert r["stage_instr"] < 40, r
        else:  # per 32 staged values: copies of 2-8 values a slot, walking the planes (a team of 8 lanes a row and
            # a value a copy took 19-33 at the strided tiles; 7x7 maps' copies of one 16-bit value cost the most:
            # ~26 for the stride-2 grad-input, whose pixel pairs leave half the threads to stage)
            assert r["stage_instr"] < (28 if r["case"].startswith("rednet50-s4") else 16), r
    # (stride 2 shown: their x rows take 16-byte copies, fp32 and bf16 alike)
    by_key = {(r["case"], r["dtype"], r["direction"]): r for r in rows}
    assert all(by_key[("rednet50-s2-stride2", dtype, "forward")]["stage_instr"] < 5 for dtype in ("fp32", "bf16"))
    # bf16 staged as bf16: the stride-2 forward's shared-memory traffic under its DRAM time (widened to fp32 in shared
    # memory it was twice that: 0.061 ms against 0.031, 2026-11-29)
    row = by_key[("rednet50-s2-stride2", "bf16", "forward")]
    assert row["l1_ms"] < row["memory_ms"], row
    # the FMA kernels' windows (load_window): RedNet-50's first stage in fp32 stays at the DRAM roof in all three
    # directions (one 32-bit load a value, two lanes a bank, made it L1-bound: 0.092-0.098 ms against 0.078)
    assert all(by_key[("rednet50-s1", "fp32", d)]["bound"] == "memory"
               for d in ("forward", "grad-input", "grad-weight"))
