// The plain C++ interface between the torch binding (binding.cpp, compiled by the host compiler) and the CUDA
// code (*.cu, compiled by nvcc). No torch and no CUDA headers here, so the .cu files stay light to compile and
// the emulation test (csrc/emu/) can build the same kernels on a CPU.
#pragma once

#include <cstddef>
#include <cstdint>

namespace largeconv {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// What a kernel plan needs to know about the device.
struct DeviceLimits {
  int max_smem_optin;  // bytes of dynamic shared memory one block may opt into
  int num_sms;
  bool tensor_cores = false;  // mma.sync m16n8k16 in fp16/bf16: compute capability 8.0 or newer
};

// One depthwise conv call, described in forward terms: x (n, c, h, w) -> y (n, co, ho, wo), co = c * mult.
// Every tensor is contiguous in the same layout (channels_last or NCHW).
struct DwArgs {
  const void* x = nullptr;         // forward, grad-weight
  const void* weight = nullptr;    // forward, grad-input: (co, 1, kh, kw)
  const void* bias = nullptr;      // forward; may be null
  const void* grad_out = nullptr;  // grad-input, grad-weight: like y
  void* out = nullptr;             // y, grad-input (like x) or grad-weight (like weight)
  void* workspace = nullptr;       // grad-weight: dwconv_grad_weight_workspace_bytes() bytes
  DType dtype = DType::kFloat32;
  int device = 0;
  int64_t n = 0, c = 0, h = 0, w = 0, co = 0, ho = 0, wo = 0;
  int kh = 1, kw = 1, sh = 1, sw = 1, dh = 1, dw = 1;
  int pt = 0, pl = 0;  // top / left padding; bottom / right are implied by ho, wo
  bool channels_last = false;
  bool tf32 = false;  // fp32 may use TF32 (torch.backends.cudnn.allow_tf32)
};

// One depthwise 1-D conv call, described in forward terms: x (n, c, l) -> y (n, co, lo), co = c * mult; every
// tensor contiguous. left is the left padding; the right one is implied by lo.
struct Dw1dArgs {
  const void* x = nullptr;         // forward, grad-weight
  const void* weight = nullptr;    // forward, grad-input: (co, 1, k)
  const void* bias = nullptr;      // forward; may be null
  const void* grad_out = nullptr;  // grad-input, grad-weight: like y
  void* out = nullptr;             // y, grad-input (like x) or grad-weight (like weight)
  void* workspace = nullptr;       // grad-weight: dwconv1d_grad_weight_workspace_bytes() bytes
  DType dtype = DType::kFloat32;
  int device = 0;
  int64_t n = 0, c = 0, l = 0, co = 0, lo = 0;
  int k = 1, s = 1, d = 1, left = 0;
};

// One involution call: x (b, c, h, w), weight (b, groups * k * k, ho, wo) -> y (b, c, ho, wo).
struct InvArgs {
  const void* x = nullptr;         // forward, grad-weight
  const void* weight = nullptr;    // forward, grad-input
  const void* grad_out = nullptr;  // grad-input, grad-weight: like y
  void* out = nullptr;             // y, grad-input (like x) or grad-weight (like weight)
  void* workspace = nullptr;       // grad-weight: involution_grad_weight_workspace_bytes() bytes
  DType dtype = DType::kFloat32;
  int device = 0;
  int64_t b = 0, c = 0, h = 0, w = 0, ho = 0, wo = 0;
  int groups = 1, k = 1, s = 1, p = 0, d = 1;
  bool channels_last = false;
};

// Defined in dwconv.cu / dwconv1d.cu / involution.cu. They guard the device, launch on torch's current stream and
// check every launch; errors are thrown as exceptions (std::runtime_error for unsupported sizes, c10::Error for
// CUDA errors).
size_t dwconv_grad_weight_workspace_bytes(const DwArgs& a);
void dwconv_forward_cuda(const DwArgs& a);
void dwconv_grad_input_cuda(const DwArgs& a);
void dwconv_grad_weight_cuda(const DwArgs& a);

size_t dwconv1d_grad_weight_workspace_bytes(const Dw1dArgs& a);
void dwconv1d_forward_cuda(const Dw1dArgs& a);
void dwconv1d_grad_input_cuda(const Dw1dArgs& a);
void dwconv1d_grad_weight_cuda(const Dw1dArgs& a);

size_t involution_grad_weight_workspace_bytes(const InvArgs& a);
void involution_forward_cuda(const InvArgs& a);
void involution_grad_input_cuda(const InvArgs& a);
void involution_grad_weight_cuda(const InvArgs& a);

}  // namespace largeconv
