#pragma once
// The tile math of the fused attention kernels (ops/attention/cuda.cuh),
// shared with the host emulation of their tiling in
// tests/ops/test_attention_tile.cpp. Plain C++ without nvcc
// (MAMCLIP_HOST_DEVICE is `inline` there), so it is tested with no GPU.
//
// Forward, FlashAttention-2 style, for one query row i over key tiles
// t = 0, 1, ... (s_j = scale · q_i·k_j, -inf where key j is not visible):
//
//   m' = max(m, max_j s_j)            online_rescale: alpha = exp(m − m')
//   l' = alpha · l + Σ_j exp(s_j − m')
//   o' = alpha · o + Σ_j exp(s_j − m') · f_j · v_j     (f_j: dropout factor)
//
// and at the end out_i = o / l, lse_i = m + log l (row_lse, row_inv_sum).
// Backward recomputes p_ij = exp(s_ij − lse_i) (prob_from_lse) tile by tile:
//
//   dsum_i = dO_i · O_i,   dp_ij = f_ij · dO_i·v_j,   ds_ij = p_ij (dp_ij − dsum_i) · scale  (dscore)
//   dV_j = Σ_i p_ij f_ij dO_i,   dK_j = Σ_i ds_ij q_i,   dQ_i = Σ_j ds_ij k_j
//
// A row that sees no key keeps m = -inf and l = 0: its output, lse (-inf)
// and gradients are zeros / -inf, as the CPU reference (cpu.hpp) gives.
//
// The mma.sync fragment layouts (PTX ISA, m16n8k16 with 16-bit inputs and
// float accumulators) are written here as index functions, so that the test
// can check the register reuse the kernels rely on: the accumulator of
// S = Q Kᵀ, converted pairwise to 16 bits, is the A operand of P V.

#include <cmath>
#include <cstdint>

#include "mamclip/core/config.hpp"
#include "mamclip/core/host_device_math.hpp"
#include "mamclip/ops/attention/cpu.hpp"

