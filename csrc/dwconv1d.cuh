// Depthwise 1-D convolution kernels (forward, grad-input, grad-weight) and their launch plans: x (N, C, L)
// contiguous, weight (C*m, 1, K), output channel o reads input channel o / m.
//
// Forward and the stride-1 grad-input are one "correlation" kernel (grad-input is the forward of grad_out with the
// flipped filter). A block owns bz rows (one row = one (image, output channel)) x one tile of bx * kRB outputs: it
// stages each row's input strip with its halo (tile * s + d * (K - 1)) and the row's K taps in shared memory, in
// fp32, once; every thread computes kRB = 12 consecutive outputs of one row. No 2-D tile: a row is all a block
// reads. At unit stride and dilation the thread keeps a register window of kRB + taps - 1 inputs (16-byte loads)
// and takes the taps from broadcast 16-byte loads: at K = 31 (specialised at compile time, like 3, 7, 15) that is
// 11 + 8 shared-memory loads for 372 FMAs. kRB = 12 rather than 8: thread starts 48 bytes apart put the 8 threads
// of a quarter-warp in 8 different 16-byte bank groups (starts 32 bytes apart would be 2-way conflicts).
// Results go back through shared memory, so the global stores are coalesced.
//
// Grad-input at stride > 1 is a gather, one thread per input element, that visits only the taps that hit an output
// (k with (i + left - k d) divisible by s, every s / gcd(s, d)-th tap): correct for every size, not tuned.
//
// The weight gradient is a reduction over N x Lo per tap. A block owns one channel and a contiguous share ("split")
// of the (image, tile) items; threads own kWRB = 8 neighbouring taps and slide over kCols output columns per step
// (register window, 16-byte loads), accumulating in registers, then in shared memory. Splits write fp32 partial sums
// that a second kernel adds in a fixed order: deterministic, no atomics.
//
// Tiles that cannot fit in shared memory (huge dilations) use one-thread-per-output (forward, grad-input) and
// one-block-per-tap (grad-weight) kernels. Row offsets are 64-bit; positions within a row are ints (L < 2^31).
#pragma once

#include "common.cuh"

