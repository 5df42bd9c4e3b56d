// scaled_dot_product_attention: values against a composition of public ops
// (matmul, masked_fill, softmax) at awkward sizes, masks, layouts, dropout
// (the Philox mask spec, determinism, statistics), gradcheck, fully masked
// rows, dtypes, errors, the device-kernel contract, and torch's values.
#include <cstring>

#include "support/test_support.hpp"

namespace test_attention {
using namespace mamclip;
using namespace mamclip::test;

namespace {
constexpr double kInf = std::numeric_limits<double>::infinity();

Tensor<double> rnd(const Shape& s, uint64_t seed, double lo = -2, double hi = 2) {
  Generator g(seed);
  Tensor<double> t = empty<double>(s);
  return uniform_(t, lo, hi, g);
}

// A [B, Lk] padding mask with about a third of the keys off; key 0 is always on
// so that no row is fully masked (torch's reference gives NaN there).
Tensor<bool> padding_mask(int64_t b, int64_t lk, uint64_t seed) {
  Generator g(seed);
  Tensor<bool> m = empty<bool>({b, lk});
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < lk; ++j) m(i, j) = j == 0 || Philox::uniform(g.seed(), 0, static_cast<uint64_t>(i * lk + j)) > 0.35;
  return m;
}

// A [B, Lk] mask of right-padded sequences of the given lengths.
Tensor<bool> right_padding(int64_t lk, const std::vector<int64_t>& lengths) {
  Tensor<bool> m = empty<bool>({static_cast<int64_t>(lengths.size()), lk});
  for (size_t i = 0; i < lengths.size(); ++i)
    for (int64_t j = 0; j < lk; ++j) m(static_cast<int64_t>(i), j) = j < lengths[i];
  return m;
}

// The visible-key matrix [B, H, Lq, Lk] of the op's masks.
Tensor<bool> visible(int64_t b, int64_t h, int64_t lq, int64_t lk, const Tensor<bool>& pad, bool causal) {
  Tensor<bool> v = empty<bool>({b, h, lq, lk});
  for (int64_t i = 0; i < b; ++i)
    for (int64_t k = 0; k < h; ++k)
      for (int64_t r = 0; r < lq; ++r)
        for (int64_t c = 0; c < lk; ++c) v(i, k, r, c) = (!pad.defined() || pad(i, c)) && (!causal || c <= r);
  return v;
}

Tensor<bool> logical_not(const Tensor<bool>& m) {
  Tensor<bool> r = detail::contiguous_copy(m);
  for (int64_t i = 0; i < r.numel(); ++i) r.data_ptr()[i] = !r.data_ptr()[i];
  return r;
}

// The dropout factors (0 or 1/(1-p)) that the op's Philox stream (seed, offset) gives.
Tensor<double> dropout_factors(const Shape& s, uint64_t seed, uint64_t offset, double p) {
  Tensor<double> f = empty<double>(s);
  for (int64_t n = 0; n < f.numel(); ++n)
    f.data_ptr()[n] = attention_keeps(seed, offset, static_cast<uint64_t>(n), p) ? 1.0 / (1.0 - p) : 0.0;
  return f;
}

// softmax(q kᵀ · scale + masks) [⊙ dropout] v from public ops; differentiable.
Tensor<double> naive(const Tensor<double>& q, const Tensor<double>& k, const Tensor<double>& v,
                     const AttentionOptions& o, const Tensor<double>& drop = {}) {
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), lk = k.size(2);
  const double scale = o.scale.value_or(1.0 / std::sqrt(static_cast<double>(q.size(3))));
  Tensor<double> s = matmul(q, k.transpose(-1, -2)) * scale;
  s = masked_fill(s, logical_not(visible(b, h, lq, lk, o.key_padding_mask, o.causal)), -kInf);
  Tensor<double> p = softmax(s, -1);
  if (drop.defined()) p = p * drop;
  return matmul(p, v);
}

