#pragma once
// CUDA kernels of the elementwise family: "add" (BinaryKernel) and
// "add_contiguous" (AddKernel, gradient accumulation; the same function).
//
//   kernel   binary_kernel<kBlock, kVec, D, Op>: raw pointers, n elements
//   launcher launch_binary<Op>(..., stream): picks 16-byte packs or scalars
//   entry    kernels::add<T>: the registered function (current device and stream)
//
// Inputs and output are contiguous with n elements (elementwise.hpp makes
// broadcast operands dense first). Arithmetic is in device_acc_t (float for
// half and bfloat16) and rounds once, like the CPU reference.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/tensor_data.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"

namespace mamclip::cuda {

struct AddOp {
  template <class A>
  __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};

// out[i] = op(a[i], b[i]) for i in [0, n). Each thread handles kVec adjacent
// elements per step, with one 16-byte load or store per operand when
// kVec * sizeof(D) == 16 (the launcher checks alignment); the last n % kVec
// elements go to the first threads of block 0. out may be a or b.
template <int kBlock, int kVec, class D, class Op>
__global__ void __launch_bounds__(kBlock) binary_kernel(D* out, const D* a, const D* b, int64_t n, Op op) {
  using P = Pack<D, kVec>;
  const int64_t nvec = n / kVec;
  const int64_t step = int64_t(gridDim.x) * kBlock;
  for (int64_t i = int64_t(blockIdx.x) * kBlock + threadIdx.x; i < nvec; i += step) {
    const P pa = reinterpret_cast<const P*>(a)[i];
    const P pb = reinterpret_cast<const P*>(b)[i];
    P po;
#pragma unroll
    for (int j = 0; j < kVec; ++j) po.v[j] = from_acc<D>(op(to_acc(pa.v[j]), to_acc(pb.v[j])));
    reinterpret_cast<P*>(out)[i] = po;
  }
  if constexpr (kVec > 1) {
    const int64_t tail = n - nvec * kVec;
    if (blockIdx.x == 0 && threadIdx.x < tail) {
      const int64_t i = nvec * kVec + threadIdx.x;
      out[i] = from_acc<D>(op(to_acc(a[i]), to_acc(b[i])));
    }
  }
}

template <class Op, class D>
void launch_binary(D* out, const D* a, const D* b, int64_t n, cudaStream_t stream, Op op = Op()) {
  constexpr int kBlock = 256;
  constexpr int kVec = kVec16<D>;
  if (n <= 0) return;
  if (aligned16(out) && aligned16(a) && aligned16(b)) {
    binary_kernel<kBlock, kVec, D, Op><<<grid_for(n / kVec, kBlock), kBlock, 0, stream>>>(out, a, b, n, op);
  } else {
    binary_kernel<kBlock, 1, D, Op><<<grid_for(n, kBlock), kBlock, 0, stream>>>(out, a, b, n, op);
  }
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

namespace kernels {
template <class T>
void add(T* out, const T* a, const T* b, int64_t n) {
  launch_binary<AddOp>(device_ptr(out), device_ptr(a), device_ptr(b), n, current_stream());
}
}  // namespace kernels

// ---- registration

template <class T>
void register_elementwise_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<BinaryKernel<T>>("add", dtype_v<T>, DeviceType::cuda, &kernels::add<T>);
  r.add<AddKernel<T>>("add_contiguous", dtype_v<T>, DeviceType::cuda, &kernels::add<T>);
}

inline void register_elementwise_kernels() {
  register_elementwise_kernels_for<float>();
  register_elementwise_kernels_for<double>();
  register_elementwise_kernels_for<half>();
  register_elementwise_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
