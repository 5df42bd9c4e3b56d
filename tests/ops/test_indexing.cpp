// index_select, gather, embedding: values against direct definitions,
// accumulation of repeated indices, padding_idx, half/bfloat16, gradcheck on
// non-contiguous inputs, and out-of-range errors.
#include "support/test_support.hpp"

namespace test_indexing {
using namespace mamclip;
using namespace mamclip::test;

namespace {
template <class T = double>
Tensor<T> rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) { return uniform_random<T>(s, seed, lo, hi); }
Tensor<int64_t> ids(std::initializer_list<int64_t> v) { return tensor<int64_t>(v); }  // 1-D
Tensor<int64_t> ids(std::initializer_list<int64_t> v, const Shape& s) { return tensor<int64_t>(v, s); }
}  // namespace

TEST_CASE("index_select picks slices along any dim, repeats included") {
  auto x = rnd({4, 5, 3}, 1);
  auto idx = ids({4, 0, 4, 2});
  auto y = index_select(x, 1, idx);
  CHECK(y.shape() == Shape{4, 4, 3});
  for (int64_t o = 0; o < 4; ++o)
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t r = 0; r < 3; ++r) CHECK(y(o, i, r) == x(o, idx(i), r));
  // Non-contiguous x and a negative dim.
  auto xt = noncontiguous(x);
  require_allclose(index_select(xt, -2, idx), y, 0, 0, "non-contiguous x");
  // Integer tensors too (not differentiable).
  auto xi = arange<int64_t>(0, 6).reshape({3, 2});
  CHECK(index_select(xi, 0, ids({2, 2})).to_vector() == std::vector<int64_t>{4, 5, 4, 5});
  CHECK(index_select(x, 0, ids({}, {0})).shape() == Shape{0, 5, 3});
}

TEST_CASE("gather follows torch.gather") {
  auto x = tensor<double>({1, 2, 3, 4, 5, 6}, {2, 3});
  CHECK(gather(x, 1, ids({2, 0, 1, 1}, {2, 2})).to_vector() == std::vector<double>{3, 1, 5, 5});
  CHECK(gather(x, 0, ids({1, 0, 1}, {1, 3})).to_vector() == std::vector<double>{4, 2, 6});
  // index smaller than x in the other dims, x non-contiguous.
  auto x3 = rnd({4, 5, 6}, 2);
  auto idx = ids({0, 5, 5, 1, 2, 3, 4, 0, 1, 2, 3, 4}, {2, 3, 2});
  auto g = gather(noncontiguous(x3), 2, idx);
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t k = 0; k < 2; ++k) CHECK(g(i, j, k) == x3(i, j, idx(i, j, k)));
}

TEST_CASE("embedding looks up rows for ids of any shape") {
  auto w = rnd({6, 4}, 3);
  auto id = ids({5, 0, 5, 2, 1, 3}, {2, 3});
  auto e = embedding(w, id);
  CHECK(e.shape() == Shape{2, 3, 4});
  for (int64_t i = 0; i < 2; ++i)
    for (int64_t j = 0; j < 3; ++j)
      for (int64_t d = 0; d < 4; ++d) CHECK(e(i, j, d) == w(id(i, j), d));
  CHECK(embedding(w, scalar<int64_t>(3)).shape() == Shape{4});
}

TEST_CASE("backward scatter-adds: repeated indices accumulate") {
  auto x = rnd({5, 3}, 4).set_requires_grad();
  sum(index_select(x, 0, ids({1, 3, 1, 1}))).backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0, 0, 0, 3, 3, 3, 0, 0, 0, 1, 1, 1, 0, 0, 0});
  auto w = rnd({4, 2}, 5).set_requires_grad();
  sum(embedding(w, ids({2, 0, 2, 2}, {2, 2}))).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{1, 1, 0, 0, 3, 3, 0, 0});
  auto y = rnd({2, 3}, 6).set_requires_grad();
  sum(gather(y, 1, ids({2, 2, 0, 1}, {2, 2}))).backward();
  CHECK(y.grad().to_vector() == std::vector<double>{0, 0, 2, 1, 1, 0});
}

TEST_CASE("embedding's padding_idx rows get zero gradient") {
  auto w = rnd({5, 3}, 7).set_requires_grad();
  auto out = embedding(w, ids({0, 2, 4, 2, 4}), 2);
  // The forward still returns the padding row's values.
  CHECK(out(1, 0) == w(2, 0));
  sum(out * 2.0).backward();
  CHECK(w.grad().to_vector() == std::vector<double>{2, 2, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4});
  // A negative padding_idx counts from the end, as in torch.nn.Embedding.
  auto w2 = rnd({5, 3}, 8).set_requires_grad();
  sum(embedding(w2, ids({4, 1}), -1)).backward();
  CHECK(w2.grad().to_vector() == std::vector<double>{0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0});
}

