#pragma once
// Devices and streams.
//
// Every kernel of the backend runs on the calling thread's current device and
// that device's current stream. The current stream starts as the legacy
// default stream (0), which orders all work on the device; a StreamGuard
// switches it. The caching allocator reuses a block only on the stream it was
// allocated on, so kernels on another stream must not touch tensors allocated
// under a different one without synchronising.

#include <array>

#include "mamclip/core/cuda/check.cuh"

namespace mamclip::cuda {

inline constexpr int kMaxDevices = 64;

// Number of visible devices; 0 when there is none or no usable driver.
inline int device_count() {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // clear it: "no device" is an answer here, not an error
    return 0;
  }
  return n;
}

inline int current_device() {
  int d = 0;
  MAMCLIP_CUDA_CHECK(cudaGetDevice(&d));
  return d;
}

inline void check_device_index(int index, const char* what) {
  MAMCLIP_CHECK(index >= 0 && index < kMaxDevices, device_error, what, ": device index ", index,
                " is out of range [0, ", kMaxDevices, ")");
}

// Makes `index` the current device for its scope.
class DeviceGuard {
 public:
  explicit DeviceGuard(int index) {
    check_device_index(index, "DeviceGuard");
    MAMCLIP_CUDA_CHECK(cudaGetDevice(&previous_));
    if (previous_ != index) MAMCLIP_CUDA_CHECK(cudaSetDevice(index));
  }
  ~DeviceGuard() {
    int now = previous_;
    if (cudaGetDevice(&now) == cudaSuccess && now != previous_) (void)cudaSetDevice(previous_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = 0;
};

namespace detail {
inline std::array<cudaStream_t, kMaxDevices>& thread_streams() {
  thread_local std::array<cudaStream_t, kMaxDevices> streams{};  // all 0: the legacy default stream
  return streams;
}
}  // namespace detail

// The calling thread's current stream on `device` (-1: the current device).
inline cudaStream_t current_stream(int device = -1) {
  if (device < 0) device = current_device();
  check_device_index(device, "current_stream");
  return detail::thread_streams()[static_cast<size_t>(device)];
}

inline void set_current_stream(cudaStream_t stream, int device = -1) {
  if (device < 0) device = current_device();
  check_device_index(device, "set_current_stream");
  detail::thread_streams()[static_cast<size_t>(device)] = stream;
}

// Makes `stream` the current stream of `device` (-1: the current device) for its scope.
class StreamGuard {
 public:
  explicit StreamGuard(cudaStream_t stream, int device = -1)
      : device_(device < 0 ? current_device() : device), previous_(current_stream(device_)) {
    set_current_stream(stream, device_);
  }
  ~StreamGuard() { detail::thread_streams()[static_cast<size_t>(device_)] = previous_; }
  StreamGuard(const StreamGuard&) = delete;
  StreamGuard& operator=(const StreamGuard&) = delete;

 private:
  int device_;
  cudaStream_t previous_;
};

}  // namespace mamclip::cuda
