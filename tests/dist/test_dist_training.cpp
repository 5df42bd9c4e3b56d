// Data-parallel MAM-CLIP training, run by mpirun on 2 or 3 ranks: every rank
// also computes the one-process reference on the batch all ranks hold
// together (the data are seeded, so each rank can draw all of it), and the
// distributed results must equal it.
#include "support/test_support.hpp"

#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdio>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "mamclip/data/loader.hpp"
#include "mamclip/data/synthetic.hpp"
#include "mamclip/dist/mpi.hpp"
#include "mamclip/dist/parallel.hpp"
#include "mamclip/optim/adamw.hpp"
#include "mamclip/train/finetune.hpp"
#include "mamclip/train/pretrain.hpp"
#include "mamclip/train/pretrain_loop.hpp"
#include "support/clip_batches.hpp"
#include "support/dist_errors.hpp"
#include "support/spelling_tokenizer.hpp"

using namespace mamclip;
using models::clip::VLModel;

namespace {

dist::Communicator& world() {
  static dist::MpiCommunicator comm;
  static const bool once = [] {
    comm.set_timeout(std::chrono::seconds(60));
    return true;
  }();
  (void)once;
  return comm;
}

// Pairs of rank r in one micro-batch: ranks hold different counts.
int64_t rows_of_rank(int r) { return 3 - r % 2; }

// Largest |a - b| / (1e-4 max|b| + atol) over the parameters' elements,
// `worst` names its parameter. The keys' biases, which only rounding noise
// moves, are left out (is_key_bias).
double max_parameter_error(const nn::Module& a, const nn::Module& b, double atol, std::string* worst_name = nullptr) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  REQUIRE(pa.size() == pb.size());
  double worst = 0;
  for (size_t i = 0; i < pa.size(); ++i) {
    const std::string& name = pa[i].first;
    const auto va = pa[i].second.to_vector(), vb = pb[i].second.to_vector();
    double scale = 0;
    for (float v : vb) scale = std::max(scale, std::abs(static_cast<double>(v)));
    for (size_t j = 0; j < va.size(); ++j) {
      if (test::is_key_bias(name, j, va.size())) continue;
      const double err = std::abs(static_cast<double>(va[j]) - vb[j]) / (1e-4 * scale + atol);
      if (err > worst && worst_name) *worst_name = name;
      worst = std::max(worst, err);
    }
  }
  return worst;
}

// Largest gradient difference, relative to each tensor's largest gradient
// (at least 1e-3 of the model's largest: gradients that are rounding noise,
// such as the keys' biases', compare on that floor).
double max_gradient_error(const nn::Module& a, const nn::Module& b, std::string* worst_name) {
  const auto pa = a.named_parameters(), pb = b.named_parameters();
  double global = 0;
  for (const auto& [name, p] : pb)
    if (p.grad().defined())
      for (float v : p.grad().to_vector()) global = std::max(global, std::abs(static_cast<double>(v)));
  double worst = 0;
  for (size_t i = 0; i < pa.size(); ++i) {
    const Tensor<float> ga = pa[i].second.grad(), gb = pb[i].second.grad();
    REQUIRE(ga.defined() == gb.defined());
    if (!gb.defined()) continue;
    const auto va = ga.to_vector(), vb = gb.to_vector();
    double scale = 1e-3 * global, err = 0;
    for (size_t j = 0; j < va.size(); ++j) {
      scale = std::max(scale, std::abs(static_cast<double>(vb[j])));
      err = std::max(err, std::abs(static_cast<double>(va[j]) - vb[j]));
    }
    if (err / scale > worst) *worst_name = pa[i].first;
    worst = std::max(worst, err / scale);
  }
  return worst;
}

}  // namespace

