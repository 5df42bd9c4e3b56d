#pragma once
// CUDA kernels of the class-index losses: "nll_loss" / "cross_entropy"
// (ClassLossKernel) and their "_backward" (ClassLossBackwardKernel), on
// log-probabilities seen as lanes [outer, size, inner] along the class dim.
// (clip_loss's kernels are in ops/loss/cuda.cuh.)
//
//   class_loss_kernel           a warp per lane: -(1 - eps) lp[t] - (eps / C) sum lp,
//                               0 where the target is ignore_index
//   class_loss_backward_kernel  a thread per element: scale * (exp(lp) - q) for
//                               logits, -scale * q for log-probabilities
//
// The formulas of ops/loss/cpu.hpp in device_acc_t; cross_entropy's
// log_softmax and the reductions are the softmax and sum kernels'.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/loss/loss.hpp"

namespace mamclip::cuda {

template <int kBlock, class D>
__global__ void __launch_bounds__(kBlock)
    class_loss_kernel(const D* logp, const int64_t* target, int64_t lanes, int64_t size, int64_t inner,
                      int64_t ignore_index, device_acc_t<D> keep, device_acc_t<D> spread, bool smoothing,
                      device_acc_t<D>* loss) {
  using A = device_acc_t<D>;
  constexpr int kWarps = kBlock / 32;
  const int lane = threadIdx.x % 32;
  const int64_t stride = int64_t(gridDim.x) * kWarps;
  for (int64_t s = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; s < lanes; s += stride) {
    const int64_t base = (s / inner) * size * inner + s % inner, t = target[s];
    A all = A(0);
    if (smoothing && t != ignore_index) {
      for (int64_t c = lane; c < size; c += 32) all += to_acc(logp[base + c * inner]);
      all = warp_reduce(all, Sum());
    }
    if (lane == 0) loss[s] = t == ignore_index ? A(0) : -keep * to_acc(logp[base + t * inner]) - spread * all;
  }
}

template <class D>
__global__ void class_loss_backward_kernel(const D* logp, const int64_t* target, int64_t outer, int64_t size,
                                           int64_t inner, int64_t ignore_index, device_acc_t<D> keep,
                                           device_acc_t<D> spread, const device_acc_t<D>* scale, bool scale_per_lane,
                                           device_acc_t<D> divisor, bool wrt_logits, D* dx) {
  using A = device_acc_t<D>;
  const int64_t total = outer * size * inner;
  for (int64_t e = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; e < total; e += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = e % inner, c = (e / inner) % size, o = e / (inner * size);
    const int64_t s = o * inner + i, t = target[s];
    A v = A(0);
    if (t != ignore_index) {
      const A q = spread + (c == t ? keep : A(0));
      const A sc = scale_per_lane ? scale[s] : scale[0] / divisor;
      v = sc * ((wrt_logits ? math::exp(to_acc(logp[e])) : A(0)) - q);
    }
    dx[e] = from_acc<D>(v);
  }
}

namespace kernels {
template <class T>
void class_loss(const T* logp, const int64_t* target, int64_t outer, int64_t size, int64_t inner,
                int64_t ignore_index, double smoothing, acc_t<T>* loss) {
  using D = device_t<T>;
  using A = device_acc_t<D>;
  constexpr int kBlock = 256;
  const int64_t lanes = outer * inner;
  if (lanes <= 0) return;
  const A keep = static_cast<A>(1 - smoothing), spread = static_cast<A>(smoothing / static_cast<double>(size));
  class_loss_kernel<kBlock, D><<<grid_for(lanes * 32, kBlock), kBlock, 0, current_stream()>>>(
      device_ptr(logp), target, lanes, size, inner, ignore_index, keep, spread, smoothing != 0, loss);
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

template <class T>
void class_loss_backward(const T* logp, const int64_t* target, int64_t outer, int64_t size, int64_t inner,
                         int64_t ignore_index, double smoothing, const acc_t<T>* scale, bool scale_per_lane,
                         double divisor, bool wrt_logits, T* dx) {
  using D = device_t<T>;
  using A = device_acc_t<D>;
  constexpr int kBlock = 256;
  const int64_t total = outer * size * inner;
  if (total <= 0) return;
  const A keep = static_cast<A>(1 - smoothing), spread = static_cast<A>(smoothing / static_cast<double>(size));
  class_loss_backward_kernel<D><<<grid_for(total, kBlock), kBlock, 0, current_stream()>>>(
      device_ptr(logp), target, outer, size, inner, ignore_index, keep, spread, scale, scale_per_lane,
      static_cast<A>(divisor), wrt_logits, device_ptr(dx));
  MAMCLIP_CUDA_CHECK_LAUNCH();
}
}  // namespace kernels

// ---- registration

template <class T>
void register_class_loss_kernels_for() {
  auto& r = KernelRegistry::get();
  for (const char* op : {"nll_loss", "cross_entropy"}) {
    r.add<ClassLossKernel<T>>(op, dtype_v<T>, DeviceType::cuda, &kernels::class_loss<T>);
    r.add<ClassLossBackwardKernel<T>>(::mamclip::detail::str_cat(op, "_backward"), dtype_v<T>, DeviceType::cuda,
                                      &kernels::class_loss_backward<T>);
  }
}

inline void register_class_loss_kernels() {
  register_class_loss_kernels_for<float>();
  register_class_loss_kernels_for<double>();
  register_class_loss_kernels_for<half>();
  register_class_loss_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
