#pragma once
// Fine-tuning and evaluation of a MamClipClassifier on labelled images: one
// head (FinetuneOptions::head) trained with cross-entropy and AdamW, the epoch
// with the best validation macro-F1 kept, its weights restored and scored on
// the test split; Grad-CAM heat maps of the result.
//
//   FinetuneOptions o; o.height = 1024; o.width = 768; o.output_dir = "runs/ft";
//   auto r = finetune_classifier(model, split.train, split.val, split.test, o, mapping.class_names);
//   print_confusion(std::cout, r.test.confusion, mapping.class_names);
//
// Class weighting: w_c = n / (K n_c) over the K classes present in the
// training set (scikit-learn's "balanced"; 0 for an absent class), used as
// PyTorch's cross_entropy(weight=w) with mean reduction:
//   loss = sum_i w_{y_i} nll_i / sum_i w_{y_i}
// (a weighted mean, so the scale of w cancels and only the ratios matter).
//
// Learning rate: linear warmup over warmup_steps optimizer steps, then cosine
// decay to 0 at the last step (HF get_cosine_schedule_with_warmup), or
// constant after the warmup with lr_schedule = "constant".
//
// Determinism: the data order and augmentation are functions of (seed, epoch,
// sample) (data::Loader), AdamW has no randomness, and dropout / drop-path draw
// from the running thread's default generator, which this loop seeds with
// `seed` for its duration (and restores afterwards). The same inputs and seed
// give the same weights and metrics, bit for bit, on the CPU.
//
// Data parallel: give every rank of the job the same model config, samples
// and options, and a Communicator (dist/). options.batch_size is per rank:
// rank r takes its slice of every global batch of batch_size x W samples
// (data::LoaderOptions::rank), DataParallel broadcasts rank 0's weights and
// averages the gradients, and the loss is scaled so that the step is one
// process's step on the global batch, weighted mean and all, even when the
// last batch splits unevenly. Validation and test are scored over all ranks:
// rank r scores samples r, r + W, ..., and the logits are gathered, so every
// rank reports the same metrics and keeps the same best epoch. Only rank 0
// prints and writes files. Dropout / drop-path streams differ per rank.
//
// Files in output_dir (when set; created if needed):
//   metrics.csv, metrics.jsonl    MetricLog rows: phase "train" per step (loss, lr, epoch),
//                                 "val" per epoch, "test" once
//   best.safetensors              the best epoch's state dict (the classifier's names), written
//                                 atomically each time the best improves; metadata: epoch, head, val_macro_f1
//   confusion_matrix.png          the test confusion matrix (validation's when there is no test split)
//   loss.png                      training loss per step and validation loss per epoch
//
// defines: FinetuneOptions, EvalResult, EpochRecord, FinetuneResult, class_weights,
//          weighted_log_likelihood_sum, weighted_cross_entropy, head_index, evaluate_logits, evaluate_classifier, finetune_classifier, print_confusion,
//          grad_cam, write_grad_cam

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <iomanip>
#include <iostream>
#include <limits>
#include <map>
#include <optional>
#include <ostream>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "mamclip/autograd/engine.hpp"
#include "mamclip/autograd/grad_mode.hpp"
#include "mamclip/core/autocast.hpp"
#include "mamclip/core/error.hpp"
#include "mamclip/core/factory.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/data/datasets.hpp"
#include "mamclip/data/loader.hpp"
#include "mamclip/dist/communicator.hpp"
#include "mamclip/dist/parallel.hpp"
#include "mamclip/io/safetensors.hpp"
#include "mamclip/models/clip/classifier.hpp"
#include "mamclip/ops/elementwise/elementwise.hpp"
#include "mamclip/ops/indexing/indexing.hpp"
#include "mamclip/ops/loss/loss.hpp"
#include "mamclip/ops/reduce/reduce.hpp"
#include "mamclip/ops/shape/shape.hpp"
#include "mamclip/ops/softmax/softmax.hpp"
#include "mamclip/optim/adamw.hpp"
#include "mamclip/optim/lr_scheduler.hpp"
#include "mamclip/train/log.hpp"
#include "mamclip/train/metrics.hpp"
#include "mamclip/train/plot.hpp"

namespace mamclip::train {

struct FinetuneOptions {
  int64_t epochs = 10;
  int64_t batch_size = 8;
  double lr = 1e-4, weight_decay = 0.05;  // AdamW (betas 0.9, 0.999, eps 1e-8)
  int64_t warmup_steps = 0;
  std::string lr_schedule = "cosine";     // cosine | constant (after the warmup)
  bool class_weighting = false;
  uint64_t seed = 0;
  int64_t height = 1024, width = 768;     // the loader's output size
  std::string augmentation = "soft";      // training only: none | soft | heavy; evaluation uses none
  int workers = 2;
  std::string head = "birads_layer";      // the head that is trained and scored
  std::filesystem::path output_dir;       // empty: nothing is written
  bool quiet = false;                     // no progress bars or epoch lines
  std::string precision = "fp32";         // fp32 | bf16: the training forward in a bfloat16 autocast region
                                          // (weights, gradients, AdamW and evaluation stay float)
  bool skip_unreadable = false;           // leave out (and count) images that cannot be read; one process only

