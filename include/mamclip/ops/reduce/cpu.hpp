#pragma once
// CPU reference reductions.
//
// A reduction over `dims` is done by moving those dims last and making the
// tensor contiguous: it is then a [outer, inner] row-major matrix ("rows"), and
// each output element reduces one row of length `inner`. Gradients are written
// in the same row layout and permuted back (from_rows).
//
// Ops along one dim that keep it (softmax, normalize, the class dim of losses)
// instead view a contiguous tensor as lanes [outer, size, inner]: element k of
// lane (o, i) sits at o*size*inner + k*inner + i, so a lane is a strided row and
// a last-dim lane (inner == 1) is a plain contiguous row.
//
// Everything accumulates in acc_t<T>.

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <utility>

#include "mamclip/core/tensor_data.hpp"

namespace mamclip::cpu {

struct ReducePlan {
  std::vector<int64_t> perm;  // kept dims (in order), then reduced dims
  Shape out_shape;            // with keepdim
  Shape out_shape_squeezed;   // without
  int64_t outer = 1, inner = 1;
};

inline ReducePlan plan_reduce(const Shape& shape, std::vector<int64_t> dims, const char* op) {
  const auto n = static_cast<int64_t>(shape.size());
  ReducePlan p;
  if (n == 0) {  // a 0-dim tensor: dim 0 / -1 is accepted (as PyTorch does) and reduces one element
    for (int64_t d : dims) wrap_dim(d, n, op);
    return p;
  }
  std::vector<bool> reduced(n, dims.empty());
  for (int64_t& d : dims) {
    d = wrap_dim(d, n, op);
    MAMCLIP_CHECK(!reduced[d], value_error, op, ": dim ", d, " appears more than once in dims");
    reduced[d] = true;
  }
  for (int64_t d = 0; d < n; ++d)
    if (!reduced[d]) {
      p.perm.push_back(d);
      p.outer *= shape[d];
      p.out_shape.push_back(shape[d]);
      p.out_shape_squeezed.push_back(shape[d]);
    } else {
      p.out_shape.push_back(1);
    }
  for (int64_t d = 0; d < n; ++d)
    if (reduced[d]) {
      p.perm.push_back(d);
      p.inner *= shape[d];
    }
  return p;
}

// Rows [outer, inner] of x for the plan (a contiguous copy unless already laid out so).
template <class T>
Tensor<T> rows_for(const Tensor<T>& x, const ReducePlan& p) {
  Tensor<T> v = x.detach();
  if (!v.shape().empty()) v = v.permute(p.perm);
  return v.is_contiguous() ? v : detail::contiguous_copy(v);
}

// The inverse of rows_for: `rows` (shape permuted by the plan) seen in the input's dim order.
template <class T>
Tensor<T> from_rows(const Tensor<T>& rows, const ReducePlan& p) {
  if (rows.shape().empty()) return rows;
  std::vector<int64_t> inverse(p.perm.size());
  for (size_t i = 0; i < p.perm.size(); ++i) inverse[p.perm[i]] = static_cast<int64_t>(i);
  return rows.permute(inverse);
}

// out[o] = f(row o, inner), where f returns acc_t<T>.
template <class T, class F>
Tensor<T> map_rows(const Tensor<T>& x, const ReducePlan& p, bool keepdim, F&& f) {
  Tensor<T> rows = rows_for(x, p);
  Tensor<T> out = Tensor<T>::empty(keepdim ? p.out_shape : p.out_shape_squeezed);
  const T* src = rows.data_ptr();
  T* dst = out.data_ptr();
  detail::parallel_for(
      p.outer,
      [&](int64_t begin, int64_t end) {
        for (int64_t o = begin; o < end; ++o) dst[o] = static_cast<T>(f(src + o * p.inner, p.inner));
      },
      std::max<int64_t>(2, detail::kParallelGrain / std::max<int64_t>(1, p.inner)));
  return out;
}

// out[o] = finish(fold over row o of init, combine), in the accumulation type.
template <class T, class Init, class Combine, class Finish>
Tensor<T> reduce_rows(const Tensor<T>& x, const ReducePlan& p, bool keepdim, Init init, Combine combine, Finish finish) {
  using A = acc_t<T>;
  return map_rows(x, p, keepdim, [&](const T* row, int64_t n) {
    A acc = init();
    for (int64_t i = 0; i < n; ++i) acc = combine(acc, static_cast<A>(row[i]));
    return finish(acc);
  });
}

// The sum of each row, in row order, passed through finish (sum, mean). When
// x is contiguous and its kept dims are one consecutive block [before, kept,
// after] (a Linear's bias gradient sums [rows, features] over rows; a conv's
// sums [N, C, H, W] over N, H, W), the sums are read in place instead of from
// a transposed copy, several outputs at a time and split over threads by
// output; each output still adds the same elements in the same order.
template <class T, class Finish>
Tensor<T> sum_rows(const Tensor<T>& x, const ReducePlan& p, bool keepdim, Finish finish) {
  using A = acc_t<T>;
  const auto nd = static_cast<int64_t>(p.perm.size());
  const auto kept = static_cast<int64_t>(p.out_shape_squeezed.size());
  const int64_t first = kept > 0 ? p.perm[0] : 0;
  bool block = x.device().is_cpu() && x.is_contiguous() && kept > 0 && p.outer > 1;
  for (int64_t i = 0; block && i < kept; ++i) block = p.perm[i] == first + i;
  if (!block)
    return reduce_rows(x, p, keepdim, [] { return A(0); }, [](A a, A v) { return a + v; }, finish);
  int64_t before = 1, after = 1;
  for (int64_t d = 0; d < first; ++d) before *= x.shape()[d];
  for (int64_t d = first + kept; d < nd; ++d) after *= x.shape()[d];
  const int64_t cols = p.outer;
  Tensor<T> out = Tensor<T>::empty(keepdim ? p.out_shape : p.out_shape_squeezed);
  const T* src = x.data_ptr();
  T* dst = out.data_ptr();
  constexpr int64_t kCols = 256;  // outputs summed side by side: independent chains, vector adds when after == 1
  detail::parallel_for(
      cols,
      [&](int64_t c_begin, int64_t c_end) {
        A acc[kCols];
        for (int64_t c0 = c_begin; c0 < c_end; c0 += kCols) {
          const int64_t w = std::min(kCols, c_end - c0);
          std::fill_n(acc, w, A(0));
          for (int64_t b = 0; b < before; ++b) {
            const T* base = src + (b * cols + c0) * after;
            if (after == 1) {
              for (int64_t j = 0; j < w; ++j) acc[j] += static_cast<A>(base[j]);
            } else {
              for (int64_t j0 = 0; j0 < w; j0 += 8) {
                const int64_t jw = std::min<int64_t>(8, w - j0);
                for (int64_t e = 0; e < after; ++e)
                  for (int64_t j = 0; j < jw; ++j) acc[j0 + j] += static_cast<A>(base[(j0 + j) * after + e]);
              }
            }
          }
          for (int64_t j = 0; j < w; ++j) dst[c0 + j] = static_cast<T>(finish(acc[j]));
        }
      },
      std::max<int64_t>(2, detail::kParallelGrain / std::max<int64_t>(1, before * after)));
  return out;
}

// Values and indices of each row's extreme: `better(v, best)` says whether v
// replaces the best so far, so a strict comparison keeps the first index on ties.
template <class T, class Better>
std::pair<Tensor<T>, Tensor<int64_t>> arg_reduce_rows(const Tensor<T>& x, const ReducePlan& p, bool keepdim,
                                                      Better better) {
  using A = acc_t<T>;
  Tensor<T> rows = rows_for(x, p);
  const Shape& s = keepdim ? p.out_shape : p.out_shape_squeezed;
  Tensor<T> values = Tensor<T>::empty(s);
  Tensor<int64_t> indices = Tensor<int64_t>::empty(s);
  for (int64_t o = 0; o < p.outer; ++o) {
    const T* row = rows.data_ptr() + o * p.inner;
    int64_t arg = 0;
    A best = static_cast<A>(row[0]);
    for (int64_t i = 1; i < p.inner; ++i)
      if (better(static_cast<A>(row[i]), best)) {
        best = static_cast<A>(row[i]);
        arg = i;
      }
    values.data_ptr()[o] = row[arg];
    indices.data_ptr()[o] = arg;
  }
  return {values, indices};
}

// The gradient of a row reduction: f(o, x_row, dx_row, inner) writes row o of
// dx from row o of x. Returns dx in x's dim order.
template <class T, class F>
Tensor<T> grad_rows(const Tensor<T>& x, const ReducePlan& p, F&& f) {
  Tensor<T> rows = rows_for(x, p);
  Tensor<T> dx = Tensor<T>::empty(rows.shape());
  for (int64_t o = 0; o < p.outer; ++o) f(o, rows.data_ptr() + o * p.inner, dx.data_ptr() + o * p.inner, p.inner);
  return from_rows(dx, p);
}

// ---- row kernels: x is one row of n elements; g and y are that row's output gradient and value

// Whether v beats the best so far: strictly larger (smaller), or a NaN over a
// number, so amax / max propagate NaN as PyTorch does.
template <class A>
bool greater_or_nan(A v, A best) {
  return v > best || (std::isnan(v) && !std::isnan(best));
}
template <class A>
bool less_or_nan(A v, A best) {
  return v < best || (std::isnan(v) && !std::isnan(best));
}

// amax / amin backward: g is split evenly among the entries equal to y.
template <class T>
void extreme_grad_row(const T* x, T* dx, int64_t n, acc_t<T> g, acc_t<T> y) {
  using A = acc_t<T>;
  int64_t ties = 0;
  for (int64_t i = 0; i < n; ++i) ties += static_cast<A>(x[i]) == y;
  const A share = ties ? g / static_cast<A>(ties) : A(0);
  for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<T>(static_cast<A>(x[i]) == y ? share : A(0));
}

// Degrees of freedom of var: max(0, n - correction), as PyTorch (0 gives inf or nan).
inline double var_dof(int64_t n, int64_t correction) { return std::max<double>(0.0, static_cast<double>(n - correction)); }

template <class T>
acc_t<T> row_mean(const T* x, int64_t n) {
  using A = acc_t<T>;
  A s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<A>(x[i]);
  return s / static_cast<A>(n);
}

// Two passes (mean, then squared deviations): no cancellation for rows far from 0.
template <class T>
acc_t<T> var_row(const T* x, int64_t n, int64_t correction) {
  using A = acc_t<T>;
  const A m = row_mean(x, n);
  A ss = 0;
  for (int64_t i = 0; i < n; ++i) {
    const A d = static_cast<A>(x[i]) - m;
    ss += d * d;
  }
  return ss / static_cast<A>(var_dof(n, correction));
}

// d var / dx_i = 2 (x_i - mean) / dof.
template <class T>
void var_grad_row(const T* x, T* dx, int64_t n, acc_t<T> g, int64_t correction) {
  using A = acc_t<T>;
  const A m = row_mean(x, n);
  const A k = A(2) * g / static_cast<A>(var_dof(n, correction));
  for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<T>(k * (static_cast<A>(x[i]) - m));
}

// log(sum(exp(x))) = m + log(sum(exp(x - m))) with m the row max; when m is
// infinite it is replaced by 0 (PyTorch's rule), so an all -inf row gives
// log(0) = -inf instead of NaN, and a row holding +inf gives +inf.
template <class T>
acc_t<T> logsumexp_row(const T* x, int64_t n) {
  using A = acc_t<T>;
  A m = -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < n; ++i) m = std::max(m, static_cast<A>(x[i]));
  if (std::isinf(m)) m = 0;
  A s = 0;
  for (int64_t i = 0; i < n; ++i) s += std::exp(static_cast<A>(x[i]) - m);
  return m + std::log(s);
}

