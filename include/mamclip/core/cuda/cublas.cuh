#pragma once
// cuBLAS handles: one per (thread, device), created on first use and bound to
// the caller's stream at each call. A handle is not safe to share between
// threads that use different streams, and creating one costs milliseconds,
// so a thread that ends returns its handles to a pool for the next thread.
//
// Handles are never destroyed: cublasDestroy during static destruction can run
// after the CUDA runtime has unloaded (PyTorch leaks them for the same reason).

#include <mutex>
#include <vector>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"

namespace mamclip::cuda {

namespace detail {

class CublasHandlePool {
 public:
  static CublasHandlePool& get() {
    static auto* pool = new CublasHandlePool;  // leaked on purpose, see above
    return *pool;
  }
  cublasHandle_t acquire(int device) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& free = free_[static_cast<size_t>(device)];
      if (!free.empty()) {
        cublasHandle_t h = free.back();
        free.pop_back();
        return h;
      }
    }
    cublasHandle_t h = nullptr;
    MAMCLIP_CUBLAS_CHECK(cublasCreate(&h));  // on the current device, which the caller has set
    return h;
  }
  void release(int device, cublasHandle_t h) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_[static_cast<size_t>(device)].push_back(h);
  }

 private:
  std::mutex mutex_;
  std::vector<cublasHandle_t> free_[kMaxDevices];
};

struct ThreadCublasHandles {
  cublasHandle_t handles[kMaxDevices] = {};
  ~ThreadCublasHandles() {
    for (int d = 0; d < kMaxDevices; ++d)
      if (handles[d]) CublasHandlePool::get().release(d, handles[d]);
  }
};

}  // namespace detail

// The calling thread's handle for the current device, bound to `stream`.
inline cublasHandle_t cublas_handle(cudaStream_t stream) {
  const int device = current_device();
  check_device_index(device, "cublas_handle");
  thread_local detail::ThreadCublasHandles mine;
  cublasHandle_t& h = mine.handles[device];
  if (!h) h = detail::CublasHandlePool::get().acquire(device);
  MAMCLIP_CUBLAS_CHECK(cublasSetStream(h, stream));
  return h;
}

}  // namespace mamclip::cuda
