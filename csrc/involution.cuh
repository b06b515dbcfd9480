// Involution kernels (forward, grad-input, grad-weight) and their launch plans.
//
//   y[b, c, i, j] = sum_{kh, kw} w[b, g*K*K + kh*K + kw, i, j] * x[b, c, i*s + kh*d - p, j*s + kw*d - p],
//   g = c / (C / G).
//
// Involution is memory-bound: the weight tensor (K*K per pixel and group) is the biggest operand. Every kernel
// reads each weight (or writes each weight-gradient) element once per chunk of kCB channels (once for RedNet's
// 16-channel groups), coalesced, straight between global memory and registers, kKW taps' worth of loads in flight
// at a time (a whole kernel row of 7 for RedNet); in registers it serves all the chunk's channels. The
// channel-indexed operand (x, or grad_out for grad-input) is staged once per tile in shared memory (its own dtype:
// 16-bit values are widened as they are read) with its halo (stage_vectors: copies of up to 16 bytes). A block owns
// one (image, group, spatial tile) and up to kCB channels of the group; a thread owns rb neighbouring pixels along W
// (pixels_per_thread) and keeps kCB x rb fp32 accumulators. At stride 1, dilation 1 its two pixels share a sliding
// register window, so each shared-memory load feeds two FMAs.
//
// The weight gradient sums over the group's channels: with more than kCB channels per group, the block walks the
// channel chunks in order, keeping the running fp32 sum in a workspace (same element, same thread: deterministic,
// no atomics). Cases whose tile does not fit in shared memory use one-thread-per-output kernels.
#pragma once

#include <initializer_list>

#include "common.cuh"

namespace largeconv {
namespace inv {

constexpr int kThreads = 256;
// Pixels per thread along W: two where they share a window of staged inputs (stride 1, dilation 1; RedNet's strided
// grad-input, whose neighbouring pixels take the two phases of taps); one otherwise (a strided tile stages ~s^2
// inputs per output: one pixel a thread doubles the threads per staged byte).
constexpr LC_HD int pixels_per_thread(bool shared_window) { return shared_window ? 2 : 1; }
constexpr int kCB = 16;  // channels per block (chunk): the RedNet group width
constexpr int kKW = 4;   // taps whose weights are loaded together (several global loads in flight)
constexpr size_t kSoftSmem = 64 * 1024;

struct Inv {
  const void* x;
  const void* weight;
  const void* grad_out;
  void* out;
  float* workspace;  // grad-weight with more than one channel chunk: fp32, shaped like weight
  int64_t b, c, h, w, ho, wo;
  int groups, cg, k, s, p, d;  // cg = channels per group
  bool channels_last;
};

// A block: by rows x (bx * rb) columns of pixels (of y for forward / grad-weight, of x for grad-input), the
// channel-indexed operand staged as nc planes of ih x iw floats (row stride rs, plane stride ps); NCHW by copies of
// vec source values (stage_vec), vecs a row, from up to vec - 1 columns early (stage_planes).
struct InvTile {
  int bx, by, rb, ih, iw, rs, ps, nc, vec, vecs;
  int64_t tiles_h, tiles_w, chunks;
  size_t smem;

