#pragma once
// CPU reference layer norm and p-norm normalisation.
//
// layer_norm works on rows [rows, n] of a contiguous input (n = the product of
// normalized_shape). Per row, in acc_t<T>:
//   mean = sum(x) / n,  var = sum((x - mean)^2) / n  (biased, as PyTorch),
//   rstd = 1 / sqrt(var + eps),  xhat = (x - mean) * rstd,  y = xhat * w + b.
// Backward, with dxhat = g * w:
//   dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)),
//   dw = sum over rows of g * xhat,  db = sum over rows of g.
//
// layer_norm2d is the same over dim 1 of [N, C, H, W] (timm's LayerNorm2d).
//
// normalize works on lanes along a dim (ops/reduce/cpu.hpp):
//   y = x / d,  d = max(||x||_p, eps).

#include <algorithm>
#include <cmath>
#include <vector>

#include "mamclip/ops/reduce/cpu.hpp"

namespace mamclip::cpu {

// w and b may be null (no affine weight / bias); mean and rstd receive one value per row.
// Rows are split over threads; each is computed by one thread in one order.
template <class T>
void layer_norm(const T* x, const T* w, const T* b, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t rows, int64_t n,
                double eps) {
  using A = acc_t<T>;
  detail::parallel_for(
      rows,
      [&](int64_t r_begin, int64_t r_end) {
        for (int64_t r = r_begin; r < r_end; ++r) {
          const T* xr = x + r * n;
          T* yr = y + r * n;
          const A m = row_mean(xr, n);
          A ss = 0;
          for (int64_t j = 0; j < n; ++j) {
            const A d = static_cast<A>(xr[j]) - m;
            ss += d * d;
          }
          const A rs = A(1) / std::sqrt(ss / static_cast<A>(n) + static_cast<A>(eps));
          for (int64_t j = 0; j < n; ++j) {
            A v = (static_cast<A>(xr[j]) - m) * rs;
            if (w) v *= static_cast<A>(w[j]);
            if (b) v += static_cast<A>(b[j]);
            yr[j] = static_cast<T>(v);
          }
          mean[r] = m;
          rstd[r] = rs;
        }
      },
      std::max<int64_t>(2, detail::kParallelGrain / std::max<int64_t>(1, n)));
}

// dx, dw and db may each be null (not wanted); w may be null (no weight).
// dx is split over threads by rows, dw and db by columns (each still sums its
// rows in order), so results do not depend on the thread count.
template <class T>
void layer_norm_backward(const T* g, const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd, int64_t rows,
                         int64_t n, T* dx, T* dw, T* db) {
  using A = acc_t<T>;
  const int64_t grain = std::max<int64_t>(2, detail::kParallelGrain / std::max<int64_t>(1, rows));
  if (dw || db)
    detail::parallel_for(
        n,
        [&](int64_t j_begin, int64_t j_end) {
          std::vector<A> dw_acc(j_end - j_begin, A(0)), db_acc(j_end - j_begin, A(0));
          for (int64_t r = 0; r < rows; ++r) {
            const T* gr = g + r * n;
            const T* xr = x + r * n;
            const A m = mean[r], rs = rstd[r];
            for (int64_t j = j_begin; j < j_end; ++j) {
              if (dw) dw_acc[j - j_begin] += static_cast<A>(gr[j]) * ((static_cast<A>(xr[j]) - m) * rs);
              if (db) db_acc[j - j_begin] += static_cast<A>(gr[j]);
            }
          }
          for (int64_t j = j_begin; j < j_end; ++j) {
            if (dw) dw[j] = static_cast<T>(dw_acc[j - j_begin]);
            if (db) db[j] = static_cast<T>(db_acc[j - j_begin]);
          }
        },
        grain);
  if (!dx) return;
  detail::parallel_for(
      rows,
      [&](int64_t r_begin, int64_t r_end) {
        for (int64_t r = r_begin; r < r_end; ++r) {
          const T* gr = g + r * n;
          const T* xr = x + r * n;
          auto xhat = [&](int64_t j) { return (static_cast<A>(xr[j]) - mean[r]) * rstd[r]; };
          auto dxhat = [&](int64_t j) {
            return w ? static_cast<A>(gr[j]) * static_cast<A>(w[j]) : static_cast<A>(gr[j]);
          };
          A sum_dxhat = 0, sum_dxhat_xhat = 0;
          for (int64_t j = 0; j < n; ++j) {
            sum_dxhat += dxhat(j);
            sum_dxhat_xhat += dxhat(j) * xhat(j);
          }
          const A mean_dxhat = sum_dxhat / static_cast<A>(n), mean_dxhat_xhat = sum_dxhat_xhat / static_cast<A>(n);
          for (int64_t j = 0; j < n; ++j)
            dx[r * n + j] = static_cast<T>(rstd[r] * (dxhat(j) - mean_dxhat - xhat(j) * mean_dxhat_xhat));
        }
      },
      std::max<int64_t>(2, detail::kParallelGrain / std::max<int64_t>(1, n)));
}

// layer_norm2d: x [batch, c, hw] normalised over c for every (sample, position),
// the formulas above with rows = positions, read with stride hw. Loops run over
// positions innermost (contiguous, vectorisable), in tiles of kLayerNorm2dTile
// positions that OpenMP may spread over threads; each output is computed by one
// thread in a fixed order. mean and rstd receive [batch, hw] values.
inline constexpr int64_t kLayerNorm2dTile = 512;

template <class F>
void for_each_position_tile(int64_t batch, int64_t hw, F&& f) {
  const int64_t tiles = (hw + kLayerNorm2dTile - 1) / kLayerNorm2dTile, count = batch * tiles;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (count > 1)
#endif
  for (int64_t t = 0; t < count; ++t) {
    const int64_t k0 = (t % tiles) * kLayerNorm2dTile;
    f(t / tiles, k0, std::min(hw, k0 + kLayerNorm2dTile));
  }
}

template <class T>
void layer_norm2d(const T* x, const T* w, const T* b, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t batch, int64_t c,
                  int64_t hw, double eps) {
  using A = acc_t<T>;
  for_each_position_tile(batch, hw, [&](int64_t n, int64_t k0, int64_t k1) {
    const T* xn = x + n * c * hw;
    T* yn = y + n * c * hw;
    A* m = mean + n * hw;
    A* r = rstd + n * hw;
    std::fill(m + k0, m + k1, A(0));
    std::fill(r + k0, r + k1, A(0));
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t k = k0; k < k1; ++k) m[k] += static_cast<A>(xn[ch * hw + k]);
    for (int64_t k = k0; k < k1; ++k) m[k] /= static_cast<A>(c);
    for (int64_t ch = 0; ch < c; ++ch)
      for (int64_t k = k0; k < k1; ++k) {
        const A d = static_cast<A>(xn[ch * hw + k]) - m[k];
        r[k] += d * d;
      }
    for (int64_t k = k0; k < k1; ++k) r[k] = A(1) / std::sqrt(r[k] / static_cast<A>(c) + static_cast<A>(eps));
    for (int64_t ch = 0; ch < c; ++ch) {
      const A wv = w ? static_cast<A>(w[ch]) : A(1), bv = b ? static_cast<A>(b[ch]) : A(0);
      for (int64_t k = k0; k < k1; ++k)
        yn[ch * hw + k] = static_cast<T>((static_cast<A>(xn[ch * hw + k]) - m[k]) * r[k] * wv + bv);
    }
  });
}

