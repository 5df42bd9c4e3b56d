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
