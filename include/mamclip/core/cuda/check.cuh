#pragma once
// The CUDA and cuBLAS error checks. Each throws mamclip::device_error with
// file:line, the call as written and the library's error name and text, so a
// failure is reported where it happens and the caller decides what to do.
//
//   MAMCLIP_CUDA_CHECK(cudaMemcpyAsync(...));
//   kernel<<<grid, block, 0, stream>>>(...);
//   MAMCLIP_CUDA_CHECK_LAUNCH();            // after every launch
//   MAMCLIP_CUBLAS_CHECK(cublasGemmStridedBatchedEx(...));
//
// Host code only: this header can be compiled by the host compiler as well.

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "mamclip/core/error.hpp"

namespace mamclip::cuda::detail {

[[noreturn]] inline void throw_cuda_error(cudaError_t err, const char* call, const char* file, int line) {
  throw device_error(::mamclip::detail::str_cat(file, ":", line, ": ", call, " failed: ", cudaGetErrorName(err),
                                                " (", cudaGetErrorString(err), ")"));
}

[[noreturn]] inline void throw_cublas_error(cublasStatus_t status, const char* call, const char* file, int line) {
  throw device_error(::mamclip::detail::str_cat(file, ":", line, ": ", call, " failed: ", cublasGetStatusName(status),
                                                " (", cublasGetStatusString(status), ")"));
}

}  // namespace mamclip::cuda::detail

#define MAMCLIP_CUDA_CHECK(call)                                                             \
  do {                                                                                       \
    const cudaError_t mamclip_cuda_err_ = (call);                                            \
    if (mamclip_cuda_err_ != cudaSuccess)                                                    \
      ::mamclip::cuda::detail::throw_cuda_error(mamclip_cuda_err_, #call, __FILE__, __LINE__); \
  } while (0)

#define MAMCLIP_CUBLAS_CHECK(call)                                                                  \
  do {                                                                                              \
    const cublasStatus_t mamclip_cublas_status_ = (call);                                           \
    if (mamclip_cublas_status_ != CUBLAS_STATUS_SUCCESS)                                            \
      ::mamclip::cuda::detail::throw_cublas_error(mamclip_cublas_status_, #call, __FILE__, __LINE__); \
  } while (0)

// A launch reports bad configurations (grid, shared memory) only through
// cudaGetLastError; errors inside the kernel surface at the next synchronising call.
#define MAMCLIP_CUDA_CHECK_LAUNCH() MAMCLIP_CUDA_CHECK(cudaGetLastError())
