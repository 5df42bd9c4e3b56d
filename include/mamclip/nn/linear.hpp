#pragma once
// Linear: y = x @ weight^T + bias, torch.nn.Linear's layout and default init.

#include <cmath>
#include <string>

#include "mamclip/nn/init.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/matmul/matmul.hpp"

namespace mamclip::nn {

class Linear : public UnaryModule {
 public:
  // weight [out_features, in_features] ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform_ with a = sqrt(5),
  // PyTorch's reset_parameters); bias [out_features] ~ the same range.
  Linear(int64_t in_features, int64_t out_features, bool with_bias = true, Generator& gen = default_generator())
      : in_features_(in_features), out_features_(out_features) {
    MAMCLIP_CHECK(in_features > 0 && out_features > 0, value_error, "Linear: in_features and out_features must be ",
                  "positive, got in_features=", in_features, ", out_features=", out_features);
    Tensor<float> w = empty<float>({out_features, in_features});
    init::kaiming_uniform_(w, std::sqrt(5.0), init::FanMode::fan_in, init::Nonlinearity::leaky_relu, gen);
    weight = register_parameter("weight", w);
    if (with_bias) {
      const double bound = 1.0 / std::sqrt(static_cast<double>(in_features));
      Tensor<float> b = empty<float>({out_features});
      init::uniform_(b, -bound, bound, gen);
      bias = register_parameter("bias", b);
    }
  }

  Linear(int64_t in_features, int64_t out_features, Generator& gen) : Linear(in_features, out_features, true, gen) {}

  std::string type_name() const override { return "Linear"; }
  std::string extra_repr() const override {
    return "in_features=" + std::to_string(in_features_) + ", out_features=" + std::to_string(out_features_) +
           ", bias=" + (bias.defined() ? "true" : "false");
  }
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

  Tensor<float> weight;  // [out_features, in_features]
  Tensor<float> bias;    // [out_features], undefined when built with bias = false

 protected:
  void check_input(const Tensor<float>& x) const override {
    MAMCLIP_CHECK(x.dim() >= 1 && x.size(-1) == in_features_, shape_error, "Linear(in_features=", in_features_,
                  ", out_features=", out_features_, "): input has shape ", shape_str(x.shape()),
                  "; expected the last dim to be in_features = ", in_features_);
  }
  Tensor<float> forward_impl(const Tensor<float>& x) override { return linear(x, weight, bias); }

 private:
  int64_t in_features_, out_features_;
};

}  // namespace mamclip::nn
