// The index math of the strided binary CUDA kernel, run on the CPU (it is
// MAMCLIP_HOST_DEVICE code): FastDivmod against `/` and `%`, and
// BinaryIndex's offsets against Tensor::expand on broadcast, transposed and
// sliced operands. The kernel itself only adds a load, the op and a store.
#include "support/test_support.hpp"

#include <random>

#include "mamclip/core/fast_divmod.hpp"
#include "mamclip/ops/elementwise/binary_index.hpp"

namespace test_binary_index {
using namespace mamclip;
using namespace mamclip::test;

namespace {

Tensor<float> rnd(const Shape& s, uint64_t seed) { return uniform_random<float>(s, seed, -1, 1); }

void check_divmod(uint32_t d, uint32_t x) {
  const FastDivmod by(d);
  uint32_t q = 0, r = 0;
  by.divmod(x, q, r);
  if (q != x / d || r != x % d) FAIL("FastDivmod(" << d << ") of " << x << ": " << q << " r " << r);
}

// Every output element's offsets against the expanded views' own indexing.
void check_offsets(const Tensor<float>& a, const Tensor<float>& b, size_t max_dims) {
  const Shape s = broadcast_shapes(a.shape(), b.shape(), "test");
  const Tensor<float> ea = a.expand(s), eb = b.expand(s);
  const auto index = make_binary_index(s, ea.strides(), eb.strides());
  INFO("a " << shape_str(a.shape()) << " strides " << shape_str(a.strides()) << ", b " << shape_str(b.shape())
            << " strides " << shape_str(b.strides()));
  REQUIRE(index);
  CHECK(static_cast<size_t>(index->ndim) <= max_dims);
  const std::vector<float> va = ea.to_vector(), vb = eb.to_vector();  // row-major over s
  const float* pa = ea.data_ptr();
  const float* pb = eb.data_ptr();
  for (uint32_t i = 0; i < static_cast<uint32_t>(va.size()); ++i) {
    int64_t oa = -1, ob = -1;
    index->offsets(i, oa, ob);
    if (pa[oa] != va[i] || pb[ob] != vb[i]) FAIL("element " << i << ": offsets " << oa << ", " << ob);
  }
}

}  // namespace

TEST_CASE("FastDivmod equals / and % for every divisor up to 4096 and random 32-bit divisors") {
  std::mt19937 rng(11);
  const uint32_t edges[] = {0u, 1u, 2u, 3u, 0x7FFFFFFEu, 0x7FFFFFFFu, 0x80000000u, 0xFFFFFFFEu, 0xFFFFFFFFu};
  auto around_multiples = [&](uint32_t d) {
    for (uint32_t x : edges) check_divmod(d, x);
    for (int k = 0; k < 16; ++k) {
      const uint64_t m = static_cast<uint64_t>(d) * (rng() % (0xFFFFFFFFull / d + 1));
      for (int64_t delta : {-1, 0, 1})
        if (m + delta <= 0xFFFFFFFFull && static_cast<int64_t>(m) + delta >= 0)
          check_divmod(d, static_cast<uint32_t>(m + delta));
      check_divmod(d, rng());
    }
  };
  for (uint32_t d = 1; d <= 4096; ++d) around_multiples(d);
  for (int k = 0; k < 4000; ++k) around_multiples(rng() | 1u);
  for (uint32_t d : {0x7FFFFFFFu, 0x80000000u, 0x80000001u, 0xFFFFFFFFu, 3u * 1024 * 1024}) around_multiples(d);
  MAMCLIP_REQUIRE_THROWS_WITH(FastDivmod(0), value_error, "divisor must be at least 1");
}

TEST_CASE("make_binary_index merges dims both operands walk as one") {
  auto index_of = [](const Tensor<float>& a, const Tensor<float>& b) {
    const Shape s = broadcast_shapes(a.shape(), b.shape(), "test");
    return *make_binary_index(s, a.expand(s).strides(), b.expand(s).strides());
  };
  const auto x = rnd({4, 6, 5, 7}, 1);
  SECTION("same shape, contiguous: one dim with unit strides (the kernel's contiguous case)") {
    const auto idx = index_of(x, x);
    CHECK(idx.ndim == 1);
    CHECK(idx.size[0].divisor == 840);
    CHECK((idx.a[0] == 1 && idx.b[0] == 1));
  }
  SECTION("a bias over the last dim: 2 dims") {
    const auto idx = index_of(x, rnd({7}, 2));
    CHECK(idx.ndim == 2);
    CHECK((idx.size[0].divisor == 120 && idx.size[1].divisor == 7));
    CHECK((idx.a[0] == 7 && idx.a[1] == 1 && idx.b[0] == 0 && idx.b[1] == 1));
  }
  SECTION("a per-channel scale of NCHW: 3 dims") {
    const auto idx = index_of(x, rnd({6, 1, 1}, 3));
    CHECK(idx.ndim == 3);
    CHECK((idx.size[0].divisor == 4 && idx.size[1].divisor == 6 && idx.size[2].divisor == 35));
    CHECK((idx.b[0] == 0 && idx.b[1] == 1 && idx.b[2] == 0));
  }
  SECTION("size-1 dims drop out; a scalar operand has stride 0") {
    const auto idx = index_of(rnd({1, 9, 1, 2}, 4), full<float>({}, 2.0f));
    CHECK(idx.ndim == 1);
    CHECK((idx.size[0].divisor == 18 && idx.b[0] == 0));
  }
  SECTION("an output with no elements") {
    const Tensor<float> e = Tensor<float>::empty({3, 0, 2});
    CHECK(index_of(e, e).ndim == 0);
  }
}

TEST_CASE("BinaryIndex offsets equal expand's indexing: broadcast, transposed, sliced and stepped operands") {
  check_offsets(rnd({5, 33}, 1), rnd({33}, 2), 2);
  check_offsets(rnd({33}, 3), rnd({5, 33}, 4), 2);
  check_offsets(rnd({5, 1}, 5), rnd({1, 7}, 6), 2);  // outer product
  check_offsets(rnd({2, 3, 5, 7}, 7), rnd({3, 1, 1}, 8), 3);
  check_offsets(rnd({7, 5}, 9).t(), rnd({7}, 10), 2);  // transposed a
  check_offsets(rnd({4, 6, 8}, 11).permute({2, 0, 1}), rnd({8, 1, 6}, 12), 3);
  check_offsets(rnd({9, 10}, 13).narrow(1, 3, 4), rnd({9, 1}, 14), 2);
  check_offsets(rnd({3, 12}, 15).slice(1, 1, 12, 3), rnd({3, 4}, 16), 2);
  check_offsets(full<float>({}, 3.0f), rnd({2, 3}, 17), 1);
  // Random shapes up to rank 6 with random broadcast dims and permuted layouts.
  std::mt19937 rng(5);
  for (int trial = 0; trial < 300; ++trial) {
    const size_t rank = 1 + rng() % 6;
    Shape out(rank), sa(rank), sb(rank);
    for (size_t d = 0; d < rank; ++d) {
      out[d] = 1 + static_cast<int64_t>(rng() % 4);
      sa[d] = rng() % 3 == 0 ? 1 : out[d];
      sb[d] = rng() % 3 == 0 ? 1 : out[d];
    }
    Tensor<float> a = rnd(sa, 100 + trial), b = rnd(sb, 200 + trial);
    if (rank >= 2 && trial % 2 == 0) {  // a in another memory order, same logical shape
      std::vector<int64_t> perm(rank);
      for (size_t d = 0; d < rank; ++d) perm[d] = static_cast<int64_t>(rank - 1 - d);
      Shape reversed(sa.rbegin(), sa.rend());
      a = rnd(reversed, 300 + trial).permute(perm);
    }
    check_offsets(a, b, 6);
  }
}

TEST_CASE("make_binary_index gives up past its limits (the op then copies its operands)") {
  // Alternating broadcast dims cannot merge: 8 dims remain.
  const Shape out{2, 2, 2, 2, 2, 2, 2, 2};
  const Shape sa{0, 64, 0, 16, 0, 4, 0, 1}, sb{64, 0, 16, 0, 4, 0, 1, 0};
  CHECK_FALSE(make_binary_index(out, sa, sb).has_value());
  // 2^31 output elements overflow the 32-bit index.
  CHECK_FALSE(make_binary_index(Shape{int64_t(1) << 16, int64_t(1) << 15}, Shape{0, 1}, Shape{1 << 15, 1}).has_value());
  CHECK(make_binary_index(Shape{(int64_t(1) << 16) - 1, int64_t(1) << 15}, Shape{0, 1}, Shape{1 << 15, 1}).has_value());
  MAMCLIP_REQUIRE_THROWS_WITH(make_binary_index(Shape{2, 3}, Shape{1}, Shape{3, 1}), shape_error,
                              "strides of rank 1 and 2");
}

}  // namespace test_binary_index
