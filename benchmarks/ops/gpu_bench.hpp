#pragma once
// What the CUDA kernel benchmarks share: an L2 flush, the best time of
// repeated runs measured with CUDA events, and the relative error of a result
// against the baseline's. Plain C++ (cuda_runtime.h and mamclip's tensors).
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "mamclip/mamclip.hpp"

namespace mamclip::bench {

inline void cuda_check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw device_error(std::string(what) + ": " + cudaGetErrorString(e));
}

// Writes twice the L2 size, so that a timed run starts with cold caches.
struct L2Flush {
  void* buf = nullptr;
  size_t bytes = 0;
  L2Flush() {
    int l2 = 0;
    cuda_check(cudaDeviceGetAttribute(&l2, cudaDevAttrL2CacheSize, 0), "cudaDeviceGetAttribute(L2 size)");
    bytes = size_t(2) * static_cast<size_t>(l2);
    cuda_check(cudaMalloc(&buf, bytes), "cudaMalloc(L2 flush)");
  }
  L2Flush(const L2Flush&) = delete;
  L2Flush& operator=(const L2Flush&) = delete;
  ~L2Flush() { cudaFree(buf); }
  void operator()() const { cuda_check(cudaMemsetAsync(buf, 0, bytes), "cudaMemsetAsync(L2 flush)"); }
};

// Best of `reps` runs of f in ms (default stream), after one warm-up run
// (allocator cache, library heuristics, kernel attributes).
template <class F>
double best_ms(F&& f, const L2Flush& flush, int reps = 20) {
  f();
  cuda_check(cudaDeviceSynchronize(), "warm-up");
  cudaEvent_t a, b;
  cuda_check(cudaEventCreate(&a), "cudaEventCreate");
  cuda_check(cudaEventCreate(&b), "cudaEventCreate");
  double best = 1e30;
  for (int i = 0; i < reps; ++i) {
    flush();
    cuda_check(cudaEventRecord(a), "cudaEventRecord");
    f();
    cuda_check(cudaEventRecord(b), "cudaEventRecord");
    cuda_check(cudaEventSynchronize(b), "timed run");
    float t = 0;
    cuda_check(cudaEventElapsedTime(&t, a, b), "cudaEventElapsedTime");
    best = std::min(best, static_cast<double>(t));
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return best;
}

// max |got - want| / max |want|, both copied to the host in double.
template <class T>
double rel_err(const Tensor<T>& got, const Tensor<T>& want) {
  const auto g = got.to(kCPU).template to<double>(), w = want.to(kCPU).template to<double>();
  return amax(abs(g - w)).item() / std::max(amax(abs(w)).item(), 1e-30);
}

}  // namespace mamclip::bench
