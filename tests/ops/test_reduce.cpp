// Reductions: amax/amin, max/min with indices, var, logsumexp (values, ties,
// -inf rows, gradcheck on non-contiguous inputs at awkward sizes, errors), and
// the PyTorch reference values of the "pointwise" fixture section.
#include <cstring>

#include "support/test_support.hpp"

namespace test_reduce {
using namespace mamclip;
using namespace mamclip::test;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -2, double hi = 2) { return uniform_random<double>(s, seed, lo, hi); }
constexpr double kInf = std::numeric_limits<double>::infinity();

// gradcheck draws its projection with randn(output shape), which cannot fill a
// 0-dim shape yet: all-dims reductions are checked through a [1] view.
Tensor<double> at_least_1d(const Tensor<double>& t) { return t.dim() == 0 ? t.reshape({1}) : t; }

// Reduction cases over several dim lists, keepdim on and off.
struct DimsCase {
  std::vector<int64_t> dims;
  bool keepdim;
};
const std::vector<DimsCase> kDims3 = {{{0}, false}, {{1}, true}, {{-1}, false}, {{0, 2}, true}, {{2, 0}, false}, {{}, false}};
}  // namespace

TEST_CASE("amax and amin: values, dims, keepdim") {
  auto x = tensor<double>({1, 5, -2, 7, 0, 3}, {2, 3});
  CHECK(amax(x).item() == 7);
  CHECK(amin(x).item() == -2);
  auto m1 = amax(x, {1});
  CHECK(m1.shape() == Shape{2});
  CHECK(m1.to_vector() == std::vector<double>{5, 7});
  auto m0 = amin(x, {0}, true);
  CHECK(m0.shape() == Shape{1, 3});
  CHECK(m0.to_vector() == std::vector<double>{1, 0, -2});
  CHECK(amax(x, {0, 1}, true).shape() == Shape{1, 1});
  // NaN propagates, as in PyTorch.
  CHECK(std::isnan(amax(tensor<double>({1, NAN, 3})).item()));
  CHECK(std::isnan(amin(tensor<double>({1, NAN, 3})).item()));
}

TEST_CASE("amax and amin split the gradient evenly among ties") {
  auto x = tensor<double>({1, 3, 3, 2, 3, -1, -1, 0}, {2, 4}).set_requires_grad();
  sum(amax(x, {1}) * tensor<double>({1, 10})).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0, 0.5, 0.5, 0, 10, 0, 0, 0});
  auto y = tensor<double>({1, 3, 3, 2, 3, -1, -1, 0}, {2, 4}).set_requires_grad();
  amin(y).backward();
  CHECK(y.grad().to_vector() == std::vector<double>{0, 0, 0, 0, 0, 0.5, 0.5, 0});
}

TEST_CASE("amax and amin gradcheck on non-contiguous inputs") {
  for (const auto& c : kDims3) {
    INFO("dims size " << c.dims.size() << " keepdim " << c.keepdim);
    require_gradcheck([&](auto& v) { return at_least_1d(amax(v[0], c.dims, c.keepdim)); }, {noncontiguous(rnd({3, 7, 11}, 1))});
    require_gradcheck([&](auto& v) { return at_least_1d(amin(v[0], c.dims, c.keepdim)); }, {noncontiguous(rnd({3, 7, 11}, 2))});
  }
  require_gradcheck([](auto& v) { return amax(v[0], {0}); }, {noncontiguous(rnd({5, 9}, 3))});
}

TEST_CASE("max and min along a dim return values and first indices") {
  auto x = tensor<double>({4, 9, 9, 1, 2, 2, 0, 2}, {2, 4});
  auto [v, i] = max(x, 1);
  CHECK(v.to_vector() == std::vector<double>{9, 2});
  CHECK(i.to_vector() == std::vector<int64_t>{1, 0});
  auto [vn, in] = min(x, -1, true);
  CHECK(vn.shape() == Shape{2, 1});
  CHECK(in.shape() == Shape{2, 1});
  CHECK(vn.to_vector() == std::vector<double>{1, 0});
  CHECK(in.to_vector() == std::vector<int64_t>{3, 2});
  auto [v0, i0] = max(x, 0);
  CHECK(v0.to_vector() == std::vector<double>{4, 9, 9, 2});
  CHECK(i0.to_vector() == std::vector<int64_t>{0, 0, 0, 1});
  // NaN wins and its index is reported, as torch.max does.
  auto [vnan, inan] = max(tensor<double>({1, NAN, 5, NAN}), 0);
  CHECK(std::isnan(vnan.item()));
  CHECK(inan.item() == 1);
  CHECK_FALSE(i.requires_grad());
}

