#pragma once
// The tile math of the fused CLIP loss, shared by the CPU reference
// (clip_cpu.hpp), the CUDA kernels (cuda.cuh) and the host emulation of the
// kernels' tiling in tests/ops/test_clip_loss.cpp. Plain C++ without nvcc
// (MAMCLIP_HOST_DEVICE is `inline` there), so it is tested with no GPU.
//
// Notation (see clip.hpp for the op): A [na, D] and Bm [nb, D] are the two
// feature matrices in either role (images and texts, or texts and images), S =
// s · A Bmᵀ the scaled logits. The "band" of A is the rows ao .. ao + B - 1
// (the local pairs), likewise bo .. bo + B - 1 of Bm; local pair i is
// (A row ao + i, Bm row bo + i).
//
//   own lse   lse_A[i] = log Σ_b exp S[ao + i, b]       (over all nb rows of Bm)
//   loss      (1 / 2B) Σ_i (lse_rows[i] + lse_cols[i] - 2 S[ao + i, bo + i])
//   dS        (g / 2B) · clip_dlogit(...) at every (a, b), nonzero only on the two bands:
//             [a in A band] (exp(S - lse_A[a - ao]) - [diag]) + [b in Bm band] (exp(S - lse_B[b - bo]) - [diag])
//
// dS is symmetric in the roles, so one gradient routine computes d image
// (A = images) and, with the roles swapped, d text.

#include <cmath>
#include <cstdint>

#include "mamclip/core/config.hpp"
#include "mamclip/core/host_device_math.hpp"

