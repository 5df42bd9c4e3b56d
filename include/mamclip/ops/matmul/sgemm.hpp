#pragma once
// Float GEMM for x86-64 CPUs with AVX2 and FMA (and AVX-512 where present):
// C (m×n, row-major, leading dimension n) = A·B, or C += A·B.
//
// The algorithm is Goto's, as BLIS arranges it. B is packed a KC×NC panel at
// a time into NR-column slivers, A an MC×KC block at a time into MR-row
// slivers; the micro-kernel multiplies one A sliver by one B sliver, keeping
// the MR×NR tile of C in registers for the whole KC loop: 6×16 in 12 ymm
// registers with AVX2, 12×32 in 24 zmm registers with AVX-512. Block sizes
// fit Zen 3 / Haswell-class caches and larger: A and B slivers (at most 12 and
// 32 KiB) in L1, the A block (144 KiB) in L2, the B panel in L3.
//
// Threads (OpenMP, when the including program is compiled with it) share the
// B panel and split the (A block × column chunk) tiles. Every element of C is
// summed by one thread in one order (fused multiply-adds over each KC block,
// then added to C), the same for both kernels, so the result depends neither
// on the thread count nor on the instruction set.
//
// The kernels are compiled through function attributes and chosen at run time
// (cpu::gemm falls back to Eigen on CPUs without AVX2, on other architectures
// and compilers, and for products too small to pay for packing).

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <utility>

#include "mamclip/core/config.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/simd.hpp"

