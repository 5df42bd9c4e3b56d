// clip_loss's CUDA kernels (ops/loss/cuda.cuh) against the CPU reference, from
// plain C++ through the public op, as a user program calls them.
//
// Without a GPU: the kernels are registered for float, half and bfloat16.
// With a GPU (cases tagged [gpu]; without one each prints "skipped: no CUDA
// device" and CTest reports it skipped): loss and all three gradients at
// B in {1, 7, 64, 1000, 4097}, gathered layouts, the clamp, D = 768, and the
// shared-memory limit on D. The reference is the double CPU op on the same
// (rounded) inputs.
#include <cuda_runtime.h>

#include "mamclip/ops/loss/clip.hpp"
#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

// Rows L2-normalised, as CLIP's features are (the op uses them as given).
Tensor<double> features(int64_t rows, int64_t dim, uint64_t seed) {
  return normalize(uniform_random<double>({rows, dim}, seed, -1, 1));
}

struct Case {
  const char* name;
  int64_t images, texts, dim;
  ClipLossOptions opts;
  double log_scale = 2.6592;  // log(1 / 0.07), CLIP's initial value
};

// Largest |x|, the scale gradient tolerances are relative to (single entries may cancel to ~0).
double max_abs(const Tensor<double>& x) { return x.numel() ? amax(abs(x)).item() : 0.0; }

// Runs the op on the GPU in T and on the CPU in double from the same rounded inputs; compares the
// loss (relative tol) and the gradients (tol relative to each gradient's largest entry).
template <class T>
void check_case(const Case& c, double tol) {
  INFO(c.name << " (" << c.images << " images, " << c.texts << " texts, D = " << c.dim << ", " << dtype_name(dtype_v<T>)
               << ")");
  const auto img = features(c.images, c.dim, 1).template to<T>(), txt = features(c.texts, c.dim, 2).template to<T>();
  const auto ls = tensor<double>({c.log_scale}).template to<T>();
  auto ir = img.template to<double>().set_requires_grad(), tr = txt.template to<double>().set_requires_grad(),
       lr = ls.template to<double>().set_requires_grad();
  auto yr = clip_loss(ir, tr, lr, c.opts);
  yr.backward();
  auto ig = img.to(kGPU).set_requires_grad(), tg = txt.to(kGPU).set_requires_grad(), lg = ls.to(kGPU).set_requires_grad();
  auto yg = clip_loss(ig, tg, lg, c.opts);
  REQUIRE(yg.device() == kGPU);
  yg.backward();
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  const double loss = static_cast<double>(yg.to(kCPU).item());
  // An absolute floor too: with B = 1 the loss and its gradients are exactly 0, and the GPU's
  // row and column log-sum-exps round apart from its diagonal by a few float ulps.
  CHECK(loss == Approx(yr.item()).epsilon(tol).margin(tol));
  const auto di = ig.grad().to(kCPU).template to<double>(), dt = tg.grad().to(kCPU).template to<double>();
  require_allclose(di, ir.grad(), tol * std::max(max_abs(ir.grad()), 1e-3), tol, "d image");
  require_allclose(dt, tr.grad(), tol * std::max(max_abs(tr.grad()), 1e-3), tol, "d text");
  const double dls = static_cast<double>(lg.grad().to(kCPU).item());
  CHECK(dls == Approx(lr.grad().item()).epsilon(tol).margin(tol * std::max(1.0, std::abs(lr.grad().item()))));
}

const std::vector<Case> kCases = {
    {"B = 1", 1, 1, 100, {}},
    {"B = 7", 7, 7, 100, {}},
    {"B = 64", 64, 64, 100, {}},
    {"B = 1000", 1000, 1000, 100, {}},
    {"B = 4097", 4097, 4097, 100, {}},
    {"B = 65, gathered texts", 65, 197, 72, {.label_offset = 100}},
    {"B = 33, gathered images and texts", 131, 140, 40, {.label_offset = 70, .image_offset = 66, .batch = 33}},
    {"clamped scale", 130, 130, 48, {.max_logit_scale = 4.0}, 4.7},
    {"D = 768", 300, 300, 768, {}},
    // Rows of 13 elements: no 16-byte loads; the 16-bit accumulator's last fragment half outside D.
    {"D = 13", 37, 37, 13, {}},
    // 93 column tiles in splits of 2 on a 132-SM device (47 splits, the last one tile): lse carried
    // across tiles within a split and a ragged last split.
    {"ragged splits, gathered texts", 130, 5950, 16, {.label_offset = 100}},
};

}  // namespace

