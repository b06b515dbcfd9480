// Runs the real CUDA kernels of csrc/ on CPU threads (cuda_emu.h) against float64 references: every op, dtype,
// layout, and the plans' tiled, shrunk and fallback paths. Built and run by tests/test_cuda_build.py:
//
//   g++ -std=c++20 -O1 -g -fsanitize=address,undefined -DLARGECONV_EMULATE -Icsrc csrc/emu/emu_test.cpp -pthread
//   ./a.out [substring]      # only cases whose name contains it; exit status = number of failures
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "dwconv.cuh"
#include "dwconv1d.cuh"
#include "involution.cuh"

using namespace largeconv;

namespace {

struct EmuLaunch {
  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), unsigned grid, unsigned block, size_t smem, A... args) {
    emu::launch(kernel, grid, block, smem, args...);
  }
};

// Exactly sized heap buffer (AddressSanitizer sees one element past the end).
template <typename T>
struct Buffer {
  // offset: p starts that many elements into the allocation (a misaligned tensor, as a view can be)
  explicit Buffer(size_t n, size_t offset = 0)
      : n(n), base(static_cast<T*>(std::malloc((n + offset ? n + offset : 1) * sizeof(T)))), p(base + offset) {}
  ~Buffer() { std::free(base); }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  size_t n;
  T* base;
  T* p;
};

std::mt19937 rng(1234);

// Random values in [-1, 1), rounded to T; `vals` gets the rounded values as double (the reference's inputs).
template <typename T>
void fill_random(Buffer<T>& b, std::vector<double>& vals) {
  std::uniform_real_distribution<float> dist(-1.f, 1.f);
  vals.resize(b.n);
  for (size_t i = 0; i < b.n; ++i) {
    b.p[i] = from_float<T>(dist(rng));
    vals[i] = to_float(b.p[i]);
  }
}

// Non-finite cases: a NaN at 1/3 of b and an Inf of `sign` at 2/3; NaN/Inf must stay in the outputs that read them
// (F.conv2d's rule), which compare() checks by class.
template <typename T>
void plant_non_finite(Buffer<T>& b, std::vector<double>& vals, double sign) {
  const double planted[2] = {NAN, sign * INFINITY};
  for (int i = 0; i < 2; ++i) {
    const size_t at = b.n * (i + 1) / 3;
    b.p[at] = from_float<T>(static_cast<float>(planted[i]));
    vals[at] = planted[i];
  }
}

template <typename T>
void poison(Buffer<T>& b) {
  for (size_t i = 0; i < b.n; ++i) b.p[i] = from_float<T>(NAN);
}

template <typename T>
double unit_roundoff() {
  if constexpr (std::is_same_v<T, half_t>) return std::ldexp(1.0, -11);
  else if constexpr (std::is_same_v<T, bf16_t>) return std::ldexp(1.0, -8);
  else return std::ldexp(1.0, -24);
}

template <typename T>
double subnormal_spacing() {  // fp16's subnormals are coarse (2^-24); bf16 and fp32 reach 1e-38
  return std::is_same_v<T, half_t> ? std::ldexp(1.0, -24) : 0.0;
}

// out vs ref element by element: |out - ref| <= terms * sum|terms| + 1.01 * roundoff(T) * |ref| + half a
// subnormal step (+ tiny): fp32 accumulation, then one rounding to T.
// A non-finite reference element must be matched exactly (NaN by NaN, Inf by the same Inf); `alt`, where given, is a
// second reference the element may match instead (below: padding's zeros multiplied, as F.conv2d does on CPU).
// TF32 products (DwArgs::tf32): each operand rounded to 11 significant bits, so up to 2^-10 of each term.
constexpr double kTf32Terms = 1e-5 + 0x1p-10;
constexpr double kFp32Relative = 1e-5;  // the design's bound for fp32 without TF32, ||out - ref|| / ||ref||
template <typename T>
constexpr double fp32_relative() { return std::is_same_v<T, float> ? kFp32Relative : 0; }

// l2: where > 0, also ||out - ref|| / ||ref|| over the elements finite in both at most l2 (the design's fp32 bound,
// 1e-5: a bias that every element's own bound allows can still add up past it).
template <typename T>
bool compare(const char* what, const Buffer<T>& out, const std::vector<double>& ref, const std::vector<double>& mag,
             std::string* msg, const std::vector<double>* alt = nullptr, double terms = 1e-5, double l2 = 0) {
  size_t bad = 0, first_bad = 0;
  double diff2 = 0, ref2 = 0;
  for (size_t i = 0; i < out.n; ++i) {
    const double v = to_float(out.p[i]);
    if (std::isfinite(ref[i]) && std::isfinite(v)) {  // a non-finite v where ref is finite: the check below
      diff2 += (v - ref[i]) * (v - ref[i]);
      ref2 += ref[i] * ref[i];
    }
    const double tol =
        terms * mag[i] + 1.01 * unit_roundoff<T>() * std::fabs(ref[i]) + 0.51 * subnormal_spacing<T>() + 1e-30;
    auto matches = [&](double want) {
      return std::isfinite(want) ? std::fabs(v - want) <= tol : std::isnan(want) ? std::isnan(v) : v == want;
    };
    if (!matches(ref[i]) && !(alt && matches((*alt)[i]))) {  // a NaN where a finite value is due fails too
      if (!bad) first_bad = i;
      ++bad;
    }
  }
  if (bad) {
    char buf[256];
    std::snprintf(buf, sizeof buf, "%s: %zu/%zu elements wrong, first at %zu: got %g want %g; ", what, bad, out.n,
                  first_bad, static_cast<double>(to_float(out.p[first_bad])), ref[first_bad]);
    *msg += buf;
  }
  const double rel = ref2 > 0 ? std::sqrt(diff2 / ref2) : std::sqrt(diff2);
  if (l2 > 0 && !(rel <= l2)) {
    char buf[128];
    std::snprintf(buf, sizeof buf, "%s: relative error %.3g > %g; ", what, rel, l2);
    *msg += buf;
    return false;
  }
  return bad == 0;
}

size_t idx4(bool cl, int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t H, int64_t W) {
  return static_cast<size_t>(offset4(cl, n, c, h, w, C, H, W));
}

const char* dtype_name(DType d) { return d == DType::kFloat32 ? "f32" : d == DType::kFloat16 ? "f16" : "bf16"; }

