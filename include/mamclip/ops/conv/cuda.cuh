#pragma once
// CUDA kernels of conv2d ("conv2d", "conv2d_backward": the contract in
// conv.hpp, the reference in cpu.hpp) on contiguous NCHW buffers, for float,
// double, half and bfloat16 (16-bit types accumulate in float).
//
// Two paths, chosen per call by conv_path() (ConvPath, core/cuda/settings.hpp):
//
// depthwise  ConvNeXt's block conv: groups == C_in == C_out, a square kernel of
//            3, 5 or 7, stride 1, dilation 1, "same" padding (k / 2). Our own
//            kernels, one CTA per 32 x 32 output tile of one plane:
//              depthwise_kernel<K, flip>  the input tile with its halo and the
//                        K·K weights in shared memory, 4 outputs per thread;
//                        the input gradient is the same kernel on dy with the
//                        kernel flipped (stride 1, same padding)
//              depthwise_wgrad_partial_kernel<K>  per tile, the K·K products
//                        dy ⊙ shifted x summed over the tile (block reduction);
//              depthwise_wgrad_finish_kernel      per channel, the tiles'
//                        partial sums added in a fixed order: no atomics,
//                        reproducible
// cudnn      everything else (the 4x4 / 2x2 patchify convs, strides, groups,
//            dilation) in a backend built with cuDNN: cudnn.cuh
// im2col     everything else without cuDNN: per sample, im2col_kernel unrolls the receptive
//            fields of all groups, one batched cuBLAS GEMM (ops/matmul/cuda.cuh)
//            per sample gives y; the input gradient is a GEMM into columns and
//            col2im_kernel (a gather: each input pixel sums its taps, no
//            atomics); the weight gradient is one batched GEMM over all
//            samples at once (dy permuted to [G, C_out/G, N·OH·OW], the columns
//            of every sample side by side), so 16-bit weights round once.
// The bias gradient (bias_grad_kernel) sums dy per channel in a fixed order.
//
// Channels last ("conv2d_nhwc", "conv2d_nhwc_backward": x, y, dy, dx stored
// [N, H, W, C]), by the same routes:
// depthwise  the per-thread work of ops/conv/depthwise_nhwc.hpp (tested on
//            the CPU thread by thread):
//   depthwise_nhwc_kernel<K, V, R, flip>   y, or dx from dy with the taps reversed:
//                                          column walks, weights in registers, 2
//                                          channels (32-bit loads) per 16-bit thread
//   depthwise_nhwc_wgrad_kernel<K, V, R>   per (channel group, kernel row, row
//                                          chunk) partial weight and bias sums,
//                                          16-byte loads along C when C and the
//                                          pointers allow
//   nhwc_finish_kernel                     the chunks added in order (no atomics)
//            The weights are transposed once per call to wt [K·K, C] in float.
// cudnn      everything else (ConvNeXt's stem and downsampling convs) with
//            cuDNN's NHWC descriptors; the weights (and their gradient) are
//            swapped to [C_out, kH, kW, C_in / groups] around the call
//            (swap_inner_kernel), the bias added per channel (add_bias_nhwc_kernel)
//            and its gradient summed by the depthwise wgrad kernel's bias-only
//            mode. Misaligned data pointers decline.
// im2col     declines: conv2d then runs the NCHW kernels on copies.

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <cstring>
#include <type_traits>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/settings.hpp"
#include "mamclip/core/cuda/tensor_data.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/conv/conv.hpp"
#include "mamclip/ops/conv/depthwise_nhwc.hpp"
#include "mamclip/ops/conv/nhwc_io.cuh"
#include "mamclip/ops/matmul/cuda.cuh"
#ifdef MAMCLIP_WITH_CUDNN
#include "mamclip/ops/conv/cudnn.cuh"
#endif

