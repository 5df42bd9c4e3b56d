// Elementwise ops: values, broadcasting, and gradcheck on non-contiguous inputs at awkward sizes.
#include <cstring>

#include "support/test_support.hpp"

namespace test_elementwise {
using namespace mamclip;
using namespace mamclip::test;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -2, double hi = 2) { return uniform_random<double>(s, seed, lo, hi); }
using Fn = std::function<Tensor<double>(const std::vector<Tensor<double>>&)>;
}  // namespace

TEST_CASE("binary ops broadcast like PyTorch") {
  auto a = tensor<float>({1, 2, 3}, {3, 1});
  auto b = tensor<float>({10, 20}, {1, 2});
  auto c = a + b;
  CHECK(c.shape() == Shape{3, 2});
  CHECK(c.to_vector() == std::vector<float>{11, 21, 12, 22, 13, 23});
  CHECK((a * 2.0).to_vector() == std::vector<float>{2, 4, 6});
  CHECK((1.0 - a).to_vector() == std::vector<float>{0, -1, -2});
  CHECK((6.0 / a).to_vector() == std::vector<float>{6, 3, 2});
}

TEST_CASE("scale_in_place scales the tensor's own storage, outside the graph") {
  auto x = tensor<float>({1, -2, 3, 4, 5, -6}, {2, 3});
  x.set_requires_grad(true);
  const float* storage = x.data_ptr();
  mamclip::detail::scale_in_place(x, 0.5);
  CHECK(x.data_ptr() == storage);
  CHECK(x.to_vector() == std::vector<float>{0.5f, -1, 1.5f, 2, 2.5f, -3});
  CHECK(x.grad_fn() == nullptr);
  // A non-contiguous view scales the elements it sees, and only those.
  auto y = tensor<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor<double> column = y.narrow(1, 1, 1);
  mamclip::detail::scale_in_place(column, -3.0);
  CHECK(y.to_vector() == std::vector<double>{1, -6, 3, 4, -15, 6});
}

TEST_CASE("binary ops gradcheck with broadcasting and non-contiguous inputs") {
  const std::vector<std::pair<const char*, Fn>> ops = {
      {"add", [](auto& v) { return v[0] + v[1]; }},
      {"sub", [](auto& v) { return v[0] - v[1]; }},
      {"mul", [](auto& v) { return v[0] * v[1]; }},
      {"div", [](auto& v) { return v[0] / v[1]; }},
      {"pow", [](auto& v) { return pow(abs(v[0]) + 0.5, v[1]); }},
  };
  for (const auto& [name, fn] : ops) {
    INFO(name);
    require_gradcheck(fn, {noncontiguous(rnd({5, 9}, 1)), rnd({9}, 2, 0.5, 2)});
    require_gradcheck(fn, {rnd({3, 1, 7}, 3), noncontiguous(rnd({5, 7}, 4, 0.5, 2))});
  }
}

TEST_CASE("unary ops gradcheck on non-contiguous inputs") {
  const std::vector<std::pair<const char*, Fn>> ops = {
      {"neg", [](auto& v) { return -v[0]; }},
      {"exp", [](auto& v) { return exp(v[0]); }},
      {"log", [](auto& v) { return log(abs(v[0]) + 0.1); }},
      {"sqrt", [](auto& v) { return sqrt(abs(v[0]) + 0.1); }},
      {"rsqrt", [](auto& v) { return rsqrt(abs(v[0]) + 0.1); }},
      {"abs", [](auto& v) { return abs(v[0]); }},
      {"tanh", [](auto& v) { return tanh(v[0]); }},
      {"sigmoid", [](auto& v) { return sigmoid(v[0]); }},
      {"relu", [](auto& v) { return relu(v[0]); }},
      {"gelu", [](auto& v) { return gelu(v[0]); }},
      {"gelu_tanh", [](auto& v) { return gelu(v[0], GeluApproximation::tanh); }},
      {"clamp", [](auto& v) { return clamp(v[0], -0.7, 0.9); }},
      {"clamp_min", [](auto& v) { return clamp(v[0], 0.3, std::nullopt); }},
      {"pow_scalar", [](auto& v) { return pow(v[0], 3.0); }},
      {"scalar_ops", [](auto& v) { return (2.0 - v[0]) * 3.0 + 1.5 / (v[0] * v[0] + 1.0); }},
  };
  for (const auto& [name, fn] : ops) {
    INFO(name);
    // Keep inputs away from kinks (abs, relu, clamp) so finite differences are valid.
    auto x = rnd({7, 13}, 11);
    auto v = x.to_vector();
    for (auto& e : v)
      if (std::abs(e) < 0.05 || std::abs(e + 0.7) < 0.05 || std::abs(e - 0.9) < 0.05 || std::abs(e - 0.3) < 0.05) e += 0.2;
    require_gradcheck(fn, {noncontiguous(from_vector<double>(v, {7, 13}))});
  }
}

TEST_CASE("where and masked_fill select and route gradients") {
  auto cond = tensor<bool>({true, false, true}, {3});
  auto a = rnd({2, 3}, 5), b = rnd({3}, 6);
  auto w = where(cond, a, b);
  CHECK(w(1, 1) == b(1));
  CHECK(w(1, 2) == a(1, 2));
  require_gradcheck([&](auto& v) { return where(cond, v[0], v[1]); }, {noncontiguous(a), b});
  auto m = masked_fill(a, cond, -1e9);
  CHECK(m(0, 0) == -1e9);
  CHECK(m(0, 1) == a(0, 1));
  require_gradcheck([&](auto& v) { return masked_fill(v[0], cond, 3.0); }, {noncontiguous(a)});
  MAMCLIP_REQUIRE_THROWS_WITH(masked_fill(rnd({3}, 1), tensor<bool>({true, false}, {2, 1}), 0.0), shape_error,
                              "must broadcast to the input's shape [3]");
}