TEST_CASE("max and min send the gradient to the chosen index only") {
  auto x = tensor<double>({4, 9, 9, 1, 2, 2, 0, 2}, {2, 4}).set_requires_grad();
  auto [v, i] = max(x, 1);
  sum(v * tensor<double>({1, 10})).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0, 1, 0, 0, 10, 0, 0, 0});

  for (bool keepdim : {false, true})
    for (int64_t dim : {0, 1, -1}) {
      INFO("dim " << dim << " keepdim " << keepdim);
      require_gradcheck([&](auto& t) { return max(t[0], dim, keepdim).first; }, {noncontiguous(rnd({3, 7, 11}, 4))});
      require_gradcheck([&](auto& t) { return min(t[0], dim, keepdim).first; }, {noncontiguous(rnd({5, 9}, 5))});
    }
}

TEST_CASE("var: correction, dims, keepdim") {
  auto x = tensor<double>({1, 2, 3, 4, 2, 2, 2, 10}, {2, 4});
  // mean 3.25, sum of squared deviations 57.5
  CHECK(var(x).item() == Approx(57.5 / 7).epsilon(1e-14));
  CHECK(var(x, {}, 0).item() == Approx(57.5 / 8).epsilon(1e-14));
  auto r = var(x, {1});
  CHECK(r.shape() == Shape{2});
  CHECK(r(0) == Approx(5.0 / 3).epsilon(1e-14));
  CHECK(r(1) == Approx(16.0).epsilon(1e-14));
  auto r0 = var(x, {1}, 0, true);
  CHECK(r0.shape() == Shape{2, 1});
  CHECK(r0(0, 0) == Approx(1.25).epsilon(1e-14));
  CHECK(var(x, {0}, 2).shape() == Shape{4});
  // One element with correction 1: 0 / 0.
  CHECK(std::isnan(var(tensor<double>({3.0})).item()));
  // Rows far from 0: the two-pass form keeps the variance exact.
  CHECK(var(tensor<double>({1e9 + 1, 1e9 + 2, 1e9 + 3})).item() == 1.0);
  MAMCLIP_REQUIRE_THROWS_WITH(var(x, {}, -1), value_error, "var: correction must be non-negative, got -1");
}

TEST_CASE("var gradcheck on non-contiguous inputs") {
  for (const auto& c : kDims3)
    for (int64_t correction : {0, 1}) {
      INFO("dims size " << c.dims.size() << " keepdim " << c.keepdim << " correction " << correction);
      require_gradcheck([&](auto& v) { return at_least_1d(var(v[0], c.dims, correction, c.keepdim)); },
                        {noncontiguous(rnd({3, 7, 11}, 6))});
    }
  require_gradcheck([](auto& v) { return var(v[0], {1}, 2); }, {noncontiguous(rnd({5, 9}, 7))});
}

TEST_CASE("logsumexp: values, large offsets, -inf rows") {
  auto x = tensor<double>({0, std::log(3.0), 1000, 1000, -kInf, -kInf}, {3, 2});
  auto y = logsumexp(x, {1});
  CHECK(y(0) == Approx(std::log(4.0)).epsilon(1e-15));
  CHECK(y(1) == Approx(1000 + std::log(2.0)).epsilon(1e-15));  // no overflow
  CHECK(y(2) == -kInf);                                         // an all -inf row: -inf, not NaN
  CHECK(logsumexp(x, {1}, true).shape() == Shape{3, 1});
  CHECK(logsumexp(tensor<double>({1, kInf}), {0}).item() == kInf);
  CHECK(logsumexp(x.slice(0, 0, 2), {0, 1}).item() == Approx(1000 + std::log(2.0)).epsilon(1e-15));

  // The all -inf row gets a zero gradient; the others softmax weights.
  auto xg = x.detach().clone().set_requires_grad();
  sum(logsumexp(xg, {1})).backward();
  const auto g = xg.grad().to_vector();
  CHECK(g[0] == Approx(0.25));
  CHECK(g[1] == Approx(0.75));
  CHECK(g[2] == Approx(0.5));
  CHECK(g[4] == 0);
  CHECK(g[5] == 0);
}

