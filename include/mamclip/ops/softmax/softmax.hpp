#pragma once
// softmax and log_softmax along one dim, with fused backward passes.
//
// PyTorch semantics, including masked rows: entries of -inf get probability 0,
// and a row whose entries are all -inf gives NaN (softmax and log_softmax), as
// torch.softmax does. Mask with a large negative value instead of -inf where a
// fully masked row can occur and a finite result is wanted.

#include <string>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/softmax/cpu.hpp"

namespace mamclip {

// Device kernels, on contiguous x / y / g / dx viewed as lanes [outer, size,
// inner] (ops/reduce/cpu.hpp); log selects log_softmax.
template <class T>
using SoftmaxKernel = void(const T* x, T* y, int64_t outer, int64_t size, int64_t inner, bool log);
template <class T>
using SoftmaxBackwardKernel = void(const T* g, const T* y, T* dx, int64_t outer, int64_t size, int64_t inner, bool log);

namespace detail {
template <class T>
Tensor<T> softmax_impl(const char* op, const char* node, const Tensor<T>& x, int64_t dim, bool log) {
  dim = wrap_dim(dim, x.dim(), op);
  const cpu::Lanes lanes = cpu::lanes_of(x.shape(), dim);
  const bool on_cpu = x.device().is_cpu();
  SoftmaxKernel<T>* forward = nullptr;
  SoftmaxBackwardKernel<T>* backward = nullptr;
  if (!on_cpu) {
    forward = require_kernel<SoftmaxKernel<T>>(op, dtype_v<T>, x.device());
    backward = require_kernel<SoftmaxBackwardKernel<T>>(std::string(op) + "_backward", dtype_v<T>, x.device());
  }
  Tensor<T> xc = contiguous_values(x);
  Tensor<T> y = Tensor<T>::empty(x.shape(), x.device());
  if (on_cpu) cpu::softmax(xc.data_ptr(), y.data_ptr(), lanes, log);
  else forward(xc.data_ptr(), y.data_ptr(), lanes.outer, lanes.size, lanes.inner, log);
  return autograd::record<T>(node, {x}, y, [y = y.detach(), lanes, log, backward](const Tensor<T>& g) {
    Tensor<T> gc = contiguous_values(g);
    Tensor<T> dx = Tensor<T>::empty(y.shape(), y.device());
    if (!backward) cpu::softmax_backward(gc.data_ptr(), y.data_ptr(), dx.data_ptr(), lanes, log);
    else backward(gc.data_ptr(), y.data_ptr(), dx.data_ptr(), lanes.outer, lanes.size, lanes.inner, log);
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
