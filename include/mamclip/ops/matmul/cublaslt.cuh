#pragma once
// linear's GEMMs with cuBLASLt epilogues, for float, half and bfloat16:
//
//   "linear_bias"         y = x · wᵀ + b       (CUBLASLT_EPILOGUE_BIAS)
//   "linear_weight_grad"  dw = dyᵀ · x, db = Σ_rows dy   (CUBLASLT_EPILOGUE_BGRADB)
//
// Each replaces two passes over the [rows, out] output by none: the bias is
// added in the GEMM's epilogue instead of being copied into y first, and the
// bias gradient is reduced while dy is read for dw. Kernels return false when
// cuBLASLt offers no algorithm for the layout (linear then takes the plain
// path: bias copy + "gemm", and sum for db).
//
// Column-major view (cuBLASLt's): a row-major [r, c] matrix with leading dim
// ld is a column-major [c, r] one. So
//   forward   yᶜ [out, rows] = op_T(wᶜ [in, out]) · xᶜ [in, rows] + b (b along D's rows: out)
//   dw        dwᶜ [in, out]  = xᶜ [in, rows] · op_T(dyᶜ [out, rows]); BGRADB sums B = op_T(dyᶜ) over k = rows
//
// Not used: the GELU epilogues. cuBLASLt's GELU is the tanh approximation
// (PyTorch fuses it only for gelu(approximate='tanh')); BERT and ConvNeXt use
// the exact erf GELU, which these would not reproduce.
//
// Algorithms come from cuBLASLt's heuristics once per (shape, leading dims,
// pointer alignment, dtype, TF32 setting, device) and are cached. Workspace
// comes from the caching allocator per call. Handles: one per (thread,
// device), pooled (handle_pool.cuh); cuBLASLt handles are not bound to a
// stream, the stream is an argument of each call.

#include <cublasLt.h>

#include <array>
#include <cstdint>
#include <initializer_list>
#include <map>
#include <mutex>
#include <optional>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/handle_pool.cuh"
#include "mamclip/core/cuda/settings.hpp"
#include "mamclip/core/cuda/tensor_data.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/ops/matmul/matmul.hpp"

namespace mamclip::cuda {

namespace cublaslt {

template <class T> struct Types;
template <> struct Types<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  static cublasComputeType_t compute() { return allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F; }
};
template <> struct Types<half> {
  static constexpr cudaDataType_t data = CUDA_R_16F;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_32F; }
};
template <> struct Types<bfloat16> {
  static constexpr cudaDataType_t data = CUDA_R_16BF;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_32F; }
};

// The calling thread's cuBLASLt handle for the current device.
inline cublasLtHandle_t handle() {
  return detail::thread_handle<cublasLtHandle_t>("cublaslt_handle", [] {
    cublasLtHandle_t created = nullptr;
    MAMCLIP_CUBLAS_CHECK(cublasLtCreate(&created));
    return created;
  });
}

// Largest power of two (<= 256) dividing the address: what heuristics may assume.
inline uint32_t alignment_of(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  uint32_t align = 256;
  while (align > 1 && a % align != 0) align /= 2;
  return align;
}

// RAII for the three descriptor kinds.
struct MatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  MatmulDesc(cublasComputeType_t compute, cudaDataType_t scale) {
    MAMCLIP_CUBLAS_CHECK(cublasLtMatmulDescCreate(&d, compute, scale));
  }
  ~MatmulDesc() { cublasLtMatmulDescDestroy(d); }
  MatmulDesc(const MatmulDesc&) = delete;
  MatmulDesc& operator=(const MatmulDesc&) = delete;
  template <class V>
  void set(cublasLtMatmulDescAttributes_t attr, const V& value) {
    MAMCLIP_CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(d, attr, &value, sizeof(V)));
  }
};