AttentionOptions opts(Tensor<bool> mask = {}, bool causal = false, double p = 0, std::optional<double> scale = {}) {
  AttentionOptions o;
  o.key_padding_mask = std::move(mask);
  o.causal = causal;
  o.dropout_p = p;
  o.scale = scale;
  return o;
}

struct Dims {
  int64_t b, h, lq, lk, d, dv;
};
const Dims kSmall{2, 3, 5, 7, 6, 4}, kSquare{2, 3, 17, 17, 6, 4};

struct Inputs {
  Tensor<double> q, k, v;
};
Inputs inputs(const Dims& n, uint64_t seed) {
  return {rnd({n.b, n.h, n.lq, n.d}, seed), rnd({n.b, n.h, n.lk, n.d}, seed + 1), rnd({n.b, n.h, n.lk, n.dv}, seed + 2)};
}

// [B, L, H, X] data viewed as [B, H, L, X]: how a model splits heads.
Tensor<double> interleaved(const Tensor<double>& t) {
  return t.detach().permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3}).detach();
}

bool ensure_stand_in_device();
}  // namespace

TEST_CASE("attention matches matmul + masked softmax + matmul at awkward sizes, masks and layouts") {
  for (const Dims& n : {kSmall, kSquare, Dims{1, 1, 9, 3, 5, 7}, Dims{3, 2, 1, 11, 3, 2}}) {
    const auto x = inputs(n, 10 + static_cast<uint64_t>(n.lq));
    const Tensor<bool> pad = padding_mask(n.b, n.lk, 3);
    std::vector<int64_t> lengths{2, n.lk, 1};
    lengths.resize(static_cast<size_t>(n.b));
    const Tensor<bool> rpad = right_padding(n.lk, lengths);
    for (const auto& [name, o] : std::vector<std::pair<const char*, AttentionOptions>>{
             {"no mask", opts()},
             {"padding", opts(pad)},
             {"right padding (work stops at the last key)", opts(rpad)},
             {"right padding + causal", opts(rpad, true)},
             {"causal", opts({}, true)},
             {"padding + causal", opts(pad, true)},
             {"padding, custom scale", opts(pad, false, 0, 0.37)}}) {
      INFO(name << " B=" << n.b << " H=" << n.h << " Lq=" << n.lq << " Lk=" << n.lk << " D=" << n.d << " Dv=" << n.dv);
      const auto ref = naive(x.q, x.k, x.v, o);
      auto y = scaled_dot_product_attention(x.q, x.k, x.v, o);
      CHECK(y.shape() == Shape{n.b, n.h, n.lq, n.dv});
      require_allclose(y, ref, 1e-13, 1e-12, "contiguous");
      require_allclose(scaled_dot_product_attention(noncontiguous(x.q), noncontiguous(x.k), noncontiguous(x.v), o),
                       ref, 1e-13, 1e-12, "transposed storage (copied)");
      require_allclose(scaled_dot_product_attention(interleaved(x.q), interleaved(x.k), interleaved(x.v), o), ref,
                       1e-13, 1e-12, "heads interleaved (read in place)");
      // k and v shared by every head: batch/head stride 0.
      const auto k1 = x.k.narrow(1, 0, 1).expand(x.k.shape()), v1 = x.v.narrow(1, 0, 1).expand(x.v.shape());
      require_allclose(scaled_dot_product_attention(x.q, k1, v1, o), naive(x.q, k1, v1, o), 1e-13, 1e-12,
                       "broadcast k, v");
    }
  }
}

