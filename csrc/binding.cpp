// The torch side of largeconv._C: the `largeconv_C` operator library (CUDA kernels only) and an empty Python module
// whose import registers it. Each op writes into a caller-allocated `out` (largeconv/cuda.py allocates it, so tests
// can poison it); the public custom ops with autograd live in largeconv/ops.py.
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <initializer_list>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "api.h"

namespace largeconv {
namespace {

constexpr int64_t kMaxDim = std::numeric_limits<int32_t>::max();

// Error messages are built as one std::string with std::to_string, never by streaming numbers: a toolchain that links
// libstdc++ statically into this library (the GPU box's g++ 13 wrapper, 2026-11-27) segfaults when TORCH_CHECK's
// c10::str streams an integer (it ran through this library's own, uninitialised locale). A single std::string
// argument goes to c10::Error as it is. tests/test_cuda_build.py keeps TORCH_CHECK out of this file.
inline std::string text(const char* s) { return s; }
inline std::string text(const std::string& s) { return s; }
inline std::string text(const c10::Device& device) { return device.str(); }
inline std::string text(at::ScalarType type) { return c10::toString(type); }
template <typename T, std::enable_if_t<std::is_integral_v<T>, int> = 0>
std::string text(T v) { return std::to_string(v); }
inline std::string text(at::IntArrayRef values) {
  std::string out = "[";
  for (size_t i = 0; i < values.size(); ++i) out += (i ? ", " : "") + std::to_string(values[i]);
  return out + "]";
}
template <typename... Parts>
std::string message(const Parts&... parts) { return (std::string() + ... + text(parts)); }
#define CHECK_ARG(cond, ...) TORCH_CHECK(cond, ::largeconv::message(__VA_ARGS__))

DType dtype_of(const at::Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: CHECK_ARG(false, op, ": dtype ", t.scalar_type(), " is not supported (float32, float16, bfloat16)");
  }
  return DType::kFloat32;  // unreachable
}

// All tensors on the first one's CUDA device, with its dtype, `dim`-D (4 unless told otherwise).
void check_tensors(const char* op, std::initializer_list<std::pair<const char*, const at::Tensor*>> tensors,
                   int64_t dim = 4) {
  const at::Tensor& first = *tensors.begin()->second;
  for (const auto& [name, t] : tensors) {
    CHECK_ARG(t->is_cuda(), op, ": ", name, " must be a CUDA tensor, got ", t->device());
    CHECK_ARG(t->device() == first.device(), op, ": ", name, " is on ", t->device(), ", expected ", first.device());
    CHECK_ARG(t->scalar_type() == first.scalar_type(), op, ": ", name, " has dtype ", t->scalar_type(),
              ", expected ", first.scalar_type());
    CHECK_ARG(t->dim() == dim, op, ": ", name, " must be ", dim, "-D, got ", t->dim(), "-D");
    for (int64_t s : t->sizes()) CHECK_ARG(s >= 1 && s <= kMaxDim, op, ": ", name, " has a bad size ", t->sizes());
  }
}

// The tensors' shared layout: the first tensor that is unambiguously NCHW or channels_last decides (a tensor with
// C == 1 or H == W == 1 is both), and every tensor must be contiguous in it.
bool channels_last_layout(const char* op, std::initializer_list<const at::Tensor*> tensors) {
  int decided = -1;
  for (const at::Tensor* t : tensors) {
    const bool nchw = t->is_contiguous(), cl = t->is_contiguous(at::MemoryFormat::ChannelsLast);
    if (decided < 0 && nchw != cl) decided = cl ? 1 : 0;
  }
  const bool channels_last = decided == 1;
  for (const at::Tensor* t : tensors) {
    CHECK_ARG(channels_last ? t->is_contiguous(at::MemoryFormat::ChannelsLast) : t->is_contiguous(), op,
              ": all tensors must be contiguous in one memory format (NCHW or channels_last)");
  }
  return channels_last;
}

int to_int(int64_t v, const char* op, const char* what, int64_t lo) {
  CHECK_ARG(v >= lo && v <= kMaxDim, op, ": ", what, " = ", v, " is out of range");
  return static_cast<int>(v);
}

int64_t conv_out(int64_t size, int64_t pad_total, int64_t k, int64_t s, int64_t d) {
  return (size + pad_total - d * (k - 1) - 1) / s + 1;
}

// Plans throw std::runtime_error for sizes they cannot handle; report them as RuntimeError with the message.
template <typename F>
void run(F&& f) {
  try {
    f();
  } catch (const std::runtime_error& e) {
    CHECK_ARG(false, e.what());
  }
}

// ---- depthwise conv ------------------------------------------------------------------------------------------
DwArgs dw_args(const char* op, const at::Tensor& x_like, int64_t co, int64_t kh, int64_t kw, const at::Tensor& y_like,
               at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool channels_last) {
  CHECK_ARG(stride.size() == 2 && padding.size() == 4 && dilation.size() == 2, op,
            ": expected stride[2], padding[4] (top, bottom, left, right), dilation[2]");
  DwArgs a;
  a.dtype = dtype_of(x_like, op);
  a.device = x_like.device().index();
  a.n = x_like.size(0); a.c = x_like.size(1); a.h = x_like.size(2); a.w = x_like.size(3);
  a.co = co; a.ho = y_like.size(2); a.wo = y_like.size(3);
  a.kh = to_int(kh, op, "kernel height", 1);
  a.kw = to_int(kw, op, "kernel width", 1);
  a.sh = to_int(stride[0], op, "stride", 1);
  a.sw = to_int(stride[1], op, "stride", 1);
  a.dh = to_int(dilation[0], op, "dilation", 1);
  a.dw = to_int(dilation[1], op, "dilation", 1);
  a.pt = to_int(padding[0], op, "padding", 0);
  a.pl = to_int(padding[2], op, "padding", 0);
  to_int(padding[1], op, "padding", 0);
  to_int(padding[3], op, "padding", 0);
  a.channels_last = channels_last;
  CHECK_ARG(y_like.size(0) == a.n && y_like.size(1) == co, op, ": batch or channel mismatch");
  CHECK_ARG(co % a.c == 0, op, ": ", co, " output channels are not a multiple of the ", a.c, " input channels");
  CHECK_ARG(a.ho == conv_out(a.h, padding[0] + padding[1], kh, a.sh, a.dh) &&
                a.wo == conv_out(a.w, padding[2] + padding[3], kw, a.sw, a.dw),
            op, ": output size ", y_like.sizes(), " does not match input ", x_like.sizes(), " and the arguments");
  return a;
}

void check_dw_weight(const char* op, const at::Tensor& weight, const at::Tensor& ref) {
  CHECK_ARG(weight.is_cuda() && weight.device() == ref.device() && weight.scalar_type() == ref.scalar_type(), op,
            ": weight must be a CUDA tensor on ", ref.device(), " with dtype ", ref.scalar_type());
  CHECK_ARG(weight.dim() == 4 && weight.size(1) == 1 && weight.is_contiguous(), op,
            ": weight must be a contiguous (C*m, 1, Kh, Kw) tensor, got ", weight.sizes());
}

void dwconv2d_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation, bool tf32,
                      const at::Tensor& out) {
  const char* op = "largeconv_C::dwconv2d_forward";
  check_tensors(op, {{"x", &x}, {"out", &out}});
  check_dw_weight(op, weight, x);
  DwArgs a = dw_args(op, x, weight.size(0), weight.size(2), weight.size(3), out, stride, padding, dilation,
                     channels_last_layout(op, {&out, &x}));
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    CHECK_ARG(b.is_cuda() && b.device() == x.device() && b.scalar_type() == x.scalar_type() && b.dim() == 1 &&
                  b.size(0) == a.co && b.is_contiguous(),
              op, ": bias must be a contiguous (", a.co, ",) tensor like x");
    a.bias = b.const_data_ptr();
  }
  a.x = x.const_data_ptr();
  a.weight = weight.const_data_ptr();
  a.out = out.data_ptr();
  a.tf32 = tf32;
  run([&] { dwconv_forward_cuda(a); });
}

