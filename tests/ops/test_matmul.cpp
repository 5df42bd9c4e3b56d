// matmul, bmm, linear: values against a naive double loop on every layout the
// GEMM path distinguishes (row-major, transposed, strided, broadcast batch,
// folded batch), half/bfloat16 against float, gradcheck, errors, and the
// device path through a registered "gemm" kernel.
#include "support/test_support.hpp"

#include <cstring>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace test_matmul {
using namespace mamclip;
using namespace mamclip::test;

namespace {

template <class T = double>
Tensor<T> rnd(const Shape& s, uint64_t seed, double lo = -1, double hi = 1) { return uniform_random<T>(s, seed, lo, hi); }

// torch.matmul by definition, in double: the value and Σ_k |a_ik||b_kj| (the scale of its rounding error).
template <class T>
std::pair<Tensor<double>, Tensor<double>> naive_matmul(const Tensor<T>& a, const Tensor<T>& b) {
  Tensor<double> a2 = a.detach().template to<double>(), b2 = b.detach().template to<double>();
  if (a.dim() == 1) a2 = a2.unsqueeze(0);
  if (b.dim() == 1) b2 = b2.unsqueeze(-1);
  const int64_t m = a2.size(-2), k = a2.size(-1), n = b2.size(-1);
  const Shape batch = broadcast_shapes(Shape(a2.shape().begin(), a2.shape().end() - 2),
                                       Shape(b2.shape().begin(), b2.shape().end() - 2), "naive");
  Shape sa = batch, sb = batch, sc = batch;
  sa.insert(sa.end(), {m, k});
  sb.insert(sb.end(), {k, n});
  sc.insert(sc.end(), {m, n});
  const auto va = a2.expand(sa).contiguous().to_vector(), vb = b2.expand(sb).contiguous().to_vector();
  std::vector<double> vc(static_cast<size_t>(numel_of(sc))), vs(vc.size());
  for (int64_t p = 0; p < numel_of(batch); ++p)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0, s_abs = 0;
        for (int64_t q = 0; q < k; ++q) {
          const double x = va[(p * m + i) * k + q] * vb[(p * k + q) * n + j];
          s += x;
          s_abs += std::abs(x);
        }
        vc[(p * m + i) * n + j] = s;
        vs[(p * m + i) * n + j] = s_abs;
      }
  Shape out = batch;
  if (a.dim() > 1) out.push_back(m);
  if (b.dim() > 1) out.push_back(n);
  return {from_vector<double>(vc, sc).reshape(out), from_vector<double>(vs, sc).reshape(out)};
}

// Every element within the rounding a GEMM in T (accumulating in acc_t<T>) may make:
// |c - ref| <= eps_T |ref| + 2 k eps_acc Σ|a||b|.
template <class T>
void require_matmul_close(const Tensor<T>& c, const std::pair<Tensor<double>, Tensor<double>>& ref, int64_t k,
                          const std::string& what) {
  INFO(what);
  REQUIRE(c.shape() == ref.first.shape());
  const auto vc = c.to_vector();
  const auto vr = ref.first.to_vector(), vs = ref.second.to_vector();
  const double eps = dtype_eps<T>(), eps_acc = dtype_eps<acc_t<T>>();
  int bad = 0;
  std::ostringstream first;
  for (size_t i = 0; i < vc.size(); ++i) {
    const double err = std::abs(static_cast<double>(vc[i]) - vr[i]);
    if (!(err <= eps * std::abs(vr[i]) + 2.0 * static_cast<double>(k) * eps_acc * vs[i]) && bad++ < 3)
      first << "element " << i << ": " << static_cast<double>(vc[i]) << " vs " << vr[i] << "\n";
  }
  INFO(first.str());
  CHECK(bad == 0);
}

using Fn = std::function<Tensor<double>(const std::vector<Tensor<double>>&)>;

}  // namespace

