#pragma once
// The per-thread work of the channels-last (NHWC) depthwise convolution
// kernels (ops/conv/cuda.cuh), as host/device functions so that the CPU tests
// run them over every thread of a launch and compare with cpu::conv2d.
//
// Depthwise, square odd kernel K, stride 1, "same" padding P = K / 2:
//   y[n, i, j, c] = b[c] + Σ_{a,b < K} w[c, a, b] · x[n, i + a − P, j + b − P, c]   (x = 0 outside)
// with x, y stored [N, H, W, C] (C fastest), so that a thread reads V
// neighbouring channels with one vector load (16 bytes: V = 8 for 16-bit
// types, 4 for float; V = 1 when C is not a multiple of V or the base is
// misaligned). The weights are transposed once per call to float, in
// weight_index's order: for one tap, lanes v of neighbouring channel groups
// sit next to each other in runs of 4 (one 16-byte load per thread per run),
// so that the threads of a warp, which own neighbouring groups, read one
// contiguous span. In plain [K·K, C] order with V = 8 a warp's weight load
// would touch twice the cache lines it uses; the K·K·V weight loads per strip
// outnumber its input loads (K · (R + K − 1) vectors), so their cost decides.
//
// A forward thread owns V channels of R consecutive outputs of one image row;
// it walks the K input rows, each read once as R + K − 1 vectors, and keeps
// R·V accumulators and the row's K·V weights in registers. Neighbouring
// threads own neighbouring channel groups, so a warp's loads are contiguous.
// The input gradient is the same strip on dy with the taps reversed.
//
// A weight-gradient thread owns V channels, one kernel row a and a chunk of
// image rows; for every strip of R outputs it multiplies dy by the R + K − 1
// input vectors of row i + a − P, accumulating K·V sums. Its partial sums go
// to partial[chunk, a·K + b, c]; a second kernel adds the chunks in order (no
// atomics: reproducible). The threads of the centre row a = P, which see every
// dy row, also sum dy for the bias gradient.
//
// Io supplies  template <int V> load(const T* p, float* out)  and
//              template <int V> store(T* p, const float* in)  (p holds V elements).

#include <cstdint>

#include "mamclip/core/config.hpp"

