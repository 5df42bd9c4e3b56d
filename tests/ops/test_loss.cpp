// Losses: nll_loss, cross_entropy (ignore_index, label smoothing, reductions,
// extra dims) and mse_loss — hand values, PyTorch reference values from the
// "losses" fixture section, gradcheck on non-contiguous inputs, errors.
#include <cstring>

#include "support/test_support.hpp"

namespace test_loss {
using namespace mamclip;
using namespace mamclip::test;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -3, double hi = 3) { return uniform_random<double>(s, seed, lo, hi); }

// Class targets in [0, classes) with every `ignore_every`-th position set to -100.
Tensor<int64_t> targets(const Shape& s, int64_t classes, uint64_t seed, int64_t ignore_every = 0) {
  Generator g(seed);
  auto v = randint<int64_t>(0, classes, s, g).to_vector();
  for (size_t i = 0; ignore_every && i < v.size(); i += static_cast<size_t>(ignore_every)) v[i] = -100;
  return from_vector<int64_t>(v, s);
}

LossOptions opts(Reduction r, double smoothing = 0.0, int64_t ignore_index = -100) {
  LossOptions o;
  o.reduction = r;
  o.label_smoothing = smoothing;
  o.ignore_index = ignore_index;
  return o;
}

Reduction reduction_from(const std::string& s) {
  if (s == "mean") return Reduction::mean;
  if (s == "sum") return Reduction::sum;
  REQUIRE(s == "none");
  return Reduction::none;
}

// gradcheck needs a shaped output: a scalar loss is checked through a [1] view
// (randn cannot fill a 0-dim shape yet).
Tensor<double> at_least_1d(const Tensor<double>& t) { return t.dim() == 0 ? t.reshape({1}) : t; }

const std::vector<Reduction> kReductions = {Reduction::mean, Reduction::sum, Reduction::none};
}  // namespace

TEST_CASE("nll_loss: hand-computed values, reductions, ignore_index") {
  auto logp = log(tensor<double>({0.2, 0.3, 0.5, 0.1, 0.1, 0.8, 0.6, 0.2, 0.2}, {3, 3}));
  auto t = tensor<int64_t>({2, -100, 0});
  const double l0 = -std::log(0.5), l2 = -std::log(0.6);
  CHECK(nll_loss(logp, t).item() == Approx((l0 + l2) / 2).epsilon(1e-15));
  CHECK(nll_loss(logp, t, opts(Reduction::sum)).item() == Approx(l0 + l2).epsilon(1e-15));
  auto none = nll_loss(logp, t, opts(Reduction::none));
  CHECK(none.shape() == Shape{3});
  CHECK(none(0) == Approx(l0).epsilon(1e-15));
  CHECK(none(1) == 0.0);
  // A custom ignore_index; label_smoothing is not an nll_loss option and is ignored.
  CHECK(nll_loss(logp, tensor<int64_t>({2, 1, 7}), opts(Reduction::sum, 0.3, 7)).item() ==
        Approx(l0 - std::log(0.1)).epsilon(1e-15));

  auto lp = logp.detach().clone().set_requires_grad();
  nll_loss(lp, t).backward();
  CHECK(lp.grad().to_vector() == std::vector<double>{0, 0, -0.5, 0, 0, 0, -0.5, 0, 0});

  // Every target ignored: mean is 0 / 0 = NaN as in PyTorch, sum is 0, and no gradient flows.
  auto all_ignored = tensor<int64_t>({-100, -100, -100});
  CHECK(std::isnan(nll_loss(logp, all_ignored).item()));
  CHECK(nll_loss(logp, all_ignored, opts(Reduction::sum)).item() == 0.0);
  auto lq = logp.detach().clone().set_requires_grad();
  nll_loss(lq, all_ignored).backward();
  CHECK(lq.grad().to_vector() == std::vector<double>(9, 0.0));
}

TEST_CASE("nll_loss and cross_entropy over [N, C, d1, d2] match the [N*d1*d2, C] form") {
  auto x = rnd({3, 7, 4, 5}, 1);
  auto t = targets({3, 4, 5}, 7, 2, 6);
  auto flat_x = x.permute({0, 2, 3, 1}).reshape({60, 7});
  auto flat_t = t.reshape({60});
  for (auto r : kReductions)
    for (double ls : {0.0, 0.2}) {
      INFO("reduction " << static_cast<int>(r) << " smoothing " << ls);
      auto o = opts(r, ls);
      auto y = cross_entropy(x, t, o);
      auto ref = cross_entropy(flat_x, flat_t, o);
      require_allclose(y, r == Reduction::none ? ref.reshape({3, 4, 5}) : ref, 1e-14, 1e-13);
      require_allclose(nll_loss(log_softmax(x, 1), t, o),
                       nll_loss(log_softmax(flat_x, 1), flat_t, o).reshape(r == Reduction::none ? Shape{3, 4, 5} : Shape{}),
                       1e-14, 1e-13);
    }
  // A single sample [C] with a 0-dim target.
  auto one = rnd({6}, 3);
  CHECK(cross_entropy(one, scalar<int64_t>(4)).item() == Approx(-log_softmax(one, 0)(4)).epsilon(1e-15));
  CHECK(cross_entropy(one, scalar<int64_t>(4), opts(Reduction::none)).shape() == Shape{});
}