  LC_HD int threads() const { return bx * by; }
};

LC_HD int64_t weight_offset(const Inv& p, int64_t b, int64_t ch, int64_t i, int64_t j) {
  return offset4(p.channels_last, b, ch, i, j, static_cast<int64_t>(p.groups) * p.k * p.k, p.ho, p.wo);
}

// Elements between a pixel's weights for neighbouring taps. The tiled kernels take offsets within an image's weights
// in 32 bits (a 64-bit product per tap was most of the forward's address arithmetic, sm_90 SASS 2026-11-28), so
// plan() sends images of 2^31 weights or more to the one-thread-per-output kernels.
LC_HD int weight_tap_step(const Inv& p) { return p.channels_last ? 1 : static_cast<int>(p.ho * p.wo); }

// NCHW rows staged in copies of kVec source values: dst[zz * plane_stride + row * row_stride + c] = planes[zz] at
// row row0 + row, column first + c (raw: 16-bit values stay 16-bit), for zz < nplanes, row < rows, c < kVec * vecs;
// zero outside the plane. first, width and the tensor's alignment are multiples of a copy (stage_vec): a copy lies
// inside a row or outside it whole. A thread keeps one slot (row, copy column) and walks the planes, `groups` of
// them apart (the threads split into groups of a slot each): its offsets step by a constant and its slot is inside
// or outside the plane for every plane, so a copy is a few instructions (a team of 8 lanes a row, a value a copy,
// took 19-33 warp instructions per 32 staged values on RedNet-50's strided tiles, sm_90 SASS). Copies of 4 bytes
// or more by cp.async (the caller waits); single 16-bit values (odd widths) through registers, eight planes' loads
// before their stores (a round trip per eight). Offsets in 32 bits: the planes hold fewer than 2^31 values (plan).
template <int kVec, typename T>
LC_D void stage_vectors(T* dst, int plane_stride, int row_stride, int nplanes, int rows, int vecs, const T* planes,
                        int height, int width, int row0, int first, int tid, int nthreads) {
  const int slots = rows * vecs, groups = nthreads >= slots ? nthreads / slots : 1;
  const int group = nthreads >= slots ? tid / slots : 0;
  if (group >= groups) return;  // the threads past the last whole group sit out
  const int src_step = groups * height * width, dst_step = groups * plane_stride;
  for (int slot = nthreads >= slots ? tid % slots : tid; slot < slots; slot += nthreads) {
    const int row = slot / vecs, v = slot % vecs, gr = row0 + row, gc = first + kVec * v;
    const bool ok = static_cast<unsigned>(gr) < static_cast<unsigned>(height) &&
                    static_cast<unsigned>(gc) < static_cast<unsigned>(width);
    int from = ok ? (group * height + gr) * width + gc : 0, to = group * plane_stride + row * row_stride + kVec * v;
    const int src_inc = ok ? src_step : 0;  // (a slot outside the plane re-reads planes[0], aligned, for nothing)
    if constexpr (sizeof(T) * kVec >= 4) {
#pragma unroll 4
      for (int zz = group; zz < nplanes; zz += groups, from += src_inc, to += dst_step)
        cp_async<sizeof(T) * kVec>(dst + to, planes + from, ok);
    } else {
      constexpr int kBatch = 8;  // planes loaded before their stores
      const T zero = from_float<T>(0.f);
      for (int zz = group; zz < nplanes; zz += kBatch * groups) {
        T vals[kBatch];
#pragma unroll
        for (int i = 0; i < kBatch; ++i) vals[i] = ok && zz + i * groups < nplanes ? planes[from + i * src_inc] : zero;
#pragma unroll
        for (int i = 0; i < kBatch; ++i)
          if (zz + i * groups < nplanes) dst[to + i * dst_step] = vals[i];
        from += kBatch * src_inc;
        to += kBatch * dst_step;
      }
    }
  }
}

// Source values a staging copy takes (stage_vectors): the most, up to 16 bytes, whose copies the rows of `src`
// (width values, NCHW) keep aligned; 1 for channels_last (not staged by rows).
inline int stage_vec(const void* src, int64_t width, int elem_bytes, bool channels_last) {
  int vec = 1;
  while (!channels_last && 2 * vec * elem_bytes <= 16 && width % (2 * vec) == 0 &&
         reinterpret_cast<uintptr_t>(src) % (2 * vec * elem_bytes) == 0)
    vec *= 2;
  return vec;
}

// Stages channels [c0, c0 + nc) of group g of `src` (shape (b, C, sh_, sw_)), rows row0.., cols col0.. into smem
// (the block's shared memory, raw values of src's dtype), zero outside; returns where column col0 of the first row
// of the first plane landed. NCHW by stage_vectors, from the multiple of t.vec at or before col0 (that many columns
// early); channels_last with consecutive threads on consecutive channels.
template <typename T>
LC_D const T* stage_planes(const T* __restrict__ src, const Inv& p, const InvTile& t, int64_t b, int64_t ch0,
                           int nc, int64_t src_h, int64_t src_w, int64_t row0, int64_t col0) {
  T* dst = reinterpret_cast<T*>(dynamic_smem());
  if (!p.channels_last) {
    // offsets within the chunk's planes in 32 bits (plan: a chunk of kCB planes holds fewer than 2^31 values); a
    // 64-bit row address was ~20 of a staged row's ~55 SASS instructions (sm_90, 2026-11-28)
    const T* planes = src + (b * p.c + ch0) * src_h * src_w;
    const int h32 = static_cast<int>(src_h), w32 = static_cast<int>(src_w), r0 = static_cast<int>(row0);
    const int lead = static_cast<int>(col0) & (t.vec - 1), first = static_cast<int>(col0) - lead;
    auto stage = [&](auto vec) {
      stage_vectors<decltype(vec)::value>(dst, t.ps, t.rs, nc, t.ih, t.vecs, planes, h32, w32, r0, first,
                                          threadIdx.x, t.threads());
    };
    switch (t.vec) {
      case 1: stage(std::integral_constant<int, 1>{}); break;
      case 2: stage(std::integral_constant<int, 2>{}); break;
      case 4: stage(std::integral_constant<int, 4>{}); break;
      default:
        if constexpr (sizeof(T) == 2) stage(std::integral_constant<int, 8>{});
    }
    cp_async_wait_all();
    return dst + lead;
  }
  for (int e = threadIdx.x; e < nc * t.ih * t.iw; e += t.threads()) {
    const int cc = e % nc, col = (e / nc) % t.iw, row = e / (nc * t.iw);
    const int64_t gr = row0 + row, gc = col0 + col;
    T v = from_float<T>(0.f);
    if (gr >= 0 && gr < src_h && gc >= 0 && gc < src_w) v = src[offset4(true, b, ch0 + cc, gr, gc, p.c, src_h, src_w)];
    dst[cc * t.ps + row * t.rs + col] = v;
  }
  return dst;
}

enum class Dir { kForward, kGradInput, kGradWeight };

// Block index -> (image, group, channel chunk, row tile, column tile).
struct BlockPos {
  int64_t b, g, chunk, i0, j0;
};
LC_D BlockPos block_pos(const Inv& p, const InvTile& t, int64_t chunks_in_grid) {
  int64_t blk = blockIdx.x;
  BlockPos pos;
  pos.j0 = (blk % t.tiles_w) * t.bx * t.rb;
  blk /= t.tiles_w;
  pos.i0 = (blk % t.tiles_h) * t.by;
  blk /= t.tiles_h;
  pos.chunk = blk % chunks_in_grid;
  blk /= chunks_in_grid;
  pos.g = blk % p.groups;
  pos.b = blk / p.groups;
  return pos;
}

// ---- forward ---------------------------------------------------------------------------------------------------
// kRedNet: K = 7, dilation 1 and one chunk of kCB channels per group (RedNet's layers), known at compile time, so
// that the tap and channel loops unroll without run-time bounds (the run-time version's hot loop spent 313 of 821
// instructions on predicates, sm_90 SASS 2026-11-27), grad-weight stores each tap's sum straight out and strided
// grad-input walks only the taps that reach a pixel.
constexpr int kRedNetK = 7;
inline bool rednet_shape(const Inv& p) { return p.k == kRedNetK && p.cg == kCB && p.d == 1; }

// ---- RedNet's kernel rows by windows (stride 1, two pixels a thread; stride 2, one) ------------------------------
// A thread's pixels read, per kernel row and channel, kN = (kRB - 1) kS + 7 neighbouring staged values (pixel r's tap
// kw: value r kS + kw), its window, loaded once (load_window) before each channel's products. fp32: a warp's lanes
// read words two apart (kRB kS = 2): one 32-bit load a value puts two lanes in each bank, two wavefronts a load;
// the window's 8-byte pairs take two wavefronts for two values, so a window goes by pairs from its first aligned
// value: stride 1, 5 loads and 10 wavefronts for 8 values (8 loads, 16 before); stride 2, 4 and 8 for 7 (7, 14).
// 16-bit: the lanes' values two apart are neighbouring 32-bit words, each word two values: 4 loads (5 where the
// window starts odd) and as many wavefronts for 7 or 8 values, and one instruction a value to widen it.

// v = p[0 .. kN - 1] as fp32. kOdd: fp32, p is 4 bytes past an 8-byte boundary; 16-bit, 2 bytes past a 4-byte one.
template <int kN, bool kOdd, typename T>
LC_D void load_window(float (&v)[kN], const T* p) {
  if constexpr (std::is_same_v<T, float>) {
    constexpr int first = kOdd ? 1 : 0, pairs = (kN - first) / 2;
    if constexpr (kOdd) v[0] = p[0];
#pragma unroll
    for (int q = 0; q < pairs; ++q) {
      const float2 u = load2(p + first + 2 * q);
      v[first + 2 * q] = u.x;
      v[first + 2 * q + 1] = u.y;
    }
    if constexpr (first + 2 * pairs < kN) v[kN - 1] = p[kN - 1];
  } else {  // the words from the one that holds p[0] (its high half where kOdd)
    constexpr int lead = kOdd ? 1 : 0, words = (lead + kN + 1) / 2;
#pragma unroll
    for (int q = 0; q < words; ++q) {
      float lo, hi;
      widen_pair<T>(load_pair(p - lead + 2 * q), lo, hi);
      const int e = 2 * q - lead;  // the value in the low half
      if (e >= 0) v[e] = lo;
      if (e + 1 < kN) v[e + 1] = hi;
    }
  }
}

// Whether a thread's windows start at an odd column of the block's shared memory: the staged rows' lead column
// (stage_planes) decides, their strides are even (plan).
template <typename T>
LC_D bool odd_windows(const T* staged) { return (staged - reinterpret_cast<const T*>(dynamic_smem())) % 2 != 0; }

// acc[c][r] += w[kw][r] * window value r kS + kw of channel c, over one kernel row: x = channel 0's window.
template <int kRB, int kS, bool kOdd, typename T>
LC_D void window_products(float (&acc)[kCB][kRB], const float (&w)[kRedNetK][kRB], const T* x, int ps) {
  constexpr int kN = (kRB - 1) * kS + kRedNetK;
#pragma unroll
  for (int c = 0; c < kCB; ++c) {
    float v[kN];
    load_window<kN, kOdd>(v, x + c * ps);
#pragma unroll
    for (int kw = 0; kw < kRedNetK; ++kw)
#pragma unroll
      for (int r = 0; r < kRB; ++r) acc[c][r] = fmaf(w[kw][r], v[r * kS + kw], acc[c][r]);
  }
}

// forward_kernel's sums: x = the thread's window of kernel row 0 (channel 0), w[r] = pixel r's weight of tap 0. The
// next kernel row's weights are loaded while this row's products run (raw: converted after the products, so that
// the loads' latency hides behind them): one memory round trip for the kernel, not one a row.
template <int kRB, int kS, bool kOdd, typename T>
LC_D void forward_window_rows(float (&acc)[kCB][kRB], const T* x, int rs, int ps, const T* const (&w)[kRB],
                              int wstep) {
  constexpr int K = kRedNetK;
  float wv[K][kRB];
  T next[K][kRB];
#pragma unroll
  for (int u = 0; u < K; ++u)
#pragma unroll
    for (int r = 0; r < kRB; ++r) wv[u][r] = to_float(w[r][u * wstep]);
#pragma unroll 1
  for (int kh = 0; kh < K; ++kh) {
    const int nk = kh + 1 < K ? kh + 1 : kh;  // (the last row reads its own again: no branch)
#pragma unroll
    for (int u = 0; u < K; ++u)
#pragma unroll
      for (int r = 0; r < kRB; ++r) next[u][r] = w[r][(nk * K + u) * wstep];
    window_products<kRB, kS, kOdd>(acc, wv, x + kh * rs, ps);
#pragma unroll
    for (int u = 0; u < K; ++u)
#pragma unroll
      for (int r = 0; r < kRB; ++r) wv[u][r] = to_float(next[u][r]);
  }
}

// grad_weight_kernel's sums: x as in forward_window_rows, g = the pixels' grad_out values, out[r] = pixel r's weight
// gradient of tap 0 (null: an invalid pixel, nothing stored). A kernel row's 7 taps are summed together over the
// channels: one window a channel, not one load a tap.
template <int kRB, int kS, bool kOdd, typename T>
LC_D void grad_weight_window_rows(const float (&g)[kCB][kRB], const T* x, int rs, int ps, T* const (&out)[kRB],
                                  int wstep) {
  constexpr int K = kRedNetK, kN = (kRB - 1) * kS + K;
#pragma unroll 1
  for (int kh = 0; kh < K; ++kh) {
    float a[K][kRB] = {};
#pragma unroll
    for (int c = 0; c < kCB; ++c) {
      float v[kN];
      load_window<kN, kOdd>(v, x + kh * rs + c * ps);
#pragma unroll
      for (int kw = 0; kw < K; ++kw)
#pragma unroll
        for (int r = 0; r < kRB; ++r) a[kw][r] = fmaf(g[c][r], v[r * kS + kw], a[kw][r]);
    }
#pragma unroll
    for (int r = 0; r < kRB; ++r) {
      if (out[r] == nullptr) continue;
#pragma unroll
      for (int kw = 0; kw < K; ++kw) out[r][(kh * K + kw) * wstep] = from_float<T>(a[kw][r]);
    }
  }
}

template <typename T, bool kUnit, bool kRedNet>  // kUnit: s == d == 1
__global__ void __launch_bounds__(kThreads) forward_kernel(Inv p, InvTile t) {
  constexpr int RB = pixels_per_thread(kUnit);
  const T* __restrict__ wt = static_cast<const T*>(p.weight);
  const BlockPos pos = block_pos(p, t, t.chunks);
  const int K = kRedNet ? kRedNetK : p.k, D = kRedNet ? 1 : p.d;
  const int c0 = static_cast<int>(pos.chunk) * kCB, nc = kRedNet ? kCB : imin(kCB, p.cg - c0);
  const int64_t ch0 = pos.g * p.cg + c0;
  const T* xs = stage_planes(static_cast<const T*>(p.x), p, t, pos.b, ch0, nc, p.h, p.w, pos.i0 * p.s - p.p,
                             pos.j0 * p.s - p.p);
  __syncthreads();

  const int tx = threadIdx.x % t.bx, ty = threadIdx.x / t.bx;
  const int64_t i = pos.i0 + ty, j = pos.j0 + tx * RB;
  bool valid[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) valid[r] = i < p.ho && j + r < p.wo;
  // The weights of this thread's pixels: kernel channel wch0 + tap lies `tap * wstep` past wp[r] (an invalid pixel
  // reads image 0's, in bounds, and never stores).
  const int64_t wch0 = pos.g * K * K;
  const int wstep = weight_tap_step(p);
  const T* wp[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) wp[r] = wt + (valid[r] ? weight_offset(p, pos.b, wch0, i, j + r) : 0);

  float acc[kCB][RB] = {};
  auto generic_rows = [&]() {
#pragma unroll 1
    for (int kh = 0; kh < K; ++kh) {
      const T* xr = xs + (ty * p.s + kh * D) * t.rs + tx * RB * p.s;
      float win[kCB][RB];  // kUnit: win[c][r] = x of pixel r at the current tap
      if constexpr (kUnit) {
#pragma unroll
        for (int c = 0; c < kCB; ++c)
          if (c < nc) {
#pragma unroll
            for (int q = 0; q < RB - 1; ++q) win[c][q] = to_float(xr[c * t.ps + q]);
          }
      }
      // RedNet's K = 7: a whole kernel row's weights in flight at once (one memory round trip per row, not two)
      constexpr int kTaps = kRedNet ? kRedNetK : kKW;
      for (int kw0 = 0; kw0 < K; kw0 += kTaps) {
        float wv[kTaps][RB];
#pragma unroll
        for (int u = 0; u < kTaps; ++u) {
#pragma unroll
          for (int r = 0; r < RB; ++r) {
            wv[u][r] = kw0 + u < K ? to_float(wp[r][(kh * K + kw0 + u) * wstep]) : 0.f;
          }
        }
#pragma unroll
        for (int u = 0; u < kTaps; ++u) {
          const int kw = kw0 + u;
          if (kw >= K) break;
#pragma unroll
          for (int c = 0; c < kCB; ++c) {
            if (c >= nc) continue;
            if constexpr (kUnit) {
              win[c][RB - 1] = to_float(xr[c * t.ps + kw + RB - 1]);
#pragma unroll
              for (int r = 0; r < RB; ++r) acc[c][r] = fmaf(wv[u][r], win[c][r], acc[c][r]);
#pragma unroll
              for (int q = 0; q < RB - 1; ++q) win[c][q] = win[c][q + 1];
            } else {
#pragma unroll
              for (int r = 0; r < RB; ++r)
                acc[c][r] = fmaf(wv[u][r], to_float(xr[c * t.ps + r * p.s + kw * D]), acc[c][r]);
            }
          }
        }
      }
    }
  };
  if constexpr (kRedNet) {
    if (kUnit || p.s == 2) {  // RedNet at stride 1 or 2: windows
      constexpr int S = kUnit ? 1 : 2;
      const T* x = xs + S * ty * t.rs + S * RB * tx;
      if (odd_windows(xs)) forward_window_rows<RB, S, true>(acc, x, t.rs, t.ps, wp, wstep);
      else forward_window_rows<RB, S, false>(acc, x, t.rs, t.ps, wp, wstep);
    } else {
      generic_rows();
    }
  } else {
    generic_rows();
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int c = 0; c < kCB; ++c) {
    if (c >= nc) continue;
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      if (valid[r]) out[offset4(p.channels_last, pos.b, ch0 + c, i, j + r, p.c, p.ho, p.wo)] = from_float<T>(acc[c][r]);
    }
  }
}

// ---- grad-input ------------------------------------------------------------------------------------------------
//   dx[b, c, h, w] = sum_{kh, kw} w[b, g*K*K + kh*K + kw, i, j] * gy[b, c, i, j],  i*s = h + p - kh*d, j*s likewise
// Tiles are over dx; grad_out rows ilo = floor((h0 + p - (K-1)*d) / s) .. and columns likewise are staged.
// RedNet: two blocks' worth of registers (unbounded, ptxas took 160-167: one block per SM).
template <typename T, bool kUnit, bool kRedNet>  // kRedNet: as in forward_kernel
__global__ void __launch_bounds__(kThreads, kRedNet ? 2 : 1) grad_input_kernel(Inv p, InvTile t) {
  constexpr int RB = pixels_per_thread(kUnit || kRedNet);  // (RedNet at stride 2: a pixel of each phase)
  const T* __restrict__ wt = static_cast<const T*>(p.weight);
  const BlockPos pos = block_pos(p, t, t.chunks);  // i0, j0: the dx tile origin
  const int K = kRedNet ? kRedNetK : p.k;
  const int c0 = static_cast<int>(pos.chunk) * kCB, nc = kRedNet ? kCB : imin(kCB, p.cg - c0);
  const int64_t ch0 = pos.g * p.cg + c0;
  const int64_t reach = static_cast<int64_t>(K - 1) * p.d;
  const int64_t ilo = floor_div(static_cast<int>(pos.i0 + p.p - reach), p.s);
  const int64_t jlo = floor_div(static_cast<int>(pos.j0 + p.p - reach), p.s);
  const T* gs = stage_planes(static_cast<const T*>(p.grad_out), p, t, pos.b, ch0, nc, p.ho, p.wo, ilo, jlo);
  __syncthreads();

  const int tx = threadIdx.x % t.bx, ty = threadIdx.x / t.bx;
  const int64_t hh = pos.i0 + ty, w0 = pos.j0 + tx * RB;
  const int64_t wch0 = pos.g * K * K;
  // weight (kernel channel wch0 + tap, row i, column j) lies at weight_offset(.., wch0, i, 0) + tap*wstep + j*jstep
  const int wstep = weight_tap_step(p), jstep = p.channels_last ? p.groups * K * K : 1;
  float acc[kCB][RB] = {};

  if constexpr (kUnit) {
    // i = hh + p - kh is staged row ty + (K-1-kh); j = w0 + r + p - kw is staged column tx*RB + r + (K-1-kw):
    // walking kw downwards slides the window like the forward. RedNet loads a kernel row's weights at once.
    constexpr int kTaps = kRedNet ? kRedNetK : kKW;
    const int wo = static_cast<int>(p.wo);
    int jr[RB];  // j = jr[r] - kw
    bool col_ok[RB];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      jr[r] = static_cast<int>(w0) + r + p.p;
      col_ok[r] = w0 + r < p.w;
    }
    auto kernel_rows = [&](auto odd) {  // odd: the windows' parity (RedNet)
#pragma unroll 1
      for (int khr = 0; khr < K; ++khr) {
        const int kh = K - 1 - khr;
        const int64_t i = hh + p.p - kh;
        const bool row_ok = hh < p.h && i >= 0 && i < p.ho;
        const T* wrow = wt + (row_ok ? weight_offset(p, pos.b, wch0, i, 0) + kh * K * wstep : 0);
        const T* gr = gs + (ty + khr) * t.rs + tx * RB;
        if constexpr (kRedNet) {  // windows (window_products): pixel r's tap kwr = 6 - kw reads value r + kwr
          float wv[K][RB];
#pragma unroll
          for (int kwr = 0; kwr < K; ++kwr) {
#pragma unroll
            for (int r = 0; r < RB; ++r) {
              const int kw = K - 1 - kwr, j = jr[r] - kw;
              const bool ok = row_ok && col_ok[r] && j >= 0 && j < wo;
              wv[kwr][r] = ok ? to_float(wrow[kw * wstep + j * jstep]) : 0.f;
            }
          }
          window_products<RB, 1, decltype(odd)::value>(acc, wv, gr, t.ps);
          continue;
        }
        float win[kCB][RB];
#pragma unroll
        for (int c = 0; c < kCB; ++c)
          if (c < nc) {
#pragma unroll
            for (int q = 0; q < RB - 1; ++q) win[c][q] = to_float(gr[c * t.ps + q]);
          }
        for (int kwr0 = 0; kwr0 < K; kwr0 += kTaps) {
          float wv[kTaps][RB];
#pragma unroll
          for (int u = 0; u < kTaps; ++u) {
            const int kw = K - 1 - kwr0 - u;
#pragma unroll
            for (int r = 0; r < RB; ++r) {
              const int j = jr[r] - kw;
              const bool ok = row_ok && col_ok[r] && kw >= 0 && j >= 0 && j < wo;
              wv[u][r] = ok ? to_float(wrow[kw * wstep + j * jstep]) : 0.f;
            }
          }
#pragma unroll
          for (int u = 0; u < kTaps; ++u) {
            const int kwr = kwr0 + u;
            if (kwr >= K) break;
#pragma unroll
            for (int c = 0; c < kCB; ++c) {
              if (c >= nc) continue;
              win[c][RB - 1] = to_float(gr[c * t.ps + kwr + RB - 1]);
#pragma unroll
              for (int r = 0; r < RB; ++r) acc[c][r] = fmaf(wv[u][r], win[c][r], acc[c][r]);
#pragma unroll
              for (int q = 0; q < RB - 1; ++q) win[c][q] = win[c][q + 1];
            }
          }
        }
      }
    };
    if constexpr (kRedNet) {
      if (odd_windows(gs)) kernel_rows(std::true_type{});
      else kernel_rows(std::false_type{});
    } else {
      kernel_rows(std::false_type{});
    }
  } else if constexpr (kRedNet) {
    // stride s > 1, dilation 1: the taps that reach column w are kw = (w + p) mod s + m*s, m = 0, 1, ..., and the
    // grad_out column (w + p - kw) / s steps back by one with m: each pixel walks its own ceil(K / s) taps of a
    // kernel row (the loop below meets all K*K and keeps ~1/s^2 of the products), its weights loaded together, the
    // next kernel row's while this row's products run (raw: converted after them). A grad_out column outside the
    // map is staged as zero and read with a zero weight.
    const int hp = static_cast<int>(hh) + p.p;  // (32-bit: rows and columns < 2^31, a 64-bit division is a call)
    // Stride 2: the thread's two pixels, w0 (even past the tile's first column) and w0 + 1, take the two phases of
    // taps, q_r = (p + r) % 2 (q 0: kw 0, 2, 4, 6; q 1: 1, 3, 5), and read grad_out columns jtop_r - m, jtop_r = (w0
    // + r + p - q_r) / 2: together one window of 4 neighbouring staged values (staged column tx + p % 2 on; pixel
    // r's tap m is value top_r - m, top_r = 3 but 2 for pixel 0 at odd p), each read once for the pair's 7
    // products. No tap past the kernel is taken (a zero weight times a staged Inf would be NaN).
    auto pair_rows = [&](auto p_odd) {
      constexpr bool kPOdd = decltype(p_odd)::value;
      // (expressions, not constexpr arrays: an array the lambdas capture is read from memory, and the raw weights
      // it bounds went to local memory, sm_90 SASS)
      auto phase = [](int r) { return kPOdd ? 1 - r : r; };  // q_r; its taps: 4 - q_r
      auto top = [](int r) { return kPOdd && r == 0 ? 2 : 3; };
      int jtop[2];
#pragma unroll
      for (int r = 0; r < 2; ++r) jtop[r] = (static_cast<int>(w0) + r + p.p - phase(r)) / 2;
      // kernel row kh's weights (raw); a row that does not reach a grad_out row (outside the map, or past the
      // kernel) reads none: zero weights
      auto fetch = [&](int kh, T (&raw)[2][4]) {
        const int i = (hp - kh) / 2;
        const bool row_ok = kh < K && hh < p.h && i >= 0 && i < p.ho;
        const T* wrow = wt + (row_ok ? weight_offset(p, pos.b, wch0 + kh * K, i, 0) : 0);
#pragma unroll
        for (int r = 0; r < 2; ++r) {
#pragma unroll
          for (int m = 0; m < 4 - phase(r); ++m) {
            const int kw = phase(r) + 2 * m, j = jtop[r] - m;
            const bool ok = row_ok && w0 + r < p.w && j >= 0 && j < p.wo;
            raw[r][m] = ok ? wrow[kw * wstep + j * jstep] : from_float<T>(0.f);
          }
        }
      };
      T raw[2][4];
      fetch(hp % 2, raw);
#pragma unroll 1
      for (int kh = hp % 2; kh < K; kh += 2) {  // the kernel rows that reach row hh
        const int i = (hp - kh) / 2;
        const bool row_ok = hh < p.h && i >= 0 && i < p.ho;
        float wv[2][4];
#pragma unroll
        for (int r = 0; r < 2; ++r)
#pragma unroll
          for (int m = 0; m < 4 - phase(r); ++m) wv[r][m] = to_float(raw[r][m]);
        fetch(kh + 2, raw);
        if (!row_ok) continue;
        const T* g = gs + (i - ilo) * t.rs + tx + (kPOdd ? 1 : 0);
#pragma unroll
        for (int c = 0; c < kCB; ++c) {
          float v[4];
#pragma unroll
          for (int e = 0; e < 4; ++e) v[e] = to_float(g[c * t.ps + e]);
#pragma unroll
          for (int r = 0; r < 2; ++r)
#pragma unroll
            for (int m = 0; m < 4 - phase(r); ++m) acc[c][r] = fmaf(wv[r][m], v[top(r) - m], acc[c][r]);
        }
      }
    };
    // Other strides: each pixel its own phase. A tap past the kernel (m with kw >= K) multiplies zero, not the
    // staged value it points at (a zero weight times a staged Inf would be NaN).
    constexpr int kM = (kRedNetK + 1) / 2;  // taps per kernel row and pixel, s >= 2
    auto kernel_rows = [&]() {
      const int s = p.s;
      int kw0[RB], jtop[RB];
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        kw0[r] = (static_cast<int>(w0) + r + p.p) % s;
        jtop[r] = (static_cast<int>(w0) + r + p.p - kw0[r]) / s;
      }
      // kernel row kh's weights (raw) and staged columns; a row that does not reach a grad_out row (i outside the
      // map, or past the kernel) reads none: zero weights
      auto fetch = [&](int kh, T (&raw)[RB][kM], int (&col)[RB][kM]) {
        const int i = (hp - kh) / s;
        const bool row_ok = kh < K && hh < p.h && i >= 0 && i < p.ho;
        const T* wrow = wt + (row_ok ? weight_offset(p, pos.b, wch0 + kh * K, i, 0) : 0);
#pragma unroll
        for (int r = 0; r < RB; ++r) {
#pragma unroll
          for (int m = 0; m < kM; ++m) {
            const int kw = kw0[r] + m * s, j = jtop[r] - m;
            const bool ok = row_ok && kw < K && w0 + r < p.w && j >= 0 && j < p.wo;
            raw[r][m] = ok ? wrow[kw * wstep + j * jstep] : from_float<T>(0.f);
            col[r][m] = kw < K ? j - static_cast<int>(jlo) : 0;  // staged (zero outside the map)
          }
        }
      };
      T raw[RB][kM];
      int col[RB][kM];
      fetch(hp % s, raw, col);
#pragma unroll 1
      for (int kh = hp % s; kh < K; kh += s) {  // the kernel rows that reach row hh
        const int i = (hp - kh) / s;
        const bool row_ok = hh < p.h && i >= 0 && i < p.ho;
        const T* gr = gs + (row_ok ? i - ilo : 0) * t.rs;
        float wv[RB][kM];
        int cols[RB][kM];
#pragma unroll
        for (int r = 0; r < RB; ++r)
#pragma unroll
          for (int m = 0; m < kM; ++m) wv[r][m] = to_float(raw[r][m]), cols[r][m] = col[r][m];
        fetch(kh + s, raw, col);
        if (!row_ok) continue;
#pragma unroll
        for (int c = 0; c < kCB; ++c) {
#pragma unroll
          for (int r = 0; r < RB; ++r) {
#pragma unroll
            for (int m = 0; m < kM; ++m) {
              const float x = to_float(gr[c * t.ps + cols[r][m]]);
              const bool on_kernel = kw0[r] + m * s < K;
              acc[c][r] = fmaf(wv[r][m], on_kernel ? x : 0.f, acc[c][r]);
            }
          }
        }
      }
    };
    if (p.s == 2) {
      if (p.p % 2) pair_rows(std::true_type{});
      else pair_rows(std::false_type{});
    } else {
      kernel_rows();
    }
  } else {
    for (int kh = 0; kh < K; ++kh) {
      const int64_t ti = hh + p.p - static_cast<int64_t>(kh) * p.d;
      if (hh >= p.h || ti < 0 || ti % p.s != 0 || ti / p.s >= p.ho) continue;
      const int64_t i = ti / p.s;
      const T* gr = gs + (i - ilo) * t.rs;
      for (int kw = 0; kw < K; ++kw) {
        float wv[RB];
        int col[RB];
        bool ok[RB];  // the tap reaches a grad_out pixel: else no product (a zero weight times a staged Inf is NaN)
#pragma unroll
        for (int r = 0; r < RB; ++r) {
          const int64_t tj = w0 + r + p.p - static_cast<int64_t>(kw) * p.d;
          ok[r] = w0 + r < p.w && tj >= 0 && tj % p.s == 0 && tj / p.s < p.wo;
          wv[r] = ok[r] ? to_float(wt[weight_offset(p, pos.b, wch0 + kh * K + kw, i, tj / p.s)]) : 0.f;
          col[r] = ok[r] ? static_cast<int>(tj / p.s - jlo) : 0;
        }
#pragma unroll
        for (int c = 0; c < kCB; ++c) {
          if (c >= nc) continue;
#pragma unroll
          for (int r = 0; r < RB; ++r)
            if (ok[r]) acc[c][r] = fmaf(wv[r], to_float(gr[c * t.ps + col[r]]), acc[c][r]);
        }
      }
    }
  }

  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int c = 0; c < kCB; ++c) {
    if (c >= nc) continue;
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      if (hh < p.h && w0 + r < p.w) {
        out[offset4(p.channels_last, pos.b, ch0 + c, hh, w0 + r, p.c, p.h, p.w)] = from_float<T>(acc[c][r]);
      }
    }
  }
}

