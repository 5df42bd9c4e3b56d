// linear's fused cuBLASLt GEMMs against the unfused path they replace, on
// BERT-base's shapes (rows = batch 8 x 512 tokens):
//
//   forward      "linear_bias" (bias in the epilogue)  vs  bias copied into y, then "gemm" accumulating
//   weight grad  "linear_weight_grad" (db in the epilogue)  vs  "gemm" for dw, then sum(dy) for db
//
//   bench_linear
//
// Both sides call the registered kernels directly on the same buffers. Each
// case checks the fused result against the unfused one first, then prints the
// best time of each (CUDA events, L2 flushed before each run) and the ratio
// unfused / fused (above 1: the fused path is faster).
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <utility>
#include <string>
#include <vector>

#include "mamclip/mamclip.hpp"
#include "ops/gpu_bench.hpp"

using namespace mamclip;
using bf16 = mamclip::bfloat16;

namespace {

struct Row {
  std::string what;
  double fused_ms = 0, plain_ms = 0, err = 0;
  bool ok = false;
  bool declined = false;  // cuBLASLt had no algorithm for the epilogue: nothing fused to measure
};

template <class T>
void run_shape(std::vector<Row>& rows, int64_t n, int64_t in_f, int64_t out_f, const bench::L2Flush& flush) {
  const Device gpu = Device::cuda(0);
  const std::string shape = "[" + std::to_string(n) + ", " + std::to_string(in_f) + "] -> " + std::to_string(out_f) +
                            " " + std::string(dtype_name(dtype_v<T>));
  const double tol = sizeof(T) == 2 ? 2e-2 : 1e-4;
  const Tensor<T> x = randn<float>({n, in_f}).to<T>().to(gpu), w = randn<float>({out_f, in_f}).to<T>().to(gpu);
  const Tensor<T> b = randn<float>({out_f}).to<T>().to(gpu), dy = randn<float>({n, out_f}).to<T>().to(gpu);
  auto* fused = require_kernel<LinearBiasKernel<T>>("linear_bias", dtype_v<T>, gpu);
  auto* fused_wgrad = require_kernel<LinearWeightGradKernel<T>>("linear_weight_grad", dtype_v<T>, gpu);
  auto* gemm = require_kernel<GemmKernel<T>>("gemm", dtype_v<T>, gpu);

  Tensor<T> y_fused = empty<T>({n, out_f}, gpu), y_plain = empty<T>({n, out_f}, gpu);
  bool took = true;  // every call of the fused kernel ran (it declines by returning false)
  auto fwd_fused = [&] { took = fused(n, out_f, in_f, x.data_ptr(), in_f, w.data_ptr(), b.data_ptr(), y_fused.data_ptr()) && took; };
  auto fwd_plain = [&] {
    y_plain.copy_(b.expand({n, out_f}));
    gemm(false, true, n, out_f, in_f, 1.0, x.data_ptr(), in_f, 0, w.data_ptr(), in_f, 0, 1.0, y_plain.data_ptr(), out_f,
         0, 1);
  };
  Row f{"forward " + shape};
  fwd_fused();
  fwd_plain();
  bench::cuda_check(cudaDeviceSynchronize(), "forward");
  f.declined = !took;
  if (!f.declined) {
    f.err = bench::rel_err(y_fused, y_plain);
    f.ok = f.err < tol;
    f.fused_ms = bench::best_ms(fwd_fused, flush);
    f.plain_ms = bench::best_ms(fwd_plain, flush);
  }
  rows.push_back(f);

  Tensor<T> dw_fused = empty<T>({out_f, in_f}, gpu), db_fused = empty<T>({out_f}, gpu);
  Tensor<T> dw_plain = empty<T>({out_f, in_f}, gpu), db_plain;
  auto wgrad_fused = [&] {
    took = fused_wgrad(n, out_f, in_f, x.data_ptr(), in_f, dy.data_ptr(), out_f, dw_fused.data_ptr(),
                       db_fused.data_ptr()) && took;
  };
  auto wgrad_plain = [&] {
    gemm(true, false, out_f, in_f, n, 1.0, dy.data_ptr(), out_f, 0, x.data_ptr(), in_f, 0, 0.0, dw_plain.data_ptr(),
         in_f, 0, 1);
    db_plain = sum(dy, {0});
  };
  Row g{"weight grad " + shape};
  took = true;
  wgrad_fused();
  wgrad_plain();
  bench::cuda_check(cudaDeviceSynchronize(), "weight grad");
  g.declined = !took;
  if (!g.declined) {
    g.err = std::max(bench::rel_err(dw_fused, dw_plain), bench::rel_err(db_fused, db_plain));
    g.ok = g.err < tol;
    g.fused_ms = bench::best_ms(wgrad_fused, flush);
    g.plain_ms = bench::best_ms(wgrad_plain, flush);
  }
  rows.push_back(g);
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("bench_linear: no CUDA device; nothing to measure\n");
    return 2;
  }
  try {
    cudaDeviceProp prop{};
    bench::cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    const bench::L2Flush flush;
    std::printf("linear on %s (sm_%d%d): cuBLASLt epilogues against bias copy + GEMM (+ sum for db); best of the timed "
                "runs\n", prop.name, prop.major, prop.minor);
    std::vector<Row> rows;
    const int64_t n = 8 * 512;
    const std::vector<std::pair<int64_t, int64_t>> shapes = {{768, 768}, {768, 3072}, {3072, 768}};  // in, out
    for (const auto& [in_f, out_f] : shapes) {
      run_shape<bf16>(rows, n, in_f, out_f, flush);
      run_shape<float>(rows, n, in_f, out_f, flush);
    }
    std::printf("%-44s %10s %10s %12s %10s\n", "case", "fused ms", "plain ms", "plain/fused", "rel err");
    bool ok = true;
    for (const Row& r : rows) {
      if (r.declined) {  // a capability of this cuBLASLt, not a failure: linear runs the plain path there
        std::printf("%-44s declined by cuBLASLt (no algorithm for the epilogue): linear uses the plain path\n",
                    r.what.c_str());
        continue;
      }
      std::printf("%-44s %10.3f %10.3f %11.2fx %10.1e%s\n", r.what.c_str(), r.fused_ms, r.plain_ms,
                  r.plain_ms / r.fused_ms, r.err, r.ok ? "" : "  MISMATCH");
      ok = ok && r.ok;
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_linear: %s\n", e.what());
    return 1;
  }
}
