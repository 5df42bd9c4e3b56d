#pragma once
// How a device kernel of a broadcasting binary op finds its operands. The
// output is contiguous and row-major; each operand is read through its own
// strides over the output's shape (0 along broadcast dims, any layout
// otherwise), so neither operand is expanded into a copy first.
//
// Dims of size 1 are dropped and neighbouring dims that both operands step
// through as one are merged: a bias add [N, C] + [C] has 2 dims, a
// per-channel scale of NCHW ([N, C, H, W] * [C, 1, 1]) 3. Each remaining dim
// costs one FastDivmod per element.

#include <cstdint>
#include <optional>

#include "mamclip/core/config.hpp"
#include "mamclip/core/fast_divmod.hpp"
#include "mamclip/core/shape.hpp"

namespace mamclip {

struct BinaryIndex {
  static constexpr int kMaxDims = 6;
  // Beyond this many output elements a kernel falls back to copies (the
  // index math is 32-bit).
  static constexpr int64_t kMaxElements = int64_t(1) << 31;

  int ndim = 0;                        // merged dims, outermost first
  FastDivmod size[kMaxDims];           // their sizes
  int64_t a[kMaxDims] = {}, b[kMaxDims] = {};  // the operands' strides along them, in elements

  // Offsets into a and b of output element i.
  MAMCLIP_HOST_DEVICE void offsets(uint32_t i, int64_t& oa, int64_t& ob) const {
    oa = 0;
    ob = 0;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
    for (int d = kMaxDims - 1; d >= 1; --d) {
      if (d < ndim) {
        uint32_t q = 0, c = 0;
        size[d].divmod(i, q, c);
        oa += static_cast<int64_t>(c) * a[d];
        ob += static_cast<int64_t>(c) * b[d];
        i = q;
      }
    }
    if (ndim > 0) {  // what is left of i is the outermost coordinate: no division
      oa += static_cast<int64_t>(i) * a[0];
      ob += static_cast<int64_t>(i) * b[0];
    }
  }
};

// The index of out = op(a, b) where a and b, with strides sa and sb, are seen
// with the output's shape `out` (broadcast dims already with stride 0, as
// Tensor::expand gives them). nullopt when the output has kMaxElements or
// more, or more than kMaxDims dims remain after merging.
inline std::optional<BinaryIndex> make_binary_index(const Shape& out, const Shape& sa, const Shape& sb) {
  MAMCLIP_CHECK(sa.size() == out.size() && sb.size() == out.size(), shape_error, "make_binary_index: strides of rank ",
                sa.size(), " and ", sb.size(), " for an output of shape ", shape_str(out));
  if (numel_of(out) >= BinaryIndex::kMaxElements) return std::nullopt;
  BinaryIndex idx;
  if (numel_of(out) == 0) return idx;  // nothing to index
  int64_t size[BinaryIndex::kMaxDims] = {};
  for (size_t d = 0; d < out.size(); ++d) {
    if (out[d] == 1) continue;
    const int k = idx.ndim - 1;
    if (k >= 0 && idx.a[k] == sa[d] * out[d] && idx.b[k] == sb[d] * out[d]) {  // one stride walks both dims
      size[k] *= out[d];
      idx.a[k] = sa[d];
      idx.b[k] = sb[d];
      continue;
    }
    if (idx.ndim == BinaryIndex::kMaxDims) return std::nullopt;
    size[idx.ndim] = out[d];
    idx.a[idx.ndim] = sa[d];
    idx.b[idx.ndim] = sb[d];
    ++idx.ndim;
  }
  for (int d = 0; d < idx.ndim; ++d) idx.size[d] = FastDivmod(static_cast<uint32_t>(size[d]));
  return idx;
}

}  // namespace mamclip
