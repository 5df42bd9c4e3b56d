#pragma once
// Pretraining configuration, with the sections and key names of the reference
// MAM-CLIP cfg.yaml (embed_dim, vision_model, optimizer, text_model, data,
// trainparams) plus the keys only mamclip has (marked below). A config is JSON
// here; the mamclip program also reads YAML and converts it. Unknown keys are
// errors, so a typo never falls back silently to a default.
//
//   PretrainConfig cfg;                                   // the paper's values
//   cfg = PretrainConfig::from_json(merged_json);         // file contents
//   apply_override(json, "optimizer.lr=3e-4");            // Hydra-style key=value

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "mamclip/core/device.hpp"
#include "mamclip/core/error.hpp"

namespace mamclip::train {

struct PretrainConfig {
  // model
  std::string model_size = "full";      // mamclip: full | small (the demo/test size of VLModelConfig::small)
  int64_t embed_dim = 768;
  std::string vision_model = "convnext_small";  // vision_model.name: convnext_tiny | convnext_small
  // optimizer (AdamW)
  double lr = 1e-4, weight_decay = 1e-6, eps = 1e-8;
  // text_model
  int64_t width = 768, context_length = 100, vocab_size = 49408, fusion_layers = 1, heads = 8;
  std::string bert_model_name = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract-fulltext";
  std::string bert_model_path;          // mamclip: a local HF directory with the BERT weights and vocab (none: random init)
  std::string vocab_path;               // mamclip: vocab.txt when there is no bert_model_path
  double mask_ratio = 0.15;
  bool mlm = true;
  // data
  std::string train_json_path, valid_json_path, image_main_path;
  int64_t effective_batch_size = 64, batch_size = 8;
  int64_t image_height = 1024, image_width = 768;  // image_size: [H, W]
  int64_t num_workers = 2;
  bool skip_unreadable = false;         // mamclip: leave out (and count) images that cannot be read; one process only
  // trainparams
  int64_t n_gpu = 1;
  std::string experiment_name = "mamclip";
  int64_t max_epochs = 75;
  std::string train_transforms = "heavy";  // heavy | soft | none
  std::string checkpoint_dir_path = "runs";
  // trainparams, mamclip only
  std::string negatives = "paper";      // paper: each micro-batch its own negatives; full: GradCache over the effective batch
  std::string precision = "fp32";       // fp32 | bf16 | fp16 (autocast of the forward passes; fp16 with a loss scaler)
  // cpu | cuda | cuda:N: where the model trains, one device per process; in
  // a data-parallel job "cuda" is the GPU of the process's local rank.
  std::string device = "cpu";
  double mlm_coeff = 0.5;
  std::optional<double> max_logit_scale;  // clamp of logit_scale (e.g. ln 100); the reference does not clamp
  uint64_t seed = 42;
  bool grad_checkpointing = false;
  std::string init_checkpoint;          // start from these weights (a reference .ckpt or ours)
  int64_t max_steps = -1;               // stop after this many optimizer steps (-1: all epochs)
  int64_t checkpoint_every_steps = 0;   // also write the training state every this many steps (0: each epoch only)

  int64_t accumulation() const { return effective_batch_size / batch_size; }
  std::filesystem::path run_dir() const { return std::filesystem::path(checkpoint_dir_path) / experiment_name; }

