#pragma once
// CUDA kernels of the pool family: "avg_pool2d" and "adaptive_avg_pool2d"
// (AvgPoolKernel) and their "_backward" (AvgPoolBackwardKernel).
//
//   kernels  avg_pool_kernel<D>: one thread per output, the window's columns
//            summed row by row as cpu::avg_pool_forward does;
//            avg_pool_backward_kernel<D>: one thread per input element,
//            gathering from the windows that cover it (DevicePoolAxis's cover
//            ranges), so no atomics and a fixed order
//   entries  kernels::avg_pool<T> / avg_pool_backward<T> (current device and stream)
//
// Sums run in device_acc_t in the CPU reference's order; only the CPU's and
// CUDA's contraction of multiply-adds may differ.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/pool/pool.hpp"

namespace mamclip::cuda {

template <class D>
__global__ void avg_pool_kernel(const D* x, D* y, int64_t planes, DevicePoolAxis rows, DevicePoolAxis cols,
                                const double* inv_area) {
  using A = device_acc_t<D>;
  const int64_t oh = rows.out, ow = cols.out, h = rows.size, w = cols.size, n = planes * oh * ow;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e % ow, i = (e / ow) % oh, p = e / (ow * oh);
    const D* xp = x + p * h * w;
    A s = A(0);
    for (int64_t c = cols.start[j]; c < cols.end[j]; ++c) {
      A column = A(0);
      for (int64_t r = rows.start[i]; r < rows.end[i]; ++r) column += to_acc(xp[r * w + c]);
      s += column;
    }
    y[e] = from_acc<D>(s * static_cast<A>(inv_area[i * ow + j]));
  }
}

template <class D>
__global__ void avg_pool_backward_kernel(const D* gy, D* dx, int64_t planes, DevicePoolAxis rows, DevicePoolAxis cols,
                                         const double* inv_area) {
  using A = device_acc_t<D>;
  const int64_t oh = rows.out, ow = cols.out, h = rows.size, w = cols.size, n = planes * h * w;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < n; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % w, r = (e / w) % h, p = e / (w * h);
    const D* gp = gy + p * oh * ow;
    A acc = A(0);
    for (int64_t i = rows.cover_begin[r]; i < rows.cover_end[r]; ++i) {
      A spread = A(0);
      for (int64_t j = cols.cover_begin[c]; j < cols.cover_end[c]; ++j)
        spread += to_acc(gp[i * ow + j]) * static_cast<A>(inv_area[i * ow + j]);
      acc += spread;
    }
    dx[e] = from_acc<D>(acc);
  }
}

namespace kernels {
template <class T>
void avg_pool(const T* x, T* y, int64_t planes, DevicePoolAxis rows, DevicePoolAxis cols, const double* inv_area) {
  constexpr int kBlock = 256;
  const int64_t n = planes * rows.out * cols.out;
  if (n <= 0) return;
  avg_pool_kernel<<<grid_for(n, kBlock), kBlock, 0, current_stream()>>>(device_ptr(x), device_ptr(y), planes, rows,
                                                                        cols, inv_area);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class T>
void avg_pool_backward(const T* gy, T* dx, int64_t planes, DevicePoolAxis rows, DevicePoolAxis cols,
                       const double* inv_area) {
  constexpr int kBlock = 256;
  const int64_t n = planes * rows.size * cols.size;
  if (n <= 0) return;
  avg_pool_backward_kernel<<<grid_for(n, kBlock), kBlock, 0, current_stream()>>>(device_ptr(gy), device_ptr(dx),
                                                                                 planes, rows, cols, inv_area);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}
}  // namespace kernels

// ---- registration

template <class T>
void register_pool_kernels_for() {
  auto& r = KernelRegistry::get();
  for (const char* op : {"avg_pool2d", "adaptive_avg_pool2d"}) {
    r.add<AvgPoolKernel<T>>(op, dtype_v<T>, DeviceType::cuda, &kernels::avg_pool<T>);
    r.add<AvgPoolBackwardKernel<T>>(::mamclip::detail::str_cat(op, "_backward"), dtype_v<T>, DeviceType::cuda,
                                    &kernels::avg_pool_backward<T>);
  }
}

inline void register_pool_kernels() {
  register_pool_kernels_for<float>();
  register_pool_kernels_for<double>();
  register_pool_kernels_for<half>();
  register_pool_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