// dx, dw and db may each be null (not wanted); w may be null (no weight).
template <class T>
void layer_norm2d_backward(const T* g, const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd,
                           int64_t batch, int64_t c, int64_t hw, T* dx, T* dw, T* db) {
  using A = acc_t<T>;
  if (dx)
    for_each_position_tile(batch, hw, [&](int64_t n, int64_t k0, int64_t k1) {
      const T* gn = g + n * c * hw;
      const T* xn = x + n * c * hw;
      const A* m = mean + n * hw;
      const A* r = rstd + n * hw;
      // Per position: sums over channels of dxhat and dxhat · xhat.
      A sum_d[kLayerNorm2dTile] = {}, sum_dx[kLayerNorm2dTile] = {};
      for (int64_t ch = 0; ch < c; ++ch) {
        const A wv = w ? static_cast<A>(w[ch]) : A(1);
        for (int64_t k = k0; k < k1; ++k) {
          const A d = static_cast<A>(gn[ch * hw + k]) * wv;
          sum_d[k - k0] += d;
          sum_dx[k - k0] += d * (static_cast<A>(xn[ch * hw + k]) - m[k]) * r[k];
        }
      }
      const A inv_c = A(1) / static_cast<A>(c);
      for (int64_t ch = 0; ch < c; ++ch) {
        const A wv = w ? static_cast<A>(w[ch]) : A(1);
        for (int64_t k = k0; k < k1; ++k) {
          const A xhat = (static_cast<A>(xn[ch * hw + k]) - m[k]) * r[k];
          const A d = static_cast<A>(gn[ch * hw + k]) * wv;
          dx[n * c * hw + ch * hw + k] = static_cast<T>(r[k] * (d - sum_d[k - k0] * inv_c - xhat * sum_dx[k - k0] * inv_c));
        }
      }
    });
  if (!dw && !db) return;
#ifdef _OPENMP
#pragma omp parallel for schedule(static) if (c > 1)
#endif
  for (int64_t ch = 0; ch < c; ++ch) {
    A sw = 0, sb = 0;
    for (int64_t n = 0; n < batch; ++n) {
      const T* gr = g + (n * c + ch) * hw;
      const T* xr = x + (n * c + ch) * hw;
      const A* m = mean + n * hw;
      const A* r = rstd + n * hw;
      for (int64_t k = 0; k < hw; ++k) {
        const A gv = static_cast<A>(gr[k]);
        sw += gv * (static_cast<A>(xr[k]) - m[k]) * r[k];
        sb += gv;
      }
    }
    if (dw) dw[ch] = static_cast<T>(sw);
    if (db) db[ch] = static_cast<T>(sb);
  }
}

