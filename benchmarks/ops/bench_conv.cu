// ConvNeXt's 7x7 depthwise convolution on CUDA: our kernels
// (ops/conv/cuda.cuh: forward, input gradient, weight gradient) against
// cuDNN 9 in the same process, at the four stage shapes of a 1024 x 768
// input (N x 96 x 256 x 192 ... N x 768 x 32 x 24), N = 8, bfloat16, in both
// layouts: channels last (NHWC: our conv2d_nhwc kernels against cuDNN's NHWC
// descriptors) and NCHW.
//
//   bench_conv            # every stage
//   bench_conv --n 2      # another batch size
//
// Each shape first checks our results against cuDNN's (relative max error),
// then times each pass with CUDA events (L2 flushed before each run, best of
// the timed runs; cuDNN's algorithm found by cudnnFind*, its workspace
// allocated once) and prints ms, GB/s against the traffic floor (forward and
// input gradient: read one tensor, write one; weight gradient: read two) and
// the ratio ours / cuDNN (below 1: faster). A device-to-device copy of the
// same tensor gives the bandwidth the floor is compared with. Then the
// patchify convs (stem, downsamplers) through the library's cuDNN path
// against its im2col + cuBLAS path, and on channels-last storage (cuDNN's
// NHWC convolutions, ConvNeXt's layout on a GPU) against NCHW.
#include <cudnn.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

// Only the conv kernels (the backend itself comes from linking mamclip::cuda): a much shorter nvcc build
// than all of mamclip/cuda.hpp. Eigen stays host-only, as cuda.hpp arranges.
#ifndef EIGEN_NO_CUDA
#define EIGEN_NO_CUDA
#endif
#include "mamclip/mamclip.hpp"
#include "mamclip/ops/conv/cuda.cuh"
#include "ops/gpu_bench.hpp"

using namespace mamclip;
using bf16 = mamclip::bfloat16;
using D = __nv_bfloat16;

