// scaled_dot_product_attention on CUDA (ops/attention/cuda.cuh) against the
// CPU reference in double, forward and all three gradients.
//
// Without a GPU: the kernels are registered for float, double, half and
// bfloat16. With a GPU (cases tagged [gpu]; without one each prints "skipped:
// no CUDA device"): every tensor-core head dim (32, 64, 96, 128) at L in {1,
// 17, 100, 102, 128, 257, 512}, with and without the padding mask, causal and
// dropout, Lq != Lk, heads interleaved ([B, L, H, D] views, made on the
// device) and heads one element into rows of D + 1 (the kernels' 16-bit load
// path; the others take 16-byte loads). The 16-bit
// kernels must stay within 2x the error of a naive implementation in the same
// precision (matmul, softmax, matmul, each rounded to the type: what
// unfused PyTorch computes), FlashAttention's rule; the float and double
// reference kernels within their own rounding of the double result.
#include <cuda_runtime.h>

#include <limits>
#include <string>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

struct Case {
  int64_t b, h, lq, lk, d;
  bool pad, causal;
  double p;
  bool interleave = false;
  bool misaligned = false;
};

std::string describe(const Case& c) {
  return "B " + std::to_string(c.b) + " H " + std::to_string(c.h) + " Lq " + std::to_string(c.lq) + " Lk " +
         std::to_string(c.lk) + " D " + std::to_string(c.d) + (c.pad ? " padded" : "") + (c.causal ? " causal" : "") +
         (c.p > 0 ? " dropout " + std::to_string(c.p) : "") + (c.interleave ? " interleaved" : "") +
         (c.misaligned ? " misaligned" : "");
}

// About a third of each batch's keys off; batch 1 keeps only its first 3 (right padding).
Tensor<bool> padding(int64_t b, int64_t lk) {
  Tensor<bool> m = empty<bool>({b, lk});
  for (int64_t i = 0; i < b; ++i)
    for (int64_t j = 0; j < lk; ++j)
      m(i, j) = i == 1 ? j < 3 : (j == 0 || Philox::uniform(5, 0, static_cast<uint64_t>(i * lk + j)) > 0.35);
  return m;
}

// x's values as a view in c's layout, on x's device (Tensor::to makes tensors contiguous, so the
// layout is made where the op runs): [B, H, L, D] heads of a [B, L, H, D] buffer (interleaved, as
// BERT's heads are), or one element into rows of D + 1 (misaligned: the kernels' 16-bit loads).
template <class T>
Tensor<T> in_layout(const Tensor<T>& x, const Case& c) {
  if (c.interleave) return x.detach().permute({0, 2, 1, 3}).contiguous().permute({0, 2, 1, 3}).detach();
  if (c.misaligned) {
    Shape s = x.shape();
    s.back() += 1;
    Tensor<T> view = zeros<T>(s, x.device()).narrow(3, 1, x.size(3));
    view.copy_(x.detach());
    return view;
  }
  return x.detach();
}

struct Result {
  Tensor<double> out, dq, dk, dv;
};

double max_abs_diff(const Tensor<double>& a, const Tensor<double>& b) {
  REQUIRE(a.shape() == b.shape());
  return a.numel() ? amax(abs(a - b)).item() : 0.0;
}
double max_abs(const Tensor<double>& a) { return a.numel() ? amax(abs(a)).item() : 0.0; }

// The op on `device` in T from the given inputs (already rounded to T), results in double.
template <class T>
Result run(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& g, const AttentionOptions& o,
           Device device, const Case& c) {
  Tensor<T> qd = in_layout(q.detach().to(device), c), kd = in_layout(k.detach().to(device), c),
            vd = in_layout(v.detach().to(device), c);
  for (Tensor<T>* t : {&qd, &kd, &vd}) t->set_requires_grad();
  AttentionOptions od = o;
  if (o.key_padding_mask.defined()) od.key_padding_mask = o.key_padding_mask.to(device);
  Generator gen(11);
  auto y = scaled_dot_product_attention(qd, kd, vd, od, gen);
  REQUIRE(y.device() == device);
  y.backward(g.to(device));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  auto back = [](const Tensor<T>& t) { return t.to(kCPU).template to<double>(); };
  return {back(y.detach()), back(qd.grad()), back(kd.grad()), back(vd.grad())};
}