// ---- grad-weight -----------------------------------------------------------------------------------------------
//   dw[b, g*K*K + k, i, j] = sum_{c in group g} gy[b, c, i, j] * x[b, c, i*s + kh*d - p, j*s + kw*d - p]
// RedNet: two blocks' worth of registers (the strided path held 187 unbounded: one block per SM); strided, four
// (64 registers, no spills, sm_90: at 71, a 7x7 map's blocks of two warps fit 14 an SM, 1.1 waves on an H100).
template <typename T, bool kUnit, bool kRedNet>  // kRedNet: as in forward_kernel
__global__ void __launch_bounds__(kThreads, kRedNet ? (kUnit ? 2 : 4) : 1) grad_weight_kernel(Inv p, InvTile t) {
  constexpr int RB = pixels_per_thread(kUnit);
  const T* __restrict__ gy = static_cast<const T*>(p.grad_out);
  const BlockPos pos = block_pos(p, t, 1);  // the block walks all channel chunks itself
  const int tx = threadIdx.x % t.bx, ty = threadIdx.x / t.bx;
  const int64_t i = pos.i0 + ty, j = pos.j0 + tx * RB;
  bool valid[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) valid[r] = i < p.ho && j + r < p.wo;
  const int K = kRedNet ? kRedNetK : p.k, D = kRedNet ? 1 : p.d;
  // The weight gradient of this thread's pixels: kernel channel wch0 + tap lies `tap * wstep` past wbase[r].
  const int64_t wch0 = pos.g * K * K;
  const int wstep = weight_tap_step(p);
  int64_t wbase[RB];
#pragma unroll
  for (int r = 0; r < RB; ++r) wbase[r] = valid[r] ? weight_offset(p, pos.b, wch0, i, j + r) : 0;
  T* out = static_cast<T*>(p.out);

  for (int64_t chunk = 0; chunk < t.chunks; ++chunk) {
    const int c0 = static_cast<int>(chunk) * kCB, nc = kRedNet ? kCB : imin(kCB, p.cg - c0);
    const int64_t ch0 = pos.g * p.cg + c0;
    if (chunk > 0) __syncthreads();  // done reading the previous chunk's tile
    const T* xs = stage_planes(static_cast<const T*>(p.x), p, t, pos.b, ch0, nc, p.h, p.w, pos.i0 * p.s - p.p,
                               pos.j0 * p.s - p.p);
    float gv[kCB][RB];
#pragma unroll
    for (int c = 0; c < kCB; ++c) {
#pragma unroll
      for (int r = 0; r < RB; ++r) {
        gv[c][r] = c < nc && valid[r]
                       ? to_float(gy[offset4(p.channels_last, pos.b, ch0 + c, i, j + r, p.c, p.ho, p.wo)]) : 0.f;
      }
    }
    __syncthreads();

    if constexpr (kRedNet) {
      if (kUnit || p.s == 2) {  // RedNet at stride 1 or 2: windows (one chunk, the sums stored as they are)
        constexpr int S = kUnit ? 1 : 2;
        const T* x = xs + S * ty * t.rs + S * RB * tx;
        T* o[RB];
#pragma unroll
        for (int r = 0; r < RB; ++r) o[r] = valid[r] ? out + wbase[r] : nullptr;
        if (odd_windows(xs)) grad_weight_window_rows<RB, S, true>(gv, x, t.rs, t.ps, o, wstep);
        else grad_weight_window_rows<RB, S, false>(gv, x, t.rs, t.ps, o, wstep);
        continue;
      }
    }
#pragma unroll 1
    for (int kh = 0; kh < K; ++kh) {
      const T* xr = xs + (ty * p.s + kh * D) * t.rs + tx * RB * p.s;
      float win[kCB][RB];
      if constexpr (kUnit) {
#pragma unroll
        for (int c = 0; c < kCB; ++c)
          if (c < nc) {
#pragma unroll
            for (int q = 0; q < RB - 1; ++q) win[c][q] = to_float(xr[c * t.ps + q]);
          }
      }
#pragma unroll(kRedNet ? kRedNetK : 1)
      for (int kw = 0; kw < K; ++kw) {
        float a[RB] = {};
#pragma unroll
        for (int c = 0; c < kCB; ++c) {
          if (c >= nc) continue;
          if constexpr (kUnit) {
            win[c][RB - 1] = to_float(xr[c * t.ps + kw + RB - 1]);
#pragma unroll
            for (int r = 0; r < RB; ++r) a[r] = fmaf(gv[c][r], win[c][r], a[r]);
#pragma unroll
            for (int q = 0; q < RB - 1; ++q) win[c][q] = win[c][q + 1];
          } else {
#pragma unroll
            for (int r = 0; r < RB; ++r) a[r] = fmaf(gv[c][r], to_float(xr[c * t.ps + r * p.s + kw * D]), a[r]);
          }
        }
#pragma unroll
        for (int r = 0; r < RB; ++r) {
          if (!valid[r]) continue;
          const int64_t off = wbase[r] + (kh * K + kw) * wstep;  // (32-bit product: plan())
          if (kRedNet || t.chunks == 1) {
            out[off] = from_float<T>(a[r]);
          } else {  // running sum over the chunks in fp32, in order
            const float v = chunk == 0 ? a[r] : p.workspace[off] + a[r];
            if (chunk == t.chunks - 1) out[off] = from_float<T>(v);
            else p.workspace[off] = v;
          }
        }
      }
    }
  }
}