namespace {

#define CUDNN_CHECK(call)                                                                               \
  do {                                                                                                  \
    const cudnnStatus_t s_ = (call);                                                                    \
    if (s_ != CUDNN_STATUS_SUCCESS)                                                                     \
      throw device_error(std::string(#call) + ": " + cudnnGetErrorString(s_));                          \
  } while (0)

// cuDNN's depthwise 7x7 (groups = C), bfloat16 in `format` (NCHW or NHWC), float accumulation.
// The first (fastest) of cuDNN's measured algorithms that ran (cuDNN lists failed ones too);
// each pass runs with the math type it was measured in.
template <class Perf>
const Perf& fastest(const Perf* perf, int count, const char* pass) {
  for (int i = 0; i < count; ++i)
    if (perf[i].status == CUDNN_STATUS_SUCCESS) return perf[i];
  throw device_error(std::string("cuDNN found no working ") + pass + " algorithm for this shape");
}

struct Cudnn {
  cudnnHandle_t handle{};
  cudnnTensorDescriptor_t xd{}, yd{};
  cudnnFilterDescriptor_t wd{};
  cudnnConvolutionDescriptor_t cd{};
  cudnnConvolutionFwdAlgo_t fwd{};
  cudnnConvolutionBwdDataAlgo_t bwd_data{};
  cudnnConvolutionBwdFilterAlgo_t bwd_filter{};
  cudnnMathType_t fwd_math{}, data_math{}, filter_math{};
  Tensor<uint8_t> workspace;
  size_t ws = 0;

  Cudnn(int n, int c, int h, int w, int k, cudnnTensorFormat_t format) {
    CUDNN_CHECK(cudnnCreate(&handle));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&xd));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&yd));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&wd));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&cd));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(xd, format, CUDNN_DATA_BFLOAT16, n, c, h, w));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(yd, format, CUDNN_DATA_BFLOAT16, n, c, h, w));
    // [C, 1, K, K] and [C, K, K, 1] are the same bytes: one input channel per group.
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(wd, CUDNN_DATA_BFLOAT16, format, c, 1, k, k));
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(cd, k / 2, k / 2, 1, 1, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionGroupCount(cd, c));
    CUDNN_CHECK(cudnnSetConvolutionMathType(cd, CUDNN_TENSOR_OP_MATH));
    int got = 0;
    cudnnConvolutionFwdAlgoPerf_t pf[8];
    CUDNN_CHECK(cudnnFindConvolutionForwardAlgorithm(handle, xd, wd, cd, yd, 8, &got, pf));
    const auto& f = fastest(pf, got, "forward");
    fwd = f.algo;
    fwd_math = f.mathType;
    ws = std::max(ws, f.memory);
    cudnnConvolutionBwdDataAlgoPerf_t pd[8];
    CUDNN_CHECK(cudnnFindConvolutionBackwardDataAlgorithm(handle, wd, yd, cd, xd, 8, &got, pd));
    const auto& d = fastest(pd, got, "backward data");
    bwd_data = d.algo;
    data_math = d.mathType;
    ws = std::max(ws, d.memory);
    cudnnConvolutionBwdFilterAlgoPerf_t pw[8];
    CUDNN_CHECK(cudnnFindConvolutionBackwardFilterAlgorithm(handle, xd, yd, cd, wd, 8, &got, pw));
    const auto& wf = fastest(pw, got, "backward filter");
    bwd_filter = wf.algo;
    filter_math = wf.mathType;
    ws = std::max(ws, wf.memory);
    workspace = Tensor<uint8_t>::empty({static_cast<int64_t>(std::max<size_t>(ws, 1))}, Device::cuda(0));
  }
  ~Cudnn() {
    cudnnDestroyConvolutionDescriptor(cd);
    cudnnDestroyFilterDescriptor(wd);
    cudnnDestroyTensorDescriptor(yd);
    cudnnDestroyTensorDescriptor(xd);
    cudnnDestroy(handle);
  }
  void forward(const void* x, const void* w, void* y) {
    const float one = 1, zero = 0;
    CUDNN_CHECK(cudnnSetConvolutionMathType(cd, fwd_math));
    CUDNN_CHECK(cudnnConvolutionForward(handle, &one, xd, x, wd, w, cd, fwd, workspace.data_ptr(), ws, &zero, yd, y));
  }
  void input_grad(const void* w, const void* dy, void* dx) {
    const float one = 1, zero = 0;
    CUDNN_CHECK(cudnnSetConvolutionMathType(cd, data_math));
    CUDNN_CHECK(cudnnConvolutionBackwardData(handle, &one, wd, w, yd, dy, cd, bwd_data, workspace.data_ptr(), ws, &zero,
                                             xd, dx));
  }
  void weight_grad(const void* x, const void* dy, void* dw) {
    const float one = 1, zero = 0;
    CUDNN_CHECK(cudnnSetConvolutionMathType(cd, filter_math));
    CUDNN_CHECK(cudnnConvolutionBackwardFilter(handle, &one, xd, x, yd, dy, cd, bwd_filter, workspace.data_ptr(), ws,
                                               &zero, wd, dw));
  }
};

