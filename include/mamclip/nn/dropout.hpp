#pragma once
// Dropout: inverted dropout while training (zeroes with probability p, scales
// the rest by 1/(1-p)); the identity in eval mode. DropPath: timm's stochastic
// depth (drops whole samples of a residual branch), likewise.

#include <cstdio>
#include <string>

#include "mamclip/nn/module.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"

namespace mamclip::nn {

class Dropout : public UnaryModule {
 public:
  // Masks are drawn from `gen`, which must outlive the module. The default is
  // the constructing thread's default generator.
  explicit Dropout(double p = 0.5, Generator& gen = default_generator()) : p_(p), gen_(&gen) {
    MAMCLIP_CHECK(p >= 0 && p <= 1, value_error, "Dropout: p must be in [0, 1], got ", p);
  }

  std::string type_name() const override { return "Dropout"; }
  std::string extra_repr() const override {
    std::ostringstream os;
    os << "p=" << p_;
    return os.str();
  }
  double p() const { return p_; }

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override { return dropout(x, p_, is_training(), *gen_); }

 private:
  double p_;
  Generator* gen_;
};

// timm.layers.DropPath (scale_by_keep = true): each sample (slice along dim 0)
// is zeroed with probability p while training and the kept ones scaled by
// 1/(1-p); the identity in eval mode or when p == 0.
class DropPath : public UnaryModule {
 public:
  // Masks are drawn from `gen`, which must outlive the module.
  explicit DropPath(double p = 0.0, Generator& gen = default_generator()) : p_(p), gen_(&gen) {
    MAMCLIP_CHECK(p >= 0 && p <= 1, value_error, "DropPath: p must be in [0, 1], got ", p);
  }

  std::string type_name() const override { return "DropPath"; }
  std::string extra_repr() const override {
    char buf[32];
    std::snprintf(buf, sizeof buf, "drop_prob=%.3f", p_);  // timm's repr
    return buf;
  }
  double p() const { return p_; }

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override { return drop_path(x, p_, is_training(), *gen_); }

 private:
  double p_;
  Generator* gen_;
};

}  // namespace mamclip::nn
