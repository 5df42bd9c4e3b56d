#pragma once
// CUDA kernels of the indexing family: "index_select" (IndexSelectKernel),
// "index_add" (IndexAddKernel), "gather" (GatherKernel) and "scatter_add"
// (ScatterAddKernel), with the CPU references' arguments and meaning
// (ops/indexing/cpu.hpp); index values are checked in range by the ops.
//
//   index_select_kernel, gather_kernel     one thread per output element
//   index_add_kernel, scatter_add_kernel   one thread per source element, atomicAdd
//                                          into an accumulation-type image of dst
//   launchers / entries                    kernels::index_select<T>, ... (current
//                                          device and stream)
//
// Scatter-adds accumulate in device_acc_t, as the CPU does in acc_t: half and
// bfloat16 destinations get a float image that is rounded once at the end.
// Atomic adds meet in any order, so sums of duplicates agree with the CPU to
// rounding, not bit for bit.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/tensor_data.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/tensor.hpp"
#include "mamclip/ops/indexing/indexing.hpp"

namespace mamclip::cuda {

// The index tensor's shape and the strides of contiguous x (or dst), for gather / scatter_add.
struct GatherGeometry {
  static constexpr int kMaxDims = 8;
  int dims = 0, dim = 0;
  int64_t index_shape[kMaxDims] = {};
  int64_t x_strides[kMaxDims] = {};
  int64_t count = 0;  // elements of the index tensor
};

inline GatherGeometry gather_geometry(const char* op, const Shape& x_shape, const Shape& index_shape, int64_t dim) {
  GatherGeometry g;
  MAMCLIP_CHECK(index_shape.size() <= GatherGeometry::kMaxDims, shape_error, op, ": ", index_shape.size(),
                " dims; CUDA supports up to ", GatherGeometry::kMaxDims);
  g.dims = static_cast<int>(index_shape.size());
  g.dim = static_cast<int>(dim);
  const Shape xs = contiguous_strides(x_shape);
  for (int d = 0; d < g.dims; ++d) {
    g.index_shape[d] = index_shape[static_cast<size_t>(d)];
    g.x_strides[d] = xs[static_cast<size_t>(d)];
  }
  g.count = numel_of(index_shape);
  return g;
}

// Offset in x of index element p, with its `dim` coordinate replaced by index[p].
__device__ __forceinline__ int64_t gather_offset(const GatherGeometry& g, int64_t p, int64_t index_value) {
  int64_t off = 0;
  for (int d = g.dims - 1; d >= 0; --d) {
    const int64_t c = p % g.index_shape[d];
    p /= g.index_shape[d];
    off += (d == g.dim ? index_value : c) * g.x_strides[d];
  }
  return off;
}

template <class D>
__global__ void index_select_kernel(D* out, const D* x, const int64_t* index, int64_t outer, int64_t size,
                                    int64_t inner, int64_t n) {
  const int64_t total = outer * n * inner;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e % inner, i = (e / inner) % n, o = e / (inner * n);
    out[e] = x[(o * size + index[i]) * inner + r];
  }
}

template <class D, class A>
__global__ void index_add_kernel(A* dst, const D* src, const int64_t* index, int64_t outer, int64_t size,
                                 int64_t inner, int64_t n) {
  const int64_t total = outer * n * inner;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = e % inner, i = (e / inner) % n, o = e / (inner * n);
    atomicAdd(dst + (o * size + index[i]) * inner + r, to_acc(src[e]));
  }
}

template <class D>
__global__ void gather_kernel(D* out, const D* x, const int64_t* index, GatherGeometry g) {
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < g.count; p += int64_t(gridDim.x) * blockDim.x)
    out[p] = x[gather_offset(g, p, index[p])];
}

template <class D, class A>
__global__ void scatter_add_kernel(A* dst, const D* src, const int64_t* index, GatherGeometry g) {
  for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < g.count; p += int64_t(gridDim.x) * blockDim.x)
    atomicAdd(dst + gather_offset(g, p, index[p]), to_acc(src[p]));
}

template <class From, class To>
__global__ void convert_kernel(To* out, const From* in, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    if constexpr (std::is_same_v<To, device_acc_t<From>>) out[i] = to_acc(in[i]);
    else out[i] = from_acc<To>(in[i]);
  }
}

