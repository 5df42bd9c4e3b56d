#pragma once
// CUDA kernels of scaled_dot_product_attention ("scaled_dot_product_attention",
// "scaled_dot_product_attention_backward": the contract in attention.hpp, the
// reference in cpu.hpp). The [Lq, Lk] score matrix never reaches global
// memory; the forward saves each row's log-sum-exp, the backward recomputes
// P tile by tile from it (ops/attention/tile.hpp has the math).
//
// half and bfloat16, head dims 32, 64, 96, 128 (Dv = D): tensor cores,
// FlashAttention-2 style. mma.sync.m16n8k16 with float accumulators; a CTA of
// 4 warps owns 64 rows, each warp 16, and walks the other side in tiles held
// in shared memory:
//   flash_forward_kernel   rows = queries; K and V tiles arrive by cp.async
//                          (V_j during S_j, K_j+1 during P_j V_j when rows are
//                          16-byte aligned); per key tile S = Q Kᵀ in registers,
//                          online softmax (row max and sum shared by the 4
//                          lanes of a row through two shuffles), O rescaled
//                          in registers, P reused from S's accumulators as
//                          the A operand of O += P V; writes O / l and lse
//   attention_dsum_kernel  dsum_i = dO_i · O_i (float)
//   flash_dq_kernel        rows = queries; per key tile S, dP = dO Vᵀ,
//                          dS (tile.hpp's dscore), dQ += dS K
//   flash_dkdv_kernel      rows = keys; per query tile Sᵀ = K Qᵀ, dPᵀ = V dOᵀ,
//                          dV += Pᵀ dO, dK += dSᵀ Q
// dQ and dK/dV are separate kernels, each owning its rows: no atomics, so
// results are reproducible run to run (the price: S and dP are computed
// twice in the backward). Causal CTAs skip the tiles above the diagonal.
//
// float and double (and half / bfloat16 at other head dims: not supported,
// device_error names the set): reference kernels, one warp per row, one key
// (or query) at a time, lanes over the head dim; any D up to 256. They are
// exact in their precision, not fast: fp32 models on CUDA are for checking,
// bf16 is how models train.
//
// Dropout regenerates the documented Philox mask (attention_keeps) per
// element in every kernel; forward and backward agree by construction.
//
// Requires compute capability 8.0 (mma.sync with bf16); older devices get a
// device_error. Operand rows are read with 16-byte loads when every operand
// allows it (16-byte aligned heads, strides in multiples of 8 elements: what
// contiguous and [B, L, H, D] layouts give), else with 16-bit loads (any
// strides and offsets); tiles are staged through shared memory with kLd = D + 8
// (rows 16 bytes apart mod 128: the 8 rows of an ldmatrix phase hit distinct
// banks). mma operands come from shared memory by ldmatrix (.trans for the
// right-hand operand of P V, dS K, Pᵀ dO and dSᵀ Q); the lane addresses are
// attention_tile::frag::ldm_*, checked on the host against the fragment
// layouts in tests/ops/test_attention_tile.cpp.

#include <algorithm>
#include <cstdint>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/tensor_data.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/attention/attention.hpp"
#include "mamclip/ops/attention/tile.hpp"

namespace mamclip::cuda {

namespace attention_kernels {

namespace at = ::mamclip::attention_tile;

template <class D>
inline constexpr bool kSixteenBit = std::is_same_v<D, __nv_bfloat16> || std::is_same_v<D, __half>;

template <class D>
__device__ __forceinline__ uint32_t bits16(D x) {
  if constexpr (std::is_same_v<D, __nv_bfloat16>) return __bfloat16_as_ushort(x);
  else return __half_as_ushort(x);
}
// Two values as one 32-bit register of the mma operand: lo in the low half.
template <class D>
__device__ __forceinline__ uint32_t pack2(D lo, D hi) {
  return bits16(lo) | (bits16(hi) << 16);
}
template <class D>
__device__ __forceinline__ uint32_t pack_floats(float lo, float hi) {
  return pack2<D>(from_acc<D>(lo), from_acc<D>(hi));
}

// c += a · b for one m16n8k16 tile (layouts: attention_tile::frag).
template <class D>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<D, __nv_bfloat16>)
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
  __trap();  // the launchers refuse devices below sm_80
#endif
}

// The 32-bit shared-memory address of p (what ldmatrix and cp.async take; one register, where a
// generic pointer takes two).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// Four 8 x 8 matrices of 16-bit values from shared memory into mma fragments; addr is this lane's
// row address (16 bytes, 16-byte aligned), as attention_tile::frag::ldm_* place it.
template <bool kTrans>
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
#else
  r[0] = r[1] = r[2] = r[3] = addr * 0u;
  __trap();  // the launchers refuse devices below sm_80
#endif
}

// acc [16 x 8·kNTiles] += A [16 x 16·kKSteps] · Bᵀ, A's and B's rows in shared memory (stride ld):
// the warp's share of S = Q Kᵀ (A = its 16 query rows, B = the key tile). One ldmatrix per A
// k-step and per two n-tiles of B (each was 4 and 2 32-bit shared loads per lane before).
template <int kNTiles, int kKSteps, class D>
__device__ __forceinline__ void warp_mma_abt(float (&acc)[kNTiles][4], const D* a, const D* b, int ld) {
  static_assert(kNTiles % 2 == 0, "B fragments are loaded two n-tiles at a time");
  namespace fr = attention_tile::frag;
  constexpr uint32_t kE = sizeof(D);
  const int lane = threadIdx.x % 32;
  const uint32_t a_lane = smem_addr(a + fr::ldm_a_row(lane) * ld + fr::ldm_a_col(lane));
  const uint32_t b_lane = smem_addr(b + fr::ldm_bt_row(lane) * ld + fr::ldm_bt_col(lane));
  const uint32_t b_ntile = 8 * static_cast<uint32_t>(ld) * kE;  // bytes from one n-tile's rows to the next
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
    uint32_t ra[4];
    ldmatrix_x4<false>(ra, a_lane + ks * 16 * kE);
#pragma unroll
    for (int nt = 0; nt < kNTiles; nt += 2) {
      uint32_t rb[4];
      ldmatrix_x4<false>(rb, b_lane + nt * b_ntile + ks * 16 * kE);
      mma16816<D>(acc[nt], ra, rb[0], rb[1]);
      mma16816<D>(acc[nt + 1], ra, rb[2], rb[3]);
    }
  }
}

