// Pretraining steps: GradCache (`full` negatives) against one un-accumulated
// batch, dropout replay, the `paper` accumulation, non-finite detection, and
// the config file layer.
#include "support/test_support.hpp"

#include <cmath>
#include <limits>
#include <utility>

#include "mamclip/data/synthetic.hpp"
#include "mamclip/train/config.hpp"
#include "mamclip/train/pretrain.hpp"
#include "mamclip/train/pretrain_loop.hpp"
#include "support/clip_batches.hpp"
#include "support/spelling_tokenizer.hpp"

namespace test_pretrain {
using namespace mamclip;
using models::clip::VLModel;
using models::clip::VLModelConfig;

using test::concat;
using test::gradients;
using test::random_batch;
using test::require_same_gradients;
using test::tiny_config;

TEST_CASE("GradCache over k micro-batches gives the gradients of one batch of k*B", "[pretrain]") {
  // 4 x 2, and the reference's 8 micro-batches of 8 (effective batch 64).
  const auto [k, b] = GENERATE(std::pair<int, int64_t>{4, 2}, std::pair<int, int64_t>{8, 8});
  INFO(k << " micro-batches of " << b);
  Generator init(7);
  VLModel model(tiny_config(0.0), init);
  model.train();
  auto gen = train::share_generator(model, 11);
  Generator data(3);
  std::vector<train::ClipMicroBatch> micro;
  for (int i = 0; i < k; ++i) micro.push_back(random_batch(b, data));

  // One un-accumulated batch of k * b: the reference gradients.
  train::PretrainStepOptions paper;
  model.zero_grad();
  const auto whole = train::accumulate_gradients(model, {concat(micro)}, paper, *gen);
  const auto ref = gradients(model);

  train::PretrainStepOptions full;
  full.negatives = "full";
  model.zero_grad();
  const auto cached = train::accumulate_gradients(model, micro, full, *gen);
  CHECK(std::abs(cached.contrastive - whole.contrastive) < 1e-5);
  CHECK(std::abs(cached.mlm - whole.mlm) < 1e-5);
  CHECK(std::abs(cached.loss - whole.loss) < 1e-5);
  require_same_gradients(model, ref, 1e-4);

  // `paper` sees only 2 negatives per pair: a different (smaller) contrastive loss.
  model.zero_grad();
  const auto local = train::accumulate_gradients(model, micro, paper, *gen);
  CHECK(local.contrastive < whole.contrastive - 1e-3);
}

TEST_CASE("GradCache replays dropout: with one micro-batch it equals the plain step", "[pretrain]") {
  Generator init(5);
  VLModel model(tiny_config(0.3), init);
  model.train();
  auto gen = train::share_generator(model, 99);
  Generator data(4);
  const std::vector<train::ClipMicroBatch> one{random_batch(3, data)};

  const Generator fallback = default_generator();
  model.zero_grad();
  gen->set_state(99, 10);
  const auto plain = train::accumulate_gradients(model, one, {}, *gen);
  const auto ref = gradients(model);
  const uint64_t offset_after_plain = gen->offset();

  train::PretrainStepOptions full;
  full.negatives = "full";
  model.zero_grad();
  gen->set_state(99, 10);
  default_generator() = fallback;
  const auto cached = train::accumulate_gradients(model, one, full, *gen);
  CHECK(std::abs(cached.loss - plain.loss) < 1e-5);
  require_same_gradients(model, ref, 1e-4);
  // The stream continues after the draws of the first pass, so the next step
  // draws fresh masks.
  CHECK(gen->offset() > 10);
  CHECK(offset_after_plain > 10);
}

TEST_CASE("a world-of-one DataParallel leaves the step unchanged and reduces buckets inside backward",
          "[pretrain][dist]") {
  for (const std::string negatives : {"paper", "full"}) {
    INFO(negatives);
    Generator init(21);
    VLModel model(tiny_config(0.0), init);
    model.train();
    auto gen = train::share_generator(model, 5);
    Generator data(9);
    const std::vector<train::ClipMicroBatch> micro{random_batch(3, data), random_batch(2, data)};
    train::PretrainStepOptions plain;
    plain.negatives = negatives;
    const auto ref_result = train::accumulate_gradients(model, micro, plain, *gen);
    const auto ref = gradients(model);

    dist::LocalCommunicator comm;
    dist::DataParallelOptions o;
    o.bucket_bytes = 4096;  // many buckets
    dist::DataParallel dp(model, comm, o);
    REQUIRE(dp.buckets() > 3);
    train::PretrainStepOptions parallel = plain;
    parallel.data_parallel = &dp;
    for (int step = 0; step < 2; ++step) {
      model.zero_grad();
      const auto r = train::accumulate_gradients(model, micro, parallel, *gen);
      CHECK(r.loss == Approx(ref_result.loss).epsilon(1e-6));
      CHECK(r.mlm == Approx(ref_result.mlm).epsilon(1e-6));
      require_same_gradients(model, ref, 1e-6);
    }
    // The second step buckets parameters in the order their gradients came:
    // all but the buckets holding parameters that no backward reaches start
    // inside the last backward.
    CHECK(dp.buckets_launched_in_backward() >= dp.buckets() - 2);
    CHECK(dp.reduced_bytes_per_step() >= 4 * static_cast<int64_t>(model.parameters().size()));
  }
}

TEST_CASE("a non-finite loss stops the step and names it", "[pretrain]") {
  Generator init(1);
  VLModel model(tiny_config(0.0), init);
  auto gen = train::share_generator(model, 1);
  Generator data(2);
  auto batch = random_batch(2, data);
  batch.images.fill_(std::nanf(""));
  optim::AdamW opt(model.parameters());
  MAMCLIP_REQUIRE_THROWS_WITH(train::pretrain_step(model, opt, {batch}, {}, *gen, 17), train::non_finite_error,
                              "pretraining step 17: the contrastive loss is nan");
}

TEST_CASE("check_finite_gradients: clean gradients pass, one inf or NaN element names its parameter", "[pretrain]") {
  Generator init(1);
  VLModel model(tiny_config(0.0), init);
  auto gen = train::share_generator(model, 1);
  Generator data(2);
  train::accumulate_gradients(model, {random_batch(2, data)}, {}, *gen);
  train::check_finite_gradients(model, 3);
  Tensor<float> g = model.mlm_projection.grad();
  REQUIRE(g.numel() > 40);
  const float saved = g.data_ptr()[37];
  g.data_ptr()[37] = std::numeric_limits<float>::infinity();
  MAMCLIP_REQUIRE_THROWS_WITH(train::check_finite_gradients(model, 3), train::non_finite_error,
                              "pretraining step 3: the gradient of mlm_projection holds inf");
  g.data_ptr()[37] = -std::nanf("");
  MAMCLIP_REQUIRE_THROWS_WITH(train::check_finite_gradients(model, 4), train::non_finite_error,
                              "pretraining step 4: the gradient of mlm_projection holds");
  g.data_ptr()[37] = saved;
  g.data_ptr()[g.numel() - 1] = std::numeric_limits<float>::max();  // large but finite
  train::check_finite_gradients(model, 5);
}

TEST_CASE("mixed precision: bf16 and fp16 steps follow the fp32 step; fp16 scales, unscales and skips overflow",
          "[pretrain]") {
  Generator init(7);
  VLModel model(tiny_config(0.0), init);
  model.train();
  auto gen = train::share_generator(model, 11);
  Generator data(3);
  const std::vector<train::ClipMicroBatch> micro = {random_batch(2, data), random_batch(2, data)};
  using Grads = std::vector<std::pair<std::string, std::vector<float>>>;
  // ||g / scale - ref|| / ||ref|| over all parameters, or over the one named.
  auto rel_error = [&](const Grads& ref, double scale, const std::string& only = "") {
    const Grads got = gradients(model);
    double d = 0, n = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
      if (!only.empty() && ref[i].first != only) continue;
      for (size_t e = 0; e < ref[i].second.size(); ++e) {
        const double r = ref[i].second[e], g = got[i].second[e] / scale;
        d += (g - r) * (g - r);
        n += r * r;
      }
    }
    return std::sqrt(d / n);
  };
  // ConvNeXt's layer scale (gamma = 1e-6 at init) makes this gradient ~1e-8 per element: below float16's
  // normal range, where only loss scaling keeps it.
  const std::string tiny = "vision_encoder.stages.0.blocks.0.conv_dw.weight";
  for (const std::string negatives : {"paper", "full"}) {
    INFO("negatives " << negatives);
    train::PretrainStepOptions o;
    o.negatives = negatives;
    model.zero_grad();
    const auto r32 = train::accumulate_gradients(model, micro, o, *gen);
    const Grads ref = gradients(model);
    for (const std::string precision : {"bf16", "fp16"}) {
      INFO("precision " << precision);
      o.precision = precision;
      double tiny_error[2] = {0, 0};
      for (int i = 0; i < 2; ++i) {
        o.loss_scale = i == 0 ? 1.0 : 1024.0;
        model.zero_grad();
        const auto r = train::accumulate_gradients(model, micro, o, *gen);
        CHECK(r.loss != r32.loss);  // the 16-bit forward is visible
        CHECK(std::abs(r.loss - r32.loss) < 0.02 * std::abs(r32.loss));
        CHECK(rel_error(ref, o.loss_scale) < (precision == "bf16" ? 0.05 : 0.01));
        tiny_error[i] = rel_error(ref, o.loss_scale, tiny);
      }
      // bfloat16 has float's exponent range: scaling changes nothing there. float16 flushes the tiny
      // gradient without scaling; scaled by 1024 it survives.
      if (precision == "fp16") {
        CHECK(tiny_error[0] > 0.9);
        CHECK(tiny_error[1] < 0.75 * tiny_error[0]);
      } else {
        CHECK(tiny_error[1] == Approx(tiny_error[0]).epsilon(1e-3));
      }
      o.loss_scale = 1.0;
    }
  }

