#pragma once
// What every test of the CUDA backend shares: whether a device is visible,
// and the skip of a [gpu] case without one (the text CTest's
// SKIP_REGULAR_EXPRESSION in tests/cuda/CMakeLists.txt looks for).

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>

#include "mamclip/core/cuda/settings.hpp"
#include "support/test_support.hpp"

namespace mamclip::test {

inline int gpu_count() {
  static const int n = [] {
    int c = 0;
    if (cudaGetDeviceCount(&c) != cudaSuccess) {
      (void)cudaGetLastError();  // "no device" is an answer here, not an error
      return 0;
    }
    return c;
  }();
  return n;
}

inline const Device kGPU = Device::cuda(0);

// Uniform random values in [lo, hi) on the CPU: the inputs every CUDA test
// compares (never zeros, so a kernel that writes nothing cannot pass).
template <class T>
Tensor<T> rnd(const Shape& s, uint64_t seed, double lo = -2, double hi = 2) {
  Generator g(seed);
  Tensor<T> t = empty<T>(s);
  return uniform_(t, lo, hi, g);
}

// How far a result may be from the CPU's when it adds `terms` values in
// another order: k * sqrt(terms) ulp of the accumulation type, and for a
// 16-bit result also `own_ulps` of its own rounding to a neighbouring value.
template <class T>
double order_tolerance(int64_t terms, double k, double own_ulps = 2) {
  const double root = std::sqrt(static_cast<double>(std::max<int64_t>(terms, 1)));
  if constexpr (std::is_same_v<T, half> || std::is_same_v<T, bfloat16>)
    return own_ulps * dtype_eps<T>() + k * root * dtype_eps<float>();
  else
    return k * root * dtype_eps<T>();
}

// Puts the backend's switches (conv path, TF32) back to their defaults when the scope
// ends, also when a REQUIRE throws: a failed case must not change what later cases run.
struct RestoreCudaSettings {
  RestoreCudaSettings() = default;
  RestoreCudaSettings(const RestoreCudaSettings&) = delete;
  RestoreCudaSettings& operator=(const RestoreCudaSettings&) = delete;
  ~RestoreCudaSettings() {
    cuda::set_conv_path(cuda::ConvPath::automatic);
    cuda::set_allow_tf32(false);
  }
};

}  // namespace mamclip::test

// cuda_fp16.h (through cuda_runtime.h) declares a global ::half that clashes
// with mamclip::half in tests that use both namespaces.
using f16 = mamclip::half;

#define MAMCLIP_SKIP_WITHOUT_GPU()                 \
  do {                                             \
    if (::mamclip::test::gpu_count() == 0) {       \
      WARN("skipped: no CUDA device");             \
      return;                                      \
    }                                              \
  } while (0)