struct Layout {
  cublasLtMatrixLayout_t d = nullptr;
  // A column-major rows x cols matrix with leading dim ld.
  Layout(cudaDataType_t type, int64_t rows, int64_t cols, int64_t ld) {
    MAMCLIP_CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&d, type, static_cast<uint64_t>(rows), static_cast<uint64_t>(cols), ld));
  }
  ~Layout() { cublasLtMatrixLayoutDestroy(d); }
  Layout(const Layout&) = delete;
  Layout& operator=(const Layout&) = delete;
};

struct Preference {
  cublasLtMatmulPreference_t d = nullptr;
  Preference() { MAMCLIP_CUBLAS_CHECK(cublasLtMatmulPreferenceCreate(&d)); }
  ~Preference() { cublasLtMatmulPreferenceDestroy(d); }
  Preference(const Preference&) = delete;
  Preference& operator=(const Preference&) = delete;
  template <class V>
  void set(cublasLtMatmulPreferenceAttributes_t attr, const V& value) {
    MAMCLIP_CUBLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(d, attr, &value, sizeof(V)));
  }
};

// Workspace cuBLASLt may ask for (NVIDIA recommends 32 MiB on Hopper).
constexpr size_t kMaxWorkspace = size_t(32) << 20;

// One GEMM D = op_a(A) · op_b(B) with an epilogue, column-major, no batch:
// m x n output, inner size k. Returns false when no algorithm fits.
struct Problem {
  bool trans_a, trans_b;
  int64_t m, n, k, lda, ldb, ldd;
  cublasLtEpilogue_t epilogue;
};

template <class T>
bool run(const Problem& p, const T* a, const T* b, T* d, void* bias, cudaStream_t stream) {
  using Tr = Types<T>;
  const cublasComputeType_t compute = Tr::compute();
  MatmulDesc desc(compute, CUDA_R_32F);
  const cublasOperation_t op_a = p.trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, op_b = p.trans_b ? CUBLAS_OP_T : CUBLAS_OP_N;
  desc.set(CUBLASLT_MATMUL_DESC_TRANSA, op_a);
  desc.set(CUBLASLT_MATMUL_DESC_TRANSB, op_b);
  desc.set(CUBLASLT_MATMUL_DESC_EPILOGUE, p.epilogue);
  desc.set(CUBLASLT_MATMUL_DESC_BIAS_POINTER, bias);
  // Stored shapes: op(A) is m x k, so A is k x m when transposed; likewise B.
  Layout la(Tr::data, p.trans_a ? p.k : p.m, p.trans_a ? p.m : p.k, p.lda);
  Layout lb(Tr::data, p.trans_b ? p.n : p.k, p.trans_b ? p.k : p.n, p.ldb);
  Layout ld(Tr::data, p.m, p.n, p.ldd);

  const uint32_t align_a = alignment_of(a), align_b = alignment_of(b), align_d = alignment_of(d);
  using Key = std::array<int64_t, 16>;
  const Key key{p.trans_a, p.trans_b, p.m, p.n, p.k, p.lda, p.ldb, p.ldd, static_cast<int64_t>(p.epilogue),
                align_a, align_b, align_d, alignment_of(bias), static_cast<int64_t>(dtype_v<T>),
                static_cast<int64_t>(compute), current_device()};
  static std::mutex mutex;
  static std::map<Key, std::optional<cublasLtMatmulHeuristicResult_t>> cache;
  std::optional<cublasLtMatmulHeuristicResult_t> chosen;
  bool known = false;
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (auto it = cache.find(key); it != cache.end()) {
      chosen = it->second;
      known = true;
    }
  }
  if (!known) {
    Preference pref;
    pref.set(CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, kMaxWorkspace);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, align_a);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, align_b);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, align_d);
    pref.set(CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, align_d);
    cublasLtMatmulHeuristicResult_t result{};
    int found = 0;
    const cublasStatus_t status =
        cublasLtMatmulAlgoGetHeuristic(handle(), desc.d, la.d, lb.d, ld.d, ld.d, pref.d, 1, &result, &found);
    // Any failure to find an algorithm declines (the caller runs the cuBLAS GEMM and separate
    // bias / GELU kernels): NOT_SUPPORTED for an epilogue or layout without one, and INVALID_VALUE,
    // which some versions answer for an operand with a single row or column.
    if (status == CUBLAS_STATUS_SUCCESS && found > 0 && result.state == CUBLAS_STATUS_SUCCESS) chosen = result;
    std::lock_guard<std::mutex> lock(mutex);
    cache.emplace(key, chosen);
  }
  if (!chosen) return false;
  Tensor<uint8_t> workspace = scratch<uint8_t>(static_cast<int64_t>(chosen->workspaceSize));
  const float one = 1.0f, zero = 0.0f;
  MAMCLIP_CUBLAS_CHECK(cublasLtMatmul(handle(), desc.d, &one, a, la.d, b, lb.d, &zero, d, ld.d, d, ld.d, &chosen->algo,
                                      workspace.data_ptr(), chosen->workspaceSize, stream));
  return true;
}