TEST_CASE("attention: hand-computed values, default scale, causal with Lq != Lk aligned top-left") {
  // One head, D = 4 (scale 1/2): keys e0, e1 scaled by 2; q = e0 · 2 ln 3 gives scores (ln 3, 0).
  const double l3 = std::log(3.0);
  auto q = tensor<double>({2 * l3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}, {1, 1, 3, 4});
  auto k = tensor<double>({1, 0, 0, 0, 0, 1, 0, 0}, {1, 1, 2, 4});
  auto v = tensor<double>({10, 20, 30, 40}, {1, 1, 2, 2});
  auto y = scaled_dot_product_attention(q, k, v);
  CHECK(y(0, 0, 0, 0) == Approx(0.75 * 10 + 0.25 * 30).epsilon(1e-14));
  CHECK(y(0, 0, 1, 1) == Approx(30.0).epsilon(1e-14));  // zero query: uniform weights
  // causal: row 0 sees key 0 only; rows 1 and 2 (i >= Lk - 1) see both keys.
  auto c = scaled_dot_product_attention(q, k, v, opts({}, true));
  CHECK(c(0, 0, 0, 0) == Approx(10.0).epsilon(1e-14));
  CHECK(c(0, 0, 0, 1) == Approx(20.0).epsilon(1e-14));
  CHECK(c(0, 0, 2, 0) == Approx(20.0).epsilon(1e-14));
}

TEST_CASE("attention: the output (and each gradient) is laid out like its input's heads") {
  const auto x = inputs(kSmall, 5);
  auto y = scaled_dot_product_attention(interleaved(x.q), x.k, x.v);
  CHECK(!y.is_contiguous());
  CHECK(y.permute({0, 2, 1, 3}).is_contiguous());  // merging heads back is a view
  CHECK(scaled_dot_product_attention(x.q, x.k, x.v).is_contiguous());

  auto q = interleaved(x.q).set_requires_grad(), k = x.k.detach().set_requires_grad(),
       v = interleaved(x.v).set_requires_grad();
  auto out = scaled_dot_product_attention(q, k, v);
  // The node hands back its gradients as it made them (leaves store a contiguous copy), so
  // check the layout on the gradient a hook sees.
  bool q_interleaved = false, k_contiguous = false;
  q.register_hook([&](const Tensor<double>& g) {
    q_interleaved = g.permute({0, 2, 1, 3}).is_contiguous();
    return Tensor<double>();
  });
  k.register_hook([&](const Tensor<double>& g) {
    k_contiguous = g.is_contiguous();
    return Tensor<double>();
  });
  sum(out).backward();
  CHECK(q_interleaved);
  CHECK(k_contiguous);
}

TEST_CASE("attention gradcheck: q, k, v with masks, causal, non-contiguous and broadcast inputs") {
  for (const Dims& n : {kSmall, Dims{1, 2, 9, 4, 3, 5}}) {
    const auto x = inputs(n, 40);
    const Tensor<bool> pad = padding_mask(n.b, n.lk, 4);
    for (const auto& [name, o] : std::vector<std::pair<const char*, AttentionOptions>>{
             {"plain", opts()},
             {"padding", opts(pad)},
             {"right padding", opts(right_padding(n.lk, std::vector<int64_t>(static_cast<size_t>(n.b), 3)))},
             {"causal", opts({}, true)},
             {"both", opts(pad, true, 0, 0.8)}}) {
      INFO(name << " Lq=" << n.lq << " Lk=" << n.lk);
      auto fn = [o = o](const std::vector<Tensor<double>>& in) {
        return scaled_dot_product_attention(in[0], in[1], in[2], o);
      };
      require_gradcheck(fn, {noncontiguous(x.q), noncontiguous(x.k), noncontiguous(x.v)});
      require_gradcheck(fn, {interleaved(x.q), x.k, interleaved(x.v)});
    }
  }
  // k and v broadcast over heads inside the function: their gradients sum over heads.
  const auto x = inputs(kSmall, 50);
  require_gradcheck(
      [](const std::vector<Tensor<double>>& in) {
        const Shape s{2, 3, 7, 6}, sv{2, 3, 7, 4};
        return scaled_dot_product_attention(in[0], in[1].expand(s), in[2].expand(sv), opts({}, true));
      },
      {x.q, x.k.narrow(1, 0, 1).contiguous(), noncontiguous(x.v.narrow(1, 0, 1).contiguous())});
  // Only some inputs require grad.
  auto q = x.q.detach().set_requires_grad();
  scaled_dot_product_attention(q, x.k, x.v).backward(ones<double>({2, 3, 5, 4}));
  auto q2 = x.q.detach().set_requires_grad(), k2 = x.k.detach().set_requires_grad(), v2 = x.v.detach().set_requires_grad();
  naive(q2, k2, v2, opts()).backward(ones<double>({2, 3, 5, 4}));
  require_allclose(q.grad(), q2.grad(), 1e-13, 1e-12, "dq alone");
}

