// A tiny CUDA emulator: just enough of the CUDA programming model to run largeconv's kernels on CPU threads, so
// their indexing, tiling and __syncthreads structure can be tested on machines without a GPU (csrc/emu/emu_test.cpp,
// run by tests/test_cuda_build.py).
//
// A launch runs one std::thread per CUDA thread; the block's threads walk the grid block by block together.
// __syncthreads() is a real barrier that also checks every thread arrived at the same call site (a divergent
// barrier aborts, as does a barrier that times out), shared memory is one exactly-sized heap buffer refilled with
// NaN bytes before every block (reading a stale or unwritten value poisons the result; AddressSanitizer sees any
// overflow), and the kernels' global buffers are exactly-sized heap allocations in the test.
// Warps exist only for the tensor-core products (mma_m16n8k16, mma_m16n8k8_tf32 below): the 32 threads of a warp
// exchange their fragments through a per-warp buffer between two warp barriers. Not emulated: other warp-level
// primitives (the kernels use none), memory-model races within a barrier interval.
#pragma once

#include <math.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

// Kernels carry CUDA loop pragmas that a host compiler does not know.
#pragma GCC diagnostic ignored "-Wunknown-pragmas"

#define __host__
#define __device__
#define __global__
#define __forceinline__ inline
#define __noinline__
#define __launch_bounds__(...)
#define __syncthreads() ::emu::sync_threads(__LINE__)

namespace emu {

struct uint3 {
  unsigned x = 0, y = 0, z = 0;
};

[[noreturn]] inline void fail(const char* what, int a = 0, int b = 0) {
  std::fprintf(stderr, "emu: %s (%d, %d)\n", what, a, b);
  std::fflush(stderr);
  std::abort();
}

// ---- fp16 / bf16 storage types with round-to-nearest-even conversions ------------------------------------------
struct half {
  uint16_t bits = 0;
};
struct bfloat16 {
  uint16_t bits = 0;
};

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline half float_to_half(float f) {
  const uint32_t x = float_bits(f), sign = (x >> 16) & 0x8000u, a = x & 0x7fffffffu;
  half h;
  if (a >= 0x7f800000u) {
    h.bits = static_cast<uint16_t>(sign | (a > 0x7f800000u ? 0x7e00u : 0x7c00u));
  } else if (a >= 0x477ff000u) {  // >= 65520 rounds to infinity
    h.bits = static_cast<uint16_t>(sign | 0x7c00u);
  } else if (a < 0x38800000u) {  // below 2^-14: subnormal (exact scaling, then round to nearest even)
    h.bits = static_cast<uint16_t>(sign | static_cast<uint32_t>(nearbyintf(bits_float(a) * 16777216.0f)));
  } else {
    const uint32_t r = a + 0xfffu + ((a >> 13) & 1u);
    h.bits = static_cast<uint16_t>(sign | ((r - (112u << 23)) >> 13));
  }
  return h;
}

inline float half_to_float(half h) {
  const uint32_t sign = (h.bits & 0x8000u) << 16, e = (h.bits >> 10) & 0x1fu, m = h.bits & 0x3ffu;
  if (e == 0) return bits_float(sign | float_bits(ldexpf(static_cast<float>(m), -24)));
  if (e == 31) return bits_float(sign | 0x7f800000u | (m << 13));
  return bits_float(sign | ((e + 112u) << 23) | (m << 13));
}

inline bfloat16 float_to_bfloat16(float f) {
  const uint32_t u = float_bits(f);
  bfloat16 b;
  if ((u & 0x7fffffffu) > 0x7f800000u) {
    b.bits = static_cast<uint16_t>(((u >> 16) & 0x8000u) | 0x7fc0u);
  } else {
    b.bits = static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  }
  return b;
}

inline float bfloat16_to_float(bfloat16 b) { return bits_float(static_cast<uint32_t>(b.bits) << 16); }

// ---- block state -----------------------------------------------------------------------------------------------
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}

  // site: the __LINE__ of the __syncthreads call (negative for the launcher's own block boundaries).
  void wait(int site) {
    std::unique_lock<std::mutex> lock(mutex_);
    if (arrived_ == 0) {
      site_ = site;
    } else if (site != site_) {
      fail("divergent __syncthreads: threads of one block wait at different lines", site_, site);
    }
    const uint64_t generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, std::chrono::seconds(120), [&] { return generation_ != generation; })) {
      fail("__syncthreads timed out (a thread never arrived) at line", site_, arrived_);
    }
  }

 private:
  std::mutex mutex_;
  std::condition_variable cv_;
  int count_, arrived_ = 0, site_ = 0;
  uint64_t generation_ = 0;
};