TEST_CASE("logsumexp gradcheck on non-contiguous inputs") {
  for (const auto& c : kDims3) {
    INFO("dims size " << c.dims.size() << " keepdim " << c.keepdim);
    require_gradcheck([&](auto& v) { return at_least_1d(logsumexp(v[0], c.dims, c.keepdim)); }, {noncontiguous(rnd({3, 7, 11}, 8))});
  }
  require_gradcheck([](auto& v) { return logsumexp(v[0], {0}); }, {noncontiguous(rnd({5, 9}, 9, -50, 50))});
}

// sum and mean read a contiguous input in place when the kept dims are one
// consecutive block (leading, trailing or middle reduced dims), several outputs
// at a time and split over threads; each output must still be the sum of its
// elements in row order, the same bits as a plain loop, at sizes that split.
TEST_CASE("sum and mean over leading, middle and trailing dims add in row order") {
  const std::vector<std::pair<Shape, std::vector<int64_t>>> cases = {
      {{5, 7, 9, 11}, {0}},       {{5, 7, 9, 11}, {0, 1}},    {{5, 7, 9, 11}, {0, 3}},  {{5, 7, 9, 11}, {2, 3}},
      {{5, 7, 9, 11}, {0, 2, 3}}, {{5, 7, 9, 11}, {1}},       {{5, 7, 9, 11}, {1, 3}},  {{300, 385}, {0}},
      {{3, 97, 31, 29}, {0, 2, 3}}, {{2, 70000}, {0}},         {{70000, 3}, {0}},        {{700, 300}, {1}}};
  uint64_t seed = 500;
  for (const auto& [shape, dims] : cases) {
    const auto x = uniform_random<float>(shape, ++seed, -1, 1);
    const auto xv = x.to_vector();
    const auto nd = static_cast<int64_t>(shape.size());
    std::vector<bool> red(nd, false);
    for (int64_t d : dims) red[d] = true;
    // Expected: for each kept index (row-major), acc over the reduced dims in row-major order.
    Shape kept_shape, red_shape;
    for (int64_t d = 0; d < nd; ++d) (red[d] ? red_shape : kept_shape).push_back(shape[d]);
    const Shape strides = contiguous_strides(shape);
    std::vector<float> want_sum, want_mean;
    const int64_t n_kept = numel_of(kept_shape), n_red = numel_of(red_shape);
    for (int64_t o = 0; o < n_kept; ++o) {
      float acc = 0;
      for (int64_t r = 0; r < n_red; ++r) {
        int64_t off = 0, ko = o, ro = r;
        for (int64_t d = nd - 1; d >= 0; --d) {
          int64_t& rem = red[d] ? ro : ko;
          off += (rem % shape[d]) * strides[d];
          rem /= shape[d];
        }
        acc += xv[off];
      }
      want_sum.push_back(acc);
      want_mean.push_back(acc / static_cast<float>(n_red));
    }
    INFO("shape " << shape_str(shape) << " dims " << shape_str(dims));
    CHECK(sum(x, dims).to_vector() == want_sum);
    CHECK(mean(x, dims).to_vector() == want_mean);
    CHECK(sum(x, dims, true).shape().size() == shape.size());
  }
}

TEST_CASE("reductions of a 0-dim tensor and over an empty dim") {
  auto s = scalar<double>(2.5);
  CHECK(sum(s, {0}).item() == 2.5);
  CHECK(amax(s, {-1}).item() == 2.5);
  CHECK(logsumexp(s, {0}).item() == 2.5);
  CHECK(max(s, 0).second.item() == 0);
  MAMCLIP_REQUIRE_THROWS_WITH(sum(s, {1}), index_error, "sum: dim 1 is out of range for a tensor with 0 dims");
  auto e = zeros<double>({3, 0});
  CHECK(logsumexp(e, {1}).to_vector() == std::vector<double>(3, -kInf));
  CHECK(amax(e, {0}).shape() == Shape{0});
  MAMCLIP_REQUIRE_THROWS_WITH(amax(e, {1}), value_error,
                              "amax: cannot reduce over zero elements (input shape [3, 0]); the reduced dims must be non-empty");
  MAMCLIP_REQUIRE_THROWS_WITH(max(e, 1), value_error, "max: cannot reduce over zero elements");
}

