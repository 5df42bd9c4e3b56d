#pragma once
// CPU reference reductions. A reduction over `dims` is done by moving those dims
// last and making the tensor contiguous: it is then a [outer, inner] row-major
// matrix, and each output element reduces one row of length `inner`.

#include <algorithm>
#include <numeric>

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
  std::vector<bool> reduced(n, dims.empty());
  for (int64_t& d : dims) {
    d = wrap_dim(d, n, op);
    MAMCLIP_CHECK(!reduced[d], value_error, op, ": dim ", d, " appears more than once in dims");
    reduced[d] = true;
  }
  ReducePlan p;
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

// out[o] = finish(fold over row o of init, combine), in the accumulation type.
template <class T, class Init, class Combine, class Finish>
Tensor<T> reduce_rows(const Tensor<T>& x, const ReducePlan& p, bool keepdim, Init init, Combine combine, Finish finish) {
  using A = acc_t<T>;
  Tensor<T> rows = rows_for(x, p);
  Tensor<T> out = Tensor<T>::empty(keepdim ? p.out_shape : p.out_shape_squeezed);
  const T* src = rows.data_ptr();
  T* dst = out.data_ptr();
  for (int64_t o = 0; o < p.outer; ++o) {
    A acc = init();
    const T* row = src + o * p.inner;
    for (int64_t i = 0; i < p.inner; ++i) acc = combine(acc, static_cast<A>(row[i]));
    dst[o] = static_cast<T>(finish(acc));
  }
  return out;
}

}  // namespace mamclip::cpu
