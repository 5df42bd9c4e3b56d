#pragma once
// LayerNorm over the trailing `normalized_shape` dims, torch.nn.LayerNorm's
// names (weight, bias) and init (ones, zeros); LayerNorm2d over the channels
// of [N, C, H, W] (timm.layers.LayerNorm2d, same names and init).

#include <string>

#include "mamclip/nn/init.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/norm/norm.hpp"

namespace mamclip::nn {

class LayerNorm : public UnaryModule {
 public:
  explicit LayerNorm(Shape normalized_shape, double eps = 1e-5, bool elementwise_affine = true, bool with_bias = true)
      : normalized_shape_(std::move(normalized_shape)), eps_(eps) {
    MAMCLIP_CHECK(!normalized_shape_.empty(), value_error, "LayerNorm: normalized_shape must not be empty");
    for (int64_t d : normalized_shape_)
      MAMCLIP_CHECK(d > 0, value_error, "LayerNorm: normalized_shape ", shape_str(normalized_shape_),
                    " must have positive sizes");
    MAMCLIP_CHECK(eps >= 0, value_error, "LayerNorm: eps must be non-negative, got ", eps);
    if (elementwise_affine) {
      weight = register_parameter("weight", ones<float>(normalized_shape_));
      if (with_bias) bias = register_parameter("bias", zeros<float>(normalized_shape_));
    }
  }
  explicit LayerNorm(int64_t normalized_size, double eps = 1e-5, bool elementwise_affine = true, bool with_bias = true)
      : LayerNorm(Shape{normalized_size}, eps, elementwise_affine, with_bias) {}

  std::string type_name() const override { return "LayerNorm"; }
  std::string extra_repr() const override {
    std::ostringstream os;
    os << shape_str(normalized_shape_) << ", eps=" << eps_ << ", elementwise_affine=" << (weight.defined() ? "true" : "false");
    return os.str();
  }
  const Shape& normalized_shape() const { return normalized_shape_; }
  double eps() const { return eps_; }

  Tensor<float> weight;  // normalized_shape; undefined without elementwise_affine
  Tensor<float> bias;    // normalized_shape; undefined without elementwise_affine or bias

 protected:
  void check_input(const Tensor<float>& x) const override {
    const size_t n = normalized_shape_.size();
    const bool ok = x.shape().size() >= n &&
                    Shape(x.shape().end() - static_cast<std::ptrdiff_t>(n), x.shape().end()) == normalized_shape_;
    MAMCLIP_CHECK(ok, shape_error, "LayerNorm(", shape_str(normalized_shape_), "): input has shape ",
                  shape_str(x.shape()), "; expected its last ", n, " dim(s) to be ", shape_str(normalized_shape_));
  }
  Tensor<float> forward_impl(const Tensor<float>& x) override {
    return layer_norm(x, normalized_shape_, weight, bias, eps_);
  }

 private:
  Shape normalized_shape_;
  double eps_;
};

// timm's LayerNorm2d: normalises each position of x [N, C, H, W] over its C channels.
class LayerNorm2d : public UnaryModule {
 public:
  explicit LayerNorm2d(int64_t channels, double eps = 1e-6) : channels_(channels), eps_(eps) {
    MAMCLIP_CHECK(channels > 0, value_error, "LayerNorm2d: channels must be positive, got ", channels);
    MAMCLIP_CHECK(eps >= 0, value_error, "LayerNorm2d: eps must be non-negative, got ", eps);
    weight = register_parameter("weight", ones<float>({channels}));
    bias = register_parameter("bias", zeros<float>({channels}));
  }

  std::string type_name() const override { return "LayerNorm2d"; }
  std::string extra_repr() const override {
    std::ostringstream os;
    os << shape_str({channels_}) << ", eps=" << eps_ << ", elementwise_affine=true";
    return os.str();
  }
  int64_t channels() const { return channels_; }
  double eps() const { return eps_; }

  Tensor<float> weight;  // [channels]
  Tensor<float> bias;    // [channels]

 protected:
  void check_input(const Tensor<float>& x) const override {
    MAMCLIP_CHECK(x.dim() == 4 && x.size(1) == channels_, shape_error, "LayerNorm2d(", channels_, "): input has shape ",
                  shape_str(x.shape()), "; expected [N, ", channels_, ", H, W]");
  }
  Tensor<float> forward_impl(const Tensor<float>& x) override { return layer_norm2d(x, weight, bias, eps_); }

 private:
  int64_t channels_;
  double eps_;
};

}  // namespace mamclip::nn
