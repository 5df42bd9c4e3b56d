// sum and mean on CUDA (ops/reduce/cuda.cuh) against the CPU reference,
// forward and backward, and the broadcast backward they make possible.
//
// Without a GPU: the kernels are registered, and the reductions without one
// say so. With a GPU (cases tagged [gpu]; without one each prints "skipped: no
// CUDA device"): random inputs (never zeros) over every dim pattern of a 3-D
// tensor, short rows (one warp each) and long ones (one block each), in
// float, double, half and bfloat16.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

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

TEST_CASE("a reduction without a CUDA kernel throws device_error naming it", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const Tensor<float> x = rnd<float>({3, 4}, 1).to(kGPU);
  MAMCLIP_REQUIRE_THROWS_WITH(amax(x, {1}, false), device_error,
                              "amax: no kernel is registered for float32 tensors on cuda:0");
}
