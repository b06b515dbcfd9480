"""Build for largeconv.

The CUDA extension `largeconv._C` (csrc/) is built when a CUDA build of torch and nvcc are present, or when
FORCE_CUDA=1; set LARGECONV_BUILD_CUDA=0 to skip it. TORCH_CUDA_ARCH_LIST defaults to "8.0;9.0" when no GPU is
visible. Without CUDA the package installs without the extension and backend="cuda" says how to build it.
"""
import glob
import os
import shutil

from setuptools import setup

PACKAGES = ["largeconv", "largeconv.kernels"]
PACKAGE_DIR = {"largeconv": "largeconv", "largeconv.kernels": "kernels"}


def want_cuda_extension():
    if os.environ.get("LARGECONV_BUILD_CUDA", "") == "0":
        return False
    if os.environ.get("FORCE_CUDA", "") == "1":
        return True
    try:
        import torch
    except ImportError:
        return False
    # Where nvcc on PATH is a wrapper script (as on this project's CPU machines), torch would guess CUDA_HOME from
    # its folder and fail to link cudart; the toolkit's usual home is the better guess.
    if "CUDA_HOME" not in os.environ and os.path.exists("/usr/local/cuda/bin/nvcc"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"
    from torch.utils.cpp_extension import CUDA_HOME

    has_nvcc = CUDA_HOME is not None or shutil.which("nvcc") is not None
    return torch.version.cuda is not None and has_nvcc


def cuda_extensions():
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*.cu"))
    if not sources or not want_cuda_extension():
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    if not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0"
    ext = CUDAExtension(
        name="largeconv._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3", "-std=c++20"],
                            "nvcc": ["-O3", "-std=c++20", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = cuda_extensions()

setup(
    name="largeconv",
    version="0.1.0",
    description="Fast large-kernel depthwise convolution and involution for PyTorch (Triton, CUDA C++, CPU)",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"largeconv": ["py.typed", "backend_api.md"]},
    license="MIT",
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
