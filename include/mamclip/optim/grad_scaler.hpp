#pragma once
// GradScaler: dynamic loss scaling for float16 training (torch.amp.GradScaler's
// semantics), so that small gradients do not flush to zero in half precision.
//
//   optim::GradScaler scaler;
//   for (...) {
//     opt.zero_grad();
//     Tensor<float> loss;
//     { AutocastGuard amp(DeviceType::cuda, DType::f16); loss = criterion(model(x), y); }
//     scaler.scale(loss).backward();   // gradients are scale x the true ones
//     scaler.unscale_(opt);            // optional: true gradients now (e.g. for clip_grad_norm_)
//     scaler.step(opt);                // skipped when a gradient is inf or NaN
//     scaler.update();                 // backoff after a skip, growth after growth_interval clean steps
//   }
//
// scale(loss)   loss x S (S = the current scale, a float32 value as in PyTorch)
// unscale_(opt) every gradient of opt's parameters x float32(1 / S), once per
//               step; records whether any gradient holds an inf or NaN
// step(opt)     unscale_ if not done, then opt.step() unless something was not
//               finite; returns whether the step ran
// update()      after a skipped step S x backoff_factor and the clean-step count
//               restarts; after growth_interval clean steps in a row S x growth_factor
//
// With enabled = false every call passes through (scale(loss) is loss, step
// always steps), so one training loop serves fp32, bf16 and fp16. bfloat16
// has float32's exponent range and needs no scaler.

#include <cmath>
#include <map>
#include <string>

#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/tensor_data.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/optim/optimizer.hpp"

