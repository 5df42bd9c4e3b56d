#pragma once
// CUDA kernels of clip_loss ("clip_loss", "clip_loss_backward": the contract
// in ops/loss/clip_cpu.hpp), FlashAttention-style: the [images, texts]
// logits never reach global memory. Extra memory is O(batch): the row and
// column lse the node saves, split partials, one dot product per pair.
//
//   forward   clip_lse_partial_kernel: per CTA, kBM band rows of A against one
//             split of Bm's rows (tiles of kBN), online lse per row; run twice,
//             (A, Bm) = (images, texts) for the row lse, (texts, images) for the
//             column lse (a column of S is a row of S with the roles swapped)
//             clip_lse_finish_kernel: merges the splits of each row
//             clip_diag_kernel, clip_loss_finish_kernel: the pairs' logits, the loss
//   backward  clip_grad_kernel: per CTA, kBM rows of A; recomputes each tile of
//             S from the features, dS from the saved lse (clip_tile::clip_dlogit),
//             and accumulates dA += dS · Bm_tile in shared memory (kBM x D
//             floats); run twice, A = images (d image, Σ dS ⊙ S for
//             d logit_scale), A = texts (d text)
//             clip_dot_finish_kernel: d logit_scale from the per-CTA sums
//
// The tiling is clip_tile::ForwardTiling / BackwardTiling (clip_tile.hpp);
// tests/ops/test_clip_loss.cpp repeats it on the host against the CPU
// reference, and tests/cuda/test_clip_loss_cuda.cpp runs these kernels
// against it.
//
// Precision: tiles of S for bfloat16 and half inputs use tensor cores (WMMA
// m16n16k16, float accumulation); float inputs use float FMA tiles (full fp32
// precision: TF32 would put ~1e-3 relative error on logits that are then
// multiplied by a scale up to 100). The online softmax, dS and all reductions
// are float; the loss and d logit_scale sums over the batch are double. The
// backward's dA += dS · Bm runs on tensor cores too for 16-bit inputs: dS
// without its factor g / 2B (values in [-2, 2], safe in half's range) is
// rounded once to the input type, as FlashAttention rounds P and dS, and
// accumulated in float; the factor and s are applied to the float sum. The
// error this adds is of the size of the output's own 16-bit rounding
// (tests/ops/test_clip_loss.cpp emulates it on the host). Float inputs
// accumulate dA with float FMAs.
//
// Sizes: rows are int64 throughout (B up to 2^31 / kBM blocks); offsets into
// the features are int64 products. The backward's shared accumulator needs
// kBM · D · 4 bytes (96 KiB at D = 768; rows padded for 16-bit inputs, see
// grad_acc_ld): D is limited by the device's opt-in shared memory per block
// (about D <= 1200 on sm_80, 1700 on sm_90); a larger D throws device_error
// saying so.

#include <mma.h>

#include <algorithm>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/tensor_data.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/loss/clip.hpp"

