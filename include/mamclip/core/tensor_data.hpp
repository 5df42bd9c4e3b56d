#pragma once
// Reading, filling and copying tensor data, on any device. These are not ops:
// they are never recorded by autograd.

#include <algorithm>
#include <cstring>
#include <vector>

#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/iterate.hpp"
#include "mamclip/core/tensor.hpp"

namespace mamclip {

// Device kernel signatures for the data movement every backend provides.
template <class T>
using StridedCopyKernel = void(T* dst, const T* src, const Shape& shape, const Shape& src_strides);  // dst contiguous
template <class T>
using FillKernel = void(T* dst, int64_t n, T value);
template <class T>
using AddKernel = void(T* out, const T* a, const T* b, int64_t n);  // contiguous, same size

namespace detail {

// A contiguous copy of `src` on its own device, sharing nothing with it.
template <class T>
Tensor<T> contiguous_copy(const Tensor<T>& src) {
  Tensor<T> out = Tensor<T>::empty(src.shape(), src.device());
  if (src.numel() == 0) return out;
  if (src.device().is_cpu()) {
    T* d = out.data_ptr();
    const T* s = src.data_ptr();
    if (src.is_contiguous()) {
      std::memcpy(d, s, sizeof(T) * static_cast<size_t>(src.numel()));
    } else {
      copy_to_contiguous(s, src.shape(), src.strides(), d);
    }
  } else {
    require_kernel<StridedCopyKernel<T>>("strided_copy", dtype_v<T>, src.device())(out.data_ptr(), src.data_ptr(),
                                                                                   src.shape(), src.strides());
  }
  return out;
}

// Whether t's elements fill one storage range exactly: some order of its dims
// is row-major (a contiguous tensor, or a permutation of one, such as a
// channels-last [N, C, H, W] view).
template <class T>
bool dense_in_storage(const Tensor<T>& t) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size) of the dims that are not 1
  for (int64_t i = 0; i < t.dim(); ++i)
    if (t.size(i) != 1) dims.emplace_back(t.stride(i), t.size(i));
  std::sort(dims.begin(), dims.end());
  int64_t expected = 1;
  for (const auto& [stride, size] : dims) {
    if (stride != expected) return false;
    expected *= size;
  }
  return true;
}

// a + b for two tensors of the same shape (used to accumulate gradients).
// On a device, two gradients with the same dense layout (e.g. both channels
// last) are added as flat ranges into a result of that layout: no copies.
template <class T>
Tensor<T> add_same_shape(const Tensor<T>& a, const Tensor<T>& b) {
  MAMCLIP_CHECK(a.shape() == b.shape(), shape_error, "gradient accumulation: shapes ", shape_str(a.shape()), " and ",
                shape_str(b.shape()), " differ");
  MAMCLIP_CHECK(a.device() == b.device(), device_error, "gradient accumulation: gradients on ", a.device().str(),
                " and ", b.device().str());
  if (!a.device().is_cpu() && !a.is_contiguous() && a.strides() == b.strides() && dense_in_storage(a)) {
    Tensor<T> flat = Tensor<T>::empty({a.numel()}, a.device());
    require_kernel<AddKernel<T>>("add_contiguous", dtype_v<T>, a.device())(flat.data_ptr(), a.data_ptr(), b.data_ptr(),
                                                                           a.numel());
    return Tensor<T>::from_storage(flat.storage(), 0, a.shape(), a.strides());
  }
  Tensor<T> out = Tensor<T>::empty(a.shape(), a.device());
  if (a.device().is_cpu()) {
    T* o = out.data_ptr();
    const T* pa = a.data_ptr();
    const T* pb = b.data_ptr();
    using A = acc_t<T>;
    for_each_index_run<2>(a.shape(), {a.strides(), b.strides()}, [&](int64_t i, const auto& off, int64_t count, const auto& st) {
      const T* x = pa + off[0];
      const T* y = pb + off[1];
      if (st[0] == 1 && st[1] == 1)
        for (int64_t t = 0; t < count; ++t) o[i + t] = static_cast<T>(static_cast<A>(x[t]) + static_cast<A>(y[t]));
      else
        for (int64_t t = 0; t < count; ++t)
          o[i + t] = static_cast<T>(static_cast<A>(x[t * st[0]]) + static_cast<A>(y[t * st[1]]));
    });
  } else {
    Tensor<T> ca = a.is_contiguous() ? a : contiguous_copy(a);
    Tensor<T> cb = b.is_contiguous() ? b : contiguous_copy(b);
    require_kernel<AddKernel<T>>("add_contiguous", dtype_v<T>, a.device())(out.data_ptr(), ca.data_ptr(), cb.data_ptr(),
                                                                           a.numel());
  }
  return out;
}

}  // namespace detail

