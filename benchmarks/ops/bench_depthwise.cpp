// Depthwise 7x7 convolution (ConvNeXt's block conv, padding 3, with bias) on
// the CPU in float: mamclip's conv2d op, forward and forward + backward (input,
// weight and bias gradients), at ConvNeXt-T shapes. Its PyTorch baseline runs
// in another process (depthwise_torch.py, F.conv2d with groups = C):
// depthwise_vs_torch.sh runs both at the same shapes and thread count and
// prints the ratios. This program also times its own two algorithms at the
// kernel level, the direct depthwise kernel against im2col + GEMM, after
// checking that they agree.
//
//   bench_depthwise [--cases 1x96x56x56,1x384x14x14,1x96x256x192] [--iters 20] [--warmup 3]
//
// Threads: OpenMP (OMP_NUM_THREADS) runs channels in parallel.

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "mamclip/mamclip.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace mamclip;

namespace {

template <class F>
bench::Timing time_ms(int warmup, int iters, F&& f) {
  std::vector<double> t;
  for (int i = 0; i < warmup + iters; ++i) {
    const double s = bench::seconds_of(f);
    if (i >= warmup) t.push_back(s * 1e3);
  }
  return bench::summarize(t);
}

double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 0, diff = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    scale = std::max(scale, static_cast<double>(std::abs(b[i])));
    diff = std::max(diff, static_cast<double>(std::abs(a[i] - b[i])));
  }
  return diff / std::max(scale, 1e-30);
}

}  // namespace

int main(int argc, char** argv) {
  std::string cases = "1x96x56x56,1x384x14x14,1x96x256x192";
  int iters = 20, warmup = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i];
    if (a == "--cases") cases = argv[i + 1];
    else if (a == "--iters") iters = std::atoi(argv[i + 1]);
    else if (a == "--warmup") warmup = std::atoi(argv[i + 1]);
    else {
      std::fprintf(stderr, "bench_depthwise: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif
  size_t start = 0;
  while (start < cases.size()) {
    size_t end = cases.find(',', start);
    if (end == std::string::npos) end = cases.size();
    const std::string c = cases.substr(start, end - start);
    start = end + 1;
    long long n = 0, ch = 0, h = 0, w = 0;
    if (std::sscanf(c.c_str(), "%lldx%lldx%lldx%lld", &n, &ch, &h, &w) != 4) {
      std::fprintf(stderr, "bench_depthwise: case '%s' is not NxCxHxW\n", c.c_str());
      return 2;
    }
    Generator gen(0);
    const Tensor<float> x = rand<float>({n, ch, h, w}, gen), wt = rand<float>({ch, 1, 7, 7}, gen), b = rand<float>({ch}, gen);
    Conv2dOptions o;
    o.padding = {3, 3};
    o.groups = ch;
    const Conv2dGeometry g = detail::conv2d_geometry(x, wt, b, o);
    const Tensor<float> gy = rand<float>({n, ch, g.oh, g.ow}, gen);

    // Kernel level: both algorithms into their own buffers, checked against each other first.
    std::vector<float> y[2], dx[2], dw[2], db[2];
    const ConvAlgorithm algos[2] = {ConvAlgorithm::depthwise, ConvAlgorithm::im2col};
    auto fwd = [&](int a) { cpu::conv2d_forward(g, x.data_ptr(), wt.data_ptr(), b.data_ptr(), y[a].data(), algos[a]); };
    auto bwd = [&](int a) {
      cpu::conv2d_backward(g, x.data_ptr(), wt.data_ptr(), gy.data_ptr(), dx[a].data(), dw[a].data(), db[a].data(), algos[a]);
    };
    for (int a = 0; a < 2; ++a) {
      y[a].resize(static_cast<size_t>(gy.numel()));
      dx[a].resize(static_cast<size_t>(x.numel()));
      dw[a].resize(static_cast<size_t>(wt.numel()));
      db[a].resize(static_cast<size_t>(ch));
      fwd(a);
      bwd(a);
    }
    const double err = std::max({max_rel_diff(y[0], y[1]), max_rel_diff(dx[0], dx[1]), max_rel_diff(dw[0], dw[1]),
                                 max_rel_diff(db[0], db[1])});
    if (!(err < 1e-4)) {
      std::fprintf(stderr, "bench_depthwise: depthwise and im2col disagree on %s (max relative difference %g)\n",
                   c.c_str(), err);
      return 1;
    }
    const bench::Timing kd = time_ms(warmup, iters, [&] { fwd(0); });
    const bench::Timing ki = time_ms(warmup, iters, [&] { fwd(1); });
    const bench::Timing kdb = time_ms(warmup, iters, [&] { fwd(0); bwd(0); });
    const bench::Timing kib = time_ms(warmup, iters, [&] { fwd(1); bwd(1); });

    // Op level, as a user calls it: forward without a graph, then forward + backward through autograd.
    const bench::Timing of = time_ms(warmup, iters, [&] {
      NoGradGuard ng;
      conv2d(x, wt, b, o);
    });
    const bench::Timing ofb = time_ms(warmup, iters, [&] {
      Tensor<float> xl = x.detach().set_requires_grad(), wl = wt.detach().set_requires_grad(), bl = b.detach().set_requires_grad();
      conv2d(xl, wl, bl, o).backward(gy);
    });
    std::printf("mamclip depthwise7x7 N=%lld C=%lld H=%lld W=%lld threads=%d: fwd median %.3f ms min %.3f ms; "
                "fwd+bwd median %.3f ms min %.3f ms\n",
                n, ch, h, w, threads, of.median_s, of.best_s, ofb.median_s, ofb.best_s);
    std::fprintf(stderr,
                 "  kernels N=%lld C=%lld H=%lld W=%lld (agree to %.1e): depthwise fwd %.3f ms, im2col fwd %.3f ms (%.1fx); "
                 "depthwise fwd+bwd %.3f ms, im2col fwd+bwd %.3f ms (%.1fx) [medians]\n",
                 n, ch, h, w, err, kd.median_s, ki.median_s, ki.median_s / kd.median_s, kdb.median_s, kib.median_s,
                 kib.median_s / kdb.median_s);
  }
  return 0;
}