TEST_CASE("matmul values match a naive loop on every operand layout") {
  struct Case {
    const char* name;
    std::function<std::pair<Tensor<float>, Tensor<float>>()> make;
  };
  const std::vector<Case> cases = {
      {"2-D contiguous 5x7 @ 7x3", [] { return std::pair{rnd<float>({5, 7}, 1), rnd<float>({7, 3}, 2)}; }},
      {"transposed a", [] { return std::pair{rnd<float>({7, 5}, 3).t(), rnd<float>({7, 3}, 4)}; }},
      {"transposed b", [] { return std::pair{rnd<float>({5, 7}, 5), rnd<float>({3, 7}, 6).t()}; }},
      {"both transposed", [] { return std::pair{rnd<float>({7, 5}, 7).t(), rnd<float>({3, 7}, 8).t()}; }},
      {"step-sliced (no unit stride)",
       [] { return std::pair{rnd<float>({5, 14}, 9).slice(1, 0, 14, 2), rnd<float>({14, 3}, 10).slice(0, 1, 14, 2)}; }},
      {"broadcast rows (stride 0)", [] { return std::pair{rnd<float>({1, 7}, 11).expand({5, 7}), rnd<float>({7, 3}, 12)}; }},
      {"row slice of a wider matrix", [] { return std::pair{rnd<float>({5, 11}, 13).narrow(1, 2, 7), rnd<float>({7, 3}, 14)}; }},
      {"1-D @ 1-D", [] { return std::pair{rnd<float>({9}, 15), rnd<float>({9}, 16)}; }},
      {"1-D @ 2-D", [] { return std::pair{rnd<float>({7}, 17), rnd<float>({7, 3}, 18)}; }},
      {"2-D @ 1-D", [] { return std::pair{rnd<float>({5, 7}, 19), rnd<float>({7}, 20)}; }},
      {"1-D @ 3-D", [] { return std::pair{rnd<float>({7}, 21), rnd<float>({2, 7, 3}, 22)}; }},
      {"3-D @ 1-D", [] { return std::pair{rnd<float>({2, 5, 7}, 23), rnd<float>({7}, 24)}; }},
      {"batched, broadcast batch dims",
       [] { return std::pair{rnd<float>({2, 1, 5, 7}, 25), rnd<float>({3, 7, 4}, 26)}; }},
      {"batch folded into rows: [3,5,7] @ [7,3]", [] { return std::pair{rnd<float>({3, 5, 7}, 27), rnd<float>({7, 3}, 28)}; }},
      {"batch that does not nest: permuted [5,3,7] -> [3,5,7] @ [7,3]",
       [] { return std::pair{rnd<float>({5, 3, 7}, 29).transpose(0, 1), rnd<float>({7, 3}, 30)}; }},
      {"2-D @ batched", [] { return std::pair{rnd<float>({5, 7}, 31), rnd<float>({4, 7, 3}, 32)}; }},
      {"transposed batched operands",
       [] { return std::pair{rnd<float>({3, 7, 5}, 33).transpose(1, 2), rnd<float>({3, 6, 7}, 34).transpose(1, 2)}; }},
      {"sizes past the SIMD tile: 67x45 @ 45x33", [] { return std::pair{rnd<float>({67, 45}, 35), rnd<float>({45, 33}, 36)}; }},
      {"a single row/column", [] { return std::pair{rnd<float>({1, 7}, 37), rnd<float>({7, 1}, 38)}; }},
  };
  for (const auto& c : cases) {
    auto [a, b] = c.make();
    const auto ref = naive_matmul(a, b);
    require_matmul_close(matmul(a, b), ref, a.size(-1), c.name);
    require_matmul_close(matmul(a.to<double>(), b.to<double>()), ref, a.size(-1), std::string(c.name) + " (double)");
  }
}

TEST_CASE("matmul output shapes follow torch.matmul") {
  CHECK(matmul(rnd({4}, 1), rnd({4}, 2)).shape() == Shape{});
  CHECK(matmul(rnd({4}, 1), rnd({2, 4, 3}, 2)).shape() == Shape{2, 3});
  CHECK(matmul(rnd({2, 5, 4}, 1), rnd({4}, 2)).shape() == Shape{2, 5});
  CHECK(matmul(rnd({2, 1, 5, 4}, 1), rnd({3, 4, 6}, 2)).shape() == Shape{2, 3, 5, 6});
  // Empty dims: k == 0 gives zeros, m == 0 gives an empty result.
  auto z = matmul(zeros<double>({3, 0}), zeros<double>({0, 2}));
  CHECK(z.shape() == Shape{3, 2});
  CHECK(z.to_vector() == std::vector<double>(6, 0.0));
  CHECK(matmul(zeros<double>({0, 4}), rnd({4, 2}, 3)).shape() == Shape{0, 2});
  auto dot = matmul(tensor<double>({1, 2, 3}), tensor<double>({4, 5, 6}));
  CHECK(dot.item() == 32.0);
}

