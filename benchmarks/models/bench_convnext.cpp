// ConvNeXt-T on the CPU: forward (eval, no grad) and a training step
// (forward + backward of sum(output * w), train mode, no optimizer update) with
// random weights, and the peak memory of a training step at MAM-CLIP's input
// size with and without gradient checkpointing. Its baseline is timm's
// convnext_tiny under PyTorch in another process: convnext_vs_torch.sh runs
// both at the same shapes and thread count and prints the ratio. Lines are in
// convnext_torch.py's format.
//
//   bench_convnext [--cases fwd:1x224x224,train:4x224x224] [--iters 5] [--warmup 1]
//   bench_convnext --memory 1x1024x768 [--checkpointing]
//
// --memory runs one training step and reports the process's peak resident set
// (VmHWM of /proc/self/status) before and after it, so run it in a process of its own.
// Threads: Eigen's GEMM uses OpenMP (OMP_NUM_THREADS), as PyTorch's intra-op pool does.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "mamclip/models/convnext.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace mamclip;

namespace {

// VmHWM (peak resident set) of this process in MiB, or -1 where /proc has none.
double peak_rss_mib() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return std::atof(line.c_str() + 6) / 1024.0;  // kB
  return -1;
}

struct Case {
  std::string mode;  // fwd | train
  long long batch = 1, height = 224, width = 224;
};

bool parse_shape(const std::string& s, Case& c) {
  return std::sscanf(s.c_str(), "%lldx%lldx%lld", &c.batch, &c.height, &c.width) == 3 && c.batch > 0 && c.height >= 32 &&
         c.width >= 32;
}

// One training step: forward in train mode, backward of sum(output * w).
void train_step(models::ConvNeXt& model, const Tensor<float>& x, const Tensor<float>& w) {
  model.zero_grad();
  sum(model.forward(x) * w).backward();
}

}  // namespace

int main(int argc, char** argv) {
  std::string cases = "fwd:1x224x224,train:4x224x224", memory;
  bool checkpointing = false;
  int iters = 5, warmup = 1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--checkpointing") {
      checkpointing = true;
      continue;
    }
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_convnext: %s needs a value\n", a.c_str());
      return 2;
    }
    if (a == "--cases")
      cases = argv[++i];
    else if (a == "--iters")
      iters = std::atoi(argv[++i]);
    else if (a == "--warmup")
      warmup = std::atoi(argv[++i]);
    else if (a == "--memory")
      memory = argv[++i];
    else {
      std::fprintf(stderr, "bench_convnext: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif

  Generator gen(0);
  models::ConvNeXt model(models::ConvNeXtConfig::convnext_tiny(), gen);

  if (!memory.empty()) {
    Case c;
    if (!parse_shape(memory, c)) {
      std::fprintf(stderr, "bench_convnext: --memory '%s' is not BATCHxHEIGHTxWIDTH (height, width >= 32)\n",
                   memory.c_str());
      return 2;
    }
    model.train();
    model.set_grad_checkpointing(checkpointing);
    const Tensor<float> x = rand<float>({c.batch, 3, c.height, c.width}, gen);
    const Tensor<float> w = randn<float>({c.batch, 1000}, gen);
    const double before = peak_rss_mib();
    const double s = bench::seconds_of([&] { train_step(model, x, w); });
    const double after = peak_rss_mib();
    std::printf(
        "mamclip convnext_tiny train-step memory batch=%lld %lldx%lld checkpointing=%s threads=%d: peak RSS "
        "%.0f MiB (%.0f MiB before the step, +%.0f MiB) time %.2f s\n",
        c.batch, c.height, c.width, checkpointing ? "on" : "off", threads, after, before, after - before, s);
    return 0;
  }

  size_t start = 0;
  while (start < cases.size()) {
    size_t end = cases.find(',', start);
    if (end == std::string::npos) end = cases.size();
    const std::string spec = cases.substr(start, end - start);
    start = end + 1;
    Case c;
    const size_t colon = spec.find(':');
    c.mode = colon == std::string::npos ? "" : spec.substr(0, colon);
    if ((c.mode != "fwd" && c.mode != "train") || !parse_shape(spec.substr(colon + 1), c)) {
      std::fprintf(stderr, "bench_convnext: case '%s' is not (fwd|train):BATCHxHEIGHTxWIDTH\n", spec.c_str());
      return 2;
    }
    const Tensor<float> x = rand<float>({c.batch, 3, c.height, c.width}, gen);
    const Tensor<float> w = randn<float>({c.batch, 1000}, gen);
    std::vector<double> times;
    for (int i = 0; i < warmup + iters; ++i) {
      double s = 0;
      if (c.mode == "fwd") {
        model.eval();
        NoGradGuard no_grad;
        s = bench::seconds_of([&] { model.forward(x); });
      } else {
        model.train();
        s = bench::seconds_of([&] { train_step(model, x, w); });
      }
      if (i >= warmup) times.push_back(s * 1e3);
    }
    const bench::Timing t = bench::summarize(times);
    std::printf("mamclip convnext_tiny %s batch=%lld %lldx%lld threads=%d: median %.2f ms min %.2f ms\n", c.mode.c_str(),
                c.batch, c.height, c.width, threads, t.median_s, t.best_s);
  }
  return 0;
}
