#pragma once
// Dropout: inverted dropout while training (zeroes with probability p, scales
// the rest by 1/(1-p)); the identity in eval mode. DropPath: timm's stochastic
// depth (drops whole samples of a residual branch), likewise.

#include <cstdio>
#include <memory>
#include <string>

#include "mamclip/nn/module.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"

namespace mamclip::nn {

// Where a random module draws its masks: a generator it shares (set with
// set_generator, kept alive by every module that holds it), or else the
// default generator of the thread that runs forward, as PyTorch's modules use
// the global RNG. Never a reference that could dangle.
class RandomModule : public UnaryModule {
 public:
  void set_generator(std::shared_ptr<Generator> gen) { gen_ = std::move(gen); }
  Generator& generator() const { return gen_ ? *gen_ : default_generator(); }

 protected:
  explicit RandomModule(std::shared_ptr<Generator> gen) : gen_(std::move(gen)) {}

 private:
  std::shared_ptr<Generator> gen_;
};

class Dropout : public RandomModule {
 public:
  explicit Dropout(double p = 0.5, std::shared_ptr<Generator> gen = nullptr) : RandomModule(std::move(gen)), p_(p) {
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
  Tensor<float> forward_impl(const Tensor<float>& x) override { return dropout(x, p_, is_training(), generator()); }

 private:
  double p_;
};

// timm.layers.DropPath (scale_by_keep = true): each sample (slice along dim 0)
// is zeroed with probability p while training and the kept ones scaled by
// 1/(1-p); the identity in eval mode or when p == 0.
class DropPath : public RandomModule {
 public:
  explicit DropPath(double p = 0.0, std::shared_ptr<Generator> gen = nullptr) : RandomModule(std::move(gen)), p_(p) {
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
  Tensor<float> forward_impl(const Tensor<float>& x) override { return drop_path(x, p_, is_training(), generator()); }

 private:
  double p_;
};

}  // namespace mamclip::nn
