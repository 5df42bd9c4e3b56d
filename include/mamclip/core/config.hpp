#pragma once
// Build-wide configuration: version and the host/device function qualifier.

#define MAMCLIP_VERSION_MAJOR 0
#define MAMCLIP_VERSION_MINOR 1
#define MAMCLIP_VERSION_PATCH 0

// Functions whose math is shared by CPU code and CUDA kernels (tile math, RNG)
// are marked MAMCLIP_HOST_DEVICE; without nvcc they are plain inline functions,
// so the CPU build never sees a CUDA keyword.
#if defined(__CUDACC__)
#define MAMCLIP_HOST_DEVICE __forceinline__ __host__ __device__
#else
#define MAMCLIP_HOST_DEVICE inline
#endif

// x86-64 AVX2+FMA code paths (the float GEMM, transposing copies): compiled
// through function attributes whatever -march says, and taken only when
// cpu_has_avx2_fma() is true at run time. MAMCLIP_NO_AVX2 turns them off.
// The float GEMM also has an AVX-512 kernel (cpu_has_avx512f();
// MAMCLIP_NO_AVX512 turns it off, MAMCLIP_NO_AVX2 both).
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__)) && \
    !defined(MAMCLIP_NO_AVX2)
#define MAMCLIP_AVX2 1
#define MAMCLIP_AVX2_TARGET __attribute__((target("avx2,fma")))
#if !defined(MAMCLIP_NO_AVX512)
#define MAMCLIP_AVX512 1
#define MAMCLIP_AVX512_TARGET __attribute__((target("avx512f,avx2,fma")))
#endif
#endif

// Loop-unrolling hint for CPU kernels. nvcc's front end, which also reads the
// CPU headers in .cu files, does not know the pragma and would warn.
#define MAMCLIP_PRAGMA(x) _Pragma(#x)
#if (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define MAMCLIP_UNROLL(n) MAMCLIP_PRAGMA(GCC unroll n)
#else
#define MAMCLIP_UNROLL(n)
#endif

// Full unrolling of a constant-trip loop in host/device code (the kernels'
// register arrays need it); the host compiler decides on its own.
#if defined(__CUDACC__)
#define MAMCLIP_HD_UNROLL MAMCLIP_PRAGMA(unroll)
#else
#define MAMCLIP_HD_UNROLL
#endif

namespace mamclip {
inline bool cpu_has_avx2_fma() {
#ifdef MAMCLIP_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}
// True when the CPU and the operating system run AVX-512F code (GCC's and
// Clang's runtime check includes the OS's saving of the zmm state).
inline bool cpu_has_avx512f() {
#ifdef MAMCLIP_AVX512
  static const bool ok = cpu_has_avx2_fma() && __builtin_cpu_supports("avx512f");
  return ok;
#else
  return false;
#endif
}
}  // namespace mamclip