namespace mamclip::cuda {

namespace clip_kernels {

using FT = clip_tile::ForwardTiling;
using BT = clip_tile::BackwardTiling;

__device__ __forceinline__ int64_t imin(int64_t a, int64_t b) { return a < b ? a : b; }

template <class D>
inline constexpr bool kTensorCores = std::is_same_v<D, __nv_bfloat16> || std::is_same_v<D, __half>;

// Shared-memory row stride of a [rows x kBK] chunk: WMMA wants a multiple of
// 8 elements (16 bytes); float FMA tiles want an odd stride (no bank conflicts).
template <class D, int BK>
inline constexpr int kChunkLd = kTensorCores<D> ? BK + 8 : BK + 1;

// Shared memory of one S tile: the chunks of A and Bm and the float tile.
template <class D, int BM, int BN, int BK>
struct TileSmem {
  static constexpr int kLd = kChunkLd<D, BK>;
  static constexpr int kLdS = BN + 4;  // a multiple of 4 floats, as WMMA's store needs
  alignas(32) D a[BM * kLd];           // [BM, kBK] chunk of A's rows
  alignas(32) D b[BN * kLd];           // [BN, kBK] chunk of Bm's rows
  alignas(32) float s[BM * kLdS];      // [BM, BN] tile of S (then of dS in the backward)
};

// sm[r, k] = x[r0 + r, k0 + k] for r < ROWS, k < BK; zero outside [r0, r_end) x [0, dim).
// 16-bit inputs whose rows are 16-byte aligned load 8 elements per instruction where the chunk
// lies inside D (the shared rows, kChunkLd = BK + 8 elements, are 16-byte aligned too).
template <int ROWS, int BK, int LD, int THREADS, class D>
__device__ __forceinline__ void load_chunk(D* sm, const D* x, int64_t ld, int64_t r0, int64_t r_end, int64_t k0,
                                           int64_t dim) {
  if constexpr (kTensorCores<D>) {
    constexpr int V = 16 / sizeof(D), kVecs = BK / V;
    static_assert(BK % V == 0 && (LD * sizeof(D)) % 16 == 0, "16-byte rows in the chunk");
    const bool aligned = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ld % V == 0;  // k0 is a multiple of BK
    if (aligned && k0 + BK <= dim) {
      for (int e = threadIdx.x; e < ROWS * kVecs; e += THREADS) {
        const int r = e / kVecs, v = e % kVecs;
        const int64_t gr = r0 + r;
        uint4 val = make_uint4(0u, 0u, 0u, 0u);  // all-zero bits: +0 in half and bfloat16
        if (gr < r_end) val = *reinterpret_cast<const uint4*>(x + gr * ld + k0 + v * V);
        *reinterpret_cast<uint4*>(sm + r * LD + v * V) = val;
      }
      return;
    }
  }
  for (int e = threadIdx.x; e < ROWS * BK; e += THREADS) {
    const int r = e / BK, k = e % BK;
    const int64_t gr = r0 + r, gk = k0 + k;
    sm[r * LD + k] = (gr < r_end && gk < dim) ? x[gr * ld + gk] : from_acc<D>(0.0f);
  }
}

// sm.s[r, c] = s · <a[a0 + r], b[b0 + c]> over the full D (0 outside the valid rows).
// Ends with the tile visible to every thread.
template <int BM, int BN, int BK, int THREADS, class D>
__device__ void score_tile(TileSmem<D, BM, BN, BK>& sm, const D* a, int64_t lda, int64_t a0, int64_t a_end,
                           const D* b, int64_t ldb, int64_t b0, int64_t b_end, int64_t dim, float s) {
  using Sm = TileSmem<D, BM, BN, BK>;
  constexpr int kLd = Sm::kLd, kLdS = Sm::kLdS;
  if constexpr (kTensorCores<D>) {
    namespace wmma = nvcuda::wmma;
    constexpr int kWarps = THREADS / 32, kFragCols = BN / 16, kFrags = (BM / 16) * kFragCols;
    static_assert(BM % 16 == 0 && BN % 16 == 0 && BK % 16 == 0, "WMMA tiles are 16 x 16 x 16");
    static_assert(kFrags % kWarps == 0, "every warp owns the same number of 16 x 16 fragments of the tile");
    constexpr int kPerWarp = kFrags / kWarps;
    const int warp = threadIdx.x / 32;
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[kPerWarp];
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) wmma::fill_fragment(acc[j], 0.0f);
    for (int64_t k0 = 0; k0 < dim; k0 += BK) {
      load_chunk<BM, BK, kLd, THREADS>(sm.a, a, lda, a0, a_end, k0, dim);
      load_chunk<BN, BK, kLd, THREADS>(sm.b, b, ldb, b0, b_end, k0, dim);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
#pragma unroll
        for (int j = 0; j < kPerWarp; ++j) {
          const int f = warp * kPerWarp + j, fr = f / kFragCols, fc = f % kFragCols;
          wmma::fragment<wmma::matrix_a, 16, 16, 16, D, wmma::row_major> fa;
          // Bm's rows are the columns of Bmᵀ: a [K, N] matrix stored column-major.
          wmma::fragment<wmma::matrix_b, 16, 16, 16, D, wmma::col_major> fb;
          wmma::load_matrix_sync(fa, sm.a + fr * 16 * kLd + kk, kLd);
          wmma::load_matrix_sync(fb, sm.b + fc * 16 * kLd + kk, kLd);
          wmma::mma_sync(acc[j], fa, fb, acc[j]);
        }
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kPerWarp; ++j) {
      const int f = warp * kPerWarp + j, fr = f / kFragCols, fc = f % kFragCols;
#pragma unroll
      for (int t = 0; t < acc[j].num_elements; ++t) acc[j].x[t] *= s;  // elementwise: layout does not matter
      wmma::store_matrix_sync(sm.s + fr * 16 * kLdS + fc * 16, acc[j], kLdS, wmma::mem_row_major);
    }
  } else {
    // Thread t owns tile entries t + j·THREADS: a warp shares one row (BN >= 32) and reads
    // A's chunk as a broadcast and Bm's chunk with an odd stride.
    constexpr int kPer = BM * BN / THREADS;
    static_assert((BM * BN) % THREADS == 0 && BN % 32 == 0, "tile entries spread evenly over the threads");
    float acc[kPer];
#pragma unroll
    for (int j = 0; j < kPer; ++j) acc[j] = 0.0f;
    for (int64_t k0 = 0; k0 < dim; k0 += BK) {
      load_chunk<BM, BK, kLd, THREADS>(sm.a, a, lda, a0, a_end, k0, dim);
      load_chunk<BN, BK, kLd, THREADS>(sm.b, b, ldb, b0, b_end, k0, dim);
      __syncthreads();
#pragma unroll
      for (int j = 0; j < kPer; ++j) {
        const int e = threadIdx.x + j * THREADS, r = e / BN, c = e % BN;
        float v = acc[j];
#pragma unroll 8
        for (int k = 0; k < BK; ++k) v = fmaf(to_acc(sm.a[r * kLd + k]), to_acc(sm.b[c * kLd + k]), v);
        acc[j] = v;
      }
      __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < kPer; ++j) {
      const int e = threadIdx.x + j * THREADS, r = e / BN, c = e % BN;
      sm.s[r * kLdS + c] = s * acc[j];
    }
  }
  __syncthreads();
}

// The forward's chunk of D: 64 for 16-bit inputs (half the chunk loop's barriers and exposed load
// latencies of 32; 36 KiB of static shared memory), FT::kBK for float (its odd-stride chunks
// would pass the 48 KiB static limit at 64).
template <class D>
inline constexpr int kForwardBK = kTensorCores<D> ? 64 : FT::kBK;

template <class D>
__device__ __forceinline__ float read_scale(const D* log_scale, float max_log_scale) {
  return clip_tile::clip_scale<float>(to_acc(*log_scale), max_log_scale).s;
}

// partial[split · batch + i] = (m, l) of band row a_off + i over the split's tiles of Bm.
// grid (row blocks of the band, splits), FT::kThreads threads.
template <class D>
__global__ void __launch_bounds__(FT::kThreads)
    clip_lse_partial_kernel(const D* a, int64_t lda, int64_t a_off, int64_t batch, const D* b, int64_t ldb, int64_t nb,
                            int64_t dim, const D* log_scale, float max_log_scale, clip_tile::ForwardSplits splits,
                            float2* partial) {
  __shared__ TileSmem<D, FT::kBM, FT::kBN, kForwardBK<D>> sm;
  constexpr int kLdS = TileSmem<D, FT::kBM, FT::kBN, kForwardBK<D>>::kLdS;
  const float s = read_scale(log_scale, max_log_scale);
  const int64_t r0 = int64_t(blockIdx.x) * FT::kBM;  // band-relative
  const int64_t col_tiles = (nb + FT::kBN - 1) / FT::kBN;
  const clip_tile::Range tiles = clip_tile::split_tiles(splits, col_tiles, blockIdx.y);
  const int r = threadIdx.x / FT::kLanes, q = threadIdx.x % FT::kLanes;
  clip_tile::LseState<float> st = clip_tile::lse_empty<float>();
  for (int64_t t = tiles.begin; t < tiles.end; ++t) {
    const int64_t c0 = t * FT::kBN;
    const int cols = static_cast<int>(imin(FT::kBN, nb - c0));
    score_tile<FT::kBM, FT::kBN, kForwardBK<D>, FT::kThreads>(sm, a, lda, a_off + r0, a_off + batch, b, ldb, c0, nb, dim,
                                                               s);
    const int n = cols > q ? (cols - q + FT::kLanes - 1) / FT::kLanes : 0;
    clip_tile::lse_update(st, sm.s + r * kLdS + q, n, FT::kLanes);
    __syncthreads();  // the next tile overwrites sm.s
  }
  // The kLanes = 4 lanes of a row are adjacent threads: merge (0, 1), (2, 3), then the pairs.
#pragma unroll
  for (int x = 1; x < FT::kLanes; x *= 2) {
    const clip_tile::LseState<float> o{__shfl_xor_sync(0xffffffffu, st.m, x), __shfl_xor_sync(0xffffffffu, st.l, x)};
    st = clip_tile::lse_merge(st, o);
  }
  if (q == 0 && r0 + r < batch) partial[int64_t(blockIdx.y) * batch + r0 + r] = make_float2(st.m, st.l);
}

// lse[i] = merge over splits 0, 1, ... of partial[split · batch + i]. (A template, as every kernel
// here: a plain __global__ function in a header would be defined again in each CUDA unit that includes it.)
template <int kBlock>
__global__ void __launch_bounds__(kBlock)
    clip_lse_finish_kernel(const float2* partial, int64_t splits, int64_t batch, float* lse) {
  const int64_t step = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < batch; i += step) {
    clip_tile::LseState<float> st{partial[i].x, partial[i].y};
    for (int64_t sp = 1; sp < splits; ++sp) {
      const float2 p = partial[sp * batch + i];
      st = clip_tile::lse_merge(st, clip_tile::LseState<float>{p.x, p.y});
    }
    lse[i] = clip_tile::lse_value(st);
  }
}

