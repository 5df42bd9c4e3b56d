#pragma once
// MultiheadAttention with torch.nn.MultiheadAttention's parameters, init and
// forward semantics, and multi_head_attention_forward, its functional form
// (torch.nn.functional.multi_head_attention_forward) for any float type.
//
// Parameters (PyTorch names, so state dicts load both ways):
//   in_proj_weight  [3E, E]  rows [0, E) project queries, [E, 2E) keys, [2E, 3E) values
//   in_proj_bias    [3E]     (absent with bias = false)
//   out_proj.weight [E, E], out_proj.bias [E]
// Only the packed layout (kdim == vdim == embed_dim) exists; PyTorch's
// separate q_proj_weight / k_proj_weight / v_proj_weight layout, add_bias_kv
// and add_zero_attn are refused or not offered.
//
// Layouts: sequence-first [L, N, E] by default (PyTorch's default), [N, L, E]
// with batch_first, unbatched [L, E] either way. L is the query length, S the
// key length, H the number of heads, D = E / H.
//
// Masks keep PyTorch's meanings, which are the opposite of
// scaled_dot_product_attention's key_padding_mask:
//   key_padding_mask  bool [N, S] ([S] unbatched): true = IGNORE this key
//   attn_mask         bool [L, S] or [N * H, L, S]: true = NOT allowed to attend
//   attn_bias         T    [L, S] or [N * H, L, S]: added to the scores (PyTorch's
//                      float attn_mask; -inf blocks)
//   is_causal         query i attends keys j <= i (top-left aligned). Unlike
//                      PyTorch it needs no attn_mask; given with one, both apply.
//
// Two paths, same results:
//   - fused: need_weights == false and neither attn_mask nor attn_bias; the
//     heads go through scaled_dot_product_attention (one node, no [N, H, L, S]
//     tensor kept beyond what it saves), reading the projections in place;
//   - explicit: scores, softmax, dropout, matmul as separate ops, which also
//     returns the attention weights (after dropout, as PyTorch does), averaged
//     over heads ([N, L, S]) or per head ([N, H, L, S]).
// A query row whose keys are all blocked by the bool masks (or causality) gives
// zeros and zero gradients on both paths (PyTorch gives NaN); a row blocked
// only through -inf in attn_bias gives NaN, as in PyTorch.
//
// The fused path's attention backward is a fused kernel (no double backward);
// with need_weights = true the whole forward is made of twice-differentiable ops.

#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "mamclip/nn/init.hpp"
#include "mamclip/nn/linear.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/attention/attention.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/matmul/matmul.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/shape/shape.hpp"
#include "mamclip/ops/softmax/softmax.hpp"

