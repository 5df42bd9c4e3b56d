#pragma once
// Views (no copies: they share storage and differentiate back to their base),
// copies (contiguous, clone, casts, device moves) and cat / stack / split.

#include <algorithm>
#include <numeric>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/fwd.hpp"

namespace mamclip {

namespace detail {

// Strides for viewing a tensor (shape, strides) as `target` without a copy, or
// nullopt when its memory layout does not allow it (PyTorch's computeStride).
inline std::optional<Shape> view_strides(const Shape& shape, const Shape& strides, const Shape& target) {
  Shape out(target.size());
  if (numel_of(shape) == 0 || shape.empty()) return contiguous_strides(target);
  int64_t view_d = static_cast<int64_t>(target.size()) - 1;
  int64_t chunk_base_stride = strides.empty() ? 1 : strides.back();
  int64_t tensor_numel = 1, view_numel = 1;
  for (int64_t d = static_cast<int64_t>(shape.size()) - 1; d >= 0; --d) {
    tensor_numel *= shape[d];
    if (d == 0 || (shape[d - 1] != 1 && strides[d - 1] != tensor_numel * chunk_base_stride)) {
      while (view_d >= 0 && (view_numel < tensor_numel || target[view_d] == 1)) {
        out[view_d] = view_numel * chunk_base_stride;
        view_numel *= target[view_d];
        --view_d;
      }
      if (view_numel != tensor_numel) return std::nullopt;
      if (d > 0) {
        chunk_base_stride = strides[d - 1];
        tensor_numel = 1;
        view_numel = 1;
      }
    }
  }
  if (view_d != -1) return std::nullopt;
  return out;
}

// Resolves one -1 in a requested shape and checks the element count.
inline Shape infer_shape(const Shape& requested, int64_t numel, const char* op, const Shape& from) {
  Shape s = requested;
  int64_t known = 1, infer = -1;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == -1) {
      MAMCLIP_CHECK(infer < 0, shape_error, op, ": only one dimension can be -1, got ", shape_str(requested));
      infer = static_cast<int64_t>(i);
    } else {
      MAMCLIP_CHECK(s[i] >= 0, shape_error, op, ": invalid size ", s[i], " in shape ", shape_str(requested));
      known *= s[i];
    }
  }
  if (infer >= 0) {
    MAMCLIP_CHECK(known != 0 && numel % known == 0, shape_error, op, ": shape ", shape_str(requested),
                  " is invalid for a tensor of shape ", shape_str(from), " (", numel, " elements)");
    s[infer] = numel / known;
  }
  MAMCLIP_CHECK(numel_of(s) == numel, shape_error, op, ": shape ", shape_str(requested), " is invalid for a tensor of shape ",
                shape_str(from), " (", numel, " elements)");
  return s;
}

// Ops that cut along a dim have none to cut in a 0-dim tensor (and wrap_dim
// accepts dim 0 there, so without this check shape()[dim] would read past the end).
template <class T>
void require_dims(const char* op, const Tensor<T>& x) {
  MAMCLIP_CHECK(x.dim() >= 1, shape_error, op, ": x has shape [] (0-dim); expected at least 1 dim");
}

// A view of `x` with new geometry, recorded with `backward` when x requires grad.
template <class T, class F>
Tensor<T> make_view(const char* name, const Tensor<T>& x, int64_t offset, Shape shape, Shape strides, F&& backward) {
  Tensor<T> v = Tensor<T>::from_storage(x.storage(), offset, std::move(shape), std::move(strides));
  if constexpr (is_floating_v<T>)
    return autograd::record<T>(name, {x}, v, std::forward<F>(backward));
  else
    return v;
}

}  // namespace detail

template <class T>
Tensor<T> Tensor<T>::view(const Shape& requested) const {
  Shape s = detail::infer_shape(requested, numel(), "view", shape());
  auto st = detail::view_strides(shape(), strides(), s);
  MAMCLIP_CHECK(st.has_value(), shape_error, "view: a tensor of shape ", shape_str(shape()), " with strides ",
                shape_str(strides()), " cannot be viewed as ", shape_str(s),
                " without a copy (use reshape, or contiguous() first)");
  Shape in = shape();
  return detail::make_view<T>("ViewBackward", *this, storage_offset(), s, *st,
                              [in](const auto& g) { return std::vector<Tensor<T>>{g.reshape(in)}; });
}