// The warp's [16 x 16·kKSteps] accumulators (C layout, 2·kKSteps n-tiles) as A fragments in D.
template <class D, int kKSteps>
__device__ __forceinline__ void to_a_fragments(const float (&c)[2 * kKSteps][4], uint32_t (&a)[kKSteps][4]) {
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
    a[ks][0] = pack_floats<D>(c[2 * ks][0], c[2 * ks][1]);          // row g,   cols 2t, 2t+1
    a[ks][1] = pack_floats<D>(c[2 * ks][2], c[2 * ks][3]);          // row g+8
    a[ks][2] = pack_floats<D>(c[2 * ks + 1][0], c[2 * ks + 1][1]);  // row g,   cols 8+2t, 9+2t
    a[ks][3] = pack_floats<D>(c[2 * ks + 1][2], c[2 * ks + 1][3]);  // row g+8
  }
}

// acc [16 x 8·kDTiles] += P [16 x 16·kKSteps] (A fragments) · V [16·kKSteps x 8·kDTiles], V's rows in
// shared memory (stride ld): O += P V, dQ += dS K, dV += Pᵀ dO, dK += dSᵀ Q. V's column pairs come
// transposed by ldmatrix .trans, two d-tiles per load (each was 4 16-bit loads per lane per d-tile).
template <int kDTiles, int kKSteps, class D>
__device__ __forceinline__ void warp_mma_pv(float (&acc)[kDTiles][4], const uint32_t (&pa)[kKSteps][4], const D* v,
                                            int ld) {
  static_assert(kDTiles % 2 == 0, "B fragments are loaded two d-tiles at a time");
  namespace fr = attention_tile::frag;
  constexpr uint32_t kE = sizeof(D);
  const int lane = threadIdx.x % 32;
  const uint32_t v_lane = smem_addr(v + fr::ldm_b_row(lane) * ld + fr::ldm_b_col(lane));
  const uint32_t v_kstep = 16 * static_cast<uint32_t>(ld) * kE;  // bytes from one k-step's rows to the next
#pragma unroll
  for (int ks = 0; ks < kKSteps; ++ks) {
#pragma unroll
    for (int dt = 0; dt < kDTiles; dt += 2) {
      uint32_t rb[4];
      ldmatrix_x4<true>(rb, v_lane + ks * v_kstep + dt * 8 * kE);
      mma16816<D>(acc[dt], pa[ks], rb[0], rb[1]);
      mma16816<D>(acc[dt + 1], pa[ks], rb[2], rb[3]);
    }
  }
}

// sm[r, :] = rows r0 + r of one head (row stride sl), kD columns; zeros for rows at or past `rows`.
// vec16 (head 16-byte aligned, sl a multiple of 8): 8 elements per 16-byte load and store.
template <int kRows, int kD, int kLd, int kThreads, class D>
__device__ __forceinline__ void load_rows(D* sm, const D* head, int64_t sl, int64_t r0, int64_t rows, bool vec16) {
  static_assert(sizeof(D) == 2 && kD % 8 == 0 && kLd % 8 == 0, "16-byte chunks of 16-bit rows");
  if (vec16) {
    constexpr int kChunks = kD / 8;
    for (int e = threadIdx.x; e < kRows * kChunks; e += kThreads) {
      const int r = e / kChunks, c = (e % kChunks) * 8;
      uint4 chunk = make_uint4(0u, 0u, 0u, 0u);  // +0 in half and bfloat16
      if (r0 + r < rows) chunk = *reinterpret_cast<const uint4*>(head + (r0 + r) * sl + c);
      *reinterpret_cast<uint4*>(sm + r * kLd + c) = chunk;
    }
    return;
  }
  for (int e = threadIdx.x; e < kRows * kD; e += kThreads) {
    const int r = e / kD, c = e % kD;
    sm[r * kLd + c] = r0 + r < rows ? head[(r0 + r) * sl + c] : from_acc<D>(0.0f);
  }
}

// Asynchronous 16-byte copies global -> shared (cp.async, sm_80+), bypassing registers and L1: the
// forward's K / V tiles load while the tensor cores work on the other one. valid false: the 16
// bytes are zero-filled and nothing is read (src-size 0).
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const uint32_t dst = smem_addr(smem);
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0));
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}
// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// load_rows' vec16 layout through cp.async: issues the copies, returns at once (commit and wait
// are the caller's).
template <int kRows, int kD, int kLd, int kThreads, class D>
__device__ __forceinline__ void load_rows_async(D* sm, const D* head, int64_t sl, int64_t r0, int64_t rows) {
  static_assert(sizeof(D) == 2 && kD % 8 == 0 && kLd % 8 == 0, "16-byte chunks of 16-bit rows");
  constexpr int kChunks = kD / 8;
  for (int e = threadIdx.x; e < kRows * kChunks; e += kThreads) {
    const int r = e / kChunks, c = (e % kChunks) * 8;
    const bool valid = r0 + r < rows;
    cp_async16(sm + r * kLd + c, valid ? head + (r0 + r) * sl + c : head, valid);
  }
}

// Whether every head of v can be read in 16-byte chunks (load_rows' vec16).
template <class S>
bool loads16(const HeadsView<S>& v) {
  constexpr int64_t kPerChunk = 16 / static_cast<int64_t>(sizeof(S));
  return reinterpret_cast<uintptr_t>(v.data) % 16 == 0 && v.sb % kPerChunk == 0 && v.sh % kPerChunk == 0 &&
         v.sl % kPerChunk == 0;
}

