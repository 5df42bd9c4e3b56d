#pragma once
// Strided loops over N operands that share one logical shape.
//
// for_each_offset calls f(offsets) with each operand's element offset, in
// row-major order of the shape. Dims are collapsed where every operand is
// contiguous across them, so a contiguous (or broadcast-along-rows) case runs
// as one tight inner loop that the compiler can vectorise.
//
// parallel_for, for_each_index_offset and for_each_index_run split large elementwise loops over
// OpenMP threads (when the including program is compiled with OpenMP); their
// callbacks must only touch their own elements, so results never depend on
// the thread count.

#include <algorithm>
#include <array>
#include <cstdint>
#include <type_traits>

#include "mamclip/core/config.hpp"

#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef MAMCLIP_AVX2
#include <immintrin.h>
#endif

#include "mamclip/core/shape.hpp"
#include "mamclip/core/simd.hpp"

namespace mamclip::detail {

template <size_t N>
struct StridedLoop {
  Shape shape;                     // collapsed shape, innermost last
  std::array<Shape, N> strides;    // collapsed strides per operand

  StridedLoop(const Shape& s, const std::array<Shape, N>& st) {
    // Drop size-1 dims, then merge dim i into i+1 where stride_i == size_{i+1} * stride_{i+1} for all operands.
    for (size_t d = 0; d < s.size(); ++d) {
      if (s[d] == 1) continue;
      const bool merge = !shape.empty() && [&] {
        for (size_t k = 0; k < N; ++k)
          if (strides[k].back() != s[d] * st[k][d]) return false;
        return true;
      }();
      if (merge) {
        shape.back() *= s[d];
        for (size_t k = 0; k < N; ++k) strides[k].back() = st[k][d];
      } else {
        shape.push_back(s[d]);
        for (size_t k = 0; k < N; ++k) strides[k].push_back(st[k][d]);
      }
    }
    if (shape.empty()) {  // a scalar or all-ones shape: one element
      shape.push_back(1);
      for (size_t k = 0; k < N; ++k) strides[k].push_back(0);
    }
  }
};

// Below this many elements an elementwise loop stays on the calling thread.
inline constexpr int64_t kParallelGrain = 64 * 1024;

// f(begin, end) over consecutive pieces of [0, n): one piece per thread when n
// is large and no parallel region is active, else f(0, n).
// `grain` is the least n worth splitting (items of more than one element each
// pass their own).
template <class F>
void parallel_for(int64_t n, F&& f, int64_t grain = kParallelGrain) {
#ifdef _OPENMP
  if (n >= std::max<int64_t>(grain, 2) && omp_get_max_threads() > 1 && !omp_in_parallel()) {
#pragma omp parallel
    {
      const int64_t team = omp_get_num_threads(), me = omp_get_thread_num();
      const int64_t begin = n * me / team, end = n * (me + 1) / team;
      if (begin < end) f(begin, end);
    }
    return;
  }
#endif
  if (n > 0) f(0, n);
}

// f(i, offsets, count) for the elements with row-major index i in [begin,
// end) of `loop`, a run of up to one inner row at a time: elements i .. i +
// count - 1, operand k's at offsets[k] + t * loop.strides[k].back().
template <size_t N, class F>
void for_each_run_in(const StridedLoop<N>& loop, int64_t begin, int64_t end, F& f) {
  const size_t nd = loop.shape.size();
  const int64_t inner = loop.shape[nd - 1];
  Shape counter(nd, 0);
  std::array<int64_t, N> base{};  // offsets of the start of the current inner row
  int64_t rest = begin / inner;
  for (size_t d = nd - 1; d-- > 0;) {
    counter[d] = rest % loop.shape[d];
    rest /= loop.shape[d];
    for (size_t k = 0; k < N; ++k) base[k] += counter[d] * loop.strides[k][d];
  }
  int64_t i = begin, j = begin % inner;
  while (i < end) {
    std::array<int64_t, N> off;
    for (size_t k = 0; k < N; ++k) off[k] = base[k] + j * loop.strides[k][nd - 1];
    const int64_t count = std::min(inner - j, end - i);
    f(i, off, count);
    i += count;
    j = 0;
    for (size_t d = nd - 1; d-- > 0;) {  // odometer over the outer dims
      ++counter[d];
      for (size_t k = 0; k < N; ++k) base[k] += loop.strides[k][d];
      if (counter[d] < loop.shape[d]) break;
      for (size_t k = 0; k < N; ++k) base[k] -= loop.strides[k][d] * loop.shape[d];
      counter[d] = 0;
    }
  }
}

// f(i, offsets) for the elements with row-major index i in [begin, end) of `loop`.
template <size_t N, class F>
void for_each_offset_in(const StridedLoop<N>& loop, int64_t begin, int64_t end, F& f) {
  auto run = [&](int64_t i, std::array<int64_t, N> off, int64_t count) {
    for (int64_t t = 0; t < count; ++t) {
      f(i + t, off);
      for (size_t k = 0; k < N; ++k) off[k] += loop.strides[k].back();
    }
  };
  for_each_run_in(loop, begin, end, run);
}

// f(const std::array<int64_t, N>& offsets) for every element, in row-major
// order on the calling thread (f may keep state across elements).
template <size_t N, class F>
void for_each_offset(const Shape& shape, const std::array<Shape, N>& strides, F&& f) {
  for (int64_t d : shape)
    if (d == 0) return;
  const StridedLoop<N> loop(shape, strides);
  int64_t n = 1;
  for (int64_t d : loop.shape) n *= d;
  auto each = [&](int64_t, const std::array<int64_t, N>& off) { f(off); };
  for_each_offset_in(loop, 0, n, each);
}

// f(i, offsets) for every element, i its row-major index (the offset in a
// contiguous output), split over threads like parallel_for.
template <size_t N, class F>
void for_each_index_offset(const Shape& shape, const std::array<Shape, N>& strides, F&& f) {
  for (int64_t d : shape)
    if (d == 0) return;
  const StridedLoop<N> loop(shape, strides);
  int64_t n = 1;
  for (int64_t d : loop.shape) n *= d;
  parallel_for(n, [&](int64_t begin, int64_t end) { for_each_offset_in(loop, begin, end, f); });
}

// f(i, offsets, count, inner_strides) over runs of consecutive elements (see
// for_each_run_in), split over threads like parallel_for: loops whose inner
// strides are 1 or 0 can be written as plain (vectorisable) loops.
template <size_t N, class F>
void for_each_index_run(const Shape& shape, const std::array<Shape, N>& strides, F&& f) {
  for (int64_t d : shape)
    if (d == 0) return;
  const StridedLoop<N> loop(shape, strides);
  int64_t n = 1;
  for (int64_t d : loop.shape) n *= d;
  std::array<int64_t, N> inner;
  for (size_t k = 0; k < N; ++k) inner[k] = loop.strides[k].back();
  auto run = [&](int64_t i, const std::array<int64_t, N>& off, int64_t count) { f(i, off, count, inner); };
  parallel_for(n, [&](int64_t begin, int64_t end) { for_each_run_in(loop, begin, end, run); });
}

#ifdef MAMCLIP_AVX2
// d[i*d_rs + j] = s[i + j*s_cs] for an 8×8 block, in registers.
MAMCLIP_AVX2_TARGET inline void transpose_8x8(const float* s, int64_t s_cs, float* d, int64_t d_rs) {
  __m256 v[8];
  for (int j = 0; j < 8; ++j) v[j] = _mm256_loadu_ps(s + j * s_cs);  // v[j][i] = element (i, j)
  simd::transpose_8x8_registers(v);
  for (int i = 0; i < 8; ++i) _mm256_storeu_ps(d + i * d_rs, v[i]);
}

// d[i*d_rs + j] = s[i + j*s_cs] for i < rows, j < cols: 8×8 register blocks, scalar edges.
MAMCLIP_AVX2_TARGET inline void transpose_avx2(const float* s, int64_t s_cs, float* d, int64_t d_rs, int64_t rows,
                                               int64_t cols) {
  const int64_t r8 = rows / 8 * 8, c8 = cols / 8 * 8;
  for (int64_t i = 0; i < r8; i += 8) {
    for (int64_t j = 0; j < c8; j += 8) transpose_8x8(s + i + j * s_cs, s_cs, d + i * d_rs + j, d_rs);
    for (int64_t ii = i; ii < i + 8; ++ii)
      for (int64_t j = c8; j < cols; ++j) d[ii * d_rs + j] = s[ii + j * s_cs];
  }
  for (int64_t i = r8; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) d[i * d_rs + j] = s[i + j * s_cs];
}
#endif

// d (contiguous, row-major over `shape`) = the strided source s. A permuted
// float source, contiguous along some dim other than the innermost (NCHW <->
// NHWC), is copied as 2-D transposes of those two dims in 8×8 register blocks
// where the CPU has AVX2; everything else element by element.
template <class T>
void copy_to_contiguous(const T* s, const Shape& shape, const Shape& strides, T* d) {
  for (int64_t x : shape)
    if (x == 0) return;
  const StridedLoop<1> loop(shape, {strides});
  const size_t nd = loop.shape.size();
  const Shape& st = loop.strides[0];
  size_t t = nd;  // the dim along which the source is contiguous
#ifdef MAMCLIP_AVX2
  if (std::is_same_v<T, float> && cpu_has_avx2_fma() && nd >= 2 && st[nd - 1] != 1 && loop.shape[nd - 1] >= 8)
    for (size_t k = 0; k + 1 < nd; ++k)
      if (st[k] == 1 && loop.shape[k] >= 8) t = k;
#endif
  if (t == nd) {
    for_each_index_run<1>(shape, {strides}, [&](int64_t i, const auto& off, int64_t count, const auto& inner) {
      const T* src = s + off[0];
      if (inner[0] == 1)
        std::copy(src, src + count, d + i);
      else if (inner[0] == 0)
        std::fill(d + i, d + i + count, *src);
      else
        for (int64_t k = 0; k < count; ++k) d[i + k] = src[k * inner[0]];
    });
    return;
  }
#ifdef MAMCLIP_AVX2
  if constexpr (std::is_same_v<T, float>) {
    // Every dim but t and the innermost is an outer loop; the destination's strides are loop.shape's contiguous ones.
    Shape dst_st(nd, 1), outer_shape, outer_src, outer_dst;
    for (size_t k = nd - 1; k-- > 0;) dst_st[k] = dst_st[k + 1] * loop.shape[k + 1];
    for (size_t k = 0; k + 1 < nd; ++k)
      if (k != t) {
        outer_shape.push_back(loop.shape[k]);
        outer_src.push_back(st[k]);
        outer_dst.push_back(dst_st[k]);
      }
    const StridedLoop<2> outer(outer_shape, {outer_src, outer_dst});
    int64_t outer_count = 1;
    for (int64_t x : outer.shape) outer_count *= x;
    // Work items: (outer index, band of 64 rows of the transposed plane).
    constexpr int64_t kBand = 64;
    const int64_t rows = loop.shape[t], cols = loop.shape[nd - 1], bands = (rows + kBand - 1) / kBand;
    parallel_for(
        outer_count * bands,
        [&](int64_t begin, int64_t end) {
          for (int64_t o = begin / bands; o * bands < end; ++o) {
            auto copy_bands = [&](int64_t, const std::array<int64_t, 2>& off) {
              const int64_t first = std::max(begin, o * bands) - o * bands;
              const int64_t last = std::min(end, (o + 1) * bands) - o * bands;
              const int64_t i0 = first * kBand, i1 = std::min(rows, last * kBand);
              transpose_avx2(s + off[0] + i0, st[nd - 1], d + off[1] + i0 * dst_st[t], dst_st[t], i1 - i0, cols);
            };
            for_each_offset_in(outer, o, o + 1, copy_bands);
          }
        },
        std::max<int64_t>(1, kParallelGrain / (kBand * cols)));
  }
#endif
}

}  // namespace mamclip::detail
