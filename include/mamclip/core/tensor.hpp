#pragma once
// Tensor<T>: a strided view of a Storage, with autograd metadata.
//
// A Tensor is a handle: copying it shares the same TensorImpl (like a PyTorch
// tensor object), and views (view, permute, narrow, expand, ...) make a new
// TensorImpl over the same Storage. Element type T is static; the device is a
// runtime value.
//
// This header holds the data model. Methods that are ops (views, casts,
// arithmetic) or autograd entry points (backward, register_hook) are declared
// here and defined in their layers; include "mamclip/mamclip.hpp" to use them.

#include <cmath>
#include <cstdint>
#include <functional>
#include <iomanip>
#include <limits>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "mamclip/core/device.hpp"
#include "mamclip/core/dtype.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/shape.hpp"
#include "mamclip/core/storage.hpp"

namespace mamclip {

namespace autograd {
class Node;
}

template <class T>
class Tensor;

// A gradient hook: receives the gradient; returns a replacement, or an undefined
// tensor to leave it unchanged.
template <class T>
using GradHook = std::function<Tensor<T>(const Tensor<T>&)>;

template <class T>
struct TensorImpl {
  std::shared_ptr<Storage> storage;
  int64_t offset = 0;  // in elements
  Shape shape;
  Shape strides;

  // autograd
  bool requires_grad = false;                  // leaves only; a non-leaf requires grad through grad_fn
  std::shared_ptr<autograd::Node> grad_fn;     // null for leaves
  uint32_t output_nr = 0;                      // which output of grad_fn this is
  std::shared_ptr<TensorImpl<T>> grad;         // accumulated .grad (leaves, or retain_grad())
  std::weak_ptr<autograd::Node> grad_accumulator;  // a leaf's AccumulateGrad, alive while a graph uses it
  std::vector<GradHook<T>> leaf_hooks;         // hooks of a leaf, run by its AccumulateGrad
  std::vector<std::pair<uint64_t, std::function<void()>>> post_accumulate_hooks;  // (handle, hook), run after .grad is updated
};

template <class T>
class Tensor {
 public:
  using value_type = T;

  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl<T>> impl) : impl_(std::move(impl)) {}

  // Uninitialised contiguous tensor.
  static Tensor empty(const Shape& shape, Device device = kCPU) {
    int64_t n = 1;
    for (size_t i = 0; i < shape.size(); ++i) {
      MAMCLIP_CHECK(shape[i] >= 0, value_error, "empty: negative size ", shape[i], " at dim ", i, " of shape ",
                    shape_str(shape));
      MAMCLIP_CHECK(shape[i] == 0 || n <= std::numeric_limits<int64_t>::max() / static_cast<int64_t>(sizeof(T)) / shape[i],
                    value_error, "empty: shape ", shape_str(shape), " overflows the addressable size");
      n *= shape[i];
    }
    auto impl = std::make_shared<TensorImpl<T>>();
    impl->storage = std::make_shared<Storage>(static_cast<size_t>(n) * sizeof(T), device);
    impl->shape = shape;
    impl->strides = contiguous_strides(shape);
    return Tensor(std::move(impl));
  }

  // A tensor over existing storage (used by views and by importers).
  static Tensor from_storage(std::shared_ptr<Storage> storage, int64_t offset, Shape shape, Shape strides) {
    auto impl = std::make_shared<TensorImpl<T>>();
    impl->storage = std::move(storage);
    impl->offset = offset;
    impl->shape = std::move(shape);
    impl->strides = std::move(strides);
    return Tensor(std::move(impl));
  }

  bool defined() const { return impl_ != nullptr; }
  const std::shared_ptr<TensorImpl<T>>& impl() const { return impl_; }
  // True when both handles are the same tensor object (not just equal values).
  bool is_same(const Tensor& other) const { return impl_ == other.impl_; }

