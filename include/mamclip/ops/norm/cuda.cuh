#pragma once
// CUDA kernels of the norm family: "layer_norm" (LayerNormKernel),
// "layer_norm_backward" (LayerNormBackwardKernel), "layer_norm2d" and
// "layer_norm2d_backward" (channels-first: one thread per position walks the
// channels, coalesced over positions; dw and db one block per channel),
// "normalize" and "normalize_backward" (a group of threads per lane, as softmax).
//
//   layer_norm_kernel<kBlock, kGroup, D>           a group of kGroup threads per row (a warp, or
//                                                  the block for rows of kLongRow or more):
//                                                  mean, variance, y, and the row's mean / rstd
//   layer_norm_input_grad_kernel<kBlock, kGroup, D> dx per row, the same grouping
//   layer_norm_param_grad_partial_kernel<D>        dw, db: 32 columns x a chunk of rows
//                                                  (kParamGradRowsPerChunk, more past 65535
//                                                  chunks) per block, partial sums per chunk
//   sum_chunks_kernel<D>                           dw, db: the chunks' partial sums per column
//
// The formulas of ops/norm/cpu.hpp in device_acc_t; sums run in another order
// than the CPU's, so results agree to rounding. The weight and bias gradients
// never use atomics: each chunk of rows writes its own partial sums (a
// temporary from the device allocator), then one pass adds the chunks.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/tensor_data.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/norm/norm.hpp"

namespace mamclip::cuda {

inline constexpr int kParamGradRowsPerChunk = 256;

template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    layer_norm_kernel(const D* x, const D* w, const D* b, D* y, device_acc_t<D>* mean, device_acc_t<D>* rstd,
                      int64_t rows, int64_t n, device_acc_t<D> eps) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(rows, [&](int64_t r, int t) {
    const D* xr = x + r * n;
    D* yr = y + r * n;
    A s = A(0);
    for (int64_t j = t; j < n; j += kGroup) s += to_acc(xr[j]);
    const A m = group_reduce<kGroup>(s, Sum(), A(0), shared) / A(n);
    A ss = A(0);
    for (int64_t j = t; j < n; j += kGroup) {
      const A d = to_acc(xr[j]) - m;
      ss += d * d;
    }
    const A rs = A(1) / math::sqrt(group_reduce<kGroup>(ss, Sum(), A(0), shared) / A(n) + eps);
    for (int64_t j = t; j < n; j += kGroup) {
      A v = (to_acc(xr[j]) - m) * rs;
      if (w) v *= to_acc(w[j]);
      if (b) v += to_acc(b[j]);
      yr[j] = from_acc<D>(v);
    }
    if (t == 0) {
      mean[r] = m;
      rstd[r] = rs;
    }
  });
}

// dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat)), dxhat = g * w.
template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    layer_norm_input_grad_kernel(const D* g, const D* x, const D* w, const device_acc_t<D>* mean,
                                 const device_acc_t<D>* rstd, int64_t rows, int64_t n, D* dx) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(rows, [&](int64_t r, int t) {
    const D* gr = g + r * n;
    const D* xr = x + r * n;
    const A m = mean[r], rs = rstd[r];
    A s1 = A(0), s2 = A(0);
    for (int64_t j = t; j < n; j += kGroup) {
      const A dxhat = w ? to_acc(gr[j]) * to_acc(w[j]) : to_acc(gr[j]);
      s1 += dxhat;
      s2 += dxhat * ((to_acc(xr[j]) - m) * rs);
    }
    const A mean_dxhat = group_reduce<kGroup>(s1, Sum(), A(0), shared) / A(n);
    const A mean_dxhat_xhat = group_reduce<kGroup>(s2, Sum(), A(0), shared) / A(n);
    for (int64_t j = t; j < n; j += kGroup) {
      const A dxhat = w ? to_acc(gr[j]) * to_acc(w[j]) : to_acc(gr[j]);
      const A xhat = (to_acc(xr[j]) - m) * rs;
      dx[r * n + j] = from_acc<D>(rs * (dxhat - mean_dxhat - xhat * mean_dxhat_xhat));
    }
  });
}

