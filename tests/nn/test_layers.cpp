// Layers and initialisers: PyTorch init ranges, seeding, forward against the
// ops they wrap, input checks, and gradients. Modules hold float parameters,
// so double-precision gradchecks run on the ops each module calls.
#include "support/test_support.hpp"

#include <algorithm>

namespace test_layers {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::nn;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) {
  Generator g(seed);
  Tensor<double> t = empty<double>(s);
  return mamclip::uniform_(t, lo, hi, g);
}
std::pair<double, double> min_max(const Tensor<float>& t) {
  const auto v = t.to_vector();
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  return {*lo, *hi};
}
double mean_of(const std::vector<float>& v) {
  double s = 0;
  for (float x : v) s += x;
  return s / static_cast<double>(v.size());
}
double std_of(const std::vector<float>& v) {
  const double m = mean_of(v);
  double s = 0;
  for (float x : v) s += (x - m) * (x - m);
  return std::sqrt(s / static_cast<double>(v.size()));
}
}  // namespace

TEST_CASE("Linear: PyTorch default init range, reproducible under a seed") {
  Generator g1(42), g2(42), g3(43);
  Linear a(37, 23, true, g1), b(37, 23, true, g2), c(37, 23, true, g3);
  CHECK(a.weight.shape() == Shape{23, 37});
  CHECK(a.bias.shape() == Shape{23});
  const double bound = 1.0 / std::sqrt(37.0);
  for (const Tensor<float>* t : {&a.weight, &a.bias}) {
    const auto [lo, hi] = min_max(*t);
    CHECK(lo >= -bound);
    CHECK(hi <= bound);
  }
  // The weights fill the range (851 draws: the extremes come within 1 % of the bound).
  const auto [wlo, whi] = min_max(a.weight);
  CHECK(wlo < -0.99 * bound);
  CHECK(whi > 0.99 * bound);
  CHECK(std::abs(mean_of(a.weight.to_vector())) < 0.01);
  CHECK(std_of(a.weight.to_vector()) == Approx(bound / std::sqrt(3.0)).epsilon(0.05));  // U(-b, b) has std b/sqrt(3)
  CHECK(a.weight.to_vector() == b.weight.to_vector());
  CHECK(a.bias.to_vector() == b.bias.to_vector());
  CHECK(a.weight.to_vector() != c.weight.to_vector());
  // Weight and bias come from different draws.
  const auto weights = a.weight.to_vector();  // one vector: both iterators must point into it
  CHECK(a.bias.to_vector() != std::vector<float>(weights.begin(), weights.begin() + a.bias.numel()));
  // A manual_seed on the default generator reproduces too.
  manual_seed(7);
  Linear d(5, 4);
  manual_seed(7);
  Linear e(5, 4);
  CHECK(d.weight.to_vector() == e.weight.to_vector());
  Linear nobias(5, 4, false);
  CHECK_FALSE(nobias.bias.defined());
  CHECK(nobias.named_parameters().size() == 1);
  MAMCLIP_REQUIRE_THROWS_WITH(Linear(0, 3), value_error, "Linear: in_features and out_features must be positive");
}

TEST_CASE("Linear: forward is the linear op, checks its input, and trains its parameters") {
  Generator gen(5);
  Linear fc(13, 7, true, gen);
  auto x = randn<float>({3, 5, 13}, gen);
  auto y = fc.forward(x);
  CHECK(y.shape() == Shape{3, 5, 7});
  require_allclose(y, linear(x, fc.weight, fc.bias), 0, 0);
  // Against a hand computation in double.
  for (int64_t i : {0, 2})
    for (int64_t j : {1, 4})
      for (int64_t o : {0, 6}) {
        double acc = fc.bias(o);
        for (int64_t k = 0; k < 13; ++k) acc += static_cast<double>(x(i, j, k)) * fc.weight(o, k);
        CHECK(y(i, j, o) == Approx(acc).margin(1e-5));
      }
  MAMCLIP_REQUIRE_THROWS_WITH(fc.forward(randn<float>({3, 12}, gen)), shape_error,
                              "Linear(in_features=13, out_features=7): input has shape [3, 12]; expected the last dim "
                              "to be in_features = 13");
  MAMCLIP_REQUIRE_THROWS_WITH(fc.forward(scalar<float>(1.0f)), shape_error, "input has shape []");
  MAMCLIP_REQUIRE_THROWS_WITH(fc.forward(Tensor<float>()), value_error, "Linear.forward: the input is an undefined");
  // Gradients reach the parameters: d sum(y) / d bias = number of rows.
  sum(fc(noncontiguous(x))).backward();
  for (float v : fc.bias.grad().to_vector()) CHECK(v == 15.0f);
  CHECK(fc.weight.grad().shape() == Shape{7, 13});
}