template <class T>
Tensor<T> Tensor<T>::reshape(const Shape& requested) const {
  Shape s = detail::infer_shape(requested, numel(), "reshape", shape());
  if (detail::view_strides(shape(), strides(), s)) return view(s);
  return contiguous().view(s);
}

template <class T>
Tensor<T> Tensor<T>::permute(const std::vector<int64_t>& dims) const {
  const int64_t n = dim();
  MAMCLIP_CHECK(static_cast<int64_t>(dims.size()) == n, shape_error, "permute: ", dims.size(),
                " dims given for a tensor of shape ", shape_str(shape()));
  Shape s(n), st(n);
  std::vector<int64_t> inverse(n, -1);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t d = wrap_dim(dims[i], n, "permute");
    MAMCLIP_CHECK(inverse[d] < 0, shape_error, "permute: dim ", d, " appears twice in the permutation");
    inverse[d] = i;
    s[i] = shape()[d];
    st[i] = strides()[d];
  }
  return detail::make_view<T>("PermuteBackward", *this, storage_offset(), s, st,
                              [inverse](const auto& g) { return std::vector<Tensor<T>>{g.permute(inverse)}; });
}

template <class T>
Tensor<T> Tensor<T>::transpose(int64_t d0, int64_t d1) const {
  const int64_t n = dim();
  d0 = wrap_dim(d0, n, "transpose");
  d1 = wrap_dim(d1, n, "transpose");
  if (n == 0) return permute({});  // PyTorch allows transpose(0, -1) of a 0-dim tensor: the identity
  std::vector<int64_t> perm(n);
  std::iota(perm.begin(), perm.end(), 0);
  std::swap(perm[d0], perm[d1]);
  return permute(perm);
}

template <class T>
Tensor<T> Tensor<T>::slice(int64_t d, int64_t start, int64_t end, int64_t step) const {
  detail::require_dims("slice", *this);
  d = wrap_dim(d, dim(), "slice");
  const int64_t size = shape()[d];
  MAMCLIP_CHECK(step > 0, value_error, "slice: step must be positive, got ", step);
  if (start < 0) start += size;
  if (end < 0) end += size;
  start = std::clamp<int64_t>(start, 0, size);
  end = std::clamp<int64_t>(end, start, size);
  Shape s = shape(), st = strides();
  s[d] = (end - start + step - 1) / step;
  st[d] *= step;
  Shape in = shape();
  return detail::make_view<T>("SliceBackward", *this, storage_offset() + start * strides()[d], s, st,
                              [in, d, start, end, step](const auto& g) {
                                Tensor<T> gi = Tensor<T>::empty(in, g.device());
                                gi.zero_();
                                gi.detach().slice(d, start, end, step).copy_(g);
                                return std::vector<Tensor<T>>{gi};
                              });
}

template <class T>
Tensor<T> Tensor<T>::narrow(int64_t d, int64_t start, int64_t length) const {
  detail::require_dims("narrow", *this);
  d = wrap_dim(d, dim(), "narrow");
  const int64_t size = shape()[d];
  if (start < 0) start += size;
  MAMCLIP_CHECK(start >= 0 && length >= 0 && start + length <= size, index_error, "narrow: range [", start, ", ",
                start + length, ") is out of bounds for dim ", d, " of size ", size, " (shape ", shape_str(shape()), ")");
  return slice(d, start, start + length);
}

template <class T>
Tensor<T> Tensor<T>::select(int64_t d, int64_t index) const {
  detail::require_dims("select", *this);
  d = wrap_dim(d, dim(), "select");
  const int64_t size = shape()[d];
  MAMCLIP_CHECK(index >= -size && index < size, index_error, "select: index ", index, " is out of range for dim ", d,
                " of size ", size, " (shape ", shape_str(shape()), ")");
  if (index < 0) index += size;
  return narrow(d, index, 1).squeeze(d);
}

