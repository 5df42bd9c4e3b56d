#pragma once
// Shapes, strides and the rules that combine them (broadcasting, dim wrapping).
// Sizes and strides are in elements; a stride of 0 is a broadcast dimension.

#include <cstdint>
#include <initializer_list>
#include <ostream>
#include <string>
#include <vector>

#include "mamclip/core/error.hpp"

namespace mamclip {

using Shape = std::vector<int64_t>;

inline std::string shape_str(const Shape& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

inline int64_t numel_of(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s) n *= d;
  return n;
}

inline Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i] > 1 ? s[i] : 1;
  }
  return st;
}

// Wraps a possibly negative dim into [0, ndim); `op` names the caller in the message.
inline int64_t wrap_dim(int64_t dim, int64_t ndim, const char* op) {
  const int64_t lo = ndim == 0 ? -1 : -ndim, hi = ndim == 0 ? 0 : ndim - 1;
  MAMCLIP_CHECK(dim >= lo && dim <= hi, index_error, op, ": dim ", dim, " is out of range for a tensor with ",
                ndim, " dims (expected a dim in [", lo, ", ", hi, "])");
  return dim < 0 ? dim + (ndim == 0 ? 1 : ndim) : dim;
}

// NumPy/PyTorch broadcasting: align from the right, sizes must match or be 1.
inline Shape broadcast_shapes(const Shape& a, const Shape& b, const char* op) {
  const size_t n = a.size() > b.size() ? a.size() : b.size();
  Shape out(n);
  for (size_t i = 0; i < n; ++i) {
    const int64_t da = i < n - a.size() ? 1 : a[i - (n - a.size())];
    const int64_t db = i < n - b.size() ? 1 : b[i - (n - b.size())];
    MAMCLIP_CHECK(da == db || da == 1 || db == 1, shape_error, op, ": shapes ", shape_str(a), " and ",
                  shape_str(b), " cannot be broadcast together (dim ", i, ": ", da, " vs ", db, ")");
    out[i] = da == 1 ? db : da;
  }
  return out;
}

// Strides that read a tensor of shape `s` (strides `st`) as if it had shape `target`
// (which `s` broadcasts to): broadcast dims get stride 0.
inline Shape broadcast_strides(const Shape& s, const Shape& st, const Shape& target) {
  Shape out(target.size(), 0);
  const size_t off = target.size() - s.size();
  for (size_t i = 0; i < s.size(); ++i) out[off + i] = (s[i] == 1 && target[off + i] != 1) ? 0 : st[i];
  return out;
}

}  // namespace mamclip
