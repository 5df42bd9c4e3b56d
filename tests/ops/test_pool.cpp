// avg_pool2d and adaptive_avg_pool2d: PyTorch fixtures (ceil_mode,
// count_include_pad, padding, bins), hand-computed values, gradcheck in double
// on non-contiguous inputs at odd sizes, half / bfloat16, argument errors.
#include "support/test_support.hpp"

namespace test_pool {
using namespace mamclip;
using namespace mamclip::test;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) { return uniform_random<double>(s, seed, lo, hi); }
AvgPool2dOptions pool_opts(std::array<int64_t, 2> stride, std::array<int64_t, 2> padding, bool ceil_mode, bool count_include_pad) {
  AvgPool2dOptions o;
  o.stride = stride;
  o.padding = padding;
  o.ceil_mode = ceil_mode;
  o.count_include_pad = count_include_pad;
  return o;
}
}  // namespace

TEST_CASE("avg_pool2d: hand-computed windows, padding counted or not, ceil_mode's extra window") {
  // x = 0..15 as [1, 1, 4, 4].
  const Tensor<double> x = arange<double>(0, 16).reshape({1, 1, 4, 4});
  CHECK(avg_pool2d(x, {2, 2}).to_vector() == std::vector<double>{2.5, 4.5, 10.5, 12.5});
  // 3x3 windows, stride 2, padding 1: the top-left window holds x[0..1, 0..1] = {0, 1, 4, 5}.
  const auto with_pad = avg_pool2d(x, {3, 3}, pool_opts({2, 2}, {1, 1}, false, true));
  CHECK(with_pad.shape() == Shape{1, 1, 2, 2});
  CHECK(with_pad(0, 0, 0, 0) == Approx(10.0 / 9));
  const auto without_pad = avg_pool2d(x, {3, 3}, pool_opts({2, 2}, {1, 1}, false, false));
  CHECK(without_pad(0, 0, 0, 0) == Approx(10.0 / 4));
  // ceil_mode adds a last window that starts inside the image: 5 wide, kernel 2, stride 2 -> 3 outputs.
  const Tensor<double> x5 = arange<double>(0, 5).reshape({1, 1, 1, 5});
  CHECK(avg_pool2d(x5, {1, 2}).shape() == Shape{1, 1, 1, 2});
  const auto ceil = avg_pool2d(x5, {1, 2}, pool_opts({0, 0}, {0, 0}, true, true));
  CHECK(ceil.to_vector() == std::vector<double>{0.5, 2.5, 4.0});  // the last window holds only x[4]
}

TEST_CASE("adaptive_avg_pool2d: PyTorch's bins, and the global average") {
  const Tensor<double> x = arange<double>(0, 5).reshape({1, 1, 1, 5});
  // 5 -> 3 bins: [0, 2), [1, 4), [3, 5).
  CHECK(adaptive_avg_pool2d(x, {1, 3}).to_vector() == std::vector<double>{0.5, 2.0, 3.5});
  const auto r = rnd({2, 3, 5, 7}, 1);
  require_allclose(adaptive_avg_pool2d(r, {1, 1}), mean(r, {2, 3}, true), 1e-14, 1e-14, "global average");
}

TEST_CASE("avg_pool2d and adaptive_avg_pool2d match PyTorch, values and gradients") {
  const auto doc = load_json(fixture_path("conv/pool.json"));
  const Tensor<float> x0 = tensor_from_json<float>(doc.at("x"));
  REQUIRE(doc.at("cases").size() == 7);
  for (const auto& c : doc.at("cases")) {
    const std::string op = c.at("op").get<std::string>();
    INFO(op << " " << c.dump().substr(0, 160));
    Tensor<float> x = x0.detach().clone();
    x.set_requires_grad();
    Tensor<float> y;
    if (op == "avg_pool2d") {
      const auto a = [&](const char* k) { return c.at(k).get<std::array<int64_t, 2>>(); };
      y = avg_pool2d(x, a("kernel"),
                     pool_opts(a("stride"), a("padding"), c.at("ceil_mode").get<bool>(), c.at("count_include_pad").get<bool>()));
    } else {
      y = adaptive_avg_pool2d(x, c.at("output_size").get<std::array<int64_t, 2>>());
    }
    require_allclose(y, tensor_from_json<float>(c.at("y")), 1e-6, 1e-5, "y");
    y.backward(tensor_from_json<float>(c.at("gy")));
    require_allclose(x.grad(), tensor_from_json<float>(c.at("grad_x")), 1e-6, 1e-5, "grad_x");
  }
}

