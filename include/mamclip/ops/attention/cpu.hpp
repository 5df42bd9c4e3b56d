#pragma once
// CPU scaled dot-product attention, forward and backward, one (batch, head)
// at a time with Eigen GEMMs on the strided operands in place:
//
//   Sc = scale · Q Kᵀ           [Lq, Lk]   (GEMM)
//   P = softmax_rows(Sc + mask) [Lq, Lk]   (max-subtracted, in float or double)
//   Pd = P ⊙ keep / (1 - p)                (dropout; Pd = P without it)
//   O = Pd V                    [Lq, Dv]   (GEMM)
//
// backward, with D_i = Σ_j P_ij dP_ij (= Σ_d dO_id O_id):
//
//   dV = Pdᵀ dO,  dPd = dO Vᵀ,  dP = dPd ⊙ keep / (1 - p),
//   dS = P ⊙ (dP − D) · scale,  dQ = dS K,  dK = dSᵀ Q.
//
// The structs and the dropout-mask function below are also the contract of a
// device kernel (a FlashAttention-style CUDA kernel registered under the op's
// name, see attention.hpp): this file is its reference.
//
// Masking: a key is visible to query i when key_padding_mask[b, j] (if given)
// and, when causal, j <= i (top-left aligned, as torch's is_causal for
// Lq != Lk). A query row that sees no key gets probability 0 everywhere, so
// its output and its gradients are 0 — FlashAttention's convention; torch's
// softmax gives NaN there. Keys after a batch's last attended key (right
// padding) are left out of the GEMMs altogether.
//
// Threads: heads run in parallel under OpenMP when the program is compiled
// with it (the same switch that parallelises Eigen's GEMMs; Eigen does not
// nest its own threads inside a parallel region), else serially. Results do
// not depend on the thread count: each head is computed by one thread.
//
// Only float and double reach the kernels: the op converts half and bfloat16
// to float first.

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "mamclip/core/config.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/ops/matmul/sgemm.hpp"

