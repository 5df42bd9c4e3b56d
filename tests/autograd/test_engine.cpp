// The backward engine: accumulation, hooks, retain_graph, detach, no-grad, errors, checkpointing.
#include "support/test_support.hpp"

namespace test_engine {
using namespace mamclip;
using namespace mamclip::test;

TEST_CASE("gradients accumulate when a tensor is used several times") {
  auto x = tensor<double>({1, 2, 3}).set_requires_grad();
  auto y = sum(x * x + x * 3.0);  // dy/dx = 2x + 3
  y.backward();
  CHECK(x.grad().to_vector() == std::vector<double>{5, 7, 9});
  // A second graph adds to .grad.
  sum(x).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{6, 8, 10});
}

TEST_CASE("backward twice needs retain_graph") {
  auto x = tensor<double>({1, 2}).set_requires_grad();
  auto y = sum(exp(x));
  y.backward(Tensor<double>(), /*retain_graph=*/true);
  y.backward();
  require_allclose(x.grad(), mul(exp(x.detach()), 2.0), 1e-12, 1e-12);
  MAMCLIP_REQUIRE_THROWS_WITH(y.backward(), autograd_error, "backward through the graph a second time");
}

TEST_CASE("non-scalar backward needs a gradient of the output's shape") {
  auto x = tensor<double>({1, 2}).set_requires_grad();
  auto y = x * 2.0;
  MAMCLIP_REQUIRE_THROWS_WITH(y.backward(), autograd_error, "only for a one-element output, got shape [2]");
  MAMCLIP_REQUIRE_THROWS_WITH(y.backward(tensor<double>({1, 2, 3})), shape_error, "gradient has shape [3]");
  y.backward(tensor<double>({1, 10}));
  CHECK(x.grad().to_vector() == std::vector<double>{2, 20});
}

TEST_CASE("detach and NoGradGuard stop the graph") {
  auto x = tensor<double>({1, 2}).set_requires_grad();
  CHECK_FALSE((x.detach() * 2.0).requires_grad());
  {
    NoGradGuard ng;
    CHECK_FALSE((x * 2.0).requires_grad());
  }
  CHECK((x * 2.0).requires_grad());
  MAMCLIP_REQUIRE_THROWS_WITH(sum(x.detach()).backward(), autograd_error, "does not require grad");
}

TEST_CASE("hooks read and replace intermediate gradients") {
  auto x = tensor<double>({1, 2, 3}).set_requires_grad();
  auto h = x * 2.0;
  Tensor<double> seen;
  h.register_hook([&](const Tensor<double>& g) {
    seen = g.clone();
    return Tensor<double>();  // unchanged
  });
  h.retain_grad();
  auto y = sum(h * h);
  y.backward();
  require_allclose(seen, mul(h.detach(), 2.0), 0, 0, "hook sees dy/dh");
  require_allclose(h.grad(), seen, 0, 0, "retain_grad keeps dy/dh");
  require_allclose(x.grad(), mul(h.detach(), 4.0), 0, 0);

  auto z = tensor<double>({1, 1}).set_requires_grad();
  z.register_hook([](const Tensor<double>& g) { return mul(g, 10.0); });  // leaf hook scales its gradient
  sum(z).backward();
  CHECK(z.grad().to_vector() == std::vector<double>{10, 10});
}

TEST_CASE("post-accumulate hooks run once per backward after .grad is summed, until removed") {
  auto x = tensor<double>({1, 2}).set_requires_grad();
  std::vector<std::vector<double>> seen;
  const uint64_t a = x.register_post_accumulate_grad_hook([&] { seen.push_back(x.grad().to_vector()); });
  int second = 0;
  const uint64_t b = x.register_post_accumulate_grad_hook([&] { ++second; });
  CHECK(a != b);
  sum(x * x + x).backward();  // two uses of x: one call, with both summed (2x + 1)
  REQUIRE(seen.size() == 1);
  CHECK(seen[0] == std::vector<double>{3, 5});
  x.remove_post_accumulate_grad_hook(a);
  x.remove_post_accumulate_grad_hook(a);  // twice: nothing happens
  sum(x).backward();
  CHECK(seen.size() == 1);
  CHECK(second == 2);
  x.remove_post_accumulate_grad_hook(b);
  sum(x).backward();
  CHECK(second == 2);
  CHECK(x.grad().to_vector() == std::vector<double>{5, 7});
  auto y = x * 2.0;
  MAMCLIP_REQUIRE_THROWS_WITH(y.register_post_accumulate_grad_hook([] {}), autograd_error, "expected a leaf");
}