namespace largeconv {
namespace dw1d {

constexpr int kThreads = 256;  // threads per block (at most)
constexpr int kMaxBx = 128;    // threads along one row: longer rows are cut into tiles
constexpr int kRB = 12;        // outputs per thread (a multiple of 4, not of 8: see above)
constexpr int kTaps = 32;      // taps per unrolled step when K is only known at run time
constexpr int kWRB = 8;        // grad-weight: taps per thread
constexpr int kCols = 8;       // grad-weight: output columns per unrolled step
constexpr int kMaxTile = 1024; // grad-weight: output columns per item
constexpr size_t kSoftSmem = 64 * 1024;  // plans shrink tiles above this to keep several blocks per SM

LC_D void store4(float* p, float a, float b, float c, float d) {
#ifdef LARGECONV_EMULATE
  emu::check_aligned(p, 16);
#endif
  float4 v;
  v.x = a; v.y = b; v.z = c; v.w = d;
  *reinterpret_cast<float4*>(p) = v;
}

// dst[e] = src[col0 + e] as float for 0 <= e < count; zero where col0 + e is outside [0, len), or everywhere when
// !ok. Threads tid, tid + step, ... share the row. When the row is whole 16-byte vectors (len a multiple of
// 16 / sizeof(T), src 16-byte aligned), each load reads an aligned vector of 8 bf16/half or 4 floats, two loads at
// a time: 32 bytes in flight per thread where the scalar loop (4 loads unrolled) had 8 in bf16 and 16 in fp32. (On
// the H100, 2026-11-27, the bf16 forward ran slower than fp32: latency-bound staging.) The vectors straddling the
// strip's ends write only their part inside it.
template <typename T>
LC_D void stage_strip(float* dst, const T* src, int64_t col0, int count, int64_t len, bool ok, int tid, int step) {
  constexpr int kVec = 16 / static_cast<int>(sizeof(T)), kBatch = 2;  // elements per load, loads per batch
  struct alignas(16) Vec { T v[kVec]; };
  if (ok && len % kVec == 0 && reinterpret_cast<uintptr_t>(src) % 16 == 0) {
    const int64_t first = floor_div(col0, kVec), last = floor_div(col0 + count - 1, kVec);  // vectors
    for (int64_t c0 = first + tid; c0 <= last; c0 += kBatch * step) {
      Vec w[kBatch];  // all loads of a batch are issued before the first store waits on them
      bool inside[kBatch];
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t c = c0 + b * step;
        inside[b] = c <= last && c >= 0 && c * kVec < len;  // a vector is all inside or all outside the row
        if (inside[b]) w[b] = reinterpret_cast<const Vec*>(src)[c];
      }
#pragma unroll
      for (int b = 0; b < kBatch; ++b) {
        const int64_t g0 = (c0 + b * step) * kVec;
#pragma unroll
        for (int u = 0; u < kVec; ++u) {
          const int64_t e = g0 + u - col0;
          if (e >= 0 && e < count) dst[e] = inside[b] ? to_float(w[b].v[u]) : 0.f;
        }
      }
    }
    return;
  }
#pragma unroll 4
  for (int e = tid; e < count; e += step) {
    const int64_t gc = col0 + e;
    dst[e] = ok && gc >= 0 && gc < len ? to_float(src[gc]) : 0.f;
  }
}

// ================================================================================================================
// Correlation: out[row, j] = sum_{r < reps} sum_t f_q[t] * in[in_row(row, r), j*s + t*d - off],
//   row = n * out_c + o, q = o * reps + r, in_row = n * in_c + q / in_div, f_q = weight row q (reversed when flip);
//   `in` is zero outside [0, in_l).
//   forward:           in = x,        reps = 1,    in_div = m, off = left
//   grad-input (s=1):  in = grad_out, reps = m,    in_div = 1, off = d*(K-1) - left, flip
// ================================================================================================================
struct Corr {
  const void* in;
  const void* weight;
  const void* bias;  // may be null
  void* out;
  int64_t rows, in_c, out_c;
  int in_l, out_l, k, s, d, off, reps, in_div;
  bool flip;
};

struct CorrTile {
  int bx, bz;      // threads per row, rows per block
  int iw, rs, fw;  // staged input columns, row stride and filter stride in shared memory (floats)
  int64_t tiles, row_groups;
  size_t smem;  // bytes: bz input rows, then bz filters