namespace mamclip::cuda {

namespace conv_kernels {

inline constexpr int kTile = 32;          // output tile: kTile x kTile per CTA
inline constexpr int kRowsPerThread = 4;  // 256 threads: 32 columns x 8 row groups
inline constexpr int kThreads = kTile * kTile / kRowsPerThread;

// Tiles of a plane and the grid's plane dimension (planes beyond 65535 loop).
struct DepthwiseGrid {
  int64_t tiles_w, tiles;
  dim3 grid;
};
inline DepthwiseGrid depthwise_grid(int64_t h, int64_t w, int64_t planes) {
  const int64_t tw = (w + kTile - 1) / kTile, th = (h + kTile - 1) / kTile;
  return {tw, tw * th, dim3(static_cast<unsigned>(tw * th), static_cast<unsigned>(std::min<int64_t>(planes, 65535)))};
}

// xs[r][c] = src[r0 - P + r, c0 - P + c] of one plane (zeros outside), for the tile and its halo.
template <int K, class D, class A>
__device__ __forceinline__ void load_halo_tile(A (*xs)[kTile + K - 1], const D* src, int64_t h, int64_t w, int64_t r0,
                                               int64_t c0) {
  constexpr int P = K / 2, S = kTile + K - 1;
  for (int e = threadIdx.x; e < S * S; e += kThreads) {
    const int r = e / S, c = e % S;
    const int64_t gr = r0 - P + r, gc = c0 - P + c;
    xs[r][c] = (gr >= 0 && gr < h && gc >= 0 && gc < w) ? to_acc(src[gr * w + gc]) : A(0);
  }
}

// y[plane] = depthwise K x K correlation of x[plane] (+ bias), stride 1, padding K / 2.
// kFlip: the kernel rotated by 180 degrees, no bias (the input gradient from dy).
// grid (tiles of a plane, planes), kThreads threads.
template <int K, bool kFlip, class D>
__global__ void __launch_bounds__(kThreads)
    depthwise_kernel(const D* x, const D* weight, const D* bias, D* y, int64_t planes, int64_t channels, int64_t h,
                     int64_t w, int64_t tiles_w) {
  using A = device_acc_t<D>;
  __shared__ A xs[kTile + K - 1][kTile + K - 1];
  __shared__ A ws[K * K];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile;
  const int64_t r0 = int64_t(blockIdx.x / tiles_w) * kTile, c0 = int64_t(blockIdx.x % tiles_w) * kTile;
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const int64_t ch = plane % channels;
    if (threadIdx.x < K * K) ws[threadIdx.x] = to_acc(weight[ch * K * K + (kFlip ? K * K - 1 - threadIdx.x : threadIdx.x)]);
    load_halo_tile<K>(xs, x + plane * h * w, h, w, r0, c0);
    __syncthreads();
    const A b0 = bias ? to_acc(bias[ch]) : A(0);
#pragma unroll
    for (int rr = 0; rr < kRowsPerThread; ++rr) {
      const int r = ty * kRowsPerThread + rr;
      A acc = b0;
#pragma unroll
      for (int a = 0; a < K; ++a)
#pragma unroll
        for (int b = 0; b < K; ++b) acc += ws[a * K + b] * xs[r + a][tx + b];
      if (r0 + r < h && c0 + tx < w) y[plane * h * w + (r0 + r) * w + c0 + tx] = from_acc<D>(acc);
    }
    __syncthreads();  // the next plane overwrites the tiles
  }
}

// partial[(ch · N + n) · tiles + tile][a · K + b] = Σ over the tile of dy[i, j] · x[i - P + a, j - P + b].
// grid (tiles of a plane, planes), kThreads threads.
template <int K, class D>
__global__ void __launch_bounds__(kThreads)
    depthwise_wgrad_partial_kernel(const D* x, const D* dy, device_acc_t<D>* partial, int64_t planes,
                                   int64_t channels, int64_t h, int64_t w, int64_t tiles_w, int64_t tiles) {
  using A = device_acc_t<D>;
  constexpr int kTaps = K * K, kWarps = kThreads / 32;
  __shared__ A xs[kTile + K - 1][kTile + K - 1];
  __shared__ A gs[kTile][kTile + 1];
  __shared__ A red[kWarps][kTaps];
  const int tx = threadIdx.x % kTile, ty = threadIdx.x / kTile, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int64_t tile = blockIdx.x, r0 = (tile / tiles_w) * kTile, c0 = (tile % tiles_w) * kTile;
  const int64_t batch = planes / channels;
  for (int64_t plane = blockIdx.y; plane < planes; plane += gridDim.y) {
    const int64_t n = plane / channels, ch = plane % channels;
    load_halo_tile<K>(xs, x + plane * h * w, h, w, r0, c0);
    for (int e = threadIdx.x; e < kTile * kTile; e += kThreads) {
      const int r = e / kTile, c = e % kTile;
      gs[r][c] = (r0 + r < h && c0 + c < w) ? to_acc(dy[plane * h * w + (r0 + r) * w + c0 + c]) : A(0);
    }
    __syncthreads();
    A acc[kTaps];
#pragma unroll
    for (int t = 0; t < kTaps; ++t) acc[t] = A(0);
#pragma unroll
    for (int rr = 0; rr < kRowsPerThread; ++rr) {
      const int r = ty * kRowsPerThread + rr;
      const A g = gs[r][tx];
#pragma unroll
      for (int a = 0; a < K; ++a)
#pragma unroll
        for (int b = 0; b < K; ++b) acc[a * K + b] += g * xs[r + a][tx + b];
    }
#pragma unroll
    for (int t = 0; t < kTaps; ++t) {
      const A v = warp_reduce(acc[t], Sum{});
      if (lane == 0) red[warp][t] = v;
    }
    __syncthreads();
    for (int t = threadIdx.x; t < kTaps; t += kThreads) {
      A s = A(0);
#pragma unroll
      for (int wi = 0; wi < kWarps; ++wi) s += red[wi][t];
      partial[((ch * batch + n) * tiles + tile) * kTaps + t] = s;
    }
    __syncthreads();
  }
}

// dw[ch, t] = Σ over samples and tiles (in order) of partial[...][t]; one block per channel.
template <int K, class D>
__global__ void __launch_bounds__(64)
    depthwise_wgrad_finish_kernel(const device_acc_t<D>* partial, D* dw, int64_t channels, int64_t chunks) {
  using A = device_acc_t<D>;
  constexpr int kTaps = K * K;
  for (int64_t ch = blockIdx.x; ch < channels; ch += gridDim.x)
    for (int t = threadIdx.x; t < kTaps; t += blockDim.x) {
      A s = A(0);
      for (int64_t c = 0; c < chunks; ++c) s += partial[(ch * chunks + c) * kTaps + t];
      dw[ch * kTaps + t] = from_acc<D>(s);
    }
}

// db[o] = Σ_{n, p} dy[n, o, p] (p over the OH·OW plane); one block per channel, fixed order.
template <int kBlock, class D>
__global__ void __launch_bounds__(kBlock)
    bias_grad_kernel(const D* dy, D* db, int64_t batch, int64_t channels, int64_t plane) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for (int64_t o = blockIdx.x; o < channels; o += gridDim.x) {
    A s = A(0);
    for (int64_t n = 0; n < batch; ++n) {
      const D* p = dy + (n * channels + o) * plane;
      for (int64_t e = threadIdx.x; e < plane; e += kBlock) s += to_acc(p[e]);
    }
    s = group_reduce<kBlock>(s, Sum{}, A(0), shared);
    if (threadIdx.x == 0) db[o] = from_acc<D>(s);
  }
}