// ---- depthwise conv ------------------------------------------------------------------------------------------
struct DwCase {
  int n, c, h, w, mult, kh, kw, sh, sw, dh, dw, pt, pb, pl, pr;
  bool roomy_only = false;  // big kernels: the fallback's one block per tap is slow to emulate
  bool non_finite = false;  // a NaN and an Inf planted in x and in grad_out
  bool exact_fp32_only = false;  // run as fp32 NCHW without TF32 only (3xTF32 on tensor cores; slow to emulate)
};

// tf32: fp32 may use TF32 (DwArgs::tf32), checked at kTf32Terms.
template <typename T>
bool run_dw(const DwCase& k, bool cl, const DeviceLimits& lim, bool tf32, std::string* msg) {
  DwArgs a;
  a.tf32 = tf32;
  const double terms = tf32 ? kTf32Terms : 1e-5;
  const double l2 = tf32 ? 0 : fp32_relative<T>();
  a.n = k.n; a.c = k.c; a.h = k.h; a.w = k.w; a.co = static_cast<int64_t>(k.c) * k.mult;
  a.kh = k.kh; a.kw = k.kw; a.sh = k.sh; a.sw = k.sw; a.dh = k.dh; a.dw = k.dw; a.pt = k.pt; a.pl = k.pl;
  a.ho = (k.h + k.pt + k.pb - k.dh * (k.kh - 1) - 1) / k.sh + 1;
  a.wo = (k.w + k.pl + k.pr - k.dw * (k.kw - 1) - 1) / k.sw + 1;
  a.channels_last = cl;
  a.dtype = std::is_same_v<T, float> ? DType::kFloat32 : std::is_same_v<T, half_t> ? DType::kFloat16 : DType::kBFloat16;
  const int64_t taps = static_cast<int64_t>(k.kh) * k.kw;
  Buffer<T> x(a.n * a.c * a.h * a.w), wt(a.co * taps), bias(a.co), g(a.n * a.co * a.ho * a.wo);
  std::vector<double> xv, wv, bv, gv;
  fill_random(x, xv);
  fill_random(wt, wv);
  fill_random(bias, bv);
  fill_random(g, gv);
  if (k.non_finite) {
    plant_non_finite(x, xv, 1.0);
    plant_non_finite(g, gv, -1.0);
  }

  // dw_padded: the weight gradient with padding's zeros multiplied in (0 * Inf = NaN), F.conv2d's way on CPU
  std::vector<double> y(g.n, 0), ymag(g.n, 0), dx(x.n, 0), dxmag(x.n, 0), dwr(wt.n, 0), dwmag(wt.n, 0);
  std::vector<double> dw_padded(wt.n, 0);
  for (int64_t n = 0; n < a.n; ++n)
    for (int64_t o = 0; o < a.co; ++o)
      for (int64_t i = 0; i < a.ho; ++i)
        for (int64_t j = 0; j < a.wo; ++j) {
          const size_t yi = idx4(cl, n, o, i, j, a.co, a.ho, a.wo);
          y[yi] = bv[o];
          ymag[yi] = std::fabs(bv[o]);
          for (int ka = 0; ka < k.kh; ++ka)
            for (int kb = 0; kb < k.kw; ++kb) {
              const int64_t hh = i * k.sh + ka * k.dh - k.pt, ww = j * k.sw + kb * k.dw - k.pl;
              const size_t wi = o * taps + ka * k.kw + kb;
              const bool inside = hh >= 0 && hh < a.h && ww >= 0 && ww < a.w;
              const size_t xi = inside ? idx4(cl, n, o / k.mult, hh, ww, a.c, a.h, a.w) : 0;
              dw_padded[wi] += gv[yi] * (inside ? xv[xi] : 0.0);
              if (!inside) {  // the unfold definition multiplies padding's zeros (an Inf weight gives NaN)
                y[yi] += wv[wi] * 0.0;
                continue;
              }
              y[yi] += wv[wi] * xv[xi];
              ymag[yi] += std::fabs(wv[wi] * xv[xi]);
              dx[xi] += gv[yi] * wv[wi];
              dxmag[xi] += std::fabs(gv[yi] * wv[wi]);
              dwr[wi] += gv[yi] * xv[xi];
              dwmag[wi] += std::fabs(gv[yi] * xv[xi]);
            }
        }

  EmuLaunch launch;
  bool ok = true;
  {
    Buffer<T> out(g.n);
    poison(out);
    DwArgs f = a;
    f.x = x.p; f.weight = wt.p; f.bias = bias.p; f.out = out.p;
    dw::run_forward<T>(launch, f, lim);
    ok &= compare("forward", out, y, ymag, msg, nullptr, terms, l2);
  }
  {
    Buffer<T> out(x.n);
    poison(out);
    DwArgs f = a;
    f.grad_out = g.p; f.weight = wt.p; f.out = out.p;
    dw::run_grad_input<T>(launch, f, lim);
    ok &= compare("grad_input", out, dx, dxmag, msg, nullptr, terms, l2);
  }
  {
    Buffer<T> out(wt.n);
    poison(out);
    DwArgs f = a;
    f.grad_out = g.p; f.x = x.p; f.out = out.p;
    const size_t bytes = dw::grad_weight_workspace_bytes(f, lim);
    Buffer<float> ws(bytes / sizeof(float));
    poison(ws);
    f.workspace = bytes ? ws.p : nullptr;
    dw::run_grad_weight<T>(launch, f, lim);
    // Weight-gradient sums are long: allow for fp32 accumulation over all of N*Ho*Wo.
    ok &= compare("grad_weight", out, dwr, dwmag, msg, &dw_padded, terms, l2);
  }
  return ok;
}

// ---- depthwise conv 1-D ----------------------------------------------------------------------------------------
struct Dw1Case {
  int n, c, l, mult, k, s, d, pl, pr;
  bool non_finite = false;  // a NaN and an Inf planted in x and in grad_out
};

