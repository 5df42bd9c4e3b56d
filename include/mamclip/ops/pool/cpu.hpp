#pragma once
// CPU reference average pooling over [planes, H, W] (planes = N · C), forward
// and backward.
//
// Both avg_pool2d and adaptive_avg_pool2d average over rectangular windows
// whose rows and columns are chosen per output row and per output column, and
// whose divisor is a product of a row factor and a column factor:
//
//   y[p, i, j] = Σ_{h ∈ [r0_i, r1_i), w ∈ [c0_j, c1_j)} x[p, h, w] / (rdiv_i · cdiv_j)
//   dx[p, h, w] = Σ_{i, j : (h, w) in window (i, j)} dy[p, i, j] / (rdiv_i · cdiv_j)
//
// PoolAxis holds one axis's windows (already clipped to the image) and divisor
// factors; pool.hpp builds them with PyTorch's rules.

#include <cstdint>
#include <vector>

#include "mamclip/core/dtype.hpp"

namespace mamclip::cpu {

struct PoolAxis {
  std::vector<int64_t> start, end;  // window [start, end) in the input, per output index
  std::vector<double> divisor;      // this axis's factor of the divisor
  int64_t out() const { return static_cast<int64_t>(start.size()); }
};

// A window with a zero divisor (possible only when every element of it is
// padding and padding is not counted) gives 0, not 0/0.
inline double inverse_or_zero(double d) { return d > 0 ? 1.0 / d : 0.0; }

template <class T>
void avg_pool_forward(const T* x, T* y, int64_t planes, int64_t h, int64_t w, const PoolAxis& rows, const PoolAxis& cols) {
  using A = acc_t<T>;
  const int64_t oh = rows.out(), ow = cols.out();
  std::vector<A> colsum(static_cast<size_t>(w));
  for (int64_t p = 0; p < planes; ++p) {
    const T* xp = x + p * h * w;
    T* yp = y + p * oh * ow;
    for (int64_t i = 0; i < oh; ++i) {
      // Column sums over the window's rows first, so each element is read once per output row.
      std::fill(colsum.begin(), colsum.end(), A(0));
      for (int64_t r = rows.start[i]; r < rows.end[i]; ++r)
        for (int64_t c = 0; c < w; ++c) colsum[c] += static_cast<A>(xp[r * w + c]);
      for (int64_t j = 0; j < ow; ++j) {
        A s = 0;
        for (int64_t c = cols.start[j]; c < cols.end[j]; ++c) s += colsum[c];
        yp[i * ow + j] = static_cast<T>(s * static_cast<A>(inverse_or_zero(rows.divisor[i] * cols.divisor[j])));
      }
    }
  }
}

template <class T>
void avg_pool_backward(const T* gy, T* dx, int64_t planes, int64_t h, int64_t w, const PoolAxis& rows, const PoolAxis& cols) {
  using A = acc_t<T>;
  const int64_t oh = rows.out(), ow = cols.out();
  std::vector<A> acc(static_cast<size_t>(h * w)), spread(static_cast<size_t>(w));
  for (int64_t p = 0; p < planes; ++p) {
    const T* gp = gy + p * oh * ow;
    std::fill(acc.begin(), acc.end(), A(0));
    for (int64_t i = 0; i < oh; ++i) {
      // The row's gradients spread over columns once, then added to each row of the window.
      std::fill(spread.begin(), spread.end(), A(0));
      for (int64_t j = 0; j < ow; ++j) {
        const A v = static_cast<A>(gp[i * ow + j]) * static_cast<A>(inverse_or_zero(rows.divisor[i] * cols.divisor[j]));
        for (int64_t c = cols.start[j]; c < cols.end[j]; ++c) spread[c] += v;
      }
      for (int64_t r = rows.start[i]; r < rows.end[i]; ++r)
        for (int64_t c = 0; c < w; ++c) acc[r * w + c] += spread[c];
    }
    T* dp = dx + p * h * w;
    for (int64_t k = 0; k < h * w; ++k) dp[k] = static_cast<T>(acc[k]);
  }
}

}  // namespace mamclip::cpu