#ifdef MAMCLIP_AVX2
#include <immintrin.h>
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mamclip::cpu::sgemm {

inline constexpr int64_t MC = 144, KC = 256, NC = 3072;  // MC: a multiple of both kernels' MR
// Below this many multiply-adds Eigen's GEMM (no packing) is as fast; below
// the second one threads cost more than they save.
inline constexpr int64_t kMinMacs = 32 * 1024, kMinParallelMacs = 1024 * 1024;

// The micro-kernel's instruction set.
enum class Isa { avx2, avx512 };

// True when this CPU can run the AVX2 kernel (checked once), or a given one.
inline bool available() { return cpu_has_avx2_fma(); }
inline bool available(Isa isa) { return isa == Isa::avx512 ? cpu_has_avx512f() : cpu_has_avx2_fma(); }
// The widest kernel this CPU runs (the AVX2 one when it runs neither).
inline Isa best_isa() { return cpu_has_avx512f() ? Isa::avx512 : Isa::avx2; }

// Whether cpu::gemm hands an m×n×k float product to this kernel.
inline bool worthwhile(int64_t m, int64_t n, int64_t k) {
  return m >= 2 && n >= 2 && m * n * k >= kMinMacs && available();
}

#ifdef MAMCLIP_AVX2
namespace detail {

// A strided matrix operand: element (i, j) sits at p[i*rs + j*cs].
struct Operand {
  const float* p;
  int64_t rs, cs;
  float at(int64_t i, int64_t j) const { return p[i * rs + j * cs]; }
};

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A per-thread, 64-byte aligned scratch buffer that only grows.
class Scratch {
 public:
  float* get(int64_t count) {
    if (count > size_) {
      data_.reset(static_cast<float*>(::operator new[](static_cast<size_t>(count) * sizeof(float), std::align_val_t(64))));
      size_ = count;
    }
    return data_.get();
  }

 private:
  struct Free {
    void operator()(float* p) const { ::operator delete[](p, std::align_val_t(64)); }
  };
  std::unique_ptr<float[], Free> data_;
  int64_t size_ = 0;
};

// One sliver of width MR from MR rows of kc contiguous floats (A row-major,
// or B column-major with MR = NR): dst[q*MR + r] = src[r*ld + q], in 8×8
// register transposes (a group of fewer than 8 rows reads its first row in
// place of the missing ones and stores only its own).
template <int64_t MR>
MAMCLIP_AVX2_TARGET inline void pack_transposed(const float* src, int64_t ld, int64_t kc, float* dst) {
  const int64_t k8 = kc / 8 * 8;
  for (int64_t g = 0; g < MR; g += 8) {
    const int rows = static_cast<int>(std::min<int64_t>(8, MR - g));
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(rows), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    for (int64_t q = 0; q < k8; q += 8) {
      __m256 v[8];
      for (int j = 0; j < 8; ++j) v[j] = _mm256_loadu_ps(src + (g + (j < rows ? j : 0)) * ld + q);
      simd::transpose_8x8_registers(v);  // v[i] lane j = row g + j, column q + i
      for (int i = 0; i < 8; ++i) {
        if (rows == 8)
          _mm256_storeu_ps(dst + (q + i) * MR + g, v[i]);
        else
          _mm256_maskstore_ps(dst + (q + i) * MR + g, keep, v[i]);
      }
    }
  }
  for (int64_t q = k8; q < kc; ++q)
    for (int64_t r = 0; r < MR; ++r) dst[q * MR + r] = src[r * ld + q];
}

// Rows [i0, i0+mc) × columns [p0, p0+kc) of A as MR-row slivers: sliver s
// holds A(i0 + s*MR + r, p0 + q) at dst[s*MR*kc + q*MR + r], rows past m zero.
template <int64_t MR>
MAMCLIP_AVX2_TARGET inline void pack_a(const Operand& a, int64_t m, int64_t i0, int64_t mc, int64_t p0, int64_t kc, float* dst) {
  for (int64_t s = 0; s < mc; s += MR, dst += MR * kc) {
    const int64_t rows = std::min(MR, m - (i0 + s));
    if (rows == MR && a.cs == 1) {
      pack_transposed<MR>(a.p + (i0 + s) * a.rs + p0, a.rs, kc, dst);
    } else if (rows == MR && a.rs == 1) {
      for (int64_t q = 0; q < kc; ++q) std::memcpy(dst + q * MR, a.p + (p0 + q) * a.cs + i0 + s, MR * sizeof(float));
    } else {
      for (int64_t q = 0; q < kc; ++q)
        for (int64_t r = 0; r < MR; ++r) dst[q * MR + r] = r < rows ? a.at(i0 + s + r, p0 + q) : 0.0f;
    }
  }
}

// Slivers [t0, t1) of the B panel at rows [p0, p0+kc), columns from j0:
// B(p0 + q, j0 + t*NR + c) at dst[t*NR*kc + q*NR + c], columns past n zero.
// A row-major B is read row by row (sequential reads, whole-line writes).
template <int64_t NR>
MAMCLIP_AVX2_TARGET inline void pack_b(const Operand& b, int64_t n, int64_t p0, int64_t kc, int64_t j0, int64_t t0,
                                        int64_t t1, float* dst) {
  const int64_t full_end = std::min(t1, std::max(t0, (n - j0) / NR));  // slivers without padding
  if (b.cs == 1) {
    for (int64_t q = 0; q < kc; ++q) {
      const float* src = b.p + (p0 + q) * b.rs + j0;
      for (int64_t t = t0; t < full_end; ++t)
        std::memcpy(dst + t * NR * kc + q * NR, src + t * NR, NR * sizeof(float));
    }
  } else if (b.rs == 1) {
    for (int64_t t = t0; t < full_end; ++t) pack_transposed<NR>(b.p + (j0 + t * NR) * b.cs + p0, b.cs, kc, dst + t * NR * kc);
  }
  for (int64_t t = (b.cs == 1 || b.rs == 1) ? full_end : t0; t < t1; ++t) {
    const int64_t jj = j0 + t * NR, cols = std::min(NR, n - jj);
    float* d = dst + t * NR * kc;
    for (int64_t q = 0; q < kc; ++q)
      for (int64_t c = 0; c < NR; ++c) d[q * NR + c] = c < cols ? b.at(p0 + q, jj + c) : 0.0f;
  }
}

// Kernel::micro_kernel<Rows>(kc, pa, pb, c, ldc, add, cols): the first Rows
// rows (default all MR) and first cols columns of the MR×NR tile at c (leading
// dimension ldc) = pa·pb (+ the tile, when `add`); pa and pb are packed
// slivers of depth kc (pb 64-byte aligned). Partial tiles at the bottom and
// right edges of C run the same arithmetic with fewer rows or masked columns.
struct Avx2Kernel {
  static constexpr int64_t MR = 6, NR = 16;  // two 8-float vectors per row

  template <int Rows = MR>
  MAMCLIP_AVX2_TARGET static void micro_kernel(int64_t kc, const float* __restrict pa, const float* __restrict pb,
                                               float* c, int64_t ldc, bool add, int64_t cols) {
    __m256 acc[Rows][2];
MAMCLIP_UNROLL(6)
    for (int r = 0; r < Rows; ++r) {
      acc[r][0] = acc[r][1] = _mm256_setzero_ps();
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);  // C's lines arrive during the loop
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + NR - 1), _MM_HINT_T0);
    }
    for (int64_t q = 0; q < kc; ++q, pa += MR, pb += NR) {
      _mm_prefetch(reinterpret_cast<const char*>(pa + 8 * MR), _MM_HINT_T0);
      const __m256 b0 = _mm256_load_ps(pb), b1 = _mm256_load_ps(pb + 8);
MAMCLIP_UNROLL(6)
      for (int r = 0; r < Rows; ++r) {
        const __m256 x = _mm256_broadcast_ss(pa + r);
        acc[r][0] = _mm256_fmadd_ps(x, b0, acc[r][0]);
        acc[r][1] = _mm256_fmadd_ps(x, b1, acc[r][1]);
      }
    }
    if (cols < NR) {  // a partial tile: masked loads and stores
      const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
      const __m256i m0 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols)), lane);
      const __m256i m1 = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(cols) - 8), lane);
      for (int r = 0; r < Rows; ++r) {
        float* row = c + r * ldc;
        if (add) {
          acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_maskload_ps(row, m0));
          acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_maskload_ps(row + 8, m1));
        }
        _mm256_maskstore_ps(row, m0, acc[r][0]);
        _mm256_maskstore_ps(row + 8, m1, acc[r][1]);
      }
      return;
    }