  void validate() const {
    auto positive = [](const char* key, int64_t v) {
      MAMCLIP_CHECK(v > 0, value_error, "pretrain config: ", key, " must be positive, got ", v);
    };
    positive("data.batch_size", batch_size);
    positive("data.effective_batch_size", effective_batch_size);
    positive("trainparams.max_epochs", max_epochs);
    positive("data.image_size[0]", image_height);
    positive("data.image_size[1]", image_width);
    MAMCLIP_CHECK(effective_batch_size % batch_size == 0, value_error, "pretrain config: data.effective_batch_size (",
                  effective_batch_size, ") must be a multiple of data.batch_size (", batch_size, ")");
    MAMCLIP_CHECK(n_gpu == 1, value_error, "pretrain config: trainparams.n_gpu is ", n_gpu,
                  "; one process trains on one device (launch several processes for data parallelism)");
    MAMCLIP_CHECK(negatives == "paper" || negatives == "full", value_error,
                  "pretrain config: trainparams.negatives must be 'paper' or 'full', got '", negatives, "'");
    MAMCLIP_CHECK(parse_device(device).has_value(), value_error,
                  "pretrain config: trainparams.device must be 'cpu', 'cuda' or 'cuda:N', got '", device, "'");
    MAMCLIP_CHECK(precision == "fp32" || precision == "bf16" || precision == "fp16", value_error,
                  "pretrain config: trainparams.precision must be 'fp32', 'bf16' or 'fp16', got '", precision, "'");
    MAMCLIP_CHECK(model_size == "full" || model_size == "small", value_error,
                  "pretrain config: model_size must be 'full' or 'small', got '", model_size, "'");
    MAMCLIP_CHECK(train_transforms == "heavy" || train_transforms == "soft" || train_transforms == "none", value_error,
                  "pretrain config: trainparams.train_transforms must be heavy, soft or none, got '", train_transforms,
                  "'");
    MAMCLIP_CHECK(mask_ratio >= 0 && mask_ratio <= 1, value_error, "pretrain config: text_model.mask_ratio must be in ",
                  "[0, 1], got ", mask_ratio);
    MAMCLIP_CHECK(lr > 0 && eps > 0 && weight_decay >= 0, value_error, "pretrain config: optimizer lr (", lr,
                  ") and eps (", eps, ") must be positive and weight_decay (", weight_decay, ") non-negative");
  }

  nlohmann::json to_json() const {
    nlohmann::json j;
    j["model_size"] = model_size;
    j["embed_dim"] = embed_dim;
    j["vision_model"] = {{"name", vision_model}};
    j["optimizer"] = {{"lr", lr}, {"weight_decay", weight_decay}, {"eps", eps}};
    j["text_model"] = {{"width", width},
                       {"context_length", context_length},
                       {"vocab_size", vocab_size},
                       {"fusion_layers", fusion_layers},
                       {"heads", heads},
                       {"bert_model_name", bert_model_name},
                       {"bert_model_path", bert_model_path},
                       {"vocab_path", vocab_path},
                       {"mask_ratio", mask_ratio},
                       {"mlm", mlm}};
    j["data"] = {{"train_json_path", train_json_path},
                 {"valid_json_path", valid_json_path},
                 {"image_main_path", image_main_path},
                 {"effective_batch_size", effective_batch_size},
                 {"batch_size", batch_size},
                 {"image_size", {image_height, image_width}},
                 {"num_workers", num_workers},
                 {"skip_unreadable", skip_unreadable}};
    j["trainparams"] = {{"n_gpu", n_gpu},
                        {"experiment_name", experiment_name},
                        {"max_epochs", max_epochs},
                        {"train_transforms", train_transforms},
                        {"checkpoint_dir_path", checkpoint_dir_path},
                        {"negatives", negatives},
                        {"precision", precision},
                        {"device", device},
                        {"mlm_coeff", mlm_coeff},
                        {"max_logit_scale", max_logit_scale ? nlohmann::json(*max_logit_scale) : nlohmann::json()},
                        {"seed", seed},
                        {"grad_checkpointing", grad_checkpointing},
                        {"init_checkpoint", init_checkpoint},
                        {"max_steps", max_steps},
                        {"checkpoint_every_steps", checkpoint_every_steps}};
    return j;
  }

