// layer_norm2d (timm's LayerNorm2d) and drop_path (timm's stochastic depth):
// against the permute + layer_norm composition and timm fixtures, gradcheck in
// double on non-contiguous inputs, half / bfloat16, the mask's statistics and
// reuse in backward, argument errors.
#include "support/test_support.hpp"

namespace test_vision_norm {
using namespace mamclip;
using namespace mamclip::test;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) { return uniform_random<double>(s, seed, lo, hi); }
// The definition: channels last, layer_norm over C, channels first again.
template <class T>
Tensor<T> composed(const Tensor<T>& x, const Tensor<T>& w, const Tensor<T>& b, double eps) {
  return layer_norm(x.permute({0, 2, 3, 1}), {x.size(1)}, w, b, eps).permute({0, 3, 1, 2});
}
}  // namespace

TEST_CASE("layer_norm2d equals permute -> layer_norm -> permute, with and without affine parameters") {
  const auto x = rnd({2, 11, 5, 7}, 1, -2, 3), w = rnd({11}, 2, 0.5, 1.5), b = rnd({11}, 3);
  require_allclose(layer_norm2d(x, w, b), composed(x, w, b, 1e-6), 1e-13, 1e-12, "affine");
  require_allclose(layer_norm2d(noncontiguous(x), w, Tensor<double>(), 1e-3), composed(x, w, Tensor<double>(), 1e-3), 1e-13,
                   1e-12, "weight only, non-contiguous");
  require_allclose(layer_norm2d(x), composed(x, Tensor<double>(), Tensor<double>(), 1e-6), 1e-13, 1e-12, "no affine");
  // Positions past one tile of the CPU kernel (so tiles and their edges are covered).
  const auto big = rnd({1, 3, 23, 29}, 4);
  require_allclose(layer_norm2d(big, w.narrow(0, 0, 3), b.narrow(0, 0, 3)),
                   composed(big, w.narrow(0, 0, 3).contiguous(), b.narrow(0, 0, 3).contiguous(), 1e-6), 1e-13, 1e-12, "tiles");
}

TEST_CASE("layer_norm2d gradcheck for x, weight and bias, each optional, non-contiguous, odd sizes") {
  const auto x = noncontiguous(rnd({2, 5, 3, 7}, 5, -2, 2)), w = rnd({5}, 6, 0.5, 1.5), b = rnd({5}, 7);
  require_gradcheck([](auto& v) { return layer_norm2d(v[0], v[1], v[2]); }, {x, w, b});
  require_gradcheck([](auto& v) { return layer_norm2d(v[0], v[1], Tensor<double>(), 1e-2); }, {x, w});
  require_gradcheck([](auto& v) { return layer_norm2d(v[0]); }, {x});
  // Backward agrees with the composition's backward, gradient by gradient.
  Tensor<double> xa = x.detach().clone().set_requires_grad(), wa = w.detach().set_requires_grad(), ba = b.detach().set_requires_grad();
  Tensor<double> xb = x.detach().clone().set_requires_grad(), wb = w.detach().clone().set_requires_grad(),
                 bb = b.detach().clone().set_requires_grad();
  const auto gy = rnd({2, 5, 3, 7}, 8);
  layer_norm2d(xa, wa, ba).backward(gy);
  composed(xb, wb, bb, 1e-6).backward(gy);
  require_allclose(xa.grad(), xb.grad(), 1e-12, 1e-10, "dx");
  require_allclose(wa.grad(), wb.grad(), 1e-12, 1e-10, "dw");
  require_allclose(ba.grad(), bb.grad(), 1e-12, 1e-10, "db");
}

TEST_CASE("layer_norm2d on channels-last storage: the same values and gradients, the layout kept") {
  const auto x = rnd({2, 7, 5, 3}, 11, -2, 2), w = rnd({7}, 12, 0.5, 1.5), b = rnd({7}, 13);
  const auto xl = contiguous_channels_last(x);
  REQUIRE(is_channels_last(xl));
  const auto y = layer_norm2d(xl, w, b);
  CHECK(is_channels_last(y));
  require_allclose(y, layer_norm2d(x, w, b), 1e-13, 1e-12, "y");
  require_gradcheck([](auto& v) { return layer_norm2d(contiguous_channels_last(v[0]), v[1], v[2]); }, {x, w, b});
  require_gradcheck([](auto& v) { return layer_norm2d(contiguous_channels_last(v[0])); }, {x});
}

TEST_CASE("layer_norm2d matches timm's LayerNorm2d, values and gradients") {
  const auto doc = load_json(fixture_path("conv/layer_norm2d.json"));
  const auto& c = doc.at("cases").at(0);
  Tensor<float> x = tensor_from_json<float>(c.at("x")), w = tensor_from_json<float>(c.at("weight")),
                b = tensor_from_json<float>(c.at("bias"));
  x.set_requires_grad();
  w.set_requires_grad();
  b.set_requires_grad();
  const Tensor<float> y = layer_norm2d(x, w, b, c.at("eps").get<double>());
  require_allclose(y, tensor_from_json<float>(c.at("y")), 1e-6, 1e-5, "y");
  y.backward(tensor_from_json<float>(c.at("gy")));
  require_allclose(x.grad(), tensor_from_json<float>(c.at("grad_x")), 1e-5, 1e-5, "grad_x");
  require_allclose(w.grad(), tensor_from_json<float>(c.at("grad_weight")), 1e-5, 1e-5, "grad_weight");
  require_allclose(b.grad(), tensor_from_json<float>(c.at("grad_bias")), 1e-5, 1e-5, "grad_bias");
}

