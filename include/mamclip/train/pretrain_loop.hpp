#pragma once
// The pretraining loop: epochs of accumulated steps (train/pretrain.hpp),
// validation loss each epoch, checkpoints, logs, plots and exact resume.
//
// Files in config.run_dir():
//   last.ckpt.safetensors  the training state (model, AdamW, data position,
//                          generators, config): written atomically at the end
//                          of each epoch, every checkpoint_every_steps steps
//                          and when max_steps stops the run; resume reads it
//   best.safetensors       the weights with the lowest validation loss (the
//                          train loss when there is no validation set), in the
//                          reference's names (load_vlmodel_weights reads it),
//                          and the tokenizer's vocabulary (tokenizer_from_weights)
//   metrics.csv, metrics.jsonl, loss.png
//
// Determinism: the data order and augmentation depend only on (seed, epoch,
// sample) (data::Loader), the caption masking of batch b of epoch e only on
// (seed, e, b), dropout on the model's shared generator and the thread's
// default generator (both saved in the checkpoint). A resumed run therefore
// repeats the uninterrupted run's losses exactly.
//
// Data parallel: give every rank of the job the same config and data and a
// Communicator (dist/). data.batch_size is per rank, data.effective_batch_size
// the job's. Rank 0's initial weights are broadcast, each rank loads its
// shard of every batch (data::LoaderOptions::rank), the step is the
// one-process step on the ranks' batches together (accumulate_gradients),
// validation losses are computed over all ranks' pairs, and only rank 0
// writes files and prints. Each rank has its own dropout streams. A resume
// with another world size continues from the same sample count (rounded down
// to whole global batches); with the same world size it is exact. On GPUs
// (trainparams.device cuda: rank r on its local rank's GPU) the gradients
// are reduced over NCCL when the program links mamclip::nccl, else through
// host memory over the job's communicator.

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "mamclip/data/loader.hpp"
#include "mamclip/models/bert/pretrained.hpp"
#include "mamclip/models/clip/vlmodel.hpp"
#include "mamclip/text/mlm_masking.hpp"
#include "mamclip/train/checkpoint.hpp"
#include "mamclip/train/config.hpp"
#include "mamclip/train/log.hpp"
#include "mamclip/train/plot.hpp"
#include "mamclip/train/pretrain.hpp"

