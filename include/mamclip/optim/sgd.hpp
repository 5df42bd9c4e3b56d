#pragma once
// SGD with momentum, dampening, Nesterov momentum and coupled weight decay:
// torch.optim.SGD (foreach=False, maximize=False) for float32 parameters.
//
//   g = grad + weight_decay * p
//   buf = g (first step) | momentum * buf + (1 - dampening) * g
//   g = g + momentum * buf (nesterov) | buf
//   p = p - lr * g
//
// Arithmetic is float32 with each coefficient rounded to float, in PyTorch's
// order; `a + alpha * b` is one fused multiply-add, as in ATen's vectorised
// CPU add kernel, so results match PyTorch's CPU values.

#include <cmath>
#include <string>

#include "mamclip/optim/optimizer.hpp"

namespace mamclip::optim {

struct SGDOptions {
  double lr = 1e-3;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;

  void check(const std::string& who, size_t group) const {
    MAMCLIP_CHECK(lr >= 0, value_error, who, ": invalid learning rate ", lr, " in parameter group ", group,
                  " (expected lr >= 0)");
    MAMCLIP_CHECK(momentum >= 0, value_error, who, ": invalid momentum ", momentum, " in parameter group ", group,
                  " (expected momentum >= 0)");
    MAMCLIP_CHECK(weight_decay >= 0, value_error, who, ": invalid weight_decay ", weight_decay,
                  " in parameter group ", group, " (expected weight_decay >= 0)");
    MAMCLIP_CHECK(!nesterov || (momentum > 0 && dampening == 0), value_error, who,
                  ": Nesterov momentum requires a momentum > 0 and zero dampening (parameter group ", group,
                  " has momentum ", momentum, " and dampening ", dampening, ")");
  }
};

struct SGDState {
  Tensor<float> momentum_buffer;  // undefined until the first step with momentum
};

// The update coefficients of one step, rounded to float as PyTorch does.
struct SGDScalars {
  float weight_decay;        // 0: no decay term
  float momentum;            // 0: no momentum buffer
  float one_minus_dampening;
  float neg_lr;
  bool nesterov;
  bool first_step;           // buf = g instead of the running update
};

// Device kernel, registered as "sgd_step" for float32: p, g and buf contiguous with n elements
// (buf unused when momentum is 0).
using SGDKernel = void(float* p, const float* g, float* buf, int64_t n, const SGDScalars& s);

namespace cpu {
inline void sgd_step(float* p, const float* grad, float* buf, int64_t n, const SGDScalars& s) {
  for (int64_t i = 0; i < n; ++i) {
    float g = grad[i];
    if (s.weight_decay != 0) g = std::fma(p[i], s.weight_decay, g);
    if (s.momentum != 0) {
      float b = s.first_step ? g : std::fma(g, s.one_minus_dampening, buf[i] * s.momentum);
      buf[i] = b;
      g = s.nesterov ? std::fma(b, s.momentum, g) : b;
    }
    p[i] = std::fma(g, s.neg_lr, p[i]);
  }
}
}  // namespace cpu

class SGD : public OptimizerBase<SGDOptions, SGDState> {
 public:
  explicit SGD(std::vector<Tensor<float>> params, SGDOptions options = {}) {
    add_param_group({std::move(params), options});
  }
  explicit SGD(std::vector<ParamGroup<SGDOptions>> groups) {
    for (auto& g : groups) add_param_group(std::move(g));
  }
  std::string type_name() const override { return "SGD"; }

 protected:
  void step_impl() override {
    for (const auto& group : param_groups()) {
      const SGDOptions& o = group.options;
      for (const auto& p : group.params) {
        const Tensor<float> grad = p.grad();
        if (!grad.defined()) continue;
        SGDState& st = state_for(p);
        SGDScalars s{static_cast<float>(o.weight_decay), static_cast<float>(o.momentum),
                     static_cast<float>(1.0 - o.dampening), static_cast<float>(-o.lr), o.nesterov, false};
        if (o.momentum != 0 && !st.momentum_buffer.defined()) {
          st.momentum_buffer = zeros<float>(p.shape(), p.device());
          s.first_step = true;
        }
        float* buf = o.momentum != 0 ? st.momentum_buffer.data_ptr() : nullptr;
        detail::with_contiguous(p, grad, [&](float* pd, const float* gd, int64_t n) {
          if (p.device().is_cpu())
            cpu::sgd_step(pd, gd, buf, n, s);
          else
            require_kernel<SGDKernel>("sgd_step", DType::f32, p.device())(pd, gd, buf, n, s);
        });
      }
    }
  }
};

}  // namespace mamclip::optim
