#pragma once
// HuggingFace model directories <-> BertModel / BertForMaskedLM.
//
//   auto bert = models::load_bert("PubMedBERT/");          // config.json + weights, eval mode
//   auto out = bert->forward(batch.input_ids, batch.attention_mask);
//   models::save_pretrained(*bert, "out/");                // BertModel.from_pretrained("out/") reads it
//
// A directory holds config.json and the weights; the first of these present
// is read (transformers' order): model.safetensors, model.safetensors.index.json
// (sharded), pytorch_model.bin, pytorch_model.bin.index.json.
//
// Checkpoints from the wild differ in names, and the loader accepts what
// transformers accepts:
//   - with or without the "bert." prefix (BertModel, BertForMaskedLM and
//     BertForPreTraining checkpoints load into either class);
//   - TensorFlow-era LayerNorm.gamma / LayerNorm.beta (-> weight / bias);
//   - the buffers embeddings.position_ids / token_type_ids (ignored);
//   - heads the target does not have: cls.* for a BertModel, the pooler and
//     cls.seq_relationship.* (next-sentence head) for a BertForMaskedLM (ignored);
//   - cls.predictions.decoder.weight (tied to the word embeddings: it must equal
//     them) and cls.predictions.decoder.bias (the same tensor as
//     cls.predictions.bias, which it stands in for when absent);
//   - float16 / bfloat16 / float64 weights (converted to float32).
// Everything else must match: with strict (the default) one state_dict_error
// lists every missing, unexpected and mis-shaped key (names as the model has
// them) together with the file.
//
// defines: BertLoadOptions, load_bert, load_bert_for_masked_lm, save_pretrained,
//   find_bert_weights, bert_state_dict_from (the mapping, for checkpoints held in memory)

#include <filesystem>
#include <memory>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "mamclip/io/checkpoint.hpp"
#include "mamclip/io/file.hpp"
#include "mamclip/io/safetensors.hpp"
#include "mamclip/models/bert/config.hpp"
#include "mamclip/models/bert/modeling.hpp"
#include "mamclip/nn/module.hpp"

