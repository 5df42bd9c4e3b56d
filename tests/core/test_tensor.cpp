// Tensor basics: factories, views share storage, element access, printing, errors.
#include "support/test_support.hpp"

namespace test_tensor {
using namespace mamclip;
using namespace mamclip::test;

TEST_CASE("factories fill and shape tensors") {
  auto z = zeros<float>({2, 3});
  CHECK(z.shape() == Shape{2, 3});
  CHECK(z.numel() == 6);
  for (float v : z.to_vector()) CHECK(v == 0.0f);
  auto a = arange<double>(0, 5);
  CHECK(a.to_vector() == std::vector<double>{0, 1, 2, 3, 4});
  auto t = tensor<float>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(t(1, 2) == 6.0f);
  CHECK(full<int64_t>({2}, 7).to_vector() == std::vector<int64_t>{7, 7});
}

TEST_CASE("random tensors are reproducible under a seed and differ between draws") {
  Generator g1(42), g2(42);
  auto a = randn<float>({5, 7}, g1);
  auto b = randn<float>({5, 7}, g2);
  CHECK(a.to_vector() == b.to_vector());
  auto c = randn<float>({5, 7}, g1);
  CHECK(a.to_vector() != c.to_vector());
  auto u = rand<double>({1000}, g1).to_vector();
  double mean = 0;
  for (double v : u) {
    CHECK(v >= 0.0);
    CHECK(v < 1.0);
    mean += v / 1000;
  }
  CHECK(std::abs(mean - 0.5) < 0.05);
}

TEST_CASE("views share storage with their base") {
  auto x = arange<float>(0, 24).reshape({2, 3, 4});
  auto p = x.permute({2, 0, 1});
  CHECK(p.shape() == Shape{4, 2, 3});
  CHECK(p.shares_storage_with(x));
  CHECK_FALSE(p.is_contiguous());
  CHECK(p(3, 1, 2) == x(1, 2, 3));
  auto n = x.narrow(2, 1, 2);
  n.at({0, 0, 0}) = 100.0f;
  CHECK(x(0, 0, 1) == 100.0f);
  auto e = tensor<float>({1, 2, 3}).unsqueeze(0).expand({4, 3});
  CHECK(e.strides()[0] == 0);
  CHECK(e(3, 2) == 3.0f);
  auto s = x.slice(2, 0, 4, 2);
  CHECK(s.shape() == Shape{2, 3, 2});
  CHECK(s(1, 1, 1) == x(1, 1, 2));
  auto c = p.contiguous();
  CHECK(c.is_contiguous());
  CHECK_FALSE(c.shares_storage_with(x));
  CHECK(c.to_vector() == p.to_vector());
  CHECK(x.select(1, -1).shape() == Shape{2, 4});
  CHECK(x.flatten(1).shape() == Shape{2, 12});
  CHECK(x.view({-1, 4}).shape() == Shape{6, 4});
}

TEST_CASE("view refuses layouts that need a copy; reshape copies") {
  auto x = arange<float>(0, 6).reshape({2, 3}).t();
  MAMCLIP_REQUIRE_THROWS_WITH(x.view({6}), shape_error, "cannot be viewed as [6] without a copy");
  auto r = x.reshape({6});
  CHECK(r.to_vector() == std::vector<float>{0, 3, 1, 4, 2, 5});
}

TEST_CASE("bad shapes and indices give typed errors with clear messages") {
  auto x = zeros<float>({2, 3});
  MAMCLIP_REQUIRE_THROWS_WITH(x.view({4}), shape_error, "shape [4] is invalid for a tensor of shape [2, 3]");
  MAMCLIP_REQUIRE_THROWS_WITH(x.at({2, 0}), index_error, "index 2 is out of range for dim 0 of size 2");
  MAMCLIP_REQUIRE_THROWS_WITH(x.transpose(0, 2), index_error, "dim 2 is out of range for a tensor with 2 dims");
  MAMCLIP_REQUIRE_THROWS_WITH(x.narrow(1, 2, 2), index_error, "narrow: range [2, 4) is out of bounds for dim 1");
  MAMCLIP_REQUIRE_THROWS_WITH(x.expand({3, 3}), shape_error, "expand: cannot expand shape [2, 3] to [3, 3]");
  MAMCLIP_REQUIRE_THROWS_WITH(zeros<float>({2, 3}) + zeros<float>({4}), shape_error,
                              "add: shapes [2, 3] and [4] cannot be broadcast together");
  MAMCLIP_REQUIRE_THROWS_WITH(Tensor<float>().shape(), value_error, "undefined tensor");
  MAMCLIP_REQUIRE_THROWS_WITH(from_vector<float>({1, 2, 3}, {2, 2}), shape_error, "3 values do not fill shape [2, 2]");
}

TEST_CASE("a device without a registered backend is refused with a device error") {
  if (device_available(DeviceType::cuda)) SUCCEED("CUDA backend linked; refusal not testable here");
  else
    MAMCLIP_REQUIRE_THROWS_WITH(zeros<float>({2}, Device::cuda(0)), device_error,
                                "no allocator is registered for device cuda:0");
}

TEST_CASE("dtype casts convert values") {
  auto x = tensor<float>({1.5f, -2.25f, 3.0f});
  auto d = x.to<double>();
  CHECK(d.to_vector() == std::vector<double>{1.5, -2.25, 3.0});
  auto h = x.to<bfloat16>();
  CHECK(static_cast<float>(h(1)) == -2.25f);
  auto i = x.to<int64_t>();
  CHECK(i.to_vector() == std::vector<int64_t>{1, -2, 3});
}

TEST_CASE("printing shows values, shape and dtype") {
  auto s = to_string(tensor<float>({1, 2, 3, 4}, {2, 2}));
  CHECK(s == "tensor([[1, 2],\n        [3, 4]], shape=[2, 2], dtype=float32)");
  auto long_row = to_string(arange<int64_t>(0, 10));
  CHECK(long_row == "tensor([0, 1, 2, ..., 7, 8, 9], shape=[10], dtype=int64)");
}

TEST_CASE("0-dim tensors: factories, random fills and reductions") {
  auto s = from_vector<double>({2.5}, {});
  CHECK(s.dim() == 0);
  CHECK(s.item() == 2.5);
  auto r = randn<double>({});
  CHECK(r.dim() == 0);
  auto x = tensor<double>({1, 2, 3}).set_requires_grad();
  auto loss = sum(x * x);
  CHECK(loss.dim() == 0);
  require_gradcheck([](const std::vector<Tensor<double>>& in) { return sum(in[0] * in[0]); }, {tensor<double>({1, 2})});
}

TEST_CASE("integer tensors have views too") {
  auto i = arange<int64_t>(0, 6).reshape({2, 3});
  CHECK(i.t()(2, 1) == 5);
  CHECK(i.narrow(1, 1, 2).contiguous().to_vector() == std::vector<int64_t>{1, 2, 4, 5});
  CHECK(i.unsqueeze(0).expand({2, 2, 3}).shape() == Shape{2, 2, 3});
}

TEST_CASE("to_vector reads every dtype back from a device, bool included") {
  if (!ensure_stand_in_cuda()) {
    WARN("a real CUDA backend is linked: tests/cuda covers device transfers");
    return;
  }
  const Device dev = Device::cuda(0);
  // A transposed bool view: the device path copies it contiguous, then stages the bytes.
  const Tensor<bool> b = tensor<bool>({true, false, false, true, true, false}, {2, 3});
  CHECK(b.to(dev).to_vector() == std::vector<bool>{true, false, false, true, true, false});
  CHECK(b.t().to(dev).to_vector() == b.t().to_vector());
  const Tensor<float> f = uniform_random<float>({3, 4}, 11, -1, 1);
  CHECK(f.to(dev).to_vector() == f.to_vector());
}

TEST_CASE("rand, randn and randint give element i of the Philox streams, whatever the length") {
  // Device kernels draw element i on its own; the CPU fills draw a block per 4
  // (uniform) or 2 (normal) elements. Both must give the same values.
  for (int64_t n : {1, 2, 3, 5, 8, 1001}) {
    Generator g(42);
    const auto u = rand<double>({n}, g).to_vector();
    const auto z = randn<double>({n}, g).to_vector();
    const auto k = randint<int64_t>(-3, 4, {n}, g).to_vector();
    for (int64_t i = 0; i < n; ++i) {
      const auto ui = static_cast<uint64_t>(i);
      CHECK(u[i] == 1.0 - Philox::uniform(42, 0, ui));
      CHECK(z[i] == Philox::normal(42, 1, ui));
      CHECK(k[i] == -3 + std::min<int64_t>(static_cast<int64_t>((1.0 - Philox::uniform(42, 2, ui)) * 7), 6));
    }
  }
}

TEST_CASE("dense_in_storage: contiguous tensors and permutations of them, not gaps or overlaps") {
  const Tensor<float> x = zeros<float>({2, 3, 4, 5});
  CHECK(detail::dense_in_storage(x));
  CHECK(detail::dense_in_storage(x.permute({0, 2, 3, 1})));               // channels last
  CHECK(detail::dense_in_storage(x.permute({0, 3, 1, 2})));               // its [N, C, H, W] view
  CHECK(detail::dense_in_storage(x.transpose(0, 3)));
  CHECK(detail::dense_in_storage(zeros<float>({3, 1, 4}).permute({2, 1, 0})));  // a size-1 dim's stride is free
  CHECK_FALSE(detail::dense_in_storage(x.narrow(3, 0, 4)));                  // a gap per row
  CHECK_FALSE(detail::dense_in_storage(x.narrow(1, 1, 2).permute({0, 2, 3, 1})));
  CHECK_FALSE(detail::dense_in_storage(zeros<float>({1, 4}).expand({3, 4})));  // overlapping rows
}

}  // namespace test_tensor
