// ConvNeXt (timm's convnext_tiny by default, or convnext_small: MAM-CLIP's
// vision encoder): forward (eval, no grad) and a training step (forward +
// backward of sum(output * w), train mode, no optimizer update) with random
// weights, and the peak memory of a training step at MAM-CLIP's input size
// with and without gradient checkpointing. Its baseline is timm's model under
// PyTorch in another process: convnext_vs_torch.sh runs both at the same
// shapes, device and thread count and prints the ratio. Lines are in
// convnext_torch.py's format.
//
//   bench_convnext [--cases fwd:1x224x224,train:4x224x224] [--iters 5] [--warmup 1]
//                  [--model convnext_tiny|convnext_small] [--device cpu|cuda|cuda:N] [--precision fp32|bf16|fp16]
//   bench_convnext --memory 1x1024x768 [--checkpointing]
//
// --device cuda (a build with the CUDA backend) runs on the GPU; each timed run
// ends with a one-element read of its last result (the input-side gradient of
// the stem, or the logits), which waits for the kernels queued before it.
// --precision runs forward and loss in an autocast region (backward outside it,
// as torch.autocast is used).
// --memory runs one training step on the CPU and reports the process's peak
// resident set (VmHWM of /proc/self/status) before and after it, so run it in
// a process of its own.
// Threads: Eigen's GEMM uses OpenMP (OMP_NUM_THREADS), as PyTorch's intra-op pool does.

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "mamclip/core/autocast.hpp"
#include "mamclip/core/device.hpp"
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

// The autocast region of --precision (disabled for fp32).
struct Precision {
  bool enabled = false;
  DType dtype = DType::bf16;
};

// Waits for the kernels queued before t was written (a one-element copy to the host on the same stream).
void wait_for(const Tensor<float>& t) { (void)t.reshape({-1}).narrow(0, 0, 1).to(kCPU); }

// One training step: forward in train mode, backward of sum(output * w).
void train_step(models::ConvNeXt& model, const Tensor<float>& x, const Tensor<float>& w, Precision p) {
  model.zero_grad();
  Tensor<float> loss;
  {
    AutocastGuard autocast(x.device().type, p.dtype, p.enabled);
    loss = sum(model.forward(x) * w);
  }
  loss.backward();
  wait_for(model.parameters().front().grad());  // the stem's weight: the last gradient backward writes
}

int run_cases(models::ConvNeXt& model, const std::string& model_name, const std::string& cases, int iters, int warmup,
              Device device, const std::string& precision, int threads);

}  // namespace

int main(int argc, char** argv) {
  std::string cases = "fwd:1x224x224,train:4x224x224", memory, model_name = "convnext_tiny", device_name = "cpu",
              precision = "fp32";
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
    else if (a == "--model")
      model_name = argv[++i];
    else if (a == "--device")
      device_name = argv[++i];
    else if (a == "--precision")
      precision = argv[++i];
    else {
      std::fprintf(stderr, "bench_convnext: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif

  const std::optional<Device> device = parse_device(device_name);
  if (!device || (precision != "fp32" && precision != "bf16" && precision != "fp16") ||
      (model_name != "convnext_tiny" && model_name != "convnext_small")) {
    std::fprintf(stderr, "bench_convnext: expected --model convnext_tiny or convnext_small, --device cpu, cuda or "
                         "cuda:N and --precision fp32, bf16 or fp16\n");
    return 2;
  }
  if (!memory.empty() && (!device->is_cpu() || precision != "fp32")) {
    std::fprintf(stderr, "bench_convnext: --memory measures the CPU's resident set: use it without --device / --precision\n");
    return 2;
  }

  Generator gen(0);
  models::ConvNeXt model(models::ConvNeXtConfig::by_name(model_name), gen);

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
    const double s = bench::seconds_of([&] { train_step(model, x, w, {}); });
    const double after = peak_rss_mib();
    std::printf(
        "mamclip %s train-step memory batch=%lld %lldx%lld checkpointing=%s threads=%d: peak RSS "
        "%.0f MiB (%.0f MiB before the step, +%.0f MiB) time %.2f s\n",
        model_name.c_str(), c.batch, c.height, c.width, checkpointing ? "on" : "off", threads, after, before,
        after - before, s);
    return 0;
  }

  try {
    return run_cases(model, model_name, cases, iters, warmup, *device, precision, threads);
  } catch (const std::exception& e) {  // e.g. --device cuda in a build without the CUDA backend
    std::fprintf(stderr, "bench_convnext: %s\n", e.what());
    return 1;
  }
}

namespace {
int run_cases(models::ConvNeXt& model, const std::string& model_name, const std::string& cases, int iters, int warmup,
              Device device, const std::string& precision, int threads) {
  Generator gen(1);
  model.to(device);
  const Precision p{precision != "fp32", precision == "fp16" ? DType::f16 : DType::bf16};

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
    const Tensor<float> x = rand<float>({c.batch, 3, c.height, c.width}, gen).to(device);
    const Tensor<float> w = randn<float>({c.batch, 1000}, gen).to(device);
    std::vector<double> times;
    for (int i = 0; i < warmup + iters; ++i) {
      double s = 0;
      if (c.mode == "fwd") {
        model.eval();
        NoGradGuard no_grad;
        s = bench::seconds_of([&] {
          AutocastGuard autocast(device.type, p.dtype, p.enabled);
          wait_for(model.forward(x));
        });
      } else {
        model.train();
        s = bench::seconds_of([&] { train_step(model, x, w, p); });
      }
      if (i >= warmup) times.push_back(s * 1e3);
    }
    const bench::Timing t = bench::summarize(times);
    // The CPU fp32 line keeps its historical form; others name device and precision.
    const std::string where = device.is_cpu() && precision == "fp32" ? "threads=" + std::to_string(threads)
                                                                      : "device=" + device.str() + " precision=" + precision;
    std::printf("mamclip %s %s batch=%lld %lldx%lld %s: median %.2f ms min %.2f ms\n", model_name.c_str(),
                c.mode.c_str(), c.batch, c.height, c.width, where.c_str(), t.median_s, t.best_s);
    std::fflush(stdout);
  }
  return 0;
}
}  // namespace