TEST_CASE("cross_entropy = (1 - eps) nll + eps * mean over kept samples of -mean_c log p") {
  auto x = rnd({9, 6}, 4);
  auto t = targets({9}, 6, 5, 4);  // positions 0, 4, 8 ignored
  auto lp = log_softmax(x, 1);
  const double eps = 0.25;
  auto nll = nll_loss(lp, t, opts(Reduction::none));
  auto smooth = mul(mean(lp, {1}), -1.0);  // -mean_c log p per sample
  const std::vector<double> nv = nll.to_vector(), sv = smooth.to_vector();
  std::vector<double> expected(9);
  double total = 0;
  int kept = 0;
  for (int i = 0; i < 9; ++i) {
    expected[i] = t(i) == -100 ? 0 : (1 - eps) * nv[i] + eps * sv[i];
    total += expected[i];
    kept += t(i) != -100;
  }
  require_allclose(cross_entropy(x, t, opts(Reduction::none, eps)), from_vector<double>(expected), 1e-15, 1e-14);
  CHECK(cross_entropy(x, t, opts(Reduction::sum, eps)).item() == Approx(total).epsilon(1e-14));
  CHECK(cross_entropy(x, t, opts(Reduction::mean, eps)).item() == Approx(total / kept).epsilon(1e-14));
  CHECK(std::isnan(cross_entropy(x, full<int64_t>({9}, -100), opts(Reduction::mean, eps)).item()));
}

TEST_CASE("cross_entropy and nll_loss gradcheck on non-contiguous inputs") {
  for (auto r : kReductions)
    for (double ls : {0.0, 0.1}) {
      INFO("reduction " << static_cast<int>(r) << " smoothing " << ls);
      const auto o = opts(r, ls);
      auto t2 = targets({5}, 9, 6, 3);
      require_gradcheck([&](auto& v) { return at_least_1d(cross_entropy(v[0], t2, o)); }, {noncontiguous(rnd({5, 9}, 7))});
      auto t3 = targets({3, 11}, 7, 8, 5);
      require_gradcheck([&](auto& v) { return at_least_1d(cross_entropy(v[0], t3, o)); }, {noncontiguous(rnd({3, 7, 11}, 9))});
      require_gradcheck([&](auto& v) { return at_least_1d(nll_loss(v[0], t3, o)); }, {noncontiguous(rnd({3, 7, 11}, 10))});
    }
}

TEST_CASE("cross_entropy matches PyTorch (fixture: label smoothing x reduction, ignore_index)") {
  const auto j = load_json(fixture_path("foundation.json")).at("losses");
  const double rtol = 1e-12;
  auto logits = tensor_from_json<double>(j.at("logits"));
  auto t = tensor_from_json<int64_t>(j.at("targets"));
  const int64_t ignore = j.at("ignore_index").get<int64_t>();
  REQUIRE(j.at("cross_entropy").size() == 6);
  for (const auto& c : j.at("cross_entropy")) {
    const double ls = c.at("label_smoothing").get<double>();
    const auto reduction = reduction_from(c.at("reduction").get<std::string>());
    INFO("label_smoothing " << ls << " reduction " << c.at("reduction").get<std::string>());
    const auto o = opts(reduction, ls, ignore);
    for (bool strided : {false, true}) {
      auto x = (strided ? noncontiguous(logits) : logits.clone()).set_requires_grad();
      auto y = cross_entropy(x, t, o);
      if (reduction == Reduction::none) {
        require_allclose(y, tensor_from_json<double>(c.at("value")), 1e-300, rtol, "value");
      } else {
        REQUIRE(y.dim() == 0);
        require_allclose(y.reshape({1}), tensor<double>({c.at("value").get<double>()}), 0, rtol, "value");
      }
      sum(y).backward();
      require_allclose(x.grad(), tensor_from_json<double>(c.at("grad_logits")), 1e-300, rtol, "grad_logits");
    }
    // Without smoothing, the composed form log_softmax + nll_loss gives the same.
    if (ls == 0) {
      auto x = logits.clone().set_requires_grad();
      auto y = nll_loss(log_softmax(x, 1), t, o);
      sum(y).backward();
      require_allclose(x.grad(), tensor_from_json<double>(c.at("grad_logits")), 1e-300, rtol, "composed grad_logits");
    }
  }
}

TEST_CASE("mse_loss matches PyTorch (fixture) and hand values") {
  const auto m = load_json(fixture_path("foundation.json")).at("losses").at("mse");
  REQUIRE(m.at("reduction").get<std::string>() == "mean");
  auto a = tensor_from_json<double>(m.at("input")).set_requires_grad();
  auto b = tensor_from_json<double>(m.at("target")).set_requires_grad();
  auto y = mse_loss(a, b);
  require_allclose(y.reshape({1}), tensor<double>({m.at("value").get<double>()}), 0, 1e-12, "value");
  y.backward();
  require_allclose(a.grad(), tensor_from_json<double>(m.at("grad_input")), 1e-300, 1e-12, "grad_input");
  require_allclose(b.grad(), tensor_from_json<double>(m.at("grad_target")), 1e-300, 1e-12, "grad_target");

  auto p = tensor<double>({1, 2, 3}), q = tensor<double>({1, 0, 6});
  CHECK(mse_loss(p, q).item() == Approx(13.0 / 3).epsilon(1e-15));
  CHECK(mse_loss(p, q, Reduction::sum).item() == 13.0);
  CHECK(mse_loss(p, q, Reduction::none).to_vector() == std::vector<double>{0, 4, 9});
}

