#pragma once
// Library handles (cuBLAS, cuDNN): one per (thread, device), created on first
// use and bound to the caller's stream at each call. A handle is not safe to
// share between threads that use different streams, and creating one costs
// milliseconds, so a thread that ends returns its handles to a pool for the
// next thread.
//
// Handles are never destroyed: destroying them during static destruction can
// run after the CUDA runtime has unloaded (PyTorch leaks them for the same
// reason).

#include <mutex>
#include <vector>

#include "mamclip/core/cuda/device.cuh"

namespace mamclip::cuda::detail {

template <class Handle>
class HandlePool {
 public:
  static HandlePool& get() {
    static auto* pool = new HandlePool;  // leaked on purpose, see above
    return *pool;
  }
  // A free handle of `device`, or create() on the current device (which the caller has set).
  template <class Create>
  Handle acquire(int device, Create&& create) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto& free = free_[static_cast<size_t>(device)];
      if (!free.empty()) {
        Handle h = free.back();
        free.pop_back();
        return h;
      }
    }
    return create();
  }
  void release(int device, Handle h) {
    std::lock_guard<std::mutex> lock(mutex_);
    free_[static_cast<size_t>(device)].push_back(h);
  }

 private:
  std::mutex mutex_;
  std::vector<Handle> free_[kMaxDevices];
};

// The calling thread's handles, one per device; returned to the pool when the thread ends.
template <class Handle>
struct ThreadHandles {
  Handle handles[kMaxDevices] = {};
  ~ThreadHandles() {
    for (int d = 0; d < kMaxDevices; ++d)
      if (handles[d]) HandlePool<Handle>::get().release(d, handles[d]);
  }
};

// The calling thread's handle of the current device, made by create() the first time.
template <class Handle, class Create>
Handle& thread_handle(const char* what, Create&& create) {
  const int device = current_device();
  check_device_index(device, what);
  thread_local ThreadHandles<Handle> mine;
  Handle& h = mine.handles[device];
  if (!h) h = HandlePool<Handle>::get().acquire(device, create);
  return h;
}

}  // namespace mamclip::cuda::detail
