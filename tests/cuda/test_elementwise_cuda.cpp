// The elementwise ops on CUDA (ops/elementwise/cuda.cuh) against the CPU
// reference, forward and backward, through the public ops as a user calls them.
//
// Without a GPU: every op of elementwise.hpp has a kernel registered for every
// floating dtype. With a GPU (cases tagged [gpu]; without one each prints
// "skipped: no CUDA device"): each op on random inputs (never zeros) at sizes
// that are not multiples of 8, on a transposed (non-contiguous) input and on
// broadcast operands, in float, double, half and bfloat16.
#include <cuda_runtime.h>

#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

const std::vector<std::string> kUnaryOps{"add_scalar", "mul_scalar", "rsub_scalar", "rdiv_scalar", "pow_scalar",
                                         "neg",        "exp",        "log",         "sqrt",        "rsqrt",
                                         "abs",        "tanh",       "sigmoid",     "relu",        "clamp",
                                         "gelu",       "gelu_tanh"};
const std::vector<std::string> kBinaryOps{"add",           "sub",           "mul",
                                          "div",           "pow",           "pow_exponent_grad",
                                          "abs_backward",  "tanh_backward", "sigmoid_backward",
                                          "relu_backward", "clamp_backward", "gelu_backward",
                                          "gelu_tanh_backward", "drop_path"};

// Tolerances: CUDA's float functions are within 2 ulp of the host's, and a
// 16-bit result may then round to the neighbouring value; a backward step
// compounds the forward's difference once.
template <class T>
double tolerance() {
  if constexpr (std::is_same_v<T, f16> || std::is_same_v<T, bfloat16>) return 2 * dtype_eps<T>();
  else return 16 * dtype_eps<T>();
}

// f on the CPU and on the GPU, forward and backward. Inputs: shapes [n] and a
// transposed [33, 5] view, made on the device (read in place through its strides).
template <class T, class F>
void check_unary(const std::string& name, F f, double lo, double hi) {
  const double tol = tolerance<T>();
  uint64_t seed = 100;
  for (const Shape& shape : {Shape{1}, Shape{7}, Shape{33}, Shape{4099}, Shape{5, 33}}) {
    INFO(name << " on shape " << shape_str(shape));
    const bool transposed = shape.size() == 2;
    const Shape stored = transposed ? Shape{shape[1], shape[0]} : shape;
    const Tensor<T> x = rnd<T>(stored, ++seed, lo, hi), g = rnd<T>(shape, ++seed, -1, 1);
    Tensor<T> xc = x.clone(), xg = x.to(kGPU);
    xc.set_requires_grad();
    xg.set_requires_grad();
    const Tensor<T> yc = f(transposed ? xc.t() : xc), yg = f(transposed ? xg.t() : xg);
    REQUIRE(yg.device() == kGPU);
    require_allclose(yg.to(kCPU), yc, tol, tol, "forward");
    yc.backward(g);
    yg.backward(g.to(kGPU));
    require_allclose(xg.grad().to(kCPU), xc.grad(), tol, tol, "backward");
  }
}

