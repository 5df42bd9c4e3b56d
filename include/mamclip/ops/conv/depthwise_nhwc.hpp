#pragma once
// The per-thread work of the channels-last (NHWC) depthwise convolution
// kernels (ops/conv/cuda.cuh), as host/device functions so that the CPU tests
// run them over every thread of a launch and compare with cpu::conv2d.
//
// Depthwise, square odd kernel K, stride 1, "same" padding P = K / 2:
//   y[n, i, j, c] = b[c] + Σ_{a,b < K} w[c, a, b] · x[n, i + a − P, j + b − P, c]   (x = 0 outside)
// with x, y stored [N, H, W, C] (C fastest) and the weights transposed once
// per call to wt[a·K + b, c] in float.
//
// A forward thread owns V channels (2 for 16-bit types when C is even and
// the pointers 4-byte aligned, else 1) of R = 8 consecutive outputs along W,
// and walks down a run of output rows of one image. It loads its K·K·V
// weights into registers once; per output row it reads the K input rows as
// R + K − 1 vectors each and keeps R·V accumulators. Why this shape: a 7x7
// depthwise conv is 49 FMAs per output, more than the SM's FP32 units can do
// in the time HBM moves a 16-bit input and output (about 98 FLOP per 4 bytes
// against 67 TFLOP/s of FP32 FMA and the 4.3 TB/s an H200 copies at), so the
// FMAs must dominate what the SM issues and L1 must keep up. Row strips of 8
// channels per thread that reloaded their weights every kernel row spent
// 0.4-3 L1 wavefronts per output on weights alone, against 0.38 FMA cycles;
// here a warp issues K · (R + K − 1) loads of 32 · V neighbouring channels
// (128 bytes at V = 2; two pieces when C is not a multiple of 64) per
// 32 · R · V outputs, about 0.19 wavefronts per output. Instructions (sm_90
// SASS of the bf16 7x7 row loop on interior strips): 1416 per row, 784 of
// them FFMA; the rest are the loads, their addresses and the bf16 unpacking.
// The edge strips take a copy of the loop with per-column bounds checks.
// Neighbouring threads own neighbouring channel groups, so a warp's loads
// are contiguous. The input gradient is the same walk on dy with the taps
// reversed.
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
//
// How a launch divides the work is here too (forward_plan / forward_work,
// weight_grad_plan / weight_grad_work): the launchers size their grids with
// the plans, the kernels map a thread to its work with the *_work functions,
// and the CPU tests run the same two.

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "mamclip/core/config.hpp"