// ---- one-thread-per-output fallbacks ---------------------------------------------------------------------------
LC_D void decode(const Inv& p, int64_t idx, int64_t C, int64_t H, int64_t W, int64_t* b, int64_t* c, int64_t* i,
                 int64_t* j) {
  if (p.channels_last) {
    *c = idx % C;
    *j = (idx / C) % W;
    *i = (idx / (C * W)) % H;
    *b = idx / (C * W * H);
  } else {
    *j = idx % W;
    *i = (idx / W) % H;
    *c = (idx / (W * H)) % C;
    *b = idx / (W * H * C);
  }
}

// One output of the forward / grad-input as a direct sum over its taps, in fp32 (the naive kernels; the
// tensor-core kernels' redo of a non-finite sum). The forward multiplies padding's zeros too, as the unfold
// definition and the tiled kernels do: an Inf weight on a tap over padding gives NaN.
template <typename T>
LC_D float forward_direct(const Inv& p, int64_t b, int64_t c, int64_t i, int64_t j) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ wt = static_cast<const T*>(p.weight);
  const int64_t wch0 = (c / p.cg) * p.k * p.k;
  float acc = 0.f;
  for (int kh = 0; kh < p.k; ++kh) {
    const int64_t hh = i * p.s + static_cast<int64_t>(kh) * p.d - p.p;
    for (int kw = 0; kw < p.k; ++kw) {
      const int64_t ww = j * p.s + static_cast<int64_t>(kw) * p.d - p.p;
      const bool inside = hh >= 0 && hh < p.h && ww >= 0 && ww < p.w;
      acc = fmaf(to_float(wt[weight_offset(p, b, wch0 + kh * p.k + kw, i, j)]),
                 inside ? to_float(x[offset4(p.channels_last, b, c, hh, ww, p.c, p.h, p.w)]) : 0.f, acc);
    }
  }
  return acc;
}