TEST_CASE("half and bfloat16 matmul compute in float within dtype-scaled tolerance") {
  auto a = rnd<float>({3, 9, 33}, 40), b = rnd<float>({33, 17}, 41);
  {
    auto ah = a.to<half>(), bh = b.to<half>();
    // Reference on the rounded half inputs: what remains is float accumulation and the final rounding to half.
    require_matmul_close(matmul(ah, bh), naive_matmul(ah, bh), 33, "half");
    require_matmul_close(matmul(ah.transpose(1, 2).contiguous().transpose(1, 2), bh.t().contiguous().t()),
                         naive_matmul(ah, bh), 33, "half, transposed operands");
    // And against the float op on the same inputs.
    require_allclose(matmul(ah, bh).to<float>(), matmul(ah.to<float>(), bh.to<float>()), 1e-6, 2 * dtype_eps<half>());
  }
  {
    auto ab = a.to<bfloat16>(), bb = b.to<bfloat16>();
    require_matmul_close(matmul(ab, bb), naive_matmul(ab, bb), 33, "bfloat16");
    require_allclose(matmul(ab, bb).to<float>(), matmul(ab.to<float>(), bb.to<float>()), 1e-6, 2 * dtype_eps<bfloat16>());
  }
  // linear in half with bias: the bias is added in float before the single rounding.
  auto x = rnd<float>({4, 33}, 42), w = rnd<float>({7, 33}, 43), bias = rnd<float>({7}, 44);
  auto yh = linear(x.to<half>(), w.to<half>(), bias.to<half>());
  auto yf = linear(x.to<half>().to<float>(), w.to<half>().to<float>(), bias.to<half>().to<float>());
  require_allclose(yh.to<float>(), yf, 1e-3, 2 * dtype_eps<half>());
}

TEST_CASE("matmul gradcheck: 1-D, transposed, strided, broadcast batch, awkward sizes") {
  const std::vector<std::pair<const char*, std::vector<Tensor<double>>>> inputs = {
      {"5x7 @ 7x3, non-contiguous", {noncontiguous(rnd({5, 7}, 1)), noncontiguous(rnd({7, 3}, 2))}},
      {"transposed views", {rnd({7, 5}, 3).t(), rnd({3, 7}, 4).t()}},
      {"1-D @ 1-D", {noncontiguous(rnd({7}, 5)), rnd({7}, 6)}},
      {"1-D @ 3-D", {rnd({7}, 7), noncontiguous(rnd({2, 7, 3}, 8))}},
      {"3-D @ 1-D", {noncontiguous(rnd({2, 5, 7}, 9)), rnd({7}, 10)}},
      {"broadcast batch [2,1,5,7] @ [3,7,4]", {rnd({2, 1, 5, 7}, 11), noncontiguous(rnd({3, 7, 4}, 12))}},
      {"shared b [3,5,7] @ [7,3]", {noncontiguous(rnd({3, 5, 7}, 13)), rnd({7, 3}, 14)}},
      {"shared a [5,7] @ [3,7,4]", {rnd({5, 7}, 15), rnd({3, 7, 4}, 16)}},
  };
  for (const auto& [name, xs] : inputs) {
    INFO(name);
    require_gradcheck([](auto& v) { return matmul(v[0], v[1]); }, xs);
  }
  // Strided and broadcast operands made inside the function, so the leaves stay plain.
  require_gradcheck([](auto& v) { return matmul(v[0].slice(1, 1, 14, 2), v[1].expand({3, 7, 4})); },
                    {rnd({5, 14}, 17), rnd({1, 7, 4}, 18)});
  // Only one side requires grad: the other's gradient is never formed.
  auto a = rnd({5, 7}, 19), b = rnd({7, 3}, 20).set_requires_grad();
  sum(matmul(a, b)).backward();
  CHECK_FALSE(a.grad().defined());
  require_allclose(b.grad(), sum(a, {0}).unsqueeze(1).expand({7, 3}), 1e-12, 1e-12, "d/db sum(a b) = colsum(a)");
}

