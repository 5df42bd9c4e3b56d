#pragma once
// x86-64 SIMD building blocks shared by CPU kernels (AVX2; see core/config.hpp
// for how such code is compiled and chosen at run time).
//
// defines: transpose_8x8_registers

#include "mamclip/core/config.hpp"

#ifdef MAMCLIP_AVX2
#include <immintrin.h>

namespace mamclip::simd {

// Transposes the 8×8 block held in v (v[j] lane i = element (i, j)) in place,
// so that afterwards v[i] lane j = element (i, j).
MAMCLIP_AVX2_TARGET inline void transpose_8x8_registers(__m256 v[8]) {
  __m256 t[8], u[8];
  for (int k = 0; k < 8; k += 2) {
    t[k] = _mm256_unpacklo_ps(v[k], v[k + 1]);
    t[k + 1] = _mm256_unpackhi_ps(v[k], v[k + 1]);
  }
  for (int k = 0; k < 8; k += 4) {
    u[k] = _mm256_shuffle_ps(t[k], t[k + 2], 0x44);
    u[k + 1] = _mm256_shuffle_ps(t[k], t[k + 2], 0xEE);
    u[k + 2] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0x44);
    u[k + 3] = _mm256_shuffle_ps(t[k + 1], t[k + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    v[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

}  // namespace mamclip::simd
#endif
