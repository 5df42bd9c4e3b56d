#pragma once
// cuBLAS handles: one per (thread, device), pooled (handle_pool.cuh), bound
// to the caller's stream at each call.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/handle_pool.cuh"

namespace mamclip::cuda {

// The calling thread's handle for the current device, bound to `stream`.
inline cublasHandle_t cublas_handle(cudaStream_t stream) {
  cublasHandle_t h = detail::thread_handle<cublasHandle_t>("cublas_handle", [] {
    cublasHandle_t created = nullptr;
    MAMCLIP_CUBLAS_CHECK(cublasCreate(&created));
    return created;
  });
  MAMCLIP_CUBLAS_CHECK(cublasSetStream(h, stream));
  return h;
}

}  // namespace mamclip::cuda