TEST_CASE("reduction errors name the op and the dim") {
  auto x = rnd({2, 3}, 1);
  MAMCLIP_REQUIRE_THROWS_WITH(amax(x, {2}), index_error,
                              "amax: dim 2 is out of range for a tensor with 2 dims (expected a dim in [-2, 1])");
  MAMCLIP_REQUIRE_THROWS_WITH(var(x, {1, -1}), value_error, "var: dim 1 appears more than once in dims");
  MAMCLIP_REQUIRE_THROWS_WITH(max(x, -3), index_error, "max: dim -3 is out of range");
  MAMCLIP_REQUIRE_THROWS_WITH(logsumexp(x, {5}), index_error, "logsumexp: dim 5 is out of range");
  if (ensure_stand_in_cuda()) {
    auto d = ones<float>({2, 3}).to(Device::cuda(0));
    MAMCLIP_REQUIRE_THROWS_WITH(amax(d), device_error, "amax: no kernel is registered for float32 tensors on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(min(d, 0), device_error, "min: no kernel is registered for float32 tensors on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(var(d), device_error, "var: no kernel is registered");
    MAMCLIP_REQUIRE_THROWS_WITH(logsumexp(d, {1}), device_error, "logsumexp: no kernel is registered");
    // sum and mean look up their device kernel (mamclip::cuda registers it) before touching the data.
    MAMCLIP_REQUIRE_THROWS_WITH(sum(d, {0}), device_error, "sum: no kernel is registered for float32 tensors on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(mean(d, {1}), device_error, "mean: no kernel is registered for float32 tensors on cuda:0");
  }
}

TEST_CASE("half and bfloat16 reductions compute in float") {
  auto x = rnd({5, 9}, 10).to<float>();
  require_allclose(amax(x.to<half>(), {1}).to<float>(), amax(x, {1}), 0, 1e-3);
  require_allclose(max(x.to<bfloat16>(), 0).first.to<float>(), max(x, 0).first, 0, 1e-2);
  require_allclose(var(x.to<half>(), {0}).to<float>(), var(x, {0}), 1e-3, 1e-2);
  require_allclose(logsumexp(x.to<bfloat16>(), {1}).to<float>(), logsumexp(x, {1}), 0, 1e-2);
  auto xh = x.to<half>().detach().set_requires_grad();
  (sum(logsumexp(xh, {1})) + sum(amin(xh, {0}, true)) + var(xh)).backward();
  CHECK(xh.grad().shape() == Shape{5, 9});
}

TEST_CASE("pointwise ops and logsumexp match PyTorch (fixture)") {
  const auto j = load_json(fixture_path("foundation.json")).at("pointwise");
  const double rtol = 1e-12, atol = 1e-300;
  auto x = tensor_from_json<double>(j.at("x"));
  require_allclose(gelu(x), tensor_from_json<double>(j.at("gelu")), atol, rtol, "gelu");
  require_allclose(gelu(x, GeluApproximation::tanh), tensor_from_json<double>(j.at("gelu_tanh")), atol, rtol, "gelu_tanh");
  require_allclose(sigmoid(x), tensor_from_json<double>(j.at("sigmoid")), atol, rtol, "sigmoid");
  require_allclose(tanh(x), tensor_from_json<double>(j.at("tanh")), atol, rtol, "tanh");
  for (auto approx : {GeluApproximation::none, GeluApproximation::tanh}) {
    auto xg = x.clone().set_requires_grad();
    sum(gelu(xg, approx)).backward();
    const char* key = approx == GeluApproximation::none ? "gelu_grad" : "gelu_tanh_grad";
    require_allclose(xg.grad(), tensor_from_json<double>(j.at(key)), atol, rtol, key);
  }
  auto lse_in = tensor_from_json<double>(j.at("logsumexp_input"));
  auto expected = tensor_from_json<double>(j.at("logsumexp_dim1"));
  require_allclose(logsumexp(lse_in, {1}), expected, 0, rtol, "logsumexp dim 1");
  require_allclose(logsumexp(noncontiguous(lse_in), {-1}), expected, 0, rtol, "logsumexp, non-contiguous");
  require_allclose(logsumexp(lse_in.t().contiguous(), {0}), expected, 0, rtol, "logsumexp over dim 0 of the transpose");
}

}  // namespace test_reduce
