// The reductions on CUDA (ops/reduce/cuda.cuh) against the CPU reference,
// forward and backward: sum and mean (and the broadcast backward they make
// possible), amax / amin, max / min with indices, var and logsumexp.
//
// Without a GPU: the kernels are registered. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): random inputs (never
// zeros) over every dim pattern of a 3-D tensor, short rows (one warp each)
// and long ones (one block each), ties, NaN and infinite rows, in float,
// double, half and bfloat16.
#include <cuda_runtime.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

// Equal element for element, NaN matching NaN (the extremes copy values, so no tolerance).
template <class T>
void require_same(const Tensor<T>& actual, const Tensor<T>& expected, const std::string& what) {
  INFO(what);
  REQUIRE(actual.shape() == expected.shape());
  const auto a = actual.to(kCPU).to_vector(), b = expected.to_vector();
  for (size_t i = 0; i < a.size(); ++i) {
    const double da = static_cast<double>(a[i]), db = static_cast<double>(b[i]);
    INFO("element " << i << ": " << da << " vs " << db);
    REQUIRE((da == db || (std::isnan(da) && std::isnan(db))));
  }
}

// x rounded to multiples of 1/2: rows with ties.
template <class T>
Tensor<T> on_grid(const Tensor<T>& x) {
  std::vector<T> v = x.to_vector();
  for (T& e : v) e = static_cast<T>(std::round(static_cast<float>(e) * 2.0f) / 2.0f);
  return from_vector<T>(v, x.shape());
}

// x on the CPU and on the GPU as leaves, the reduction f of each, then the
// backward of a random gradient through both.
template <class T, class F>
std::pair<Tensor<T>, Tensor<T>> both(const Tensor<T>& x, F&& f, uint64_t seed, Tensor<T>* dxc, Tensor<T>* dxg) {
  Tensor<T> xc = x.clone(), xg = x.to(kGPU);
  xc.set_requires_grad();
  xg.set_requires_grad();
  const Tensor<T> yc = f(xc), yg = f(xg);
  REQUIRE(yg.device() == kGPU);
  const Tensor<T> g = rnd<T>(yc.shape(), seed, 0.5, 1.5);
  yc.backward(g);
  yg.backward(g.to(kGPU));
  *dxc = xc.grad();
  *dxg = xg.grad().to(kCPU);
  return {yc, yg.to(kCPU)};
}

}  // namespace

TEST_CASE("sum and mean have CUDA kernels for float, double, half and bfloat16") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
    for (const char* op : {"sum", "mean"}) {
      INFO(op << " " << dtype_name(dt));
      CHECK(r.find<SumRowsKernel<float>>(op, dt, DeviceType::cuda) != nullptr);
    }
  CHECK(r.find<SumRowsKernel<float>>("sum", DType::i64, DeviceType::cuda) == nullptr);
}

TEST_CASE("amax, amin, max, min, var and logsumexp have CUDA kernels, forward and backward") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
    for (const std::string op : {"amax", "amin", "max", "min", "var", "logsumexp"}) {
      INFO(op << " " << dtype_name(dt));
      CHECK(r.find<RowStatKernel<float>>(op, dt, DeviceType::cuda) != nullptr);
      CHECK(r.find<RowStatBackwardKernel<float>>(op + "_backward", dt, DeviceType::cuda) != nullptr);
    }
}

TEMPLATE_TEST_CASE("sum and mean on CUDA equal the CPU over every dim pattern, forward and backward", "[gpu]", float,
                   double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const Shape shape{7, 33, 5};
  const std::vector<std::vector<int64_t>> patterns{{}, {0}, {1}, {2}, {0, 1}, {0, 2}, {1, 2}, {-1, 0}};
  uint64_t seed = 10;
  for (const auto& dims : patterns) {
    for (bool keepdim : {false, true}) {
      for (bool is_mean : {false, true}) {
        INFO((is_mean ? "mean" : "sum") << " over " << dims.size() << " dims (first " << (dims.empty() ? 99 : dims[0])
                                        << "), keepdim " << keepdim);
        const Tensor<T> x = rnd<T>(shape, ++seed);
        Tensor<T> xc = x.clone(), xg = x.to(kGPU);
        xc.set_requires_grad();
        xg.set_requires_grad();
        auto f = [&](const Tensor<T>& t) { return is_mean ? mean(t, dims, keepdim) : sum(t, dims, keepdim); };
        const Tensor<T> yc = f(xc), yg = f(xg);
        REQUIRE(yg.device() == kGPU);
        REQUIRE(yg.shape() == yc.shape());
        int64_t n = 1;
        if (dims.empty()) n = x.numel();
        for (int64_t d : dims) n *= shape[static_cast<size_t>(d < 0 ? d + 3 : d)];
        const double tol = order_tolerance<T>(n, 8, 2);
        require_allclose(yg.to(kCPU), yc, tol, tol, "forward");
        const Tensor<T> g = rnd<T>(yc.shape(), ++seed, -1, 1);
        yc.backward(g);
        yg.backward(g.to(kGPU));
        require_allclose(xg.grad().to(kCPU), xc.grad(), tol, tol, "backward");
      }
    }
  }
}

