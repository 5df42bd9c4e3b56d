// Views, copies, casts, cat / stack / split: values, storage sharing,
// gradcheck on non-contiguous inputs at awkward sizes, and error messages.
#include "support/test_support.hpp"

#include <algorithm>

namespace test_shape {
using namespace mamclip;
using namespace mamclip::test;

namespace {
Tensor<double> rnd(const Shape& s, uint64_t seed) { return uniform_random<double>(s, seed, -1, 1); }
using Fn = std::function<Tensor<double>(const std::vector<Tensor<double>>&)>;
}  // namespace

TEST_CASE("view ops gradcheck on non-contiguous inputs") {
  // [6, 5, 7] whose last two dims are stored transposed: strides [35, 1, 5].
  const auto x = noncontiguous(rnd({6, 5, 7}, 1));
  REQUIRE_FALSE(x.is_contiguous());
  const std::vector<std::pair<const char*, Fn>> ops = {
      {"view (split a dim)", [](auto& v) { return v[0].view({2, 3, 5, 7}); }},
      {"view with -1", [](auto& v) { return v[0].view({-1, 3, 5, 7}); }},
      {"reshape (needs a copy)", [](auto& v) { return v[0].reshape({6, 35}); }},
      {"reshape (a view)", [](auto& v) { return v[0].reshape({3, 2, 5, 7}); }},
      {"permute", [](auto& v) { return v[0].permute({2, 0, 1}); }},
      {"transpose", [](auto& v) { return v[0].transpose(0, -1); }},
      {"narrow", [](auto& v) { return v[0].narrow(1, 1, 3); }},
      {"narrow with negative start", [](auto& v) { return v[0].narrow(2, -4, 3); }},
      {"slice with step", [](auto& v) { return v[0].slice(2, 1, 7, 3); }},
      {"slice with negative bounds", [](auto& v) { return v[0].slice(0, -5, -1, 2); }},
      {"select", [](auto& v) { return v[0].select(1, -2); }},
      {"expand", [](auto& v) { return v[0].narrow(1, 2, 1).expand({4, 6, 3, 7}); }},
      {"expand with -1", [](auto& v) { return v[0].narrow(1, 2, 1).expand({-1, 3, -1}); }},
      {"squeeze(dim)", [](auto& v) { return v[0].narrow(1, 2, 1).squeeze(1); }},
      {"squeeze(dim) of a non-1 dim is a view", [](auto& v) { return v[0].squeeze(0); }},
      {"squeeze()", [](auto& v) { return v[0].narrow(1, 2, 1).narrow(0, 1, 1).squeeze(); }},
      {"unsqueeze", [](auto& v) { return v[0].unsqueeze(1).unsqueeze(-1); }},
      {"flatten(1, 2)", [](auto& v) { return v[0].flatten(1, 2); }},
      {"flatten()", [](auto& v) { return v[0].flatten(); }},
      {"contiguous", [](auto& v) { return v[0].contiguous(); }},
      {"clone", [](auto& v) { return v[0].clone(); }},
      {"chain of views", [](auto& v) { return v[0].transpose(1, 2).slice(0, 1, 6, 2).select(2, 4).unsqueeze(0); }},
  };
  for (const auto& [name, fn] : ops) {
    INFO(name);
    require_gradcheck(fn, {x});
  }
}

TEST_CASE("views share storage and read the right elements") {
  auto x = rnd({6, 5, 7}, 2);
  auto p = x.permute({2, 0, 1});
  CHECK(p.shares_storage_with(x));
  CHECK(p(4, 3, 1) == x(3, 1, 4));
  auto s = x.slice(2, 1, 7, 3);  // elements 1, 4
  CHECK(s.shape() == Shape{6, 5, 2});
  CHECK(s(2, 3, 1) == x(2, 3, 4));
  CHECK(x.slice(0, -5, -1, 2).shape() == Shape{2, 5, 7});
  CHECK(x.slice(1, 3, 100).shape() == Shape{6, 2, 7});  // end clamps to the size
  CHECK(x.select(1, -2)(0, 6) == x(0, 3, 6));
  auto e = x.narrow(1, 2, 1).expand({4, 6, 3, 7});
  CHECK(e.strides()[0] == 0);
  CHECK(e(3, 5, 2, 6) == x(5, 2, 6));
  CHECK(x.flatten(1).shape() == Shape{6, 35});
  CHECK(x.unsqueeze(3).shape() == Shape{6, 5, 7, 1});
  CHECK(x.narrow(0, 1, 1).squeeze().shape() == Shape{5, 7});
  auto nc = noncontiguous(x);
  CHECK(nc.contiguous().is_contiguous());
  CHECK_FALSE(nc.contiguous().shares_storage_with(nc));
  CHECK(x.contiguous().is_same(x));
  CHECK_FALSE(x.clone().shares_storage_with(x));
  require_allclose(nc.reshape({6, 35}), x.reshape({6, 35}), 0, 0, "reshape of a non-contiguous tensor copies in order");
  // 0-dim tensors: transpose and squeeze of dim 0 are identities, as in PyTorch.
  auto sc = scalar<double>(2.5);
  CHECK(sc.transpose(0, -1).shape() == Shape{});
  CHECK(sc.squeeze(0).shape() == Shape{});
  CHECK(sc.transpose(-1, 0).item() == 2.5);
}

TEST_CASE("cat, stack and split gradcheck with mixed layouts") {
  const auto a = noncontiguous(rnd({3, 5, 7}, 3)), b = rnd({3, 2, 7}, 4), c = rnd({7, 1, 3}, 5).permute({2, 1, 0});
  require_gradcheck([](auto& v) { return cat<double>({v[0], v[1], v[2]}, 1); }, {a, b, c});
  require_gradcheck([](auto& v) { return cat<double>({v[0], v[0].narrow(2, 1, 3)}, -1); }, {a});
  const auto d = noncontiguous(rnd({5, 7}, 6)), e = rnd({5, 7}, 7);
  require_gradcheck([](auto& v) { return stack<double>({v[0], v[1], v[0]}, 0); }, {d, e});
  require_gradcheck([](auto& v) { return stack<double>({v[0], v[1]}, -1); }, {d, e});
  // split: pieces used with different weights, one unused (its gradient is zero).
  require_gradcheck([](auto& v) {
    auto parts = split(v[0], 3, 1);  // 7 -> 3, 3, 1
    return cat<double>({parts[0] * 2.0, parts[2] * -1.0}, 1);
  }, {d});
  require_gradcheck([](auto& v) {
    auto parts = split(v[0], std::vector<int64_t>{2, 0, 3}, 0);
    return cat<double>({parts[2], parts[1], parts[0] * 3.0}, 0);
  }, {d});
}

TEST_CASE("cat, stack and split values") {
  auto a = tensor<double>({1, 2, 3, 4}, {2, 2}), b = tensor<double>({5, 6}, {2, 1});
  CHECK(cat<double>({a, b}, 1).to_vector() == std::vector<double>{1, 2, 5, 3, 4, 6});
  CHECK(cat<double>({a, b.t()}, 0).to_vector() == std::vector<double>{1, 2, 3, 4, 5, 6});
  auto s = stack<double>({a, a * 10.0}, 1);
  CHECK(s.shape() == Shape{2, 2, 2});
  CHECK(s.to_vector() == std::vector<double>{1, 2, 10, 20, 3, 4, 30, 40});
  CHECK(stack<double>({scalar<double>(1.0), scalar<double>(2.0)}).to_vector() == std::vector<double>{1, 2});
  auto x = arange<double>(0, 7);
  auto parts = split(x, 3);
  REQUIRE(parts.size() == 3);
  CHECK(parts[2].to_vector() == std::vector<double>{6});
  CHECK(parts[1].shares_storage_with(x));
  auto by_sizes = split(x, std::vector<int64_t>{4, 3});
  CHECK(by_sizes[1].to_vector() == std::vector<double>{4, 5, 6});
  // An empty dim splits into one empty piece, as in PyTorch.
  auto empty_parts = split(zeros<double>({0, 3}), 2);
  REQUIRE(empty_parts.size() == 1);
  CHECK(empty_parts[0].shape() == Shape{0, 3});
  CHECK(cat<double>({zeros<double>({0, 3}), a.narrow(1, 0, 1).expand({2, 3})}).shape() == Shape{2, 3});
  CHECK(cat<int64_t>({arange<int64_t>(0, 2), arange<int64_t>(5, 6)}).to_vector() == std::vector<int64_t>{0, 1, 5});
}

TEST_CASE("to<float>() round trip carries values and gradients") {
  auto x = noncontiguous(rnd({5, 7}, 8));
  auto rt = x.to<float>().to<double>();
  require_allclose(rt, x, 0, dtype_eps<float>(), "values rounded to float once");
  // The casts are linear, so central differences are exact up to float rounding: a large step is fine.
  GradcheckOptions opt;
  opt.eps = 0.1;
  opt.atol = 1e-5;
  require_gradcheck([](auto& v) { return (v[0].template to<float>() * 3.0f).template to<double>(); }, {x}, opt);
  auto h = x.detach().set_requires_grad();
  sum(h.to<half>().to<float>() * 2.0).backward();
  require_allclose(h.grad(), full<double>({5, 7}, 2.0), 0, 0, "through half");
  CHECK(x.to<double>().is_same(x));
  if (ensure_stand_in_cuda()) {  // a device cast looks up its kernel by target name and source dtype
    auto d = ones<float>({2, 3}).to(Device::cuda(0));
    MAMCLIP_REQUIRE_THROWS_WITH(d.to<bfloat16>(), device_error,
                                "to<bfloat16>: no kernel is registered for float32 tensors on cuda:0");
  }
}

TEST_CASE("shape ops reject bad arguments with messages that name them") {
  auto x = rnd({5, 7}, 9);
  auto xt = x.t();
  MAMCLIP_REQUIRE_THROWS_WITH(xt.view({35}), shape_error,
                              "view: a tensor of shape [7, 5] with strides [1, 7] cannot be viewed as [35] without a copy");
  MAMCLIP_REQUIRE_THROWS_WITH(x.reshape({4, 8}), shape_error,
                              "reshape: shape [4, 8] is invalid for a tensor of shape [5, 7] (35 elements)");
  MAMCLIP_REQUIRE_THROWS_WITH(x.view({-1, -1}), shape_error, "view: only one dimension can be -1, got [-1, -1]");
  MAMCLIP_REQUIRE_THROWS_WITH(x.view({-1, 6}), shape_error, "view: shape [-1, 6] is invalid for a tensor of shape [5, 7]");
  MAMCLIP_REQUIRE_THROWS_WITH(x.permute({0}), shape_error, "permute: 1 dims given for a tensor of shape [5, 7]");
  MAMCLIP_REQUIRE_THROWS_WITH(x.permute({1, 1}), shape_error, "permute: dim 1 appears twice in the permutation");
  MAMCLIP_REQUIRE_THROWS_WITH(x.transpose(0, 2), index_error,
                              "transpose: dim 2 is out of range for a tensor with 2 dims (expected a dim in [-2, 1])");
  MAMCLIP_REQUIRE_THROWS_WITH(x.narrow(1, 5, 3), index_error,
                              "narrow: range [5, 8) is out of bounds for dim 1 of size 7 (shape [5, 7])");
  MAMCLIP_REQUIRE_THROWS_WITH(x.select(0, 5), index_error, "select: index 5 is out of range for dim 0 of size 5");
  MAMCLIP_REQUIRE_THROWS_WITH(x.select(0, -6), index_error, "select: index -6 is out of range for dim 0 of size 5");
  MAMCLIP_REQUIRE_THROWS_WITH(x.slice(1, 0, 7, 0), value_error, "slice: step must be positive, got 0");
  MAMCLIP_REQUIRE_THROWS_WITH(x.expand({5, 3}), shape_error,
                              "expand: cannot expand shape [5, 7] to [5, 3] (dim 1: size 7 is not 1 and differs from 3)");
  MAMCLIP_REQUIRE_THROWS_WITH(x.expand({7}), shape_error, "expand: cannot expand shape [5, 7] to [7] (fewer dims)");
  MAMCLIP_REQUIRE_THROWS_WITH(x.expand({-1, 5, 7}), shape_error,
                              "expand: cannot expand shape [5, 7] to [-1, 5, 7] (dim 0: size -1 is not allowed");
  MAMCLIP_REQUIRE_THROWS_WITH(x.expand({5, -3}), shape_error,
                              "expand: cannot expand shape [5, 7] to [5, -3] (dim 1: size -3 is not allowed");
  MAMCLIP_REQUIRE_THROWS_WITH(x.flatten(1, 0), value_error, "flatten: start_dim 1 is after end_dim 0");
  MAMCLIP_REQUIRE_THROWS_WITH(x.unsqueeze(3), index_error, "unsqueeze: dim 3 is out of range");

  MAMCLIP_REQUIRE_THROWS_WITH(cat<double>({}), value_error, "cat: expected a non-empty list of tensors");
  MAMCLIP_REQUIRE_THROWS_WITH(cat<double>({x, rnd({5, 6}, 1)}, 0), shape_error,
                              "cat: tensor 1 has shape [5, 6] but tensor 0 has shape [5, 7] (sizes must match except in dim 0)");
  MAMCLIP_REQUIRE_THROWS_WITH(cat<double>({x, rnd({35}, 1)}), shape_error,
                              "cat: tensor 1 has shape [35] but tensor 0 has shape [5, 7] (same number of dims expected)");
  MAMCLIP_REQUIRE_THROWS_WITH(cat<double>({scalar<double>(1.0), scalar<double>(2.0)}), shape_error,
                              "cat: tensor 0 has shape [] (0-dim); expected at least 1 dim (stack joins 0-dim tensors)");
  MAMCLIP_REQUIRE_THROWS_WITH(stack<double>({x, xt}), shape_error, "stack: tensor 1 has shape [7, 5] but tensor 0 has shape [5, 7]");
  MAMCLIP_REQUIRE_THROWS_WITH(stack<double>({}), value_error, "stack: expected a non-empty list of tensors");
  MAMCLIP_REQUIRE_THROWS_WITH(split(x, std::vector<int64_t>{3, 3}, 1), shape_error,
                              "split: section sizes sum to 6 but dim 1 has size 7 (shape [5, 7])");
  MAMCLIP_REQUIRE_THROWS_WITH(split(x, std::vector<int64_t>{8, -1}, 1), value_error, "split: negative section size -1");
  MAMCLIP_REQUIRE_THROWS_WITH(split(x, 0, 1), value_error, "split: split_size must be positive, got 0");

  // 0-dim tensors have no dim to cut.
  auto sc = scalar<double>(1.0);
  MAMCLIP_REQUIRE_THROWS_WITH(split(sc, 1), shape_error, "split: x has shape [] (0-dim); expected at least 1 dim");
  MAMCLIP_REQUIRE_THROWS_WITH(sc.narrow(0, 0, 1), shape_error, "narrow: x has shape [] (0-dim); expected at least 1 dim");
  MAMCLIP_REQUIRE_THROWS_WITH(sc.slice(0, 0, 1), shape_error, "slice: x has shape [] (0-dim); expected at least 1 dim");
  MAMCLIP_REQUIRE_THROWS_WITH(sc.select(0, 0), shape_error, "select: x has shape [] (0-dim); expected at least 1 dim");
}

TEST_CASE("contiguous_channels_last stores [N, C, H, W] as [N, H, W, C]; is_channels_last tells the layouts apart") {
  const auto x = rnd({2, 5, 3, 4}, 31);
  CHECK_FALSE(is_channels_last(x));
  const auto y = contiguous_channels_last(x);
  CHECK(is_channels_last(y));
  CHECK(y.shape() == x.shape());
  CHECK(y.strides() == Shape{60, 1, 20, 5});
  require_allclose(y, x, 0.0, 0.0, "values");
  // Already channels last: the same tensor, no copy.
  CHECK(contiguous_channels_last(y).data_ptr() == y.data_ptr());
  // A channels-last view of a strided storage is not dense: it is copied.
  const auto sliced = y.narrow(1, 0, 4);
  CHECK_FALSE(is_channels_last(sliced));
  CHECK(is_channels_last(contiguous_channels_last(sliced)));
  require_allclose(contiguous_channels_last(sliced), x.narrow(1, 0, 4), 0.0, 0.0, "narrowed");
  CHECK_FALSE(is_channels_last(rnd({2, 5, 3}, 1)));
  MAMCLIP_REQUIRE_THROWS_WITH(contiguous_channels_last(rnd({2, 5, 3}, 1)), shape_error,
                              "contiguous_channels_last: input has shape [2, 5, 3]; expected 4 dims [N, C, H, W]");
  require_gradcheck([](auto& v) { return contiguous_channels_last(v[0]) * contiguous_channels_last(v[0]); },
                    {noncontiguous(rnd({2, 3, 4, 5}, 32))});
}

TEST_CASE("contiguous() of every permutation of a 4-D tensor reads each element from its place") {
  // Odd sizes, the source contiguous along every dim in turn (the 8x8-block transposes and their scalar
  // edges); the 360,000-element one is split over threads.
  for (const Shape& shape : {Shape{2, 37, 19, 23}, Shape{1, 64, 9, 40}, Shape{3, 50, 300, 8}, Shape{2, 3, 4, 5}}) {
    const int64_t n = numel_of(shape);
    std::vector<float> v(static_cast<size_t>(n));
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(i);
    const Tensor<float> x = from_vector<float>(v, shape);
    std::vector<int64_t> perm = {0, 1, 2, 3};
    do {
      const Tensor<float> p = x.permute(perm), c = p.contiguous();
      REQUIRE(c.is_contiguous());
      const auto got = c.to_vector();
      int64_t i = 0, bad = 0;
      for (int64_t a = 0; a < p.size(0); ++a)
        for (int64_t b = 0; b < p.size(1); ++b)
          for (int64_t e = 0; e < p.size(2); ++e)
            for (int64_t f = 0; f < p.size(3); ++f, ++i)
              bad += got[i] != v[a * p.stride(0) + b * p.stride(1) + e * p.stride(2) + f * p.stride(3)];
      INFO("shape " << shape_str(shape) << " permuted " << perm[0] << perm[1] << perm[2] << perm[3]);
      CHECK(bad == 0);
    } while (std::next_permutation(perm.begin(), perm.end()));
  }
}

}  // namespace test_shape
