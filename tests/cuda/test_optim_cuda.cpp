// AdamW and SGD steps on CUDA (optim/cuda.cuh) against the CPU optimizers.
//
// Without a GPU: the kernels are registered. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): several steps of each
// optimizer on the same parameters and gradients on both devices, with weight
// decay, amsgrad, momentum and nesterov, at awkward sizes; the parameters and
// the optimizer state agree to a few ulp (nvcc may fuse products the CPU
// rounds separately).
#include <cuda_runtime.h>

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
