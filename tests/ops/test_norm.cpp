// layer_norm and normalize: values against compositions of other ops,
// affine variants, gradcheck on non-contiguous inputs at awkward sizes, errors.
#include <cstring>

#include "support/test_support.hpp"

namespace test_norm {
using namespace mamclip;
using namespace mamclip::test;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -2, double hi = 2) { return uniform_random<double>(s, seed, lo, hi); }

// Reference layer norm from reductions and elementwise ops (biased variance).
Tensor<double> reference_layer_norm(const Tensor<double>& x, const std::vector<int64_t>& dims, const Tensor<double>& w,
                                    const Tensor<double>& b, double eps) {
  auto y = (x - mean(x, dims, true)) * rsqrt(var(x, dims, 0, true) + eps);
  if (w.defined()) y = y * w;
  if (b.defined()) y = y + b;
  return y;
}

// Values whose magnitude is at least 0.2, so |x|^(p-1) and sign(x) are smooth around them.
Tensor<double> away_from_zero(const Tensor<double>& t) {
  auto v = t.to_vector();
  for (auto& e : v) e = e < 0 ? e - 0.2 : e + 0.2;
  return from_vector<double>(v, t.shape());
}

}  // namespace

TEST_CASE("layer_norm: hand-computed values, biased variance, affine") {
  auto x = tensor<double>({1, 2, 3, 4, 10, 10, 10, 10}, {2, 4});
  auto y = layer_norm(x, {4});
  const double s = std::sqrt(1.25 + 1e-5);  // var([1, 2, 3, 4]) with divisor n = 1.25
  CHECK(y(0, 0) == Approx(-1.5 / s).epsilon(1e-14));
  CHECK(y(0, 3) == Approx(1.5 / s).epsilon(1e-14));
  CHECK(y(1, 2) == 0.0);  // a constant row normalises to 0 (eps keeps it finite)
  auto w = tensor<double>({1, 2, 3, 4}), b = tensor<double>({0, 0, 1, -1});
  auto ya = layer_norm(x, {4}, w, b, 0.0);
  CHECK(ya(0, 1) == Approx(2 * -0.5 / std::sqrt(1.25)).epsilon(1e-14));
  CHECK(ya(0, 2) == Approx(3 * 0.5 / std::sqrt(1.25) + 1).epsilon(1e-14));
  CHECK(std::isnan(ya(1, 0)));  // eps 0 on a constant row: 0 / 0, as PyTorch
}

TEST_CASE("layer_norm over several trailing dims matches the composed reference") {
  auto x = rnd({3, 7, 11}, 1, -3, 5);
  auto w = rnd({7, 11}, 2), b = rnd({7, 11}, 3);
  require_allclose(layer_norm(x, {7, 11}, w, b, 1e-5), reference_layer_norm(x, {1, 2}, w, b, 1e-5), 1e-13, 1e-13);
  require_allclose(layer_norm(noncontiguous(x), {11}, Tensor<double>(), b.select(0, 0), 1e-3),
                   reference_layer_norm(x, {2}, Tensor<double>(), b.select(0, 0), 1e-3), 1e-13, 1e-13);
  require_allclose(layer_norm(x, {3, 7, 11}), reference_layer_norm(x, {0, 1, 2}, {}, {}, 1e-5), 1e-13, 1e-13);
}

TEST_CASE("layer_norm gradcheck for x, weight and bias, each optional") {
  auto x = noncontiguous(rnd({3, 7, 11}, 4));
  auto w = noncontiguous(rnd({7, 11}, 5)), b = noncontiguous(rnd({7, 11}, 6));
  require_gradcheck([](auto& v) { return layer_norm(v[0], {7, 11}, v[1], v[2]); }, {x, w, b});
  require_gradcheck([](auto& v) { return layer_norm(v[0], {11}, v[1], v[2], 1e-3); },
                    {x, rnd({11}, 7), rnd({11}, 8)});
  require_gradcheck([](auto& v) { return layer_norm(v[0], {9}, v[1]); }, {noncontiguous(rnd({5, 9}, 9)), rnd({9}, 10)});
  require_gradcheck([](auto& v) { return layer_norm(v[0], {9}, Tensor<double>(), v[1]); },
                    {noncontiguous(rnd({5, 9}, 11)), rnd({9}, 12)});
  require_gradcheck([](auto& v) { return layer_norm(v[0], {5, 9}); }, {noncontiguous(rnd({5, 9}, 13))});
}

TEST_CASE("layer_norm backward computes only the gradients that are needed") {
  auto x = rnd({5, 9}, 14);
  auto w = rnd({9}, 15).set_requires_grad(), b = rnd({9}, 16).set_requires_grad();
  auto y = layer_norm(x, {9}, w, b);
  sum(y * x).backward();
  CHECK(w.grad().defined());
  CHECK(b.grad().defined());
  require_allclose(b.grad(), sum(x, {0}), 1e-13, 1e-13, "dbias = sum over rows of g");
}

TEST_CASE("layer_norm in half and bfloat16 computes in float") {
  auto x = rnd({5, 9}, 17, -3, 8).to<float>();
  auto w = rnd({9}, 18).to<float>(), b = rnd({9}, 19).to<float>();
  require_allclose(layer_norm(x.to<half>(), {9}, w.to<half>(), b.to<half>()).to<float>(), layer_norm(x, {9}, w, b), 1e-2,
                   1e-2);
  auto xb = x.to<bfloat16>().detach().set_requires_grad();
  auto wb = w.to<bfloat16>().detach().set_requires_grad();
  sum(layer_norm(xb, {9}, wb)).backward();
  CHECK(xb.grad().shape() == Shape{5, 9});
  CHECK(wb.grad().shape() == Shape{9});
}