  LC_HD int threads() const { return bx * bz; }
  LC_HD int64_t blocks() const { return tiles * row_groups; }
};

// kMode: -1 any stride / dilation; 0 unit stride and dilation, K at run time; > 0 unit, K == kMode.
constexpr int kGeneral = -1;

// acc[r] += sum_{t < taps} f[t] * x[t + r] for up to kMax taps from one register window. kMasked: only the first
// `taps` (the last step of a run-time K; the rest of the window belongs to other outputs or is not staged).
template <int kMax, bool kMasked>
LC_D void unit_step(const float* xr, const float* fr, int taps, float (&acc)[kRB]) {
  constexpr int kWin = (kRB + kMax - 1 + 3) / 4 * 4;  // whole 16-byte loads; the last values may be unused
  float xv[kWin];
#pragma unroll
  for (int q = 0; q < kWin / 4; ++q) {
    const float4 v = load4(xr + 4 * q);
    xv[4 * q] = v.x; xv[4 * q + 1] = v.y; xv[4 * q + 2] = v.z; xv[4 * q + 3] = v.w;
  }
#pragma unroll
  for (int u4 = 0; u4 < (kMax + 3) / 4; ++u4) {
    const float4 v = load4(fr + 4 * u4);
    const float f[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int uu = 0; uu < 4; ++uu) {
      const int t = 4 * u4 + uu;
      if (t >= kMax || (kMasked && t >= taps)) break;
#pragma unroll
      for (int r = 0; r < kRB; ++r) acc[r] = fmaf(f[uu], xv[t + r], acc[r]);
    }
  }
}

template <typename T, int kMode>
__global__ void __launch_bounds__(kThreads) corr_tile_kernel(Corr p, CorrTile t) {
  const T* __restrict__ in = static_cast<const T*>(p.in);
  const T* __restrict__ weight = static_cast<const T*>(p.weight);
  float* xs = dynamic_smem();
  float* fs = xs + static_cast<size_t>(t.bz) * t.rs;  // 16-byte aligned: rs is a multiple of 4
  const int tid = threadIdx.x;
  const int x = tid % t.bx, z = tid / t.bx;  // consecutive threads: consecutive outputs of one row

  const int64_t tile = blockIdx.x % t.tiles;
  const int64_t row = static_cast<int64_t>(blockIdx.x / t.tiles) * t.bz + z;
  const bool row_ok = row < p.rows;
  const int64_t n = row / p.out_c;
  const int64_t o = row % p.out_c;
  const int span = t.bx * kRB;
  const int j0 = static_cast<int>(tile) * span;
  const int64_t col0 = static_cast<int64_t>(j0) * p.s - p.off;
  const int k = p.k;

  float acc[kRB];
#pragma unroll
  for (int r = 0; r < kRB; ++r) acc[r] = 0.f;

  float* xr = xs + z * t.rs;
  float* fr = fs + z * t.fw;
  for (int rep = 0; rep < p.reps; ++rep) {
    if (rep > 0) __syncthreads();  // all threads are done with the previous strip
    const int64_t q = o * p.reps + rep;
    // Each row's threads stage that row: coalesced loads, no divisions. Zero outside the input and for dead rows.
    for (int e = x; e < t.fw; e += t.bx) {
      float v = 0.f;  // also the padding of the filter to fw
      if (row_ok && e < k) v = to_float(weight[q * k + (p.flip ? k - 1 - e : e)]);
      fr[e] = v;
    }
    stage_strip(xr, in + (n * p.in_c + q / p.in_div) * p.in_l, col0, t.iw, p.in_l, row_ok, x, t.bx);
    __syncthreads();

    const float* xb = xr + x * kRB * p.s;  // kRB * 4 bytes: 16-byte aligned
    if constexpr (kMode > 0) {
      static_assert(kMode <= 2 * kTaps, "compile-time kernels are for small K");
#pragma unroll
      for (int b = 0; b < kMode; b += kTaps) {
        constexpr int kFull = kMode / kTaps, kRest = kMode % kTaps;
        if (b / kTaps < kFull) unit_step<kTaps, false>(xb + b, fr + b, kTaps, acc);
        else if constexpr (kRest > 0) unit_step<kRest, false>(xb + b, fr + b, kRest, acc);
      }
    } else if constexpr (kMode == 0) {
      for (int b = 0; b < k; b += kTaps) {
        const int rem = k - b;
        if (rem >= kTaps) unit_step<kTaps, false>(xb + b, fr + b, kTaps, acc);
        else unit_step<kTaps, true>(xb + b, fr + b, rem, acc);
      }
    } else {
      for (int tap = 0; tap < k; ++tap) {
        const float f = fr[tap];
        const float* xc = xb + tap * p.d;
#pragma unroll
        for (int r = 0; r < kRB; ++r) acc[r] = fmaf(f, xc[r * p.s], acc[r]);
      }
    }
  }

  // Through shared memory, so that consecutive threads store consecutive outputs.
  __syncthreads();  // every thread is done reading the strips
#pragma unroll
  for (int r = 0; r < kRB; r += 4) store4(xr + x * kRB + r, acc[r], acc[r + 1], acc[r + 2], acc[r + 3]);
  __syncthreads();
  if (row_ok) {
    const float bias = p.bias ? to_float(static_cast<const T*>(p.bias)[o]) : 0.f;
    T* dst = static_cast<T*>(p.out) + row * p.out_l;
    const int end = imin(span, p.out_l - j0);
    for (int e = x; e < end; e += t.bx) dst[j0 + e] = from_float<T>(xr[e] + bias);
  }
}

// One thread per output: the fallback when no tile fits in shared memory.
template <typename T>
__global__ void __launch_bounds__(kThreads) corr_naive_kernel(Corr p) {
  const T* __restrict__ in = static_cast<const T*>(p.in);
  const T* __restrict__ weight = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const int64_t total = p.rows * p.out_l;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t j = idx % p.out_l, row = idx / p.out_l, n = row / p.out_c, o = row % p.out_c;
    float acc = p.bias ? to_float(static_cast<const T*>(p.bias)[o]) : 0.f;
    for (int rep = 0; rep < p.reps; ++rep) {
      const int64_t q = o * p.reps + rep;
      const T* src = in + (n * p.in_c + q / p.in_div) * p.in_l;
      for (int tap = 0; tap < p.k; ++tap) {
        const int64_t gc = j * p.s + static_cast<int64_t>(tap) * p.d - p.off;
        if (gc < 0) continue;
        if (gc >= p.in_l) break;  // gc only grows with tap
        acc = fmaf(to_float(weight[q * p.k + (p.flip ? p.k - 1 - tap : tap)]), to_float(src[gc]), acc);
      }
    }
    out[idx] = from_float<T>(acc);
  }
}