// Runs add(acc) on an accumulation-type image of dst[0, count): dst itself
// for float and double, else a float copy converted back afterwards.
template <class D, class F>
void with_acc_image(D* dst, int64_t count, cudaStream_t stream, F&& add) {
  using A = device_acc_t<D>;
  constexpr int kBlock = 256;
  if constexpr (std::is_same_v<A, D>) {
    add(dst);
  } else {
    const Tensor<float> image = scratch<float>(count);
    convert_kernel<D, A><<<grid_for(count, kBlock), kBlock, 0, stream>>>(image.data_ptr(), dst, count);
    MAMCLIP_CUDA_CHECK_LAUNCH();
    add(image.data_ptr());
    convert_kernel<A, D><<<grid_for(count, kBlock), kBlock, 0, stream>>>(dst, image.data_ptr(), count);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
}

namespace kernels {
constexpr int kIndexBlock = 256;

template <class T>
void index_select(T* out, const T* x, const int64_t* index, int64_t outer, int64_t size, int64_t inner, int64_t n) {
  const int64_t total = outer * n * inner;
  if (total <= 0) return;
  index_select_kernel<<<grid_for(total, kIndexBlock), kIndexBlock, 0, current_stream()>>>(
      device_ptr(out), device_ptr(x), index, outer, size, inner, n);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class T>
void index_add(T* dst, const T* src, const int64_t* index, int64_t outer, int64_t size, int64_t inner, int64_t n) {
  const int64_t total = outer * n * inner;
  if (total <= 0) return;
  const cudaStream_t stream = current_stream();
  with_acc_image(device_ptr(dst), outer * size * inner, stream, [&](auto* acc) {
    index_add_kernel<<<grid_for(total, kIndexBlock), kIndexBlock, 0, stream>>>(acc, device_ptr(src), index, outer,
                                                                               size, inner, n);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  });
}

template <class T>
void gather(T* out, const T* x, const int64_t* index, const Shape& x_shape, const Shape& index_shape, int64_t dim) {
  const GatherGeometry g = gather_geometry("gather", x_shape, index_shape, dim);
  if (g.count <= 0) return;
  gather_kernel<<<grid_for(g.count, kIndexBlock), kIndexBlock, 0, current_stream()>>>(device_ptr(out), device_ptr(x),
                                                                                      index, g);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class T>
void scatter_add(T* dst, const T* src, const int64_t* index, const Shape& dst_shape, const Shape& index_shape,
                 int64_t dim) {
  const GatherGeometry g = gather_geometry("scatter_add", dst_shape, index_shape, dim);
  if (g.count <= 0) return;
  const cudaStream_t stream = current_stream();
  with_acc_image(device_ptr(dst), numel_of(dst_shape), stream, [&](auto* acc) {
    scatter_add_kernel<<<grid_for(g.count, kIndexBlock), kIndexBlock, 0, stream>>>(acc, device_ptr(src), index, g);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  });
}
}  // namespace kernels

// ---- registration

template <class T>
void register_indexing_kernels_for() {
  auto& r = KernelRegistry::get();
  constexpr DeviceType cu = DeviceType::cuda;
  r.add<IndexSelectKernel<T>>("index_select", dtype_v<T>, cu, &kernels::index_select<T>);
  r.add<IndexSelectKernel<T>>("embedding", dtype_v<T>, cu, &kernels::index_select<T>);
  r.add<IndexAddKernel<T>>("index_add", dtype_v<T>, cu, &kernels::index_add<T>);
  r.add<GatherKernel<T>>("gather", dtype_v<T>, cu, &kernels::gather<T>);
  r.add<ScatterAddKernel<T>>("scatter_add", dtype_v<T>, cu, &kernels::scatter_add<T>);
}

inline void register_indexing_kernels() {
  // Integer tensors are selected and gathered (token ids, labels), never scatter-added.
  auto& r = KernelRegistry::get();
  r.add<IndexSelectKernel<int64_t>>("index_select", DType::i64, DeviceType::cuda, &kernels::index_select<int64_t>);
  r.add<GatherKernel<int64_t>>("gather", DType::i64, DeviceType::cuda, &kernels::gather<int64_t>);
  register_indexing_kernels_for<float>();
  register_indexing_kernels_for<double>();
  register_indexing_kernels_for<half>();
  register_indexing_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
