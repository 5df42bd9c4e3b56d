#pragma once
// Reductions over dims (sum, mean, amax/amin, max/min with indices, var,
// logsumexp), sum_to, and their gradients. On a device: sum and mean (and so
// sum_to, the backward of every broadcast) through SumRowsKernel, the others
// through RowStatKernel and RowStatBackwardKernel, registered under each op's
// name and "<op>_backward".

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

// The other row statistics on a device, over the same [outer, inner] rows
// (inner > 0 for amax / amin), with the CPU rules of ops/reduce/cpu.hpp:
// amax / amin propagate NaN and pick the first position of the result; var
// divides by max(0, inner - correction); logsumexp shifts by the row max (0
// when it is infinite).
enum class RowStat : int32_t { amax, amin, var, logsumexp };

// out[o] = the statistic of row o; index[o] (amax / amin only, when not null)
// = its position in the row.
template <class T>
using RowStatKernel = void(T* out, int64_t* index, const T* rows, int64_t outer, int64_t inner, RowStat stat,
                           int64_t correction);

// Row o of dx = g[o] times d stat / d row o, given the row's result y[o]
// (amax / amin: g is split evenly among the entries equal to y). With index
// (max / min along a dim) g[o] goes to position index[o] only and y is unused.
template <class T>
using RowStatBackwardKernel = void(T* dx, const T* rows, const T* g, const T* y, const int64_t* index, int64_t outer,
                                   int64_t inner, RowStat stat, int64_t correction);

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

// A row statistic of x on a device: its values and, when asked, their positions.
template <class T>
std::pair<Tensor<T>, Tensor<int64_t>> device_row_stat(const char* op, RowStat stat, const Tensor<T>& x,
                                                      const cpu::ReducePlan& p, bool keepdim, bool with_index,
                                                      int64_t correction = 0) {
  auto* kernel = require_kernel<RowStatKernel<T>>(op, dtype_v<T>, x.device());
  // The backward's kernel too: fail here, not in the middle of a backward pass.
  require_kernel<RowStatBackwardKernel<T>>(str_cat(op, "_backward"), dtype_v<T>, x.device());
  const Tensor<T> rows = cpu::rows_for(x, p);
  const Shape& s = keepdim ? p.out_shape : p.out_shape_squeezed;
  Tensor<T> out = Tensor<T>::empty(s, x.device());
  Tensor<int64_t> index = with_index ? Tensor<int64_t>::empty(s, x.device()) : Tensor<int64_t>();
  kernel(out.data_ptr(), with_index ? index.data_ptr() : nullptr, rows.data_ptr(), p.outer, p.inner, stat, correction);
  return {out, index};
}

