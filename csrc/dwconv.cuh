// Depthwise 2-D convolution kernels (forward, grad-input, grad-weight) and their launch plans.
//
// Forward and the stride-1 grad-input are one "correlation" kernel (grad-input is the forward of grad_out with the
// flipped filter). It is a direct sliding-window kernel in the style of MegEngine's large-filter conv: a block
// stages the input rows its output tile needs, and the filters, in shared memory (fp32 whatever the storage
// type), then every thread computes kRB = 8 neighbouring outputs of one row. At unit stride and dilation along W it
// takes kTaps = 16 taps per step from six 16-byte loads of inputs (a register window of kRB + kTaps values) and four
// broadcast 16-byte loads of filter values: 128 FMAs per 10 shared-memory instructions and 28 bank wavefronts, so
// large K stays FMA-bound rather than shared-memory-bound.
//
// The weight gradient is a reduction over N x Ho x Wo per tap. A block owns a few channels and a contiguous share
// ("split") of the (image, tile) items; it stages tiles of grad_out and x, every thread owns kRB neighbouring taps
// of one filter row and slides over kCols output columns per step (again a register window and 16-byte loads),
// accumulating in registers, then in shared memory. Splits write fp32 partial sums that a second kernel adds in a
// fixed order: deterministic, no atomics.
//
// Stride > 1 grad-input, and any case whose tile does not fit in shared memory (huge dilations), use plain
// one-thread-per-output kernels: correct for every size, not fast.
//
// Large kernels in NCHW at unit stride and dilation run on tensor cores instead (sm_80+, mma.sync): each kernel row
// (grad-weight: each g row) is a product with a banded Toeplitz matrix. fp16/bf16: corr_mma_kernel,
// wgrad_mma_kernel; fp32: corr_tf32_kernel, wgrad_tf32_kernel, in TF32 where PyTorch allows it for convs, else
// 3xTF32 (about fp32's accuracy). Their sections below say when each applies.
#pragma once

#include "common.cuh"

namespace largeconv {
namespace dw {

constexpr int kThreads = 256;  // threads per block (at most)
constexpr int kRB = 8;         // outputs (forward) or taps (grad-weight) per thread along W
constexpr int kTaps = 16;      // forward, unit W: taps per unrolled step
constexpr int kCols = 8;       // grad-weight: output columns per unrolled step
constexpr size_t kSoftSmem = 64 * 1024;  // plans shrink tiles above this to keep several blocks per SM

// ================================================================================================================
// Correlation: out[n, o, i, j] = sum_{r < reps} sum_{a, b} f_q[a, b] * in[n, q / in_div, i*sh + a*dh - off_h,
//                                                                         j*sw + b*dw - off_w],   q = o*reps + r,
// f_q = weight plane q, reversed in both axes when flip; `in` is zero outside its (in_h, in_w) extent.
//   forward:    in = x,        reps = 1,    in_div = mult, off = (pt, pl)
//   grad-input: in = grad_out, reps = mult, in_div = 1,    off = (dh*(kh-1) - pt, dw*(kw-1) - pl), flip, stride 1
// ================================================================================================================
struct Corr {
  const void* in;
  const void* weight;
  const void* bias;  // may be null
  void* out;
  int64_t n, in_c, in_h, in_w, out_c, out_h, out_w;
  int kh, kw, sh, sw, dh, dw, off_h, off_w, reps, in_div;
  bool flip, channels_last;
  bool tf32;  // fp32: TF32 allowed (one TF32 product); else exact (3xTF32 or FMA). See corr_tf32_kernel.
};

// bz channels of one image x by rows x (bx * kRB) columns of output per block; one row, kRB columns per thread.
struct CorrTile {
  int bx, by, bz;
  int ih, iw, rs, ps;  // staged input rows and columns, row and plane strides in shared memory (floats)
  int fw;              // filter row stride in shared memory: kw, or kw rounded up to kTaps (unit W)
  int fps;             // filter plane stride (floats): kh * fw, padded (see plan_corr)
  int64_t tiles_w, tiles_h, channel_groups, n;
  size_t smem;  // bytes: bz input planes, then bz filters

  LC_HD int threads() const { return bx * by * bz; }
  LC_HD int64_t blocks() const { return tiles_w * tiles_h * channel_groups * n; }
};

template <typename T, bool kUnit>  // kUnit: sw == dw == 1, so neighbouring outputs share a register window
__global__ void __launch_bounds__(kThreads) corr_tile_kernel(Corr p, CorrTile t) {
  const T* __restrict__ in = static_cast<const T*>(p.in);
  const T* __restrict__ weight = static_cast<const T*>(p.weight);
  float* xs = dynamic_smem();
  float* fs = xs + static_cast<size_t>(t.bz) * t.ps;  // 16-byte aligned: ps is a multiple of 4 when kUnit
  const int taps = p.kh * p.kw, frows = p.kh * t.fw;  // a plane's filter values; planes t.fps apart
  const int nthreads = t.threads();
  const int tid = threadIdx.x;

  // Block -> (image, channel group, row tile, column tile); 64-bit divisions only here, once per block.
  int64_t blk = blockIdx.x;
  const int64_t tile_w = blk % t.tiles_w;
  blk /= t.tiles_w;
  const int64_t tile_h = blk % t.tiles_h;
  blk /= t.tiles_h;
  const int o0 = static_cast<int>(blk % t.channel_groups) * t.bz;  // first output channel
  const int64_t n = blk / t.channel_groups;
  const int out_c = static_cast<int>(p.out_c);
  const int64_t i0 = tile_h * t.by, j0 = tile_w * t.bx * kRB;
  const int64_t row0 = i0 * p.sh - p.off_h, col0 = j0 * p.sw - p.off_w;

  // Planes vary fastest across threads in channels_last (coalesced stores), rows otherwise (the odd row stride
  // spreads a warp's shared-memory reads over the banks).
  int z, y, x;
  if (p.channels_last) {
    z = tid % t.bz;
    y = (tid / t.bz) % t.by;
    x = tid / (t.bz * t.by);
  } else {
    y = tid % t.by;
    x = (tid / t.by) % t.bx;
    z = tid / (t.by * t.bx);
  }

  float acc[kRB];
#pragma unroll
  for (int r = 0; r < kRB; ++r) acc[r] = 0.f;

  for (int rep = 0; rep < p.reps; ++rep) {
    if (rep > 0) __syncthreads();  // all threads are done with the previous tiles

    for (int e = tid; e < t.bz * frows; e += nthreads) {
      const int zz = e / frows, a = (e % frows) / t.fw, b = e % t.fw;
      float v = 0.f;  // also the padding of rows to fw
      if (o0 + zz < out_c && b < p.kw) {
        const int64_t q = static_cast<int64_t>(o0 + zz) * p.reps + rep;
        const int k = a * p.kw + b;
        v = to_float(weight[q * taps + (p.flip ? taps - 1 - k : k)]);
      }
      fs[zz * t.fps + e % frows] = v;
    }

    // Input tile, zero outside the image. Consecutive threads take consecutive addresses of either layout.
    if (!p.channels_last) {
      stage_rows<T>(xs, t.ps, t.rs, t.bz, t.ih, t.iw, col0, p.in_w, in, [&](int zz, int row) -> const T* {
        const int64_t gr = row0 + row;
        if (o0 + zz >= out_c || gr < 0 || gr >= p.in_h) return nullptr;
        const int64_t ci = ((o0 + zz) * p.reps + rep) / p.in_div;
        return in + ((n * p.in_c + ci) * p.in_h + gr) * p.in_w;
      }, tid, nthreads);
    } else {
      for (int e = tid; e < t.bz * t.ih * t.iw; e += nthreads) {  // consecutive threads: consecutive channels
        const int zz = e % t.bz, col = (e / t.bz) % t.iw, row = e / (t.bz * t.iw);
        const int64_t gr = row0 + row, gc = col0 + col;
        float v = 0.f;
        if (o0 + zz < out_c && gr >= 0 && gr < p.in_h && gc >= 0 && gc < p.in_w) {
          const int ci = ((o0 + zz) * p.reps + rep) / p.in_div;
          v = to_float(in[offset4(true, n, ci, gr, gc, p.in_c, p.in_h, p.in_w)]);
        }
        xs[zz * t.ps + row * t.rs + col] = v;
      }
    }
    __syncthreads();

    const float* xb = xs + z * t.ps + y * p.sh * t.rs + x * kRB * p.sw;
    const float* fb = fs + z * t.fps;
    for (int a = 0; a < p.kh; ++a) {
      const float* xr = xb + a * p.dh * t.rs;  // 16-byte aligned when kUnit (rs, ps multiples of 4)
      const float* fr = fb + a * t.fw;
      if constexpr (kUnit) {
        for (int b = 0; b < p.kw; b += kTaps) {
          float xv[kRB + kTaps];  // the last value only pads the 16-byte loads
#pragma unroll
          for (int q = 0; q < (kRB + kTaps) / 4; ++q) {
            const float4 v = load4(xr + b + 4 * q);
            xv[4 * q] = v.x; xv[4 * q + 1] = v.y; xv[4 * q + 2] = v.z; xv[4 * q + 3] = v.w;
          }
          // The last step masks the taps past kw: their inputs belong to other outputs (or are not staged).
          const int rem = p.kw - b;
          auto step = [&](auto masked) {
#pragma unroll
            for (int u4 = 0; u4 < kTaps / 4; ++u4) {
              const float4 v = load4(fr + b + 4 * u4);
              const float f[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
              for (int uu = 0; uu < 4; ++uu) {
                if (decltype(masked)::value && 4 * u4 + uu >= rem) break;
#pragma unroll
                for (int r = 0; r < kRB; ++r) acc[r] = fmaf(f[uu], xv[4 * u4 + uu + r], acc[r]);
              }
            }
          };
          if (rem >= kTaps) step(std::false_type{});
          else step(std::true_type{});
        }
      } else {
        for (int b = 0; b < p.kw; ++b) {
          const float f = fr[b];
          const float* xc = xr + b * p.dw;
#pragma unroll
          for (int r = 0; r < kRB; ++r) acc[r] = fmaf(f, xc[r * p.sw], acc[r]);
        }
      }
    }
  }

  const int o = o0 + z;
  const int64_t i = i0 + y;
  if (o < out_c && i < p.out_h) {
    const float bias = p.bias ? to_float(static_cast<const T*>(p.bias)[o]) : 0.f;
    T* out = static_cast<T*>(p.out);
#pragma unroll
    for (int r = 0; r < kRB; ++r) {
      const int64_t j = j0 + x * kRB + r;
      if (j < p.out_w) out[offset4(p.channels_last, n, o, i, j, p.out_c, p.out_h, p.out_w)] = from_float<T>(acc[r] + bias);
    }
  }
}

// One thread per output: the fallback when no tile fits in shared memory.
template <typename T>
__global__ void __launch_bounds__(kThreads) corr_naive_kernel(Corr p) {
  const T* __restrict__ in = static_cast<const T*>(p.in);
  const T* __restrict__ weight = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const int64_t taps = static_cast<int64_t>(p.kh) * p.kw;
  const int64_t total = p.n * p.out_c * p.out_h * p.out_w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, o, i, j;  // idx is the offset of (n, o, i, j) in out's layout
    if (p.channels_last) {
      o = idx % p.out_c;
      j = (idx / p.out_c) % p.out_w;
      i = (idx / (p.out_c * p.out_w)) % p.out_h;
      n = idx / (p.out_c * p.out_w * p.out_h);
    } else {
      j = idx % p.out_w;
      i = (idx / p.out_w) % p.out_h;
      o = (idx / (p.out_w * p.out_h)) % p.out_c;
      n = idx / (p.out_w * p.out_h * p.out_c);
    }
    float acc = p.bias ? to_float(static_cast<const T*>(p.bias)[o]) : 0.f;
    for (int rep = 0; rep < p.reps; ++rep) {
      const int64_t q = o * p.reps + rep, ci = q / p.in_div;
      for (int a = 0; a < p.kh; ++a) {
        const int64_t gr = i * p.sh + static_cast<int64_t>(a) * p.dh - p.off_h;
        if (gr < 0 || gr >= p.in_h) continue;
        for (int b = 0; b < p.kw; ++b) {
          const int64_t gc = j * p.sw + static_cast<int64_t>(b) * p.dw - p.off_w;
          if (gc < 0 || gc >= p.in_w) continue;
          const int64_t k = static_cast<int64_t>(a) * p.kw + b;
          acc = fmaf(to_float(weight[q * taps + (p.flip ? taps - 1 - k : k)]),
                     to_float(in[offset4(p.channels_last, n, ci, gr, gc, p.in_c, p.in_h, p.in_w)]), acc);
        }
      }
    }
    out[idx] = from_float<T>(acc);
  }
}

// Shrinks a candidate tile until it fits; false when even the smallest does not (then use the naive kernel).
inline bool plan_corr(const Corr& p, const DeviceLimits& lim, CorrTile* tile) {
  const bool unit = p.sw == 1 && p.dw == 1;
  const int fw = unit ? static_cast<int>(ceil_div(p.kw, kTaps) * kTaps) : p.kw;
  const int64_t planes = p.out_c;  // a block's planes are channels of one image
  const int64_t col_groups = ceil_div(p.out_w, kRB);
  int bx, by, bz;
  if (p.channels_last) {  // 4 consecutive channels per block (16-byte runs) and a 16 x 32 tile: the halo stays small
    bz = static_cast<int>(planes < 4 ? planes : 4);
    bx = static_cast<int>(col_groups < 4 ? col_groups : 4);
  } else {
    bz = 1;
    bx = static_cast<int>(col_groups < 16 ? col_groups : 16);
  }
  {  // rows: balanced tiles of at most kThreads / (bx * bz) rows
    const int64_t max_by = imax(1, kThreads / (bx * bz));
    by = static_cast<int>(ceil_div(p.out_h, ceil_div(p.out_h, max_by)));
  }
  if (!p.channels_last) {  // small maps: several planes per block
    const int64_t more = kThreads / (bx * by);
    bz = static_cast<int>(more < 1 ? 1 : (more < planes ? more : planes));
  }

  CorrTile t{};
  auto fill = [&]() -> bool {
    const int64_t ih = static_cast<int64_t>(by - 1) * p.sh + static_cast<int64_t>(p.kh - 1) * p.dh + 1;
    const int64_t iw = static_cast<int64_t>(bx * kRB - 1) * p.sw + static_cast<int64_t>(p.kw - 1) * p.dw + 1;
    // unit: the 16-byte window loads read up to column bx * kRB + fw - 1 (the part past iw is never used)
    const int64_t rs = unit ? vec_stride(bx * kRB + fw) : odd_stride(iw);
    // channels_last puts 4 planes x 2 rows in a quarter-warp: with rs an odd number of 16-byte units, plane strides
    // of 2 (mod 4) units send their 8 input loads, and odd filter plane strides the 4 planes' filter loads, to 8
    // (4) different 16-byte bank groups (odd plane strides, as NCHW uses, made 2-way and 4-way conflicts).
    const int64_t ps = unit ? (p.channels_last ? pair_stride(ih * rs) : vec_stride(ih * rs)) : odd_stride(ih * rs);
    const int64_t fps = unit ? static_cast<int64_t>(p.kh) * fw + 4 : static_cast<int64_t>(p.kh) * fw;
    const int64_t floats = bz * (ps + fps);
    if (ih * iw > (1 << 24) || floats * 4 > (int64_t{1} << 30)) return false;  // absurd dilations: keep ints small
    t.bx = bx; t.by = by; t.bz = bz; t.fw = fw; t.fps = static_cast<int>(fps);
    t.ih = static_cast<int>(ih); t.iw = static_cast<int>(iw); t.rs = static_cast<int>(rs); t.ps = static_cast<int>(ps);
    t.tiles_w = ceil_div(p.out_w, static_cast<int64_t>(bx) * kRB);
    t.tiles_h = ceil_div(p.out_h, by);
    t.channel_groups = ceil_div(planes, bz);
    t.n = p.n;
    t.smem = static_cast<size_t>(floats) * sizeof(float);
    return true;
  };
  auto shrink = [&](bool rows_to_one) -> bool {  // planes first, then rows, then columns
    if (bz > 1) bz = (bz + 1) / 2;
    else if (by > (rows_to_one ? 1 : 8)) by = (by + 1) / 2;
    else if (rows_to_one && bx > 1) bx = (bx + 1) / 2;
    else return false;
    return true;
  };
  bool ok = fill();
  // Keep the GPU busy: at least two blocks per SM where the problem allows. Channels_last gives up rows before
  // channels (its loads coalesce over channels), NCHW the other way round (its halo grows as rows shrink).
  while (ok && t.blocks() < 2 * static_cast<int64_t>(lim.num_sms) && (bz > 1 || by > 4)) {
    if (p.channels_last ? by <= 4 : bz > 1) bz = (bz + 1) / 2;
    else by = (by + 1) / 2;
    ok = fill();
  }
  while (ok && t.smem > kSoftSmem && shrink(false)) ok = fill();
  while (!ok || t.smem > static_cast<size_t>(lim.max_smem_optin)) {
    if (!shrink(true)) return false;
    ok = fill();
  }
  *tile = t;
  return true;
}

// ================================================================================================================
// Tensor-core correlation: fp16/bf16, NCHW, unit stride and dilation, one input plane per output plane (reps 1),
// 13 <= kw <= 65 (below, the band is mostly zeros; above, more fragments than registers). For each kernel row a,
// the 1-D correlation of staged input rows with filter row a is a product with its banded Toeplitz matrix,
// T_a[j][w] = f[a][j - w] (zero outside 0 <= j - w < kw), run by mma.sync m16n8k16 with fp32 accumulators.
// A block: one plane, kMmaRows x 8 nts outputs, 4 warps of 16 rows x nts <= 8 n-tiles of 8 columns (nts balances
// the column tiles: a 56-column map takes one tile of 7, not 64 columns of which 8 are waste); where a plane's rows
// would leave the last warp half idle (56 rows), a block's 64 rows run on over the next image's plane of the same
// channel instead (packed: MmaBlock, mma_corr_blocks). The input tile
// (rows + kh - 1, columns + kw - 1, zero outside the image) and the filter rows (zero-padded by 16 on each side)
// are staged once in shared memory as T; A fragments are read straight from the staged rows (row r + a for kernel
// row a: the shift costs nothing), B fragments from the padded filter row. An n-tile's band (its columns + kw - 1)
// meets kCh chunks of 8 columns from its own first one (band_chunks): pairs of chunks run as m16n8k16, an odd last
// one as m16n8k8 (K31: 40 columns a product, not the 48 of whole k-blocks of 16). Because T_a is Toeplitz, the B
// registers of chunk q of every n-tile are the same, kCh per kernel row; the A registers of a chunk (8 rows x 8
// columns, one per lane: "chunks") serve every n-tile that meets it. A warp takes its kernel rows 8 apart (a, a + 8,
// ...): its second 8 rows' chunks at row a are its first 8's at a + 8, so each step loads one half's chunks, not
// two (per kernel row 12 + 5 shared loads for 21 products at K31 and 56 columns, against 36 for 21). A B register
// holds two neighbouring filter values, at an odd offset for half the lanes: the filter rows are staged twice, the
// second copy one value earlier, so every pair is one aligned 32-bit load (with one copy: two 16-bit loads and a
// pack, 40% more instructions). A block spanning the map's width leaves out the chunks at both ends of the rows'
// reach that hold only padding (edges, plan_corr_mma: K 13-33 at "same" padding; K31 at 56 columns: 17% of the
// products, 4 of 11 chunk loads), compiled as a second set of kernel-row loops, no guard between the products.
// Zeros of the band multiply inputs the output never reads, so a NaN or Inf input would reach outputs that must
// stay finite (F.conv2d's rule): a block whose sums came out non-finite computes its tile again directly (FMAs over
// the real taps only, from the staged tile), as corr_tile_kernel does.
// ================================================================================================================
constexpr int kMmaWarps = 4;
constexpr int kMmaRows = 16 * kMmaWarps, kMmaMaxTiles = 8;  // rows; n-tiles of 8 columns
constexpr int kMmaMinKw = 13, kMmaMaxKw = 65;

struct MmaTile {
  int rows, cols, rs;  // staged input rows and columns, row stride (elements)
  int fw;              // padded filter row (elements); two copies of kh rows (see corr_mma_kernel)
  int fcs;             // the second copy's offset (elements): second_copy_offset
  int nts;             // n-tiles of 8 columns per block
  int lead;            // corr_mma_kernel: staged columns before the block's first input column (see copies)
  bool edges;          // corr_mma_kernel: the first and last edge_chunks(kCh) chunks are padding (plan_corr_mma)
  bool copies;         // corr_mma_kernel: input rows staged by cp.async, column pairs from an even column
  int64_t tiles_w, tiles_h;  // column tiles; row tiles per stack
  int64_t stacks;      // planes, or packed: channels (the stack of a channel's planes, one image after another)
  bool packed;         // see mma_corr_blocks
  size_t smem;         // bytes: staged input, then filter rows