  // pretrain_step with the default scaler (2^16): steps whose scaled gradients overflow float16 are skipped,
  // the weights untouched and the scale halved each time, until a step goes through.
  optim::AdamW opt(model.parameters(), {.lr = 1e-3});
  train::PretrainStepOptions o;
  o.precision = "fp16";
  optim::GradScaler scaler;
  int skipped = 0;
  for (int step = 0; step < 30; ++step) {
    const auto weights = model.state_dict().at("text_projection").to_vector();
    const double scale = scaler.get_scale();
    const auto r = train::pretrain_step(model, opt, micro, o, *gen, step, &scaler);
    if (!r.skipped) {
      CHECK(model.state_dict().at("text_projection").to_vector() != weights);
      CHECK(scaler.growth_tracker() == 1);
      CHECK(scaler.get_scale() == scale);
      break;
    }
    ++skipped;
    CHECK(model.state_dict().at("text_projection").to_vector() == weights);
    CHECK(scaler.get_scale() == scale / 2);
  }
  CHECK(scaler.growth_tracker() == 1);  // a step went through within 30 tries
  INFO("skipped " << skipped << " steps before the scale fit float16");
  o.precision = "fp8";
  MAMCLIP_REQUIRE_THROWS_WITH(train::accumulate_gradients(model, micro, o, *gen), value_error,
                              "accumulate_gradients: precision must be 'fp32', 'bf16' or 'fp16', got 'fp8'");
}