TEST_CASE("the gathered contrastive loss and its gradients equal one process's on the concatenated batch",
          "[dist]") {
  auto& comm = world();
  const int W = comm.world_size(), rank = comm.rank();
  Generator data(17);
  std::vector<Tensor<float>> images, texts;
  for (int r = 0; r < W; ++r) {
    images.push_back(randn<float>({rows_of_rank(r) + 2, 12}, data));
    texts.push_back(randn<float>({rows_of_rank(r) + 2, 12}, data));
  }
  models::clip::VLLossOptions lo;
  // One process: all pairs.
  Tensor<float> all_i = cat(images, 0).detach(), all_t = cat(texts, 0).detach();
  all_i.set_requires_grad();
  all_t.set_requires_grad();
  Tensor<float> scale_ref = full<float>({}, 2.1f);
  scale_ref.set_requires_grad();
  const Tensor<float> ref = clip_loss(all_i, all_t, scale_ref);
  ref.backward();

  // This rank's pairs.
  Tensor<float> my_i = images[static_cast<size_t>(rank)].clone(), my_t = texts[static_cast<size_t>(rank)].clone();
  my_i.set_requires_grad();
  my_t.set_requires_grad();
  Tensor<float> scale = full<float>({}, 2.1f);
  scale.set_requires_grad();
  const auto loss = train::detail::contrastive_over_ranks(&comm, my_i, my_t, scale, lo);
  loss.weighted.backward();
  CHECK(loss.value == Approx(ref.item()).epsilon(1e-5));

  // DataParallel averages over ranks: the mean of the ranks' gradients is the reference.
  Tensor<float> gi = my_i.grad().clone(), gt = my_t.grad().clone(), gs = scale.grad().clone();
  for (auto* g : {&gi, &gt, &gs}) *g = mul(*g, 1.0 / W).contiguous();
  dist::all_reduce(comm, gs);
  const int64_t offset = dist::row_offset(dist::all_gather_scalar(comm, my_i.size(0)), rank);
  test::require_allclose(gi, all_i.grad().narrow(0, offset, my_i.size(0)), 1e-6, 1e-5);
  test::require_allclose(gt, all_t.grad().narrow(0, offset, my_t.size(0)), 1e-6, 1e-5);
  test::require_allclose(gs, scale_ref.grad(), 1e-6, 1e-5);
}

TEST_CASE("W ranks with their batches end with the parameters of one process with the combined batch", "[dist]") {
  auto& comm = world();
  const int W = comm.world_size(), rank = comm.rank();
  REQUIRE(W >= 2);
  for (const std::string negatives : {"paper", "full"}) {
    INFO("negatives = " << negatives);
    // Ranks start from different weights: DataParallel broadcasts rank 0's.
    Generator init_ref(100), init_mine(100 + static_cast<uint64_t>(rank));
    VLModel reference(test::tiny_config(0.0), init_ref), model(test::tiny_config(0.0), init_mine);
    reference.train();
    model.train();
    auto gen_ref = train::share_generator(reference, 1), gen = train::share_generator(model, 1);
    dist::DataParallelOptions dpo;
    dpo.bucket_bytes = 8192;
    dist::DataParallel dp(model, comm, dpo);
    REQUIRE(max_parameter_error(model, reference, 1e-30) == 0.0);

    optim::AdamWOptions o;
    o.lr = 3e-3;
    o.weight_decay = 0.05;
    optim::AdamW opt_ref(reference.parameters(), o), opt(model.parameters(), o);
    train::PretrainStepOptions so_ref, so;
    so_ref.negatives = so.negatives = negatives;
    so.data_parallel = &dp;
    Generator data(55);
    for (int step = 0; step < 3; ++step) {
      // Two micro-batches; micro-batch j of the reference is micro-batch j of all ranks.
      std::vector<train::ClipMicroBatch> mine, combined;
      for (int j = 0; j < 2; ++j) {
        std::vector<train::ClipMicroBatch> parts;
        for (int r = 0; r < W; ++r) parts.push_back(test::random_batch(rows_of_rank(r), data));
        mine.push_back(parts[static_cast<size_t>(rank)]);
        combined.push_back(test::concat(parts));
      }
      const auto a = train::pretrain_step(reference, opt_ref, combined, so_ref, *gen_ref, step);
      const auto b = train::pretrain_step(model, opt, mine, so, *gen, step);
      CHECK(b.loss == Approx(a.loss).epsilon(2e-5));
      CHECK(b.contrastive == Approx(a.contrastive).epsilon(2e-5));
      CHECK(b.mlm == Approx(a.mlm).epsilon(2e-5));
      if (step == 0) {  // same parameters: the gradients agree to float32 rounding
        std::string worst;
        const double grad_err = max_gradient_error(model, reference, &worst);
        INFO("worst gradient error " << grad_err << " (" << worst << ")");
        CHECK(grad_err < 1e-5);
      }
    }
    // Elements whose gradient is at rounding level may differ by a hundredth of lr.
    std::string worst;
    const double err = max_parameter_error(model, reference, o.lr / 100, &worst);
    INFO("worst parameter error " << err << " of the tolerance (" << worst << ")");
    CHECK(err <= 1.0);
    // Every rank holds the same parameters.
    dist::check_same(comm, "parameters", std::to_string(model.parameters()[0].to_vector()[0]));
    CHECK(dp.buckets_launched_in_backward() >= 1);
  }
}

