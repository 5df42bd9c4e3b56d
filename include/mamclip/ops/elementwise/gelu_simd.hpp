#pragma once
// Exact (erf) GELU and its gradient on 64-float blocks with AVX2 or AVX-512.
//
//   erf(x)  = x·P(x²)/Q(x²) for |x| <= 4 (P degree 6, Q degree 5, fitted by
//             tools/fit_erf.py: 2e-9 relative error before rounding, within
//             about 6 ulp in float), ±1 beyond
//   exp(v)  = 2^n · T(r), v = n·ln2 + r with |r| <= ln2/2, T the degree-7
//             Taylor polynomial (v < -87 gives 0; only v <= 0 is needed here)
//   gelu(x) = x · ½(1 + erf(x/√2)),  gelu'(x) = ½(1 + erf(x/√2)) + x·φ(x)
//
// Both instruction sets run the same operations in the same order (fused
// multiply-adds included), so they give the same bits; a CPU without AVX2
// takes Eigen's vectorised erf instead (ops/elementwise/elementwise.hpp).
//
// defines: gelu_simd::available, gelu_simd::block (out = gelu(x), or g·gelu'(x) when g is given)

#include <cstdint>

#include "mamclip/core/config.hpp"
#include "mamclip/core/error.hpp"

#ifdef MAMCLIP_AVX2
#include <immintrin.h>
#endif

namespace mamclip::cpu::gelu_simd {

inline constexpr int64_t kBlock = 64;

inline bool available() { return cpu_has_avx2_fma(); }

#ifdef MAMCLIP_AVX2
namespace detail {

inline constexpr float kP[] = {1.128379169e+00f, 1.852031714e-01f, 5.431677617e-02f, 3.849592896e-03f,
                               3.796031715e-04f, 4.684626694e-06f, -1.320144943e-08f};
inline constexpr float kQ[] = {1.000000000e+00f, 4.974654510e-01f, 1.139582815e-01f,
                               1.546203251e-02f, 1.307558428e-03f, 6.310914825e-05f};
inline constexpr float kTaylor[] = {1.0f,         1.0f,          0.5f,           1.0f / 6.0f,
                                    1.0f / 24.0f, 1.0f / 120.0f, 1.0f / 720.0f, 1.0f / 5040.0f};
inline constexpr float kLog2e = 1.44269504088896341f, kLn2Hi = 0.693145751953125f, kLn2Lo = 1.42860682030941723e-6f;
inline constexpr float kExpMin = -87.0f, kSqrtHalf = 0.70710678118654752f, kInvSqrt2Pi = 0.3989422804014327f;

MAMCLIP_AVX2_TARGET inline __m256 erf(__m256 x) {
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  const __m256 a = _mm256_min_ps(_mm256_andnot_ps(sign_bit, x), _mm256_set1_ps(4.0f));
  const __m256 t = _mm256_mul_ps(a, a);
  __m256 p = _mm256_set1_ps(kP[6]), q = _mm256_set1_ps(kQ[5]);
  for (int k = 5; k >= 0; --k) p = _mm256_fmadd_ps(p, t, _mm256_set1_ps(kP[k]));
  for (int k = 4; k >= 0; --k) q = _mm256_fmadd_ps(q, t, _mm256_set1_ps(kQ[k]));
  const __m256 y = _mm256_min_ps(_mm256_div_ps(_mm256_mul_ps(a, p), q), _mm256_set1_ps(1.0f));
  return _mm256_or_ps(y, _mm256_and_ps(sign_bit, x));
}

MAMCLIP_AVX2_TARGET inline __m256 exp_nonpositive(__m256 v) {
  const __m256 tiny = _mm256_cmp_ps(v, _mm256_set1_ps(kExpMin), _CMP_LT_OQ);
  v = _mm256_max_ps(v, _mm256_set1_ps(kExpMin));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(v, _mm256_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Hi), v);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Lo), r);
  __m256 p = _mm256_set1_ps(kTaylor[7]);
  for (int k = 6; k >= 0; --k) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kTaylor[k]));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_andnot_ps(tiny, _mm256_mul_ps(p, _mm256_castsi256_ps(bits)));
}