TEST_CASE("bmm and linear gradcheck") {
  require_gradcheck([](auto& v) { return bmm(v[0], v[1]); },
                    {noncontiguous(rnd({3, 5, 7}, 1)), rnd({3, 4, 7}, 2).transpose(1, 2)});
  const std::vector<std::pair<const char*, std::vector<Tensor<double>>>> lin = {
      {"3-D x, bias", {noncontiguous(rnd({2, 3, 7}, 3)), rnd({5, 7}, 4), rnd({5}, 5)}},
      {"1-D x, bias", {rnd({7}, 6), noncontiguous(rnd({5, 7}, 7)), noncontiguous(rnd({5}, 8))}},
      {"transposed-storage weight", {rnd({9, 7}, 9), rnd({7, 5}, 10).t(), rnd({5}, 11)}},
  };
  for (const auto& [name, xs] : lin) {
    INFO(name);
    require_gradcheck([](auto& v) { return linear(v[0], v[1], v[2]); }, xs);
  }
  require_gradcheck([](auto& v) { return linear(v[0], v[1]); }, {noncontiguous(rnd({4, 3, 7}, 12)), rnd({5, 7}, 13)});
  // x seen through a view that cannot be flattened without a copy.
  require_gradcheck([](auto& v) { return linear(v[0].permute({1, 0, 2}), v[1], v[2]); },
                    {rnd({3, 4, 7}, 14), rnd({5, 7}, 15), rnd({5}, 16)});
}

TEST_CASE("linear is x @ weight^T + bias over any leading dims") {
  auto x = rnd({2, 3, 7}, 1), w = rnd({5, 7}, 2), b = rnd({5}, 3);
  auto y = linear(x, w, b);
  CHECK(y.shape() == Shape{2, 3, 5});
  auto ref = naive_matmul(x, w.t());
  require_allclose(y, ref.first + b, 1e-12, 1e-12);
  require_allclose(linear(x, w), ref.first, 1e-12, 1e-12, "no bias");
  CHECK(linear(rnd({7}, 4), w, b).shape() == Shape{5});
  // Only the weight requires grad (a frozen input): dW = g^T x, db undefined.
  auto wl = w.detach().set_requires_grad();
  sum(linear(x, wl)).backward();
  require_allclose(wl.grad(), sum(x.reshape({-1, 7}), {0}).unsqueeze(0).expand({5, 7}), 1e-12, 1e-12);
}

TEST_CASE("matmul, bmm and linear shape errors name the op and both shapes") {
  MAMCLIP_REQUIRE_THROWS_WITH(matmul(rnd({2, 3}, 1), rnd({4, 5}, 2)), shape_error,
                              "matmul: a has shape [2, 3] and b has shape [4, 5]; expected a.size(-1) == b.size(-2)");
  MAMCLIP_REQUIRE_THROWS_WITH(matmul(rnd({2, 3}, 1), rnd({4}, 2)), shape_error,
                              "matmul: a has shape [2, 3] and b has shape [4]; expected a.size(-1) == b.size(0)");
  MAMCLIP_REQUIRE_THROWS_WITH(matmul(scalar<double>(1.0), rnd({4}, 2)), shape_error,
                              "matmul: a has shape [] and b has shape [4]; expected both to have at least 1 dim");
  MAMCLIP_REQUIRE_THROWS_WITH(matmul(rnd({2, 5, 3}, 1), rnd({4, 3, 6}, 2)), shape_error,
                              "matmul: a has shape [2, 5, 3] and b has shape [4, 3, 6]; their batch dims [2] and [4] "
                              "cannot be broadcast together");
  MAMCLIP_REQUIRE_THROWS_WITH(bmm(rnd({5, 3}, 1), rnd({2, 3, 6}, 2)), shape_error,
                              "bmm: a has shape [5, 3]; expected a 3-D tensor [B, n, k]");
  MAMCLIP_REQUIRE_THROWS_WITH(bmm(rnd({2, 5, 3}, 1), rnd({3, 6}, 2)), shape_error,
                              "bmm: b has shape [3, 6]; expected a 3-D tensor [B, k, m]");
  MAMCLIP_REQUIRE_THROWS_WITH(bmm(rnd({2, 5, 3}, 1), rnd({1, 3, 6}, 2)), shape_error,
                              "bmm: a has shape [2, 5, 3] and b has shape [1, 3, 6]; expected a.size(0) == b.size(0)");
  MAMCLIP_REQUIRE_THROWS_WITH(bmm(rnd({2, 5, 3}, 1), rnd({2, 4, 6}, 2)), shape_error,
                              "bmm: a has shape [2, 5, 3] and b has shape [2, 4, 6]; expected a.size(2) == b.size(1)");
  MAMCLIP_REQUIRE_THROWS_WITH(linear(rnd({2, 6}, 1), rnd({5, 7}, 2)), shape_error,
                              "linear: x has shape [2, 6] and weight has shape [5, 7]; expected x.size(-1) == "
                              "weight.size(1) (7 in_features)");
  MAMCLIP_REQUIRE_THROWS_WITH(linear(rnd({2, 7}, 1), rnd({7}, 2)), shape_error,
                              "linear: weight has shape [7]; expected a 2-D tensor [out_features, in_features]");
  MAMCLIP_REQUIRE_THROWS_WITH(linear(rnd({2, 7}, 1), rnd({5, 7}, 2), rnd({7}, 3)), shape_error,
                              "linear: bias has shape [7]; expected [5] (weight has shape [5, 7])");
}

