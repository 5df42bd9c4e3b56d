#pragma once
// CPU reference of the fused CLIP loss (clip.hpp), forward and backward, and
// the device kernel contract it defines (a kernel registered for a device
// must produce what these functions produce from the same arguments).
//
// Never materialises the [images, texts] logits: rows of one operand are
// taken in blocks of kRowBlock against chunks of kColChunk rows of the other
// (one Eigen GEMM per pair), with the online log-sum-exp of clip_tile.hpp
// across chunks. Backward recomputes each block of logits from the features
// and the saved lse (the kernels' contract: only O(batch) is saved).
//
// Only float and double reach these functions (the op converts half and
// bfloat16 to float). Sums over the batch (the loss, d logit_scale) are
// accumulated in double: they add up to 2·batch terms of similar size.

#include <Eigen/Core>
#include <algorithm>
#include <cstdint>
#include <vector>

#include "mamclip/core/dtype.hpp"
#include "mamclip/ops/loss/clip_tile.hpp"

namespace mamclip {

// Device kernel contract of clip_loss. Features are row-major with unit
// stride along dim and leading dims image_ld / text_ld; logit_scale, loss,
// grad_loss and d_logit_scale point to one element; row_lse / col_lse hold
// `batch` values in the accumulation type (float for float, half, bfloat16):
// row_lse[i] = lse over all texts of image image_offset + i's logits,
// col_lse[i] = lse over all images of text text_offset + i's logits.
// The forward writes loss, row_lse and col_lse. The backward writes (not
// accumulates) d_image [images, dim] and d_text [texts, dim], both
// contiguous, and d_logit_scale; a null output pointer: not wanted.
template <class T>
struct ClipLossForwardArgs {
  ClipLossDims dims;
  double max_logit_scale;  // +inf: no clamp
  const T* image;
  int64_t image_ld;
  const T* text;
  int64_t text_ld;
  const T* logit_scale;
  T* loss;
  acc_t<T>* row_lse;
  acc_t<T>* col_lse;
};
template <class T>
struct ClipLossBackwardArgs {
  ClipLossDims dims;
  double max_logit_scale;
  const T* image;
  int64_t image_ld;
  const T* text;
  int64_t text_ld;
  const T* logit_scale;
  const T* grad_loss;
  const acc_t<T>* row_lse;
  const acc_t<T>* col_lse;
  T* d_image;
  T* d_text;
  T* d_logit_scale;
};
template <class T>
using ClipLossForwardKernel = void(const ClipLossForwardArgs<T>&);
template <class T>
using ClipLossBackwardKernel = void(const ClipLossBackwardArgs<T>&);

namespace cpu {

namespace clip_impl {

inline constexpr int64_t kRowBlock = 64, kColChunk = 1024;

template <class S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using CMat = Eigen::Map<const RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;

// Rows [r0, r0 + n) of a row-major matrix with `cols` columns and leading dim ld.
template <class S>
CMat<S> rows_of(const S* p, int64_t ld, int64_t r0, int64_t n, int64_t cols) {
  return CMat<S>(p + r0 * ld, n, cols, Eigen::OuterStride<>(std::max<int64_t>(ld, std::max<int64_t>(cols, 1))));
}

// One operand in one role: rows [0, rows), its band [off, off + batch).
template <class S>
struct Side {
  const S* data;
  int64_t ld, rows, off;
};

// lse[i] over all of b's rows of s · a[a.off + i] · b[j], i < batch.
template <class S>
void band_lse(const Side<S>& a, const Side<S>& b, int64_t batch, int64_t dim, S s, S* lse) {
  RowMat<S> x;
  for (int64_t i0 = 0; i0 < batch; i0 += kRowBlock) {
    const int64_t m = std::min(kRowBlock, batch - i0);
    std::vector<clip_tile::LseState<S>> st(static_cast<size_t>(m), clip_tile::lse_empty<S>());
    for (int64_t j0 = 0; j0 < b.rows; j0 += kColChunk) {
      const int64_t n = std::min(kColChunk, b.rows - j0);
      if (dim == 0)
        x.setZero(m, n);
      else
        x.noalias() = s * (rows_of(a.data, a.ld, a.off + i0, m, dim) * rows_of(b.data, b.ld, j0, n, dim).transpose());
      for (int64_t r = 0; r < m; ++r) clip_tile::lse_update(st[static_cast<size_t>(r)], x.data() + r * n, static_cast<int>(n), 1);
    }
    for (int64_t r = 0; r < m; ++r) lse[i0 + r] = clip_tile::lse_value(st[static_cast<size_t>(r)]);
  }
}

// d_a = s · Σ_b dS[a, b] · b_row, dS = coef · clip_dlogit (see clip_tile.hpp);
// returns Σ dS ⊙ S over every (a, b) it visits, which is every nonzero dS.
// d_a may be null (only the sum is wanted).
template <class S>
double grad_side(const Side<S>& a, const S* own_lse, const Side<S>& b, const S* other_lse, int64_t batch, int64_t dim,
                 S s, S coef, S* d_a) {
  RowMat<S> x, acc;
  double dot = 0;
  for (int64_t a0 = 0; a0 < a.rows; a0 += kRowBlock) {
    const int64_t m = std::min(kRowBlock, a.rows - a0);
    // Rows outside A's band see only Bm's band (dS is zero elsewhere on them).
    const clip_tile::Range columns = clip_tile::grad_columns(a0, m, a.off, b.off, batch, b.rows);
    const int64_t c_begin = columns.begin, c_end = columns.end;
    acc.setZero(m, dim);
    for (int64_t j0 = c_begin; j0 < c_end; j0 += kColChunk) {
      const int64_t n = std::min(kColChunk, c_end - j0);
      const auto bm = rows_of(b.data, b.ld, j0, n, dim);
      if (dim == 0)
        x.setZero(m, n);
      else
        x.noalias() = s * (rows_of(a.data, a.ld, a0, m, dim) * bm.transpose());
      for (int64_t r = 0; r < m; ++r) {
        const int64_t ai = a0 + r - a.off;
        const bool a_in = ai >= 0 && ai < batch;
        for (int64_t c = 0; c < n; ++c) {
          const int64_t bi = j0 + c - b.off;
          const bool b_in = bi >= 0 && bi < batch;
          const S sv = x(r, c);
          const S g = coef * clip_tile::clip_dlogit<S>(sv, a_in, a_in ? own_lse[ai] : S(0), b_in,
                                                       b_in ? other_lse[bi] : S(0), a_in && b_in && ai == bi);
          dot += static_cast<double>(g) * static_cast<double>(sv);
          x(r, c) = g;
        }
      }
      if (d_a && dim > 0) acc.noalias() += x * bm;
    }
    if (d_a)
      for (int64_t r = 0; r < m; ++r)
        for (int64_t k = 0; k < dim; ++k) d_a[(a0 + r) * dim + k] = s * acc(r, k);
  }
  return dot;
}

}  // namespace clip_impl

template <class S>
void clip_loss_forward(const ClipLossForwardArgs<S>& p) {
  using namespace clip_impl;
  const ClipLossDims& n = p.dims;
  const S s = clip_tile::clip_scale<S>(*p.logit_scale, static_cast<S>(p.max_logit_scale)).s;
  const Side<S> img{p.image, p.image_ld, n.images, n.image_offset}, txt{p.text, p.text_ld, n.texts, n.text_offset};
  band_lse(img, txt, n.batch, n.dim, s, p.row_lse);
  band_lse(txt, img, n.batch, n.dim, s, p.col_lse);
  double total = 0;
  for (int64_t i = 0; i < n.batch; ++i) {
    S diag = 0;
    for (int64_t k = 0; k < n.dim; ++k)
      diag += p.image[(n.image_offset + i) * p.image_ld + k] * p.text[(n.text_offset + i) * p.text_ld + k];
    total += static_cast<double>(p.row_lse[i]) + static_cast<double>(p.col_lse[i]) -
             2.0 * static_cast<double>(s * diag);
  }
  *p.loss = static_cast<S>(total / (2.0 * static_cast<double>(n.batch)));
}

template <class S>
void clip_loss_backward(const ClipLossBackwardArgs<S>& p) {
  using namespace clip_impl;
  const ClipLossDims& n = p.dims;
  const auto sc = clip_tile::clip_scale<S>(*p.logit_scale, static_cast<S>(p.max_logit_scale));
  const S coef = static_cast<S>(static_cast<double>(*p.grad_loss) / (2.0 * static_cast<double>(n.batch)));
  const Side<S> img{p.image, p.image_ld, n.images, n.image_offset}, txt{p.text, p.text_ld, n.texts, n.text_offset};
  if (p.d_image || p.d_logit_scale) {
    const double dot = grad_side(img, p.row_lse, txt, p.col_lse, n.batch, n.dim, sc.s, coef, p.d_image);
    // d loss / d log_scale = Σ dS ⊙ (d S / d log_scale) = Σ dS ⊙ S while the clamp passes.
    if (p.d_logit_scale) *p.d_logit_scale = sc.passes ? static_cast<S>(dot) : S(0);
  }
  if (p.d_text) grad_side(txt, p.col_lse, img, p.row_lse, n.batch, n.dim, sc.s, coef, p.d_text);
}

}  // namespace cpu
}  // namespace mamclip
