#pragma once
// Strided loops over N operands that share one logical shape.
//
// for_each_offset calls f(offsets) with each operand's element offset, in
// row-major order of the shape. Dims are collapsed where every operand is
// contiguous across them, so a contiguous (or broadcast-along-rows) case runs
// as one tight inner loop that the compiler can vectorise.
//
// parallel_for and for_each_index_offset split large elementwise loops over
// OpenMP threads (when the including program is compiled with OpenMP); their
// callbacks must only touch their own elements, so results never depend on
// the thread count.

#include <algorithm>
#include <array>
#include <cstdint>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "mamclip/core/shape.hpp"

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

// f(const std::array<int64_t, N>& offsets) for every element; offsets start at base.
template <size_t N, class F>
void for_each_offset(const Shape& shape, const std::array<Shape, N>& strides, F&& f) {
  for (int64_t d : shape)
    if (d == 0) return;
  StridedLoop<N> loop(shape, strides);
  const size_t nd = loop.shape.size();
  const int64_t inner = loop.shape[nd - 1];
  std::array<int64_t, N> inner_stride;
  for (size_t k = 0; k < N; ++k) inner_stride[k] = loop.strides[k][nd - 1];
  Shape counter(nd, 0);
  std::array<int64_t, N> base{};
  while (true) {
    std::array<int64_t, N> off = base;
    for (int64_t i = 0; i < inner; ++i) {
      f(off);
      for (size_t k = 0; k < N; ++k) off[k] += inner_stride[k];
    }
    // Advance the outer counter (odometer), updating base offsets.
    size_t d = nd - 1;
    while (d-- > 0) {
      ++counter[d];
      for (size_t k = 0; k < N; ++k) base[k] += loop.strides[k][d];
      if (counter[d] < loop.shape[d]) break;
      for (size_t k = 0; k < N; ++k) base[k] -= loop.strides[k][d] * loop.shape[d];
      counter[d] = 0;
    }
    if (d == static_cast<size_t>(-1)) return;
  }
}

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

// f(i, offsets) for the elements with row-major index i in [begin, end) of `loop`.
template <size_t N, class F>
void for_each_offset_in(const StridedLoop<N>& loop, int64_t begin, int64_t end, F& f) {
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
    for (const int64_t stop = std::min(inner, j + (end - i)); j < stop; ++j, ++i) {
      f(i, off);
      for (size_t k = 0; k < N; ++k) off[k] += loop.strides[k][nd - 1];
    }
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

}  // namespace mamclip::detail
