#pragma once
// AdamW: Adam with decoupled weight decay, exactly torch.optim.AdamW's
// single-tensor path (foreach=False, fused=False, capturable=False,
// maximize=False) for float32 parameters on the CPU.
//
// For each parameter with a gradient g, step t += 1, then
//   p     = p * (1 - lr * weight_decay)
//   m     = lerp(m, g, 1 - beta1)             = m + (1 - beta1) * (g - m)
//   v     = beta2 * v + (1 - beta2) * g * g
//   vmax  = max(vmax, v)                       (amsgrad only; the denominator uses vmax)
//   denom = sqrt(v) / sqrt(1 - beta2^t) + eps
//   p     = p + (-lr / (1 - beta1^t)) * m / denom
//
// As in PyTorch, the scalars (1 - lr*wd, the bias corrections, sqrt of the
// second one, the step size) are computed in double and rounded to float once;
// the per-element arithmetic is float32 in the order above, with lerp as ATen's
// vectorised CPU kernel computes it (one fused multiply-add). So a run matches
// PyTorch's CPU float32 values step for step (to the last bit where PyTorch
// takes its vectorised path; a compiler that contracts a*b+c into an FMA
// elsewhere, e.g. under -ffp-contract=fast with FMA enabled, may differ by an ulp).

#include <algorithm>
#include <cmath>
#include <string>

#include "mamclip/optim/optimizer.hpp"

namespace mamclip::optim {

struct AdamWOptions {
  double lr = 1e-3;
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;

  void check(const std::string& who, size_t group) const {
    MAMCLIP_CHECK(lr >= 0, value_error, who, ": invalid learning rate ", lr, " in parameter group ", group,
                  " (expected lr >= 0)");
    MAMCLIP_CHECK(eps >= 0, value_error, who, ": invalid eps ", eps, " in parameter group ", group,
                  " (expected eps >= 0)");
    MAMCLIP_CHECK(beta1 >= 0 && beta1 < 1, value_error, who, ": invalid beta1 ", beta1, " in parameter group ", group,
                  " (expected 0 <= beta1 < 1)");
    MAMCLIP_CHECK(beta2 >= 0 && beta2 < 1, value_error, who, ": invalid beta2 ", beta2, " in parameter group ", group,
                  " (expected 0 <= beta2 < 1)");
    MAMCLIP_CHECK(weight_decay >= 0, value_error, who, ": invalid weight_decay ", weight_decay,
                  " in parameter group ", group, " (expected weight_decay >= 0)");
  }
};

struct AdamWState {
  int64_t step = 0;
  Tensor<float> exp_avg;         // m, like p
  Tensor<float> exp_avg_sq;      // v, like p
  Tensor<float> max_exp_avg_sq;  // amsgrad only; undefined otherwise
};

// One step's coefficients, rounded to float as PyTorch rounds its Python scalars.
struct AdamWScalars {
  float decay;                   // 1 - lr * weight_decay
  float lerp_weight;             // 1 - beta1
  float beta2;
  float one_minus_beta2;
  float bias_correction2_sqrt;   // sqrt(1 - beta2^t), computed in double
  float eps;
  float neg_step_size;           // -lr / (1 - beta1^t), computed in double
  bool apply_decay;              // weight_decay != 0
  bool amsgrad;
};

inline AdamWScalars adamw_scalars(const AdamWOptions& o, int64_t step) {
  const double t = static_cast<double>(step);
  const double bias_correction1 = 1.0 - std::pow(o.beta1, t);
  const double bias_correction2 = 1.0 - std::pow(o.beta2, t);
  return {static_cast<float>(1.0 - o.lr * o.weight_decay),
          static_cast<float>(1.0 - o.beta1),
          static_cast<float>(o.beta2),
          static_cast<float>(1.0 - o.beta2),
          static_cast<float>(std::sqrt(bias_correction2)),
          static_cast<float>(o.eps),
          static_cast<float>(-(o.lr / bias_correction1)),
          o.weight_decay != 0,
          o.amsgrad};
}

// Device kernel, registered as "adamw_step" for float32: all arrays contiguous with n elements
// (vmax null unless amsgrad).
using AdamWKernel = void(float* p, const float* g, float* m, float* v, float* vmax, int64_t n, const AdamWScalars& s);

namespace cpu {
inline void adamw_step(float* p, const float* grad, float* m, float* v, float* vmax, int64_t n, const AdamWScalars& s) {
  // ATen's lerp: weight < 0.5 -> start + w * (end - start), else end - (end - start) * (1 - w),
  // vectorised as fma(coeff, end - start, base).
  const bool small = std::abs(s.lerp_weight) < 0.5f;
  const float coeff = small ? s.lerp_weight : s.lerp_weight - 1.0f;
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    float pi = p[i];
    if (s.apply_decay) pi = pi * s.decay;
    m[i] = std::fma(coeff, g - m[i], small ? m[i] : g);
    v[i] = v[i] * s.beta2 + s.one_minus_beta2 * g * g;
    float second = v[i];
    if (s.amsgrad) {
      // torch.maximum: a NaN in either propagates.
      if (std::isnan(v[i]) || v[i] > vmax[i]) vmax[i] = v[i];
      second = vmax[i];
    }
    const float denom = std::sqrt(second) / s.bias_correction2_sqrt + s.eps;
    p[i] = pi + s.neg_step_size * m[i] / denom;
  }
}
}  // namespace cpu

class AdamW : public OptimizerBase<AdamWOptions, AdamWState> {
 public:
  explicit AdamW(std::vector<Tensor<float>> params, AdamWOptions options = {}) {
    add_param_group({std::move(params), options});
  }
  explicit AdamW(std::vector<ParamGroup<AdamWOptions>> groups) {
    for (auto& g : groups) add_param_group(std::move(g));
  }
  std::string type_name() const override { return "AdamW"; }

 protected:
  void step_impl() override {
    for (const auto& group : param_groups()) {
      const AdamWOptions& o = group.options;
      for (const auto& p : group.params) {
        const Tensor<float> grad = p.grad();
        if (!grad.defined()) continue;
        AdamWState& st = state_for(p);
        if (!st.exp_avg.defined()) {
          st.exp_avg = zeros<float>(p.shape(), p.device());
          st.exp_avg_sq = zeros<float>(p.shape(), p.device());
        }
        if (o.amsgrad && !st.max_exp_avg_sq.defined()) st.max_exp_avg_sq = zeros<float>(p.shape(), p.device());
        st.step += 1;
        const AdamWScalars s = adamw_scalars(o, st.step);
        float* vmax = o.amsgrad ? st.max_exp_avg_sq.data_ptr() : nullptr;
        detail::with_contiguous(p, grad, [&](float* pd, const float* gd, int64_t n) {
          if (p.device().is_cpu())
            cpu::adamw_step(pd, gd, st.exp_avg.data_ptr(), st.exp_avg_sq.data_ptr(), vmax, n, s);
          else
            require_kernel<AdamWKernel>("adamw_step", DType::f32, p.device())(
                pd, gd, st.exp_avg.data_ptr(), st.exp_avg_sq.data_ptr(), vmax, n, s);
        });
      }
    }
  }
};

}  // namespace mamclip::optim
