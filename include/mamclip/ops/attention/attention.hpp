#pragma once
// scaled_dot_product_attention (torch.nn.functional semantics) and its
// gradient, as one fused node.
//
// CPU: ops/attention/cpu.hpp, per (batch, head) with Eigen GEMMs; inputs whose
// rows are contiguous (any batch / head / row strides, e.g. the [B, L, H, D]
// projection viewed as [B, H, L, D]) are read in place. The node saves the
// probabilities P [B, H, Lq, Lk] (and the dropout mask as bytes): backward is
// then three GEMMs and one elementwise pass, cheaper than recomputing Q Kᵀ
// and the exponentials for the sequence lengths this library runs (<= 512).
//
// Outputs and input gradients are laid out like their inputs' heads: when q
// is a [B, L, H, D] buffer viewed as [B, H, L, D] (heads interleaved), the
// output is such a view too (FlashAttention's layout), so merging the heads
// back into [B, L, H·Dv] is a view, not a copy. Likewise for dq, dk, dv.
//
// Differences from torch: a query row that sees no key (all its keys padded,
// or masked by both masks) gives zeros and zero gradients instead of NaN.
// Backward is not differentiable itself (a fused kernel); running it with
// gradient recording on throws.
//
// Other devices call the kernels registered under
// "scaled_dot_product_attention" and "scaled_dot_product_attention_backward"
// (AttentionForwardKernel, AttentionBackwardKernel below); on CUDA these are
// ops/attention/cuda.cuh (flash kernels for half and bfloat16 at head dims
// 32, 64, 96, 128; reference kernels for float and double). They save the
// row lse instead of P, so memory stays O(L) per row.

#include <cmath>
#include <memory>
#include <type_traits>
#include <vector>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/autocast.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/attention/cpu.hpp"
#include "mamclip/ops/attention/tile.hpp"  // flash_head_dim: the shapes the 16-bit kernels take
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/shape/shape.hpp"  // Tensor::to<U>() for half and bfloat16