namespace mamclip::optim {

struct GradScalerOptions {
  double init_scale = 65536.0;  // 2^16
  double growth_factor = 2.0;
  double backoff_factor = 0.5;
  int64_t growth_interval = 2000;
  bool enabled = true;
};

// What a checkpoint keeps to resume scaling exactly.
struct GradScalerState {
  double scale = 65536.0;
  int64_t growth_tracker = 0;
};

class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {}) : o_(options), scale_(static_cast<float>(options.init_scale)) {
    MAMCLIP_CHECK(options.init_scale > 0 && std::isfinite(options.init_scale), value_error,
                  "GradScaler: init_scale must be positive and finite, got ", options.init_scale);
    MAMCLIP_CHECK(options.growth_factor > 1, value_error, "GradScaler: growth_factor must be > 1, got ",
                  options.growth_factor);
    MAMCLIP_CHECK(options.backoff_factor > 0 && options.backoff_factor < 1, value_error,
                  "GradScaler: backoff_factor must be in (0, 1), got ", options.backoff_factor);
    MAMCLIP_CHECK(options.growth_interval > 0, value_error, "GradScaler: growth_interval must be positive, got ",
                  options.growth_interval);
  }

  bool enabled() const { return o_.enabled; }
  double get_scale() const { return o_.enabled ? static_cast<double>(scale_) : 1.0; }
  int64_t growth_tracker() const { return growth_tracker_; }

  // loss x scale, in the loss's type (differentiable: backward gives scale x the gradients).
  template <class T>
  Tensor<T> scale(const Tensor<T>& loss) const {
    if (!o_.enabled) return loss;
    return mul(loss, static_cast<double>(scale_));
  }

  // Divides opt's gradients by the scale and records whether any is not finite.
  void unscale_(Optimizer& opt) {
    if (!o_.enabled) return;
    Stage& st = stage_[&opt];
    MAMCLIP_CHECK(!st.unscaled, value_error,
                  "GradScaler.unscale_: already called for this optimizer since the last update()");
    MAMCLIP_CHECK(!st.stepped, value_error, "GradScaler.unscale_: called after step() and before update()");
    const float inv = static_cast<float>(1.0 / static_cast<double>(scale_));  // PyTorch: the float32 reciprocal
    NoGradGuard no_grad;
    bool found = false;
    // Device gradients: x · 0 is 0 for finite x and NaN for inf or NaN, so these sums stay 0 exactly when all
    // are finite; one sum per device, read once (one synchronisation, not one per parameter).
    std::map<std::string, Tensor<float>> device_checks;
    for (size_t g = 0; g < opt.num_param_groups(); ++g)
      for (const auto& p : opt.group_params(g)) {
        Tensor<float> grad = p.grad();
        if (!grad.defined()) continue;
        if (grad.device().is_cpu()) {
          found = unscale_cpu(grad, inv) || found;
          continue;
        }
        const Tensor<float> check = sum(mul(grad.detach(), 0.0));
        auto [it, fresh] = device_checks.try_emplace(grad.device().str(), check);
        if (!fresh) it->second = add(it->second, check);
        mamclip::detail::scale_in_place(grad, static_cast<double>(inv));
      }
    for (const auto& [device, check] : device_checks) found = found || !(check.item() == 0.0f);
    st.unscaled = true;
    st.found_inf = found;
  }

  // Steps opt unless its gradients hold an inf or NaN (unscaling them first if needed).
  bool step(Optimizer& opt) {
    if (!o_.enabled) {
      opt.step();
      return true;
    }
    Stage& st = stage_[&opt];
    MAMCLIP_CHECK(!st.stepped, value_error, "GradScaler.step: already called for this optimizer since the last update()");
    if (!st.unscaled) unscale_(opt);
    st.stepped = true;
    if (st.found_inf) return false;
    opt.step();
    return true;
  }

  // Whether the last unscale_ of opt found an inf or NaN (false before one).
  bool found_inf(const Optimizer& opt) const {
    const auto it = stage_.find(&opt);
    return it != stage_.end() && it->second.found_inf;
  }

  // Adjusts the scale from this step's optimizers (any inf: backoff) and starts the next step.
  void update() {
    if (!o_.enabled) return;
    MAMCLIP_CHECK(!stage_.empty(), value_error,
                  "GradScaler.update: no unscale_() or step() since the last update(); nothing to update from");
    bool found = false;
    for (const auto& [opt, st] : stage_) found = found || st.found_inf;
    if (found) {
      scale_ = scale_ * static_cast<float>(o_.backoff_factor);
      growth_tracker_ = 0;
    } else if (++growth_tracker_ == o_.growth_interval) {
      const float grown = scale_ * static_cast<float>(o_.growth_factor);
      if (std::isfinite(grown)) scale_ = grown;  // never grow into inf
      growth_tracker_ = 0;
    }
    stage_.clear();
  }

  GradScalerState state() const { return {static_cast<double>(scale_), growth_tracker_}; }
  void load_state(const GradScalerState& s) {
    MAMCLIP_CHECK(s.scale > 0 && std::isfinite(s.scale), value_error,
                  "GradScaler.load_state: scale must be positive and finite, got ", s.scale);
    MAMCLIP_CHECK(s.growth_tracker >= 0 && s.growth_tracker < o_.growth_interval, value_error,
                  "GradScaler.load_state: growth_tracker ", s.growth_tracker, " is outside [0, growth_interval = ",
                  o_.growth_interval, ")");
    scale_ = static_cast<float>(s.scale);
    growth_tracker_ = s.growth_tracker;
    stage_.clear();
  }

 private:
  struct Stage {
    bool unscaled = false, stepped = false, found_inf = false;
  };

  // grad x inv in place (a CPU gradient); whether grad held an inf or NaN.
  static bool unscale_cpu(Tensor<float>& grad, float inv) {
    bool found = false;
    float* d = grad.data_ptr();
    mamclip::detail::for_each_offset<1>(grad.shape(), {grad.strides()}, [&](const std::array<int64_t, 1>& o) {
      found = found || !std::isfinite(d[o[0]]);
      d[o[0]] *= inv;
    });
    return found;
  }

  GradScalerOptions o_;
  float scale_;
  int64_t growth_tracker_ = 0;
  std::map<const Optimizer*, Stage> stage_;
};

}  // namespace mamclip::optim
