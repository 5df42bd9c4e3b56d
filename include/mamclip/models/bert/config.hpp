#pragma once
// BertConfig: the hyperparameters of HuggingFace's BertConfig (transformers
// 4.57), read from and written to its config.json.
//
// Reading follows HF: absent keys take HF's defaults, unknown keys are ignored
// (config.json files carry architectures, dtype, transformers_version, ...).
// Keys that would change the computation into something this implementation
// does not do (relative position embeddings, a decoder with causal masking or
// cross-attention, an activation other than the supported ones) are errors
// rather than silently different models. Every error names the file and the key.

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "mamclip/core/error.hpp"
#include "mamclip/ops/fwd.hpp"

namespace mamclip::models {

struct BertConfig {
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  int64_t pad_token_id = 0;  // the word-embedding row that gets no gradient (nn.Embedding's padding_idx)
  // "gelu" (exact, erf), "gelu_new" / "gelu_pytorch_tanh" (tanh approximation), "relu".
  std::string hidden_act = "gelu";
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  double layer_norm_eps = 1e-12;
  double initializer_range = 0.02;  // std of the normal init of Linear and Embedding weights

  int64_t head_dim() const { return hidden_size / num_attention_heads; }

  static bool supported_act(const std::string& act) {
    return act == "gelu" || act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "relu";
  }

  // Throws value_error naming `where` and the offending key when a size is not
  // positive, hidden_size is not a multiple of num_attention_heads, an id is
  // out of range, a probability is outside [0, 1) or the activation is unknown.
  void validate(const std::string& where = "BertConfig") const {
    auto positive = [&](const char* key, int64_t v) {
      MAMCLIP_CHECK(v > 0, value_error, where, ": '", key, "' is ", v, "; expected a positive integer");
    };
    positive("vocab_size", vocab_size);
    positive("hidden_size", hidden_size);
    positive("num_hidden_layers", num_hidden_layers);
    positive("num_attention_heads", num_attention_heads);
    positive("intermediate_size", intermediate_size);
    positive("max_position_embeddings", max_position_embeddings);
    positive("type_vocab_size", type_vocab_size);
    MAMCLIP_CHECK(hidden_size % num_attention_heads == 0, value_error, where, ": 'hidden_size' (", hidden_size,
                  ") is not a multiple of 'num_attention_heads' (", num_attention_heads, ")");
    MAMCLIP_CHECK(pad_token_id >= 0 && pad_token_id < vocab_size, value_error, where, ": 'pad_token_id' is ",
                  pad_token_id, "; expected an id in [0, vocab_size = ", vocab_size, ")");
    auto probability = [&](const char* key, double p) {
      MAMCLIP_CHECK(p >= 0 && p < 1, value_error, where, ": '", key, "' is ", p, "; expected a probability in [0, 1)");
    };
    probability("hidden_dropout_prob", hidden_dropout_prob);
    probability("attention_probs_dropout_prob", attention_probs_dropout_prob);
    MAMCLIP_CHECK(layer_norm_eps > 0 && std::isfinite(layer_norm_eps), value_error, where, ": 'layer_norm_eps' is ",
                  layer_norm_eps, "; expected a positive number");
    MAMCLIP_CHECK(initializer_range >= 0 && std::isfinite(initializer_range), value_error, where,
                  ": 'initializer_range' is ", initializer_range, "; expected a non-negative number");
    MAMCLIP_CHECK(supported_act(hidden_act), value_error, where, ": 'hidden_act' is \"", hidden_act,
                  "\"; supported: \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\", \"relu\"");
  }

