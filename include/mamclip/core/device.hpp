#pragma once
// Where a tensor's storage lives: the CPU or CUDA device n.

#include <cstdint>
#include <optional>
#include <ostream>
#include <string>
#include <string_view>

namespace mamclip {

enum class DeviceType : uint8_t { cpu = 0, cuda = 1 };
inline constexpr int kNumDeviceTypes = 2;

struct Device {
  DeviceType type = DeviceType::cpu;
  int index = 0;

  static constexpr Device cpu() { return {DeviceType::cpu, 0}; }
  static constexpr Device cuda(int n = 0) { return {DeviceType::cuda, n}; }
  constexpr bool is_cpu() const { return type == DeviceType::cpu; }
  constexpr bool is_cuda() const { return type == DeviceType::cuda; }
  friend constexpr bool operator==(Device a, Device b) { return a.type == b.type && a.index == b.index; }
  std::string str() const { return is_cpu() ? std::string("cpu") : "cuda:" + std::to_string(index); }
  friend std::ostream& operator<<(std::ostream& os, Device d) { return os << d.str(); }
};

inline constexpr Device kCPU = Device::cpu();

// "cpu", "cuda" (device 0) or "cuda:N" as written by Device::str(); nullopt for anything else.
inline std::optional<Device> parse_device(std::string_view text) {
  if (text == "cpu") return kCPU;
  if (text == "cuda") return Device::cuda(0);
  if (text.substr(0, 5) != "cuda:" || text.size() == 5 || text.size() > 8) return std::nullopt;
  int index = 0;
  for (char c : text.substr(5)) {
    if (c < '0' || c > '9') return std::nullopt;
    index = index * 10 + (c - '0');
  }
  return Device::cuda(index);
}

namespace detail {
inline int& device_graph_captures() {
  thread_local int depth = 0;
  return depth;
}
}  // namespace detail

// Whether the calling thread is capturing a device graph (cuda::Graph): the
// device work queued now is recorded once and replayed later as recorded,
// while host code in the captured region runs only now. What would bake a
// value that must change per run into the graph refuses to run: random
// draws (Generator::next_offset) and optimizer steps.
inline bool capturing_device_graph() { return detail::device_graph_captures() > 0; }

}  // namespace mamclip
