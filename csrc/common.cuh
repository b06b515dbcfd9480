// Shared by the kernels: element types and conversions, dynamic shared memory, small integer helpers, the
// dtype switch and the error check used by the host-side plans.
//
// Compiled three ways: by nvcc for the device, by nvcc's host pass, and by a plain C++ compiler with
// LARGECONV_EMULATE defined (csrc/emu/), which runs the same kernels on CPU threads for tests without a GPU.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "api.h"

#ifdef LARGECONV_EMULATE
#include <cmath>
#include <cstring>

#include "emu/cuda_emu.h"
#else
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#endif

namespace largeconv {

#define LC_HD __host__ __device__ __forceinline__
#define LC_D __device__ __forceinline__

// Plans throw this; binding.cpp turns it into a RuntimeError with the same message.
#define LC_CHECK(cond, msg)                                                          \
  do {                                                                               \
    if (!(cond)) throw std::runtime_error(std::string("largeconv cuda: ") + (msg)); \
  } while (0)

// ---- element types: storage type -> fp32 and back (all arithmetic is fp32) ------------------------------------
#ifdef LARGECONV_EMULATE
using half_t = emu::half;
using bf16_t = emu::bfloat16;
LC_D float to_float(half_t v) { return emu::half_to_float(v); }
LC_D float to_float(bf16_t v) { return emu::bfloat16_to_float(v); }
template <typename T> LC_D T from_float(float v);
template <> LC_D half_t from_float<half_t>(float v) { return emu::float_to_half(v); }
template <> LC_D bf16_t from_float<bf16_t>(float v) { return emu::float_to_bfloat16(v); }
#else
using half_t = __half;
using bf16_t = __nv_bfloat16;
LC_D float to_float(half_t v) { return __half2float(v); }
LC_D float to_float(bf16_t v) { return __bfloat162float(v); }
template <typename T> LC_D T from_float(float v);
template <> LC_D half_t from_float<half_t>(float v) { return __float2half_rn(v); }
template <> LC_D bf16_t from_float<bf16_t>(float v) { return __float2bfloat16_rn(v); }
#endif
LC_D float to_float(float v) { return v; }
template <> LC_D float from_float<float>(float v) { return v; }

// Calls f(T{}) with the storage type of `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); return;
    case DType::kFloat16: f(half_t{}); return;
    case DType::kBFloat16: f(bf16_t{}); return;
  }
  LC_CHECK(false, "unsupported dtype");
}

// ---- dynamic shared memory (always fp32: inputs are converted once when staged) -------------------------------
#ifdef LARGECONV_EMULATE
LC_D float* dynamic_smem() { return reinterpret_cast<float*>(emu::shared_memory()); }
#else
LC_D float* dynamic_smem() {
  extern __shared__ float4 largeconv_smem[];  // float4: 16-byte alignment
  return reinterpret_cast<float*>(largeconv_smem);
}
#endif

// ---- integer helpers ------------------------------------------------------------------------------------------
LC_HD int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
LC_HD int64_t floor_div(int64_t a, int64_t b) {  // b > 0, a of any sign
  return a >= 0 ? a / b : -((-a + b - 1) / b);
}
LC_HD int imin(int a, int b) { return a < b ? a : b; }
LC_HD int imax(int a, int b) { return a > b ? a : b; }

// Offset of element (n, c, h, w) of a contiguous NCHW or channels_last (NHWC) tensor of shape (*, C, H, W).
LC_HD int64_t offset4(bool channels_last, int64_t n, int64_t c, int64_t h, int64_t w, int64_t C, int64_t H,
                      int64_t W) {
  return channels_last ? ((n * H + h) * W + w) * C + c : ((n * C + c) * H + h) * W + w;
}

