// The fused CLIP loss on CUDA (clip_loss forward + backward, ops/loss/cuda.cuh)
// against the unfused path in the same process: cuBLAS GEMM to a float
// [B, B] logits matrix, row and column log-sum-exp kernels, the loss, then
// the dlogits matrix (bfloat16) and two cuBLAS GEMMs for d image and d text
// (what PyTorch's autocast runs for open_clip's ClipLoss). bfloat16 features,
// D = 768, B = 64, 4096, 16384, 65536.
//
//   bench_clip_loss              # every size, each in a child process (so each peak is its own)
//   bench_clip_loss --size 4096  # one size
//
// Each size checks the fused loss and gradients against the unfused ones
// first, then times forward + backward with CUDA events (L2 flushed before
// each run, warm-up first), and prints times, TFLOP/s of the GEMM work
// (2·B²·D per product: 3 for the unfused path, 6 for the fused one, which
// recomputes the logits in backward and runs the column lse as its own pass),
// peak device memory of each path and the ratios.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

// Only what the baseline needs: clip_loss itself runs through the public op,
// from the kernels mamclip::cuda registers.
#define EIGEN_NO_CUDA
#include "mamclip/core/cuda/caching_allocator.hpp"
#include "mamclip/core/cuda/check.cuh"
#include "mamclip/core/cuda/types.cuh"
#include "mamclip/mamclip.hpp"
#include "ops/gpu_bench.hpp"

using namespace mamclip;
using bf16 = mamclip::bfloat16;

namespace {

constexpr int64_t kDim = 768;

// ---- the unfused baseline: plain kernels on a materialised logits matrix

__global__ void row_lse_kernel(const float* logits, int64_t n, float* lse) {
  const float* row = logits + int64_t(blockIdx.x) * n;
  __shared__ float red[256];
  float m = -INFINITY;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) m = fmaxf(m, row[j]);
  red[threadIdx.x] = m;
  __syncthreads();
  for (int s = 128; s > 0; s /= 2) {
    if (threadIdx.x < s) red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + s]);
    __syncthreads();
  }
  m = red[0];
  __syncthreads();
  float l = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) l += expf(row[j] - m);
  red[threadIdx.x] = l;
  __syncthreads();
  for (int s = 128; s > 0; s /= 2) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) lse[blockIdx.x] = m + logf(red[0]);
}

// Column lse in two passes, as a bandwidth-bound library path would do it (a thread per column
// walking all rows alone left the GPU mostly idle): blocks of 32 columns x 8 row lanes over one
// split of the rows, online (max, sum), then the splits merged per column.
__device__ __forceinline__ void lse_merge(float& m, float& l, float m2, float l2) {
  const float mn = fmaxf(m, m2);
  if (mn == -INFINITY) return;
  l = l * expf(m - mn) + l2 * expf(m2 - mn);
  m = mn;
}

__global__ void __launch_bounds__(256)
    col_lse_partial_kernel(const float* logits, int64_t n, int64_t rows_per_split, float2* partial) {
  __shared__ float sm[8][33], sl[8][33];
  const int64_t j = int64_t(blockIdx.x) * 32 + threadIdx.x;
  const int64_t r0 = int64_t(blockIdx.y) * rows_per_split, r1 = r0 + rows_per_split < n ? r0 + rows_per_split : n;
  float m = -INFINITY, l = 0;
  if (j < n)
    for (int64_t i = r0 + threadIdx.y; i < r1; i += 8) lse_merge(m, l, logits[i * n + j], 1.0f);
  sm[threadIdx.y][threadIdx.x] = m;
  sl[threadIdx.y][threadIdx.x] = l;
  __syncthreads();
  if (threadIdx.y != 0 || j >= n) return;
  for (int y = 1; y < 8; ++y) lse_merge(m, l, sm[y][threadIdx.x], sl[y][threadIdx.x]);
  partial[int64_t(blockIdx.y) * n + j] = make_float2(m, l);
}

__global__ void col_lse_finish_kernel(const float2* partial, int64_t n, int64_t splits, float* lse) {
  const int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= n) return;
  float m = -INFINITY, l = 0;
  for (int64_t sp = 0; sp < splits; ++sp) lse_merge(m, l, partial[sp * n + j].x, partial[sp * n + j].y);
  lse[j] = m + logf(l);
}

__global__ void loss_kernel(const float* logits, const float* r, const float* c, int64_t n, float* loss) {
  __shared__ double red[256];
  double v = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += double(r[i]) + double(c[i]) - 2.0 * logits[i * n + i];
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = 128; s > 0; s /= 2) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) *loss = static_cast<float>(red[0] / (2.0 * n));
}

