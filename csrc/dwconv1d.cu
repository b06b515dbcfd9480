// Depthwise 1-D conv entry points for the torch binding: kernels and plans are in dwconv1d.cuh.
#include "dwconv1d.cuh"
#include "launch.cuh"

namespace largeconv {

size_t dwconv1d_grad_weight_workspace_bytes(const Dw1dArgs& a) {
  return dw1d::grad_weight_workspace_bytes(a, device_limits(a.device));
}

void dwconv1d_forward_cuda(const Dw1dArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { dw1d::run_forward<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

void dwconv1d_grad_input_cuda(const Dw1dArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { dw1d::run_grad_input<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

void dwconv1d_grad_weight_cuda(const Dw1dArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { dw1d::run_grad_weight<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

}  // namespace largeconv