// Shared-memory strides (floats), at least n: a multiple of `align` floats (the widest access) whose count of
// them is odd. Scalar reads (align 1): the same column of consecutive rows (or planes) in different banks. 16-byte
// reads (align 4): the eight threads of a quarter-warp reading consecutive rows start in different 16-byte bank
// groups.
inline int64_t aligned_stride(int64_t n, int64_t align) {
  const int64_t s = (n + align - 1) / align * align;
  return (s / align) % 2 ? s : s + align;
}
inline int64_t odd_stride(int64_t n) { return aligned_stride(n, 1); }
inline int64_t vec_stride(int64_t n) { return aligned_stride(n, 4); }

// A stride of 2 (mod 4) 16-byte units (a multiple of 8 floats, not of 16): plane p starts in 16-byte bank group
// 2p (mod 8), so 4 planes, each read at an odd offset of rows, cover all 8 groups.
inline int64_t pair_stride(int64_t n) {
  const int64_t s = (n + 7) / 8 * 8;
  return (s / 4) % 4 == 2 ? s : s + 8;
}

// 8-byte shared-memory load; p must be 8-byte aligned (the emulator checks).
LC_D float2 load2(const float* p) {
#ifdef LARGECONV_EMULATE
  emu::check_aligned(p, 8);
#endif
  return *reinterpret_cast<const float2*>(p);
}

// 16-byte shared-memory load; p must be 16-byte aligned (the emulator checks).
LC_D float4 load4(const float* p) {
#ifdef LARGECONV_EMULATE
  emu::check_aligned(p, 16);
#endif
  return *reinterpret_cast<const float4*>(p);
}

// kBytes (4: a float or two 16-bit values; 8, 16: vectors of them) copied from global to shared memory without
// passing through registers (cp.async, sm_80+), or zeros when !ok (then src is not read, but must still be a valid
// address). Both addresses are kBytes-aligned. A thread's copies have landed once it calls cp_async_wait_all, or
// cp_async_wait_groups for the groups it closed with cp_async_commit (a barrier after that makes them visible to
// the block). GPUs before sm_80 (no cp.async) copy at once; the emulator lands a copy only at the wait for it.
template <int kBytes>
LC_D void cp_async(void* dst, const void* src, bool ok) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
#if defined(LARGECONV_EMULATE)
  emu::check_aligned(dst, kBytes);
  emu::check_aligned(src, kBytes);
  emu::cp_async_issue(dst, src, ok, kBytes);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  using Word = std::conditional_t<kBytes == 4, uint32_t, std::conditional_t<kBytes == 8, uint2, uint4>>;
  *static_cast<Word*>(dst) = ok ? *static_cast<const Word*>(src) : Word{};
#else
  const unsigned to = static_cast<unsigned>(__cvta_generic_to_shared(dst));
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(to), "l"(src), "n"(kBytes),
               "r"(ok ? kBytes : 0) : "memory");
#endif
}

