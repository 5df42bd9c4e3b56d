#pragma once
// CUDA kernels for the data movement every backend provides (tensor_data.hpp):
// "fill" (FillKernel) and "strided_copy" (StridedCopyKernel), for every dtype.
//
// Both only move bits, so they are compiled once per element size (1, 2, 4,
// 8 bytes) and registered for each dtype of that size.
//
//   kernel   fill_kernel<kBlock, kVec, U>, strided_copy_kernel<kBlock, U>
//   launcher launch_fill, launch_strided_copy (explicit stream)
//   entry    kernels::fill<T>, kernels::strided_copy<T> (current device and stream)
//
// and scratch<U>(n), the launchers' temporary buffers.

#include <algorithm>
#include <cstring>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/iterate.hpp"
#include "mamclip/core/tensor_data.hpp"

namespace mamclip::cuda {

template <size_t N> struct bits_of;
template <> struct bits_of<1> { using type = uint8_t; };
template <> struct bits_of<2> { using type = uint16_t; };
template <> struct bits_of<4> { using type = uint32_t; };
template <> struct bits_of<8> { using type = uint64_t; };
template <class T> using bits_t = typename bits_of<sizeof(T)>::type;

// Scratch for a launcher: n elements (at least one) on the current device,
// back in the caching allocator's pool for the current stream once dropped,
// so work already queued on that stream may still use it.
template <class U>
Tensor<U> scratch(int64_t n) {
  return Tensor<U>::empty({std::max<int64_t>(n, 1)}, Device::cuda(current_device()));
}

// ---- fill

// dst[0, n) = value. Each thread stores kVec elements at a time (one 16-byte
// store when kVec = 16 / sizeof(U), which needs dst 16-byte aligned); the
// n % kVec tail goes to the first threads of block 0.
template <int kBlock, int kVec, class U>
__global__ void __launch_bounds__(kBlock) fill_kernel(U* dst, int64_t n, U value) {
  using P = Pack<U, kVec>;
  P p;
#pragma unroll
  for (int j = 0; j < kVec; ++j) p.v[j] = value;
  const int64_t nvec = n / kVec;
  const int64_t step = int64_t(gridDim.x) * kBlock;
  for (int64_t i = int64_t(blockIdx.x) * kBlock + threadIdx.x; i < nvec; i += step) reinterpret_cast<P*>(dst)[i] = p;
  if constexpr (kVec > 1) {
    const int64_t tail = n - nvec * kVec;
    if (blockIdx.x == 0 && threadIdx.x < tail) dst[nvec * kVec + threadIdx.x] = value;
  }
}

template <class U>
void launch_fill(U* dst, int64_t n, U value, cudaStream_t stream) {
  constexpr int kBlock = 256;
  constexpr int kVec = kVec16<U>;
  if (n <= 0) return;
  if (aligned16(dst)) {
    fill_kernel<kBlock, kVec, U><<<grid_for(n / kVec, kBlock), kBlock, 0, stream>>>(dst, n, value);
  } else {
    fill_kernel<kBlock, 1, U><<<grid_for(n, kBlock), kBlock, 0, stream>>>(dst, n, value);
  }
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

namespace kernels {
template <class T>
void fill(T* dst, int64_t n, T value) {
  using U = bits_t<T>;
  U bits;
  std::memcpy(&bits, &value, sizeof(U));
  launch_fill(reinterpret_cast<U*>(dst), n, bits, current_stream());
}
}  // namespace kernels

// ---- strided copy

inline constexpr int kMaxCopyDims = 8;

// A strided operand after merging dims (iterate.hpp's StridedLoop); sizes and
// strides in elements, innermost last.
struct StridedIndex {
  int ndim = 0;
  int64_t sizes[kMaxCopyDims] = {};
  int64_t strides[kMaxCopyDims] = {};
};

// dst[i] = src[offset of row-major element i], dst contiguous with n elements.
template <int kBlock, class U>
__global__ void __launch_bounds__(kBlock) strided_copy_kernel(U* dst, const U* src, int64_t n, StridedIndex ix) {
  const int64_t step = int64_t(gridDim.x) * kBlock;
  for (int64_t i = int64_t(blockIdx.x) * kBlock + threadIdx.x; i < n; i += step) {
    int64_t rem = i, off = 0;
#pragma unroll
    for (int d = kMaxCopyDims - 1; d >= 0; --d) {
      if (d < ix.ndim) {
        off += (rem % ix.sizes[d]) * ix.strides[d];
        rem /= ix.sizes[d];
      }
    }
    dst[i] = src[off];
  }
}

template <class U>
void launch_strided_copy(U* dst, const U* src, const Shape& shape, const Shape& src_strides, cudaStream_t stream) {
  constexpr int kBlock = 256;
  const int64_t n = numel_of(shape);
  if (n == 0) return;
  const ::mamclip::detail::StridedLoop<1> loop(shape, {src_strides});
  const Shape& s = loop.shape;
  const Shape& st = loop.strides[0];
  if (s.size() == 1 && st[0] == 1) {
    MAMCLIP_CUDA_CHECK(cudaMemcpyAsync(dst, src, sizeof(U) * static_cast<size_t>(n), cudaMemcpyDeviceToDevice, stream));
    return;
  }
  MAMCLIP_CHECK(s.size() <= static_cast<size_t>(kMaxCopyDims), shape_error, "strided_copy: shape ", shape_str(shape),
                " with strides ", shape_str(src_strides), " has ", s.size(), " dims after merging contiguous ones; ",
                "the CUDA copy supports at most ", kMaxCopyDims, " (make the tensor contiguous in steps)");
  StridedIndex ix;
  ix.ndim = static_cast<int>(s.size());
  for (size_t d = 0; d < s.size(); ++d) {
    ix.sizes[d] = s[d];
    ix.strides[d] = st[d];
  }
  strided_copy_kernel<kBlock, U><<<grid_for(n, kBlock), kBlock, 0, stream>>>(dst, src, n, ix);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

namespace kernels {
template <class T>
void strided_copy(T* dst, const T* src, const Shape& shape, const Shape& src_strides) {
  using U = bits_t<T>;
  launch_strided_copy(reinterpret_cast<U*>(dst), reinterpret_cast<const U*>(src), shape, src_strides, current_stream());
}
}  // namespace kernels

// ---- registration

template <class T>
void register_tensor_data_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<FillKernel<T>>("fill", dtype_v<T>, DeviceType::cuda, &kernels::fill<T>);
  r.add<StridedCopyKernel<T>>("strided_copy", dtype_v<T>, DeviceType::cuda, &kernels::strided_copy<T>);
}

inline void register_tensor_data_kernels() {
  register_tensor_data_kernels_for<float>();
  register_tensor_data_kernels_for<double>();
  register_tensor_data_kernels_for<half>();
  register_tensor_data_kernels_for<bfloat16>();
  register_tensor_data_kernels_for<int64_t>();
  register_tensor_data_kernels_for<int32_t>();
  register_tensor_data_kernels_for<uint8_t>();
  register_tensor_data_kernels_for<bool>();
}

}  // namespace mamclip::cuda