TEMPLATE_TEST_CASE("sum on CUDA: long rows (one block each), a transposed input, a 0-dim tensor, empty rows", "[gpu]",
                   float, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  for (const Shape& shape : {Shape{3, 2047}, Shape{3, 2048}, Shape{2, 100003}, Shape{1, 1}}) {
    INFO("shape " << shape_str(shape));
    const Tensor<T> x = rnd<T>(shape, 40 + shape[1]);
    const double tol = order_tolerance<T>(shape[1], 8, 2);
    require_allclose(sum(x.to(kGPU), {1}, false).to(kCPU), sum(x, {1}, false), tol, tol, "rows");
    require_allclose(sum(x.to(kGPU).t(), {0}, false).to(kCPU), sum(x.t(), {0}, false), tol, tol, "transposed");
  }
  const Tensor<T> scalar = full<T>({}, T(1.5f));
  CHECK(static_cast<float>(sum(scalar.to(kGPU), {}, false).to(kCPU).item()) == 1.5f);
  // Rows of zero elements: sum 0, mean NaN (0 / 0), as on the CPU.
  const Tensor<T> empty_rows = Tensor<T>::empty({4, 0}, kGPU);
  require_allclose(sum(empty_rows, {1}, false).to(kCPU), zeros<T>({4}), 0, 0, "empty rows");
  CHECK(std::isnan(static_cast<float>(mean(empty_rows, {1}, false).to(kCPU).to_vector()[0])));
}

TEMPLATE_TEST_CASE("the backward of a broadcast op sums on CUDA (sum_to)", "[gpu]", float, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const Tensor<T> a = rnd<T>({6, 33, 5}, 1), b = rnd<T>({33, 1}, 2), g = rnd<T>({6, 33, 5}, 3, -1, 1);
  Tensor<T> ac = a.clone(), bc = b.clone(), ag = a.to(kGPU), bg = b.to(kGPU);
  for (Tensor<T>* t : {&ac, &bc, &ag, &bg}) t->set_requires_grad();
  mul(ac, bc).backward(g);
  mul(ag, bg).backward(g.to(kGPU));
  const double tol = order_tolerance<T>(30, 8, 2);
  require_allclose(ag.grad().to(kCPU), ac.grad(), tol, tol, "gradient of a [6, 33, 5]");
  require_allclose(bg.grad().to(kCPU), bc.grad(), tol, tol, "gradient of b [33, 1]");
}

TEMPLATE_TEST_CASE("amax, amin, var and logsumexp on CUDA equal the CPU over every dim pattern, forward and backward",
                   "[gpu]", float, double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const Shape shape{7, 33, 5};
  const std::vector<std::vector<int64_t>> patterns{{}, {0}, {1}, {2}, {0, 2}, {1, 2}, {-1, 0}};
  uint64_t seed = 100;
  for (const auto& dims : patterns) {
    int64_t n = dims.empty() ? 7 * 33 * 5 : 1;
    for (int64_t d : dims) n *= shape[static_cast<size_t>(d < 0 ? d + 3 : d)];
    for (bool keepdim : {false, true}) {
      INFO("over " << dims.size() << " dims (first " << (dims.empty() ? 99 : dims[0]) << "), keepdim " << keepdim);
      const Tensor<T> x = rnd<T>(shape, ++seed);
      // Every fourth input also on a coarse grid, so that rows have ties.
      const Tensor<T> tied = seed % 4 ? x : on_grid(x);
      Tensor<T> dc, dg;
      for (bool largest : {true, false}) {
        INFO((largest ? "amax" : "amin"));
        const auto [yc, yg] = both(
            tied, [&](const Tensor<T>& t) { return largest ? amax(t, dims, keepdim) : amin(t, dims, keepdim); },
            ++seed, &dc, &dg);
        require_same(yg, yc, "values");
        require_same(dg, dc, "gradient (split evenly among ties)");
      }
      const double tol = order_tolerance<T>(n, 8, 2);
      for (int64_t correction : {0, 1}) {
        INFO("var, correction " << correction);
        const auto [yc, yg] =
            both(x, [&](const Tensor<T>& t) { return var(t, dims, correction, keepdim); }, ++seed, &dc, &dg);
        require_allclose(yg, yc, tol, tol, "values");
        require_allclose(dg, dc, tol, tol, "gradient");
      }
      INFO("logsumexp");
      const auto [yc, yg] = both(x, [&](const Tensor<T>& t) { return logsumexp(t, dims, keepdim); }, ++seed, &dc, &dg);
      require_allclose(yg, yc, tol, tol, "values");
      require_allclose(dg, dc, tol, tol, "gradient");
    }
  }
}