// g = coef·(softmax_rows + softmax_cols - 2·I) in bfloat16; dls += Σ g ⊙ logits.
__global__ void dlogits_kernel(const float* logits, const float* r, const float* c, int64_t n, float coef,
                               __nv_bfloat16* g, double* dls) {
  __shared__ double red[256];
  double v = 0;
  // Rows over grid.y, columns over grid.x (no 64-bit division per element).
  for (int64_t i = blockIdx.y; i < n; i += gridDim.y)
    for (int64_t j = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x) {
      const int64_t e = i * n + j;
      const float x = logits[e];
      const float d = coef * (expf(x - r[i]) + expf(x - c[j]) - (i == j ? 2.0f : 0.0f));
      g[e] = __float2bfloat16_rn(d);
      v += double(d) * x;
    }
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = 128; s > 0; s /= 2) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) atomicAdd(dls, red[0]);
}

struct Unfused {
  int64_t n;
  float s;
  int64_t splits = 1, rows_per_split = 0;  // the column lse's row splits
  float *logits = nullptr, *r = nullptr, *c = nullptr, *loss = nullptr;
  float2* col_partial = nullptr;
  __nv_bfloat16* g = nullptr;
  double* dls = nullptr;
  size_t bytes = 0;
  cublasHandle_t handle = nullptr;

  template <class P>
  void alloc(P*& p, size_t count) {
    MAMCLIP_CUDA_CHECK(cudaMalloc(&p, count * sizeof(P)));
    bytes += count * sizeof(P);
  }
  Unfused(int64_t n_, float s_) : n(n_), s(s_) {
    alloc(logits, size_t(n) * n);
    alloc(g, size_t(n) * n);
    alloc(r, n);
    alloc(c, n);
    alloc(loss, 1);
    alloc(dls, 1);
    int sms = 0;
    MAMCLIP_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, 0));
    const int64_t col_blocks = (n + 31) / 32;  // about 16 blocks of 256 threads per SM, splits of >= 64 rows
    splits = std::clamp<int64_t>(16 * sms / col_blocks, 1, std::max<int64_t>(1, n / 64));
    rows_per_split = (n + splits - 1) / splits;
    alloc(col_partial, size_t(splits) * n);
    MAMCLIP_CUBLAS_CHECK(cublasCreate(&handle));
  }
  ~Unfused() {
    cudaFree(logits);
    cudaFree(g);
    cudaFree(r);
    cudaFree(c);
    cudaFree(loss);
    cudaFree(dls);
    cudaFree(col_partial);
    cublasDestroy(handle);
  }
  // Row-major I, T [n, D] bf16 -> loss, dI, dT (bf16), dls.
  void run(const __nv_bfloat16* img, const __nv_bfloat16* txt, __nv_bfloat16* di, __nv_bfloat16* dt) {
    const int in = static_cast<int>(n), id = static_cast<int>(kDim);
    const float zero = 0.0f;
    // logits[i, j] = s <I_i, T_j>: column-major logitsᵀ = Tᵀ·I.
    MAMCLIP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, in, in, id, &s, txt, CUDA_R_16BF, id, img,
                                      CUDA_R_16BF, id, &zero, logits, CUDA_R_32F, in, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
    row_lse_kernel<<<static_cast<unsigned>(n), 256>>>(logits, n, r);
    col_lse_partial_kernel<<<dim3(static_cast<unsigned>((n + 31) / 32), static_cast<unsigned>(splits)), dim3(32, 8)>>>(
        logits, n, rows_per_split, col_partial);
    col_lse_finish_kernel<<<static_cast<unsigned>((n + 255) / 256), 256>>>(col_partial, n, splits, c);
    loss_kernel<<<1, 256>>>(logits, r, c, n, loss);
    MAMCLIP_CUDA_CHECK(cudaMemsetAsync(dls, 0, sizeof(double)));
    dlogits_kernel<<<dim3(static_cast<unsigned>(std::min<int64_t>((n + 255) / 256, 64)),
                          static_cast<unsigned>(std::min<int64_t>(n, 4096))),
                     256>>>(logits, r, c, n, static_cast<float>(1.0 / (2.0 * n)), g, dls);
    MAMCLIP_CUDA_CHECK_LAUNCH();
    // dI = s·G·T and dT = s·Gᵀ·I (row-major), as column-major products.
    MAMCLIP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, id, in, in, &s, txt, CUDA_R_16BF, id, g,
                                      CUDA_R_16BF, in, &zero, di, CUDA_R_16BF, id, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
    MAMCLIP_CUBLAS_CHECK(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_T, id, in, in, &s, img, CUDA_R_16BF, id, g,
                                      CUDA_R_16BF, in, &zero, dt, CUDA_R_16BF, id, CUBLAS_COMPUTE_32F,
                                      CUBLAS_GEMM_DEFAULT));
  }
};