template <typename T>
LC_D float grad_input_direct(const Inv& p, int64_t b, int64_t c, int64_t hh, int64_t ww) {
  const T* __restrict__ gy = static_cast<const T*>(p.grad_out);
  const T* __restrict__ wt = static_cast<const T*>(p.weight);
  const int64_t wch0 = (c / p.cg) * p.k * p.k;
  float acc = 0.f;
  for (int kh = 0; kh < p.k; ++kh) {
    const int64_t ti = hh + p.p - static_cast<int64_t>(kh) * p.d;
    if (ti < 0 || ti % p.s != 0 || ti / p.s >= p.ho) continue;
    for (int kw = 0; kw < p.k; ++kw) {
      const int64_t tj = ww + p.p - static_cast<int64_t>(kw) * p.d;
      if (tj < 0 || tj % p.s != 0 || tj / p.s >= p.wo) continue;
      acc = fmaf(to_float(wt[weight_offset(p, b, wch0 + kh * p.k + kw, ti / p.s, tj / p.s)]),
                 to_float(gy[offset4(p.channels_last, b, c, ti / p.s, tj / p.s, p.c, p.ho, p.wo)]), acc);
    }
  }
  return acc;
}

template <typename T>
__global__ void __launch_bounds__(kThreads) forward_naive_kernel(Inv p) {
  const int64_t total = p.b * p.c * p.ho * p.wo;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t b, c, i, j;
    decode(p, idx, p.c, p.ho, p.wo, &b, &c, &i, &j);
    static_cast<T*>(p.out)[idx] = from_float<T>(forward_direct<T>(p, b, c, i, j));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) grad_input_naive_kernel(Inv p) {
  const int64_t total = p.b * p.c * p.h * p.w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t b, c, hh, ww;
    decode(p, idx, p.c, p.h, p.w, &b, &c, &hh, &ww);
    static_cast<T*>(p.out)[idx] = from_float<T>(grad_input_direct<T>(p, b, c, hh, ww));
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) grad_weight_naive_kernel(Inv p) {
  const T* __restrict__ gy = static_cast<const T*>(p.grad_out);
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const int64_t wc = static_cast<int64_t>(p.groups) * p.k * p.k;
  const int64_t total = p.b * wc * p.ho * p.wo;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t b, ch, i, j;
    decode(p, idx, wc, p.ho, p.wo, &b, &ch, &i, &j);
    const int64_t g = ch / (p.k * p.k), kk = ch % (p.k * p.k);
    const int64_t hh = i * p.s + (kk / p.k) * p.d - p.p, ww = j * p.s + (kk % p.k) * p.d - p.p;
    float acc = 0.f;  // padding's zeros multiplied (a NaN gradient stays NaN there), as the tiled kernels do
    const bool inside = hh >= 0 && hh < p.h && ww >= 0 && ww < p.w;
    for (int64_t c = g * p.cg; c < (g + 1) * p.cg; ++c) {
      acc = fmaf(to_float(gy[offset4(p.channels_last, b, c, i, j, p.c, p.ho, p.wo)]),
                 inside ? to_float(x[offset4(p.channels_last, b, c, hh, ww, p.c, p.h, p.w)]) : 0.f, acc);
    }
    static_cast<T*>(p.out)[idx] = from_float<T>(acc);
  }
}