  LC_HD int64_t blocks() const { return stacks * tiles_h * tiles_w; }
};

// k-blocks of 16 columns that the band of one 8-column n-tile meets: columns 8nt .. 8nt + 7 + kw - 1 start at
// 16 (nt / 2) - 8 (nt % 2), so 16 kKB >= kw + 15 (wgrad_mma_kernel).
LC_HD int mma_k_blocks(int kw) { return (kw + 14) / 16 + 1; }

// Chunks of 8 columns that the band of one 8-column n-tile meets from its first column: 8 kCh >= kw + 7
// (corr_mma_kernel, corr_tf32_kernel's k-blocks of 8).
LC_HD int band_chunks(int kw) { return (kw + 14) / 8; }
// Chunks at each end of the band's reach that corr_mma_kernel leaves out in a block spanning the map's width where
// they hold only padding (plan_corr_mma's edges): 1 for 3-4 chunks (K 13-25), 2 for 5 (K 27-33); none above (K 35
// and up would compile a second set of kernel-row loops for it).
constexpr LC_HD int edge_chunks(int ch) { return ch == 5 ? 2 : ch == 3 || ch == 4 ? 1 : 0; }
// Whether chunk m of a row's reach (chunks 0 .. last) meets input, its first and last `pad` left out as padding.
constexpr LC_HD bool chunk_meets_input(int m, int pad, int last) { return m >= pad && m <= last - pad; }

// Where the second copy of a padded row block of `elements` starts: the next offset of 32 (mod 64) elements, so the
// two copies' words that one B-fragment load reads sit 16 banks apart (at a multiple of 64 they shared banks).
LC_HD int second_copy_offset(int elements) { return elements + (96 - elements % 64) % 64; }

// The staged row and column (elements) a lane gives ldmatrix for a k-block of A fragments (load_a_fragments,
// load_tf32_a) of 16 rows whose halves start at staged rows r0 and r1 (r0 + 8 where contiguous): matrix lane / 8
// holds half lane / 8 % 2 and the k-block's second 16 bytes of each row where lane / 16.
LC_D int a_matrix_row(int r0, int r1, int lane) { return (lane / 8 % 2 ? r1 : r0) + lane % 8; }
template <typename T>
LC_D int a_matrix_col(int lane) { return 16 / sizeof(T) * (lane / 16); }

// A fragments of k-blocks 0 .. kBlocks - 1 for 16 staged rows, a k-block's four 8x8 matrices (rows 0-7 and 8-15,
// columns 0-7 and 8-15) by one ldmatrix (four 32-bit loads took four instructions, sm_90 SASS): x = the lane's
// address for k-block 0 (a_matrix_row, a_matrix_col).
template <int kBlocks, typename T>
LC_D void load_a_fragments(uint32_t (&af)[kBlocks][4], const T* x) {
#pragma unroll
  for (int kb = 0; kb < kBlocks; ++kb) load_matrices(af[kb], x + 16 * kb);
}

// The Toeplitz B fragments of one zero-padded row (a filter row, or a g row in grad-weight): bf[q][odd] for k-block
// nt / 2 + q of an n-tile of parity odd, d = 16 q - 8 odd; the lane holds T[16 kb + 2 quad (+1, +8, +9)][8 nt +
// group] = row[d + 2 quad - group (+1, +8, +9)]. f0 = the lane's row[2 quad - group] in the copy where it is 4-byte
// aligned (see corr_mma_kernel).
template <int kKB, typename T>
LC_D void load_band_fragments(uint32_t (&bf)[kKB][2][2], const T* f0) {
#pragma unroll
  for (int q = 0; q < kKB; ++q)
#pragma unroll
    for (int odd = 0; odd < 2; ++odd) {
      bf[q][odd][0] = load_pair(f0 + 16 * q - 8 * odd);
      bf[q][odd][1] = load_pair(f0 + 16 * q - 8 * odd + 8);
    }
}

// Where a tensor-core correlation block lies: blockIdx.x runs over (stack, row tile, column tile); its column tile's
// first output column and the input column it reads first; its rows in one or two segments: segment 0, rows0
// output rows of plane0 from i0, staged from shared row 0; packed, segment 1 too, the first rows1 rows of plane1
// (the next image's plane of the same channel), staged from shared row stage1 (each segment with its kh - 1 halo
// rows). A warp's 16 rows are two halves of 8 (mma_half), each in one segment; warps whose rows all lie past the
// block's skip the products (a 14-row map keeps one warp busy, not four). Scalars, no arrays: an array indexed by
// segment went to local memory (sm_90 SASS).
struct MmaBlock {
  int64_t o, j0, col0;
  int64_t plane0, plane1, i0;
  int rows0, rows1, stage1, busy_rows;
};

LC_D MmaBlock mma_block(const Corr& p, const MmaTile& t) {
  MmaBlock b;
  int64_t blk = blockIdx.x;
  const int64_t tile_w = blk % t.tiles_w;
  blk /= t.tiles_w;
  const int64_t tile_h = blk % t.tiles_h, stack = blk / t.tiles_h;
  b.j0 = tile_w * 8 * t.nts;
  b.col0 = b.j0 - p.off_w;
  if (!t.packed) {  // stack = plane
    b.o = stack % p.out_c;
    b.plane0 = stack;
    b.i0 = tile_h * kMmaRows;
    b.rows1 = 0;
  } else {  // stack = channel; virtual row v = n * out_h + i
    b.o = stack;
    const int64_t v = tile_h * kMmaRows, n = v / p.out_h;
    b.plane0 = n * p.out_c + b.o;
    b.i0 = v % p.out_h;
    b.rows1 = n + 1 < p.n ? kMmaRows - imin(kMmaRows, static_cast<int>(p.out_h - b.i0)) : 0;  // out_h >= 56: the
  }                                                                                           // rest fits one plane
  b.plane1 = b.plane0 + p.out_c;
  b.rows0 = imin(kMmaRows, static_cast<int>(p.out_h - b.i0));
  b.stage1 = b.rows0 + p.kh - 1;
  b.busy_rows = 16 * static_cast<int>(ceil_div(b.rows0 + b.rows1, 16));
  return b;
}

// Half h of a warp's 16 rows: its segment, the shared row its first row's staged input starts at, and that row's
// output row in its segment's plane (past out_h: not stored).
struct MmaHalf {
  int seg, staged;
  int64_t row;
};
LC_D MmaHalf mma_half(const MmaBlock& b, int warp, int h) {
  const int v = 16 * warp + 8 * h;
  if (b.rows1 == 0 || v < b.rows0) return {0, v, b.i0 + v};
  return {1, b.stage1 + v - b.rows0, v - b.rows0};
}

// The kernel rows [begin, end) of a warp's products: those that bring input to one of its output rows (each half's
// 8, below out_h). The others meet only zero padding, which the non-finite redo's taps skip too. Empty past
// busy_rows. Unit stride and dilation (mma_corr_blocks): output row i meets input row i - off_h + a.
struct KernelRows {
  int begin, end;
};
LC_D KernelRows warp_kernel_rows(const Corr& p, const MmaBlock& b, int warp) {
  KernelRows k{p.kh, 0};
  if (16 * warp >= b.busy_rows) return {0, 0};
  for (int h = 0; h < 2; ++h) {
    const int64_t lo = mma_half(b, warp, h).row, hi = lo + 7 < p.out_h ? lo + 7 : p.out_h - 1;
    if (lo >= p.out_h) continue;
    const int64_t begin = p.off_h - hi, end = p.in_h + p.off_h - lo;
    k.begin = imin(k.begin, begin > 0 ? static_cast<int>(begin) : 0);
    k.end = imax(k.end, end < p.kh ? static_cast<int>(end) : p.kh);
  }
  return k;
}

// The input plane segment `seg` of a block reads (forward: x's channel o / in_div; grad-input: grad_out's channel o).
template <typename T>
LC_D const T* mma_segment_input(const Corr& p, const MmaBlock& b, int seg) {
  return static_cast<const T*>(p.in) + ((seg ? b.plane1 : b.plane0) / p.out_c * p.in_c + b.o / p.in_div) * p.in_h *
                                          p.in_w;
}

// Stages a block's input rows, each segment's own (its rows + kh - 1 halo, zero outside the image), a warp per row:
// stage_row(shared row, that row's input row or nullptr, ...) for unpacked tiles up to the busy warps' rows.
template <typename T, typename StageRow>
LC_D void stage_mma_rows(const Corr& p, const MmaTile& t, const MmaBlock& b, int warp, StageRow stage_row) {
  for (int seg = 0; seg < (b.rows1 ? 2 : 1); ++seg) {
    const T* src = mma_segment_input<T>(p, b, seg);
    const int first = seg ? b.stage1 : 0;
    const int staged = seg ? b.rows1 + p.kh - 1 : imin(t.rows, (b.rows1 ? b.rows0 : b.busy_rows) + p.kh - 1);
    for (int r = warp; r < staged; r += kMmaWarps) {
      const int64_t gr = (seg ? 0 : b.i0) - p.off_h + r;
      stage_row(first + r, gr >= 0 && gr < p.in_h ? src + gr * p.in_w : nullptr);
    }
  }
}

// Whether a lane's accumulators (n-tiles x the m16n8 C fragment) are all finite.
LC_D bool all_finite(const float (&acc)[kMmaMaxTiles][4]) {
  bool finite = true;
#pragma unroll
  for (int nt = 0; nt < kMmaMaxTiles; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) finite &= is_finite(acc[nt][e]);
  return finite;
}

// Writes a lane's accumulators (+ bias) to the outputs of channel o: C fragment element e of n-tile nt is the
// lane's row in half e / 2 (mma_half, + group), column j + 8 nt + e % 2 (j: the lane's first column in n-tile 0).
template <typename T>
LC_D void store_mma_outputs(const Corr& p, const float (&acc)[kMmaMaxTiles][4], int nts, const MmaBlock& b, int warp,
                            int group, int64_t j) {
  const float bias = p.bias ? to_float(static_cast<const T*>(p.bias)[b.o]) : 0.f;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const MmaHalf half = mma_half(b, warp, h);
    const int64_t oi = half.row + group;
    if (oi >= p.out_h) continue;
    T* out = static_cast<T*>(p.out) + ((half.seg ? b.plane1 : b.plane0) * p.out_h + oi) * p.out_w;
#pragma unroll
    for (int nt = 0; nt < kMmaMaxTiles; ++nt)
#pragma unroll
      for (int e = 2 * h; e < 2 * h + 2; ++e) {
        if (nt >= nts) continue;
        const int64_t oj = j + 8 * nt + e % 2;
        if (oj < p.out_w) out[oj] = from_float<T>(acc[nt][e] + bias);
      }
  }
}

// One half's A registers of k-blocks (16 columns, two chunks) 0 .. kA - 1, into slot kSlot of each k-block's
// fragment (slot 0: a[0], a[2], the accumulators' first 8 rows; slot 1: a[1], a[3]): x = the lane's staged row +
// 2 quad.
// Only the chunks that meet input are loaded (chunk_meets_input: kPad at each end of chunks 0 .. kLast left out).
template <int kSlot, int kPad, int kLast, int kA, typename T>
LC_D void load_half(uint32_t (&af)[kA][4], const T* x) {
#pragma unroll
  for (int kb = 0; kb < kA; ++kb) {
    if (chunk_meets_input(2 * kb, kPad, kLast)) af[kb][kSlot] = load_pair(x + 16 * kb);
    if (chunk_meets_input(2 * kb + 1, kPad, kLast)) af[kb][kSlot + 2] = load_pair(x + 16 * kb + 8);
  }
}

// One kernel row's products for kNts n-tiles. n-tile nt's band meets chunks nt .. nt + kCh - 1, and B register c
// of every n-tile is band[c] (= f[a][8 c + 2 quad - group], + 1): chunk pairs that form a k-block (an even first
// chunk) run as m16n8k16, the chunks left over (an odd n-tile's first, the last) as m16n8k8 on half a k-block's
// registers, so every A operand is a k-block's aligned registers, as mma.sync wants them (pairs across k-blocks
// took register copies: sm_90 SASS). The n-tiles innermost: independent accumulators back to back. kPad: chunks
// m < kPad and m > kNts + kCh - 2 - kPad hold only padding (corr_mma_kernel's edges): no products, a pair with one
// such chunk runs m16n8k8 on the other.
template <typename T, int kCh, int kNts, int kPad, int kA>
LC_D void band_products(float (&acc)[kMmaMaxTiles][4], const uint32_t (&af)[kA][4], const uint32_t (&band)[kCh]) {
  constexpr int kLast = kNts + kCh - 2;  // the last chunk a row meets
  auto real = [](int m) { return chunk_meets_input(m, kPad, kLast); };
  auto lone = [&](float (&c_acc)[4], int m, uint32_t b) {  // m16n8k8 on chunk m's half of its k-block
    const uint32_t a[2] = {af[m / 2][2 * (m % 2)], af[m / 2][2 * (m % 2) + 1]};
    mma_m16n8k8<T>(c_acc, a, b);
  };
#pragma unroll
  for (int c = 0; c < kCh; ++c)  // the product that starts at the band's chunk c, where one does
#pragma unroll
    for (int nt = 0; nt < kNts; ++nt) {
      const int m = nt + c;  // the chunk
      if (m % 2 == 0 && c + 1 < kCh) {  // chunks c, c + 1: k-block m / 2
        if (real(m) && real(m + 1)) {
          const uint32_t b[2] = {band[c], band[c + 1]};
          mma_m16n8k16<T>(acc[nt], af[m / 2], b);
        } else if (real(m)) {
          lone(acc[nt], m, band[c]);
        } else if (real(m + 1)) {
          lone(acc[nt], m + 1, band[c + 1]);
        }
      } else if ((m % 2 == 1 ? c == 0 : c == kCh - 1) && real(m)) {  // a lone chunk: an odd n-tile's first, an
        lone(acc[nt], m, band[c]);                                     // even one's last
      }
    }
}

// What a warp's products read: its two halves' staged rows (the lane's, + 2 quad; + a rs for kernel row a), its
// filter row pair (+ a fw), the kernel rows it runs, whether its second half's rows at kernel row a are its first
// half's at a + 8 (false where a packed block's warp spans two planes).
template <typename T>
struct MmaRows {
  const T *lo, *hi, *f;
  int rs, fw;
  KernelRows kernel_rows;
  bool chained;
};

// A warp's sums over its kernel rows, taken 8 apart (first, first + 8, ...): chained, the second half's registers
// at one are the first half's at the next, so a step loads one half, into the slot the other does not hold, and
// the slots' roles swap step by step: even steps add to acc (slot 0 = the first 8 rows), odd steps to swapped (slot
// 0 = the second 8 rows), whose halves are exchanged at the end. No register copies (mma.sync reads a k-block's
// four registers together).
template <typename T, int kCh, int kNts, int kPad>
LC_D void mma_kernel_rows(float (&acc)[kMmaMaxTiles][4], const MmaRows<T>& w) {
  constexpr int kA = (kNts + kCh) / 2, kLast = kNts + kCh - 2;  // k-blocks the n-tiles meet: chunks <= kLast
  uint32_t af[kA][4], band[kCh];
  float swapped[kMmaMaxTiles][4] = {};
  auto load_band = [&](int a) {
#pragma unroll
    for (int c = 0; c < kCh; ++c) band[c] = load_pair(w.f + a * w.fw + 8 * c);
  };
  const KernelRows k = w.kernel_rows;
  for (int first = k.begin; first < imin(k.begin + 8, k.end); ++first) {
    load_half<0, kPad, kLast>(af, w.lo + first * w.rs);
    for (int a = first;;) {
      load_half<1, kPad, kLast>(af, w.hi + a * w.rs);
      load_band(a);
      band_products<T, kCh, kNts, kPad>(acc, af, band);
      if ((a += 8) >= k.end) break;
      if (!w.chained) load_half<1, kPad, kLast>(af, w.lo + a * w.rs);
      load_half<0, kPad, kLast>(af, w.hi + a * w.rs);
      load_band(a);
      band_products<T, kCh, kNts, kPad>(swapped, af, band);
      if ((a += 8) >= k.end) break;
      if (!w.chained) load_half<0, kPad, kLast>(af, w.lo + a * w.rs);
    }
  }
#pragma unroll
  for (int nt = 0; nt < kNts; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] += swapped[nt][e ^ 2];
}

// mma_kernel_rows for the block's n-tile count as a constant: no guard between the products (each took a WARPSYNC).
template <typename T, int kCh, int kPad>
LC_D void mma_rows_for_nts(float (&acc)[kMmaMaxTiles][4], const MmaRows<T>& rows, int nts) {
  switch (nts) {
    case 1: mma_kernel_rows<T, kCh, 1, kPad>(acc, rows); break;
    case 2: mma_kernel_rows<T, kCh, 2, kPad>(acc, rows); break;
    case 3: mma_kernel_rows<T, kCh, 3, kPad>(acc, rows); break;
    case 4: mma_kernel_rows<T, kCh, 4, kPad>(acc, rows); break;
    case 5: mma_kernel_rows<T, kCh, 5, kPad>(acc, rows); break;
    case 6: mma_kernel_rows<T, kCh, 6, kPad>(acc, rows); break;
    case 7: mma_kernel_rows<T, kCh, 7, kPad>(acc, rows); break;
    default: mma_kernel_rows<T, kCh, 8, kPad>(acc, rows); break;
  }
}

template <typename T, int kCh>
__global__ void __launch_bounds__(32 * kMmaWarps) corr_mma_kernel(Corr p, MmaTile t) {
  const T* __restrict__ weight = static_cast<const T*>(p.weight);
  T* xs = reinterpret_cast<T*>(dynamic_smem());
  T* fs = xs + static_cast<size_t>(t.rows) * t.rs;
  int* non_finite = reinterpret_cast<int*>(fs + 2 * static_cast<size_t>(t.fcs));
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, group = lane / 4, quad = lane % 4;
  const int taps = p.kh * p.kw;

  const MmaBlock blk = mma_block(p, t);
  const int64_t o = blk.o, j0 = blk.j0, col0 = blk.col0;

  // Input tile, zero outside the image, only the rows the busy warps read (mma_block); a warp takes a row, lanes
  // along the columns. First: its cp.async copies fly while the filter's loads below wait.
  stage_mma_rows<T>(p, t, blk, warp, [&](int r, const T* row) {
    if (t.copies) {
      copy_pairs(xs + r * t.rs, row, col0 - t.lead, p.in_w, t.cols, 2 * lane, 64, static_cast<const T*>(p.in));
    } else {
      stage_pairs(xs + r * t.rs, row, col0 - t.lead, p.in_w, t.cols, lane);
    }
  });
  // Filter rows, zero-padded: fs[a * fw + 16 + lead + b] = f[a][b] (staged column lead + c is the block's first
  // input column + c); the copy at fs + fcs starts one value later, a value read once for both. A lane keeps its
  // columns and a warp its rows (warp, warp + kMmaWarps, ...), pointers stepped, four loads in flight together;
  // padding columns read a real tap and store zeros (no branch between the loads). Indices computed per value took
  // ~38 instructions a value (sm_90 SASS).
  const int warp_rows = (p.kh - warp + kMmaWarps - 1) / kMmaWarps;
  const int64_t src_step = static_cast<int64_t>(kMmaWarps) * (p.flip ? -p.kw : p.kw);
  const int dst_step = kMmaWarps * t.fw;
  for (int c = lane; c <= t.fw; c += 32) {
    const int b = c - 16 - t.lead;
    const bool real = static_cast<unsigned>(b) < static_cast<unsigned>(p.kw);
    const int tap = warp * p.kw + (real ? b : 0);  // f[warp][b], or a real tap of that row
    const T* src = weight + o * taps + (p.flip ? taps - 1 - tap : tap);
    T* dst = fs + warp * t.fw + c;
    auto store = [&](T* d, T v) {
      if (!real) v = from_float<T>(0.f);
      if (c < t.fw) d[0] = v;
      if (c > 0) d[t.fcs - 1] = v;  // the copy: second[c] = first[c - 1]
    };
    int r = 0;
    for (; r + 4 <= warp_rows; r += 4, src += 4 * src_step, dst += 4 * dst_step) {
      const T v0 = src[0], v1 = src[src_step], v2 = src[2 * src_step], v3 = src[3 * src_step];
      store(dst, v0), store(dst + dst_step, v1), store(dst + 2 * dst_step, v2), store(dst + 3 * dst_step, v3);
    }
    for (; r < warp_rows; ++r, src += src_step, dst += dst_step) store(dst, *src);
  }
  cp_async_wait_all();
  if (tid == 0) *non_finite = 0;
  __syncthreads();

  // this lane's staged rows in the two halves of its warp (+ a for kernel row a)
  const int x0 = mma_half(blk, warp, 0).staged + group, x1 = mma_half(blk, warp, 1).staged + group;
  const MmaRows<T> rows{xs + x0 * t.rs + 2 * quad, xs + x1 * t.rs + 2 * quad,
                     fs + 16 + 2 * quad - group + (group % 2 ? t.fcs - 1 : 0), t.rs, t.fw,
                     warp_kernel_rows(p, blk, warp), x1 == x0 + 8};
  float acc[kMmaMaxTiles][4] = {};
  if constexpr (edge_chunks(kCh) > 0) {  // (a run-time choice between two copies of one loop: both compiled)
    if (t.edges) {
      mma_rows_for_nts<T, kCh, edge_chunks(kCh)>(acc, rows, t.nts);
    } else {
      mma_rows_for_nts<T, kCh, 0>(acc, rows, t.nts);
    }
  } else {
    mma_rows_for_nts<T, kCh, 0>(acc, rows, t.nts);
  }

  if (!all_finite(acc)) *non_finite = 1;
  __syncthreads();
  if (*non_finite) {  // the direct sums over the real taps, for this lane's outputs
    note_redo();
#pragma unroll
    for (int nt = 0; nt < kMmaMaxTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (nt >= t.nts) continue;
        const int r = e / 2 ? x1 : x0, c = 8 * nt + 2 * quad + e % 2;
        float s = 0.f;
        for (int a = 0; a < p.kh; ++a)
          for (int b = t.lead; b < p.kw + t.lead; ++b)
            s = fmaf(to_float(fs[a * t.fw + 16 + b]), to_float(xs[(r + a) * t.rs + c + b]), s);
        acc[nt][e] = s;
      }
  }

  store_mma_outputs<T>(p, acc, t.nts, blk, warp, group, j0 + 2 * quad);
}

// Whether a call suits the tensor-core correlations (corr_mma_kernel, corr_tf32_kernel): NCHW, unit stride and
// dilation, one input plane per output plane, 13 <= kw <= 65, kh <= 65, sm_80+; if so, their blocks in `t`: 64
// output rows (+ kh - 1 staged) by nts n-tiles of 8 columns (balanced column tiles). `pack`: where a plane's last
// row tile would leave a warp half idle (out_h = 8 mod 16, from 56 rows: RepLKNet's 56x56 keeps 56 of 64 rows
// busy), the row tiles run over a channel's planes stacked image after image instead, a tile's rows in at most two
// planes, each staged with its own halo (kh - 1 more rows of shared memory).
inline bool mma_corr_blocks(const Corr& p, const DeviceLimits& lim, MmaTile* t, bool pack = true) {
  if (!lim.tensor_cores || p.channels_last || p.sh != 1 || p.sw != 1 || p.dh != 1 || p.dw != 1 || p.reps != 1 ||
      p.kw < kMmaMinKw || p.kw > kMmaMaxKw || p.kh > kMmaMaxKw)
    return false;
  *t = MmaTile{};
  t->packed = pack && p.out_h % 16 == 8 && p.out_h >= 56 && p.n > 1;
  t->rows = kMmaRows + (t->packed ? 2 : 1) * (p.kh - 1);
  t->stacks = t->packed ? p.out_c : p.n * p.out_c;
  t->tiles_h = ceil_div((t->packed ? p.n : 1) * p.out_h, kMmaRows);
  t->tiles_w = ceil_div(p.out_w, 8 * kMmaMaxTiles);
  t->nts = static_cast<int>(ceil_div(ceil_div(p.out_w, t->tiles_w), 8));
  return true;
}

// The tensor-core tile when the call qualifies (see corr_mma_kernel) and it fits in shared memory (packed if so).
template <typename T>
bool plan_corr_mma(const Corr& p, const DeviceLimits& lim, MmaTile* tile) {
  static_assert(!std::is_same_v<T, float>, "fp16 and bf16 only");
  for (const bool pack : {true, false}) {
    MmaTile t;
    if (!mma_corr_blocks(p, lim, &t, pack)) return false;
    // Rows staged by 4-byte cp.async where every row is 4-byte aligned (an even width, an aligned tensor): from an
    // even column, so the tile starts `lead` = 1 column early where the first one is odd (col0 = j0 - off_w, j0
    // even), the filter rows one later: a band 1 wider, taken only where that needs no more chunks (K31: 5).
    t.copies = p.in_w % 2 == 0 && reinterpret_cast<uintptr_t>(p.in) % 4 == 0;
    t.lead = t.copies ? p.off_w & 1 : 0;
    if (band_chunks(p.kw + t.lead) > band_chunks(p.kw)) t.copies = false, t.lead = 0;
    const int ch = band_chunks(p.kw + t.lead);
    // Edges: in a block spanning the map's width (staged column s is input column s - off_w - lead), the first and
    // last edge_chunks(ch) chunks of the kernel rows' reach hold only padding where off_w + lead >= 8 pad and the
    // last ones start past in_w: no products or loads for them. The tile starts further left where that makes the
    // first ones padding and needs no more chunks (K 27-31: lead 16 - off_w; then, nts = ceil(out_w / 8), the last
    // ones are padding too at "same" padding). An even column still (copies).
    const int pad = edge_chunks(ch);
    t.edges = false;
    if (pad > 0 && t.tiles_w == 1) {
      const int64_t lead = p.off_w + t.lead >= 8 * pad ? t.lead : 8 * pad - p.off_w;
      const int64_t right = 8 * static_cast<int64_t>(t.nts + ch - 1 - pad) - p.off_w - lead;  // its first column
      if (lead >= 0 && band_chunks(static_cast<int>(p.kw + lead)) == ch && right >= p.in_w) {
        t.lead = static_cast<int>(lead);
        t.edges = true;
      }
    }
    // the chunks' columns (>= 8 kMmaMaxTiles + kw - 1 + lead), a multiple of 16
    t.cols = 16 * static_cast<int>(ceil_div(kMmaMaxTiles + ch - 1, 2));
    t.rs = t.cols + 8;  // (rs / 2) = 4 (mod 8) words: a chunk load's 8 rows x 4 words hit 32 banks
    t.fw = 8 * ch + 16;  // band[q] reads f0 + 8 q + 1 at most, f0 <= 16 + 6
    t.fcs = second_copy_offset(p.kh * t.fw);
    t.smem = (static_cast<size_t>(t.rows) * t.rs + 2 * static_cast<size_t>(t.fcs)) * sizeof(T) + 16;
    if (t.smem <= static_cast<size_t>(lim.max_smem_optin)) {
      *tile = t;
      return true;
    }
  }
  return false;
}

template <typename T, typename Launch>
void run_corr_mma(Launch& launch, const Corr& p, const MmaTile& t) {
  const unsigned grid = grid_size(t.blocks()), threads = 32 * kMmaWarps;
  switch (band_chunks(p.kw + t.lead)) {
    case 3: launch(corr_mma_kernel<T, 3>, grid, threads, t.smem, p, t); return;
    case 4: launch(corr_mma_kernel<T, 4>, grid, threads, t.smem, p, t); return;
    case 5: launch(corr_mma_kernel<T, 5>, grid, threads, t.smem, p, t); return;
    case 6: launch(corr_mma_kernel<T, 6>, grid, threads, t.smem, p, t); return;
    case 7: launch(corr_mma_kernel<T, 7>, grid, threads, t.smem, p, t); return;
    case 8: launch(corr_mma_kernel<T, 8>, grid, threads, t.smem, p, t); return;
    case 9: launch(corr_mma_kernel<T, 9>, grid, threads, t.smem, p, t); return;
  }
  LC_CHECK(false, "no tensor-core tile for kw = " + std::to_string(p.kw));
}

// ================================================================================================================
// TF32 tensor-core correlation: fp32 calls of the kind corr_mma_kernel takes (NCHW, unit stride and dilation, reps
// 1, 13 <= kw <= 65), by mma.sync m16n8k8 in TF32 with fp32 accumulators. The same tile and Toeplitz products, with
// k-blocks of 8 columns: an n-tile's band (columns 8 nt .. 8 nt + 7 + kw - 1) meets k-blocks nt .. nt + kKB - 1,
// kKB = ceil((kw + 7) / 8) (band_chunks), and the B fragment of (k-block nt + q, n-tile nt) is the same for
// every n-tile, T[8 q + k][n] = f[a][8 q + k - n]: kKB B fragments per kernel row serve all n-tiles, each one 32-bit
// load per register from the filter row zero-padded by 8 (no second copy: no pairs). The A fragment of a k-block is
// loaded once and used by the n-tiles nt = kb - q it meets.
// Values are staged rounded to TF32 (to_tf32), the operand form the instruction expects. kSplit (fp32 when TF32 is
// not allowed, torch.backends.cudnn.allow_tf32 False): 3xTF32, each value staged as hi = tf32(v) and
// lo = tf32(v - hi) (lo = 0 where hi is not finite), and hi*hi + hi*lo + lo*hi accumulated: the dropped lo*lo and
// the rounding of lo leave ~2^-21 of each product, about fp32's accuracy, for three times the tensor work.
// A block whose sums came out non-finite computes its outputs again directly from global memory (the staged parts of
// an Inf, or of a finite value that rounds to Inf, are not the input).
// ================================================================================================================
constexpr int kTf32Pad = 8;  // zeros staged on each side of a filter row
// 3xTF32 from maps of this many rows and columns: predicted 1.3x the FMA kernel's measured time at 14x14 and 0.77x
// at 7x7 (RepLKNet-31B s3, s4; bench/NOTES.md), where the 16-row warp tiles are mostly padding.
constexpr int kSplitMinSide = 14;

// One staged value: hi at p, and with kSplit lo at p + lo_offset.
template <bool kSplit>
LC_D void stage_tf32(float* p, size_t lo_offset, float v) {
  const float hi = to_tf32(v);
  p[0] = hi;
  if constexpr (kSplit) p[lo_offset] = is_finite(hi) ? to_tf32(v - hi) : 0.f;
}

// The A fragments of k-blocks 0 .. kA - 1 for 16 staged rows, a k-block's four 8x4 fp32 matrices (rows 0-7 and
// 8-15, columns 0-3 and 4-7) by one ldmatrix as 8x8 16-bit ones (four 32-bit loads took four instructions, sm_90
// SASS); x = the lane's address for k-block 0 (a_matrix_row, a_matrix_col). All kA, used or not: a guard per load
// cost a compare and a warp sync each (the callers size kA to the n-tiles instead).
template <int kA>
LC_D void load_tf32_a(uint32_t (&af)[kA][4], const float* x) {
#pragma unroll
  for (int kb = 0; kb < kA; ++kb) load_matrices(af[kb], x + 8 * kb);
}

// The Toeplitz B fragments of one row zero-padded by kTf32Pad (a filter row, or a g row in grad-weight), its hi part
// and with kSplit its lo part (part_elems further): bf[part][q] = T[8 q + quad (+4)][group] = row[8 q + quad - group
// (+4)]; f0 = the lane's row[quad - group].
template <bool kSplit, int kKB>
LC_D void load_tf32_band(uint32_t (&bf)[kSplit ? 2 : 1][kKB][2], const float* f0, size_t part_elems) {
#pragma unroll
  for (int part = 0; part < (kSplit ? 2 : 1); ++part)
#pragma unroll
    for (int q = 0; q < kKB; ++q) {
      bf[part][q][0] = float_bits(f0[part * part_elems + 8 * q]);
      bf[part][q][1] = float_bits(f0[part * part_elems + 8 * q + 4]);
    }
}

// acc[nt] += A x B for n-tiles nt0 .. nt0 + kTiles - 1 (k-blocks nt + q) and the B parts bf[kBParts - 1 .. 0], the
// n-tiles interleaved.
template <int kKB, int kBParts, int kTiles, int kN, int kA, int kParts>
LC_D void tf32_products(float (&acc)[kN][4], const uint32_t (&af)[kA][4], const uint32_t (&bf)[kParts][kKB][2],
                        int nt0) {
#pragma unroll
  for (int q = 0; q < kKB; ++q)
#pragma unroll
    for (int part = kBParts - 1; part >= 0; --part)
#pragma unroll
      for (int nt = nt0; nt < nt0 + kTiles; ++nt) mma_m16n8k8_tf32(acc[nt], af[nt + q], bf[part][q]);
}

// One A part's products with the first kBParts B parts for n-tiles 0 .. nts - 1, four n-tiles interleaved where
// there are four: a guard per product cost a predicate and a warp sync per HMMA (sm_90 SASS), and one n-tile's
// products back to back wait on each other (a NOP between HMMAs; with two n-tiles interleaved, one NOP per pair).
// The n-tile starts stay compile-time constants (the accumulators are registers).
template <int kKB, int kBParts, int kN, int kA, int kParts>
LC_D void tf32_row_products(float (&acc)[kN][4], const uint32_t (&af)[kA][4], const uint32_t (&bf)[kParts][kKB][2],
                            int nts) {
  static_assert(kN % 4 == 0, "n-tiles by fours");
#pragma unroll
  for (int base = 0; base < kN; base += 4) {
    const int tiles = nts - base;  // the same for the whole block
    if (tiles >= 4) {
      tf32_products<kKB, kBParts, 4>(acc, af, bf, base);
    } else if (tiles >= 2) {
      tf32_products<kKB, kBParts, 2>(acc, af, bf, base);
      if (tiles == 3) tf32_products<kKB, kBParts, 1>(acc, af, bf, base + 2);
    } else if (tiles == 1) {
      tf32_products<kKB, kBParts, 1>(acc, af, bf, base);
    }
  }
}

// A row's products: TF32, or 3xTF32 (kSplit) as hi x lo + hi x hi, then lo x hi. x as load_tf32_a; the
// lo part of the staged rows lies part_elems after the hi part. (One af[2][kA][4] array for both parts spilled 24-40
// B in the grad-weight kernel, sm_90; two arrays do not.)
// kSplit sums the row in fresh accumulators and adds them to acc in fp32 (round to nearest): the tensor cores round
// each mma's sum toward zero, so a chain of every row's mma into acc drifted toward zero by up to an ulp a step,
// ~1.3-1.6e-5 relative at 63x63 (H200 run 1, and the emulator, which models the rounding), past fp32's 1e-5; a
// row's chain is 3 kKB steps. TF32 (1e-3) keeps the one chain.
template <int kKB, bool kSplit, int kN, int kA>
LC_D void tf32_row(float (&acc)[kN][4], const uint32_t (&bf)[kSplit ? 2 : 1][kKB][2], const float* x,
                   size_t part_elems, int nts) {
  uint32_t af[kA][4], af_lo[kA][4];
  load_tf32_a(af, x);
  if constexpr (kSplit) {
    load_tf32_a(af_lo, x + part_elems);
    float row[kN][4] = {};
    tf32_row_products<kKB, 2>(row, af, bf, nts);
    tf32_row_products<kKB, 1>(row, af_lo, bf, nts);
#pragma unroll
    for (int nt = 0; nt < kN; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] += row[nt][e];
  } else {
    tf32_row_products<kKB, 1>(acc, af, bf, nts);
  }
}

// A warp's sums over its kernel rows for up to kN n-tiles (t.nts <= kN), into acc's first kN: B = filter row a's band
// (f: the lane's, + a fw), A = the halves' staged rows + a (x: the lane's ldmatrix address, + a rs).
template <int kKB, bool kSplit, int kN>
LC_D void tf32_kernel_rows(float (&acc)[kMmaMaxTiles][4], KernelRows rows, const float* x, const float* f,
                           const MmaTile& t, size_t tile_elems, size_t filter_elems) {
  float sums[kN][4] = {};
  for (int a = rows.begin; a < rows.end; ++a) {
    uint32_t bf[kSplit ? 2 : 1][kKB][2];
    load_tf32_band<kSplit>(bf, f + a * t.fw, filter_elems);
    tf32_row<kKB, kSplit, kN, kN + kKB - 1>(sums, bf, x + a * t.rs, tile_elems, t.nts);
  }
#pragma unroll
  for (int nt = 0; nt < kN; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = sums[nt][e];
}

template <int kKB, bool kSplit>
__global__ void __launch_bounds__(32 * kMmaWarps) corr_tf32_kernel(Corr p, MmaTile t) {
  constexpr int kParts = kSplit ? 2 : 1;  // hi (and lo) copies of the input tile and of the filter rows
  const float* __restrict__ weight = static_cast<const float*>(p.weight);
  const size_t tile_elems = static_cast<size_t>(t.rows) * t.rs, filter_elems = static_cast<size_t>(p.kh) * t.fw;
  float* xs = dynamic_smem();
  float* fs = xs + kParts * tile_elems;
  int* non_finite = reinterpret_cast<int*>(fs + kParts * filter_elems);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, group = lane / 4, quad = lane % 4;
  const int taps = p.kh * p.kw;

  const MmaBlock blk = mma_block(p, t);
  const int64_t o = blk.o, j0 = blk.j0, col0 = blk.col0;
  const float* f = weight + o * taps;
  auto tap = [&](int a, int b) { return f[p.flip ? taps - 1 - (a * p.kw + b) : a * p.kw + b]; };

  // Filter rows, zero-padded: fs[a * fw + 8 + b] = f[a][b]; a warp takes a row, lanes along it.
  for (int a = warp; a < p.kh; a += kMmaWarps)
    for (int c = lane; c < t.fw; c += 32) {
      const int b = c - kTf32Pad;
      stage_tf32<kSplit>(fs + a * t.fw + c, filter_elems, b >= 0 && b < p.kw ? tap(a, b) : 0.f);
    }
  // Only the input rows the busy warps read (mma_block).
  stage_mma_rows<float>(p, t, blk, warp, [&](int r, const float* row) {
    for (int c = lane; c < t.cols; c += 32) {
      const int64_t gc = col0 + c;
      stage_tf32<kSplit>(xs + r * t.rs + c, tile_elems, row != nullptr && gc >= 0 && gc < p.in_w ? row[gc] : 0.f);
    }
  });
  if (tid == 0) *non_finite = 0;
  __syncthreads();

  float acc[kMmaMaxTiles][4] = {};

  const MmaHalf half0 = mma_half(blk, warp, 0), half1 = mma_half(blk, warp, 1);
  const float* x = xs + a_matrix_row(half0.staged, half1.staged, lane) * t.rs + a_matrix_col<float>(lane);
  const float* band = fs + kTf32Pad + quad - group;  // this lane's band of filter row 0 (+ a fw)
  const KernelRows kernel_rows = warp_kernel_rows(p, blk, warp);
  if (t.nts <= 4) {  // four n-tiles' accumulators and A k-blocks, not eight (loads of unused k-blocks cost L1 time)
    tf32_kernel_rows<kKB, kSplit, 4>(acc, kernel_rows, x, band, t, tile_elems, filter_elems);
  } else {
    tf32_kernel_rows<kKB, kSplit, kMmaMaxTiles>(acc, kernel_rows, x, band, t, tile_elems, filter_elems);
  }

  if (!all_finite(acc)) *non_finite = 1;
  __syncthreads();
  if (*non_finite) {  // the direct sums over the taps inside the input, for this lane's outputs
    note_redo();
#pragma unroll
    for (int nt = 0; nt < kMmaMaxTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        if (nt >= t.nts) continue;
        const MmaHalf& h = e / 2 ? half1 : half0;
        const float* src = mma_segment_input<float>(p, blk, h.seg);
        const int64_t gr = h.row + group - p.off_h, gc = col0 + 8 * nt + 2 * quad + e % 2;
        float s = 0.f;
        for (int a = 0; a < p.kh; ++a) {
          if (gr + a < 0 || gr + a >= p.in_h) continue;
          for (int b = 0; b < p.kw; ++b)
            if (gc + b >= 0 && gc + b < p.in_w) s = fmaf(tap(a, b), src[(gr + a) * p.in_w + gc + b], s);
        }
        acc[nt][e] = s;
      }
  }
  store_mma_outputs<float>(p, acc, t.nts, blk, warp, group, j0 + 2 * quad);
}

// The TF32 tile when the call qualifies (see corr_tf32_kernel) and it fits in shared memory.
inline bool plan_corr_tf32(const Corr& p, const DeviceLimits& lim, MmaTile* tile) {
  if (!p.tf32 && (p.out_h < kSplitMinSide || p.out_w < kSplitMinSide)) return false;
  for (const bool pack : {true, false}) {
    MmaTile t;
    if (!mma_corr_blocks(p, lim, &t, pack)) return false;
    const int kb = band_chunks(p.kw);
    t.cols = 8 * (kMmaMaxTiles + kb - 1);  // the A fragments' columns; >= 8 kMmaMaxTiles + kw - 1
    t.rs = t.cols + 4;                     // 4 (mod 8) words: a fragment load's 8 rows x 4 words hit 32 banks
    t.fw = 8 * kb + 2 * kTf32Pad;          // B reads f0 + 8 (kKB - 1) + 4 at most, f0 <= 8 + 3
    const size_t parts = p.tf32 ? 1 : 2;
    t.smem = parts * (static_cast<size_t>(t.rows) * t.rs + static_cast<size_t>(p.kh) * t.fw) * sizeof(float) + 16;
    if (t.smem <= static_cast<size_t>(lim.max_smem_optin)) {
      *tile = t;
      return true;
    }
  }
  return false;
}

template <typename Launch>
void run_corr_tf32(Launch& launch, const Corr& p, const MmaTile& t) {
  const unsigned grid = grid_size(t.blocks()), threads = 32 * kMmaWarps;
  auto go = [&](auto kernel) { launch(kernel, grid, threads, t.smem, p, t); };
  switch (band_chunks(p.kw) * 2 + !p.tf32) {
#define LC_TF32_CASE(kb)                                 \
  case 2 * kb: go(corr_tf32_kernel<kb, false>); return; \
  case 2 * kb + 1: go(corr_tf32_kernel<kb, true>); return;
    LC_TF32_CASE(3) LC_TF32_CASE(4) LC_TF32_CASE(5) LC_TF32_CASE(6) LC_TF32_CASE(7) LC_TF32_CASE(8) LC_TF32_CASE(9)
#undef LC_TF32_CASE
  }
  LC_CHECK(false, "no TF32 tile for kw = " + std::to_string(p.kw));
}

inline unsigned naive_grid(int64_t total) {
  const int64_t blocks = ceil_div(total, kThreads);
  return static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20));  // grid-stride loop covers the rest
}