template <class T>
Tensor<T> Tensor<T>::expand(const Shape& target) const {
  MAMCLIP_CHECK(target.size() >= shape().size(), shape_error, "expand: cannot expand shape ", shape_str(shape()), " to ",
                shape_str(target), " (fewer dims)");
  Shape s = target;
  const size_t off = target.size() - shape().size();
  for (size_t i = 0; i < s.size(); ++i) {
    if (i >= off && s[i] == -1) s[i] = shape()[i - off];
    // -1 keeps an existing size; new leading dims (and all others) need a real size.
    MAMCLIP_CHECK(s[i] >= 0, shape_error, "expand: cannot expand shape ", shape_str(shape()), " to ", shape_str(target),
                  " (dim ", i, ": size ", s[i], " is not allowed", (i < off && s[i] == -1 ? " for a new leading dim" : ""),
                  ")");
    const int64_t have = i >= off ? shape()[i - off] : 1;
    MAMCLIP_CHECK(have == s[i] || have == 1, shape_error, "expand: cannot expand shape ", shape_str(shape()), " to ",
                  shape_str(target), " (dim ", i, ": size ", have, " is not 1 and differs from ", s[i], ")");
  }
  Shape st = broadcast_strides(shape(), strides(), s);
  Shape in = shape();
  return detail::make_view<T>("ExpandBackward", *this, storage_offset(), s, st,
                              [in](const auto& g) { return std::vector<Tensor<T>>{sum_to(g, in)}; });
}

template <class T>
Tensor<T> Tensor<T>::squeeze(int64_t d) const {
  d = wrap_dim(d, dim(), "squeeze");
  if (dim() == 0 || shape()[d] != 1) return view(shape());
  Shape s = shape(), st = strides();
  s.erase(s.begin() + d);
  st.erase(st.begin() + d);
  Shape in = shape();
  return detail::make_view<T>("SqueezeBackward", *this, storage_offset(), s, st,
                              [in](const auto& g) { return std::vector<Tensor<T>>{g.reshape(in)}; });
}

template <class T>
Tensor<T> Tensor<T>::squeeze() const {
  Shape s, st;
  for (int64_t i = 0; i < dim(); ++i)
    if (shape()[i] != 1) {
      s.push_back(shape()[i]);
      st.push_back(strides()[i]);
    }
  Shape in = shape();
  return detail::make_view<T>("SqueezeBackward", *this, storage_offset(), s, st,
                              [in](const auto& g) { return std::vector<Tensor<T>>{g.reshape(in)}; });
}

template <class T>
Tensor<T> Tensor<T>::unsqueeze(int64_t d) const {
  d = wrap_dim(d, dim() + 1, "unsqueeze");
  Shape s = shape(), st = strides();
  const int64_t new_stride = d < dim() ? strides()[d] * shape()[d] : 1;
  s.insert(s.begin() + d, 1);
  st.insert(st.begin() + d, new_stride);
  Shape in = shape();
  return detail::make_view<T>("UnsqueezeBackward", *this, storage_offset(), s, st,
                              [in](const auto& g) { return std::vector<Tensor<T>>{g.reshape(in)}; });
}

template <class T>
Tensor<T> Tensor<T>::flatten(int64_t start_dim, int64_t end_dim) const {
  if (dim() == 0) return reshape({1});
  start_dim = wrap_dim(start_dim, dim(), "flatten");
  end_dim = wrap_dim(end_dim, dim(), "flatten");
  MAMCLIP_CHECK(start_dim <= end_dim, value_error, "flatten: start_dim ", start_dim, " is after end_dim ", end_dim);
  Shape s(shape().begin(), shape().begin() + start_dim);
  int64_t merged = 1;
  for (int64_t i = start_dim; i <= end_dim; ++i) merged *= shape()[i];
  s.push_back(merged);
  s.insert(s.end(), shape().begin() + end_dim + 1, shape().end());
  return reshape(s);
}

template <class T>
Tensor<T> Tensor<T>::clone() const {
  Tensor<T> out = detail::contiguous_copy(*this);
  if constexpr (is_floating_v<T>)
    return autograd::record<T>("CloneBackward", {*this}, out, [](const auto& g) { return std::vector<Tensor<T>>{g}; });
  else
    return out;
}

template <class T>
Tensor<T> Tensor<T>::contiguous() const {
  return is_contiguous() ? *this : clone();
}

// ---- channels last

// Whether t [N, C, H, W] stores its values densely as [N, H, W, C] (PyTorch's
// t.is_contiguous(memory_format=torch.channels_last)).
template <class T>
bool is_channels_last(const Tensor<T>& t) {
  if (t.dim() != 4) return false;
  const int64_t c = t.size(1), h = t.size(2), w = t.size(3);
  return t.stride(1) == 1 && t.stride(3) == c && t.stride(2) == w * c && t.stride(0) == h * w * c;
}

