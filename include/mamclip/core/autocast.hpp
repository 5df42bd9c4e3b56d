#pragma once
// Autocast: a region of a thread in which the compute-heavy ops on float
// tensors run in a 16-bit type (torch.autocast's policy, adapted to typed
// tensors).
//
//   {
//     AutocastGuard amp(DeviceType::cuda);        // bfloat16 by default; DType::f16 for half
//     auto loss = criterion(model(x), y);         // matmul / linear / conv2d / attention in bf16
//   }                                             // the previous state again
//   loss.backward();                              // gradients reach the float parameters
//
// Inside the region, for float tensors on that device type:
//   matmul, linear, conv2d, scaled_dot_product_attention
//     cast their inputs to the 16-bit type, compute there (16-bit tensor
//     cores on CUDA; float accumulation), and cast the result back to float.
//     The casts are differentiable, so the gradients of float leaves (fp32
//     master weights) are float, and the backward GEMMs run in 16 bits too.
//   everything else (reductions, softmax, norms, losses, elementwise) stays
//     in float, as torch.autocast keeps them in fp32.
// Results are float tensors, not 16-bit ones as in PyTorch: a static type
// cannot change with a runtime switch. The values are the same (each
// autocast op rounds its output to the 16-bit type before widening it).
// half and double tensors, and tensors on another device type, are left alone.
//
// The state is per thread (a data loader thread is unaffected) and per
// device type; guards nest and restore what they found.

#include <type_traits>

#include "mamclip/core/device.hpp"
#include "mamclip/core/dtype.hpp"
#include "mamclip/core/error.hpp"

namespace mamclip {

struct AutocastMode {
  bool enabled = false;
  DType dtype = DType::bf16;  // bf16 or f16
};

namespace detail {
struct AutocastState {
  AutocastMode cpu, cuda;
  AutocastMode& of(DeviceType d) { return d == DeviceType::cpu ? cpu : cuda; }
};
inline AutocastState& autocast_state() {
  thread_local AutocastState state;
  return state;
}
}  // namespace detail

inline AutocastMode autocast_mode(DeviceType device) { return detail::autocast_state().of(device); }
inline bool autocast_enabled(DeviceType device) { return autocast_mode(device).enabled; }

// Calls f(U{}) with U the region's 16-bit type (bfloat16 or half) on `device`:
// how an op runs its autocast path, e.g.
//   return autocast_dispatch(x.device(), [&](auto u) { using U = decltype(u); ... });
template <class F>
decltype(auto) autocast_dispatch(Device device, F&& f) {
  if (autocast_mode(device.type).dtype == DType::f16) return f(half{});
  return f(bfloat16{});
}

// Whether an op on a T tensor on `device` takes its autocast path (float only).
template <class T>
bool autocast_applies(Device device) {
  if constexpr (std::is_same_v<T, float>) return autocast_enabled(device.type);
  else return false;
}

// Sets autocast for `device` on this thread until destroyed (enabled = false
// turns it off inside an outer region).
class AutocastGuard {
 public:
  explicit AutocastGuard(DeviceType device, DType dtype = DType::bf16, bool enabled = true)
      : device_(device), previous_(autocast_mode(device)) {
    MAMCLIP_CHECK(dtype == DType::bf16 || dtype == DType::f16, dtype_error, "AutocastGuard: dtype ", dtype_name(dtype),
                  " is not a 16-bit float type; expected bfloat16 or float16");
    detail::autocast_state().of(device_) = {enabled, dtype};
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;
  ~AutocastGuard() { detail::autocast_state().of(device_) = previous_; }

 private:
  DeviceType device_;
  AutocastMode previous_;
};

}  // namespace mamclip