TEST_CASE("pretrain config: the reference's cfg.yaml keys, overrides and typed errors", "[pretrain][config]") {
  // The reference cfg.yaml, as JSON (the mamclip program converts YAML).
  nlohmann::json j = nlohmann::json::parse(R"({
    "embed_dim": 768, "vision_model": {"name": "convnext_tiny"},
    "optimizer": {"_target_": "torch.optim.AdamW", "lr": 1e-4, "weight_decay": 1e-6, "eps": 1e-08},
    "text_model": {"width": 768, "context_length": 100, "vocab_size": 49408, "fusion_layers": 1, "heads": 8,
                   "bert_model_name": "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext",
                   "mask_ratio": 0.15, "mlm": true},
    "data": {"train_json_path": "train.json", "valid_json_path": "", "image_main_path": "",
             "effective_batch_size": 64, "batch_size": 8, "image_size": [1024, 768], "num_workers": 6},
    "trainparams": {"n_gpu": 1, "experiment_name": "x", "logger": "wandb", "max_epochs": 75,
                    "train_transforms": "heavy", "checkpoint_dir_path": "", "project_name": ""}})");
  auto c = train::PretrainConfig::from_json(j, "cfg.yaml");
  CHECK(c.vision_model == "convnext_tiny");
  CHECK(c.accumulation() == 8);
  CHECK(c.image_height == 1024);
  CHECK(c.image_width == 768);
  CHECK(c.num_workers == 6);
  CHECK(c.train_json_path == "train.json");

  train::apply_override(j, "optimizer.lr=3e-4");
  train::apply_override(j, "trainparams.negatives=full");
  train::apply_override(j, "data.image_size=[256,192]");
  train::apply_override(j, "trainparams.precision=bf16");
  c = train::PretrainConfig::from_json(j);
  CHECK(c.lr == 3e-4);
  CHECK(c.negatives == "full");
  CHECK(c.precision == "bf16");
  CHECK(c.image_width == 192);
  // Round trip.
  const auto again = train::PretrainConfig::from_json(c.to_json());
  CHECK(again.to_json() == c.to_json());

  auto typo = j;
  train::apply_override(typo, "optimizer.learning_rate=1");
  MAMCLIP_REQUIRE_THROWS_WITH(train::PretrainConfig::from_json(typo, "cfg.yaml"), value_error,
                              "cfg.yaml: unknown key 'optimizer.learning_rate'");
  auto bad = j;
  train::apply_override(bad, "data.batch_size=7");
  MAMCLIP_REQUIRE_THROWS_WITH(train::PretrainConfig::from_json(bad), value_error,
                              "must be a multiple of data.batch_size (7)");
  auto fp8 = j;
  train::apply_override(fp8, "trainparams.precision=fp8");
  MAMCLIP_REQUIRE_THROWS_WITH(train::PretrainConfig::from_json(fp8), value_error,
                              "trainparams.precision must be 'fp32', 'bf16' or 'fp16', got 'fp8'");
  for (const std::string device : {"gpu", "cuda:", "cuda:x", "cuda:12345", "CPU"}) {
    auto bad_device = j;
    train::apply_override(bad_device, "trainparams.device=" + device);
    MAMCLIP_REQUIRE_THROWS_WITH(train::PretrainConfig::from_json(bad_device), value_error,
                                "trainparams.device must be 'cpu', 'cuda' or 'cuda:N', got '" + device + "'");
  }
  auto on_gpu = j;
  train::apply_override(on_gpu, "trainparams.device=cuda:1");
  CHECK(train::PretrainConfig::from_json(on_gpu).device == "cuda:1");
  CHECK(parse_device("cuda:1") == Device::cuda(1));
  CHECK(parse_device("cuda") == Device::cuda(0));
  CHECK(parse_device("cpu") == kCPU);
  auto wrong_type = j;
  train::apply_override(wrong_type, "optimizer.lr=fast");
  MAMCLIP_REQUIRE_THROWS_WITH(train::PretrainConfig::from_json(wrong_type, "f.yaml"), value_error,
                              "f.yaml: optimizer.lr has the wrong type");
  MAMCLIP_REQUIRE_THROWS_WITH(train::apply_override(j, "lr"), value_error, "expected key=value");
}

