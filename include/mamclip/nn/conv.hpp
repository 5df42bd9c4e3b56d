#pragma once
// Conv2d: torch.nn.Conv2d's parameters (weight [out, in / groups, kH, kW],
// bias [out]), default init and repr, over conv2d.

#include <array>
#include <cmath>
#include <sstream>
#include <string>

#include "mamclip/nn/init.hpp"
#include "mamclip/nn/module.hpp"
#include "mamclip/ops/conv/conv.hpp"

namespace mamclip::nn {

class Conv2d : public UnaryModule {
 public:
  // weight ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels / groups · kH · kW
  // (kaiming_uniform_ with a = sqrt(5), PyTorch's reset_parameters); bias ~ the same range.
  Conv2d(int64_t in_channels, int64_t out_channels, std::array<int64_t, 2> kernel_size, Conv2dOptions options = {},
         bool with_bias = true, Generator& gen = default_generator())
      : in_channels_(in_channels), out_channels_(out_channels), kernel_size_(kernel_size), options_(options) {
    MAMCLIP_CHECK(in_channels > 0 && out_channels > 0, value_error, "Conv2d: in_channels and out_channels must be ",
                  "positive, got in_channels=", in_channels, ", out_channels=", out_channels);
    MAMCLIP_CHECK(kernel_size[0] > 0 && kernel_size[1] > 0, value_error, "Conv2d: kernel_size must be positive, got (",
                  kernel_size[0], ", ", kernel_size[1], ")");
    MAMCLIP_CHECK(options.groups > 0, value_error, "Conv2d: groups must be positive, got ", options.groups);
    MAMCLIP_CHECK(in_channels % options.groups == 0 && out_channels % options.groups == 0, value_error,
                  "Conv2d: in_channels=", in_channels, " and out_channels=", out_channels,
                  " must both be divisible by groups=", options.groups);
    for (int d = 0; d < 2; ++d)
      MAMCLIP_CHECK(options.stride[d] > 0 && options.dilation[d] > 0 && options.padding[d] >= 0, value_error,
                    "Conv2d: stride and dilation must be positive and padding non-negative, got stride=(",
                    options.stride[0], ", ", options.stride[1], "), padding=(", options.padding[0], ", ",
                    options.padding[1], "), dilation=(", options.dilation[0], ", ", options.dilation[1], ")");
    Tensor<float> w = empty<float>({out_channels, in_channels / options.groups, kernel_size[0], kernel_size[1]});
    init::kaiming_uniform_(w, std::sqrt(5.0), init::FanMode::fan_in, init::Nonlinearity::leaky_relu, gen);
    weight = register_parameter("weight", w);
    if (with_bias) {
      const auto fan_in = static_cast<double>(in_channels / options.groups * kernel_size[0] * kernel_size[1]);
      Tensor<float> b = empty<float>({out_channels});
      init::uniform_(b, -1.0 / std::sqrt(fan_in), 1.0 / std::sqrt(fan_in), gen);
      bias = register_parameter("bias", b);
    }
  }

  std::string type_name() const override { return "Conv2d"; }
  // torch's repr: "3, 96, kernel_size=(4, 4), stride=(4, 4)", with padding, dilation, groups and bias
  // only where they differ from the defaults.
  std::string extra_repr() const override {
    auto pair = [](const std::array<int64_t, 2>& a) {
      return "(" + std::to_string(a[0]) + ", " + std::to_string(a[1]) + ")";
    };
    std::ostringstream os;
    os << in_channels_ << ", " << out_channels_ << ", kernel_size=" << pair(kernel_size_) << ", stride=" << pair(options_.stride);
    if (options_.padding != std::array<int64_t, 2>{0, 0}) os << ", padding=" << pair(options_.padding);
    if (options_.dilation != std::array<int64_t, 2>{1, 1}) os << ", dilation=" << pair(options_.dilation);
    if (options_.groups != 1) os << ", groups=" << options_.groups;
    if (!bias.defined()) os << ", bias=false";
    return os.str();
  }
  int64_t in_channels() const { return in_channels_; }
  int64_t out_channels() const { return out_channels_; }
  const std::array<int64_t, 2>& kernel_size() const { return kernel_size_; }
  const Conv2dOptions& options() const { return options_; }

  Tensor<float> weight;  // [out_channels, in_channels / groups, kH, kW]
  Tensor<float> bias;    // [out_channels], undefined when built with with_bias = false

 protected:
  void check_input(const Tensor<float>& x) const override {
    MAMCLIP_CHECK(x.dim() == 4 && x.size(1) == in_channels_, shape_error, "Conv2d(", in_channels_, ", ", out_channels_,
                  "): input has shape ", shape_str(x.shape()), "; expected [N, ", in_channels_, ", H, W]");
  }
  Tensor<float> forward_impl(const Tensor<float>& x) override { return conv2d(x, weight, bias, options_); }

 private:
  int64_t in_channels_, out_channels_;
  std::array<int64_t, 2> kernel_size_;
  Conv2dOptions options_;
};

}  // namespace mamclip::nn
