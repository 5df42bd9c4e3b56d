#pragma once
// CUDA kernels of the softmax family: "softmax", "log_softmax" (SoftmaxKernel)
// and their "_backward" (SoftmaxBackwardKernel).
//
//   kernels  softmax_kernel / softmax_backward_kernel<kBlock, kGroup, D>: one
//            group of kGroup threads per lane (a warp, or the whole block for
//            lanes of kLongRow elements or more; launch_rows picks)
//   entries  kernels::softmax<T> / softmax_backward<T> (current device and stream)
//
// The formulas of ops/softmax/cpu.hpp (max, sum of exp(x - max), then the
// outputs) in device_acc_t; a lane is `size` elements `inner` apart in a
// contiguous [outer, size, inner] tensor, so last-dim lanes (inner = 1) read
// coalesced. A lane of all -inf gives NaN, as on the CPU.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/softmax/softmax.hpp"

namespace mamclip::cuda {

// y = softmax (or log_softmax) of x along each lane.
template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    softmax_kernel(const D* x, D* y, int64_t lanes, int64_t size, int64_t inner, bool log) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(lanes, [&](int64_t l, int t) {
    const int64_t base = (l / inner) * size * inner + l % inner;
    const D* xl = x + base;
    D* yl = y + base;
    A m = -math::infinity<A>();
    for (int64_t k = t; k < size; k += kGroup) m = math::max(m, to_acc(xl[k * inner]));
    m = group_reduce<kGroup>(m, Max(), -math::infinity<A>(), shared);
    A s = A(0);
    for (int64_t k = t; k < size; k += kGroup) s += math::exp(to_acc(xl[k * inner]) - m);
    s = group_reduce<kGroup>(s, Sum(), A(0), shared);
    if (log) {
      const A shift = m + math::log(s);
      for (int64_t k = t; k < size; k += kGroup) yl[k * inner] = from_acc<D>(to_acc(xl[k * inner]) - shift);
    } else {
      const A inv = A(1) / s;
      for (int64_t k = t; k < size; k += kGroup) yl[k * inner] = from_acc<D>(math::exp(to_acc(xl[k * inner]) - m) * inv);
    }
  });
}

// softmax: dx = y * (g - sum(g * y));  log_softmax: dx = g - exp(y) * sum(g).
template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    softmax_backward_kernel(const D* g, const D* y, D* dx, int64_t lanes, int64_t size, int64_t inner, bool log) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(lanes, [&](int64_t l, int t) {
    const int64_t base = (l / inner) * size * inner + l % inner;
    A s = A(0);
    for (int64_t k = t; k < size; k += kGroup) {
      const int64_t i = base + k * inner;
      s += log ? to_acc(g[i]) : to_acc(g[i]) * to_acc(y[i]);
    }
    s = group_reduce<kGroup>(s, Sum(), A(0), shared);
    for (int64_t k = t; k < size; k += kGroup) {
      const int64_t i = base + k * inner;
      const A gk = to_acc(g[i]), yk = to_acc(y[i]);
      dx[i] = from_acc<D>(log ? gk - math::exp(yk) * s : yk * (gk - s));
    }
  });
}

namespace kernels {
template <class T>
void softmax(const T* x, T* y, int64_t outer, int64_t size, int64_t inner, bool log) {
  using D = device_t<T>;
  constexpr int kBlock = 256;
  const int64_t lanes = outer * inner;
  if (size <= 0) return;
  const cudaStream_t stream = current_stream();
  launch_rows<kBlock>(lanes, size, [&](auto group, unsigned grid) {
    softmax_kernel<kBlock, decltype(group)::value, D>
        <<<grid, kBlock, 0, stream>>>(device_ptr(x), device_ptr(y), lanes, size, inner, log);
  });
}

template <class T>
void softmax_backward(const T* g, const T* y, T* dx, int64_t outer, int64_t size, int64_t inner, bool log) {
  using D = device_t<T>;
  constexpr int kBlock = 256;
  const int64_t lanes = outer * inner;
  if (size <= 0) return;
  const cudaStream_t stream = current_stream();
  launch_rows<kBlock>(lanes, size, [&](auto group, unsigned grid) {
    softmax_backward_kernel<kBlock, decltype(group)::value, D>
        <<<grid, kBlock, 0, stream>>>(device_ptr(g), device_ptr(y), device_ptr(dx), lanes, size, inner, log);
  });
}
}  // namespace kernels

// ---- registration

template <class T>
void register_softmax_kernels_for() {
  auto& r = KernelRegistry::get();
  for (const char* op : {"softmax", "log_softmax"})
    r.add<SoftmaxKernel<T>>(op, dtype_v<T>, DeviceType::cuda, &kernels::softmax<T>);
  for (const char* op : {"softmax_backward", "log_softmax_backward"})
    r.add<SoftmaxBackwardKernel<T>>(op, dtype_v<T>, DeviceType::cuda, &kernels::softmax_backward<T>);
}

inline void register_softmax_kernels() {
  register_softmax_kernels_for<float>();
  register_softmax_kernels_for<double>();
  register_softmax_kernels_for<half>();
  register_softmax_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