TEST_CASE("indexing gradcheck on non-contiguous inputs at awkward sizes") {
  require_gradcheck([](auto& v) { return index_select(v[0], 1, ids({6, 0, 6, 3, 2})); }, {noncontiguous(rnd({5, 7, 3}, 1))});
  require_gradcheck([](auto& v) { return index_select(v[0], 0, ids({2, 2, 0})); }, {noncontiguous(rnd({3}, 2))});
  require_gradcheck([](auto& v) { return gather(v[0], 0, ids({4, 0, 4, 1, 2, 4}, {2, 3})); }, {noncontiguous(rnd({5, 7}, 3))});
  require_gradcheck([](auto& v) { return gather(v[0].transpose(0, 2), 2, ids({0, 4, 4, 1, 2, 0, 3, 3}, {2, 2, 2})); },
                    {rnd({5, 3, 3}, 4)});
  require_gradcheck([](auto& v) { return embedding(v[0], ids({8, 1, 8, 0, 3, 3, 7}, {7})); }, {noncontiguous(rnd({9, 5}, 5))});
  // padding_idx zeroes a gradient the forward does depend on, so that row is a constant outside the checked
  // input here; every other row is checked as usual.
  const auto pad_row = rnd({1, 5}, 7);
  require_gradcheck(
      [&](auto& v) {
        auto w = cat<double>({v[0].narrow(0, 0, 3), pad_row, v[0].narrow(0, 3, 5)});
        return embedding(w, ids({8, 1, 8, 0, 3, 3}, {2, 3}), 3);
      },
      {noncontiguous(rnd({8, 5}, 6))});
}

TEST_CASE("half and bfloat16 indexing is exact and its gradients accumulate in float") {
  auto w = rnd<float>({7, 5}, 9);
  auto id = ids({6, 2, 2, 0});
  require_allclose(embedding(w.to<half>(), id).to<float>(), embedding(w.to<half>().to<float>(), id), 0, 0, "half forward");
  require_allclose(embedding(w.to<bfloat16>(), id).to<float>(), embedding(w.to<bfloat16>().to<float>(), id), 0, 0,
                   "bfloat16 forward");
  // 300 gradients of 1/3 into one row: per-add rounding in bfloat16 would stall far below 100.
  auto wb = zeros<bfloat16>({2, 4}).set_requires_grad();
  auto many = zeros<int64_t>({300});
  embedding(wb, many).backward(full<bfloat16>({300, 4}, bfloat16(1.0f / 3.0f)));
  const double expected = 300.0 * static_cast<double>(bfloat16(1.0f / 3.0f));
  require_allclose(wb.grad().to<float>().narrow(0, 0, 1), full<float>({1, 4}, static_cast<float>(expected)), 0,
                   dtype_eps<bfloat16>());
}

TEST_CASE("out-of-range indices name the op, position, value and valid range") {
  auto x = rnd({3, 4}, 1);
  MAMCLIP_REQUIRE_THROWS_WITH(index_select(x, 1, ids({0, 4})), index_error,
                              "index_select: index 4 at position [1] is out of range for dim 1 of x with shape [3, 4] "
                              "(expected 0 <= index < 4)");
  MAMCLIP_REQUIRE_THROWS_WITH(index_select(x, 0, ids({-1})), index_error, "index -1 at position [0]");
  MAMCLIP_REQUIRE_THROWS_WITH(gather(x, 0, ids({0, 1, 3, 0}, {2, 2})), index_error,
                              "gather: index 3 at position [1, 0] is out of range for dim 0 of x with shape [3, 4] "
                              "(expected 0 <= index < 3)");
  MAMCLIP_REQUIRE_THROWS_WITH(embedding(x, ids({1, 2, 0, 7}, {2, 2})), index_error,
                              "embedding: id 7 at position [1, 1] is out of range for weight with shape [3, 4] "
                              "(expected 0 <= id < 3)");
  MAMCLIP_REQUIRE_THROWS_WITH(embedding(x, ids({0}), 3), index_error,
                              "embedding: padding_idx 3 is out of range for weight with shape [3, 4] (expected -3 <= "
                              "padding_idx < 3)");
  MAMCLIP_REQUIRE_THROWS_WITH(index_select(x, 2, ids({0})), index_error, "index_select: dim 2 is out of range");
  MAMCLIP_REQUIRE_THROWS_WITH(index_select(x, 0, ids({0, 1}, {1, 2})), shape_error,
                              "index_select: index has shape [1, 2]; expected a 1-D tensor of indices");
  MAMCLIP_REQUIRE_THROWS_WITH(gather(x, 1, ids({0, 1})), shape_error,
                              "gather: index has shape [2] and x has shape [3, 4]; expected the same number of dims");
  MAMCLIP_REQUIRE_THROWS_WITH(gather(x, 1, ids({0, 0, 0, 0}, {4, 1})), shape_error,
                              "expected index.size(d) <= x.size(d) for every dim d other than dim 1, but dim 0 has 4 > 3");
  MAMCLIP_REQUIRE_THROWS_WITH(embedding(rnd({4}, 2), ids({0})), shape_error,
                              "embedding: weight has shape [4]; expected a 2-D tensor [num_embeddings, embedding_dim]");
  MAMCLIP_REQUIRE_THROWS_WITH(index_select(scalar<double>(1.0), 0, ids({0})), shape_error,
                              "index_select: x has shape [] (0-dim); expected at least 1 dim");
}

}  // namespace test_indexing