// ---- the device path, through a "gemm" kernel
//
// Without a real device backend in this build, the test registers a stand-in
// device whose memory is host memory and whose "gemm" kernel is a naive loop
// that follows GemmKernel's documented contract. It checks what the op passes
// (transpositions, leading dims, batch strides, beta) rather than any GPU.

namespace {


struct GemmCall {
  bool trans_a, trans_b;
  int64_t stride_a, stride_b, batch;
  double beta;
};
std::vector<GemmCall>& gemm_calls() {
  static std::vector<GemmCall> calls;
  return calls;
}

void naive_gemm_kernel(bool ta, bool tb, int64_t m, int64_t n, int64_t k, double alpha, const float* a, int64_t lda,
                       int64_t sa, const float* b, int64_t ldb, int64_t sb, double beta, float* c, int64_t ldc,
                       int64_t sc, int64_t batch) {
  gemm_calls().push_back({ta, tb, sa, sb, batch, beta});
  for (int64_t p = 0; p < batch; ++p)
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        double s = 0;
        for (int64_t q = 0; q < k; ++q)
          s += static_cast<double>(ta ? a[p * sa + q * lda + i] : a[p * sa + i * lda + q]) *
               static_cast<double>(tb ? b[p * sb + j * ldb + q] : b[p * sb + q * ldb + j]);
        float& out = c[p * sc + i * ldc + j];
        out = static_cast<float>(alpha * s + (beta == 0 ? 0.0 : beta * static_cast<double>(out)));
      }
}

void host_strided_copy(float* dst, const float* src, const Shape& shape, const Shape& strides) {
  int64_t i = 0;
  detail::for_each_offset<1>(shape, {strides}, [&](const std::array<int64_t, 1>& o) { dst[i++] = src[o[0]]; });
}
void host_fill(float* dst, int64_t n, float v) { std::fill(dst, dst + n, v); }

// True when this test installed the stand-in (no real backend was linked).
bool ensure_device() {
  static const bool stand_in = [] {
    // The stand-in device is shared with other test files of this program
    // (test support); its kernels for this file are added here.
    if (!ensure_stand_in_cuda()) return false;
    auto& r = KernelRegistry::get();
    r.add<GemmKernel<float>>("gemm", DType::f32, DeviceType::cuda, &naive_gemm_kernel);
    r.add<StridedCopyKernel<float>>("strided_copy", DType::f32, DeviceType::cuda, &host_strided_copy);
    r.add<FillKernel<float>>("fill", DType::f32, DeviceType::cuda, &host_fill);
    return true;
  }();
  return stand_in;
}

}  // namespace