// Block (32, 8): columns blockIdx.x * 32 + threadIdx.x, rows of chunk
// blockIdx.y; partial_w / partial_b [chunks, n] (either may be null).
template <class D>
__global__ void __launch_bounds__(256)
    layer_norm_param_grad_partial_kernel(const D* g, const D* x, const device_acc_t<D>* mean,
                                         const device_acc_t<D>* rstd, int64_t rows, int64_t n,
                                         int64_t chunk_rows, device_acc_t<D>* partial_w,
                                         device_acc_t<D>* partial_b) {
  using A = device_acc_t<D>;
  __shared__ A sw[8][33], sb[8][33];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * chunk_rows;
  const int64_t r1 = r0 + chunk_rows < rows ? r0 + chunk_rows : rows;
  A aw = A(0), ab = A(0);
  if (j < n)
    for (int64_t r = r0 + threadIdx.y; r < r1; r += 8) {
      const A gv = to_acc(g[r * n + j]);
      aw += gv * ((to_acc(x[r * n + j]) - mean[r]) * rstd[r]);
      ab += gv;
    }
  sw[threadIdx.y][threadIdx.x] = aw;
  sb[threadIdx.y][threadIdx.x] = ab;
  __syncthreads();
  if (threadIdx.y == 0 && j < n) {
    for (int k = 1; k < 8; ++k) {
      aw += sw[k][threadIdx.x];
      ab += sb[k][threadIdx.x];
    }
    if (partial_w) partial_w[int64_t(blockIdx.y) * n + j] = aw;
    if (partial_b) partial_b[int64_t(blockIdx.y) * n + j] = ab;
  }
}

// out[j] = sum over chunks of partial[c * n + j].
template <class D>
__global__ void __launch_bounds__(256)
    sum_chunks_kernel(const device_acc_t<D>* partial, int64_t chunks, int64_t n, D* out) {
  using A = device_acc_t<D>;
  for (int64_t j = int64_t(blockIdx.x) * 256 + threadIdx.x; j < n; j += int64_t(gridDim.x) * 256) {
    A s = A(0);
    for (int64_t c = 0; c < chunks; ++c) s += partial[c * n + j];
    out[j] = from_acc<D>(s);
  }
}

// ---- layer_norm2d: x [batch, c, hw], normalised over c at every (sample, position).

// One thread per position: consecutive threads read consecutive positions of a channel (coalesced).
template <class D>
__global__ void layer_norm2d_kernel(const D* x, const D* w, const D* b, D* y, device_acc_t<D>* mean,
                                    device_acc_t<D>* rstd, int64_t batch, int64_t c, int64_t hw, device_acc_t<D> eps) {
  using A = device_acc_t<D>;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < batch * hw; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = e / hw, k = e % hw;
    const D* xp = x + n * c * hw + k;
    A m = A(0);
    for (int64_t ch = 0; ch < c; ++ch) m += to_acc(xp[ch * hw]);
    m /= A(c);
    A v = A(0);
    for (int64_t ch = 0; ch < c; ++ch) {
      const A d = to_acc(xp[ch * hw]) - m;
      v += d * d;
    }
    const A r = A(1) / math::sqrt(v / A(c) + eps);
    D* yp = y + n * c * hw + k;
    for (int64_t ch = 0; ch < c; ++ch) {
      A o = (to_acc(xp[ch * hw]) - m) * r;
      if (w) o *= to_acc(w[ch]);
      if (b) o += to_acc(b[ch]);
      yp[ch * hw] = from_acc<D>(o);
    }
    mean[e] = m;
    rstd[e] = r;
  }
}