namespace mamclip::nn {

// Construction-time settings (torch.nn.MultiheadAttention's keywords).
struct MultiheadAttentionOptions {
  double dropout = 0.0;       // on the attention probabilities, while training
  bool bias = true;           // in_proj_bias and out_proj.bias
  bool batch_first = false;   // [N, L, E] instead of [L, N, E]
  std::optional<int64_t> kdim;  // must equal embed_dim when given (packed layout only)
  std::optional<int64_t> vdim;  // likewise
};

// Per-call arguments (torch.nn.MultiheadAttention.forward's keywords).
template <class T>
struct MultiheadAttentionArgs {
  Tensor<bool> key_padding_mask;  // [N, S] or [S]; true = ignore the key
  Tensor<bool> attn_mask;         // [L, S] or [N * H, L, S]; true = not allowed
  Tensor<T> attn_bias;            // [L, S] or [N * H, L, S]; added to the scores
  bool is_causal = false;
  bool need_weights = true;          // PyTorch's default; false takes the fused path
  bool average_attn_weights = true;  // weights [N, L, S] (mean over heads) or [N, H, L, S]
};

template <class T>
struct MultiheadAttentionOutput {
  Tensor<T> output;   // the query's layout: [L, N, E], [N, L, E] or [L, E]
  Tensor<T> weights;  // [N, L, S] or [N, H, L, S] ([L, S] / [H, L, S] unbatched); undefined unless need_weights
};

// The parameters multi_head_attention_forward reads; biases may be undefined.
template <class T>
struct MultiheadAttentionParams {
  Tensor<T> in_proj_weight;   // [3E, E]
  Tensor<T> in_proj_bias;     // [3E]
  Tensor<T> out_proj_weight;  // [E, E]
  Tensor<T> out_proj_bias;    // [E]
};

namespace detail {

inline void mha_check_mask_shape(const std::string& who, const char* name, const Shape& s, int64_t n, int64_t h, int64_t l,
                          int64_t len_s) {
  const bool ok = (s.size() == 2 && s == Shape{l, len_s}) || (s.size() == 3 && s == Shape{n * h, l, len_s});
  MAMCLIP_CHECK(ok, shape_error, who, ": ", name, " has shape ", shape_str(s), "; expected [L, S] = ",
                shape_str(Shape{l, len_s}), " or [N * num_heads, L, S] = ", shape_str(Shape{n * h, l, len_s}));
}

template <class T>
void mha_check(const std::string& who, const Tensor<T>& query, const Tensor<T>& key, const Tensor<T>& value,
               int64_t num_heads, const MultiheadAttentionParams<T>& p, const MultiheadAttentionArgs<T>& a,
               bool batch_first) {
  MAMCLIP_CHECK(query.defined() && key.defined() && value.defined(), value_error, who,
                ": query, key and value must be defined tensors");
  MAMCLIP_CHECK(query.dim() == 2 || query.dim() == 3, shape_error, who, ": query has shape ", shape_str(query.shape()),
                "; expected ", batch_first ? "[N, L, E]" : "[L, N, E]", " or unbatched [L, E]");
  MAMCLIP_CHECK(key.dim() == query.dim() && value.dim() == query.dim(), shape_error, who, ": query has shape ",
                shape_str(query.shape()), ", key ", shape_str(key.shape()), " and value ", shape_str(value.shape()),
                "; expected all batched (3-D) or all unbatched (2-D)");
  MAMCLIP_CHECK(p.in_proj_weight.defined() && p.in_proj_weight.dim() == 2 &&
                    p.in_proj_weight.size(0) == 3 * p.in_proj_weight.size(1),
                shape_error, who, ": in_proj_weight has shape ",
                p.in_proj_weight.defined() ? shape_str(p.in_proj_weight.shape()) : std::string("(undefined)"),
                "; expected [3 * embed_dim, embed_dim]");
  const int64_t e = p.in_proj_weight.size(1);
  MAMCLIP_CHECK(num_heads > 0 && e % num_heads == 0, value_error, who, ": embed_dim ", e,
                " must be divisible by num_heads ", num_heads);
  MAMCLIP_CHECK(query.size(-1) == e, shape_error, who, ": query has shape ", shape_str(query.shape()),
                "; expected the last dim to be embed_dim = ", e);
  MAMCLIP_CHECK(key.size(-1) == e && value.size(-1) == e, shape_error, who, ": key has shape ",
                shape_str(key.shape()), " and value ", shape_str(value.shape()),
                "; expected their last dim to be embed_dim = ", e, " (kdim and vdim other than embed_dim are not supported)");
  const bool batched = query.dim() == 3;
  const int64_t bdim = batch_first ? 0 : 1, sdim = batch_first ? 1 : 0;
  if (batched) {
    MAMCLIP_CHECK(key.size(bdim) == query.size(bdim) && value.size(bdim) == query.size(bdim), shape_error, who,
                  ": query has shape ", shape_str(query.shape()), ", key ", shape_str(key.shape()), " and value ",
                  shape_str(value.shape()), "; expected one batch size (dim ", bdim, batch_first ? ", batch_first)" : ")");
  }
  const int64_t ks = batched ? sdim : 0;
  MAMCLIP_CHECK(key.size(ks) == value.size(ks), shape_error, who, ": key has shape ", shape_str(key.shape()),
                " and value ", shape_str(value.shape()), "; expected the same sequence length S");
  const int64_t n = batched ? query.size(bdim) : 1, l = query.size(batched ? sdim : 0), s = key.size(ks);
  if (p.in_proj_bias.defined())
    MAMCLIP_CHECK(p.in_proj_bias.shape() == Shape{3 * e}, shape_error, who, ": in_proj_bias has shape ",
                  shape_str(p.in_proj_bias.shape()), "; expected [", 3 * e, "]");
  MAMCLIP_CHECK(p.out_proj_weight.defined() && p.out_proj_weight.shape() == (Shape{e, e}), shape_error, who,
                ": out_proj.weight has shape ",
                p.out_proj_weight.defined() ? shape_str(p.out_proj_weight.shape()) : std::string("(undefined)"),
                "; expected [", e, ", ", e, "]");
  if (p.out_proj_bias.defined())
    MAMCLIP_CHECK(p.out_proj_bias.shape() == Shape{e}, shape_error, who, ": out_proj.bias has shape ",
                  shape_str(p.out_proj_bias.shape()), "; expected [", e, "]");
  if (a.key_padding_mask.defined()) {
    const Shape want = batched ? Shape{n, s} : Shape{s};
    MAMCLIP_CHECK(a.key_padding_mask.shape() == want, shape_error, who, ": key_padding_mask has shape ",
                  shape_str(a.key_padding_mask.shape()), "; expected ", batched ? "[N, S] = " : "[S] = ",
                  shape_str(want));
  }
  if (a.attn_mask.defined()) mha_check_mask_shape(who, "attn_mask", a.attn_mask.shape(), n, num_heads, l, s);
  if (a.attn_bias.defined()) mha_check_mask_shape(who, "attn_bias", a.attn_bias.shape(), n, num_heads, l, s);
}

// The bool masks and causality merged on the host into "blocked" [Nm, Hm, L, S]
// (Nm in {1, N}, Hm in {1, H}; broadcast over the scores) and the rows in
// which every key is blocked, [Nm, Hm, L, 1]. Those rows are left out of
// `blocked` (their scores stay finite, so softmax stays finite) and zeroed
// after the softmax instead.
struct MhaBlocked {
  Tensor<bool> partial;     // blocked, without the fully blocked rows; undefined when nothing is blocked
  Tensor<bool> empty_rows;  // undefined when no row is fully blocked
};

template <class T>
MhaBlocked mha_blocked(const MultiheadAttentionArgs<T>& a, int64_t n, int64_t h, int64_t l, int64_t s, Device device) {
  const bool per_head = a.attn_mask.defined() && a.attn_mask.dim() == 3;
  if (!a.attn_mask.defined() && !a.key_padding_mask.defined() && !a.is_causal) return {};
  const int64_t nm = (per_head || a.key_padding_mask.defined()) ? n : 1, hm = per_head ? h : 1;
  const std::vector<bool> am = a.attn_mask.defined() ? a.attn_mask.to_vector() : std::vector<bool>();
  const std::vector<bool> kp = a.key_padding_mask.defined() ? a.key_padding_mask.to_vector() : std::vector<bool>();
  std::vector<bool> blocked(static_cast<size_t>(nm * hm * l * s)), empty(static_cast<size_t>(nm * hm * l));
  bool any_blocked = false, any_empty = false;
  for (int64_t b = 0; b < nm; ++b)
    for (int64_t hh = 0; hh < hm; ++hh)
      for (int64_t i = 0; i < l; ++i) {
        const int64_t row = (b * hm + hh) * l + i;
        bool all = true, some = false;
        for (int64_t j = 0; j < s; ++j) {
          bool x = a.is_causal && j > i;
          if (!am.empty()) x = x || am[static_cast<size_t>(per_head ? ((b * h + hh) * l + i) * s + j : i * s + j)];
          if (!kp.empty()) x = x || kp[static_cast<size_t>(b * s + j)];
          blocked[static_cast<size_t>(row * s + j)] = x;
          all = all && x;
          some = some || x;
        }
        if (all)
          for (int64_t j = 0; j < s; ++j) blocked[static_cast<size_t>(row * s + j)] = false;
        empty[static_cast<size_t>(row)] = all;
        any_empty = any_empty || all;
        any_blocked = any_blocked || (some && !all);
      }
  MhaBlocked out;
  if (any_blocked) out.partial = from_vector<bool>(blocked, Shape{nm, hm, l, s}, device);
  if (any_empty) out.empty_rows = from_vector<bool>(empty, Shape{nm, hm, l, 1}, device);
  return out;
}

template <class T>
MultiheadAttentionOutput<T> mha_forward(const std::string& who, const Tensor<T>& query, const Tensor<T>& key,
                                        const Tensor<T>& value, int64_t num_heads, const MultiheadAttentionParams<T>& p,
                                        const MultiheadAttentionArgs<T>& args, const MultiheadAttentionOptions& options,
                                        bool training, Generator& gen) {
  mha_check(who, query, key, value, num_heads, p, args, options.batch_first);
  MAMCLIP_CHECK(options.dropout >= 0 && options.dropout <= 1, value_error, who, ": dropout must be in [0, 1], got ",
                options.dropout);
  const bool batched = query.dim() == 3;
  // Everything below works on [N, L, E] views.
  auto to_nle = [&](const Tensor<T>& x) {
    return !batched ? x.unsqueeze(0) : (options.batch_first ? x : x.transpose(0, 1));
  };
  const Tensor<T> qn = to_nle(query), kn = to_nle(key);
  const int64_t n = qn.size(0), l = qn.size(1), s = kn.size(1), e = qn.size(2), h = num_heads, d = e / h;

  // Projections as [N, len, H, D] views of the GEMM outputs (no copies).
  Tensor<T> q, k, v;
  const bool self_attention = query.is_same(key) && key.is_same(value);
  if (self_attention) {
    const Tensor<T> qkv = linear(qn, p.in_proj_weight, p.in_proj_bias).view({n, l, 3, h, d});
    q = qkv.select(2, 0), k = qkv.select(2, 1), v = qkv.select(2, 2);
  } else {
    auto rows = [](const Tensor<T>& t, int64_t start, int64_t len) {
      return t.defined() ? t.narrow(0, start, len) : Tensor<T>();
    };
    q = linear(qn, rows(p.in_proj_weight, 0, e), rows(p.in_proj_bias, 0, e)).view({n, l, h, d});
    if (key.is_same(value)) {
      const Tensor<T> kv = linear(kn, rows(p.in_proj_weight, e, 2 * e), rows(p.in_proj_bias, e, 2 * e)).view({n, s, 2, h, d});
      k = kv.select(2, 0), v = kv.select(2, 1);
    } else {
      k = linear(kn, rows(p.in_proj_weight, e, e), rows(p.in_proj_bias, e, e)).view({n, s, h, d});
      v = linear(to_nle(value), rows(p.in_proj_weight, 2 * e, e), rows(p.in_proj_bias, 2 * e, e)).view({n, s, h, d});
    }
  }
  const Tensor<T> qh = q.permute({0, 2, 1, 3}), kh = k.permute({0, 2, 1, 3}), vh = v.permute({0, 2, 1, 3});
  const double p_drop = training ? options.dropout : 0.0;

  Tensor<T> heads, weights;  // heads [N, H, L, D]
  const bool fused = !args.need_weights && !args.attn_mask.defined() && !args.attn_bias.defined();
  if (fused) {
    AttentionOptions ao;
    ao.causal = args.is_causal;
    ao.dropout_p = p_drop;
    if (args.key_padding_mask.defined()) {
      std::vector<bool> attend = args.key_padding_mask.to_vector();
      attend.flip();  // PyTorch's true = ignore -> the op's true = attend
      ao.key_padding_mask = from_vector<bool>(attend, Shape{n, s}, query.device());
    }
    heads = scaled_dot_product_attention(qh, kh, vh, ao, gen);
  } else {
    Tensor<T> scores = mul(matmul(qh, kh.transpose(-1, -2)), 1.0 / std::sqrt(static_cast<double>(d)));  // [N, H, L, S]
    if (args.attn_bias.defined())
      scores = add(scores, args.attn_bias.dim() == 2 ? args.attn_bias : args.attn_bias.view({n, h, l, s}));
    const MhaBlocked blocked = mha_blocked(args, n, h, l, s, query.device());
    if (blocked.partial.defined())
      scores = masked_fill(scores, blocked.partial, -std::numeric_limits<double>::infinity());
    Tensor<T> probs = softmax(scores, -1);
    if (blocked.empty_rows.defined()) probs = masked_fill(probs, blocked.empty_rows, 0.0);
    probs = dropout(probs, p_drop, p_drop > 0, gen);
    heads = matmul(probs, vh);
    if (args.need_weights) weights = args.average_attn_weights ? mean(probs, {1}) : probs;
  }
  // [N, H, L, D] -> [N, L, E]: a view when the heads are interleaved (the fused path's layout).
  const Tensor<T> merged = heads.permute({0, 2, 1, 3}).reshape({n, l, e});
  Tensor<T> out = linear(merged, p.out_proj_weight, p.out_proj_bias);
  out = !batched ? out.squeeze(0) : (options.batch_first ? out : out.transpose(0, 1));
  if (weights.defined() && !batched) weights = weights.squeeze(0);
  return {out, weights};
}

}  // namespace detail

// torch.nn.functional.multi_head_attention_forward for the packed layout:
// query [L, N, E] (or [N, L, E] with options.batch_first, or [L, E]), key and
// value [S, N, E] likewise. When query, key and value are one tensor (self
// attention) the three projections are one GEMM; when key and value are one
// tensor, theirs are. Dropout applies when `training` and options.dropout > 0.
template <class T>
MultiheadAttentionOutput<T> multi_head_attention_forward(const Tensor<T>& query, const Tensor<T>& key,
                                                         const Tensor<T>& value, int64_t num_heads,
                                                         const MultiheadAttentionParams<T>& p,
                                                         const MultiheadAttentionArgs<T>& args = {},
                                                         const MultiheadAttentionOptions& options = {},
                                                         bool training = false, Generator& gen = default_generator()) {
  return detail::mha_forward("multi_head_attention_forward", query, key, value, num_heads, p, args, options, training,
                             gen);
}

class MultiheadAttention : public Module {
 public:
  // in_proj_weight ~ xavier_uniform_ over [3E, E] (as one matrix, as PyTorch does), in_proj_bias = 0,
  // out_proj.weight as nn.Linear (U(-1/sqrt(E), 1/sqrt(E))), out_proj.bias = 0. `gen` draws the
  // initial weights and, while training, the dropout masks; it must outlive the module.
  MultiheadAttention(int64_t embed_dim, int64_t num_heads, MultiheadAttentionOptions options = {},
                     Generator& gen = default_generator())
      : embed_dim_(embed_dim), num_heads_(num_heads), options_(options), gen_(&gen) {
    MAMCLIP_CHECK(embed_dim > 0 && num_heads > 0, value_error,
                  "MultiheadAttention: embed_dim and num_heads must be positive, got embed_dim=", embed_dim,
                  ", num_heads=", num_heads);
    MAMCLIP_CHECK(embed_dim % num_heads == 0, value_error, "MultiheadAttention: embed_dim ", embed_dim,
                  " must be divisible by num_heads ", num_heads);
    MAMCLIP_CHECK(options.dropout >= 0 && options.dropout <= 1, value_error,
                  "MultiheadAttention: dropout must be in [0, 1], got ", options.dropout);
    const int64_t kdim = options.kdim.value_or(embed_dim), vdim = options.vdim.value_or(embed_dim);
    MAMCLIP_CHECK(kdim == embed_dim && vdim == embed_dim, value_error, "MultiheadAttention: kdim=", kdim,
                  ", vdim=", vdim, " differ from embed_dim=", embed_dim,
                  "; only the packed in_proj_weight layout (kdim == vdim == embed_dim) is supported");
    // PyTorch's draw order: out_proj's Linear init, then xavier on in_proj_weight.
    auto proj = std::make_shared<Linear>(embed_dim, embed_dim, options.bias, gen);
    Tensor<float> w = empty<float>({3 * embed_dim, embed_dim});
    init::xavier_uniform_(w, 1.0, gen);
    in_proj_weight = register_parameter("in_proj_weight", w);
    if (options.bias) {
      in_proj_bias = register_parameter("in_proj_bias", zeros<float>({3 * embed_dim}));
      init::zeros_(proj->bias);
    }
    out_proj = register_module("out_proj", proj);
  }