namespace {

using test::spelling_tokenizer;

train::PretrainConfig tiny_run(const std::filesystem::path& dir, const std::string& name) {
  train::PretrainConfig c;
  c.model_size = "small";
  c.context_length = 24;
  c.batch_size = 2;
  c.effective_batch_size = 4;
  c.image_height = 32;
  c.image_width = 32;
  c.max_epochs = 2;
  c.num_workers = 1;
  c.train_transforms = "heavy";
  c.checkpoint_dir_path = dir.string();
  c.experiment_name = name;
  c.seed = 5;
  return c;
}

}  // namespace

TEST_CASE("pretraining resumes exactly where it stopped (fp32, and fp16 with its loss scaler)", "[pretrain][resume]") {
  const std::string precision = GENERATE(std::string("fp32"), std::string("fp16"));
  INFO("precision " << precision);
  test::files::TempDir tmp("pretrain_resume_" + precision);
  const auto samples = data::make_synthetic_set(tmp.path() / "data", 10, 32, 32, 3);
  const std::vector<data::Sample> train(samples.begin(), samples.begin() + 8), val(samples.begin() + 8, samples.end());
  std::ostringstream quiet;
  auto run_config = [&](const std::string& name) {
    auto c = tiny_run(tmp.path(), name);
    c.precision = precision;
    return c;
  };

  // Uninterrupted: 2 epochs of 4 micro-batches = 2 steps each.
  train::Pretrainer whole(run_config("whole"), spelling_tokenizer(), train, val, quiet);
  const auto ref = whole.run();
  REQUIRE(ref.step_losses.size() == 4);
  REQUIRE(ref.epochs.size() == 2);
  CHECK(std::filesystem::exists(whole.best_weights_path()));
  CHECK(std::filesystem::exists(tmp.path() / "whole" / "loss.png"));
  CHECK(std::filesystem::exists(tmp.path() / "whole" / "metrics.csv"));
  // The best weights carry the run's vocabulary; the reference's files have none.
  const auto stored = train::tokenizer_from_weights(whole.best_weights_path());
  REQUIRE(stored.has_value());
  CHECK(stored->vocab().tokens() == spelling_tokenizer().vocab().tokens());
  const std::string fixtures = std::string(MAMCLIP_TEST_FIXTURES) + "/vlmodel/";
  CHECK(!train::tokenizer_from_weights(fixtures + "reference.safetensors").has_value());
  CHECK(!train::tokenizer_from_weights(fixtures + "vlmodel.ckpt").has_value());

  // Stopped after step 3 (in the middle of epoch 2), then resumed by a new run.
  auto first = run_config("split");
  first.max_steps = 3;
  std::vector<double> losses;
  {
    train::Pretrainer part(first, spelling_tokenizer(), train, val, quiet);
    const auto r = part.run();
    CHECK(r.stopped_early);
    losses = r.step_losses;
  }
  REQUIRE(losses.size() == 3);
  default_generator().manual_seed(12345);  // whatever the process did meanwhile
  train::Pretrainer rest(run_config("split"), spelling_tokenizer(), train, val, quiet);
  const auto r = rest.run(/*resume=*/true);
  CHECK(r.global_step == 4);
  // fp16: the scaler's clean-step count continued from the saved state (4, not the 1 step of this run).
  CHECK(rest.grad_scaler().growth_tracker() == whole.grad_scaler().growth_tracker());
  CHECK(rest.grad_scaler().get_scale() == whole.grad_scaler().get_scale());
  losses.insert(losses.end(), r.step_losses.begin(), r.step_losses.end());
  REQUIRE(losses.size() == ref.step_losses.size());
  for (size_t i = 0; i < losses.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(losses[i] == ref.step_losses[i]);  // bit for bit
  }
  // The parameters end equal, too.
  const auto a = whole.model().state_dict(), b = rest.model().state_dict();
  for (const auto& [name, t] : a) {
    INFO(name);
    CHECK(t.to_vector() == b.at(name).to_vector());
  }
  CHECK(quiet.str().find("resumed from") != std::string::npos);
}