template <typename T>
bool run_dw1(const Dw1Case& k, const DeviceLimits& lim, std::string* msg) {
  Dw1dArgs a;
  a.n = k.n; a.c = k.c; a.l = k.l; a.co = static_cast<int64_t>(k.c) * k.mult;
  a.k = k.k; a.s = k.s; a.d = k.d; a.left = k.pl;
  a.lo = (k.l + k.pl + k.pr - k.d * (k.k - 1) - 1) / k.s + 1;
  Buffer<T> x(a.n * a.c * a.l), wt(a.co * k.k), bias(a.co), g(a.n * a.co * a.lo);
  std::vector<double> xv, wv, bv, gv;
  fill_random(x, xv);
  fill_random(wt, wv);
  fill_random(bias, bv);
  fill_random(g, gv);
  if (k.non_finite) {
    plant_non_finite(x, xv, 1.0);
    plant_non_finite(g, gv, -1.0);
  }

  std::vector<double> y(g.n, 0), ymag(g.n, 0), dx(x.n, 0), dxmag(x.n, 0), dwr(wt.n, 0), dwmag(wt.n, 0);
  std::vector<double> dw_padded(wt.n, 0);  // as in run_dw
  for (int64_t n = 0; n < a.n; ++n)
    for (int64_t o = 0; o < a.co; ++o)
      for (int64_t j = 0; j < a.lo; ++j) {
        const size_t yi = (n * a.co + o) * a.lo + j;
        y[yi] = bv[o];
        ymag[yi] = std::fabs(bv[o]);
        for (int t = 0; t < k.k; ++t) {
          const int64_t pos = j * k.s + t * k.d - k.pl;
          const size_t wi = o * k.k + t;
          const bool inside = pos >= 0 && pos < a.l;
          const size_t xi = inside ? (n * a.c + o / k.mult) * a.l + pos : 0;
          dw_padded[wi] += gv[yi] * (inside ? xv[xi] : 0.0);
          if (!inside) continue;
          y[yi] += wv[wi] * xv[xi];
          ymag[yi] += std::fabs(wv[wi] * xv[xi]);
          dx[xi] += gv[yi] * wv[wi];
          dxmag[xi] += std::fabs(gv[yi] * wv[wi]);
          dwr[wi] += gv[yi] * xv[xi];
          dwmag[wi] += std::fabs(gv[yi] * xv[xi]);
        }
      }

  EmuLaunch launch;
  bool ok = true;
  {
    Buffer<T> out(g.n);
    poison(out);
    Dw1dArgs f = a;
    f.x = x.p; f.weight = wt.p; f.bias = bias.p; f.out = out.p;
    dw1d::run_forward<T>(launch, f, lim);
    ok &= compare("forward", out, y, ymag, msg, nullptr, 1e-5, fp32_relative<T>());
  }
  {
    Buffer<T> out(x.n);
    poison(out);
    Dw1dArgs f = a;
    f.grad_out = g.p; f.weight = wt.p; f.out = out.p;
    dw1d::run_grad_input<T>(launch, f, lim);
    ok &= compare("grad_input", out, dx, dxmag, msg, nullptr, 1e-5, fp32_relative<T>());
  }
  {
    Buffer<T> out(wt.n);
    poison(out);
    Dw1dArgs f = a;
    f.grad_out = g.p; f.x = x.p; f.out = out.p;
    const size_t bytes = dw1d::grad_weight_workspace_bytes(f, lim);
    Buffer<float> ws(bytes / sizeof(float));
    poison(ws);
    f.workspace = bytes ? ws.p : nullptr;
    dw1d::run_grad_weight<T>(launch, f, lim);
    ok &= compare("grad_weight", out, dwr, dwmag, msg, &dw_padded, 1e-5, fp32_relative<T>());
  }
  return ok;
}

// ---- involution --------------------------------------------------------------------------------------------
struct InvCase {
  int b, c, h, w, groups, k, s, p, d;
  bool non_finite = false;  // a NaN and an Inf planted in x and in grad_out
  int misaligned = 0;  // x and grad_out start this many elements into their allocations (16-bit, 1: 2-byte aligned)
};

template <typename T>
bool run_inv(const InvCase& q, bool cl, const DeviceLimits& lim, std::string* msg) {
  InvArgs a;
  a.b = q.b; a.c = q.c; a.h = q.h; a.w = q.w; a.groups = q.groups; a.k = q.k; a.s = q.s; a.p = q.p; a.d = q.d;
  a.ho = (q.h + 2 * q.p - q.d * (q.k - 1) - 1) / q.s + 1;
  a.wo = (q.w + 2 * q.p - q.d * (q.k - 1) - 1) / q.s + 1;
  a.channels_last = cl;
  const int64_t kk = static_cast<int64_t>(q.k) * q.k, wc = q.groups * kk, cg = q.c / q.groups;
  Buffer<T> x(a.b * a.c * a.h * a.w, q.misaligned), wt(a.b * wc * a.ho * a.wo);
  Buffer<T> g(a.b * a.c * a.ho * a.wo, q.misaligned);
  std::vector<double> xv, wv, gv;
  fill_random(x, xv);
  fill_random(wt, wv);
  fill_random(g, gv);
  if (q.non_finite) {
    plant_non_finite(x, xv, 1.0);
    plant_non_finite(g, gv, -1.0);
    // an Inf weight on tap (0, 0) of output (0, 0), group 0: over padding where p > 0 (unfold: 0 * Inf = NaN)
    const size_t at = idx4(cl, 0, 0, 0, 0, wc, a.ho, a.wo);
    wt.p[at] = from_float<T>(INFINITY);
    wv[at] = INFINITY;
  }

  std::vector<double> y(g.n, 0), ymag(g.n, 0), dx(x.n, 0), dxmag(x.n, 0), dwr(wt.n, 0), dwmag(wt.n, 0);
  std::vector<double> dw_padded(wt.n, 0);  // as in run_dw
  for (int64_t b = 0; b < a.b; ++b)
    for (int64_t c = 0; c < a.c; ++c)
      for (int64_t i = 0; i < a.ho; ++i)
        for (int64_t j = 0; j < a.wo; ++j) {
          const size_t yi = idx4(cl, b, c, i, j, a.c, a.ho, a.wo);
          for (int kh = 0; kh < q.k; ++kh)
            for (int kw = 0; kw < q.k; ++kw) {
              const int64_t hh = i * q.s + kh * q.d - q.p, ww = j * q.s + kw * q.d - q.p;
              const size_t wi = idx4(cl, b, (c / cg) * kk + kh * q.k + kw, i, j, wc, a.ho, a.wo);
              const bool inside = hh >= 0 && hh < a.h && ww >= 0 && ww < a.w;
              const size_t xi = inside ? idx4(cl, b, c, hh, ww, a.c, a.h, a.w) : 0;
              dw_padded[wi] += gv[yi] * (inside ? xv[xi] : 0.0);
              if (!inside) {  // the unfold definition multiplies padding's zeros (an Inf weight gives NaN)
                y[yi] += wv[wi] * 0.0;
                continue;
              }
              y[yi] += wv[wi] * xv[xi];
              ymag[yi] += std::fabs(wv[wi] * xv[xi]);
              dx[xi] += gv[yi] * wv[wi];
              dxmag[xi] += std::fabs(gv[yi] * wv[wi]);
              dwr[wi] += gv[yi] * xv[xi];
              dwmag[wi] += std::fabs(gv[yi] * xv[xi]);
            }
        }

  EmuLaunch launch;
  bool ok = true;
  {
    Buffer<T> out(g.n);
    poison(out);
    InvArgs f = a;
    f.x = x.p; f.weight = wt.p; f.out = out.p;
    inv::run_forward<T>(launch, f, lim);
    ok &= compare("forward", out, y, ymag, msg, nullptr, 1e-5, fp32_relative<T>());
  }
  {
    Buffer<T> out(x.n);
    poison(out);
    InvArgs f = a;
    f.grad_out = g.p; f.weight = wt.p; f.out = out.p;
    inv::run_grad_input<T>(launch, f, lim);
    ok &= compare("grad_input", out, dx, dxmag, msg, nullptr, 1e-5, fp32_relative<T>());
  }
  {
    Buffer<T> out(wt.n);
    poison(out);
    InvArgs f = a;
    f.grad_out = g.p; f.x = x.p; f.out = out.p;
    const size_t bytes = inv::grad_weight_workspace_bytes(f, lim);
    Buffer<float> ws(bytes / sizeof(float));
    poison(ws);
    f.workspace = bytes ? ws.p : nullptr;
    inv::run_grad_weight<T>(launch, f, lim);
    ok &= compare("grad_weight", out, dwr, dwmag, msg, &dw_padded, 1e-5, fp32_relative<T>());
  }
  return ok;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

template <typename F>
bool with_dtype(DType d, F&& f) {
  bool ok = false;
  dispatch_dtype(d, [&](auto tag) { ok = f(tag); });
  return ok;
}

}  // namespace

