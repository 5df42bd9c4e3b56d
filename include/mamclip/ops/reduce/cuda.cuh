#pragma once
// CUDA kernels of the reduce family: "sum" and "mean" (SumRowsKernel);
// "amax", "amin", "max", "min", "var", "logsumexp" (RowStatKernel) and their
// "_backward" (RowStatBackwardKernel).
//
//   kernels  sum_rows_kernel, row_stat_kernel, row_stat_backward_kernel
//            <kBlock, kGroup, D>: one group of kGroup threads per row (a warp,
//            or the block for rows of kLongRow or more)
//   launcher launch_sum_rows(..., stream): launch_rows picks the group by the row length
//   entries  kernels::sum_rows<T>, row_stat<T>, row_stat_backward<T> (current device and stream)
//
// Rows are the contiguous [outer, inner] layout reduce.hpp makes (the reduced
// dims last). Each thread adds a strided subset of its row in device_acc_t
// (float for half and bfloat16), then shuffles combine the partial sums; the
// order differs from the CPU's sequential one, so results agree to rounding.

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/math.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/reduce/reduce.hpp"

namespace mamclip::cuda {

// out[row] = sum(row) / divisor, one group of kGroup threads per row
// (kGroup = 32 or kBlock), grid-stride over rows.
template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    sum_rows_kernel(D* out, const D* rows, int64_t outer, int64_t inner, device_acc_t<D> divisor) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(outer, [&](int64_t row, int t) {
    const D* r = rows + row * inner;
    A acc = A(0);
    for (int64_t i = t; i < inner; i += kGroup) acc += to_acc(r[i]);
    acc = group_reduce<kGroup>(acc, Sum(), A(0), shared);
    if (t == 0) out[row] = from_acc<D>(acc / divisor);
  });
}

template <class D>
void launch_sum_rows(D* out, const D* rows, int64_t outer, int64_t inner, double divisor, cudaStream_t stream) {
  constexpr int kBlock = 256;
  const auto div = static_cast<device_acc_t<D>>(divisor);
  launch_rows<kBlock>(outer, inner, [&](auto group, unsigned grid) {
    sum_rows_kernel<kBlock, decltype(group)::value, D><<<grid, kBlock, 0, stream>>>(out, rows, outer, inner, div);
  });
}

// ---- amax / amin (with positions), var, logsumexp

// Whether v replaces best: strictly larger (kMax) or smaller, or a NaN over a
// number (cpu::greater_or_nan / less_or_nan).
template <bool kMax, class A>
__device__ __forceinline__ bool beats(A v, A best) {
  return (kMax ? v > best : v < best) || (v != v && best == best);
}
template <bool kMax>
struct ExtremeOrNan {
  template <class A>
  __device__ __forceinline__ A operator()(A a, A b) const { return beats<kMax>(b, a) ? b : a; }
};
struct MinIndex {
  __device__ __forceinline__ long long operator()(long long a, long long b) const { return b < a ? b : a; }
};

// Row o's extreme (NaN first) and its first position; every thread of the group gets both.
template <int kGroup, bool kMax, class D>
__device__ __forceinline__ long long row_extreme(const D* r, int64_t inner, int t, device_acc_t<D>* shared,
                                                 long long* shared_index) {
  using A = device_acc_t<D>;
  const A none = kMax ? -math::infinity<A>() : math::infinity<A>();
  const ExtremeOrNan<kMax> pick;
  A best = none;
  long long arg = inner;  // none of this thread's
  for (int64_t i = t; i < inner; i += kGroup) {
    const A v = to_acc(r[i]);
    // Only a strictly better value moves: a thread keeps the first position of its best.
    if (arg == inner || beats<kMax>(v, best)) {
      best = v;
      arg = i;
    }
  }
  const A result = group_reduce<kGroup>(best, pick, none, shared);
  const bool mine = arg < inner && (best == result || (best != best && result != result));
  return group_reduce<kGroup>(mine ? arg : static_cast<long long>(inner), MinIndex(), static_cast<long long>(inner),
                              shared_index);
}

template <int kGroup, class D>
__device__ __forceinline__ device_acc_t<D> row_mean(const D* r, int64_t inner, int t, device_acc_t<D>* shared) {
  using A = device_acc_t<D>;
  A s = A(0);
  for (int64_t i = t; i < inner; i += kGroup) s += to_acc(r[i]);
  return group_reduce<kGroup>(s, Sum(), A(0), shared) / static_cast<A>(inner);
}

template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock) row_stat_kernel(D* out, int64_t* index, const D* rows, int64_t outer,
                                                          int64_t inner, RowStat stat, int64_t correction) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  __shared__ long long shared_index[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(outer, [&](int64_t o, int t) {
    const D* r = rows + o * inner;
    if (stat == RowStat::amax || stat == RowStat::amin) {
      const long long k = stat == RowStat::amax ? row_extreme<kGroup, true>(r, inner, t, shared, shared_index)
                                                : row_extreme<kGroup, false>(r, inner, t, shared, shared_index);
      if (t == 0) {
        out[o] = r[k];
        if (index) index[o] = k;
      }
    } else if (stat == RowStat::var) {
      const A m = row_mean<kGroup>(r, inner, t, shared);
      A ss = A(0);
      for (int64_t i = t; i < inner; i += kGroup) {
        const A d = to_acc(r[i]) - m;
        ss += d * d;
      }
      ss = group_reduce<kGroup>(ss, Sum(), A(0), shared);
      const A dof = static_cast<A>(inner > correction ? inner - correction : 0);
      if (t == 0) out[o] = from_acc<D>(ss / dof);
    } else {  // logsumexp
      A m = -math::infinity<A>();
      for (int64_t i = t; i < inner; i += kGroup) m = math::max(m, to_acc(r[i]));
      m = group_reduce<kGroup>(m, Max(), -math::infinity<A>(), shared);
      if (m == math::infinity<A>() || m == -math::infinity<A>()) m = A(0);
      A l = A(0);
      for (int64_t i = t; i < inner; i += kGroup) l += math::exp(to_acc(r[i]) - m);
      l = group_reduce<kGroup>(l, Sum(), A(0), shared);
      if (t == 0) out[o] = from_acc<D>(m + math::log(l));
    }
  });
}