namespace mamclip::attention_tile {

// The running max and sum of one query row.
template <class A>
struct RowState {
  A m = static_cast<A>(-INFINITY), l = A(0);
};

// Moves the row to the max m' = max(m, tile_max) and returns the factor
// alpha = exp(m − m') that l (done here) and the output accumulator (by the
// caller) are multiplied by. While the row has seen no visible key alpha is
// 0: l and the accumulator are 0 anyway, and (-inf) − (-inf) is avoided.
template <class A>
MAMCLIP_HOST_DEVICE A online_rescale(RowState<A>& st, A tile_max) {
  const A m_new = tile_max > st.m ? tile_max : st.m;
  const A alpha = st.m == static_cast<A>(-INFINITY) ? A(0) : hd::exp(st.m - m_new);
  st.m = m_new;
  st.l *= alpha;
  return alpha;
}

// exp(s − m) after online_rescale: 0 for a masked score (s = -inf), also
// when the row has seen nothing visible yet (m = -inf).
template <class A>
MAMCLIP_HOST_DEVICE A exp_shifted(A s, A m) {
  return s == static_cast<A>(-INFINITY) ? A(0) : hd::exp(s - m);
}

template <class A>
MAMCLIP_HOST_DEVICE A row_lse(const RowState<A>& st) {
  return st.l > A(0) ? st.m + hd::log(st.l) : static_cast<A>(-INFINITY);
}
template <class A>
MAMCLIP_HOST_DEVICE A row_inv_sum(const RowState<A>& st) {
  return st.l > A(0) ? A(1) / st.l : A(0);
}

// p = exp(s − lse) with s the scaled score; 0 when the key is masked (s =
// -inf) or the row sees no key (lse = -inf).
template <class A>
MAMCLIP_HOST_DEVICE A prob_from_lse(A s, A lse) {
  return (s == static_cast<A>(-INFINITY) || lse == static_cast<A>(-INFINITY)) ? A(0) : hd::exp(s - lse);
}

// d loss / d (q_i·k_j) from p_ij, dp_ij (already times the dropout factor) and dsum_i.
template <class A>
MAMCLIP_HOST_DEVICE A dscore(A p, A dp, A dsum, A scale) {
  return p * (dp - dsum) * scale;
}

// Whether query i of batch b sees key j (the CPU reference's masking rule).
MAMCLIP_HOST_DEVICE bool visible(const AttentionDims& n, const AttentionConfig& c, int64_t b, int64_t i, int64_t j) {
  if (j >= n.lk) return false;
  if (c.causal && j > i) return false;
  return !c.key_padding_mask || c.key_padding_mask[b * n.lk + j];
}

// The dropout factor of (b, h, i, j): 0 or 1 / (1 − p); 1 without dropout.
template <class A>
MAMCLIP_HOST_DEVICE A dropout_factor(const AttentionDims& n, const AttentionConfig& c, int64_t b, int64_t h, int64_t i,
                                     int64_t j) {
  if (!(c.dropout_p > 0)) return A(1);
  if (c.dropout_p >= 1) return A(0);
  const uint64_t e = static_cast<uint64_t>(((b * n.heads + h) * n.lq + i) * n.lk + j);
  return attention_keeps(c.seed, c.offset, e, c.dropout_p) ? static_cast<A>(1.0 / (1.0 - c.dropout_p)) : A(0);
}

// ---- the tiling of the tensor-core kernels

// A CTA of kWarps warps takes kBM = 16·kWarps rows (queries in the forward
// and the dQ kernel, keys in the dK/dV kernel); each warp owns 16 of them and
// walks the other side in tiles of kBN. kHeadDim is a compile-time head dim.
template <int kHeadDim_, int kBN_>
struct FlashTraits {
  static constexpr int kHeadDim = kHeadDim_, kBN = kBN_;
  static constexpr int kWarps = 4, kThreads = 32 * kWarps, kBM = 16 * kWarps;
  static constexpr int kLd = kHeadDim + 8;  // shared-memory row stride: 16-byte rows, rows 4 banks apart
  static constexpr int kDTiles = kHeadDim / 8, kDSteps = kHeadDim / 16, kNTiles = kBN / 8, kNSteps = kBN / 16;
  static_assert(kHeadDim % 32 == 0 && kHeadDim >= 32 && kHeadDim <= 128, "head dims 32, 64, 96, 128");
  static_assert(kBN % 16 == 0 && kBN >= 16, "key tiles are whole mma k-steps (16)");
  static_assert(kLd % 8 == 0, "rows of shared tiles stay 16-byte aligned");
};

// The (batch, head) pairs of a launch run over grid.y and grid.z together:
// y = min(B·H, 65535) and z rows of y, so neither B nor H is limited to
// gridDim's 65535 (up to 65535 x 65535 pairs; the launcher checks).
struct HeadGrid {
  int64_t y = 1, z = 1;
};
inline HeadGrid head_grid(int64_t batch, int64_t heads) {
  const int64_t pairs = batch * heads;
  HeadGrid g;
  g.y = pairs < 1 ? 1 : (pairs > 65535 ? 65535 : pairs);
  g.z = (pairs + g.y - 1) / g.y;
  if (g.z < 1) g.z = 1;
  return g;
}
// The pair (b, h) of block (by, bz) in a grid of gy rows; false for the
// padding blocks at the end of the last z row. 32-bit arithmetic (the pair
// index is below 65535 · 65536; 64-bit division costs registers the
// tensor-core kernels do not have), B and H below 2^31.
MAMCLIP_HOST_DEVICE bool block_pair(uint32_t by, uint32_t bz, uint32_t gy, int64_t batch, int64_t heads, int& b,
                                    int& h) {
  const uint32_t bh = by + bz * gy, nh = static_cast<uint32_t>(heads);
  if (bh >= static_cast<uint64_t>(batch) * nh) return false;
  const uint32_t q = bh / nh;
  b = static_cast<int>(q);
  h = static_cast<int>(bh - q * nh);
  return true;
}

// Causal masks skip tiles: a block of query rows [i0, i0 + rows) sees keys
// below min(Lk, i0 + rows) only; a block of keys from j0 is seen only by
// queries from j0 on, i.e. from the query tile (of `tile` rows) holding j0.
MAMCLIP_HOST_DEVICE int64_t key_end(bool causal, int64_t lk, int64_t i0, int rows) {
  return causal && i0 + rows < lk ? i0 + rows : lk;
}
MAMCLIP_HOST_DEVICE int64_t query_begin(bool causal, int64_t j0, int tile) { return causal ? j0 / tile * tile : 0; }

// The head dims the tensor-core kernels are compiled for.
inline constexpr int kFlashHeadDims[] = {32, 64, 96, 128};
MAMCLIP_HOST_DEVICE bool flash_head_dim(int64_t d) { return d == 32 || d == 64 || d == 96 || d == 128; }

// mma.sync.m16n8k16 fragments: lane = 4·g + t (g = lane / 4, t = lane % 4).
// Element e of a lane's fragment sits at (row, col) of its tile:
//   A 16x16 (8 elements): rows g, g+8, g, g+8 for e/2 = 0..3; cols 2t + e%2 (+8 for e >= 4)
//   B 16x8  (4 elements): rows (k) 2t + e%2 (+8 for e >= 2); col (n) g
//   C 16x8  (4 elements): rows g (e < 2), g+8; cols 2t + e%2
namespace frag {
MAMCLIP_HOST_DEVICE int a_row(int lane, int e) { return lane / 4 + ((e / 2) % 2) * 8; }
MAMCLIP_HOST_DEVICE int a_col(int lane, int e) { return 2 * (lane % 4) + e % 2 + (e / 4) * 8; }
MAMCLIP_HOST_DEVICE int b_row(int lane, int e) { return 2 * (lane % 4) + e % 2 + (e / 2) * 8; }
MAMCLIP_HOST_DEVICE int b_col(int lane, int /*e*/) { return lane / 4; }
MAMCLIP_HOST_DEVICE int c_row(int lane, int e) { return lane / 4 + (e / 2) * 8; }
MAMCLIP_HOST_DEVICE int c_col(int lane, int e) { return 2 * (lane % 4) + e % 2; }
// The C fragment (of n-tile 2·s + e / 4) that element e of the A fragment of
// k-step s is taken from, and the element in it: the register reuse of P.
MAMCLIP_HOST_DEVICE int a_from_c_tile(int e) { return e / 4; }
MAMCLIP_HOST_DEVICE int a_from_c_elem(int e) { return e % 4; }

// ldmatrix.sync.aligned.m8n8.x4 (.b16) loads four 8 x 8 matrices: lane l gives the address of row
// l % 8 of matrix l / 8 (16 bytes), and register m of every lane receives matrix m in the
// fragment layout above: row lane / 4, cols 2t, 2t + 1 (with .trans, of the transposed matrix:
// rows 2t, 2t + 1 of column lane / 4). Where lane l points, as (row, col) offsets from a tile's
// origin in a row-major shared buffer, for the kernels' three uses:
//   A     a 16 x 16 A tile (Q, dO, K, V rows): registers a0..a3 of one k-step
MAMCLIP_HOST_DEVICE int ldm_a_row(int lane) { return lane % 16; }
MAMCLIP_HOST_DEVICE int ldm_a_col(int lane) { return (lane / 16) * 8; }
//   Bt    B = Xᵀ from X's rows (S = Q Kᵀ: key rows), two n-tiles: b0, b1 of n-tile 0, then of n-tile 1
MAMCLIP_HOST_DEVICE int ldm_bt_row(int lane) { return (lane / 16) * 8 + lane % 8; }
MAMCLIP_HOST_DEVICE int ldm_bt_col(int lane) { return ((lane / 8) % 2) * 8; }
//   B     B = X from X's rows with .trans (O += P V: V rows are k), two n-tiles: the same order
MAMCLIP_HOST_DEVICE int ldm_b_row(int lane) { return lane % 16; }
MAMCLIP_HOST_DEVICE int ldm_b_col(int lane) { return (lane / 16) * 8; }
}  // namespace frag

}  // namespace mamclip::attention_tile