template <class T>
std::vector<T> Tensor<T>::to_vector() const {
  std::vector<T> out(static_cast<size_t>(numel()));
  if (out.empty()) return out;
  if (device().is_cpu()) {
    const T* s = data_ptr();
    size_t i = 0;
    detail::for_each_offset<1>(shape(), {strides()}, [&](const std::array<int64_t, 1>& o) { out[i++] = s[o[0]]; });
  } else {
    Tensor<T> c = is_contiguous() ? *this : detail::contiguous_copy(*this);
    if constexpr (std::is_same_v<T, bool>) {
      // std::vector<bool> packs bits and has no data(): stage the bytes.
      std::vector<uint8_t> bytes(out.size());
      copy_bytes(bytes.data(), kCPU, c.data_ptr(), device(), bytes.size());
      for (size_t i = 0; i < bytes.size(); ++i) out[i] = bytes[i] != 0;
    } else {
      copy_bytes(out.data(), kCPU, c.data_ptr(), device(), out.size() * sizeof(T));
    }
  }
  return out;
}

template <class T>
T Tensor<T>::item() const {
  MAMCLIP_CHECK(numel() == 1, shape_error, "item: expected a tensor with one element, got shape ", shape_str(shape()));
  return to_vector()[0];
}

template <class T>
Tensor<T>& Tensor<T>::fill_(T value) {
  MAMCLIP_CHECK(is_leaf(), autograd_error,
                "fill_: in-place change of a tensor that is the output of an op in a graph (detach() it first)");
  if (device().is_cpu()) {
    T* d = data_ptr();
    detail::for_each_offset<1>(shape(), {strides()}, [&](const std::array<int64_t, 1>& o) { d[o[0]] = value; });
  } else {
    MAMCLIP_CHECK(is_contiguous(), value_error, "fill_: device tensors must be contiguous");
    require_kernel<FillKernel<T>>("fill", dtype_v<T>, device())(data_ptr(), numel(), value);
  }
  return *this;
}

template <class T>
Tensor<T>& Tensor<T>::copy_(const Tensor<T>& src) {
  MAMCLIP_CHECK(src.shape() == shape(), shape_error, "copy_: source shape ", shape_str(src.shape()),
                " differs from destination shape ", shape_str(shape()));
  MAMCLIP_CHECK(is_leaf(), autograd_error,
                "copy_: in-place change of a tensor that is the output of an op in a graph (detach() it first)");
  if (device().is_cpu() && src.device().is_cpu()) {
    T* d = data_ptr();
    const T* s = src.data_ptr();
    // A contiguous destination has no zero strides, so threads cannot write
    // the same element (a broadcast destination is copied on one thread).
    if (is_contiguous()) {
      detail::copy_to_contiguous(s, shape(), src.strides(), d);
      return *this;
    }
    detail::for_each_offset<2>(shape(), {strides(), src.strides()},
                               [&](const std::array<int64_t, 2>& o) { d[o[0]] = s[o[1]]; });
    return *this;
  }
  // Across devices: both sides contiguous, then bytes.
  Tensor<T> s = src.is_contiguous() ? src : detail::contiguous_copy(src);
  if (is_contiguous()) {
    copy_bytes(data_ptr(), device(), s.data_ptr(), s.device(), sizeof(T) * static_cast<size_t>(numel()));
  } else {
    Tensor<T> staging = Tensor<T>::empty(shape(), device());
    copy_bytes(staging.data_ptr(), device(), s.data_ptr(), s.device(), sizeof(T) * static_cast<size_t>(numel()));
    MAMCLIP_CHECK(device().is_cpu(), value_error, "copy_: a non-contiguous destination on ", device().str(),
                  " is not supported; make it contiguous first");
    return copy_(staging);
  }
  return *this;
}

}  // namespace mamclip