void dwconv2d_grad_input(const at::Tensor& grad_out, const at::Tensor& weight, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, bool tf32, const at::Tensor& grad_input) {
  const char* op = "largeconv_C::dwconv2d_grad_input";
  check_tensors(op, {{"grad_out", &grad_out}, {"grad_input", &grad_input}});
  check_dw_weight(op, weight, grad_out);
  DwArgs a = dw_args(op, grad_input, weight.size(0), weight.size(2), weight.size(3), grad_out, stride, padding,
                     dilation, channels_last_layout(op, {&grad_input, &grad_out}));
  a.grad_out = grad_out.const_data_ptr();
  a.weight = weight.const_data_ptr();
  a.out = grad_input.data_ptr();
  a.tf32 = tf32;
  run([&] { dwconv_grad_input_cuda(a); });
}

void dwconv2d_grad_weight(const at::Tensor& grad_out, const at::Tensor& x, at::IntArrayRef stride,
                          at::IntArrayRef padding, at::IntArrayRef dilation, bool tf32, const at::Tensor& grad_weight) {
  const char* op = "largeconv_C::dwconv2d_grad_weight";
  check_tensors(op, {{"grad_out", &grad_out}, {"x", &x}});
  check_dw_weight(op, grad_weight, x);
  DwArgs a = dw_args(op, x, grad_weight.size(0), grad_weight.size(2), grad_weight.size(3), grad_out, stride, padding,
                     dilation, channels_last_layout(op, {&grad_out, &x}));
  a.grad_out = grad_out.const_data_ptr();
  a.x = x.const_data_ptr();
  a.out = grad_weight.data_ptr();
  a.tf32 = tf32;
  run([&] {
    const size_t bytes = dwconv_grad_weight_workspace_bytes(a);
    at::Tensor workspace;  // fp32 partial sums per split; on x's device, so on the current stream
    if (bytes) {
      workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
      a.workspace = workspace.data_ptr();
    }
    dwconv_grad_weight_cuda(a);
  });
}

