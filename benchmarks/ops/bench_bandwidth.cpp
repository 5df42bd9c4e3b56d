// Memory-bound CUDA kernels (elementwise, layer_norm, softmax, sum) against
// the device-to-device copy bandwidth measured in the same run: the ceiling a
// kernel that must read and write its tensors once can reach.
//
//   bench_bandwidth
//
// Each case first checks its result against the CPU reference, then times the
// public op with CUDA events (warm-up first, L2 flushed before each run) and
// prints the best time, the GB/s of the least traffic the op needs (every
// input read once, every output written once) and that rate as a share of the
// copy's. [rows, 768] tensors (BERT's width) of 64 Ki rows, in bfloat16 and
// float.
#include <cuda_runtime.h>

#include <cstdio>
#include <string>
#include <vector>

#include "mamclip/mamclip.hpp"
#include "ops/gpu_bench.hpp"

using namespace mamclip;
using bf16 = mamclip::bfloat16;

namespace {

constexpr int64_t kRows = 65536, kWidth = 768;

// cudaMemcpyAsync device to device: bytes read plus bytes written per second.
double copy_gbs(const bench::L2Flush& flush) {
  const size_t bytes = size_t(kRows) * kWidth * sizeof(float);
  void *a = nullptr, *b = nullptr;
  bench::cuda_check(cudaMalloc(&a, bytes), "cudaMalloc");
  bench::cuda_check(cudaMalloc(&b, bytes), "cudaMalloc");
  bench::cuda_check(cudaMemset(a, 1, bytes), "cudaMemset");
  const double ms =
      bench::best_ms([&] { bench::cuda_check(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice), "copy"); }, flush);
  cudaFree(a);
  cudaFree(b);
  return 2.0 * double(bytes) / ms * 1e-6;
}

struct Row {
  std::string op, dtype;
  double ms = 0, gbs = 0;
  bool ok = false;
};

// Times f (on the GPU inputs), whose least traffic is `bytes`, after checking
// its result (got()) against the CPU's (want).
template <class T, class F, class Got>
Row measure(const std::string& op, F&& f, Got&& got, const Tensor<T>& want, double bytes, double tolerance,
            const bench::L2Flush& flush) {
  Row r{op, std::string(dtype_name(dtype_v<T>))};
  f();
  bench::cuda_check(cudaDeviceSynchronize(), op.c_str());
  const double err = bench::rel_err(got(), want);
  r.ok = err < tolerance;
  if (!r.ok) std::printf("%-34s %-9s MISMATCH vs the CPU: relative error %.2e\n", op.c_str(), r.dtype.c_str(), err);
  r.ms = bench::best_ms(f, flush);
  r.gbs = bytes / r.ms * 1e-6;
  return r;
}

template <class T>
void run_dtype(std::vector<Row>& rows, const bench::L2Flush& flush) {
  const Device gpu = Device::cuda(0);
  const double e = sizeof(T), n = double(kRows) * kWidth;
  const double tol = sizeof(T) == 2 ? 2e-2 : 1e-5;
  const Tensor<T> xc = randn<float>({kRows, kWidth}).to<T>(), yc = randn<float>({kRows, kWidth}).to<T>();
  const Tensor<T> x = xc.to(gpu), y = yc.to(gpu);
  const Tensor<T> wc = randn<float>({kWidth}).to<T>(), bc = randn<float>({kWidth}).to<T>();
  const Tensor<T> w = wc.to(gpu), b = bc.to(gpu);
  Tensor<T> out;
  auto result = [&] { return out; };  // inputs need no gradient, so the ops record no graph

  rows.push_back(measure<T>("add [65536, 768]", [&] { out = add(x, y); }, result, add(xc, yc), 3 * n * e, tol, flush));
  // Broadcast operands are read in place (BinaryIndex): the [768] bias and the transposed x add no traffic.
  rows.push_back(measure<T>("add a [768] bias", [&] { out = add(x, b); }, result, add(xc, bc), 2 * n * e, tol, flush));
  const Tensor<T> xt = x.view({kWidth, kRows}).t(), xtc = xc.view({kWidth, kRows}).t();
  rows.push_back(measure<T>("add, transposed x", [&] { out = add(xt, y); }, result, add(xtc, yc), 3 * n * e, tol,
                            flush));
  rows.push_back(measure<T>("mul by a scalar", [&] { out = mul(x, 0.5); }, result, mul(xc, 0.5), 2 * n * e, tol, flush));
  rows.push_back(measure<T>("gelu", [&] { out = gelu(x); }, result, gelu(xc), 2 * n * e, tol, flush));
  rows.push_back(measure<T>("layer_norm over 768", [&] { out = layer_norm(x, {kWidth}, w, b); }, result,
                            layer_norm(xc, {kWidth}, wc, bc), 2 * n * e, tol, flush));
  rows.push_back(measure<T>("softmax over 768", [&] { out = softmax(x, -1); }, result, softmax(xc, -1), 2 * n * e,
                            tol, flush));
  rows.push_back(measure<T>("sum over 768", [&] { out = sum(x, {1}); }, result, sum(xc, {1}), n * e, tol, flush));

  // layer_norm forward + backward through autograd: x, g read and y written forward; g, x read and dx written
  // backward (mean / rstd and the [768] parameter gradients are negligible).
  const Tensor<T> gc = randn<float>({kRows, kWidth}).to<T>(), g = gc.to(gpu);
  Tensor<T> dx;
  auto ln_step = [&](const Tensor<T>& in, const Tensor<T>& grad, const Tensor<T>& weight, const Tensor<T>& bias) {
    Tensor<T> leaf = in.detach().set_requires_grad();
    layer_norm(leaf, {kWidth}, weight, bias).backward(grad);
    return leaf.grad();
  };
  const Tensor<T> want_dx = ln_step(xc, gc, wc, bc);
  rows.push_back(measure<T>("layer_norm forward + backward", [&] { dx = ln_step(x, g, w, b); }, [&] { return dx; },
                            want_dx, 5 * n * e, tol, flush));
}

}  // namespace

int main() {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("bench_bandwidth: no CUDA device; nothing to measure\n");
    return 2;
  }
  try {
    cudaDeviceProp prop{};
    bench::cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    const bench::L2Flush flush;
    const double copy = copy_gbs(flush);
    std::printf("memory-bound kernels on %s (sm_%d%d); best of the timed runs; GB/s of the least traffic each op "
                "needs, against a device-to-device copy: %.0f GB/s\n",
                prop.name, prop.major, prop.minor, copy);
    std::vector<Row> rows;
    run_dtype<bf16>(rows, flush);
    run_dtype<float>(rows, flush);
    std::printf("%-34s %-9s %10s %10s %9s\n", "op", "dtype", "ms", "GB/s", "of copy");
    bool ok = true;
    for (const Row& r : rows) {
      std::printf("%-34s %-9s %10.3f %10.0f %8.0f%%%s\n", r.op.c_str(), r.dtype.c_str(), r.ms, r.gbs,
                  100.0 * r.gbs / copy, r.ok ? "" : "  MISMATCH");
      ok = ok && r.ok;
    }
    return ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_bandwidth: %s\n", e.what());
    return 1;
  }
}
