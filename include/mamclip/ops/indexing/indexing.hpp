#pragma once
// index_select, gather and embedding, and their gradients (scatter-adds into
// zeros: index_add semantics, so repeated indices accumulate).
//
// Index values are checked on the host before any kernel runs (for a device
// index tensor that costs one copy of the indices, never of the data), so a
// kernel never reads out of bounds and the error names the op, the position,
// the value and the valid range.

#include <array>
#include <string>

#include "mamclip/autograd/node.hpp"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/ops/fwd.hpp"
#include "mamclip/ops/indexing/cpu.hpp"

namespace mamclip {

// Device kernels, registered under the op names "index_select", "index_add",
// "gather" and "scatter_add". Same arguments and meaning as the CPU references
// in ops/indexing/cpu.hpp: all pointers contiguous on the device, index values
// already in range; index_add and scatter_add add into dst.
template <class T>
using IndexSelectKernel = void(T* out, const T* x, const int64_t* index, int64_t outer, int64_t size, int64_t inner,
                               int64_t n);
template <class T>
using IndexAddKernel = void(T* dst, const T* src, const int64_t* index, int64_t outer, int64_t size, int64_t inner,
                            int64_t n);
template <class T>
using GatherKernel = void(T* out, const T* x, const int64_t* index, const Shape& x_shape, const Shape& index_shape,
                          int64_t dim);
template <class T>
using ScatterAddKernel = void(T* dst, const T* src, const int64_t* index, const Shape& dst_shape,
                              const Shape& index_shape, int64_t dim);

namespace detail {

template <class T>
Tensor<T> indexing_dense(const Tensor<T>& x) {
  return x.is_contiguous() ? x.detach() : contiguous_copy(x);
}

inline std::string position_str(int64_t flat, const Shape& shape) {
  Shape coord(shape.size());
  for (size_t d = shape.size(); d-- > 0;) {
    coord[d] = shape[d] ? flat % shape[d] : 0;
    flat = shape[d] ? flat / shape[d] : 0;
  }
  return shape_str(coord);
}

// The index values (row-major, on the host), each checked to lie in [0, size).
// `what` names the values ("index", "id"); `range` describes what they index.
inline std::vector<int64_t> checked_indices(const char* op, const char* what, const Tensor<int64_t>& index, int64_t size,
                                            const std::string& range) {
  std::vector<int64_t> v = index.to_vector();
  for (size_t p = 0; p < v.size(); ++p)
    MAMCLIP_CHECK(v[p] >= 0 && v[p] < size, index_error, op, ": ", what, " ", v[p], " at position ",
                  position_str(static_cast<int64_t>(p), index.shape()), " is out of range for ", range, " (expected 0 <= ",
                  what, " < ", size, ")");
  return v;
}

template <class T>
void indexing_check_device(const char* op, const char* xname, const Tensor<T>& x, const Tensor<int64_t>& index,
                           const char* iname) {
  MAMCLIP_CHECK(x.device() == index.device(), device_error, op, ": expected all tensors on one device, but ", xname,
                " is on ", x.device().str(), " and ", iname, " is on ", index.device().str());
}

// Sizes of x around `dim`: [outer, size, inner].
inline std::array<int64_t, 3> split_at_dim(const Shape& s, int64_t dim) {
  std::array<int64_t, 3> r{1, s[dim], 1};
  for (int64_t d = 0; d < dim; ++d) r[0] *= s[d];
  for (size_t d = dim + 1; d < s.size(); ++d) r[2] *= s[d];
  return r;
}

// out [outer, n, inner] = rows `idx` of x [outer, size, inner] (not recorded).
template <class T>
void index_rows(const char* op, Tensor<T>& out, const Tensor<T>& x, int64_t dim, const std::vector<int64_t>& idx,
                const Tensor<int64_t>& index) {
  if (out.numel() == 0) return;
  const auto [outer, size, inner] = split_at_dim(x.shape(), dim);
  const auto n = static_cast<int64_t>(idx.size());
  const Tensor<T> xc = indexing_dense(x);
  if (x.device().is_cpu()) {
    cpu::index_select(out.data_ptr(), xc.data_ptr(), idx.data(), outer, size, inner, n);
  } else {
    require_kernel<IndexSelectKernel<T>>(op, dtype_v<T>, x.device())(out.data_ptr(), xc.data_ptr(),
                                                                     indexing_dense(index).data_ptr(), outer, size, inner, n);
  }
}

// A zero tensor of shape `shape` with g [outer, n, inner] added at rows `idx` of `dim`.
template <class T>
Tensor<T> index_add_into_zeros(const char* op, const Shape& shape, int64_t dim, const Tensor<T>& g,
                               const std::vector<int64_t>& idx, const Tensor<int64_t>& index) {
  Tensor<T> gx = zeros<T>(shape, g.device());
  if (g.numel() == 0) return gx;
  const auto [outer, size, inner] = split_at_dim(shape, dim);
  const auto n = static_cast<int64_t>(idx.size());
  const Tensor<T> gc = indexing_dense(g);
  if (g.device().is_cpu()) {
    cpu::index_add(gx.data_ptr(), gc.data_ptr(), idx.data(), outer, size, inner, n);
  } else {
    require_kernel<IndexAddKernel<T>>(op, dtype_v<T>, g.device())(gx.data_ptr(), gc.data_ptr(),
                                                                  indexing_dense(index).data_ptr(), outer, size, inner, n);
  }
  return gx;
}

}  // namespace detail

template <class T>
Tensor<T> index_select(const Tensor<T>& x, int64_t dim, const Tensor<int64_t>& index) {
  MAMCLIP_CHECK(x.dim() >= 1, shape_error, "index_select: x has shape [] (0-dim); expected at least 1 dim");
  dim = wrap_dim(dim, x.dim(), "index_select");
  MAMCLIP_CHECK(index.dim() <= 1, shape_error, "index_select: index has shape ", shape_str(index.shape()),
                "; expected a 1-D tensor of indices");
  detail::indexing_check_device("index_select", "x", x, index, "index");
  std::vector<int64_t> idx = detail::checked_indices(
      "index_select", "index", index.dim() == 0 ? index.reshape({1}) : index, x.size(dim),
      detail::str_cat("dim ", dim, " of x with shape ", shape_str(x.shape())));
  Shape out_shape = x.shape();
  out_shape[dim] = static_cast<int64_t>(idx.size());
  Tensor<T> out = Tensor<T>::empty(out_shape, x.device());
  detail::index_rows("index_select", out, x, dim, idx, index);
  if constexpr (!is_floating_v<T>) {
    return out;
  } else {
    return autograd::record<T>("IndexSelectBackward", {x}, out,
                               [idx = std::move(idx), index, dim, shape = x.shape()](const Tensor<T>& g) {
                                 return std::vector<Tensor<T>>{
                                     detail::index_add_into_zeros("index_add", shape, dim, g, idx, index)};
                               });
  }
}

template <class T>
Tensor<T> gather(const Tensor<T>& x, int64_t dim, const Tensor<int64_t>& index) {
  MAMCLIP_CHECK(x.dim() >= 1, shape_error, "gather: x has shape [] (0-dim); expected at least 1 dim");
  dim = wrap_dim(dim, x.dim(), "gather");
  MAMCLIP_CHECK(index.dim() == x.dim(), shape_error, "gather: index has shape ", shape_str(index.shape()),
                " and x has shape ", shape_str(x.shape()), "; expected the same number of dims");
  for (int64_t d = 0; d < x.dim(); ++d)
    MAMCLIP_CHECK(d == dim || index.size(d) <= x.size(d), shape_error, "gather: index has shape ",
                  shape_str(index.shape()), " and x has shape ", shape_str(x.shape()),
                  "; expected index.size(d) <= x.size(d) for every dim d other than dim ", dim, ", but dim ", d,
                  " has ", index.size(d), " > ", x.size(d));
  detail::indexing_check_device("gather", "x", x, index, "index");
  std::vector<int64_t> idx = detail::checked_indices(
      "gather", "index", index, x.size(dim), detail::str_cat("dim ", dim, " of x with shape ", shape_str(x.shape())));
  Tensor<T> out = Tensor<T>::empty(index.shape(), x.device());
  if (out.numel() > 0) {
    const Tensor<T> xc = detail::indexing_dense(x);
    if (x.device().is_cpu())
      cpu::gather(out.data_ptr(), xc.data_ptr(), idx.data(), x.shape(), index.shape(), dim);
    else
      require_kernel<GatherKernel<T>>("gather", dtype_v<T>, x.device())(
          out.data_ptr(), xc.data_ptr(), detail::indexing_dense(index).data_ptr(), x.shape(), index.shape(), dim);
  }
  if constexpr (!is_floating_v<T>) {
    return out;
  } else {
    return autograd::record<T>(
        "GatherBackward", {x}, out, [idx = std::move(idx), index, dim, shape = x.shape()](const Tensor<T>& g) {
          Tensor<T> gx = zeros<T>(shape, g.device());
          if (g.numel() > 0) {
            const Tensor<T> gc = detail::indexing_dense(g);
            if (g.device().is_cpu())
              cpu::scatter_add(gx.data_ptr(), gc.data_ptr(), idx.data(), shape, g.shape(), dim);
            else
              require_kernel<ScatterAddKernel<T>>("scatter_add", dtype_v<T>, g.device())(
                  gx.data_ptr(), gc.data_ptr(), detail::indexing_dense(index).data_ptr(), shape, g.shape(), dim);
          }
          return std::vector<Tensor<T>>{gx};
        });
  }
}

template <class T>
Tensor<T> embedding(const Tensor<T>& weight, const Tensor<int64_t>& ids, std::optional<int64_t> padding_idx) {
  static_assert(is_floating_v<T>, "embedding: T must be float, double, half or bfloat16");
  MAMCLIP_CHECK(weight.dim() == 2, shape_error, "embedding: weight has shape ", shape_str(weight.shape()),
                "; expected a 2-D tensor [num_embeddings, embedding_dim]");
  const int64_t num = weight.size(0);
  if (padding_idx) {
    MAMCLIP_CHECK(*padding_idx >= -num && *padding_idx < num, index_error, "embedding: padding_idx ", *padding_idx,
                  " is out of range for weight with shape ", shape_str(weight.shape()), " (expected ", -num,
                  " <= padding_idx < ", num, ")");
    if (*padding_idx < 0) *padding_idx += num;  // as in torch.nn.Embedding
  }
  detail::indexing_check_device("embedding", "weight", weight, ids, "ids");
  std::vector<int64_t> idx = detail::checked_indices("embedding", "id", ids, num,
                                                     detail::str_cat("weight with shape ", shape_str(weight.shape())));
  Shape out_shape = ids.shape();
  out_shape.push_back(weight.size(1));
  Tensor<T> out = Tensor<T>::empty(out_shape, weight.device());
  detail::index_rows("embedding", out, weight, 0, idx, ids);
  return autograd::record<T>(
      "EmbeddingBackward", {weight}, out,
      [idx = std::move(idx), ids, padding_idx, shape = weight.shape()](const Tensor<T>& g) {
        Tensor<T> gw = detail::index_add_into_zeros("index_add", shape, 0, g, idx, ids);
        // Only ids equal to padding_idx add to its row, so zeroing the row afterwards is the same as skipping them.
        if (padding_idx) gw.narrow(0, *padding_idx, 1).zero_();
        return std::vector<Tensor<T>>{gw};
      });
}

}  // namespace mamclip