// ================================================================================================================
// Small maps: a plane of at most kPlaneMaxPixels input pixels, fewer than the kernel's taps (RepLKNet-31B's 7x7
// stage, K = 13: 49 pixels, 169 taps). Each output sums over the input pixels its window meets, not over the taps,
// most of which lie over padding: the tiled kernels ran all 169 taps a pixel (~77% of their time staging), the
// dense products (largeconv/cuda.py) measured 0.217 ms forward on an H200 against PyTorch's 0.124 (its own kernel
// skips the padding taps too). A block takes one output channel of t.images images: the channel's filter (flipped
// for grad-input) and the images' planes staged, then each thread takes outputs in turn. Sums in fp32 over the
// taps inside the input only, so NaN/Inf reach the outputs whose windows meet them, as in the direct sums.
// Unit stride and dilation, one input plane per output plane (reps 1); NCHW or channels_last.
constexpr int kPlaneMaxPixels = 64;

struct PlaneTile {
  int images;  // images per block
  int64_t image_groups;
  size_t smem;  // bytes: the filter, then `images` input planes (floats)
};

inline bool plan_corr_plane(const Corr& p, const DeviceLimits& lim, PlaneTile* t) {
  const int64_t pixels = p.in_h * p.in_w, outputs = p.out_h * p.out_w;
  if (p.sh != 1 || p.sw != 1 || p.dh != 1 || p.dw != 1 || p.reps != 1 || pixels > kPlaneMaxPixels ||
      pixels >= static_cast<int64_t>(p.kh) * p.kw)
    return false;
  t->images = static_cast<int>(outputs >= kThreads ? 1 : (p.n < kThreads / outputs ? p.n : kThreads / outputs));
  t->image_groups = ceil_div(p.n, t->images);
  t->smem = (static_cast<size_t>(p.kh) * p.kw + static_cast<size_t>(t->images) * pixels) * sizeof(float);
  return t->smem <= static_cast<size_t>(lim.max_smem_optin);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) corr_plane_kernel(Corr p, PlaneTile t) {
  const T* __restrict__ in = static_cast<const T*>(p.in);
  const T* __restrict__ weight = static_cast<const T*>(p.weight);
  const int taps = p.kh * p.kw, in_h = static_cast<int>(p.in_h), in_w = static_cast<int>(p.in_w);
  const int out_h = static_cast<int>(p.out_h), out_w = static_cast<int>(p.out_w);
  const int pixels = in_h * in_w, outputs = out_h * out_w;
  float* fs = dynamic_smem();  // fs[a * kw + b]: the filter tap (a, b) the output's window puts there
  float* xs = fs + taps;       // the images' planes, in_h x in_w each
  // Every window covers the whole plane ("same" padding, K >= 2H - 1: RepLKNet's 7x7 stage): the row and column
  // loops run the same bounds in every lane (per-lane bounds cost ~14 instructions a multiply-add at 7 columns).
  const bool covered = out_h - 1 <= p.off_h && p.off_h <= p.kh - in_h && out_w - 1 <= p.off_w &&
                       p.off_w <= p.kw - in_w;
  const int64_t o = blockIdx.x % p.out_c, n0 = blockIdx.x / p.out_c * t.images;
  const int images = static_cast<int>(p.n - n0 < t.images ? p.n - n0 : t.images);
  const int64_t ci = o / p.in_div;
  for (int k = threadIdx.x; k < taps; k += blockDim.x) fs[k] = to_float(weight[o * taps + (p.flip ? taps - 1 - k : k)]);
  for (int e = threadIdx.x; e < images * pixels; e += blockDim.x) {
    const int img = e / pixels, pix = e % pixels;
    xs[e] = to_float(in[offset4(p.channels_last, n0 + img, ci, pix / in_w, pix % in_w, p.in_c, p.in_h, p.in_w)]);
  }
  __syncthreads();
  const float bias = p.bias ? to_float(static_cast<const T*>(p.bias)[o]) : 0.f;
  T* out = static_cast<T*>(p.out);
  for (int e = threadIdx.x; e < images * outputs; e += blockDim.x) {
    const int img = e / outputs, i = e % outputs / out_w, j = e % out_w;
    // input row r meets tap row r - i + off_h, column c tap column c - j + off_w: those inside the filter count
    const int r0 = imax(0, i - p.off_h), r1 = imin(in_h, i - p.off_h + p.kh);
    const int c0 = imax(0, j - p.off_w), c1 = imin(in_w, j - p.off_w + p.kw);
    const float* x = xs + img * pixels;
    float acc = 0.f;
    if (covered) {
      const float* f = fs + (p.off_h - i) * p.kw + p.off_w - j;
      for (int r = 0; r < in_h; ++r)
#pragma unroll 4
        for (int c = 0; c < in_w; ++c) acc = fmaf(x[r * in_w + c], f[r * p.kw + c], acc);
    } else {
      for (int r = r0; r < r1; ++r) {
        const float* f = fs + (r - i + p.off_h) * p.kw - j + p.off_w;
        for (int c = c0; c < c1; ++c) acc = fmaf(x[r * in_w + c], f[c], acc);
      }
    }
    out[offset4(p.channels_last, n0 + img, o, i, j, p.out_c, p.out_h, p.out_w)] = from_float<T>(acc + bias);
  }
}