namespace mamclip {

// Sizes of one clip_loss call: image_features [images, dim], text_features
// [texts, dim]; local pair i is (image row image_offset + i, text row
// text_offset + i) for i < batch.
struct ClipLossDims {
  int64_t images = 0, texts = 0, dim = 0, batch = 0, image_offset = 0, text_offset = 0;
};

namespace clip_tile {

// A running log-sum-exp: the sum of exp(x - m) over the values seen, and their
// max m. Empty: m = -inf, l = 0 (its lse is -inf).
template <class A>
struct LseState {
  A m, l;
};

template <class A>
MAMCLIP_HOST_DEVICE LseState<A> lse_empty() {
  return {static_cast<A>(-INFINITY), A(0)};
}

// Adds n values x[0], x[stride], ...: one rescale of l per block, not per value
// (the online softmax update).
template <class A, class X>
MAMCLIP_HOST_DEVICE void lse_update(LseState<A>& st, const X* x, int n, int stride) {
  A mx = st.m;
  for (int j = 0; j < n; ++j) mx = x[j * stride] > mx ? static_cast<A>(x[j * stride]) : mx;
  if (mx == static_cast<A>(-INFINITY)) return;  // nothing finite seen yet or now
  A l = st.l * hd::exp(st.m - mx);                  // st.m == -inf: exp(-inf) = 0
  for (int j = 0; j < n; ++j) l += hd::exp(static_cast<A>(x[j * stride]) - mx);
  st.m = mx;
  st.l = l;
}

// The state of the union of two value sets (partial lse of two tiles, lanes or splits).
template <class A>
MAMCLIP_HOST_DEVICE LseState<A> lse_merge(LseState<A> a, LseState<A> b) {
  const A m = a.m > b.m ? a.m : b.m;
  if (m == static_cast<A>(-INFINITY)) return lse_empty<A>();  // avoids (-inf) - (-inf)
  return {m, a.l * hd::exp(a.m - m) + b.l * hd::exp(b.m - m)};
}

template <class A>
MAMCLIP_HOST_DEVICE A lse_value(LseState<A> st) {
  return st.m + hd::log(st.l);
}

// The logit scale s = exp(min(log_scale, max)) and whether d s / d log_scale
// is s (true) or 0 (clamped; the bound itself passes, as torch.clamp's gradient).
template <class A>
struct ClipScale {
  A s;
  bool passes;
};
template <class A>
MAMCLIP_HOST_DEVICE ClipScale<A> clip_scale(A log_scale, A max_log_scale) {
  const bool passes = !(log_scale > max_log_scale);
  return {hd::exp(passes ? log_scale : max_log_scale), passes};
}

// d loss / d S at one (a, b) of the logits, per unit of g / (2B). a_in / b_in:
// whether a / b lies in its band (with own / other its band's lse); diag:
// whether (a, b) is a local pair (a - ao == b - bo, both in band).
template <class A>
MAMCLIP_HOST_DEVICE A clip_dlogit(A s_ab, bool a_in, A own_lse, bool b_in, A other_lse, bool diag) {
  A v = A(0);
  if (a_in) v += hd::exp(s_ab - own_lse);
  if (b_in) v += hd::exp(s_ab - other_lse);
  if (diag) v -= A(2);
  return v;
}

// Whether the rows [r0, r0 + n) meet the band [off, off + batch).
MAMCLIP_HOST_DEVICE bool meets_band(int64_t r0, int64_t n, int64_t off, int64_t batch) {
  return r0 < off + batch && off < r0 + n;
}

// ---- the tiling of the CUDA kernels (cuda.cuh), which the host emulation in
// the tests repeats step by step.

// Forward (one lse family): a CTA of kThreads threads takes kBM band rows of A
// and one split of Bm's rows, kBN rows per tile, D in chunks of kBK. Thread t
// owns row t / kLanes of the tile and the columns t % kLanes + kLanes·j; its
// LseState is updated once per tile, then the kLanes states of a row merge as
// ((lane 0, lane 1), (lane 2, lane 3)) (shuffles xor 1, then xor 2), then the
// splits merge in order 0, 1, ...
struct ForwardTiling {
  static constexpr int kBM = 64, kBN = 64, kBK = 32, kThreads = 256;
  static constexpr int kLanes = kThreads / kBM;
  static constexpr int kColsPerLane = kBN / kLanes;
  static_assert(kThreads % kBM == 0 && kLanes == 4, "the lane merge is written for 4 lanes per row (xor 1, xor 2)");
  static_assert(kBN % kLanes == 0, "each lane owns kBN / kLanes columns of a tile");
};

// Backward (one gradient family): a CTA of kThreads threads takes kBM rows of
// A (any rows: rows outside the band still get the column band's gradient)
// and walks Bm's rows in tiles of kBN: all of them when its rows meet A's
// band, else only Bm's band. The d A accumulator of the CTA, kBM x D floats,
// lives in shared memory.
struct BackwardTiling {
  static constexpr int kBM = 32, kBN = 32, kBK = 32, kThreads = 128;
};

// Rows (or tiles) [begin, end).
struct Range {
  int64_t begin = 0, end = 0;
};

// How the forward divides Bm's column tiles: `splits` splits of
// tiles_per_split consecutive tiles (the last may have fewer, none is
// empty); enough CTAs (row blocks x splits) to fill the device twice over.
struct ForwardSplits {
  int64_t splits = 1, tiles_per_split = 0;
};
inline ForwardSplits forward_splits(int64_t row_blocks, int64_t col_tiles, int64_t sms) {
  ForwardSplits f;
  if (col_tiles < 1) return f;  // one empty split: every lse is -inf
  const int64_t want = (2 * sms + row_blocks - 1) / (row_blocks > 0 ? row_blocks : 1);
  int64_t splits = want < 1 ? 1 : want;
  if (splits > col_tiles) splits = col_tiles;
  if (splits > 65535) splits = 65535;  // gridDim.y
  f.tiles_per_split = (col_tiles + splits - 1) / splits;
  f.splits = (col_tiles + f.tiles_per_split - 1) / f.tiles_per_split;  // drop the splits rounding left empty
  return f;
}
// The column tiles of split sp.
MAMCLIP_HOST_DEVICE Range split_tiles(const ForwardSplits& f, int64_t col_tiles, int64_t sp) {
  const int64_t begin = sp * f.tiles_per_split, end = begin + f.tiles_per_split;
  return {begin, end < col_tiles ? end : col_tiles};
}

// Backward: the rows of Bm that rows [a0, a0 + n) of A pair with, all nb of
// them when they meet A's band [a_off, a_off + batch), else only Bm's band
// [b_off, b_off + batch) (dS is zero elsewhere on those rows).
MAMCLIP_HOST_DEVICE Range grad_columns(int64_t a0, int64_t n, int64_t a_off, int64_t b_off, int64_t batch,
                                       int64_t nb) {
  return meets_band(a0, n, a_off, batch) ? Range{0, nb} : Range{b_off, b_off + batch};
}
// Backward CTAs for na rows of A.
MAMCLIP_HOST_DEVICE int64_t grad_blocks(int64_t na) { return (na + BackwardTiling::kBM - 1) / BackwardTiling::kBM; }

}  // namespace clip_tile
}  // namespace mamclip
