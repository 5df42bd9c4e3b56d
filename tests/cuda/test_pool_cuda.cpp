// avg_pool2d and adaptive_avg_pool2d on CUDA (ops/pool/cuda.cuh) against the
// CPU reference, forward and backward.
//
// Without a GPU: the kernels are registered. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): random inputs (never
// zeros) of odd sizes, overlapping and padded windows, ceil_mode, padding
// counted or not, adaptive bins that overlap (7 -> 3) and repeat (3 -> 5), a
// non-contiguous input, in float, double, half and bfloat16.
#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

// f on a CPU and a GPU copy of x, forward and the backward of one random gradient.
template <class T, class F>
void check_pool(const Tensor<T>& x, F&& f, uint64_t seed, const std::string& what) {
  INFO(what);
  // Tensor::to packs what it copies: a non-contiguous x (transposed last dims) is rebuilt on the device.
  const bool transposed = x.dim() >= 2 && !x.is_contiguous();
  Tensor<T> xc = x.clone(), xg = transposed ? x.transpose(-1, -2).contiguous().to(kGPU).transpose(-1, -2) : x.to(kGPU);
  REQUIRE(xg.is_contiguous() == x.is_contiguous());
  xc.set_requires_grad();
  xg.set_requires_grad();
  const Tensor<T> yc = f(xc), yg = f(xg);
  REQUIRE(yg.device() == kGPU);
  const double tol = order_tolerance<T>(16, 4, 2);
  require_allclose(yg.to(kCPU), yc, tol, tol, "forward");
  const Tensor<T> g = rnd<T>(yc.shape(), seed, -1, 1);
  yc.backward(g);
  yg.backward(g.to(kGPU));
  require_allclose(xg.grad().to(kCPU), xc.grad(), tol, tol, "backward");
}

}  // namespace

TEST_CASE("avg_pool2d and adaptive_avg_pool2d have CUDA kernels, forward and backward") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
    for (const std::string op : {"avg_pool2d", "adaptive_avg_pool2d"}) {
      INFO(op << " " << dtype_name(dt));
      CHECK(r.find<AvgPoolKernel<float>>(op, dt, DeviceType::cuda) != nullptr);
      CHECK(r.find<AvgPoolBackwardKernel<float>>(op + "_backward", dt, DeviceType::cuda) != nullptr);
    }
}

TEMPLATE_TEST_CASE("avg_pool2d on CUDA equals the CPU: strides, padding, ceil_mode, count_include_pad", "[gpu]",
                   float, double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const Tensor<T> x = rnd<T>({2, 3, 13, 11}, 1);
  uint64_t seed = 10;
  for (bool ceil_mode : {false, true})
    for (bool count_pad : {true, false}) {
      const std::string mode = std::string(ceil_mode ? "ceil" : "floor") + (count_pad ? ", pad counted" : "");
      auto pool = [&](std::array<int64_t, 2> k, std::array<int64_t, 2> s, std::array<int64_t, 2> p) {
        return [=](const Tensor<T>& t) {
          return avg_pool2d(t, k, {.stride = s, .padding = p, .ceil_mode = ceil_mode, .count_include_pad = count_pad});
        };
      };
      check_pool(x, pool({2, 2}, {0, 0}, {0, 0}), ++seed, "2x2 / 2, " + mode);
      check_pool(x, pool({3, 3}, {2, 2}, {1, 1}), ++seed, "3x3 / 2 pad 1 (overlapping), " + mode);
      check_pool(x, pool({5, 3}, {1, 2}, {2, 0}), ++seed, "5x3 / (1, 2) pad (2, 0), " + mode);
    }
  check_pool(noncontiguous(x), [](const Tensor<T>& t) { return avg_pool2d(t, {3, 3}, {.stride = {1, 1}}); }, 30,
             "a non-contiguous input");
}

TEMPLATE_TEST_CASE("adaptive_avg_pool2d on CUDA equals the CPU: shrinking, overlapping and repeating bins", "[gpu]",
                   float, double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  check_pool(rnd<T>({2, 5, 7, 7}, 2), [](const Tensor<T>& t) { return adaptive_avg_pool2d(t, {1, 1}); }, 40,
             "7x7 -> 1x1 (global)");
  check_pool(rnd<T>({2, 5, 7, 9}, 3), [](const Tensor<T>& t) { return adaptive_avg_pool2d(t, {3, 4}); }, 41,
             "7x9 -> 3x4 (overlapping bins)");
  check_pool(rnd<T>({1, 2, 3, 2}, 4), [](const Tensor<T>& t) { return adaptive_avg_pool2d(t, {5, 3}); }, 42,
             "3x2 -> 5x3 (bins repeat inputs)");
}
