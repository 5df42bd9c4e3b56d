// Autocast (core/autocast.hpp): inside a region, matmul, linear, conv2d and
// scaled_dot_product_attention on float tensors compute in bfloat16 (or
// float16) and widen the result; gradients reach the float leaves; every
// other op, other threads, other device types and the code after the region
// are untouched.
#include <thread>

#include "support/test_support.hpp"

namespace test_autocast {
using namespace mamclip;
using namespace mamclip::test;

namespace {

Tensor<float> frnd(const Shape& s, uint64_t seed) {
  Generator g(seed);
  Tensor<float> t = empty<float>(s);
  return uniform_(t, -2, 2, g);
}

bool same_bits(const Tensor<float>& a, const Tensor<float>& b) {
  return a.shape() == b.shape() && a.to_vector() == b.to_vector();
}

double max_diff(const Tensor<float>& a, const Tensor<float>& b) {
  return amax(abs(a.to<double>() - b.to<double>())).item();
}

// f on float inputs inside an autocast region equals f on the inputs cast to U, widened back; and differs
// from f in float (the 16-bit rounding is visible). After the region, f is float again.
template <class U, class F>
void check_op(const char* name, F&& f, const std::vector<Tensor<float>>& in) {
  INFO(name << " in " << dtype_name(dtype_v<U>));
  std::vector<Tensor<U>> in16;
  for (const auto& t : in) in16.push_back(t.template to<U>());
  const Tensor<float> full = f(in), want = f(in16).template to<float>();
  Tensor<float> got;
  {
    AutocastGuard amp(DeviceType::cpu, dtype_v<U>);
    got = f(in);
  }
  CHECK(same_bits(got, want));
  CHECK(max_diff(got, full) > 0);
  CHECK(same_bits(f(in), full));
}

template <class U>
void check_ops() {
  check_op<U>("matmul", [](const auto& v) { return matmul(v[0], v[1]); }, {frnd({2, 5, 7}, 1), frnd({7, 3}, 2)});
  check_op<U>("linear", [](const auto& v) { return linear(v[0], v[1], v[2]); },
              {frnd({4, 6}, 3), frnd({5, 6}, 4), frnd({5}, 5)});
  Conv2dOptions o;
  o.padding = {1, 1};
  check_op<U>("conv2d", [&](const auto& v) { return conv2d(v[0], v[1], v[2], o); },
              {frnd({2, 3, 9, 7}, 6), frnd({4, 3, 3, 3}, 7), frnd({4}, 8)});
  check_op<U>("scaled_dot_product_attention",
              [](const auto& v) { return scaled_dot_product_attention(v[0], v[1], v[2]); },
              {frnd({2, 3, 5, 8}, 9), frnd({2, 3, 6, 8}, 10), frnd({2, 3, 6, 4}, 11)});
}

}  // namespace

TEST_CASE("autocast: matmul, linear, conv2d and attention on float run in the 16-bit type inside the region") {
  check_ops<bfloat16>();
  check_ops<half>();
}

TEST_CASE("autocast: gradients reach the float leaves and equal those through explicit casts") {
  const Tensor<float> x0 = frnd({4, 6}, 1), w0 = frnd({5, 6}, 2), b0 = frnd({5}, 3), r = frnd({4, 5}, 4);
  auto x = x0.clone().set_requires_grad(), w = w0.clone().set_requires_grad(), b = b0.clone().set_requires_grad();
  {
    AutocastGuard amp(DeviceType::cpu);
    Tensor<float> y = linear(x, w, b);
    CHECK(y.requires_grad());
    sum(softmax(y, -1) * r).backward();  // softmax in float, inside the region
  }
  auto xe = x0.clone().set_requires_grad(), we = w0.clone().set_requires_grad(), be = b0.clone().set_requires_grad();
  Tensor<float> ye = linear(xe.to<bfloat16>(), we.to<bfloat16>(), be.to<bfloat16>()).to<float>();
  sum(softmax(ye, -1) * r).backward();
  for (const auto& [got, want] : {std::pair{x.grad(), xe.grad()}, {w.grad(), we.grad()}, {b.grad(), be.grad()}}) {
    REQUIRE(got.defined());
    CHECK(same_bits(got, want));
  }
}

TEST_CASE("autocast leaves reductions, softmax, norms and losses in float; guards nest; per thread and device") {
  const Tensor<float> x = frnd({3, 8}, 1);
  const Tensor<float> s0 = softmax(x, -1), n0 = layer_norm(x, {8}), l0 = sum(x), c0 = cross_entropy(x, tensor<int64_t>({1, 0, 7}));
  {
    AutocastGuard amp(DeviceType::cpu);
    CHECK(same_bits(softmax(x, -1), s0));
    CHECK(same_bits(layer_norm(x, {8}), n0));
    CHECK(same_bits(sum(x), l0));
    CHECK(same_bits(cross_entropy(x, tensor<int64_t>({1, 0, 7})), c0));
    // double stays double; half inputs are already 16-bit.
    const Tensor<double> xd = x.to<double>();
    CHECK(matmul(xd, xd.t()).to_vector() == matmul(x.to<double>(), x.to<double>().t()).to_vector());
    CHECK(autocast_enabled(DeviceType::cpu));
    CHECK(!autocast_enabled(DeviceType::cuda));  // another device type is not affected
    {
      AutocastGuard off(DeviceType::cpu, DType::bf16, false);
      CHECK(!autocast_enabled(DeviceType::cpu));
      CHECK(same_bits(matmul(x, x.t()), matmul(x, x.t())));
      const Tensor<float> inner = matmul(x, x.t());
      CHECK(!same_bits(inner, matmul(x.to<bfloat16>(), x.to<bfloat16>().t()).to<float>()));
    }
    CHECK(autocast_enabled(DeviceType::cpu));
    CHECK(autocast_mode(DeviceType::cpu).dtype == DType::bf16);
    bool other_thread = true;
    std::thread([&] { other_thread = autocast_enabled(DeviceType::cpu); }).join();
    CHECK(!other_thread);
  }
  CHECK(!autocast_enabled(DeviceType::cpu));
  MAMCLIP_REQUIRE_THROWS_WITH(AutocastGuard(DeviceType::cpu, DType::f32), dtype_error,
                              "AutocastGuard: dtype float32 is not a 16-bit float type; expected bfloat16 or float16");
}

TEST_CASE("a model trains under bf16 autocast with float master weights") {
  Generator gen(3);
  nn::Linear fc1(6, 16, true, gen), fc2(16, 3, true, gen);
  std::vector<Tensor<float>> params = fc1.parameters();
  for (const auto& p : fc2.parameters()) params.push_back(p);
  optim::AdamW opt(params, {.lr = 3e-2, .weight_decay = 0.0});
  const Tensor<float> x = frnd({32, 6}, 5);
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < 32; ++i) labels.push_back(x(i, 0) > 0 ? 0 : (x(i, 1) > 0 ? 1 : 2));
  const Tensor<int64_t> y = from_vector<int64_t>(labels);
  double first = 0, last = 0;
  for (int step = 0; step < 60; ++step) {
    opt.zero_grad();
    Tensor<float> loss;
    {
      AutocastGuard amp(DeviceType::cpu);
      loss = cross_entropy(fc2.forward(gelu(fc1.forward(x))), y);
    }
    loss.backward();
    for (const auto& p : params) CHECK(p.grad().defined());
    opt.step();
    (step == 0 ? first : last) = loss.item();
  }
  CHECK(last < 0.5 * first);
}

}  // namespace test_autocast