inline int corr_mode(const Corr& p) {
  if (p.s != 1 || p.d != 1) return kGeneral;
  return (p.k == 3 || p.k == 7 || p.k == 15 || p.k == 31) ? p.k : 0;
}

// Shrinks a candidate tile until it fits; false when even one thread per row does not (then use the naive kernel).
inline bool plan_corr(const Corr& p, const DeviceLimits& lim, CorrTile* tile) {
  const bool unit = corr_mode(p) != kGeneral;
  const int64_t fw = ceil_div(p.k, kTaps) * kTaps;  // filter padded with zeros to whole steps
  const int64_t cols = ceil_div(p.out_l, kRB);      // threads a whole row would take
  int bx = static_cast<int>(ceil_div(cols, ceil_div(cols, kMaxBx)));  // balanced tiles of at most kMaxBx threads
  int bz = static_cast<int>(imax(1, kThreads / bx) < p.rows ? imax(1, kThreads / bx) : p.rows);
  CorrTile t{};
  auto fill = [&]() -> bool {
    const int64_t span = static_cast<int64_t>(bx) * kRB;
    const int64_t iw = (span - 1) * p.s + static_cast<int64_t>(p.k - 1) * p.d + 1;
    // unit: the window loads of the last thread read up to span + fw - 1; all: the results are staged in a row
    const int64_t need = unit ? (iw > span + fw ? iw : span + fw) : (iw > span ? iw : span);
    const int64_t rs = vec_stride(need);
    const int64_t floats = bz * (rs + fw);
    if (need > (1 << 24) || floats * 4 > (int64_t{1} << 30)) return false;  // absurd dilations: keep ints small
    t.bx = bx; t.bz = bz;
    t.iw = static_cast<int>(iw); t.rs = static_cast<int>(rs); t.fw = static_cast<int>(fw);
    t.tiles = ceil_div(p.out_l, span);
    t.row_groups = ceil_div(p.rows, bz);
    t.smem = static_cast<size_t>(floats) * sizeof(float);
    return true;
  };
  bool ok = fill();
  while (ok && t.blocks() < 2 * static_cast<int64_t>(lim.num_sms) && bz > 1) {  // keep the GPU busy
    bz = (bz + 1) / 2;
    ok = fill();
  }
  auto shrink = [&]() -> bool {  // rows first, then the tile
    if (bz > 1) bz = (bz + 1) / 2;
    else if (bx > 1) bx = (bx + 1) / 2;
    else return false;
    return true;
  };
  while (ok && t.smem > kSoftSmem && bx > 8 && shrink()) ok = fill();
  while (!ok || t.smem > static_cast<size_t>(lim.max_smem_optin)) {
    if (!shrink()) return false;
    ok = fill();
  }
  *tile = t;
  return true;
}

