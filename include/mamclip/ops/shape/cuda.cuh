#pragma once
// CUDA kernels of the shape family: dtype casts between float, double, half
// and bfloat16 (CastKernel, registered as "to<float32>", "to<bfloat16>", ...
// for each source dtype), the values Tensor::to<U>() gives on the CPU.
//
//   cast_value<To>(from)   through double; 16-bit targets from the float nearest it
//   cast_kernel            one thread per element, grid-stride

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/shape/shape.hpp"

namespace mamclip::cuda {

template <class To, class From>
__device__ __forceinline__ To cast_value(From v) {
  const double d = static_cast<double>(to_acc(v));  // exact: every source value is a double
  if constexpr (std::is_same_v<To, double>) return d;
  else return from_acc<To>(static_cast<float>(d));  // float: d rounded once; 16-bit: then rounded from that float
}

template <class From, class To>
__global__ void cast_kernel(const From* src, To* dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x)
    dst[i] = cast_value<To>(src[i]);
}

namespace kernels {
template <class From, class To>
void cast(const From* src, To* dst, int64_t n) {
  constexpr int kBlock = 256;
  if (n <= 0) return;
  cast_kernel<<<grid_for(n, kBlock), kBlock, 0, current_stream()>>>(device_ptr(src), device_ptr(dst), n);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}
}  // namespace kernels

// ---- registration

template <class From, class... To>
void register_casts_from() {
  auto& r = KernelRegistry::get();
  (r.add<CastKernel<From, To>>(::mamclip::detail::str_cat("to<", dtype_name(dtype_v<To>), ">"), dtype_v<From>, DeviceType::cuda,
                               &kernels::cast<From, To>),
   ...);
}

inline void register_shape_kernels() {
  register_casts_from<float, double, half, bfloat16>();
  register_casts_from<double, float, half, bfloat16>();
  register_casts_from<half, float, double, bfloat16>();
  register_casts_from<bfloat16, float, double, half>();
}

}  // namespace mamclip::cuda