TEST_CASE("matmul on a device calls the registered gemm kernel with the documented arguments") {
  const bool stand_in = ensure_device();
  const Device dev = Device::cuda(0);
  auto on_dev = [&](const Tensor<float>& t) { return t.to(dev); };
  auto check = [&](const Tensor<float>& a, const Tensor<float>& b, const char* what) {
    INFO(what);
    gemm_calls().clear();
    auto y = matmul(a, b);
    CHECK(y.device() == dev);
    require_matmul_close(y.to(kCPU), naive_matmul(a.to(kCPU), b.to(kCPU)), a.size(-1), what);
  };
  check(on_dev(rnd<float>({5, 7}, 1)), on_dev(rnd<float>({7, 3}, 2)), "plain");
  if (stand_in) CHECK((gemm_calls().size() == 1 && !gemm_calls()[0].trans_a && !gemm_calls()[0].trans_b));
  check(on_dev(rnd<float>({7, 5}, 3)).t(), on_dev(rnd<float>({3, 7}, 4)).t(), "transposed views, read in place");
  if (stand_in) CHECK((gemm_calls().size() == 1 && gemm_calls()[0].trans_a && gemm_calls()[0].trans_b));
  check(on_dev(rnd<float>({4, 5, 7}, 5)), on_dev(rnd<float>({7, 3}, 6)), "shared b: batch stride 0");
  if (stand_in) CHECK((gemm_calls().size() == 1 && gemm_calls()[0].stride_a == 35 && gemm_calls()[0].stride_b == 0 &&
                       gemm_calls()[0].batch == 4));
  check(on_dev(rnd<float>({2, 1, 5, 7}, 7)), on_dev(rnd<float>({3, 7, 4}, 8)), "broadcast batch that must be copied");
  check(on_dev(rnd<float>({5, 14}, 9)).slice(1, 0, 14, 2), on_dev(rnd<float>({7, 3}, 10)), "strided operand");
  check(on_dev(rnd<float>({5, 0}, 11)), on_dev(rnd<float>({0, 3}, 12)), "k == 0");

  // linear puts the bias in C and asks for beta = 1.
  gemm_calls().clear();
  auto x = rnd<float>({2, 3, 7}, 13), w = rnd<float>({5, 7}, 14), b = rnd<float>({5}, 15);
  auto y = linear(on_dev(x), on_dev(w), on_dev(b));
  if (stand_in) CHECK((gemm_calls().size() == 1 && gemm_calls()[0].beta == 1.0 && gemm_calls()[0].trans_b));
  require_allclose(y.to(kCPU), linear(x, w, b), 1e-5, 1e-5);

  MAMCLIP_REQUIRE_THROWS_WITH(matmul(on_dev(rnd<float>({2, 3}, 1)), rnd<float>({3, 2}, 2)), device_error,
                              "matmul: expected all tensors on one device, but a is on cuda:0 and b is on cpu");
  if (stand_in)
    MAMCLIP_REQUIRE_THROWS_WITH(matmul(rnd({2, 3}, 1).to(dev), rnd({3, 2}, 2).to(dev)), device_error,
                                "matmul: no \"gemm\" kernel is registered for float64 tensors on cuda:0");
}

