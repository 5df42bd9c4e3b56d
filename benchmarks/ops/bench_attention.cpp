// Fused attention on CUDA (scaled_dot_product_attention, ops/attention/cuda.cuh)
// against the unfused path in the same process: cuBLAS batched GEMM to the
// [B, H, L, L] scores, the softmax kernel, a second GEMM, and their autograd
// backward (what PyTorch's math backend runs). bfloat16, no mask, at
// L = 100, 128, 512, 2048 and D = 64 (12 heads, BERT) and 96 (8 heads, the
// fusion block); the batch keeps B·L near 16384 tokens.
//
//   bench_attention               # every shape, each in a child process (its own memory peak)
//   bench_attention --case 512 64 # one shape
//
// Each shape first checks the fused output and gradients against the unfused
// ones, then times forward and forward + backward with CUDA events (warm-up
// first, L2 flushed before each run) and prints the best time, TFLOP/s as
// FlashAttention counts them (forward 4·B·H·L²·D, backward 2.5x forward),
// the allocator's peak beyond the inputs, and the ratios. PyTorch's SDPA at
// the same shapes: attention_torch.py (attention_vs_torch.sh pastes both).
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "mamclip/core/cuda/caching_allocator.hpp"
#include "mamclip/mamclip.hpp"
#include "ops/gpu_bench.hpp"

using namespace mamclip;
using bf16 = mamclip::bfloat16;

namespace {

struct Grads {
  Tensor<bf16> out, dq, dk, dv;
};

int run_case(int64_t l, int64_t d) {
  const Device gpu = Device::cuda(0);
  const int64_t h = d == 96 ? 8 : 12, b = std::max<int64_t>(1, 16384 / l);
  const auto q = randn<float>({b, h, l, d}).to<bf16>().to(gpu), k = randn<float>({b, h, l, d}).to<bf16>().to(gpu),
             v = randn<float>({b, h, l, d}).to<bf16>().to(gpu), g = randn<float>({b, h, l, d}).to<bf16>().to(gpu);
  const double scale = 1.0 / std::sqrt(static_cast<double>(d));
  const size_t inputs = cuda::memory_stats(0).allocated_bytes;

  auto fused = [&](bool backward) {
    Grads r;
    auto qq = q.detach().set_requires_grad(backward), kk = k.detach().set_requires_grad(backward),
         vv = v.detach().set_requires_grad(backward);
    r.out = scaled_dot_product_attention(qq, kk, vv);
    if (backward) {
      r.out.backward(g);
      r.dq = qq.grad(), r.dk = kk.grad(), r.dv = vv.grad();
    }
    return r;
  };
  auto unfused = [&](bool backward) {
    Grads r;
    auto qq = q.detach().set_requires_grad(backward), kk = k.detach().set_requires_grad(backward),
         vv = v.detach().set_requires_grad(backward);
    // q scaled before the product (as PyTorch's math path does): no extra pass over the L x L scores.
    r.out = matmul(softmax(matmul(qq * static_cast<bf16>(scale), kk.transpose(-1, -2)), -1), vv);
    if (backward) {
      r.out.backward(g);
      r.dq = qq.grad(), r.dk = kk.grad(), r.dv = vv.grad();
    }
    return r;
  };

  // The fused results go to the host before the unfused run, so that its peak (the allocator's
  // running maximum) does not count them.
  Grads f;
  {
    const Grads fg = fused(true);
    bench::cuda_check(cudaDeviceSynchronize(), "run");
    f = {fg.out.to(kCPU), fg.dq.to(kCPU), fg.dk.to(kCPU), fg.dv.to(kCPU)};
  }
  const size_t fused_peak = cuda::memory_stats(0).peak_allocated_bytes - inputs;
  const Grads u = unfused(true);
  bench::cuda_check(cudaDeviceSynchronize(), "run");
  const size_t unfused_peak = cuda::memory_stats(0).peak_allocated_bytes - inputs;
  const double e_out = bench::rel_err(f.out, u.out), e_dq = bench::rel_err(f.dq, u.dq),
               e_dk = bench::rel_err(f.dk, u.dk), e_dv = bench::rel_err(f.dv, u.dv);
  // Both round to bfloat16 (~2^-8) at several steps; the unfused path also rounds P and dS.
  const bool ok = e_out < 3e-2 && e_dq < 5e-2 && e_dk < 5e-2 && e_dv < 5e-2;
  std::printf("L=%-5lld D=%-4lld B=%-4lld H=%-3lld check vs unfused: out %.1e dq %.1e dk %.1e dv %.1e: %s\n",
              static_cast<long long>(l), static_cast<long long>(d), static_cast<long long>(b),
              static_cast<long long>(h), e_out, e_dq, e_dk, e_dv, ok ? "match" : "MISMATCH");
  // A mismatch still times the shape (a single GPU run should not lose its numbers); it fails at the end.

  const bench::L2Flush flush;
  const int reps = l >= 2048 ? 5 : 20;
  const double tf = bench::best_ms([&] { fused(false); }, flush, reps);
  const double tu = bench::best_ms([&] { unfused(false); }, flush, reps);
  const double tfb = bench::best_ms([&] { fused(true); }, flush, reps);
  const double tub = bench::best_ms([&] { unfused(true); }, flush, reps);
  const double flops = 4.0 * double(b) * double(h) * double(l) * double(l) * double(d);
  std::printf(
      "L=%-5lld D=%-4lld | fwd ours %8.3f ms %6.1f TFLOP/s unfused %8.3f ms %6.1f TFLOP/s ratio %.2f | fwd+bwd ours "
      "%8.3f ms %6.1f TFLOP/s unfused %8.3f ms %6.1f TFLOP/s ratio %.2f | peak MiB ours %.1f unfused %.1f\n",
      static_cast<long long>(l), static_cast<long long>(d), tf, flops / tf * 1e-9, tu, flops / tu * 1e-9, tf / tu, tfb,
      3.5 * flops / tfb * 1e-9, tub, 3.5 * flops / tub * 1e-9, tfb / tub, fused_peak / 1048576.0,
      unfused_peak / 1048576.0);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("bench_attention: no CUDA device; nothing to measure\n");
    return 2;
  }
  try {
    if (argc == 4 && std::string(argv[1]) == "--case") return run_case(std::atoll(argv[2]), std::atoll(argv[3]));
    cudaDeviceProp prop{};
    bench::cuda_check(cudaGetDeviceProperties(&prop, 0), "cudaGetDeviceProperties");
    std::printf("scaled_dot_product_attention, bfloat16, no mask, %s (sm_%d%d); best of the timed runs; ratio = "
                "ours / unfused (below 1: faster)\n",
                prop.name, prop.major, prop.minor);
    int rc = 0;
    for (int64_t d : {64, 96})
      for (int64_t l : {100, 128, 512, 2048}) {
        const std::string cmd = std::string(argv[0]) + " --case " + std::to_string(l) + " " + std::to_string(d);
        std::fflush(stdout);
        if (std::system(cmd.c_str()) != 0) rc = 1;
      }
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_attention: %s\n", e.what());
    return 1;
  }
}