// nhwc: x, y, dy and dx stored [N, H, W, C] (the same element count; only the layout differs).
int run_stage(int64_t n, int64_t c, int64_t h, int64_t w, bool nhwc, const bench::L2Flush& flush) {
  constexpr int64_t K = 7;
  const Device gpu = Device::cuda(0);
  const auto x = randn<float>({n, c, h, w}).to<bf16>().to(gpu), dy = randn<float>({n, c, h, w}).to<bf16>().to(gpu);
  const auto wt = (randn<float>({c, 1, K, K}) * 0.1f).to<bf16>().to(gpu);
  auto y_ours = Tensor<bf16>::empty({n, c, h, w}, gpu), y_dnn = Tensor<bf16>::empty({n, c, h, w}, gpu);
  auto dx_ours = Tensor<bf16>::empty({n, c, h, w}, gpu), dx_dnn = Tensor<bf16>::empty({n, c, h, w}, gpu);
  auto dw_ours = Tensor<bf16>::empty({c, 1, K, K}, gpu), dw_dnn = Tensor<bf16>::empty({c, 1, K, K}, gpu);
  Conv2dGeometry g;
  g.batch = n, g.c_in = c, g.h = h, g.w = w, g.c_out = c, g.kh = K, g.kw = K, g.oh = h, g.ow = w;
  g.pad_h = g.pad_w = K / 2, g.groups = c;
  const cudaStream_t s = cuda::current_stream();
  auto dp = [](const Tensor<bf16>& t) { return cuda::device_ptr(t.data_ptr()); };
  auto ours_fwd = [&] {
    if (nhwc)
      cuda::detail::launch_conv2d_nhwc_forward<bf16>(g, x.data_ptr(), wt.data_ptr(), nullptr, y_ours.data_ptr(), s);
    else
      cuda::detail::launch_depthwise<D>(g, dp(x), dp(wt), nullptr, dp(y_ours), false, s);
  };
  auto ours_dx = [&] {
    if (nhwc)
      cuda::detail::launch_conv2d_nhwc_backward<bf16>(g, nullptr, wt.data_ptr(), dy.data_ptr(), dx_ours.data_ptr(),
                                                      nullptr, nullptr, s);
    else
      cuda::detail::launch_depthwise<D>(g, dp(dy), dp(wt), nullptr, dp(dx_ours), true, s);
  };
  auto ours_dw = [&] {
    if (nhwc)
      cuda::detail::launch_conv2d_nhwc_backward<bf16>(g, x.data_ptr(), nullptr, dy.data_ptr(), nullptr,
                                                      dw_ours.data_ptr(), nullptr, s);
    else
      cuda::detail::launch_depthwise_wgrad<D>(g, dp(x), dp(dy), dp(dw_ours), s);
  };
  Cudnn dnn(static_cast<int>(n), static_cast<int>(c), static_cast<int>(h), static_cast<int>(w), static_cast<int>(K),
            nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW);
  auto dnn_fwd = [&] { dnn.forward(x.data_ptr(), wt.data_ptr(), y_dnn.data_ptr()); };
  auto dnn_dx = [&] { dnn.input_grad(wt.data_ptr(), dy.data_ptr(), dx_dnn.data_ptr()); };
  auto dnn_dw = [&] { dnn.weight_grad(x.data_ptr(), dy.data_ptr(), dw_dnn.data_ptr()); };
  ours_fwd();
  ours_dx();
  ours_dw();
  dnn_fwd();
  dnn_dx();
  dnn_dw();
  MAMCLIP_CUDA_CHECK(cudaDeviceSynchronize());
  const double ey = bench::rel_err(y_ours, y_dnn), edx = bench::rel_err(dx_ours, dx_dnn),
               edw = bench::rel_err(dw_ours, dw_dnn);
  const bool ok = ey < 2e-2 && edx < 2e-2 && edw < 2e-2;
  const char* layout = nhwc ? "NHWC" : "NCHW";
  std::printf("%s N=%lld C=%-4lld H=%-4lld W=%-4lld check vs cuDNN: y %.1e dx %.1e dw %.1e: %s\n", layout, (long long)n,
              (long long)c, (long long)h, (long long)w, ey, edx, edw, ok ? "match" : "MISMATCH");
  // A mismatch still times the shape (a single GPU run should not lose its numbers); it fails at the end.
  const double bytes = double(n * c * h * w) * sizeof(bf16);
  auto copy_dst = Tensor<bf16>::empty({n, c, h, w}, gpu);
  auto copy = [&] {
    MAMCLIP_CUDA_CHECK(cudaMemcpyAsync(copy_dst.data_ptr(), x.data_ptr(), bytes, cudaMemcpyDeviceToDevice, s));
  };
  const double t_copy = bench::best_ms(copy, flush);
  const double copy_gbs = 2 * bytes / t_copy * 1e-6;
  struct Pass {
    const char* name;
    double ours, dnn;
  } passes[] = {{"forward", bench::best_ms(ours_fwd, flush), bench::best_ms(dnn_fwd, flush)},
                {"input grad", bench::best_ms(ours_dx, flush), bench::best_ms(dnn_dx, flush)},
                {"weight grad", bench::best_ms(ours_dw, flush), bench::best_ms(dnn_dw, flush)}};
  for (const Pass& p : passes) {
    const double gbs = 2 * bytes / p.ours * 1e-6;
    std::printf("%s N=%lld C=%-4lld H=%-4lld W=%-4lld %-12s ours %8.3f ms %7.1f GB/s (%3.0f%% of copy) | cuDNN %8.3f "
                "ms %7.1f GB/s | ratio %.2f\n",
                layout, (long long)n, (long long)c, (long long)h, (long long)w, p.name, p.ours, gbs, 100 * gbs / copy_gbs,
                p.dnn, 2 * bytes / p.dnn * 1e-6, p.ours / p.dnn);
  }
  std::printf("N=%lld C=%-4lld H=%-4lld W=%-4lld copy %.3f ms = %.1f GB/s\n", (long long)n, (long long)c, (long long)h,
              (long long)w, t_copy, copy_gbs);
  return ok ? 0 : 1;
}