  // ---- shape and layout
  const Shape& shape() const { return checked().shape; }
  const Shape& strides() const { return checked().strides; }
  int64_t dim() const { return static_cast<int64_t>(shape().size()); }
  int64_t size(int64_t d) const { return shape()[wrap_dim(d, dim(), "size")]; }
  int64_t stride(int64_t d) const { return strides()[wrap_dim(d, dim(), "stride")]; }
  int64_t numel() const { return numel_of(shape()); }
  int64_t storage_offset() const { return checked().offset; }
  Device device() const { return checked().storage->device(); }
  static constexpr DType dtype() { return dtype_v<T>; }
  const std::shared_ptr<Storage>& storage() const { return checked().storage; }
  bool is_contiguous() const {
    const auto& im = checked();
    int64_t expected = 1;
    for (size_t i = im.shape.size(); i-- > 0;) {
      if (im.shape[i] == 1) continue;
      if (im.strides[i] != expected) return false;
      expected *= im.shape[i];
    }
    return true;
  }
  bool shares_storage_with(const Tensor& o) const { return storage() == o.storage(); }

  // Pointer to element 0 (a device pointer for device tensors).
  T* data_ptr() const {
    const auto& im = checked();
    return static_cast<T*>(im.storage->data()) + im.offset;
  }

  // ---- element access (CPU tensors)
  T& at(const std::vector<int64_t>& index) const {
    const auto& im = checked();
    MAMCLIP_CHECK(device().is_cpu(), device_error, "at: element access needs a CPU tensor, got one on ", device().str(),
                  " (call .to(kCPU) first)");
    MAMCLIP_CHECK(index.size() == im.shape.size(), index_error, "at: ", index.size(), " indices given for a tensor of shape ",
                  shape_str(im.shape));
    int64_t off = 0;
    for (size_t d = 0; d < index.size(); ++d) {
      int64_t i = index[d] < 0 ? index[d] + im.shape[d] : index[d];
      MAMCLIP_CHECK(i >= 0 && i < im.shape[d], index_error, "at: index ", index[d], " is out of range for dim ", d,
                    " of size ", im.shape[d], " (shape ", shape_str(im.shape), ")");
      off += i * im.strides[d];
    }
    return data_ptr()[off];
  }
  template <class... I>
  T& operator()(I... idx) const { return at({static_cast<int64_t>(idx)...}); }

  // The single value of a one-element tensor (copied from the device if needed).
  T item() const;
  // All elements in row-major order, on the host.
  std::vector<T> to_vector() const;

