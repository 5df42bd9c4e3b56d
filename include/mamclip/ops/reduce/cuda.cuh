#pragma once
// CUDA kernels of the reduce family: "sum" and "mean" (SumRowsKernel).
//
//   kernels  sum_rows_warp_kernel: one warp per row (rows shorter than
//            kLongRow); sum_rows_block_kernel: one block per row
//   launcher launch_sum_rows(..., stream): picks one by the row length
//   entry    kernels::sum_rows<T>: the registered function (current device and stream)
//
// Rows are the contiguous [outer, inner] layout reduce.hpp makes (the reduced
// dims last). Each thread adds a strided subset of its row in device_acc_t
// (float for half and bfloat16), then shuffles combine the partial sums; the
// order differs from the CPU's sequential one, so results agree to rounding.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/reduce/reduce.hpp"

namespace mamclip::cuda {

template <class A>
__device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  return v;  // lane 0 holds the warp's sum
}

// Rows from this length on get a whole block each.
inline constexpr int64_t kLongRow = 2048;

// out[row] = sum(row) / divisor, one warp per row (grid-stride over rows).
template <int kBlock, class D>
__global__ void __launch_bounds__(kBlock)
    sum_rows_warp_kernel(D* out, const D* rows, int64_t outer, int64_t inner, device_acc_t<D> divisor) {
  using A = device_acc_t<D>;
  constexpr int kWarps = kBlock / 32;
  const int lane = threadIdx.x % 32;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  for (int64_t row = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; row < outer; row += stride) {
    const D* r = rows + row * inner;
    A acc = A(0);
    for (int64_t i = lane; i < inner; i += 32) acc += to_acc(r[i]);
    acc = warp_sum(acc);
    if (lane == 0) out[row] = from_acc<D>(acc / divisor);
  }
}

// out[row] = sum(row) / divisor, one block per row (grid-stride over rows).
template <int kBlock, class D>
__global__ void __launch_bounds__(kBlock)
    sum_rows_block_kernel(D* out, const D* rows, int64_t outer, int64_t inner, device_acc_t<D> divisor) {
  using A = device_acc_t<D>;
  constexpr int kWarps = kBlock / 32;
  static_assert(kWarps <= 32 && kBlock % 32 == 0, "the warps' sums must fit one warp");
  __shared__ A partial[kWarps];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  for (int64_t row = blockIdx.x; row < outer; row += gridDim.x) {
    const D* r = rows + row * inner;
    A acc = A(0);
    for (int64_t i = threadIdx.x; i < inner; i += kBlock) acc += to_acc(r[i]);
    acc = warp_sum(acc);
    if (lane == 0) partial[warp] = acc;
    __syncthreads();
    if (warp == 0) {
      acc = warp_sum(lane < kWarps ? partial[lane] : A(0));
      if (lane == 0) out[row] = from_acc<D>(acc / divisor);
    }
    __syncthreads();  // partial is reused by the next row
  }
}

template <class D>
void launch_sum_rows(D* out, const D* rows, int64_t outer, int64_t inner, double divisor, cudaStream_t stream) {
  constexpr int kBlock = 256;
  if (outer <= 0) return;
  const auto div = static_cast<device_acc_t<D>>(divisor);
  if (inner >= kLongRow) {
    sum_rows_block_kernel<kBlock, D><<<grid_for(outer * kBlock, kBlock), kBlock, 0, stream>>>(out, rows, outer, inner, div);
  } else {
    sum_rows_warp_kernel<kBlock, D><<<grid_for(outer * 32, kBlock), kBlock, 0, stream>>>(out, rows, outer, inner, div);
  }
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

namespace kernels {
template <class T>
void sum_rows(T* out, const T* rows, int64_t outer, int64_t inner, double divisor) {
  launch_sum_rows(device_ptr(out), device_ptr(rows), outer, inner, divisor, current_stream());
}
}  // namespace kernels

// ---- registration

template <class T>
void register_reduce_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<SumRowsKernel<T>>("sum", dtype_v<T>, DeviceType::cuda, &kernels::sum_rows<T>);
  r.add<SumRowsKernel<T>>("mean", dtype_v<T>, DeviceType::cuda, &kernels::sum_rows<T>);
}

inline void register_reduce_kernels() {
  register_reduce_kernels_for<float>();
  register_reduce_kernels_for<double>();
  register_reduce_kernels_for<half>();
  register_reduce_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