namespace mamclip::train {

// The model a pretraining config describes; cls_token_id and the BERT
// vocabulary come from the tokenizer.
inline models::clip::VLModelConfig vlmodel_config_for(const PretrainConfig& c, const text::BertTokenizer& tokenizer) {
  models::clip::VLModelConfig m =
      c.model_size == "small" ? models::clip::VLModelConfig::small() : models::clip::VLModelConfig::mamclip(c.vision_model);
  if (c.model_size == "full") {
    if (!c.bert_model_path.empty())
      m.text = models::BertConfig::from_json_file((std::filesystem::path(c.bert_model_path) / "config.json").string());
    m.embed_dim = c.embed_dim;
    m.mlm_vocab_size = c.vocab_size;
    m.fusion_layers = c.fusion_layers;
    m.fusion_heads = c.heads;
  }
  m.mlm = c.mlm;
  m.context_length = c.context_length;
  m.text.vocab_size = tokenizer.vocab().size();
  m.cls_token_id = tokenizer.vocab().cls_id();
  // The full model keeps the reference's 49408 MLM columns; the small one predicts its own vocabulary.
  m.mlm_vocab_size = c.model_size == "small" ? m.text.vocab_size : std::max(m.mlm_vocab_size, m.text.vocab_size);
  m.validate();
  return m;
}

struct PretrainEpoch {
  int64_t epoch = 0, steps = 0;
  double train_loss = 0, val_loss = 0, val_contrastive = 0, val_mlm = 0;
};

struct PretrainReport {
  std::vector<PretrainEpoch> epochs;  // epochs finished in this call
  std::vector<double> step_losses;    // the loss of every step run in this call
  int64_t global_step = 0;
  double best_val_loss = 0;
  std::filesystem::path best_weights, last_state;
  bool stopped_early = false;  // max_steps reached
  int64_t skipped_steps = 0;   // fp16: steps skipped because a gradient overflowed
  int64_t skipped_images = 0;  // data.skip_unreadable: training and validation images left out
};

namespace detail {

// The fp16 loss scaler's state from a training state's extra.grad_scaler
// ({"scale": number, "growth_tracker": integer}); io_error naming `where`
// (the file) when it is malformed or out of range.
inline void load_grad_scaler_state(optim::GradScaler& scaler, const nlohmann::json& j, const std::string& where) {
  const bool ok = j.is_object() && j.contains("scale") && j["scale"].is_number() && j.contains("growth_tracker") &&
                  j["growth_tracker"].is_number_integer();
  MAMCLIP_CHECK(ok, io_error, where, ": extra.grad_scaler is ", j.dump(),
                "; expected {\"scale\": number, \"growth_tracker\": integer}");
  try {
    scaler.load_state({j["scale"].get<double>(), j["growth_tracker"].get<int64_t>()});
  } catch (const value_error& e) {
    throw io_error(::mamclip::detail::str_cat(where, ": extra.grad_scaler: ", e.what()));
  }
}

// The world size a training state was saved with (extra.world_size; 1 when absent).
inline int64_t saved_world_size(const nlohmann::json& extra, const std::string& where) {
  const auto it = extra.find("world_size");
  if (it == extra.end()) return 1;
  MAMCLIP_CHECK(it->is_number_integer() && it->get<int64_t>() >= 1, io_error, where, ": extra.world_size is ",
                it->dump(), "; expected a positive integer");
  return it->get<int64_t>();
}

}  // namespace detail

// The vocabulary is part of a model: best.safetensors keeps the tokens of
// the run's tokenizer under this metadata key (one per line, in id order), so
// that a later zero-shot or retrieval run feeds the ids the model learned.
inline constexpr const char* kVocabMetadataKey = "mamclip_vocab";

inline io::Metadata vocab_metadata(const text::Vocab& vocab) {
  std::string joined;
  for (const auto& t : vocab.tokens()) joined += t + "\n";
  return {{kVocabMetadataKey, joined}};
}

// The tokenizer stored with weights written by the pretraining loop (its
// tokens, with BertTokenizer's default options: lower-casing, as PubMedBERT's
// and the caption vocabularies use); nullopt for weights without one (the
// reference's checkpoints, other formats).
inline std::optional<text::BertTokenizer> tokenizer_from_weights(const std::filesystem::path& path) {
  const std::optional<io::Metadata> meta = io::safetensors_metadata(path.string());
  if (!meta) return std::nullopt;
  const auto it = meta->find(kVocabMetadataKey);
  if (it == meta->end()) return std::nullopt;
  std::vector<std::string> tokens;
  std::istringstream lines(it->second);
  for (std::string line; std::getline(lines, line);) tokens.push_back(line);
  return text::BertTokenizer(
      std::make_shared<const text::Vocab>(text::Vocab::from_tokens(std::move(tokens), path.string() + " (metadata)")));
}

class Pretrainer {
 public:
  // data: the training and validation samples (captions in Sample::caption).
  // comm: the job's communicator for data-parallel training (outlives this),
  // or null for one process.
  Pretrainer(PretrainConfig config, text::BertTokenizer tokenizer, std::vector<data::Sample> train,
             std::vector<data::Sample> val, std::ostream& out = std::cout, dist::Communicator* comm = nullptr)
      : config_(std::move(config)),
        tokenizer_(std::move(tokenizer)),
        train_(std::move(train)),
        val_(std::move(val)),
        out_(&out),
        comm_(comm && comm->world_size() > 1 ? comm : nullptr),
        scaler_({.enabled = config_.precision == "fp16"}) {
    config_.validate();
    if (!is_main()) out_ = &null_out_;
    if (comm_) dist::check_same(*comm_, "pretraining configuration", config_.to_json().dump());
    // A rank whose micro-batch is unreadable as a whole would take one batch more than the others
    // and fall out of step with them.
    MAMCLIP_CHECK(!(comm_ && config_.skip_unreadable), value_error,
                  "pretrain: data.skip_unreadable works in one process only (with ", comm_ ? comm_->world_size() : 1,
                  " ranks a skipped batch would put the ranks out of step); remove the unreadable images instead");
    MAMCLIP_CHECK(!train_.empty(), value_error, "Pretrainer: the training set is empty");
    Generator init(config_.seed);
    model_ = std::make_shared<models::clip::VLModel>(vlmodel_config_for(config_, tokenizer_), init);
    if (!config_.bert_model_path.empty()) {
      auto bert = models::load_bert(config_.bert_model_path);
      model_->text_encoder->load_state_dict(bert->state_dict());
    }
    if (!config_.init_checkpoint.empty()) models::clip::load_vlmodel_weights(*model_, config_.init_checkpoint);
    model_->set_grad_checkpointing(config_.grad_checkpointing);
    device_ = *parse_device(config_.device);  // validated above
    if (comm_ && config_.device == "cuda") device_ = Device::cuda(comm_->local_rank());  // one GPU per local rank
    model_->to(device_);  // before the optimizer, whose state is made where the parameters are
    dropout_ = share_generator(*model_, data::detail::mix_keys(config_.seed, 0x44524F50ull + rank_key()));
    if (comm_) data_parallel_ = std::make_unique<dist::DataParallel>(*model_, *comm_);
    optim::AdamWOptions o;
    o.lr = config_.lr;
    o.weight_decay = config_.weight_decay;
    o.eps = config_.eps;
    optimizer_ = std::make_unique<optim::AdamW>(model_->parameters(), o);
  }

