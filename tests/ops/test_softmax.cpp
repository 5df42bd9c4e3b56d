// softmax and log_softmax: values, stability, masked rows, every dim (fast
// last-dim path and strided lanes), gradcheck on non-contiguous inputs, errors.
#include <cstring>

#include "support/test_support.hpp"

namespace test_softmax {
using namespace mamclip;
using namespace mamclip::test;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -3, double hi = 3) { return uniform_random<double>(s, seed, lo, hi); }
constexpr double kInf = std::numeric_limits<double>::infinity();

// Reference log_softmax along dim, from other ops: x - logsumexp(x).
Tensor<double> reference_log_softmax(const Tensor<double>& x, int64_t dim) { return x - logsumexp(x, {dim}, true); }

}  // namespace

TEST_CASE("softmax and log_softmax: hand-computed values") {
  auto x = tensor<double>({0, std::log(3.0), 1, 1}, {2, 2});
  auto y = softmax(x, -1);
  CHECK(y.to_vector() == std::vector<double>{0.25, 0.75, 0.5, 0.5});
  auto l = log_softmax(x, 1);
  CHECK(l(0, 0) == Approx(std::log(0.25)).epsilon(1e-15));
  CHECK(l(1, 1) == Approx(std::log(0.5)).epsilon(1e-15));
  auto c = softmax(x, 0);  // columns: (0, 1) and (log 3, 1)
  CHECK(c(0, 0) == Approx(1 / (1 + std::exp(1.0))).epsilon(1e-15));
  CHECK(c(1, 1) == Approx(std::exp(1.0) / (3 + std::exp(1.0))).epsilon(1e-15));
  // Large logits do not overflow (the max is subtracted).
  auto big = softmax(tensor<double>({1000, 1000 + std::log(3.0)}), 0);
  CHECK(big(0) == Approx(0.25).epsilon(1e-12));
  CHECK(log_softmax(tensor<double>({-1000.0, 0.0}), 0)(0) == Approx(-1000).epsilon(1e-15));
  // A 0-dim tensor is one lane of one element.
  CHECK(softmax(scalar<double>(3.0), 0).item() == 1.0);
  CHECK(log_softmax(scalar<double>(3.0), -1).item() == 0.0);
}

TEST_CASE("softmax matches exp(x - logsumexp) along every dim, contiguous or not") {
  auto x = rnd({3, 7, 11}, 1);
  for (int64_t dim : {0, 1, 2, -1}) {
    INFO("dim " << dim);
    auto ref = reference_log_softmax(x, dim);
    require_allclose(log_softmax(x, dim), ref, 1e-14, 1e-14);
    require_allclose(softmax(x, dim), exp(ref), 1e-15, 1e-14);
    require_allclose(log_softmax(noncontiguous(x), dim), ref, 1e-14, 1e-14);
    require_allclose(softmax(x.permute({2, 0, 1}), dim), exp(reference_log_softmax(x.permute({2, 0, 1}), dim)), 1e-15,
                     1e-14, "permuted");
  }
}

TEST_CASE("masked entries: -inf gets probability 0; a fully masked row is NaN as in PyTorch") {
  auto x = tensor<double>({1, -kInf, 1, -kInf, -kInf, -kInf}, {2, 3});
  auto y = softmax(x, 1);
  CHECK(y(0, 0) == 0.5);
  CHECK(y(0, 1) == 0.0);
  CHECK(y(0, 2) == 0.5);
  for (int k = 0; k < 3; ++k) CHECK(std::isnan(y(1, k)));
  auto l = log_softmax(x, 1);
  CHECK(l(0, 0) == Approx(-std::log(2.0)).epsilon(1e-15));
  CHECK(l(0, 1) == -kInf);
  for (int k = 0; k < 3; ++k) CHECK(std::isnan(l(1, k)));

  // Gradients of a partially masked row stay finite and give the masked entry nothing.
  auto xs = x.slice(0, 0, 1).clone().set_requires_grad();
  sum(softmax(xs, 1) * tensor<double>({1, 2, 3}, {1, 3})).backward();
  const auto g = xs.grad().to_vector();
  CHECK(g[0] == Approx(-0.5));  // y0 (g0 - sum g y) = 0.5 (1 - 2)
  CHECK(g[1] == 0.0);
  CHECK(g[2] == Approx(0.5));
  auto xl = x.slice(0, 0, 1).clone().set_requires_grad();
  sum(log_softmax(xl, 1) * tensor<double>({1, 2, 3}, {1, 3})).backward();
  const auto gl = xl.grad().to_vector();
  CHECK(gl[0] == Approx(1 - 0.5 * 6).margin(1e-15));  // g - exp(y) sum g
  CHECK(gl[1] == 2.0);
  CHECK(gl[2] == Approx(3 - 0.5 * 6).margin(1e-15));
}

TEST_CASE("softmax and log_softmax gradcheck on non-contiguous inputs") {
  for (int64_t dim : {0, 1, 2, -1}) {
    INFO("dim " << dim);
    require_gradcheck([&](auto& v) { return softmax(v[0], dim); }, {noncontiguous(rnd({3, 7, 11}, 2))});
    require_gradcheck([&](auto& v) { return log_softmax(v[0], dim); }, {noncontiguous(rnd({3, 7, 11}, 3))});
  }
  require_gradcheck([](auto& v) { return softmax(v[0], 0); }, {noncontiguous(rnd({5, 9}, 4))});
  require_gradcheck([](auto& v) { return log_softmax(v[0], -1); }, {rnd({5, 9}, 5).t()});
  // Large logits (the max is subtracted in the backward too).
  require_gradcheck([](auto& v) { return log_softmax(v[0], 1); }, {noncontiguous(rnd({5, 9}, 6, 200, 210))});
}

TEST_CASE("softmax in half and bfloat16 computes in float") {
  auto x = rnd({5, 9}, 7).to<float>();
  require_allclose(softmax(x.to<half>(), 1).to<float>(), softmax(x, 1), 1e-3, 1e-2);
  require_allclose(log_softmax(x.to<bfloat16>(), 0).to<float>(), log_softmax(x, 0), 2e-2, 1e-2);
  auto xh = x.to<bfloat16>().detach().set_requires_grad();
  sum(mul(log_softmax(xh, 1), softmax(xh, 0))).backward();
  CHECK(xh.grad().shape() == Shape{5, 9});
}

TEST_CASE("softmax errors name the op") {
  MAMCLIP_REQUIRE_THROWS_WITH(softmax(rnd({2, 3}, 1), 2), index_error,
                              "softmax: dim 2 is out of range for a tensor with 2 dims (expected a dim in [-2, 1])");
  MAMCLIP_REQUIRE_THROWS_WITH(log_softmax(rnd({2, 3}, 1), -3), index_error, "log_softmax: dim -3 is out of range");
  if (ensure_stand_in_cuda()) {
    auto d = ones<float>({2, 3}).to(Device::cuda(0));
    MAMCLIP_REQUIRE_THROWS_WITH(softmax(d, 1), device_error, "softmax: no kernel is registered for float32 tensors on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(log_softmax(d, 1), device_error, "log_softmax: no kernel is registered");
  }
}

}  // namespace test_softmax