// x [N, C, H, W] with its values stored [N, H, W, C] (PyTorch's
// x.contiguous(memory_format=torch.channels_last)): x itself when it already
// is, else a copy that the gradient flows through. Convolutions and
// LayerNorm2d on a device keep this layout.
template <class T>
Tensor<T> contiguous_channels_last(const Tensor<T>& x) {
  MAMCLIP_CHECK(x.dim() == 4, shape_error, "contiguous_channels_last: input has shape ", shape_str(x.shape()),
                "; expected 4 dims [N, C, H, W]");
  if (is_channels_last(x)) return x;
  return x.permute({0, 2, 3, 1}).clone().permute({0, 3, 1, 2});
}

// ---- casts and device moves

// Device kernel of to<To>() from From, registered as "to<dtype name of To>"
// for the source dtype: dst[i] = src[i] converted as the CPU does (through
// double; a half or bfloat16 target from the float nearest it, as Eigen's
// conversions do).
template <class From, class To>
using CastKernel = void(const From* src, To* dst, int64_t n);

namespace detail {
template <class From, class To>
class CastBackward final : public autograd::Node {
 public:
  std::string name() const override { return "ToBackward"; }
  bool retains_nothing() const override { return true; }
  std::vector<autograd::AnyTensor> apply(std::vector<autograd::AnyTensor>&& grads) override {
    Tensor<To> g = autograd::from_any<To>(grads[0]);
    if (!g.defined()) return {std::monostate{}};
    return {autograd::to_any(g.template to<From>())};
  }
};
}  // namespace detail

template <class T>
template <class U>
Tensor<U> Tensor<T>::to() const {
  if constexpr (std::is_same_v<T, U>) {
    return *this;
  } else {
    // On a device, a dense permuted layout (e.g. channels last) is kept: the
    // cast runs over the storage range, so autocast does not re-lay it out.
    const bool keep_layout = !device().is_cpu() && !is_contiguous() && detail::dense_in_storage(*this);
    Tensor<T> src = keep_layout ? detach() : contiguous().detach();
    Tensor<U> out = keep_layout
                        ? Tensor<U>::from_storage(Tensor<U>::empty({numel()}, device()).storage(), 0, shape(), strides())
                        : Tensor<U>::empty(shape(), device());
    const T* s = src.data_ptr();
    U* d = out.data_ptr();
    if (!device().is_cpu()) {
      require_kernel<CastKernel<T, U>>(detail::str_cat("to<", dtype_name(dtype_v<U>), ">"), dtype_v<T>, device())(
          s, d, numel());
    } else {
      for (int64_t i = 0; i < numel(); ++i) {
        if constexpr (std::is_same_v<U, bool>)
          d[i] = static_cast<double>(s[i]) != 0.0;
        else
          d[i] = static_cast<U>(static_cast<double>(s[i]));
      }
    }
    if constexpr (is_floating_v<T> && is_floating_v<U>) {
      if (autograd::any_requires_grad(*this)) {
        auto node = std::make_shared<detail::CastBackward<T, U>>();
        std::vector<Tensor<U>> outs{out};
        autograd::attach<U>(node, {autograd::gradient_edge(*this)}, outs);
      }
    }
    return out;
  }
}

template <class T>
Tensor<T> Tensor<T>::to(Device target) const {
  if (target == device()) return *this;
  Tensor<T> src = contiguous().detach();
  Tensor<T> out = Tensor<T>::empty(shape(), target);
  copy_bytes(out.data_ptr(), target, src.data_ptr(), src.device(), sizeof(T) * static_cast<size_t>(numel()));
  if constexpr (is_floating_v<T>) {
    const Device from = device();
    return autograd::record<T>("ToDeviceBackward", {*this}, out,
                               [from](const auto& g) { return std::vector<Tensor<T>>{g.to(from)}; });
  } else {
    return out;
  }
}

// ---- cat, stack, split