// ---- 16-bit on tensor cores: forward and grad-input as banded products ------------------------------------------
// RedNet's shapes (kRedNet) at stride 1, NCHW, fp16/bf16. Per kernel row kh and 8 neighbouring pixels n of one row
// (forward: of y; grad-input: of dx), one mma.m16n8k16 over the group's 16 channels c and 16 staged columns k of
// the channel operand (forward: x; grad-input: grad_out):
//   D[c, n] += sum_k A[c, k] B[k, n],  B[k, n] = pixel n's weight for tap kw(k, n) where 0 <= kw < 7, else 0,
//   forward kw = k - n - e, grad-input kw = 6 - (k - n - e), e = the first column's offset past a multiple of the
//   copies' width (band_lead: the staged columns start there).
// 7 of B's 16 rows per column are taps (44% of the products useful), but a product takes ~13 warp instructions where
// the FFMA kernels spent ~2 per useful multiply-add of its 896. The operand and the block's weights are staged
// untouched (copy_vecs: 8- or 4-byte cp.async, or single values at odd widths and on 2-byte aligned tensors: band_vec),
// the weights by the pixel they serve (grad-input: tap (kh, kw) shifted by p - kh rows and p - kw columns), so that a
// lane's four B entries sit at offsets fixed for the whole kernel; the tile's shape is a template parameter, so the hot
// loop's shared loads take immediate offsets. The zero entries of B meet other pixels' inputs: a NaN or Inf there turns
// a finite sum into NaN, as does an Inf weight times a zero of padding, so every non-finite sum is taken again directly
// (forward_direct, grad_input_direct). A warp owns one row of the block's tile.
constexpr int kBandRows = 8;  // rows of a tile: a warp each

// A stride of 8 (mod 16) 16-bit values: the eight rows (channels, or taps) a load instruction reads land in
// different 4-byte bank groups (with grad-input's lead columns too, at RedNet's padding 3).
constexpr LC_HD int band_stride(int n) { return n + ((8 - n % 16) + 16) % 16; }

// Staged rows start at a multiple of `vec` columns (the copies' width: 4, 2 or 1 16-bit values); a row meant to
// start at column `col` holds it at this offset (two's complement: right for negative columns too).
constexpr LC_HD int band_lead(int col, int vec) { return col & (vec - 1); }

// Shared memory of a tile of kBandRows rows x nt n-tiles of 8 pixels, in 16-bit values: the channel operand
// [16][kBandRows + 6][a_rs] (16 columns from each n-tile's start), then the weights [49][kBandRows][w_rs]
// (grad-input: up to 3 lead columns, band_lead; at 3 blocks per SM on RedNet-50's 56 columns, 75 KB, there is no
// room to spare) unless they are read from global memory (copies of one value: band_mma_kernel).
struct BandLayout {
  int nt;
  bool grad_input;
  bool weights_staged;
  constexpr LC_HD int cols() const { return 8 * nt; }
  constexpr LC_HD int a_rs() const { return cols() + 8; }
  constexpr LC_HD int a_ps() const { return band_stride((kBandRows + kRedNetK - 1) * a_rs()); }
  constexpr LC_HD int w_rs() const { return cols() + (grad_input ? 4 : 0); }
  constexpr LC_HD int w_ts() const { return band_stride(kBandRows * w_rs()); }
  constexpr LC_HD size_t smem() const {
    return (static_cast<size_t>(kCB) * a_ps() + (weights_staged ? kRedNetK * kRedNetK * w_ts() : 0)) * 2;
  }
};

struct BandTile {
  int nt;   // n-tiles of 8 pixels a row (1, 2, 4, 7)
  int vec;  // 16-bit values a staging copy (4, 2, 1: band_vec)
  int64_t tiles_h, tiles_w;
};

// A banded kernel's block: its first column and row, group and image. In 32 bits (grid_size keeps grids under 2^31
// blocks): a 64-bit division is a call of ~70 instructions, three of them most of a 7x7 map's block set-up.
struct BandPos {
  int j0, i0, g, b;
};
LC_D BandPos band_pos(const Inv& p, const BandTile& t, int cols) {
  unsigned blk = blockIdx.x;
  const unsigned tiles_w = static_cast<unsigned>(t.tiles_w), tiles_h = static_cast<unsigned>(t.tiles_h);
  BandPos pos;
  pos.j0 = static_cast<int>(blk % tiles_w) * cols;
  blk /= tiles_w;
  pos.i0 = static_cast<int>(blk % tiles_h) * kBandRows;
  blk /= tiles_h;
  pos.g = static_cast<int>(blk % static_cast<unsigned>(p.groups));
  pos.b = static_cast<int>(blk / static_cast<unsigned>(p.groups));
  return pos;
}

// The band kernel's non-finite sums taken again (bit 4 nt + 2 h + r of redo: channel c + 8h, column col + 8 nt + r
// of row `row`; out points at channel c's row). Not inlined: inlined, the forward took 94 registers (2 blocks per
// SM), or under the 3-block bound spilled into its hot loop (sm_90, 2026-11-28).
template <typename T, bool kGradInput>
__device__ __noinline__ void band_redo(const Inv& p, int64_t b, int64_t c, int64_t row, int col, uint32_t redo,
                                       T* out) {
  const int64_t plane = kGradInput ? p.h * p.w : p.ho * p.wo;
  for (int bit = 0; redo != 0; ++bit, redo >>= 1) {
    if (!(redo & 1u)) continue;
    const int64_t ch = c + 8 * (bit / 2 % 2);
    const int j = col + bit / 4 * 8 + bit % 2;
    const float v = kGradInput ? grad_input_direct<T>(p, b, ch, row, j) : forward_direct<T>(p, b, ch, row, j);
    out[(ch - c) * plane + j] = from_float<T>(v);
  }
}

template <typename T, bool kGradInput, int kNT, int kVec>
__global__ void __launch_bounds__(kBandRows * 32, 3) band_mma_kernel(Inv p, BandTile t) {
  constexpr int K = kRedNetK;
  constexpr BandLayout L{kNT, kGradInput, kVec > 1};
  T* as = reinterpret_cast<T*>(dynamic_smem());
  T* ws = as + kCB * L.a_ps();
  const BandPos pos = band_pos(p, t, L.cols());
  const int j0 = pos.j0;  // the tile's first pixel (forward: y; else dx)
  const int64_t i0 = pos.i0, g = pos.g, b = pos.b, ch0 = g * kCB;

  // the channel operand: forward x rows i0 - p.., columns j0 - p - e..; grad-input grad_out rows i0 + p - 6..,
  // columns j0 + p - 6 - e.. (e <= 2: plan_band)
  // (offsets within the group's planes in 32 bits: plan_band)
  const int src_h = static_cast<int>(kGradInput ? p.ho : p.h), src_w = static_cast<int>(kGradInput ? p.wo : p.w);
  const T* src = static_cast<const T*>(kGradInput ? p.grad_out : p.x) + (b * p.c + ch0) * src_h * src_w;
  const int arow0 = static_cast<int>(kGradInput ? i0 + p.p - (K - 1) : i0 - p.p);
  const int e = band_lead(kGradInput ? j0 + p.p - (K - 1) : j0 - p.p, kVec);
  const int acol0 = (kGradInput ? j0 + p.p - (K - 1) : j0 - p.p) - e;
  // the weights of tap (kh, kw) at rows i0 + r, columns j0 + c; grad-input: rows + p - kh, columns + p - kw, from the
  // multiple of kVec at or before (band_lead). Copies of one value (odd widths) cost ~35 instructions each, more
  // than the products: those kernels read their B entries straight from global memory instead (each weight once).
  const int ho = static_cast<int>(p.ho), wo = static_cast<int>(p.wo), wrow0 = static_cast<int>(i0);
  const T* wt = static_cast<const T*>(p.weight) + (b * p.groups + g) * K * K * ho * wo;
  // Staged in kNT + 1 groups of 8 columns (group s: the operand's and the weights' columns 8s to 8s + 8; the last:
  // the operand's 8 columns past the tile and grad-input's lead weight columns), each its own cp.async group, so
  // that n-tile nt, which reads groups nt and nt + 1, starts once they have landed while the rest are in flight
  // (staged whole, the blocks of an SM staged and then computed in step: H200 run 1 measured the sum of the two).
  // Copies of one value go through registers, all before the first n-tile.
  const auto a_offset = [&](int cc, int row) {
    const int gr = arow0 + row;
    return static_cast<unsigned>(gr) < static_cast<unsigned>(src_h) ? (cc * src_h + gr) * src_w : -1;
  };
  const auto w_offset = [&](int tap, int row) {
    const int gr = wrow0 + row + (kGradInput ? p.p - tap / K : 0);
    return static_cast<unsigned>(gr) < static_cast<unsigned>(ho) ? (tap * ho + gr) * wo : -1;
  };
  const auto w_first = [&](int tap) { return (j0 + (kGradInput ? p.p - tap % K : 0)) & -kVec; };
  constexpr int kThreads = kBandRows * 32;
  if constexpr (kVec > 1) {
    const ColumnCopies<kCB, kBandRows + K - 1, 8, kVec, kThreads> a_copies(
        L.a_ps(), L.a_rs(), a_offset, [&](int) { return acol0; }, threadIdx.x);
    const ColumnCopies<K * K, kBandRows, 8, kVec, kThreads> w_copies(L.w_ts(), L.w_rs(), w_offset, w_first,
                                                                      threadIdx.x);
#pragma unroll 1
    for (int grp = 0; grp < kNT; ++grp) {
      a_copies.issue(as, src, src_w, 8 * grp);
      w_copies.issue(ws, wt, wo, 8 * grp);
      cp_async_commit();
    }
    a_copies.issue(as, src, src_w, 8 * kNT);
    if constexpr (kGradInput) {
      ColumnCopies<K * K, kBandRows, 4, kVec, kThreads>(L.w_ts(), L.w_rs(), w_offset, w_first, threadIdx.x)
          .issue(ws, wt, wo, 8 * kNT);
    }
    cp_async_commit();
  } else {
    copy_vecs<kCB, kBandRows + K - 1, L.a_rs(), 1, kThreads>(as, L.a_ps(), L.a_rs(), src_w, src, a_offset,
                                                              [&](int) { return acol0; }, threadIdx.x);
    __syncthreads();
  }

  // This lane's A rows (channels n, n + 8) and B entries: rows k = 2q, 2q + 1, 2q + 8, 2q + 9 of column n (PTX's
  // fragment layouts); an entry off the band reads tap 0 and is masked to zero. From global memory, entry s of
  // kernel row kh and n-tile nt is wt[w_off[s] + kh * w_kh + 8 nt] where it is on the band and the y pixel it
  // belongs to (grad-input: row + p - kh, column + p - kw) is on the map, else zero.
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, n = lane / 4, q = lane % 4;
  const int64_t row = i0 + warp, out_h = kGradInput ? p.h : p.ho, out_w = kGradInput ? p.w : p.wo;
  const T* a_lane = as + (kGradInput ? warp + K - 1 : warp) * L.a_rs() + n * L.a_ps() + 2 * q;
  const T* w_lane[4];
  int w_off[4], w_col[4];  // (global B) the offset at kh = 0, nt = 0; the y column the entry serves at nt = 0
  uint32_t mask[2] = {0u, 0u}, band = 0u;
  const int hw = ho * wo, w_kh = K * hw - (kGradInput ? wo : 0);
  const int w_row = static_cast<int>(row) + (kGradInput ? p.p : 0);  // the y row of kernel row 0
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const int d = 2 * q + (s & 1) + (s >> 1) * 8 - n - e, kw = kGradInput ? K - 1 - d : d;
    const bool on_band = d >= 0 && d < K;
    const int lead = kGradInput ? band_lead(p.p - kw, kVec) : 0;
    w_lane[s] = ws + warp * L.w_rs() + (on_band ? kw * L.w_ts() + n + lead : 0);
    if (on_band) mask[s >> 1] |= 0xffffu << (16 * (s & 1));
    w_col[s] = j0 + n + (kGradInput ? p.p - kw : 0);
    w_off[s] = kw * hw + w_row * wo + w_col[s];
    band |= on_band ? 1u << s : 0u;
  }
  T* out = static_cast<T*>(p.out) + ((b * p.c + ch0 + n) * out_h + row) * out_w;  // channel n's row
  const bool row_ok = row < out_h;
  uint32_t redo = 0;  // bit 4 nt + 2 h + r: the sum of channel n + 8h, pixel 2q + r of n-tile nt is not finite