template <typename T, typename Launch>
void run_corr(Launch& launch, const Corr& p, const DeviceLimits& lim) {
  PlaneTile plane;
  if (plan_corr_plane(p, lim, &plane)) {
    launch(corr_plane_kernel<T>, grid_size(p.out_c * plane.image_groups), kThreads, plane.smem, p, plane);
    return;
  }
  MmaTile mma;
  if constexpr (std::is_same_v<T, float>) {
    if (plan_corr_tf32(p, lim, &mma)) {
      run_corr_tf32(launch, p, mma);
      return;
    }
  } else if (plan_corr_mma<T>(p, lim, &mma)) {
    run_corr_mma<T>(launch, p, mma);
    return;
  }
  CorrTile t;
  if (plan_corr(p, lim, &t)) {
    if (p.sw == 1 && p.dw == 1) {  // must match plan_corr's `unit`
      launch(corr_tile_kernel<T, true>, grid_size(t.blocks()), t.threads(), t.smem, p, t);
    } else {
      launch(corr_tile_kernel<T, false>, grid_size(t.blocks()), t.threads(), t.smem, p, t);
    }
  } else {
    launch(corr_naive_kernel<T>, naive_grid(p.n * p.out_c * p.out_h * p.out_w), kThreads, 0, p);
  }
}

