#pragma once
// CPU reference softmax and log_softmax along one dim, on lanes (see
// ops/reduce/cpu.hpp): x, y, g and dx are contiguous with the same shape, and
// each lane is `size` elements `stride` apart (stride 1, known at compile
// time, for the last dim: the fast path that loops rows directly).
//
// Stable form: m = max of the lane, s = sum exp(x - m),
//   softmax = exp(x - m) / s,   log_softmax = x - m - log s.
// A lane whose entries are all -inf (a fully masked row) has m = -inf, so
// x - m is NaN and the whole lane is NaN, exactly as in PyTorch. A lane with
// some -inf entries gives them probability 0 (log-probability -inf).

#include <cmath>
#include <limits>
#include <type_traits>

#include "mamclip/ops/reduce/cpu.hpp"

namespace mamclip::cpu {

template <class T, class Stride>
void softmax_lane(const T* x, T* y, int64_t n, Stride stride, bool log) {
  using A = acc_t<T>;
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t k = 0; k < n; ++k) m = std::max(m, static_cast<A>(x[k * stride]));
  A s = 0;
  for (int64_t k = 0; k < n; ++k) s += std::exp(static_cast<A>(x[k * stride]) - m);
  if (log) {
    const A shift = m + std::log(s);
    for (int64_t k = 0; k < n; ++k) y[k * stride] = static_cast<T>(static_cast<A>(x[k * stride]) - shift);
  } else {
    const A inv = A(1) / s;
    for (int64_t k = 0; k < n; ++k) y[k * stride] = static_cast<T>(std::exp(static_cast<A>(x[k * stride]) - m) * inv);
  }
}

// softmax: dx = y * (g - sum(g * y));  log_softmax: dx = g - exp(y) * sum(g).
template <class T, class Stride>
void softmax_backward_lane(const T* g, const T* y, T* dx, int64_t n, Stride stride, bool log) {
  using A = acc_t<T>;
  A s = 0;
  for (int64_t k = 0; k < n; ++k)
    s += log ? static_cast<A>(g[k * stride]) : static_cast<A>(g[k * stride]) * static_cast<A>(y[k * stride]);
  for (int64_t k = 0; k < n; ++k) {
    const A gk = static_cast<A>(g[k * stride]), yk = static_cast<A>(y[k * stride]);
    dx[k * stride] = static_cast<T>(log ? gk - std::exp(yk) * s : yk * (gk - s));
  }
}

template <class T>
void softmax(const T* x, T* y, const Lanes& l, bool log) {
  for_each_lane(l, [&](int64_t, int64_t off, auto stride) { softmax_lane(x + off, y + off, l.size, stride, log); });
}

template <class T>
void softmax_backward(const T* g, const T* y, T* dx, const Lanes& l, bool log) {
  for_each_lane(l, [&](int64_t, int64_t off, auto stride) { softmax_backward_lane(g + off, y + off, dx + off, l.size, stride, log); });
}

}  // namespace mamclip::cpu
