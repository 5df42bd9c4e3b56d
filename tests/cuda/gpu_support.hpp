#pragma once
// What every test of the CUDA backend shares: whether a device is visible,
// and the skip of a [gpu] case without one (the text CTest's
// SKIP_REGULAR_EXPRESSION in tests/cuda/CMakeLists.txt looks for).

#include <cuda_runtime.h>

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

}  // namespace mamclip::test

#define MAMCLIP_SKIP_WITHOUT_GPU()                 \
  do {                                             \
    if (::mamclip::test::gpu_count() == 0) {       \
      WARN("skipped: no CUDA device");             \
      return;                                      \
    }                                              \
  } while (0)