namespace mamclip::depthwise_nhwc {

struct Shape {
  int64_t n = 0, h = 0, w = 0, c = 0;
};

// Output strips of R columns per image row.
template <int R>
MAMCLIP_HOST_DEVICE int64_t strips(int64_t w) {
  return (w + R - 1) / R;
}

// Threads a launch aims for: about 2.6 waves of 12 warps per SM on 132 SMs.
inline constexpr int64_t kLaunchThreads = int64_t(1) << 17;

// The forward (and input-gradient) launch: thread t < total owns channel group
// t % groups, then strip, then run of rows_per_thread output rows (the image's
// last run shorter), then image.
struct ForwardPlan {
  int64_t groups = 0, strips = 0, runs = 0, rows_per_thread = 0, total = 0;
};

// Runs long enough to amortise a thread's K·K·V weight loads, short enough to
// leave about `threads` threads, evened out over H. V divides C.
template <int V, int R>
inline ForwardPlan forward_plan(const Shape& s, int64_t threads = kLaunchThreads) {
  ForwardPlan p;
  p.groups = s.c / V;
  p.strips = strips<R>(s.w);
  const int64_t per_row = p.groups * p.strips;
  const int64_t longest = std::clamp<int64_t>(s.n * s.h * per_row / std::max<int64_t>(1, threads), 1,
                                              std::max<int64_t>(1, s.h));
  p.runs = std::max<int64_t>(1, (s.h + longest - 1) / longest);
  p.rows_per_thread = (s.h + p.runs - 1) / p.runs;
  p.total = per_row * p.runs * s.n;
  return p;
}

// What forward_column is called with for thread t of a ForwardPlan.
struct ColumnWork {
  int64_t image, i_begin, i_end, j0, c0;
};
template <int V, int R>
MAMCLIP_HOST_DEVICE ColumnWork forward_work(const ForwardPlan& p, const Shape& s, int64_t t) {
  const int64_t cg = t % p.groups, strip = (t / p.groups) % p.strips, rest = t / p.groups / p.strips;
  const int64_t run = rest % p.runs, image = rest / p.runs;
  const int64_t i_begin = run * p.rows_per_thread;
  const int64_t i_end = i_begin + p.rows_per_thread < s.h ? i_begin + p.rows_per_thread : s.h;
  return {image, i_begin, i_end, strip * R, cg * V};
}

// The weight-gradient launch: thread t < total owns channel group t % groups,
// then kernel row (K of them with weights, only the centre row for the bias
// alone), then chunk of rows_per_chunk image rows (of N·H; the last shorter).
struct WeightGradPlan {
  int64_t groups = 0, kernel_rows = 0, rows_per_chunk = 0, chunks = 0, total = 0;
};

// Enough threads to fill a GPU (about `threads`), few enough chunks that the
// partial sums (chunks x K·K x C floats) stay small next to x (at most
// `partial_floats`). V divides C.
template <int V>
inline WeightGradPlan weight_grad_plan(const Shape& s, int64_t kernel_size, bool weights,
                                       int64_t threads = kLaunchThreads, int64_t partial_floats = int64_t(1) << 22) {
  WeightGradPlan p;
  p.groups = s.c / V;
  p.kernel_rows = weights ? kernel_size : 1;
  const int64_t rows = s.n * s.h, taps = kernel_size * kernel_size;
  const int64_t wanted = std::max<int64_t>(1, threads / std::max<int64_t>(1, p.groups * p.kernel_rows));
  const int64_t cap = std::max<int64_t>(1, partial_floats / std::max<int64_t>(1, taps * s.c));
  const int64_t target = std::max<int64_t>(1, std::min({wanted, cap, rows}));
  p.rows_per_chunk = std::max<int64_t>(1, (rows + target - 1) / target);
  p.chunks = (rows + p.rows_per_chunk - 1) / p.rows_per_chunk;
  p.total = p.groups * p.kernel_rows * p.chunks;
  return p;
}

// What weight_grad_strip is called with for thread t of a WeightGradPlan
// (kWeights: the plan's kernel_rows is K, else 1).
struct StripWork {
  int a;
  int64_t row_begin, row_end, chunk, c0;
};
template <int K, int V, bool kWeights>
MAMCLIP_HOST_DEVICE StripWork weight_grad_work(const WeightGradPlan& p, const Shape& s, int64_t t) {
  constexpr int kRows = kWeights ? K : 1;  // a constant divisor
  const int64_t rows = s.n * s.h;
  const int64_t cg = t % p.groups, rest = t / p.groups, chunk = rest / kRows;
  const int a = kWeights ? static_cast<int>(rest % kRows) : K / 2;
  const int64_t begin = chunk * p.rows_per_chunk;
  const int64_t end = begin + p.rows_per_chunk < rows ? begin + p.rows_per_chunk : rows;
  return {a, begin, end, chunk, cg * V};
}

// The R + K − 1 input columns that output columns j0 .. j0 + R − 1 read from
// one input row (from its channel c0 on), each loaded once: f(r, b, x) for
// every output r and tap b, where x holds the V channels of column j0 + r + b − P.
// Column offsets are 32-bit (the caller guarantees W·C < 2^30).
template <int K, int V, int R, class Io, class T, class F>
MAMCLIP_HOST_DEVICE void row_taps(const T* xrow, int j0, int width, int channels, F&& f) {
  constexpr int P = K / 2;
MAMCLIP_HD_UNROLL
  for (int q = 0; q < R + K - 1; ++q) {
    const int jj = j0 - P + q;
    if (jj < 0 || jj >= width) continue;
    float xv[V];
    Io::template load<V>(xrow + jj * channels, xv);
MAMCLIP_HD_UNROLL
    for (int b = 0; b < K; ++b) {
      const int r = q - b;
      if (r >= 0 && r < R) f(r, b, xv);
    }
  }
}

// y (or dx, with kFlip) for V channels from c0 and R columns from j0, output rows
// [i_begin, i_end) of image `image`. Offsets inside one image are 32-bit: the caller
// guarantees H·W·C < 2^30 (64-bit index math per load was most of the kernel's
// instructions: 877 IMAD and 427 IADD3 against 392 FFMA in the 7x7 SASS).
template <int K, int V, int R, bool kFlip, class Io, class T>
MAMCLIP_HOST_DEVICE void forward_column(const T* x, const float* wt, const T* bias, T* y, const Shape& s,
                                        int64_t image, int64_t i_begin, int64_t i_end, int64_t j0, int64_t c0) {
  constexpr int P = K / 2, Q = R + K - 1;
  // wv[a·K + b]: the tap that multiplies input row i + a − P, column j + b − P.
  float wv[K * K][V];
MAMCLIP_HD_UNROLL
  for (int t = 0; t < K * K; ++t) {
    const int tap = kFlip ? K * K - 1 - t : t;
MAMCLIP_HD_UNROLL
    for (int v = 0; v < V; ++v) wv[t][v] = wt[tap * s.c + c0 + v];
  }
  float b0[V];
  if (bias) {
    Io::template load<V>(bias + c0, b0);
  } else {
MAMCLIP_HD_UNROLL
    for (int v = 0; v < V; ++v) b0[v] = 0.0f;
  }
  const int channels = static_cast<int>(s.c), row_stride = static_cast<int>(s.w * s.c);
  // Offsets of the Q input columns this strip reads; -1 outside the image (read as 0).
  int col[Q];
MAMCLIP_HD_UNROLL
  for (int q = 0; q < Q; ++q) {
    const int64_t jj = j0 - P + q;
    col[q] = jj >= 0 && jj < s.w ? static_cast<int>(jj) * channels : -1;
  }
  const T* ximage = x + image * s.h * s.w * s.c + c0;
  T* yimage = y + image * s.h * s.w * s.c + c0;
  // Strips away from the left and right edges (all but two per row at ConvNeXt's widths)
  // read every column: their walk has no per-load check.
  const auto walk = [&](auto checked) {
    constexpr bool kChecked = decltype(checked)::value;
    for (int i = static_cast<int>(i_begin); i < static_cast<int>(i_end); ++i) {
      float acc[R][V];
MAMCLIP_HD_UNROLL
      for (int r = 0; r < R; ++r)
MAMCLIP_HD_UNROLL
        for (int v = 0; v < V; ++v) acc[r][v] = b0[v];
MAMCLIP_HD_UNROLL
      for (int a = 0; a < K; ++a) {
        const int ii = i + a - P;
        if (ii < 0 || ii >= s.h) continue;
        const T* xrow = ximage + ii * row_stride;
        // Interior strips address column q from the strip's first column (one multiply-add per
        // load); edge strips, whose first column may lie outside the image, use col[].
        const T* xstrip = kChecked ? xrow : xrow + (static_cast<int>(j0) - P) * channels;
MAMCLIP_HD_UNROLL
        for (int q = 0; q < Q; ++q) {
          float xv[V];
          if (!kChecked) {
            Io::template load<V>(xstrip + q * channels, xv);
          } else if (col[q] >= 0) {
            Io::template load<V>(xrow + col[q], xv);
          } else {
MAMCLIP_HD_UNROLL
            for (int v = 0; v < V; ++v) xv[v] = 0.0f;
          }
MAMCLIP_HD_UNROLL
          for (int b = 0; b < K; ++b) {
            const int r = q - b;
            if (r < 0 || r >= R) continue;
MAMCLIP_HD_UNROLL
            for (int v = 0; v < V; ++v) acc[r][v] += wv[a * K + b][v] * xv[v];
          }
        }
      }
      T* yrow = yimage + i * row_stride + static_cast<int>(j0) * channels;
MAMCLIP_HD_UNROLL
      for (int r = 0; r < R; ++r)
        if (!kChecked || j0 + r < s.w) Io::template store<V>(yrow + r * channels, acc[r]);
    }
  };
  if (j0 - P >= 0 && j0 + R - 1 + P < s.w)
    walk(std::false_type{});
  else
    walk(std::true_type{});
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
  // 32-bit offsets within a row (W·C < 2^30): 64-bit index math per load dominated the SASS.
  const int width = static_cast<int>(s.w), channels = static_cast<int>(s.c);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t i = row % s.h, image = row / s.h, ii = i + a - P;
    const bool x_row = kWeights && ii >= 0 && ii < s.h;
    if (!x_row && !want_bias) continue;
    const T* dyrow = dy + row * s.w * s.c + c0;
    const T* xrow = x_row ? x + ((image * s.h + ii) * s.w) * s.c + c0 : nullptr;
    for (int j0 = 0; j0 < width; j0 += R) {
      float g[R][V];
MAMCLIP_HD_UNROLL
      for (int r = 0; r < R; ++r) {
        if (j0 + r < width) {
          Io::template load<V>(dyrow + (j0 + r) * channels, g[r]);
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
        row_taps<K, V, R, Io>(xrow, j0, width, channels, [&](int r, int b, const float* xv) {
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
