// One MAM-CLIP pretraining step, as train::pretrain_step takes it:
// zero_grad, VLModel forward in train mode (dropout as configured), symmetric
// contrastive + 0.5 * MLM NLL (only the labelled positions are projected onto
// the vocabulary; the reference projects them all), backward and an AdamW
// update (lr 1e-4, weight decay 1e-6), with random weights and a random batch.
// Its baseline is the reference model (timm ConvNeXt + transformers BertModel +
// the fusion Transformer) under PyTorch in another process: vlmodel_vs_torch.sh
// runs both at the same shapes and thread count and prints the ratio. Lines are in vlmodel_torch.py's format.
//
//   bench_vlmodel [--cases small:8x128x96,full:1x256x192] [--iters 3] [--warmup 1] [--len 100]
//                 [--device cpu|cuda|cuda:N] [--precision fp32|bf16|fp16]
//
// --device cuda (a build with the CUDA backend) runs the step on the GPU: model, batch and AdamW
// state live there, and each step ends with a read of logit_scale, which waits for the whole
// step (a copy on the same stream), so the times are the GPU's. --precision is the step's
// autocast (the Pretrainer's trainparams.precision; fp16 without the loss scaler here).
//
// A case is CONFIG:BATCHxHEIGHTxWIDTH with CONFIG small (VLModelConfig::small()) or full
// (VLModelConfig::mamclip("convnext_small"): ConvNeXt-S + BERT-base + one fusion block). Every
// row of input_ids has --len tokens: [CLS] first, words, [SEP], then [PAD]; the labels hold the
// masked words (every 7th word), [CLS] and [SEP], and [PAD] = 0 elsewhere. The loss of the
// first (warm-up) step is printed so both sides can be checked finite and of similar size.
// Threads: Eigen's GEMM uses OpenMP (OMP_NUM_THREADS), as PyTorch's intra-op pool does.

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "bench_common.hpp"
#include "mamclip/core/device.hpp"
#include "mamclip/models/clip/vlmodel.hpp"
#include "mamclip/optim/adamw.hpp"
#include "mamclip/train/pretrain.hpp"

#if defined(_OPENMP)
#include <omp.h>
#endif

using namespace mamclip;
using models::clip::VLModel;
using models::clip::VLModelConfig;

namespace {

constexpr int64_t kCls = 2, kSep = 3, kMask = 4, kFirstWord = 5;

struct Case {
  std::string config;  // small | full
  long long batch = 1, height = 224, width = 224;
};

bool parse_shape(const std::string& s, Case& c) {
  return std::sscanf(s.c_str(), "%lldx%lldx%lld", &c.batch, &c.height, &c.width) == 3 && c.batch > 0 && c.height >= 32 &&
         c.width >= 32;
}

struct Batch {
  Tensor<float> images;
  Tensor<int64_t> input_ids, labels;
};

// Row i has 3/4 of len tokens or more (lengths differ across rows so that some rows pad);
// vlmodel_torch.py builds the same layout from its own random words.
Batch random_batch(const Case& c, int64_t len, int64_t vocab, Generator& gen) {
  Batch b;
  b.images = rand<float>({c.batch, 3, c.height, c.width}, gen);
  const std::vector<double> r = rand<double>({c.batch, len}, gen).to_vector();
  std::vector<int64_t> ids(static_cast<size_t>(c.batch * len), 0), labels(ids.size(), 0);
  for (int64_t i = 0; i < c.batch; ++i) {
    const int64_t used = len - (i * 7) % (len / 4 + 1);  // tokens incl. [CLS] and [SEP]
    int64_t* row = ids.data() + i * len;
    int64_t* lab = labels.data() + i * len;
    row[0] = lab[0] = kCls;
    for (int64_t t = 1; t < used - 1; ++t) {
      row[t] = kFirstWord + static_cast<int64_t>(r[static_cast<size_t>(i * len + t)] * (vocab - kFirstWord));
      if (t % 7 == 0) {
        lab[t] = row[t];
        row[t] = kMask;
      }
    }
    row[used - 1] = lab[used - 1] = kSep;
  }
  b.input_ids = from_vector<int64_t>(ids, {c.batch, len});
  b.labels = from_vector<int64_t>(labels, {c.batch, len});
  return b;
}

// One pretraining step as `mamclip pretrain` takes it (train::pretrain_step, one micro-batch,
// the paper's in-batch negatives); returns the loss.
float train_step(VLModel& model, optim::AdamW& opt, const Batch& b, const std::string& precision) {
  train::PretrainStepOptions options;
  options.loss.mlm_coeff = 0.5;
  options.precision = precision;
  Generator unused(0);  // replays random draws for negatives == "full" only
  const train::ClipMicroBatch mb{b.images, b.input_ids, b.labels};
  const float loss = static_cast<float>(train::pretrain_step(model, opt, {mb}, options, unused).loss);
  (void)model.logit_scale.item();  // the optimizer's kernels are done (a no-op wait on the CPU)
  return loss;
}

int run_cases(const std::string& cases, int iters, int warmup, long long len, Device device, const std::string& precision,
              int threads);

}  // namespace

