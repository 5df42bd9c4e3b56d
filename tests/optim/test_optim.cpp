// Optimizers, schedules and gradient clipping against the PyTorch formulas,
// evaluated here in double step by step.
#include "support/test_support.hpp"

#include <cmath>

namespace test_optim {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::optim;

namespace {

using Vec = std::vector<double>;

Tensor<float> ftensor(const Vec& v) {
  std::vector<float> f(v.begin(), v.end());
  return from_vector<float>(f);
}
Tensor<float> param(const Vec& v) { return ftensor(v).set_requires_grad(); }

// Every element within float rounding of the double reference.
void require_near(const Tensor<float>& actual, const Vec& expected, double rtol = 2e-6, double atol = 1e-7) {
  require_allclose(actual, from_vector<double>(expected), atol, rtol);
}

// Three steps of gradients, with sign changes and a large first step.
const std::vector<Vec> kGrads = {{0.9, -2.0, 0.05, 1.5, -0.3}, {-0.4, -1.1, 0.2, 0.7, 0.0}, {0.1, 0.6, -0.25, -2.2, 0.8}};
const Vec kInit = {0.5, -1.25, 2.0, 0.0, -0.75};

// torch.optim.SGD, in double.
struct SgdRef {
  SGDOptions o;
  Vec p, buf;
  bool first = true;
  void step(const Vec& grad) {
    if (first) buf.assign(p.size(), 0.0);
    for (size_t i = 0; i < p.size(); ++i) {
      double g = grad[i] + o.weight_decay * p[i];
      if (o.momentum != 0) {
        buf[i] = first ? g : o.momentum * buf[i] + (1 - o.dampening) * g;
        g = o.nesterov ? g + o.momentum * buf[i] : buf[i];
      }
      p[i] -= o.lr * g;
    }
    first = false;
  }
};

// torch.optim.AdamW, in double.
struct AdamWRef {
  AdamWOptions o;
  Vec p, m, v, vmax;
  int t = 0;
  void step(const Vec& g) {
    if (m.empty()) m = v = vmax = Vec(p.size(), 0.0);
    ++t;
    const double bc1 = 1 - std::pow(o.beta1, t), bc2 = 1 - std::pow(o.beta2, t);
    for (size_t i = 0; i < p.size(); ++i) {
      p[i] *= 1 - o.lr * o.weight_decay;
      m[i] += (g[i] - m[i]) * (1 - o.beta1);
      v[i] = o.beta2 * v[i] + (1 - o.beta2) * g[i] * g[i];
      vmax[i] = std::max(vmax[i], v[i]);
      const double denom = std::sqrt(o.amsgrad ? vmax[i] : v[i]) / std::sqrt(bc2) + o.eps;
      p[i] -= o.lr / bc1 * m[i] / denom;
    }
  }
};

}  // namespace

TEST_CASE("SGD matches PyTorch's update for momentum, dampening, nesterov and weight decay") {
  std::vector<std::pair<const char*, SGDOptions>> cases = {
      {"plain", {0.1, 0.0, 0.0, 0.0, false}},
      {"momentum", {0.05, 0.9, 0.0, 0.0, false}},
      {"momentum+dampening+wd", {0.05, 0.8, 0.3, 0.01, false}},
      {"nesterov+wd", {0.02, 0.9, 0.0, 0.1, true}},
  };
  for (const auto& [name, o] : cases) {
    INFO(name);
    auto p = param(kInit);
    SGD opt({p}, o);
    SgdRef ref{o, kInit, {}};
    for (const auto& g : kGrads) {
      p.set_grad(ftensor(g));
      opt.step();
      ref.step(g);
      require_near(p, ref.p);
    }
    if (o.momentum != 0) {
      REQUIRE(opt.state(p) != nullptr);
      require_near(opt.state(p)->momentum_buffer, ref.buf);
    }
  }
  // The first step with momentum takes the gradient as the buffer: p = p0 - lr * g.
  auto q = param({1.0});
  SGD first({q}, {0.5, 0.9, 0.5});
  q.set_grad(ftensor({2.0}));
  first.step();
  CHECK(q.item() == 0.0f);
}

TEST_CASE("AdamW matches PyTorch's single-tensor update step by step") {
  AdamWOptions o;  // PyTorch defaults, with a larger lr so the changes are visible
  CHECK(o.lr == 1e-3);
  CHECK(o.beta1 == 0.9);
  CHECK(o.beta2 == 0.999);
  CHECK(o.eps == 1e-8);
  CHECK(o.weight_decay == 1e-2);
  o.lr = 0.05;
  o.weight_decay = 0.1;
  auto p = param(kInit);
  AdamW opt({p}, o);
  AdamWRef ref{o, kInit};
  for (const auto& g : kGrads) {
    p.set_grad(ftensor(g));
    opt.step();
    ref.step(g);
    require_near(p, ref.p);
  }
  const AdamWState* st = opt.state(p);
  REQUIRE(st != nullptr);
  CHECK(st->step == 3);
  require_near(st->exp_avg, ref.m);
  require_near(st->exp_avg_sq, ref.v, 2e-6, 1e-12);
  CHECK_FALSE(st->max_exp_avg_sq.defined());
  // The first step moves each element by about lr (Adam's normalised step) after the decay.
  auto q = param({3.0});
  AdamW one({q}, {0.01, 0.9, 0.999, 1e-8, 0.0});
  q.set_grad(ftensor({-123.0}));
  one.step();
  CHECK(q.item() == Approx(3.01).epsilon(1e-6));
}

TEST_CASE("AdamW with amsgrad uses the running maximum of the second moment") {
  AdamWOptions o{0.05, 0.9, 0.9, 1e-8, 0.01, true};
  // A large first gradient, then small ones: v falls (fast, with beta2 = 0.9) and the maximum matters.
  const std::vector<Vec> grads = {{5.0, -4.0, 3.0}, {0.1, 0.2, -0.1}, {-0.2, 0.1, 0.05}, {0.05, -0.05, 0.1}};
  auto p = param({1.0, -2.0, 0.5});
  auto plain = param({1.0, -2.0, 0.5});
  AdamW opt({p}, o);
  AdamWOptions no_ams = o;
  no_ams.amsgrad = false;
  AdamW opt_plain({plain}, no_ams);
  AdamWRef ref{o, {1.0, -2.0, 0.5}};
  for (const auto& g : grads) {
    p.set_grad(ftensor(g));
    plain.set_grad(ftensor(g));
    opt.step();
    opt_plain.step();
    ref.step(g);
    require_near(p, ref.p);
  }
  require_near(opt.state(p)->max_exp_avg_sq, ref.vmax, 2e-6, 1e-12);
  // vmax stayed at the first step's v while v decayed, so the two runs differ.
  CHECK(opt.state(p)->max_exp_avg_sq(0) > opt.state(p)->exp_avg_sq(0));
  CHECK(std::abs(p(0) - plain(0)) > 1e-3);
}

TEST_CASE("parameter groups keep their own lr and weight decay") {
  AdamWOptions a{0.01, 0.9, 0.999, 1e-8, 0.0}, b{0.1, 0.8, 0.99, 1e-6, 0.5};
  auto p1 = param(kInit), p2 = param({1.0, 2.0, 3.0});
  AdamW opt({{{p1}, a}, {{p2}, b}});
  CHECK(opt.num_param_groups() == 2);
  CHECK(opt.lr(0) == 0.01);
  CHECK(opt.lr(1) == 0.1);
  AdamWRef r1{a, kInit}, r2{b, {1.0, 2.0, 3.0}};
  for (const auto& g : kGrads) {
    p1.set_grad(ftensor(g));
    p2.set_grad(ftensor({g[0], g[1], g[2]}));
    opt.step();
    r1.step(g);
    r2.step({g[0], g[1], g[2]});
  }
  require_near(p1, r1.p);
  require_near(p2, r2.p);

  auto s1 = param(kInit), s2 = param(kInit);
  SGD sgd({{{s1}, {0.1}}, {{s2}, {0.01, 0.0, 0.0, 0.2}}});
  SgdRef q1{{0.1}, kInit}, q2{{0.01, 0.0, 0.0, 0.2}, kInit};
  s1.set_grad(ftensor(kGrads[0]));
  s2.set_grad(ftensor(kGrads[0]));
  sgd.step();
  q1.step(kGrads[0]);
  q2.step(kGrads[0]);
  require_near(s1, q1.p);
  require_near(s2, q2.p);
  // add_param_group after construction, and lr changes per group.
  auto s3 = param({1.0});
  sgd.add_param_group({{s3}, {1.0}});
  sgd.set_lr(2, 0.5);
  s3.set_grad(ftensor({2.0}));
  s1.set_grad(Tensor<float>());
  s2.set_grad(Tensor<float>());
  const auto before = s1.to_vector();
  sgd.step();
  CHECK(s3.item() == 0.0f);
  CHECK(s1.to_vector() == before);  // no gradient: untouched
  CHECK(sgd.parameters().size() == 3);
}

TEST_CASE("optimizers check options, parameters and gradients") {
  auto p = param({1.0, 2.0});
  MAMCLIP_REQUIRE_THROWS_WITH(AdamW({p}, {0.1, 1.0}), value_error,
                              "AdamW: invalid beta1 1 in parameter group 0 (expected 0 <= beta1 < 1)");
  MAMCLIP_REQUIRE_THROWS_WITH(AdamW({p}, {-0.1}), value_error, "AdamW: invalid learning rate -0.1 in parameter group 0");
  MAMCLIP_REQUIRE_THROWS_WITH(SGD({p}, {0.1, 0.0, 0.0, 0.0, true}), value_error,
                              "SGD: Nesterov momentum requires a momentum > 0 and zero dampening");
  MAMCLIP_REQUIRE_THROWS_WITH(SGD({{{p}, {0.1}}, {{p}, {0.2}}}), value_error,
                              "SGD: parameter 0 of group 1 appears more than once among the parameter groups");
  auto nonleaf = p * 2.0;
  MAMCLIP_REQUIRE_THROWS_WITH(SGD({nonleaf}), value_error, "SGD: parameter 0 of group 0 is not a leaf tensor");
  SGD opt({p}, {0.1});
  p.set_grad(ftensor({1.0, 2.0, 3.0}));
  MAMCLIP_REQUIRE_THROWS_WITH(opt.step(), shape_error,
                              "SGD.step: the gradient of parameter 0 in group 0 has shape [3] but the parameter has shape [2]");
  MAMCLIP_REQUIRE_THROWS_WITH(opt.lr(4), index_error, "SGD: parameter group 4 is out of range (the optimizer has 1 groups)");
  MAMCLIP_REQUIRE_THROWS_WITH(opt.set_lr(0, -1.0), value_error, "SGD.set_lr: learning rate must be non-negative");
}

TEST_CASE("zero_grad and an end-to-end fit through a Module") {
  Generator gen(31);
  nn::Linear fc(3, 1, true, gen);
  auto x = randn<float>({64, 3}, gen);
  auto w_true = tensor<float>({1.5f, -2.0f, 0.5f}, {3, 1});
  auto y = add(matmul(x, w_true), 0.25);
  AdamW opt(fc.parameters(), {0.05, 0.9, 0.999, 1e-8, 0.0});
  double first = 0, last = 0;
  for (int it = 0; it < 150; ++it) {
    opt.zero_grad();
    auto loss = mean(pow(sub(fc(x), y), 2.0));
    loss.backward();
    opt.step();
    (it == 0 ? first : last) = loss.item();
  }
  CHECK(last < 1e-3 * first);
  CHECK(fc.bias.item() == Approx(0.25).margin(0.02));
  for (auto& p : fc.parameters()) CHECK(p.grad().defined());
  opt.zero_grad(/*set_to_none=*/false);
  for (auto& p : fc.parameters()) {
    REQUIRE(p.grad().defined());
    CHECK(p.grad().to_vector() == std::vector<float>(static_cast<size_t>(p.numel()), 0.0f));
  }
  opt.zero_grad();
  for (auto& p : fc.parameters()) CHECK_FALSE(p.grad().defined());
}

TEST_CASE("LambdaLR, ConstantLR and StepLR set base lr times the factor of the step") {
  auto p1 = param({1.0}), p2 = param({1.0});
  SGD opt({{{p1}, {0.2}}, {{p2}, {0.05}}});
  LambdaLR sched(opt, [](int64_t s) { return 1.0 / static_cast<double>(s + 1); });
  CHECK(sched.last_step() == 0);
  CHECK(opt.lr(0) == 0.2);  // factor(0) = 1 applied at construction
  sched.step();
  sched.step();
  CHECK(sched.last_step() == 2);
  CHECK(opt.lr(0) == 0.2 * (1.0 / 3.0));
  CHECK(opt.lr(1) == 0.05 * (1.0 / 3.0));
  CHECK(sched.last_lr() == std::vector<double>{0.2 * (1.0 / 3.0), 0.05 * (1.0 / 3.0)});
  CHECK(sched.base_lrs() == std::vector<double>{0.2, 0.05});
  sched.set_step(9);
  CHECK(opt.lr(1) == 0.05 * (1.0 / 10.0));

  SGD opt2({p1}, {0.3});
  ConstantLR constant(opt2);
  for (int i = 0; i < 5; ++i) constant.step();
  CHECK(opt2.lr(0) == 0.3);

  SGD opt3({p2}, {0.5});
  StepLR step_lr(opt3, 3, 0.1);
  std::vector<double> lrs;
  for (int s = 0; s < 8; ++s) {
    lrs.push_back(opt3.lr(0));
    step_lr.step();
  }
  const std::vector<double> expected = {0.5, 0.5, 0.5, 0.5 * 0.1, 0.5 * 0.1, 0.5 * 0.1, 0.5 * 0.01, 0.5 * 0.01};
  for (size_t s = 0; s < lrs.size(); ++s) CHECK(lrs[s] == Approx(expected[s]).epsilon(1e-12));
  MAMCLIP_REQUIRE_THROWS_WITH(StepLR(opt3, 0), value_error, "StepLR: step_size must be positive, got 0");
  MAMCLIP_REQUIRE_THROWS_WITH(LambdaLR(opt3, [](int64_t) { return -1.0; }), value_error,
                              "LRScheduler: factor(0) = -1 is not a finite non-negative number");
}

TEST_CASE("CosineWithWarmup is HF's cosine schedule with linear warmup") {
  auto p = param({1.0});
  AdamW opt({p}, {2e-3});
  CosineWithWarmup sched(opt, 4, 20);
  CHECK(opt.lr(0) == 0.0);  // warmup starts from 0
  std::vector<double> lrs;
  for (int s = 0; s <= 26; ++s) {
    lrs.push_back(opt.lr(0));
    sched.step();
  }
  const double pi = 3.141592653589793;
  CHECK(lrs[1] == Approx(2e-3 * 0.25).epsilon(1e-14));
  CHECK(lrs[2] == Approx(2e-3 * 0.5).epsilon(1e-14));
  CHECK(lrs[4] == Approx(2e-3).epsilon(1e-14));                    // peak at the end of warmup
  CHECK(lrs[12] == Approx(2e-3 * 0.5).epsilon(1e-12));             // half way through the decay
  CHECK(lrs[7] == Approx(2e-3 * 0.5 * (1 + std::cos(pi * 3.0 / 16.0))).epsilon(1e-14));
  CHECK(lrs[20] == Approx(0.0).margin(1e-18));                      // zero at total_steps
  CHECK(lrs[26] == Approx(2e-3 * 0.5 * (1 + std::cos(pi * 22.0 / 16.0))).epsilon(1e-12));  // HF keeps the cosine
  for (int s = 5; s <= 20; ++s) CHECK(lrs[s] < lrs[s - 1]);
  // num_cycles and warmup 0.
  CHECK(CosineWithWarmup::factor_at(0, 0, 10) == 1.0);
  CHECK(CosineWithWarmup::factor_at(5, 0, 10, 1.0) == Approx(0.0).margin(1e-15));  // a full cosine: back up at 10
  CHECK(CosineWithWarmup::factor_at(10, 0, 10, 1.0) == Approx(1.0));
  MAMCLIP_REQUIRE_THROWS_WITH(CosineWithWarmup(opt, 5, 3), value_error,
                              "CosineWithWarmup: total_steps 3 must be at least warmup_steps 5");
}

TEST_CASE("CosineWithWarmup reproduces the learning rates of the PyTorch fixture exactly") {
  const nlohmann::json j = load_json(fixture_path("foundation.json")).at("adamw");
  const auto& hp = j.at("hyperparameters");
  auto p = param({1.0});
  AdamW opt({p}, {hp.at("lr").get<double>(), hp.at("beta1").get<double>(), hp.at("beta2").get<double>(),
                  hp.at("eps").get<double>(), hp.at("weight_decay").get<double>()});
  CosineWithWarmup sched(opt, hp.at("warmup_steps").get<int64_t>(), hp.at("total_steps").get<int64_t>());
  const auto lrs = j.at("lrs").get<std::vector<double>>();
  REQUIRE(lrs.size() == 20);
  for (size_t i = 0; i < lrs.size(); ++i) {
    INFO("step " << i);
    CHECK(opt.lr(0) == lrs[i]);
    sched.step();
  }
}

TEST_CASE("clip_grad_norm_ scales by max_norm / (total + 1e-6), clamped to 1, and returns the total") {
  auto a = param({0, 0}), b = param({0}), c = param({7});  // c has no gradient: ignored
  a.set_grad(ftensor({3.0, -4.0}));
  b.set_grad(ftensor({12.0}));
  const double total = clip_grad_norm_({a, b, c}, 6.5);
  CHECK(total == 13.0);
  const double coef = 6.5 / (13.0 + 1e-6);
  require_near(a.grad(), {3.0 * coef, -4.0 * coef});
  require_near(b.grad(), {12.0 * coef});
  CHECK_FALSE(c.grad().defined());
  // PyTorch's float32 coefficient: (1 / (total + 1e-6)) * max_norm.
  const float fcoef = (1.0f / (13.0f + 1e-6f)) * 6.5f;
  CHECK(b.grad()(0) == 12.0f * fcoef);

  // Below the limit: the norm is returned and the gradients stay as they were.
  a.set_grad(ftensor({3.0, -4.0}));
  b.set_grad(ftensor({12.0}));
  CHECK(clip_grad_norm_({a, b}, 100.0) == 13.0);
  CHECK(a.grad().to_vector() == std::vector<float>{3.0f, -4.0f});

  // Other norms.
  CHECK(clip_grad_norm_({a, b}, 100.0, INFINITY) == 12.0);
  CHECK(clip_grad_norm_({a, b}, 100.0, 1.0) == 19.0);
  CHECK(clip_grad_norm_({a, b}, 100.0, 3.0) == Approx(std::cbrt(std::pow(std::cbrt(27.0 + 64.0), 3) + 1728.0)));
  const double inf_total = clip_grad_norm_({a, b}, 6.0, INFINITY);
  CHECK(inf_total == 12.0);
  require_near(b.grad(), {12.0 * 6.0 / (12.0 + 1e-6)});

  // Non-contiguous gradients are clipped in place.
  auto gw = noncontiguous(tensor<float>({1, 2, 3, 4, 5, 6}, {2, 3}));
  auto w2 = ftensor({0, 0, 0, 0, 0, 0}).reshape({2, 3}).set_requires_grad();
  w2.set_grad(gw);
  const double n = clip_grad_norm_({w2}, 1.0);
  CHECK(n == Approx(std::sqrt(91.0)).epsilon(1e-7));
  CHECK(gw(1, 2) == Approx(6.0 / std::sqrt(91.0)).epsilon(1e-6));

  CHECK(clip_grad_norm_({c}, 1.0) == 0.0);
  b.set_grad(ftensor({NAN}));
  MAMCLIP_REQUIRE_THROWS_WITH(clip_grad_norm_({a, b}, 1.0, 2.0, /*error_if_nonfinite=*/true), value_error,
                              "clip_grad_norm_: the total norm of order 2 of the gradients is nan");
  MAMCLIP_REQUIRE_THROWS_WITH(clip_grad_norm_({a}, 1.0, 0.0), value_error, "norm_type must be positive or infinity");
}

}  // namespace test_optim