int run_size(int64_t n) {
  const Device gpu = Device::cuda(0);
  const float log_s = 2.6592f;  // log(1 / 0.07)
  const auto img = normalize(randn<float>({n, kDim})).to<bf16>().to(gpu);
  const auto txt = normalize(randn<float>({n, kDim})).to<bf16>().to(gpu);
  const auto ls = tensor<float>({log_s}).to<bf16>().to(gpu);
  const float s = std::exp(static_cast<float>(ls.to(kCPU).item()));
  const size_t inputs = cuda::memory_stats(0).allocated_bytes;

  // Fused: the public op, forward and backward, as training runs it.
  Tensor<bf16> fi, ft, fl;
  Tensor<bf16> fused_loss;
  auto fused = [&] {
    fi = img.detach().set_requires_grad();
    ft = txt.detach().set_requires_grad();
    fl = ls.detach().set_requires_grad();
    fused_loss = clip_loss(fi, ft, fl);
    fused_loss.backward();
  };
  fused();
  MAMCLIP_CUDA_CHECK(cudaDeviceSynchronize());
  const size_t fused_peak = cuda::memory_stats(0).peak_allocated_bytes - inputs;

  // Unfused: same inputs, its own buffers.
  Unfused base(n, s);
  auto di = Tensor<bf16>::empty({n, kDim}, gpu), dt = Tensor<bf16>::empty({n, kDim}, gpu);
  auto unfused = [&] {
    base.run(cuda::device_ptr(img.data_ptr()), cuda::device_ptr(txt.data_ptr()), cuda::device_ptr(di.data_ptr()),
             cuda::device_ptr(dt.data_ptr()));
  };
  unfused();
  MAMCLIP_CUDA_CHECK(cudaDeviceSynchronize());
  const size_t unfused_peak = base.bytes + 2 * size_t(n) * kDim * sizeof(bf16);  // + d image, d text

  // Validate before timing.
  float base_loss = 0;
  double base_dls = 0;
  MAMCLIP_CUDA_CHECK(cudaMemcpy(&base_loss, base.loss, sizeof(float), cudaMemcpyDeviceToHost));
  MAMCLIP_CUDA_CHECK(cudaMemcpy(&base_dls, base.dls, sizeof(double), cudaMemcpyDeviceToHost));
  const double loss_err = std::abs(double(fused_loss.to(kCPU).to<float>().item()) - base_loss) / std::abs(base_loss);
  const double di_err = bench::rel_err(fi.grad().to(kCPU).to<float>(), di.to(kCPU).to<float>());
  const double dt_err = bench::rel_err(ft.grad().to(kCPU).to<float>(), dt.to(kCPU).to<float>());
  const double dls_f = double(fl.grad().to(kCPU).to<float>().item());
  const double dls_err = std::abs(dls_f - base_dls) / std::max(std::abs(base_dls), 1e-3);
  // bfloat16 outputs (and the baseline's bfloat16 dlogits) round to ~2^-8.
  const bool ok = loss_err < 1e-2 && di_err < 3e-2 && dt_err < 3e-2 && dls_err < 3e-2;
  std::printf("B = %-6lld check vs unfused: loss %.1e, d image %.1e, d text %.1e, d logit_scale %.1e: %s\n",
              static_cast<long long>(n), loss_err, di_err, dt_err, dls_err, ok ? "match" : "MISMATCH");
  // A mismatch still times the size (a single GPU run should not lose its numbers); it fails at the end.

  const bench::L2Flush flush;
  const int reps = n >= 65536 ? 3 : n >= 16384 ? 5 : 20;
  const double tf = bench::best_ms(fused, flush, reps), tb = bench::best_ms(unfused, flush, reps);
  const double gemm = 2.0 * double(n) * double(n) * double(kDim);
  std::printf(
      "B = %-6lld | fused %9.3f ms (%6.1f TFLOP/s) peak %9.1f MiB | unfused %9.3f ms (%6.1f TFLOP/s) peak %9.1f MiB | "
      "time fused/unfused %.2f, memory unfused/fused %.1fx\n",
      static_cast<long long>(n), tf, 6 * gemm / tf * 1e-9, fused_peak / 1048576.0, tb,
      3 * gemm / tb * 1e-9, unfused_peak / 1048576.0, tf / tb, double(unfused_peak) / double(fused_peak));
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("bench_clip_loss: no CUDA device; nothing to measure\n");
    return 2;
  }
  try {
    if (argc == 3 && std::string(argv[1]) == "--size") return run_size(std::atoll(argv[2]));
    cudaDeviceProp prop{};
    MAMCLIP_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("clip_loss forward + backward, bfloat16 features, D = %lld, %s (sm_%d%d); best of the timed runs\n",
                static_cast<long long>(kDim), prop.name, prop.major, prop.minor);
    std::printf("peak: device memory each path allocates beyond the features (fused: the allocator's peak; unfused: "
                "its buffers and the two gradients)\n");
    int rc = 0;
    for (int64_t n : {64, 4096, 16384, 65536}) {
      const std::string cmd = std::string(argv[0]) + " --size " + std::to_string(n);
      std::fflush(stdout);
      if (std::system(cmd.c_str()) != 0) rc = 1;
    }
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_clip_loss: %s\n", e.what());
    return 1;
  }
}