int main(int argc, char** argv) {
  std::string cases = "small:8x128x96,full:1x256x192";
  int iters = 3, warmup = 1;
  long long len = 100;
  std::string device_name = "cpu", precision = "fp32";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "bench_vlmodel: %s needs a value\n", a.c_str());
      return 2;
    }
    if (a == "--cases")
      cases = argv[++i];
    else if (a == "--iters")
      iters = std::atoi(argv[++i]);
    else if (a == "--warmup")
      warmup = std::atoi(argv[++i]);
    else if (a == "--len")
      len = std::atoll(argv[++i]);
    else if (a == "--device")
      device_name = argv[++i];
    else if (a == "--precision")
      precision = argv[++i];
    else {
      std::fprintf(stderr, "bench_vlmodel: unknown flag %s\n", a.c_str());
      return 2;
    }
  }
  if (iters < 1 || warmup < 1 || len < 8 || len > 512) {
    std::fprintf(stderr, "bench_vlmodel: expected --iters >= 1, --warmup >= 1 and --len in 8..512\n");
    return 2;
  }
  const std::optional<Device> device = parse_device(device_name);
  if (!device || (precision != "fp32" && precision != "bf16" && precision != "fp16")) {
    std::fprintf(stderr, "bench_vlmodel: expected --device cpu, cuda or cuda:N and --precision fp32, bf16 or fp16\n");
    return 2;
  }
  int threads = 1;
#if defined(_OPENMP)
  threads = omp_get_max_threads();
#endif

  try {
    return run_cases(cases, iters, warmup, len, *device, precision, threads);
  } catch (const std::exception& e) {  // e.g. --device cuda in a build without the CUDA backend
    std::fprintf(stderr, "bench_vlmodel: %s\n", e.what());
    return 1;
  }
}

namespace {
int run_cases(const std::string& cases, int iters, int warmup, long long len, Device device, const std::string& precision,
              int threads) {
  Generator gen(0);
  std::istringstream specs(cases);
  for (std::string spec; std::getline(specs, spec, ',');) {
    Case c;
    const size_t colon = spec.find(':');
    c.config = colon == std::string::npos ? "" : spec.substr(0, colon);
    if ((c.config != "small" && c.config != "full") || !parse_shape(spec.substr(colon + 1), c)) {
      std::fprintf(stderr, "bench_vlmodel: case '%s' is not (small|full):BATCHxHEIGHTxWIDTH\n", spec.c_str());
      return 2;
    }
    VLModelConfig config = c.config == "small" ? VLModelConfig::small() : VLModelConfig::mamclip("convnext_small");
    config.context_length = std::max<int64_t>(config.context_length, len);
    VLModel model(config, gen);
    model.train();
    model.to(device);  // before AdamW, whose state is made where the parameters are
    optim::AdamWOptions ao;
    ao.lr = 1e-4;
    ao.weight_decay = 1e-6;
    optim::AdamW opt(model.parameters(), ao);
    Batch b = random_batch(c, len, config.text.vocab_size, gen);
    b = {b.images.to(device), b.input_ids.to(device), b.labels.to(device)};

    float first_loss = 0;
    std::vector<double> times;
    for (int i = 0; i < warmup + iters; ++i) {
      float loss = 0;
      const double s = bench::seconds_of([&] { loss = train_step(model, opt, b, precision); });
      if (i == 0) first_loss = loss;
      if (!std::isfinite(loss)) {
        std::fprintf(stderr, "bench_vlmodel: case '%s': step %d gave loss %g\n", spec.c_str(), i, loss);
        return 1;
      }
      if (i >= warmup) times.push_back(s * 1e3);
    }
    const bench::Timing t = bench::summarize(times);
    // The CPU line keeps its historical form (vlmodel_vs_torch.sh pairs lines by it); others name device and precision.
    const std::string where = device.is_cpu() && precision == "fp32"
                                  ? "threads=" + std::to_string(threads)
                                  : "device=" + device.str() + " precision=" + precision;
    std::printf("mamclip vlmodel %s batch=%lld %lldx%lld len=%lld %s: loss %.4f median %.2f ms min %.2f ms\n",
                c.config.c_str(), c.batch, c.height, c.width, len, where.c_str(), first_loss, t.median_s, t.best_s);
    std::fflush(stdout);
  }
  return 0;
}
}  // namespace
