#pragma once
// Reductions over dims (sum, mean, amax/amin, max/min with indices, var,
// logsumexp), sum_to, and their gradients.

#include <limits>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/reduce/cpu.hpp"

namespace mamclip {

namespace detail {
template <class T>
void require_cpu(const char* op, const Tensor<T>& x) {
  MAMCLIP_CHECK(x.device().is_cpu(), device_error, op, ": no kernel is registered for ", dtype_name(dtype_v<T>),
                " tensors on ", x.device().str());
}

// Expands a reduced gradient (shape without keepdim, or with) back to `in`.
template <class T>
Tensor<T> unreduce(const Tensor<T>& g, const cpu::ReducePlan& p, const Shape& in) {
  return g.reshape(p.out_shape).expand(in);
}
}  // namespace detail

template <class T>
Tensor<T> sum(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  detail::require_cpu("sum", x);
  const auto p = cpu::plan_reduce(x.shape(), dims, "sum");
  using A = acc_t<T>;
  Tensor<T> y = cpu::reduce_rows(x, p, keepdim, [] { return A(0); }, [](A a, A v) { return a + v; }, [](A a) { return a; });
  return autograd::record<T>("SumBackward", {x}, y, [p, in = x.shape()](const Tensor<T>& g) {
    return std::vector<Tensor<T>>{detail::unreduce(g, p, in)};
  });
}

template <class T>
Tensor<T> mean(const Tensor<T>& x, const std::vector<int64_t>& dims, bool keepdim) {
  detail::require_cpu("mean", x);
  const auto p = cpu::plan_reduce(x.shape(), dims, "mean");
  using A = acc_t<T>;
  const A n = static_cast<A>(p.inner);
  Tensor<T> y = cpu::reduce_rows(x, p, keepdim, [] { return A(0); }, [](A a, A v) { return a + v; }, [n](A a) { return a / n; });
  return autograd::record<T>("MeanBackward", {x}, y, [p, in = x.shape()](const Tensor<T>& g) {
    return std::vector<Tensor<T>>{detail::unreduce(mul(g, 1.0 / static_cast<double>(p.inner)), p, in)};
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