template <class D>
struct FlashForwardParams {
  AttentionDims n;
  AttentionConfig c;
  HeadsView<const D> q, k, v;
  HeadsView<D> out;
  float* lse;
  float scale;
  bool vec16 = false;  // q, k and v all loads16
};

template <class D>
struct FlashBackwardParams {
  AttentionDims n;
  AttentionConfig c;
  HeadsView<const D> q, k, v, dout;
  HeadsView<D> dq, dk, dv;
  const float* lse;
  const device_acc_t<D>* dsum;
  float scale;
  bool vec16 = false;  // q, k, v and dout all loads16
};

// Sum of the 4 lanes of a row (lanes 4g .. 4g+3).
__device__ __forceinline__ float row_sum4(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float row_max4(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

// The (batch, head) pair of this block (attention_tile::block_pair over attention_grid's y, z);
// false for the padding blocks of the last grid.z row (the whole block returns, before any barrier).
__device__ __forceinline__ bool block_head(const AttentionDims& n, int& b, int& h) {
  return at::block_pair(blockIdx.y, blockIdx.z, gridDim.y, n.batch, n.heads, b, h);
}

// grid (ceil(Lq / kBM), attention_grid), Tr::kThreads threads, dynamic shared memory 3 · kBM · kLd · sizeof(D).
template <class D, class Tr>
__global__ void __launch_bounds__(Tr::kThreads) flash_forward_kernel(const FlashForwardParams<D> p) {
  static_assert(Tr::kBN == Tr::kBM, "the forward stages Q, K and V tiles of one size");
  constexpr int kLd = Tr::kLd, kD = Tr::kHeadDim;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  D* sq = reinterpret_cast<D*>(smem_raw);
  D* sk = sq + Tr::kBM * kLd;
  D* sv = sk + Tr::kBN * kLd;
  const AttentionDims& n = p.n;
  int b = 0, h = 0;  // B, H < 2^31 (attention_grid checks)
  if (!block_head(n, b, h)) return;
  const int64_t i0 = int64_t(blockIdx.x) * Tr::kBM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t rows[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};
  load_rows<Tr::kBM, kD, kLd, Tr::kThreads>(sq, p.q.head(b, h), p.q.sl, i0, n.lq, p.vec16);
  float o[Tr::kDTiles][4];
#pragma unroll
  for (int dt = 0; dt < Tr::kDTiles; ++dt) o[dt][0] = o[dt][1] = o[dt][2] = o[dt][3] = 0.0f;
  at::RowState<float> st[2];  // l: this lane's share of the row sum, until the end
  const int64_t k_end = at::key_end(p.c.causal, n.lk, i0, Tr::kBM);
  // With 16-byte rows (vec16, uniform over the CTA) K and V load asynchronously, as in
  // FlashAttention-2: V_j while S_j = Q K_jᵀ is computed, K_j+1 while O += P_j V_j is. Groups
  // are committed in the order K_0, V_0, K_1, V_1, ... (an empty group after the last tile), so
  // "at most one pending" always means the older of the two has landed.
  const bool pipelined = p.vec16;
  if (pipelined && k_end > 0) {  // Lk = 0: no copy from an empty K (its head pointer may be null)
    load_rows_async<Tr::kBN, kD, kLd, Tr::kThreads>(sk, p.k.head(b, h), p.k.sl, 0, n.lk);
    cp_async_commit();
  }
  for (int64_t j0 = 0; j0 < k_end; j0 += Tr::kBN) {
    if (pipelined) {
      load_rows_async<Tr::kBN, kD, kLd, Tr::kThreads>(sv, p.v.head(b, h), p.v.sl, j0, n.lk);
      cp_async_commit();
      cp_async_wait<1>();  // K_j (this thread's part)
    } else {
      load_rows<Tr::kBN, kD, kLd, Tr::kThreads>(sk, p.k.head(b, h), p.k.sl, j0, n.lk, false);
      load_rows<Tr::kBN, kD, kLd, Tr::kThreads>(sv, p.v.head(b, h), p.v.sl, j0, n.lk, false);
    }
    __syncthreads();  // Q (first pass), K_j, and V_j when not pipelined, visible to every warp
    float s[Tr::kNTiles][4];
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt) s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.0f;
    warp_mma_abt<Tr::kNTiles, Tr::kDSteps>(s, sq + warp * 16 * kLd, sk, kLd);
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t i = rows[e / 2], j = j0 + nt * 8 + 2 * t + e % 2;
        const bool vis = i < n.lq && at::visible(n, p.c, b, i, j);
        s[nt][e] = vis ? s[nt][e] * p.scale : -INFINITY;
        mx[e / 2] = fmaxf(mx[e / 2], s[nt][e]);
      }
    float alpha[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) alpha[r] = at::online_rescale(st[r], row_max4(mx[r]));
#pragma unroll
    for (int dt = 0; dt < Tr::kDTiles; ++dt) {
      o[dt][0] *= alpha[0];
      o[dt][1] *= alpha[0];
      o[dt][2] *= alpha[1];
      o[dt][3] *= alpha[1];
    }
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        const float pe = at::exp_shifted(s[nt][e], st[r].m);
        st[r].l += pe;
        // P before dropout normalises; P ⊙ factor multiplies V.
        s[nt][e] = p.c.dropout_p > 0 && pe != 0.0f
                       ? pe * at::dropout_factor<float>(n, p.c, b, h, rows[r], j0 + nt * 8 + 2 * t + e % 2)
                       : pe;
      }
    uint32_t pa[Tr::kNSteps][4];
    to_a_fragments<D, Tr::kNSteps>(s, pa);
    if (pipelined) {
      __syncthreads();  // every warp is done with K_j: K_j+1 may overwrite it
      if (j0 + Tr::kBN < k_end)
        load_rows_async<Tr::kBN, kD, kLd, Tr::kThreads>(sk, p.k.head(b, h), p.k.sl, j0 + Tr::kBN, n.lk);
      cp_async_commit();
      cp_async_wait<1>();  // V_j (this thread's part)
      __syncthreads();     // V_j visible to every warp
    }
    warp_mma_pv<Tr::kDTiles, Tr::kNSteps>(o, pa, sv, kLd);
    __syncthreads();  // every warp is done with the tiles before the next ones land
  }
  if (pipelined) cp_async_wait<0>();  // only the empty last group can be pending; leave nothing in flight