TEST_CASE("pooling gradcheck on non-contiguous inputs at odd sizes") {
  const auto x = noncontiguous(rnd({2, 3, 7, 9}, 5));
  const std::vector<std::pair<const char*, std::function<Tensor<double>(const std::vector<Tensor<double>>&)>>> fns = {
      {"2x2", [](auto& v) { return avg_pool2d(v[0], {2, 2}); }},
      {"3x3 s2 p1 ceil, padding not counted", [](auto& v) { return avg_pool2d(v[0], {3, 3}, pool_opts({2, 2}, {1, 1}, true, false)); }},
      {"3x2 s(1,3) p(1,1) ceil, padding counted", [](auto& v) { return avg_pool2d(v[0], {3, 2}, pool_opts({1, 3}, {1, 1}, true, true)); }},
      {"adaptive 3x4", [](auto& v) { return adaptive_avg_pool2d(v[0], {3, 4}); }},
      {"adaptive 5x11 (upsampling bins overlap)", [](auto& v) { return adaptive_avg_pool2d(v[0], {5, 11}); }},
  };
  for (const auto& [name, fn] : fns) {
    INFO(name);
    require_gradcheck(fn, {x});
  }
}

TEST_CASE("pooling in half and bfloat16 accumulates in float") {
  const Tensor<float> x = uniform_random<float>({1, 2, 6, 5}, 3, -1, 1);
  const auto ref = avg_pool2d(x.to<half>().to<float>(), {3, 3}, pool_opts({2, 2}, {1, 1}, true, false));
  require_allclose(avg_pool2d(x.to<half>(), {3, 3}, pool_opts({2, 2}, {1, 1}, true, false)).to<float>(), ref, 1e-3, 1e-3);
  const auto refb = adaptive_avg_pool2d(x.to<bfloat16>().to<float>(), {2, 2});
  require_allclose(adaptive_avg_pool2d(x.to<bfloat16>(), {2, 2}).to<float>(), refb, 1e-2, 1e-2);
}

TEST_CASE("pooling errors name the op, the argument and what was expected") {
  const auto x = rnd({1, 2, 5, 5}, 1);
  MAMCLIP_REQUIRE_THROWS_WITH(avg_pool2d(rnd({2, 5, 5}, 1), {2, 2}), shape_error,
                              "avg_pool2d: input has shape [2, 5, 5]; expected 4 dims [N, C, H, W]");
  MAMCLIP_REQUIRE_THROWS_WITH(avg_pool2d(x, {0, 2}), value_error, "avg_pool2d: kernel_size must be positive, got [0, 2]");
  MAMCLIP_REQUIRE_THROWS_WITH(avg_pool2d(x, {2, 2}, pool_opts({-1, 1}, {0, 0}, false, true)), value_error,
                              "avg_pool2d: stride must be positive (or 0 for stride = kernel_size), got [-1, 1]");
  MAMCLIP_REQUIRE_THROWS_WITH(avg_pool2d(x, {2, 2}, pool_opts({1, 1}, {2, 0}, false, true)), value_error,
                              "avg_pool2d: padding must be in [0, kernel_size / 2], got padding [2, 0] for kernel_size [2, 2]");
  MAMCLIP_REQUIRE_THROWS_WITH(avg_pool2d(x, {6, 2}), shape_error,
                              "avg_pool2d: input has shape [1, 2, 5, 5] and kernel_size [6, 2] with padding [0, 0] gives an "
                              "output of 0 x 2; expected a non-empty output");
  MAMCLIP_REQUIRE_THROWS_WITH(adaptive_avg_pool2d(x, {0, 3}), value_error,
                              "adaptive_avg_pool2d: output_size must be positive, got [0, 3]");
  MAMCLIP_REQUIRE_THROWS_WITH(adaptive_avg_pool2d(rnd({1, 2, 0, 5}, 1), {1, 1}), shape_error,
                              "adaptive_avg_pool2d: input has shape [1, 2, 0, 5]; expected non-empty H and W");
  if (ensure_stand_in_cuda())
    MAMCLIP_REQUIRE_THROWS_WITH(avg_pool2d(x.to(Device::cuda(0)), {2, 2}), device_error,
                                "avg_pool2d: no kernel is registered for float64 tensors on cuda:0");
}

}  // namespace test_pool
