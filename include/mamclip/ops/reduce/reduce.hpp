#pragma once
// Reductions over dims (sum, mean, amax/amin, max/min with indices, var,
// logsumexp), sum_to, and their gradients. On a device: sum and mean (and so
// sum_to, the backward of every broadcast) through SumRowsKernel; the others
// throw device_error naming the op.

#include <limits>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/reduce/cpu.hpp"

namespace mamclip {

// Device kernel of sum and mean (registered under both names): out[o] = (sum
// of row o of the row-major [outer, inner] `rows`, in acc_t<T>) / divisor.
template <class T>
using SumRowsKernel = void(T* out, const T* rows, int64_t outer, int64_t inner, double divisor);

namespace detail {
// sum / mean of x over the plan's rows on a device.
template <class T>
Tensor<T> device_sum_rows(const char* op, const Tensor<T>& x, const cpu::ReducePlan& p, bool keepdim, double divisor) {
  auto* kernel = require_kernel<SumRowsKernel<T>>(op, dtype_v<T>, x.device());
  const Tensor<T> rows = cpu::rows_for(x, p);
  Tensor<T> out = Tensor<T>::empty(keepdim ? p.out_shape : p.out_shape_squeezed, x.device());
  kernel(out.data_ptr(), rows.data_ptr(), p.outer, p.inner, divisor);
  return out;
}

template <class T>
void require_cpu(const char* op, const Tensor<T>& x) {
  MAMCLIP_CHECK(x.device().is_cpu(), device_error, op, ": no kernel is registered for ", dtype_name(dtype_v<T>),
                " tensors on ", x.device().str());
}

// x's values in a contiguous row-major buffer, outside the graph (no copy when x already is one).
template <class T>
Tensor<T> contiguous_values(const Tensor<T>& x) {
  return x.is_contiguous() ? x.detach() : contiguous_copy(x);
}

// Expands a reduced gradient (shape without keepdim, or with) back to `in`.
template <class T>
Tensor<T> unreduce(const Tensor<T>& g, const cpu::ReducePlan& p, const Shape& in) {
  return g.reshape(p.out_shape).expand(in);
}

// Row-major values of a tensor in the accumulation type (a reduced gradient or output, one per row).
template <class T>
std::vector<acc_t<T>> acc_values(const Tensor<T>& t) {
  const std::vector<T> v = t.to_vector();
  return std::vector<acc_t<T>>(v.begin(), v.end());
}

template <class T>
void require_nonempty_rows(const char* op, const Tensor<T>& x, const cpu::ReducePlan& p) {
  MAMCLIP_CHECK(p.inner > 0, value_error, op, ": cannot reduce over zero elements (input shape ", shape_str(x.shape()),
                "); the reduced dims must be non-empty");
}

// amax / amin: the gradient is split evenly among the entries equal to the result (ties).
template <class T, class Better>
Tensor<T> extreme(const char* op, const char* node, const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim,
                  Better better) {
  require_cpu(op, x);
  const auto p = cpu::plan_reduce(x.shape(), dims, op);
  require_nonempty_rows(op, x, p);
  Tensor<T> y = cpu::arg_reduce_rows(x, p, keepdim, better).first;
  return autograd::record<T>(node, {x}, y, [x = x.detach(), y = y.detach(), p](const Tensor<T>& g) {
    const auto gv = acc_values(g), yv = acc_values(y);
    return std::vector<Tensor<T>>{cpu::grad_rows(x, p, [&](int64_t o, const T* xr, T* dx, int64_t n) {
      cpu::extreme_grad_row(xr, dx, n, gv[o], yv[o]);
    })};
  });
}

// max / min along one dim with indices: the gradient goes to the chosen index only.
template <class T, class Better>
std::pair<Tensor<T>, Tensor<int64_t>> arg_extreme(const char* op, const char* node, const Tensor<T>& x, int64_t dim,
                                                  bool keepdim, Better better) {
  require_cpu(op, x);
  const auto p = cpu::plan_reduce(x.shape(), {dim}, op);
  require_nonempty_rows(op, x, p);
  // Not a structured binding: clang 14 cannot capture one in a lambda.
  auto result = cpu::arg_reduce_rows(x, p, keepdim, better);
  Tensor<T> values = result.first;
  Tensor<int64_t> indices = result.second;
  values = autograd::record<T>(node, {x}, values, [x = x.detach(), p, indices](const Tensor<T>& g) {
    const auto gv = acc_values(g);
    const std::vector<int64_t> iv = indices.to_vector();
    return std::vector<Tensor<T>>{cpu::grad_rows(x, p, [&](int64_t o, const T*, T* dx, int64_t n) {
      std::fill(dx, dx + n, T(0));
      dx[iv[o]] = static_cast<T>(gv[o]);
    })};
  });
  return {values, indices};
}
}  // namespace detail

template <class T>
Tensor<T> sum(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  const auto p = cpu::plan_reduce(x.shape(), dims, "sum");
  using A = acc_t<T>;
  Tensor<T> y = x.device().is_cpu() ? cpu::sum_rows(x, p, keepdim, [](A a) { return a; })
                                    : detail::device_sum_rows("sum", x, p, keepdim, 1.0);
  return autograd::record<T>("SumBackward", {x}, y, [p, in = x.shape()](const Tensor<T>& g) {
    return std::vector<Tensor<T>>{detail::unreduce(g, p, in)};
  });
}

template <class T>
Tensor<T> mean(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  const auto p = cpu::plan_reduce(x.shape(), dims, "mean");
  using A = acc_t<T>;
  const A n = static_cast<A>(p.inner);
  Tensor<T> y = x.device().is_cpu() ? cpu::sum_rows(x, p, keepdim, [n](A a) { return a / n; })
                                    : detail::device_sum_rows("mean", x, p, keepdim, static_cast<double>(p.inner));
  return autograd::record<T>("MeanBackward", {x}, y, [p, in = x.shape()](const Tensor<T>& g) {
    return std::vector<Tensor<T>>{detail::unreduce(mul(g, 1.0 / static_cast<double>(p.inner)), p, in)};
  });
}

template <class T>
Tensor<T> amax(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  return detail::extreme("amax", "AmaxBackward", x, dims, keepdim, cpu::greater_or_nan<acc_t<T>>);
}

template <class T>
Tensor<T> amin(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  return detail::extreme("amin", "AminBackward", x, dims, keepdim, cpu::less_or_nan<acc_t<T>>);
}

template <class T>
std::pair<Tensor<T>, Tensor<int64_t>> max(const Tensor<T>& x, int64_t dim, bool keepdim) {
  return detail::arg_extreme("max", "MaxBackward", x, dim, keepdim, cpu::greater_or_nan<acc_t<T>>);
}

template <class T>
std::pair<Tensor<T>, Tensor<int64_t>> min(const Tensor<T>& x, int64_t dim, bool keepdim) {
  return detail::arg_extreme("min", "MinBackward", x, dim, keepdim, cpu::less_or_nan<acc_t<T>>);
}

template <class T>
Tensor<T> var(const Tensor<T>& x, const std::vector<int64_t>& dims, int64_t correction, bool keepdim) {
  detail::require_cpu("var", x);
  MAMCLIP_CHECK(correction >= 0, value_error, "var: correction must be non-negative, got ", correction);
  const auto p = cpu::plan_reduce(x.shape(), dims, "var");
  Tensor<T> y = cpu::map_rows(x, p, keepdim, [correction](const T* row, int64_t n) { return cpu::var_row(row, n, correction); });
  return autograd::record<T>("VarBackward", {x}, y, [x = x.detach(), p, correction](const Tensor<T>& g) {
    const auto gv = detail::acc_values(g);
    return std::vector<Tensor<T>>{cpu::grad_rows(x, p, [&](int64_t o, const T* xr, T* dx, int64_t n) {
      cpu::var_grad_row(xr, dx, n, gv[o], correction);
    })};
  });
}

template <class T>
Tensor<T> logsumexp(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  detail::require_cpu("logsumexp", x);
  const auto p = cpu::plan_reduce(x.shape(), dims, "logsumexp");
  Tensor<T> y = cpu::map_rows(x, p, keepdim, [](const T* row, int64_t n) { return cpu::logsumexp_row(row, n); });
  return autograd::record<T>("LogsumexpBackward", {x}, y, [x = x.detach(), y = y.detach(), p](const Tensor<T>& g) {
    const auto gv = detail::acc_values(g), yv = detail::acc_values(y);
    return std::vector<Tensor<T>>{cpu::grad_rows(x, p, [&](int64_t o, const T* xr, T* dx, int64_t n) {
      cpu::logsumexp_grad_row(xr, dx, n, gv[o], yv[o]);
    })};
  });
}

template <class T>
Tensor<T> sum_to(const Tensor<T>& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  MAMCLIP_CHECK(shape.size() <= x.shape().size(), shape_error, "sum_to: cannot sum shape ", shape_str(x.shape()),
                " to ", shape_str(shape));
  const size_t lead = x.shape().size() - shape.size();
  std::vector<int64_t> dims;
  for (size_t d = 0; d < x.shape().size(); ++d) {
    if (d < lead) {
      dims.push_back(static_cast<int64_t>(d));
      continue;
    }
    const int64_t want = shape[d - lead];
    MAMCLIP_CHECK(want == x.shape()[d] || want == 1, shape_error, "sum_to: cannot sum shape ", shape_str(x.shape()),
                  " to ", shape_str(shape));
    if (want == 1 && x.shape()[d] != 1) dims.push_back(static_cast<int64_t>(d));
  }
  if (dims.empty()) return x.reshape(shape);
  return sum(x, dims, true).reshape(shape);
}

}  // namespace mamclip