#pragma unroll
  for (int r = 0; r < 2; ++r) st[r].l = row_sum4(st[r].l);
  const float inv[2] = {at::row_inv_sum(st[0]), at::row_inv_sum(st[1])};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int64_t i = rows[r];
    if (i >= n.lq) continue;
    D* orow = p.out.head(b, h) + i * p.out.sl;
#pragma unroll
    for (int dt = 0; dt < Tr::kDTiles; ++dt) {
      orow[dt * 8 + 2 * t] = from_acc<D>(o[dt][2 * r] * inv[r]);
      orow[dt * 8 + 2 * t + 1] = from_acc<D>(o[dt][2 * r + 1] * inv[r]);
    }
    if (t == 0) p.lse[(b * n.heads + h) * n.lq + i] = at::row_lse(st[r]);
  }
}

// dsum[b, h, i] = dO_i · O_i in A (float; double for double); one warp per row, 8 rows per block of 256.
template <class D, class A = device_acc_t<D>>
__global__ void __launch_bounds__(256)
    attention_dsum_kernel(AttentionDims n, HeadsView<const D> dout, HeadsView<const D> out, A* dsum) {
  const int64_t row = int64_t(blockIdx.x) * 8 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n.batch * n.heads * n.lq) return;
  const int64_t i = row % n.lq, bh = row / n.lq, h = bh % n.heads, b = bh / n.heads;
  const D* a = dout.head(b, h) + i * dout.sl;
  const D* o = out.head(b, h) + i * out.sl;
  A acc = 0;
  for (int64_t d = lane; d < n.dv; d += 32) acc += to_acc(a[d]) * to_acc(o[d]);
  acc = warp_reduce(acc, Sum{});
  if (lane == 0) dsum[row] = acc;
}

// The elementwise part of the backward at one (i, j): p ⊙ factor (for dV) into pf, dS into ds.
template <class D>
__device__ __forceinline__ void backward_entry(const FlashBackwardParams<D>& p, int64_t b, int64_t h, int64_t i,
                                               int64_t j, float s, float dp, float lse, float dsum, float& pf,
                                               float& ds) {
  const bool vis = i < p.n.lq && at::visible(p.n, p.c, b, i, j);
  const float pr = vis ? at::prob_from_lse(s * p.scale, lse) : 0.0f;
  const float f = p.c.dropout_p > 0 && pr != 0.0f ? at::dropout_factor<float>(p.n, p.c, b, h, i, j) : 1.0f;
  pf = pr * f;
  ds = at::dscore(pr, dp * f, dsum, p.scale);
}

// grid (ceil(Lq / kBM), H, B); shared: Q, dO rows [kBM], K, V tiles [kBN].
template <class D, class Tr>
__global__ void __launch_bounds__(Tr::kThreads) flash_dq_kernel(const FlashBackwardParams<D> p) {
  constexpr int kLd = Tr::kLd, kD = Tr::kHeadDim;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  D* sq = reinterpret_cast<D*>(smem_raw);
  D* sdo = sq + Tr::kBM * kLd;
  D* sk = sdo + Tr::kBM * kLd;
  D* sv = sk + Tr::kBN * kLd;
  const AttentionDims& n = p.n;
  int b = 0, h = 0;  // B, H < 2^31 (attention_grid checks)
  if (!block_head(n, b, h)) return;
  const int64_t i0 = int64_t(blockIdx.x) * Tr::kBM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t rows[2] = {i0 + warp * 16 + g, i0 + warp * 16 + g + 8};
  load_rows<Tr::kBM, kD, kLd, Tr::kThreads>(sq, p.q.head(b, h), p.q.sl, i0, n.lq, p.vec16);
  load_rows<Tr::kBM, kD, kLd, Tr::kThreads>(sdo, p.dout.head(b, h), p.dout.sl, i0, n.lq, p.vec16);
  float lse[2], dsum[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const bool in = rows[r] < n.lq;
    const int64_t e = (b * n.heads + h) * n.lq + rows[r];
    lse[r] = in ? p.lse[e] : -INFINITY;
    dsum[r] = in ? p.dsum[e] : 0.0f;
  }
  float dq[Tr::kDTiles][4];
#pragma unroll
  for (int dt = 0; dt < Tr::kDTiles; ++dt) dq[dt][0] = dq[dt][1] = dq[dt][2] = dq[dt][3] = 0.0f;
  const int64_t k_end = at::key_end(p.c.causal, n.lk, i0, Tr::kBM);
  for (int64_t j0 = 0; j0 < k_end; j0 += Tr::kBN) {
    __syncthreads();
    load_rows<Tr::kBN, kD, kLd, Tr::kThreads>(sk, p.k.head(b, h), p.k.sl, j0, n.lk, p.vec16);
    load_rows<Tr::kBN, kD, kLd, Tr::kThreads>(sv, p.v.head(b, h), p.v.sl, j0, n.lk, p.vec16);
    __syncthreads();
    float s[Tr::kNTiles][4], dp[Tr::kNTiles][4];
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) s[nt][e] = dp[nt][e] = 0.0f;
    warp_mma_abt<Tr::kNTiles, Tr::kDSteps>(s, sq + warp * 16 * kLd, sk, kLd);
    warp_mma_abt<Tr::kNTiles, Tr::kDSteps>(dp, sdo + warp * 16 * kLd, sv, kLd);
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e / 2;
        float pf;
        backward_entry(p, b, h, rows[r], j0 + nt * 8 + 2 * t + e % 2, s[nt][e], dp[nt][e], lse[r], dsum[r], pf,
                       s[nt][e]);
      }
    uint32_t pa[Tr::kNSteps][4];
    to_a_fragments<D, Tr::kNSteps>(s, pa);
    warp_mma_pv<Tr::kDTiles, Tr::kNSteps>(dq, pa, sk, kLd);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (rows[r] >= n.lq) continue;
    D* row = p.dq.head(b, h) + rows[r] * p.dq.sl;
