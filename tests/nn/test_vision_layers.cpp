// Conv2d, LayerNorm2d and DropPath: PyTorch / timm names, shapes, init
// ranges, repr, forward against the ops they wrap, input checks.
#include "support/test_support.hpp"

#include <algorithm>

namespace test_vision_layers {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::nn;

namespace {
std::pair<double, double> min_max(const Tensor<float>& t) {
  const auto v = t.to_vector();
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return {*lo, *hi};
}
Conv2dOptions conv_opts(std::array<int64_t, 2> stride, std::array<int64_t, 2> padding, int64_t groups) {
  Conv2dOptions o;
  o.stride = stride;
  o.padding = padding;
  o.groups = groups;
  return o;
}
}  // namespace

TEST_CASE("Conv2d: names, shapes, torch's default init bounds, seeding and repr") {
  Generator g1(1), g2(1);
  Conv2d stem(3, 96, {4, 4}, conv_opts({4, 4}, {0, 0}, 1), true, g1), same(3, 96, {4, 4}, conv_opts({4, 4}, {0, 0}, 1), true, g2);
  CHECK(stem.weight.shape() == Shape{96, 3, 4, 4});
  CHECK(stem.bias.shape() == Shape{96});
  const auto names = stem.named_parameters();
  REQUIRE(names.size() == 2);
  CHECK(names[0].first == "weight");
  CHECK(names[1].first == "bias");
  const double bound = 1.0 / std::sqrt(3.0 * 16);
  for (const Tensor<float>* t : {&stem.weight, &stem.bias}) {
    const auto [lo, hi] = min_max(*t);
    CHECK(lo >= -bound);
    CHECK(hi <= bound);
  }
  const auto [wlo, whi] = min_max(stem.weight);  // 4608 draws fill the range
  CHECK(wlo < -0.99 * bound);
  CHECK(whi > 0.99 * bound);
  CHECK(stem.weight.to_vector() == same.weight.to_vector());
  CHECK(stem.extra_repr() == "3, 96, kernel_size=(4, 4), stride=(4, 4)");

  // Depthwise 7x7: fan_in = 1 * 49 (in_channels / groups), no bias.
  Conv2d dw(96, 96, {7, 7}, conv_opts({1, 1}, {3, 3}, 96), false);
  CHECK(dw.weight.shape() == Shape{96, 1, 7, 7});
  CHECK_FALSE(dw.bias.defined());
  CHECK(dw.named_parameters().size() == 1);
  const auto [dlo, dhi] = min_max(dw.weight);
  CHECK(dlo >= -1.0 / 7);
  CHECK(dhi <= 1.0 / 7);
  CHECK(dhi > 0.99 / 7);
  CHECK(dw.extra_repr() == "96, 96, kernel_size=(7, 7), stride=(1, 1), padding=(3, 3), groups=96, bias=false");
}

TEST_CASE("Conv2d: forward is conv2d, trains its parameters, checks its input and arguments") {
  Conv2d conv(4, 6, {3, 3}, conv_opts({2, 2}, {1, 1}, 2));
  const Tensor<float> x = uniform_random<float>({2, 4, 9, 7}, 3, -1, 1);
  const Tensor<float> y = conv(x);
  require_allclose(y, conv2d(x, conv.weight, conv.bias, conv.options()), 0, 0);
  CHECK(y.shape() == Shape{2, 6, 5, 4});
  sum(y).backward();
  REQUIRE(conv.weight.grad().defined());
  REQUIRE(conv.bias.grad().defined());
  CHECK(conv.bias.grad().to_vector() == std::vector<float>(6, 40.0f));  // 2 samples x 5 x 4 outputs each
  MAMCLIP_REQUIRE_THROWS_WITH(conv(uniform_random<float>({2, 3, 9, 7}, 4, -1, 1)), shape_error,
                              "Conv2d(4, 6): input has shape [2, 3, 9, 7]; expected [N, 4, H, W]");
  MAMCLIP_REQUIRE_THROWS_WITH(Conv2d(4, 6, {3, 3}, conv_opts({1, 1}, {0, 0}, 4)), value_error,
                              "Conv2d: in_channels=4 and out_channels=6 must both be divisible by groups=4");
  MAMCLIP_REQUIRE_THROWS_WITH(Conv2d(4, 6, {0, 3}), value_error, "Conv2d: kernel_size must be positive, got (0, 3)");
  MAMCLIP_REQUIRE_THROWS_WITH(Conv2d(0, 6, {3, 3}), value_error, "Conv2d: in_channels and out_channels must be positive");
  MAMCLIP_REQUIRE_THROWS_WITH(Conv2d(4, 6, {3, 3}, conv_opts({0, 1}, {0, 0}, 1)), value_error,
                              "Conv2d: stride and dilation must be positive and padding non-negative, got stride=(0, 1)");
}

TEST_CASE("LayerNorm2d: timm's names and init, forward is layer_norm2d, input checks") {
  LayerNorm2d ln(5);
  CHECK(ln.eps() == 1e-6);
  const auto names = ln.named_parameters();
  REQUIRE(names.size() == 2);
  CHECK(names[0].first == "weight");
  CHECK(names[1].first == "bias");
  CHECK(ln.weight.to_vector() == std::vector<float>(5, 1.0f));
  CHECK(ln.bias.to_vector() == std::vector<float>(5, 0.0f));
  CHECK(ln.type_name() == "LayerNorm2d");
  CHECK(ln.extra_repr() == "[5], eps=1e-06, elementwise_affine=true");
  ln.weight.copy_(uniform_random<float>({5}, 1, 0.5, 1.5));
  const Tensor<float> x = uniform_random<float>({2, 5, 3, 4}, 2, -1, 1);
  require_allclose(ln(x), layer_norm2d(x, ln.weight, ln.bias, 1e-6), 0, 0);
  MAMCLIP_REQUIRE_THROWS_WITH(ln(uniform_random<float>({2, 4, 3, 4}, 2, -1, 1)), shape_error,
                              "LayerNorm2d(5): input has shape [2, 4, 3, 4]; expected [N, 5, H, W]");
  MAMCLIP_REQUIRE_THROWS_WITH(LayerNorm2d(0), value_error, "LayerNorm2d: channels must be positive, got 0");
}

TEST_CASE("DropPath follows the training flag and its generator, and has no parameters") {
  Generator ref(3);
  DropPath dp(0.25, std::make_shared<Generator>(3));
  CHECK(dp.named_parameters().empty());
  CHECK(dp.extra_repr() == "drop_prob=0.250");
  const Tensor<float> x = uniform_random<float>({64, 3, 2, 2}, 4, -1, 1);
  const Tensor<float> y = dp(x);
  require_allclose(y, drop_path(x, 0.25, true, ref), 0, 0);
  bool some_dropped = false;
  for (int64_t n = 0; n < 64; ++n) some_dropped = some_dropped || y(n, 0, 0, 0) == 0.0f;
  CHECK(some_dropped);
  dp.eval();
  CHECK(dp(x).is_same(x));
  CHECK(DropPath().extra_repr() == "drop_prob=0.000");
  MAMCLIP_REQUIRE_THROWS_WITH(DropPath(-0.1), value_error, "DropPath: p must be in [0, 1], got -0.1");
}

}  // namespace test_vision_layers