// f(a, b) on both devices: same shapes forward and backward, broadcast
// ([5, 33] with [33]) forward only (its backward sums over rows, a reduction).
template <class T, class F>
void check_binary(const std::string& name, F f, double lo_a, double hi_a, double lo_b, double hi_b) {
  const double tol = tolerance<T>();
  uint64_t seed = 200;
  for (int64_t n : {1, 7, 33, 4099}) {
    INFO(name << " on [" << n << "]");
    const Tensor<T> a = rnd<T>({n}, ++seed, lo_a, hi_a), b = rnd<T>({n}, ++seed, lo_b, hi_b),
                    g = rnd<T>({n}, ++seed, -1, 1);
    Tensor<T> ac = a.clone(), bc = b.clone(), ag = a.to(kGPU), bg = b.to(kGPU);
    for (Tensor<T>* t : {&ac, &bc, &ag, &bg}) t->set_requires_grad();
    const Tensor<T> yc = f(ac, bc), yg = f(ag, bg);
    require_allclose(yg.to(kCPU), yc, tol, tol, "forward");
    yc.backward(g);
    yg.backward(g.to(kGPU));
    require_allclose(ag.grad().to(kCPU), ac.grad(), tol, tol, "gradient of a");
    require_allclose(bg.grad().to(kCPU), bc.grad(), tol, tol, "gradient of b");
  }
  INFO(name << " broadcast [5, 33] with [33]");
  const Tensor<T> a = rnd<T>({5, 33}, ++seed, lo_a, hi_a), b = rnd<T>({33}, ++seed, lo_b, hi_b);
  require_allclose(f(a.to(kGPU), b.to(kGPU)).to(kCPU), f(a, b), tol, tol, "forward, broadcast");
  // The view is made on the device: Tensor::to packs what it copies.
  require_allclose(f(noncontiguous(a.to(kGPU)), b.to(kGPU)).to(kCPU), f(a, b), tol, tol,
                   "forward, transposed a, broadcast");
}

}  // namespace

TEST_CASE("every elementwise op has a CUDA kernel for float, double, half and bfloat16") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    for (const auto& op : kUnaryOps) {
      INFO(op << " " << dtype_name(dt));
      CHECK(r.find<UnaryKernel<float>>(op, dt, DeviceType::cuda) != nullptr);
    }
    for (const auto& op : kBinaryOps) {
      INFO(op << " " << dtype_name(dt));
      CHECK(r.find<BinaryKernel<float>>(op, dt, DeviceType::cuda) != nullptr);
    }
    CHECK(r.find<AddKernel<float>>("add_contiguous", dt, DeviceType::cuda) != nullptr);
    CHECK(r.find<BernoulliMaskKernel<float>>("dropout", dt, DeviceType::cuda) != nullptr);
    CHECK(r.find<WhereKernel<float>>("where", dt, DeviceType::cuda) != nullptr);
  }
  // Ops that have no kernel yet say so by name.
  CHECK(r.find<UnaryKernel<float>>("no_such_op", DType::f32, DeviceType::cuda) == nullptr);
}

TEMPLATE_TEST_CASE("unary elementwise ops on CUDA equal the CPU, forward and backward", "[gpu]", float, double, f16,
                   bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  using TT = Tensor<T>;
  check_unary<T>("add(x, 1.75)", [](const TT& x) { return add(x, 1.75); }, -2, 2);
  check_unary<T>("mul(x, -0.3)", [](const TT& x) { return mul(x, -0.3); }, -2, 2);
  check_unary<T>("rsub(x, 0.5)", [](const TT& x) { return rsub(x, 0.5); }, -2, 2);
  check_unary<T>("rdiv(x, 1.5)", [](const TT& x) { return rdiv(x, 1.5); }, 0.5, 2);
  check_unary<T>("pow(x, 1.7)", [](const TT& x) { return pow(x, 1.7); }, 0.2, 2);
  check_unary<T>("pow(x, 3)", [](const TT& x) { return pow(x, 3.0); }, -1.5, 1.5);
  check_unary<T>("neg", [](const TT& x) { return neg(x); }, -2, 2);
  check_unary<T>("exp", [](const TT& x) { return exp(x); }, -3, 3);
  check_unary<T>("log", [](const TT& x) { return log(x); }, 0.1, 4);
  check_unary<T>("sqrt", [](const TT& x) { return sqrt(x); }, 0.1, 4);
  check_unary<T>("rsqrt", [](const TT& x) { return rsqrt(x); }, 0.1, 4);
  check_unary<T>("abs", [](const TT& x) { return abs(x); }, -2, 2);
  check_unary<T>("tanh", [](const TT& x) { return tanh(x); }, -3, 3);
  check_unary<T>("sigmoid", [](const TT& x) { return sigmoid(x); }, -8, 8);
  check_unary<T>("relu", [](const TT& x) { return relu(x); }, -2, 2);
  check_unary<T>("clamp(x, -0.5, 0.7)", [](const TT& x) { return clamp(x, -0.5, 0.7); }, -2, 2);
  check_unary<T>("clamp(x, min 0.1)", [](const TT& x) { return clamp(x, 0.1, std::nullopt); }, -2, 2);
  check_unary<T>("gelu", [](const TT& x) { return gelu(x, GeluApproximation::none); }, -4, 4);
  check_unary<T>("gelu tanh", [](const TT& x) { return gelu(x, GeluApproximation::tanh); }, -4, 4);
}