inline unsigned naive_grid(int64_t total) {
  const int64_t blocks = ceil_div(total, kThreads);
  return static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));  // grid-stride loops cover the rest
}

template <typename T, typename Launch>
void run_corr(Launch& launch, const Corr& p, const DeviceLimits& lim) {
  CorrTile t;
  if (!plan_corr(p, lim, &t)) {
    launch(corr_naive_kernel<T>, naive_grid(p.rows * p.out_l), kThreads, 0, p);
    return;
  }
  const unsigned grid = grid_size(t.blocks());
  switch (corr_mode(p)) {  // must match plan_corr's `unit`
    case 3: launch(corr_tile_kernel<T, 3>, grid, t.threads(), t.smem, p, t); break;
    case 7: launch(corr_tile_kernel<T, 7>, grid, t.threads(), t.smem, p, t); break;
    case 15: launch(corr_tile_kernel<T, 15>, grid, t.threads(), t.smem, p, t); break;
    case 31: launch(corr_tile_kernel<T, 31>, grid, t.threads(), t.smem, p, t); break;
    case 0: launch(corr_tile_kernel<T, 0>, grid, t.threads(), t.smem, p, t); break;
    default: launch(corr_tile_kernel<T, kGeneral>, grid, t.threads(), t.smem, p, t); break;
  }
}

// ================================================================================================================
// Grad-input at stride > 1: gx[n, c, i] = sum_{r < m} sum_k w[q, k] g[n, q, j],  q = c*m + r,
// over the taps with i + left - k*d = j*s, 0 <= j < Lo.
// ================================================================================================================
struct Gather {
  const void* grad_out;
  const void* weight;
  void* out;  // (n, c, l)
  int64_t n, c, co;
  int l, lo, mult, k, s, d, left, kstep;  // kstep = s / gcd(s, d): distance between taps of one phase
};

template <typename T>
__global__ void __launch_bounds__(kThreads) grad_input_gather_kernel(Gather p) {
  const T* __restrict__ g = static_cast<const T*>(p.grad_out);
  const T* __restrict__ weight = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const int64_t total = p.n * p.c * p.l;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx % p.l, row = idx / p.l, n = row / p.c, c = row % p.c;
    const int64_t a = i + p.left;
    int first = -1;  // the first tap that hits an output position, if any
    for (int tap = 0; tap < p.kstep && tap < p.k; ++tap) {
      if ((a - static_cast<int64_t>(tap) * p.d) % p.s == 0) {  // exact zero test works for negative values too
        first = tap;
        break;
      }
    }
    float acc = 0.f;
    if (first >= 0) {
      for (int r = 0; r < p.mult; ++r) {
        const int64_t q = c * p.mult + r;
        const T* src = g + (n * p.co + q) * p.lo;
        for (int tap = first; tap < p.k; tap += p.kstep) {
          const int64_t pos = a - static_cast<int64_t>(tap) * p.d;
          if (pos < 0) break;  // pos only decreases with tap
          const int64_t j = pos / p.s;
          if (j >= p.lo) continue;
          acc = fmaf(to_float(weight[q * p.k + tap]), to_float(src[j]), acc);
        }
      }
    }
    out[idx] = from_float<T>(acc);
  }
}

// ================================================================================================================
// Grad-weight: dW[o, k] = sum_{n, j} g[n, o, j] * x[n, o / m, j*s + k*d - left].
// ================================================================================================================
struct WGrad {
  const void* x;
  const void* grad_out;
  float* partial;  // [splits][co][k] fp32
  void* out;       // (co, 1, k)
  int64_t n, c, co;
  int l, lo, mult, k, s, d, left;
};