// dx, one thread per position (cpu::layer_norm2d_backward's formula).
template <class D>
__global__ void layer_norm2d_input_grad_kernel(const D* g, const D* x, const D* w, const device_acc_t<D>* mean,
                                               const device_acc_t<D>* rstd, int64_t batch, int64_t c, int64_t hw,
                                               D* dx) {
  using A = device_acc_t<D>;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < batch * hw; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = e / hw, k = e % hw, base = n * c * hw + k;
    const A m = mean[e], r = rstd[e];
    A sum_d = A(0), sum_dx = A(0);
    for (int64_t ch = 0; ch < c; ++ch) {
      const A d = to_acc(g[base + ch * hw]) * (w ? to_acc(w[ch]) : A(1));
      sum_d += d;
      sum_dx += d * (to_acc(x[base + ch * hw]) - m) * r;
    }
    const A inv_c = A(1) / A(c);
    for (int64_t ch = 0; ch < c; ++ch) {
      const A xhat = (to_acc(x[base + ch * hw]) - m) * r;
      const A d = to_acc(g[base + ch * hw]) * (w ? to_acc(w[ch]) : A(1));
      dx[base + ch * hw] = from_acc<D>(r * (d - sum_d * inv_c - xhat * sum_dx * inv_c));
    }
  }
}

// dw[ch] = Σ g · xhat, db[ch] = Σ g over samples and positions; one block per channel, fixed order.
template <int kBlock, class D>
__global__ void __launch_bounds__(kBlock)
    layer_norm2d_param_grad_kernel(const D* g, const D* x, const device_acc_t<D>* mean, const device_acc_t<D>* rstd,
                                   int64_t batch, int64_t c, int64_t hw, D* dw, D* db) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for (int64_t ch = blockIdx.x; ch < c; ch += gridDim.x) {
    A sw = A(0), sb = A(0);
    for (int64_t n = 0; n < batch; ++n) {
      const D* gr = g + (n * c + ch) * hw;
      const D* xr = x + (n * c + ch) * hw;
      for (int64_t k = threadIdx.x; k < hw; k += kBlock) {
        const A gv = to_acc(gr[k]);
        sw += gv * (to_acc(xr[k]) - mean[n * hw + k]) * rstd[n * hw + k];
        sb += gv;
      }
    }
    sw = group_reduce<kBlock>(sw, Sum(), A(0), shared);
    sb = group_reduce<kBlock>(sb, Sum(), A(0), shared);
    if (threadIdx.x == 0) {
      if (dw) dw[ch] = from_acc<D>(sw);
      if (db) db[ch] = from_acc<D>(sb);
    }
  }
}

// ---- normalize: y = x / max(||x||_p, eps) along lanes of a contiguous [outer, size, inner] tensor.

template <class A>
__device__ __forceinline__ A pnorm_term(A v, A p) {
  return p == A(2) ? v * v : p == A(1) ? math::abs(v) : math::pow(math::abs(v), p);
}
template <class A>
__device__ __forceinline__ A pnorm_finish(A s, A p) {
  return p == A(2) ? math::sqrt(s) : p == A(1) ? s : math::pow(s, A(1) / p);
}

// One group of kGroup threads per lane (a warp; the block for long lanes), as softmax's kernels.
template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    normalize_kernel(const D* x, D* y, device_acc_t<D>* norms, int64_t lanes, int64_t size, int64_t inner,
                     device_acc_t<D> p, device_acc_t<D> eps) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(lanes, [&](int64_t l, int t) {
    const int64_t base = (l / inner) * size * inner + l % inner;
    A s = A(0);
    for (int64_t k = t; k < size; k += kGroup) s += pnorm_term(to_acc(x[base + k * inner]), p);
    const A norm = pnorm_finish(group_reduce<kGroup>(s, Sum(), A(0), shared), p);
    const A inv = A(1) / math::max(norm, eps);
    for (int64_t k = t; k < size; k += kGroup) y[base + k * inner] = from_acc<D>(to_acc(x[base + k * inner]) * inv);
    if (t == 0) norms[l] = norm;
  });
}

