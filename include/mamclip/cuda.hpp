#pragma once
// mamclip's CUDA backend: kernels, their launchers and the CUDA runtime
// pieces. Only nvcc compiles this header.
//
// The CPU headers never change meaning with CUDA: tensors on Device::cuda()
// work once the backend has registered its allocator, copier and kernels at
// start-up. Either link the mamclip::cuda CMake target (nothing to include),
// or, without CMake, define the implementation in exactly one .cu file of the
// program, the way stb libraries are used:
//
//   // cuda_backend.cu
//   #define MAMCLIP_CUDA_IMPLEMENTATION
//   #include <mamclip/cuda.hpp>
//
//   // main.cpp, compiled by any C++20 compiler
//   #include <mamclip/mamclip.hpp>
//   auto x = mamclip::randn<float>({64, 33}).to(mamclip::Device::cuda());
//   auto y = mamclip::matmul(x, x.t()).to(mamclip::kCPU);
//
// Every op has CUDA kernels; a dtype without one (e.g. sum of int64 tensors)
// throws device_error naming the op and dtype.
//
// defines:
//   core/cuda/check.cuh           MAMCLIP_CUDA_CHECK, MAMCLIP_CUBLAS_CHECK, MAMCLIP_CUDA_CHECK_LAUNCH
//   core/cuda/device.cuh          device_count, DeviceGuard, current_stream, StreamGuard
//   core/cuda/caching_allocator   MemoryStats, CachingAllocatorCore, empty_cache, memory_stats (plain C++)
//   core/cuda/allocator.cuh       CudaCachingAllocator (cudaMalloc), copy_device_bytes
//   core/cuda/graph.cuh           Graph: capture a region's device work once, replay it with one launch
//   core/cuda/cublas.cuh          cublas_handle
//   core/cuda/settings.hpp        set_allow_tf32, set_conv_path (plain C++)
//   core/cuda/types.cuh           device_t (Eigen 16-bit types as __half / __nv_bfloat16), Pack
//   core/cuda/math.cuh            math:: (float / double device functions), warp and group reductions, launch_rows
//   core/cuda/tensor_data.cuh     "fill", "strided_copy" for every dtype; scratch<U>(n) for launchers
//   ops/shape/cuda.cuh            "to<...>" dtype casts among float, double, half, bfloat16
//   ops/elementwise/cuda.cuh      every unary and binary elementwise op, "add_contiguous"; float, double, half, bfloat16
//   ops/reduce/cuda.cuh           "sum", "mean", "amax", "amin", "max", "min", "var", "logsumexp" (and their
//                                 backward) for float, double, half, bfloat16
//   ops/softmax/cuda.cuh          "softmax", "log_softmax" and their backward for float, double, half, bfloat16
//   ops/norm/cuda.cuh             "layer_norm", "layer_norm2d", "normalize" and their backward; float, double, half, bfloat16
//   ops/indexing/cuda.cuh         "index_select", "embedding", "index_add", "gather", "scatter_add" (float dtypes;
//                                 index_select and gather also int64)
//   ops/matmul/cuda.cuh           "gemm" (cuBLAS) for float, double, half, bfloat16
//   ops/matmul/cublaslt.cuh       "linear_bias", "linear_weight_grad" (cuBLASLt bias epilogues) for float, half,
//                                 bfloat16
//   ops/loss/class_cuda.cuh       "nll_loss", "cross_entropy" and their backward for float, double, half, bfloat16
//   ops/loss/cuda.cuh             "clip_loss", "clip_loss_backward" (fused CLIP loss) for float, half, bfloat16
//   ops/pool/cuda.cuh             "avg_pool2d", "adaptive_avg_pool2d" and their backward; float, double, half, bfloat16
//   ops/conv/cuda.cuh             "conv2d", "conv2d_backward": depthwise kernels of our own (ConvNeXt's 7x7),
//                                 im2col + cuBLAS otherwise; float, double, half, bfloat16
//   ops/attention/cuda.cuh        "scaled_dot_product_attention" and its backward: tensor-core flash kernels for
//                                 half and bfloat16 (head dims 32, 64, 96, 128), reference kernels for float, double
//   optim/cuda.cuh                "adamw_step", "sgd_step" (float32)
//   register_backend()            registers all of the above (the implementation unit calls it)