  // `where` names the source in messages (the file path for from_json_file).
  static BertConfig from_json(const nlohmann::json& j, const std::string& where) {
    MAMCLIP_CHECK(j.is_object(), value_error, where, ": expected a JSON object, got a JSON ", j.type_name());
    BertConfig c;
    auto get_int = [&](const char* key, int64_t& out) {
      auto it = j.find(key);
      if (it == j.end()) return;
      const bool integral = it->is_number_integer() ||
                            (it->is_number_float() && std::nearbyint(it->get<double>()) == it->get<double>() &&
                             std::abs(it->get<double>()) < 9.0e15);
      MAMCLIP_CHECK(integral && (!it->is_number_unsigned() ||
                                 it->get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max())),
                    value_error, where, ": '", key, "' is ", it->dump(), "; expected an integer");
      out = it->is_number_float() ? static_cast<int64_t>(it->get<double>()) : it->get<int64_t>();
    };
    auto get_double = [&](const char* key, double& out) {
      auto it = j.find(key);
      if (it == j.end()) return;
      MAMCLIP_CHECK(it->is_number(), value_error, where, ": '", key, "' is ", it->dump(), "; expected a number");
      out = it->get<double>();
    };
    get_int("vocab_size", c.vocab_size);
    get_int("hidden_size", c.hidden_size);
    get_int("num_hidden_layers", c.num_hidden_layers);
    get_int("num_attention_heads", c.num_attention_heads);
    get_int("intermediate_size", c.intermediate_size);
    get_int("max_position_embeddings", c.max_position_embeddings);
    get_int("type_vocab_size", c.type_vocab_size);
    if (auto it = j.find("pad_token_id"); it != j.end())
      MAMCLIP_CHECK(!it->is_null(), value_error, where,
                    ": 'pad_token_id' is null; BERT's word embeddings need a padding id (HF's default is 0)");
    get_int("pad_token_id", c.pad_token_id);
    get_double("hidden_dropout_prob", c.hidden_dropout_prob);
    get_double("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
    get_double("layer_norm_eps", c.layer_norm_eps);
    get_double("initializer_range", c.initializer_range);
    if (auto it = j.find("hidden_act"); it != j.end()) {
      MAMCLIP_CHECK(it->is_string(), value_error, where, ": 'hidden_act' is ", it->dump(),
                    "; expected a string such as \"gelu\"");
      c.hidden_act = it->get<std::string>();
    }
    if (auto it = j.find("model_type"); it != j.end())
      MAMCLIP_CHECK(it->is_string() && it->get<std::string>() == "bert", value_error, where, ": 'model_type' is ",
                    it->dump(), "; expected \"bert\"");
    if (auto it = j.find("position_embedding_type"); it != j.end() && !it->is_null())
      MAMCLIP_CHECK(it->is_string() && it->get<std::string>() == "absolute", value_error, where,
                    ": 'position_embedding_type' is ", it->dump(), "; only \"absolute\" is supported");
    for (const char* key : {"is_decoder", "add_cross_attention"})
      if (auto it = j.find(key); it != j.end())
        MAMCLIP_CHECK(it->is_boolean() && !it->get<bool>(), value_error, where, ": '", key, "' is ", it->dump(),
                      "; only the encoder (false) is supported");
    c.validate(where);
    return c;
  }

  // Reads config.json (io_error if unreadable or not JSON, value_error for bad values).
  static BertConfig from_json_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    MAMCLIP_CHECK(f.good(), io_error, "cannot open BERT config '", path, "'");
    std::ostringstream ss;
    ss << f.rdbuf();
    nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
    MAMCLIP_CHECK(!j.is_discarded(), io_error, path, ": not valid JSON");
    return from_json(j, path);
  }

  // What transformers' BertConfig reads back (from_pretrained accepts it as is).
  nlohmann::json to_json() const {
    nlohmann::json j;
    j["model_type"] = "bert";
    j["vocab_size"] = vocab_size;
    j["hidden_size"] = hidden_size;
    j["num_hidden_layers"] = num_hidden_layers;
    j["num_attention_heads"] = num_attention_heads;
    j["intermediate_size"] = intermediate_size;
    j["max_position_embeddings"] = max_position_embeddings;
    j["type_vocab_size"] = type_vocab_size;
    j["pad_token_id"] = pad_token_id;
    j["hidden_act"] = hidden_act;
    j["hidden_dropout_prob"] = hidden_dropout_prob;
    j["attention_probs_dropout_prob"] = attention_probs_dropout_prob;
    j["layer_norm_eps"] = layer_norm_eps;
    j["initializer_range"] = initializer_range;
    j["position_embedding_type"] = "absolute";
    return j;
  }
};

}  // namespace mamclip::models