// diag[i] = <image[io + i], text[to + i]> (unscaled), one warp per pair.
template <class D>
__global__ void clip_diag_kernel(const D* img, int64_t ldi, int64_t io, const D* txt, int64_t ldt, int64_t to,
                                 int64_t batch, int64_t dim, float* diag) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t i = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; i < batch; i += warps) {
    const D* x = img + (io + i) * ldi;
    const D* y = txt + (to + i) * ldt;
    float v = 0.0f;
    for (int64_t k = lane; k < dim; k += 32) v = fmaf(to_acc(x[k]), to_acc(y[k]), v);
#pragma unroll
    for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
    if (lane == 0) diag[i] = v;
  }
}

// Sum over one block of kBlock threads (double), result in thread 0.
template <int kBlock>
__device__ double block_sum(double v) {
  __shared__ double part[kBlock / 32];
#pragma unroll
  for (int o = 16; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = v;
  __syncthreads();
  double t = 0;
  if (threadIdx.x == 0)
    for (int w = 0; w < kBlock / 32; ++w) t += part[w];
  return t;
}

// loss = (1 / 2B) Σ_i (row_lse[i] + col_lse[i] - 2 s diag[i]); one block.
template <int kBlock, class D>
__global__ void __launch_bounds__(kBlock)
    clip_loss_finish_kernel(const float* row_lse, const float* col_lse, const float* diag, int64_t batch,
                            const D* log_scale, float max_log_scale, D* loss) {
  const double s = read_scale(log_scale, max_log_scale);
  double v = 0;
  for (int64_t i = threadIdx.x; i < batch; i += kBlock)
    v += double(row_lse[i]) + double(col_lse[i]) - 2.0 * s * double(diag[i]);
  const double total = block_sum<kBlock>(v);
  if (threadIdx.x == 0) *loss = from_acc<D>(static_cast<float>(total / (2.0 * double(batch))));
}

// Row stride of the backward's [kBM, D] float accumulator. Tensor-core path: D rounded up to 16
// (the fragments cover it; the extra columns see zeros of Bm's chunks), plus 8 floats so that
// the 8 rows a fragment access spans fall 8 banks apart (2-way conflicts, not 8-way when D is a
// multiple of 32); fragment pointers stay 32-byte aligned (rows are 64·ld bytes apart per 16).
template <class D>
__host__ __device__ constexpr int64_t grad_acc_ld(int64_t dim) {
  return kTensorCores<D> ? (dim + 15) / 16 * 16 + 8 : dim;
}

// The backward's static shared memory: the S tile's buffers and, for 16-bit inputs, dS rounded to D.
template <class D>
struct GradSmem : TileSmem<D, clip_tile::BackwardTiling::kBM, clip_tile::BackwardTiling::kBN,
                           clip_tile::BackwardTiling::kBK> {
  static constexpr int kLdDs = clip_tile::BackwardTiling::kBN + 8;  // WMMA: a multiple of 8 elements
  alignas(32) D ds[kTensorCores<D> ? clip_tile::BackwardTiling::kBM * kLdDs : 1];
};

// acc[kBM, ld_acc] += dS [kBM, kBN] · Bm rows [c0, c0 + cols) on tensor cores, D in chunks of kBK.
// Warp w owns one 16 x 16 fragment of each chunk of acc (row fr, column fc); its dS fragments are
// the same for every chunk and stay in registers. Bm's chunk is a [kBN, kBK] row-major matrix_b.
template <class D>
__device__ void accumulate_tile_tensor_cores(GradSmem<D>& sm, float* acc, int64_t ld_acc, const D* b, int64_t ldb,
                                             int64_t c0, int cols, int64_t dim) {
  namespace wmma = nvcuda::wmma;
  using Sm = GradSmem<D>;
  constexpr int kLd = Sm::kLd, kLdDs = Sm::kLdDs;
  constexpr int kFragCols = BT::kBK / 16, kSteps = BT::kBN / 16;
  static_assert((BT::kBM / 16) * kFragCols == BT::kThreads / 32, "one fragment of each chunk of d A per warp");
  static_assert(BT::kBN % 16 == 0 && BT::kBK % 16 == 0, "WMMA tiles are 16 x 16 x 16");
  const int warp = threadIdx.x / 32, fr = warp / kFragCols, fc = warp % kFragCols;
  wmma::fragment<wmma::matrix_a, 16, 16, 16, D, wmma::row_major> fa[kSteps];
#pragma unroll
  for (int ks = 0; ks < kSteps; ++ks) wmma::load_matrix_sync(fa[ks], sm.ds + fr * 16 * kLdDs + ks * 16, kLdDs);
  for (int64_t k0 = 0; k0 < dim; k0 += BT::kBK) {
    load_chunk<BT::kBN, BT::kBK, kLd, BT::kThreads>(sm.b, b, ldb, c0, c0 + cols, k0, dim);
    __syncthreads();
    const int64_t col = k0 + fc * 16;
    if (col < dim) {  // warp-uniform: a fragment starting at or past D holds no column of D
      float* out = acc + fr * 16 * ld_acc + col;
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> c;
      wmma::load_matrix_sync(c, out, static_cast<unsigned>(ld_acc), wmma::mem_row_major);
#pragma unroll
      for (int ks = 0; ks < kSteps; ++ks) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, D, wmma::row_major> fb;
        wmma::load_matrix_sync(fb, sm.b + ks * 16 * kLd + fc * 16, kLd);
        wmma::mma_sync(c, fa[ks], fb, c);
      }
      wmma::store_matrix_sync(out, c, static_cast<unsigned>(ld_acc), wmma::mem_row_major);
    }
    __syncthreads();  // the next chunk overwrites sm.b
  }
}