// col[(n_local ·) row, p] for one sample: row = (c · kh + a) · kw + b over all C_in channels (groups
// stacked: group g owns rows [g · K, (g + 1) · K)), p = oh · OW + ow; ld = the column count of a row.
template <class D>
__global__ void im2col_kernel(const D* x, D* col, Conv2dGeometry g, int64_t ld) {
  const int64_t plane = g.oh * g.ow, total = g.c_in * g.kh * g.kw * plane;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e % plane, row = e / plane;
    const int64_t b = row % g.kw, a = (row / g.kw) % g.kh, c = row / (g.kw * g.kh);
    const int64_t oh = p / g.ow, ow = p % g.ow;
    const int64_t i = oh * g.stride_h - g.pad_h + a * g.dil_h, j = ow * g.stride_w - g.pad_w + b * g.dil_w;
    col[row * ld + p] = (i >= 0 && i < g.h && j >= 0 && j < g.w) ? x[(c * g.h + i) * g.w + j] : from_acc<D>(0.0f);
  }
}

// dx[c, i, j] (one sample) = Σ of the column entries that read it: a gather over the taps.
template <class D>
__global__ void col2im_kernel(const D* col, D* dx, Conv2dGeometry g) {
  using A = device_acc_t<D>;
  const int64_t plane = g.oh * g.ow, total = g.c_in * g.h * g.w;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t j = e % g.w, i = (e / g.w) % g.h, c = e / (g.w * g.h);
    A s = A(0);
    for (int64_t a = 0; a < g.kh; ++a) {
      const int64_t ti = i + g.pad_h - a * g.dil_h;
      if (ti < 0 || ti % g.stride_h != 0) continue;
      const int64_t oh = ti / g.stride_h;
      if (oh >= g.oh) continue;
      for (int64_t b = 0; b < g.kw; ++b) {
        const int64_t tj = j + g.pad_w - b * g.dil_w;
        if (tj < 0 || tj % g.stride_w != 0) continue;
        const int64_t ow = tj / g.stride_w;
        if (ow >= g.ow) continue;
        s += to_acc(col[((c * g.kh + a) * g.kw + b) * plane + oh * g.ow + ow]);
      }
    }
    dx[e] = from_acc<D>(s);
  }
}

// y[n, o, p] += b[o]: a row of blocks per (n, o) plane (blockIdx.y), so each
// block reads its bias once and no element index is divided.
template <class D>
__global__ void add_bias_kernel(D* y, const D* b, int64_t channels, int64_t plane, int64_t planes) {
  for (int64_t q = blockIdx.y; q < planes; q += gridDim.y) {
    const auto bias = to_acc(b[q % channels]);
    D* row = y + q * plane;
    for (int64_t p = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; p < plane; p += int64_t(gridDim.x) * blockDim.x)
      row[p] = from_acc<D>(to_acc(row[p]) + bias);
  }
}

// dst[g, o, n · plane + p] = src[n, g · cg + o, p]: dy with samples side by side per channel.
template <class D>
__global__ void samples_last_kernel(const D* src, D* dst, int64_t batch, int64_t channels, int64_t plane) {
  const int64_t total = batch * channels * plane;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t p = e % plane, ch = (e / plane) % channels, n = e / (plane * channels);
    dst[(ch * batch + n) * plane + p] = src[e];
  }
}

// ---- channels last (loads and stores: NhwcIo, nhwc_io.cuh)

// Outputs per thread along W (R) of the weight-gradient strips: 8, or 4 with
// 8-channel vectors, so that a thread's accumulators and inputs fit 128
// registers (two blocks of 256 threads per SM) without spilling.
template <int V>
inline constexpr int kNhwcStrip = V >= 8 ? 4 : 8;
// The forward walk's outputs per thread along W. Its 7x7 threads hold 49·V weights and
// 8·V accumulators: more than 128 registers (256-thread blocks spilled), so it runs 3
// blocks of 128 threads per SM (up to 168 registers; the 16-bit 7x7 ones use all of them,
// one-channel ones spill 12 bytes).
inline constexpr int kNhwcForwardStrip = 8;
inline constexpr int kNhwcForwardBlock = 128;
inline constexpr int kNhwcBlock = 256;

// wt[t · C + c] = w[c · K·K + t] in float; c fastest, so the writes coalesce.
template <class D>
__global__ void nhwc_transpose_weights_kernel(const D* w, float* wt, int64_t channels, int64_t taps) {
  const int64_t total = channels * taps;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = e % channels, t = e / channels;
    wt[e] = nhwc_to_float(w[c * taps + t]);
  }
}

// out[o, j, i] = in[o, i, j] for in [outer, a, b]: a weight [C_out, C_in, kH·kW]
// to cuDNN's NHWC filter [C_out, kH·kW, C_in] and back.
template <class D>
__global__ void swap_inner_kernel(const D* in, D* out, int64_t outer, int64_t a, int64_t b) {
  const int64_t total = outer * a * b;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % a, rest = e / a, j = rest % b, o = rest / b;
    out[e] = in[(o * a + i) * b + j];
  }
}

// y[m, c] += b[c] for y [rows, C].
template <class D>
__global__ void add_bias_nhwc_kernel(D* y, const D* b, int64_t total, int64_t channels) {
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)
    y[e] = nhwc_from_float<D>(nhwc_to_float(y[e]) + nhwc_to_float(b[e % channels]));
}

// One column walk per thread (depthwise_nhwc::forward_work).
template <int K, int V, int R, bool kFlip, class D>
__global__ void __launch_bounds__(kNhwcForwardBlock, 3)
    depthwise_nhwc_kernel(const D* x, const float* wt, const D* bias, D* y, depthwise_nhwc::Shape s,
                          depthwise_nhwc::ForwardPlan plan) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < plan.total; t += int64_t(gridDim.x) * blockDim.x) {
    const depthwise_nhwc::ColumnWork w = depthwise_nhwc::forward_work<V, R>(plan, s, t);
    depthwise_nhwc::forward_column<K, V, R, kFlip, NhwcIo>(x, wt, bias, y, s, w.image, w.i_begin, w.i_end, w.j0,
                                                           w.c0);
  }
}

