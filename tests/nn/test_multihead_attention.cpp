// nn::MultiheadAttention against torch.nn.MultiheadAttention
// (tests/fixtures/attention/mha.safetensors, tools/make_mha_fixture.py):
// outputs, attention weights and every input and parameter gradient for
// self / key-value-shared / cross attention, both layouts, key_padding_mask,
// bool attn_mask, additive attn_bias and causality; parameter names and init;
// the fused and explicit paths against each other; fully masked rows; dropout;
// errors; and double-precision gradchecks of the functional form.
#include "support/test_support.hpp"
#include "support/scaled_close.hpp"

#include <cmath>
#include <string>

#include "mamclip/io/safetensors.hpp"
#include "mamclip/nn/attention.hpp"

namespace test_multihead_attention {
using namespace mamclip;
using namespace mamclip::test;

namespace {

const io::TensorMap& fixture() {
  static const io::TensorMap t = io::load_safetensors(fixture_path("attention/mha.safetensors"));
  return t;
}
bool has(const std::string& name) { return fixture().count(name) == 1; }
template <class T = float>
Tensor<T> get(const std::string& name) {
  INFO(name);
  REQUIRE(has(name));
  return io::get_as<T>(fixture().at(name), name);
}

struct Case {
  const char* name;
  int64_t embed, heads;
  bool batch_first;
  const char* kind;  // "self": q = k = v; "kv": k = v; "cross"
  bool causal, need_weights, average;
};

const Case kCases[] = {
    {"self_seq", 24, 3, false, "self", false, false, true},
    {"self_seq_kpm_weights", 24, 3, false, "self", false, true, true},
    {"cross_bf_kpm", 32, 8, true, "cross", false, false, true},
    {"kv_seq_mask_weights", 24, 3, false, "kv", false, true, false},
    {"self_bf_bias", 24, 3, true, "self", false, false, true},
    {"self_bf_kpm_causal", 24, 3, true, "self", true, false, true},
};

std::shared_ptr<nn::MultiheadAttention> fixture_module(int64_t e, int64_t h, bool batch_first) {
  nn::MultiheadAttentionOptions o;
  o.batch_first = batch_first;
  auto m = std::make_shared<nn::MultiheadAttention>(e, h, o);
  const std::string prefix = "e" + std::to_string(e) + "h" + std::to_string(h) + ".";
  nn::StateDict sd;
  for (const char* p : {"in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias"})
    sd.insert(p, get(prefix + p));
  m->load_state_dict(sd);  // strict: the names are PyTorch's
  return m;
}

Tensor<double> rnd(const Shape& s, uint64_t seed) { return uniform_random<double>(s, seed, -1.0, 1.0); }

nn::MultiheadAttentionParams<double> random_params(int64_t e, uint64_t seed, bool bias = true) {
  nn::MultiheadAttentionParams<double> p;
  p.in_proj_weight = rnd({3 * e, e}, seed);
  p.out_proj_weight = rnd({e, e}, seed + 1);
  if (bias) {
    p.in_proj_bias = rnd({3 * e}, seed + 2);
    p.out_proj_bias = rnd({e}, seed + 3);
  }
  return p;
}

}  // namespace

TEST_CASE("MultiheadAttention: PyTorch's parameter names, shapes, order and init") {
  Generator gen(7);
  nn::MultiheadAttention m(24, 3, {}, gen);
  const auto named = m.named_parameters();
  REQUIRE(named.size() == 4);
  CHECK(named[0].first == "in_proj_weight");
  CHECK(named[1].first == "in_proj_bias");
  CHECK(named[2].first == "out_proj.weight");
  CHECK(named[3].first == "out_proj.bias");
  CHECK(m.in_proj_weight.shape() == Shape{72, 24});
  CHECK(m.in_proj_bias.shape() == Shape{72});
  CHECK(m.out_proj->weight.shape() == Shape{24, 24});
  CHECK(m.out_proj->bias.shape() == Shape{24});
  CHECK(m.head_dim() == 8);
  CHECK_FALSE(m.batch_first());
  // xavier_uniform_ over [3E, E]: bound sqrt(6 / (E + 3E)); Linear: 1 / sqrt(E); biases zero.
  const double xavier = std::sqrt(6.0 / (24.0 + 72.0)), lin = 1.0 / std::sqrt(24.0);
  const double wmax = max_abs(m.in_proj_weight), omax = max_abs(m.out_proj->weight);
  CHECK(wmax <= xavier);
  CHECK(wmax > 0.9 * xavier);  // 1728 draws reach near the bound
  CHECK(omax <= lin);
  CHECK(omax > 0.9 * lin);
  CHECK(max_abs(m.in_proj_bias) == 0);
  CHECK(max_abs(m.out_proj->bias) == 0);
  // Seeded: the same generator seed gives the same weights.
  Generator gen2(7);
  nn::MultiheadAttention m2(24, 3, {}, gen2);
  require_allclose(m2.in_proj_weight, m.in_proj_weight, 0, 0, "seeded init");
  CHECK(m.repr().find("MultiheadAttention(embed_dim=24, num_heads=3") == 0);

  nn::MultiheadAttentionOptions nobias;
  nobias.bias = false;
  nn::MultiheadAttention nb(8, 2, nobias);
  const auto keys = nb.state_dict().keys();
  REQUIRE(keys.size() == 2);
  CHECK(keys[0] == "in_proj_weight");
  CHECK(keys[1] == "out_proj.weight");
  CHECK_FALSE(nb.in_proj_bias.defined());
}

TEST_CASE("MultiheadAttention: construction errors") {
  MAMCLIP_REQUIRE_THROWS_WITH(nn::MultiheadAttention(24, 5), value_error,
                              "MultiheadAttention: embed_dim 24 must be divisible by num_heads 5");
  MAMCLIP_REQUIRE_THROWS_WITH(nn::MultiheadAttention(0, 1), value_error, "embed_dim and num_heads must be positive");
  nn::MultiheadAttentionOptions o;
  o.kdim = 16;
  MAMCLIP_REQUIRE_THROWS_WITH(nn::MultiheadAttention(24, 3, o), value_error,
                              "MultiheadAttention: kdim=16, vdim=24 differ from embed_dim=24; only the packed "
                              "in_proj_weight layout (kdim == vdim == embed_dim) is supported");
  nn::MultiheadAttentionOptions d;
  d.dropout = 1.5;
  MAMCLIP_REQUIRE_THROWS_WITH(nn::MultiheadAttention(24, 3, d), value_error, "dropout must be in [0, 1], got 1.5");
}

TEST_CASE("MultiheadAttention matches torch.nn.MultiheadAttention: outputs, weights, every gradient") {
  for (const Case& c : kCases) {
    const std::string n = c.name;
    INFO("case " << n);
    auto m = fixture_module(c.embed, c.heads, c.batch_first);
    m->eval();
    const std::string kind = c.kind;
    Tensor<float> query = get(n + ".query").detach().set_requires_grad();
    Tensor<float> key = kind == "self" ? query : get(n + ".key").detach().set_requires_grad();
    Tensor<float> value = kind == "cross" ? get(n + ".value").detach().set_requires_grad() : key;
    nn::MultiheadAttentionArgs<float> args;
    if (has(n + ".key_padding_mask")) args.key_padding_mask = get<bool>(n + ".key_padding_mask");
    if (has(n + ".attn_mask")) args.attn_mask = get<bool>(n + ".attn_mask");
    if (has(n + ".attn_bias")) args.attn_bias = get(n + ".attn_bias");
    args.is_causal = c.causal;
    args.need_weights = c.need_weights;
    args.average_attn_weights = c.average;
    auto r = m->forward(query, key, value, args);
    require_close_rel(r.output, get(n + ".out"), 1e-5, n + " output");
    Tensor<float> loss = sum(mul(r.output, get(n + ".grad_out")));
    REQUIRE(r.weights.defined() == c.need_weights);
    if (c.need_weights) {
      require_close_rel(r.weights, get(n + ".weights"), 1e-5, n + " weights");
      loss = add(loss, sum(mul(r.weights, get(n + ".grad_weights"))));
    }
    loss.backward();
    require_close_rel(query.grad(), get(n + ".grad.query"), 1e-4, n + " grad query");
    if (kind != "self") require_close_rel(key.grad(), get(n + ".grad.key"), 1e-4, n + " grad key");
    if (kind == "cross") require_close_rel(value.grad(), get(n + ".grad.value"), 1e-4, n + " grad value");
    for (const auto& [pname, p] : m->named_parameters())
      require_close_rel(p.grad(), get(n + ".grad." + pname), 1e-4, n + " grad " + pname);
  }
}

TEST_CASE("MultiheadAttention: the fused path (need_weights = false) equals the explicit one") {
  Generator gen(3);
  for (bool batch_first : {false, true}) {
    nn::MultiheadAttentionOptions o;
    o.batch_first = batch_first;
    nn::MultiheadAttention m(20, 4, o, gen);
    const Tensor<float> x = uniform_random<float>(batch_first ? Shape{3, 6, 20} : Shape{6, 3, 20}, 11, -1, 1);
    const Tensor<float> y = uniform_random<float>(batch_first ? Shape{3, 9, 20} : Shape{9, 3, 20}, 12, -1, 1);
    nn::MultiheadAttentionArgs<float> fused, explicit_;
    fused.need_weights = false;
    explicit_.need_weights = true;
    fused.key_padding_mask = explicit_.key_padding_mask =
        tensor<bool>({false, true, false, false, false, false, false, false, true,   //
                      false, false, false, false, true, true, true, true, true,      //
                      true, false, false, false, false, false, false, false, false},
                     {3, 9});
    require_allclose(m(x, y, y, fused).output, m(x, y, y, explicit_).output, 1e-6, 1e-5, "cross, kpm");
    nn::MultiheadAttentionArgs<float> causal_fused, causal_explicit;
    causal_fused.is_causal = causal_explicit.is_causal = true;
    causal_fused.need_weights = false;
    require_allclose(m(x, x, x, causal_fused).output, m(x, x, x, causal_explicit).output, 1e-6, 1e-5, "self, causal");
    // A non-contiguous query gives the same result.
    require_allclose(m(noncontiguous(x), y, y, fused).output, m(x, y, y, fused).output, 1e-6, 1e-6, "noncontiguous");
  }
}

TEST_CASE("MultiheadAttention: unbatched input equals a batch of one") {
  nn::MultiheadAttention m(12, 3);
  const Tensor<float> q = uniform_random<float>({4, 12}, 1, -1, 1), kv = uniform_random<float>({6, 12}, 2, -1, 1);
  nn::MultiheadAttentionArgs<float> a;
  a.key_padding_mask = tensor<bool>({false, false, true, false, true, false});
  auto r = m(q, kv, kv, a);
  CHECK(r.output.shape() == Shape{4, 12});
  CHECK(r.weights.shape() == Shape{4, 6});
  nn::MultiheadAttentionArgs<float> b = a;
  b.key_padding_mask = a.key_padding_mask.unsqueeze(0);
  auto rb = m(q.unsqueeze(1), kv.unsqueeze(1), kv.unsqueeze(1), b);
  require_allclose(r.output, rb.output.squeeze(1), 1e-6, 1e-6, "unbatched output");
  require_allclose(r.weights, rb.weights.squeeze(0), 1e-6, 1e-6, "unbatched weights");
  // Padded keys get zero weight; each row sums to one.
  for (int64_t i = 0; i < 4; ++i) {
    CHECK(r.weights(i, 2) == 0.0f);
    CHECK(r.weights(i, 4) == 0.0f);
    CHECK(std::abs(sum(r.weights.select(0, i)).item() - 1.0f) < 1e-6);
  }
}

TEST_CASE("MultiheadAttention: a query row with every key masked gives zeros (not NaN) on both paths") {
  nn::MultiheadAttention m(8, 2);
  const Tensor<float> x = uniform_random<float>({3, 2, 8}, 5, -1, 1).detach().set_requires_grad();  // [L, N, E]
  const Tensor<bool> am = tensor<bool>({true, true, true, false, true, true, false, false, true}, {3, 3});
  for (bool need_weights : {false, true}) {
    nn::MultiheadAttentionArgs<float> a;
    a.attn_mask = am;  // query 0 sees nothing
    a.need_weights = need_weights;
    auto r = m(x, x, x, a);
    // Row 0's attention output is zero, so its result is out_proj.bias (zero-initialised): zero.
    require_allclose(r.output.select(0, 0), zeros<float>({2, 8}), 0, 0, "masked row");
    if (need_weights) require_allclose(r.weights.select(1, 0), zeros<float>({2, 3}), 0, 0, "masked row weights");
    sum(r.output).backward();
    for (float g : x.grad().to_vector()) CHECK(std::isfinite(g));
    x.set_grad(Tensor<float>());
  }
}

TEST_CASE("MultiheadAttention: dropout on the attention probabilities, only while training") {
  nn::MultiheadAttentionOptions o;
  o.dropout = 1.0;  // every probability dropped: the output is out_proj.bias alone
  Generator gen(9);
  nn::MultiheadAttention m(8, 2, o, gen);
  {
    NoGradGuard ng;
    Tensor<float> b = m.out_proj->bias;
    b.copy_(uniform_random<float>({8}, 4, -1, 1));
  }
  const Tensor<float> x = uniform_random<float>({5, 2, 8}, 6, -1, 1);
  const Tensor<float> only_bias = m.out_proj->bias.expand({5, 2, 8});
  for (bool need_weights : {false, true}) {
    nn::MultiheadAttentionArgs<float> a;
    a.need_weights = need_weights;
    m.train();
    require_allclose(m(x, x, x, a).output, only_bias, 1e-7, 0, "p = 1 while training");
    m.eval();
    nn::MultiheadAttentionOptions none;
    const auto plain = nn::multi_head_attention_forward<float>(x, x, x, 2, m.params(), a, none);
    require_allclose(m(x, x, x, a).output, plain.output, 0, 0, "eval ignores dropout");
    CHECK(max_abs(sub(plain.output, only_bias)) > 1e-3);
  }
}

TEST_CASE("MultiheadAttention: shape errors name the argument, what was expected and what was given") {
  nn::MultiheadAttention m(12, 3);
  const Tensor<float> x = zeros<float>({4, 2, 12});
  const std::string who = "MultiheadAttention(embed_dim=12, num_heads=3): ";
  MAMCLIP_REQUIRE_THROWS_WITH(m(zeros<float>({4, 2, 10}), x, x), shape_error,
                              who + "query has shape [4, 2, 10]; expected the last dim to be embed_dim = 12");
  MAMCLIP_REQUIRE_THROWS_WITH(m(zeros<float>({4, 2, 3, 12}), x, x), shape_error,
                              who + "query has shape [4, 2, 3, 12]; expected [L, N, E] or unbatched [L, E]");
  MAMCLIP_REQUIRE_THROWS_WITH(m(x, zeros<float>({5, 3, 12}), zeros<float>({5, 3, 12})), shape_error,
                              "expected one batch size (dim 1)");
  MAMCLIP_REQUIRE_THROWS_WITH(m(x, zeros<float>({5, 2, 12}), zeros<float>({6, 2, 12})), shape_error,
                              "expected the same sequence length S");
  MAMCLIP_REQUIRE_THROWS_WITH(m(x, zeros<float>({5, 2, 8}), zeros<float>({5, 2, 8})), shape_error,
                              "(kdim and vdim other than embed_dim are not supported)");
  nn::MultiheadAttentionArgs<float> a;
  a.key_padding_mask = zeros<bool>({4, 2});
  MAMCLIP_REQUIRE_THROWS_WITH(m(x, x, x, a), shape_error,
                              who + "key_padding_mask has shape [4, 2]; expected [N, S] = [2, 4]");
  nn::MultiheadAttentionArgs<float> b;
  b.attn_mask = zeros<bool>({2, 4, 4});
  MAMCLIP_REQUIRE_THROWS_WITH(m(x, x, x, b), shape_error,
                              who + "attn_mask has shape [2, 4, 4]; expected [L, S] = [4, 4] or [N * num_heads, L, S] = [6, 4, 4]");
  nn::MultiheadAttentionArgs<float> c;
  c.attn_bias = zeros<float>({4, 5});
  MAMCLIP_REQUIRE_THROWS_WITH(m(x, x, x, c), shape_error, who + "attn_bias has shape [4, 5]");
}

TEST_CASE("multi_head_attention_forward: double gradcheck of every path, non-contiguous inputs and parameters") {
  // E = 6, H = 3 (D = 2), L = 3, S = 5, N = 2: no size a multiple of 8.
  const int64_t e = 6, h = 3, l = 3, s = 5, n = 2;
  const Tensor<bool> kpm = tensor<bool>({false, true, false, false, true, false, false, false, false, true}, {n, s});
  const Tensor<bool> am = tensor<bool>({false, false, true, false, false, true, false, false, false, false,  //
                                        false, true, false, true, false},
                                       {l, s});
  const auto p = random_params(e, 40);
  for (bool batch_first : {false, true}) {
    INFO("batch_first " << batch_first);
    nn::MultiheadAttentionOptions o;
    o.batch_first = batch_first;
    const Shape qs = batch_first ? Shape{n, l, e} : Shape{l, n, e}, ks = batch_first ? Shape{n, s, e} : Shape{s, n, e};
    const Tensor<double> q = rnd(qs, 1), k = rnd(ks, 2), v = rnd(ks, 3), proj = rnd({e}, 4);
    // Cross attention through the fused op, with padding.
    require_gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
          nn::MultiheadAttentionArgs<double> a;
          a.need_weights = false;
          a.key_padding_mask = kpm;
          return nn::multi_head_attention_forward<double>(in[0], in[1], in[2], h, {in[3], in[4], in[5], in[6]}, a, o)
              .output;
        },
        {noncontiguous(q), k, noncontiguous(v), noncontiguous(p.in_proj_weight), p.in_proj_bias,
         noncontiguous(p.out_proj_weight), noncontiguous(p.out_proj_bias)});
    // The explicit path: bool mask, additive bias, padding, per-head weights into the loss.
    require_gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
          nn::MultiheadAttentionArgs<double> a;
          a.key_padding_mask = kpm;
          a.attn_mask = am;
          a.attn_bias = in[7];
          a.average_attn_weights = false;
          auto r = nn::multi_head_attention_forward<double>(in[0], in[1], in[1], h, {in[2], in[3], in[4], in[5]}, a, o);
          return add(sum(mul(r.output, in[6])), sum(mul(r.weights, r.weights)));
        },
        {q, noncontiguous(k), p.in_proj_weight, noncontiguous(p.in_proj_bias), p.out_proj_weight, p.out_proj_bias,
         proj, rnd({l, s}, 5)});
    // Self attention (one projection GEMM), causal, without biases.
    const auto pb = random_params(e, 50, false);
    require_gradcheck(
        [&](const std::vector<Tensor<double>>& in) {
          nn::MultiheadAttentionArgs<double> a;
          a.need_weights = false;
          a.is_causal = true;
          return nn::multi_head_attention_forward<double>(in[0], in[0], in[0], h, {in[1], {}, in[2], {}}, a, o).output;
        },
        {noncontiguous(rnd(qs, 6)), pb.in_proj_weight, noncontiguous(pb.out_proj_weight)});
  }
}