LC_D void cp_async_wait_all() {
#if defined(LARGECONV_EMULATE)
  emu::cp_async_wait_all();
#elif !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// Marks a thread's entry into a kernel's non-finite path (its sums taken again directly); the emulator counts them.
LC_D void note_redo() {
#if defined(LARGECONV_EMULATE)
  ++emu::g_redos;
#endif
}

// Closes the group of this thread's copies issued since the last commit.
LC_D void cp_async_commit() {
#if defined(LARGECONV_EMULATE)
  emu::cp_async_commit();
#elif !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most kPending of this thread's committed groups are still in flight: the older ones have landed.
// (An immediate of the instruction: a loop that waits for one more group each pass commits an empty group each
// pass instead of counting down.)
template <int kPending>
LC_D void cp_async_wait_groups() {
  static_assert(kPending >= 0, "a count of groups");
#if defined(LARGECONV_EMULATE)
  emu::cp_async_wait_group(kPending);
#elif !(defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending) : "memory");
#endif
}

// Threads that stage one row together (stage_rows): a row's set-up (its source row, the copy
// loop's trip count: ~56 SASS instructions) is paid once per team and pass, so a team of 8 on rows of 13-70 elements
// (RedNet-50's tiles) costs ~20-43 warp instructions a row where a warp-wide team spent 69-95 (sm_90, 2026-11-28);
// a warp's copies still touch only 4 rows' lines.
constexpr int kStageTeam = 8;

// NCHW staging: dst[zz * plane_stride + row * row_stride + c] = the input at column col0 + c of row row_base(zz, row)
// (as float), for zz < planes, row < rows, c < cols; zero where that column is outside [0, width) or row_base gives
// null (a row outside the input, a plane past the channels). `safe`: any readable element of the input (the address
// a zero-filled fp32 copy names). Teams of kStageTeam consecutive threads take a row each, lanes along the columns:
// coalesced loads and no division per element (the generic loop, one (plane, row, column) split per element, spent
// ~75 instructions on each: sm_90 SASS, 2026-11-27). fp32 goes by cp.async: a thread issues all its copies before
// waiting once, where loads through registers waited for every row's one or two values before the next row's (~30
// memory round trips per RedNet-50 involution block, sm_90 SASS 2026-11-28). A partial last warp sits out.
template <typename T, typename RowBase>
LC_D void stage_rows(float* dst, int plane_stride, int row_stride, int planes, int rows, int cols, int64_t col0,
                     int64_t width, const T* safe, RowBase row_base, int tid, int nthreads) {
  const int team = nthreads < kStageTeam ? nthreads : kStageTeam;
  const int teams = nthreads / team, member = tid % team, which = tid / team;
  if (which >= teams) return;
  if constexpr (std::is_same_v<T, float>) {
    // 32-bit columns (an image row is narrower than 2^31) and one unsigned compare for both ends: the int64 form
    // spent ~20 SASS instructions a copy (sm_90, 2026-11-28)
    const int first = static_cast<int>(col0);
    int zz = which / rows, row = which % rows;
    for (; zz < planes; row += teams) {
      while (row >= rows) row -= rows, ++zz;  // the next (plane, row) without a division
      if (zz >= planes) break;
      const float* src = row_base(zz, row);
      const float* from = src != nullptr ? src : safe;
      const unsigned in_width = src != nullptr ? static_cast<unsigned>(width) : 0u;  // a row outside: all zero
      float* d = dst + zz * plane_stride + row * row_stride;
#pragma unroll 4
      for (int c = member; c < cols; c += team) {
        const int gc = first + c;
        const bool ok = static_cast<unsigned>(gc) < in_width;
        cp_async<4>(d + c, from + (ok ? gc : 0), ok);
      }
    }
    cp_async_wait_all();
  } else {  // 16-bit inputs widen through registers (this form keeps those kernels free of local memory)
    for (int pr = which; pr < planes * rows; pr += teams) {
      const int zz = pr / rows, row = pr % rows;
      const T* src = row_base(zz, row);
      float* d = dst + zz * plane_stride + row * row_stride;
#pragma unroll 4
      for (int c = member; c < cols; c += team) {
        const int64_t gc = col0 + c;
        d[c] = src != nullptr && gc >= 0 && gc < width ? to_float(src[gc]) : 0.f;
      }
    }
  }
}

// One 16-bit row by 4-byte cp.async, column pairs c = start, start + step, ... < cols (start, step even): dst[c],
// dst[c + 1] = src_row[col0 + c], [col0 + c + 1], zero outside [0, width) or where src_row is null (a row outside
// the input). col0 even and the row 4-byte aligned, so a pair is inside the row or outside it whole; `safe`: any
// aligned address (read for nothing). The caller waits (cp_async_wait_all) before its barrier.
template <typename T>
LC_D void copy_pairs(T* dst, const T* src_row, int64_t col0, int64_t width, int cols, int start, int step,
                     const T* safe) {
  const int first = static_cast<int>(col0);  // as stage_rows: 32-bit columns, one unsigned compare for both ends
  const T* from = src_row != nullptr ? src_row : safe;
  const unsigned in_width = src_row != nullptr ? static_cast<unsigned>(width) : 0u;
  for (int c = start; c < cols; c += step) {
    const int gc = first + c;
    const bool ok = static_cast<unsigned>(gc) < in_width;
    cp_async<4>(dst + c, from + (ok ? gc : 0), ok);
  }
}

// The 16-bit value in the low half of `bits` as T.
template <typename T>
LC_D T from_bits16(uint32_t bits) {
#ifdef LARGECONV_EMULATE
  T v;
  v.bits = static_cast<uint16_t>(bits);
  return v;
#else
  if constexpr (std::is_same_v<T, half_t>) return __ushort_as_half(static_cast<unsigned short>(bits));
  else return __ushort_as_bfloat16(static_cast<unsigned short>(bits));
#endif
}

// The two 16-bit values of a word (load_pair) as fp32: lo = the low half's.
template <typename T>
LC_D void widen_pair(uint32_t w, float& lo, float& hi) {
#ifdef LARGECONV_EMULATE
  lo = to_float(from_bits16<T>(w)), hi = to_float(from_bits16<T>(w >> 16));
#else
  if constexpr (std::is_same_v<T, bf16_t>) {  // a bfloat16 is the top half of its fp32: one instruction a value
    lo = __uint_as_float(w << 16), hi = __uint_as_float(w & 0xffff0000u);
  } else {
    const float2 f = __half22float2(*reinterpret_cast<const __half2*>(&w));
    lo = f.x, hi = f.y;
  }
#endif
}

#ifdef LARGECONV_EMULATE
LC_D bool is_finite(float v) { return std::isfinite(v); }
#else
LC_D bool is_finite(float v) { return isfinite(v); }
#endif

// ---- tensor cores (mma.sync, sm_80+; the emulator runs emu::mma_m16n8k16, mma_m16n8k8, mma_m16n8k8_tf32) ----
// The 16 bits of a half or bfloat16 value.
#ifdef LARGECONV_EMULATE
template <typename T> LC_D uint32_t bits16(T v) { return v.bits; }
#else
LC_D uint32_t bits16(half_t v) { return __half_as_ushort(v); }
LC_D uint32_t bits16(bf16_t v) { return __bfloat16_as_ushort(v); }
#endif

// Two neighbouring 16-bit values p[0], p[1] as one register (p[0] in the low half), from shared memory; p is
// 4-byte aligned.
template <typename T>
LC_D uint32_t load_pair(const T* p) {
#ifdef LARGECONV_EMULATE
  emu::check_aligned(p, 4);
  return bits16(p[0]) | bits16(p[1]) << 16;
#else
  return *reinterpret_cast<const uint32_t*>(p);
#endif
}

// Four 8x8 matrices of 16-bit values from shared memory in one instruction (ldmatrix .x4, sm_75+): lane l gives the
// address of row l % 8 of matrix l / 8 (16 bytes, 16-byte aligned), and r[i] of lane l is matrix i's row l / 4,
// values 2 (l % 4) and + 1 (fp32 data: value l % 4 of a row of 4): the registers of an mma A fragment. The whole
// warp calls it at once. (volatile, as CUTLASS's: kept in order with the barriers around the staged tile.)
template <typename T>
LC_D void load_matrices(uint32_t (&r)[4], const T* row) {
#ifdef LARGECONV_EMULATE
  emu::ldmatrix(r, row);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // plans launch tensor-core kernels only where DeviceLimits::tensor_cores
#else
  const unsigned from = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(from));
#endif
}

// p[0] = lo, p[1] = hi as one 32-bit shared-memory store; p is 4-byte aligned.
template <typename T>
LC_D void store_pair(T* p, T lo, T hi) {
#ifdef LARGECONV_EMULATE
  emu::check_aligned(p, 4);
  p[0] = lo;
  p[1] = hi;
#else
  *reinterpret_cast<uint32_t*>(p) = bits16(lo) | bits16(hi) << 16;
#endif
}

// Four 16-bit values, two 32-bit words (lo first), as one 8-byte shared-memory store; p is 8-byte aligned.
template <typename T>
LC_D void store_words(T* p, uint32_t lo, uint32_t hi) {
#ifdef LARGECONV_EMULATE
  emu::check_aligned(p, 8);
  memcpy(p, &lo, 4);
  memcpy(p + 2, &hi, 4);
#else
  *reinterpret_cast<uint2*>(p) = make_uint2(lo, hi);
#endif
}

// 16-bit rows copied in vectors of kVec values, the tile's shape known at compile time (kPlanes x kRows rows of
// kVecs vectors, copied by kThreads threads), with 32-bit source offsets: dst[z * plane_stride + row * row_stride +
// c] = the input at column first(z) + c of the row at offset row_offset(z, row) from src (-1: a row outside, zeros),
// zero outside [0, width). A thread keeps one column group and walks the rows apart by a pass's rows: narrow rows
// leave few lanes idle and a copy costs no division by a run-time value (a team per row spent ~60 SASS
// instructions a row on rows of 17-36 pairs, a flat split of the copies ~40 a pair: sm_90, 2026-11-28).
// kVec 4 and 2 go by 8- and 4-byte cp.async, a vector a thread and row. kVec 1 (odd widths, 2-byte aligned tensors:
// cp.async copies no less than 4 bytes) goes through registers, four neighbouring values a thread and row (one
// value a thread cost ~38 instructions a value: the row walk and offset per value) and up to 4 rows' loads before
// their stores (a memory round trip per 4 rows, not per value).
// first(z), width, the strides and src's offsets are multiples of kVec (kVec 1: strides even, kVecs a multiple of
// 4); src and dst 2 * kVec-byte aligned.
template <int kPlanes, int kRows, int kVecs, int kVec, int kThreads, typename T, typename RowOffset, typename First>
LC_D void copy_vecs(T* dst, int plane_stride, int row_stride, int width, const T* src, RowOffset row_offset,
                    First first, int tid) {
  static_assert(kVec == 1 || kVec == 2 || kVec == 4, "vectors of 1, 2 or 4 16-bit values");
  constexpr int kEach = kVec > 1 ? 1 : 4;  // vectors a thread and row
  static_assert(kVecs % kEach == 0, "single values go four a thread");
  constexpr unsigned kLanes = kVecs / kEach, kStep = kThreads / kLanes;  // threads a row, rows a pass
  static_assert(kStep >= 1, "a row wider than the block");
  const int c = kVec * kEach * (tid % kLanes);
  unsigned pr = tid / kLanes, zz = pr / kRows, row = pr % kRows;
  if (pr >= kStep) return;  // the threads past the last whole row of a pass sit out
  int to = zz * plane_stride + row * row_stride + c;  // the copy's destination
  auto next = [&]() {  // the row kStep rows on (row < kRows before and after: no division)
    pr += kStep;
    row += kStep % kRows;
    zz += kStep / kRows;
    to += kStep / kRows * plane_stride + kStep % kRows * row_stride;
    if (kStep % kRows != 0 && row >= kRows) {
      row -= kRows;
      ++zz;
      to += plane_stride - kRows * row_stride;
    }
  };
  if constexpr (kVec > 1) {
#pragma unroll 4
    for (; pr < kPlanes * kRows; next()) {
      const int off = row_offset(zz, row), gc = first(zz) + c;
      const bool ok = off >= 0 && static_cast<unsigned>(gc) < static_cast<unsigned>(width);
      // (unsigned: a 64-bit address without the sign extension)
      cp_async<2 * kVec>(dst + to, src + (ok ? static_cast<unsigned>(off + gc) : 0u), ok);
    }
  } else {
    constexpr unsigned kIters = (kPlanes * kRows + kStep - 1) / kStep, kBatch = kIters < 4 ? kIters : 4;
#pragma unroll 1
    for (unsigned i0 = 0; i0 < kIters; i0 += kBatch) {
      uint32_t v[kBatch][2];
      int at[kBatch];
#pragma unroll
      for (unsigned i = 0; i < kBatch; ++i) {
        const bool in_tile = pr < kPlanes * kRows;
        const int off = in_tile ? row_offset(zz, row) : -1, gc = first(zz) + c;
        const T* from = src + (off >= 0 ? off + gc : 0);  // (signed: the row's first columns may be padding)
        uint32_t u[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
          const bool ok = off >= 0 && static_cast<unsigned>(gc + j) < static_cast<unsigned>(width);
          u[j] = ok ? bits16(from[j]) : 0u;
        }
        v[i][0] = u[0] | u[1] << 16;
        v[i][1] = u[2] | u[3] << 16;
        at[i] = in_tile ? to : -1;
        next();
      }
#pragma unroll
      for (unsigned i = 0; i < kBatch; ++i) {
        if (at[i] >= 0) store_words(dst + at[i], v[i][0], v[i][1]);
      }
    }
  }
}

// copy_vecs' cp.async copies (kVec 4 or 2) of [kPlanes][kRows][kCols columns] slices, one thread's share set up once
// for many slices that differ only by a column shift (a tile staged in column groups, each its own cp.async
// group): then a slice costs its copies alone, ~6 instructions each, where a copy_vecs call per slice cost ~45 a
// copy (its row walk and set-up, unrolled over copies most threads do not have: sm_90 SASS, 2026-11-29).
template <int kPlanes, int kRows, int kCols, int kVec, int kThreads>
struct ColumnCopies {
  static_assert(kVec == 2 || kVec == 4, "cp.async of 4 or 8 bytes");
  static constexpr int kLanes = kCols / kVec, kStep = kThreads / kLanes;  // threads a row, rows a pass
  static constexpr int kSlots = (kPlanes * kRows + kStep - 1) / kStep;    // copies a thread, at most
  static_assert(kCols % kVec == 0 && kThreads % kLanes == 0, "whole vectors, whole rows a pass");
  int to[kSlots];    // the shared offset at shift 0; -1: no such copy
  int from[kSlots];  // the global offset of the row's column 0; -1: a row of zeros
  int col[kSlots];   // the global column at shift 0

  template <typename RowOffset, typename First>
  LC_D ColumnCopies(int plane_stride, int row_stride, RowOffset row_offset, First first, int tid) {
    const int c = kVec * (tid % kLanes);
#pragma unroll
    for (int i = 0; i < kSlots; ++i) {
      const int r = tid / kLanes + i * kStep, zz = r / kRows, row = r % kRows;
      const bool here = r < kPlanes * kRows;
      to[i] = here ? zz * plane_stride + row * row_stride + c : -1;
      from[i] = here ? row_offset(zz, row) : -1;
      col[i] = here ? first(zz) + c : 0;
    }
  }

  // The slice `shift` columns on (dst and the source both): zeros past [0, width) and in rows of zeros.
  template <typename T>
  LC_D void issue(T* dst, const T* src, int width, int shift) const {
#pragma unroll
    for (int i = 0; i < kSlots; ++i) {
      if (to[i] < 0) continue;
      const int gc = col[i] + shift;
      const bool ok = from[i] >= 0 && static_cast<unsigned>(gc) < static_cast<unsigned>(width);
      cp_async<2 * kVec>(dst + to[i] + shift, src + (ok ? static_cast<unsigned>(from[i] + gc) : 0u), ok);
    }
  }
};

// One staged row of a tensor-core tile: dst[c] = src_row[col0 + c] for c < cols (even), zero where col0 + c is
// outside [0, width) or src_row is null (a row outside the input). A lane takes two neighbouring columns: one
// 32-bit store for both (one value per lane cost ~15 instructions a value, sm_90 SASS).
template <typename T>
LC_D void stage_pairs(T* dst, const T* src_row, int64_t col0, int64_t width, int cols, int lane) {
  const T zero = from_float<T>(0.f);
  for (int c = 2 * lane; c < cols; c += 64) {
    const int64_t gc = col0 + c;
    const T lo = src_row != nullptr && gc >= 0 && gc < width ? src_row[gc] : zero;
    const T hi = src_row != nullptr && gc + 1 >= 0 && gc + 1 < width ? src_row[gc + 1] : zero;
    store_pair(dst + c, lo, hi);
  }
}

// d += A @ B for a warp: A 16x16 (row-major fragments), B 16x8 (column-major), fp32 accumulators; T = half_t or
// bf16_t. Fragment layout: PTX ISA, "Matrix Fragments for mma.m16n8k16" (summarised at emu::mma_m16n8k16).
template <typename T>
LC_D void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef LARGECONV_EMULATE
  emu::mma_m16n8k16<std::is_same_v<T, bf16_t>>(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // plans launch tensor-core kernels only where DeviceLimits::tensor_cores
#else
  if constexpr (std::is_same_v<T, bf16_t>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
  }
#endif
}

// The k = 8 shape of mma_m16n8k16: A 16x8 (a[0], a[1] as its), B 8x8 (b as its b[0]).
template <typename T>
LC_D void mma_m16n8k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
#ifdef LARGECONV_EMULATE
  emu::mma_m16n8k8<std::is_same_v<T, bf16_t>>(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // as mma_m16n8k16
#else
  if constexpr (std::is_same_v<T, bf16_t>) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
  } else {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(b));
  }