// A block: one channel x one split of the items (image n, tw-column tile). Thread "groups" own kWRB taps; `sets`
// copies of each group share the tile's kCols-column units and are summed at the end in a fixed order.
struct WGradTile {
  int tw, iw, rs, groups, sets, threads;
  int64_t tiles, items, splits, co;
  size_t smem;  // bytes: x strip, grad_out tile, sets x groups x kWRB accumulators

  LC_HD int64_t blocks() const { return co * splits; }
};

template <typename T, bool kUnit>  // kUnit: s == d == 1
__global__ void __launch_bounds__(kThreads) wgrad_tile_kernel(WGrad p, WGradTile t) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ g = static_cast<const T*>(p.grad_out);
  float* xs = dynamic_smem();
  float* gs = xs + t.rs;  // 16-byte aligned: rs is a multiple of 4, tw of 8
  float* accs = gs + t.tw;
  const int tid = threadIdx.x;
  const int acc_len = t.groups * kWRB;

  const int64_t split = blockIdx.x % t.splits;
  const int64_t o = blockIdx.x / t.splits;
  const int64_t item_begin = split * t.items / t.splits, item_end = (split + 1) * t.items / t.splits;
  const int units = t.tw / kCols;

  const int set = t.sets > 1 ? tid / t.groups : 0;
  const int group0 = t.sets > 1 ? tid % t.groups : tid;
  const int group_step = t.sets > 1 ? t.groups : t.threads;

  for (int e = tid; e < t.sets * acc_len; e += t.threads) accs[e] = 0.f;

  for (int64_t item = item_begin; item < item_end; ++item) {
    const int tile = static_cast<int>(item % t.tiles);
    const int64_t n = item / t.tiles;
    const int j0 = tile * t.tw;
    const int64_t col0 = static_cast<int64_t>(j0) * p.s - p.left;
    __syncthreads();  // the previous item's tiles (and the zeroed accumulators) are no longer being read

    stage_strip(gs, g + (n * p.co + o) * p.lo, j0, t.tw, p.lo, true, tid, t.threads);
    stage_strip(xs, x + (n * p.c + o / p.mult) * p.l, col0, t.iw, p.l, true, tid, t.threads);
    __syncthreads();

    for (int grp = group0; grp < t.groups; grp += group_step) {
      const float* xb = xs + grp * kWRB * p.d;
      float acc[kWRB];
#pragma unroll
      for (int r = 0; r < kWRB; ++r) acc[r] = 0.f;
      for (int u = set; u < units; u += t.sets) {
        const int jb = u * kCols;
        if constexpr (kUnit) {  // 16-byte aligned: grp * kWRB and jb are multiples of 8
          float xv[kCols + kWRB];  // the last value only pads the 16-byte loads
#pragma unroll
          for (int q = 0; q < (kCols + kWRB) / 4; ++q) {
            const float4 v = load4(xb + jb + 4 * q);
            xv[4 * q] = v.x; xv[4 * q + 1] = v.y; xv[4 * q + 2] = v.z; xv[4 * q + 3] = v.w;
          }
#pragma unroll
          for (int u4 = 0; u4 < kCols / 4; ++u4) {
            const float4 v = load4(gs + jb + 4 * u4);
            const float gv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int uu = 0; uu < 4; ++uu) {
#pragma unroll
              for (int r = 0; r < kWRB; ++r) acc[r] = fmaf(gv[uu], xv[4 * u4 + uu + r], acc[r]);
            }
          }
        } else {
#pragma unroll
          for (int uu = 0; uu < kCols; ++uu) {
            const float gv = gs[jb + uu];
            const float* xc = xb + (jb + uu) * p.s;
#pragma unroll
            for (int r = 0; r < kWRB; ++r) acc[r] = fmaf(gv, xc[r * p.d], acc[r]);
          }
        }
      }
      float* dst = accs + static_cast<size_t>(set) * acc_len + grp * kWRB;  // owned by this thread alone
#pragma unroll
      for (int r = 0; r < kWRB; ++r) dst[r] += acc[r];
    }
  }
  __syncthreads();

  // Sum the sets in a fixed order; taps past k in the last group were padding and are dropped.
  for (int e = tid; e < p.k; e += t.threads) {
    float s = 0.f;
    for (int st = 0; st < t.sets; ++st) s += accs[st * acc_len + e];
    p.partial[(split * p.co + o) * p.k + e] = s;
  }
}

