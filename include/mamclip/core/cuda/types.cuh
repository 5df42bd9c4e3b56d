#pragma once
// Host element types as device types, and what kernels share: conversion to
// the accumulation type, 16-byte packs and grid sizes.
//
// Host code holds Eigen::half / Eigen::bfloat16; kernels see __half /
// __nv_bfloat16. Both are the same 16 bits (IEEE binary16; the upper half of
// a binary32), so pointers are reinterpreted, never converted.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "mamclip/core/dtype.hpp"

namespace mamclip::cuda {

static_assert(sizeof(Eigen::bfloat16) == sizeof(__nv_bfloat16) && alignof(Eigen::bfloat16) == alignof(__nv_bfloat16),
              "Eigen::bfloat16 and __nv_bfloat16 must share one layout");
static_assert(sizeof(Eigen::half) == sizeof(__half) && alignof(Eigen::half) == alignof(__half),
              "Eigen::half and __half must share one layout");

template <class T> struct device_type { using type = T; };
template <> struct device_type<bfloat16> { using type = __nv_bfloat16; };
template <> struct device_type<half> { using type = __half; };
template <class T> using device_t = typename device_type<T>::type;

template <class T>
device_t<T>* device_ptr(T* p) { return reinterpret_cast<device_t<T>*>(p); }
template <class T>
const device_t<T>* device_ptr(const T* p) { return reinterpret_cast<const device_t<T>*>(p); }

// Device accumulation type: float for the 16-bit types, as acc_t on the host.
template <class D> struct device_acc { using type = D; };
template <> struct device_acc<__nv_bfloat16> { using type = float; };
template <> struct device_acc<__half> { using type = float; };
template <class D> using device_acc_t = typename device_acc<D>::type;

template <class D>
__device__ __forceinline__ device_acc_t<D> to_acc(D x) {
  if constexpr (std::is_same_v<D, __nv_bfloat16>) return __bfloat162float(x);
  else if constexpr (std::is_same_v<D, __half>) return __half2float(x);
  else return x;
}
// Round to nearest even, as Eigen's conversions do, so results match the CPU bit for bit.
template <class D>
__device__ __forceinline__ D from_acc(device_acc_t<D> x) {
  if constexpr (std::is_same_v<D, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else if constexpr (std::is_same_v<D, __half>) return __float2half_rn(x);
  else return x;
}

// kVec elements moved with one 16-byte (or narrower) load or store.
template <class D, int kVec>
struct alignas(sizeof(D) * kVec) Pack {
  D v[kVec];
};

// Elements per 16-byte access, and whether all pointers allow it.
template <class D>
inline constexpr int kVec16 = 16 / sizeof(D) > 0 ? static_cast<int>(16 / sizeof(D)) : 1;
inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks for a grid-stride loop over `work` items: enough to fill any GPU,
// few enough that each thread loops when work is large.
inline unsigned grid_for(int64_t work, int block) {
  constexpr int64_t kMaxBlocks = int64_t(1) << 16;
  return static_cast<unsigned>(std::clamp<int64_t>((work + block - 1) / block, 1, kMaxBlocks));
}

}  // namespace mamclip::cuda
