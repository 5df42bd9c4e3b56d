#pragma once
// CPU reference kernels for indexing: the same arguments as the device kernels
// (ops/indexing/indexing.hpp). All buffers are contiguous; index values have
// been checked in range by the op. Scatter-adds accumulate in acc_t<T>, so
// half / bfloat16 gradients that meet at one row are rounded once, not per add.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "mamclip/core/dtype.hpp"
#include "mamclip/core/shape.hpp"

namespace mamclip::cpu {

// x [outer, size, inner] → out [outer, n, inner]: out[o, i, r] = x[o, index[i], r].
template <class T>
void index_select(T* out, const T* x, const int64_t* index, int64_t outer, int64_t size, int64_t inner, int64_t n) {
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < n; ++i)
      std::copy_n(x + (o * size + index[i]) * inner, inner, out + (o * n + i) * inner);
}

namespace indexing_impl {
// Runs f(acc) on an acc_t<T> image of dst[0, count) and writes it back (no copy when T is its own acc type).
template <class T, class F>
void with_acc_buffer(T* dst, int64_t count, F&& f) {
  using A = acc_t<T>;
  if constexpr (std::is_same_v<T, A>) {
    f(dst);
  } else {
    std::vector<A> acc(dst, dst + count);
    f(acc.data());
    std::transform(acc.begin(), acc.end(), dst, [](A v) { return static_cast<T>(v); });
  }
}
}  // namespace indexing_impl

// dst [outer, size, inner] += src [outer, n, inner] scattered to rows index[i]; duplicates accumulate.
template <class T>
void index_add(T* dst, const T* src, const int64_t* index, int64_t outer, int64_t size, int64_t inner, int64_t n) {
  using A = acc_t<T>;
  indexing_impl::with_acc_buffer(dst, outer * size * inner, [&](A* d) {
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < n; ++i) {
        A* row = d + (o * size + index[i]) * inner;
        const T* s = src + (o * n + i) * inner;
        for (int64_t r = 0; r < inner; ++r) row[r] += static_cast<A>(s[r]);
      }
  });
}

namespace indexing_impl {
// Calls f(flat index position p, offset into the x/dst tensor of element p with
// its `dim` coordinate replaced by 0) for every element of `index_shape`.
template <class F>
void for_each_gather_position(const Shape& x_shape, const Shape& index_shape, int64_t dim, F&& f) {
  const Shape xs = contiguous_strides(x_shape);
  const auto nd = static_cast<int64_t>(index_shape.size());
  const int64_t count = numel_of(index_shape);
  Shape coord(static_cast<size_t>(nd), 0);
  int64_t base = 0;
  for (int64_t p = 0; p < count; ++p) {
    f(p, base);
    for (int64_t d = nd - 1; d >= 0; --d) {
      if (++coord[d] < index_shape[d]) {
        if (d != dim) base += xs[d];
        break;
      }
      if (d != dim) base -= xs[d] * (index_shape[d] - 1);
      coord[d] = 0;
    }
  }
}
}  // namespace indexing_impl

// torch.gather on contiguous x [x_shape] and index [index_shape] (same rank,
// index.size(d) <= x.size(d) for d != dim): out[p] = x[p with coordinate dim = index[p]].
template <class T>
void gather(T* out, const T* x, const int64_t* index, const Shape& x_shape, const Shape& index_shape, int64_t dim) {
  const int64_t sd = contiguous_strides(x_shape)[dim];
  indexing_impl::for_each_gather_position(x_shape, index_shape, dim,
                                   [&](int64_t p, int64_t base) { out[p] = x[base + index[p] * sd]; });
}

// The adjoint of gather: dst [dst_shape] += src [index_shape] at the gathered positions; duplicates accumulate.
template <class T>
void scatter_add(T* dst, const T* src, const int64_t* index, const Shape& dst_shape, const Shape& index_shape,
                 int64_t dim) {
  using A = acc_t<T>;
  const int64_t sd = contiguous_strides(dst_shape)[dim];
  indexing_impl::with_acc_buffer(dst, numel_of(dst_shape), [&](A* d) {
    indexing_impl::for_each_gather_position(dst_shape, index_shape, dim,
                                     [&](int64_t p, int64_t base) { d[base + index[p] * sd] += static_cast<A>(src[p]); });
  });
}

}  // namespace mamclip::cpu