// ================================================================================================================
// Grad-input for stride > 1 (a transposed convolution): one thread per input element gathers the outputs it fed.
// ================================================================================================================
struct Gather {
  const void* grad_out;
  const void* weight;
  void* out;
  int64_t n, c, h, w, co, ho, wo;
  int mult, kh, kw, sh, sw, dh, dw, pt, pl;
  bool channels_last;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) grad_input_gather_kernel(Gather p) {
  const T* __restrict__ g = static_cast<const T*>(p.grad_out);
  const T* __restrict__ weight = static_cast<const T*>(p.weight);
  T* out = static_cast<T*>(p.out);
  const int64_t taps = static_cast<int64_t>(p.kh) * p.kw;
  const int64_t total = p.n * p.c * p.h * p.w;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    int64_t n, c, hh, ww;
    if (p.channels_last) {
      c = idx % p.c;
      ww = (idx / p.c) % p.w;
      hh = (idx / (p.c * p.w)) % p.h;
      n = idx / (p.c * p.w * p.h);
    } else {
      ww = idx % p.w;
      hh = (idx / p.w) % p.h;
      c = (idx / (p.w * p.h)) % p.c;
      n = idx / (p.w * p.h * p.c);
    }
    float acc = 0.f;
    for (int rep = 0; rep < p.mult; ++rep) {
      const int64_t q = c * p.mult + rep;
      for (int a = 0; a < p.kh; ++a) {
        const int64_t ti = hh + p.pt - static_cast<int64_t>(a) * p.dh;  // = i * sh for the output row i it fed
        if (ti < 0) break;                                               // ti only decreases with a
        if (ti % p.sh != 0 || ti / p.sh >= p.ho) continue;
        const int64_t i = ti / p.sh;
        for (int b = 0; b < p.kw; ++b) {
          const int64_t tj = ww + p.pl - static_cast<int64_t>(b) * p.dw;
          if (tj < 0) break;
          if (tj % p.sw != 0 || tj / p.sw >= p.wo) continue;
          acc = fmaf(to_float(weight[q * taps + a * p.kw + b]),
                     to_float(g[offset4(p.channels_last, n, q, i, tj / p.sw, p.co, p.ho, p.wo)]), acc);
        }
      }
    }
    out[idx] = from_float<T>(acc);
  }
}