  // Reads a full or partial config: keys that are absent keep their defaults.
  static PretrainConfig from_json(const nlohmann::json& j, const std::string& source = "config") {
    PretrainConfig c;
    const nlohmann::json defaults = c.to_json();
    check_keys(j, defaults, source, "");
    auto get = [&](const char* section, const char* key, auto& out) {
      const nlohmann::json* node = &j;
      std::string where = key;
      if (section) {
        if (!j.contains(section)) return;
        node = &j.at(section);
        where = std::string(section) + "." + key;
      }
      if (!node->contains(key) || node->at(key).is_null()) return;
      try {
        node->at(key).get_to(out);
      } catch (const nlohmann::json::exception&) {
        throw value_error(source + ": " + where + " has the wrong type (" + node->at(key).dump() + ")");
      }
    };
    get(nullptr, "model_size", c.model_size);
    get(nullptr, "embed_dim", c.embed_dim);
    get("vision_model", "name", c.vision_model);
    get("optimizer", "lr", c.lr);
    get("optimizer", "weight_decay", c.weight_decay);
    get("optimizer", "eps", c.eps);
    get("text_model", "width", c.width);
    get("text_model", "context_length", c.context_length);
    get("text_model", "vocab_size", c.vocab_size);
    get("text_model", "fusion_layers", c.fusion_layers);
    get("text_model", "heads", c.heads);
    get("text_model", "bert_model_name", c.bert_model_name);
    get("text_model", "bert_model_path", c.bert_model_path);
    get("text_model", "vocab_path", c.vocab_path);
    get("text_model", "mask_ratio", c.mask_ratio);
    get("text_model", "mlm", c.mlm);
    get("data", "train_json_path", c.train_json_path);
    get("data", "valid_json_path", c.valid_json_path);
    get("data", "image_main_path", c.image_main_path);
    get("data", "effective_batch_size", c.effective_batch_size);
    get("data", "batch_size", c.batch_size);
    std::vector<int64_t> size;
    get("data", "image_size", size);
    if (!size.empty()) {
      MAMCLIP_CHECK(size.size() == 2, value_error, source, ": data.image_size must be [height, width], got ",
                    size.size(), " values");
      c.image_height = size[0];
      c.image_width = size[1];
    }
    get("data", "num_workers", c.num_workers);
    get("data", "skip_unreadable", c.skip_unreadable);
    get("trainparams", "n_gpu", c.n_gpu);
    get("trainparams", "experiment_name", c.experiment_name);
    get("trainparams", "max_epochs", c.max_epochs);
    get("trainparams", "train_transforms", c.train_transforms);
    get("trainparams", "checkpoint_dir_path", c.checkpoint_dir_path);
    get("trainparams", "negatives", c.negatives);
    get("trainparams", "precision", c.precision);
    get("trainparams", "device", c.device);
    get("trainparams", "mlm_coeff", c.mlm_coeff);
    double clamp = 0;
    if (j.contains("trainparams") && j["trainparams"].contains("max_logit_scale") &&
        !j["trainparams"]["max_logit_scale"].is_null()) {
      get("trainparams", "max_logit_scale", clamp);
      c.max_logit_scale = clamp;
    }
    get("trainparams", "seed", c.seed);
    get("trainparams", "grad_checkpointing", c.grad_checkpointing);
    get("trainparams", "init_checkpoint", c.init_checkpoint);
    get("trainparams", "max_steps", c.max_steps);
    get("trainparams", "checkpoint_every_steps", c.checkpoint_every_steps);
    c.validate();
    return c;
  }

  // Every key of j must exist in the defaults (the reference's keys that only
  // configure its loggers are accepted and ignored).
  static void check_keys(const nlohmann::json& j, const nlohmann::json& known, const std::string& source,
                         const std::string& prefix) {
    MAMCLIP_CHECK(j.is_object(), value_error, source, ": ", prefix.empty() ? "the config" : prefix,
                  " must be a mapping, got ", j.dump());
    static const char* ignored[] = {"optimizer._target_", "trainparams.logger", "trainparams.project_name",
                                    "trainparams.lightning_log_dir_path"};
    for (const auto& [key, value] : j.items()) {
      const std::string path = prefix.empty() ? key : prefix + "." + key;
      bool skip = false;
      for (const char* k : ignored) skip = skip || path == k;
      if (skip) continue;
      MAMCLIP_CHECK(known.contains(key), value_error, source, ": unknown key '", path, "'");
      if (known.at(key).is_object()) check_keys(value, known.at(key), source, path);
    }
  }
};

// "a.b.c=value": sets j[a][b][c]; the value is parsed as JSON when it can be
// (numbers, true/false, null, [lists]) and taken as a string otherwise.
inline void apply_override(nlohmann::json& j, const std::string& assignment) {
  const auto eq = assignment.find('=');
  MAMCLIP_CHECK(eq != std::string::npos && eq > 0, value_error, "config override '", assignment,
                "': expected key=value, e.g. optimizer.lr=3e-4");
  const std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  nlohmann::json value = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (value.is_discarded()) value = text;
  nlohmann::json* node = &j;
  size_t start = 0;
  while (true) {
    const auto dot = key.find('.', start);
    const std::string part = key.substr(start, dot == std::string::npos ? std::string::npos : dot - start);
    MAMCLIP_CHECK(!part.empty(), value_error, "config override '", assignment, "': empty key part");
    if (dot == std::string::npos) {
      (*node)[part] = value;
      return;
    }
    node = &(*node)[part];
    start = dot + 1;
  }
}

}  // namespace mamclip::train