MAMCLIP_UNROLL(6)
    for (int r = 0; r < Rows; ++r) {
      float* row = c + r * ldc;
      if (add) {
        acc[r][0] = _mm256_add_ps(acc[r][0], _mm256_loadu_ps(row));
        acc[r][1] = _mm256_add_ps(acc[r][1], _mm256_loadu_ps(row + 8));
      }
      _mm256_storeu_ps(row, acc[r][0]);
      _mm256_storeu_ps(row + 8, acc[r][1]);
    }
  }
};

#ifdef MAMCLIP_AVX512
struct Avx512Kernel {
  static constexpr int64_t MR = 12, NR = 32;  // two 16-float vectors per row; 24 of the 32 zmm registers

  template <int Rows = MR>
  MAMCLIP_AVX512_TARGET static void micro_kernel(int64_t kc, const float* __restrict pa, const float* __restrict pb,
                                                 float* c, int64_t ldc, bool add, int64_t cols) {
    __m512 acc[Rows][2];
MAMCLIP_UNROLL(12)
    for (int r = 0; r < Rows; ++r) {
      acc[r][0] = acc[r][1] = _mm512_setzero_ps();
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(c + r * ldc + NR - 1), _MM_HINT_T0);
    }
    for (int64_t q = 0; q < kc; ++q, pa += MR, pb += NR) {
      _mm_prefetch(reinterpret_cast<const char*>(pa + 8 * MR), _MM_HINT_T0);
      const __m512 b0 = _mm512_load_ps(pb), b1 = _mm512_load_ps(pb + 16);
MAMCLIP_UNROLL(12)
      for (int r = 0; r < Rows; ++r) {
        const __m512 x = _mm512_set1_ps(pa[r]);
        acc[r][0] = _mm512_fmadd_ps(x, b0, acc[r][0]);
        acc[r][1] = _mm512_fmadd_ps(x, b1, acc[r][1]);
      }
    }
    // Column masks: all ones for a full tile.
    const __mmask16 m0 = cols >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
    const __mmask16 m1 = cols >= 32 ? __mmask16(0xFFFF) : cols <= 16 ? __mmask16(0) : __mmask16((1u << (cols - 16)) - 1);
MAMCLIP_UNROLL(12)
    for (int r = 0; r < Rows; ++r) {
      float* row = c + r * ldc;
      if (add) {
        acc[r][0] = _mm512_add_ps(acc[r][0], _mm512_maskz_loadu_ps(m0, row));
        acc[r][1] = _mm512_add_ps(acc[r][1], _mm512_maskz_loadu_ps(m1, row + 16));
      }
      _mm512_mask_storeu_ps(row, m0, acc[r][0]);
      _mm512_mask_storeu_ps(row + 16, m1, acc[r][1]);
    }
  }
};
#endif

// Kernel::micro_kernel<r> for r = 1 .. MR, indexed by r - 1.
template <class Kernel, int... R>
constexpr auto row_kernels(std::integer_sequence<int, R...>) {
  return std::array{&Kernel::template micro_kernel<R + 1>...};
}

inline Scratch& a_scratch() {
  thread_local Scratch s;
  return s;
}
inline Scratch& b_scratch() {
  thread_local Scratch s;
  return s;
}


