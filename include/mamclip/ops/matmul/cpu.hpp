#pragma once
// CPU GEMM: batched, strided matrices. Float products go to the packed AVX2
// kernel (sgemm.hpp) where the CPU has it, everything else to Eigen; with
// MAMCLIP_WITH_BLAS defined, BLAS takes both.
//
// A matrix operand is a strided view: element (i, j) of an r×c matrix sits at
// data[i*rs + j*cs]. When one stride is 1 and the other covers the inner
// extent, the matrix is row- or column-major with a leading dimension, and
// Eigen's GEMM (or BLAS) reads it in place — so a transposed view costs no
// copy. A matrix with no unit stride (a step slice, a broadcast row) must be
// copied by the caller first; mat_layout says which case applies.
//
// Only float and double reach this file: half and bfloat16 are converted to
// float by the op (ops/matmul/matmul.hpp), as their products accumulate in float.

#include <Eigen/Core>
#include <algorithm>
#include <limits>
#include <cstdint>
#include <optional>
#include <type_traits>

#ifdef MAMCLIP_WITH_BLAS
// The two CBLAS entry points, declared here rather than through <cblas.h>:
// OpenBLAS's cblas.h puts `typedef uint16_t bfloat16;` in the global
// namespace, which would make `bfloat16` ambiguous in every user file that
// says `using namespace mamclip`. Plain extern "C" redeclarations with int in
// place of the CBLAS enums are no way out either: C-linkage declarations of
// one function must have one type (clang rejects the pair when a file also
// includes cblas.h). So on GCC and Clang these are distinct C++ names bound to
// the cblas_* symbols with an asm label; other compilers fall back to the header.
// MAMCLIP_BLAS_INT is the library's integer type: define it as int64_t for an
// ILP64 BLAS build whose cblas_* symbols take 64-bit integers.
#ifndef MAMCLIP_BLAS_INT
#define MAMCLIP_BLAS_INT int
#endif
#if defined(__GNUC__) || defined(__clang__)
#define MAMCLIP_BLAS_STR2(x) #x
#define MAMCLIP_BLAS_STR(x) MAMCLIP_BLAS_STR2(x)
#define MAMCLIP_BLAS_SYMBOL(name) __asm__(MAMCLIP_BLAS_STR(__USER_LABEL_PREFIX__) #name)
namespace mamclip::cpu::blas_abi {
using blas_int = MAMCLIP_BLAS_INT;
// Standard CBLAS enum values (enums are passed as int by every supported ABI).
enum : int { kRowMajor = 101, kNoTrans = 111, kTrans = 112 };
extern "C" void sgemm(int order, int trans_a, int trans_b, blas_int m, blas_int n, blas_int k, float alpha,
                      const float* a, blas_int lda, const float* b, blas_int ldb, float beta, float* c, blas_int ldc)
    MAMCLIP_BLAS_SYMBOL(cblas_sgemm);
extern "C" void dgemm(int order, int trans_a, int trans_b, blas_int m, blas_int n, blas_int k, double alpha,
                      const double* a, blas_int lda, const double* b, blas_int ldb, double beta, double* c, blas_int ldc)
    MAMCLIP_BLAS_SYMBOL(cblas_dgemm);
}  // namespace mamclip::cpu::blas_abi
#undef MAMCLIP_BLAS_SYMBOL
#undef MAMCLIP_BLAS_STR
#undef MAMCLIP_BLAS_STR2
#else
#include <cblas.h>
namespace mamclip::cpu::blas_abi {
using blas_int = MAMCLIP_BLAS_INT;
enum : int { kRowMajor = CblasRowMajor, kNoTrans = CblasNoTrans, kTrans = CblasTrans };
inline void sgemm(int o, int ta, int tb, blas_int m, blas_int n, blas_int k, float alpha, const float* a, blas_int lda,
                  const float* b, blas_int ldb, float beta, float* c, blas_int ldc) {
  cblas_sgemm(CBLAS_ORDER(o), CBLAS_TRANSPOSE(ta), CBLAS_TRANSPOSE(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
inline void dgemm(int o, int ta, int tb, blas_int m, blas_int n, blas_int k, double alpha, const double* a,
                  blas_int lda, const double* b, blas_int ldb, double beta, double* c, blas_int ldc) {
  cblas_dgemm(CBLAS_ORDER(o), CBLAS_TRANSPOSE(ta), CBLAS_TRANSPOSE(tb), m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
}  // namespace mamclip::cpu::blas_abi
#endif
#endif

#include "mamclip/core/iterate.hpp"
#include "mamclip/core/shape.hpp"
#include "mamclip/ops/matmul/sgemm.hpp"

namespace mamclip::cpu {

// How GEMM reads an r×c matrix with strides (rs, cs).
struct MatLayout {
  enum Kind { row_major, col_major, strided };
  Kind kind = strided;
  int64_t ld = 0;  // leading dimension (row_major: row stride; col_major: column stride); >= max(1, inner extent)
};

inline MatLayout mat_layout(int64_t r, int64_t c, int64_t rs, int64_t cs) {
  // A single row (column) may carry any outer stride, including 0 from a
  // broadcast; BLAS still wants ld >= max(1, inner extent), so substitute one.
  const int64_t c1 = std::max<int64_t>(c, 1), r1 = std::max<int64_t>(r, 1);
  if ((cs == 1 || c <= 1) && (r <= 1 || rs >= c1)) return {MatLayout::row_major, r <= 1 ? c1 : rs};
  if ((rs == 1 || r <= 1) && (c <= 1 || cs >= r1)) return {MatLayout::col_major, c <= 1 ? r1 : cs};
  return {MatLayout::strided, 0};
}

// The stride s such that element b (row-major over `sizes`) sits at b*s, when
// one exists: size-1 dims are ignored and the others must nest exactly
// (stride[d] == stride[d+1] * size[d+1]); all-broadcast dims give 0.
inline std::optional<int64_t> uniform_stride(const Shape& sizes, const Shape& strides) {
  std::optional<int64_t> inner_stride;
  int64_t expected = 0;
  for (size_t d = sizes.size(); d-- > 0;) {
    if (sizes[d] == 1) continue;
    if (!inner_stride) {
      inner_stride = strides[d];
    } else if (strides[d] != expected) {
      return std::nullopt;
    }
    expected = strides[d] * sizes[d];
  }
  return inner_stride.value_or(0);
}

namespace gemm_impl {

template <class S, int Order>
using ConstMatMap = Eigen::Map<const Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Order>, 0, Eigen::OuterStride<>>;

template <class S>
void eigen_gemm(int64_t m, int64_t n, int64_t k, const S* a, MatLayout la, const S* b, MatLayout lb, S* c,
                bool accumulate) {
  Eigen::Map<Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>> mc(c, m, n);
  auto run = [&](const auto& ma, const auto& mb) {
    if (accumulate)
      mc.noalias() += ma * mb;
    else
      mc.noalias() = ma * mb;
  };
  // One name per using-declaration: nvcc 13 crashes on the comma form.
  using Eigen::ColMajor;
  using Eigen::RowMajor;
  using Eigen::OuterStride;
  const bool ar = la.kind == MatLayout::row_major, br = lb.kind == MatLayout::row_major;
  if (ar && br)
    run(ConstMatMap<S, RowMajor>(a, m, k, OuterStride<>(la.ld)), ConstMatMap<S, RowMajor>(b, k, n, OuterStride<>(lb.ld)));
  else if (ar)
    run(ConstMatMap<S, RowMajor>(a, m, k, OuterStride<>(la.ld)), ConstMatMap<S, ColMajor>(b, k, n, OuterStride<>(lb.ld)));
  else if (br)
    run(ConstMatMap<S, ColMajor>(a, m, k, OuterStride<>(la.ld)), ConstMatMap<S, RowMajor>(b, k, n, OuterStride<>(lb.ld)));
  else
    run(ConstMatMap<S, ColMajor>(a, m, k, OuterStride<>(la.ld)), ConstMatMap<S, ColMajor>(b, k, n, OuterStride<>(lb.ld)));
}

#ifdef MAMCLIP_WITH_BLAS
// Problems whose sizes overflow the BLAS integer stay on Eigen (same results).
inline bool fits_blas_int(std::initializer_list<int64_t> v) {
  for (int64_t x : v)
    if (x > static_cast<int64_t>(std::numeric_limits<blas_abi::blas_int>::max())) return false;
  return true;
}
#endif

}  // namespace gemm_impl

// C (m×n, row-major, contiguous) = A (m×k) · B (k×n), or C += A·B when
// `accumulate`. Neither layout may be strided (copy such an operand first).
template <class S>
void gemm(int64_t m, int64_t n, int64_t k, const S* a, MatLayout la, const S* b, MatLayout lb, S* c, bool accumulate) {
  static_assert(std::is_same_v<S, float> || std::is_same_v<S, double>, "cpu::gemm computes in float or double");
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (!accumulate) std::fill(c, c + m * n, S(0));
    return;
  }
#ifdef MAMCLIP_WITH_BLAS
  if (gemm_impl::fits_blas_int({m, n, k, la.ld, lb.ld})) {
    // Row-major CBLAS: a column-major m×k operand is a row-major k×m one, transposed.
    namespace abi = blas_abi;
    using I = abi::blas_int;
    const int ta = la.kind == MatLayout::col_major ? abi::kTrans : abi::kNoTrans;
    const int tb = lb.kind == MatLayout::col_major ? abi::kTrans : abi::kNoTrans;
    const auto im = static_cast<I>(m), in = static_cast<I>(n), ik = static_cast<I>(k);
    if constexpr (std::is_same_v<S, float>)
      abi::sgemm(abi::kRowMajor, ta, tb, im, in, ik, 1.0f, a, static_cast<I>(la.ld), b, static_cast<I>(lb.ld),
                 accumulate ? 1.0f : 0.0f, c, in);
    else
      abi::dgemm(abi::kRowMajor, ta, tb, im, in, ik, 1.0, a, static_cast<I>(la.ld), b, static_cast<I>(lb.ld),
                 accumulate ? 1.0 : 0.0, c, in);
    return;
  }
#endif
  if constexpr (std::is_same_v<S, float>) {
    if (sgemm::worthwhile(m, n, k)) {
      const auto strides = [](MatLayout l) {
        return l.kind == MatLayout::row_major ? std::pair<int64_t, int64_t>{l.ld, 1} : std::pair<int64_t, int64_t>{1, l.ld};
      };
      const auto [a_rs, a_cs] = strides(la);
      const auto [b_rs, b_cs] = strides(lb);
      sgemm::gemm(m, n, k, a, a_rs, a_cs, b, b_rs, b_cs, c, accumulate);
      return;
    }
  }
  gemm_impl::eigen_gemm(m, n, k, a, la, b, lb, c, accumulate);
}

// Strided operand of a batched GEMM: batch strides are per batch dim (0 where
// the operand is broadcast), (rs, cs) are the matrix strides.
template <class S>
struct GemmOperand {
  const S* data;
  Shape batch_strides;
  int64_t rs, cs;
};

// C[b] (= or +=) A[b] · B[b] for every index b of `batch`; C is contiguous
// [batch..., m, n]; A[b] is m×k, B[b] is k×n, both with non-strided layouts.
template <class S>
void batched_gemm(const Shape& batch, int64_t m, int64_t n, int64_t k, const GemmOperand<S>& a,
                  const GemmOperand<S>& b, S* c, bool accumulate) {
  const MatLayout la = mat_layout(m, k, a.rs, a.cs), lb = mat_layout(k, n, b.rs, b.cs);
  const int64_t nbatch = numel_of(batch);
  if (nbatch == 0) return;
  // A weight shared by every batch entry ([B, T, k] @ [k, n]): when A's rows
  // nest across its batch dims, the whole batch is one taller GEMM, which is
  // what Eigen and BLAS are fastest at.
  if (nbatch > 1 && uniform_stride(batch, b.batch_strides) == 0) {
    Shape rows_shape = batch, rows_strides = a.batch_strides;
    rows_shape.push_back(m);
    rows_strides.push_back(a.rs);
    if (auto rs = uniform_stride(rows_shape, rows_strides)) {
      const MatLayout tall = mat_layout(nbatch * m, k, *rs, a.cs);
      if (tall.kind == MatLayout::row_major) {
        gemm(nbatch * m, n, k, a.data, tall, b.data, lb, c, accumulate);
        return;
      }
    }
  }
  S* out = c;
  mamclip::detail::for_each_offset<2>(batch, {a.batch_strides, b.batch_strides}, [&](const std::array<int64_t, 2>& off) {
    gemm(m, n, k, a.data + off[0], la, b.data + off[1], lb, out, accumulate);
    out += m * n;
  });
}

}  // namespace mamclip::cpu