// softmax(q kᵀ · scale + mask) [⊙ dropout] v with each op rounded to T, on the CPU.
template <class T>
Result naive(const Tensor<T>& q, const Tensor<T>& k, const Tensor<T>& v, const Tensor<T>& g, const AttentionOptions& o) {
  auto qn = q.detach().clone().set_requires_grad(), kn = k.detach().clone().set_requires_grad(),
       vn = v.detach().clone().set_requires_grad();
  const int64_t b = q.size(0), h = q.size(1), lq = q.size(2), lk = k.size(2);
  Tensor<double> bias = zeros<double>({b, h, lq, lk}), drop = empty<double>({b, h, lq, lk});
  for (int64_t n0 = 0; n0 < b; ++n0)
    for (int64_t n1 = 0; n1 < h; ++n1)
      for (int64_t i = 0; i < lq; ++i)
        for (int64_t j = 0; j < lk; ++j) {
          const bool vis = (!o.key_padding_mask.defined() || o.key_padding_mask(n0, j)) && (!o.causal || j <= i);
          if (!vis) bias(n0, n1, i, j) = -std::numeric_limits<double>::infinity();
          const uint64_t e = static_cast<uint64_t>(((n0 * h + n1) * lq + i) * lk + j);
          drop(n0, n1, i, j) = o.dropout_p > 0 ? (attention_keeps(11, 0, e, o.dropout_p) ? 1 / (1 - o.dropout_p) : 0) : 1;
        }
  const double scale = 1 / std::sqrt(static_cast<double>(q.size(3)));
  auto s = matmul(qn, kn.transpose(-1, -2)) * static_cast<T>(scale) + bias.template to<T>();
  auto p = softmax(s, -1);
  if (o.dropout_p > 0) p = p * drop.template to<T>();
  auto y = matmul(p, vn);
  y.backward(g);
  return {y.detach().template to<double>(), qn.grad().template to<double>(), kn.grad().template to<double>(),
          vn.grad().template to<double>()};
}

template <class T>
void check_case(const Case& c) {
  INFO(describe(c) << " " << dtype_name(dtype_v<T>));
  const Tensor<T> q = rnd<T>({c.b, c.h, c.lq, c.d}, 1), k = rnd<T>({c.b, c.h, c.lk, c.d}, 2),
                  v = rnd<T>({c.b, c.h, c.lk, c.d}, 3), g = rnd<T>({c.b, c.h, c.lq, c.d}, 4);
  AttentionOptions o;
  if (c.pad) o.key_padding_mask = padding(c.b, c.lk);
  o.causal = c.causal;
  o.dropout_p = c.p;
  // Generator(11)'s first stream: seed 11, offset 0 (what naive() rebuilds).
  const Result gpu = run(q, k, v, g, o, kGPU, c);
  const Result ref = run(q.template to<double>(), k.template to<double>(), v.template to<double>(),
                         g.template to<double>(), o, kCPU, c);
  const std::pair<const char*, std::pair<Tensor<double>, Tensor<double>>> parts[] = {
      {"out", {gpu.out, ref.out}}, {"dq", {gpu.dq, ref.dq}}, {"dk", {gpu.dk, ref.dk}}, {"dv", {gpu.dv, ref.dv}}};
  if constexpr (std::is_same_v<T, f16> || std::is_same_v<T, bfloat16>) {
    const Result nv = naive(q, k, v, g, o);
    const auto largest = [](const Tensor<T>& x) { return max_abs(x.template to<double>()); };
    const double dot_floor = 4 * std::numeric_limits<float>::epsilon() * static_cast<double>(c.d) * largest(g) *
                             largest(v) / std::sqrt(static_cast<double>(c.d)) * std::max(largest(q), largest(k));
    const Tensor<double> naive_parts[] = {nv.out, nv.dq, nv.dk, nv.dv};
    for (int x = 0; x < 4; ++x) {
      const auto& [name, pr] = parts[x];
      const double ours = max_abs_diff(pr.first, pr.second), base = max_abs_diff(naive_parts[x], pr.second);
      INFO(name << ": error " << ours << ", naive error " << base << ", max |ref| " << max_abs(pr.second));
      // The floor covers outputs the naive path gets exact (a single key: its softmax backward is
      // 0), where the kernel's dp (tensor cores) and dsum = dO·O (a butterfly sum), D-term float
      // dot products, differ by a few float ulps of D·|dO|·|V|, carried into dq, dk by scale·|K|, |Q|.
      CHECK(ours <= 2 * base + 1e-2 * dtype_eps<T>() * (1 + max_abs(pr.second)) + dot_floor);
    }
  } else {
    // The lse is saved in float (the kernel contract), so double results carry ~1e-7 relative error.
    const double tol = std::is_same_v<T, float> ? 2e-5 : 1e-6;
    for (const auto& [name, pr] : parts) {
      INFO(name);
      CHECK(max_abs_diff(pr.first, pr.second) <= tol * (1 + max_abs(pr.second)));
    }
  }
}

}  // namespace

TEST_CASE("the CUDA backend registers the attention kernels for float, double, half and bfloat16") {
  auto& r = KernelRegistry::get();
  for (DType d : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    INFO(dtype_name(d));
    CHECK(r.find<void(void*)>("scaled_dot_product_attention", d, DeviceType::cuda) != nullptr);
    CHECK(r.find<void(void*)>("scaled_dot_product_attention_backward", d, DeviceType::cuda) != nullptr);
  }
}

