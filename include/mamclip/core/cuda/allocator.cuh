#pragma once
// The CUDA allocator (caching_allocator.hpp's bookkeeping over cudaMalloc /
// cudaFree) and the byte copier between host and devices, the two things
// register_device needs.

#include <cstdint>

#include "mamclip/core/cuda/caching_allocator.hpp"
#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"

namespace mamclip::cuda {

struct CudaRawAllocator {
  void* allocate(size_t nbytes, int device) {
    const int n = device_count();
    MAMCLIP_CHECK(device >= 0 && device < n, device_error, "allocating ", nbytes, " bytes on cuda:", device,
                  ": no such device (", n, " CUDA device", n == 1 ? "" : "s", " visible)");
    DeviceGuard guard(device);
    void* ptr = nullptr;
    // Inside a graph capture cudaMalloc is a "potentially unsafe" call that
    // would invalidate it; the block is not part of the graph (the capture
    // pool keeps it for the graph's lifetime), so relaxed mode allows it.
    cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
    MAMCLIP_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    const cudaError_t err = cudaMalloc(&ptr, nbytes);
    MAMCLIP_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
    if (err == cudaErrorMemoryAllocation) {
      (void)cudaGetLastError();  // not sticky; the caching allocator frees its cache and retries
      return nullptr;
    }
    if (err != cudaSuccess)
      detail::throw_cuda_error(err, ::mamclip::detail::str_cat("cudaMalloc(", nbytes, " bytes on cuda:", device, ")").c_str(),
                               __FILE__, __LINE__);
    return ptr;
  }
  void free(void* ptr, int device) {
    DeviceGuard guard(device);
    const cudaError_t err = cudaFree(ptr);
    // Tensors in static storage may be destroyed after the runtime has shut down; the driver frees everything then.
    if (err == cudaErrorCudartUnloading) return;
    MAMCLIP_CUDA_CHECK(err);
  }
};

class CudaCachingAllocator final : public CachingAllocatorInterface {
 public:
  void* allocate(size_t nbytes, Device device) override {
    check_device_index(device.index, "CUDA allocator");
    static const int visible = device_count();  // fixed for the life of the process
    MAMCLIP_CHECK(device.index < visible, device_error, "allocating ", nbytes, " bytes on ", device.str(),
                  ": no such device (", visible, " CUDA device", visible == 1 ? "" : "s", " visible)");
    const cudaStream_t stream = nbytes == 0 ? cudaStream_t{} : current_stream(device.index);
    return core_.allocate(nbytes, device.index, reinterpret_cast<uintptr_t>(stream));
  }
  void deallocate(void* ptr, size_t, Device) override { core_.deallocate(ptr); }
  void empty_cache() override { core_.empty_cache(); }
  MemoryStats stats(int device) const override { return core_.stats(device); }
  uint64_t begin_capture_pool(int device, uintptr_t stream) override {
    return core_.begin_capture_pool(device, stream);
  }
  void end_capture_pool(int device, uintptr_t stream) override { core_.end_capture_pool(device, stream); }
  void release_capture_pool(uint64_t pool) override { core_.release_capture_pool(pool); }

 private:
  CachingAllocatorCore<CudaRawAllocator> core_;
};

namespace detail {
inline bool is_pinned_host(const void* p) {
  cudaPointerAttributes attr{};
  if (cudaPointerGetAttributes(&attr, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return attr.type == cudaMemoryTypeHost;
}
}  // namespace detail

// The CopyBytesFn of the CUDA device: ordered on the current stream of the
// device involved; returns once the host may use the host side (D2H data has
// arrived; an H2D source may be overwritten).
inline void copy_device_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (src_device.is_cpu()) {
    DeviceGuard guard(dst_device.index);
    const cudaStream_t stream = current_stream(dst_device.index);
    MAMCLIP_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyHostToDevice, stream));
    // From pageable memory the call returns once the data is staged; from pinned memory it returns at once.
    if (detail::is_pinned_host(src)) MAMCLIP_CUDA_CHECK(cudaStreamSynchronize(stream));
  } else if (dst_device.is_cpu()) {
    DeviceGuard guard(src_device.index);
    const cudaStream_t stream = current_stream(src_device.index);
    MAMCLIP_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToHost, stream));
    MAMCLIP_CUDA_CHECK(cudaStreamSynchronize(stream));
  } else if (src_device.index == dst_device.index) {
    DeviceGuard guard(src_device.index);
    MAMCLIP_CUDA_CHECK(cudaMemcpyAsync(dst, src, nbytes, cudaMemcpyDeviceToDevice, current_stream(src_device.index)));
  } else {
    // Two devices, two streams: wait for the destination's pending work, copy on the source's stream, then wait.
    {
      DeviceGuard guard(dst_device.index);
      MAMCLIP_CUDA_CHECK(cudaStreamSynchronize(current_stream(dst_device.index)));
    }
    DeviceGuard guard(src_device.index);
    const cudaStream_t stream = current_stream(src_device.index);
    MAMCLIP_CUDA_CHECK(cudaMemcpyPeerAsync(dst, dst_device.index, src, src_device.index, nbytes, stream));
    MAMCLIP_CUDA_CHECK(cudaStreamSynchronize(stream));
  }
}

}  // namespace mamclip::cuda
