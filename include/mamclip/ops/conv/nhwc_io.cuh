#pragma once
// Loads and stores of the channels-last depthwise kernels (the Io of
// ops/conv/depthwise_nhwc.hpp): V elements of float, __half or
// __nv_bfloat16 as V floats, with one 16-byte or 32-bit access where the
// launcher checked that C and the pointers allow it. Host code too (a host
// compiler with the CUDA include path), so the tests check them on the CPU.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "mamclip/core/config.hpp"
#include "mamclip/core/cuda/types.cuh"

namespace mamclip::cuda::conv_kernels {

MAMCLIP_HOST_DEVICE float float_from_bits(uint32_t u) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
#endif
}
// The bits at p as a U (on the host through memcpy: strict aliasing).
template <class U>
MAMCLIP_HOST_DEVICE U bits_at(const void* p) {
#ifdef __CUDA_ARCH__
  return *static_cast<const U*>(p);
#else
  U u;
  std::memcpy(&u, p, sizeof u);
  return u;
#endif
}
// The two bfloat16 of a 32-bit word (low half first) as floats: a bfloat16 is the top half of
// a float, so a shift and a mask (the generic conversion took three instructions per pair).
MAMCLIP_HOST_DEVICE void bf16_pair_to_float(uint32_t u, float* out) {
  out[0] = float_from_bits(u << 16);
  out[1] = float_from_bits(u & 0xffff0000u);
}
MAMCLIP_HOST_DEVICE float nhwc_to_float(float x) { return x; }
MAMCLIP_HOST_DEVICE float nhwc_to_float(__half x) { return __half2float(x); }
MAMCLIP_HOST_DEVICE float nhwc_to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <class D>
MAMCLIP_HOST_DEVICE D nhwc_from_float(float x) {
  if constexpr (std::is_same_v<D, __half>) return __float2half_rn(x);
  else if constexpr (std::is_same_v<D, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return x;
}

// The strips' loads and stores: one 16-byte access for V · sizeof(D) = 16
// (the launcher checked the alignment), one 32-bit access for a 16-bit pair,
// element by element otherwise. Elements go through Pack (not a word's bytes
// reread as D, which strict aliasing lets a host compiler drop).
struct NhwcIo {
  template <int V, class D>
  MAMCLIP_HOST_DEVICE static void load(const D* p, float* out) {
    if constexpr (V * sizeof(D) == 16 && std::is_same_v<D, __nv_bfloat16>) {
      const uint4 u = bits_at<uint4>(p);
      bf16_pair_to_float(u.x, out);
      bf16_pair_to_float(u.y, out + 2);
      bf16_pair_to_float(u.z, out + 4);
      bf16_pair_to_float(u.w, out + 6);
    } else if constexpr (V == 2 && std::is_same_v<D, __nv_bfloat16>) {
      bf16_pair_to_float(bits_at<uint32_t>(p), out);
    } else if constexpr (V == 2 && std::is_same_v<D, __half>) {
      const float2 f = __half22float2(bits_at<__half2>(p));
      out[0] = f.x;
      out[1] = f.y;
    } else if constexpr (V * sizeof(D) == 16) {
      const Pack<D, V> pack = *reinterpret_cast<const Pack<D, V>*>(p);
#pragma unroll
      for (int v = 0; v < V; ++v) out[v] = nhwc_to_float(pack.v[v]);
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) out[v] = nhwc_to_float(p[v]);
    }
  }
  template <int V, class D>
  MAMCLIP_HOST_DEVICE static void store(D* p, const float* in) {
    if constexpr (V * sizeof(D) == 16 || (V == 2 && sizeof(D) == 2)) {
      Pack<D, V> pack;
#pragma unroll
      for (int v = 0; v < V; ++v) pack.v[v] = nhwc_from_float<D>(in[v]);
      *reinterpret_cast<Pack<D, V>*>(p) = pack;
    } else {
#pragma unroll
      for (int v = 0; v < V; ++v) p[v] = nhwc_from_float<D>(in[v]);
    }
  }
};

}  // namespace mamclip::cuda::conv_kernels