TEST_CASE("attention: a row that sees no key outputs zeros and passes zero gradient") {
  const auto x = inputs(kSmall, 60);
  // Batch 1 has every key masked; in batch 0 only keys 3..6 are on, so causal rows 0..2 see nothing.
  Tensor<bool> pad = zeros<bool>({2, 7});
  for (int64_t j = 3; j < 7; ++j) pad(0, j) = true;
  for (bool causal : {false, true}) {
    INFO("causal " << causal);
    const auto o = opts(pad, causal);
    auto q = x.q.detach().set_requires_grad(), k = x.k.detach().set_requires_grad(), v = x.v.detach().set_requires_grad();
    auto y = scaled_dot_product_attention(q, k, v, o);
    require_allclose(y.select(0, 1), zeros<double>({3, 5, 4}), 0, 0, "fully masked batch");
    if (causal) {
      require_allclose(y.select(0, 0).narrow(1, 0, 3), zeros<double>({3, 3, 4}), 0, 0, "rows before the first key");
      // Rows that see keys agree with the reference (which is NaN on the others).
      auto ref = naive(x.q, x.k, x.v, o);
      require_allclose(y.select(0, 0).narrow(1, 3, 2), ref.select(0, 0).narrow(1, 3, 2), 1e-13, 1e-12);
    }
    CHECK(!std::isnan(sum(y).item()));
    y.backward(rnd(y.shape(), 61));
    require_allclose(q.grad().select(0, 1), zeros<double>({3, 5, 6}), 0, 0, "dq of masked rows");
    require_allclose(k.grad().select(0, 1), zeros<double>({3, 7, 6}), 0, 0, "dk of a fully masked batch");
    require_allclose(v.grad().select(0, 1), zeros<double>({3, 7, 4}), 0, 0, "dv of a fully masked batch");
    require_gradcheck([o = o](const std::vector<Tensor<double>>& in) { return scaled_dot_product_attention(in[0], in[1], in[2], o); },
                      {x.q, x.k, x.v});
  }
  // Lk = 0: every row is empty.
  auto e = scaled_dot_product_attention(x.q, rnd({2, 3, 0, 6}, 1), rnd({2, 3, 0, 4}, 2));
  require_allclose(e, zeros<double>({2, 3, 5, 4}), 0, 0, "no keys");
}