inline bool fits_int32(std::initializer_list<int64_t> values) {
  for (int64_t v : values)
    if (v < 1 || v > INT32_MAX) return false;
  return true;
}

// y [rows, out] (row-major, ld out) = x [rows, in] (ld ldx) · wᵀ (w [out, in], ld in) + bias [out].
template <class T>
bool linear_bias(int64_t rows, int64_t out_f, int64_t in_f, const T* x, int64_t ldx, const T* w, const T* bias, T* y,
                 cudaStream_t stream) {
  if (!fits_int32({rows, out_f, in_f, ldx})) return false;
  const Problem p{/*trans_a=*/true, /*trans_b=*/false, /*m=*/out_f, /*n=*/rows, /*k=*/in_f,
                  /*lda=*/in_f,     /*ldb=*/ldx,       /*ldd=*/out_f, CUBLASLT_EPILOGUE_BIAS};
  return run<T>(p, w, x, y, const_cast<T*>(bias), stream);
}

// dw [out, in] (ld in) = dyᵀ · x and db [out] = Σ_rows dy, for x [rows, in] (ld ldx), dy [rows, out] (ld ldg).
template <class T>
bool linear_weight_grad(int64_t rows, int64_t out_f, int64_t in_f, const T* x, int64_t ldx, const T* dy, int64_t ldg,
                        T* dw, T* db, cudaStream_t stream) {
  if (!fits_int32({rows, out_f, in_f, ldx, ldg})) return false;
  const Problem p{/*trans_a=*/false, /*trans_b=*/true, /*m=*/in_f, /*n=*/out_f, /*k=*/rows,
                  /*lda=*/ldx,       /*ldb=*/ldg,      /*ldd=*/in_f, CUBLASLT_EPILOGUE_BGRADB};
  return run<T>(p, x, dy, dw, db, stream);
}

}  // namespace cublaslt

namespace kernels {
template <class T>
bool linear_bias(int64_t rows, int64_t out_f, int64_t in_f, const T* x, int64_t ldx, const T* w, const T* bias, T* y) {
  return cublaslt::linear_bias<T>(rows, out_f, in_f, x, ldx, w, bias, y, current_stream());
}
template <class T>
bool linear_weight_grad(int64_t rows, int64_t out_f, int64_t in_f, const T* x, int64_t ldx, const T* dy, int64_t ldg,
                        T* dw, T* db) {
  return cublaslt::linear_weight_grad<T>(rows, out_f, in_f, x, ldx, dy, ldg, dw, db, current_stream());
}
}  // namespace kernels

template <class T>
void register_linear_kernels_for() {
  auto& r = KernelRegistry::get();
  r.add<LinearBiasKernel<T>>("linear_bias", dtype_v<T>, DeviceType::cuda, &kernels::linear_bias<T>);
  r.add<LinearWeightGradKernel<T>>("linear_weight_grad", dtype_v<T>, DeviceType::cuda,
                                   &kernels::linear_weight_grad<T>);
}

// double keeps the plain path: it exists for checks, not speed.
inline void register_linear_kernels() {
  register_linear_kernels_for<float>();
  register_linear_kernels_for<half>();
  register_linear_kernels_for<bfloat16>();
}

}  // namespace mamclip::cuda
