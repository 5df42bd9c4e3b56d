#pragma once
// layer_norm and layer_norm2d (timm's LayerNorm2d: over dim 1 of [N, C, H, W],
// read in place, no permuted copies, in either layout: NCHW storage by its own
// kernels, channels-last storage as layer_norm over the stored last dim, the
// result in the input's layout), each with a fused analytic backward for
// x, weight and bias, and normalize (F.normalize: x / max(||x||_p, eps) along
// a dim). On a device, each through its registered kernels (below).

#include <memory>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/norm/cpu.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/shape/shape.hpp"

namespace mamclip {

// Device kernels of layer_norm, with cpu::layer_norm's and
// cpu::layer_norm_backward's arguments (w, b, dx, dw, db may be null; mean
// and rstd hold one value per row, in device memory).
template <class T>
using LayerNormKernel = void(const T* x, const T* w, const T* b, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t rows,
                             int64_t n, double eps);
template <class T>
using LayerNormBackwardKernel = void(const T* g, const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd,
                                     int64_t rows, int64_t n, T* dx, T* dw, T* db);
// Device kernels of layer_norm2d, with cpu::layer_norm2d's and
// cpu::layer_norm2d_backward's arguments (x [batch, c, hw]; mean and rstd
// [batch, hw] each, in device memory; w, b, dx, dw, db may be null).
template <class T>
using LayerNorm2dKernel = void(const T* x, const T* w, const T* b, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t batch,
                               int64_t c, int64_t hw, double eps);
// Device kernels of normalize, with cpu::normalize's and cpu::normalize_backward's
// arguments; the lanes of a contiguous [outer, size, inner] tensor (stride inner),
// norms one value per lane.
template <class T>
using NormalizeKernel = void(const T* x, T* y, acc_t<T>* norms, int64_t outer, int64_t size, int64_t inner, double p,
                             double eps);
template <class T>
using NormalizeBackwardKernel = void(const T* g, const T* x, const acc_t<T>* norms, T* dx, int64_t outer, int64_t size,
                                     int64_t inner, double p, double eps);
template <class T>
using LayerNorm2dBackwardKernel = void(const T* g, const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd,
                                       int64_t batch, int64_t c, int64_t hw, T* dx, T* dw, T* db);

namespace detail {
template <class T>
void check_affine(const char* name, const Tensor<T>& t, const Shape& normalized_shape, const Tensor<T>& x) {
  if (!t.defined()) return;
  check_same_device("layer_norm", x, t, "input", name);
  MAMCLIP_CHECK(t.shape() == normalized_shape, shape_error, "layer_norm: ", name, " has shape ", shape_str(t.shape()),
                " but normalized_shape is ", shape_str(normalized_shape), "; expected them equal");
}
}  // namespace detail

template <class T>
Tensor<T> layer_norm(const Tensor<T>& x, const Shape& normalized_shape, const Tensor<T>& weight, const Tensor<T>& bias,
                     double eps) {
  using A = acc_t<T>;
  const auto k = static_cast<int64_t>(normalized_shape.size());
  MAMCLIP_CHECK(k > 0, shape_error, "layer_norm: normalized_shape must have at least one dim, got []");
  MAMCLIP_CHECK(x.dim() >= k && Shape(x.shape().end() - k, x.shape().end()) == normalized_shape, shape_error,
                "layer_norm: input has shape ", shape_str(x.shape()), " but normalized_shape is ",
                shape_str(normalized_shape), "; expected the input's trailing dims to equal normalized_shape");
  detail::check_affine("weight", weight, normalized_shape, x);
  detail::check_affine("bias", bias, normalized_shape, x);
  LayerNormKernel<T>* forward = &cpu::layer_norm<T>;
  LayerNormBackwardKernel<T>* backward = &cpu::layer_norm_backward<T>;
  if (!x.device().is_cpu()) {
    forward = require_kernel<LayerNormKernel<T>>("layer_norm", dtype_v<T>, x.device());
    backward = require_kernel<LayerNormBackwardKernel<T>>("layer_norm_backward", dtype_v<T>, x.device());
  }

  const int64_t n = numel_of(normalized_shape), rows = n ? x.numel() / n : 0;
  Tensor<T> xc = detail::contiguous_values(x);
  Tensor<T> w = weight.defined() ? detail::contiguous_values(weight) : Tensor<T>();
  Tensor<T> b = bias.defined() ? detail::contiguous_values(bias) : Tensor<T>();
  // Per-row statistics [mean; rstd] in the accumulation type, beside x, shared with the backward.
  const Tensor<A> stats = Tensor<A>::empty({2 * rows}, x.device());
  Tensor<T> y = Tensor<T>::empty(x.shape(), x.device());
  auto ptr = [](const Tensor<T>& t) { return t.defined() ? t.data_ptr() : nullptr; };
  forward(xc.data_ptr(), ptr(w), ptr(b), y.data_ptr(), stats.data_ptr(), stats.data_ptr() + rows, rows, n, eps);

  return autograd::record<T>(
      "LayerNormBackward", {x, weight, bias}, y,
      [xc, w, stats, rows, n, normalized_shape, backward, ptr](const Tensor<T>& g, const std::vector<bool>& need) {
        Tensor<T> gc = detail::contiguous_values(g);
        const Device dev = xc.device();
        Tensor<T> dx = need[0] ? Tensor<T>::empty(xc.shape(), dev) : Tensor<T>();
        Tensor<T> dw = need[1] ? Tensor<T>::empty(normalized_shape, dev) : Tensor<T>();
        Tensor<T> db = need[2] ? Tensor<T>::empty(normalized_shape, dev) : Tensor<T>();
        backward(gc.data_ptr(), xc.data_ptr(), ptr(w), stats.data_ptr(), stats.data_ptr() + rows, rows, n, ptr(dx),
                 ptr(dw), ptr(db));
        return std::vector<Tensor<T>>{dx, dw, db};
      });
}

template <class T>
Tensor<T> layer_norm2d(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias, double eps) {
  using A = acc_t<T>;
  MAMCLIP_CHECK(x.dim() == 4, shape_error, "layer_norm2d: input has shape ", shape_str(x.shape()),
                "; expected 4 dims [N, C, H, W]");
  MAMCLIP_CHECK(eps >= 0, value_error, "layer_norm2d: eps must be non-negative, got ", eps);
  const int64_t batch = x.size(0), c = x.size(1), hw = x.size(2) * x.size(3);
  const Device dev = x.device();
  for (const auto& [name, t] : {std::pair<const char*, const Tensor<T>&>{"weight", weight}, {"bias", bias}}) {
    if (!t.defined()) continue;
    MAMCLIP_CHECK(t.device() == dev, device_error, "layer_norm2d: expected all tensors on one device, but input is on ",
                  dev.str(), " and ", name, " is on ", t.device().str());
    MAMCLIP_CHECK(t.shape() == Shape{c}, shape_error, "layer_norm2d: ", name, " has shape ", shape_str(t.shape()),
                  " and input has shape ", shape_str(x.shape()), "; expected [C] = [", c, "]");
  }
  if (is_channels_last(x) && !x.is_contiguous())
    return layer_norm(x.permute({0, 2, 3, 1}), Shape{c}, weight, bias, eps).permute({0, 3, 1, 2});
  LayerNorm2dKernel<T>* forward = nullptr;
  LayerNorm2dBackwardKernel<T>* backward = nullptr;
  if (!dev.is_cpu()) {
    forward = require_kernel<LayerNorm2dKernel<T>>("layer_norm2d", dtype_v<T>, dev);
    if (autograd::any_requires_grad(x, weight, bias))
      backward = require_kernel<LayerNorm2dBackwardKernel<T>>("layer_norm2d_backward", dtype_v<T>, dev);
  }
  Tensor<T> xc = detail::contiguous_values(x);
  Tensor<T> w = weight.defined() ? detail::contiguous_values(weight) : Tensor<T>();
  Tensor<T> b = bias.defined() ? detail::contiguous_values(bias) : Tensor<T>();
  auto ptr = [](const Tensor<T>& t) { return t.defined() ? t.data_ptr() : nullptr; };
  // Per-position statistics [mean; rstd], each [N, H·W], in the accumulation type, shared with the backward.
  const Tensor<A> stats = Tensor<A>::empty({2 * batch * hw}, dev);
  Tensor<T> y = Tensor<T>::empty(x.shape(), dev);
  if (c > 0) {
    A* mean = stats.data_ptr();
    if (forward)
      forward(xc.data_ptr(), ptr(w), ptr(b), y.data_ptr(), mean, mean + batch * hw, batch, c, hw, eps);
    else
      cpu::layer_norm2d(xc.data_ptr(), ptr(w), ptr(b), y.data_ptr(), mean, mean + batch * hw, batch, c, hw, eps);
  }
  return autograd::record<T>(
      "LayerNorm2dBackward", {x, weight, bias}, y,
      [xc, w, stats, batch, c, hw, backward, ptr](const Tensor<T>& g, const std::vector<bool>& need) {
        Tensor<T> gc = detail::contiguous_values(g);
        const Device d = xc.device();
        Tensor<T> dx = need[0] ? Tensor<T>::empty(xc.shape(), d) : Tensor<T>();
        Tensor<T> dw = need[1] ? Tensor<T>::empty({c}, d) : Tensor<T>();
        Tensor<T> db = need[2] ? Tensor<T>::empty({c}, d) : Tensor<T>();
        if (c > 0) {
          const A* mean = stats.data_ptr();
          if (backward)
            backward(gc.data_ptr(), xc.data_ptr(), ptr(w), mean, mean + batch * hw, batch, c, hw, ptr(dx), ptr(dw),
                     ptr(db));
          else
            cpu::layer_norm2d_backward(gc.data_ptr(), xc.data_ptr(), ptr(w), mean, mean + batch * hw, batch, c, hw,
                                       ptr(dx), ptr(dw), ptr(db));
        }
        return std::vector<Tensor<T>>{dx, dw, db};
      });
}

template <class T>
Tensor<T> normalize(const Tensor<T>& x, double p, int64_t dim, double eps) {
  using A = acc_t<T>;
  MAMCLIP_CHECK(p > 0 && std::isfinite(p), value_error, "normalize: p must be positive and finite, got ", p);
  MAMCLIP_CHECK(eps >= 0, value_error, "normalize: eps must be non-negative, got ", eps);
  dim = wrap_dim(dim, x.dim(), "normalize");
  const Device dev = x.device();
  NormalizeKernel<T>* forward = nullptr;
  NormalizeBackwardKernel<T>* backward = nullptr;
  if (!dev.is_cpu()) {
    forward = require_kernel<NormalizeKernel<T>>("normalize", dtype_v<T>, dev);
    if (autograd::any_requires_grad(x))
      backward = require_kernel<NormalizeBackwardKernel<T>>("normalize_backward", dtype_v<T>, dev);
  }
  const cpu::Lanes lanes = cpu::lanes_of(x.shape(), dim);
  Tensor<T> xc = detail::contiguous_values(x);
  const Tensor<A> norms = Tensor<A>::empty({lanes.count()}, dev);  // ||x||_p per lane, for the backward
  Tensor<T> y = Tensor<T>::empty(x.shape(), dev);
  if (forward)
    forward(xc.data_ptr(), y.data_ptr(), norms.data_ptr(), lanes.outer, lanes.size, lanes.inner, p, eps);
  else
    cpu::normalize(xc.data_ptr(), y.data_ptr(), norms.data_ptr(), lanes, p, eps);
  return autograd::record<T>("NormalizeBackward", {x}, y, [xc, norms, lanes, p, eps, backward](const Tensor<T>& g) {
    Tensor<T> gc = detail::contiguous_values(g);
    Tensor<T> dx = Tensor<T>::empty(xc.shape(), xc.device());
    if (backward)
      backward(gc.data_ptr(), xc.data_ptr(), norms.data_ptr(), dx.data_ptr(), lanes.outer, lanes.size, lanes.inner, p,
               eps);
    else
      cpu::normalize_backward(gc.data_ptr(), xc.data_ptr(), norms.data_ptr(), dx.data_ptr(), lanes, p, eps);
    return std::vector<Tensor<T>>{dx};
  });
}

}  // namespace mamclip
