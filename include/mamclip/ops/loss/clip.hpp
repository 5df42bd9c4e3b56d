#pragma once
// clip_loss: the symmetric CLIP / InfoNCE contrastive loss, one fused node.
//
//   image_features I [Bi, D], text_features T [Bt, D], logit_scale [] or [1]
//   (the LOG of the scale, as open_clip's and MAM-CLIP's parameter), options:
//   max_logit_scale (clamp before exp), label_offset / image_offset / batch.
//
//   s = exp(min(logit_scale, max_logit_scale)),  S = s · I Tᵀ   [Bi, Bt]
//   pair i (i < B) = (image row io + i, text row to + i), io = image_offset, to = label_offset
//   loss = ½ · mean_i CE(S[io + i, :], to + i)  +  ½ · mean_i CE(S[:, to + i], io + i)
//
// B = options.batch, default Bi - image_offset. With Bi == Bt == B and zero
// offsets this is open_clip's ClipLoss without gathering:
// (CE(logits, arange) + CE(logits.T, arange)) / 2.
//
// Gathered negatives (data parallel, rank r of N, local batch B):
//  - local images, all texts: clip_loss(I_local [B, D], T_all [N·B, D], ls,
//    {.label_offset = r·B}): each local image is scored against every text;
//    each local text against the B local images.
//  - open_clip's local_loss with gathered features (gather_with_grad): pass
//    I_all and T_all with image_offset = label_offset = r·B and batch = B.
//    The local images see all N·B texts (logits_per_image = I_local T_allᵀ) and
//    the local texts see all N·B images (logits_per_text = T_local I_allᵀ),
//    exactly open_clip's two cross-entropies; the gradient flows into every
//    row of I_all and T_all, as through open_clip's gather.
// Features are used as given: callers L2-normalise them (normalize()).
//
// The node saves the inputs and one log-sum-exp per row and per column of the
// local pairs (O(B) memory); backward recomputes the logits blockwise. The
// logits are never materialised, on the CPU (clip_cpu.hpp, blocks of 64 x
// 1024) or on a device (the kernels registered under "clip_loss" and
// "clip_loss_backward", ClipLossForwardKernel / ClipLossBackwardKernel in
// clip_cpu.hpp; ops/loss/cuda.cuh for CUDA). half and bfloat16 compute in float
// on the CPU. The backward is not differentiable itself: running it with
// gradient recording on throws.

#include <cmath>
#include <type_traits>
#include <vector>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/autograd/node.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/tensor_data.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/loss/clip_cpu.hpp"
#include "mamclip/ops/reduce/reduce.hpp"  // contiguous_values
#include "mamclip/ops/shape/shape.hpp"  // Tensor::to<U>() for half and bfloat16

