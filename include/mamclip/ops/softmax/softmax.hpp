#pragma once
// softmax and log_softmax along one dim, with fused backward passes.
//
// PyTorch semantics, including masked rows: entries of -inf get probability 0,
// and a row whose entries are all -inf gives NaN (softmax and log_softmax), as
// torch.softmax does. Mask with a large negative value instead of -inf where a
// fully masked row can occur and a finite result is wanted.

#include "mamclip/autograd/node.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/softmax/cpu.hpp"

namespace mamclip {

namespace detail {
template <class T>
Tensor<T> softmax_impl(const char* op, const char* node, const Tensor<T>& x, int64_t dim, bool log) {
  require_cpu(op, x);
  dim = wrap_dim(dim, x.dim(), op);
  const cpu::Lanes lanes = cpu::lanes_of(x.shape(), dim);
  Tensor<T> xc = contiguous_values(x);
  Tensor<T> y = Tensor<T>::empty(x.shape());
  cpu::softmax(xc.data_ptr(), y.data_ptr(), lanes, log);
  return autograd::record<T>(node, {x}, y, [y = y.detach(), lanes, log](const Tensor<T>& g) {
    Tensor<T> gc = contiguous_values(g);
    Tensor<T> dx = Tensor<T>::empty(y.shape());
    cpu::softmax_backward(gc.data_ptr(), y.data_ptr(), dx.data_ptr(), lanes, log);
    return std::vector<Tensor<T>>{dx};
  });
}
}  // namespace detail

template <class T>
Tensor<T> softmax(const Tensor<T>& x, int64_t dim) {
  return detail::softmax_impl("softmax", "SoftmaxBackward", x, dim, false);
}

template <class T>
Tensor<T> log_softmax(const Tensor<T>& x, int64_t dim) {
  return detail::softmax_impl("log_softmax", "LogSoftmaxBackward", x, dim, true);
}

}  // namespace mamclip