// cpu::normalize_backward's formula.
template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    normalize_backward_kernel(const D* g, const D* x, const device_acc_t<D>* norms, D* dx, int64_t lanes, int64_t size,
                              int64_t inner, device_acc_t<D> p, device_acc_t<D> eps) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(lanes, [&](int64_t l, int t) {
    const int64_t base = (l / inner) * size * inner + l % inner;
    const A norm = norms[l], d = math::max(norm, eps);
    A dot = A(0);
    for (int64_t k = t; k < size; k += kGroup) dot += to_acc(g[base + k * inner]) * to_acc(x[base + k * inner]);
    dot = group_reduce<kGroup>(dot, Sum(), A(0), shared);
    const bool through_norm = norm >= eps && norm > A(0);
    const A c = through_norm ? dot / (d * d) / (p == A(2) ? norm : math::pow(norm, p - A(1))) : A(0);
    for (int64_t k = t; k < size; k += kGroup) {
      const A xk = to_acc(x[base + k * inner]);
      A dn = A(0);
      if (p == A(2)) dn = xk;
      else if (xk != A(0)) dn = (xk > A(0) ? A(1) : A(-1)) * math::pow(math::abs(xk), p - A(1));
      dx[base + k * inner] = from_acc<D>(to_acc(g[base + k * inner]) / d - c * dn);
    }
  });
}