// One (channel group, kernel row, chunk of image rows) per thread
// (depthwise_nhwc::weight_grad_work); without kWeights only the bias sums, on the centre row.
template <int K, int V, int R, bool kWeights, class D>
__global__ void __launch_bounds__(kNhwcBlock, 2)
    depthwise_nhwc_wgrad_kernel(const D* x, const D* dy, float* partial, float* bias_partial,
                                depthwise_nhwc::Shape s, depthwise_nhwc::WeightGradPlan plan) {
  for (int64_t t = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; t < plan.total; t += int64_t(gridDim.x) * blockDim.x) {
    const depthwise_nhwc::StripWork w = depthwise_nhwc::weight_grad_work<K, V, kWeights>(plan, s, t);
    depthwise_nhwc::weight_grad_strip<K, V, R, kWeights, NhwcIo>(x, dy, partial, bias_partial, s, w.a, w.row_begin,
                                                                 w.row_end, w.chunk, w.c0);
  }
}

// out[c · taps + t] = Σ over chunks of partial[chunk, t, c]; c fastest, so the reads coalesce.
template <class D>
__global__ void nhwc_finish_kernel(const float* partial, D* out, int64_t chunks, int64_t taps, int64_t channels) {
  const int64_t total = channels * taps;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x)
    depthwise_nhwc::finish_sum<NhwcIo>(partial, out, chunks, taps, channels, e % channels, e / channels);
}

}  // namespace conv_kernels

