#pragma once
// Storage: a reference-counted block of bytes on one device, obtained from that
// device's allocator. Tensors and their views share a Storage.
//
// The CPU allocator is built in. Other devices register an allocator and a byte
// copier at start-up (the CUDA implementation unit does this); until then, asking
// for their memory throws a device_error. So CPU headers never depend on CUDA.

#include <array>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "mamclip/core/device.hpp"
#include "mamclip/core/error.hpp"

namespace mamclip {

struct Allocator {
  virtual ~Allocator() = default;
  virtual void* allocate(size_t nbytes, Device device) = 0;
  virtual void deallocate(void* ptr, size_t nbytes, Device device) = 0;
};

// Copies nbytes between two devices of which at least one is not the CPU.
using CopyBytesFn = void (*)(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes);
// Makes `device` the calling thread's current device of its type (CUDA:
// cudaSetDevice), so that the kernels an op launches next run where its
// tensors live.
using ActivateFn = void (*)(Device device);

// The CPU allocator: 64-byte aligned blocks from the C library, and a cache of
// large ones. A block of at least kCacheMin bytes is kept when freed and handed
// out again for a request of the same size class, so the activations of a
// training or inference loop do not go back to the operating system and fault
// in again, page by page, every step (glibc returns large blocks at once; on a
// BERT-base forward that cost 16 % of the time). Classes round a size up by at
// most 1/8. The cache holds at most cache_limit() bytes (MAMCLIP_CPU_CACHE_MIB,
// default 4096; 0 turns it off); release_cache() returns it to the system.
class CpuAllocator final : public Allocator {
 public:
  static constexpr size_t kAlignment = 64;  // one cache line; enough for AVX-512 loads
  static constexpr size_t kCacheMin = size_t{1} << 20;

  CpuAllocator() {
    size_t mib = 4096;
    if (const char* env = std::getenv("MAMCLIP_CPU_CACHE_MIB")) mib = static_cast<size_t>(std::strtoull(env, nullptr, 10));
    limit_ = mib << 20;
  }

  void* allocate(size_t nbytes, Device) override {
    if (nbytes == 0) return nullptr;
    if (nbytes > std::numeric_limits<size_t>::max() / 2) throw std::bad_alloc();  // size_class would overflow
    const size_t size = size_class(nbytes);
    if (size >= kCacheMin) {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.find(size);
      if (it != free_.end() && !it->second.empty()) {
        void* p = it->second.back();
        it->second.pop_back();
        cached_ -= size;
        return p;
      }
    }
    void* p = std::aligned_alloc(kAlignment, size);
    if (!p) {
      release_cache();  // the cache may hold what this request needs
      p = std::aligned_alloc(kAlignment, size);
      if (!p) throw std::bad_alloc();
    }
    return p;
  }

  void deallocate(void* ptr, size_t nbytes, Device) override {
    if (!ptr) return;
    const size_t size = size_class(nbytes);
    if (size >= kCacheMin) {
      std::lock_guard<std::mutex> lock(mu_);
      if (cached_ + size <= limit_) {
        free_[size].push_back(ptr);
        cached_ += size;
        return;
      }
    }
    std::free(ptr);
  }

  // Frees every cached block.
  void release_cache() {
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& [size, blocks] : free_)
      for (void* p : blocks) std::free(p);
    free_.clear();
    cached_ = 0;
  }
  size_t cached_bytes() const {
    std::lock_guard<std::mutex> lock(mu_);
    return cached_;
  }
  size_t cache_limit() const {
    std::lock_guard<std::mutex> lock(mu_);
    return limit_;
  }
  // A new limit; cached blocks past it are freed.
  void set_cache_limit(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes;
      if (cached_ <= limit_) return;
    }
    release_cache();
  }

  // The size a request is served with: a multiple of 64 bytes, and of 1/8 of
  // its power of two from kCacheMin on (so one class serves sizes within 12.5 %).
  static size_t size_class(size_t nbytes) {
    size_t step = kAlignment;
    if (nbytes >= kCacheMin) {
      size_t pow2 = kCacheMin;
      while (pow2 <= nbytes / 2) pow2 *= 2;
      step = pow2 / 8;
    }
    return (nbytes + step - 1) / step * step;
  }

 private:
  mutable std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
  size_t cached_ = 0, limit_ = 0;
};