TEST_CASE("the loader's shards are disjoint and cover each global batch", "[dist]") {
  auto& comm = world();
  const int W = comm.world_size();
  std::vector<data::Sample> samples(23);
  for (size_t i = 0; i < samples.size(); ++i) samples[i].image = "sample" + std::to_string(i) + ".png";
  data::LoaderOptions o;
  o.batch_size = 3;
  o.workers = 0;
  o.rank = comm.rank();
  o.world_size = W;
  data::Loader loader(samples, o);
  loader.start_epoch(1);
  const int64_t batches = loader.batches_per_epoch();
  REQUIRE(dist::all_gather_scalar(comm, batches) == std::vector<int64_t>(static_cast<size_t>(W), batches));
  std::vector<int64_t> mine;
  for (int64_t b = 0; b < batches; ++b) {
    const auto idx = loader.batch_indices(b);
    CHECK(static_cast<int64_t>(idx.size()) >= 1);
    CHECK(static_cast<int64_t>(idx.size()) <= o.batch_size);
    mine.insert(mine.end(), idx.begin(), idx.end());
  }
  const Tensor<int64_t> all = dist::all_gather(comm, from_vector<int64_t>(mine));
  const auto v = all.to_vector();
  const std::set<int64_t> distinct(v.begin(), v.end());
  CHECK(distinct.size() == v.size());  // disjoint
  // Covered: all but a last global batch too small to give every rank a sample.
  const int64_t rest = 23 % (o.batch_size * W);
  CHECK(static_cast<int64_t>(v.size()) == 23 - (rest < W ? rest : 0));
  // One process with batch_size * W sees the same samples in each batch.
  data::LoaderOptions one = o;
  one.rank = 0;
  one.world_size = 1;
  one.batch_size = o.batch_size * W;
  data::Loader whole(samples, one);
  whole.start_epoch(1);
  std::vector<int64_t> first;
  for (int64_t b = 0; b < batches; ++b) {
    const auto idx = whole.batch_indices(b);
    first.insert(first.end(), idx.begin(), idx.end());
  }
  CHECK(std::set<int64_t>(first.begin(), first.end()) == distinct);
}

TEST_CASE("a model that differs across ranks is refused at start on every rank", "[dist]") {
  auto& comm = world();
  auto config = test::tiny_config(0.0);
  if (comm.rank() == 1) config.vision.dims = {8, 8, 12, 16};
  Generator init(3);
  VLModel model(config, init);
  MAMCLIP_REQUIRE_THROWS_WITH(dist::DataParallel(model, comm), dist::dist_error, "disagree with rank 0");
}

