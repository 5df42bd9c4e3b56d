#pragma once
// The kernel registry: how an op finds its kernel for a non-CPU device.
//
// CPU kernels are called directly (they are the reference). A backend (CUDA)
// registers its kernels by (op name, dtype, device type) when its implementation
// unit is linked in. An op whose kernel is missing throws a device_error that
// names the op, the dtype and the device.

#include <map>
#include <string>
#include <tuple>

#include "mamclip/core/device.hpp"
#include "mamclip/core/dtype.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/storage.hpp"

namespace mamclip {

class KernelRegistry {
 public:
  static KernelRegistry& get() {
    static KernelRegistry r;
    return r;
  }
  // `fn` is a function pointer whose type the op's header defines.
  template <class Fn>
  void add(const std::string& op, DType dtype, DeviceType dev, Fn* fn) {
    table_[{op, dtype, dev}] = reinterpret_cast<void*>(fn);
  }
  template <class Fn>
  Fn* find(const std::string& op, DType dtype, DeviceType dev) const {
    auto it = table_.find({op, dtype, dev});
    return it == table_.end() ? nullptr : reinterpret_cast<Fn*>(it->second);
  }

 private:
  std::map<std::tuple<std::string, DType, DeviceType>, void*> table_;
};

// The kernel registered for (op, dtype, device.type), or nullptr (for ops
// with a fallback). When found, makes `device` the thread's current one,
// where the kernel will launch.
template <class Fn>
Fn* find_kernel(const std::string& op, DType dtype, Device device) {
  Fn* fn = KernelRegistry::get().find<Fn>(op, dtype, device.type);
  if (fn) make_current(device);
  return fn;
}

// The kernel for (op, dtype, device) or a device_error naming what is missing.
// Also makes `device` the thread's current one, where the kernel will launch.
template <class Fn>
Fn* require_kernel(const std::string& op, DType dtype, Device device) {
  Fn* fn = KernelRegistry::get().find<Fn>(op, dtype, device.type);
  MAMCLIP_CHECK(fn != nullptr, device_error, op, ": no kernel is registered for ", dtype_name(dtype), " tensors on ",
                device.str(), (device_available(device.type) ? "" : " (no backend is linked for it: link mamclip::cuda)"));
  make_current(device);  // the kernel launches on the current device: the tensors' one
  return fn;
}

}  // namespace mamclip