// ConvNeXt's patchify convs (the 4x4 / 4 stem, the 2x2 / 2 downsamplers)
// through the library's two general paths: cuDNN (what `automatic` picks in a
// build with it) against im2col + cuBLAS, and cuDNN on channels-last storage
// (conv2d's NHWC route, ConvNeXt's layout on a GPU) against NCHW. Forward, and
// backward (dx and dw).
int run_general(int64_t n, const char* name, int64_t cin, int64_t h, int64_t w, int64_t cout, int64_t k,
                const bench::L2Flush& flush) {
  const Device gpu = Device::cuda(0);
  Conv2dGeometry g;
  g.batch = n, g.c_in = cin, g.h = h, g.w = w, g.c_out = cout, g.kh = k, g.kw = k, g.oh = h / k, g.ow = w / k;
  g.stride_h = g.stride_w = k;
  const auto x = randn<float>({n, cin, h, w}).to<bf16>().to(gpu);
  const auto wt = (randn<float>({cout, cin, k, k}) * 0.1f).to<bf16>().to(gpu), b = randn<float>({cout}).to<bf16>().to(gpu);
  const auto dy = randn<float>({n, cout, g.oh, g.ow}).to<bf16>().to(gpu);
  const cudaStream_t s = cuda::current_stream();
  struct Out {
    Tensor<bf16> y, dx, dw;
    double fwd_ms = 0, bwd_ms = 0;
  };
  auto run_path = [&](cuda::ConvPath path) {
    cuda::set_conv_path(path);
    Out o{Tensor<bf16>::empty({n, cout, g.oh, g.ow}, gpu), Tensor<bf16>::empty({n, cin, h, w}, gpu),
          Tensor<bf16>::empty({cout, cin, k, k}, gpu)};
    auto fwd = [&] { cuda::detail::launch_conv2d_forward<bf16>(g, x.data_ptr(), wt.data_ptr(), b.data_ptr(), o.y.data_ptr(), s); };
    auto bwd = [&] {
      cuda::detail::launch_conv2d_backward<bf16>(g, x.data_ptr(), wt.data_ptr(), dy.data_ptr(), o.dx.data_ptr(),
                                                 o.dw.data_ptr(), nullptr, s);
    };
    fwd();
    bwd();
    MAMCLIP_CUDA_CHECK(cudaDeviceSynchronize());
    o.fwd_ms = bench::best_ms(fwd, flush);
    o.bwd_ms = bench::best_ms(bwd, flush);
    cuda::set_conv_path(cuda::ConvPath::automatic);
    return o;
  };
  const Out dnn = run_path(cuda::ConvPath::cudnn), col = run_path(cuda::ConvPath::im2col);
  // The same conv on [N, H, W, C] storage.
  const auto x_cl = x.permute({0, 2, 3, 1}).contiguous(), dy_cl = dy.permute({0, 2, 3, 1}).contiguous();
  Out cl{Tensor<bf16>::empty({n, g.oh, g.ow, cout}, gpu), Tensor<bf16>::empty({n, h, w, cin}, gpu),
         Tensor<bf16>::empty({cout, cin, k, k}, gpu)};
  bool took = true;
  auto fwd_cl = [&] {
    took = cuda::detail::launch_conv2d_nhwc_forward<bf16>(g, x_cl.data_ptr(), wt.data_ptr(), b.data_ptr(),
                                                          cl.y.data_ptr(), s) && took;
  };
  auto bwd_cl = [&] {
    took = cuda::detail::launch_conv2d_nhwc_backward<bf16>(g, x_cl.data_ptr(), wt.data_ptr(), dy_cl.data_ptr(),
                                                           cl.dx.data_ptr(), cl.dw.data_ptr(), nullptr, s) && took;
  };
  fwd_cl();
  bwd_cl();
  MAMCLIP_CUDA_CHECK(cudaDeviceSynchronize());
  cl.fwd_ms = bench::best_ms(fwd_cl, flush);
  cl.bwd_ms = bench::best_ms(bwd_cl, flush);
  const double cy = bench::rel_err(cl.y.permute({0, 3, 1, 2}), dnn.y),
               cdx = bench::rel_err(cl.dx.permute({0, 3, 1, 2}), dnn.dx), cdw = bench::rel_err(cl.dw, dnn.dw);
  const bool cl_ok = took && cy < 2e-2 && cdx < 2e-2 && cdw < 2e-2;
  const double ey = bench::rel_err(dnn.y, col.y), edx = bench::rel_err(dnn.dx, col.dx), edw = bench::rel_err(dnn.dw, col.dw);
  const bool ok = ey < 2e-2 && edx < 2e-2 && edw < 2e-2;
  std::printf("%-22s N=%lld %4lld->%-4lld %4lldx%-4lld check cuDNN vs im2col: y %.1e dx %.1e dw %.1e: %s\n", name,
              (long long)n, (long long)cin, (long long)cout, (long long)h, (long long)w, ey, edx, edw,
              ok ? "match" : "MISMATCH");
  std::printf("%-22s forward  cuDNN %8.3f ms | im2col %8.3f ms | ratio %.2f\n", name, dnn.fwd_ms, col.fwd_ms,
              dnn.fwd_ms / col.fwd_ms);
  std::printf("%-22s backward cuDNN %8.3f ms | im2col %8.3f ms | ratio %.2f\n", name, dnn.bwd_ms, col.bwd_ms,
              dnn.bwd_ms / col.bwd_ms);
  std::printf("%-22s channels last vs NCHW (cuDNN): y %.1e dx %.1e dw %.1e: %s\n", name, cy, cdx, cdw,
              cl_ok ? "match" : (took ? "MISMATCH" : "DECLINED (no NHWC algorithm)"));
  if (!took) return ok ? 0 : 1;  // cuDNN without an NHWC algorithm here: a capability, reported above
  std::printf("%-22s forward  NHWC %8.3f ms | NCHW %8.3f ms | ratio %.2f\n", name, cl.fwd_ms, dnn.fwd_ms,
              cl.fwd_ms / dnn.fwd_ms);
  std::printf("%-22s backward NHWC %8.3f ms | NCHW %8.3f ms | ratio %.2f\n", name, cl.bwd_ms, dnn.bwd_ms,
              cl.bwd_ms / dnn.bwd_ms);
  return ok && cl_ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("bench_conv: no CUDA device; nothing to measure\n");
    return 2;
  }
  try {
    int64_t n = 8;
    if (argc == 3 && std::string(argv[1]) == "--n") n = std::atoll(argv[2]);
    cudaDeviceProp prop{};
    MAMCLIP_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    std::printf("depthwise 7x7 conv, bfloat16, NHWC and NCHW, ours vs cuDNN %d, %s (sm_%d%d); best of 20 runs\n",
                static_cast<int>(cudnnGetVersion()), prop.name, prop.major, prop.minor);
    const bench::L2Flush flush;
    int rc = 0;
    const int64_t stages[4][3] = {{96, 256, 192}, {192, 128, 96}, {384, 64, 48}, {768, 32, 24}};
    // One shape's failure (e.g. cuDNN without an algorithm for it) is reported; the others still run.
    const auto guarded = [&](const char* what, auto&& run) {
      try {
        rc |= run();
      } catch (const std::exception& e) {
        std::printf("%s: FAILED: %s\n", what, e.what());
        rc |= 1;
      }
    };
    for (bool nhwc : {true, false})
      for (const auto& st : stages)
        guarded(nhwc ? "depthwise stage, NHWC" : "depthwise stage, NCHW",
                [&] { return run_stage(n, st[0], st[1], st[2], nhwc, flush); });
#ifdef MAMCLIP_WITH_CUDNN
    std::printf("\nConvNeXt's patchify convs, bfloat16: the library's cuDNN path vs im2col + cuBLAS, and cuDNN on "
                "channels-last storage vs NCHW (ratio below 1: the first faster)\n");
    guarded("stem 4x4/4", [&] { return run_general(n, "stem 4x4/4", 3, 1024, 768, 96, 4, flush); });
    guarded("downsample 1", [&] { return run_general(n, "downsample 1 2x2/2", 96, 256, 192, 192, 2, flush); });
    guarded("downsample 2", [&] { return run_general(n, "downsample 2 2x2/2", 192, 128, 96, 384, 2, flush); });
    guarded("downsample 3", [&] { return run_general(n, "downsample 3 2x2/2", 384, 64, 48, 768, 2, flush); });
#endif
    return rc;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_conv: %s\n", e.what());
    return 1;
  }
}