inline Barrier* g_barrier = nullptr;

// One warp's exchange for mma_m16n8k16: each lane's A and B registers; for ldmatrix: each lane's row address.
struct Warp {
  Barrier barrier{32};
  uint32_t a[32][4];
  uint32_t b[32][2];
  const unsigned char* rows[32];
};
inline std::vector<Warp>* g_warps = nullptr;
inline unsigned char* g_smem = nullptr;
inline size_t g_smem_bytes = 0;
inline size_t g_smem_limit = 227 * 1024;
inline uint64_t g_launches = 0;
// Threads that took a kernel's non-finite path (the direct sums taken again, note_redo): on finite inputs none may,
// or a wrong staged value (say, read before its cp.async landed: the NaN poison) would be repaired unseen.
inline std::atomic<uint64_t> g_redos{0};

inline void sync_threads(int line) { g_barrier->wait(line); }

inline void check_aligned(const void* p, size_t bytes) {
  if (reinterpret_cast<uintptr_t>(p) % bytes) fail("misaligned vector access", static_cast<int>(bytes));
}
inline unsigned char* shared_memory() { return g_smem; }

// cp.async as the hardware may do it: a copy lands only when its thread waits for its group (cp.async.wait_group,
// wait_all), so a kernel that reads staged data before waiting for it reads the NaN poison. Source values are taken
// at issue (the kernels never write what they copy).
struct PendingCopy {
  unsigned char* dst;
  unsigned char value[16];
  int bytes, group;
};
inline thread_local std::vector<PendingCopy> t_copies;
inline thread_local int t_committed = 0;  // groups this thread has committed in this block

inline void cp_async_issue(void* dst, const void* src, bool ok, int bytes) {
  PendingCopy c{static_cast<unsigned char*>(dst), {}, bytes, t_committed};
  if (ok) std::memcpy(c.value, src, bytes);
  t_copies.push_back(c);
}
inline void cp_async_commit() { ++t_committed; }
// Lands every copy but those of the `pending` most recently committed groups (and those not committed yet).
inline void cp_async_wait_group(int pending) {
  size_t kept = 0;  // in place: no allocation per wait (malloc is slow under AddressSanitizer)
  for (const PendingCopy& c : t_copies) {
    if (c.group < t_committed - pending) {
      std::memcpy(c.dst, c.value, c.bytes);
    } else {
      t_copies[kept++] = c;
    }
  }
  t_copies.resize(kept);
}
inline void cp_async_wait_all() {
  cp_async_commit();
  cp_async_wait_group(0);
}
inline void cp_async_block_done() {
  if (!t_copies.empty()) fail("a block ended with cp.async copies never waited for", static_cast<int>(t_copies.size()));
  t_committed = 0;
}

}  // namespace emu

inline thread_local emu::uint3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