TEST_CASE("gradcheck of the ops behind Linear, LayerNorm and Embedding (double, non-contiguous, odd sizes)") {
  SECTION("linear") {
    require_gradcheck([](auto& v) { return linear(v[0], v[1], v[2]); },
                      {noncontiguous(rnd({3, 2, 11}, 1)), noncontiguous(rnd({5, 11}, 2)), noncontiguous(rnd({5}, 3))});
    require_gradcheck([](auto& v) { return linear(v[0], v[1]); }, {rnd({9, 7}, 4), noncontiguous(rnd({3, 7}, 5))});
  }
  SECTION("layer_norm") {
    require_gradcheck([](auto& v) { return layer_norm(v[0], {13}, v[1], v[2], 1e-5); },
                      {noncontiguous(rnd({5, 13}, 6, -2, 2)), rnd({13}, 7, 0.5, 1.5), noncontiguous(rnd({13}, 8))});
    require_gradcheck([](auto& v) { return layer_norm(v[0], {3, 5}); }, {noncontiguous(rnd({2, 3, 5}, 9, -2, 2))});
  }
  SECTION("embedding") {
    auto ids = tensor<int64_t>({4, 0, 2, 4, 6, 1, 0}, {7});
    require_gradcheck([&](auto& v) { return embedding(v[0], ids); }, {noncontiguous(rnd({7, 9}, 10))});
    // padding_idx rows get no gradient by definition (finite differences disagree there), so the
    // padding row here is one the ids do not use; the Embedding test checks the padding row itself.
    require_gradcheck([&](auto& v) { return embedding(v[0], ids.reshape({1, 7}), 3); }, {noncontiguous(rnd({7, 9}, 11))});
  }
}

TEST_CASE("LayerNorm: init ones and zeros, forward is the layer_norm op, input checks") {
  LayerNorm ln(13, 1e-6);
  CHECK(ln.weight.to_vector() == std::vector<float>(13, 1.0f));
  CHECK(ln.bias.to_vector() == std::vector<float>(13, 0.0f));
  CHECK(ln.eps() == 1e-6);
  Generator gen(21);
  init::normal_(ln.weight, 1.0, 0.1, gen);
  init::normal_(ln.bias, 0.0, 0.1, gen);
  auto x = randn<float>({6, 13}, gen);
  auto y = ln.forward(noncontiguous(x));
  require_allclose(y, layer_norm(x, {13}, ln.weight, ln.bias, 1e-6), 0, 0);
  // Row 0 by hand: (x - mean) / sqrt(var + eps) * w + b with the biased variance.
  double m = 0, v = 0;
  for (int64_t k = 0; k < 13; ++k) m += x(0, k);
  m /= 13;
  for (int64_t k = 0; k < 13; ++k) v += (x(0, k) - m) * (x(0, k) - m);
  v /= 13;
  for (int64_t k = 0; k < 13; ++k)
    CHECK(y(0, k) == Approx((x(0, k) - m) / std::sqrt(v + 1e-6) * ln.weight(k) + ln.bias(k)).margin(1e-5));
  MAMCLIP_REQUIRE_THROWS_WITH(ln.forward(randn<float>({6, 12}, gen)), shape_error,
                              "LayerNorm([13]): input has shape [6, 12]; expected its last 1 dim(s) to be [13]");

  LayerNorm ln2({3, 5}, 1e-5, /*elementwise_affine=*/false);
  CHECK(ln2.named_parameters().empty());
  auto x2 = randn<float>({2, 3, 5}, gen);
  require_allclose(ln2(x2), layer_norm(x2, {3, 5}), 0, 0);
  MAMCLIP_REQUIRE_THROWS_WITH(ln2.forward(randn<float>({3, 4}, gen)), shape_error,
                              "LayerNorm([3, 5]): input has shape [3, 4]");
  LayerNorm nobias(4, 1e-5, true, /*bias=*/false);
  CHECK(nobias.state_dict().keys() == std::vector<std::string>{"weight"});
}