namespace kernels {
template <class T>
void layer_norm(const T* x, const T* w, const T* b, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t rows, int64_t n,
                double eps) {
  using D = device_t<T>;
  constexpr int kBlock = 256;
  const cudaStream_t stream = current_stream();
  const auto e = static_cast<device_acc_t<D>>(eps);
  launch_rows<kBlock>(rows, n, [&](auto group, unsigned grid) {
    layer_norm_kernel<kBlock, decltype(group)::value, D><<<grid, kBlock, 0, stream>>>(
        device_ptr(x), device_ptr(w), device_ptr(b), device_ptr(y), mean, rstd, rows, n, e);
  });
}

template <class T>
void layer_norm_backward(const T* g, const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd, int64_t rows,
                         int64_t n, T* dx, T* dw, T* db) {
  using D = device_t<T>;
  using A = acc_t<T>;
  constexpr int kBlock = 256;
  const cudaStream_t stream = current_stream();
  if (dx)
    launch_rows<kBlock>(rows, n, [&](auto group, unsigned grid) {
      layer_norm_input_grad_kernel<kBlock, decltype(group)::value, D><<<grid, kBlock, 0, stream>>>(
          device_ptr(g), device_ptr(x), device_ptr(w), mean, rstd, rows, n, device_ptr(dx));
    });
  if ((!dw && !db) || n <= 0) return;
  // Chunks of kParamGradRowsPerChunk rows; longer ones when grid.y's 65535 would not hold them.
  constexpr int64_t kMaxChunks = 65535;
  const int64_t chunk_rows = std::max<int64_t>(kParamGradRowsPerChunk, (rows + kMaxChunks - 1) / kMaxChunks);
  const int64_t chunks = std::max<int64_t>(1, (rows + chunk_rows - 1) / chunk_rows);
  // Partial sums [2, chunks, n]: dw's, then db's.
  const Tensor<A> partial = scratch<A>(2 * chunks * n);
  A* pw = dw ? partial.data_ptr() : nullptr;
  A* pb = db ? partial.data_ptr() + chunks * n : nullptr;
  if (rows > 0) {
    const dim3 grid(static_cast<unsigned>((n + 31) / 32), static_cast<unsigned>(chunks)), block(32, 8);
    layer_norm_param_grad_partial_kernel<D><<<grid, block, 0, stream>>>(device_ptr(g), device_ptr(x), mean, rstd, rows,
                                                                        n, chunk_rows, pw, pb);
    MAMCLIP_CUDA_CHECK_LAUNCH();
  } else {
    MAMCLIP_CUDA_CHECK(cudaMemsetAsync(partial.data_ptr(), 0, sizeof(A) * 2 * chunks * n, stream));
  }
  for (auto [sums, out] : {std::pair<const A*, T*>{pw, dw}, std::pair<const A*, T*>{pb, db}}) {
    if (!out) continue;
    sum_chunks_kernel<D><<<grid_for(n, 256), 256, 0, stream>>>(sums, chunks, n, device_ptr(out));
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
}
template <class T>
void layer_norm2d(const T* x, const T* w, const T* b, T* y, acc_t<T>* mean, acc_t<T>* rstd, int64_t batch, int64_t c,
                  int64_t hw, double eps) {
  using D = device_t<T>;
  if (batch * hw == 0) return;
  layer_norm2d_kernel<D><<<grid_for(batch * hw, 256), 256, 0, current_stream()>>>(
      device_ptr(x), device_ptr(w), device_ptr(b), device_ptr(y), mean, rstd, batch, c, hw, static_cast<acc_t<T>>(eps));
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class T>
void layer_norm2d_backward(const T* g, const T* x, const T* w, const acc_t<T>* mean, const acc_t<T>* rstd,
                           int64_t batch, int64_t c, int64_t hw, T* dx, T* dw, T* db) {
  using D = device_t<T>;
  const cudaStream_t stream = current_stream();
  if (dx && batch * hw > 0) {
    layer_norm2d_input_grad_kernel<D><<<grid_for(batch * hw, 256), 256, 0, stream>>>(
        device_ptr(g), device_ptr(x), device_ptr(w), mean, rstd, batch, c, hw, device_ptr(dx));
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
  if ((dw || db) && c > 0) {
    constexpr int kBlock = 256;
    layer_norm2d_param_grad_kernel<kBlock, D><<<static_cast<unsigned>(std::min<int64_t>(c, 65535)), kBlock, 0, stream>>>(
        device_ptr(g), device_ptr(x), mean, rstd, batch, c, hw, device_ptr(dw), device_ptr(db));
    MAMCLIP_CUDA_CHECK_LAUNCH();
  }
}
template <class T>
void normalize(const T* x, T* y, acc_t<T>* norms, int64_t outer, int64_t size, int64_t inner, double p, double eps) {
  using D = device_t<T>;
  using A = acc_t<T>;
  constexpr int kBlock = 256;
  const int64_t lanes = outer * inner;
  const cudaStream_t stream = current_stream();
  launch_rows<kBlock>(lanes, size, [&](auto group, unsigned grid) {
    normalize_kernel<kBlock, decltype(group)::value, D><<<grid, kBlock, 0, stream>>>(
        device_ptr(x), device_ptr(y), norms, lanes, size, inner, static_cast<A>(p), static_cast<A>(eps));
  });
}

template <class T>
void normalize_backward(const T* g, const T* x, const acc_t<T>* norms, T* dx, int64_t outer, int64_t size,
                        int64_t inner, double p, double eps) {
  using D = device_t<T>;
  using A = acc_t<T>;
  constexpr int kBlock = 256;
  const int64_t lanes = outer * inner;
  const cudaStream_t stream = current_stream();
  launch_rows<kBlock>(lanes, size, [&](auto group, unsigned grid) {
    normalize_backward_kernel<kBlock, decltype(group)::value, D><<<grid, kBlock, 0, stream>>>(
        device_ptr(g), device_ptr(x), norms, device_ptr(dx), lanes, size, inner, static_cast<A>(p),
        static_cast<A>(eps));
  });
}
}  // namespace kernels

// ---- registration

template <class T>
void register_norm_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<LayerNormKernel<T>>("layer_norm", dtype_v<T>, DeviceType::cuda, &kernels::layer_norm<T>);
  r.add<LayerNormBackwardKernel<T>>("layer_norm_backward", dtype_v<T>, DeviceType::cuda,
                                    &kernels::layer_norm_backward<T>);
  r.add<NormalizeKernel<T>>("normalize", dtype_v<T>, DeviceType::cuda, &kernels::normalize<T>);
  r.add<NormalizeBackwardKernel<T>>("normalize_backward", dtype_v<T>, DeviceType::cuda, &kernels::normalize_backward<T>);
  r.add<LayerNorm2dKernel<T>>("layer_norm2d", dtype_v<T>, DeviceType::cuda, &kernels::layer_norm2d<T>);
  r.add<LayerNorm2dBackwardKernel<T>>("layer_norm2d_backward", dtype_v<T>, DeviceType::cuda,
                                      &kernels::layer_norm2d_backward<T>);
}

inline void register_norm_kernels() {
  register_norm_kernels_for<float>();
  register_norm_kernels_for<double>();
  register_norm_kernels_for<half>();
  register_norm_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
