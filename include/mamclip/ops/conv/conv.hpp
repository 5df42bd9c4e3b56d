#pragma once
// conv2d (torch.nn.functional.conv2d) with its fused backward for x, weight
// and bias.
//
// On the CPU it runs cpu.hpp: a direct depthwise kernel when groups == C_in ==
// C_out (ConvNeXt's 7×7), im2col + GEMM otherwise; half and bfloat16 compute
// in float. Another device calls the kernels registered under "conv2d" and
// "conv2d_backward" (signatures below, same contract as cpu::conv2d_forward /
// cpu::conv2d_backward on contiguous device buffers).
//
// Channels last: a conv whose input is stored [N, H, W, C] (the [N, C, H, W]
// view x.permute({0, 3, 1, 2}) of a contiguous tensor, as PyTorch's
// channels_last; contiguous_channels_last makes one) runs the device's
// "conv2d_nhwc" kernels when it registers them and they take the geometry: no
// layout copy in, and the output (and the input gradient) come back
// channels-last too. The CPU computes in NCHW.

#include <type_traits>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/autocast.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/conv/cpu.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/shape/shape.hpp"  // Tensor::to<U>() (half / bfloat16, autocast)

namespace mamclip {

// b may be null (no bias); y is written.
template <class T>
using Conv2dForwardKernel = void(const Conv2dGeometry& geometry, const T* x, const T* w, const T* b, T* y);
// dx, dw, db are written when non-null; x may be null when dw is, w when dx is.
template <class T>
using Conv2dBackwardKernel = void(const Conv2dGeometry& geometry, const T* x, const T* w, const T* gy, T* dx, T* dw,
                                  T* db);

// The same for x, y, gy and dx stored [N, H, W, C] (weights and bias as
// above). They return false to decline (geometry, dtype or settings they do
// not cover); conv2d then runs the NCHW kernels on copies.
template <class T>
using Conv2dNhwcForwardKernel = bool(const Conv2dGeometry& geometry, const T* x, const T* w, const T* b, T* y);
template <class T>
using Conv2dNhwcBackwardKernel = bool(const Conv2dGeometry& geometry, const T* x, const T* w, const T* gy, T* dx,
                                      T* dw, T* db);

namespace detail {

// Checks conv2d's arguments and returns its sizes.
template <class T>
Conv2dGeometry conv2d_geometry(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias, const Conv2dOptions& o) {
  MAMCLIP_CHECK(x.dim() == 4, shape_error, "conv2d: input has shape ", shape_str(x.shape()),
                "; expected 4 dims [N, C_in, H, W]");
  MAMCLIP_CHECK(weight.dim() == 4, shape_error, "conv2d: weight has shape ", shape_str(weight.shape()),
                "; expected 4 dims [C_out, C_in / groups, kH, kW]");
  MAMCLIP_CHECK(o.groups > 0, value_error, "conv2d: groups must be positive, got ", o.groups);
  for (int d = 0; d < 2; ++d) {
    MAMCLIP_CHECK(o.stride[d] > 0, value_error, "conv2d: stride must be positive, got [", o.stride[0], ", ", o.stride[1], "]");
    MAMCLIP_CHECK(o.dilation[d] > 0, value_error, "conv2d: dilation must be positive, got [", o.dilation[0], ", ",
                  o.dilation[1], "]");
    MAMCLIP_CHECK(o.padding[d] >= 0, value_error, "conv2d: padding must be non-negative, got [", o.padding[0], ", ",
                  o.padding[1], "]");
  }
  Conv2dGeometry g;
  g.batch = x.size(0);
  g.c_in = x.size(1);
  g.h = x.size(2);
  g.w = x.size(3);
  g.c_out = weight.size(0);
  g.kh = weight.size(2);
  g.kw = weight.size(3);
  g.groups = o.groups;
  g.stride_h = o.stride[0];
  g.stride_w = o.stride[1];
  g.pad_h = o.padding[0];
  g.pad_w = o.padding[1];
  g.dil_h = o.dilation[0];
  g.dil_w = o.dilation[1];
  MAMCLIP_CHECK(g.c_in % g.groups == 0, shape_error, "conv2d: input has ", g.c_in, " channels (shape ",
                shape_str(x.shape()), ") and groups = ", g.groups, "; expected C_in divisible by groups");
  MAMCLIP_CHECK(g.c_out % g.groups == 0, shape_error, "conv2d: weight has shape ", shape_str(weight.shape()),
                " with ", g.c_out, " output channels and groups = ", g.groups, "; expected C_out divisible by groups");
  MAMCLIP_CHECK(weight.size(1) == g.c_in / g.groups, shape_error, "conv2d: weight has shape ", shape_str(weight.shape()),
                " and input has shape ", shape_str(x.shape()), " with groups = ", g.groups,
                "; expected weight.size(1) == C_in / groups = ", g.c_in / g.groups);
  MAMCLIP_CHECK(g.kh > 0 && g.kw > 0, shape_error, "conv2d: weight has shape ", shape_str(weight.shape()),
                "; expected a non-empty kernel");
  if (bias.defined())
    MAMCLIP_CHECK(bias.shape() == Shape{g.c_out}, shape_error, "conv2d: bias has shape ", shape_str(bias.shape()),
                  "; expected [C_out] = [", g.c_out, "]");
  const int64_t ekh = (g.kh - 1) * g.dil_h + 1, ekw = (g.kw - 1) * g.dil_w + 1;
  const int64_t ph = g.h + 2 * g.pad_h, pw = g.w + 2 * g.pad_w;
  MAMCLIP_CHECK(ekh <= ph && ekw <= pw, shape_error, "conv2d: the kernel (", g.kh, " x ", g.kw, ", dilated to ", ekh,
                " x ", ekw, ") is larger than the padded input (", ph, " x ", pw, ", input shape ", shape_str(x.shape()),
                ", padding [", g.pad_h, ", ", g.pad_w, "])");
  g.oh = (ph - ekh) / g.stride_h + 1;
  g.ow = (pw - ekw) / g.stride_w + 1;
  auto same_device = [&](const char* name, Device d) {
    MAMCLIP_CHECK(d == x.device(), device_error, "conv2d: expected all tensors on one device, but input is on ",
                  x.device().str(), " and ", name, " is on ", d.str());
  };
  same_device("weight", weight.device());
  if (bias.defined()) same_device("bias", bias.device());
  return g;
}

template <class T>
T* data_or_null(const Tensor<T>& t) {
  return t.defined() ? t.data_ptr() : nullptr;
}

// The CPU kernels for S = float or double; half and bfloat16 never reach them
// (conv2d converts them to float), but conv2d_impl<half> exists for devices.
template <class S>
void conv2d_cpu_forward(const Conv2dGeometry& g, const S* x, const S* w, const S* b, S* y) {
  if constexpr (std::is_same_v<S, acc_t<S>>) cpu::conv2d_forward(g, x, w, b, y);
}
template <class S>
void conv2d_cpu_backward(const Conv2dGeometry& g, const S* x, const S* w, const S* gy, S* dx, S* dw, S* db) {
  if constexpr (std::is_same_v<S, acc_t<S>>) cpu::conv2d_backward(g, x, w, gy, dx, dw, db);
}

// t's values stored [N, H, W, C] (no copy when t already is), outside the graph.
template <class T>
Tensor<T> channels_last_values(const Tensor<T>& t) {
  if (is_channels_last(t)) return t.detach();
  return contiguous_copy(t.permute({0, 2, 3, 1})).permute({0, 3, 1, 2});
}

// [N, C, H, W] views of fresh [N, H, W, C] storage.
template <class T>
Tensor<T> empty_channels_last(int64_t n, int64_t c, int64_t h, int64_t w, Device dev) {
  return Tensor<T>::empty({n, h, w, c}, dev).permute({0, 3, 1, 2});
}

// conv2d on channels-last storage through the device's "conv2d_nhwc" kernels;
// an undefined tensor when the device has none or they decline the call.
// `fallback`: the NCHW backward kernel, in case the NHWC one declines later
// (needed when `record`).
template <class S>
Tensor<S> conv2d_nhwc(const Tensor<S>& x, const Tensor<S>& weight, const Tensor<S>& bias, const Conv2dGeometry& g,
                      bool record, Conv2dBackwardKernel<S>* fallback) {
  auto* forward = find_kernel<Conv2dNhwcForwardKernel<S>>("conv2d_nhwc", dtype_v<S>, x.device());
  auto* backward = find_kernel<Conv2dNhwcBackwardKernel<S>>("conv2d_nhwc_backward", dtype_v<S>, x.device());
  if (!forward || (record && !backward)) return {};
  const Device dev = x.device();
  const Tensor<S> xd = x.detach(), wc = contiguous_values(weight);
  const Tensor<S> bc = bias.defined() ? contiguous_values(bias) : Tensor<S>();
  Tensor<S> y = empty_channels_last<S>(g.batch, g.c_out, g.oh, g.ow, dev);
  if (!forward(g, xd.data_ptr(), wc.data_ptr(), data_or_null(bc), y.data_ptr())) return {};
  if (!record) return y;
  const Tensor<S> saved_x = weight.requires_grad() ? xd : Tensor<S>();
  const Tensor<S> saved_w = x.requires_grad() ? wc : Tensor<S>();
  return autograd::record<S>(
      "Conv2dBackward", {x, weight, bias}, y,
      [saved_x, saved_w, g, dev, backward, fallback](const Tensor<S>& gy, const std::vector<bool>& needs) {
        Tensor<S> dx = needs[0] ? empty_channels_last<S>(g.batch, g.c_in, g.h, g.w, dev) : Tensor<S>();
        Tensor<S> dw = needs[1] ? Tensor<S>::empty({g.c_out, g.cin_per_group(), g.kh, g.kw}, dev) : Tensor<S>();
        Tensor<S> db = needs[2] ? Tensor<S>::empty({g.c_out}, dev) : Tensor<S>();
        const S* pw = needs[0] ? saved_w.data_ptr() : nullptr;
        const Tensor<S> gl = channels_last_values(gy);
        const S* px = needs[1] ? saved_x.data_ptr() : nullptr;
        if (!backward(g, px, pw, gl.data_ptr(), data_or_null(dx), data_or_null(dw), data_or_null(db))) {
          const Tensor<S> xc = needs[1] ? contiguous_values(saved_x) : Tensor<S>(), gc = contiguous_values(gy);
          Tensor<S> dxc = needs[0] ? Tensor<S>::empty({g.batch, g.c_in, g.h, g.w}, dev) : Tensor<S>();
          fallback(g, needs[1] ? xc.data_ptr() : nullptr, pw, gc.data_ptr(), data_or_null(dxc), data_or_null(dw),
                   data_or_null(db));
          if (needs[0]) dx.copy_(dxc);
        }
        return std::vector<Tensor<S>>{dx, dw, db};
      });
}

// Runs on the CPU (S = float or double) or through a device's registered kernels.
template <class S>
Tensor<S> conv2d_impl(const Tensor<S>& x, const Tensor<S>& weight, const Tensor<S>& bias, const Conv2dGeometry& g) {
  const Device dev = x.device();
  const bool on_cpu = dev.is_cpu();
  Conv2dForwardKernel<S>* forward = nullptr;
  Conv2dBackwardKernel<S>* backward = nullptr;
  const bool record = autograd::any_requires_grad(x, weight, bias);
  if (!on_cpu) {
    forward = require_kernel<Conv2dForwardKernel<S>>("conv2d", dtype_v<S>, dev);
    // Looked up now, so that a missing backward kernel fails at the forward call.
    if (record) backward = require_kernel<Conv2dBackwardKernel<S>>("conv2d_backward", dtype_v<S>, dev);
    if (is_channels_last(x))
      if (Tensor<S> y = conv2d_nhwc(x, weight, bias, g, record, backward); y.defined()) return y;
  }
  const Tensor<S> xc = contiguous_values(x), wc = contiguous_values(weight);
  const Tensor<S> bc = bias.defined() ? contiguous_values(bias) : Tensor<S>();
  Tensor<S> y = Tensor<S>::empty({g.batch, g.c_out, g.oh, g.ow}, dev);
  if (forward)
    forward(g, xc.data_ptr(), wc.data_ptr(), data_or_null(bc), y.data_ptr());
  else
    conv2d_cpu_forward(g, xc.data_ptr(), wc.data_ptr(), data_or_null(bc), y.data_ptr());
  if (!record) return y;
  // The input is needed only for the weight gradient, the weight only for the input gradient.
  const Tensor<S> saved_x = weight.requires_grad() ? xc : Tensor<S>();
  const Tensor<S> saved_w = x.requires_grad() ? wc : Tensor<S>();
  return autograd::record<S>(
      "Conv2dBackward", {x, weight, bias}, y,
      [saved_x, saved_w, g, dev, backward](const Tensor<S>& gy, const std::vector<bool>& needs) {
        const Tensor<S> gc = contiguous_values(gy);
        Tensor<S> dx = needs[0] ? Tensor<S>::empty({g.batch, g.c_in, g.h, g.w}, dev) : Tensor<S>();
        Tensor<S> dw = needs[1] ? Tensor<S>::empty({g.c_out, g.cin_per_group(), g.kh, g.kw}, dev) : Tensor<S>();
        Tensor<S> db = needs[2] ? Tensor<S>::empty({g.c_out}, dev) : Tensor<S>();
        const S* px = needs[1] ? saved_x.data_ptr() : nullptr;
        const S* pw = needs[0] ? saved_w.data_ptr() : nullptr;
        if (backward)
          backward(g, px, pw, gc.data_ptr(), data_or_null(dx), data_or_null(dw), data_or_null(db));
        else
          conv2d_cpu_backward(g, px, pw, gc.data_ptr(), data_or_null(dx), data_or_null(dw), data_or_null(db));
        return std::vector<Tensor<S>>{dx, dw, db};
      });
}

}  // namespace detail

template <class T>
Tensor<T> conv2d(const Tensor<T>& x, const Tensor<T>& weight, const Tensor<T>& bias, const Conv2dOptions& options) {
  static_assert(is_floating_v<T>, "conv2d: T must be float, double, half or bfloat16");
  const Conv2dGeometry g = detail::conv2d_geometry(x, weight, bias, options);
  if (autocast_applies<T>(x.device()))
    return autocast_dispatch(x.device(), [&](auto u) {
      using U = decltype(u);
      const Tensor<U> b = bias.defined() ? bias.template to<U>() : Tensor<U>();
      return conv2d(x.template to<U>(), weight.template to<U>(), b, options).template to<T>();
    });
  if constexpr (!std::is_same_v<T, acc_t<T>>) {
    if (x.device().is_cpu()) {
      // half / bfloat16 on the CPU: compute in float; the casts carry the gradient.
      using A = acc_t<T>;
      const Tensor<A> b = bias.defined() ? bias.template to<A>() : Tensor<A>();
      return detail::conv2d_impl<A>(x.template to<A>(), weight.template to<A>(), b, g).template to<T>();
    }
  }
  return detail::conv2d_impl<T>(x, weight, bias, g);
}

}  // namespace mamclip