// ================================================================================================================
// Grad-weight: dW[o, a, b] = sum_{n, i, j} g[n, o, i, j] * x[n, o / mult, i*sh + a*dh - pt, j*sw + b*dw - pl].
// ================================================================================================================
struct WGrad {
  const void* x;
  const void* grad_out;
  float* partial;  // [splits][co][kh * kw] fp32
  void* out;       // (co, 1, kh, kw)
  int64_t n, c, h, w, co, ho, wo;
  int mult, kh, kw, sh, sw, dh, dw, pt, pl;
  bool channels_last;
  bool tf32;  // fp32: TF32 allowed, as Corr::tf32
};

// A block: bz channels x one split of the items (image n, th x tw output tile). Thread "groups" own kRB taps
// (a, kg*kRB .. +kRB) of one channel; when there are fewer groups than threads, `sets` copies of each group share
// the tile's (row, kCols-column chunk) units and are summed at the end in a fixed order.
struct WGradTile {
  int bz, th, tw, ih, iw, rs, ps, kwg, groups, sets, threads;
  int64_t tiles_h, tiles_w, items, splits, channel_groups;
  size_t smem;  // bytes: bz x tiles, bz grad_out tiles, sets x groups x kRB accumulators

  LC_HD int64_t blocks() const { return channel_groups * splits; }
};

template <typename T, bool kUnit>  // kUnit: sw == dw == 1
__global__ void __launch_bounds__(kThreads) wgrad_tile_kernel(WGrad p, WGradTile t) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ g = static_cast<const T*>(p.grad_out);
  float* xs = dynamic_smem();
  float* gs = xs + static_cast<size_t>(t.bz) * t.ps;
  float* accs = gs + static_cast<size_t>(t.bz) * t.th * t.tw;
  const int tid = threadIdx.x;
  const int acc_len = t.groups * kRB;

  const int64_t split = blockIdx.x % t.splits;
  const int o0 = static_cast<int>(blockIdx.x / t.splits) * t.bz, co = static_cast<int>(p.co);
  const int64_t item_begin = split * t.items / t.splits, item_end = (split + 1) * t.items / t.splits;
  const int chunks = t.tw / kCols, units = t.th * chunks;

  // This thread's set and groups: one group per thread when sets > 1, else groups tid, tid + threads, ...
  const int set = t.sets > 1 ? tid / t.groups : 0;
  const int group0 = t.sets > 1 ? tid % t.groups : tid;
  const int group_step = t.sets > 1 ? t.groups : t.threads;

  for (int e = tid; e < t.sets * acc_len; e += t.threads) accs[e] = 0.f;

  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t tile_w = item % t.tiles_w, tile_h = (item / t.tiles_w) % t.tiles_h;
    const int64_t n = item / (t.tiles_w * t.tiles_h);
    const int64_t i0 = tile_h * t.th, j0 = tile_w * t.tw;
    const int64_t row0 = i0 * p.sh - p.pt, col0 = j0 * p.sw - p.pl;
    __syncthreads();  // the previous item's tiles (and the zeroed accumulators) are no longer being read

    if (!p.channels_last) {
      stage_rows<T>(gs, t.th * t.tw, t.tw, t.bz, t.th, t.tw, j0, p.wo, g, [&](int zz, int i) -> const T* {
        const int64_t gi = i0 + i;
        return o0 + zz < co && gi < p.ho ? g + ((n * p.co + o0 + zz) * p.ho + gi) * p.wo : nullptr;
      }, tid, t.threads);
      stage_rows<T>(xs, t.ps, t.rs, t.bz, t.ih, t.iw, col0, p.w, x, [&](int zz, int row) -> const T* {
        const int64_t gr = row0 + row;
        if (o0 + zz >= co || gr < 0 || gr >= p.h) return nullptr;
        return x + ((n * p.c + (o0 + zz) / p.mult) * p.h + gr) * p.w;
      }, tid, t.threads);
    } else {  // consecutive threads: consecutive channels
      for (int e = tid; e < t.bz * t.th * t.tw; e += t.threads) {
        const int zz = e % t.bz, j = (e / t.bz) % t.tw, i = e / (t.bz * t.tw);
        const int o = o0 + zz;
        const int64_t gi = i0 + i, gj = j0 + j;
        float v = 0.f;  // outside grad_out: contributes nothing
        if (o < co && gi < p.ho && gj < p.wo) v = to_float(g[offset4(true, n, o, gi, gj, p.co, p.ho, p.wo)]);
        gs[(zz * t.th + i) * t.tw + j] = v;
      }
      for (int e = tid; e < t.bz * t.ih * t.iw; e += t.threads) {
        const int zz = e % t.bz, col = (e / t.bz) % t.iw, row = e / (t.bz * t.iw);
        const int o = o0 + zz;
        const int64_t gr = row0 + row, gc = col0 + col;
        float v = 0.f;
        if (o < co && gr >= 0 && gr < p.h && gc >= 0 && gc < p.w) {
          v = to_float(x[offset4(true, n, o / p.mult, gr, gc, p.c, p.h, p.w)]);
        }
        xs[zz * t.ps + row * t.rs + col] = v;
      }
    }
    __syncthreads();

    for (int grp = group0; grp < t.groups; grp += group_step) {
      const int zz = grp / (p.kh * t.kwg), a = (grp / t.kwg) % p.kh, kg = grp % t.kwg;
      const float* xb = xs + zz * t.ps + a * p.dh * t.rs + kg * kRB * p.dw;
      const float* gb = gs + zz * t.th * t.tw;
      float acc[kRB];
#pragma unroll
      for (int r = 0; r < kRB; ++r) acc[r] = 0.f;
      for (int u = set; u < units; u += t.sets) {
        const int i = u / chunks, jb = (u % chunks) * kCols;
        // Outputs past grad_out's edge are staged as g = 0, but 0 times an Inf of x is NaN, which F.conv2d never
        // adds: skip them (whole rows and chunks here; the last chunk of a row takes the scalar path below).
        const int64_t cols = p.wo - (j0 + jb);
        if (i0 + i >= p.ho || cols <= 0) continue;
        const float* xr = xb + i * p.sh * t.rs;
        const float* gr = gb + i * t.tw + jb;
        if (kUnit && cols >= kCols) {  // 16-byte aligned: rs, ps multiples of 4; tw, jb, kg * kRB multiples of 8
          float xv[kCols + kRB];  // the last value only pads the 16-byte loads
#pragma unroll
          for (int q = 0; q < (kCols + kRB) / 4; ++q) {
            const float4 v = load4(xr + jb + 4 * q);
            xv[4 * q] = v.x; xv[4 * q + 1] = v.y; xv[4 * q + 2] = v.z; xv[4 * q + 3] = v.w;
          }
#pragma unroll
          for (int u4 = 0; u4 < kCols / 4; ++u4) {
            const float4 v = load4(gr + 4 * u4);
            const float gv[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
            for (int uu = 0; uu < 4; ++uu) {
#pragma unroll
              for (int r = 0; r < kRB; ++r) acc[r] = fmaf(gv[uu], xv[4 * u4 + uu + r], acc[r]);
            }
          }
        } else {
#pragma unroll
          for (int uu = 0; uu < kCols; ++uu) {
            if (uu >= cols) break;
            const float gv = gr[uu];
            const float* xc = xr + (jb + uu) * p.sw;
#pragma unroll
            for (int r = 0; r < kRB; ++r) acc[r] = fmaf(gv, xc[r * p.dw], acc[r]);
          }
        }
      }
      float* dst = accs + static_cast<size_t>(set) * acc_len + grp * kRB;  // owned by this thread alone
#pragma unroll
      for (int r = 0; r < kRB; ++r) dst[r] += acc[r];
    }
  }
  __syncthreads();

  // Sum the sets in a fixed order; taps past kw in the last group of a row were padding and are dropped.
  const int taps = p.kh * p.kw;
  for (int e = tid; e < t.bz * taps; e += t.threads) {
    const int zz = e / taps, k = e % taps, a = k / p.kw, b = k % p.kw;
    const int o = o0 + zz;
    if (o >= co) continue;
    const int idx = ((zz * p.kh + a) * t.kwg + b / kRB) * kRB + b % kRB;
    float s = 0.f;
    for (int st = 0; st < t.sets; ++st) s += accs[st * acc_len + idx];
    p.partial[(split * co + o) * taps + k] = s;
  }
}

// Fallback: one block per (channel, tap), a fixed-shape tree reduction (deterministic). Needs kThreads floats.
template <typename T>
__global__ void __launch_bounds__(kThreads) wgrad_naive_kernel(WGrad p) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ g = static_cast<const T*>(p.grad_out);
  float* red = dynamic_smem();
  const int tid = threadIdx.x;
  const int64_t taps = static_cast<int64_t>(p.kh) * p.kw;
  const int64_t o = blockIdx.x / taps, k = blockIdx.x % taps;
  const int64_t a = k / p.kw, b = k % p.kw;
  const int64_t total = p.n * p.ho * p.wo;
  float s = 0.f;
  for (int64_t e = tid; e < total; e += blockDim.x) {
    const int64_t j = e % p.wo, i = (e / p.wo) % p.ho, n = e / (p.wo * p.ho);
    const int64_t hh = i * p.sh + a * p.dh - p.pt, ww = j * p.sw + b * p.dw - p.pl;
    if (hh < 0 || hh >= p.h || ww < 0 || ww >= p.w) continue;
    s = fmaf(to_float(g[offset4(p.channels_last, n, o, i, j, p.co, p.ho, p.wo)]),
             to_float(x[offset4(p.channels_last, n, o / p.mult, hh, ww, p.c, p.h, p.w)]), s);
  }
  red[tid] = s;
  __syncthreads();
  for (int stride = kThreads / 2; stride > 0; stride /= 2) {
    if (tid < stride) red[tid] += red[tid + stride];
    __syncthreads();
  }
  if (tid == 0) static_cast<T*>(p.out)[o * taps + k] = from_float<T>(red[0]);
}

inline bool plan_wgrad(const WGrad& p, const DeviceLimits& lim, WGradTile* tile) {
  const bool unit = p.sw == 1 && p.dw == 1;
  int bz, th, tw;
  const int64_t wo8 = ceil_div(p.wo, kCols) * kCols;
  // Tiles tall enough that staging (the kh - 1 halo rows) stays small next to the kh * kw FMAs per staged value.
  if (p.channels_last) {  // 4 consecutive channels per block: 16-byte runs of fp32
    bz = static_cast<int>(p.co < 4 ? p.co : 4);
    th = static_cast<int>(p.ho < 8 ? p.ho : 8);
    tw = static_cast<int>(wo8 < 32 ? wo8 : 32);
  } else {
    bz = 1;
    th = static_cast<int>(p.ho < 16 ? p.ho : 16);
    tw = static_cast<int>(wo8 < 64 ? wo8 : 64);
  }
  const int kwg = static_cast<int>(ceil_div(p.kw, kRB));
  WGradTile t{};
  auto fill = [&]() -> bool {
    const int64_t ih = static_cast<int64_t>(th - 1) * p.sh + static_cast<int64_t>(p.kh - 1) * p.dh + 1;
    const int64_t iw = static_cast<int64_t>(tw - 1) * p.sw + static_cast<int64_t>(kwg * kRB - 1) * p.dw + 1;
    // unit: 16-byte window loads read one column past iw (never used)
    const int64_t rs = unit ? vec_stride(iw + 1) : odd_stride(iw);
    const int64_t ps = unit ? vec_stride(ih * rs) : odd_stride(ih * rs);
    const int64_t groups = static_cast<int64_t>(bz) * p.kh * kwg;
    const int64_t units = static_cast<int64_t>(th) * (tw / kCols);
    int64_t sets = 1;
    if (groups < kThreads) sets = imax(1, static_cast<int>((kThreads / groups) < units ? kThreads / groups : units));
    const int64_t floats = bz * ps + static_cast<int64_t>(bz) * th * tw + sets * groups * kRB;
    if (ih * iw > (1 << 24) || floats * 4 > (int64_t{1} << 30)) return false;
    t.bz = bz; t.th = th; t.tw = tw; t.kwg = kwg;
    t.ih = static_cast<int>(ih); t.iw = static_cast<int>(iw); t.rs = static_cast<int>(rs); t.ps = static_cast<int>(ps);
    t.groups = static_cast<int>(groups);
    t.sets = static_cast<int>(sets);
    t.threads = groups < kThreads ? static_cast<int>(groups * sets) : kThreads;
    t.tiles_h = ceil_div(p.ho, th);
    t.tiles_w = ceil_div(p.wo, tw);
    t.items = p.n * t.tiles_h * t.tiles_w;
    t.channel_groups = ceil_div(p.co, bz);
    t.smem = static_cast<size_t>(floats) * sizeof(float);
    return true;
  };
  bool ok = fill();
  while (!ok || t.smem > static_cast<size_t>(lim.max_smem_optin)) {
    if (bz > 1) bz = (bz + 1) / 2;
    else if (th > 1) th = (th + 1) / 2;
    else if (tw > kCols) tw = static_cast<int>(ceil_div((tw + 1) / 2, kCols) * kCols);
    else return false;
    ok = fill();
  }
  // Enough blocks for the machine: split the items, about four blocks per SM in all.
  const int64_t want = ceil_div(4 * static_cast<int64_t>(lim.num_sms), t.channel_groups);
  t.splits = want < 1 ? 1 : (want < t.items ? want : t.items);
  *tile = t;
  return true;
}