#pragma unroll
    for (int dt = 0; dt < Tr::kDTiles; ++dt) {
      row[dt * 8 + 2 * t] = from_acc<D>(dq[dt][2 * r]);
      row[dt * 8 + 2 * t + 1] = from_acc<D>(dq[dt][2 * r + 1]);
    }
  }
}

// grid (ceil(Lk / kBM), H, B); shared: K, V rows [kBM], Q, dO tiles [kBN], the tile's lse and dsum.
template <class D, class Tr>
__global__ void __launch_bounds__(Tr::kThreads) flash_dkdv_kernel(const FlashBackwardParams<D> p) {
  constexpr int kLd = Tr::kLd, kD = Tr::kHeadDim;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  D* sk = reinterpret_cast<D*>(smem_raw);
  D* sv = sk + Tr::kBM * kLd;
  D* sq = sv + Tr::kBM * kLd;
  D* sdo = sq + Tr::kBN * kLd;
  float* slse = reinterpret_cast<float*>(sdo + Tr::kBN * kLd);
  float* sdsum = slse + Tr::kBN;
  const AttentionDims& n = p.n;
  int b = 0, h = 0;  // B, H < 2^31 (attention_grid checks)
  if (!block_head(n, b, h)) return;
  const int64_t j0 = int64_t(blockIdx.x) * Tr::kBM;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t keys[2] = {j0 + warp * 16 + g, j0 + warp * 16 + g + 8};
  load_rows<Tr::kBM, kD, kLd, Tr::kThreads>(sk, p.k.head(b, h), p.k.sl, j0, n.lk, p.vec16);
  load_rows<Tr::kBM, kD, kLd, Tr::kThreads>(sv, p.v.head(b, h), p.v.sl, j0, n.lk, p.vec16);
  float dk[Tr::kDTiles][4], dv[Tr::kDTiles][4];
#pragma unroll
  for (int dt = 0; dt < Tr::kDTiles; ++dt)
#pragma unroll
    for (int e = 0; e < 4; ++e) dk[dt][e] = dv[dt][e] = 0.0f;
  // Causal: queries before this CTA's first key see none of its keys.
  const int64_t q_begin = at::query_begin(p.c.causal, j0, Tr::kBN);
  const int64_t bh = b * n.heads + h;
  for (int64_t i0 = q_begin; i0 < n.lq; i0 += Tr::kBN) {
    __syncthreads();
    load_rows<Tr::kBN, kD, kLd, Tr::kThreads>(sq, p.q.head(b, h), p.q.sl, i0, n.lq, p.vec16);
    load_rows<Tr::kBN, kD, kLd, Tr::kThreads>(sdo, p.dout.head(b, h), p.dout.sl, i0, n.lq, p.vec16);
    for (int e = threadIdx.x; e < Tr::kBN; e += Tr::kThreads) {
      const bool in = i0 + e < n.lq;
      slse[e] = in ? p.lse[bh * n.lq + i0 + e] : -INFINITY;
      sdsum[e] = in ? p.dsum[bh * n.lq + i0 + e] : 0.0f;
    }
    __syncthreads();
    float st[Tr::kNTiles][4], dpt[Tr::kNTiles][4];  // Sᵀ and dPᵀ: rows = keys, columns = queries
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) st[nt][e] = dpt[nt][e] = 0.0f;
    warp_mma_abt<Tr::kNTiles, Tr::kDSteps>(st, sk + warp * 16 * kLd, sq, kLd);
    warp_mma_abt<Tr::kNTiles, Tr::kDSteps>(dpt, sv + warp * 16 * kLd, sdo, kLd);
#pragma unroll
    for (int nt = 0; nt < Tr::kNTiles; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int c = nt * 8 + 2 * t + e % 2;
        const int64_t j = keys[e / 2];
        float pf, ds;
        // j >= Lk is never visible (tile.hpp's visible), so padded key rows stay 0.
        backward_entry(p, b, h, i0 + c, j, st[nt][e], dpt[nt][e], slse[c], sdsum[c], pf, ds);
        st[nt][e] = pf;
        dpt[nt][e] = ds;
      }
    uint32_t pa[Tr::kNSteps][4];
    to_a_fragments<D, Tr::kNSteps>(st, pa);
    warp_mma_pv<Tr::kDTiles, Tr::kNSteps>(dv, pa, sdo, kLd);
    to_a_fragments<D, Tr::kNSteps>(dpt, pa);
    warp_mma_pv<Tr::kDTiles, Tr::kNSteps>(dk, pa, sq, kLd);
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (keys[r] >= n.lk) continue;
    D* krow = p.dk.data ? p.dk.head(b, h) + keys[r] * p.dk.sl : nullptr;
    D* vrow = p.dv.data ? p.dv.head(b, h) + keys[r] * p.dv.sl : nullptr;
#pragma unroll
    for (int dt = 0; dt < Tr::kDTiles; ++dt)
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        if (krow) krow[dt * 8 + 2 * t + x] = from_acc<D>(dk[dt][2 * r + x]);
        if (vrow) vrow[dt * 8 + 2 * t + x] = from_acc<D>(dv[dt][2 * r + x]);
      }
  }
}

// ---- reference kernels (float, double): one warp per row, lanes over the head dim

inline constexpr int kRefMaxPerLane = 8;  // head dims up to 256
inline constexpr int kRefMaxDim = 32 * kRefMaxPerLane;

