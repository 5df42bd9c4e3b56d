#pragma once
// Seeded random numbers from the counter-based Philox 4x32-10 generator.
//
// Counter-based means element i of a draw depends only on (seed, offset, i), not
// on the order elements are produced in: CPU loops, threads and CUDA kernels give
// the same numbers, and dropout's backward can regenerate its mask.

#include <array>
#include <cmath>
#include <cstdint>

#include "mamclip/core/config.hpp"
#include "mamclip/core/device.hpp"
#include "mamclip/core/error.hpp"

namespace mamclip {

struct Philox {
  // One Philox 4x32-10 block: 4 random 32-bit words for (key, counter).
  MAMCLIP_HOST_DEVICE static void block(uint64_t key, uint64_t counter_hi, uint64_t counter_lo,
                                        uint32_t out[4]) {
    uint32_t c0 = static_cast<uint32_t>(counter_lo), c1 = static_cast<uint32_t>(counter_lo >> 32);
    uint32_t c2 = static_cast<uint32_t>(counter_hi), c3 = static_cast<uint32_t>(counter_hi >> 32);
    uint32_t k0 = static_cast<uint32_t>(key), k1 = static_cast<uint32_t>(key >> 32);
    for (int round = 0; round < 10; ++round) {
      const uint64_t p0 = static_cast<uint64_t>(0xD2511F53u) * c0;
      const uint64_t p1 = static_cast<uint64_t>(0xCD9E8D57u) * c2;
      const uint32_t hi0 = static_cast<uint32_t>(p0 >> 32), lo0 = static_cast<uint32_t>(p0);
      const uint32_t hi1 = static_cast<uint32_t>(p1 >> 32), lo1 = static_cast<uint32_t>(p1);
      c0 = hi1 ^ c1 ^ k0;
      c1 = lo1;
      c2 = hi0 ^ c3 ^ k1;
      c3 = lo0;
      k0 += 0x9E3779B9u;
      k1 += 0xBB67AE85u;
    }
    out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
  }

  // Uniform in (0, 1]: never 0, so log() in Box–Muller is finite.
  MAMCLIP_HOST_DEVICE static double to_unit(uint32_t x) { return (static_cast<double>(x) + 1.0) * 2.3283064365386963e-10; }

  // Element i of the uniform stream (seed, offset): one block gives 4 elements.
  MAMCLIP_HOST_DEVICE static double uniform(uint64_t seed, uint64_t offset, uint64_t i) {
    uint32_t r[4];
    block(seed, offset, i / 4, r);
    return to_unit(r[i % 4]);
  }

  // Element i of the standard normal stream (seed, offset), by Box–Muller on a block.
  MAMCLIP_HOST_DEVICE static double normal(uint64_t seed, uint64_t offset, uint64_t i) {
    uint32_t r[4];
    block(seed, offset, i / 2, r);
    const double u1 = to_unit(r[0]), u2 = to_unit(r[1]);
    const double radius = std::sqrt(-2.0 * std::log(u1));
    const double angle = 6.283185307179586 * u2;
    return (i % 2 == 0) ? radius * std::cos(angle) : radius * std::sin(angle);
  }

  // Elements [0, n) of the uniform stream, sink(i, value): the same values as
  // uniform(seed, offset, i), one block per 4 elements instead of per element.
  template <class Sink>
  static void for_each_uniform(uint64_t seed, uint64_t offset, uint64_t n, Sink&& sink) {
    uint32_t r[4];
    for (uint64_t b = 0; b * 4 < n; ++b) {
      block(seed, offset, b, r);
      for (uint64_t j = 0; j < 4 && b * 4 + j < n; ++j) sink(b * 4 + j, to_unit(r[j]));
    }
  }
  // Elements [0, n) of the normal stream, sink(i, value): the same values as
  // normal(seed, offset, i), each Box–Muller pair computed once.
  template <class Sink>
  static void for_each_normal(uint64_t seed, uint64_t offset, uint64_t n, Sink&& sink) {
    uint32_t r[4];
    for (uint64_t b = 0; b * 2 < n; ++b) {
      block(seed, offset, b, r);
      const double u1 = to_unit(r[0]), u2 = to_unit(r[1]);
      const double radius = std::sqrt(-2.0 * std::log(u1));
      const double angle = 6.283185307179586 * u2;
      sink(b * 2, radius * std::cos(angle));
      if (b * 2 + 1 < n) sink(b * 2 + 1, radius * std::sin(angle));
    }
  }
};

// A seeded stream. Each draw takes a fresh `offset`, so consecutive draws differ
// and a generator re-seeded with the same seed repeats them exactly.
class Generator {
 public:
  explicit Generator(uint64_t seed = 0x5eed) : seed_(seed) {}
  void manual_seed(uint64_t seed) { seed_ = seed; offset_ = 0; }
  uint64_t seed() const { return seed_; }
  uint64_t offset() const { return offset_; }
  // Reserves one stream for a draw and returns its offset.
  uint64_t next_offset() {
    MAMCLIP_CHECK(!capturing_device_graph(), device_error,
                  "Generator: a random draw while this thread captures a CUDA graph; the graph would replay the same "
                  "draw (the same dropout or drop_path mask) every time. Capture with dropout off (eval mode or p = 0)");
    return offset_++;
  }
  // Restores a state read with seed() and offset() (checkpoints, replaying a
  // micro-batch's dropout masks).
  void set_state(uint64_t seed, uint64_t offset) {
    seed_ = seed;
    offset_ = offset;
  }

 private:
  uint64_t seed_;
  uint64_t offset_ = 0;
};

inline Generator& default_generator() {
  static thread_local Generator gen;
  return gen;
}
inline void manual_seed(uint64_t seed) { default_generator().manual_seed(seed); }

}  // namespace mamclip