// ================================================================================================================
// Tensor-core grad-weight: fp16/bf16, NCHW, unit stride and dilation, kh and kw <= 32. For one g row r of an item,
// dW[a][b] += sum_j' xs[r + a][j'] g[r][j' - b]: a product of the staged x rows r .. r + 31 (M = kernel rows,
// 2 m-tiles) with the banded Toeplitz matrix of g's row (N = kernel columns, 4 n-tiles; K = x columns), the
// corr_mma_kernel design with the filter row replaced by the g row (two copies, 16 banks apart). A block owns one
// channel and a split of the items (image, th x tw tile of g); its 4 warps take g rows (in chains 16 apart where
// kh > 16: m-tile 1 of one row is m-tile 0 of the next) and sum in registers; the warps' sums are added in a fixed
// order and stored as the split's partial sums (deterministic).
// Non-finite sums (band zeros times an Inf input): the block sums its taps again directly.
// ================================================================================================================
constexpr int kWgMaxK = 32;
// Blocks per SM the grad-weight kernels are compiled for (__launch_bounds__' minimum: their registers capped to fit,
// by k-blocks: the band's width) and planned for (split_wgrad_items).
constexpr int kWgMmaBlocksPerSm = 4;
constexpr LC_HD int wgrad_tf32_blocks_per_sm(bool split, int kb) {
  return split ? (kb >= 6 ? 2 : kb >= 4 ? 3 : 4) : (kb >= 6 ? 4 : 5);
}

struct MmaWGradTile {
  int th, tw;           // g rows and columns per item
  int xrows, cols, rs;  // x tile rows (th + 31 staged; more when the warps' sums need the room), columns
                        // 16 (kKB + 2), row stride (elements)
  int gw, gcs;          // padded g row (16 kKB + 16), offset of the second copy (second_copy_offset)
  int64_t tiles_h, tiles_w, items, splits;
  size_t smem;

  LC_HD int64_t blocks(int64_t channels) const { return channels * splits; }
};

// The end of a tensor-core grad-weight block (wgrad_mma_kernel, wgrad_tf32_kernel): the warps' sums acc[mt][nb]
// (C fragments: tap (16 mt + group (+8), 8 nb + 2 quad (+1))) added in warp order through `red` (the x tile, free
// now: at least kMmaWarps x 1024 floats) and stored as the split's partial sums; if any came out non-finite (band
// zeros times an Inf input), the block's taps are summed again directly from global memory.
template <typename T>
LC_D void wgrad_mma_finish(const WGrad& p, const MmaWGradTile& t, const float (&acc)[2][4][4], float* red,
                           int* non_finite, int64_t split, int64_t o, int64_t item_begin, int64_t item_end) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ g = static_cast<const T*>(p.grad_out);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
  const int taps = p.kh * p.kw;
  __syncthreads();
  constexpr int kPerWarp = 2 * 4 * 4 * 32;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nb = 0; nb < 4; ++nb)
#pragma unroll
      for (int e = 0; e < 4; ++e) red[warp * kPerWarp + ((mt * 4 + nb) * 4 + e) * 32 + lane] = acc[mt][nb][e];
  if (tid == 0) *non_finite = 0;
  __syncthreads();
  float* part = p.partial + (split * p.co + o) * taps;
  for (int v = tid; v < kPerWarp; v += blockDim.x) {
    const int vl = v % 32, e = v / 32 % 4, nb = v / 128 % 4, mt = v / 512;
    const int a = 16 * mt + vl / 4 + 8 * (e / 2), b = 8 * nb + 2 * (vl % 4) + e % 2;
    if (a >= p.kh || b >= p.kw) continue;
    float s = 0.f;
    for (int w = 0; w < kMmaWarps; ++w) s += red[w * kPerWarp + v];
    if (!is_finite(s)) *non_finite = 1;
    part[a * p.kw + b] = s;
  }
  __syncthreads();
  if (*non_finite) {  // the direct sums over the real taps, a tap per thread
    note_redo();
    for (int k = tid; k < taps; k += blockDim.x) {
      const int a = k / p.kw, b = k % p.kw;
      float s = 0.f;
      for (int64_t item = item_begin; item < item_end; ++item) {
        const int64_t tile_w = item % t.tiles_w, tile_h = item / t.tiles_w % t.tiles_h;
        const int64_t n = item / (t.tiles_w * t.tiles_h);
        const T* g_plane = g + (n * p.co + o) * p.ho * p.wo;
        const T* x_plane = x + (n * p.c + o / p.mult) * p.h * p.w;
        for (int64_t i = tile_h * t.th; i < imin(tile_h * t.th + t.th, p.ho); ++i) {
          const int64_t xr = i + a - p.pt;
          if (xr < 0 || xr >= p.h) continue;
          for (int64_t j = tile_w * t.tw; j < imin(tile_w * t.tw + t.tw, p.wo); ++j) {
            const int64_t xc = j + b - p.pl;
            if (xc >= 0 && xc < p.w) s = fmaf(to_float(g_plane[i * p.wo + j]), to_float(x_plane[xr * p.w + xc]), s);
          }
        }
      }
      part[k] = s;
    }
  }
}

template <typename T, int kKB>
__global__ void __launch_bounds__(32 * kMmaWarps, kWgMmaBlocksPerSm) wgrad_mma_kernel(WGrad p, MmaWGradTile t) {
  const T* __restrict__ x = static_cast<const T*>(p.x);
  const T* __restrict__ g = static_cast<const T*>(p.grad_out);
  T* xs = reinterpret_cast<T*>(dynamic_smem());
  T* gs = xs + static_cast<size_t>(t.xrows) * t.rs;
  int* non_finite = reinterpret_cast<int*>(gs + 2 * static_cast<size_t>(t.gcs));
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, group = lane / 4, quad = lane % 4;
  const int mts = (p.kh + 15) / 16, nbs = (p.kw + 7) / 8;
  const int64_t split = blockIdx.x % t.splits, o = blockIdx.x / t.splits;
  const int64_t item_begin = split * t.items / t.splits, item_end = (split + 1) * t.items / t.splits;

  float acc[2][4][4] = {};
  const T* g_lane = gs + 16 + 2 * quad - group + (group % 2 ? t.gcs - 1 : 0);  // as corr_mma_kernel's f_lane
  uint32_t bf[kKB][2][2], ax[kKB + 1][4], ay[kKB + 1][4];  // a g row's band; two m-tiles' x fragments
  // the x fragments of 16 staged rows from r0 (k-blocks nb / 2 + q < kKB + 1)
  auto load_x = [&](uint32_t (&af)[kKB + 1][4], int r0) {
    load_a_fragments(af, xs + a_matrix_row(r0, r0 + 8, lane) * t.rs + a_matrix_col<T>(lane));
  };
  auto products = [&](float (&c)[4][4], const uint32_t (&af)[kKB + 1][4]) {
#pragma unroll
    for (int nb = 0; nb < 4; ++nb)
      if (nb < nbs)  // the same for the whole block
#pragma unroll
        for (int q = 0; q < kKB; ++q) mma_m16n8k16<T>(c[nb], af[nb / 2 + q], bf[q][nb % 2]);
  };

  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t tile_w = item % t.tiles_w, tile_h = item / t.tiles_w % t.tiles_h, n = item / (t.tiles_w * t.tiles_h);
    const int64_t i0 = tile_h * t.th, j0 = tile_w * t.tw;
    __syncthreads();  // the previous item's tiles are no longer read
    // g rows, zero-padded by 16 (and past the item), twice: gs[r * gw + 16 + j], the copy one value later
    const T* g_plane = g + (n * p.co + o) * p.ho * p.wo;
    for (int row = warp; row < 2 * t.th; row += kMmaWarps) {
      const int r = row % t.th, shift = row / t.th - 16;
      const int64_t gi = i0 + r, width = t.tw < p.wo - j0 ? t.tw : p.wo - j0;  // g columns of this item
      stage_pairs(gs + row / t.th * t.gcs + r * t.gw, gi < p.ho ? g_plane + gi * p.wo + j0 : nullptr, shift, width,
                  t.gw, lane);
    }
    // x rows i0 - pt .., columns j0 - pl .., zero outside the image
    const T* x_plane = x + (n * p.c + o / p.mult) * p.h * p.w;
    for (int r = warp; r < t.th + 31; r += kMmaWarps) {  // the rows read (xrows may be more: see the plan)
      const int64_t gr = i0 - p.pt + r;
      stage_pairs(xs + r * t.rs, gr >= 0 && gr < p.h ? x_plane + gr * p.w : nullptr, j0 - p.pl, p.w, t.cols, lane);
    }
    __syncthreads();

    if (mts == 1) {  // kh <= 16: one m-tile, g rows in turn
      for (int r = warp; r < t.th; r += kMmaWarps) {
        load_band_fragments(bf, g_lane + r * t.gw);
        load_x(ax, r);
        products(acc[0], ax);
      }
      continue;
    }
    // Two m-tiles: a warp's g rows run in chains 16 apart (first, first + 16, ...), where m-tile 1's x rows at one
    // are m-tile 0's at the next, so a step loads one m-tile's fragments, into the array the other does not hold
    // (about 7.7 ldmatrix a g row at 56 rows, not 12).
    for (int first = warp; first < imin(16, t.th); first += kMmaWarps) {
      load_x(ax, first);
      for (int r = first;;) {
        load_band_fragments(bf, g_lane + r * t.gw);
        load_x(ay, r + 16);
        products(acc[0], ax), products(acc[1], ay);
        if ((r += 16) >= t.th) break;
        load_band_fragments(bf, g_lane + r * t.gw);
        load_x(ax, r + 16);
        products(acc[0], ay), products(acc[1], ax);
        if ((r += 16) >= t.th) break;
      }
    }
  }

  wgrad_mma_finish<T>(p, t, acc, reinterpret_cast<float*>(xs), non_finite, split, o, item_begin, item_end);
}

// Whether a call suits the tensor-core grad-weights (wgrad_mma_kernel, wgrad_tf32_kernel): NCHW, unit stride and
// dilation, 13 <= kw <= 32, kh <= 32, sm_80+; if so, their items in `t`: (image, g tile of up to 64 x 64, th x tw
// with tw a multiple of 8); the plans then split each channel's items (split_wgrad_items).
inline bool wgrad_mma_items(const WGrad& p, const DeviceLimits& lim, MmaWGradTile* t) {
  if (!lim.tensor_cores || p.channels_last || p.sh != 1 || p.sw != 1 || p.dh != 1 || p.dw != 1 ||
      p.kh > kWgMaxK || p.kw > kWgMaxK || p.kw < kMmaMinKw)
    return false;
  *t = MmaWGradTile{};
  t->tiles_h = ceil_div(p.ho, 64);
  t->th = static_cast<int>(ceil_div(p.ho, t->tiles_h));
  t->tiles_w = ceil_div(p.wo, 64);
  t->tw = static_cast<int>(ceil_div(ceil_div(p.wo, t->tiles_w), 8) * 8);
  t->items = p.n * t->tiles_h * t->tiles_w;
  return true;
}

// Splits of a channel's items: the count whose blocks fill their waves best (ties: the fewest), up to four waves;
// a wave: blocks_per_sm blocks on every SM (the kernel's __launch_bounds__), or fewer where the shared memory
// (t->smem, and 1 KB a block the SM reserves) holds fewer. Planned for four blocks a SM whatever the kernel, TF32's
// (four resident) took 640 blocks at RepLKNet-31B's first stage on 132 SMs: 1.2 waves, the second one block on
// most SMs.
inline void split_wgrad_items(const WGrad& p, const DeviceLimits& lim, int blocks_per_sm, MmaWGradTile* t) {
  const int64_t by_smem = (lim.max_smem_optin + 1024) / (static_cast<int64_t>(t->smem) + 1024);
  const int64_t slots = (by_smem < blocks_per_sm ? by_smem : blocks_per_sm) * lim.num_sms;
  const int64_t most = 4 * slots / p.co < t->items ? 4 * slots / p.co : t->items;
  int64_t best = 1, best_blocks = p.co, best_waves = ceil_div(p.co, slots);
  for (int64_t s = 2; s <= most; ++s) {
    const int64_t blocks = s * p.co, waves = ceil_div(blocks, slots);
    if (blocks * best_waves > best_blocks * waves) best = s, best_blocks = blocks, best_waves = waves;  // fuller
  }
  t->splits = best;
}