namespace mamclip {

// A [B, H, L, X] operand whose rows are contiguous: element (b, h, l, x) is
// data[b*sb + h*sh + l*sl + x]. sl >= X unless L <= 1; sb and sh may be 0
// (an operand broadcast over batch or heads).
template <class S>
struct HeadsView {
  S* data = nullptr;
  int64_t sb = 0, sh = 0, sl = 0;
  MAMCLIP_HOST_DEVICE S* head(int64_t b, int64_t h) const { return data + b * sb + h * sh; }
};

struct AttentionDims {
  int64_t batch = 0, heads = 0, lq = 0, lk = 0, d = 0, dv = 0;
};

struct AttentionConfig {
  double scale = 1.0;
  bool causal = false;
  const bool* key_padding_mask = nullptr;  // [B, Lk] contiguous, true = attend; null: every key
  double dropout_p = 0.0;                  // 0: no dropout
  uint64_t seed = 0, offset = 0;           // the Philox stream of the dropout mask
};

// Whether dropout keeps probability (b, h, i, j): element
// n = ((b·H + h)·Lq + i)·Lk + j of the uniform stream (seed, offset) is at
// most 1 − p (dropout()'s convention: p = 1 keeps nothing). A kernel that
// regenerates the mask must produce exactly this.
MAMCLIP_HOST_DEVICE bool attention_keeps(uint64_t seed, uint64_t offset, uint64_t n, double p) {
  return Philox::uniform(seed, offset, n) <= 1.0 - p;
}

namespace cpu {

namespace attention_impl {

template <class S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class S>
using CMat = Eigen::Map<const RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using MMat = Eigen::Map<RowMat<S>, Eigen::Unaligned, Eigen::OuterStride<>>;
template <class S>
using Row = Eigen::Map<Eigen::Array<S, 1, Eigen::Dynamic>>;
template <class S>
using CRow = Eigen::Map<const Eigen::Array<S, 1, Eigen::Dynamic>>;

// The rows x cols matrix of head (b, h) of an operand.
template <class S>
CMat<S> cmat(const HeadsView<const S>& v, int64_t b, int64_t h, int64_t rows, int64_t cols) {
  return CMat<S>(v.head(b, h), rows, cols, Eigen::OuterStride<>(std::max(v.sl, cols)));
}
template <class S>
MMat<S> mmat(const HeadsView<S>& v, int64_t b, int64_t h, int64_t rows, int64_t cols) {
  return MMat<S>(v.head(b, h), rows, cols, Eigen::OuterStride<>(std::max(v.sl, cols)));
}
// The first `cols` columns of a rows x ld row-major buffer.
template <class S>
MMat<S> strided(S* p, int64_t rows, int64_t cols, int64_t ld) {
  return MMat<S>(p, rows, cols, Eigen::OuterStride<>(std::max<int64_t>(ld, 1)));
}
template <class S>
CMat<S> strided(const S* p, int64_t rows, int64_t cols, int64_t ld) {
  return CMat<S>(p, rows, cols, Eigen::OuterStride<>(std::max<int64_t>(ld, 1)));
}

// A row-major mapped matrix (or a block of one), or the transpose of one, as
// a pointer and (row, column) strides.
template <class S>
struct Strided {
  const S* p;
  int64_t rs, cs;
};
template <class D>
auto strides_of(const Eigen::MapBase<D, Eigen::ReadOnlyAccessors>& m) {
  static_assert(D::IsRowMajor, "attention operands are row-major maps");
  return Strided<typename D::Scalar>{m.data(), static_cast<int64_t>(m.outerStride()), 1};
}
template <class M>
auto strides_of(const Eigen::Transpose<M>& t) {
  const auto s = strides_of(t.nestedExpression());
  return decltype(s){s.p, s.cs, s.rs};
}

// dst = a · b, also when the inner dim is 0 (a product Eigen would leave
// unset). Float products big enough go to the packed GEMM (cpu::sgemm, one
// thread inside the per-head loop), the rest to Eigen.
template <class Dst, class A, class B>
void product(Dst&& dst, const A& a, const B& b) {
  if (dst.size() == 0) return;
  if (a.cols() == 0) {
    dst.setZero();
    return;
  }
  if constexpr (std::is_same_v<typename std::decay_t<Dst>::Scalar, float>) {
    const int64_t m = dst.rows(), n = dst.cols(), k = a.cols();
    if (sgemm::worthwhile(m, n, k)) {
      const auto sa = strides_of(a), sb = strides_of(b);
      sgemm::gemm(m, n, k, sa.p, sa.rs, sa.cs, sb.p, sb.rs, sb.cs, dst.data(), false, sgemm::best_isa(),
                  dst.outerStride());
      return;
    }
  }
  dst.noalias() = a * b;
}

// Dropout factors of row i of head (b, h): 0 or 1 / (1 - p), for keys [0, len).
// From the saved mask when there is one, else regenerated from the stream.
template <class S>
void dropout_row(const AttentionDims& n, const AttentionConfig& c, int64_t b, int64_t h, int64_t i, int64_t len,
                 const uint8_t* saved_keep, S* factor) {
  const S inv = c.dropout_p < 1 ? static_cast<S>(1.0 / (1.0 - c.dropout_p)) : S(0);
  if (saved_keep) {
    for (int64_t j = 0; j < len; ++j) factor[j] = saved_keep[j] ? inv : S(0);
    return;
  }
  // One Philox block gives 4 consecutive elements of the stream.
  const uint64_t n0 = static_cast<uint64_t>(((b * n.heads + h) * n.lq + i) * n.lk);
  uint32_t r[4];
  uint64_t block = ~uint64_t(0);
  for (int64_t j = 0; j < len; ++j) {
    const uint64_t e = n0 + static_cast<uint64_t>(j);
    if (e / 4 != block) {
      block = e / 4;
      Philox::block(c.seed, c.offset, block, r);
    }
    factor[j] = Philox::to_unit(r[e % 4]) <= 1.0 - c.dropout_p ? inv : S(0);
  }
}

// Per key of batch b: additive bias (0 or -inf) and factor (1 or 0) from the
// padding mask, and the key extent: keys at or after it are all padding, so
// GEMMs stop there (right-padded batches skip their padding's work).
template <class S>
struct KeyMask {
  std::vector<S> bias, factor;  // [B, Lk]; empty without a mask
  std::vector<int64_t> extent;  // [B]: 1 + the last attended key, 0 when none
  int64_t lk = 0;
  KeyMask(const AttentionDims& n, const AttentionConfig& c) : lk(n.lk) {
    if (!c.key_padding_mask) return;
    bias.resize(static_cast<size_t>(n.batch * n.lk));
    factor.resize(bias.size());
    extent.assign(static_cast<size_t>(n.batch), 0);
    for (int64_t b = 0; b < n.batch; ++b)
      for (int64_t j = 0; j < n.lk; ++j) {
        const int64_t e = b * n.lk + j;
        const bool on = c.key_padding_mask[e];
        bias[e] = on ? S(0) : -std::numeric_limits<S>::infinity();
        factor[e] = on ? S(1) : S(0);
        if (on) extent[b] = j + 1;
      }
  }
  bool any() const { return !bias.empty(); }
  int64_t keys(int64_t b) const { return any() ? extent[b] : lk; }
};

// Keys query row i of batch b may see lie in [0, visible_keys): all of them,
// a prefix when causal, and none past the padding mask's extent.
template <class S>
int64_t visible_keys(const AttentionConfig& c, const KeyMask<S>& mask, int64_t b, int64_t i) {
  const int64_t kb = mask.keys(b);
  return c.causal ? std::min<int64_t>(i + 1, kb) : kb;
}

// Turns the raw scores Q Kᵀ of one head (rows of Lk, in place) into
// probabilities; optionally writes each row's log-sum-exp of the scaled,
// masked scores (-inf for a row that sees no key).
template <class S>
void softmax_rows(const AttentionDims& n, const AttentionConfig& c, const KeyMask<S>& mask, int64_t b, S* p,
                  float* lse) {
  const S scale = static_cast<S>(c.scale), ninf = -std::numeric_limits<S>::infinity();
  for (int64_t i = 0; i < n.lq; ++i) {
    S* pr = p + i * n.lk;
    const int64_t len = visible_keys(c, mask, b, i);
    Row<S> x(pr, len);
    S m = ninf;
    if (len > 0) {
      if (mask.any())
        x = x * scale + CRow<S>(mask.bias.data() + b * n.lk, len);
      else
        x *= scale;
      m = x.maxCoeff();
    }
    if (m == ninf) {  // no visible key: zeros, not NaN
      std::fill(pr, pr + n.lk, S(0));
      if (lse) lse[i] = -std::numeric_limits<float>::infinity();
      continue;
    }
    x = (x - m).exp();
    // exp(-inf) through Eigen's vectorised exp is tiny, not 0: masked keys are zeroed exactly.
    if (mask.any()) x *= CRow<S>(mask.factor.data() + b * n.lk, len);
    const S s = x.sum();
    x *= S(1) / s;
    std::fill(pr + len, pr + n.lk, S(0));
    if (lse) lse[i] = static_cast<float>(m + std::log(s));
  }
}

// Recomputes one head's probabilities from Q, K and the saved log-sum-exp.
template <class S>
void probs_from_lse(const AttentionDims& n, const AttentionConfig& c, const KeyMask<S>& mask, int64_t b,
                    const CMat<S>& q, const CMat<S>& k, const float* lse, S* p) {
  const int64_t kb = mask.keys(b);
  product(strided(p, n.lq, kb, n.lk), q, k.topRows(kb).transpose());
  const S scale = static_cast<S>(c.scale);
  for (int64_t i = 0; i < n.lq; ++i) {
    S* pr = p + i * n.lk;
    const int64_t len = lse[i] == -std::numeric_limits<float>::infinity() ? 0 : visible_keys(c, mask, b, i);
    Row<S> x(pr, len);
    if (len > 0) {
      x = (x * scale - static_cast<S>(lse[i])).exp();
      if (mask.any()) x *= CRow<S>(mask.factor.data() + b * n.lk, len);
    }
    std::fill(pr + len, pr + n.lk, S(0));
  }
}

// Runs f(head index, per-thread scratch) for every (b, h). A single head runs
// outside any parallel region, so that the GEMMs it calls may use the threads.
template <class Scratch, class F>
void for_each_head(int64_t count, F&& f) {
#ifdef _OPENMP
  if (count > 1) {
#pragma omp parallel
    {
      Scratch scratch;
#pragma omp for schedule(static)
      for (int64_t e = 0; e < count; ++e) f(e, scratch);
    }
    return;
  }
#endif
  Scratch scratch;
  for (int64_t e = 0; e < count; ++e) f(e, scratch);
}

template <class S>
struct Scratch {
  std::vector<S> p, pd, factor;
  static S* sized(std::vector<S>& v, int64_t count) {
    if (static_cast<int64_t>(v.size()) < count) v.resize(static_cast<size_t>(count));
    return v.data();
  }
};

}  // namespace attention_impl

// Forward over every (b, h). `out` is [B, H, Lq, Dv]. Optional outputs:
//   probs [B, H, Lq, Lk] contiguous: the probabilities P before dropout (what backward reads);
//   keep  [B, H, Lq, Lk] contiguous: the dropout mask (1 = kept), when dropout_p > 0;
//   lse   [B, H, Lq] contiguous: each row's log-sum-exp (what a device kernel saves).
template <class S>
void attention_forward(const AttentionDims& n, const AttentionConfig& c, const HeadsView<const S>& q,
                       const HeadsView<const S>& k, const HeadsView<const S>& v, const HeadsView<S>& out, S* probs,
                       uint8_t* keep, float* lse) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "attention kernels compute in float or double");
  using namespace attention_impl;
  const KeyMask<S> mask(n, c);
  const bool drop = c.dropout_p > 0;
  const int64_t plen = n.lq * n.lk;
  for_each_head<Scratch<S>>(n.batch * n.heads, [&](int64_t e, Scratch<S>& s) {
    const int64_t b = e / n.heads, h = e % n.heads, kb = mask.keys(b);
    // P rows have stride Lk; only keys [0, kb) are computed, the rest are set to 0.
    S* p = probs ? probs + e * plen : Scratch<S>::sized(s.p, plen);
    product(strided(p, n.lq, kb, n.lk), cmat(q, b, h, n.lq, n.d), cmat(k, b, h, kb, n.d).transpose());
    softmax_rows(n, c, mask, b, p, lse ? lse + e * n.lq : nullptr);
    const S* pv = p;
    if (drop) {
      S* pd = Scratch<S>::sized(s.pd, plen);
      S* f = Scratch<S>::sized(s.factor, n.lk);
      for (int64_t i = 0; i < n.lq; ++i) {
        // Each draw depends on its element index alone (attention_keeps); keys past kb, whose
        // probability is 0, are not drawn.
        dropout_row(n, c, b, h, i, kb, nullptr, f);
        for (int64_t j = 0; j < kb; ++j) {
          pd[i * n.lk + j] = p[i * n.lk + j] * f[j];
          if (keep) keep[e * plen + i * n.lk + j] = f[j] != S(0);
        }
      }
      pv = pd;
    }
    product(mmat(out, b, h, n.lq, n.dv), strided(pv, n.lq, kb, n.lk), cmat(v, b, h, kb, n.dv));
  });
}

