#pragma once
// clip_grad_norm_: torch.nn.utils.clip_grad_norm_ (foreach=False) for float32
// gradients.
//
//   total     = norm([norm(g) for each parameter with a gradient])   (p-norm or max-norm)
//   clip_coef = max_norm / (total + 1e-6)
//   g        *= min(clip_coef, 1)           (always multiplied: a factor of 1 leaves g unchanged)
//
// Returns total, the norm before clipping. As in PyTorch, the norms are float32
// values (accumulated here in double, then rounded) and the coefficient is
// float32 arithmetic: (1 / (total + 1e-6)) * max_norm, which is how a Python
// scalar divided by a tensor is evaluated.

#include <cmath>
#include <limits>
#include <vector>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/tensor_data.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/reduce/reduce.hpp"

namespace mamclip::optim {

namespace detail {

// The p-norm (or max-norm for p = inf) of one gradient, rounded to float.
inline float grad_norm(const Tensor<float>& g, double p) {
  const bool inf = std::isinf(p);
  if (!g.device().is_cpu()) {
    // Device gradients: reduce with the public ops (their kernels), in float.
    Tensor<float> a = abs(g.detach());
    Tensor<float> r = inf ? amax(a) : (p == 2.0 ? sqrt(sum(mul(a, a))) : pow(sum(pow(a, p)), 1.0 / p));
    return r.item();
  }
  const float* d = g.data_ptr();
  if (p == 2.0 && g.is_contiguous()) {
    // The common case: four independent sums so the loop is not one long dependency chain.
    double s[4] = {0, 0, 0, 0};
    const int64_t n = g.numel();
    int64_t i = 0;
    for (; i + 4 <= n; i += 4)
      for (int k = 0; k < 4; ++k) s[k] += static_cast<double>(d[i + k]) * static_cast<double>(d[i + k]);
    for (; i < n; ++i) s[0] += static_cast<double>(d[i]) * static_cast<double>(d[i]);
    return static_cast<float>(std::sqrt((s[0] + s[1]) + (s[2] + s[3])));
  }
  double acc = 0;
  mamclip::detail::for_each_offset<1>(g.shape(), {g.strides()}, [&](const std::array<int64_t, 1>& o) {
    const double x = std::abs(static_cast<double>(d[o[0]]));
    if (inf)
      acc = (std::isnan(x) || x > acc) ? x : acc;
    else if (p == 2.0)
      acc += x * x;
    else if (p == 1.0)
      acc += x;
    else
      acc += std::pow(x, p);
  });
  if (inf || p == 1.0) return static_cast<float>(acc);
  return static_cast<float>(p == 2.0 ? std::sqrt(acc) : std::pow(acc, 1.0 / p));
}

inline float norm_of_norms(const std::vector<float>& norms, double p) {
  double acc = 0;
  for (float n : norms) {
    const double x = static_cast<double>(n);
    if (std::isinf(p))
      acc = (std::isnan(x) || x > acc) ? x : acc;
    else
      acc += p == 2.0 ? x * x : std::pow(x, p);
  }
  if (std::isinf(p)) return static_cast<float>(acc);
  return static_cast<float>(p == 2.0 ? std::sqrt(acc) : std::pow(acc, 1.0 / p));
}

}  // namespace detail

// Parameters without a gradient are ignored; with none at all the result is 0.
// norm_type > 0, or infinity for the max-norm. With error_if_nonfinite, a NaN or
// infinite total throws a value_error and leaves the gradients untouched.
inline double clip_grad_norm_(const std::vector<Tensor<float>>& parameters, double max_norm, double norm_type = 2.0,
                              bool error_if_nonfinite = false) {
  MAMCLIP_CHECK(norm_type > 0, value_error, "clip_grad_norm_: norm_type must be positive or infinity, got ", norm_type);
  MAMCLIP_CHECK(max_norm >= 0, value_error, "clip_grad_norm_: max_norm must be non-negative, got ", max_norm);
  std::vector<Tensor<float>> grads;
  for (const auto& p : parameters)
    if (p.defined() && p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0;

  std::vector<float> norms;
  for (const auto& g : grads) norms.push_back(detail::grad_norm(g, norm_type));
  const float total = detail::norm_of_norms(norms, norm_type);
  MAMCLIP_CHECK(!error_if_nonfinite || std::isfinite(total), value_error, "clip_grad_norm_: the total norm of order ",
                norm_type, " of the gradients is ", total,
                ", so they cannot be clipped (error_if_nonfinite is set; a loss or gradient has overflowed)");

  const float coef = (1.0f / (total + 1e-6f)) * static_cast<float>(max_norm);
  const float clamped = coef < 1.0f ? coef : 1.0f;  // NaN stays NaN, as torch.clamp
  NoGradGuard no_grad;
  for (auto& g : grads) {
    if (g.device().is_cpu()) {
      float* d = g.data_ptr();
      mamclip::detail::for_each_offset<1>(g.shape(), {g.strides()},
                                          [&](const std::array<int64_t, 1>& o) { d[o[0]] *= clamped; });
    } else {
      mamclip::detail::scale_in_place(g, static_cast<double>(clamped));
    }
  }
  return static_cast<double>(total);
}

}  // namespace mamclip::optim