TEST_CASE("W ranks fine-tune to the weights and scores of one process with the combined batch", "[dist]") {
  auto& comm = world();
  const int W = comm.world_size(), rank = comm.rank();
  // One folder of synthetic images for the job: rank 0 draws them, every rank reads the list back.
  const auto dir = std::filesystem::temp_directory_path() /
                   ("mamclip_dist_finetune_" + std::to_string(dist::all_gather_scalar(comm, getpid())[0]));
  if (rank == 0) data::make_synthetic_set(dir, 41, 64, 48, 3);
  comm.barrier();
  const std::vector<data::Sample> all = data::read_caption_records(dir / "captions.jsonl", dir);
  REQUIRE(all.size() == 41);
  // 29 training samples: the last global batch splits unevenly over 2 or 3 ranks.
  const std::vector<data::Sample> train(all.begin(), all.begin() + 29), val(all.begin() + 29, all.begin() + 36),
      test(all.begin() + 36, all.end());
  const std::vector<std::string> classes{"normal", "benign", "malignant"};
  models::ConvNeXtConfig vision;
  vision.depths = {1, 1, 1, 1};
  vision.dims = {8, 16, 16, 32};
  auto classifier = [&](uint64_t seed) {
    Generator gen(seed);
    return std::make_shared<models::clip::MamClipClassifier>(
        vision, 24, std::vector<models::clip::ClassifierHead>{{"birads_layer", 3}}, gen);
  };
  train::FinetuneOptions o;
  o.epochs = 3;
  o.lr = 2e-3;
  o.warmup_steps = 2;
  o.height = 64;
  o.width = 48;
  o.augmentation = "none";
  o.workers = 1;
  o.quiet = true;
  o.class_weighting = true;  // the weighted mean over the global batch

  // The reference: one process with W x the batch.
  train::FinetuneOptions one = o;
  one.batch_size = 4 * W;
  auto reference = classifier(5);
  const train::FinetuneResult a = train::finetune_classifier(*reference, train, val, test, one, classes);

  // Each rank starts from other weights: rank 0's are broadcast.
  train::FinetuneOptions per_rank = o;
  per_rank.batch_size = 4;
  per_rank.output_dir = dir / "run";
  auto model = classifier(5 + static_cast<uint64_t>(rank));
  const train::FinetuneResult b = train::finetune_classifier(*model, train, val, test, per_rank, classes, &comm);

  REQUIRE(b.step_losses.size() == a.step_losses.size());
  for (size_t i = 0; i < a.step_losses.size(); ++i) CHECK(b.step_losses[i] == Approx(a.step_losses[i]).epsilon(2e-5));
  CHECK(b.best_epoch == a.best_epoch);
  CHECK(b.best_val.count == 7);
  CHECK(b.test.count == 5);
  CHECK(b.best_val.macro_f1 == a.best_val.macro_f1);
  CHECK(b.test.macro_f1 == a.test.macro_f1);
  CHECK(b.test.confusion.count(0, 0) == a.test.confusion.count(0, 0));
  CHECK(b.best_val.loss == Approx(a.best_val.loss).epsilon(1e-4));
  std::string worst;
  const double err = max_parameter_error(*model, *reference, o.lr / 100, &worst);
  INFO("worst parameter error " << err << " of the tolerance (" << worst << ")");
  CHECK(err <= 1.0);
  comm.barrier();
  if (rank == 0) {
    CHECK(std::filesystem::exists(dir / "run" / "best.safetensors"));
    CHECK(std::filesystem::exists(dir / "run" / "metrics.csv"));
  }
  comm.barrier();
  if (rank == 0) std::filesystem::remove_all(dir);

  // Different data on one rank is refused on every rank.
  std::vector<data::Sample> other = train;
  if (rank == 1) other.pop_back();
  auto spare = classifier(5);
  MAMCLIP_REQUIRE_THROWS_WITH(train::finetune_classifier(*spare, other, val, test, per_rank, classes, &comm),
                              dist::dist_error, "fine-tuning options and data differs across ranks");
}

namespace {

// A folder all ranks share, named by rank 0's pid; rank 0 removes it.
class SharedDir {
 public:
  SharedDir(dist::Communicator& comm, const std::string& tag) : comm_(comm) {
    path_ = std::filesystem::temp_directory_path() /
            ("mamclip_" + tag + "_" + std::to_string(dist::all_gather_scalar(comm, getpid())[0]));
    if (comm.rank() == 0) {
      std::filesystem::remove_all(path_);
      std::filesystem::create_directories(path_);
    }
    comm.barrier();
  }
  ~SharedDir() {
    comm_.barrier();
    std::error_code ec;
    if (comm_.rank() == 0) std::filesystem::remove_all(path_, ec);
  }
  const std::filesystem::path& path() const { return path_; }

