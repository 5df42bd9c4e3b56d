// layer_norm on CUDA (ops/norm/cuda.cuh) against the CPU reference, forward
// and backward (input, weight and bias gradients).
//
// Without a GPU: the kernels are registered. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): random inputs (never
// zeros), short rows (a warp each) and long ones (a block each), row counts
// over several weight-gradient chunks, a two-dim normalized_shape, without
// weight or bias, a transposed input, in float, double, half and bfloat16.
#include <cuda_runtime.h>

#include <cmath>
#include <string>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

template <class T>
void check(const Tensor<T>& x, const Shape& normalized, bool affine, const std::string& what) {
  INFO(what << (affine ? ", weight and bias" : ", no affine"));
  const int64_t n = numel_of(normalized), rows = x.numel() / n;
  Tensor<T> xc = x.detach().clone(), xg = x.detach().to(kGPU);
  Tensor<T> wc, bc, wg, bg;
  if (affine) {
    wc = rnd<T>(normalized, 11, 0.5, 1.5);
    bc = rnd<T>(normalized, 12);
    wg = wc.to(kGPU);
    bg = bc.to(kGPU);
    for (Tensor<T>* t : {&wc, &bc, &wg, &bg}) t->set_requires_grad();
  }
  xc.set_requires_grad();
  xg.set_requires_grad();
  const bool transposed = x.dim() == 2 && !x.is_contiguous();
  const Tensor<T> yc = layer_norm(transposed ? xc.t().contiguous().t() : xc, normalized, wc, bc, 1e-5);
  const Tensor<T> yg = layer_norm(transposed ? xg.t().contiguous().t() : xg, normalized, wg, bg, 1e-5);
  REQUIRE(yg.device() == kGPU);
  const double tol = order_tolerance<T>(n, 32, 4);
  require_allclose(yg.to(kCPU), yc, tol, tol, "forward");
  const Tensor<T> g = rnd<T>(x.shape(), 13, -1, 1);
  yc.backward(g);
  yg.backward(g.to(kGPU));
  require_allclose(xg.grad().to(kCPU), xc.grad(), tol, tol, "input gradient");
  if (affine) {
    const double tol_params = order_tolerance<T>(rows, 32, 4);
    require_allclose(wg.grad().to(kCPU), wc.grad(), tol_params, tol_params, "weight gradient");
    require_allclose(bg.grad().to(kCPU), bc.grad(), tol_params, tol_params, "bias gradient");
  }
}

}  // namespace

TEST_CASE("layer_norm has CUDA kernels, forward and backward, for the float dtypes") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    INFO(dtype_name(dt));
    CHECK(r.find<LayerNormKernel<float>>("layer_norm", dt, DeviceType::cuda) != nullptr);
    CHECK(r.find<LayerNormBackwardKernel<float>>("layer_norm_backward", dt, DeviceType::cuda) != nullptr);
  }
}

TEMPLATE_TEST_CASE("layer_norm on CUDA equals the CPU, forward and all gradients", "[gpu]", float, double, f16,
                   bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  for (bool affine : {true, false}) {
    check(rnd<T>({7, 33}, 1), {33}, affine, "[7, 33]");
    check(rnd<T>({2, 3, 768}, 2), {768}, affine, "BERT rows [2, 3, 768]");
    check(rnd<T>({5, 1500}, 3), {1500}, affine, "long rows [5, 1500]");
    check(rnd<T>({600, 17}, 4), {17}, affine, "600 rows: three weight-gradient chunks");
    check(rnd<T>({3, 4, 9}, 5), {4, 9}, affine, "normalized_shape [4, 9]");
    check(rnd<T>({1, 1}, 6), {1}, affine, "one element");
    check(rnd<T>({33, 7}, 7).t(), {33}, affine, "a transposed input");
  }
}

TEST_CASE("normalize has CUDA kernels, forward and backward, for the float dtypes") {
  auto& r = KernelRegistry::get();
  for (DType dt : {DType::f32, DType::f64, DType::f16, DType::bf16}) {
    INFO(dtype_name(dt));
    CHECK(r.find<void(void*)>("normalize", dt, DeviceType::cuda) != nullptr);
    CHECK(r.find<void(void*)>("normalize_backward", dt, DeviceType::cuda) != nullptr);
  }
}

TEMPLATE_TEST_CASE("normalize on CUDA equals the CPU along any dim, for p = 2, 1 and 3, forward and backward", "[gpu]",
                   float, double, f16, bfloat16) {
  MAMCLIP_SKIP_WITHOUT_GPU();
  using T = TestType;
  struct Case {
    Shape shape;
    int64_t dim;
    double p;
  };
  // CLIP's features [B, 768] along the last dim; a middle dim (strided lanes); long lanes (a block each).
  for (const Case& c : {Case{{9, 768}, -1, 2.0}, Case{{4, 33, 5}, 1, 2.0}, Case{{3, 2000}, 1, 1.0},
                        Case{{6, 7, 3}, 0, 3.0}, Case{{5, 1}, 1, 2.0}}) {
    INFO(shape_str(c.shape) << " dim " << c.dim << " p " << c.p << " " << dtype_name(dtype_v<T>));
    const Tensor<T> x = rnd<T>(c.shape, 1), g = rnd<T>(c.shape, 2);
    auto xr = x.template to<double>().set_requires_grad();
    auto yr = normalize(xr, c.p, c.dim);
    yr.backward(g.template to<double>());
    auto xg = x.to(kGPU).set_requires_grad();
    auto yg = normalize(xg, c.p, c.dim);
    REQUIRE(yg.device() == kGPU);
    yg.backward(g.to(kGPU));
    const int64_t size = c.shape[c.dim < 0 ? c.shape.size() - 1 : c.dim];
    const double tol = order_tolerance<T>(size, 16, 2);
    require_allclose(yg.to(kCPU).template to<double>(), yr.detach(), tol, tol, "forward");
    const double gmax = amax(abs(xr.grad())).item();
    require_allclose(xg.grad().to(kCPU).template to<double>(), xr.grad(), tol * std::max(1.0, gmax), tol, "backward");
  }
}