#endif
}

// v rounded to TF32 (10 explicit mantissa bits, to nearest, ties away: cvt.rna.tf32.f32), as a float whose low 13
// bits are zero: the operand form mma_m16n8k8_tf32 expects.
LC_D float to_tf32(float v) {
#ifdef LARGECONV_EMULATE
  return emu::to_tf32(v);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();  // as mma_m16n8k16
  return v;
#else
  uint32_t r;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(r) : "f"(v));
  return __uint_as_float(r);
#endif
}

// The bits of a float, as an mma operand register.
LC_D uint32_t float_bits(float v) {
#ifdef LARGECONV_EMULATE
  uint32_t r;
  std::memcpy(&r, &v, sizeof r);
  return r;
#else
  return __float_as_uint(v);
#endif
}

// d += A @ B for a warp in TF32: A 16x8 (row-major fragments), B 8x8 (column-major), operands rounded by to_tf32,
// fp32 accumulators. Fragment layout: PTX ISA, "Matrix Fragments for mma.m16n8k8" (summarised at
// emu::mma_m16n8k8_tf32); d as mma_m16n8k16's.
LC_D void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#ifdef LARGECONV_EMULATE
  emu::mma_m16n8k8_tf32(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
  __trap();
#else
  asm("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// Blocks of a 1-D grid (grid.x allows 2^31 - 1).
inline unsigned grid_size(int64_t blocks) {
  LC_CHECK(blocks >= 1 && blocks <= 2147483647LL,
           "the problem needs " + std::to_string(blocks) + " thread blocks, more than a CUDA grid allows");
  return static_cast<unsigned>(blocks);
}

constexpr size_t kDefaultSmem = 48 * 1024;  // above this a kernel must opt in (the launcher does)

// The second step of a deterministic split reduction (the weight gradients): out[i] = sum over the splits of
// partial[split][i], in split order, so the result does not depend on how blocks were scheduled. 256 threads.
template <typename T>
__global__ void __launch_bounds__(256) split_sum_kernel(const float* __restrict__ partial, T* out, int64_t count,
                                                        int64_t splits) {
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float s = 0.f;
    for (int64_t sp = 0; sp < splits; ++sp) s += partial[sp * count + idx];
    out[idx] = from_float<T>(s);
  }
}

}  // namespace largeconv