template <class Kernel>
inline void gemm_with(int64_t m, int64_t n, int64_t k, const Operand& A, const Operand& B, float* c, int64_t ldc,
                      bool accumulate) {
  constexpr int64_t MR = Kernel::MR, NR = Kernel::NR;
  static_assert(MC % MR == 0, "an A block holds whole slivers");
  static constexpr auto by_rows = row_kernels<Kernel>(std::make_integer_sequence<int, MR>{});
  int threads = 1;
#ifdef _OPENMP
  if (!omp_in_parallel() && m * n * k >= kMinParallelMacs) threads = omp_get_max_threads();
#endif
  const int64_t panel_cols = std::min(n, NC);
  float* bpack = b_scratch().get(std::min(k, KC) * ceil_div(panel_cols, NR) * NR);
  // Rows go in blocks of at most MC, as many as a multiple of the thread
  // count, with whole slivers spread evenly over them (so threads get equal
  // rows); with fewer blocks than threads the columns are split as well.
  const int64_t row_slivers = ceil_div(m, MR);
  int64_t mblocks = ceil_div(m, MC), chunks = 1;
  if (mblocks >= threads)
    mblocks = ceil_div(mblocks, threads) * threads;
  else
    chunks = ceil_div(threads, mblocks);
  mblocks = std::min(mblocks, row_slivers);

#ifdef _OPENMP
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    float* apack = a_scratch().get(MC * KC);
    for (int64_t j0 = 0; j0 < n; j0 += NC) {
      const int64_t nc = std::min(NC, n - j0), slivers = ceil_div(nc, NR);
      for (int64_t p0 = 0; p0 < k; p0 += KC) {
        const int64_t kc = std::min(KC, k - p0);
        const bool add = accumulate || p0 > 0;
#ifdef _OPENMP
        {
          const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
          pack_b<NR>(B, n, p0, kc, j0, slivers * me / team, slivers * (me + 1) / team, bpack);
        }
#pragma omp barrier
#else
        pack_b<NR>(B, n, p0, kc, j0, 0, slivers, bpack);
#endif
        int64_t packed_block = -1;
#ifdef _OPENMP
#pragma omp for schedule(static)
#endif
        for (int64_t item = 0; item < mblocks * chunks; ++item) {
          const int64_t blk = item / chunks, chunk = item % chunks;
          const int64_t i0 = MR * (blk * row_slivers / mblocks);
          const int64_t mc = std::min(m, MR * ((blk + 1) * row_slivers / mblocks)) - i0;
          if (blk != packed_block) {
            pack_a<MR>(A, m, i0, mc, p0, kc, apack);
            packed_block = blk;
          }
          for (int64_t t = chunk * slivers / chunks; t < (chunk + 1) * slivers / chunks; ++t) {
            const int64_t jj = j0 + t * NR, cols = std::min(NR, n - jj);
            for (int64_t s = 0; s < mc; s += MR) {
              const int64_t rows = std::min(MR, mc - s);
              float* tile = c + (i0 + s) * ldc + jj;
              const float* pa = apack + s * kc;
              const float* pb = bpack + t * NR * kc;
              by_rows[rows - 1](kc, pa, pb, tile, ldc, add, cols);
            }
          }
        }
        // (implicit barrier: the panel may be repacked)
      }
    }
  }
}

}  // namespace detail

// C (m×n, row-major, leading dimension ldc; 0 means n) = A·B, or += when
// `accumulate`; A(i, p) at a[i*a_rs + p*a_cs], B(p, j) at b[p*b_rs + j*b_cs].
// Runs on `isa`'s kernel (default: the widest this CPU has); needs available(isa).
inline void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t a_rs, int64_t a_cs, const float* b,
                 int64_t b_rs, int64_t b_cs, float* c, bool accumulate, Isa isa = best_isa(), int64_t ldc = 0) {
  MAMCLIP_CHECK(available(isa), device_error, "cpu::sgemm::gemm: this CPU (or build) cannot run the ",
                isa == Isa::avx512 ? "AVX-512" : "AVX2", " kernel; check cpu::sgemm::available(isa) before calling it");
  if (m <= 0 || n <= 0) return;
  if (ldc == 0) ldc = n;
  MAMCLIP_CHECK(ldc >= n, value_error, "cpu::sgemm::gemm: ldc ", ldc, " is less than n ", n);
  if (k <= 0) {
    if (!accumulate)
      for (int64_t i = 0; i < m; ++i) std::fill(c + i * ldc, c + i * ldc + n, 0.0f);
    return;
  }
  const detail::Operand A{a, a_rs, a_cs}, B{b, b_rs, b_cs};
#ifdef MAMCLIP_AVX512
  if (isa == Isa::avx512) return detail::gemm_with<detail::Avx512Kernel>(m, n, k, A, B, c, ldc, accumulate);
#endif
  detail::gemm_with<detail::Avx2Kernel>(m, n, k, A, B, c, ldc, accumulate);
}
#else
inline void gemm(int64_t, int64_t, int64_t, const float*, int64_t, int64_t, const float*, int64_t, int64_t, float*,
                 bool, Isa = Isa::avx2, int64_t = 0) {
  throw device_error("cpu::sgemm::gemm: this build has no AVX2 GEMM kernel (x86-64 with GCC or Clang only); "
                     "check cpu::sgemm::available() before calling it");
}
#endif

}  // namespace mamclip::cpu::sgemm
