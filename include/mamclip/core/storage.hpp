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
#include <memory>

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

struct CpuAllocator final : Allocator {
  static constexpr size_t kAlignment = 64;  // one cache line; enough for AVX-512 loads
  void* allocate(size_t nbytes, Device) override {
    if (nbytes == 0) return nullptr;
    const size_t rounded = (nbytes + kAlignment - 1) / kAlignment * kAlignment;
    void* p = std::aligned_alloc(kAlignment, rounded);
    if (!p) throw std::bad_alloc();
    return p;
  }
  void deallocate(void* ptr, size_t, Device) override { std::free(ptr); }
};

namespace detail {
struct DeviceRegistry {
  std::array<Allocator*, kNumDeviceTypes> allocators{};
  std::array<CopyBytesFn, kNumDeviceTypes> copiers{};
  static DeviceRegistry& get() {
    static CpuAllocator cpu;
    static DeviceRegistry r = [] {
      DeviceRegistry reg;
      reg.allocators[static_cast<int>(DeviceType::cpu)] = &cpu;
      return reg;
    }();
    return r;
  }
};
}  // namespace detail

inline void register_device(DeviceType type, Allocator* allocator, CopyBytesFn copier) {
  auto& r = detail::DeviceRegistry::get();
  r.allocators[static_cast<int>(type)] = allocator;
  r.copiers[static_cast<int>(type)] = copier;
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