  models::clip::VLModel& model() { return *model_; }
  optim::AdamW& optimizer() { return *optimizer_; }
  const optim::GradScaler& grad_scaler() const { return scaler_; }
  const PretrainConfig& config() const { return config_; }
  std::filesystem::path last_state_path() const { return config_.run_dir() / "last.ckpt.safetensors"; }
  std::filesystem::path best_weights_path() const { return config_.run_dir() / "best.safetensors"; }
  int rank() const { return comm_ ? comm_->rank() : 0; }
  int world_size() const { return comm_ ? comm_->world_size() : 1; }
  bool is_main() const { return rank() == 0; }
  dist::DataParallel* data_parallel() { return data_parallel_.get(); }

  // Trains to max_epochs (or max_steps). resume: continue from
  // last_state_path() when it exists.
  PretrainReport run(bool resume = false) {
    namespace fs = std::filesystem;
    if (is_main()) fs::create_directories(config_.run_dir());
    if (comm_) comm_->barrier();
    TrainingMeta meta;
    default_generator().manual_seed(data::detail::mix_keys(config_.seed, 0x444546ull + rank_key()));
    const bool resuming = resume && fs::exists(last_state_path());
    if (comm_)
      dist::check_same(*comm_,
                       "presence of " + last_state_path().string() +
                           " for --resume (the run directory must be on a file system all ranks share)",
                       resuming ? "present" : "absent");
    if (resuming) {
      meta = load_training_state(last_state_path(), *model_, *optimizer_);
      const std::string where = last_state_path().string();
      if (const auto it = meta.extra.find("grad_scaler"); it != meta.extra.end() && scaler_.enabled())
        detail::load_grad_scaler_state(scaler_, *it, where);
      const int64_t saved_world = detail::saved_world_size(meta.extra, where);
      if (comm_) dist::check_same(*comm_, "resumed training state (step)", std::to_string(meta.global_step));
      if (saved_world == world_size()) {
        const std::string suffix = rank() == 0 ? "" : "." + std::to_string(rank());
        if (auto it = meta.generators.find("dropout" + suffix); it != meta.generators.end())
          it->second.apply_to(*dropout_);
        if (auto it = meta.generators.find("default" + suffix); it != meta.generators.end())
          it->second.apply_to(default_generator());
      } else {
        // Another world size: the same samples seen, in whole global batches
        // of the new size; dropout streams start afresh from the step.
        const int64_t seen = meta.batch_in_epoch * saved_world;
        meta.batch_in_epoch = seen / world_size();
        dropout_->manual_seed(data::detail::mix_keys(dropout_->seed(), static_cast<uint64_t>(meta.global_step)));
        *out_ << "pretrain: the state was saved by " << saved_world << " rank(s), this job has " << world_size()
              << ": the epoch continues at batch " << meta.batch_in_epoch << " (" << seen * config_.batch_size
              << " samples seen)\n";
      }
      *out_ << "pretrain: resumed from " << last_state_path().string() << " at epoch " << meta.epoch + 1 << ", batch "
            << meta.batch_in_epoch << ", step " << meta.global_step << "\n";
    }
    meta.config = config_.to_json();
    double best = std::isnan(meta.best_metric) ? std::numeric_limits<double>::infinity() : meta.best_metric;

    data::LoaderOptions lo;
    lo.batch_size = config_.batch_size;
    lo.height = config_.image_height;
    lo.width = config_.image_width;
    lo.seed = config_.seed;
    lo.workers = static_cast<int>(config_.num_workers);
    lo.augmentation = config_.train_transforms;
    lo.skip_unreadable = config_.skip_unreadable;
    lo.rank = rank();
    lo.world_size = world_size();
    data::Loader train_loader(train_, lo);
    lo.shuffle = false;
    lo.augmentation = "none";
    std::optional<data::Loader> val_loader;
    if (!val_.empty()) val_loader.emplace(val_, lo);

    text::MlmOptions mo;
    mo.ratio = config_.mask_ratio;
    mo.max_length = config_.context_length;
    const text::MlmMasker masker(tokenizer_, mo);
    mo.ratio = 0;  // validation captions are not masked (the reference's validation set)
    const text::MlmMasker val_masker(tokenizer_, mo);

    PretrainStepOptions so;
    so.negatives = config_.negatives;
    so.precision = config_.precision;
    so.loss.mlm_coeff = config_.mlm_coeff;
    so.loss.max_logit_scale = config_.max_logit_scale;
    so.loss.ignore_index = tokenizer_.vocab().pad_id();
    so.data_parallel = data_parallel_.get();

    std::optional<MetricLog> log;
    if (is_main()) log.emplace(config_.run_dir());
    PretrainReport report;
    // The effective batch is the job's: each rank accumulates its share.
    const int64_t per_step = config_.batch_size * world_size();
    MAMCLIP_CHECK(config_.effective_batch_size % per_step == 0, value_error, "pretrain: data.effective_batch_size (",
                  config_.effective_batch_size, ") must be a multiple of data.batch_size x ranks (",
                  config_.batch_size, " x ", world_size(), ")");
    const int64_t k = config_.effective_batch_size / per_step;
    for (int64_t epoch = meta.epoch; epoch < config_.max_epochs; ++epoch) {
      model_->train();
      const int64_t skip = epoch == meta.epoch ? meta.batch_in_epoch : 0;
      train_loader.start_epoch(epoch, skip);
      const int64_t total_batches = train_loader.batches_per_epoch();
      Progress progress("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(config_.max_epochs),
                        (total_batches - skip + k - 1) / k);
      std::vector<ClipMicroBatch> micro;
      int64_t batch_index = skip, steps = 0;
      double loss_sum = 0;
      bool stop = false;
      while (!stop) {
        std::optional<data::Batch> b = train_loader.next();
        if (b) {
          micro.push_back(to_micro_batch(*b, masker, epoch, batch_index));
          ++batch_index;
        }
        if (micro.size() == static_cast<size_t>(k) || (!b && !micro.empty())) {
          const PretrainStepResult r =
              pretrain_step(*model_, *optimizer_, micro, so, *dropout_, meta.global_step, &scaler_);
          report.skipped_steps += r.skipped;
          micro.clear();
          ++meta.global_step;
          ++steps;
          loss_sum += r.loss;
          report.step_losses.push_back(r.loss);
          if (log) log->log({{"loss", r.loss}, {"contrastive", r.contrastive}, {"mlm", r.mlm}, {"logit_scale", r.logit_scale},
                   {"epoch", static_cast<double>(epoch)}, {"lr", optimizer_->lr(0)}},
                  meta.global_step, "train");
          char postfix[32];
          std::snprintf(postfix, sizeof(postfix), "loss %.4f", r.loss);
          progress.update(steps, postfix);
          meta.epoch = epoch;
          meta.batch_in_epoch = batch_index;
          const bool at_max = config_.max_steps >= 0 && meta.global_step >= config_.max_steps;
          if (at_max || (config_.checkpoint_every_steps > 0 && meta.global_step % config_.checkpoint_every_steps == 0))
            save_state(meta, best);
          if (at_max) {
            report.stopped_early = true;
            stop = true;
          }
        }
        if (!b) break;
      }
      progress.finish();
      if (stop && batch_index < total_batches) break;  // mid-epoch stop: resume continues this epoch

      PretrainEpoch row;
      row.epoch = epoch;
      row.steps = steps;
      row.train_loss = steps ? loss_sum / static_cast<double>(steps) : 0.0;
      if (val_loader) {
        model_->eval();
        val_loader->start_epoch(0);
        double n = 0;
        int64_t vb = 0;
        while (auto b = val_loader->next()) {
          const PretrainStepResult v =
              evaluate_loss(*model_, {to_micro_batch(*b, val_masker, 0, vb++)}, so.loss, comm_, so.precision);
          row.val_loss += v.loss;
          row.val_contrastive += v.contrastive;
          row.val_mlm += v.mlm;
          n += 1;
        }
        row.val_loss /= n;
        row.val_contrastive /= n;
        row.val_mlm /= n;
        model_->train();
        if (log) log->log({{"loss", row.val_loss}, {"contrastive", row.val_contrastive}, {"mlm", row.val_mlm},
                 {"epoch", static_cast<double>(epoch)}},
                meta.global_step, "val");
      }
      const double criterion = val_loader ? row.val_loss : row.train_loss;
      char losses[96];
      std::snprintf(losses, sizeof(losses), "  train loss %.4f", row.train_loss);
      *out_ << "pretrain: epoch " << epoch + 1 << "/" << config_.max_epochs << losses;
      if (val_loader) {
        std::snprintf(losses, sizeof(losses), "  val loss %.4f", row.val_loss);
        *out_ << losses;
      }
      if (criterion < best) {
        best = criterion;
        if (is_main())
          models::clip::save_vlmodel_weights(*model_, best_weights_path(), vocab_metadata(tokenizer_.vocab()));
        *out_ << "  (best, saved)";
      }
      report.skipped_images = train_loader.skipped() + (val_loader ? val_loader->skipped() : 0);
      if (report.skipped_images > 0) *out_ << "  (" << report.skipped_images << " unreadable images skipped so far)";
      *out_ << "\n";
      report.epochs.push_back(row);
      meta.epoch = epoch + 1;
      meta.batch_in_epoch = 0;
      save_state(meta, best);
      if (is_main()) plot_history();
      if (stop) break;
    }
    report.global_step = meta.global_step;
    report.best_val_loss = best;
    report.best_weights = best_weights_path();
    report.last_state = last_state_path();
    return report;
  }