// Fallback: one block per (channel, tap), a fixed-shape tree reduction (deterministic). Needs kThreads floats.
template <typename T>
__global__ void __launch_bounds__(kThreads) wgrad_naive_kernel(WGrad p) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ g = static_cast<const T*>(p.grad_out);
  float* red = dynamic_smem();
  const int tid = threadIdx.x;
  const int64_t o = blockIdx.x / p.k, tap = blockIdx.x % p.k;
  const int64_t total = p.n * p.lo;
  float s = 0.f;
  for (int64_t e = tid; e < total; e += blockDim.x) {
    const int64_t j = e % p.lo, n = e / p.lo;
    const int64_t pos = j * p.s + tap * p.d - p.left;
    if (pos < 0 || pos >= p.l) continue;
    s = fmaf(to_float(g[(n * p.co + o) * p.lo + j]), to_float(x[(n * p.c + o / p.mult) * p.l + pos]), s);
  }
  red[tid] = s;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (tid < stride) red[tid] += red[tid + stride];
    __syncthreads();
  }
  if (tid == 0) static_cast<T*>(p.out)[o * p.k + tap] = from_float<T>(red[0]);
}

inline bool plan_wgrad(const WGrad& p, const DeviceLimits& lim, WGradTile* tile) {
  const bool unit = p.s == 1 && p.d == 1;
  const int64_t lo8 = ceil_div(p.lo, kCols) * kCols;
  int tw = static_cast<int>(lo8 < kMaxTile ? lo8 : kMaxTile);
  const int64_t groups = ceil_div(p.k, kWRB);
  WGradTile t{};
  auto fill = [&]() -> bool {
    const int64_t iw = static_cast<int64_t>(tw - 1) * p.s + (groups * kWRB - 1) * p.d + 1;
    const int64_t rs = vec_stride(unit ? iw + 1 : iw);  // unit: the 16-byte window loads read one past iw
    const int64_t units = tw / kCols;
    int64_t sets = 1;
    if (groups < kThreads) sets = imax(1, static_cast<int>((kThreads / groups) < units ? kThreads / groups : units));
    const int64_t floats = rs + tw + sets * groups * kWRB;
    if (iw > (1 << 24) || floats * 4 > (int64_t{1} << 30)) return false;
    t.tw = tw; t.iw = static_cast<int>(iw); t.rs = static_cast<int>(rs);
    t.groups = static_cast<int>(groups);
    t.sets = static_cast<int>(sets);
    t.threads = groups < kThreads ? static_cast<int>(groups * sets) : kThreads;
    t.tiles = ceil_div(p.lo, tw);
    t.items = p.n * t.tiles;
    t.co = p.co;
    t.smem = static_cast<size_t>(floats) * sizeof(float);
    return true;
  };
  bool ok = fill();
  while (!ok || t.smem > static_cast<size_t>(lim.max_smem_optin)) {
    if (tw <= kCols) return false;
    tw = static_cast<int>(ceil_div((tw + 1) / 2, kCols) * kCols);
    ok = fill();
  }
  // Enough blocks for the machine: split the items, about eight blocks per SM in all.
  const int64_t want = ceil_div(8 * static_cast<int64_t>(lim.num_sms), p.co);
  t.splits = want < 1 ? 1 : (want < t.items ? want : t.items);
  *tile = t;
  return true;
}