// The gradient of a row statistic on a device, in x's dim order. y: the
// forward's values (unused with index), index: max / min's positions or empty.
template <class T>
Tensor<T> device_row_stat_grad(const char* op, RowStat stat, const Tensor<T>& x, const cpu::ReducePlan& p,
                               const Tensor<T>& g, const Tensor<T>& y, const Tensor<int64_t>& index,
                               int64_t correction = 0) {
  auto* kernel = require_kernel<RowStatBackwardKernel<T>>(str_cat(op, "_backward"), dtype_v<T>, x.device());
  const Tensor<T> rows = cpu::rows_for(x, p), gc = contiguous_values(g);
  const Tensor<T> yc = y.defined() ? contiguous_values(y) : Tensor<T>();
  const Tensor<int64_t> ic = index.defined() ? contiguous_values(index) : Tensor<int64_t>();
  Tensor<T> dx = Tensor<T>::empty(rows.shape(), x.device());
  kernel(dx.data_ptr(), rows.data_ptr(), gc.data_ptr(), yc.defined() ? yc.data_ptr() : nullptr,
         ic.defined() ? ic.data_ptr() : nullptr, p.outer, p.inner, stat, correction);
  return cpu::from_rows(dx, p);
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
Tensor<T> extreme(const char* op, const char* node, RowStat stat, const Tensor<T>& x, const std::vector<int64_t>& dims,
                  bool keepdim, Better better) {
  const auto p = cpu::plan_reduce(x.shape(), dims, op);
  require_nonempty_rows(op, x, p);
  Tensor<T> y = x.device().is_cpu() ? cpu::arg_reduce_rows(x, p, keepdim, better).first
                                    : device_row_stat(op, stat, x, p, keepdim, false).first;
  return autograd::record<T>(node, {x}, y, [x = x.detach(), y = y.detach(), p, op, stat](const Tensor<T>& g) {
    if (!x.device().is_cpu()) return std::vector<Tensor<T>>{device_row_stat_grad(op, stat, x, p, g, y, {})};
    const auto gv = acc_values(g), yv = acc_values(y);
    return std::vector<Tensor<T>>{cpu::grad_rows(x, p, [&](int64_t o, const T* xr, T* dx, int64_t n) {
      cpu::extreme_grad_row(xr, dx, n, gv[o], yv[o]);
    })};
  });
}

// max / min along one dim with indices: the gradient goes to the chosen index only.
template <class T, class Better>
std::pair<Tensor<T>, Tensor<int64_t>> arg_extreme(const char* op, const char* node, RowStat stat, const Tensor<T>& x,
                                                  int64_t dim, bool keepdim, Better better) {
  const auto p = cpu::plan_reduce(x.shape(), {dim}, op);
  require_nonempty_rows(op, x, p);
  // Not a structured binding: clang 14 cannot capture one in a lambda.
  auto result = x.device().is_cpu() ? cpu::arg_reduce_rows(x, p, keepdim, better)
                                    : device_row_stat(op, stat, x, p, keepdim, true);
  Tensor<T> values = result.first;
  Tensor<int64_t> indices = result.second;
  values = autograd::record<T>(node, {x}, values, [x = x.detach(), p, indices, op, stat](const Tensor<T>& g) {
    if (!x.device().is_cpu()) return std::vector<Tensor<T>>{device_row_stat_grad(op, stat, x, p, g, {}, indices)};
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
  return detail::extreme("amax", "AmaxBackward", RowStat::amax, x, dims, keepdim, cpu::greater_or_nan<acc_t<T>>);
}

template <class T>
Tensor<T> amin(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  return detail::extreme("amin", "AminBackward", RowStat::amin, x, dims, keepdim, cpu::less_or_nan<acc_t<T>>);
}

template <class T>
std::pair<Tensor<T>, Tensor<int64_t>> max(const Tensor<T>& x, int64_t dim, bool keepdim) {
  return detail::arg_extreme("max", "MaxBackward", RowStat::amax, x, dim, keepdim, cpu::greater_or_nan<acc_t<T>>);
}

template <class T>
std::pair<Tensor<T>, Tensor<int64_t>> min(const Tensor<T>& x, int64_t dim, bool keepdim) {
  return detail::arg_extreme("min", "MinBackward", RowStat::amin, x, dim, keepdim, cpu::less_or_nan<acc_t<T>>);
}

template <class T>
Tensor<T> var(const Tensor<T>& x, const std::vector<int64_t>& dims, int64_t correction, bool keepdim) {
  MAMCLIP_CHECK(correction >= 0, value_error, "var: correction must be non-negative, got ", correction);
  const auto p = cpu::plan_reduce(x.shape(), dims, "var");
  const auto row_var = [correction](const T* row, int64_t n) { return cpu::var_row(row, n, correction); };
  Tensor<T> y = x.device().is_cpu()
                    ? cpu::map_rows(x, p, keepdim, row_var)
                    : detail::device_row_stat("var", RowStat::var, x, p, keepdim, false, correction).first;
  return autograd::record<T>("VarBackward", {x}, y, [x = x.detach(), p, correction](const Tensor<T>& g) {
    if (!x.device().is_cpu())
      return std::vector<Tensor<T>>{detail::device_row_stat_grad("var", RowStat::var, x, p, g, {}, {}, correction)};
    const auto gv = detail::acc_values(g);
    return std::vector<Tensor<T>>{cpu::grad_rows(x, p, [&](int64_t o, const T* xr, T* dx, int64_t n) {
      cpu::var_grad_row(xr, dx, n, gv[o], correction);
    })};
  });
}

template <class T>
Tensor<T> logsumexp(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  const auto p = cpu::plan_reduce(x.shape(), dims, "logsumexp");
  Tensor<T> y = x.device().is_cpu()
                    ? cpu::map_rows(x, p, keepdim, [](const T* row, int64_t n) { return cpu::logsumexp_row(row, n); })
                    : detail::device_row_stat("logsumexp", RowStat::logsumexp, x, p, keepdim, false).first;
  return autograd::record<T>("LogsumexpBackward", {x}, y, [x = x.detach(), y = y.detach(), p](const Tensor<T>& g) {
    if (!x.device().is_cpu())
      return std::vector<Tensor<T>>{detail::device_row_stat_grad("logsumexp", RowStat::logsumexp, x, p, g, y, {})};
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
