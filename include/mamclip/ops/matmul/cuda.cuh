#pragma once
// CUDA "gemm" (GemmKernel, ops/matmul/matmul.hpp) through cuBLAS, for float,
// double, half and bfloat16.
//
//   launcher launch_gemm<T>(..., stream): checks sizes, calls
//            cublasGemmStridedBatchedEx, or scales C when k == 0
//   entry    kernels::gemm<T>: the registered function (current device and stream)
//
// GemmKernel is row-major: C[p] (m×n, ldc) = alpha·op(A[p])·op(B[p]) + beta·C[p].
// A row-major matrix read column-major is its transpose, so cuBLAS computes
// C[p]ᵀ (n×m, ldc) = op(B[p])ᵀ·op(A[p])ᵀ: operands swapped, m and n swapped,
// each operand's transpose flag kept as given.
//
// Precision: float, and half / bfloat16 inputs and outputs, accumulate in
// float (CUBLAS_COMPUTE_32F); float may use TF32 tensor cores when
// cuda::allow_tf32() (core/cuda/settings.hpp); double computes in double.

#include <climits>

#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/cublas.cuh"
#include "mamclip/core/cuda/device.cuh"
#include "mamclip/core/cuda/settings.hpp"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/core/dispatch.hpp"
#include "mamclip/ops/matmul/matmul.hpp"

namespace mamclip::cuda {

template <class T> struct cublas_traits;
template <> struct cublas_traits<float> {
  static constexpr cudaDataType_t data = CUDA_R_32F;
  using scale = float;
  static cublasComputeType_t compute() { return allow_tf32() ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F; }
};
template <> struct cublas_traits<double> {
  static constexpr cudaDataType_t data = CUDA_R_64F;
  using scale = double;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_64F; }
};
template <> struct cublas_traits<half> {
  static constexpr cudaDataType_t data = CUDA_R_16F;
  using scale = float;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_32F; }
};
template <> struct cublas_traits<bfloat16> {
  static constexpr cudaDataType_t data = CUDA_R_16BF;
  using scale = float;
  static cublasComputeType_t compute() { return CUBLAS_COMPUTE_32F; }
};

// C[p] = beta·C[p] over the m×n matrices of the batch (the k == 0 product,
// which cuBLAS does not define). beta == 0 writes zeros: C may hold NaN.
template <int kBlock, class D>
__global__ void __launch_bounds__(kBlock)
    scale_matrices_kernel(D* c, int64_t m, int64_t n, int64_t ldc, int64_t stride_c, int64_t batch,
                          device_acc_t<D> beta) {
  using A = device_acc_t<D>;
  const int64_t total = batch * m * n;
  const int64_t step = int64_t(gridDim.x) * kBlock;
  for (int64_t i = int64_t(blockIdx.x) * kBlock + threadIdx.x; i < total; i += step) {
    const int64_t p = i / (m * n), r = (i / n) % m, col = i % n;
    D& x = c[p * stride_c + r * ldc + col];
    x = beta == A(0) ? from_acc<D>(A(0)) : from_acc<D>(beta * to_acc(x));
  }
}

namespace detail {
inline int gemm_int(int64_t v, const char* name) {
  MAMCLIP_CHECK(v >= 0 && v <= INT_MAX, value_error, "gemm: ", name, " = ", v, " is outside cuBLAS's range [0, ",
                INT_MAX, "]");
  return static_cast<int>(v);
}
}  // namespace detail

template <class T>
void launch_gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const T* a, int64_t lda,
                 int64_t stride_a, const T* b, int64_t ldb, int64_t stride_b, double beta, T* c, int64_t ldc,
                 int64_t stride_c, int64_t batch, cudaStream_t stream) {
  using Tr = cublas_traits<T>;
  const int im = detail::gemm_int(m, "m"), in = detail::gemm_int(n, "n"), ik = detail::gemm_int(k, "k");
  const int ibatch = detail::gemm_int(batch, "batch");
  // Row lengths of the stored matrices (see GemmKernel): leading dims must cover them.
  const int64_t row_a = trans_a ? m : k, row_b = trans_b ? k : n;
  MAMCLIP_CHECK(lda >= std::max<int64_t>(1, row_a), value_error, "gemm: lda = ", lda, " is less than A's row length ",
                row_a, " (trans_a = ", trans_a, ", m = ", m, ", k = ", k, ")");
  MAMCLIP_CHECK(ldb >= std::max<int64_t>(1, row_b), value_error, "gemm: ldb = ", ldb, " is less than B's row length ",
                row_b, " (trans_b = ", trans_b, ", k = ", k, ", n = ", n, ")");
  MAMCLIP_CHECK(ldc >= std::max<int64_t>(1, n), value_error, "gemm: ldc = ", ldc, " is less than C's row length n = ", n);
  const int ilda = detail::gemm_int(lda, "lda"), ildb = detail::gemm_int(ldb, "ldb"), ildc = detail::gemm_int(ldc, "ldc");
  if (m == 0 || n == 0 || batch == 0) return;
  if (k == 0) {
    constexpr int kBlock = 256;
    scale_matrices_kernel<kBlock, device_t<T>><<<grid_for(batch * m * n, kBlock), kBlock, 0, stream>>>(
        device_ptr(c), m, n, ldc, stride_c, batch, static_cast<device_acc_t<device_t<T>>>(beta));
    MAMCLIP_CUDA_CHECK_LAUNCH();
    return;
  }
  const typename Tr::scale alpha_s = static_cast<typename Tr::scale>(alpha);
  const typename Tr::scale beta_s = static_cast<typename Tr::scale>(beta);
  cublasHandle_t handle = cublas_handle(stream);
  MAMCLIP_CUBLAS_CHECK(cublasGemmStridedBatchedEx(
      handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, in, im, ik, &alpha_s, b, Tr::data,
      ildb, stride_b, a, Tr::data, ilda, stride_a, &beta_s, c, Tr::data, ildc, stride_c, ibatch, Tr::compute(),
      CUBLAS_GEMM_DEFAULT));
}

namespace kernels {
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, double alpha, const T* a, int64_t lda,
          int64_t stride_a, const T* b, int64_t ldb, int64_t stride_b, double beta, T* c, int64_t ldc, int64_t stride_c,
          int64_t batch) {
  launch_gemm<T>(trans_a, trans_b, m, n, k, alpha, a, lda, stride_a, b, ldb, stride_b, beta, c, ldc, stride_c, batch,
                 current_stream());
}
}  // namespace kernels

// ---- registration

inline void register_matmul_kernels() {
  auto& r = KernelRegistry::get();
  r.add<GemmKernel<float>>("gemm", DType::f32, DeviceType::cuda, &kernels::gemm<float>);
  r.add<GemmKernel<double>>("gemm", DType::f64, DeviceType::cuda, &kernels::gemm<double>);
  r.add<GemmKernel<half>>("gemm", DType::f16, DeviceType::cuda, &kernels::gemm<half>);
  r.add<GemmKernel<bfloat16>>("gemm", DType::bf16, DeviceType::cuda, &kernels::gemm<bfloat16>);
}

}  // namespace mamclip::cuda