// One warp's d += A (16 x kK) @ B (kK x 8) through its exchange buffer: every lane posts its fragments, waits for the
// warp (barrier `site`), computes its own C elements (d[0..1] is D[group][2t, 2t+1], d[2..3] row +8; lane = 4 *
// group + t) with A(warp, r, k) and B(warp, k, c) reading the posted fragments, and waits again (`site` - 1) so no
// lane overwrites the buffer while another reads it. Every lane of the warp must call it at the same line, as on a
// GPU. Arithmetic as the tensor cores of Volta to Hopper do it (Fasi et al., "Numerical behavior of NVIDIA tensor
// cores", 2021; Khattak and Mikaitis, 2024): products exact, the kK products and C summed (here exactly, in double)
// and the sum rounded toward zero to fp32, not to nearest, so a long chain of mma into one accumulator drifts
// toward zero by up to an ulp a step (H200 run 1: a 63x63 kernel's 3xTF32 grad-input, 1.26e-5 relative).
inline float round_toward_zero(double v) {
  float f = static_cast<float>(v);  // to nearest; one step back toward zero where that went past v
  if (std::isfinite(f) && std::fabs(static_cast<double>(f)) > std::fabs(v)) f = std::nextafter(f, 0.f);
  return f;
}

template <int kK, typename ReadA, typename ReadB>
void warp_mma(const char* name, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], int site, ReadA A,
              ReadB B) {
  if (g_warps == nullptr || blockDim.x % 32) fail(name, static_cast<int>(blockDim.x));
  const int lane = threadIdx.x % 32;
  Warp& warp = (*g_warps)[threadIdx.x / 32];
  std::memcpy(warp.a[lane], a, sizeof a);
  std::memcpy(warp.b[lane], b, sizeof b);
  warp.barrier.wait(site);
  const int group = lane / 4, t = lane % 4;
  for (int e = 0; e < 4; ++e) {
    const int r = group + 8 * (e / 2), c = 2 * t + e % 2;
    double sum = d[e];
    for (int k = 0; k < kK; ++k) sum += static_cast<double>(A(warp, r, k)) * B(warp, k, c);
    d[e] = round_toward_zero(sum);
  }
  warp.barrier.wait(site - 1);
}

// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: a[0] holds A[group][2t, 2t+1], a[1] A[group+8][2t, 2t+1], a[2]
// and a[3] the same at columns +8; b[0] holds B[2t, 2t+1][group], b[1] rows +8; the lower 16 bits of a register
// hold the lower index.
template <bool kBf16>
float half_element(uint32_t reg, int high) {
  const uint16_t bits = static_cast<uint16_t>(high ? reg >> 16 : reg & 0xffffu);
  return kBf16 ? bfloat16_to_float(bfloat16{bits}) : half_to_float(half{bits});
}

template <bool kBf16>
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  constexpr auto element = half_element<kBf16>;
  warp_mma<16>(
      "mma_m16n8k16 needs whole warps", d, a, b, -3,
      [&](const Warp& w, int r, int k) {
        return element(w.a[(r % 8) * 4 + (k % 8) / 2][(r >= 8) + 2 * (k >= 8)], k % 2);
      },
      [&](const Warp& w, int k, int c) { return element(w.b[c * 4 + (k % 8) / 2][k >= 8], k % 2); });
}

// mma.sync.aligned.m16n8k8.row.col.f32.{bf16,f16}: a[0] and a[1] as mma_m16n8k16's (columns 0..7), b as its b[0].
template <bool kBf16>
void mma_m16n8k8(float (&d)[4], const uint32_t (&a)[2], uint32_t b) {
  constexpr auto element = half_element<kBf16>;
  const uint32_t a4[4] = {a[0], a[1], 0, 0}, b2[2] = {b, 0};
  warp_mma<8>(
      "mma_m16n8k8 needs whole warps", d, a4, b2, -7,
      [&](const Warp& w, int r, int k) { return element(w.a[(r % 8) * 4 + k / 2][r >= 8], k % 2); },
      [&](const Warp& w, int k, int c) { return element(w.b[c * 4 + k / 2][0], k % 2); });
}

