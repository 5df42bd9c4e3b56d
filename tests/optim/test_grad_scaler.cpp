// GradScaler (optim/grad_scaler.hpp) against torch.amp.GradScaler's rules:
// the scaled loss, exact unscaling, the skipped step on inf / NaN, backoff
// and growth of the scale, the call-order errors, pass-through when disabled,
// and the state a checkpoint keeps.
#include <limits>

#include "support/test_support.hpp"

namespace test_grad_scaler {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::optim;

namespace {

Tensor<float> param(std::vector<float> v) { return from_vector<float>(v).set_requires_grad(); }

// loss = Σ c_i · w_i, so d loss / d w = c.
Tensor<float> loss_of(const Tensor<float>& w, const std::vector<float>& c) { return sum(w * from_vector<float>(c)); }

}  // namespace

TEST_CASE("GradScaler: scaled backward, exact unscale, and an SGD step equal to the unscaled one") {
  GradScaler scaler;
  CHECK(scaler.get_scale() == 65536.0);
  auto w = param({0.5f, -1.0f, 2.0f}), ref = param({0.5f, -1.0f, 2.0f});
  SGD opt({w}, {.lr = 0.1}), ref_opt({ref}, {.lr = 0.1});
  const std::vector<float> c = {0.3f, -1.7f, 1e-3f};
  const Tensor<float> scaled = scaler.scale(loss_of(w, c));
  CHECK(scaled.item() == Approx(loss_of(w, c).item() * 65536.0));
  scaled.backward();
  CHECK(w.grad().to_vector() == std::vector<float>{0.3f * 65536, -1.7f * 65536, 1e-3f * 65536});
  CHECK(scaler.step(opt));
  CHECK_FALSE(scaler.found_inf(opt));
  scaler.update();
  loss_of(ref, c).backward();
  ref_opt.step();
  CHECK(w.to_vector() == ref.to_vector());  // a power-of-two scale unscales exactly
  CHECK(scaler.get_scale() == 65536.0);
  CHECK(scaler.growth_tracker() == 1);
}

TEST_CASE("GradScaler: an inf or NaN gradient skips the step and backs off; clean steps grow the scale") {
  GradScaler scaler({.init_scale = 1024.0, .growth_factor = 2.0, .backoff_factor = 0.25, .growth_interval = 3});
  auto w = param({1.0f, 2.0f});
  SGD opt({w}, {.lr = 0.5});
  auto run = [&](float g0) {
    opt.zero_grad();
    scaler.scale(loss_of(w, {g0, 1.0f})).backward();
    const bool stepped = scaler.step(opt);
    scaler.update();
    return stepped;
  };
  for (float bad : {std::numeric_limits<float>::infinity(), std::numeric_limits<float>::quiet_NaN()}) {
    const auto before = w.to_vector();
    CHECK_FALSE(run(bad));
    CHECK(w.to_vector() == before);
  }
  CHECK(scaler.get_scale() == 1024.0 * 0.25 * 0.25);
  CHECK(scaler.growth_tracker() == 0);
  CHECK(run(1.0f));
  CHECK(run(1.0f));
  CHECK(scaler.get_scale() == 64.0);
  CHECK(run(1.0f));  // the third clean step in a row doubles the scale
  CHECK(scaler.get_scale() == 128.0);
  CHECK(scaler.growth_tracker() == 0);
  // An overflow that large in float16 terms: the scaled gradient is inf, not the true one.
  GradScaler big({.init_scale = 1e38});
  auto v = param({1.0f});
  SGD o2({v}, {.lr = 0.1});
  big.scale(loss_of(v, {10.0f})).backward();
  CHECK_FALSE(big.step(o2));
  big.update();
  CHECK(big.get_scale() == Approx(0.5e38).epsilon(1e-6));
}

TEST_CASE("GradScaler: unscale_ before clipping, call-order errors, several optimizers") {
  GradScaler scaler({.init_scale = 8.0});
  auto a = param({3.0f}), b = param({4.0f});
  SGD oa({a}, {.lr = 1.0}), ob({b}, {.lr = 1.0});
  scaler.scale(loss_of(a, {1.0f}) + loss_of(b, {std::numeric_limits<float>::infinity()})).backward();
  scaler.unscale_(oa);
  CHECK(a.grad().item() == 1.0f);  // true gradient, ready for clip_grad_norm_
  MAMCLIP_REQUIRE_THROWS_WITH(scaler.unscale_(oa), value_error,
                              "GradScaler.unscale_: already called for this optimizer since the last update()");
  CHECK(scaler.step(oa));  // not unscaled twice
  CHECK(a.item() == 2.0f);
  MAMCLIP_REQUIRE_THROWS_WITH(scaler.step(oa), value_error,
                              "GradScaler.step: already called for this optimizer since the last update()");
  CHECK_FALSE(scaler.step(ob));  // b's gradient is inf
  CHECK(b.item() == 4.0f);
  scaler.update();  // one optimizer found inf: backoff
  CHECK(scaler.get_scale() == 4.0);
  MAMCLIP_REQUIRE_THROWS_WITH(scaler.update(), value_error,
                              "GradScaler.update: no unscale_() or step() since the last update()");
}

TEST_CASE("GradScaler: disabled passes through; state round trip; option and state errors") {
  GradScaler off({.enabled = false});
  auto w = param({1.0f});
  SGD opt({w}, {.lr = 1.0});
  const Tensor<float> l = loss_of(w, {2.0f});
  CHECK(off.scale(l).item() == l.item());
  l.backward();
  CHECK(off.step(opt));
  off.update();
  CHECK(w.item() == -1.0f);
  CHECK(off.get_scale() == 1.0);

  GradScaler s({.init_scale = 512.0, .growth_interval = 10});
  s.load_state({128.0, 7});
  CHECK(s.get_scale() == 128.0);
  CHECK(s.growth_tracker() == 7);
  CHECK(s.state().scale == 128.0);
  MAMCLIP_REQUIRE_THROWS_WITH(s.load_state({-1.0, 0}), value_error,
                              "GradScaler.load_state: scale must be positive and finite, got -1");
  MAMCLIP_REQUIRE_THROWS_WITH(s.load_state({2.0, 10}), value_error,
                              "GradScaler.load_state: growth_tracker 10 is outside [0, growth_interval = 10)");
  MAMCLIP_REQUIRE_THROWS_WITH(GradScaler({.growth_factor = 1.0}), value_error,
                              "GradScaler: growth_factor must be > 1, got 1");
  MAMCLIP_REQUIRE_THROWS_WITH(GradScaler({.backoff_factor = 1.5}), value_error,
                              "GradScaler: backoff_factor must be in (0, 1), got 1.5");
}

}  // namespace test_grad_scaler
