// The training paths on CUDA against the same paths on the CPU: a MAM-CLIP
// pretraining step (BERT, ConvNeXt, the fusion block, the fused CLIP loss and
// the MLM loss, GradCache negatives, AdamW) and fine-tuning a classifier with
// finetune_classifier on a model moved to the GPU.
//
// Without a GPU: the Module::device() checks. With a GPU (cases tagged [gpu];
// without one each prints "skipped: no CUDA device"): losses and every
// gradient or parameter of a tiny model, float32 (TF32 off), within
// float rounding of the CPU's.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "cuda/gpu_support.hpp"
#include "mamclip/data/synthetic.hpp"
#include "mamclip/train/finetune.hpp"
#include "support/clip_batches.hpp"
#include "support/test_support.hpp"

using namespace mamclip;
using namespace mamclip::test;
using models::clip::ClassifierHead;
using models::clip::MamClipClassifier;
using models::clip::VLModel;

namespace {

std::vector<train::ClipMicroBatch> to_device(const std::vector<train::ClipMicroBatch>& batches, Device device) {
  std::vector<train::ClipMicroBatch> out;
  for (const auto& b : batches) out.push_back({b.images.to(device), b.input_ids.to(device), b.labels.to(device)});
  return out;
}

// Every parameter of `got` (any device) within tol · max|want| of want's, but for the
// attention key biases, which only rounding noise moves (is_key_bias).
void require_close_parameters(const nn::Module& got, const nn::Module& want, double tol) {
  const auto g = got.named_parameters(), w = want.named_parameters();
  REQUIRE(g.size() == w.size());
  for (size_t i = 0; i < g.size(); ++i) {
    const std::string& name = g[i].first;
    INFO(name);
    const auto a = g[i].second.to(kCPU).to_vector(), b = w[i].second.to_vector();
    double scale = 1e-6, err = 0;
    for (size_t j = 0; j < a.size(); ++j) {
      if (is_key_bias(name, j, a.size())) continue;
      scale = std::max(scale, std::abs(static_cast<double>(b[j])));
      err = std::max(err, std::abs(static_cast<double>(a[j]) - b[j]));
    }
    CHECK(err <= tol * scale);
  }
}

}  // namespace

TEST_CASE("Module::device: the parameters' device (the CPU for a module without any)") {
  Generator init(1);
  nn::Linear a(3, 4, true, init);
  CHECK(a.device() == kCPU);
  CHECK(nn::Sequential().device() == kCPU);
}

TEST_CASE("Module::device names two parameters that are on different devices", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  Generator init(1);
  auto first = std::make_shared<nn::Linear>(3, 4, true, init), second = std::make_shared<nn::Linear>(4, 2, true, init);
  nn::Sequential both({first, second});
  second->to(kGPU);
  MAMCLIP_REQUIRE_THROWS_WITH(both.device(), device_error,
                              "Sequential: parameter '1.weight' is on cuda:0 but '0.weight' is on cpu");
  both.to(kGPU);
  CHECK(both.device() == kGPU);
}

TEST_CASE("a GradCache pretraining step on CUDA equals the CPU's: losses, gradients, AdamW update", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  Generator init_cpu(7), init_gpu(7);
  VLModel cpu_model(tiny_config(0.0), init_cpu), gpu_model(tiny_config(0.0), init_gpu);
  gpu_model.to(kGPU);
  REQUIRE(gpu_model.device() == kGPU);
  cpu_model.train();
  gpu_model.train();
  auto gen_cpu = train::share_generator(cpu_model, 11), gen_gpu = train::share_generator(gpu_model, 11);
  Generator data(3);
  std::vector<train::ClipMicroBatch> micro;
  for (int i = 0; i < 3; ++i) micro.push_back(random_batch(2, data));

  train::PretrainStepOptions full;
  full.negatives = "full";
  optim::AdamW cpu_opt(cpu_model.parameters(), {.lr = 1e-3}), gpu_opt(gpu_model.parameters(), {.lr = 1e-3});
  for (int step = 0; step < 2; ++step) {
    INFO("step " << step);
    const auto rc = train::pretrain_step(cpu_model, cpu_opt, micro, full, *gen_cpu, step);
    const auto rg = train::pretrain_step(gpu_model, gpu_opt, to_device(micro, kGPU), full, *gen_gpu, step);
    CHECK(std::abs(rg.contrastive - rc.contrastive) <= 1e-4 * std::max(1.0, std::abs(rc.contrastive)));
    CHECK(std::abs(rg.mlm - rc.mlm) <= 1e-4 * std::max(1.0, std::abs(rc.mlm)));
  }
  require_close_parameters(gpu_model, cpu_model, 1e-3);
}

TEST_CASE("finetune_classifier on a model moved to CUDA follows the CPU run", "[gpu]") {
  MAMCLIP_SKIP_WITHOUT_GPU();
  files::TempDir dir("train_cuda_data");
  const std::vector<data::Sample> all = data::make_synthetic_set(dir.path(), 24, 64, 48, 7);
  const std::vector<data::Sample> train(all.begin(), all.begin() + 16), val(all.begin() + 16, all.begin() + 20),
      test(all.begin() + 20, all.end());
  const std::vector<std::string> classes{"normal", "benign", "malignant"};
  models::ConvNeXtConfig convnext;
  convnext.depths = {1, 1, 1, 1};
  convnext.dims = {8, 16, 16, 32};
  auto make = [&] {
    Generator gen(5);
    return std::make_shared<MamClipClassifier>(
        convnext, 24, std::vector<ClassifierHead>{{"density_layer", 4}, {"birads_layer", 3}}, gen);
  };
  const auto cpu_ptr = make(), gpu_ptr = make();
  MamClipClassifier &cpu_model = *cpu_ptr, &gpu_model = *gpu_ptr;
  gpu_model.to(kGPU);
  train::FinetuneOptions o;
  o.epochs = 2;
  o.batch_size = 8;
  o.lr = 1e-3;
  o.height = 64;
  o.width = 48;
  o.augmentation = "none";
  o.workers = 1;
  o.quiet = true;
  const train::FinetuneResult rc = train::finetune_classifier(cpu_model, train, val, test, o, classes);
  const train::FinetuneResult rg = train::finetune_classifier(gpu_model, train, val, test, o, classes);
  REQUIRE(gpu_model.device() == kGPU);
  REQUIRE(rg.step_losses.size() == rc.step_losses.size());
  for (size_t i = 0; i < rc.step_losses.size(); ++i) {
    INFO("step " << i);
    CHECK(std::abs(rg.step_losses[i] - rc.step_losses[i]) <= 1e-3 * std::max(1.0, std::abs(rc.step_losses[i])));
  }
  CHECK(rg.test.count == rc.test.count);
  require_close_parameters(gpu_model, cpu_model, 1e-2);
}