// d a[a0 .. a0 + kBM) = s · Σ_b dS[a, b] · b_row (see clip_tile.hpp), and the CTA's Σ dS ⊙ S in
// dot_partial[blockIdx.x] (when not null). Dynamic shared memory: kBM · grad_acc_ld(dim) floats and
// 32 bytes to align them for WMMA.
template <class D>
__global__ void __launch_bounds__(BT::kThreads)
    clip_grad_kernel(const D* a, int64_t lda, int64_t na, int64_t a_off, const float* own_lse, const D* b, int64_t ldb,
                     int64_t nb, int64_t b_off, const float* other_lse, int64_t batch, int64_t dim, const D* log_scale,
                     float max_log_scale, const D* grad_loss, D* da, double* dot_partial) {
  using Sm = GradSmem<D>;
  constexpr int kLd = Sm::kLd, kLdS = Sm::kLdS;
  constexpr bool kTc = kTensorCores<D>;
  __shared__ Sm sm;
  extern __shared__ float clip_grad_dynamic_smem[];
  float* acc = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(clip_grad_dynamic_smem) + 31) & ~uintptr_t(31));
  const int64_t ld_acc = grad_acc_ld<D>(dim);
  const float s = read_scale(log_scale, max_log_scale);
  const float coef = static_cast<float>(double(to_acc(*grad_loss)) / (2.0 * double(batch)));
  const int64_t a0 = int64_t(blockIdx.x) * BT::kBM;
  // Without d a (only d logit_scale wanted) there is no accumulator (no dynamic shared memory).
  const bool accumulate = da != nullptr;
  if (accumulate)
    for (int64_t e = threadIdx.x; e < BT::kBM * ld_acc; e += BT::kThreads) acc[e] = 0.0f;
  // Rows outside A's band see only Bm's band (dS is zero elsewhere on them).
  const clip_tile::Range columns = clip_tile::grad_columns(a0, BT::kBM, a_off, b_off, batch, nb);
  const int64_t c_begin = columns.begin, c_end = columns.end;
  double my_dot = 0;
  for (int64_t c0 = c_begin; c0 < c_end; c0 += BT::kBN) {
    const int cols = static_cast<int>(imin(BT::kBN, c_end - c0));
    score_tile<BT::kBM, BT::kBN, BT::kBK, BT::kThreads>(sm, a, lda, a0, na, b, ldb, c0, c0 + cols, dim, s);
    for (int e = threadIdx.x; e < BT::kBM * BT::kBN; e += BT::kThreads) {
      const int r = e / BT::kBN, c = e % BT::kBN;
      const int64_t row = a0 + r, ai = row - a_off, bi = c0 + c - b_off;
      float dl = 0.0f;  // d loss / d S per unit of g / 2B
      if (row < na && c < cols) {
        const float sv = sm.s[r * kLdS + c];
        const bool a_in = ai >= 0 && ai < batch, b_in = bi >= 0 && bi < batch;
        dl = clip_tile::clip_dlogit<float>(sv, a_in, a_in ? own_lse[ai] : 0.0f, b_in, b_in ? other_lse[bi] : 0.0f,
                                           a_in && b_in && ai == bi);
        my_dot += double(coef * dl) * double(sv);
      }
      if constexpr (kTc)
        sm.ds[r * Sm::kLdDs + c] = from_acc<D>(dl);
      else
        sm.s[r * kLdS + c] = coef * dl;
    }
    __syncthreads();  // (also: the next tile's scores overwrite sm.s)
    if (!accumulate) continue;
    if constexpr (kTc) {
      accumulate_tile_tensor_cores<D>(sm, acc, ld_acc, b, ldb, c0, cols, dim);
    } else {
      // acc += dS [kBM, kBN] · Bm tile [kBN, dim], dim in chunks of kBK.
      for (int64_t k0 = 0; k0 < dim; k0 += BT::kBK) {
        load_chunk<BT::kBN, BT::kBK, kLd, BT::kThreads>(sm.b, b, ldb, c0, c0 + cols, k0, dim);
        __syncthreads();
        for (int e = threadIdx.x; e < BT::kBM * BT::kBK; e += BT::kThreads) {
          const int r = e / BT::kBK, kk = e % BT::kBK;
          if (k0 + kk >= dim) continue;
          float& out = acc[r * ld_acc + k0 + kk];
          float v = out;
#pragma unroll 8
          for (int c = 0; c < BT::kBN; ++c) v = fmaf(sm.s[r * kLdS + c], to_acc(sm.b[c * kLd + kk]), v);
          out = v;
        }
        __syncthreads();
      }
    }
  }
  // The float path folded g / 2B into dS already.
  const float out_scale = kTc ? s * coef : s;
  if (da)
    for (int64_t e = threadIdx.x; e < BT::kBM * dim; e += BT::kThreads) {
      const int64_t r = e / dim, k = e % dim, row = a0 + r;
      if (row < na) da[row * dim + k] = from_acc<D>(out_scale * acc[r * ld_acc + k]);
    }
  if (dot_partial) {
    const double t = block_sum<BT::kThreads>(my_dot);
    if (threadIdx.x == 0) dot_partial[blockIdx.x] = t;
  }
}