namespace mamclip {

namespace detail {

inline constexpr const char* kClipLoss = "clip_loss";

template <class T>
ClipLossDims clip_loss_check(const Tensor<T>& img, const Tensor<T>& txt, const Tensor<T>& ls, const ClipLossOptions& o) {
  MAMCLIP_CHECK(img.dim() == 2, shape_error, kClipLoss, ": image_features has shape ", shape_str(img.shape()),
                "; expected a 2-D tensor [images, D]");
  MAMCLIP_CHECK(txt.dim() == 2, shape_error, kClipLoss, ": text_features has shape ", shape_str(txt.shape()),
                "; expected a 2-D tensor [texts, D]");
  MAMCLIP_CHECK(img.size(1) == txt.size(1), shape_error, kClipLoss, ": image_features has shape ",
                shape_str(img.shape()), " and text_features has shape ", shape_str(txt.shape()),
                "; expected the same feature dim D");
  MAMCLIP_CHECK(ls.dim() <= 1 && ls.numel() == 1, shape_error, kClipLoss, ": logit_scale has shape ",
                shape_str(ls.shape()), "; expected a scalar ([] or [1])");
  MAMCLIP_CHECK(txt.device() == img.device() && ls.device() == img.device(), device_error, kClipLoss,
                ": expected all tensors on one device, but image_features is on ", img.device().str(),
                ", text_features on ", txt.device().str(), " and logit_scale on ", ls.device().str());
  MAMCLIP_CHECK(!o.max_logit_scale || !std::isnan(*o.max_logit_scale), value_error, kClipLoss,
                ": max_logit_scale is NaN");
  ClipLossDims n;
  n.images = img.size(0);
  n.texts = txt.size(0);
  n.dim = img.size(1);
  n.image_offset = o.image_offset;
  n.text_offset = o.label_offset;
  MAMCLIP_CHECK(o.image_offset >= 0 && o.image_offset < n.images, value_error, kClipLoss, ": image_offset = ",
                o.image_offset, " is outside [0, ", n.images, ") (image_features has shape ", shape_str(img.shape()), ")");
  n.batch = o.batch.value_or(n.images - o.image_offset);
  MAMCLIP_CHECK(n.batch >= 1 && o.image_offset + n.batch <= n.images, value_error, kClipLoss, ": batch = ", n.batch,
                " with image_offset = ", o.image_offset, " needs rows [", o.image_offset, ", ", o.image_offset + n.batch,
                ") of image_features, which has ", n.images, " rows (expected 1 <= batch <= images - image_offset)");
  MAMCLIP_CHECK(o.label_offset >= 0 && o.label_offset + n.batch <= n.texts, value_error, kClipLoss,
                ": label_offset = ", o.label_offset, " with batch = ", n.batch, " needs rows [", o.label_offset, ", ",
                o.label_offset + n.batch, ") of text_features, which has ", n.texts,
                " rows (expected 0 <= label_offset <= texts - batch)");
  return n;
}

// x itself (detached) when its rows are contiguous, else a contiguous copy; and its leading dim.
template <class T>
std::pair<Tensor<T>, int64_t> clip_rows(const Tensor<T>& x) {
  const int64_t r = x.size(0), c = x.size(1);
  const bool ok = (c <= 1 || x.stride(1) == 1) && (r <= 1 || x.stride(0) >= c);
  Tensor<T> t = ok ? x.detach() : contiguous_copy(x);
  return {t, r <= 1 ? c : t.stride(0)};
}

inline void clip_no_double_backward() {
  MAMCLIP_CHECK(!autograd::GradMode::enabled(), autograd_error, kClipLoss,
                ": double backward is not supported (its backward is a fused kernel, not recorded); compose matmul "
                "and cross_entropy instead where a second derivative is needed");
}

// The one scalar of logit_scale as a 0-element-offset pointer target.
template <class T>
Tensor<T> clip_scale_values(const Tensor<T>& ls) {
  return contiguous_values(ls.reshape({1}));
}

// S = float or double on the CPU; T on a device with registered kernels.
template <class T>
Tensor<T> clip_loss_impl(const Tensor<T>& img, const Tensor<T>& txt, const Tensor<T>& ls, const ClipLossDims& n,
                         double max_ls) {
  using A = acc_t<T>;
  const bool on_cpu = img.device().is_cpu();
  ClipLossForwardKernel<T>* forward = nullptr;
  ClipLossBackwardKernel<T>* backward = nullptr;
  const bool record = autograd::any_requires_grad(img, txt, ls);
  if (!on_cpu) {
    forward = require_kernel<ClipLossForwardKernel<T>>(kClipLoss, dtype_v<T>, img.device());
    // Looked up now, so that a missing backward kernel fails at the forward call.
    if (record) backward = require_kernel<ClipLossBackwardKernel<T>>("clip_loss_backward", dtype_v<T>, img.device());
  } else if constexpr (std::is_same_v<T, A>) {
    forward = &cpu::clip_loss_forward<T>;
    backward = &cpu::clip_loss_backward<T>;
  } else {
    throw device_error(str_cat(kClipLoss, ": half and bfloat16 reach the CPU kernels only as float"));  // clip_loss converts
  }
  const Device dev = img.device();
  const auto ri = clip_rows(img), rt = clip_rows(txt);
  const Tensor<T> hi = ri.first, ht = rt.first;
  const int64_t ild = ri.second, tld = rt.second;
  const Tensor<T> hs = clip_scale_values(ls);
  Tensor<A> row_lse = Tensor<A>::empty({n.batch}, dev), col_lse = Tensor<A>::empty({n.batch}, dev);
  Tensor<T> loss = Tensor<T>::empty({}, dev);
  forward({n, max_ls, hi.data_ptr(), ild, ht.data_ptr(), tld, hs.data_ptr(), loss.data_ptr(), row_lse.data_ptr(),
           col_lse.data_ptr()});
  if (!record) return loss;
  return autograd::record<T>(
      "ClipLossBackward", {img, txt, ls}, loss,
      [hi, ild, ht, tld, hs, row_lse, col_lse, n, max_ls, backward, dev, ls_shape = ls.shape()](
          const Tensor<T>& g, const std::vector<bool>& needs) {
        clip_no_double_backward();
        const Tensor<T> hg = contiguous_values(g);
        std::vector<Tensor<T>> grads(3);
        if (needs[0]) grads[0] = Tensor<T>::empty({n.images, n.dim}, dev);
        if (needs[1]) grads[1] = Tensor<T>::empty({n.texts, n.dim}, dev);
        if (needs[2]) grads[2] = Tensor<T>::empty(ls_shape, dev);
        auto ptr = [](const Tensor<T>& t) { return t.defined() ? t.data_ptr() : nullptr; };
        backward({n, max_ls, hi.data_ptr(), ild, ht.data_ptr(), tld, hs.data_ptr(), hg.data_ptr(), row_lse.data_ptr(),
                  col_lse.data_ptr(), ptr(grads[0]), ptr(grads[1]), ptr(grads[2])});
        return grads;
      });
}

}  // namespace detail

template <class T>
Tensor<T> clip_loss(const Tensor<T>& image_features, const Tensor<T>& text_features, const Tensor<T>& logit_scale,
                    const ClipLossOptions& options) {
  static_assert(is_floating_v<T>, "clip_loss: T must be float, double, half or bfloat16");
  const ClipLossDims n = detail::clip_loss_check(image_features, text_features, logit_scale, options);
  const double max_ls = options.max_logit_scale.value_or(INFINITY);
  if constexpr (!std::is_same_v<T, acc_t<T>>) {
    if (image_features.device().is_cpu()) {
      // half / bfloat16 on the CPU: compute in float; the casts carry the gradient.
      using A = acc_t<T>;
      return detail::clip_loss_impl<A>(image_features.template to<A>(), text_features.template to<A>(),
                                       logit_scale.template to<A>(), n, max_ls)
          .template to<T>();
    }
  }
  return detail::clip_loss_impl<T>(image_features, text_features, logit_scale, n, max_ls);
}

}  // namespace mamclip