TEST_CASE("attention dropout: the documented Philox mask, determinism, the mean, and a matching backward") {
  const auto x = inputs(kSquare, 70);
  const Tensor<bool> pad = padding_mask(2, 17, 5);
  const double p = 0.3;
  const auto o = opts(pad, true, p);
  Generator g(1234);
  const uint64_t offset = g.offset();
  auto y1 = scaled_dot_product_attention(x.q, x.k, x.v, o, g);
  CHECK(g.offset() == offset + 1);  // one stream per call
  auto y2 = scaled_dot_product_attention(x.q, x.k, x.v, o, g);
  // The mask is element ((b·H + h)·Lq + i)·Lk + j of the stream (seed, offset).
  require_allclose(y1, naive(x.q, x.k, x.v, o, dropout_factors({2, 3, 17, 17}, 1234, offset, p)), 1e-13, 1e-12,
                   "first call");
  require_allclose(y2, naive(x.q, x.k, x.v, o, dropout_factors({2, 3, 17, 17}, 1234, offset + 1, p)), 1e-13, 1e-12,
                   "second call");
  CHECK(sum(abs(y1 - y2)).item() > 1e-3);
  Generator gr(4321);
  const auto orp = opts(right_padding(17, {5, 12}), false, p);
  require_allclose(scaled_dot_product_attention(x.q, x.k, x.v, orp, gr),
                   naive(x.q, x.k, x.v, orp, dropout_factors({2, 3, 17, 17}, 4321, 0, p)), 1e-13, 1e-12,
                   "right padding");
  Generator again(1234);
  CHECK(scaled_dot_product_attention(x.q, x.k, x.v, o, again).to_vector() == y1.to_vector());
  // p = 0 draws nothing.
  Generator untouched(9);
  scaled_dot_product_attention(x.q, x.k, x.v, opts(pad), untouched);
  CHECK(untouched.offset() == 0);

  // Mean preserved: with uniform probabilities (q = 0) and v = 1, each output is
  // kept/(Lk (1-p)), of mean 1 and standard deviation sqrt(p / ((1-p) Lk)) = 0.082;
  // the mean of 512 rows is within 5 sigma (0.018) of 1.
  const int64_t lk = 64;
  Generator gd(77);
  auto ones_out = scaled_dot_product_attention(zeros<double>({2, 4, 64, 8}), zeros<double>({2, 4, lk, 8}),
                                               ones<double>({2, 4, lk, 1}), opts({}, false, p), gd);
  CHECK(mean(ones_out).item() == Approx(1.0).margin(0.018));
  const auto ov = ones_out.to_vector();
  CHECK(*std::min_element(ov.begin(), ov.end()) < 0.9);  // rows do differ
  // p = 1 drops everything (no NaN from 0 · 1/0).
  auto all = scaled_dot_product_attention(x.q, x.k, x.v, opts({}, false, 1.0));
  require_allclose(all, zeros<double>(all.shape()), 0, 0, "p = 1");

  // Backward uses the forward's mask: gradcheck with the generator reset before each evaluation.
  for (const Dims& n : {kSmall, Dims{1, 2, 6, 6, 3, 5}}) {
    const auto xs = inputs(n, 80);
    const auto od = opts(padding_mask(n.b, n.lk, 6), n.lq == n.lk, 0.4);
    auto fn = [od](const std::vector<Tensor<double>>& in) {
      Generator gen(2024);
      return scaled_dot_product_attention(in[0], in[1], in[2], od, gen);
    };
    require_gradcheck(fn, {noncontiguous(xs.q), interleaved(xs.k), noncontiguous(xs.v)});
    // And the gradient equals the reference composition's, with the same mask.
    Generator gen(2024);
    auto q = xs.q.detach().set_requires_grad(), k = xs.k.detach().set_requires_grad(), v = xs.v.detach().set_requires_grad();
    auto r = rnd({n.b, n.h, n.lq, n.dv}, 81);
    scaled_dot_product_attention(q, k, v, od, gen).backward(r);
    auto q2 = xs.q.detach().set_requires_grad(), k2 = xs.k.detach().set_requires_grad(), v2 = xs.v.detach().set_requires_grad();
    naive(q2, k2, v2, od, dropout_factors({n.b, n.h, n.lq, n.lk}, 2024, 0, 0.4)).backward(r);
    require_allclose(q.grad(), q2.grad(), 1e-12, 1e-11, "dq");
    require_allclose(k.grad(), k2.grad(), 1e-12, 1e-11, "dk");
    require_allclose(v.grad(), v2.grad(), 1e-12, 1e-11, "dv");
  }
}