namespace detail {
// Never destroyed: tensors freed by other static destructors still find it.
inline CpuAllocator& builtin_cpu_allocator() {
  static CpuAllocator* cpu = new CpuAllocator();
  return *cpu;
}

struct DeviceRegistry {
  std::array<Allocator*, kNumDeviceTypes> allocators{};
  std::array<CopyBytesFn, kNumDeviceTypes> copiers{};
  std::array<ActivateFn, kNumDeviceTypes> activators{};
  static DeviceRegistry& get() {
    static DeviceRegistry r = [] {
      DeviceRegistry reg;
      reg.allocators[static_cast<int>(DeviceType::cpu)] = &builtin_cpu_allocator();
      return reg;
    }();
    return r;
  }
};
}  // namespace detail

// The CPU allocator (its cache of large blocks: release_cache, cached_bytes, set_cache_limit).
inline CpuAllocator& cpu_allocator() { return detail::builtin_cpu_allocator(); }

inline void register_device(DeviceType type, Allocator* allocator, CopyBytesFn copier, ActivateFn activate = nullptr) {
  auto& r = detail::DeviceRegistry::get();
  r.allocators[static_cast<int>(type)] = allocator;
  r.copiers[static_cast<int>(type)] = copier;
  r.activators[static_cast<int>(type)] = activate;
}

// Makes `device` the calling thread's current device (nothing for the CPU).
// require_kernel calls it, so every op launches on its tensors' device, and
// the thread stays there afterwards (a model on cuda:1 trains on GPU 1
// without the caller setting anything).
inline void make_current(Device device) {
  if (device.is_cpu()) return;
  if (ActivateFn fn = detail::DeviceRegistry::get().activators[static_cast<int>(device.type)]) fn(device);
}

inline bool device_available(DeviceType type) {
  return detail::DeviceRegistry::get().allocators[static_cast<int>(type)] != nullptr;
}

inline Allocator& allocator_for(Device d) {
  Allocator* a = detail::DeviceRegistry::get().allocators[static_cast<int>(d.type)];
  MAMCLIP_CHECK(a != nullptr, device_error, "no allocator is registered for device ", d.str(),
                " (build with MAMCLIP_WITH_CUDA and link mamclip::cuda, or include mamclip/cuda.hpp "
                "with MAMCLIP_CUDA_IMPLEMENTATION in one .cu file)");
  return *a;
}

// Copies bytes between any two devices.
inline void copy_bytes(void* dst, Device dst_device, const void* src, Device src_device, size_t nbytes) {
  if (nbytes == 0) return;
  if (dst_device.is_cpu() && src_device.is_cpu()) {
    std::memcpy(dst, src, nbytes);
    return;
  }
  const Device other = dst_device.is_cpu() ? src_device : dst_device;
  CopyBytesFn fn = detail::DeviceRegistry::get().copiers[static_cast<int>(other.type)];
  MAMCLIP_CHECK(fn != nullptr, device_error, "copy from ", src_device.str(), " to ", dst_device.str(),
                ": no copier is registered for ", other.str());
  fn(dst, dst_device, src, src_device, nbytes);
}

class Storage {
 public:
  Storage(size_t nbytes, Device device)
      : data_(allocator_for(device).allocate(nbytes, device)), nbytes_(nbytes), device_(device) {}
  ~Storage() {
    if (data_) allocator_for(device_).deallocate(data_, nbytes_, device_);
  }
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  void* data() const { return data_; }
  size_t nbytes() const { return nbytes_; }
  Device device() const { return device_; }

 private:
  void* data_;
  size_t nbytes_;
  Device device_;
};

}  // namespace mamclip