  std::string type_name() const override { return "MultiheadAttention"; }
  std::string extra_repr() const override {
    std::ostringstream os;
    os << "embed_dim=" << embed_dim_ << ", num_heads=" << num_heads_ << ", dropout=" << options_.dropout
       << ", bias=" << (options_.bias ? "true" : "false") << ", batch_first=" << (options_.batch_first ? "true" : "false");
    return os.str();
  }
  int64_t embed_dim() const { return embed_dim_; }
  int64_t num_heads() const { return num_heads_; }
  int64_t head_dim() const { return embed_dim_ / num_heads_; }
  bool batch_first() const { return options_.batch_first; }
  double dropout() const { return options_.dropout; }

  // Pass one tensor as query, key and value for self attention (one fused projection GEMM).
  MultiheadAttentionOutput<float> forward(const Tensor<float>& query, const Tensor<float>& key,
                                          const Tensor<float>& value, const MultiheadAttentionArgs<float>& args = {}) {
    return detail::mha_forward<float>(name(), query, key, value, num_heads_, params(), args, options_, is_training(),
                                      *gen_);
  }
  MultiheadAttentionOutput<float> operator()(const Tensor<float>& query, const Tensor<float>& key,
                                             const Tensor<float>& value, const MultiheadAttentionArgs<float>& args = {}) {
    return forward(query, key, value, args);
  }

  MultiheadAttentionParams<float> params() const {
    return {in_proj_weight, in_proj_bias, out_proj->weight, out_proj->bias};
  }

  Tensor<float> in_proj_weight;  // [3E, E]
  Tensor<float> in_proj_bias;    // [3E]; undefined with bias = false
  std::shared_ptr<Linear> out_proj;

 private:
  std::string name() const {
    return "MultiheadAttention(embed_dim=" + std::to_string(embed_dim_) + ", num_heads=" + std::to_string(num_heads_) +
           ")";
  }

  int64_t embed_dim_, num_heads_;
  MultiheadAttentionOptions options_;
  Generator* gen_;
};

}  // namespace mamclip::nn
