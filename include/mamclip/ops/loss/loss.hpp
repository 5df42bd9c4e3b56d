#pragma once
// Losses with PyTorch semantics: nll_loss, cross_entropy (class-index targets,
// ignore_index, label smoothing) and mse_loss.
//
// cross_entropy is one fused node: log_softmax over the class dim, the
// smoothed negative log-likelihood and the reduction forward, and
// scale * (softmax - q) backward (q: the smoothed one-hot target).
// Reduction::mean divides by the number of samples whose target is not
// ignore_index; when every target is ignored that is 0 / 0 = NaN, as in PyTorch.

#include <algorithm>
#include <memory>

#include "mamclip/autograd/node.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"  // mse_loss: sub, mul
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/loss/cpu.hpp"
#include "mamclip/ops/loss/clip.hpp"  // clip_loss, the fused contrastive loss
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/softmax/cpu.hpp"
#include "mamclip/ops/softmax/softmax.hpp"

namespace mamclip {

// Device kernels of nll_loss and cross_entropy (registered under the op's
// name and "<op>_backward"), on log-probabilities seen as lanes [outer, size,
// inner] along the class dim (ops/loss/cpu.hpp's formulas):
//   ClassLossKernel          loss[s] of every lane s (0 where ignored), in acc_t<T>
//   ClassLossBackwardKernel  dx = scale_s * (exp(logp) if wrt_logits - q), 0 where ignored;
//                            scale_s = scale[s] (scale_per_lane) or scale[0] / divisor
template <class T>
using ClassLossKernel = void(const T* logp, const int64_t* target, int64_t outer, int64_t size, int64_t inner,
                             int64_t ignore_index, double smoothing, acc_t<T>* loss);
template <class T>
using ClassLossBackwardKernel = void(const T* logp, const int64_t* target, int64_t outer, int64_t size, int64_t inner,
                                     int64_t ignore_index, double smoothing, const acc_t<T>* scale, bool scale_per_lane,
                                     double divisor, bool wrt_logits, T* dx);

namespace detail {

// Applies `reduction` to elementwise losses (composed from public ops, so it differentiates).
template <class T>
Tensor<T> apply_reduction(const Tensor<T>& loss, Reduction reduction, const char* op) {
  switch (reduction) {
    case Reduction::none: return loss;
    case Reduction::sum: return sum(loss);
    case Reduction::mean: return mean(loss);
  }
  throw value_error(str_cat(op, ": unknown reduction ", static_cast<int>(reduction)));
}

// Targets of a class-index loss, checked against the input [N, C, d...] or [C].
struct ClassTargets {
  cpu::Lanes lanes;             // along the class dim of the input
  Shape sample_shape;           // [N, d...] ([] for a [C] input): the shape of target and of Reduction::none
  std::vector<int64_t> values;  // row-major, one per sample
  int64_t kept = 0;             // samples whose target is not ignore_index
};

template <class T>
ClassTargets check_class_targets(const char* op, const char* input_name, const Tensor<T>& input,
                                 const Tensor<int64_t>& target, int64_t ignore_index) {
  MAMCLIP_CHECK(input.dim() >= 1, shape_error, op, ": ", input_name, " must have shape [N, C, d1, ...] or [C], got ",
                shape_str(input.shape()));
  MAMCLIP_CHECK(target.device() == input.device(), device_error, op, ": expected all tensors on one device, but ",
                input_name, " is on ", input.device().str(), " and target is on ", target.device().str());
  const int64_t class_dim = input.dim() == 1 ? 0 : 1;
  ClassTargets t;
  t.lanes = cpu::lanes_of(input.shape(), class_dim);
  t.sample_shape = input.shape();
  t.sample_shape.erase(t.sample_shape.begin() + class_dim);
  MAMCLIP_CHECK(target.shape() == t.sample_shape, shape_error, op, ": target has shape ", shape_str(target.shape()),
                " but ", input_name, " has shape ", shape_str(input.shape()), "; expected target shape ",
                shape_str(t.sample_shape));
  t.values = target.to_vector();
  const int64_t classes = t.lanes.size;
  for (size_t s = 0; s < t.values.size(); ++s) {
    const int64_t v = t.values[s];
    if (v == ignore_index) continue;
    MAMCLIP_CHECK(v >= 0 && v < classes, index_error, op, ": target ", v, " at position ",
                  shape_str(cpu::unravel_index(static_cast<int64_t>(s), t.sample_shape)), " is out of range for ", classes,
                  " classes (expected 0 <= target < ", classes, " or target == ignore_index ", ignore_index, ")");
    ++t.kept;
  }
  return t;
}

// class_index_loss on a device: log_softmax, the per-lane losses and the
// backward through the registered kernels, the reduction through sum's.
template <class T>
Tensor<T> device_class_index_loss(const char* op, const char* node, const char* input_name, const Tensor<T>& input,
                                  const Tensor<int64_t>& target, const LossOptions& options, bool from_logits) {
  using A = acc_t<T>;
  const Device dev = input.device();
  auto* loss_kernel = require_kernel<ClassLossKernel<T>>(op, dtype_v<T>, dev);
  auto* backward_kernel = require_kernel<ClassLossBackwardKernel<T>>(str_cat(op, "_backward"), dtype_v<T>, dev);
  SoftmaxKernel<T>* log_softmax_kernel =
      from_logits ? require_kernel<SoftmaxKernel<T>>("log_softmax", dtype_v<T>, dev) : nullptr;
  const double smoothing = from_logits ? options.label_smoothing : 0.0;
  const int64_t ignore = options.ignore_index;
  // Checks shapes and target values (one copy of the targets to the host).
  const ClassTargets targets = check_class_targets(op, input_name, input, target, ignore);
  const cpu::Lanes lanes = targets.lanes;
  const int64_t kept = targets.kept;
  const Tensor<int64_t> tgt = target.is_contiguous() ? target : contiguous_copy(target);

  Tensor<T> logp = contiguous_values(input);
  if (from_logits) {
    Tensor<T> logits = logp;
    logp = Tensor<T>::empty(input.shape(), dev);
    log_softmax_kernel(logits.data_ptr(), logp.data_ptr(), lanes.outer, lanes.size, lanes.inner, true);
  }
  const Tensor<A> loss = Tensor<A>::empty(targets.sample_shape, dev);
  loss_kernel(logp.data_ptr(), tgt.data_ptr(), lanes.outer, lanes.size, lanes.inner, ignore, smoothing, loss.data_ptr());

  const Reduction reduction = options.reduction;
  Tensor<A> y_acc = loss;
  if (reduction != Reduction::none) {  // total / kept for the mean (0 / 0 = NaN when all are ignored), as on the CPU
    const auto plan = cpu::plan_reduce(loss.shape(), {}, op);
    y_acc = device_sum_rows("sum", loss, plan, false, reduction == Reduction::mean ? static_cast<double>(kept) : 1.0);
  }
  const Tensor<T> y = y_acc.template to<T>();
  return autograd::record<T>(node, {input}, y, [logp, tgt, lanes, kept, smoothing, reduction, from_logits, ignore,
                                                backward_kernel](const Tensor<T>& g) {
    const Tensor<A> scale = contiguous_values(g).template to<A>();
    Tensor<T> dx = Tensor<T>::empty(logp.shape(), logp.device());
    backward_kernel(logp.data_ptr(), tgt.data_ptr(), lanes.outer, lanes.size, lanes.inner, ignore, smoothing,
                    scale.data_ptr(), reduction == Reduction::none,
                    reduction == Reduction::mean ? static_cast<double>(kept) : 1.0, from_logits, dx.data_ptr());
    return std::vector<Tensor<T>>{dx};
  });
}

// nll_loss (from_logits false: input holds log-probabilities) or cross_entropy
// (from_logits true: input holds logits).
template <class T>
Tensor<T> class_index_loss(const char* op, const char* node, const char* input_name, const Tensor<T>& input,
                           const Tensor<int64_t>& target, const LossOptions& options, bool from_logits) {
  using A = acc_t<T>;
  const double smoothing = from_logits ? options.label_smoothing : 0.0;
  MAMCLIP_CHECK(smoothing >= 0 && smoothing <= 1, value_error, op, ": label_smoothing must be in [0, 1], got ", smoothing);
  if (!input.device().is_cpu()) return device_class_index_loss(op, node, input_name, input, target, options, from_logits);
  auto targets = std::make_shared<const ClassTargets>(check_class_targets(op, input_name, input, target, options.ignore_index));
  const cpu::Lanes& lanes = targets->lanes;

  Tensor<T> logp = contiguous_values(input);
  if (from_logits) {
    Tensor<T> logits = logp;
    logp = Tensor<T>::empty(input.shape());
    cpu::softmax(logits.data_ptr(), logp.data_ptr(), lanes, /*log=*/true);
  }
  std::vector<A> loss(static_cast<size_t>(lanes.count()));
  cpu::class_loss(logp.data_ptr(), targets->values.data(), lanes, options.ignore_index, smoothing, loss.data());

  const Reduction reduction = options.reduction;
  Tensor<T> y;
  if (reduction == Reduction::none) {
    y = Tensor<T>::empty(targets->sample_shape);
    std::transform(loss.begin(), loss.end(), y.data_ptr(), [](A v) { return static_cast<T>(v); });
  } else {
    A total = 0;
    for (A v : loss) total += v;
    y = scalar<T>(static_cast<T>(reduction == Reduction::mean ? total / static_cast<A>(targets->kept) : total));
  }
  return autograd::record<T>(node, {input}, y, [logp, targets, smoothing, reduction, from_logits,
                                                ignore = options.ignore_index](const Tensor<T>& g) {
    const auto gv = acc_values(g);
    std::vector<A> scale(static_cast<size_t>(targets->lanes.count()));
    for (size_t s = 0; s < scale.size(); ++s)
      scale[s] = reduction == Reduction::none ? gv[s]
                 : reduction == Reduction::sum ? gv[0]
                                               : gv[0] / static_cast<A>(targets->kept);
    Tensor<T> dx = Tensor<T>::empty(logp.shape());
    cpu::class_loss_backward(logp.data_ptr(), targets->values.data(), targets->lanes, ignore, smoothing, scale.data(),
                             from_logits, dx.data_ptr());
    return std::vector<Tensor<T>>{dx};
  });
}

}  // namespace detail

template <class T>
Tensor<T> nll_loss(const Tensor<T>& log_probs, const Tensor<int64_t>& target, const LossOptions& options) {
  return detail::class_index_loss("nll_loss", "NllLossBackward", "log_probs", log_probs, target, options, false);
}

template <class T>
Tensor<T> cross_entropy(const Tensor<T>& logits, const Tensor<int64_t>& target, const LossOptions& options) {
  return detail::class_index_loss("cross_entropy", "CrossEntropyBackward", "logits", logits, target, options, true);
}

template <class T>
Tensor<T> mse_loss(const Tensor<T>& input, const Tensor<T>& target, Reduction reduction) {
  // Composed of sub, mul and sum / mean, so it runs wherever they have kernels.
  detail::check_same_device("mse_loss", input, target, "input", "target");
  MAMCLIP_CHECK(input.shape() == target.shape(), shape_error, "mse_loss: input has shape ", shape_str(input.shape()),
                " and target has shape ", shape_str(target.shape()), "; expected equal shapes");
  const Tensor<T> d = sub(input, target);
  return detail::apply_reduction(mul(d, d), reduction, "mse_loss");
}

}  // namespace mamclip