// ================================================================================================================
// Entry points shared by the CUDA build (dwconv1d.cu) and the emulation test. `launch` runs one kernel:
//   launch(kernel, grid, block, dynamic_smem_bytes, args...)
// ================================================================================================================
inline WGrad make_wgrad(const Dw1dArgs& a) {
  return WGrad{a.x, a.grad_out, static_cast<float*>(a.workspace), a.out, a.n, a.c, a.co,
               static_cast<int>(a.l), static_cast<int>(a.lo), static_cast<int>(a.co / a.c), a.k, a.s, a.d, a.left};
}

template <typename T, typename Launch>
void run_forward(Launch& launch, const Dw1dArgs& a, const DeviceLimits& lim) {
  const Corr p{a.x, a.weight, a.bias, a.out, a.n * a.co, a.c, a.co, static_cast<int>(a.l), static_cast<int>(a.lo),
               a.k, a.s, a.d, a.left, /*reps=*/1, /*in_div=*/static_cast<int>(a.co / a.c), /*flip=*/false};
  run_corr<T>(launch, p, lim);
}

inline int gcd(int a, int b) { return b == 0 ? a : gcd(b, a % b); }

template <typename T, typename Launch>
void run_grad_input(Launch& launch, const Dw1dArgs& a, const DeviceLimits& lim) {
  const int mult = static_cast<int>(a.co / a.c);
  if (a.s == 1) {  // the forward of grad_out with the flipped filter
    const Corr p{a.grad_out, a.weight, nullptr, a.out, a.n * a.c, a.co, a.c, static_cast<int>(a.lo),
                 static_cast<int>(a.l), a.k, 1, a.d, a.d * (a.k - 1) - a.left, /*reps=*/mult, /*in_div=*/1,
                 /*flip=*/true};
    run_corr<T>(launch, p, lim);
  } else {
    const Gather p{a.grad_out, a.weight, a.out, a.n, a.c, a.co, static_cast<int>(a.l), static_cast<int>(a.lo), mult,
                   a.k, a.s, a.d, a.left, a.s / gcd(a.s, a.d)};
    launch(grad_input_gather_kernel<T>, naive_grid(a.n * a.c * a.l), kThreads, 0, p);
  }
}

inline size_t grad_weight_workspace_bytes(const Dw1dArgs& a, const DeviceLimits& lim) {
  WGradTile t;
  if (!plan_wgrad(make_wgrad(a), lim, &t)) return 0;
  return static_cast<size_t>(t.splits * a.co * a.k) * sizeof(float);
}

// a.workspace must hold grad_weight_workspace_bytes(a, lim) bytes.
template <typename T, typename Launch>
void run_grad_weight(Launch& launch, const Dw1dArgs& a, const DeviceLimits& lim) {
  const WGrad p = make_wgrad(a);
  WGradTile t;
  if (!plan_wgrad(p, lim, &t)) {
    launch(wgrad_naive_kernel<T>, grid_size(a.co * a.k), kThreads, kThreads * sizeof(float), p);
    return;
  }
  LC_CHECK(p.partial != nullptr, "dwconv1d grad-weight workspace missing");
  if (a.s == 1 && a.d == 1) {  // must match plan_wgrad's `unit`
    launch(wgrad_tile_kernel<T, true>, grid_size(t.blocks()), t.threads, t.smem, p, t);
  } else {
    launch(wgrad_tile_kernel<T, false>, grid_size(t.blocks()), t.threads, t.smem, p, t);
  }
  const int64_t count = a.co * a.k;
  launch(split_sum_kernel<T>, naive_grid(count), kThreads, 0, static_cast<const float*>(p.partial),
         static_cast<T*>(a.out), count, t.splits);
}

}  // namespace dw1d
}  // namespace largeconv