// The packed kernels behind float cpu::gemm (AVX2 6×16 tiles, AVX-512 12×32),
// called directly at sizes around their register tiles and their blocks (MC
// 144, KC 256, NC 3072), on all four operand layouts with leading dimensions
// past the extent. Both kernels sum in the same order, so where the CPU runs
// both their results must be the same bits.
TEST_CASE("packed float GEMM matches a double product at awkward sizes, layouts and blockings") {
  using cpu::sgemm::Isa;
  if (!cpu::sgemm::available()) {
    WARN("skipped: this CPU or build has no AVX2+FMA GEMM kernel (float GEMMs run on Eigen here)");
    return;
  }
  const bool both = cpu::sgemm::available(Isa::avx512);
  if (!both) WARN("AVX-512 kernel not checked: this CPU or build has no AVX-512F; the AVX2 kernel is");
  struct Size {
    int64_t m, n, k;
  };
  const std::vector<Size> sizes = {{1, 1, 1},     {2, 3, 1},      {6, 16, 256},  {7, 17, 257}, {12, 32, 256},
                                   {13, 33, 300}, {25, 65, 255},  {145, 50, 20}, {150, 3090, 9},
                                   {5, 20, 600},  {289, 31, 513}, {37, 3100, 3}};
  uint64_t seed = 100;
  for (const auto& sz : sizes)
    for (int layout = 0; layout < 4; ++layout)
      for (bool accumulate : {false, true}) {
        const bool a_rows = layout & 1, b_rows = layout & 2;
        const int64_t lda = (a_rows ? sz.k : sz.m) + 3, ldb = (b_rows ? sz.n : sz.k) + 5;
        const auto a = uniform_random<float>({(a_rows ? sz.m : sz.k) * lda}, ++seed, -1, 1).to_vector();
        const auto b = uniform_random<float>({(b_rows ? sz.k : sz.n) * ldb}, ++seed, -1, 1).to_vector();
        const auto c0 = uniform_random<float>({sz.m * sz.n}, ++seed, -1, 1).to_vector();
        const int64_t a_rs = a_rows ? lda : 1, a_cs = a_rows ? 1 : lda, b_rs = b_rows ? ldb : 1, b_cs = b_rows ? 1 : ldb;
        INFO("m " << sz.m << " n " << sz.n << " k " << sz.k << " a " << (a_rows ? "row" : "col") << "-major, b "
                  << (b_rows ? "row" : "col") << "-major, accumulate " << accumulate);
        std::vector<float> c = c0;
        cpu::sgemm::gemm(sz.m, sz.n, sz.k, a.data(), a_rs, a_cs, b.data(), b_rs, b_cs, c.data(), accumulate, Isa::avx2);
        if (both) {
          std::vector<float> wide = c0;
          cpu::sgemm::gemm(sz.m, sz.n, sz.k, a.data(), a_rs, a_cs, b.data(), b_rs, b_cs, wide.data(), accumulate,
                           Isa::avx512);
          CHECK(std::memcmp(wide.data(), c.data(), c.size() * sizeof(float)) == 0);
        }
        int bad = 0;
        std::ostringstream first;
        for (int64_t i = 0; i < sz.m; ++i)
          for (int64_t j = 0; j < sz.n; ++j) {
            double ref = accumulate ? c0[i * sz.n + j] : 0.0, scale = std::abs(ref);
            for (int64_t p = 0; p < sz.k; ++p) {
              const double x = static_cast<double>(a[i * a_rs + p * a_cs]) * b[p * b_rs + j * b_cs];
              ref += x;
              scale += std::abs(x);
            }
            const double err = std::abs(c[i * sz.n + j] - ref);
            if (!(err <= 2.0 * static_cast<double>(sz.k + 1) * dtype_eps<float>() * scale) && bad++ < 3)
              first << "(" << i << ", " << j << "): " << c[i * sz.n + j] << " vs " << ref << "\n";
          }
        INFO(first.str());
        CHECK(bad == 0);
      }
}

TEST_CASE("float matmul goes through the packed kernel and still matches a naive loop") {
  // Big enough for cpu::gemm to choose the kernel (when the CPU has it), with transposed and batched operands.
  CHECK(cpu::sgemm::worthwhile(67, 130, 300) == cpu::sgemm::available());
  auto a = rnd<float>({2, 300, 67}, 40).transpose(1, 2), b = rnd<float>({300, 130}, 41);
  require_matmul_close(matmul(a, b), naive_matmul(a, b), 300, "[2,67,300] (transposed) @ [300,130]");
  auto x = rnd<float>({3, 50, 70}, 42), w = rnd<float>({90, 70}, 43);
  require_matmul_close(matmul(x, w.t()), naive_matmul(x, w.t()), 70, "[3,50,70] @ [70,90] (transposed)");
}