TEST_CASE("attention in float, half and bfloat16 agrees with double") {
  const auto x = inputs(kSquare, 90);
  const auto o = opts(padding_mask(2, 17, 7), true);
  const auto ref = scaled_dot_product_attention(x.q, x.k, x.v, o);
  const auto yf = scaled_dot_product_attention(x.q.to<float>(), x.k.to<float>(), x.v.to<float>(), o);
  require_allclose(yf, ref, 2e-6, 1e-5, "float");
  const auto yh = scaled_dot_product_attention(x.q.to<half>(), x.k.to<half>(), x.v.to<half>(), o);
  require_allclose(yh, ref, 2e-2, 1e-2, "half");
  const auto yb = scaled_dot_product_attention(x.q.to<bfloat16>(), x.k.to<bfloat16>(), x.v.to<bfloat16>(), o);
  require_allclose(yb, ref, 1e-1, 5e-2, "bfloat16");

  // Gradients in float against double.
  auto qd = x.q.detach().set_requires_grad(), kd = x.k.detach().set_requires_grad(), vd = x.v.detach().set_requires_grad();
  auto qf = x.q.to<float>().set_requires_grad(), kf = x.k.to<float>().set_requires_grad(), vf = x.v.to<float>().set_requires_grad();
  const auto r = rnd(ref.shape(), 91);
  scaled_dot_product_attention(qd, kd, vd, o).backward(r);
  scaled_dot_product_attention(qf, kf, vf, o).backward(r.to<float>());
  require_allclose(qf.grad(), qd.grad(), 1e-5, 1e-4, "dq float");
  require_allclose(kf.grad(), kd.grad(), 1e-5, 1e-4, "dk float");
  require_allclose(vf.grad(), vd.grad(), 1e-5, 1e-4, "dv float");
  auto qh = x.q.to<half>().set_requires_grad();
  scaled_dot_product_attention(qh, x.k.to<half>(), x.v.to<half>(), o).backward(r.to<half>());
  require_allclose(qh.grad(), qd.grad(), 5e-2, 5e-2, "dq half");
}

TEST_CASE("attention records nothing when no input requires grad, and refuses double backward") {
  const auto x = inputs(kSmall, 100);
  CHECK(scaled_dot_product_attention(x.q, x.k, x.v).grad_fn() == nullptr);
  auto q = x.q.detach().set_requires_grad();
  {
    NoGradGuard ng;
    CHECK(scaled_dot_product_attention(q, x.k, x.v).grad_fn() == nullptr);
  }
  auto y = scaled_dot_product_attention(q, x.k, x.v);
  REQUIRE(y.grad_fn() != nullptr);
  CHECK(y.grad_fn()->name() == "ScaledDotProductAttentionBackward");
  // The engine runs backward with recording off; a caller that differentiates the backward itself is told no.
  std::vector<autograd::AnyTensor> g{ones<double>(y.shape())};
  MAMCLIP_REQUIRE_THROWS_WITH(y.grad_fn()->apply(std::vector<autograd::AnyTensor>(g)), autograd_error,
                              "scaled_dot_product_attention: double backward is not supported");
}