// d lse / dx_i = exp(x_i - y); an all -inf row (y = -inf) gets a zero gradient instead of NaN.
template <class T>
void logsumexp_grad_row(const T* x, T* dx, int64_t n, acc_t<T> g, acc_t<T> y) {
  using A = acc_t<T>;
  const bool empty_mass = y == -std::numeric_limits<A>::infinity();
  for (int64_t i = 0; i < n; ++i) dx[i] = static_cast<T>(empty_mass ? A(0) : g * std::exp(static_cast<A>(x[i]) - y));
}

// The coordinates of row-major position `flat` in `shape` (for error messages).
inline Shape unravel_index(int64_t flat, const Shape& shape) {
  Shape coord(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    coord[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  return coord;
}

// ---- lanes along one dim

struct Lanes {
  int64_t outer = 1, size = 1, inner = 1;
  int64_t count() const { return outer * inner; }
  // Offset of element 0 of lane l (l in [0, count())); the lane's stride is `inner`.
  int64_t base(int64_t l) const { return (l / inner) * size * inner + l % inner; }
};

// Lanes along `dim` (already wrapped) of a contiguous tensor of shape s; a 0-dim tensor is one lane of one element.
inline Lanes lanes_of(const Shape& s, int64_t dim) {
  Lanes l;
  if (s.empty()) return l;
  l.size = s[dim];
  for (int64_t d = 0; d < dim; ++d) l.outer *= s[d];
  for (size_t d = dim + 1; d < s.size(); ++d) l.inner *= s[d];
  return l;
}

// Runs f(lane, offset of the lane's first element, stride) for every lane, in
// order: lane o*inner + i is the row-major position of (o, i) in the shape
// without `dim`. A last-dim lane (inner == 1) is a contiguous row: its stride is
// passed as a compile-time 1 so f's loops over it vectorise.
template <class F>
void for_each_lane(const Lanes& l, F&& f) {
  if (l.inner == 1) {
    for (int64_t o = 0; o < l.outer; ++o) f(o, o * l.size, std::integral_constant<int64_t, 1>{});
    return;
  }
  for (int64_t lane = 0; lane < l.count(); ++lane) f(lane, l.base(lane), l.inner);
}

}  // namespace mamclip::cpu
