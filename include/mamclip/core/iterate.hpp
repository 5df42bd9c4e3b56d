#pragma once
// Strided loops over N operands that share one logical shape.
//
// for_each_offset calls f(offsets) with each operand's element offset, in
// row-major order of the shape. Dims are collapsed where every operand is
// contiguous across them, so a contiguous (or broadcast-along-rows) case runs
// as one tight inner loop that the compiler can vectorise.

#include <array>
#include <cstdint>

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

}  // namespace mamclip::detail