template <class D>
__device__ __forceinline__ D warp_sum(D x) {
  return warp_reduce(x, Sum{});
}

// grid (ceil(Lq / 4), attention_grid), 128 threads.
template <class D>
__global__ void __launch_bounds__(128) reference_forward_kernel(const FlashForwardParams<D> p) {
  const AttentionDims& n = p.n;
  int b = 0, h = 0;  // B, H < 2^31 (attention_grid checks)
  if (!block_head(n, b, h)) return;
  const int64_t i = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (i >= n.lq) return;
  const D scale = static_cast<D>(p.c.scale);
  const D* qi = p.q.head(b, h) + i * p.q.sl;
  D qv[kRefMaxPerLane], o[kRefMaxPerLane];
#pragma unroll
  for (int x = 0; x < kRefMaxPerLane; ++x) {
    const int64_t d = lane + 32 * x;
    qv[x] = d < n.d ? qi[d] : D(0);
    o[x] = D(0);
  }
  at::RowState<D> st;
  const int64_t k_end = at::key_end(p.c.causal, n.lk, i, 1);
  for (int64_t j = 0; j < k_end; ++j) {
    if (!at::visible(n, p.c, b, i, j)) continue;  // uniform over the warp
    const D* kj = p.k.head(b, h) + j * p.k.sl;
    D dot = 0;
#pragma unroll
    for (int x = 0; x < kRefMaxPerLane; ++x)
      if (lane + 32 * x < n.d) dot += qv[x] * kj[lane + 32 * x];
    const D s = warp_sum(dot) * scale;
    const D alpha = at::online_rescale(st, s);
    const D pe = at::exp_shifted(s, st.m);
    st.l += pe;
    const D pf = pe * at::dropout_factor<D>(n, p.c, b, h, i, j);
    const D* vj = p.v.head(b, h) + j * p.v.sl;
#pragma unroll
    for (int x = 0; x < kRefMaxPerLane; ++x)
      if (lane + 32 * x < n.dv) o[x] = o[x] * alpha + pf * vj[lane + 32 * x];
  }
  const D inv = at::row_inv_sum(st);
  D* orow = p.out.head(b, h) + i * p.out.sl;
#pragma unroll
  for (int x = 0; x < kRefMaxPerLane; ++x)
    if (lane + 32 * x < n.dv) orow[lane + 32 * x] = o[x] * inv;
  if (lane == 0) p.lse[(b * n.heads + h) * n.lq + i] = static_cast<float>(at::row_lse(st));
}

// dQ (keys_side = false: one warp per query row) or dK and dV (true: one warp per key row).
// grid (ceil(rows / 4), attention_grid), 128 threads.
template <class D, bool kKeysSide>
__global__ void __launch_bounds__(128) reference_backward_kernel(const FlashBackwardParams<D> p) {
  const AttentionDims& n = p.n;
  int b = 0, h = 0;  // B, H < 2^31 (attention_grid checks)
  if (!block_head(n, b, h)) return;
  const int64_t row = int64_t(blockIdx.x) * 4 + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= (kKeysSide ? n.lk : n.lq)) return;
  const D scale = static_cast<D>(p.c.scale);
  const int64_t bh = b * n.heads + h;
  D a0[kRefMaxPerLane], a1[kRefMaxPerLane];  // dQ: q_i, dO_i; dK/dV: k_j, v_j
  D acc0[kRefMaxPerLane], acc1[kRefMaxPerLane];  // dQ: dq; dK/dV: dk, dv
  const D* r0 = kKeysSide ? p.k.head(b, h) + row * p.k.sl : p.q.head(b, h) + row * p.q.sl;
  const D* r1 = kKeysSide ? p.v.head(b, h) + row * p.v.sl : p.dout.head(b, h) + row * p.dout.sl;
#pragma unroll
  for (int x = 0; x < kRefMaxPerLane; ++x) {
    const int64_t d = lane + 32 * x;
    a0[x] = d < n.d ? r0[d] : D(0);
    a1[x] = d < n.dv ? r1[d] : D(0);
    acc0[x] = acc1[x] = D(0);
  }
  const int64_t other_begin = kKeysSide ? at::query_begin(p.c.causal, row, 1) : 0;
  const int64_t other_end = kKeysSide ? n.lq : at::key_end(p.c.causal, n.lk, row, 1);
  for (int64_t o = other_begin; o < other_end; ++o) {
    const int64_t i = kKeysSide ? o : row, j = kKeysSide ? row : o;
    if (!at::visible(n, p.c, b, i, j)) continue;
    const D lse = static_cast<D>(p.lse[bh * n.lq + i]);
    if (lse == static_cast<D>(-INFINITY)) continue;
    const D* b0 = kKeysSide ? p.q.head(b, h) + i * p.q.sl : p.k.head(b, h) + j * p.k.sl;
    const D* b1 = kKeysSide ? p.dout.head(b, h) + i * p.dout.sl : p.v.head(b, h) + j * p.v.sl;
    D s = 0, dp = 0;
#pragma unroll
    for (int x = 0; x < kRefMaxPerLane; ++x) {
      const int64_t d = lane + 32 * x;
      if (d < n.d) s += a0[x] * b0[d];
      if (d < n.dv) dp += a1[x] * b1[d];
    }
    s = warp_sum(s) * scale;
    dp = warp_sum(dp);
    const D pr = at::prob_from_lse(s, lse);
    const D f = at::dropout_factor<D>(n, p.c, b, h, i, j);
    const D ds = at::dscore(pr, dp * f, static_cast<D>(p.dsum[bh * n.lq + i]), scale);
#pragma unroll
    for (int x = 0; x < kRefMaxPerLane; ++x) {
      const int64_t d = lane + 32 * x;
      if (d < n.d) acc0[x] += ds * b0[d];                  // dQ += dS k_j, or dK += dS q_i
      if (kKeysSide && d < n.dv) acc1[x] += pr * f * b1[d];  // dV += P f dO_i
    }
  }
  D* w0 = kKeysSide ? (p.dk.data ? p.dk.head(b, h) + row * p.dk.sl : nullptr)
                    : (p.dq.data ? p.dq.head(b, h) + row * p.dq.sl : nullptr);
  D* w1 = kKeysSide && p.dv.data ? p.dv.head(b, h) + row * p.dv.sl : nullptr;