#if !defined(__CUDACC__)
#error "mamclip/cuda.hpp is CUDA code: compile it with nvcc. Plain C++ code includes mamclip/mamclip.hpp and links mamclip::cuda."
#endif

// mamclip uses Eigen on the host only. Without this, nvcc compiles Eigen's
// functions as __host__ __device__ (dozens of warnings, slower builds); with
// it, Eigen's inline functions are the ones the host compiler sees in .cpp
// files. Define MAMCLIP_KEEP_EIGEN_CUDA to use Eigen in your own kernels.
#if !defined(EIGEN_NO_CUDA) && !defined(MAMCLIP_KEEP_EIGEN_CUDA)
#define EIGEN_NO_CUDA
#endif

#include "mamclip/core/cuda/allocator.cuh"
#include "mamclip/core/cuda/caching_allocator.hpp"
#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/cublas.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/graph.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/settings.hpp"
#include "mamclip/core/cuda/tensor_data.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/storage.hpp"
#include "mamclip/ops/shape/cuda.cuh"
#include "mamclip/ops/matmul/cublaslt.cuh"
#include "mamclip/ops/matmul/cuda.cuh"
#include "mamclip/ops/reduce/cuda.cuh"
#include "mamclip/ops/softmax/cuda.cuh"
#include "mamclip/ops/norm/cuda.cuh"
#include "mamclip/ops/indexing/cuda.cuh"
#include "mamclip/ops/loss/class_cuda.cuh"
#include "mamclip/ops/pool/cuda.cuh"
#include "mamclip/optim/cuda.cuh"

// The four heaviest kernel families. The mamclip::cuda library compiles each
// in a unit of its own (src/cuda_<family>.cu), so that a parallel build
// shares them out, and defines MAMCLIP_CUDA_SEPARATE_UNITS in its main unit:
// there, only their registration functions are declared. A program's single
// implementation unit includes them all.
#if defined(MAMCLIP_CUDA_SEPARATE_UNITS)
namespace mamclip::cuda::units {
void register_elementwise();  // src/cuda_elementwise.cu
void register_clip_loss();    // src/cuda_clip_loss.cu
void register_attention();    // src/cuda_attention.cu
void register_conv();         // src/cuda_conv.cu
}  // namespace mamclip::cuda::units
#else
#include "mamclip/ops/attention/cuda.cuh"
#include "mamclip/ops/conv/cuda.cuh"
#include "mamclip/ops/elementwise/cuda.cuh"
#include "mamclip/ops/loss/cuda.cuh"
#endif

namespace mamclip::cuda {

// The process-wide CUDA allocator. Never destroyed: tensors in static storage
// may be freed after every other static object is gone.
inline CudaCachingAllocator& allocator() {
  static auto* a = new CudaCachingAllocator;
  return *a;
}

// The thread's current device becomes d.index (ops call it through make_current).
inline void activate_device(Device d) {
  check_device_index(d.index, "activate_device");
  if (current_device() != d.index) MAMCLIP_CUDA_CHECK(cudaSetDevice(d.index));
}

// Registers the CUDA device and every kernel above. Needs no GPU, so a program
// without one starts normally and fails only when it asks for CUDA memory.
// Idempotent.
inline void register_backend() {
  register_device(DeviceType::cuda, &allocator(), &copy_device_bytes, &activate_device);
  register_tensor_data_kernels();
  register_shape_kernels();
  register_matmul_kernels();
  register_linear_kernels();
  register_reduce_kernels();
  register_softmax_kernels();
  register_norm_kernels();
  register_indexing_kernels();
  register_class_loss_kernels();
  register_pool_kernels();
  register_optimizer_kernels();
#if defined(MAMCLIP_CUDA_SEPARATE_UNITS)
  units::register_elementwise();
  units::register_clip_loss();
  units::register_attention();
  units::register_conv();
#else
  register_elementwise_kernels();
  register_clip_loss_kernels();
  register_attention_kernels();
  register_conv_kernels();
#endif
}

}  // namespace mamclip::cuda

#if defined(MAMCLIP_CUDA_IMPLEMENTATION)
namespace mamclip::cuda::detail {
// Runs register_backend() during static initialisation of the implementation unit.
struct BackendRegistration {
  BackendRegistration() { register_backend(); }
};
static const BackendRegistration backend_registration;
}  // namespace mamclip::cuda::detail
#endif