TEST_CASE("attention errors name the argument, the shapes and what was expected") {
  const auto x = inputs(kSmall, 110);
  const char* op = "scaled_dot_product_attention: ";
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q.select(0, 0), x.k, x.v), shape_error,
                              std::string(op) + "q has shape [3, 5, 6]; expected a 4-D tensor [B, H, Lq, D]");
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q, x.k.select(0, 0), x.v), shape_error,
                              std::string(op) + "k has shape [3, 7, 6]; expected a 4-D tensor [B, H, Lk, D]");
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q, x.k, x.v.select(0, 0)), shape_error,
                              std::string(op) + "v has shape [3, 7, 4]; expected a 4-D tensor [B, H, Lk, Dv]");
  MAMCLIP_REQUIRE_THROWS_WITH(
      scaled_dot_product_attention(x.q, rnd({2, 3, 7, 5}, 1), x.v), shape_error,
      std::string(op) + "q has shape [2, 3, 5, 6] and k has shape [2, 3, 7, 5]; expected k [B, H, Lk, D] to match q "
                        "[B, H, Lq, D] in B, H and D");
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q, rnd({2, 2, 7, 6}, 1), x.v), shape_error,
                              "q has shape [2, 3, 5, 6] and k has shape [2, 2, 7, 6]");
  MAMCLIP_REQUIRE_THROWS_WITH(
      scaled_dot_product_attention(x.q, x.k, rnd({2, 3, 6, 4}, 1)), shape_error,
      std::string(op) + "k has shape [2, 3, 7, 6] and v has shape [2, 3, 6, 4]; expected v [B, H, Lk, Dv] to match k "
                        "[B, H, Lk, D] in B, H and Lk");
  MAMCLIP_REQUIRE_THROWS_WITH(
      scaled_dot_product_attention(x.q, x.k, x.v, opts(ones<bool>({2, 5}))), shape_error,
      std::string(op) + "key_padding_mask has shape [2, 5]; expected [B, Lk] = [2, 7] (q has shape [2, 3, 5, 6], k "
                        "has shape [2, 3, 7, 6])");
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q, x.k, x.v, opts(ones<bool>({2, 1, 7}))), shape_error,
                              "key_padding_mask has shape [2, 1, 7]; expected [B, Lk] = [2, 7]");
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q, x.k, x.v, opts({}, false, 1.5)), value_error,
                              std::string(op) + "dropout_p must be in [0, 1], got 1.5");
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q, x.k, x.v, opts({}, false, -0.1)), value_error,
                              "dropout_p must be in [0, 1], got -0.1");
  // A transposed mask view is read correctly.
  const Tensor<bool> pad = padding_mask(2, 7, 8);
  const Tensor<bool> pad_t = logical_not(logical_not(pad)).t().contiguous().t();
  require_allclose(scaled_dot_product_attention(x.q, x.k, x.v, opts(pad_t)),
                   scaled_dot_product_attention(x.q, x.k, x.v, opts(pad)), 0, 0, "non-contiguous mask");
  if (ensure_stand_in_device()) {
    const Device dev = Device::cuda(0);
    MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q.to(dev), x.k, x.v), device_error,
                                std::string(op) + "expected all tensors on one device, but q is on cuda:0 and k is on cpu");
    MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q, x.k, x.v, opts(pad.to(dev))), device_error,
                                "but q is on cpu and key_padding_mask is on cuda:0");
    MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(x.q.to(dev), x.k.to(dev), x.v.to(dev)), device_error,
                                std::string(op) + "no kernel is registered for float64 tensors on cuda:0");
  }
}

namespace {

// A stand-in device whose memory is host memory and whose attention kernels are
// the CPU reference driven through the device contract (lse saved, P and the
// dropout mask recomputed in backward).
bool ensure_stand_in_device() { return ensure_stand_in_cuda(); }

void host_attention_forward(const AttentionForwardArgs<float>& a) {
  cpu::attention_forward<float>(a.dims, a.config, a.q, a.k, a.v, a.out, nullptr, nullptr, a.lse);
}
void host_attention_backward(const AttentionBackwardArgs<float>& a) {
  cpu::attention_backward<float>(a.dims, a.config, a.q, a.k, a.v, a.dout, nullptr, a.lse, nullptr, a.dq, a.dk, a.dv);
}
void host_strided_copy(float* dst, const float* src, const Shape& shape, const Shape& strides) {
  int64_t i = 0;
  detail::for_each_offset<1>(shape, {strides}, [&](const std::array<int64_t, 1>& o) { dst[i++] = src[o[0]]; });
}
}  // namespace

