// AdamW and SGD steps, and GradScaler, on CUDA (optim/cuda.cuh) against the CPU.
//
// Without a GPU: the kernels are registered. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): several steps of each
// optimizer on the same parameters and gradients on both devices, with weight
// decay, amsgrad, momentum and nesterov, at awkward sizes; the parameters and
// the optimizer state agree to a few ulp (nvcc may fuse products the CPU
// rounds separately).
#include <cuda_runtime.h>

#include <limits>
#include <string>
#include <vector>

#include "cuda/gpu_support.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;

namespace {

// Runs `steps` steps of an optimizer made by make(params) on a CPU and a GPU
// copy of the same parameters, with the same gradients each step.
template <class Make>
void check_steps(Make make, const std::string& what) {
  INFO(what);
  std::vector<Tensor<float>> cpu_params, gpu_params;
  for (int64_t n : {1, 7, 4099}) {
    Tensor<float> p = rnd<float>({n}, 10 + n);
    cpu_params.push_back(p.clone().set_requires_grad());
    gpu_params.push_back(p.to(kGPU).set_requires_grad());
  }
  auto cpu_opt = make(cpu_params);
  auto gpu_opt = make(gpu_params);
  for (int step = 0; step < 4; ++step) {
    for (size_t i = 0; i < cpu_params.size(); ++i) {
      const Tensor<float> g = rnd<float>(cpu_params[i].shape(), 100 * step + i, -1, 1);
      cpu_params[i].set_grad(g.clone());
      gpu_params[i].set_grad(g.to(kGPU));
    }
    cpu_opt.step();
    gpu_opt.step();
  }
  for (size_t i = 0; i < cpu_params.size(); ++i)
    require_allclose(gpu_params[i].detach().to(kCPU), cpu_params[i].detach(), 1e-6, 8 * dtype_eps<float>(),
                     "parameter " + std::to_string(i));
}

}  // namespace

TEST_CASE("AdamW and SGD have CUDA kernels") {
  auto& r = KernelRegistry::get();
  CHECK(r.find<optim::AdamWKernel>("adamw_step", DType::f32, DeviceType::cuda) != nullptr);
  CHECK(r.find<optim::SGDKernel>("sgd_step", DType::f32, DeviceType::cuda) != nullptr);
}

TEST_CASE("AdamW and SGD steps on CUDA equal the CPU's", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  for (bool amsgrad : {false, true}) {
    optim::AdamWOptions o;
    o.lr = 1e-2;
    o.weight_decay = 0.05;
    o.amsgrad = amsgrad;
    check_steps([&](std::vector<Tensor<float>> p) { return optim::AdamW(std::move(p), o); },
                amsgrad ? "AdamW, amsgrad" : "AdamW");
  }
  for (bool nesterov : {false, true}) {
    optim::SGDOptions o;
    o.lr = 0.1;
    o.momentum = 0.9;
    o.weight_decay = 1e-3;
    o.nesterov = nesterov;
    check_steps([&](std::vector<Tensor<float>> p) { return optim::SGD(std::move(p), o); },
                nesterov ? "SGD, nesterov" : "SGD, momentum");
  }
}

TEST_CASE("GradScaler on CUDA gradients: the CPU's unscaled gradients, skipped steps and scale", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  std::vector<Tensor<float>> cpu_params, gpu_params;
  for (int64_t n : {1, 7, 4099}) {
    const Tensor<float> p = rnd<float>({n}, 20 + n);
    cpu_params.push_back(p.clone().set_requires_grad());
    gpu_params.push_back(p.to(kGPU).set_requires_grad());
  }
  optim::SGD cpu_opt(cpu_params, {.lr = 0.1}), gpu_opt(gpu_params, {.lr = 0.1});
  optim::GradScaler cpu_scaler({.init_scale = 1024.0, .growth_interval = 2}),
      gpu_scaler({.init_scale = 1024.0, .growth_interval = 2});
  const float inf = std::numeric_limits<float>::infinity();
  for (int step = 0; step < 5; ++step) {
    INFO("step " << step);
    for (size_t i = 0; i < cpu_params.size(); ++i) {
      Tensor<float> g = rnd<float>(cpu_params[i].shape(), 200 * step + i, -1000, 1000);
      // Step 2: an inf in the last parameter's gradient (the step is skipped and the scale backs off).
      if (step == 2 && i + 1 == cpu_params.size()) g.data_ptr()[4000] = inf;
      cpu_params[i].set_grad(g.clone());
      gpu_params[i].set_grad(g.to(kGPU));
    }
    gpu_scaler.unscale_(gpu_opt);
    cpu_scaler.unscale_(cpu_opt);
    CHECK(gpu_scaler.found_inf(gpu_opt) == (step == 2));
    CHECK(cpu_scaler.found_inf(cpu_opt) == (step == 2));
    for (size_t i = 0; i < cpu_params.size() && step != 2; ++i)
      require_allclose(gpu_params[i].grad().to(kCPU), cpu_params[i].grad(), 0, 0, "unscaled gradient");
    CHECK(gpu_scaler.step(gpu_opt) == cpu_scaler.step(cpu_opt));
    gpu_scaler.update();
    cpu_scaler.update();
    CHECK(gpu_scaler.get_scale() == cpu_scaler.get_scale());
    CHECK(gpu_scaler.growth_tracker() == cpu_scaler.growth_tracker());
  }
  for (size_t i = 0; i < cpu_params.size(); ++i)
    require_allclose(gpu_params[i].detach().to(kCPU), cpu_params[i].detach(), 1e-6, 8 * dtype_eps<float>(),
                     "parameter " + std::to_string(i));
}