namespace detail {

// Whether conv2d takes the depthwise kernels: square K in {3, 5, 7}, stride 1, dilation 1, same padding.
inline bool depthwise_fast(const Conv2dGeometry& g) {
  return g.depthwise() && g.kh == g.kw && (g.kh == 3 || g.kh == 5 || g.kh == 7) && g.stride_h == 1 &&
         g.stride_w == 1 && g.dil_h == 1 && g.dil_w == 1 && g.pad_h == g.kh / 2 && g.pad_w == g.kw / 2;
}

enum class ConvRoute { depthwise, cudnn, im2col };

inline ConvRoute conv_route(const Conv2dGeometry& g) {
  const ConvPath path = conv_path();
#ifdef MAMCLIP_WITH_CUDNN
  if (path == ConvPath::cudnn) return ConvRoute::cudnn;
#else
  MAMCLIP_CHECK(path != ConvPath::cudnn, device_error,
                "conv2d: cuda::set_conv_path(ConvPath::cudnn), but this CUDA backend was built without cuDNN "
                "(cmake/cudnn.cmake found no cudnn.h and libcudnn; set CUDNN_ROOT)");
#endif
  if (path == ConvPath::automatic && depthwise_fast(g)) return ConvRoute::depthwise;
#ifdef MAMCLIP_WITH_CUDNN
  // cuDNN refuses descriptors with no input channels; im2col's GEMM has k = 0 there: y = bias.
  if (path == ConvPath::automatic && g.c_in > 0) return ConvRoute::cudnn;
#endif
  return ConvRoute::im2col;
}

template <class F>
void with_kernel_size(int64_t k, F&& f) {
  if (k == 3) return f(std::integral_constant<int, 3>{});
  if (k == 5) return f(std::integral_constant<int, 5>{});
  return f(std::integral_constant<int, 7>{});
}

template <class D>
void launch_depthwise(const Conv2dGeometry& g, const D* x, const D* w, const D* b, D* y, bool flip, cudaStream_t s) {
  const int64_t planes = g.batch * g.c_in;
  if (planes == 0 || g.h == 0 || g.w == 0) return;
  const auto grid = conv_kernels::depthwise_grid(g.h, g.w, planes);
  with_kernel_size(g.kh, [&](auto k) {
    constexpr int K = decltype(k)::value;
    if (flip)
      conv_kernels::depthwise_kernel<K, true, D>
          <<<grid.grid, conv_kernels::kThreads, 0, s>>>(x, w, nullptr, y, planes, g.c_in, g.h, g.w, grid.tiles_w);
    else
      conv_kernels::depthwise_kernel<K, false, D>
          <<<grid.grid, conv_kernels::kThreads, 0, s>>>(x, w, b, y, planes, g.c_in, g.h, g.w, grid.tiles_w);
  });
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class D>
void launch_depthwise_wgrad(const Conv2dGeometry& g, const D* x, const D* dy, D* dw, cudaStream_t s) {
  using A = device_acc_t<D>;
  const int64_t planes = g.batch * g.c_in, taps = g.kh * g.kw;
  const auto grid = conv_kernels::depthwise_grid(g.h, g.w, std::max<int64_t>(planes, 1));
  const int64_t chunks = g.batch * grid.tiles;  // partial sums per channel
  Tensor<A> partial = scratch<A>(g.c_in * chunks * taps);
  if (chunks > 0) {
    with_kernel_size(g.kh, [&](auto k) {
      constexpr int K = decltype(k)::value;
      conv_kernels::depthwise_wgrad_partial_kernel<K, D><<<grid.grid, conv_kernels::kThreads, 0, s>>>(
          x, dy, partial.data_ptr(), planes, g.c_in, g.h, g.w, grid.tiles_w, grid.tiles);
    });
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
  with_kernel_size(g.kh, [&](auto k) {
    constexpr int K = decltype(k)::value;
    conv_kernels::depthwise_wgrad_finish_kernel<K, D>
        <<<static_cast<unsigned>(std::min<int64_t>(g.c_in, 65535)), 64, 0, s>>>(partial.data_ptr(), dw, g.c_in, chunks);
  });
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class D>
void launch_bias_grad(const Conv2dGeometry& g, const D* dy, D* db, cudaStream_t s) {
  constexpr int kBlock = 256;
  conv_kernels::bias_grad_kernel<kBlock, D><<<static_cast<unsigned>(std::clamp<int64_t>(g.c_out, 1, 65535)), kBlock, 0, s>>>(
      dy, db, g.batch, g.c_out, g.oh * g.ow);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

// y += b per output channel.
template <class D>
void launch_add_bias(const Conv2dGeometry& g, const D* b, D* y, cudaStream_t s) {
  constexpr int kBlock = 256;
  const int64_t plane = g.oh * g.ow, planes = g.batch * g.c_out;
  const dim3 grid(static_cast<unsigned>(std::clamp<int64_t>((plane + kBlock - 1) / kBlock, 1, 1024)),
                  static_cast<unsigned>(std::clamp<int64_t>(planes, 1, 65535)));
  conv_kernels::add_bias_kernel<D><<<grid, kBlock, 0, s>>>(y, b, g.c_out, plane, planes);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

// y = conv(x, w) + b through im2col and one batched GEMM (over groups) per sample.
template <class T>
void im2col_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* b, T* y, cudaStream_t s) {
  using D = device_t<T>;
  const int64_t plane = g.oh * g.ow, kdim = g.cin_per_group() * g.kh * g.kw, cog = g.cout_per_group();
  Tensor<T> col = scratch<T>(g.groups * kdim * plane);
  D* pc = device_ptr(col.data_ptr());
  for (int64_t n = 0; n < g.batch; ++n) {
    const D* xn = device_ptr(x) + n * g.c_in * g.h * g.w;
    conv_kernels::im2col_kernel<D><<<grid_for(g.groups * kdim * plane, 256), 256, 0, s>>>(xn, pc, g, plane);
    MAMCLIP_CUDA_CHECK_LAUNCH();
    launch_gemm<T>(false, false, cog, plane, kdim, 1.0, w, kdim, cog * kdim, col.data_ptr(), plane, kdim * plane, 0.0,
                   y + n * g.c_out * plane, plane, cog * plane, g.groups, s);
  }
  if (b) launch_add_bias<D>(g, device_ptr(b), device_ptr(y), s);
}

template <class T>
void im2col_input_grad(const Conv2dGeometry& g, const T* w, const T* gy, T* dx, cudaStream_t s) {
  using D = device_t<T>;
  const int64_t plane = g.oh * g.ow, kdim = g.cin_per_group() * g.kh * g.kw, cog = g.cout_per_group();
  Tensor<T> col = scratch<T>(g.groups * kdim * plane);
  for (int64_t n = 0; n < g.batch; ++n) {
    // dcol_g [kdim, plane] = w_gᵀ · dy_g
    launch_gemm<T>(true, false, kdim, plane, cog, 1.0, w, kdim, cog * kdim, gy + n * g.c_out * plane, plane,
                   cog * plane, 0.0, col.data_ptr(), plane, kdim * plane, g.groups, s);
    const int64_t total = g.c_in * g.h * g.w;
    conv_kernels::col2im_kernel<D><<<grid_for(total, 256), 256, 0, s>>>(device_ptr(col.data_ptr()),
                                                                       device_ptr(dx + n * total), g);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
}

template <class T>
void im2col_weight_grad(const Conv2dGeometry& g, const T* x, const T* gy, T* dw, cudaStream_t s) {
  using D = device_t<T>;
  const int64_t plane = g.oh * g.ow, kdim = g.cin_per_group() * g.kh * g.kw, cog = g.cout_per_group();
  const int64_t cols = g.batch * plane;  // every sample's columns side by side
  Tensor<T> col = scratch<T>(g.groups * kdim * cols), dyt = scratch<T>(g.c_out * cols);
  for (int64_t n = 0; n < g.batch; ++n) {
    // Sample n's columns start at column n · plane of each row (ld = cols).
    conv_kernels::im2col_kernel<D><<<grid_for(g.groups * kdim * plane, 256), 256, 0, s>>>(
        device_ptr(x) + n * g.c_in * g.h * g.w, device_ptr(col.data_ptr()) + n * plane, g, cols);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
  conv_kernels::samples_last_kernel<D><<<grid_for(g.c_out * cols, 256), 256, 0, s>>>(
      device_ptr(gy), device_ptr(dyt.data_ptr()), g.batch, g.c_out, plane);
  MAMCLIP_CUDA_CHECK_LAUNCH();
  // dw_g [cog, kdim] = dyt_g [cog, cols] · col_gᵀ
  launch_gemm<T>(false, true, cog, kdim, cols, 1.0, dyt.data_ptr(), cols, cog * cols, col.data_ptr(), cols,
                 kdim * cols, 0.0, dw, kdim, cog * kdim, g.groups, s);
}

template <class T>
void launch_conv2d_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* b, T* y, cudaStream_t s) {
  using D = device_t<T>;
  if (g.batch == 0 || g.c_out == 0 || g.oh == 0 || g.ow == 0) return;
  switch (conv_route(g)) {
    case ConvRoute::depthwise:
      launch_depthwise<D>(g, device_ptr(x), device_ptr(w), b ? device_ptr(b) : nullptr, device_ptr(y), false, s);
      return;
    case ConvRoute::cudnn:
#ifdef MAMCLIP_WITH_CUDNN
      cudnn_conv::forward<T>(g, x, w, y, s);
      if (b) launch_add_bias<D>(g, device_ptr(b), device_ptr(y), s);
#endif
      return;
    case ConvRoute::im2col:
      im2col_forward<T>(g, x, w, b, y, s);
      return;
  }
}

template <class T>
void launch_conv2d_backward(const Conv2dGeometry& g, const T* x, const T* w, const T* gy, T* dx, T* dw, T* db,
                            cudaStream_t s) {
  using D = device_t<T>;
  const bool empty = g.batch == 0 || g.oh == 0 || g.ow == 0;
  const auto zero = [&](T* p, int64_t count) {
    if (p && count > 0) MAMCLIP_CUDA_CHECK(cudaMemsetAsync(p, 0, static_cast<size_t>(count) * sizeof(T), s));
  };
  if (empty) {  // nothing flows back: zero gradients
    zero(dx, g.batch * g.c_in * g.h * g.w);
    zero(dw, g.c_out * g.cin_per_group() * g.kh * g.kw);
    zero(db, g.c_out);
    return;
  }
  switch (conv_route(g)) {
    case ConvRoute::depthwise:
      if (dx) launch_depthwise<D>(g, device_ptr(gy), device_ptr(w), nullptr, device_ptr(dx), true, s);
      if (dw) launch_depthwise_wgrad<D>(g, device_ptr(x), device_ptr(gy), device_ptr(dw), s);
      break;
    case ConvRoute::cudnn:
#ifdef MAMCLIP_WITH_CUDNN
      cudnn_conv::backward<T>(g, x, w, gy, dx, dw, s);
#endif
      break;
    case ConvRoute::im2col:
      if (dx) im2col_input_grad<T>(g, w, gy, dx, s);
      if (dw) im2col_weight_grad<T>(g, x, gy, dw, s);
      break;
  }
  if (db) launch_bias_grad<D>(g, device_ptr(gy), device_ptr(db), s);
}

// ---- channels last

// Who takes a channels-last call (16- or 32-bit storage): our depthwise
// kernels on the automatic path, cuDNN's NHWC convolutions for everything
// else unless the im2col path is asked for (or cuDNN is absent), which declines.
enum class NhwcRoute { depthwise, cudnn, decline };

template <class T>
NhwcRoute nhwc_route(const Conv2dGeometry& g) {
  if (std::is_same_v<T, double> || g.c_in == 0) return NhwcRoute::decline;
  const ConvPath path = conv_path();
  // (The depthwise walks index within an image in 32 bits; 2^30 leaves room for their sums.)
  if (path == ConvPath::automatic && depthwise_fast(g) && g.h * g.w * g.c_in < (int64_t(1) << 30))
    return NhwcRoute::depthwise;
#ifdef MAMCLIP_WITH_CUDNN
  if (path != ConvPath::im2col) return NhwcRoute::cudnn;
#endif
  return NhwcRoute::decline;
}

// Whether threads of v channels can load them as one vector of v elements: C a multiple of v
// and every (non-null) pointer aligned to the vector's size.
template <class D>
bool nhwc_vectors_fit(int64_t channels, int v, std::initializer_list<const void*> pointers) {
  bool fit = channels % v == 0;
  for (const void* p : pointers) fit = fit && (p == nullptr || reinterpret_cast<uintptr_t>(p) % (v * sizeof(D)) == 0);
  return fit;
}

// f(V): V = 16-byte vectors when C and every pointer allow them, else 1.
template <class D, class F>
void with_nhwc_vector(int64_t channels, std::initializer_list<const void*> pointers, F&& f) {
  if (nhwc_vectors_fit<D>(channels, kVec16<D>, pointers)) return f(std::integral_constant<int, kVec16<D>>{});
  return f(std::integral_constant<int, 1>{});
}

template <class D>
Tensor<float> nhwc_transposed_weights(const Conv2dGeometry& g, const D* w, cudaStream_t s) {
  const int64_t taps = g.kh * g.kw;
  Tensor<float> wt = scratch<float>(g.c_in * taps);
  conv_kernels::nhwc_transpose_weights_kernel<D>
      <<<grid_for(g.c_in * taps, conv_kernels::kNhwcBlock), conv_kernels::kNhwcBlock, 0, s>>>(w, wt.data_ptr(),
                                                                                           g.c_in, taps);
  MAMCLIP_CUDA_CHECK_LAUNCH();
  return wt;
}

// y (flip = false, with bias) or dx from dy (flip = true), all [N, H, W, C]; w is the [C, 1, K, K] weight.
template <class D>
void launch_depthwise_nhwc(const Conv2dGeometry& g, const D* x, const D* w, const D* b, D* y, bool flip,
                           cudaStream_t s) {
  const depthwise_nhwc::Shape shape{g.batch, g.h, g.w, g.c_in};
  const Tensor<float> transposed = nhwc_transposed_weights<D>(g, w, s);
  const float* wt = transposed.data_ptr();
  // Two channels per thread (one 32-bit load) for 16-bit types when C and the pointers allow it.
  const bool pairs = sizeof(D) == 2 && nhwc_vectors_fit<D>(g.c_in, 2, {x, b, y});
  const auto launch = [&](auto vec) {
    constexpr int V = decltype(vec)::value, R = conv_kernels::kNhwcForwardStrip;
    const depthwise_nhwc::ForwardPlan plan = depthwise_nhwc::forward_plan<V, R>(shape);
    constexpr int kBlock = conv_kernels::kNhwcForwardBlock;
    const unsigned grid = grid_for(plan.total, kBlock);
    with_kernel_size(g.kh, [&](auto k) {
      constexpr int K = decltype(k)::value;
      if (flip)
        conv_kernels::depthwise_nhwc_kernel<K, V, R, true, D><<<grid, kBlock, 0, s>>>(x, wt, nullptr, y, shape, plan);
      else
        conv_kernels::depthwise_nhwc_kernel<K, V, R, false, D><<<grid, kBlock, 0, s>>>(x, wt, b, y, shape, plan);
    });
    MAMCLIP_CUDA_CHECK_LAUNCH();
  };
  if constexpr (sizeof(D) == 2) {  // (float never instantiates the 2-channel kernels)
    if (pairs) return launch(std::integral_constant<int, 2>{});
  }
  launch(std::integral_constant<int, 1>{});
}

// dw [C, 1, K, K] (when non-null, from x and dy) and db [C] (when non-null)
// of a depthwise K x K conv over `shape`. Without dw, K does not matter: db
// is the sum of dy over every position, for any conv whose output dy is.
template <class D>
void launch_depthwise_nhwc_wgrad(const depthwise_nhwc::Shape& shape, int64_t kernel_size, const D* x, const D* dy,
                                 D* dw, D* db, cudaStream_t s) {
  const int64_t channels = shape.c, taps = kernel_size * kernel_size;
  MAMCLIP_CHECK(shape.w * shape.c < (int64_t(1) << 30), shape_error, "conv2d (channels last): a row of ", shape.w,
                " x ", shape.c, " elements is past the weight-gradient kernels' 32-bit row offsets (2^30)");
  with_nhwc_vector<D>(channels, {x, dy}, [&](auto vec) {
    constexpr int V = decltype(vec)::value, R = conv_kernels::kNhwcStrip<V>;
    const depthwise_nhwc::WeightGradPlan plan = depthwise_nhwc::weight_grad_plan<V>(shape, kernel_size, dw != nullptr);
    const int64_t chunks = plan.chunks;
    Tensor<float> partial = dw ? scratch<float>(chunks * taps * channels) : Tensor<float>();
    Tensor<float> bias_partial = db ? scratch<float>(chunks * channels) : Tensor<float>();
    float* pp = dw ? partial.data_ptr() : nullptr;
    float* bp = db ? bias_partial.data_ptr() : nullptr;
    const unsigned grid = grid_for(plan.total, conv_kernels::kNhwcBlock);
    with_kernel_size(kernel_size, [&](auto k) {
      constexpr int K = decltype(k)::value;
      if (dw)
        conv_kernels::depthwise_nhwc_wgrad_kernel<K, V, R, true, D>
            <<<grid, conv_kernels::kNhwcBlock, 0, s>>>(x, dy, pp, bp, shape, plan);
      else
        conv_kernels::depthwise_nhwc_wgrad_kernel<K, V, R, false, D>
            <<<grid, conv_kernels::kNhwcBlock, 0, s>>>(nullptr, dy, nullptr, bp, shape, plan);
    });
    MAMCLIP_CUDA_CHECK_LAUNCH();
    if (dw) {
      conv_kernels::nhwc_finish_kernel<D><<<grid_for(channels * taps, conv_kernels::kNhwcBlock),
                                            conv_kernels::kNhwcBlock, 0, s>>>(pp, dw, chunks, taps, channels);
      MAMCLIP_CUDA_CHECK_LAUNCH();
    }
    if (db) {
      conv_kernels::nhwc_finish_kernel<D><<<grid_for(channels, conv_kernels::kNhwcBlock), conv_kernels::kNhwcBlock, 0,
                                            s>>>(bp, db, chunks, 1, channels);
      MAMCLIP_CUDA_CHECK_LAUNCH();
    }
  });
}

#ifdef MAMCLIP_WITH_CUDNN
// out [outer, b, a] = in [outer, a, b] transposed per outer index.
template <class D>
void launch_swap_inner(const D* in, D* out, int64_t outer, int64_t a, int64_t b, cudaStream_t s) {
  conv_kernels::swap_inner_kernel<D>
      <<<grid_for(outer * a * b, conv_kernels::kNhwcBlock), conv_kernels::kNhwcBlock, 0, s>>>(in, out, outer, a, b);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

// w [C_out, C_in / groups, kH, kW] as cuDNN's NHWC filter [C_out, kH, kW, C_in / groups].
template <class T>
Tensor<T> cudnn_nhwc_filter(const Conv2dGeometry& g, const T* w, cudaStream_t s) {
  using D = device_t<T>;
  Tensor<T> out = scratch<T>(g.c_out * g.cin_per_group() * g.kh * g.kw);
  launch_swap_inner<D>(device_ptr(w), device_ptr(out.data_ptr()), g.c_out, g.cin_per_group(), g.kh * g.kw, s);
  return out;
}

// cuDNN's NHWC tensor-core kernels read whole vectors: pointers that are
// not 16-byte aligned (a view into a buffer) decline to the NCHW path.
inline bool cudnn_nhwc_aligned(std::initializer_list<const void*> pointers) {
  for (const void* p : pointers)
    if (p && !aligned16(p)) return false;
  return true;
}

template <class T>
bool cudnn_nhwc_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* b, T* y, cudaStream_t s) {
  using D = device_t<T>;
  if (!cudnn_nhwc_aligned({x, y})) return false;
  const Tensor<T> filter = cudnn_nhwc_filter<T>(g, w, s);
  if (!cudnn_conv::try_forward<T>(g, cudnn_conv::Layout::nhwc, x, filter.data_ptr(), y, s)) return false;
  if (b) {
    const int64_t total = g.batch * g.oh * g.ow * g.c_out;
    conv_kernels::add_bias_nhwc_kernel<D><<<grid_for(total, conv_kernels::kNhwcBlock), conv_kernels::kNhwcBlock, 0, s>>>(
        device_ptr(y), device_ptr(b), total, g.c_out);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
  return true;
}

template <class T>
bool cudnn_nhwc_backward(const Conv2dGeometry& g, const T* x, const T* w, const T* gy, T* dx, T* dw, T* db,
                         cudaStream_t s) {
  using D = device_t<T>;
  if (!cudnn_nhwc_aligned({x, gy, dx})) return false;
  // db comes from our weight-gradient strips, whose rows index in 32 bits: decline before cuDNN writes anything.
  if (db && g.ow * g.c_out >= (int64_t(1) << 30)) return false;
  const Tensor<T> filter = dx ? cudnn_nhwc_filter<T>(g, w, s) : Tensor<T>();
  Tensor<T> filter_grad = dw ? scratch<T>(g.c_out * g.cin_per_group() * g.kh * g.kw) : Tensor<T>();
  if (!cudnn_conv::try_backward<T>(g, cudnn_conv::Layout::nhwc, x, dx ? filter.data_ptr() : nullptr, gy, dx,
                                   dw ? filter_grad.data_ptr() : nullptr, s))
    return false;
  if (dw)
    launch_swap_inner<D>(device_ptr(filter_grad.data_ptr()), device_ptr(dw), g.c_out, g.kh * g.kw, g.cin_per_group(), s);
  if (db)
    launch_depthwise_nhwc_wgrad<D>(depthwise_nhwc::Shape{g.batch, g.oh, g.ow, g.c_out}, 3, nullptr, device_ptr(gy),
                                   nullptr, device_ptr(db), s);
  return true;
}
#endif

template <class T>
bool launch_conv2d_nhwc_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* b, T* y, cudaStream_t s) {
  using D = device_t<T>;
  const NhwcRoute route = nhwc_route<T>(g);
  if (route == NhwcRoute::decline) return false;
  if (g.batch == 0 || g.c_out == 0 || g.oh == 0 || g.ow == 0) return true;
#ifdef MAMCLIP_WITH_CUDNN
  if (route == NhwcRoute::cudnn) return cudnn_nhwc_forward<T>(g, x, w, b, y, s);
#endif
  launch_depthwise_nhwc<D>(g, device_ptr(x), device_ptr(w), b ? device_ptr(b) : nullptr, device_ptr(y), false, s);
  return true;
}

template <class T>
bool launch_conv2d_nhwc_backward(const Conv2dGeometry& g, const T* x, const T* w, const T* gy, T* dx, T* dw, T* db,
                                 cudaStream_t s) {
  using D = device_t<T>;
  const NhwcRoute route = nhwc_route<T>(g);
  if (route == NhwcRoute::decline) return false;
  const auto zero = [&](T* p, int64_t count) {
    if (p && count > 0) MAMCLIP_CUDA_CHECK(cudaMemsetAsync(p, 0, static_cast<size_t>(count) * sizeof(T), s));
  };
  if (g.batch == 0 || g.oh == 0 || g.ow == 0 || g.c_in == 0 || g.c_out == 0) {  // nothing flows back
    zero(dx, g.batch * g.c_in * g.h * g.w);
    zero(dw, g.c_out * g.cin_per_group() * g.kh * g.kw);
    zero(db, g.c_out);
    return true;
  }
#ifdef MAMCLIP_WITH_CUDNN
  if (route == NhwcRoute::cudnn) return cudnn_nhwc_backward<T>(g, x, w, gy, dx, dw, db, s);
#endif
  if (dx) launch_depthwise_nhwc<D>(g, device_ptr(gy), device_ptr(w), nullptr, device_ptr(dx), true, s);
  if (dw || db)
    launch_depthwise_nhwc_wgrad<D>(depthwise_nhwc::Shape{g.batch, g.h, g.w, g.c_in}, g.kh,
                                   dw ? device_ptr(x) : nullptr, device_ptr(gy), dw ? device_ptr(dw) : nullptr,
                                   db ? device_ptr(db) : nullptr, s);
  return true;
}

}  // namespace detail

namespace kernels {
template <class T>
void conv2d_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* b, T* y) {
  detail::launch_conv2d_forward<T>(g, x, w, b, y, current_stream());
}
template <class T>
void conv2d_backward(const Conv2dGeometry& g, const T* x, const T* w, const T* gy, T* dx, T* dw, T* db) {
  detail::launch_conv2d_backward<T>(g, x, w, gy, dx, dw, db, current_stream());
}
template <class T>
bool conv2d_nhwc_forward(const Conv2dGeometry& g, const T* x, const T* w, const T* b, T* y) {
  return detail::launch_conv2d_nhwc_forward<T>(g, x, w, b, y, current_stream());
}
template <class T>
bool conv2d_nhwc_backward(const Conv2dGeometry& g, const T* x, const T* w, const T* gy, T* dx, T* dw, T* db) {
  return detail::launch_conv2d_nhwc_backward<T>(g, x, w, gy, dx, dw, db, current_stream());
}
}  // namespace kernels

template <class T>
void register_conv_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<Conv2dForwardKernel<T>>("conv2d", dtype_v<T>, DeviceType::cuda, &kernels::conv2d_forward<T>);
  r.add<Conv2dBackwardKernel<T>>("conv2d_backward", dtype_v<T>, DeviceType::cuda, &kernels::conv2d_backward<T>);
  if constexpr (!std::is_same_v<T, double>) {  // double keeps the NCHW kernels
    r.add<Conv2dNhwcForwardKernel<T>>("conv2d_nhwc", dtype_v<T>, DeviceType::cuda, &kernels::conv2d_nhwc_forward<T>);
    r.add<Conv2dNhwcBackwardKernel<T>>("conv2d_nhwc_backward", dtype_v<T>, DeviceType::cuda,
                                       &kernels::conv2d_nhwc_backward<T>);
  }
}

inline void register_conv_kernels() {
  register_conv_kernels_for<float>();
  register_conv_kernels_for<double>();
  register_conv_kernels_for<half>();
  register_conv_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