TEST_CASE("gradients flow through dtype casts") {
  auto x = tensor<double>({1, 2}).set_requires_grad();
  auto f = x.to<float>();
  auto y = sum(f * f);
  y.backward();
  CHECK(x.grad().to_vector() == std::vector<double>{2, 4});
}

TEST_CASE("set_requires_grad is refused on a non-leaf") {
  auto x = tensor<double>({1}).set_requires_grad();
  auto y = x * 2.0;
  MAMCLIP_REQUIRE_THROWS_WITH(y.set_requires_grad(false), autograd_error, "only leaf tensors");
  MAMCLIP_REQUIRE_THROWS_WITH(y.fill_(1.0), autograd_error, "in-place change");
}

TEST_CASE("checkpoint recomputes and gives the same gradients") {
  Generator gen(7);
  auto w = randn<double>({4, 4}, gen).set_requires_grad();
  auto x = randn<double>({3, 4}, gen).set_requires_grad();
  int calls = 0;
  std::function<Tensor<double>(const std::vector<Tensor<double>>&)> block = [&](const std::vector<Tensor<double>>& in) {
    ++calls;
    return tanh(sum(in[0].unsqueeze(1) * w.unsqueeze(0), {2})) * 2.0;
  };
  auto plain = sum(exp(block({x})));
  plain.backward();
  auto gw = w.grad().clone(), gx = x.grad().clone();
  w.set_grad(Tensor<double>());
  x.set_grad(Tensor<double>());
  calls = 0;
  auto ck = sum(exp(checkpoint(block, {x})));
  CHECK(calls == 1);
  require_allclose(ck, plain.detach(), 1e-14, 0, "same forward");
  ck.backward();
  CHECK(calls == 2);  // recomputed once in backward
  require_allclose(w.grad(), gw, 1e-12, 1e-12, "parameter grads through checkpoint");
  require_allclose(x.grad(), gx, 1e-12, 1e-12, "input grads through checkpoint");
}

TEST_CASE("gradcheck catches a wrong gradient") {
  // A deliberately wrong backward: forward x^2, backward says 3x.
  auto wrong = [](const std::vector<Tensor<double>>& in) {
    Tensor<double> y = in[0].detach() * in[0].detach();
    return autograd::record<double>("Wrong", {in[0]}, y, [x = in[0].detach()](const Tensor<double>& g) {
      return std::vector<Tensor<double>>{g * x * 3.0};
    });
  };
  auto r = gradcheck(wrong, {tensor<double>({0.5, -1.5, 2.0})});
  CHECK_FALSE(r.ok);
  auto right = [](const std::vector<Tensor<double>>& in) { return in[0] * in[0]; };
  CHECK(gradcheck(right, {tensor<double>({0.5, -1.5, 2.0})}).ok);
}

namespace {
struct Cube : autograd::Function<Cube, double> {
  static constexpr const char* kName = "CubeBackward";
  static Tensor<double> forward(Context& ctx, const std::vector<Tensor<double>>& in) {
    ctx.save_for_backward({in[0]});
    ctx.values["scale"] = in[1].item();
    return in[0] * in[0] * in[0] * in[1].item();
  }
  static std::vector<Tensor<double>> backward(Context& ctx, const Tensor<double>& grad) {
    const auto& x = ctx.saved()[0];
    const double s = std::any_cast<double>(ctx.values.at("scale"));
    CHECK_FALSE(ctx.needs_input_grad[1]);
    return {grad * x * x * (3.0 * s), Tensor<double>()};
  }
};
}  // namespace

TEST_CASE("custom functions define their own backward") {
  auto s = scalar<double>(2.0);
  require_gradcheck([&](const std::vector<Tensor<double>>& in) { return Cube::apply({in[0], s}); },
                    {test::noncontiguous(tensor<double>({0.5, -1.25, 2.0, 0.75}, {2, 2}))});
  auto x = tensor<double>({1.0}).set_requires_grad();
  auto y = Cube::apply({x, s});
  CHECK(y.grad_fn()->name() == "CubeBackward");
}

}  // namespace test_engine