// d logit_scale = Σ dot_partial (in order of the partials' index, per thread) while the clamp passes; one block.
template <int kBlock, class D>
__global__ void __launch_bounds__(kBlock)
    clip_dot_finish_kernel(const double* dot_partial, int64_t n, const D* log_scale, float max_log_scale, D* d_ls) {
  double v = 0;
  for (int64_t i = threadIdx.x; i < n; i += kBlock) v += dot_partial[i];
  const double total = block_sum<kBlock>(v);
  if (threadIdx.x == 0) {
    const bool passes = clip_tile::clip_scale<float>(to_acc(*log_scale), max_log_scale).passes;
    *d_ls = from_acc<D>(passes ? static_cast<float>(total) : 0.0f);
  }
}

}  // namespace clip_kernels

// ---- launchers (explicit stream)

namespace detail {

// The clamp of logit_scale as a float: ±inf stay (-inf clamps the scale to exp(-inf) = 0, as on the CPU).
inline float clip_max_scale(double m) { return static_cast<float>(m); }

inline int sm_count() {
  int n = 0;
  MAMCLIP_CUDA_CHECK(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, current_device()));
  return n;
}

// lse of the band rows [a_off, a_off + batch) of a against all nb rows of b.
template <class D>
void launch_clip_band_lse(const D* a, int64_t lda, int64_t a_off, int64_t batch, const D* b, int64_t ldb, int64_t nb,
                          int64_t dim, const D* log_scale, float max_ls, float* lse, cudaStream_t stream) {
  using FT = clip_tile::ForwardTiling;
  const int64_t row_blocks = (batch + FT::kBM - 1) / FT::kBM, col_tiles = (nb + FT::kBN - 1) / FT::kBN;
  const clip_tile::ForwardSplits splits = clip_tile::forward_splits(row_blocks, col_tiles, sm_count());
  MAMCLIP_CHECK(row_blocks <= INT32_MAX, value_error, "clip_loss: batch = ", batch, " needs ", row_blocks,
                " row blocks; the CUDA kernel supports at most ", INT32_MAX);
  Tensor<float> partial = scratch<float>(2 * splits.splits * batch);
  clip_kernels::clip_lse_partial_kernel<D>
      <<<dim3(static_cast<unsigned>(row_blocks), static_cast<unsigned>(splits.splits)), FT::kThreads, 0, stream>>>(
          a, lda, a_off, batch, b, ldb, nb, dim, log_scale, max_ls, splits,
          reinterpret_cast<float2*>(partial.data_ptr()));
  MAMCLIP_CUDA_CHECK_LAUNCH();
  clip_kernels::clip_lse_finish_kernel<256><<<grid_for(batch, 256), 256, 0, stream>>>(
      reinterpret_cast<const float2*>(partial.data_ptr()), splits.splits, batch, lse);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class T>
void launch_clip_loss_forward(const ClipLossForwardArgs<T>& p, cudaStream_t stream) {
  using D = device_t<T>;
  const ClipLossDims& n = p.dims;
  const float max_ls = clip_max_scale(p.max_logit_scale);
  const D* img = device_ptr(p.image);
  const D* txt = device_ptr(p.text);
  const D* ls = device_ptr(p.logit_scale);
  launch_clip_band_lse<D>(img, p.image_ld, n.image_offset, n.batch, txt, p.text_ld, n.texts, n.dim, ls, max_ls,
                          p.row_lse, stream);
  launch_clip_band_lse<D>(txt, p.text_ld, n.text_offset, n.batch, img, p.image_ld, n.images, n.dim, ls, max_ls,
                          p.col_lse, stream);
  Tensor<float> diag = scratch<float>(n.batch);
  clip_kernels::clip_diag_kernel<D><<<grid_for(n.batch * 32, 256), 256, 0, stream>>>(
      img, p.image_ld, n.image_offset, txt, p.text_ld, n.text_offset, n.batch, n.dim, diag.data_ptr());
  MAMCLIP_CUDA_CHECK_LAUNCH();
  constexpr int kBlock = 1024;
  clip_kernels::clip_loss_finish_kernel<kBlock, D><<<1, kBlock, 0, stream>>>(p.row_lse, p.col_lse, diag.data_ptr(),
                                                                             n.batch, ls, max_ls, device_ptr(p.loss));
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

// d a for one role (and Σ dS ⊙ S per CTA into dot_partial when not null).
template <class D>
void launch_clip_grad_side(const D* a, int64_t lda, int64_t na, int64_t a_off, const float* own_lse, const D* b,
                           int64_t ldb, int64_t nb, int64_t b_off, const float* other_lse, int64_t batch, int64_t dim,
                           const D* ls, float max_ls, const D* grad, D* da, double* dot_partial, cudaStream_t stream) {
  using BT = clip_tile::BackwardTiling;
  const int64_t blocks = clip_tile::grad_blocks(na);
  auto kernel = &clip_kernels::clip_grad_kernel<D>;
  // The d a accumulator; none when only Σ dS ⊙ S (d logit_scale) is wanted.
  const size_t smem = da ? sizeof(float) * static_cast<size_t>(BT::kBM * clip_kernels::grad_acc_ld<D>(dim)) + 32 : 0;
  if (smem > 0) {
    int optin = 0;
    MAMCLIP_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, current_device()));
    cudaFuncAttributes attr{};
    MAMCLIP_CUDA_CHECK(cudaFuncGetAttributes(&attr, kernel));
    const size_t fixed = attr.sharedSizeBytes;  // the tile buffers and block_sum's partials
    MAMCLIP_CHECK(smem + fixed <= static_cast<size_t>(optin), device_error, "clip_loss: feature dim D = ", dim,
                  " needs ", smem + fixed, " bytes of shared memory per block in the CUDA backward (", BT::kBM,
                  " rows x D floats), but this device allows ", optin,
                  "; use a smaller D or compose matmul and cross_entropy instead");
    MAMCLIP_CUDA_CHECK(
        cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
  }
  kernel<<<static_cast<unsigned>(blocks), BT::kThreads, smem, stream>>>(a, lda, na, a_off, own_lse, b, ldb, nb, b_off,
                                                                        other_lse, batch, dim, ls, max_ls, grad, da,
                                                                        dot_partial);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class T>
void launch_clip_loss_backward(const ClipLossBackwardArgs<T>& p, cudaStream_t stream) {
  using D = device_t<T>;
  const ClipLossDims& n = p.dims;
  const float max_ls = clip_max_scale(p.max_logit_scale);
  const D* img = device_ptr(p.image);
  const D* txt = device_ptr(p.text);
  const D* ls = device_ptr(p.logit_scale);
  const D* grad = device_ptr(p.grad_loss);
  if (p.d_image || p.d_logit_scale) {
    const int64_t blocks = clip_tile::grad_blocks(n.images);  // launch_clip_grad_side's CTAs, one dot each
    Tensor<double> dots = p.d_logit_scale ? scratch<double>(blocks) : Tensor<double>();
    launch_clip_grad_side<D>(img, p.image_ld, n.images, n.image_offset, p.row_lse, txt, p.text_ld, n.texts,
                             n.text_offset, p.col_lse, n.batch, n.dim, ls, max_ls, grad, device_ptr(p.d_image),
                             p.d_logit_scale ? dots.data_ptr() : nullptr, stream);
    if (p.d_logit_scale) {
      constexpr int kBlock = 1024;
      clip_kernels::clip_dot_finish_kernel<kBlock, D>
          <<<1, kBlock, 0, stream>>>(dots.data_ptr(), blocks, ls, max_ls, device_ptr(p.d_logit_scale));
      MAMCLIP_CUDA_CHECK_LAUNCH();
    }
  }
  if (p.d_text)
    launch_clip_grad_side<D>(txt, p.text_ld, n.texts, n.text_offset, p.col_lse, img, p.image_ld, n.images,
                             n.image_offset, p.row_lse, n.batch, n.dim, ls, max_ls, grad, device_ptr(p.d_text), nullptr,
                             stream);
}

}  // namespace detail

namespace kernels {
template <class T>
void clip_loss_forward(const ClipLossForwardArgs<T>& p) {
  detail::launch_clip_loss_forward<T>(p, current_stream());
}
template <class T>
void clip_loss_backward(const ClipLossBackwardArgs<T>& p) {
  detail::launch_clip_loss_backward<T>(p, current_stream());
}
}  // namespace kernels

// ---- registration

template <class T>
void register_clip_loss_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<ClipLossForwardKernel<T>>("clip_loss", dtype_v<T>, DeviceType::cuda, &kernels::clip_loss_forward<T>);
  r.add<ClipLossBackwardKernel<T>>("clip_loss_backward", dtype_v<T>, DeviceType::cuda, &kernels::clip_loss_backward<T>);
}

inline void register_clip_loss_kernels() {
  register_clip_loss_kernels_for<float>();
  register_clip_loss_kernels_for<bfloat16>();
  register_clip_loss_kernels_for<half>();
}

}  // namespace mamclip::cuda