MAMCLIP_AVX2_TARGET inline void block_avx2(const float* x, const float* g, float* out) {
  for (int64_t i = 0; i < kBlock; i += 8) {
    const __m256 xv = _mm256_loadu_ps(x + i);
    const __m256 cdf = _mm256_mul_ps(_mm256_set1_ps(0.5f),
                                     _mm256_add_ps(_mm256_set1_ps(1.0f), erf(_mm256_mul_ps(xv, _mm256_set1_ps(kSqrtHalf)))));
    if (!g) {
      _mm256_storeu_ps(out + i, _mm256_mul_ps(xv, cdf));
      continue;
    }
    const __m256 e = exp_nonpositive(_mm256_mul_ps(_mm256_set1_ps(-0.5f), _mm256_mul_ps(xv, xv)));
    const __m256 pdf_term = _mm256_mul_ps(_mm256_mul_ps(xv, e), _mm256_set1_ps(kInvSqrt2Pi));
    _mm256_storeu_ps(out + i, _mm256_mul_ps(_mm256_loadu_ps(g + i), _mm256_add_ps(cdf, pdf_term)));
  }
}

#ifdef MAMCLIP_AVX512
// AVX-512F alone has no float and/or: sign bits go through the integer ops.
MAMCLIP_AVX512_TARGET inline __m512 erf(__m512 x) {
  const __m512i sign_bit = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  const __m512i xi = _mm512_castps_si512(x);
  const __m512 a = _mm512_min_ps(_mm512_castsi512_ps(_mm512_andnot_si512(sign_bit, xi)), _mm512_set1_ps(4.0f));
  const __m512 t = _mm512_mul_ps(a, a);
  __m512 p = _mm512_set1_ps(kP[6]), q = _mm512_set1_ps(kQ[5]);
  for (int k = 5; k >= 0; --k) p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(kP[k]));
  for (int k = 4; k >= 0; --k) q = _mm512_fmadd_ps(q, t, _mm512_set1_ps(kQ[k]));
  const __m512 y = _mm512_min_ps(_mm512_div_ps(_mm512_mul_ps(a, p), q), _mm512_set1_ps(1.0f));
  return _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(y), _mm512_and_si512(sign_bit, xi)));
}

MAMCLIP_AVX512_TARGET inline __m512 exp_nonpositive(__m512 v) {
  const __mmask16 normal = _mm512_cmp_ps_mask(v, _mm512_set1_ps(kExpMin), _CMP_GE_OQ);
  v = _mm512_max_ps(v, _mm512_set1_ps(kExpMin));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(v, _mm512_set1_ps(kLog2e)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Hi), v);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Lo), r);
  __m512 p = _mm512_set1_ps(kTaylor[7]);
  for (int k = 6; k >= 0; --k) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kTaylor[k]));
  const __m512i bits = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mov_ps(normal, _mm512_mul_ps(p, _mm512_castsi512_ps(bits)));
}

MAMCLIP_AVX512_TARGET inline void block_avx512(const float* x, const float* g, float* out) {
  for (int64_t i = 0; i < kBlock; i += 16) {
    const __m512 xv = _mm512_loadu_ps(x + i);
    const __m512 cdf = _mm512_mul_ps(_mm512_set1_ps(0.5f),
                                     _mm512_add_ps(_mm512_set1_ps(1.0f), erf(_mm512_mul_ps(xv, _mm512_set1_ps(kSqrtHalf)))));
    if (!g) {
      _mm512_storeu_ps(out + i, _mm512_mul_ps(xv, cdf));
      continue;
    }
    const __m512 e = exp_nonpositive(_mm512_mul_ps(_mm512_set1_ps(-0.5f), _mm512_mul_ps(xv, xv)));
    const __m512 pdf_term = _mm512_mul_ps(_mm512_mul_ps(xv, e), _mm512_set1_ps(kInvSqrt2Pi));
    _mm512_storeu_ps(out + i, _mm512_mul_ps(_mm512_loadu_ps(g + i), _mm512_add_ps(cdf, pdf_term)));
  }
}
#endif

}  // namespace detail

// out[0, 64) = gelu(x) when g is null, else g · gelu'(x). Needs available().
inline void block(const float* x, const float* g, float* out) {
#ifdef MAMCLIP_AVX512
  if (cpu_has_avx512f()) return detail::block_avx512(x, g, out);
#endif
  detail::block_avx2(x, g, out);
}
#else
inline void block(const float*, const float*, float*) {
  throw device_error("gelu_simd::block: this build has no AVX2 kernels; check gelu_simd::available() first");
}
#endif

}  // namespace mamclip::cpu::gelu_simd