// Backward over every (b, h). P comes from `probs` when given, else it is
// recomputed from `lse`; the dropout mask from `keep` when given, else from
// the Philox stream. A gradient whose view has a null data pointer is not
// computed. dq, dk, dv are written (not accumulated).
template <class S>
void attention_backward(const AttentionDims& n, const AttentionConfig& c, const HeadsView<const S>& q,
                        const HeadsView<const S>& k, const HeadsView<const S>& v, const HeadsView<const S>& dout,
                        const S* probs, const float* lse, const uint8_t* keep, const HeadsView<S>& dq,
                        const HeadsView<S>& dk, const HeadsView<S>& dv) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "attention kernels compute in float or double");
  using namespace attention_impl;
  const KeyMask<S> mask(n, c);
  const bool drop = c.dropout_p > 0;
  const int64_t plen = n.lq * n.lk;
  const S scale = static_cast<S>(c.scale);
  for_each_head<Scratch<S>>(n.batch * n.heads, [&](int64_t e, Scratch<S>& s) {
    const int64_t b = e / n.heads, h = e % n.heads, kb = mask.keys(b);
    // Keys [kb, Lk) are padding: their probabilities are 0, so are their dk and dv rows.
    const CMat<S> qm = cmat(q, b, h, n.lq, n.d), km = cmat(k, b, h, kb, n.d), vm = cmat(v, b, h, kb, n.dv);
    const CMat<S> dom = cmat(dout, b, h, n.lq, n.dv);
    const S* p = probs ? probs + e * plen : nullptr;
    if (!p) {
      S* recomputed = Scratch<S>::sized(s.p, plen);
      probs_from_lse(n, c, mask, b, qm, km, lse + e * n.lq, recomputed);
      p = recomputed;
    }
    S* f = drop ? Scratch<S>::sized(s.factor, n.lk) : nullptr;
    const uint8_t* keep_head = keep ? keep + e * plen : nullptr;
    if (dv.data) {
      const S* pv = p;
      if (drop) {
        S* pd = Scratch<S>::sized(s.pd, plen);
        for (int64_t i = 0; i < n.lq; ++i) {
          dropout_row(n, c, b, h, i, kb, keep_head ? keep_head + i * n.lk : nullptr, f);
          for (int64_t j = 0; j < kb; ++j) pd[i * n.lk + j] = p[i * n.lk + j] * f[j];
        }
        pv = pd;
      }
      MMat<S> dvm = mmat(dv, b, h, n.lk, n.dv);
      product(dvm.topRows(kb), strided(pv, n.lq, kb, n.lk).transpose(), dom);
      dvm.bottomRows(n.lk - kb).setZero();
    }
    if (!dq.data && !dk.data) return;
    // dS [Lq, kb] (row stride Lk) overwrites dP row by row.
    S* ds = Scratch<S>::sized(s.pd, plen);
    product(strided(ds, n.lq, kb, n.lk), dom, vm.transpose());
    for (int64_t i = 0; i < n.lq; ++i) {
      S* dr = ds + i * n.lk;
      const int64_t len = visible_keys(c, mask, b, i);
      if (drop) {
        dropout_row(n, c, b, h, i, len, keep_head ? keep_head + i * n.lk : nullptr, f);
        Row<S>(dr, len) *= CRow<S>(f, len);
      }
      const CRow<S> pr(p + i * n.lk, len);
      Row<S> x(dr, len);
      const S dsum = (pr * x).sum();
      x = pr * (x - dsum) * scale;
      std::fill(dr + len, dr + kb, S(0));
    }
    const CMat<S> dsc = strided(static_cast<const S*>(ds), n.lq, kb, n.lk);
    if (dq.data) product(mmat(dq, b, h, n.lq, n.d), dsc, km);
    if (dk.data) {
      MMat<S> dkm = mmat(dk, b, h, n.lk, n.d);
      product(dkm.topRows(kb), dsc.transpose(), qm);
      dkm.bottomRows(n.lk - kb).setZero();
    }
  });
}

}  // namespace cpu
}  // namespace mamclip