#pragma unroll
  for (int x = 0; x < kRefMaxPerLane; ++x) {
    const int64_t d = lane + 32 * x;
    if (w0 && d < n.d) w0[d] = acc0[x];
    if (w1 && d < n.dv) w1[d] = acc1[x];
  }
}

}  // namespace attention_kernels

namespace detail {

template <class T>
inline constexpr bool kAttentionTensorCores = std::is_same_v<T, bfloat16> || std::is_same_v<T, half>;

template <class T>
HeadsView<const device_t<T>> device_heads(const HeadsView<const T>& v) {
  return {device_ptr(v.data), v.sb, v.sh, v.sl};
}
template <class T>
HeadsView<device_t<T>> device_heads(const HeadsView<T>& v) {
  return {device_ptr(v.data), v.sb, v.sh, v.sl};
}

// The launch grid of the attention kernels: x_blocks blocks of rows along x, the B · H (batch, head)
// pairs over y and z (attention_kernels::block_head), up to 65535 x 65535 pairs.
inline dim3 attention_grid(int64_t rows, int64_t rows_per_block, const AttentionDims& n) {
  const int64_t x = (rows + rows_per_block - 1) / rows_per_block;
  const attention_tile::HeadGrid pairs = attention_tile::head_grid(n.batch, n.heads);
  const int64_t y = pairs.y, z = pairs.z;
  // (block_head gives the kernels b and h as int: B and H below 2^31 too.)
  MAMCLIP_CHECK(x <= INT32_MAX && z <= 65535 && n.batch <= INT32_MAX && n.heads <= INT32_MAX, device_error,
                "scaled_dot_product_attention: the CUDA kernels take at most 65535 x 65535 (batch, head) pairs, B and "
                "H below 2^31, and ",
                int64_t(INT32_MAX) * rows_per_block, " rows; got B = ", n.batch, ", H = ", n.heads, ", ", rows, " rows");
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

// Which kernels serve (T, D, Dv): tensor cores for 16-bit types at D = Dv in {32, 64, 96, 128}, the
// reference kernels for float and double up to 256; anything else is refused by name.
template <class T>
void attention_check_dims(const AttentionDims& n) {
  if constexpr (kAttentionTensorCores<T>) {
    MAMCLIP_CHECK(n.d == n.dv && attention_tile::flash_head_dim(n.d), device_error,
                  "scaled_dot_product_attention: the CUDA kernels for ", dtype_name(dtype_v<T>),
                  " support head dims D = Dv in {32, 64, 96, 128}; got D = ", n.d, ", Dv = ", n.dv,
                  " (compute in float, or pad the head dim)");
    int major = 0;
    MAMCLIP_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, current_device()));
    MAMCLIP_CHECK(major >= 8, device_error, "scaled_dot_product_attention: the ", dtype_name(dtype_v<T>),
                  " CUDA kernels need compute capability 8.0 or newer (mma.sync with bf16); this device has ", major,
                  ".x");
  } else {
    MAMCLIP_CHECK(n.d <= attention_kernels::kRefMaxDim && n.dv <= attention_kernels::kRefMaxDim, device_error,
                  "scaled_dot_product_attention: the ", dtype_name(dtype_v<T>), " CUDA kernels support head dims up to ",
                  attention_kernels::kRefMaxDim, "; got D = ", n.d, ", Dv = ", n.dv);
  }
}

template <class Kernel>
void attention_smem(Kernel kernel, size_t bytes) {
  MAMCLIP_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}

template <int kD>
using ForwardTraits = attention_tile::FlashTraits<kD, 64>;
template <int kD>
using DqTraits = attention_tile::FlashTraits<kD, 64>;
template <int kD>
using DkdvTraits = attention_tile::FlashTraits<kD, 32>;  // fewer live registers: dK and dV both accumulate