template <class T>
Tensor<T> cat(const std::vector<Tensor<T>>& tensors, int64_t dim) {
  MAMCLIP_CHECK(!tensors.empty(), value_error, "cat: expected a non-empty list of tensors");
  const Tensor<T>& first = tensors[0];
  MAMCLIP_CHECK(first.dim() >= 1, shape_error, "cat: tensor 0 has shape [] (0-dim); expected at least 1 dim "
                "(stack joins 0-dim tensors)");
  dim = wrap_dim(dim, first.dim(), "cat");
  Shape out_shape = first.shape();
  std::vector<int64_t> sizes;
  out_shape[dim] = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const Tensor<T>& t = tensors[i];
    MAMCLIP_CHECK(t.dim() == first.dim(), shape_error, "cat: tensor ", i, " has shape ", shape_str(t.shape()),
                  " but tensor 0 has shape ", shape_str(first.shape()), " (same number of dims expected)");
    MAMCLIP_CHECK(t.device() == first.device(), device_error, "cat: tensor ", i, " is on ", t.device().str(),
                  " but tensor 0 is on ", first.device().str());
    for (int64_t d = 0; d < t.dim(); ++d)
      MAMCLIP_CHECK(d == dim || t.shape()[d] == first.shape()[d], shape_error, "cat: tensor ", i, " has shape ",
                    shape_str(t.shape()), " but tensor 0 has shape ", shape_str(first.shape()),
                    " (sizes must match except in dim ", dim, ")");
    sizes.push_back(t.shape()[dim]);
    out_shape[dim] += t.shape()[dim];
  }
  Tensor<T> out = Tensor<T>::empty(out_shape, first.device());
  int64_t at = 0;
  for (const auto& t : tensors) {
    out.narrow(dim, at, t.shape()[dim]).detach().copy_(t.detach());
    at += t.shape()[dim];
  }
  if constexpr (is_floating_v<T>)
    return autograd::record<T>("CatBackward", tensors, out, [sizes, dim](const Tensor<T>& g) {
      std::vector<Tensor<T>> gs;
      int64_t at = 0;
      for (int64_t s : sizes) {
        gs.push_back(g.narrow(dim, at, s));
        at += s;
      }
      return gs;
    });
  else
    return out;
}

template <class T>
Tensor<T> stack(const std::vector<Tensor<T>>& tensors, int64_t dim) {
  MAMCLIP_CHECK(!tensors.empty(), value_error, "stack: expected a non-empty list of tensors");
  dim = wrap_dim(dim, tensors[0].dim() + 1, "stack");
  std::vector<Tensor<T>> expanded;
  for (size_t i = 0; i < tensors.size(); ++i) {
    MAMCLIP_CHECK(tensors[i].shape() == tensors[0].shape(), shape_error, "stack: tensor ", i, " has shape ",
                  shape_str(tensors[i].shape()), " but tensor 0 has shape ", shape_str(tensors[0].shape()));
    expanded.push_back(tensors[i].unsqueeze(dim));
  }
  return cat(expanded, dim);
}

template <class T>
std::vector<Tensor<T>> split(const Tensor<T>& x, const std::vector<int64_t>& sizes, int64_t dim) {
  detail::require_dims("split", x);
  dim = wrap_dim(dim, x.dim(), "split");
  int64_t total = 0;
  for (int64_t s : sizes) {
    MAMCLIP_CHECK(s >= 0, value_error, "split: negative section size ", s);
    total += s;
  }
  MAMCLIP_CHECK(total == x.shape()[dim], shape_error, "split: section sizes sum to ", total, " but dim ", dim,
                " has size ", x.shape()[dim], " (shape ", shape_str(x.shape()), ")");
  std::vector<Tensor<T>> out;
  int64_t at = 0;
  for (int64_t s : sizes) {
    out.push_back(x.narrow(dim, at, s));
    at += s;
  }
  return out;
}

template <class T>
std::vector<Tensor<T>> split(const Tensor<T>& x, int64_t split_size, int64_t dim) {
  MAMCLIP_CHECK(split_size > 0, value_error, "split: split_size must be positive, got ", split_size);
  detail::require_dims("split", x);
  dim = wrap_dim(dim, x.dim(), "split");
  std::vector<int64_t> sizes;
  for (int64_t left = x.shape()[dim]; left > 0; left -= split_size) sizes.push_back(std::min(split_size, left));
  if (sizes.empty()) sizes.push_back(0);  // an empty dim gives one empty piece, as in PyTorch
  return split(x, sizes, dim);
}

}  // namespace mamclip