#pragma unroll 1
  for (int nt = 0; nt < kNT; ++nt) {
    if constexpr (kVec > 1) {
      if (nt > 0) cp_async_commit();  // an empty group, so that kNT - 1 pending means groups <= nt + 1 landed
      cp_async_wait_groups<kNT - 1>();
      __syncthreads();
    }
    float acc[4] = {};
#pragma unroll
    for (int kh = 0; kh < K; ++kh) {
      const T* ar = a_lane + (kGradInput ? -kh : kh) * L.a_rs() + nt * 8;
      const uint32_t a[4] = {load_pair(ar), load_pair(ar + 8 * L.a_ps()), load_pair(ar + 8),
                             load_pair(ar + 8 * L.a_ps() + 8)};
      uint32_t bv[2];
      if constexpr (L.weights_staged) {
        const int wk = kh * K * L.w_ts() + nt * 8;
        bv[0] = (bits16(w_lane[0][wk]) | bits16(w_lane[1][wk]) << 16) & mask[0];
        bv[1] = (bits16(w_lane[2][wk]) | bits16(w_lane[3][wk]) << 16) & mask[1];
      } else {
        const bool y_row = static_cast<unsigned>(w_row - (kGradInput ? kh : 0)) < static_cast<unsigned>(ho);
        uint32_t v[4];
#pragma unroll
        for (int s = 0; s < 4; ++s) {
          const bool ok = (band >> s & 1u) && y_row &&
                          static_cast<unsigned>(w_col[s] + 8 * nt) < static_cast<unsigned>(wo);
          v[s] = ok ? bits16(wt[w_off[s] + kh * w_kh + 8 * nt]) : 0u;
        }
        bv[0] = v[0] | v[1] << 16;
        bv[1] = v[2] | v[3] << 16;
      }
      mma_m16n8k16<T>(acc, a, bv);
    }
    const int col = j0 + nt * 8 + 2 * q;  // and col + 1 (kVec > 1: widths are even)
    if (!row_ok || col >= out_w) continue;
    const bool second = kVec > 1 || col + 1 < out_w;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      T* o = out + 8 * h * out_h * out_w + col;
      if constexpr (kVec > 1) {
        store_pair(o, from_float<T>(acc[2 * h]), from_float<T>(acc[2 * h + 1]));
      } else {  // odd widths: rows start at odd elements
        o[0] = from_float<T>(acc[2 * h]);
        if (second) o[1] = from_float<T>(acc[2 * h + 1]);
      }
      redo |= (is_finite(acc[2 * h]) ? 0u : 1u << (4 * nt + 2 * h)) |
              (is_finite(acc[2 * h + 1]) || !second ? 0u : 2u << (4 * nt + 2 * h));
    }
  }
  if (redo != 0) {
    note_redo();
    band_redo<T, kGradInput>(p, b, ch0 + n, row, j0 + 2 * q, redo, out);
  }
}

// The copies' width (16-bit values) for the banded kernels: the widest of 4, 2, 1 that divides both maps' widths,
// whose byte size aligns the copied tensors (the output takes 4-byte pair stores from 2 on), and that leaves at most
// 2 lead columns before the channel operand's first (a product's 16 columns reach 8 + 6 + lead).
inline int band_vec(const Inv& p, std::initializer_list<const void*> copied, const void* out) {
  int vec = 4;
  auto fits = [&](int v) {
    bool ok = p.w % v == 0 && p.wo % v == 0 && band_lead(-p.p, v) <= 2 && band_lead(p.p - (kRedNetK - 1), v) <= 2;
    for (const void* q : copied) ok = ok && reinterpret_cast<uintptr_t>(q) % (2 * v) == 0;
    return ok && (v == 1 || reinterpret_cast<uintptr_t>(out) % 4 == 0);
  };
  while (vec > 1 && !fits(vec)) vec /= 2;
  return vec;
}

// The banded tensor-core path of the forward or grad-input: RedNet's shapes at stride 1, 16-bit NCHW, on a device
// with tensor cores, copies of `vec` values (band_vec); grad-input from maps wider than 16 columns. False where it
// does not apply or fit. The FMA kernels take the rest: on 16-bit tiles staged as 16-bit, they were predicted to
// beat the banded grad-input at RedNet-50's 14x14 and 7x7 maps (0.024 and 0.017 ms against 0.028 and 0.024) and the
// banded grad-weight (its products per 16 pixels: removed) at every map (0.056 against 0.073 ms at 56x56; static
// sm_90 model, bench/NOTES.md, session 22).
inline bool plan_band(const Inv& p, Dir dir, const DeviceLimits& lim, int elem_bytes, int vec, BandTile* tile) {
  // a group's planes and an image's weights are addressed in 32 bits
  const int64_t limit = int64_t{1} << 31;
  const bool grad_input = dir == Dir::kGradInput;
  if (!lim.tensor_cores || elem_bytes != 2 || p.channels_last || !rednet_shape(p) || p.s != 1 ||
      dir == Dir::kGradWeight || (grad_input && p.w <= 16) ||
      static_cast<int64_t>(p.groups) * p.k * p.k * p.ho * p.wo >= limit || kCB * p.h * p.w >= limit ||
      kCB * p.ho * p.wo >= limit) {
    return false;
  }
  const int64_t rows = grad_input ? p.h : p.ho, cols = grad_input ? p.w : p.wo;
  BandTile t{};
  t.vec = vec;
  t.nt = cols <= 8 ? 1 : cols <= 16 ? 2 : cols <= 32 ? 4 : 7;  // n-tiles of 8 pixels (RedNet-50's 7, 14, 28, 56)
  const BandLayout layout{t.nt, grad_input, vec > 1};
  if (layout.smem() > static_cast<size_t>(lim.max_smem_optin)) return false;
  t.tiles_h = ceil_div(rows, kBandRows);
  t.tiles_w = ceil_div(cols, layout.cols());
  *tile = t;
  return true;
}

// f(kernel) with the band_mma_kernel instantiation for n-tiles nt and copies of vec values.
template <typename T, bool kGradInput, int kVec, typename F>
void with_band_kernel(int nt, F&& f) {
  switch (nt) {
    case 1: f(band_mma_kernel<T, kGradInput, 1, kVec>); return;
    case 2: f(band_mma_kernel<T, kGradInput, 2, kVec>); return;
    case 4: f(band_mma_kernel<T, kGradInput, 4, kVec>); return;
    default: f(band_mma_kernel<T, kGradInput, 7, kVec>); return;
  }
}