 private:
  ClipMicroBatch to_micro_batch(const data::Batch& b, const text::MlmMasker& masker, int64_t epoch, int64_t index) const {
    Generator gen(data::detail::mix_keys(data::detail::mix_keys(config_.seed, static_cast<uint64_t>(epoch)),
                                         static_cast<uint64_t>(index)));
    if (rank() > 0) gen.manual_seed(data::detail::mix_keys(gen.seed(), rank_key()));
    const text::MlmBatch t = masker.encode_batch(b.captions, gen);
    return {b.images.to(device_), t.input_ids.to(device_), t.labels.to(device_)};
  }

  // Distinguishes the ranks' random streams; 0 for rank 0 (and one process).
  uint64_t rank_key() const { return static_cast<uint64_t>(rank()) << 40; }

  // Rank 0 writes; every rank's generators are kept ("dropout", "dropout.1", ...).
  void save_state(TrainingMeta& meta, double best) {
    meta.best_metric = std::isfinite(best) ? best : std::numeric_limits<double>::quiet_NaN();
    meta.extra["world_size"] = world_size();
    if (scaler_.enabled())
      meta.extra["grad_scaler"] = {{"scale", scaler_.state().scale}, {"growth_tracker", scaler_.state().growth_tracker}};
    for (const auto& [name, gen] : {std::pair<std::string, Generator*>{"dropout", dropout_.get()},
                                    std::pair<std::string, Generator*>{"default", &default_generator()}}) {
      const GeneratorState mine = GeneratorState::of(*gen);
      std::vector<int64_t> seeds{static_cast<int64_t>(mine.seed)}, offsets{static_cast<int64_t>(mine.offset)};
      if (comm_) {
        seeds = dist::all_gather_scalar(*comm_, static_cast<int64_t>(mine.seed));
        offsets = dist::all_gather_scalar(*comm_, static_cast<int64_t>(mine.offset));
      }
      for (size_t r = 0; r < seeds.size(); ++r) {
        GeneratorState g = mine;
        g.seed = static_cast<decltype(g.seed)>(seeds[r]);
        g.offset = static_cast<decltype(g.offset)>(offsets[r]);
        meta.generators[r == 0 ? name : name + "." + std::to_string(r)] = g;
      }
    }
    if (is_main()) save_training_state(last_state_path(), *model_, *optimizer_, meta);
    if (comm_) comm_->barrier();  // resume on any rank sees the file
  }