// ||x||_p of one lane (p > 0, finite); p = 1 and p = 2 avoid pow.
template <class T, class Stride>
acc_t<T> pnorm_lane(const T* x, int64_t n, Stride stride, double p) {
  using A = acc_t<T>;
  A s = 0;
  if (p == 2) {
    for (int64_t k = 0; k < n; ++k) s += static_cast<A>(x[k * stride]) * static_cast<A>(x[k * stride]);
    return std::sqrt(s);
  }
  if (p == 1) {
    for (int64_t k = 0; k < n; ++k) s += std::abs(static_cast<A>(x[k * stride]));
    return s;
  }
  for (int64_t k = 0; k < n; ++k) s += std::pow(std::abs(static_cast<A>(x[k * stride])), static_cast<A>(p));
  return std::pow(s, static_cast<A>(1.0 / p));
}

// norms receives ||x||_p per lane (for the backward).
template <class T>
void normalize(const T* x, T* y, acc_t<T>* norms, const Lanes& l, double p, double eps) {
  using A = acc_t<T>;
  for_each_lane(l, [&](int64_t lane, int64_t off, auto stride) {
    const A norm = pnorm_lane(x + off, l.size, stride, p);
    const A inv = A(1) / std::max(norm, static_cast<A>(eps));
    for (int64_t k = 0; k < l.size; ++k) y[off + k * stride] = static_cast<T>(static_cast<A>(x[off + k * stride]) * inv);
    norms[lane] = norm;
  });
}

// With d = max(norm, eps) and dot = sum(g * x):
//   dx_j = g_j / d - [norm >= eps] * dot / d^2 * d norm / dx_j,
//   d norm / dx_j = sign(x_j) |x_j|^(p-1) / norm^(p-1)   (x_j / norm for p = 2).
// The clamp passes the gradient where norm >= eps (PyTorch's clamp_min); the
// norm's own gradient is taken as 0 where x_j = 0 or norm = 0 (a subgradient;
// |x_j|^(p-1) is infinite there for p < 1).
template <class T>
void normalize_backward(const T* g, const T* x, const acc_t<T>* norms, T* dx, const Lanes& l, double p, double eps) {
  using A = acc_t<T>;
  for_each_lane(l, [&](int64_t lane, int64_t off, auto stride) {
    const A norm = norms[lane], e = static_cast<A>(eps);
    const A d = std::max(norm, e);
    A dot = 0;
    for (int64_t k = 0; k < l.size; ++k) dot += static_cast<A>(g[off + k * stride]) * static_cast<A>(x[off + k * stride]);
    const bool through_norm = norm >= e && norm > 0;
    const A c = through_norm ? dot / (d * d) / (p == 2 ? norm : std::pow(norm, static_cast<A>(p - 1))) : A(0);
    for (int64_t k = 0; k < l.size; ++k) {
      const A xk = static_cast<A>(x[off + k * stride]);
      A dn = 0;  // norm^(p-1) * d norm / dx_k
      if (p == 2) dn = xk;
      else if (xk != 0) dn = (xk > 0 ? A(1) : A(-1)) * std::pow(std::abs(xk), static_cast<A>(p - 1));
      dx[off + k * stride] = static_cast<T>(static_cast<A>(g[off + k * stride]) / d - c * dn);
    }
  });
}

}  // namespace mamclip::cpu