template <typename T, bool kGradInput, typename Launch>
void launch_band(Launch& launch, const Inv& p, const BandTile& t) {
  auto go = [&](auto kernel) {
    launch(kernel, grid_size(p.b * p.groups * t.tiles_h * t.tiles_w), kBandRows * 32,
           BandLayout{t.nt, kGradInput, t.vec > 1}.smem(), p, t);
  };
  if (t.vec == 4) {
    with_band_kernel<T, kGradInput, 4>(t.nt, go);
  } else if (t.vec == 2) {
    with_band_kernel<T, kGradInput, 2>(t.nt, go);
  } else {
    with_band_kernel<T, kGradInput, 1>(t.nt, go);
  }
}

// ---- plans -----------------------------------------------------------------------------------------------------

// Pixel tile over (rows, cols) of the kernel's own output; false when even one row of rb pixels does not fit.
// The staged planes hold the input's own values (elem_bytes each): a 16-bit tile takes half an fp32 one's smem.
inline bool plan(const Inv& p, Dir dir, const DeviceLimits& lim, int elem_bytes, InvTile* tile) {
  const int64_t rows = dir == Dir::kGradInput ? p.h : p.ho, cols = dir == Dir::kGradInput ? p.w : p.wo;
  const int rb = pixels_per_thread((p.s == 1 && p.d == 1) || (dir == Dir::kGradInput && rednet_shape(p)));
  const int64_t col_groups = ceil_div(cols, rb);
  int bx = static_cast<int>(col_groups < 32 ? col_groups : 32);
  int by = static_cast<int>(ceil_div(rows, ceil_div(rows, kThreads / bx)));
  const int64_t chunks = ceil_div(p.cg, kCB);
  const int nc = static_cast<int>(p.cg < kCB ? p.cg : kCB);
  const int64_t reach = static_cast<int64_t>(p.k - 1) * p.d;
  const int vec = stage_vec(dir == Dir::kGradInput ? p.grad_out : p.x, dir == Dir::kGradInput ? p.wo : p.w,
                            elem_bytes, p.channels_last);

  // weight_tap_step; stage_planes: a chunk's planes in 32 bits
  const int64_t limit = int64_t{1} << 31;
  if (static_cast<int64_t>(p.groups) * p.k * p.k * p.ho * p.wo >= limit || kCB * p.h * p.w >= limit ||
      kCB * p.ho * p.wo >= limit) {
    return false;
  }
  InvTile t{};
  auto fill = [&]() -> bool {
    int64_t ih, iw;
    if (dir == Dir::kGradInput) {  // grad_out rows feeding by dx rows (a bound; see the kernel)
      ih = (by - 1 + reach) / p.s + 2;
      iw = (static_cast<int64_t>(bx) * rb - 1 + reach) / p.s + 2;
    } else {
      ih = static_cast<int64_t>(by - 1) * p.s + reach + 1;
      iw = static_cast<int64_t>(bx * rb - 1) * p.s + reach + 1;
    }
    // rows of whole copies from up to vec - 1 columns early, aligned for them and for the windows' loads of two
    // values (load_window: 8-byte fp32 pairs, 32-bit words of 16-bit values)
    const int64_t vecs = ceil_div(iw + vec - 1, vec), align = imax(vec, 2);
    const int64_t rs = aligned_stride(vecs * vec, align), ps = aligned_stride(ih * rs, align);
    if (ih * rs > (1 << 24)) return false;
    t.bx = bx; t.by = by; t.rb = rb; t.nc = nc;
    t.ih = static_cast<int>(ih); t.iw = static_cast<int>(iw); t.rs = static_cast<int>(rs); t.ps = static_cast<int>(ps);
    t.vec = vec; t.vecs = static_cast<int>(vecs);
    t.tiles_h = ceil_div(rows, by);
    t.tiles_w = ceil_div(cols, static_cast<int64_t>(bx) * rb);
    t.chunks = chunks;
    t.smem = static_cast<size_t>(nc) * static_cast<size_t>(ps) * elem_bytes;
    return true;
  };
  auto blocks = [&]() { return p.b * p.groups * t.tiles_h * t.tiles_w * (dir == Dir::kGradWeight ? 1 : chunks); };
  bool ok = fill();
  // A block per SM at least, but no thinner than two rows: thin tiles re-read the K - 1 halo rows.
  while (ok && blocks() < static_cast<int64_t>(lim.num_sms) && by > 2) {
    by = (by + 1) / 2;
    ok = fill();
  }
  while (ok && t.smem > kSoftSmem && by > 2) {
    by = (by + 1) / 2;
    ok = fill();
  }
  while (!ok || t.smem > static_cast<size_t>(lim.max_smem_optin)) {
    if (by > 1) by = (by + 1) / 2;
    else if (bx > 1) bx = (bx + 1) / 2;
    else return false;
    ok = fill();
  }
  *tile = t;
  return true;
}

inline unsigned naive_grid(int64_t total) {
  const int64_t blocks = ceil_div(total, kThreads);
  return static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));
}

inline Inv make_inv(const InvArgs& a) {
  return Inv{a.x, a.weight, a.grad_out, a.out, static_cast<float*>(a.workspace), a.b, a.c, a.h, a.w, a.ho, a.wo,
             a.groups, static_cast<int>(a.c / a.groups), a.k, a.s, a.p, a.d, a.channels_last};
}

inline int64_t tile_blocks(const Inv& p, const InvTile& t, bool with_chunks) {
  return p.b * p.groups * t.tiles_h * t.tiles_w * (with_chunks ? t.chunks : 1);
}

template <typename T, typename Launch>
void run_forward(Launch& launch, const InvArgs& a, const DeviceLimits& lim) {
  const Inv p = make_inv(a);
  if constexpr (sizeof(T) == 2) {
    BandTile bt;
    if (plan_band(p, Dir::kForward, lim, sizeof(T), band_vec(p, {a.x, a.weight}, a.out), &bt)) {
      launch_band<T, false>(launch, p, bt);
      return;
    }
  }
  InvTile t;
  if (!plan(p, Dir::kForward, lim, sizeof(T), &t)) {
    launch(forward_naive_kernel<T>, naive_grid(p.b * p.c * p.ho * p.wo), kThreads, 0, p);
  } else {
    const bool unit = p.s == 1 && p.d == 1, rednet = rednet_shape(p);
    auto kernel = unit ? (rednet ? forward_kernel<T, true, true> : forward_kernel<T, true, false>)
                       : (rednet ? forward_kernel<T, false, true> : forward_kernel<T, false, false>);
    launch(kernel, grid_size(tile_blocks(p, t, true)), t.threads(), t.smem, p, t);
  }
}

template <typename T, typename Launch>
void run_grad_input(Launch& launch, const InvArgs& a, const DeviceLimits& lim) {
  const Inv p = make_inv(a);
  if constexpr (sizeof(T) == 2) {
    BandTile bt;
    if (plan_band(p, Dir::kGradInput, lim, sizeof(T), band_vec(p, {a.grad_out, a.weight}, a.out), &bt)) {
      launch_band<T, true>(launch, p, bt);
      return;
    }
  }
  InvTile t;
  if (!plan(p, Dir::kGradInput, lim, sizeof(T), &t)) {
    launch(grad_input_naive_kernel<T>, naive_grid(p.b * p.c * p.h * p.w), kThreads, 0, p);
  } else {
    const bool unit = p.s == 1 && p.d == 1, rednet = rednet_shape(p);
    auto kernel = unit ? (rednet ? grad_input_kernel<T, true, true> : grad_input_kernel<T, true, false>)
                       : (rednet ? grad_input_kernel<T, false, true> : grad_input_kernel<T, false, false>);
    launch(kernel, grid_size(tile_blocks(p, t, true)), t.threads(), t.smem, p, t);
  }
}

// The 16-bit plan's answer: its tile takes the least shared memory, so any dtype's tile plans only where it does
// (an fp32 call whose tile does not fit gets a workspace it leaves unused).
inline size_t grad_weight_workspace_bytes(const InvArgs& a, const DeviceLimits& lim) {
  const Inv p = make_inv(a);
  InvTile t;
  if (!plan(p, Dir::kGradWeight, lim, 2, &t) || t.chunks == 1) return 0;
  return static_cast<size_t>(p.b * p.groups * p.k * p.k * p.ho * p.wo) * sizeof(float);
}

// a.workspace must hold grad_weight_workspace_bytes(a, lim) bytes.
template <typename T, typename Launch>
void run_grad_weight(Launch& launch, const InvArgs& a, const DeviceLimits& lim) {
  const Inv p = make_inv(a);
  InvTile t;
  if (!plan(p, Dir::kGradWeight, lim, sizeof(T), &t)) {
    launch(grad_weight_naive_kernel<T>, naive_grid(p.b * p.groups * p.k * p.k * p.ho * p.wo), kThreads, 0, p);
    return;
  }
  LC_CHECK(t.chunks == 1 || p.workspace != nullptr, "involution grad-weight workspace missing");
  const bool unit = p.s == 1 && p.d == 1, rednet = rednet_shape(p);
  auto kernel = unit ? (rednet ? grad_weight_kernel<T, true, true> : grad_weight_kernel<T, true, false>)
                     : (rednet ? grad_weight_kernel<T, false, true> : grad_weight_kernel<T, false, false>);
  launch(kernel, grid_size(tile_blocks(p, t, false)), t.threads(), t.smem, p, t);
}

}  // namespace inv
}  // namespace largeconv