// ---- depthwise conv 1-D ---------------------------------------------------------------------------------------
// x-like (N, C, L), y-like (N, C*m, Lo), all contiguous (there is no channels_last in 1-D).
Dw1dArgs dw1d_args(const char* op, const at::Tensor& x_like, int64_t co, int64_t k, const at::Tensor& y_like,
                   int64_t stride, at::IntArrayRef padding, int64_t dilation) {
  CHECK_ARG(padding.size() == 2, op, ": expected padding[2] (left, right), got ", padding.size(), " values");
  for (const at::Tensor* t : {&x_like, &y_like}) {
    CHECK_ARG(t->is_contiguous(), op, ": tensors must be contiguous (N, C, L), got strides ", t->strides());
  }
  Dw1dArgs a;
  a.dtype = dtype_of(x_like, op);
  a.device = x_like.device().index();
  a.n = x_like.size(0); a.c = x_like.size(1); a.l = x_like.size(2);
  a.co = co; a.lo = y_like.size(2);
  a.k = to_int(k, op, "kernel size", 1);
  a.s = to_int(stride, op, "stride", 1);
  a.d = to_int(dilation, op, "dilation", 1);
  a.left = to_int(padding[0], op, "padding", 0);
  to_int(padding[1], op, "padding", 0);
  CHECK_ARG(y_like.size(0) == a.n && y_like.size(1) == co, op, ": batch or channel mismatch");
  CHECK_ARG(co % a.c == 0, op, ": ", co, " output channels are not a multiple of the ", a.c, " input channels");
  CHECK_ARG(a.lo == conv_out(a.l, padding[0] + padding[1], k, a.s, a.d), op, ": output size ", y_like.sizes(),
            " does not match input ", x_like.sizes(), " and the arguments");
  return a;
}

void check_dw1d_weight(const char* op, const at::Tensor& weight, const at::Tensor& ref) {
  CHECK_ARG(weight.is_cuda() && weight.device() == ref.device() && weight.scalar_type() == ref.scalar_type(), op,
            ": weight must be a CUDA tensor on ", ref.device(), " with dtype ", ref.scalar_type());
  CHECK_ARG(weight.dim() == 3 && weight.size(1) == 1 && weight.size(2) >= 1 && weight.is_contiguous(), op,
            ": weight must be a contiguous (C*m, 1, K) tensor, got ", weight.sizes());
}

void dwconv1d_forward(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                      int64_t stride, at::IntArrayRef padding, int64_t dilation, const at::Tensor& out) {
  const char* op = "largeconv_C::dwconv1d_forward";
  check_tensors(op, {{"x", &x}, {"out", &out}}, 3);
  check_dw1d_weight(op, weight, x);
  Dw1dArgs a = dw1d_args(op, x, weight.size(0), weight.size(2), out, stride, padding, dilation);
  if (bias.has_value()) {
    const at::Tensor& b = *bias;
    CHECK_ARG(b.is_cuda() && b.device() == x.device() && b.scalar_type() == x.scalar_type() && b.dim() == 1 &&
                  b.size(0) == a.co && b.is_contiguous(),
              op, ": bias must be a contiguous (", a.co, ",) tensor like x");
    a.bias = b.const_data_ptr();
  }
  a.x = x.const_data_ptr();
  a.weight = weight.const_data_ptr();
  a.out = out.data_ptr();
  run([&] { dwconv1d_forward_cuda(a); });
}