TEMPLATE_TEST_CASE("binary elementwise ops on CUDA equal the CPU, forward and backward", "[gpu]", float, double, f16,
                   bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  using TT = Tensor<T>;
  check_binary<T>("add", [](const TT& a, const TT& b) { return add(a, b); }, -2, 2, -2, 2);
  check_binary<T>("sub", [](const TT& a, const TT& b) { return sub(a, b); }, -2, 2, -2, 2);
  check_binary<T>("mul", [](const TT& a, const TT& b) { return mul(a, b); }, -2, 2, -2, 2);
  check_binary<T>("div", [](const TT& a, const TT& b) { return div(a, b); }, -2, 2, 0.5, 2);
  check_binary<T>("pow", [](const TT& a, const TT& b) { return pow(a, b); }, 0.5, 2, -1.5, 1.5);
}

TEMPLATE_TEST_CASE("elementwise kernels on CUDA: 16-byte packs, tails and misaligned pointers", "[gpu]", float,
                   bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  auto* tanh_k = require_kernel<UnaryKernel<T>>("tanh", dtype_v<T>, kGPU);
  auto* clamp_back_k = require_kernel<BinaryKernel<T>>("clamp_backward", dtype_v<T>, kGPU);
  for (int64_t n : {1, 7, 33, 4099}) {
    // Offset 0 takes 16-byte packs (fresh blocks are 256-byte aligned); 1 element forces the scalar kernel.
    for (int64_t off : {0, 1}) {
      INFO("n = " << n << ", offset = " << off);
      const Tensor<T> x = rnd<T>({n + off}, 300 + n, -2, 2), g = rnd<T>({n + off}, 400 + n, -1, 1);
      const Tensor<T> dx = x.to(kGPU), dg = g.to(kGPU);
      Tensor<T> out = Tensor<T>::empty({n + off}, kGPU);
      out.fill_(T(7));
      tanh_k(out.data_ptr() + off, dx.data_ptr() + off, n, nullptr, 0, 0);
      Tensor<T> expected = x.clone();
      expected.narrow(0, off, n).copy_(tanh(x.narrow(0, off, n)));
      if (off) expected.data_ptr()[0] = T(7);  // untouched
      require_allclose(out.to(kCPU), expected, tolerance<T>(), tolerance<T>(), "tanh");
      // With the op's scalars: out = g where -0.5 <= x <= 0.5, else 0.
      clamp_back_k(out.data_ptr() + off, dg.data_ptr() + off, dx.data_ptr() + off, n, nullptr, -0.5, 0.5);
      const auto xv = x.to_vector(), gv = g.to_vector(), ov = out.to(kCPU).to_vector();
      for (int64_t i = off; i < n + off; ++i) {
        const float xi = static_cast<float>(xv[static_cast<size_t>(i)]);
        const T want = (xi >= -0.5f && xi <= 0.5f) ? gv[static_cast<size_t>(i)] : T(0);
        CHECK(static_cast<float>(ov[static_cast<size_t>(i)]) == static_cast<float>(want));
      }
    }
  }
}