TEST_CASE("Embedding: N(0, 1) init, zeroed padding row, lookups and padding gradient") {
  Generator g1(8), g2(8);
  Embedding e(211, 19, std::nullopt, g1), e2(211, 19, 3, g2);
  const auto w = e.weight.to_vector();
  CHECK(std::abs(mean_of(w)) < 0.05);
  CHECK(std_of(w) == Approx(1.0).epsilon(0.05));
  // Same draw, then the padding row zeroed.
  for (int64_t k = 0; k < 19; ++k) {
    CHECK(e2.weight(3, k) == 0.0f);
    CHECK(e2.weight(4, k) == e.weight(4, k));
  }
  CHECK(e2.padding_idx() == 3);
  Embedding neg(10, 4, -1);
  CHECK(neg.padding_idx() == 9);
  for (int64_t k = 0; k < 4; ++k) CHECK(neg.weight(9, k) == 0.0f);
  MAMCLIP_REQUIRE_THROWS_WITH(Embedding(10, 4, 10), value_error,
                              "Embedding: padding_idx 10 must be within num_embeddings (expected a value in [-10, 9])");

  auto ids = tensor<int64_t>({5, 3, 3, 200, 0, 5}, {2, 3});
  auto y = e2.forward(ids);
  CHECK(y.shape() == Shape{2, 3, 19});
  for (int64_t k = 0; k < 19; ++k) {
    CHECK(y(1, 0, k) == e2.weight(200, k));
    CHECK(y(0, 1, k) == 0.0f);
  }
  sum(e2(ids)).backward();
  const Tensor<float> gw = e2.weight.grad();
  CHECK(gw(5, 0) == 2.0f);    // id 5 appears twice
  CHECK(gw(3, 0) == 0.0f);    // padding row: no gradient
  CHECK(gw(200, 18) == 1.0f);
  CHECK(gw(7, 2) == 0.0f);
  CHECK_THROWS_AS(e2.forward(tensor<int64_t>({211})), index_error);
}

TEST_CASE("Dropout follows the training flag and its generator") {
  auto g1 = std::make_shared<Generator>(3);
  Dropout d1(0.25, g1), d2(0.25);
  d2.set_generator(std::make_shared<Generator>(3));
  auto x = ones<float>({40, 50});
  auto y1 = d1.forward(x), y2 = d2.forward(x);
  CHECK(y1.to_vector() == y2.to_vector());
  size_t zeros_count = 0;
  for (float v : y1.to_vector()) {
    CHECK((v == 0.0f || v == Approx(1.0 / 0.75)));
    zeros_count += v == 0.0f;
  }
  CHECK(zeros_count > 400);  // about 500 of 2000
  CHECK(zeros_count < 600);
  CHECK(d1.forward(x).to_vector() != y1.to_vector());  // a fresh mask each call
  d1.eval();
  CHECK(d1.forward(x).is_same(x));
  // Without a generator of its own, a module draws from the running thread's default generator.
  Dropout d3(0.25);
  manual_seed(3);
  CHECK(d3.forward(x).to_vector() == y1.to_vector());
  MAMCLIP_REQUIRE_THROWS_WITH(Dropout(1.5), value_error, "Dropout: p must be in [0, 1], got 1.5");
}

TEST_CASE("GELU, ReLU, Tanh, Identity wrap their ops") {
  auto x = randn<float>({3, 17});
  require_allclose(GELU().forward(x), gelu(x), 0, 0);
  require_allclose(GELU(GeluApproximation::tanh).forward(x), gelu(x, GeluApproximation::tanh), 0, 0);
  require_allclose(ReLU().forward(x), relu(x), 0, 0);
  require_allclose(Tanh().forward(x), tanh(x), 0, 0);
  CHECK(Identity().forward(x).is_same(x));
  CHECK(GELU(GeluApproximation::tanh).repr() == "GELU(approximate='tanh')");
}

TEST_CASE("init: uniform_, normal_, constants and their seeding") {
  Generator g1(1), g2(1);
  auto a = empty<float>({100, 30}), b = empty<float>({100, 30});
  init::uniform_(a, -0.3, 0.7, g1);
  init::uniform_(b, -0.3, 0.7, g2);
  CHECK(a.to_vector() == b.to_vector());
  const auto [lo, hi] = min_max(a);
  CHECK(lo >= -0.3f);
  CHECK(hi < 0.7f);
  CHECK(mean_of(a.to_vector()) == Approx(0.2).margin(0.02));
  init::normal_(a, 2.0, 0.5, g1);
  CHECK(mean_of(a.to_vector()) == Approx(2.0).margin(0.03));
  CHECK(std_of(a.to_vector()) == Approx(0.5).epsilon(0.05));
  init::zeros_(a);
  CHECK(min_max(a) == std::pair<double, double>{0.0, 0.0});
  init::ones_(a);
  CHECK(min_max(a) == std::pair<double, double>{1.0, 1.0});
  init::constant_(a, -2.5);
  CHECK(a(99, 29) == -2.5f);
}

