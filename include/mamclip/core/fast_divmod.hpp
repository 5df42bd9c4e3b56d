#pragma once
// Division of 32-bit unsigned integers by a divisor fixed at launch, with one
// high multiply, an add and a shift instead of a hardware-less 32-bit divide
// (a few dozen instructions on a GPU). Index math of strided kernels divides
// every element's index by each dim's size, so this is the difference between
// a memory-bound and an ALU-bound kernel.
//
// The round-up method of Granlund and Montgomery ("Division by invariant
// integers using multiplication", 1994): with l = ceil(log2 d) and the 33-bit
// multiplier m' = floor(2^(32+l) / d) + 1, q = floor(x m' / 2^(32+l)) for every
// x < 2^32. m' = 2^32 + multiplier, so x m' / 2^32 = x + umulhi(x, multiplier).
//
//   const FastDivmod by(cols);                 // on the host, once
//   uint32_t row, col; by.divmod(i, row, col);  // on the device (or host)

#include <cstdint>

#include "mamclip/core/config.hpp"
#include "mamclip/core/error.hpp"

namespace mamclip {

struct FastDivmod {
  uint32_t divisor = 1;
  uint32_t multiplier = 0;
  uint32_t shift = 0;

  FastDivmod() = default;
  explicit FastDivmod(uint32_t d) : divisor(d) {
    MAMCLIP_CHECK(d >= 1, value_error, "FastDivmod: the divisor must be at least 1, got ", d);
    while ((uint64_t(1) << shift) < d) ++shift;
    multiplier = static_cast<uint32_t>((((uint64_t(1) << shift) - d) << 32) / d + 1);
  }

  MAMCLIP_HOST_DEVICE uint32_t div(uint32_t x) const {
#if defined(__CUDA_ARCH__)
    const uint32_t hi = __umulhi(x, multiplier);
#else
    const uint32_t hi = static_cast<uint32_t>((uint64_t(x) * multiplier) >> 32);
#endif
    return static_cast<uint32_t>((uint64_t(hi) + x) >> shift);
  }

  MAMCLIP_HOST_DEVICE void divmod(uint32_t x, uint32_t& quotient, uint32_t& remainder) const {
    quotient = div(x);
    remainder = x - quotient * divisor;
  }
};

}  // namespace mamclip