  void validate() const {
    MAMCLIP_CHECK(epochs > 0, value_error, "FinetuneOptions: epochs is ", epochs, "; expected at least 1");
    MAMCLIP_CHECK(batch_size > 0, value_error, "FinetuneOptions: batch_size is ", batch_size, "; expected at least 1");
    MAMCLIP_CHECK(lr >= 0 && std::isfinite(lr), value_error, "FinetuneOptions: lr is ", lr,
                  "; expected a finite non-negative number");
    MAMCLIP_CHECK(weight_decay >= 0, value_error, "FinetuneOptions: weight_decay is ", weight_decay,
                  "; expected >= 0");
    MAMCLIP_CHECK(warmup_steps >= 0, value_error, "FinetuneOptions: warmup_steps is ", warmup_steps,
                  "; expected >= 0");
    MAMCLIP_CHECK(lr_schedule == "cosine" || lr_schedule == "constant", value_error,
                  "FinetuneOptions: lr_schedule is \"", lr_schedule, "\"; expected \"cosine\" or \"constant\"");
    MAMCLIP_CHECK(height > 0 && width > 0, value_error, "FinetuneOptions: image size ", height, "x", width,
                  "; expected positive height and width");
    MAMCLIP_CHECK(workers >= 0, value_error, "FinetuneOptions: workers is ", workers, "; expected >= 0");
    MAMCLIP_CHECK(precision == "fp32" || precision == "bf16", value_error, "FinetuneOptions: precision is \"",
                  precision, "\"; expected \"fp32\" or \"bf16\"");
  }
};

// Scores of one pass over a labelled split. NaN (and an empty 1-class matrix)
// when the split is empty.
struct EvalResult {
  double macro_f1 = std::numeric_limits<double>::quiet_NaN();     // sklearn's f1_score(average="macro"), present classes
  double accuracy = std::numeric_limits<double>::quiet_NaN();
  double roc_auc_ovr = std::numeric_limits<double>::quiet_NaN();  // macro over the classes with positives and negatives
  std::vector<double> per_class_f1;                               // [num_classes]
  ConfusionMatrix confusion = ConfusionMatrix(1);                 // rows: true class, columns: predicted
  double loss = std::numeric_limits<double>::quiet_NaN();         // mean unweighted cross-entropy
  int64_t count = 0;                                              // samples scored
};

struct EpochRecord {
  int64_t epoch = 0;        // from 0
  double train_loss = 0;    // mean of the epoch's (weighted) step losses
  double lr = 0;            // the last step's learning rate
  double seconds = 0;       // wall time of training and validation
  EvalResult val;
};

struct FinetuneResult {
  EvalResult best_val, test;
  int64_t best_epoch = -1;
  std::vector<EpochRecord> history;
  std::vector<double> step_losses;  // every optimizer step's training loss
  int64_t skipped_images = 0;       // skip_unreadable: images left out, all splits and epochs
};

// ---- loss

// Inverse-frequency class weights over `labels` in [0, num_classes) (see the header comment):
// n / (K n_c) for the K classes that occur, 0 for the others.
inline std::vector<double> class_weights(const std::vector<int64_t>& labels, int64_t num_classes) {
  MAMCLIP_CHECK(num_classes > 0, value_error, "class_weights: num_classes is ", num_classes, "; expected >= 1");
  MAMCLIP_CHECK(!labels.empty(), value_error, "class_weights: no labels");
  std::vector<int64_t> counts(static_cast<size_t>(num_classes), 0);
  for (size_t i = 0; i < labels.size(); ++i) {
    MAMCLIP_CHECK(labels[i] >= 0 && labels[i] < num_classes, value_error, "class_weights: labels[", i, "] = ",
                  labels[i], " is out of range; expected a class in [0, ", num_classes, ")");
    ++counts[static_cast<size_t>(labels[i])];
  }
  const auto present = static_cast<double>(std::count_if(counts.begin(), counts.end(), [](int64_t c) { return c > 0; }));
  std::vector<double> w(counts.size(), 0.0);
  for (size_t c = 0; c < counts.size(); ++c)
    if (counts[c] > 0) w[c] = static_cast<double>(labels.size()) / (present * static_cast<double>(counts[c]));
  return w;
}

// sum_i w_{y_i} log p_{y_i} over the rows of logits [N, C] (target [N] in
// [0, C), weights [C]; empty weights: all 1), differentiable with respect to
// logits, and sum_i w_{y_i}. The pieces of the weighted mean below, which
// data-parallel training divides by the sum over all ranks instead.
template <class T>
std::pair<Tensor<T>, double> weighted_log_likelihood_sum(const Tensor<T>& logits, const Tensor<int64_t>& target,
                                                         const std::vector<double>& weights) {
  MAMCLIP_CHECK(logits.defined() && logits.dim() == 2, shape_error, "weighted_cross_entropy: logits has shape ",
                logits.defined() ? shape_str(logits.shape()) : std::string("(undefined)"), "; expected [N, C]");
  MAMCLIP_CHECK(weights.empty() || static_cast<int64_t>(weights.size()) == logits.size(1), shape_error,
                "weighted_cross_entropy: ", weights.size(), " class weights for logits of shape ",
                shape_str(logits.shape()), "; expected one weight per class");
  MAMCLIP_CHECK(target.defined() && target.dim() == 1 && target.size(0) == logits.size(0), shape_error,
                "weighted_cross_entropy: target has shape ",
                target.defined() ? shape_str(target.shape()) : std::string("(undefined)"), " and logits ",
                shape_str(logits.shape()), "; expected target [N]");
  const std::vector<int64_t> y = target.to_vector();
  std::vector<T> w(y.size());
  double total = 0;
  for (size_t i = 0; i < y.size(); ++i) {
    MAMCLIP_CHECK(y[i] >= 0 && y[i] < logits.size(1), value_error, "weighted_cross_entropy: target[", i, "] = ", y[i],
                  " is out of range; expected a class in [0, ", logits.size(1), ")");
    const double wi = weights.empty() ? 1.0 : weights[static_cast<size_t>(y[i])];
    w[i] = static_cast<T>(wi);
    total += wi;
  }
  const Tensor<T> picked = gather(log_softmax(logits, 1), 1, target.unsqueeze(1)).squeeze(1);  // [N] log p_{y_i}
  const Tensor<T> wt = from_vector<T>(w, Shape{static_cast<int64_t>(w.size())}, logits.device());
  return {sum(picked * wt), total};
}

// PyTorch's cross_entropy(logits, target, weight=w) with mean reduction: logits [N, C], target [N]
// in [0, C), weights [C] (empty: the unweighted mean). Composed from log_softmax and gather, so it
// is differentiable with respect to logits.
template <class T>
Tensor<T> weighted_cross_entropy(const Tensor<T>& logits, const Tensor<int64_t>& target,
                                 const std::vector<double>& weights) {
  if (weights.empty()) return cross_entropy(logits, target);
  const auto [log_likelihood, total] = weighted_log_likelihood_sum(logits, target, weights);
  MAMCLIP_CHECK(total > 0, value_error, "weighted_cross_entropy: the weights of the batch's targets sum to ", total,
                "; expected a positive sum");
  return log_likelihood * (-1.0 / total);
}

// ---- evaluation

// The index of the head called `name`; value_error listing the model's heads otherwise.
inline int64_t head_index(const models::clip::MamClipClassifier& model, const std::string& name) {
  const auto& heads = model.heads();
  std::string known;
  for (size_t i = 0; i < heads.size(); ++i) {
    if (heads[i].name == name) return static_cast<int64_t>(i);
    known += (i ? ", \"" : "\"") + heads[i].name + "\"";
  }
  throw value_error(mamclip::detail::str_cat("head_index: the classifier has no head \"", name, "\"; its heads are ",
                                             known));
}

namespace detail {

inline void check_head(const models::clip::MamClipClassifier& model, int64_t head, int64_t num_classes,
                       const char* who) {
  const auto& heads = model.heads();
  MAMCLIP_CHECK(head >= 0 && head < static_cast<int64_t>(heads.size()), index_error, who, ": head ", head,
                " is out of range; the classifier has ", heads.size(), " heads");
  MAMCLIP_CHECK(heads[static_cast<size_t>(head)].num_classes == num_classes, value_error, who, ": head \"",
                heads[static_cast<size_t>(head)].name, "\" has ", heads[static_cast<size_t>(head)].num_classes,
                " outputs and num_classes is ", num_classes, "; expected the same");
  MAMCLIP_CHECK(num_classes >= 2, value_error, who, ": num_classes is ", num_classes, "; expected at least 2");
}

inline void check_batch_labels(const Tensor<int64_t>& labels, int64_t num_classes, const char* who) {
  for (int64_t y : labels.to_vector())
    MAMCLIP_CHECK(y >= 0 && y < num_classes, value_error, who, ": a sample has label ", y,
                  "; expected a class in [0, ", num_classes, ") (unlabelled samples, label -1, cannot be scored)");
}

// Restores the thread's default generator when the loop ends (also by an exception).
class DefaultGeneratorScope {
 public:
  explicit DefaultGeneratorScope(uint64_t seed)
      : seed_(default_generator().seed()), offset_(default_generator().offset()) {
    default_generator().manual_seed(seed);
  }
  ~DefaultGeneratorScope() { default_generator().set_state(seed_, offset_); }
  DefaultGeneratorScope(const DefaultGeneratorScope&) = delete;
  DefaultGeneratorScope& operator=(const DefaultGeneratorScope&) = delete;