// The tensor-core grad-weight's plan when the call qualifies (fp16/bf16 only: the caller checks the dtype).
inline bool plan_wgrad_mma(const WGrad& p, const DeviceLimits& lim, MmaWGradTile* tile) {
  MmaWGradTile t;
  if (!wgrad_mma_items(p, lim, &t)) return false;
  const int kb = mma_k_blocks(t.tw);  // the band of g's row is tw wide
  t.xrows = t.th + 31;
  t.cols = 16 * (kb + 2);  // A fragments of k-blocks < kb + 2; >= tw + kw - 1
  t.rs = t.cols + 8;       // as corr_mma_kernel
  t.gw = 16 * kb + 16;
  t.gcs = second_copy_offset(t.th * t.gw);
  // the warps' sums (kMmaWarps x 1024 floats) go over the x tile: at least that many bytes of it
  const int64_t red_rows = ceil_div(kMmaWarps * 2 * 4 * 4 * 32 * 4, 2 * t.rs);
  if (t.xrows < red_rows) t.xrows = static_cast<int>(red_rows);
  t.smem = (static_cast<size_t>(t.xrows) * t.rs + 2 * static_cast<size_t>(t.gcs)) * 2 + 16;
  if (t.smem > static_cast<size_t>(lim.max_smem_optin)) return false;
  split_wgrad_items(p, lim, kWgMmaBlocksPerSm, &t);
  *tile = t;
  return true;
}

template <typename T, typename Launch>
void run_wgrad_mma(Launch& launch, const WGrad& p, const MmaWGradTile& t) {
  const unsigned grid = grid_size(t.blocks(p.co)), threads = 32 * kMmaWarps;
  switch (mma_k_blocks(t.tw)) {
    case 2: launch(wgrad_mma_kernel<T, 2>, grid, threads, t.smem, p, t); return;
    case 3: launch(wgrad_mma_kernel<T, 3>, grid, threads, t.smem, p, t); return;
    case 4: launch(wgrad_mma_kernel<T, 4>, grid, threads, t.smem, p, t); return;
    case 5: launch(wgrad_mma_kernel<T, 5>, grid, threads, t.smem, p, t); return;
  }
  LC_CHECK(false, "no tensor-core grad-weight tile for tw = " + std::to_string(t.tw));
}

// ================================================================================================================
// TF32 grad-weight: fp32 calls of the kind wgrad_mma_kernel takes, by mma.sync m16n8k8 (one TF32 product where TF32
// is allowed, else 3xTF32 on maps of at least kSplitMinSide, as corr_tf32_kernel). The same items, warps, Toeplitz
// product and ending (wgrad_mma_finish), with k-blocks of 8: n-tile nb of kernel columns meets x columns 8 nb ..
// 8 nb + 7 + tw - 1, k-blocks nb .. nb + kKB - 1 (kKB = tw / 8 + 1), and the B fragment of (k-block nb + q, n-tile
// nb) is g[r][8 q + k - n] for every n-tile: the g row staged zero-padded by kTf32Pad, x and g rounded to TF32
// (and their lo parts for kSplit) as they are staged.
// ================================================================================================================
template <int kKB, bool kSplit>
__global__ void __launch_bounds__(32 * kMmaWarps, wgrad_tf32_blocks_per_sm(kSplit, kKB))
    wgrad_tf32_kernel(WGrad p, MmaWGradTile t) {
  const float* __restrict__ x = static_cast<const float*>(p.x);
  const float* __restrict__ g = static_cast<const float*>(p.grad_out);
  constexpr int kParts = kSplit ? 2 : 1;
  const size_t x_elems = static_cast<size_t>(t.xrows) * t.rs, g_elems = static_cast<size_t>(t.th) * t.gw;
  float* xs = dynamic_smem();
  float* gs = xs + kParts * x_elems;
  int* non_finite = reinterpret_cast<int*>(gs + kParts * g_elems);
  const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32, group = lane / 4, quad = lane % 4;
  const int mts = (p.kh + 15) / 16, nbs = (p.kw + 7) / 8;
  const int64_t split = blockIdx.x % t.splits, o = blockIdx.x / t.splits;
  const int64_t item_begin = split * t.items / t.splits, item_end = (split + 1) * t.items / t.splits;

  float acc[2][4][4] = {};

  for (int64_t item = item_begin; item < item_end; ++item) {
    const int64_t tile_w = item % t.tiles_w, tile_h = item / t.tiles_w % t.tiles_h, n = item / (t.tiles_w * t.tiles_h);
    const int64_t i0 = tile_h * t.th, j0 = tile_w * t.tw;
    __syncthreads();  // the previous item's tiles are no longer read
    // g rows: gs[r * gw + 8 + j] = g[i0 + r][j0 + j] for the item's columns, zero around
    const float* g_plane = g + (n * p.co + o) * p.ho * p.wo;
    for (int r = warp; r < t.th; r += kMmaWarps) {
      const int64_t gi = i0 + r, width = t.tw < p.wo - j0 ? t.tw : p.wo - j0;
      for (int c = lane; c < t.gw; c += 32) {
        const int64_t j = c - kTf32Pad;
        stage_tf32<kSplit>(gs + r * t.gw + c, g_elems,
                           gi < p.ho && j >= 0 && j < width ? g_plane[gi * p.wo + j0 + j] : 0.f);
      }
    }
    // x rows i0 - pt .., columns j0 - pl .., zero outside the image
    const float* x_plane = x + (n * p.c + o / p.mult) * p.h * p.w;
    for (int r = warp; r < t.th + kWgMaxK - 1; r += kMmaWarps) {  // the rows read (xrows may be more)
      const int64_t gr = i0 - p.pt + r;
      const float* row = gr >= 0 && gr < p.h ? x_plane + gr * p.w : nullptr;
      for (int c = lane; c < t.cols; c += 32) {
        const int64_t gc = j0 - p.pl + c;
        stage_tf32<kSplit>(xs + r * t.rs + c, x_elems, row != nullptr && gc >= 0 && gc < p.w ? row[gc] : 0.f);
      }
    }
    __syncthreads();

    for (int r = warp; r < t.th; r += kMmaWarps) {
      uint32_t bf[kParts][kKB][2];
      load_tf32_band<kSplit>(bf, gs + r * t.gw + kTf32Pad + quad - group, g_elems);
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        if (mt >= mts) continue;  // the same for the whole block
        const int r0 = r + 16 * mt;
        const float* x0 = xs + a_matrix_row(r0, r0 + 8, lane) * t.rs + a_matrix_col<float>(lane);
        tf32_row<kKB, kSplit, 4, 4 + kKB - 1>(acc[mt], bf, x0, x_elems, nbs);
      }
    }
  }
  wgrad_mma_finish<float>(p, t, acc, xs, non_finite, split, o, item_begin, item_end);
}

// The TF32 grad-weight's plan when the call qualifies (see wgrad_tf32_kernel).
inline bool plan_wgrad_tf32(const WGrad& p, const DeviceLimits& lim, MmaWGradTile* tile) {
  MmaWGradTile t;
  if ((!p.tf32 && (p.ho < kSplitMinSide || p.wo < kSplitMinSide)) || !wgrad_mma_items(p, lim, &t)) return false;
  const int kb = t.tw / 8 + 1;     // the band of g's row is tw wide
  t.xrows = t.th + kWgMaxK - 1;
  t.cols = 8 * (4 + kb - 1);       // A fragments of k-blocks < 4 + kb - 1; >= tw + kw - 1
  t.rs = t.cols + 4;               // as corr_tf32_kernel
  t.gw = 8 * kb + 2 * kTf32Pad;    // B reads row + 8 (kKB - 1) + 7 + 8 at most
  const int parts = p.tf32 ? 1 : 2;
  // the warps' sums (kMmaWarps x 1024 floats) go over the x tile: at least that many floats of it
  const int64_t red_rows = ceil_div(kMmaWarps * 2 * 4 * 4 * 32, parts * t.rs);
  if (t.xrows < red_rows) t.xrows = static_cast<int>(red_rows);
  t.smem = parts * (static_cast<size_t>(t.xrows) * t.rs + static_cast<size_t>(t.th) * t.gw) * sizeof(float) + 16;
  if (t.smem > static_cast<size_t>(lim.max_smem_optin)) return false;
  split_wgrad_items(p, lim, wgrad_tf32_blocks_per_sm(!p.tf32, kb), &t);
  *tile = t;
  return true;
}

template <typename Launch>
void run_wgrad_tf32(Launch& launch, const WGrad& p, const MmaWGradTile& t) {
  const unsigned grid = grid_size(t.blocks(p.co)), threads = 32 * kMmaWarps;
  auto go = [&](auto kernel) { launch(kernel, grid, threads, t.smem, p, t); };
  switch ((t.tw / 8 + 1) * 2 + !p.tf32) {
#define LC_TF32_CASE(kb)                                  \
  case 2 * kb: go(wgrad_tf32_kernel<kb, false>); return; \
  case 2 * kb + 1: go(wgrad_tf32_kernel<kb, true>); return;
    LC_TF32_CASE(2) LC_TF32_CASE(3) LC_TF32_CASE(4) LC_TF32_CASE(5) LC_TF32_CASE(6) LC_TF32_CASE(7) LC_TF32_CASE(8)
    LC_TF32_CASE(9)
#undef LC_TF32_CASE
  }
  LC_CHECK(false, "no TF32 grad-weight tile for tw = " + std::to_string(t.tw));
}

// ================================================================================================================
// Entry points shared by the CUDA build (dwconv.cu) and the emulation test. `launch` runs one kernel:
//   launch(kernel, grid, block, dynamic_smem_bytes, args...)
// ================================================================================================================
inline Corr forward_corr(const DwArgs& a) {
  return Corr{a.x, a.weight, a.bias, a.out, a.n, a.c, a.h, a.w, a.co, a.ho, a.wo, a.kh, a.kw, a.sh, a.sw, a.dh, a.dw,
              a.pt, a.pl, /*reps=*/1, /*in_div=*/static_cast<int>(a.co / a.c), /*flip=*/false, a.channels_last,
              a.tf32};
}

inline WGrad make_wgrad(const DwArgs& a) {
  return WGrad{a.x, a.grad_out, static_cast<float*>(a.workspace), a.out, a.n, a.c, a.h, a.w, a.co, a.ho, a.wo,
               static_cast<int>(a.co / a.c), a.kh, a.kw, a.sh, a.sw, a.dh, a.dw, a.pt, a.pl, a.channels_last, a.tf32};
}

template <typename T, typename Launch>
void run_forward(Launch& launch, const DwArgs& a, const DeviceLimits& lim) {
  run_corr<T>(launch, forward_corr(a), lim);
}

template <typename T, typename Launch>
void run_grad_input(Launch& launch, const DwArgs& a, const DeviceLimits& lim) {
  const int mult = static_cast<int>(a.co / a.c);
  if (a.sh == 1 && a.sw == 1) {  // the forward of grad_out with the flipped filter
    const Corr p{a.grad_out, a.weight, nullptr, a.out, a.n, a.co, a.ho, a.wo, a.c, a.h, a.w, a.kh, a.kw, 1, 1,
                 a.dh, a.dw, a.dh * (a.kh - 1) - a.pt, a.dw * (a.kw - 1) - a.pl, /*reps=*/mult, /*in_div=*/1,
                 /*flip=*/true, a.channels_last, a.tf32};
    run_corr<T>(launch, p, lim);
  } else {
    const Gather p{a.grad_out, a.weight, a.out, a.n, a.c, a.h, a.w, a.co, a.ho, a.wo, mult, a.kh, a.kw,
                   a.sh, a.sw, a.dh, a.dw, a.pt, a.pl, a.channels_last};
    launch(grad_input_gather_kernel<T>, naive_grid(a.n * a.c * a.h * a.w), kThreads, 0, p);
  }
}

inline size_t grad_weight_workspace_bytes(const DwArgs& a, const DeviceLimits& lim) {
  MmaWGradTile mma;
  if (a.dtype == DType::kFloat32 ? plan_wgrad_tf32(make_wgrad(a), lim, &mma) : plan_wgrad_mma(make_wgrad(a), lim, &mma))
    return static_cast<size_t>(mma.splits * a.co * a.kh * a.kw) * sizeof(float);
  WGradTile t;
  if (!plan_wgrad(make_wgrad(a), lim, &t)) return 0;
  return static_cast<size_t>(t.splits * a.co * a.kh * a.kw) * sizeof(float);
}

// a.workspace must hold grad_weight_workspace_bytes(a, lim) bytes.
template <typename T, typename Launch>
void run_grad_weight(Launch& launch, const DwArgs& a, const DeviceLimits& lim) {
  const WGrad p = make_wgrad(a);
  MmaWGradTile mma;
  bool tensor_cores;
  if constexpr (std::is_same_v<T, float>)
    tensor_cores = plan_wgrad_tf32(p, lim, &mma);
  else
    tensor_cores = plan_wgrad_mma(p, lim, &mma);
  if (tensor_cores) {
    LC_CHECK(p.partial != nullptr, "grad-weight workspace missing");
    if constexpr (std::is_same_v<T, float>)
      run_wgrad_tf32(launch, p, mma);
    else
      run_wgrad_mma<T>(launch, p, mma);
    const int64_t count = a.co * a.kh * a.kw;
    launch(split_sum_kernel<T>, naive_grid(count), kThreads, 0, static_cast<const float*>(p.partial),
           static_cast<T*>(a.out), count, mma.splits);
    return;
  }
  WGradTile t;
  if (!plan_wgrad(p, lim, &t)) {
    launch(wgrad_naive_kernel<T>, grid_size(a.co * a.kh * a.kw), kThreads, kThreads * sizeof(float), p);
    return;
  }
  LC_CHECK(p.partial != nullptr, "grad-weight workspace missing");
  if (a.sw == 1 && a.dw == 1) {  // must match plan_wgrad's `unit`
    launch(wgrad_tile_kernel<T, true>, grid_size(t.blocks()), t.threads, t.smem, p, t);
  } else {
    launch(wgrad_tile_kernel<T, false>, grid_size(t.blocks()), t.threads, t.smem, p, t);
  }
  const int64_t count = a.co * a.kh * a.kw;
  launch(split_sum_kernel<T>, naive_grid(count), kThreads, 0, static_cast<const float*>(p.partial),
         static_cast<T*>(a.out), count, t.splits);
}

}  // namespace dw
}  // namespace largeconv