void dwconv1d_grad_input(const at::Tensor& grad_out, const at::Tensor& weight, int64_t stride,
                         at::IntArrayRef padding, int64_t dilation, const at::Tensor& grad_input) {
  const char* op = "largeconv_C::dwconv1d_grad_input";
  check_tensors(op, {{"grad_out", &grad_out}, {"grad_input", &grad_input}}, 3);
  check_dw1d_weight(op, weight, grad_out);
  Dw1dArgs a = dw1d_args(op, grad_input, weight.size(0), weight.size(2), grad_out, stride, padding, dilation);
  a.grad_out = grad_out.const_data_ptr();
  a.weight = weight.const_data_ptr();
  a.out = grad_input.data_ptr();
  run([&] { dwconv1d_grad_input_cuda(a); });
}

void dwconv1d_grad_weight(const at::Tensor& grad_out, const at::Tensor& x, int64_t stride, at::IntArrayRef padding,
                          int64_t dilation, const at::Tensor& grad_weight) {
  const char* op = "largeconv_C::dwconv1d_grad_weight";
  check_tensors(op, {{"grad_out", &grad_out}, {"x", &x}}, 3);
  check_dw1d_weight(op, grad_weight, x);
  Dw1dArgs a = dw1d_args(op, x, grad_weight.size(0), grad_weight.size(2), grad_out, stride, padding, dilation);
  a.grad_out = grad_out.const_data_ptr();
  a.x = x.const_data_ptr();
  a.out = grad_weight.data_ptr();
  run([&] {
    const size_t bytes = dwconv1d_grad_weight_workspace_bytes(a);
    at::Tensor workspace;  // fp32 partial sums per split; on x's device, so on the current stream
    if (bytes) {
      workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
      a.workspace = workspace.data_ptr();
    }
    dwconv1d_grad_weight_cuda(a);
  });
}

// ---- involution ----------------------------------------------------------------------------------------------
InvArgs inv_args(const char* op, const at::Tensor& x_like, const at::Tensor& y_like, const at::Tensor& w_like,
                 int64_t k, int64_t s, int64_t p, int64_t d, bool channels_last) {
  InvArgs a;
  a.dtype = dtype_of(x_like, op);
  a.device = x_like.device().index();
  a.b = x_like.size(0); a.c = x_like.size(1); a.h = x_like.size(2); a.w = x_like.size(3);
  a.ho = y_like.size(2); a.wo = y_like.size(3);
  a.k = to_int(k, op, "kernel_size", 1);
  a.s = to_int(s, op, "stride", 1);
  a.p = to_int(p, op, "padding", 0);
  a.d = to_int(d, op, "dilation", 1);
  a.channels_last = channels_last;
  const int64_t taps = k * k;
  CHECK_ARG(w_like.size(1) % taps == 0, op, ": weight has ", w_like.size(1), " channels, not a multiple of K*K");
  a.groups = to_int(w_like.size(1) / taps, op, "groups", 1);
  CHECK_ARG(a.c % a.groups == 0, op, ": ", a.groups, " groups do not divide ", a.c, " channels");
  CHECK_ARG(y_like.size(0) == a.b && y_like.size(1) == a.c && w_like.size(0) == a.b, op, ": batch or channel mismatch");
  CHECK_ARG(a.ho == conv_out(a.h, 2 * p, k, s, d) && a.wo == conv_out(a.w, 2 * p, k, s, d) &&
                w_like.size(2) == a.ho && w_like.size(3) == a.wo,
            op, ": sizes of x ", x_like.sizes(), ", output ", y_like.sizes(), " and weight ", w_like.sizes(),
            " do not match the arguments");
  return a;
}

void involution2d_forward(const at::Tensor& x, const at::Tensor& weight, int64_t kernel_size, int64_t stride,
                          int64_t padding, int64_t dilation, const at::Tensor& out) {
  const char* op = "largeconv_C::involution2d_forward";
  check_tensors(op, {{"x", &x}, {"weight", &weight}, {"out", &out}});
  InvArgs a = inv_args(op, x, out, weight, kernel_size, stride, padding, dilation,
                       channels_last_layout(op, {&out, &x, &weight}));
  a.x = x.const_data_ptr();
  a.weight = weight.const_data_ptr();
  a.out = out.data_ptr();
  run([&] { involution_forward_cuda(a); });
}

