// The CUDA side of a launch: device guard, torch's current stream, device limits, and a launcher that opts into
// large dynamic shared memory and checks every launch. Only the .cu files include this (it needs c10's CUDA headers).
#pragma once

#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "common.cuh"

namespace largeconv {

inline DeviceLimits device_limits(int device) {
  DeviceLimits lim{};
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&lim.max_smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&lim.num_sms, cudaDevAttrMultiProcessorCount, device));
  int major = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device));
  lim.tensor_cores = major >= 8;
  return lim;
}

struct CudaLaunch {
  cudaStream_t stream;

  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), unsigned grid, unsigned block, size_t smem, A... args) const {
    if (smem > kDefaultSmem) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    }
    kernel<<<grid, block, smem, stream>>>(args...);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

// Everything one call needs, in order: the device guard first, then the stream and limits of that device.
struct CudaContext {
  c10::cuda::CUDAGuard guard;
  DeviceLimits limits;
  CudaLaunch launch;

  explicit CudaContext(int device)
      : guard(static_cast<c10::DeviceIndex>(device)),
        limits(device_limits(device)),
        launch{c10::cuda::getCurrentCUDAStream(static_cast<c10::DeviceIndex>(device)).stream()} {}
};

}  // namespace largeconv