template <class D, int kD>
void launch_flash_forward(const attention_kernels::FlashForwardParams<D>& p, cudaStream_t stream) {
  using Tr = ForwardTraits<kD>;
  const size_t smem = sizeof(D) * static_cast<size_t>(3 * Tr::kBM * Tr::kLd);
  auto kernel = &attention_kernels::flash_forward_kernel<D, Tr>;
  attention_smem(kernel, smem);
  const dim3 grid = attention_grid(p.n.lq, Tr::kBM, p.n);
  kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class D, int kD>
void launch_flash_backward(const attention_kernels::FlashBackwardParams<D>& p, cudaStream_t stream) {
  if (p.dq.data) {
    using Tr = DqTraits<kD>;
    const size_t smem = sizeof(D) * static_cast<size_t>((2 * Tr::kBM + 2 * Tr::kBN) * Tr::kLd);
    auto kernel = &attention_kernels::flash_dq_kernel<D, Tr>;
    attention_smem(kernel, smem);
    const dim3 grid = attention_grid(p.n.lq, Tr::kBM, p.n);
    kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
  if ((p.dk.data || p.dv.data) && p.n.lk > 0) {
    using Tr = DkdvTraits<kD>;
    const size_t smem =
        sizeof(D) * static_cast<size_t>((2 * Tr::kBM + 2 * Tr::kBN) * Tr::kLd) + sizeof(float) * 2 * Tr::kBN;
    auto kernel = &attention_kernels::flash_dkdv_kernel<D, Tr>;
    attention_smem(kernel, smem);
    const dim3 grid = attention_grid(p.n.lk, Tr::kBM, p.n);
    kernel<<<grid, Tr::kThreads, smem, stream>>>(p);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
}

// Calls f(std::integral_constant<int, D>) for the runtime head dim (one of kFlashHeadDims).
template <class F>
void with_head_dim(int64_t d, F&& f) {
  switch (d) {
    case 32: return f(std::integral_constant<int, 32>{});
    case 64: return f(std::integral_constant<int, 64>{});
    case 96: return f(std::integral_constant<int, 96>{});
    case 128: return f(std::integral_constant<int, 128>{});
    default:
      throw device_error(::mamclip::detail::str_cat("scaled_dot_product_attention: no CUDA kernel for head dim ", d));
  }
}

template <class T>
void launch_attention_forward(const AttentionForwardArgs<T>& a, cudaStream_t stream) {
  using D = device_t<T>;
  const AttentionDims& n = a.dims;
  attention_check_dims<T>(n);
  if (n.batch == 0 || n.heads == 0 || n.lq == 0) return;
  attention_kernels::FlashForwardParams<D> p{n,
                                                   a.config,
                                                   device_heads(a.q),
                                                   device_heads(a.k),
                                                   device_heads(a.v),
                                                   device_heads(a.out),
                                                   a.lse,
                                                   static_cast<float>(a.config.scale)};
  if constexpr (kAttentionTensorCores<T>) {
    p.vec16 = attention_kernels::loads16(p.q) && attention_kernels::loads16(p.k) && attention_kernels::loads16(p.v);
    with_head_dim(n.d, [&](auto kd) { launch_flash_forward<D, decltype(kd)::value>(p, stream); });
  } else {
    const dim3 grid = attention_grid(n.lq, 4, n);
    attention_kernels::reference_forward_kernel<D><<<grid, 128, 0, stream>>>(p);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
}

template <class T>
void launch_attention_backward(const AttentionBackwardArgs<T>& a, cudaStream_t stream) {
  using D = device_t<T>;
  const AttentionDims& n = a.dims;
  attention_check_dims<T>(n);
  if (n.batch == 0 || n.heads == 0) return;
  // Gradients of empty sides, and dK / dV when no query exists, are zeros.
  const auto zero = [&](const HeadsView<T>& g, int64_t rows, int64_t cols) {
    if (!g.data) return;
    for (int64_t b = 0; b < n.batch; ++b)
      for (int64_t h = 0; h < n.heads; ++h)
        MAMCLIP_CUDA_CHECK(cudaMemset2DAsync(g.head(b, h), static_cast<size_t>(std::max(g.sl, cols)) * sizeof(T), 0,
                                             static_cast<size_t>(cols) * sizeof(T), static_cast<size_t>(rows), stream));
  };
  if (n.lq == 0 || n.lk == 0) {
    zero(a.dq, n.lq, n.d);
    zero(a.dk, n.lk, n.d);
    zero(a.dv, n.lk, n.dv);
    return;
  }
  using A = device_acc_t<D>;
  Tensor<A> dsum = scratch<A>(n.batch * n.heads * n.lq);
  const int64_t rows = n.batch * n.heads * n.lq;  // one warp each, 8 per block
  MAMCLIP_CHECK((rows + 7) / 8 <= INT32_MAX, device_error, "scaled_dot_product_attention backward: B·H·Lq = ", rows,
                " query rows; the CUDA kernels take at most ", int64_t(INT32_MAX) * 8);
  attention_kernels::attention_dsum_kernel<D><<<static_cast<unsigned>((rows + 7) / 8), 256, 0, stream>>>(
      n, device_heads(a.dout), device_heads(a.out), dsum.data_ptr());
  MAMCLIP_CUDA_CHECK_LAUNCH();
  attention_kernels::FlashBackwardParams<D> p{n,
                                                    a.config,
                                                    device_heads(a.q),
                                                    device_heads(a.k),
                                                    device_heads(a.v),
                                                    device_heads(a.dout),
                                                    device_heads(a.dq),
                                                    device_heads(a.dk),
                                                    device_heads(a.dv),
                                                    a.lse,
                                                    dsum.data_ptr(),
                                                    static_cast<float>(a.config.scale)};
  if constexpr (kAttentionTensorCores<T>) {
    using attention_kernels::loads16;
    p.vec16 = loads16(p.q) && loads16(p.k) && loads16(p.v) && loads16(p.dout);
    with_head_dim(n.d, [&](auto kd) { launch_flash_backward<D, decltype(kd)::value>(p, stream); });
  } else {
    if (p.dq.data) {
      const dim3 grid = attention_grid(n.lq, 4, n);
      attention_kernels::reference_backward_kernel<D, false><<<grid, 128, 0, stream>>>(p);
      MAMCLIP_CUDA_CHECK_LAUNCH();
    }
    if (p.dk.data || p.dv.data) {
      const dim3 grid = attention_grid(n.lk, 4, n);
      attention_kernels::reference_backward_kernel<D, true><<<grid, 128, 0, stream>>>(p);
      MAMCLIP_CUDA_CHECK_LAUNCH();
    }
  }
}

}  // namespace detail

namespace kernels {
template <class T>
void attention_forward(const AttentionForwardArgs<T>& a) {
  detail::launch_attention_forward<T>(a, current_stream());
}
template <class T>
void attention_backward(const AttentionBackwardArgs<T>& a) {
  detail::launch_attention_backward<T>(a, current_stream());
}
}  // namespace kernels

template <class T>
void register_attention_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<AttentionForwardKernel<T>>("scaled_dot_product_attention", dtype_v<T>, DeviceType::cuda,
                                   &kernels::attention_forward<T>);
  r.add<AttentionBackwardKernel<T>>("scaled_dot_product_attention_backward", dtype_v<T>, DeviceType::cuda,
                                    &kernels::attention_backward<T>);
}

inline void register_attention_kernels() {
  register_attention_kernels_for<float>();
  register_attention_kernels_for<double>();
  register_attention_kernels_for<half>();
  register_attention_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