 private:
  dist::Communicator& comm_;
  std::filesystem::path path_;
};

// The lines of a run's metrics.jsonl by phase ("train", "val").
std::map<std::string, int> metric_lines(const std::filesystem::path& run) {
  std::ifstream in(run / "metrics.jsonl");
  std::map<std::string, int> n;
  std::string line;
  while (std::getline(in, line)) ++n[nlohmann::json::parse(line).at("phase").get<std::string>()];
  return n;
}

std::vector<std::string> entries(const std::filesystem::path& dir) {
  std::vector<std::string> out;
  for (const auto& e : std::filesystem::directory_iterator(dir)) out.push_back(e.path().filename().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

// The pretraining loop on W ranks (train/pretrain_loop.hpp): a run stopped
// mid-epoch and resumed on W ranks repeats the uninterrupted run bit for bit;
// only rank 0 writes (each metric once); the validation loss is the one
// process's on the whole validation set with the combined batch.
TEST_CASE("W ranks pretrain, stop, resume exactly; rank 0 alone writes; validation is over all ranks' pairs",
          "[dist]") {
  auto& comm = world();
  const int W = comm.world_size(), rank = comm.rank();
  SharedDir dir(comm, "dist_pretrain");
  if (rank == 0) data::make_synthetic_set(dir.path() / "data", 36, 32, 32, 4);
  comm.barrier();
  const std::vector<data::Sample> all = data::read_caption_records(dir.path() / "data" / "captions.jsonl",
                                                                   dir.path() / "data");
  REQUIRE(all.size() == 36);
  // 24 training and 12 validation samples: whole global batches for 2 and 3 ranks.
  const std::vector<data::Sample> train(all.begin(), all.begin() + 24), val(all.begin() + 24, all.end());
  auto config = [&](const std::string& name) {
    train::PretrainConfig c;
    c.model_size = "small";
    c.context_length = 24;
    c.batch_size = 2;
    c.effective_batch_size = 4 * W;  // two micro-batches per step
    c.image_height = c.image_width = 32;
    c.max_epochs = 2;
    c.num_workers = 1;
    c.train_transforms = "heavy";
    c.checkpoint_dir_path = dir.path().string();
    c.experiment_name = name;
    c.seed = 9;
    return c;
  };
  const int64_t steps_per_epoch = 24 / (4 * W);
  std::ostringstream quiet;

  train::Pretrainer whole(config("whole"), test::spelling_tokenizer(), train, val, quiet, &comm);
  const train::PretrainReport ref = whole.run();
  REQUIRE(static_cast<int64_t>(ref.step_losses.size()) == 2 * steps_per_epoch);
  REQUIRE(ref.epochs.size() == 2);

  // Stopped one step into the second epoch, resumed by a new job of W ranks.
  auto first = config("split");
  first.max_steps = steps_per_epoch + 1;
  std::vector<double> losses;
  {
    train::Pretrainer part(first, test::spelling_tokenizer(), train, val, quiet, &comm);
    const auto r = part.run();
    CHECK(r.stopped_early);
    losses = r.step_losses;
  }
  default_generator().manual_seed(777 + static_cast<uint64_t>(rank));  // whatever the process did meanwhile
  train::Pretrainer rest(config("split"), test::spelling_tokenizer(), train, val, quiet, &comm);
  const train::PretrainReport r = rest.run(/*resume=*/true);
  CHECK(r.global_step == 2 * steps_per_epoch);
  losses.insert(losses.end(), r.step_losses.begin(), r.step_losses.end());
  REQUIRE(losses.size() == ref.step_losses.size());
  for (size_t i = 0; i < losses.size(); ++i) {
    INFO("step " << i + 1);
    CHECK(losses[i] == ref.step_losses[i]);  // bit for bit, on every rank
  }
  REQUIRE(!r.epochs.empty());
  CHECK(r.epochs.back().val_loss == ref.epochs.back().val_loss);
  const auto a = whole.model().state_dict(), b = rest.model().state_dict();
  for (const auto& [name, t] : a) {
    INFO(name);
    CHECK(t.to_vector() == b.at(name).to_vector());
  }
  if (rank == 0) CHECK(quiet.str().find("resumed from") != std::string::npos);

  // Rank 0 alone writes: the files of one run, no rank's extras, every metric once.
  comm.barrier();
  if (rank == 0) {
    const std::vector<std::string> expected{"best.safetensors", "last.ckpt.safetensors", "loss.png", "metrics.csv",
                                            "metrics.jsonl"};
    for (const std::string run : {"whole", "split"}) {
      INFO(run);
      CHECK(entries(dir.path() / run) == expected);
      const auto lines = metric_lines(dir.path() / run);
      CHECK(lines.at("train") == 2 * steps_per_epoch);
      CHECK(lines.at("val") == 2);
    }
  }

  // The validation loss: one process, the final weights, the whole
  // validation set in batches of W x 2 (unmasked captions, no augmentation).
  data::LoaderOptions lo;
  lo.batch_size = 2 * W;
  lo.height = lo.width = 32;
  lo.seed = 9;
  lo.workers = 1;
  lo.shuffle = false;
  data::Loader loader(val, lo);
  loader.start_epoch(0);
  text::MlmOptions mo;
  mo.ratio = 0;
  mo.max_length = 24;
  const auto tokenizer = test::spelling_tokenizer();
  const text::MlmMasker masker(tokenizer, mo);
  models::clip::VLLossOptions loss;
  loss.ignore_index = tokenizer.vocab().pad_id();
  whole.model().eval();
  double sum = 0;
  int batches = 0;
  while (auto batch = loader.next()) {
    Generator unused(0);
    const text::MlmBatch t = masker.encode_batch(batch->captions, unused);
    const train::ClipMicroBatch pairs{batch->images, t.input_ids, t.labels};
    sum += train::evaluate_loss(whole.model(), {pairs}, loss).loss;
    ++batches;
  }
  REQUIRE(batches == 12 / (2 * W));
  CHECK(ref.epochs.back().val_loss == Approx(sum / batches).epsilon(1e-5));
}

// Resume on another world size: one process saves after a step, W ranks
// continue from the same sample count and finish the run.
TEST_CASE("a pretraining state saved by one process resumes on W ranks", "[dist]") {
  auto& comm = world();
  const int W = comm.world_size(), rank = comm.rank();
  SharedDir dir(comm, "dist_resume_world");
  if (rank == 0) data::make_synthetic_set(dir.path() / "data", 24, 32, 32, 6);
  comm.barrier();
  const std::vector<data::Sample> train =
      data::read_caption_records(dir.path() / "data" / "captions.jsonl", dir.path() / "data");
  train::PretrainConfig c;
  c.model_size = "small";
  c.context_length = 24;
  c.batch_size = 2;
  c.effective_batch_size = 4 * W;
  c.image_height = c.image_width = 32;
  c.max_epochs = 2;
  c.num_workers = 1;
  c.checkpoint_dir_path = dir.path().string();
  c.experiment_name = "run";
  const int64_t steps_per_epoch = 24 / (4 * W);  // one process accumulates 2W micro-batches of 2
  std::ostringstream out;
  if (rank == 0) {
    train::PretrainConfig first = c;
    first.max_steps = 1;
    train::Pretrainer one(first, test::spelling_tokenizer(), train, {}, out);
    CHECK(one.run().global_step == 1);
  }
  comm.barrier();
  train::Pretrainer job(c, test::spelling_tokenizer(), train, {}, out, &comm);
  const train::PretrainReport r = job.run(/*resume=*/true);
  CHECK(r.global_step == 2 * steps_per_epoch);
  for (double loss : r.step_losses) CHECK(std::isfinite(loss));
  if (rank == 0) {
    // One step of 4W pairs seen: 2 of the job's global batches of 2W.
    CHECK(out.str().find("the state was saved by 1 rank(s), this job has " + std::to_string(W) +
                         ": the epoch continues at batch 2 (" + std::to_string(4 * W) + " samples seen)") !=
          std::string::npos);
  }
  dist::check_same(comm, "parameters after the resumed run", std::to_string(job.model().parameters()[0].to_vector()[3]));
}

// Run by kill_rank.sh, not by default: rank 1 dies by SIGKILL in the middle
// of data-parallel pretraining (its third step). The job must end, naming it.
TEST_CASE("mpi kill: rank 1 dies in the middle of data-parallel pretraining", "[.kill]") {
  auto& comm = world();
  comm.set_timeout(std::chrono::seconds(5));
  const int rank = comm.rank();
  Generator init(100);
  VLModel model(test::tiny_config(0.0), init);
  model.train();
  auto gen = train::share_generator(model, 1);
  dist::DataParallel dp(model, comm);
  optim::AdamW opt(model.parameters(), optim::AdamWOptions{});
  train::PretrainStepOptions so;
  so.data_parallel = &dp;
  Generator data(55 + static_cast<uint64_t>(rank));
  test::print_dist_error(rank, [&] {
    for (int step = 0; step < 50; ++step) {
      if (step == 2 && rank == 1) {
        std::printf("rank 1 (pid %d): raising SIGKILL at step %d\n", static_cast<int>(getpid()), step);
        std::fflush(stdout);
        std::raise(SIGKILL);
      }
      const std::vector<train::ClipMicroBatch> micro{test::random_batch(2, data), test::random_batch(2, data)};
      train::pretrain_step(model, opt, micro, so, *gen, step);
    }
  });
  FAIL("training finished although rank 1 was killed");
}