TEST_CASE("layer_norm2d in half and bfloat16 computes in float") {
  const Tensor<float> x = uniform_random<float>({2, 6, 3, 5}, 9, -2, 2);
  const auto ref = layer_norm2d(x.to<half>().to<float>());
  require_allclose(layer_norm2d(x.to<half>()).to<float>(), ref, 4e-3, 4e-3, "half");
  const auto refb = layer_norm2d(x.to<bfloat16>().to<float>());
  require_allclose(layer_norm2d(x.to<bfloat16>()).to<float>(), refb, 3e-2, 3e-2, "bfloat16");
}

TEST_CASE("layer_norm2d errors") {
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm2d(rnd({2, 3, 4}, 1)), shape_error,
                              "layer_norm2d: input has shape [2, 3, 4]; expected 4 dims [N, C, H, W]");
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm2d(rnd({2, 3, 4, 4}, 1), rnd({4}, 2)), shape_error,
                              "layer_norm2d: weight has shape [4] and input has shape [2, 3, 4, 4]; expected [C] = [3]");
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm2d(rnd({2, 3, 4, 4}, 1), rnd({3}, 2), rnd({3, 1}, 3)), shape_error,
                              "layer_norm2d: bias has shape [3, 1]");
  MAMCLIP_REQUIRE_THROWS_WITH(layer_norm2d(rnd({2, 3, 4, 4}, 1), Tensor<double>(), Tensor<double>(), -1.0), value_error,
                              "layer_norm2d: eps must be non-negative, got -1");
  if (ensure_stand_in_cuda())
    MAMCLIP_REQUIRE_THROWS_WITH(layer_norm2d(rnd({2, 3, 4, 4}, 1).to(Device::cuda(0))), device_error,
                                "layer_norm2d: no kernel is registered for float64 tensors on cuda:0");
}

TEST_CASE("drop_path zeroes whole samples with probability p, scales the rest by 1/(1-p), and reuses the mask in backward") {
  const auto x = rnd({4000, 3, 2}, 11, 0.5, 1.5);
  Generator g1(5), g2(5);
  const auto y1 = drop_path(x, 0.3, true, g1), y2 = drop_path(x, 0.3, true, g2);
  CHECK(y1.to_vector() == y2.to_vector());
  CHECK(g1.offset() == 1);  // one stream per call
  int dropped = 0;
  for (int64_t n = 0; n < 4000; ++n) {
    const double r = y1(n, 0, 0) / x(n, 0, 0);
    const bool zero = r == 0;
    dropped += zero;
    if (!zero) CHECK(r == Approx(1 / 0.7));
    // The whole sample shares one decision.
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 2; ++j) CHECK((y1(n, i, j) == 0) == zero);
  }
  CHECK(std::abs(dropped / 4000.0 - 0.3) < 0.03);
  // Without scale_by_keep the kept samples pass unchanged.
  Generator g3(5);
  const auto y3 = drop_path(x, 0.3, true, g3, false);
  for (int64_t n = 0; n < 50; ++n) CHECK(y3(n, 1, 1) == (y1(n, 1, 1) == 0 ? 0.0 : x(n, 1, 1)));
  // The gradient is the same mask times the incoming gradient.
  Generator g4(5);
  Tensor<double> xl = x.detach().set_requires_grad();
  sum(drop_path(xl, 0.3, true, g4)).backward();
  for (int64_t n = 0; n < 50; ++n) CHECK(xl.grad()(n, 2, 1) == (y1(n, 0, 0) == 0 ? 0.0 : 1 / 0.7));
  require_gradcheck([](auto& v) {
    Generator g(9);  // the same mask for every evaluation
    return drop_path(v[0], 0.5, true, g);
  }, {noncontiguous(rnd({7, 3, 5}, 12))});
}

TEST_CASE("drop_path is the identity when not training or p == 0, drops everything at p == 1, and checks p") {
  const auto x = rnd({6, 5}, 13);
  CHECK(drop_path(x, 0.4, false).is_same(x));
  CHECK(drop_path(x, 0.0, true).is_same(x));
  Generator g(1);
  for (double v : drop_path(x, 1.0, true, g).to_vector()) CHECK(v == 0);
  MAMCLIP_REQUIRE_THROWS_WITH(drop_path(x, 1.5, true), value_error, "drop_path: probability p must be in [0, 1], got 1.5");
  MAMCLIP_REQUIRE_THROWS_WITH(drop_path(scalar<double>(1.0), 0.5, true), shape_error,
                              "drop_path: input must have a batch dim (dim 0), got a 0-dim tensor");
  // half computes; a float mask of 0 or 1/keep.
  Generator gh(2), gf(2);
  const Tensor<float> xf = uniform_random<float>({40, 3}, 14, -1, 1);
  require_allclose(drop_path(xf.to<half>(), 0.5, true, gh).to<float>(), drop_path(xf.to<half>().to<float>(), 0.5, true, gf),
                   1e-3, 1e-3);
  if (ensure_stand_in_cuda())
    MAMCLIP_REQUIRE_THROWS_WITH(drop_path(x.to(Device::cuda(0)), 0.5, true), device_error,
                                "drop_path: no kernel is registered for float64 tensors on cuda:0");
}

}  // namespace test_vision_norm