TEST_CASE("the CUDA backend registers the clip_loss kernels for float, half and bfloat16") {
  auto& r = KernelRegistry::get();
  for (DType d : {DType::f32, DType::f16, DType::bf16}) {
    INFO(dtype_name(d));
    CHECK(r.find<void(void*)>("clip_loss", d, DeviceType::cuda) != nullptr);
    CHECK(r.find<void(void*)>("clip_loss_backward", d, DeviceType::cuda) != nullptr);
  }
  CHECK(r.find<void(void*)>("clip_loss", DType::f64, DeviceType::cuda) == nullptr);
}

TEST_CASE("clip_loss on CUDA in float matches the CPU reference", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  for (const auto& c : kCases) check_case<float>(c, 2e-5);
}

TEST_CASE("clip_loss on CUDA in bfloat16 and half (tensor-core tiles) matches the CPU reference", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  // 16-bit products of normalised features, float accumulation, dS rounded once to 16 bits for the backward's
  // tensor cores (emulated in tests/ops/test_clip_loss.cpp: 0.3-0.5 % of the largest gradient in bfloat16),
  // outputs rounded to 16 bits: ~2^-8 relative.
  for (const auto& c : kCases) check_case<bfloat16>(c, 2e-2);
  for (const auto& c : {kCases[2], kCases[5]}) check_case<f16>(c, 4e-3);
}

// Small shapes through every shared-memory path (16-byte and scalar chunk loads, tensor-core and
// FMA accumulation, gathered bands), cheap enough for compute-sanitizer's racecheck, which
// benchmarks/gpu_check.sh runs on the "[race]" cases.
TEST_CASE("clip_loss on CUDA: small shapes for racecheck", "[gpu][race]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  check_case<bfloat16>(kCases[6], 2e-2);  // B = 33, gathered images and texts
  check_case<f16>(kCases[9], 4e-3);       // D = 13
  check_case<float>(kCases[5], 2e-5);     // B = 65, gathered texts
}

TEST_CASE("clip_loss on CUDA: only the wanted gradients, and the limit on D", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  const auto img = features(50, 24, 3).to<float>(), txt = features(50, 24, 4).to<float>();
  auto lr = tensor<double>({2.0}).set_requires_grad();
  auto yr = clip_loss(img.to<double>(), txt.to<double>(), lr);
  yr.backward();
  auto lg = tensor<float>({2.0f}).to(kGPU).set_requires_grad();
  auto yg = clip_loss(img.to(kGPU), txt.to(kGPU), lg);
  yg.backward();
  CHECK(static_cast<double>(lg.grad().to(kCPU).item()) == Approx(lr.grad().item()).epsilon(2e-5));
  // The backward keeps a [32, D] float accumulator per block in shared memory, but not for
  // d logit_scale alone.
  const auto wide = features(40, 1 << 16, 5).to<float>();
  auto lw = tensor<double>({1.0}).set_requires_grad();
  clip_loss(wide.to<double>(), wide.to<double>(), lw).backward();
  auto lwg = tensor<float>({1.0f}).to(kGPU).set_requires_grad();
  clip_loss(wide.to(kGPU), wide.to(kGPU), lwg).backward();
  CHECK(static_cast<double>(lwg.grad().to(kCPU).item()) == Approx(lw.grad().item()).epsilon(1e-4).margin(1e-6));
  auto big = wide.to(kGPU).set_requires_grad();
  auto y = clip_loss(big, big, tensor<float>({1.0f}).to(kGPU));
  MAMCLIP_REQUIRE_THROWS_WITH(y.backward(), device_error, "clip_loss: feature dim D = 65536 needs");
}
