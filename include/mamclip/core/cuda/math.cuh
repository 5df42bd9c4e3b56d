#pragma once
// Device math in float or double, one name per function (CUDA's expf / exp,
// ...), and the reductions kernels share: sums and maxima over a warp or a
// group of warps.
//
//   math::exp, log, sqrt, tanh, erf, pow, abs, max, infinity<A>()   float and double
//   group_reduce<kGroup>(v, op, identity, shared)
//       the reduction of v over kGroup consecutive threads (32: one warp, no
//       shared memory; a multiple of 32 up to the whole block: through
//       `shared`, kGroup / 32 elements, with __syncthreads, so every thread
//       of the block must call it); every thread of the group gets the result
//   Sum, Max   the operations (Max ignores NaN, as fmax does)
//   for_each_group_row<kBlock, kGroup>(rows, f)   rows handed to groups of threads
//   launch_rows<kBlock>(rows, size, launch)        host side: picks kGroup by the row length

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/types.cuh"

namespace mamclip::cuda {

namespace math {
__device__ __forceinline__ float exp(float x) { return ::expf(x); }
__device__ __forceinline__ double exp(double x) { return ::exp(x); }
__device__ __forceinline__ float log(float x) { return ::logf(x); }
__device__ __forceinline__ double log(double x) { return ::log(x); }
__device__ __forceinline__ float sqrt(float x) { return ::sqrtf(x); }
__device__ __forceinline__ double sqrt(double x) { return ::sqrt(x); }
__device__ __forceinline__ float tanh(float x) { return ::tanhf(x); }
__device__ __forceinline__ double tanh(double x) { return ::tanh(x); }
__device__ __forceinline__ float erf(float x) { return ::erff(x); }
__device__ __forceinline__ double erf(double x) { return ::erf(x); }
__device__ __forceinline__ float pow(float x, float y) { return ::powf(x, y); }
__device__ __forceinline__ double pow(double x, double y) { return ::pow(x, y); }
__device__ __forceinline__ float abs(float x) { return ::fabsf(x); }
__device__ __forceinline__ double abs(double x) { return ::fabs(x); }
__device__ __forceinline__ float max(float x, float y) { return ::fmaxf(x, y); }
__device__ __forceinline__ double max(double x, double y) { return ::fmax(x, y); }
// +inf (std::numeric_limits is host-only in device code).
template <class A>
__device__ __forceinline__ A infinity() {
  if constexpr (sizeof(A) == 4) return __int_as_float(0x7f800000);
  else return __longlong_as_double(0x7ff0000000000000LL);
}
}  // namespace math

struct Sum {
  template <class A>
  __device__ __forceinline__ A operator()(A a, A b) const { return a + b; }
};
struct Max {
  template <class A>
  __device__ __forceinline__ A operator()(A a, A b) const { return math::max(a, b); }
};

// Butterfly over the warp: every lane ends with the reduction of all 32.
template <class A, class Op>
__device__ __forceinline__ A warp_reduce(A v, Op op) {
#pragma unroll
  for (int mask = 16; mask > 0; mask /= 2) v = op(v, __shfl_xor_sync(0xffffffffu, v, mask));
  return v;
}

template <int kGroup, class A, class Op>
__device__ __forceinline__ A group_reduce(A v, Op op, A identity, A* shared) {
  static_assert(kGroup % 32 == 0 && kGroup / 32 <= 32, "a group is 1 to 32 whole warps");
  v = warp_reduce(v, op);
  if constexpr (kGroup == 32) {
    return v;
  } else {
    const int lane = threadIdx.x % 32, warp = (threadIdx.x % kGroup) / 32, first = (threadIdx.x / kGroup) * (kGroup / 32);
    if (lane == 0) shared[first + warp] = v;
    __syncthreads();
    v = warp_reduce(lane < kGroup / 32 ? shared[first + lane] : identity, op);
    __syncthreads();  // shared may be written again by the caller's next reduction
    return v;
  }
}

// Calls f(row, t) for the rows [0, rows) this thread's group of kGroup
// threads owns (kBlock / kGroup rows per block, grid-stride), t = the
// thread's index in its group. With kGroup == kBlock every thread of a block
// gets the same rows, so f may call group_reduce<kBlock>.
template <int kBlock, int kGroup, class F>
__device__ __forceinline__ void for_each_group_row(int64_t rows, F&& f) {
  static_assert(kBlock % kGroup == 0, "groups tile the block");
  constexpr int kRowsPerBlock = kBlock / kGroup;
  const int t = threadIdx.x % kGroup;
  const int64_t stride = int64_t(gridDim.x) * kRowsPerBlock;
  for (int64_t r = int64_t(blockIdx.x) * kRowsPerBlock + threadIdx.x / kGroup; r < rows; r += stride) f(r, t);
}

// Rows of this many elements or more get a whole block each, shorter ones a warp.
inline constexpr int64_t kLongRow = 1024;

// Launches a row kernel (for_each_group_row) over `rows` rows of `size`
// elements: launch(group, grid) must run kernel<kBlock, decltype(group)::value>
// with `grid` blocks of kBlock threads; group is std::integral_constant<int,
// 32> or <int, kBlock>. Nothing runs when rows <= 0.
template <int kBlock, class Launch>
void launch_rows(int64_t rows, int64_t size, Launch&& launch) {
  if (rows <= 0) return;
  if (size >= kLongRow)
    launch(std::integral_constant<int, kBlock>{}, grid_for(rows * kBlock, kBlock));
  else
    launch(std::integral_constant<int, 32>{}, grid_for(rows * 32, kBlock));
  MAMCLIP_CUDA_CHECK_LAUNCH();
}

}  // namespace mamclip::cuda