 private:
  uint64_t seed_, offset_;
};

// Eval mode for its scope; the module's training flag comes back on exit (also by an exception).
class EvalModeScope {
 public:
  explicit EvalModeScope(nn::Module& module) : module_(module), was_training_(module.is_training()) { module.eval(); }
  ~EvalModeScope() { module_.train(was_training_); }
  EvalModeScope(const EvalModeScope&) = delete;
  EvalModeScope& operator=(const EvalModeScope&) = delete;

 private:
  nn::Module& module_;
  bool was_training_;
};

// A deep copy of the module's state (state_dict() holds views of the live parameters).
inline nn::StateDict snapshot(const nn::Module& model) {
  NoGradGuard no_grad;
  nn::StateDict out;
  for (const auto& [name, t] : model.state_dict()) out.insert(name, t.clone());
  return out;
}

inline std::string fixed(double x, int digits = 4) {
  std::ostringstream os;
  os << std::fixed << std::setprecision(digits) << x;
  return os.str();
}

}  // namespace detail

// Scores logits [N, C] against labels [N] in [0, C): the metrics of train/metrics.hpp on the argmax
// predictions (first index on ties) and the softmax probabilities (AUC), and the mean cross-entropy.
// N = 0 gives the NaN result.
inline EvalResult evaluate_logits(const Tensor<float>& logits, const Tensor<int64_t>& labels, int64_t num_classes) {
  MAMCLIP_CHECK(num_classes >= 2, value_error, "evaluate_logits: num_classes is ", num_classes, "; expected at least 2");
  MAMCLIP_CHECK(logits.defined() && logits.dim() == 2 && logits.size(1) == num_classes, shape_error,
                "evaluate_logits: logits has shape ",
                logits.defined() ? shape_str(logits.shape()) : std::string("(undefined)"), "; expected [N, ",
                num_classes, "]");
  MAMCLIP_CHECK(labels.defined() && labels.dim() == 1 && labels.size(0) == logits.size(0), shape_error,
                "evaluate_logits: labels has shape ",
                labels.defined() ? shape_str(labels.shape()) : std::string("(undefined)"), " and logits ",
                shape_str(logits.shape()), "; expected labels [N]");
  detail::check_batch_labels(labels, num_classes, "evaluate_logits");
  NoGradGuard no_grad;
  EvalResult r;
  r.confusion = ConfusionMatrix(num_classes);
  r.count = logits.size(0);
  r.per_class_f1.assign(static_cast<size_t>(num_classes), std::numeric_limits<double>::quiet_NaN());
  if (r.count == 0) return r;
  r.confusion.update(labels, max(logits, 1).second);
  r.loss = static_cast<double>(cross_entropy(logits, labels).item());
  r.accuracy = accuracy(r.confusion);
  r.macro_f1 = macro_f1(r.confusion);
  r.per_class_f1 = precision_recall_f1(r.confusion).f1;
  RocAucOptions auc;
  auc.skip_undefined = true;        // a small split may lack a class
  auc.check_probabilities = false;  // softmax rows are probabilities by construction (float rounding aside)
  r.roc_auc_ovr = roc_auc_ovr(labels, softmax(logits, 1), auc);
  return r;
}

namespace detail {

// Head `head`'s logits [N, C] and the labels [N] of one pass of `loader` (no
// gradients, eval mode; the module's training flag is restored). The images go
// to the model's device; the logits come back to the CPU.
inline std::pair<Tensor<float>, Tensor<int64_t>> classifier_logits(models::clip::MamClipClassifier& model,
                                                                   data::Loader& loader, int64_t num_classes,
                                                                   int64_t head, const char* who) {
  EvalModeScope eval_mode(model);
  NoGradGuard no_grad;
  const Device device = model.device();
  std::vector<Tensor<float>> logits;
  std::vector<Tensor<int64_t>> labels;
  loader.start_epoch(0);
  while (std::optional<data::Batch> batch = loader.next()) {
    check_batch_labels(batch->labels, num_classes, who);
    logits.push_back(model.forward(batch->images.to(device))[static_cast<size_t>(head)].to(kCPU));  // [B, C]
    labels.push_back(batch->labels);
  }
  if (logits.empty()) return {zeros<float>({0, num_classes}), zeros<int64_t>({0})};
  return {cat(logits, 0), cat(labels, 0)};
}

}  // namespace detail

// Scores model's head `head` over one pass of `loader` with evaluate_logits (no gradients, eval
// mode; the module's training flag is restored).
inline EvalResult evaluate_classifier(models::clip::MamClipClassifier& model, data::Loader& loader,
                                      int64_t num_classes, int64_t head) {
  detail::check_head(model, head, num_classes, "evaluate_classifier");
  const auto [logits, labels] = detail::classifier_logits(model, loader, num_classes, head, "evaluate_classifier");
  return evaluate_logits(logits, labels, num_classes);
}

inline EvalResult evaluate_classifier(models::clip::MamClipClassifier& model, data::Loader& loader,
                                      int64_t num_classes, const std::string& head) {
  return evaluate_classifier(model, loader, num_classes, head_index(model, head));
}

// ---- terminal output

// The confusion matrix as an aligned table, rows true class, columns predicted, with per-row support.
inline void print_confusion(std::ostream& os, const ConfusionMatrix& cm, const std::vector<std::string>& names) {
  const int64_t c = cm.num_classes();
  auto name = [&](int64_t i) { return i < static_cast<int64_t>(names.size()) ? names[static_cast<size_t>(i)] : std::to_string(i); };
  size_t label_w = std::string("true \\ pred").size(), cell_w = std::string("support").size();
  for (int64_t i = 0; i < c; ++i) {
    label_w = std::max(label_w, name(i).size());
    cell_w = std::max({cell_w, name(i).size(), std::to_string(cm.support(i)).size()});
  }
  os << std::left << std::setw(static_cast<int>(label_w)) << "true \\ pred" << std::right;
  for (int64_t j = 0; j < c; ++j) os << "  " << std::setw(static_cast<int>(cell_w)) << name(j);
  os << "  " << std::setw(static_cast<int>(cell_w)) << "support" << '\n';
  for (int64_t i = 0; i < c; ++i) {
    os << std::left << std::setw(static_cast<int>(label_w)) << name(i) << std::right;
    for (int64_t j = 0; j < c; ++j) os << "  " << std::setw(static_cast<int>(cell_w)) << cm.count(i, j);
    os << "  " << std::setw(static_cast<int>(cell_w)) << cm.support(i) << '\n';
  }
}

// ---- training

namespace detail {

// What every rank of a data-parallel fine-tuning must agree on: the options,
// the class names and the three splits' samples (paths and labels).
inline std::string finetune_fingerprint(const FinetuneOptions& o, const std::vector<std::string>& class_names,
                                        const std::vector<const std::vector<data::Sample>*>& splits) {
  std::ostringstream os;
  os << std::setprecision(17) << o.epochs << ' ' << o.batch_size << ' ' << o.lr << ' ' << o.weight_decay << ' ' << o.warmup_steps << ' '
     << o.lr_schedule << ' ' << o.class_weighting << ' ' << o.seed << ' ' << o.height << 'x' << o.width << ' '
     << o.augmentation << ' ' << o.head << " classes";
  for (const auto& c : class_names) os << ' ' << c;
  for (const auto* split : splits) {
    os << " | " << split->size();
    for (const auto& sample : *split) os << ' ' << sample.image.string() << '=' << sample.label;
  }
  return os.str();
}

// Rank r's share of an evaluation split: samples r, r + W, r + 2W, ...
inline std::vector<data::Sample> strided_shard(const std::vector<data::Sample>& samples, int rank, int world) {
  std::vector<data::Sample> out;
  for (size_t i = static_cast<size_t>(rank); i < samples.size(); i += static_cast<size_t>(world))
    out.push_back(samples[i]);
  return out;
}

}  // namespace detail

// comm: the job's communicator for data-parallel fine-tuning (see the header
// comment; outlives the call), or null for one process.
inline FinetuneResult finetune_classifier(models::clip::MamClipClassifier& model,
                                          const std::vector<data::Sample>& train,
                                          const std::vector<data::Sample>& val,
                                          const std::vector<data::Sample>& test, const FinetuneOptions& options,
                                          const std::vector<std::string>& class_names,
                                          dist::Communicator* comm = nullptr) {
  options.validate();
  if (comm && comm->world_size() == 1) comm = nullptr;
  // A rank whose batch is unreadable as a whole would take one batch more than the others.
  MAMCLIP_CHECK(!(comm && options.skip_unreadable), value_error,
                "finetune_classifier: skip_unreadable works in one process only (with ", comm ? comm->world_size() : 1,
                " ranks a skipped batch would put the ranks out of step); remove the unreadable images instead");
  const int world = comm ? comm->world_size() : 1, rank = comm ? comm->rank() : 0;
  const bool main = rank == 0;  // prints and writes for the job
  if (comm)
    dist::check_same(*comm, "fine-tuning options and data",
                     detail::finetune_fingerprint(options, class_names, {&train, &val, &test}));
  const auto num_classes = static_cast<int64_t>(class_names.size());
  const int64_t head = head_index(model, options.head);
  detail::check_head(model, head, num_classes, "finetune_classifier");
  MAMCLIP_CHECK(!train.empty(), value_error, "finetune_classifier: the training split is empty");
  MAMCLIP_CHECK(static_cast<int64_t>(train.size()) >= world, value_error, "finetune_classifier: ", train.size(),
                " training samples for ", world, " ranks; expected at least one per rank");
  std::vector<int64_t> train_labels;
  for (const auto& s : train) {
    MAMCLIP_CHECK(s.label >= 0 && s.label < num_classes, value_error, "finetune_classifier: training sample \"",
                  s.id.empty() ? s.image.string() : s.id, "\" has label ", s.label, "; expected a class in [0, ",
                  num_classes, ")");
    train_labels.push_back(s.label);
  }
  const std::vector<double> weights =
      options.class_weighting ? class_weights(train_labels, num_classes) : std::vector<double>{};

  // Rank 0 keeps the one-process stream; the others get their own.
  detail::DefaultGeneratorScope generator_scope(
      rank == 0 ? options.seed : data::detail::mix_keys(options.seed, static_cast<uint64_t>(rank) << 40));
  auto loader_options = [&](bool training) {
    data::LoaderOptions o;
    o.batch_size = options.batch_size;
    o.height = options.height;
    o.width = options.width;
    o.shuffle = training;
    o.drop_last = false;
    o.seed = options.seed;
    o.workers = options.workers;
    o.augmentation = training ? options.augmentation : "none";
    o.skip_unreadable = options.skip_unreadable;
    if (training) {
      o.rank = rank;
      o.world_size = world;
    }
    return o;
  };
  data::Loader train_loader(train, loader_options(true));
  // Evaluation: this rank's shard of each split (none when it is empty here).
  std::optional<data::Loader> val_loader, test_loader;
  const std::vector<data::Sample> val_shard = detail::strided_shard(val, rank, world),
                                  test_shard = detail::strided_shard(test, rank, world);
  if (!val_shard.empty()) val_loader.emplace(val_shard, loader_options(false));
  if (!test_shard.empty()) test_loader.emplace(test_shard, loader_options(false));
  auto score = [&](std::optional<data::Loader>& loader) {
    auto [logits, labels] = loader ? detail::classifier_logits(model, *loader, num_classes, head, "finetune_classifier")
                                   : std::pair{zeros<float>({0, num_classes}), zeros<int64_t>({0})};
    if (comm) {
      logits = dist::all_gather(*comm, logits);
      labels = dist::all_gather(*comm, labels);
    }
    return evaluate_logits(logits, labels, num_classes);
  };
  const bool has_val = !val.empty(), has_test = !test.empty();

  // Broadcasts rank 0's weights before the optimizer sees them.
  std::optional<dist::DataParallel> data_parallel;
  if (comm) data_parallel.emplace(model, *comm);

  // Training runs where the model is (move it with model.to(device) first); the loader's batches follow it.
  const Device device = model.device();
  optim::AdamWOptions adamw;
  adamw.lr = options.lr;
  adamw.weight_decay = options.weight_decay;
  optim::AdamW optimizer(model.parameters(), adamw);
  const int64_t steps_per_epoch = train_loader.batches_per_epoch();
  const int64_t total_steps = std::max<int64_t>(options.epochs * steps_per_epoch, options.warmup_steps);
  const int64_t warmup = options.warmup_steps;
  const bool cosine = options.lr_schedule == "cosine";
  optim::LambdaLR scheduler(optimizer, [=](int64_t s) {
    return cosine ? optim::CosineWithWarmup::factor_at(s, warmup, total_steps)
                  : (s < warmup ? static_cast<double>(s) / static_cast<double>(warmup) : 1.0);
  });

  // The training loss of one batch (this rank's part of it) and its value for the whole batch.
  auto batch_loss = [&](const Tensor<float>& logits, const Tensor<int64_t>& labels) -> std::pair<Tensor<float>, double> {
    if (!comm) {
      Tensor<float> loss = weighted_cross_entropy(logits, labels, weights);
      const double value = static_cast<double>(loss.item());
      return {std::move(loss), value};
    }
    // The job's weighted mean is -sum_i w_i log p_i / sum_i w_i over all ranks' samples;
    // DataParallel averages the ranks' gradients, so each rank scales its sum by W / (sum of all w).
    const auto [log_likelihood, local_weight] = weighted_log_likelihood_sum(logits, labels, weights);
    double sums[2] = {local_weight, static_cast<double>(log_likelihood.item())};
    comm->all_reduce(sums, 2, DType::f64, dist::ReduceOp::sum);
    MAMCLIP_CHECK(sums[0] > 0, value_error, "weighted_cross_entropy: the weights of the batch's targets sum to ",
                  sums[0], "; expected a positive sum");
    return {log_likelihood * (-static_cast<double>(world) / sums[0]), -sums[1] / sums[0]};
  };

  const bool write = main && !options.output_dir.empty();
  const bool quiet = options.quiet || !main;
  std::optional<MetricLog> log;
  if (write) {
    std::filesystem::create_directories(options.output_dir);
    log.emplace(options.output_dir);
  }

  FinetuneResult result;
  nn::StateDict best_state;
  double best_f1 = -std::numeric_limits<double>::infinity();
  int64_t step = 0;
  for (int64_t epoch = 0; epoch < options.epochs; ++epoch) {
    const auto t0 = std::chrono::steady_clock::now();
    model.train();
    train_loader.start_epoch(epoch);
    std::optional<Progress> progress;
    if (!quiet)
      progress.emplace("epoch " + std::to_string(epoch + 1) + "/" + std::to_string(options.epochs), steps_per_epoch);
    EpochRecord rec;
    rec.epoch = epoch;
    double loss_sum = 0;
    int64_t batches = 0;
    while (std::optional<data::Batch> batch = train_loader.next()) {
      detail::check_batch_labels(batch->labels, num_classes, "finetune_classifier");
      Tensor<float> logits;
      {
        const AutocastGuard amp(device.type, DType::bf16, options.precision == "bf16");
        logits = model.forward(batch->images.to(device))[static_cast<size_t>(head)];
      }
      const auto [loss, value] = batch_loss(logits, batch->labels.to(device));
      MAMCLIP_CHECK(std::isfinite(value), value_error, "finetune_classifier: the training loss is ", value,
                    " at epoch ", epoch, ", step ", step, " (batch ", batches, " of the epoch); lower the lr");
      optimizer.zero_grad();
      loss.backward();
      if (data_parallel) data_parallel->finish_gradient_sync();
      optimizer.step();
      rec.lr = optimizer.lr(0);
      scheduler.step();
      loss_sum += value;
      ++batches;
      result.step_losses.push_back(value);
      if (log)
        log->log({{"loss", value}, {"lr", rec.lr}, {"epoch", static_cast<double>(epoch)}}, step, "train");
      ++step;
      if (progress) progress->update(batches, "loss " + detail::fixed(value));
    }
    if (progress) progress->finish();
    rec.train_loss = batches ? loss_sum / static_cast<double>(batches) : std::numeric_limits<double>::quiet_NaN();
    if (has_val) rec.val = score(val_loader);
    rec.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (log && has_val)
      log->log({{"loss", rec.val.loss}, {"macro_f1", rec.val.macro_f1}, {"accuracy", rec.val.accuracy},
                {"roc_auc_ovr", rec.val.roc_auc_ovr}, {"epoch", static_cast<double>(epoch)}},
               step, "val");
    // Without a validation split every epoch counts as better, so the last one is kept.
    const double criterion = has_val ? rec.val.macro_f1 : static_cast<double>(epoch);
    if (criterion > best_f1) {
      best_f1 = criterion;
      result.best_epoch = epoch;
      result.best_val = rec.val;
      best_state = detail::snapshot(model);
      if (write) {
        io::NamedTensors tensors;
        for (const auto& [name, t] : best_state) tensors.emplace_back(name, t);
        io::save_safetensors((options.output_dir / "best.safetensors").string(), tensors,
                             {{"format", "pt"}, {"epoch", std::to_string(epoch)}, {"head", options.head},
                              {"val_macro_f1", std::to_string(rec.val.macro_f1)}});
      }
    }
    if (!quiet) {
      std::cout << "epoch " << epoch + 1 << "/" << options.epochs << "  train loss " << detail::fixed(rec.train_loss);
      if (has_val)
        std::cout << "  val loss " << detail::fixed(rec.val.loss) << "  macro-F1 " << detail::fixed(rec.val.macro_f1)
                  << "  acc " << detail::fixed(rec.val.accuracy) << "  AUC " << detail::fixed(rec.val.roc_auc_ovr);
      std::cout << "  (" << detail::fixed(rec.seconds, 1) << " s)" << (result.best_epoch == epoch ? "  *" : "")
                << std::endl;
    }
    result.history.push_back(std::move(rec));
  }

  if (!best_state.empty()) model.load_state_dict(best_state);
  if (has_test) {
    result.test = score(test_loader);
    if (log)
      log->log({{"loss", result.test.loss}, {"macro_f1", result.test.macro_f1}, {"accuracy", result.test.accuracy},
                {"roc_auc_ovr", result.test.roc_auc_ovr}, {"epoch", static_cast<double>(result.best_epoch)}},
               step, "test");
  }
  result.skipped_images = train_loader.skipped() + (val_loader ? val_loader->skipped() : 0) +
                          (test_loader ? test_loader->skipped() : 0);
  if (write) {
    const EvalResult& shown = has_test ? result.test : result.best_val;
    if (shown.count > 0) plot_confusion_matrix(options.output_dir / "confusion_matrix.png", shown.confusion, class_names);
    std::vector<std::pair<double, double>> train_curve, val_curve;
    for (size_t i = 0; i < result.step_losses.size(); ++i)
      train_curve.emplace_back(static_cast<double>(i + 1) / static_cast<double>(std::max<int64_t>(1, steps_per_epoch)),
                               result.step_losses[i]);
    for (const auto& r : result.history)
      if (std::isfinite(r.val.loss)) val_curve.emplace_back(static_cast<double>(r.epoch + 1), r.val.loss);
    std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> series{{"train", train_curve}};
    if (!val_curve.empty()) series.emplace_back("validation", val_curve);
    plot_lines(options.output_dir / "loss.png", "loss (x: epoch)", series);
  }
  return result;
}

// ---- Grad-CAM

// Grad-CAM (Selvaraju et al. 2017) of head `head`'s logit `target_class` for one image [1, 3, H, W]:
// A = the last stage's map [C, h, w] (ConvNeXt::forward_features), alpha_c = the spatial mean of
// d logit / d A_c, cam = relu(sum_c alpha_c A_c), divided by its maximum -> [h, w] in [0, 1] (all
// zeros when no location has positive evidence). Eval mode; the map is a leaf, so the trunk builds
// no graph, and the parameters' .grad are left as they were.
inline Tensor<float> grad_cam(models::clip::MamClipClassifier& model, const Tensor<float>& image, int64_t target_class,
                              int64_t head = 0) {
  MAMCLIP_CHECK(image.defined() && image.dim() == 4 && image.size(0) == 1, shape_error, "grad_cam: image has shape ",
                image.defined() ? shape_str(image.shape()) : std::string("(undefined)"), "; expected [1, 3, H, W]");
  MAMCLIP_CHECK(head >= 0 && head < static_cast<int64_t>(model.head_layers.size()), index_error, "grad_cam: head ", head,
                " is out of range; the classifier has ", model.head_layers.size(), " heads");
  const int64_t classes = model.heads()[static_cast<size_t>(head)].num_classes;
  MAMCLIP_CHECK(target_class >= 0 && target_class < classes, index_error, "grad_cam: target_class ", target_class,
                " is out of range for head \"", model.heads()[static_cast<size_t>(head)].name, "\" with ", classes,
                " classes");
  detail::EvalModeScope eval_mode(model);
  Tensor<float> map;
  {
    NoGradGuard no_grad;
    map = model.encoder->forward_features(image);  // [1, C, h, w]
  }
  map = map.detach();
  map.set_requires_grad(true);
  // Set the parameters' gradients aside so that this backward pass does not add to them.
  std::vector<std::pair<Tensor<float>, Tensor<float>>> saved;
  for (const Tensor<float>& p : model.parameters()) {
    saved.emplace_back(p, p.grad());
    p.set_grad(Tensor<float>());
  }
  try {
    autograd::GradModeGuard grad_on(true);
    const Tensor<float> logits = model.head_layers[static_cast<size_t>(head)]->forward(model.encoder->forward_head(map));
    sum(logits.select(1, target_class)).backward();
  } catch (...) {
    for (auto& [p, g] : saved) p.set_grad(g);
    throw;
  }
  for (auto& [p, g] : saved) p.set_grad(g);
  NoGradGuard no_grad;
  const Tensor<float> alpha = mean(map.grad(), {2, 3}, /*keepdim=*/true);        // [1, C, 1, 1]
  const Tensor<float> cam = relu(sum(map.detach() * alpha, {1})).select(0, 0);  // [h, w]
  const double peak = static_cast<double>(amax(cam).item());
  return peak > 0 ? (cam * (1.0 / peak)).contiguous() : zeros<float>(cam.shape());
}

// The Grad-CAM of `image` [1, 3, H, W] (values in [0, 1]) blended over its first channel as a jet
// heat map (plot.hpp's overlay_heatmap), written to `png`; returns the [h, w] map.
inline Tensor<float> write_grad_cam(const std::filesystem::path& png, models::clip::MamClipClassifier& model,
                                    const Tensor<float>& image, int64_t target_class, int64_t head = 0,
                                    double alpha = 0.4) {
  const Tensor<float> cam = grad_cam(model, image, target_class, head);
  overlay_heatmap(png, image.select(0, 0).select(0, 0).contiguous(), cam, alpha);
  return cam;
}

}  // namespace mamclip::train
