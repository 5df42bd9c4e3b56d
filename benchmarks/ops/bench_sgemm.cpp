// float GEMM: mamclip::matmul against OpenBLAS's cblas_sgemm, side by side.
//
//   bench_sgemm [reps]
//
// Shapes: 1024×1024×1024, and (4096×768)·(768×3072) — a BERT-base MLP up-
// projection over 4096 tokens. Before timing, every element of both results
// is checked against the rounding bound 2·k·eps·(|A||B|)_ij around the other,
// and sampled elements against a double-precision dot product.
//
// Rows: "matmul" is the public op (it allocates its output each call, as a
// user's call does); "cpu::gemm" is the CPU GEMM it dispatches to, writing into
// a preallocated buffer like the cblas_sgemm baseline, so the two rows separate
// kernel speed from allocation cost. Which GEMM runs (Eigen, or BLAS itself
// when built with MAMCLIP_WITH_BLAS) is printed first.

#include <cblas.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "bench_common.hpp"
#include "mamclip/autograd/engine.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/matmul/matmul.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/shape/shape.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace mamclip;

namespace {

// Every element of `c` within 2·k·eps·bound_ij of `ref` (bound = |A||B|).
bool agree(const float* c, const float* ref, const float* bound, int64_t count, int64_t k, const char* what) {
  const double tol = 2.0 * static_cast<double>(k) * dtype_eps<float>();
  for (int64_t i = 0; i < count; ++i) {
    const double err = std::abs(static_cast<double>(c[i]) - ref[i]);
    if (!(err <= tol * bound[i])) {
      std::printf("MISMATCH (%s) at element %lld: %.9g vs %.9g (allowed %.3g)\n", what, static_cast<long long>(i),
                  static_cast<double>(c[i]), static_cast<double>(ref[i]), tol * bound[i]);
      return false;
    }
  }
  return true;
}

bool run_shape(int64_t m, int64_t k, int64_t n, int reps) {
  Generator gen(1234);
  Tensor<float> a = rand<float>({m, k}, gen) * 2.0 - 1.0, b = rand<float>({k, n}, gen) * 2.0 - 1.0;
  const float* pa = a.data_ptr();
  const float* pb = b.data_ptr();
  const int im = static_cast<int>(m), ik = static_cast<int>(k), in = static_cast<int>(n);
  std::vector<float> c_blas(static_cast<size_t>(m * n)), c_gemm(c_blas.size());
  auto blas = [&] {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, im, in, ik, 1.0f, pa, ik, pb, in, 0.0f, c_blas.data(), in);
  };
  const cpu::MatLayout la{cpu::MatLayout::row_major, k}, lb{cpu::MatLayout::row_major, n};
  auto kernel = [&] { cpu::gemm<float>(m, n, k, pa, la, pb, lb, c_gemm.data(), false); };
  Tensor<float> c_ours;
  auto ours = [&] {
    NoGradGuard ng;
    c_ours = Tensor<float>();  // a loop drops its last result first: the allocator may hand the block back
    c_ours = matmul(a, b);
  };

  // ---- validate
  ours();
  kernel();
  blas();
  std::vector<float> abs_a(static_cast<size_t>(m * k)), abs_b(static_cast<size_t>(k * n)), bound(c_blas.size());
  for (size_t i = 0; i < abs_a.size(); ++i) abs_a[i] = std::abs(pa[i]);
  for (size_t i = 0; i < abs_b.size(); ++i) abs_b[i] = std::abs(pb[i]);
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, im, in, ik, 1.0f, abs_a.data(), ik, abs_b.data(), in, 0.0f,
              bound.data(), in);
  // The float bound itself is rounded: inflate it slightly.
  for (float& v : bound) v *= 1.0f + 1e-3f;
  bool ok = agree(c_ours.data_ptr(), c_blas.data(), bound.data(), m * n, k, "matmul vs cblas_sgemm") &&
            agree(c_gemm.data(), c_blas.data(), bound.data(), m * n, k, "cpu::gemm vs cblas_sgemm");
  // Sampled elements against double precision, for both.
  for (int s = 0; s < 64 && ok; ++s) {
    const int64_t i = (s * 7919) % m, j = (s * 104729) % n;
    double ref = 0;
    for (int64_t q = 0; q < k; ++q) ref += static_cast<double>(pa[i * k + q]) * static_cast<double>(pb[q * n + j]);
    const double tol = 2.0 * static_cast<double>(k) * dtype_eps<float>() * bound[i * n + j];
    for (const float* c : {c_ours.data_ptr(), c_blas.data()})
      if (!(std::abs(c[i * n + j] - ref) <= tol)) {
        std::printf("MISMATCH vs double at (%lld, %lld): %.9g vs %.9g\n", static_cast<long long>(i),
                    static_cast<long long>(j), static_cast<double>(c[i * n + j]), ref);
        ok = false;
      }
  }
  if (!ok) return false;

  // ---- time
  const double flop = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  char what[64];
  std::snprintf(what, sizeof what, "%lldx%lldx%lld", static_cast<long long>(m), static_cast<long long>(k),
                static_cast<long long>(n));
  const auto [t_ours, t_base] = bench::time_side_by_side(ours, blas, 2, reps);
  bench::print_row(std::string(what) + " matmul", flop, t_ours, t_base);
  const auto [t_kernel, t_base2] = bench::time_side_by_side(kernel, blas, 1, reps);
  bench::print_row(std::string(what) + " cpu::gemm", flop, t_kernel, t_base2);
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::max(1, std::atoi(argv[1])) : 9;
#ifdef MAMCLIP_WITH_BLAS
  const char* ours_path = "BLAS (MAMCLIP_WITH_BLAS): cblas_sgemm";
#else
  const char* ours_path = "Eigen " EIGEN_MAKESTRING(EIGEN_WORLD_VERSION) "." EIGEN_MAKESTRING(
      EIGEN_MAJOR_VERSION) "." EIGEN_MAKESTRING(EIGEN_MINOR_VERSION);
#endif
  std::printf("bench_sgemm: float GEMM, mamclip::matmul vs OpenBLAS cblas_sgemm (row-major, no transposes)\n");
  std::printf("  mamclip GEMM path: %s\n", ours_path);
#if defined(_OPENMP)
  std::printf("  mamclip threads:   %d (Eigen, OpenMP; omp_get_max_threads %d)\n", Eigen::nbThreads(),
              omp_get_max_threads());
#else
  std::printf("  mamclip threads:   %d (Eigen built without OpenMP)\n", Eigen::nbThreads());
#endif
  std::printf("  OpenBLAS:          %s, core %s, %d threads\n", openblas_get_config(), openblas_get_corename(),
              openblas_get_num_threads());
  std::printf("  environment:\n");
  bench::print_environment({"OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"});
  std::printf("  %d timed runs each after warm-up; results validated first\n\n", reps);
  bench::print_header("m x k x n", "mamclip", "OpenBLAS");
  bool ok = run_shape(1024, 1024, 1024, reps);
  ok = run_shape(4096, 768, 3072, std::max(3, reps / 2)) && ok;
  if (!ok) {
    std::printf("\nresults disagree: timings not reported\n");
    return 1;
  }
  return 0;
}