TEST_CASE("init: trunc_normal_ stays in [a, b] and has the truncated normal's moments") {
  Generator gen(17);
  // A narrow, asymmetric window: most of the mass would fall outside it.
  const double mean = 0.5, std = 1.5, a = -0.25, b = 0.75;
  auto t = empty<double>({4000});
  init::trunc_normal_(t, mean, std, a, b, gen);
  const auto v = t.to_vector();
  const auto [lo, hi] = std::minmax_element(v.begin(), v.end());
  CHECK(*lo >= a);
  CHECK(*hi <= b);
  CHECK(*lo < a + 0.01);
  CHECK(*hi > b - 0.01);
  // E[X] = mean + std * (phi(alpha) - phi(beta)) / (Phi(beta) - Phi(alpha)).
  auto phi = [](double z) { return std::exp(-0.5 * z * z) / std::sqrt(2 * 3.141592653589793); };
  auto Phi = [](double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); };
  const double al = (a - mean) / std, be = (b - mean) / std;
  const double expected_mean = mean + std * (phi(al) - phi(be)) / (Phi(be) - Phi(al));
  double m = 0;
  for (double x : v) m += x;
  m /= static_cast<double>(v.size());
  CHECK(m == Approx(expected_mean).margin(0.01));
  // Far-tail window in float: values still inside.
  auto f = empty<float>({500});
  init::trunc_normal_(f, 0.0, 0.02, 0.05, 0.06, gen);
  const auto [flo, fhi] = min_max(f);
  CHECK(flo >= 0.05f);
  CHECK(fhi <= 0.06f);
  // timm's ConvNeXt init: std 0.02 with the default absolute bounds [-2, 2].
  init::trunc_normal_(f, 0.0, 0.02, -2.0, 2.0, gen);
  CHECK(std_of(f.to_vector()) == Approx(0.02).epsilon(0.1));
  MAMCLIP_REQUIRE_THROWS_WITH(init::trunc_normal_(f, 0.0, 1.0, 1.0, 1.0, gen), value_error,
                              "trunc_normal_: the bounds must satisfy a < b");
}

TEST_CASE("init: kaiming and xavier bounds follow the fans") {
  Generator gen(23);
  auto w = empty<float>({64, 16, 3, 3});  // fan_in 144, fan_out 576
  init::kaiming_uniform_(w, 0.0, init::FanMode::fan_in, init::Nonlinearity::relu, gen);
  double bound = std::sqrt(2.0) * std::sqrt(3.0 / 144.0);
  auto [lo, hi] = min_max(w);
  CHECK(lo >= -bound);
  CHECK(hi <= bound);
  CHECK(hi > 0.98 * bound);
  init::kaiming_uniform_(w, std::sqrt(5.0), init::FanMode::fan_out, init::Nonlinearity::leaky_relu, gen);
  bound = 1.0 / std::sqrt(576.0);
  std::tie(lo, hi) = min_max(w);
  CHECK(lo >= -bound);
  CHECK(hi > 0.98 * bound);
  CHECK(hi <= bound);
  init::xavier_uniform_(w, 2.0, gen);
  bound = 2.0 * std::sqrt(6.0 / (144.0 + 576.0));
  std::tie(lo, hi) = min_max(w);
  CHECK(lo >= -bound);
  CHECK(hi > 0.98 * bound);
  CHECK(hi <= bound);
  init::xavier_normal_(w, 1.0, gen);
  CHECK(std_of(w.to_vector()) == Approx(std::sqrt(2.0 / 720.0)).epsilon(0.05));
  init::kaiming_normal_(w, 0.0, init::FanMode::fan_in, init::Nonlinearity::relu, gen);
  CHECK(std_of(w.to_vector()) == Approx(std::sqrt(2.0 / 144.0)).epsilon(0.05));
  CHECK(init::calculate_gain(init::Nonlinearity::tanh) == Approx(5.0 / 3.0));
  auto v = empty<float>({5});
  MAMCLIP_REQUIRE_THROWS_WITH(init::xavier_uniform_(v, 1.0, gen), value_error,
                              "xavier_uniform_: fan in and fan out need a tensor with at least 2 dims, got shape [5]");
}

}  // namespace test_layers