TEMPLATE_TEST_CASE("flash attention on CUDA: every head dim and length, masks, dropout, within 2x naive error",
                   "[gpu]", bfloat16, f16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  int variant = 0;
  for (int64_t d : {32, 64, 96, 128})
    for (int64_t l : {1, 17, 100, 102, 128, 257, 512}) {
      // Rotate the options over the lengths so that every head dim meets each of them. No dropout
      // with a single key: there the naive gradients of q and k are exactly 0, while the kernel's
      // dsum = dO·O carries O's 16-bit rounding of the dropout factor (as FlashAttention-2's does),
      // so "within 2x naive" cannot hold; longer rows test dropout.
      const int v = variant++ % 4;
      const double p = v == 3 && l > 1 ? 0.1 : 0.0;
      check_case<T>({2, 2, l, l, d, v == 1 || v == 3, v == 2 || v == 3, p, v == 2});
    }
  check_case<T>({2, 3, 33, 130, 64, true, false, 0.2});  // Lq < Lk
  check_case<T>({1, 2, 130, 33, 96, false, true, 0.0});  // Lq > Lk, causal top-left
  check_case<T>({3, 12, 128, 128, 64, true, false, 0.0, true});  // PubMedBERT's shape, interleaved heads
  check_case<T>({2, 8, 102, 102, 96, false, false, 0.0, true});  // the fusion block
  // B · H = 132000 (batch, head) pairs: more than grid.y's 65535, spread over grid.z.
  check_case<T>({66000, 2, 3, 5, 32, true, false, 0.0});
  // Heads one element into rows of D + 1: the 16-bit load path (the cases above take 16-byte loads).
  check_case<T>({2, 3, 100, 67, 64, true, false, 0.0, false, true});
  check_case<T>({1, 2, 33, 33, 128, false, true, 0.1, false, true});
}

// Small shapes that take every shared-memory path of the tensor-core kernels (cp.async pipeline
// over one and several key tiles, causal tile skips, the synchronous loads of misaligned heads,
// dK/dV over several query tiles), cheap enough for compute-sanitizer's racecheck, which
// benchmarks/gpu_check.sh runs on the "[race]" cases.
TEST_CASE("flash attention on CUDA: small shapes for racecheck", "[gpu][race]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  check_case<bfloat16>({1, 2, 17, 17, 64, true, false, 0.0});
  check_case<bfloat16>({1, 1, 130, 33, 96, false, true, 0.0});
  check_case<f16>({1, 2, 33, 130, 64, true, false, 0.2});
  check_case<bfloat16>({1, 1, 70, 67, 32, true, false, 0.0, false, true});
}

TEMPLATE_TEST_CASE("attention on CUDA in float and double: the reference kernels at any head dim", "[gpu]", float,
                   double) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  for (const Case& c : {Case{2, 2, 17, 17, 6, true, false, 0.0}, Case{1, 3, 100, 100, 64, false, true, 0.1},
                        Case{2, 2, 33, 130, 96, true, false, 0.0, true}, Case{1, 1, 257, 257, 200, false, false, 0.0},
                        Case{2, 1, 1, 1, 32, false, false, 0.0}, Case{1, 70000, 2, 3, 8, false, true, 0.0}})
    check_case<T>(c);
}

TEST_CASE("attention on CUDA refuses head dims the kernels do not cover, naming the supported set", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  auto q = rnd<bfloat16>({1, 1, 4, 48}, 1).to(kGPU);
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(q, q, q), device_error,
                              "support head dims D = Dv in {32, 64, 96, 128}; got D = 48, Dv = 48");
  auto f = rnd<float>({1, 1, 4, 300}, 1).to(kGPU);
  MAMCLIP_REQUIRE_THROWS_WITH(scaled_dot_product_attention(f, f, f), device_error, "support head dims up to 256");
  // Under autocast, float inputs of a head dim the 16-bit kernels lack stay float (reference kernels).
  const Tensor<float> x = rnd<float>({1, 2, 5, 48}, 1);
  const Tensor<float> want = scaled_dot_product_attention(x, x, x);
  Tensor<float> got;
  {
    AutocastGuard amp(DeviceType::cuda);
    const Tensor<float> xg = x.to(kGPU);
    got = scaled_dot_product_attention(xg, xg, xg);
  }
  CHECK(max_abs_diff(got.to(kCPU).to<double>(), want.to<double>()) < 1e-5);
}

TEST_CASE("BERT-shaped attention on CUDA in bfloat16: a fully padded sequence gives zeros, not NaN", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  auto q = rnd<bfloat16>({2, 12, 100, 64}, 1).to(kGPU).set_requires_grad();
  Tensor<bool> m = empty<bool>({2, 100});
  for (int64_t j = 0; j < 100; ++j) {
    m(0, j) = j < 60;
    m(1, j) = false;
  }
  AttentionOptions o;
  o.key_padding_mask = m.to(kGPU);
  auto y = scaled_dot_product_attention(q, q, q, o);
  sum(y).backward();
  const auto yc = y.to(kCPU).to<double>(), gc = q.grad().to(kCPU).to<double>();
  CHECK(max_abs(yc.select(0, 1)) == 0.0);
  CHECK(std::isfinite(amax(abs(gc)).item()));
  CHECK(max_abs(yc.select(0, 0)) > 0.0);
}
