// Depthwise conv entry points for the torch binding: kernels and plans are in dwconv.cuh.
#include "dwconv.cuh"
#include "launch.cuh"

namespace largeconv {

size_t dwconv_grad_weight_workspace_bytes(const DwArgs& a) {
  return dw::grad_weight_workspace_bytes(a, device_limits(a.device));
}

void dwconv_forward_cuda(const DwArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { dw::run_forward<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

void dwconv_grad_input_cuda(const DwArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { dw::run_grad_input<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

void dwconv_grad_weight_cuda(const DwArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { dw::run_grad_weight<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

}  // namespace largeconv