TEST_CASE("a training state's loss-scaler and world-size entries are checked on resume", "[pretrain][resume]") {
  const std::string file = "run/last.ckpt.safetensors";
  optim::GradScaler scaler({.growth_interval = 2000, .enabled = true});
  train::detail::load_grad_scaler_state(scaler, {{"scale", 1024.0}, {"growth_tracker", 7}}, file);
  CHECK(scaler.get_scale() == 1024.0f);
  CHECK(scaler.growth_tracker() == 7);
  using json = nlohmann::json;
  MAMCLIP_REQUIRE_THROWS_WITH(
      train::detail::load_grad_scaler_state(scaler, json{{"scale", "big"}, {"growth_tracker", 7}}, file), io_error,
      "run/last.ckpt.safetensors: extra.grad_scaler is {\"growth_tracker\":7,\"scale\":\"big\"}");
  MAMCLIP_REQUIRE_THROWS_WITH(train::detail::load_grad_scaler_state(scaler, json{{"scale", 2.0}}, file), io_error,
                              "expected {\"scale\": number, \"growth_tracker\": integer}");
  MAMCLIP_REQUIRE_THROWS_WITH(train::detail::load_grad_scaler_state(scaler, json::array(), file), io_error,
                              "extra.grad_scaler is []");
  MAMCLIP_REQUIRE_THROWS_WITH(
      train::detail::load_grad_scaler_state(scaler, json{{"scale", -1.0}, {"growth_tracker", 0}}, file), io_error,
      "run/last.ckpt.safetensors: extra.grad_scaler: GradScaler.load_state: scale must be positive and finite");
  MAMCLIP_REQUIRE_THROWS_WITH(
      train::detail::load_grad_scaler_state(scaler, json{{"scale", 8.0}, {"growth_tracker", 2000}}, file), io_error,
      "growth_tracker 2000 is outside [0, growth_interval = 2000)");
  CHECK(scaler.get_scale() == 1024.0f);  // a rejected state changes nothing

  CHECK(train::detail::saved_world_size(json::object(), file) == 1);
  CHECK(train::detail::saved_world_size(json{{"world_size", 4}}, file) == 4);
  MAMCLIP_REQUIRE_THROWS_WITH(train::detail::saved_world_size(json{{"world_size", "4"}}, file), io_error,
                              "run/last.ckpt.safetensors: extra.world_size is \"4\"; expected a positive integer");
  MAMCLIP_REQUIRE_THROWS_WITH(train::detail::saved_world_size(json{{"world_size", 0}}, file), io_error,
                              "extra.world_size is 0");
}

}  // namespace test_pretrain