// v rounded to TF32 as cvt.rna.tf32.f32 does: to the nearest value with 10 explicit mantissa bits, ties away from
// zero (half an ulp added to the magnitude, then the low 13 bits cleared; a carry into the exponent rounds up,
// to Inf past the largest TF32 value). NaN and Inf are returned as they are.
inline float to_tf32(float v) {
  if (!std::isfinite(v)) return v;
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits = (bits + 0x1000u) & ~0x1fffu;
  std::memcpy(&v, &bits, sizeof v);
  return v;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32: a[0] holds A[group][t], a[1] A[group+8][t], a[2] and a[3]
// the same at column t+4; b[0] holds B[t][group], b[1] B[t+4][group]. An operand must be a TF32 value (low 13 bits
// zero, as to_tf32 leaves it; the hardware's use of other bits is unspecified): anything else fails. Products of
// 11-bit mantissas are exact in fp32.
inline void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  auto element = [](uint32_t reg) {
    float v;
    std::memcpy(&v, &reg, sizeof v);
    if (std::isfinite(v) && (reg & 0x1fffu)) fail("mma_m16n8k8_tf32: an operand that is not a TF32 value");
    return v;
  };
  warp_mma<8>(
      "mma_m16n8k8_tf32 needs whole warps", d, a, b, -5,
      [&](const Warp& w, int r, int k) { return element(w.a[(r % 8) * 4 + k % 4][(r >= 8) + 2 * (k >= 4)]); },
      [&](const Warp& w, int k, int c) { return element(w.b[c * 4 + k % 4][k >= 4]); });
}

// ldmatrix.sync.aligned.m8n8.x4.shared.b16 (csrc/common.cuh load_matrices): every lane posts its row address,
// waits for the warp, reads its word of each matrix (a row address must be 16-byte aligned and its 16 bytes inside
// the block's shared memory, or the test fails), and waits again before the buffer is reused.
inline void ldmatrix(uint32_t (&r)[4], const void* row) {
  if (g_warps == nullptr || blockDim.x % 32) fail("ldmatrix needs whole warps", static_cast<int>(blockDim.x));
  const int lane = threadIdx.x % 32;
  Warp& warp = (*g_warps)[threadIdx.x / 32];
  warp.rows[lane] = static_cast<const unsigned char*>(row);
  warp.barrier.wait(-9);
  for (int i = 0; i < 4; ++i) {
    const unsigned char* p = warp.rows[8 * i + lane / 4];
    if (p < g_smem || p + 16 > g_smem + g_smem_bytes) fail("ldmatrix: a row outside shared memory", 8 * i + lane / 4);
    check_aligned(p, 16);
    std::memcpy(&r[i], p + 4 * (lane % 4), 4);
  }
  warp.barrier.wait(-10);
}

}  // namespace emu

struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};

namespace emu {

// Runs kernel<<<grid, block, smem>>>(args...) to completion.
template <typename... P, typename... A>
void launch(void (*kernel)(P...), unsigned grid, unsigned block, size_t smem, A... args) {
  if (block < 1 || block > 1024) fail("bad block size", static_cast<int>(block));
  if (grid < 1) fail("empty grid");
  if (smem > g_smem_limit) fail("dynamic shared memory above the limit", static_cast<int>(smem));
  ++g_launches;
  // Exactly sized, so AddressSanitizer flags any overflow.
  unsigned char* buffer = static_cast<unsigned char*>(std::malloc(smem ? smem : 1));
  Barrier barrier(static_cast<int>(block));
  g_barrier = &barrier;
  std::vector<Warp> warps(block / 32);
  g_warps = &warps;
  g_smem = buffer;
  g_smem_bytes = smem;
  std::vector<std::thread> threads;
  threads.reserve(block);
  for (unsigned t = 0; t < block; ++t) {
    threads.emplace_back([&, t] {
      threadIdx = {t, 0, 0};
      blockDim = {block, 1, 1};
      gridDim = {grid, 1, 1};
      for (unsigned b = 0; b < grid; ++b) {
        blockIdx = {b, 0, 0};
        if (t == 0) std::memset(buffer, 0xff, smem);  // NaN in every float
        barrier.wait(-1);
        kernel(args...);
        cp_async_block_done();
        barrier.wait(-2);
      }
    });
  }
  for (auto& th : threads) th.join();
  std::free(buffer);
  g_barrier = nullptr;
  g_warps = nullptr;
  g_smem = nullptr;
}

}  // namespace emu