TEST_CASE("CPU kernels (GEMM, elementwise loops, reductions, layer norm) give the same bits on one thread and on several") {
#ifdef _OPENMP
  if (omp_get_num_procs() < 2) {
    WARN("skipped: one processor; the threaded paths would run on one thread");
    return;
  }
  const int saved = omp_get_max_threads();
  auto run = [](int threads) {
    omp_set_num_threads(threads);
    std::vector<Tensor<float>> out;
    auto a = rnd<float>({300, 200}, 50), b = rnd<float>({200, 500}, 51);  // 30M multiply-adds: threaded GEMM
    out.push_back(matmul(a, b));
    out.push_back(matmul(rnd<float>({40, 1000}, 52), rnd<float>({1000, 700}, 53)));  // few A blocks: columns split
    out.push_back(matmul(b.t(), a.t()));
    // Elementwise loops split by element index: contiguous, permuted, broadcast, three operands.
    auto x = rnd<float>({3, 257, 171}, 54), y = rnd<float>({171}, 55);
    out.push_back(exp(x));
    out.push_back(exp(x.permute({2, 0, 1})));
    out.push_back(x.permute({1, 2, 0}).contiguous());
    out.push_back(add(x.transpose(0, 2), y.unsqueeze(-1).unsqueeze(-1)));
    std::vector<bool> pick(171);
    for (size_t j = 0; j < pick.size(); ++j) pick[j] = j % 3 == 1;
    out.push_back(where(from_vector<bool>(pick, {171}), x, y.unsqueeze(0)));
    // GELU's vectorised path (forward and its backward) in fixed blocks; 131,137 elements end in a partial one.
    auto z = rnd<float>({131137}, 56, -4, 4);
    z.set_requires_grad();
    auto gz = gelu(z);
    out.push_back(gz.detach());
    sum(mul(gz, rnd<float>({131137}, 57))).backward();
    out.push_back(z.grad());
    // Reductions split by output, layer norm by rows (its weight and bias
    // gradients by columns), copies into a contiguous tensor by element.
    out.push_back(sum(rnd<float>({300, 385}, 58), {0}));
    out.push_back(mean(rnd<float>({3, 97, 31, 29}, 59), {0, 2, 3}));
    out.push_back(sum(rnd<float>({700, 300}, 60), {1}));
    auto ln_x = rnd<float>({700, 131}, 61), ln_w = rnd<float>({131}, 62), ln_b = rnd<float>({131}, 63);
    for (auto* t : {&ln_x, &ln_w, &ln_b}) t->set_requires_grad();
    auto ln_y = layer_norm(ln_x, {131}, ln_w, ln_b, 1e-5);
    out.push_back(ln_y.detach());
    sum(mul(ln_y, rnd<float>({700, 131}, 64))).backward();
    for (auto* t : {&ln_x, &ln_w, &ln_b}) out.push_back(t->grad());
    // im2col / col2im split by input channel, bias add and gradient by output channel.
    auto cx = rnd<float>({2, 37, 41, 43}, 65), cw = rnd<float>({29, 37, 3, 3}, 66), cb = rnd<float>({29}, 67);
    for (auto* t : {&cx, &cw, &cb}) t->set_requires_grad();
    auto cy = conv2d(cx, cw, cb, Conv2dOptions{{2, 2}, {1, 1}, {1, 1}, 1});
    out.push_back(cy.detach());
    sum(mul(cy, rnd<float>(cy.shape(), 68))).backward();
    for (auto* t : {&cx, &cw, &cb}) out.push_back(t->grad());
    auto filled = Tensor<float>::empty({600, 171});
    filled.copy_(y.expand({600, 171}));
    out.push_back(filled);
    return out;
  };
  const auto one = run(1), two = run(2);
  omp_set_num_threads(saved);
  for (size_t i = 0; i < one.size(); ++i) {
    INFO("result " << i);
    CHECK(one[i].to_vector() == two[i].to_vector());
  }
  // The split loops visit every element at the right offsets (against plain loops).
  const auto x = rnd<float>({3, 257, 171}, 54).to_vector();
  const auto e = two[4].to_vector(), p = two[5].to_vector();
  bool exp_ok = true, permute_ok = true;
  for (int64_t a = 0; a < 3; ++a)
    for (int64_t b = 0; b < 257; ++b)
      for (int64_t c = 0; c < 171; ++c) {
        const float v = x[(a * 257 + b) * 171 + c];
        exp_ok = exp_ok && e[(c * 3 + a) * 257 + b] == std::exp(v);
        permute_ok = permute_ok && p[(b * 171 + c) * 3 + a] == v;
      }
  CHECK(exp_ok);
  CHECK(permute_ok);
#else
  WARN("skipped: built without OpenMP, so every CPU kernel runs on one thread");
#endif
}

}  // namespace test_matmul