TEST_CASE("multi_head_attention_forward compiles and runs for half and bfloat16 (computed in float)") {
  const auto p = random_params(8, 60);
  auto cast = [](const Tensor<double>& t) { return t.to<float>(); };
  const nn::MultiheadAttentionParams<float> pf{cast(p.in_proj_weight), cast(p.in_proj_bias), cast(p.out_proj_weight),
                                               cast(p.out_proj_bias)};
  const Tensor<float> x = uniform_random<float>({3, 2, 8}, 7, -1, 1);
  nn::MultiheadAttentionArgs<float> af;
  af.need_weights = false;
  const Tensor<float> ref = nn::multi_head_attention_forward<float>(x, x, x, 2, pf, af).output;
  auto run = [&](auto tag) {
    using U = decltype(tag);
    const nn::MultiheadAttentionParams<U> pu{pf.in_proj_weight.to<U>(), pf.in_proj_bias.to<U>(),
                                             pf.out_proj_weight.to<U>(), pf.out_proj_bias.to<U>()};
    const Tensor<U> xu = x.to<U>();
    nn::MultiheadAttentionArgs<U> a;
    a.need_weights = false;
    return nn::multi_head_attention_forward<U>(xu, xu, xu, 2, pu, a).output.template to<float>();
  };
  require_allclose(run(half{}), ref, 2e-2, 2e-2, "half");
  require_allclose(run(bfloat16{}), ref, 1e-1, 5e-2, "bfloat16");
}

}  // namespace test_multihead_attention