TEST_CASE("layer_norm errors name the argument and the shapes") {
  auto x = rnd({2, 3}, 1);
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm(x, {4}), shape_error,
                              "layer_norm: input has shape [2, 3] but normalized_shape is [4]; expected the input's "
                              "trailing dims to equal normalized_shape");
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm(x, {1, 2, 3}), shape_error, "input has shape [2, 3] but normalized_shape is [1, 2, 3]");
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm(x, {}), shape_error, "layer_norm: normalized_shape must have at least one dim, got []");
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm(x, {3}, rnd({2}, 2)), shape_error,
                              "layer_norm: weight has shape [2] but normalized_shape is [3]; expected them equal");
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm(x, {3}, Tensor<double>(), rnd({3, 1}, 2)), shape_error,
                              "layer_norm: bias has shape [3, 1] but normalized_shape is [3]");
  if (ensure_stand_in_cuda()) {
    auto d = ones<float>({2, 3}).to(Device::cuda(0));
    MAMCLIP_REQUIRE_THROWS_WITH(layer_norm(d, {3}), device_error,
                                "layer_norm: no kernel is registered for float32 tensors on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(layer_norm(ones<float>({2, 3}), {3}, d.select(0, 0)), device_error,
                                "layer_norm: expected all tensors on one device, but input is on cpu and weight is on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(normalize(d), device_error, "normalize: no kernel is registered");
  }
}

TEST_CASE("normalize: L2 and general p, eps clamp, any dim") {
  auto x = tensor<double>({3, 4, 0, 0, -1, 0}, {3, 2});
  auto y = normalize(x);
  require_allclose(y, tensor<double>({0.6, 0.8, 0, 0, -1, 0}, {3, 2}), 0, 1e-15, "the zero row stays 0 (no NaN)");
  auto y1 = normalize(x, 1.0, 1);
  CHECK(y1(0, 0) == Approx(3.0 / 7).epsilon(1e-15));
  auto y3 = normalize(x, 3.0, -1);
  CHECK(y3(0, 1) == Approx(4 / std::cbrt(91.0)).epsilon(1e-14));
  auto c = normalize(x, 2.0, 0);  // columns: (3, 0, -1) and (4, 0, 0)
  CHECK(c(2, 0) == Approx(-1 / std::sqrt(10.0)).epsilon(1e-15));
  CHECK(c(0, 1) == 1.0);
  // Below eps the divisor is eps itself.
  CHECK(normalize(tensor<double>({3e-3, 4e-3}), 2.0, 0, 1.0).to_vector() == std::vector<double>{3e-3, 4e-3});
  // Against the composed formula on a 3-D input, every dim, contiguous or not.
  auto r = rnd({3, 7, 11}, 20);
  for (int64_t dim : {0, 1, 2})
    for (double p : {0.5, 1.0, 2.0, 3.0}) {
      INFO("dim " << dim << " p " << p);
      auto ref = r / clamp(pow(sum(pow(abs(r), p), {dim}, true), 1 / p), 1e-12, std::nullopt);
      require_allclose(normalize(noncontiguous(r), p, dim), ref, 1e-14, 1e-12);
    }
}

TEST_CASE("normalize gradcheck on non-contiguous inputs") {
  for (int64_t dim : {0, 1, -1})
    for (double p : {0.5, 1.0, 2.0, 3.0}) {
      INFO("dim " << dim << " p " << p);
      require_gradcheck([&](auto& v) { return normalize(v[0], p, dim); }, {noncontiguous(away_from_zero(rnd({3, 7, 11}, 21)))});
    }
  require_gradcheck([](auto& v) { return normalize(v[0], 2.0, 0); }, {noncontiguous(rnd({5, 9}, 22))});
  // Clamped lanes (norm < eps): y = x / eps, the norm gets no gradient.
  require_gradcheck([](auto& v) { return normalize(v[0], 2.0, 1, 50.0); }, {noncontiguous(rnd({5, 9}, 23))});
  auto z = zeros<double>({2, 3}).set_requires_grad();
  sum(normalize(z) * tensor<double>({1, 2, 3, 4, 5, 6}, {2, 3})).backward();
  require_allclose(z.grad(), tensor<double>({1, 2, 3, 4, 5, 6}, {2, 3}) / 1e-12, 0, 1e-15, "zero lanes: g / eps");
}

TEST_CASE("normalize errors") {
  auto x = rnd({2, 3}, 1);
  MAMCLIP_REQUIRE_THROWS_WITH(normalize(x, 0.0), value_error, "normalize: p must be positive and finite, got 0");
  MAMCLIP_REQUIRE_THROWS_WITH(normalize(x, 2.0, 1, -1.0), value_error, "normalize: eps must be non-negative, got -1");
  MAMCLIP_REQUIRE_THROWS_WITH(normalize(x, 2.0, 2), index_error, "normalize: dim 2 is out of range for a tensor with 2 dims");
  auto h = normalize(x.to<float>().to<half>(), 2.0, 1).to<float>();
  require_allclose(h, normalize(x.to<float>(), 2.0, 1), 1e-3, 1e-2);
}

}  // namespace test_norm