TEMPLATE_TEST_CASE("max and min along a dim on CUDA: the CPU's values, first indices and gradients", "[gpu]", float,
                   double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  uint64_t seed = 300;
  for (const Shape& shape : {Shape{7, 33, 5}, Shape{3, 1500, 2}, Shape{1}}) {
    for (int64_t dim = 0; dim < static_cast<int64_t>(shape.size()); ++dim) {
      for (bool keepdim : {false, true}) {
        INFO("shape " << shape_str(shape) << ", dim " << dim << ", keepdim " << keepdim);
        const Tensor<T> x = on_grid(rnd<T>(shape, ++seed));  // many ties: the first index must win
        for (bool largest : {true, false}) {
          INFO((largest ? "max" : "min"));
          Tensor<T> xc = x.clone(), xg = x.to(kGPU);
          xc.set_requires_grad();
          xg.set_requires_grad();
          const auto rc = largest ? max(xc, dim, keepdim) : min(xc, dim, keepdim);
          const auto rg = largest ? max(xg, dim, keepdim) : min(xg, dim, keepdim);
          REQUIRE(rg.second.device() == kGPU);
          require_same(rg.first, rc.first, "values");
          CHECK(rg.second.to(kCPU).to_vector() == rc.second.to_vector());
          const Tensor<T> g = rnd<T>(rc.first.shape(), ++seed, 0.5, 1.5);
          rc.first.backward(g);
          rg.first.backward(g.to(kGPU));
          require_same(xg.grad(), xc.grad(), "gradient (to the chosen index only)");
        }
      }
    }
  }
}

TEMPLATE_TEST_CASE("row statistics on CUDA: long rows (one block each), NaN, infinities, correction past the count",
                   "[gpu]", float, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  for (int64_t n : {1023, 1024, 100003}) {
    INFO("rows of " << n);
    const Tensor<T> x = rnd<T>({3, n}, 500 + n);
    const double tol = order_tolerance<T>(n, 8, 2);
    require_same(amax(x.to(kGPU), {1}, false), amax(x, {1}, false), "amax");
    const auto [vc, ic] = min(x, 1, false);
    const auto [vg, ig] = min(x.to(kGPU), 1, false);
    require_same(vg, vc, "min");
    CHECK(ig.to(kCPU).to_vector() == ic.to_vector());
    require_allclose(var(x.to(kGPU), {1}, 1, false).to(kCPU), var(x, {1}, 1, false), tol, tol, "var");
    require_allclose(logsumexp(x.to(kGPU), {1}, false).to(kCPU), logsumexp(x, {1}, false), tol, tol, "logsumexp");
  }
  // Row 0: a NaN in the middle (amax and max give NaN and its index); row 1: all -inf (logsumexp -inf, gradient 0);
  // row 2: +inf (logsumexp +inf).
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const Tensor<T> x =
      tensor<float>({1, 5, nan, 7, nan, -inf, -inf, -inf, -inf, -inf, 0, inf, 2, 3, 4}, {3, 5}).template to<T>();
  require_same(amax(x.to(kGPU), {1}, false), amax(x, {1}, false), "amax");
  require_same(amin(x.to(kGPU), {1}, false), amin(x, {1}, false), "amin");
  const auto [vc, ic] = max(x, 1, false);
  const auto [vg, ig] = max(x.to(kGPU), 1, false);
  require_same(vg, vc, "max");
  CHECK(ig.to(kCPU).to_vector() == std::vector<int64_t>{2, 0, 1});
  CHECK(ic.to_vector() == std::vector<int64_t>{2, 0, 1});
  Tensor<T> dc, dg;
  const auto [lc, lg] = both(x, [](const Tensor<T>& t) { return logsumexp(t, {1}, false); }, 7, &dc, &dg);
  require_same(lg, lc, "logsumexp of NaN, -inf and +inf rows");
  require_same(dg, dc, "its gradient");
  // correction >= n: dof 0, so inf or NaN, as on the CPU.
  const Tensor<T> y = rnd<T>({2, 3}, 8);
  require_same(var(y.to(kGPU), {1}, 3, false), var(y, {1}, 3, false), "var with correction = n");
}