template <int kBlock, int kGroup, class D>
__global__ void __launch_bounds__(kBlock)
    row_stat_backward_kernel(D* dx, const D* rows, const D* g, const D* y, const int64_t* index, int64_t outer,
                             int64_t inner, RowStat stat, int64_t correction) {
  using A = device_acc_t<D>;
  __shared__ A shared[kBlock / 32];
  __shared__ long long shared_index[kBlock / 32];
  for_each_group_row<kBlock, kGroup>(outer, [&](int64_t o, int t) {
    const D* r = rows + o * inner;
    D* d = dx + o * inner;
    const A go = to_acc(g[o]);
    if (index) {  // max / min along a dim: all of g to the chosen position
      const int64_t k = index[o];
      for (int64_t i = t; i < inner; i += kGroup) d[i] = from_acc<D>(i == k ? go : A(0));
    } else if (stat == RowStat::amax || stat == RowStat::amin) {  // split among the ties
      const A yo = to_acc(y[o]);
      long long ties = 0;
      for (int64_t i = t; i < inner; i += kGroup) ties += to_acc(r[i]) == yo;
      ties = group_reduce<kGroup>(ties, Sum(), 0LL, shared_index);
      const A share = ties ? go / static_cast<A>(ties) : A(0);
      for (int64_t i = t; i < inner; i += kGroup) d[i] = from_acc<D>(to_acc(r[i]) == yo ? share : A(0));
    } else if (stat == RowStat::var) {  // 2 (x - mean) / dof
      const A m = row_mean<kGroup>(r, inner, t, shared);
      const A k = A(2) * go / static_cast<A>(inner > correction ? inner - correction : 0);
      for (int64_t i = t; i < inner; i += kGroup) d[i] = from_acc<D>(k * (to_acc(r[i]) - m));
    } else {  // logsumexp: exp(x - y); nothing for an all -inf row
      const A yo = to_acc(y[o]);
      const bool empty_mass = yo == -math::infinity<A>();
      for (int64_t i = t; i < inner; i += kGroup)
        d[i] = from_acc<D>(empty_mass ? A(0) : go * math::exp(to_acc(r[i]) - yo));
    }
  });
}

namespace kernels {
template <class T>
void sum_rows(T* out, const T* rows, int64_t outer, int64_t inner, double divisor) {
  launch_sum_rows(device_ptr(out), device_ptr(rows), outer, inner, divisor, current_stream());
}

template <class T>
void row_stat(T* out, int64_t* index, const T* rows, int64_t outer, int64_t inner, RowStat stat, int64_t correction) {
  using D = device_t<T>;
  constexpr int kBlock = 256;
  const cudaStream_t stream = current_stream();
  launch_rows<kBlock>(outer, inner, [&](auto group, unsigned grid) {
    row_stat_kernel<kBlock, decltype(group)::value, D>
        <<<grid, kBlock, 0, stream>>>(device_ptr(out), index, device_ptr(rows), outer, inner, stat, correction);
  });
}

template <class T>
void row_stat_backward(T* dx, const T* rows, const T* g, const T* y, const int64_t* index, int64_t outer,
                       int64_t inner, RowStat stat, int64_t correction) {
  using D = device_t<T>;
  constexpr int kBlock = 256;
  const cudaStream_t stream = current_stream();
  launch_rows<kBlock>(outer, inner, [&](auto group, unsigned grid) {
    row_stat_backward_kernel<kBlock, decltype(group)::value, D><<<grid, kBlock, 0, stream>>>(
        device_ptr(dx), device_ptr(rows), device_ptr(g), device_ptr(y), index, outer, inner, stat, correction);
  });
}
}  // namespace kernels

// ---- registration

template <class T>
void register_reduce_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<SumRowsKernel<T>>("sum", dtype_v<T>, DeviceType::cuda, &kernels::sum_rows<T>);
  r.add<SumRowsKernel<T>>("mean", dtype_v<T>, DeviceType::cuda, &kernels::sum_rows<T>);
  for (const char* op : {"amax", "amin", "max", "min", "var", "logsumexp"}) {
    r.add<RowStatKernel<T>>(op, dtype_v<T>, DeviceType::cuda, &kernels::row_stat<T>);
    r.add<RowStatBackwardKernel<T>>(::mamclip::detail::str_cat(op, "_backward"), dtype_v<T>, DeviceType::cuda,
                                    &kernels::row_stat_backward<T>);
  }
}

inline void register_reduce_kernels() {
  register_reduce_kernels_for<float>();
  register_reduce_kernels_for<double>();
  register_reduce_kernels_for<half>();
  register_reduce_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