TEST_CASE("mse_loss gradcheck on non-contiguous inputs") {
  for (auto r : kReductions) {
    INFO("reduction " << static_cast<int>(r));
    require_gradcheck([&](auto& v) { return at_least_1d(mse_loss(v[0], v[1], r)); },
                      {noncontiguous(rnd({5, 9}, 11)), rnd({5, 9}, 12)});
    require_gradcheck([&](auto& v) { return at_least_1d(mse_loss(v[0], v[1], r)); },
                      {rnd({3, 7, 11}, 13), noncontiguous(rnd({3, 7, 11}, 14))});
  }
}

TEST_CASE("losses in half and bfloat16 compute in float") {
  auto x = rnd({5, 9}, 15).to<float>();
  auto t = targets({5}, 9, 16, 2);
  const auto o = opts(Reduction::mean, 0.1);
  CHECK(static_cast<float>(cross_entropy(x.to<half>(), t, o).item()) == Approx(cross_entropy(x, t, o).item()).epsilon(1e-2));
  auto xb = x.to<bfloat16>().detach().set_requires_grad();
  (cross_entropy(xb, t) + nll_loss(xb, t) + mse_loss(xb, xb.detach())).backward();
  CHECK(xb.grad().shape() == Shape{5, 9});
}

TEST_CASE("loss errors name the op, the argument and what was expected") {
  auto x = rnd({4, 6}, 1);
  MAMCLIP_REQUIRE_THROWS_WITH(cross_entropy(x, tensor<int64_t>({0, 5, 6, 1})), index_error,
                              "cross_entropy: target 6 at position [2] is out of range for 6 classes (expected 0 <= "
                              "target < 6 or target == ignore_index -100)");
  MAMCLIP_REQUIRE_THROWS_WITH(nll_loss(x, tensor<int64_t>({0, -1, 2, 1})), index_error,
                              "nll_loss: target -1 at position [1] is out of range for 6 classes");
  MAMCLIP_REQUIRE_THROWS_WITH(nll_loss(rnd({2, 6, 3}, 2), tensor<int64_t>({0, 1, 2, 3, 9, 5}, {2, 3})), index_error,
                              "nll_loss: target 9 at position [1, 1] is out of range for 6 classes");
  MAMCLIP_REQUIRE_THROWS_WITH(cross_entropy(x, tensor<int64_t>({0, 1, 2})), shape_error,
                              "cross_entropy: target has shape [3] but logits has shape [4, 6]; expected target shape [4]");
  MAMCLIP_REQUIRE_THROWS_WITH(nll_loss(rnd({2, 6, 3}, 2), tensor<int64_t>({0, 1}, {2})), shape_error,
                              "nll_loss: target has shape [2] but log_probs has shape [2, 6, 3]; expected target shape [2, 3]");
  MAMCLIP_REQUIRE_THROWS_WITH(cross_entropy(scalar<double>(1.0), scalar<int64_t>(0)), shape_error,
                              "cross_entropy: logits must have shape [N, C, d1, ...] or [C], got []");
  MAMCLIP_REQUIRE_THROWS_WITH(cross_entropy(x, tensor<int64_t>({0, 1, 2, 3}), opts(Reduction::mean, 1.5)), value_error,
                              "cross_entropy: label_smoothing must be in [0, 1], got 1.5");
  MAMCLIP_REQUIRE_THROWS_WITH(mse_loss(x, rnd({6, 4}, 3)), shape_error,
                              "mse_loss: input has shape [4, 6] and target has shape [6, 4]; expected equal shapes");
  if (ensure_stand_in_cuda()) {
    auto d = ones<float>({2, 3}).to(Device::cuda(0));
    auto td = tensor<int64_t>({0, 1}).to(Device::cuda(0));
    MAMCLIP_REQUIRE_THROWS_WITH(cross_entropy(d, td), device_error,
                                "cross_entropy: no kernel is registered for float32 tensors on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(nll_loss(ones<float>({2, 3}), td), device_error,
                                "nll_loss: expected all tensors on one device, but log_probs is on cpu and target is on cuda:0");
    // mse_loss is sub, mul and a reduction: on a device without them, the first one missing is named.
    MAMCLIP_REQUIRE_THROWS_WITH(mse_loss(d, d), device_error, "sub: no kernel is registered for float32 tensors on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(mse_loss(ones<float>({2, 3}), d), device_error,
                                "mse_loss: expected all tensors on one device, but input is on cpu and target is on cuda:0");
  }
}

}  // namespace test_loss