// run() with the redo count checked: a case without planted NaN/Inf must not take any kernel's non-finite path.
template <typename F>
bool without_redo(bool non_finite, std::string* msg, F run) {
  emu::g_redos = 0;
  const bool ok = run();
  if (non_finite || emu::g_redos == 0) return ok;
  *msg += " finite inputs took the non-finite path in " + std::to_string(emu::g_redos.load()) + " threads";
  return false;
}

int main(int argc, char** argv) {
  // The cases whose names contain every argument (none: all of them).
  const auto selected = [&](const char* name) {
    for (int i = 1; i < argc; ++i)
      if (!std::strstr(name, argv[i])) return false;
    return true;
  };
  // Limits: a roomy device with few SMs (plans shrink tiles to make blocks), a 12 KB device (plans shrink tiles
  // to fit), and a 1 KB device (nothing fits: the one-thread-per-output fallbacks).
  // The roomy device has tensor cores (the NCHW tensor-core correlations: fp16/bf16, fp32 as TF32 or 3xTF32), the
  // others not; "roomy-fma" (no tensor cores) runs the 16-bit involutions only, whose banded kernels take the
  // roomy device's RedNet shapes at stride 1 from the FMA kernels.
  const DeviceLimits roomy{227 * 1024, 4, true}, small{12 * 1024, 1}, none{1024, 1}, roomy_fma{227 * 1024, 4};
  struct Lim {
    const char* name;
    DeviceLimits lim;
  };
  const Lim limits[] = {{"roomy", roomy}, {"small", small}, {"naive", none}, {"roomy-fma", roomy_fma}};
  const DType dtypes[] = {DType::kFloat32, DType::kFloat16, DType::kBFloat16};

  //                 n  c   h    w  m  kh  kw sh sw dh dw  pt  pb  pl  pr
  const DwCase dw_cases[] = {
      {2, 3, 9, 11, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},        // 3x3 same
      {1, 4, 12, 10, 1, 7, 7, 1, 1, 1, 1, 3, 3, 3, 3},       // 7x7 same
      {2, 2, 5, 6, 1, 13, 13, 1, 1, 1, 1, 6, 6, 6, 6, true}, // K > H
      {1, 2, 16, 20, 1, 31, 31, 1, 1, 1, 1, 15, 15, 15, 15, true},  // 31x31
      {1, 3, 14, 9, 1, 17, 5, 1, 1, 1, 1, 8, 8, 2, 2, true}, // tall rectangle
      {1, 3, 9, 14, 1, 5, 17, 1, 1, 1, 1, 2, 2, 8, 8, true}, // wide rectangle
      {2, 2, 8, 9, 1, 4, 4, 1, 1, 1, 1, 1, 2, 1, 2},         // even kernel, asymmetric "same"
      {2, 3, 13, 15, 1, 5, 5, 2, 2, 1, 1, 2, 2, 2, 2},       // stride 2, odd sizes
      {1, 2, 12, 13, 1, 5, 5, 1, 1, 2, 2, 4, 4, 4, 4},       // dilation 2
      {2, 3, 7, 8, 2, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},         // multiplier 2
      {2, 3, 6, 7, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0},         // 1x1
      {1, 2, 11, 10, 2, 3, 5, 2, 3, 2, 1, 2, 1, 3, 0},       // everything at once
      {1, 2, 6, 9, 1, 3, 3, 1, 1, 1, 1, 5, 4, 0, 6},         // padding beyond the kernel's reach
      {1, 2, 5, 150, 1, 9, 9, 1, 1, 1, 1, 4, 4, 4, 4, true}, // wide map: several column tiles
      {1, 1, 70, 6, 1, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1},        // tall map: several row tiles
      {1, 1, 9, 10, 1, 63, 63, 1, 1, 1, 1, 31, 31, 31, 31, true},  // 63x63
      // 63x63 by 3xTF32: 40 kernel rows x 27 mma a row; one chain of them into each sum drifted past fp32's 1e-5
      {1, 2, 40, 40, 1, 63, 63, 1, 1, 1, 1, 31, 31, 31, 31, true, false, true},
      {1, 2, 10, 10, 1, 3, 5, 3, 1, 3, 1, 3, 2, 4, 4},       // stride 3 rows, dilation 3 rows, unit columns
      {1, 5, 6, 7, 3, 2, 3, 1, 2, 1, 2, 0, 1, 1, 1},         // multiplier 3, stride 2 columns
      {1, 3, 12, 10, 1, 7, 7, 1, 1, 1, 1, 3, 3, 3, 3, false, true},     // NaN / Inf in x and grad_out
      {2, 3, 13, 15, 2, 5, 5, 2, 2, 1, 1, 2, 2, 2, 2, false, true},     // the same, stride 2, multiplier 2
      {1, 2, 16, 20, 1, 31, 31, 1, 1, 1, 1, 15, 15, 15, 15, true, true},  // the same, 31x31
      // small planes (<= 64 pixels, fewer than the taps: corr_plane_kernel for forward and grad-input):
      // RepLKNet-31B's 7x7 stage, K13; NaN / Inf; multiplier 2 (grad-input: the other kernels); asymmetric
      // padding (6x5 outputs); 12 images, 10 a block. Roomy device only (elsewhere the plane kernel does not fit and
      // its one-thread-per-tap fallbacks took ~110 s per layout on the naive device: CI's long pole)
      {3, 4, 7, 7, 1, 13, 13, 1, 1, 1, 1, 6, 6, 6, 6, true},
      {3, 4, 7, 7, 1, 13, 13, 1, 1, 1, 1, 6, 6, 6, 6, true, true},
      {2, 3, 8, 8, 2, 9, 9, 1, 1, 1, 1, 4, 4, 4, 4, true},
      {2, 2, 6, 7, 1, 9, 11, 1, 1, 1, 1, 2, 6, 8, 0, true},
      {12, 2, 5, 5, 1, 15, 15, 1, 1, 1, 1, 7, 7, 7, 7, true},
      // NCHW at unit stride with 13 <= kw <= 65 run the tensor-core correlations (roomy device): several row and
      // column tiles, chunks of 8 columns 3..9, a multiplier (forward only: grad-input then sums 2 planes), "valid"
      {1, 2, 70, 100, 1, 15, 15, 1, 1, 1, 1, 7, 7, 7, 7, true},     // 2 x 2 tiles
      {1, 1, 20, 70, 1, 3, 65, 1, 1, 1, 1, 1, 1, 32, 32, true},     // kw 65: 9 chunks, wide tiles
      {1, 2, 12, 40, 2, 13, 41, 1, 1, 1, 1, 6, 6, 20, 20, true},    // kw 41, multiplier 2
      {1, 2, 66, 67, 1, 13, 13, 1, 1, 1, 1, 0, 0, 0, 0, true},      // "valid", a partial second tile
      {1, 2, 20, 60, 1, 5, 51, 1, 1, 1, 1, 2, 2, 25, 25, true},     // SLaK's 5x51
      {1, 1, 18, 30, 1, 5, 25, 1, 1, 1, 1, 2, 2, 12, 12, true},     // kw 25: 4 chunks (no m16n8k8)
      {1, 2, 14, 28, 1, 27, 27, 1, 1, 1, 1, 13, 13, 13, 13, true},  // K27: edges, the tile 3 columns early
      // no right padding: the forward's last chunks hold input (no edges), grad-input's are padding (edges)
      {1, 2, 10, 30, 1, 5, 15, 1, 1, 1, 1, 2, 2, 8, 0, true},
      {1, 2, 70, 100, 1, 15, 15, 1, 1, 1, 1, 7, 7, 7, 7, true, true},  // NaN / Inf, 2 x 2 tiles
      // warps skip the kernel rows that meet only padding: whole warps of it (rows 0-15), asymmetric reaches
      {1, 2, 20, 30, 1, 15, 15, 1, 1, 1, 1, 30, 24, 7, 7, true},
      {1, 2, 40, 33, 1, 17, 13, 1, 1, 1, 1, 2, 19, 6, 6, true},
      {1, 2, 40, 33, 1, 17, 13, 1, 1, 1, 1, 2, 19, 6, 6, true, true},  // the same, NaN / Inf
      // out_h = 8 mod 16 from 56 rows: row tiles over a channel's images stacked (a tile in two planes), three
      // images (the last tile in one), 72 rows with asymmetric reaches (the halves' kernel rows differ), a
      // multiplier, NaN / Inf
      {3, 2, 56, 16, 1, 13, 15, 1, 1, 1, 1, 6, 6, 7, 7, true},
      {2, 1, 72, 14, 1, 17, 13, 1, 1, 1, 1, 2, 14, 6, 6, true},
      {2, 2, 56, 14, 2, 13, 13, 1, 1, 1, 1, 6, 6, 6, 6, true},
      {3, 2, 56, 16, 1, 13, 15, 1, 1, 1, 1, 6, 6, 7, 7, true, true},
  };
  //                   b  c   h   w  G  k  s  p  d
  const InvCase inv_cases[] = {
      {2, 8, 9, 9, 2, 3, 1, 1, 1},      // 4 channels per group
      {1, 32, 12, 11, 2, 7, 1, 3, 1},   // RedNet-like: 16 channels per group, K=7
      {1, 40, 8, 9, 2, 5, 1, 2, 1},     // 20 channels per group: two chunks (grad-weight running sum)
      {1, 64, 9, 10, 2, 7, 1, 3, 1},    // K=7, 32 channels per group: two whole chunks (the run-time kernels)
      {2, 16, 13, 11, 1, 7, 2, 3, 1},   // stride 2, odd sizes
      {1, 8, 10, 10, 4, 3, 1, 2, 2},    // dilation 2
      {1, 4, 10, 9, 2, 15, 1, 7, 1},    // K=15 > H
      {1, 6, 7, 8, 3, 3, 1, 0, 1},      // no padding
      {1, 6, 14, 13, 2, 5, 3, 1, 2},    // stride 3, dilation 2
      {1, 3, 6, 7, 3, 3, 1, 1, 1},      // one channel per group
      {1, 16, 5, 100, 1, 3, 1, 1, 1},   // wide map: several column tiles
      {1, 34, 9, 8, 1, 3, 2, 1, 1},     // three chunks, stride 2
      {1, 32, 12, 11, 2, 7, 1, 3, 1, true},  // NaN / Inf in x and grad_out
      {2, 16, 13, 11, 1, 7, 2, 3, 1, true},  // the same, stride 2
      // even widths: 16-bit NCHW tiles stage by column pairs (odd first column: K = 7; even: K = 5)
      {1, 32, 12, 12, 2, 7, 1, 3, 1, true},
      {2, 16, 14, 12, 1, 7, 2, 3, 1, true},
      {1, 40, 8, 10, 2, 5, 1, 2, 1},
      // strided RedNet grad-input (each pixel its own taps): stride 3; stride 2 with padding 2
      {1, 16, 13, 14, 1, 7, 3, 3, 1},
      {1, 32, 12, 12, 2, 7, 2, 2, 1},
      {1, 32, 12, 12, 2, 7, 1, 3, 1, false, 1},  // misaligned 16-bit rows (banded: 2-byte copies)
      // strided grad-input over two column tiles, a NaN / Inf in grad_out at the second tile's first staged column:
      // a pixel's taps off the kernel (RedNet) or of the other phase (K = 5) must add nothing, not 0 x Inf
      {1, 16, 9, 42, 1, 7, 2, 3, 1, true},
      {1, 8, 9, 45, 2, 5, 2, 2, 1, true},
      // RedNet's stride-2 grad-input, two pixels a thread (a phase each; even padding: the phases swap pixels)
      {1, 16, 9, 42, 1, 7, 2, 2, 1, true},
      {2, 16, 10, 21, 1, 7, 2, 4, 1},
      {1, 16, 11, 37, 1, 7, 2, 1, 1, true},  // padding 1: maps shrink, an odd width (the last pair's second pixel out)
      {1, 16, 8, 20, 1, 7, 2, 0, 1},          // no padding
      // stride 3 (each pixel its own taps, some past the kernel) over two column tiles, the planted NaN at the
      // second tile's first staged column (grad_out row 1, column 20)
      {1, 16, 13, 90, 1, 7, 3, 3, 1, true},
      // fp16/bf16 NCHW RedNet shapes at stride 1 (roomy device): the banded tensor-core kernels, copies of 4 values
      // (widths a multiple of 4, x 8-byte aligned); row tiles and partial tiles, two column tiles, padding 7 (reach
      // past the kernel), NaN / Inf; copies of 2 (x 4-byte aligned; padding 5 at 12 columns: 3 lead columns for
      // copies of 4, past a product's reach; widths of 2 mod 4 with padding 2 / 4 / 0)
      {2, 32, 20, 20, 2, 7, 1, 3, 1},
      {1, 16, 6, 80, 1, 7, 1, 3, 1},
      {1, 16, 8, 12, 1, 7, 1, 7, 1},
      {1, 16, 8, 12, 1, 7, 1, 5, 1},
      {2, 32, 20, 20, 2, 7, 1, 3, 1, true},
      {1, 32, 12, 12, 2, 7, 1, 3, 1, false, 2},
      {1, 32, 10, 14, 2, 7, 1, 2, 1},
      {1, 16, 9, 10, 1, 7, 1, 4, 1},
      {1, 16, 12, 16, 1, 7, 1, 0, 1},
      // RedNet-50's 14 and 7 columns (copies of 2 and 1; one n-tile of 8 pixels at 7), NaN / Inf; odd widths with
      // padding 5 (maps grow by 4) and 1 (shrink by 4), several column tiles
      {2, 32, 14, 14, 2, 7, 1, 3, 1},
      {2, 32, 7, 7, 2, 7, 1, 3, 1},
      {1, 16, 14, 14, 1, 7, 1, 3, 1, true},
      {2, 16, 7, 7, 1, 7, 1, 3, 1, true},
      {1, 16, 9, 13, 1, 7, 1, 5, 1},
      {1, 16, 11, 61, 1, 7, 1, 1, 1},
  };

  // 1-D: K = 3, 7, 15, 31 have compile-time kernels, the others the run-time-K one; stride / dilation != 1 the
  // general one; stride-2 grad-input the gather. Its limits: roomy, a 1 KB device (tiles shrink to a few threads,
  // long rows need several), and no shared memory at all (the fallback kernels).
  //                     n  c     l  m   k  s  d  pl  pr
  const Dw1Case dw1_cases[] = {
      {2, 3, 40, 1, 3, 1, 1, 1, 1},        // K=3 same
      {2, 3, 100, 1, 31, 1, 1, 15, 15},    // K=31 same (Conformer)
      {1, 2, 150, 1, 65, 1, 1, 32, 32},    // K=65: run-time K, three steps, the last masked
      {2, 3, 57, 1, 31, 2, 1, 15, 15},     // stride 2, odd length
      {1, 3, 77, 1, 31, 1, 2, 30, 30},     // dilation 2
      {2, 3, 50, 2, 31, 1, 1, 15, 15},     // multiplier 2
      {1, 2, 45, 1, 31, 1, 1, 20, 10},     // asymmetric padding
      {2, 2, 10, 1, 31, 1, 1, 15, 15},     // L < K
      {1, 2, 4, 1, 7, 1, 1, 3, 3},         // tiny L < K = 7
      {1, 2, 1700, 1, 31, 1, 1, 15, 15},   // long row: two tiles
      {2, 3, 96, 1, 31, 1, 1, 15, 15},     // rows of whole 16-byte vectors in every dtype: vector staging
      {1, 2, 64, 2, 31, 1, 1, 20, 10},     // the same, multiplier 2, asymmetric padding
      {1, 3, 61, 2, 15, 2, 2, 7, 13},      // stride 2, dilation 2, multiplier 2, asymmetric
      {2, 4, 33, 1, 15, 1, 1, 7, 7},       // K=15, L not a multiple of the tile
      {1, 2, 20, 1, 4, 1, 1, 1, 2},        // even kernel, asymmetric "same" (run-time K)
      {1, 2, 30, 3, 5, 3, 1, 0, 4},        // stride 3, multiplier 3
      {1, 2, 25, 1, 7, 1, 1, 0, 0},        // "valid"
      {1, 2, 9, 1, 3, 1, 1, 5, 6},         // padding beyond the kernel's reach
      {1, 2, 40, 1, 31, 2, 2, 31, 30},     // stride 2, dilation 2: every tap phase of the gather
      {1, 2, 33, 2, 33, 1, 1, 16, 16},     // K=33: a full 32-tap step, then one tap
      {2, 3, 100, 1, 31, 1, 1, 15, 15, true},  // NaN / Inf in x and grad_out
      {1, 3, 61, 2, 15, 2, 2, 7, 13, true},    // the same, stride 2, dilation 2, multiplier 2
  };
  const Lim limits1d[] = {{"roomy", roomy}, {"small", {1024, 1}}, {"naive", {0, 1}}};

  int failures = 0, run = 0;
  for (const Lim& l : limits1d) {
    for (DType d : dtypes) {
      if (d != DType::kFloat32 && std::strcmp(l.name, "roomy") != 0) continue;  // paths do not depend on the dtype
      for (size_t i = 0; i < sizeof(dw1_cases) / sizeof(dw1_cases[0]); ++i) {
        const Dw1Case& k = dw1_cases[i];
        char name[256];
        std::snprintf(name, sizeof name, "dwconv1d[%zu] %s %s n%d c%d l%d m%d k%d s%d d%d p%d,%d%s", i, l.name,
                      dtype_name(d), k.n, k.c, k.l, k.mult, k.k, k.s, k.d, k.pl, k.pr, k.non_finite ? " nan/inf" : "");
        if (!selected(name)) continue;
        std::string msg;
        const auto start = std::chrono::steady_clock::now();
        const bool ok = without_redo(k.non_finite, &msg, [&] {
            return with_dtype(d, [&](auto tag) { return run_dw1<decltype(tag)>(k, l.lim, &msg); });
          });
        ++run;
        if (!ok) ++failures;
        std::printf("%s %s (%.1fs) %s\n", ok ? "ok  " : "FAIL", name, seconds_since(start), msg.c_str());
        std::fflush(stdout);
      }
    }
  }
  for (const Lim& l : limits) {
    for (DType d : dtypes) {
      for (int cl = 0; cl < 2; ++cl) {
        // The small and naive devices run fp32 only (their paths do not depend on the dtype), roomy-fma 16-bit
        // involutions only.
        const bool fma_only = std::strcmp(l.name, "roomy-fma") == 0;
        if (d != DType::kFloat32 && std::strcmp(l.name, "roomy") != 0 && !fma_only) continue;
        if (fma_only && d == DType::kFloat32) continue;
        for (size_t i = 0; !fma_only && i < 2 * sizeof(dw_cases) / sizeof(dw_cases[0]); ++i) {
          // each case, then (tf32) the fp32 ones wide enough for the tensor-core kernels again with TF32 allowed
          const DwCase& k = dw_cases[i % (sizeof(dw_cases) / sizeof(dw_cases[0]))];
          const bool tf32 = i >= sizeof(dw_cases) / sizeof(dw_cases[0]);
          if (k.roomy_only && std::strcmp(l.name, "roomy") != 0) continue;
          if (tf32 && (d != DType::kFloat32 || k.kw < dw::kMmaMinKw)) continue;
          if (k.exact_fp32_only && (d != DType::kFloat32 || cl || tf32)) continue;
          char name[256];
          std::snprintf(name, sizeof name, "dwconv[%zu] %s %s %s n%d c%d %dx%d m%d k%dx%d s%d,%d d%d,%d p%d,%d,%d,%d%s",
                        i, l.name, tf32 ? "tf32" : dtype_name(d), cl ? "NHWC" : "NCHW", k.n, k.c, k.h, k.w, k.mult,
                        k.kh, k.kw, k.sh, k.sw, k.dh, k.dw, k.pt, k.pb, k.pl, k.pr, k.non_finite ? " nan/inf" : "");
          if (!selected(name)) continue;
          std::string msg;
          const auto start = std::chrono::steady_clock::now();
          const bool ok = without_redo(k.non_finite, &msg, [&] {
            return with_dtype(d, [&](auto tag) { return run_dw<decltype(tag)>(k, cl, l.lim, tf32, &msg); });
          });
          ++run;
          if (!ok) ++failures;
          std::printf("%s %s (%.1fs) %s\n", ok ? "ok  " : "FAIL", name, seconds_since(start), msg.c_str());
          std::fflush(stdout);
        }
        for (size_t i = 0; i < sizeof(inv_cases) / sizeof(inv_cases[0]); ++i) {
          const InvCase& q = inv_cases[i];
          char name[256];
          std::snprintf(name, sizeof name, "involution[%zu] %s %s %s b%d c%d %dx%d G%d k%d s%d p%d d%d%s%s", i,
                        l.name, dtype_name(d), cl ? "NHWC" : "NCHW", q.b, q.c, q.h, q.w, q.groups, q.k, q.s, q.p, q.d,
                        q.non_finite ? " nan/inf" : "",
                        q.misaligned == 1 ? " misaligned" : q.misaligned ? " 4-aligned" : "");
          if (!selected(name)) continue;
          std::string msg;
          const auto start = std::chrono::steady_clock::now();
          const bool ok = without_redo(q.non_finite, &msg, [&] {
            return with_dtype(d, [&](auto tag) { return run_inv<decltype(tag)>(q, cl, l.lim, &msg); });
          });
          ++run;
          if (!ok) ++failures;
          std::printf("%s %s (%.1fs) %s\n", ok ? "ok  " : "FAIL", name, seconds_since(start), msg.c_str());
          std::fflush(stdout);
        }
      }
    }
  }
  {
    // The tiled involution kernels take weight offsets within an image in 32 bits: an image of 2^31 weights or more
    // plans no tile (the one-thread-per-output kernels run), one just under does (no tensor is allocated here).
    const char* name = "involution[plan] images of >= 2^31 weights take the naive kernels";
    if (selected(name)) {
      InvArgs a;
      a.b = 1; a.c = 64; a.groups = 4; a.k = 7; a.s = 1; a.p = 3; a.d = 1;
      a.h = a.ho = 1; a.w = a.wo = (int64_t{1} << 31) / (4 * 49) + 1;  // G*K*K*ho*wo just past 2^31
      inv::InvTile t;
      const bool past = inv::plan(inv::make_inv(a), inv::Dir::kForward, roomy, 4, &t);
      a.w = a.wo = a.wo - 2;
      const bool under = inv::plan(inv::make_inv(a), inv::Dir::kForward, roomy, 4, &t);
      const bool ok = !past && under;
      ++run;
      if (!ok) ++failures;
      std::printf("%s %s (planned past: %d, under: %d)\n", ok ? "ok  " : "FAIL", name, past, under);
    }
  }
  {
    // A 16-bit tile stages raw values: half an fp32 tile's shared memory, so it can plan where fp32's does not. Its
    // grad-weight over two channel chunks then needs the workspace, which grad_weight_workspace_bytes must count.
    const char* name = "involution[plan] a 16-bit grad-weight tile that fp32's does not fit gets its workspace";
    if (selected(name)) {
      InvArgs a;
      a.b = 1; a.c = 32; a.groups = 1; a.k = 15; a.s = 1; a.p = 7; a.d = 1;
      a.h = a.ho = a.w = a.wo = 20;
      inv::InvTile t16, t32;
      const bool fits16 = inv::plan(inv::make_inv(a), inv::Dir::kGradWeight, small, 2, &t16);
      const bool fits32 = inv::plan(inv::make_inv(a), inv::Dir::kGradWeight, small, 4, &t32);
      const size_t bytes = inv::grad_weight_workspace_bytes(a, small);
      const bool ok = fits16 && !fits32 && t16.chunks == 2 && bytes > 0;
      ++run;
      if (!ok) ++failures;
      std::printf("%s %s (16-bit: %d, fp32: %d, workspace %zu B)\n", ok ? "ok  " : "FAIL", name, fits16, fits32, bytes);
    }
  }
  {
    // The tensor-core grad-weights' splits fill the waves of the blocks their __launch_bounds__ promise an SM, on an
    // H100 (132 SMs): RepLKNet-31B's stages (batch 64, "same"), >= 75% of the slots of the waves they take (a fixed
    // four a SM ran TF32's first stage in 1.2 waves: 61%; 1024 channels of one split take 78% of two waves).
    // (named into test_cuda_build.py's "roomy f32" group)
    const char* name = "dwconv[plan] roomy f32 tensor-core grad-weights (bf16, TF32, 3xTF32) fill their waves";
    if (selected(name)) {
      const DeviceLimits h100{227 * 1024, 132, true};
      std::string msg;
      bool ok = true;
      const int stages[][3] = {{128, 56, 31}, {256, 28, 29}, {512, 14, 27}, {1024, 7, 13}};
      for (const auto& st : stages)
        for (const DType d : {DType::kBFloat16, DType::kFloat32}) {
          for (const bool tf32 : {false, true}) {
            if (d != DType::kFloat32 && tf32) continue;
            DwArgs a;
            a.dtype = d, a.tf32 = tf32, a.n = 64, a.c = a.co = st[0], a.h = a.w = a.ho = a.wo = st[1];
            a.kh = a.kw = st[2], a.pt = a.pl = st[2] / 2;
            dw::MmaWGradTile t;
            const dw::WGrad p = dw::make_wgrad(a);
            if (!(d == DType::kFloat32 ? dw::plan_wgrad_tf32(p, h100, &t) : dw::plan_wgrad_mma(p, h100, &t))) continue;
            const int kb = d == DType::kFloat32 ? t.tw / 8 + 1 : 0;
            const int64_t per_sm = d == DType::kFloat32 ? dw::wgrad_tf32_blocks_per_sm(!tf32, kb)
                                                         : dw::kWgMmaBlocksPerSm;
            const int64_t by_smem = (h100.max_smem_optin + 1024) / (static_cast<int64_t>(t.smem) + 1024);
            const int64_t slots = (by_smem < per_sm ? by_smem : per_sm) * h100.num_sms;
            const int64_t blocks = t.blocks(a.co), waves = (blocks + slots - 1) / slots;
            const bool fills = 4 * blocks >= 3 * waves * slots;
            ok &= fills;
            msg += " " + std::to_string(st[0]) + "ch" + (d == DType::kFloat32 ? tf32 ? "-tf32" : "-3xtf32" : "-bf16") +
                   ":" + std::to_string(blocks) + "/" + std::to_string(slots) + (fills ? "" : "(!)");
          }
        }
      ++run;
      if (!ok) ++failures;
      std::printf("%s %s%s\n", ok ? "ok  " : "FAIL", name, msg.c_str());
    }
  }
  {
    // corr_mma_kernel's edges (plan_corr_mma): blocks spanning the map's width leave out the chunks of padding at
    // both ends where the tile can start at a chunk boundary; RepLKNet-31B's kernels, "same", aligned even widths.
    const char* name = "dwconv[plan] roomy f32 tensor-core correlation edges (bf16 plans of RepLKNet-31B shapes)";
    if (selected(name)) {
      const DeviceLimits h100{227 * 1024, 132, true};
      struct Want {
        int w, k, pad;  // map width, kernel, "same" padding or -1 for "valid"
        bool edges;
        int lead;
      };
      const Want wants[] = {{56, 31, 15, true, 1}, {28, 29, 14, true, 2}, {14, 27, 13, true, 3},
                            {56, 13, 6, true, 2}, {56, 13, 0, false, 0}, {100, 15, 7, false, 1}};
      std::string msg;
      bool ok = true;
      for (const Want& want : wants) {
        DwArgs a;
        a.dtype = DType::kBFloat16, a.n = 2, a.c = a.co = 4, a.h = 20, a.w = want.w, a.kh = a.kw = want.k;
        a.pt = a.pl = want.pad, a.ho = a.h + 2 * want.pad - want.k + 1, a.wo = a.w + 2 * want.pad - want.k + 1;
        dw::MmaTile t;
        const bool planned = dw::plan_corr_mma<bf16_t>(dw::forward_corr(a), h100, &t);
        const bool good = planned && t.edges == want.edges && t.lead == want.lead;
        ok &= good;
        msg += " w" + std::to_string(want.w) + "k" + std::to_string(want.k) + ":" + (t.edges ? "edges" : "plain") +
               ",lead" + std::to_string(t.lead) + (good ? "" : "(!)");
      }
      ++run;
      if (!ok) ++failures;
      std::printf("%s %s%s\n", ok ? "ok  " : "FAIL", name, msg.c_str());
    }
  }
  std::printf("%d/%d cases passed, %llu kernel launches\n", run - failures, run,
              static_cast<unsigned long long>(emu::g_launches));
  return failures > 255 ? 255 : failures;
}
