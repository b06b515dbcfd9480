// Involution entry points for the torch binding: kernels and plans are in involution.cuh.
#include "involution.cuh"
#include "launch.cuh"

namespace largeconv {

size_t involution_grad_weight_workspace_bytes(const InvArgs& a) {
  return inv::grad_weight_workspace_bytes(a, device_limits(a.device));
}

void involution_forward_cuda(const InvArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { inv::run_forward<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

void involution_grad_input_cuda(const InvArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { inv::run_grad_input<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

void involution_grad_weight_cuda(const InvArgs& a) {
  CudaContext ctx(a.device);
  dispatch_dtype(a.dtype, [&](auto tag) { inv::run_grad_weight<decltype(tag)>(ctx.launch, a, ctx.limits); });
}

}  // namespace largeconv
