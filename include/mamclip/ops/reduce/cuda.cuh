#pragma once
// CUDA kernels of the reduce family: "sum" and "mean" (SumRowsKernel).
//
//   kernel   sum_rows_kernel<kBlock, kGroup, D>: one group of kGroup threads
//            per row (a warp, or the block for rows of kLongRow or more)
//   launcher launch_sum_rows(..., stream): picks the group by the row length
//   entry    kernels::sum_rows<T>: the registered function (current device and stream)
//
// Rows are the contiguous [outer, inner] layout reduce.hpp makes (the reduced
// dims last). Each thread adds a strided subset of its row in device_acc_t
// (float for half and bfloat16), then shuffles combine the partial sums; the
// order differs from the CPU's sequential one, so results agree to rounding.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/reduce/reduce.hpp"

namespace mamclip::cuda {

// Rows from this length on get a whole block each; shorter ones a warp each.
inline constexpr int64_t kLongRow = 2048;

// out[row] = sum(row) / divisor, one group of kGroup threads per row
// (kGroup = 32 or kBlock), grid-stride over rows.
template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    sum_rows_kernel(D* out, const D* rows, int64_t outer, int64_t inner, device_acc_t<D> divisor) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(outer, [&](int64_t row, int t) {
    const D* r = rows + row * inner;
    A acc = A(0);
    for (int64_t i = t; i < inner; i += kGroup) acc += to_acc(r[i]);
    acc = group_reduce<kGroup>(acc, Sum(), A(0), shared);
    if (t == 0) out[row] = from_acc<D>(acc / divisor);
  });
}

template <class D>
void launch_sum_rows(D* out, const D* rows, int64_t outer, int64_t inner, double divisor, cudaStream_t stream) {
  constexpr int kBlock = 256;
  if (outer <= 0) return;
  const auto div = static_cast<device_acc_t<D>>(divisor);
  if (inner >= kLongRow) {
    sum_rows_kernel<kBlock, kBlock, D><<<grid_for(outer * kBlock, kBlock), kBlock, 0, stream>>>(out, rows, outer, inner, div);
  } else {
    sum_rows_kernel<kBlock, 32, D><<<grid_for(outer * 32, kBlock), kBlock, 0, stream>>>(out, rows, outer, inner, div);
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
