// softmax and log_softmax on CUDA (ops/softmax/cuda.cuh) against the CPU
// reference, forward and backward.
//
// Without a GPU: the kernels are registered. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): random inputs (never
// zeros) along every dim of a 3-D tensor, short lanes (a warp each) and long
// ones (a block each), -inf entries and a fully masked row, in float, double,
// half and bfloat16.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

template <class T>
void check(const Tensor<T>& x, int64_t dim, bool log, const std::string& what) {
  INFO(what << ", dim " << dim << (log ? ", log_softmax" : ", softmax"));
  const double tol = order_tolerance<T>(x.size(dim), 16, 2);
  // Tensor::to packs what it copies: a transposed x is transposed again on the device.
  const bool transposed = x.dim() >= 2 && !x.is_contiguous();
  Tensor<T> xc = x.clone(), xg = transposed ? x.transpose(-1, -2).contiguous().to(kGPU).transpose(-1, -2) : x.to(kGPU);
  REQUIRE(xg.is_contiguous() == x.is_contiguous());
  xc.set_requires_grad();
  xg.set_requires_grad();
  const Tensor<T> yc = log ? log_softmax(xc, dim) : softmax(xc, dim);
  const Tensor<T> yg = log ? log_softmax(xg, dim) : softmax(xg, dim);
  REQUIRE(yg.device() == kGPU);
  require_allclose(yg.to(kCPU), yc, tol, tol, "forward");
  const Tensor<T> g = rnd<T>(x.shape(), 77, -1, 1);
  yc.backward(g);
  yg.backward(g.to(kGPU));
  require_allclose(xg.grad().to(kCPU), xc.grad(), tol, tol, "backward");
}

}  // namespace

TEST_CASE("softmax and log_softmax have CUDA kernels, forward and backward, for the float dtypes") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    INFO(dtype_name(dt));
    for (const char* op : {"softmax", "log_softmax"}) CHECK(r.find<SoftmaxKernel<float>>(op, dt, DeviceType::cuda));
    for (const char* op : {"softmax_backward", "log_softmax_backward"})
      CHECK(r.find<SoftmaxBackwardKernel<float>>(op, dt, DeviceType::cuda));
  }
}

TEMPLATE_TEST_CASE("softmax and log_softmax on CUDA equal the CPU along every dim, forward and backward", "[gpu]", float,
                   double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  for (bool log : {false, true}) {
    const Tensor<T> x = rnd<T>({7, 33, 5}, 1, -3, 3);
    for (int64_t dim : {0, 1, 2, -1}) check(x, dim, log, "[7, 33, 5]");
    check(rnd<T>({3, 3001}, 2, -3, 3), 1, log, "long rows [3, 3001]");
    check(rnd<T>({1025, 2}, 3, -3, 3), 0, log, "long strided lanes [1025, 2] along dim 0");
    check(rnd<T>({1}, 4, -3, 3), 0, log, "one element");
    check(x.t(), 0, log, "a transposed input");
  }
}

TEST_CASE("softmax on CUDA: -inf entries get 0, a fully masked row is NaN, as on the CPU", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  Tensor<float> x = rnd<float>({3, 40}, 5, -3, 3);
  float* p = x.data_ptr();
  for (int j = 0; j < 40; j += 3) p[j] = -INFINITY;  // row 0: some masked
  for (int j = 0; j < 40; ++j) p[40 + j] = -INFINITY;  // row 1: all masked
  const auto want = softmax(x, 1).to_vector(), got = softmax(x.to(kGPU), 1).to(kCPU).to_vector();
  const auto want_log = log_softmax(x, 1).to_vector(), got_log = log_softmax(x.to(kGPU), 1).to(kCPU).to_vector();
  for (size_t i = 0; i < want.size(); ++i) {
    INFO("element " << i);
    if (std::isnan(want[i])) {
      CHECK(std::isnan(got[i]));
      CHECK(std::isnan(got_log[i]));
      continue;
    }
    CHECK(got[i] == Approx(want[i]).epsilon(1e-5).margin(1e-7));
    if (std::isinf(want_log[i])) CHECK(got_log[i] == want_log[i]);
    else CHECK(got_log[i] == Approx(want_log[i]).epsilon(1e-5).margin(1e-6));
  }
  CHECK(std::isnan(want[40]));
}
