// nll_loss and cross_entropy on CUDA (ops/loss/class_cuda.cuh), and mse_loss
// (composed of elementwise ops and a reduction), against the CPU reference,
// forward and backward.
//
// Without a GPU: the kernels are registered. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): random logits (never
// zeros), [N, C] and [N, C, d] inputs, ignored targets, label smoothing, every
// reduction, a batch that is all ignored, in float, double, half and bfloat16.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

// Targets for `samples` samples of `classes` classes, every third one ignored (-100).
Tensor<int64_t> targets(const Shape& shape, int64_t classes, uint64_t seed) {
  Generator g(seed);
  Tensor<int64_t> t = randint<int64_t>(0, classes, shape, g);
  int64_t* p = t.data_ptr();
  for (int64_t i = 0; i < t.numel(); i += 3) p[i] = -100;
  return t;
}

template <class T>
void check(const Tensor<T>& input, const Tensor<int64_t>& target, LossOptions o, bool logits, const std::string& what) {
  INFO(what << (logits ? ", cross_entropy" : ", nll_loss") << ", reduction " << static_cast<int>(o.reduction)
            << ", smoothing " << o.label_smoothing);
  const int64_t classes = input.size(input.dim() == 1 ? 0 : 1);
  const double tol = order_tolerance<T>(classes * std::max<int64_t>(1, target.numel()), 32, 4);
  Tensor<T> xc = input.clone(), xg = input.to(kGPU);
  xc.set_requires_grad();
  xg.set_requires_grad();
  auto f = [&](const Tensor<T>& x, const Tensor<int64_t>& t) {
    return logits ? cross_entropy(x, t, o) : nll_loss(x, t, o);
  };
  const Tensor<T> yc = f(xc, target), yg = f(xg, target.to(kGPU));
  REQUIRE(yg.device() == kGPU);
  require_allclose(yg.to(kCPU), yc, tol, tol, "forward");
  const Tensor<T> g = rnd<T>(yc.shape(), 31, 0.5, 1.5);
  yc.backward(g);
  yg.backward(g.to(kGPU));
  require_allclose(xg.grad().to(kCPU), xc.grad(), tol, tol, "backward");
}

}  // namespace

TEST_CASE("nll_loss and cross_entropy have CUDA kernels for the float dtypes") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16})
    for (const char* op : {"nll_loss", "cross_entropy"}) {
      INFO(op << " " << dtype_name(dt));
      CHECK(r.find<ClassLossKernel<float>>(op, dt, DeviceType::cuda) != nullptr);
      CHECK(r.find<ClassLossBackwardKernel<float>>(std::string(op) + "_backward", dt, DeviceType::cuda) != nullptr);
    }
}

TEMPLATE_TEST_CASE("nll_loss and cross_entropy on CUDA equal the CPU, forward and backward", "[gpu]", float, double,
                   f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const Tensor<T> x2 = rnd<T>({37, 5}, 1, -3, 3), x3 = rnd<T>({4, 7, 6}, 2, -3, 3), wide = rnd<T>({9, 2000}, 3, -3, 3);
  const Tensor<int64_t> t2 = targets({37}, 5, 4), t3 = targets({4, 6}, 7, 5), tw = targets({9}, 2000, 6);
  for (Reduction red : {Reduction::mean, Reduction::sum, Reduction::none}) {
    for (double smoothing : {0.0, 0.1}) {
      LossOptions o;
      o.reduction = red;
      o.label_smoothing = smoothing;
      check(x2, t2, o, true, "[37, 5]");
      check(x3, t3, o, true, "[4, 7, 6]");
      check(wide, tw, o, true, "[9, 2000]");
    }
    LossOptions o;
    o.reduction = red;
    check(log_softmax(x2, 1).detach(), t2, o, false, "[37, 5] log-probabilities");
    check(log_softmax(x3, 1).detach(), t3, o, false, "[4, 7, 6] log-probabilities");
  }
}

TEST_CASE("cross_entropy on CUDA: a batch that is all ignored gives NaN for the mean, as on the CPU", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const Tensor<float> x = rnd<float>({3, 4}, 7, -3, 3);
  const Tensor<int64_t> t = full<int64_t>({3}, -100);
  CHECK(std::isnan(cross_entropy(x, t).item()));
  CHECK(std::isnan(cross_entropy(x.to(kGPU), t.to(kGPU)).to(kCPU).item()));
  LossOptions sum;
  sum.reduction = Reduction::sum;
  CHECK(cross_entropy(x.to(kGPU), t.to(kGPU), sum).to(kCPU).item() == 0.0f);
}

TEMPLATE_TEST_CASE("mse_loss on CUDA equals the CPU for every reduction, forward and backward", "[gpu]", float, double,
                   f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  const Tensor<T> x = rnd<T>({33, 7}, 11), y = rnd<T>({33, 7}, 12);
  for (Reduction red : {Reduction::mean, Reduction::sum, Reduction::none}) {
    INFO("reduction " << static_cast<int>(red));
    Tensor<T> xc = x.clone(), yc = y.clone(), xg = x.to(kGPU), yg = y.to(kGPU);
    for (Tensor<T>* t : {&xc, &yc, &xg, &yg}) t->set_requires_grad();
    const Tensor<T> lc = mse_loss(xc, yc, red), lg = mse_loss(xg, yg, red);
    REQUIRE(lg.device() == kGPU);
    const double tol = order_tolerance<T>(x.numel(), 8, 2);
    require_allclose(lg.to(kCPU), lc, tol, tol, "loss");
    const Tensor<T> g = rnd<T>(lc.shape(), 13, 0.5, 1.5);
    lc.backward(g);
    lg.backward(g.to(kGPU));
    require_allclose(xg.grad().to(kCPU), xc.grad(), tol, tol, "d input");
    require_allclose(yg.grad().to(kCPU), yc.grad(), tol, tol, "d target");
  }
}