  // loss.png from metrics.jsonl (so a resumed run plots its whole history).
  void plot_history() const {
    std::ifstream in(config_.run_dir() / "metrics.jsonl");
    Series train{"train loss", {}}, val{"val loss", {}};
    std::string line;
    while (std::getline(in, line)) {
      const auto j = nlohmann::json::parse(line, nullptr, false);
      if (j.is_discarded() || !j.contains("loss") || !j["loss"].is_number() || !j.contains("phase")) continue;
      (j["phase"] == "val" ? val : train).second.emplace_back(j["step"].get<double>(), j["loss"].get<double>());
    }
    std::vector<Series> series{train};
    if (!val.second.empty()) series.push_back(val);
    plot_lines(config_.run_dir() / "loss.png", "MAM-CLIP pretraining loss", series);
  }

  PretrainConfig config_;
  text::BertTokenizer tokenizer_;
  std::vector<data::Sample> train_, val_;
  std::ostream* out_;
  dist::Communicator* comm_;
  std::ostream null_out_{nullptr};
  std::shared_ptr<models::clip::VLModel> model_;
  std::unique_ptr<dist::DataParallel> data_parallel_;
  std::shared_ptr<Generator> dropout_;
  std::unique_ptr<optim::AdamW> optimizer_;
  optim::GradScaler scaler_;  // enabled for fp16 only
  Device device_ = kCPU;       // trainparams.device: the model's and the batches' device
};

}  // namespace mamclip::train