TEST_CASE("dropout is seeded, scales kept elements, and is the identity in eval") {
  auto x = ones<double>({2000});
  Generator g1(3), g2(3);
  auto y1 = dropout(x, 0.25, true, g1), y2 = dropout(x, 0.25, true, g2);
  CHECK(y1.to_vector() == y2.to_vector());
  int zeros_count = 0;
  for (double v : y1.to_vector()) {
    if (v == 0) ++zeros_count;
    else CHECK(v == Approx(1 / 0.75));
  }
  CHECK(std::abs(zeros_count / 2000.0 - 0.25) < 0.04);
  CHECK(dropout(x, 0.25, false).is_same(x));
  Generator g3(9);
  require_gradcheck([&](auto& v) {
    Generator g(9);  // same mask for every evaluation
    return dropout(v[0], 0.4, true, g);
  }, {rnd({6, 5}, 2)});
  MAMCLIP_REQUIRE_THROWS_WITH(dropout(x, 1.5, true), value_error, "p must be in [0, 1], got 1.5");
}

TEST_CASE("half and bfloat16 compute in float") {
  auto x = tensor<float>({0.5f, 1.0f, -2.0f});
  auto h = exp(x.to<bfloat16>()).to<float>();
  require_allclose(h, exp(x), 0, 1e-2);
  auto hh = (x.to<half>() * x.to<half>()).to<float>();
  require_allclose(hh, x * x, 0, 1e-3);
}

TEST_CASE("exact gelu in float (vectorised erf on contiguous data) agrees with double, forward and backward") {
  // 3000 values over [-8, 8]: past erf's saturation on both sides, and enough to use full SIMD packets.
  const Tensor<double> xd = rnd({3, 1000}, 31, -8, 8);
  for (const bool contiguous : {true, false}) {
    Tensor<float> xf = xd.to<float>();
    if (!contiguous) xf = noncontiguous(xf);
    xf.set_requires_grad();
    const Tensor<float> yf = gelu(xf);
    sum(yf * xd.to<float>()).backward();
    Tensor<double> x2 = xd.detach().set_requires_grad();
    sum(gelu(x2) * xd).backward();
    require_allclose(yf, gelu(xd), 1e-6, 4e-6, contiguous ? "gelu contiguous" : "gelu strided");
    require_allclose(xf.grad(), x2.grad(), 1e-6, 4e-6, contiguous ? "gelu' contiguous" : "gelu' strided");
  }
}

// The AVX2 / AVX-512 GELU kernels against double precision over a dense sweep
// (every 1/4096 on [-12, 12], both saturations included) and their two
// instruction sets against each other, bit for bit. Errors are measured in
// float epsilons of |x| + |result|: in the left tail 1 + erf(x/√2) cancels,
// so there (as in any float GELU) the error is a few ulp of x, not of the tiny result.
TEST_CASE("vectorised GELU kernels: accuracy over a dense sweep, AVX2 and AVX-512 alike") {
  if (!cpu::gelu_simd::available()) {
    WARN("skipped: this CPU or build has no AVX2+FMA; GELU runs on Eigen's erf here");
    return;
  }
  constexpr int64_t kB = cpu::gelu_simd::kBlock;
  std::vector<float> xs, gs;
  for (int64_t i = -12 * 4096; i <= 12 * 4096; ++i) xs.push_back(static_cast<float>(i) / 4096.0f);
  while (xs.size() % kB) xs.push_back(0.5f);
  for (size_t i = 0; i < xs.size(); ++i) gs.push_back(1.0f - static_cast<float>(i % 7) * 0.25f);
  std::vector<float> y(xs.size()), dy(xs.size());
  for (size_t i = 0; i < xs.size(); i += kB) {
    cpu::gelu_simd::block(xs.data() + i, nullptr, y.data() + i);
    cpu::gelu_simd::block(xs.data() + i, gs.data() + i, dy.data() + i);
  }
  double worst_y = 0, worst_dy = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    const double x = xs[i], cdf = 0.5 * (1.0 + std::erf(x / std::sqrt(2.0)));
    const double ref_y = x * cdf, ref_dy = gs[i] * (cdf + x * std::exp(-0.5 * x * x) / std::sqrt(2.0 * M_PI));
    const double eps = dtype_eps<float>(), scale = std::abs(x) + std::abs(gs[i]);
    worst_y = std::max(worst_y, std::abs(y[i] - ref_y) / (eps * (std::abs(x) + std::abs(ref_y))));
    worst_dy = std::max(worst_dy, std::abs(dy[i] - ref_dy) / (eps * (scale + std::abs(ref_dy))));
  }
  INFO("worst error in float epsilons of |x| + |result|: gelu " << worst_y << ", gelu' " << worst_dy);
  CHECK(worst_y < 3);
  CHECK(worst_dy < 3);
#ifdef MAMCLIP_AVX512
  if (!cpu_has_avx512f()) {
    WARN("AVX-512 kernel not checked against AVX2: this CPU has no AVX-512F");
    return;
  }
  std::vector<float> a(kB), b(kB);
  bool same = true;
  for (size_t i = 0; i < xs.size(); i += kB)
    for (const float* g : std::initializer_list<const float*>{nullptr, gs.data() + i}) {
      cpu::gelu_simd::detail::block_avx2(xs.data() + i, g, a.data());
      cpu::gelu_simd::detail::block_avx512(xs.data() + i, g, b.data());
      same = same && std::memcmp(a.data(), b.data(), sizeof(float) * kB) == 0;
    }
  CHECK(same);
#endif
}

}  // namespace test_elementwise