TEST_CASE("attention on a device runs the registered kernels; the lse-recompute backward matches") {
  if (!ensure_stand_in_device()) {
    WARN("a real CUDA backend is linked: the stand-in kernels are not installed (tests/cuda covers the device)");
    return;
  }
  auto& reg = KernelRegistry::get();
  const Device dev = Device::cuda(0);
  const auto x = inputs(kSquare, 120);
  const Tensor<bool> pad = padding_mask(2, 17, 9);
  {
    auto q = x.q.to<float>().to(dev).set_requires_grad();
    MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(q, x.k.to<float>().to(dev), x.v.to<float>().to(dev)),
                                device_error, "scaled_dot_product_attention: no kernel is registered for float32 tensors on cuda:0");
  }
  reg.add<AttentionForwardKernel<float>>("scaled_dot_product_attention", DType::f32, DeviceType::cuda, &host_attention_forward);
  {
    auto q = x.q.to<float>().to(dev).set_requires_grad();
    MAMCLIP_REQUIRE_THROWS_WITH(
        scaled_dot_product_attention(q, x.k.to<float>().to(dev), x.v.to<float>().to(dev)), device_error,
        "scaled_dot_product_attention_backward: no kernel is registered for float32 tensors on cuda:0");
  }
  reg.add<AttentionBackwardKernel<float>>("scaled_dot_product_attention_backward", DType::f32, DeviceType::cuda,
                                          &host_attention_backward);
  reg.add<StridedCopyKernel<float>>("strided_copy", DType::f32, DeviceType::cuda, &host_strided_copy);
  for (const auto& o : {opts(pad, true), opts(pad, false, 0.25)}) {
    INFO("dropout " << o.dropout_p);
    Generator gc(5), gd(5);
    auto qc = x.q.to<float>().set_requires_grad(), kc = x.k.to<float>().set_requires_grad(),
         vc = interleaved(x.v).to<float>().set_requires_grad();
    auto yc = scaled_dot_product_attention(qc, kc, vc, o, gc);
    auto qd = qc.detach().to(dev).set_requires_grad(), kd = noncontiguous(kc).to(dev).set_requires_grad(),
         vd = vc.detach().to(dev).set_requires_grad();
    auto od = o;
    od.key_padding_mask = pad.to(dev);
    auto yd = scaled_dot_product_attention(qd, kd, vd, od, gd);
    CHECK(yd.device() == dev);
    require_allclose(yd.to(kCPU), yc, 1e-6, 1e-5, "forward");
    const auto r = rnd(yc.shape(), 121).to<float>();
    yc.backward(r);
    yd.backward(r.to(dev));
    require_allclose(qd.grad().to(kCPU), qc.grad(), 1e-5, 1e-4, "dq");
    require_allclose(kd.grad().to(kCPU), kc.grad(), 1e-5, 1e-4, "dk");
    require_allclose(vd.grad().to(kCPU), vc.grad(), 1e-5, 1e-4, "dv");
  }
}

TEST_CASE("attention matches torch.nn.functional.scaled_dot_product_attention (fixture)") {
  const auto j = load_json(fixture_path("attention/sdpa.json"));
  REQUIRE(j.at("cases").size() >= 3);
  for (const auto& c : j.at("cases")) {
    INFO(c.at("name").get<std::string>());
    auto q = tensor_from_json<double>(c.at("q")).set_requires_grad();
    auto k = tensor_from_json<double>(c.at("k")).set_requires_grad();
    auto v = tensor_from_json<double>(c.at("v")).set_requires_grad();
    AttentionOptions o;
    o.causal = c.at("causal").get<bool>();
    if (!c.at("scale").is_null()) o.scale = c.at("scale").get<double>();
    if (!c.at("key_padding_mask").is_null()) {
      const auto m = tensor_from_json<double>(c.at("key_padding_mask"));
      Tensor<bool> mb = empty<bool>(m.shape());
      const auto mv = m.to_vector();
      for (size_t i = 0; i < mv.size(); ++i) mb.data_ptr()[i] = mv[i] != 0;
      o.key_padding_mask = mb;
    }
    auto y = scaled_dot_product_attention(q, k, v, o);
    require_allclose(y, tensor_from_json<double>(c.at("out")), 1e-12, 1e-10, "out");
    y.backward(tensor_from_json<double>(c.at("grad_out")));
    require_allclose(q.grad(), tensor_from_json<double>(c.at("grad_q")), 1e-12, 1e-10, "grad_q");
    require_allclose(k.grad(), tensor_from_json<double>(c.at("grad_k")), 1e-12, 1e-10, "grad_k");
    require_allclose(v.grad(), tensor_from_json<double>(c.at("grad_v")), 1e-12, 1e-10, "grad_v");
  }
}

}  // namespace test_attention
