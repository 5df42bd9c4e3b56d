#pragma once
// CPU loops for elementwise ops: strided inputs, broadcasting, contiguous
// output, large ones split over threads (functors must be pure). Functors
// take and return the accumulation type acc_t<T> (float for half and
// bfloat16), so every dtype shares one formula.

#include "mamclip/core/iterate.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/core/tensor.hpp"

namespace mamclip::cpu {

// out = f(x), elementwise.
template <class T, class F>
void unary(Tensor<T>& out, const Tensor<T>& x, F&& f) {
  using A = acc_t<T>;
  T* o = out.data_ptr();
  const T* px = x.data_ptr();
  if (x.is_contiguous()) {
    detail::parallel_for(x.numel(), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) o[i] = static_cast<T>(f(static_cast<A>(px[i])));
    });
    return;
  }
  detail::for_each_index_run<1>(x.shape(), {x.strides()}, [&](int64_t i, const auto& off, int64_t count, const auto& st) {
    T* d = o + i;
    const T* a = px + off[0];
    if (st[0] == 1)
      for (int64_t t = 0; t < count; ++t) d[t] = static_cast<T>(f(static_cast<A>(a[t])));
    else
      for (int64_t t = 0; t < count; ++t) d[t] = static_cast<T>(f(static_cast<A>(a[t * st[0]])));
  });
}

// out = f(a, b) with a and b broadcast to out's shape.
template <class T, class U, class V, class F>
void binary(Tensor<T>& out, const Tensor<U>& a, const Tensor<V>& b, F&& f) {
  using A = acc_t<T>;
  T* o = out.data_ptr();
  const U* pa = a.data_ptr();
  const V* pb = b.data_ptr();
  const Shape& s = out.shape();
  if (a.shape() == s && b.shape() == s && a.is_contiguous() && b.is_contiguous()) {
    detail::parallel_for(out.numel(), [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) o[i] = static_cast<T>(f(static_cast<A>(pa[i]), static_cast<A>(pb[i])));
    });
    return;
  }
  // Runs along the innermost dim; unit and zero (broadcast) strides get plain loops.
  detail::for_each_index_run<2>(
      s, {broadcast_strides(a.shape(), a.strides(), s), broadcast_strides(b.shape(), b.strides(), s)},
      [&](int64_t i, const auto& off, int64_t count, const auto& st) {
        T* d = o + i;
        const U* x = pa + off[0];
        const V* y = pb + off[1];
        if (st[0] == 1 && st[1] == 1) {
          for (int64_t t = 0; t < count; ++t) d[t] = static_cast<T>(f(static_cast<A>(x[t]), static_cast<A>(y[t])));
        } else if (st[0] == 1 && st[1] == 0) {
          const A yv = static_cast<A>(*y);
          for (int64_t t = 0; t < count; ++t) d[t] = static_cast<T>(f(static_cast<A>(x[t]), yv));
        } else if (st[0] == 0 && st[1] == 1) {
          const A xv = static_cast<A>(*x);
          for (int64_t t = 0; t < count; ++t) d[t] = static_cast<T>(f(xv, static_cast<A>(y[t])));
        } else {
          for (int64_t t = 0; t < count; ++t)
            d[t] = static_cast<T>(f(static_cast<A>(x[t * st[0]]), static_cast<A>(y[t * st[1]])));
        }
      });
}

// out = f(a, b, c) with all three broadcast to out's shape.
template <class T, class U, class V, class W, class F>
void ternary(Tensor<T>& out, const Tensor<U>& a, const Tensor<V>& b, const Tensor<W>& c, F&& f) {
  T* o = out.data_ptr();
  const U* pa = a.data_ptr();
  const V* pb = b.data_ptr();
  const W* pc = c.data_ptr();
  const Shape& s = out.shape();
  detail::for_each_index_offset<3>(
      s,
      {broadcast_strides(a.shape(), a.strides(), s), broadcast_strides(b.shape(), b.strides(), s),
       broadcast_strides(c.shape(), c.strides(), s)},
      [&](int64_t i, const std::array<int64_t, 3>& off) { o[i] = static_cast<T>(f(pa[off[0]], pb[off[1]], pc[off[2]])); });
}

// out[i] = 0 or `kept` for i in [0, n): element i of the uniform stream (seed,
// offset) drops it when u > keep (u in (0, 1], so keep = 1 drops nothing and
// keep = 0 everything). Dropout's and drop_path's masks.
template <class T>
void bernoulli_mask(uint64_t seed, uint64_t offset, int64_t n, double keep, double kept, T* out) {
  Philox::for_each_uniform(seed, offset, static_cast<uint64_t>(n),
                           [&](uint64_t i, double u) { out[i] = static_cast<T>(u > keep ? 0.0 : kept); });
}

}  // namespace mamclip::cpu