TEMPLATE_TEST_CASE("binary ops on CUDA read broadcast, transposed and sliced operands in place (BinaryIndex)", "[gpu]",
                   float, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const double tol = tolerance<T>();
  // f on the CPU views and on the same views of GPU copies: the GPU operands
  // keep their strides (a view of a device tensor, not a copy of the view).
  auto check = [&](const std::string& what, const Tensor<T>& a, const Tensor<T>& b, auto view_a, auto view_b) {
    const Tensor<T> va = view_a(a), vb = view_b(b), ga = view_a(a.to(kGPU)), gb = view_b(b.to(kGPU));
    INFO(what << ": a " << shape_str(va.shape()) << " strides " << shape_str(ga.strides()) << ", b "
              << shape_str(vb.shape()) << " strides " << shape_str(gb.strides()));
    require_allclose(add(ga, gb).to(kCPU), add(va, vb), tol, tol, "add");
    require_allclose(mul(ga, gb).to(kCPU), mul(va, vb), tol, tol, "mul");
    require_allclose(sub(gb, ga).to(kCPU), sub(vb, va), tol, tol, "sub, operands swapped");
    require_allclose(div(ga, add(mul(gb, gb), 1.0)).to(kCPU), div(va, add(mul(vb, vb), 1.0)), tol, tol, "div");
  };
  auto same = [](const Tensor<T>& t) { return t; };
  check("per-channel scale of NCHW", rnd<T>({2, 3, 5, 7}, 1, -1, 1), rnd<T>({3, 1, 1}, 2, -1, 1), same, same);
  check("outer product", rnd<T>({5, 1}, 3, -1, 1), rnd<T>({1, 7}, 4, -1, 1), same, same);
  check("bias over 4099 columns", rnd<T>({3, 4099}, 5, -1, 1), rnd<T>({4099}, 6, -1, 1), same, same);
  check("transposed a", rnd<T>({7, 33}, 7, -1, 1), rnd<T>({7}, 8, -1, 1), [](const Tensor<T>& t) { return t.t(); },
        same);
  check("permuted a, broadcast b", rnd<T>({4, 6, 9}, 9, -1, 1), rnd<T>({9, 1, 6}, 10, -1, 1),
        [](const Tensor<T>& t) { return t.permute({2, 0, 1}); }, same);
  check("narrowed a, stepped b", rnd<T>({9, 10}, 11, -1, 1), rnd<T>({9, 12}, 12, -1, 1),
        [](const Tensor<T>& t) { return t.narrow(1, 3, 4); }, [](const Tensor<T>& t) { return t.slice(1, 1, 12, 3); });
  check("scalar operand", rnd<T>({}, 13, -1, 1), rnd<T>({2, 4099}, 14, -1, 1), same, same);
  // 8 dims that cannot merge: past BinaryIndex::kMaxDims, the op copies its operands.
  check("alternating broadcast dims", rnd<T>({2, 1, 2, 1, 2, 1, 2, 1}, 15, -1, 1),
        rnd<T>({1, 2, 1, 2, 1, 2, 1, 2}, 16, -1, 1), same, same);
}

TEMPLATE_TEST_CASE("unary ops on CUDA read transposed, sliced and expanded inputs in place (BinaryIndex)", "[gpu]",
                   float, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const double tol = tolerance<T>();
  // f on a CPU view and on the same view of a GPU copy (strided, not a copy of the view).
  auto check = [&](const std::string& what, const Tensor<T>& x, auto view) {
    const Tensor<T> v = view(x), g = view(x.to(kGPU));
    INFO(what << ": " << shape_str(v.shape()) << " strides " << shape_str(g.strides()));
    REQUIRE_FALSE(g.is_contiguous());
    require_allclose(exp(g).to(kCPU), exp(v), tol, tol, "exp");
    require_allclose(mul(g, 0.5).to(kCPU), mul(v, 0.5), tol, tol, "mul by a scalar");
    require_allclose(gelu(g).to(kCPU), gelu(v), tol, tol, "gelu");
  };
  check("transposed", rnd<T>({7, 33}, 1, -1, 1), [](const Tensor<T>& t) { return t.t(); });
  check("a q slice of a fused qkv projection", rnd<T>({5, 9, 24}, 2, -1, 1),
        [](const Tensor<T>& t) { return t.narrow(2, 8, 8); });
  check("permuted", rnd<T>({4, 6, 9}, 3, -1, 1), [](const Tensor<T>& t) { return t.permute({2, 0, 1}); });
  check("expanded rows", rnd<T>({1, 4099}, 4, -1, 1), [](const Tensor<T>& t) { return t.expand({3, 4099}); });
  // 8 dims that cannot merge: past BinaryIndex::kMaxDims, the op copies its input first.
  check("pairwise swapped dims", rnd<T>({2, 2, 2, 2, 2, 2, 2, 2}, 5, -1, 1),
        [](const Tensor<T>& t) { return t.permute({1, 0, 3, 2, 5, 4, 7, 6}); });
}