void involution2d_grad_input(const at::Tensor& grad_out, const at::Tensor& weight, int64_t kernel_size,
                             int64_t stride, int64_t padding, int64_t dilation, const at::Tensor& grad_input) {
  const char* op = "largeconv_C::involution2d_grad_input";
  check_tensors(op, {{"grad_out", &grad_out}, {"weight", &weight}, {"grad_input", &grad_input}});
  InvArgs a = inv_args(op, grad_input, grad_out, weight, kernel_size, stride, padding, dilation,
                       channels_last_layout(op, {&grad_input, &grad_out, &weight}));
  a.grad_out = grad_out.const_data_ptr();
  a.weight = weight.const_data_ptr();
  a.out = grad_input.data_ptr();
  run([&] { involution_grad_input_cuda(a); });
}

void involution2d_grad_weight(const at::Tensor& grad_out, const at::Tensor& x, int64_t kernel_size, int64_t stride,
                              int64_t padding, int64_t dilation, const at::Tensor& grad_weight) {
  const char* op = "largeconv_C::involution2d_grad_weight";
  check_tensors(op, {{"grad_out", &grad_out}, {"x", &x}, {"grad_weight", &grad_weight}});
  InvArgs a = inv_args(op, x, grad_out, grad_weight, kernel_size, stride, padding, dilation,
                       channels_last_layout(op, {&grad_weight, &grad_out, &x}));
  a.grad_out = grad_out.const_data_ptr();
  a.x = x.const_data_ptr();
  a.out = grad_weight.data_ptr();
  run([&] {
    const size_t bytes = involution_grad_weight_workspace_bytes(a);
    at::Tensor workspace;  // running fp32 sum over channel chunks (groups wider than one chunk)
    if (bytes) {
      workspace = at::empty({static_cast<int64_t>(bytes)}, x.options().dtype(at::kByte));
      a.workspace = workspace.data_ptr();
    }
    involution_grad_weight_cuda(a);
  });
}

}  // namespace
}  // namespace largeconv

TORCH_LIBRARY(largeconv_C, m) {
  m.def("dwconv2d_forward(Tensor x, Tensor weight, Tensor? bias, int[2] stride, int[4] padding, int[2] dilation, "
        "bool tf32, Tensor(a!) out) -> ()");
  m.def("dwconv2d_grad_input(Tensor grad_out, Tensor weight, int[2] stride, int[4] padding, int[2] dilation, "
        "bool tf32, Tensor(a!) grad_input) -> ()");
  m.def("dwconv2d_grad_weight(Tensor grad_out, Tensor x, int[2] stride, int[4] padding, int[2] dilation, "
        "bool tf32, Tensor(a!) grad_weight) -> ()");
  m.def("dwconv1d_forward(Tensor x, Tensor weight, Tensor? bias, int stride, int[2] padding, int dilation, "
        "Tensor(a!) out) -> ()");
  m.def("dwconv1d_grad_input(Tensor grad_out, Tensor weight, int stride, int[2] padding, int dilation, "
        "Tensor(a!) grad_input) -> ()");
  m.def("dwconv1d_grad_weight(Tensor grad_out, Tensor x, int stride, int[2] padding, int dilation, "
        "Tensor(a!) grad_weight) -> ()");
  m.def("involution2d_forward(Tensor x, Tensor weight, int kernel_size, int stride, int padding, int dilation, "
        "Tensor(a!) out) -> ()");
  m.def("involution2d_grad_input(Tensor grad_out, Tensor weight, int kernel_size, int stride, int padding, "
        "int dilation, Tensor(a!) grad_input) -> ()");
  m.def("involution2d_grad_weight(Tensor grad_out, Tensor x, int kernel_size, int stride, int padding, "
        "int dilation, Tensor(a!) grad_weight) -> ()");
}

TORCH_LIBRARY_IMPL(largeconv_C, CUDA, m) {
  m.impl("dwconv2d_forward", &largeconv::dwconv2d_forward);
  m.impl("dwconv2d_grad_input", &largeconv::dwconv2d_grad_input);
  m.impl("dwconv2d_grad_weight", &largeconv::dwconv2d_grad_weight);
  m.impl("dwconv1d_forward", &largeconv::dwconv1d_forward);
  m.impl("dwconv1d_grad_input", &largeconv::dwconv1d_grad_input);
  m.impl("dwconv1d_grad_weight", &largeconv::dwconv1d_grad_weight);
  m.impl("involution2d_forward", &largeconv::involution2d_forward);
  m.impl("involution2d_grad_input", &largeconv::involution2d_grad_input);
  m.impl("involution2d_grad_weight", &largeconv::involution2d_grad_weight);
}

// `import largeconv._C` loads the library above; the module itself is empty (the extension-cpp pattern).
PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr, nullptr, nullptr, nullptr, nullptr};
  return PyModule_Create(&module);
}