namespace mamclip {

// Device kernel contract. Pointers are device pointers in the layouts of
// HeadsView; key_padding_mask (in config) is [B, Lk] contiguous on the device.
// lse [B, H, Lq] float, contiguous: the log-sum-exp of each row of scaled,
// masked scores (-inf for a row that sees no key). The forward writes out and
// lse; the backward recomputes P from q, k and lse, and the dropout mask from
// (config.seed, config.offset) with attention_keeps(). Results must match
// cpu::attention_forward / cpu::attention_backward, the reference.
template <class T>
struct AttentionForwardArgs {
  AttentionDims dims;
  AttentionConfig config;
  HeadsView<const T> q, k, v;
  HeadsView<T> out;  // [B, H, Lq, Dv]
  float* lse;
};
template <class T>
struct AttentionBackwardArgs {
  AttentionDims dims;
  AttentionConfig config;
  HeadsView<const T> q, k, v, out, dout;
  const float* lse;
  HeadsView<T> dq, dk, dv;  // written, not accumulated; a null data pointer: not wanted
};
template <class T>
using AttentionForwardKernel = void(const AttentionForwardArgs<T>&);
template <class T>
using AttentionBackwardKernel = void(const AttentionBackwardArgs<T>&);

namespace detail {

inline constexpr const char* kSdpa = "scaled_dot_product_attention";

template <class T>
Tensor<T> dense_values(const Tensor<T>& x) {
  return x.is_contiguous() ? x.detach() : contiguous_copy(x);
}

// t [B, H, L, X] detached when its rows are contiguous (what the kernels read in place), else a contiguous copy.
template <class S>
Tensor<S> with_contiguous_rows(const Tensor<S>& t) {
  const int64_t l = t.size(2), x = t.size(3);
  const bool rows_contiguous = (x <= 1 || t.stride(3) == 1) && (l <= 1 || t.stride(2) >= x);
  return rows_contiguous ? t.detach() : contiguous_copy(t);
}

// The kernel view of a tensor that with_contiguous_rows returned.
template <class S>
HeadsView<const S> const_heads(const Tensor<S>& t) {
  return {t.data_ptr(), t.stride(0), t.stride(1), t.size(2) <= 1 ? t.size(3) : t.stride(2)};
}

template <class S>
HeadsView<S> mutable_heads(const Tensor<S>& t) {
  return {t.data_ptr(), t.stride(0), t.stride(1), t.size(2) <= 1 ? t.size(3) : t.stride(2)};
}

// Whether t [B, H, L, X] steps over heads faster than over rows (a [B, L, H, X] buffer).
template <class S>
bool heads_interleaved(const Tensor<S>& t) {
  return t.size(1) > 1 && t.size(2) > 1 && t.stride(1) < t.stride(2);
}

// An uninitialised [B, H, L, X] tensor, stored as [B, L, H, X] when `interleaved`.
template <class S>
Tensor<S> empty_heads(int64_t b, int64_t h, int64_t l, int64_t x, bool interleaved, Device device) {
  if (!interleaved) return Tensor<S>::empty({b, h, l, x}, device);
  Tensor<S> base = Tensor<S>::empty({b, l, h, x}, device);
  return Tensor<S>::from_storage(base.storage(), 0, {b, h, l, x}, {l * h * x, x, h * x, 1});
}

template <class T>
void sdpa_check(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const AttentionOptions& o) {
  MAMCLIP_CHECK(q.dim() == 4, shape_error, kSdpa, ": q has shape ", shape_str(q.shape()),
                "; expected a 4-D tensor [B, H, Lq, D]");
  MAMCLIP_CHECK(k.dim() == 4, shape_error, kSdpa, ": k has shape ", shape_str(k.shape()),
                "; expected a 4-D tensor [B, H, Lk, D]");
  MAMCLIP_CHECK(v.dim() == 4, shape_error, kSdpa, ": v has shape ", shape_str(v.shape()),
                "; expected a 4-D tensor [B, H, Lk, Dv]");
  MAMCLIP_CHECK(k.size(0) == q.size(0) && k.size(1) == q.size(1) && k.size(3) == q.size(3), shape_error, kSdpa,
                ": q has shape ", shape_str(q.shape()), " and k has shape ", shape_str(k.shape()),
                "; expected k [B, H, Lk, D] to match q [B, H, Lq, D] in B, H and D");
  MAMCLIP_CHECK(v.size(0) == k.size(0) && v.size(1) == k.size(1) && v.size(2) == k.size(2), shape_error, kSdpa,
                ": k has shape ", shape_str(k.shape()), " and v has shape ", shape_str(v.shape()),
                "; expected v [B, H, Lk, Dv] to match k [B, H, Lk, D] in B, H and Lk");
  const Tensor<bool>& m = o.key_padding_mask;
  if (m.defined()) {
    const Shape want{q.size(0), k.size(2)};
    MAMCLIP_CHECK(m.shape() == want, shape_error, kSdpa, ": key_padding_mask has shape ", shape_str(m.shape()),
                  "; expected [B, Lk] = ", shape_str(want), " (q has shape ", shape_str(q.shape()), ", k has shape ",
                  shape_str(k.shape()), ")");
  }
  MAMCLIP_CHECK(o.dropout_p >= 0 && o.dropout_p <= 1, value_error, kSdpa, ": dropout_p must be in [0, 1], got ",
                o.dropout_p);
  auto same_device = [&](const char* name, Device d) {
    MAMCLIP_CHECK(d == q.device(), device_error, kSdpa, ": expected all tensors on one device, but q is on ",
                  q.device().str(), " and ", name, " is on ", d.str());
  };
  same_device("k", k.device());
  same_device("v", v.device());
  if (m.defined()) same_device("key_padding_mask", m.device());
}

inline void sdpa_no_double_backward() {
  MAMCLIP_CHECK(!autograd::GradMode::enabled(), autograd_error, kSdpa,
                ": double backward is not supported (its backward is a fused kernel, not recorded); compose "
                "matmul and softmax instead where a second derivative is needed");
}

// CPU, S = float or double.
template <class S>
Tensor<S> sdpa_cpu(const Tensor<S>& q, const Tensor<S>& k, const Tensor<S>& v, const Tensor<bool>& mask,
                   AttentionConfig cfg) {
  const AttentionDims n{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  const Tensor<bool> mask_c = mask.defined() ? dense_values(mask) : Tensor<bool>();
  cfg.key_padding_mask = mask_c.defined() ? mask_c.data_ptr() : nullptr;
  const Tensor<S> hq = with_contiguous_rows(q), hk = with_contiguous_rows(k), hv = with_contiguous_rows(v);
  Tensor<S> out = empty_heads<S>(n.batch, n.heads, n.lq, n.dv, heads_interleaved(q), kCPU);
  const bool record = autograd::any_requires_grad(q, k, v);
  Tensor<S> probs = record ? Tensor<S>::empty({n.batch, n.heads, n.lq, n.lk}) : Tensor<S>();
  std::shared_ptr<std::vector<uint8_t>> keep;
  if (record && cfg.dropout_p > 0) keep = std::make_shared<std::vector<uint8_t>>(static_cast<size_t>(probs.numel()));
  cpu::attention_forward<S>(n, cfg, const_heads(hq), const_heads(hk), const_heads(hv), mutable_heads(out), record ? probs.data_ptr() : nullptr,
                            keep ? keep->data() : nullptr, nullptr);
  if (!record) return out;
  const bool iq = heads_interleaved(q), ik = heads_interleaved(k), iv = heads_interleaved(v);
  return autograd::record<S>(
      "ScaledDotProductAttentionBackward", {q, k, v}, out,
      [hq, hk, hv, probs, keep, mask_c, n, cfg, iq, ik, iv](const Tensor<S>& g, const std::vector<bool>& needs) {
        sdpa_no_double_backward();
        const Tensor<S> hg = with_contiguous_rows(g);
        std::vector<Tensor<S>> grads(3);
        if (needs[0]) grads[0] = empty_heads<S>(n.batch, n.heads, n.lq, n.d, iq, kCPU);
        if (needs[1]) grads[1] = empty_heads<S>(n.batch, n.heads, n.lk, n.d, ik, kCPU);
        if (needs[2]) grads[2] = empty_heads<S>(n.batch, n.heads, n.lk, n.dv, iv, kCPU);
        auto view = [](const Tensor<S>& t) { return t.defined() ? mutable_heads(t) : HeadsView<S>{}; };
        cpu::attention_backward<S>(n, cfg, const_heads(hq), const_heads(hk), const_heads(hv), const_heads(hg), probs.data_ptr(), nullptr, keep ? keep->data() : nullptr,
                                   view(grads[0]), view(grads[1]), view(grads[2]));
        return grads;
      });
}

template <class T>
Tensor<T> sdpa_device(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<bool>& mask,
                      AttentionConfig cfg) {
  auto* forward = require_kernel<AttentionForwardKernel<T>>(kSdpa, dtype_v<T>, q.device());
  const bool record = autograd::any_requires_grad(q, k, v);
  // Looked up now, so that a missing backward kernel fails at the forward call.
  auto* backward = record ? require_kernel<AttentionBackwardKernel<T>>("scaled_dot_product_attention_backward",
                                                                       dtype_v<T>, q.device())
                          : nullptr;
  const AttentionDims n{q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), v.size(3)};
  const Tensor<bool> mask_c = mask.defined() ? dense_values(mask) : Tensor<bool>();
  cfg.key_padding_mask = mask_c.defined() ? mask_c.data_ptr() : nullptr;
  const Tensor<T> hq = with_contiguous_rows(q), hk = with_contiguous_rows(k), hv = with_contiguous_rows(v);
  Tensor<T> out = empty_heads<T>(n.batch, n.heads, n.lq, n.dv, heads_interleaved(q), q.device());
  Tensor<float> lse = Tensor<float>::empty({n.batch, n.heads, n.lq}, q.device());
  forward({n, cfg, const_heads(hq), const_heads(hk), const_heads(hv), mutable_heads(out), lse.data_ptr()});
  if (!record) return out;
  const bool iq = heads_interleaved(q), ik = heads_interleaved(k), iv = heads_interleaved(v);
  return autograd::record<T>(
      "ScaledDotProductAttentionBackward", {q, k, v}, out,
      [hq, hk, hv, out = out.detach(), lse, mask_c, n, cfg, iq, ik, iv, backward](const Tensor<T>& g,
                                                                                  const std::vector<bool>& needs) {
        sdpa_no_double_backward();
        const Tensor<T> hg = with_contiguous_rows(g);
        const Device dev = out.device();
        std::vector<Tensor<T>> grads(3);
        if (needs[0]) grads[0] = empty_heads<T>(n.batch, n.heads, n.lq, n.d, iq, dev);
        if (needs[1]) grads[1] = empty_heads<T>(n.batch, n.heads, n.lk, n.d, ik, dev);
        if (needs[2]) grads[2] = empty_heads<T>(n.batch, n.heads, n.lk, n.dv, iv, dev);
        auto view = [](const Tensor<T>& t) { return t.defined() ? mutable_heads(t) : HeadsView<T>{}; };
        backward({n, cfg, const_heads(hq), const_heads(hk), const_heads(hv), const_heads(out), const_heads(hg), lse.data_ptr(),
                  view(grads[0]), view(grads[1]), view(grads[2])});
        return grads;
      });
}

}  // namespace detail

template <class T>
Tensor<T> scaled_dot_product_attention(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v,
                                       const AttentionOptions& options, Generator& gen) {
  static_assert(is_floating_v<T>, "scaled_dot_product_attention: T must be float, double, half or bfloat16");
  detail::sdpa_check(q, k, v, options);
  // On a device, autocast to 16 bits only where the tensor-core kernels take the head dim; other
  // shapes stay in T on the reference kernels rather than fail. The CPU computes any shape.
  const bool half_takes_shape =
      q.device().is_cpu() || (attention_tile::flash_head_dim(q.size(3)) && v.size(3) == q.size(3));
  if (autocast_applies<T>(q.device()) && half_takes_shape)
    return autocast_dispatch(q.device(), [&](auto u) {
      using U = decltype(u);
      return scaled_dot_product_attention(q.template to<U>(), k.template to<U>(), v.template to<U>(), options, gen)
          .template to<T>();
    });
  AttentionConfig cfg;
  cfg.scale = options.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  cfg.causal = options.causal;
  cfg.dropout_p = options.dropout_p;
  if (cfg.dropout_p > 0) {
    // One stream per call; the mask is a function of (seed, offset, element index).
    cfg.seed = gen.seed();
    cfg.offset = gen.next_offset();
  }
  if (!q.device().is_cpu()) return detail::sdpa_device(q, k, v, options.key_padding_mask, cfg);
  if constexpr (!std::is_same_v<T, acc_t<T>>) {
    // half / bfloat16: compute in float; the casts carry the gradient.
    using A = acc_t<T>;
    return detail::sdpa_cpu<A>(q.template to<A>(), k.template to<A>(), v.template to<A>(), options.key_padding_mask,
                               cfg)
        .template to<T>();
  } else {
    return detail::sdpa_cpu<T>(q, k, v, options.key_padding_mask, cfg);
  }
}

}  // namespace mamclip
