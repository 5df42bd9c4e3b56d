#pragma once
// Switches of the CUDA backend that plain C++ code may set (no CUDA header is
// included here). They are read at each kernel call.

#include <atomic>

namespace mamclip::cuda {

// Which algorithm conv2d uses on CUDA (ops/conv/cuda.cuh): `automatic` takes
// our depthwise kernels where they apply (square 3, 5 or 7, stride 1, same
// padding, groups == channels) and, elsewhere, cuDNN in a backend built with
// it (MAMCLIP_WITH_CUDNN), else im2col + cuBLAS. `im2col` and `cudnn` force
// that path everywhere (baselines for tests and benchmarks); `cudnn` in a
// backend without cuDNN makes conv2d throw device_error.
enum class ConvPath { automatic, im2col, cudnn };

namespace detail {
inline std::atomic<bool> allow_tf32_flag{false};
inline std::atomic<ConvPath> conv_path_value{ConvPath::automatic};
}  // namespace detail

// Whether float32 GEMMs may use TF32 tensor cores (10-bit mantissa products,
// float accumulation): several times faster on sm_80+, relative error about
// 1e-3 instead of 1e-6. Off by default, like
// torch.backends.cuda.matmul.allow_tf32.
inline void set_allow_tf32(bool on) { detail::allow_tf32_flag.store(on, std::memory_order_relaxed); }
inline bool allow_tf32() { return detail::allow_tf32_flag.load(std::memory_order_relaxed); }

inline void set_conv_path(ConvPath path) { detail::conv_path_value.store(path, std::memory_order_relaxed); }
inline ConvPath conv_path() { return detail::conv_path_value.load(std::memory_order_relaxed); }

}  // namespace mamclip::cuda