namespace mamclip::models {

struct BertLoadOptions {
  // Missing and unexpected keys are errors (shape mismatches always are).
  bool strict = true;
  // load_bert only: false builds the encoder without the pooler (whose keys a
  // checkpoint then may hold; they are ignored), for checkpoints saved without one.
  bool add_pooling_layer = true;
};

// The weights file of a model directory, in transformers' order of preference;
// io_error naming the directory when there is none.
inline std::string find_bert_weights(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  MAMCLIP_CHECK(fs::is_directory(dir, ec), io_error, "BERT: '", dir, "' is not a directory (expected a model ",
                "directory with config.json and model.safetensors or pytorch_model.bin)");
  for (const char* name : {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                           "pytorch_model.bin.index.json"})
    if (fs::is_regular_file(fs::path(dir) / name, ec)) return (fs::path(dir) / name).string();
  throw io_error(mamclip::detail::str_cat("BERT: directory '", dir, "' holds none of model.safetensors, ",
                                          "model.safetensors.index.json, pytorch_model.bin, ",
                                          "pytorch_model.bin.index.json"));
}

namespace detail {

inline bool starts_with(const std::string& s, const std::string& prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

inline Tensor<float> to_float_weight(const io::AnyStoredTensor& t, const std::string& key, const std::string& where) {
  return std::visit(
      [&](const auto& x) -> Tensor<float> {
        using T = typename std::decay_t<decltype(x)>::value_type;
        if constexpr (is_floating_v<T>) {
          return x.template to<float>();
        } else {
          throw dtype_error(mamclip::detail::str_cat(where, ": tensor '", key, "' is ", dtype_name(dtype_v<T>),
                                                     "; expected floating-point weights (float32, float16, bfloat16, ",
                                                     "float64)"));
        }
      },
      t);
}

}  // namespace detail

// A checkpoint's tensors under the names of a BertModel (for_masked_lm = false)
// or a BertForMaskedLM (true), following the rules at the top of this header;
// with_pooler = false (a BertModel without its pooling layer) ignores pooler
// keys. `where` names the source in messages.
inline nn::StateDict bert_state_dict_from(const io::TensorMap& tensors, bool for_masked_lm, const std::string& where,
                                          bool with_pooler = true) {
  bool prefixed = false;
  for (const auto& [key, t] : tensors) prefixed = prefixed || detail::starts_with(key, "bert.");

  io::KeyMapping m;
  m.ignore = {"embeddings.position_ids", "embeddings.token_type_ids", "bert.embeddings.position_ids",
              "bert.embeddings.token_type_ids", "cls.seq_relationship.*", "cls.predictions.decoder.*"};
  if (for_masked_lm || !with_pooler)
    m.ignore.insert(m.ignore.end(), {"pooler.*", "bert.pooler.*"});  // HF: _keys_to_ignore_on_load_unexpected
  if (!for_masked_lm) {
    m.ignore.push_back("cls.*");
    if (prefixed) m.strip_prefix = {"bert."};
  }
  m.renames = {{"LayerNorm.gamma", "LayerNorm.weight"}, {"LayerNorm.beta", "LayerNorm.bias"}};
  nn::StateDict out;
  std::map<std::string, std::string> source;  // model name -> checkpoint key
  for (const auto& [key, t] : tensors) {
    std::optional<std::string> mapped = m.map(key);
    if (!mapped) continue;
    // A BertModel checkpoint loaded into BertForMaskedLM gets the prefix here
    // (KeyMapping would add it to cls.* as well).
    const std::string name =
        for_masked_lm && !prefixed && !detail::starts_with(*mapped, "cls.") ? "bert." + *mapped : *mapped;
    auto [it, fresh] = source.emplace(name, key);
    MAMCLIP_CHECK(fresh, value_error, where, ": keys '", it->second, "' and '", key, "' both map to '", name,
                  "'; a checkpoint may hold only one of them");
    out.insert(name, detail::to_float_weight(t, key, where));
  }

  if (for_masked_lm) {
    const std::string bias = "cls.predictions.bias", emb = "bert.embeddings.word_embeddings.weight";
    if (auto it = tensors.find("cls.predictions.decoder.bias"); it != tensors.end() && !out.contains(bias))
      out.insert(bias, detail::to_float_weight(it->second, it->first, where));
    if (auto it = tensors.find("cls.predictions.decoder.weight"); it != tensors.end()) {
      const Tensor<float> dec = detail::to_float_weight(it->second, it->first, where);
      if (const Tensor<float>* w = out.find(emb)) {
        bool same = dec.shape() == w->shape();
        if (same) {
          const auto a = dec.to_vector(), b = w->to_vector();
          same = a == b;
        }
        MAMCLIP_CHECK(same, value_error, where, ": 'cls.predictions.decoder.weight' differs from '", emb,
                      "'; BertForMaskedLM ties the decoder to the word embeddings (an untied head is not supported)");
      }
    }
  }
  return out;
}

namespace detail {

// Loads `sd` (read from `file`) into `model`, naming the file in errors; leaves eval mode.
inline void load_bert_state(nn::Module& model, const nn::StateDict& sd, const std::string& file,
                            const BertLoadOptions& options) {
  try {
    model.load_state_dict(sd, options.strict);
  } catch (const nn::state_dict_error& e) {
    throw nn::state_dict_error(mamclip::detail::str_cat(file, ": ", e.what()), e.missing_keys, e.unexpected_keys,
                               e.shape_mismatches);
  }
  model.eval();
}

// dir/config.json, after checking that dir is a directory.
inline BertConfig read_bert_config(const std::string& dir) {
  std::error_code ec;
  MAMCLIP_CHECK(std::filesystem::is_directory(dir, ec), io_error, "BERT: '", dir, "' is not a directory (expected a ",
                "model directory with config.json and model.safetensors or pytorch_model.bin)");
  return BertConfig::from_json_file((std::filesystem::path(dir) / "config.json").string());
}

inline void write_config(const BertConfig& config, const std::string& architecture, const std::string& dir) {
  nlohmann::json j = config.to_json();
  j["architectures"] = nlohmann::json::array({architecture});
  const std::string text = j.dump(2) + "\n";
  io::AtomicFile f((std::filesystem::path(dir) / "config.json").string());
  f.write(text.data(), text.size());
  f.commit();
}

inline void save_bert(const nn::Module& model, const BertConfig& config, const std::string& architecture,
                      const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  MAMCLIP_CHECK(fs::is_directory(dir, ec), io_error, "save_pretrained: cannot create directory '", dir, "'");
  io::NamedTensors tensors;
  for (const auto& [name, t] : model.state_dict()) tensors.emplace_back(name, t);
  io::sort_like_safetensors(tensors);
  io::save_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, {{"format", "pt"}});
  write_config(config, architecture, dir);
}

}  // namespace detail

// config.json + weights -> a BertModel in eval mode (with its pooler unless
// options.add_pooling_layer is false).
inline std::shared_ptr<BertModel> load_bert(const std::string& dir, const BertLoadOptions& options = {}) {
  const BertConfig config = detail::read_bert_config(dir);
  const std::string file = find_bert_weights(dir);
  const nn::StateDict sd = bert_state_dict_from(io::load_state_dict(file), false, file, options.add_pooling_layer);
  auto model = std::make_shared<BertModel>(config, options.add_pooling_layer, BertSkipInit{});
  detail::load_bert_state(*model, sd, file, options);
  return model;
}

// config.json + weights -> a BertForMaskedLM in eval mode.
inline std::shared_ptr<BertForMaskedLM> load_bert_for_masked_lm(const std::string& dir,
                                                                const BertLoadOptions& options = {}) {
  const BertConfig config = detail::read_bert_config(dir);
  const std::string file = find_bert_weights(dir);
  const nn::StateDict sd = bert_state_dict_from(io::load_state_dict(file), true, file);
  auto model = std::make_shared<BertForMaskedLM>(config, BertSkipInit{});
  detail::load_bert_state(*model, sd, file, options);
  return model;
}

// Writes dir/model.safetensors (float32, HF names, metadata {"format": "pt"})
// and dir/config.json, each atomically; creates dir if needed. transformers'
// from_pretrained reads the result.
inline void save_pretrained(const BertModel& model, const std::string& dir) {
  detail::save_bert(model, model.config(), "BertModel", dir);
}
inline void save_pretrained(const BertForMaskedLM& model, const std::string& dir) {
  detail::save_bert(model, model.config(), "BertForMaskedLM", dir);
}

}  // namespace mamclip::models