namespace mamclip::depthwise_nhwc {

struct Shape {
  int64_t n = 0, h = 0, w = 0, c = 0;
};

// Where tap t (= a·K + b) of channel c sits in the transposed weights wt (K·K·C floats) for
// threads of v_width channels: [K·K, v_width / q, C / v_width, q] with q = 4 when v_width is a
// multiple of 4, else v_width (v_width = 1: plain [K·K, C]; v_width = 4: also [K·K, C]).
MAMCLIP_HOST_DEVICE int64_t weight_index(int64_t tap, int64_t c, int64_t channels, int v_width) {
  const int q = v_width % 4 == 0 ? 4 : v_width, v = static_cast<int>(c % v_width);
  return ((tap * (v_width / q) + v / q) * (channels / v_width) + c / v_width) * q + v % q;
}

// wv[0 .. V) = the weights of tap t for channels c0 .. c0 + V − 1 (c0 a multiple of V) from
// wt in weight_index's order. On the device, runs of 4 are one 16-byte load (wt is
// 16-byte aligned and every run starts at a multiple of 4 floats).
template <int V>
MAMCLIP_HOST_DEVICE void load_tap_weights(const float* wt, int tap, int64_t c0, int64_t channels, float* wv) {
  if constexpr (V % 4 == 0) {
    // 32-bit offsets (wt holds K·K·C floats): 64-bit ones cost registers the 16-bit K = 7 strips spill for.
    const int groups = static_cast<int>(channels / V);
    const float* base = wt + (c0 / V) * 4;
MAMCLIP_HD_UNROLL
    for (int j = 0; j < V / 4; ++j) {
      const float* p = base + (tap * (V / 4) + j) * groups * 4;
#ifdef __CUDA_ARCH__
      const float4 w4 = *reinterpret_cast<const float4*>(p);
      wv[4 * j] = w4.x;
      wv[4 * j + 1] = w4.y;
      wv[4 * j + 2] = w4.z;
      wv[4 * j + 3] = w4.w;
#else
      for (int k = 0; k < 4; ++k) wv[4 * j + k] = p[k];
#endif
    }
  } else {
MAMCLIP_HD_UNROLL
    for (int v = 0; v < V; ++v) wv[v] = wt[weight_index(tap, c0 + v, channels, V)];
  }
}

// Output strips of R columns per image row.
template <int R>
MAMCLIP_HOST_DEVICE int64_t strips(int64_t w) {
  return (w + R - 1) / R;
}

// The R + K − 1 input columns that output columns j0 .. j0 + R − 1 read from
// one input row (from its channel c0 on), each loaded once: f(r, b, x) for
// every output r and tap b, where x holds the V channels of column j0 + r + b − P.
template <int K, int V, int R, class Io, class T, class F>
MAMCLIP_HOST_DEVICE void row_taps(const T* xrow, int64_t j0, const Shape& s, F&& f) {
  constexpr int P = K / 2;
MAMCLIP_HD_UNROLL
  for (int q = 0; q < R + K - 1; ++q) {
    const int64_t jj = j0 - P + q;
    if (jj < 0 || jj >= s.w) continue;
    float xv[V];
    Io::template load<V>(xrow + jj * s.c, xv);
MAMCLIP_HD_UNROLL
    for (int b = 0; b < K; ++b) {
      const int r = q - b;
      if (r >= 0 && r < R) f(r, b, xv);
    }
  }
}

// y (or dx, with kFlip) for V channels from c0, R columns from j0, image row `row` = n·H + i.
template <int K, int V, int R, bool kFlip, class Io, class T>
MAMCLIP_HOST_DEVICE void forward_strip(const T* x, const float* wt, const T* bias, T* y, const Shape& s, int64_t row,
                                       int64_t j0, int64_t c0) {
  constexpr int P = K / 2;
  const int64_t i = row % s.h, image = row / s.h;
  float acc[R][V];
  float b0[V];
  if (bias) {
    Io::template load<V>(bias + c0, b0);
  } else {
MAMCLIP_HD_UNROLL
    for (int v = 0; v < V; ++v) b0[v] = 0.0f;
  }
MAMCLIP_HD_UNROLL
  for (int r = 0; r < R; ++r)
MAMCLIP_HD_UNROLL
    for (int v = 0; v < V; ++v) acc[r][v] = b0[v];
MAMCLIP_HD_UNROLL
  for (int a = 0; a < K; ++a) {
    const int64_t ii = i + a - P;
    if (ii < 0 || ii >= s.h) continue;
    float wv[K][V];
MAMCLIP_HD_UNROLL
    for (int b = 0; b < K; ++b) {
      const int tap = kFlip ? (K - 1 - a) * K + (K - 1 - b) : a * K + b;
      load_tap_weights<V>(wt, tap, c0, s.c, wv[b]);
    }
    row_taps<K, V, R, Io>(x + ((image * s.h + ii) * s.w) * s.c + c0, j0, s, [&](int r, int b, const float* xv) {
MAMCLIP_HD_UNROLL
      for (int v = 0; v < V; ++v) acc[r][v] += wv[b][v] * xv[v];
    });
  }
MAMCLIP_HD_UNROLL
  for (int r = 0; r < R; ++r)
    if (j0 + r < s.w) Io::template store<V>(y + (row * s.w + j0 + r) * s.c + c0, acc[r]);
}

// Partial weight (and, on a = P, bias) gradients of V channels from c0 for
// kernel row a over image rows [row_begin, row_end):
//   partial[(chunk · K·K + a·K + b) · C + c] = Σ dy[n, i, j, c] · x[n, i + a − P, j + b − P, c]
//   bias_partial[chunk · C + c]            = Σ dy[n, i, j, c]          (a = P, when bias_partial)
// kWeights = false: only the bias sums (x may be null).
template <int K, int V, int R, bool kWeights, class Io, class T>
MAMCLIP_HOST_DEVICE void weight_grad_strip(const T* x, const T* dy, float* partial, float* bias_partial,
                                           const Shape& s, int a, int64_t row_begin, int64_t row_end, int64_t chunk,
                                           int64_t c0) {
  constexpr int P = K / 2;
  float acc[K][V];
  float bsum[V];
MAMCLIP_HD_UNROLL
  for (int v = 0; v < V; ++v) {
    bsum[v] = 0.0f;
MAMCLIP_HD_UNROLL
    for (int b = 0; b < K; ++b) acc[b][v] = 0.0f;
  }
  const bool want_bias = bias_partial != nullptr && a == P;
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t i = row % s.h, image = row / s.h, ii = i + a - P;
    const bool x_row = kWeights && ii >= 0 && ii < s.h;
    if (!x_row && !want_bias) continue;
    const T* dyrow = dy + row * s.w * s.c + c0;
    const T* xrow = x_row ? x + ((image * s.h + ii) * s.w) * s.c + c0 : nullptr;
    for (int64_t j0 = 0; j0 < s.w; j0 += R) {
      float g[R][V];
MAMCLIP_HD_UNROLL
      for (int r = 0; r < R; ++r) {
        if (j0 + r < s.w) {
          Io::template load<V>(dyrow + (j0 + r) * s.c, g[r]);
        } else {
MAMCLIP_HD_UNROLL
          for (int v = 0; v < V; ++v) g[r][v] = 0.0f;
        }
        if (want_bias) {
MAMCLIP_HD_UNROLL
          for (int v = 0; v < V; ++v) bsum[v] += g[r][v];
        }
      }
      if constexpr (kWeights) {
        if (!x_row) continue;
        row_taps<K, V, R, Io>(xrow, j0, s, [&](int r, int b, const float* xv) {
MAMCLIP_HD_UNROLL
          for (int v = 0; v < V; ++v) acc[b][v] += g[r][v] * xv[v];
        });
      }
    }
  }
  if constexpr (kWeights) {
MAMCLIP_HD_UNROLL
    for (int b = 0; b < K; ++b)
MAMCLIP_HD_UNROLL
      for (int v = 0; v < V; ++v) partial[(chunk * K * K + a * K + b) * s.c + c0 + v] = acc[b][v];
  }
  if (want_bias) {
MAMCLIP_HD_UNROLL
    for (int v = 0; v < V; ++v) bias_partial[chunk * s.c + c0 + v] = bsum[v];
  }
}

// out[c · taps + t] = Σ_{chunk < chunks} partial[(chunk · taps + t) · C + c], in chunk order.
template <class Io, class T>
MAMCLIP_HOST_DEVICE void finish_sum(const float* partial, T* out, int64_t chunks, int64_t taps, int64_t channels,
                                    int64_t c, int64_t t) {
  float s = 0.0f;
  for (int64_t k = 0; k < chunks; ++k) s += partial[(k * taps + t) * channels + c];
  Io::template store<1>(out + c * taps + t, &s);
}

}  // namespace mamclip::depthwise_nhwc
