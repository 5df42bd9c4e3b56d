#pragma once
// CUDA kernels of the optimizers: "adamw_step" (AdamWKernel) and "sgd_step"
// (SGDKernel), float32, one thread per element (grid-stride), with the CPU
// updates' formulas (optim/adamw.hpp, optim/sgd.hpp) written with the same
// fused multiply-adds; nvcc may contract the other products, so results agree
// with the CPU to an ulp or two, not bit for bit. Kernels are templates (on
// their block size) so that every .cu file may include this header.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/optim/adamw.hpp"
#include "mamclip/optim/sgd.hpp"

namespace mamclip::cuda {

template <int kBlock>
__global__ void __launch_bounds__(kBlock) adamw_step_kernel(float* p, const float* grad, float* m, float* v, float* vmax, int64_t n,
                                  optim::AdamWScalars s) {
  // ATen's lerp, as the CPU: weight < 0.5 -> start + w (end - start), else end - (end - start)(1 - w).
  const bool small = fabsf(s.lerp_weight) < 0.5f;
  const float coeff = small ? s.lerp_weight : s.lerp_weight - 1.0f;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad[i];
    float pi = p[i];
    if (s.apply_decay) pi = pi * s.decay;
    const float mi = fmaf(coeff, g - m[i], small ? m[i] : g);
    const float vi = v[i] * s.beta2 + s.one_minus_beta2 * g * g;
    m[i] = mi;
    v[i] = vi;
    float second = vi;
    if (s.amsgrad) {
      if (isnan(vi) || vi > vmax[i]) vmax[i] = vi;  // torch.maximum: a NaN propagates
      second = vmax[i];
    }
    const float denom = sqrtf(second) / s.bias_correction2_sqrt + s.eps;
    p[i] = pi + s.neg_step_size * mi / denom;
  }
}

template <int kBlock>
__global__ void __launch_bounds__(kBlock) sgd_step_kernel(float* p, const float* grad, float* buf, int64_t n, optim::SGDScalars s) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float g = grad[i];
    if (s.weight_decay != 0) g = fmaf(p[i], s.weight_decay, g);
    if (s.momentum != 0) {
      const float b = s.first_step ? g : fmaf(g, s.one_minus_dampening, buf[i] * s.momentum);
      buf[i] = b;
      g = s.nesterov ? fmaf(b, s.momentum, g) : b;
    }
    p[i] = fmaf(g, s.neg_lr, p[i]);
  }
}

namespace kernels {
inline void adamw_step(float* p, const float* g, float* m, float* v, float* vmax, int64_t n,
                       const optim::AdamWScalars& s) {
  constexpr int kBlock = 256;
  if (n <= 0) return;
  adamw_step_kernel<kBlock><<<grid_for(n, kBlock), kBlock, 0, current_stream()>>>(p, g, m, v, vmax, n, s);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

inline void sgd_step(float* p, const float* g, float* buf, int64_t n, const optim::SGDScalars& s) {
  constexpr int kBlock = 256;
  if (n <= 0) return;
  sgd_step_kernel<kBlock><<<grid_for(n, kBlock), kBlock, 0, current_stream()>>>(p, g, buf, n, s);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}
}  // namespace kernels

inline void register_optimizer_kernels() {
  auto& r = KernelRegistry::get();
  r.add<optim::AdamWKernel>("adamw_step", DType::f32, DeviceType::cuda, &kernels::adamw_step);
  r.add<optim::SGDKernel>("sgd_step", DType::f32, DeviceType::cuda, &kernels::sgd_step);
}

}  // namespace mamclip::cuda
