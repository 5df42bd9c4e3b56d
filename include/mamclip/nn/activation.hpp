#pragma once
// Activation modules (no parameters): GELU, ReLU, Tanh, Identity.

#include <string>

#include "mamclip/nn/module.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"

namespace mamclip::nn {

class GELU : public UnaryModule {
 public:
  explicit GELU(GeluApproximation approximate = GeluApproximation::none) : approximate_(approximate) {}
  std::string type_name() const override { return "GELU"; }
  std::string extra_repr() const override {
    return approximate_ == GeluApproximation::tanh ? "approximate='tanh'" : "approximate='none'";
  }
  GeluApproximation approximate() const { return approximate_; }

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override { return gelu(x, approximate_); }

 private:
  GeluApproximation approximate_;
};

class ReLU : public UnaryModule {
 public:
  std::string type_name() const override { return "ReLU"; }

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override { return relu(x); }
};

class Tanh : public UnaryModule {
 public:
  std::string type_name() const override { return "Tanh"; }

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override { return tanh(x); }
};

// Returns its input (a placeholder where a layer is optional, e.g. a removed head).
class Identity : public UnaryModule {
 public:
  std::string type_name() const override { return "Identity"; }

 protected:
  Tensor<float> forward_impl(const Tensor<float>& x) override { return x; }
};

}  // namespace mamclip::nn