TEMPLATE_TEST_CASE("dropout on CUDA draws the CPU's Philox mask bit for bit, forward and backward", "[gpu]", float,
                   double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  for (int64_t n : {1, 7, 4099}) {
    for (double p : {0.3, 1.0}) {
      INFO("n = " << n << ", p = " << p);
      const Tensor<T> x = rnd<T>({n}, 500 + n, -2, 2), g = rnd<T>({n}, 600 + n, -1, 1);
      Tensor<T> xc = x.clone(), xg = x.to(kGPU);
      xc.set_requires_grad();
      xg.set_requires_grad();
      Generator gc(77), gg(77);
      const Tensor<T> yc = dropout(xc, p, true, gc), yg = dropout(xg, p, true, gg);
      require_allclose(yg.to(kCPU), yc, 0, 0, "forward");
      CHECK(gg.offset() == gc.offset());
      yc.backward(g);
      yg.backward(g.to(kGPU));
      require_allclose(xg.grad().to(kCPU), xc.grad(), 0, 0, "backward");
    }
  }
}

namespace {
// A random mask (true with probability p) on the CPU.
Tensor<bool> random_mask(const Shape& shape, uint64_t seed, double p) {
  std::vector<bool> m;
  for (float u : rnd<float>(shape, seed, 0, 1).to_vector()) m.push_back(u < p);
  return from_vector<bool>(m, shape);
}
}  // namespace

TEMPLATE_TEST_CASE("where and masked_fill on CUDA equal the CPU with broadcast operands, forward and backward",
                   "[gpu]", float, double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const Tensor<bool> cond = random_mask({4, 1, 5}, 1, 0.5);
  const Tensor<T> a = rnd<T>({1, 3, 5}, 2), b = rnd<T>({4, 3, 1}, 3), g = rnd<T>({4, 3, 5}, 4, -1, 1);
  Tensor<T> ac = a.clone(), bc = b.clone(), ag = a.to(kGPU), bg = b.to(kGPU);
  for (Tensor<T>* t : {&ac, &bc, &ag, &bg}) t->set_requires_grad();
  const Tensor<T> yc = where(cond, ac, bc), yg = where(cond.to(kGPU), ag, bg);
  REQUIRE(yg.device() == kGPU);
  require_allclose(yg.to(kCPU), yc, 0, 0, "where: values copied");
  yc.backward(g);
  yg.backward(g.to(kGPU));
  const double tol = order_tolerance<T>(5, 4, 1);
  require_allclose(ag.grad().to(kCPU), ac.grad(), tol, tol, "d a (summed over the broadcast dim)");
  require_allclose(bg.grad().to(kCPU), bc.grad(), tol, tol, "d b (summed over the broadcast dim)");

  // masked_fill with a transposed (non-contiguous) mask, and -inf as the fill (attention's padding mask).
  const Tensor<T> x = rnd<T>({6, 7}, 5);
  const Tensor<bool> mask = random_mask({7, 6}, 6, 0.3).t();
  Tensor<T> xc = x.clone(), xg = x.to(kGPU);
  xc.set_requires_grad();
  xg.set_requires_grad();
  const double ninf = -std::numeric_limits<double>::infinity();
  const Tensor<T> mc = masked_fill(xc, mask, ninf), mg = masked_fill(xg, mask.to(kGPU), ninf);
  const auto got = mg.to(kCPU).to_vector(), want = mc.to_vector();
  CHECK(got == want);
  const Tensor<T> h = rnd<T>({6, 7}, 7, -1, 1);
  mc.backward(h);
  mg.backward(h.to(kGPU));
  require_allclose(xg.grad().to(kCPU), xc.grad(), 0, 0, "masked_fill backward");
}