  // ---- views (ops/shape): share storage; differentiable
  Tensor view(const Shape& shape) const;
  Tensor reshape(const Shape& shape) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t d0, int64_t d1) const;
  // Like torch: 0-D and 1-D tensors are returned as they are.
  Tensor t() const { return dim() < 2 ? *this : transpose(0, 1); }
  Tensor narrow(int64_t dim, int64_t start, int64_t length) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end, int64_t step = 1) const;
  Tensor select(int64_t dim, int64_t index) const;
  Tensor expand(const Shape& shape) const;
  Tensor squeeze(int64_t dim) const;
  Tensor squeeze() const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor flatten(int64_t start_dim = 0, int64_t end_dim = -1) const;
  Tensor contiguous() const;
  Tensor clone() const;
  template <class U>
  Tensor<U> to() const;
  Tensor to(Device device) const;

  // A view of the same data outside the graph: no grad_fn, requires_grad false.
  Tensor detach() const {
    const auto& im = checked();
    return from_storage(im.storage, im.offset, im.shape, im.strides);
  }

  // ---- in-place (never recorded; refused on tensors that take part in a graph)
  Tensor& fill_(T value);
  Tensor& zero_() { return fill_(T(0)); }
  Tensor& copy_(const Tensor& src);

  // ---- autograd (autograd/engine.hpp)
  bool requires_grad() const { return checked().requires_grad || checked().grad_fn != nullptr; }
  Tensor& set_requires_grad(bool on = true) {
    static_assert(is_floating_v<T>, "only floating-point tensors can require gradients");
    MAMCLIP_CHECK(is_leaf(), autograd_error,
                  "set_requires_grad: only leaf tensors can change requires_grad; this tensor is the output of ",
                  "an op (use detach() to make a leaf)");
    impl_->requires_grad = on;
    return *this;
  }
  bool is_leaf() const { return checked().grad_fn == nullptr; }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return checked().grad_fn; }
  uint32_t output_nr() const { return checked().output_nr; }
  // The accumulated gradient (undefined before the first backward). It is a handle:
  // optimizers update it in place.
  Tensor grad() const { return Tensor(checked().grad); }
  void set_grad(const Tensor& g) const { checked().grad = g.impl_; }
  void backward(const Tensor& gradient = Tensor(), bool retain_graph = false) const;
  void register_hook(GradHook<T> hook) const;
  // Runs `hook` on a leaf each time a backward has added its gradient to
  // .grad (once per backward, after all its uses are summed). Returns the
  // handle that removes it (data parallel wrappers unhook when destroyed).
  uint64_t register_post_accumulate_grad_hook(std::function<void()> hook) const;
  // Removes the hook `handle` names; an unknown handle does nothing.
  void remove_post_accumulate_grad_hook(uint64_t handle) const;
  // Keep .grad for this non-leaf tensor after backward.
  void retain_grad() const;

 private:
  TensorImpl<T>& checked() const {
    if (!impl_) throw value_error("use of an undefined tensor (default-constructed or moved-from Tensor)");
    return *impl_;
  }
  std::shared_ptr<TensorImpl<T>> impl_;
};

// ---- printing

namespace detail {
template <class T>
void print_value(std::ostream& os, T v) {
  if constexpr (std::is_floating_point_v<T> || std::is_same_v<T, half> || std::is_same_v<T, bfloat16>)
    os << std::setprecision(6) << static_cast<double>(v);
  else if constexpr (std::is_same_v<T, bool>)
    os << (v ? "true" : "false");
  else
    os << static_cast<int64_t>(v);
}
template <class T>
void print_rec(std::ostream& os, const std::vector<T>& v, const Shape& s, size_t d, int64_t& i, int indent) {
  constexpr int64_t kEdge = 3;  // like PyTorch: long dims show their first and last 3 entries
  if (d == s.size()) {
    print_value(os, v[i++]);
    return;
  }
  os << '[';
  const int64_t inner = numel_of(Shape(s.begin() + static_cast<long>(d) + 1, s.end()));
  for (int64_t k = 0; k < s[d]; ++k) {
    const std::string sep = d + 1 == s.size() ? ", " : ",\n" + std::string(indent + 1, ' ');
    if (s[d] > 2 * kEdge + 1 && k == kEdge) {
      os << sep << "...";
      i += (s[d] - 2 * kEdge) * inner;
      k = s[d] - kEdge - 1;
      continue;
    }
    if (k) os << sep;
    print_rec(os, v, s, d + 1, i, indent + 1);
  }
  os << ']';
}
}  // namespace detail

template <class T>
std::ostream& operator<<(std::ostream& os, const Tensor<T>& t) {
  if (!t.defined()) return os << "tensor(undefined)";
  const auto v = t.to_vector();
  int64_t i = 0;
  os << "tensor(";
  detail::print_rec(os, v, t.shape(), 0, i, 7);
  os << ", shape=" << shape_str(t.shape()) << ", dtype=" << dtype_name(t.dtype());
  if (!t.device().is_cpu()) os << ", device=" << t.device();
  if (t.requires_grad()) os << ", requires_grad=true";
  return os << ')';
}

template <class T>
std::string to_string(const Tensor<T>& t) {
  std::ostringstream os;
  os << t;
  return os.str();
}

}  // namespace mamclip
