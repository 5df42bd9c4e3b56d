#pragma once
// A BertTokenizer from a HuggingFace model directory.
//
//   auto tok = text::load_bert_tokenizer("all-MiniLM-L6-v2/");    // vocab.txt or tokenizer.json
//   auto settings = text::read_bert_tokenizer_settings("all-MiniLM-L6-v2/");   // no vocabulary read
//   settings.model_max_length;                                   // 512 (tokenizer_config.json)
//
// The vocabulary comes from dir/vocab.txt or, when that is absent, from the
// WordPiece model of dir/tokenizer.json (model.type "WordPiece", model.vocab
// {token: id} with the ids a permutation of 0..N-1). tokenizer.json is read
// only in that case; its model.unk_token, model.max_input_chars_per_word and a
// BertNormalizer's lowercase / strip_accents / handle_chinese_chars then count.
//
// Settings, the first that gives a value wins:
//   do_lower_case           tokenizer_config.json do_lower_case, BertNormalizer lowercase, true
//   strip_accents           tokenizer_config.json strip_accents (null = follow lower-casing),
//                           BertNormalizer strip_accents, unset
//   tokenize_chinese_chars  tokenizer_config.json tokenize_chinese_chars,
//                           BertNormalizer handle_chinese_chars, true
//   special tokens          tokenizer_config.json *_token (a string or an AddedToken
//                           {"content": ...}), special_tokens_map.json, tokenizer.json
//                           model.unk_token (unk only), BERT's defaults
//   model_max_length        tokenizer_config.json; unset when absent or HF's
//                           "no limit" sentinel (1e30, larger than int64)
// transformers' BertTokenizerFast differs in one corner: without a
// tokenizer_config.json it lower-cases even when tokenizer.json's normalizer
// says lowercase=false (its do_lower_case=True default rewrites the
// normalizer). Here a cased tokenizer.json stays cased.
//
// What the BERT tokenizer cannot reproduce is refused, never approximated:
// a model other than WordPiece, a continuing_subword_prefix other than "##",
// a normalizer other than BertNormalizer (or none) or one with
// clean_text=false, added_tokens that are not vocabulary entries.
//
// Errors (each names the file and the key):
//   io_error     dir is not a directory, holds neither vocab.txt nor
//                tokenizer.json, or a file cannot be read
//   value_error  invalid JSON, a key of the wrong type or value, ids that are
//                not a permutation of 0..N-1, a missing special token

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/text/tokenizer.hpp"
#include "mamclip/text/vocab.hpp"

namespace mamclip::text {

struct BertTokenizerSettings {
  BertTokenizerOptions options;
  SpecialTokens specials;
  // tokenizer_config.json's model_max_length; unset = no limit given.
  std::optional<int64_t> model_max_length;
  // The file the vocabulary is read from: dir/vocab.txt or dir/tokenizer.json.
  std::string vocab_file;
  bool vocab_from_tokenizer_json = false;
};

namespace detail {

inline std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream f(path, std::ios::binary);
  MAMCLIP_CHECK(f.good(), io_error, "tokenizer: cannot open \"", path.string(), "\"");
  std::ostringstream ss;
  ss << f.rdbuf();
  MAMCLIP_CHECK(!f.bad(), io_error, "tokenizer: error while reading \"", path.string(), "\"");
  return ss.str();
}

inline nlohmann::json read_json_object(const std::filesystem::path& path) {
  const std::string text = read_text_file(path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw value_error(::mamclip::detail::str_cat("tokenizer: \"", path.string(), "\" is not valid JSON: ", e.what()));
  }
  MAMCLIP_CHECK(j.is_object(), value_error, "tokenizer: \"", path.string(), "\" must hold a JSON object, got ",
                j.type_name());
  return j;
}

// "in \"<file>\", key \"<key>\"" for messages.
inline std::string json_where(const std::filesystem::path& file, const std::string& key) {
  return ::mamclip::detail::str_cat("\"", file.string(), "\", key \"", key, "\"");
}

// `parent` qualifies the key in messages ("normalizer." + key).
inline std::optional<bool> json_bool(const nlohmann::json& obj, const std::string& key,
                                     const std::filesystem::path& file, bool null_allowed = false,
                                     const std::string& parent = "") {
  const auto it = obj.find(key);
  if (it == obj.end()) return std::nullopt;
  if (it->is_null() && null_allowed) return std::nullopt;
  MAMCLIP_CHECK(it->is_boolean(), value_error, "tokenizer: ", json_where(file, parent + key), " must be a boolean",
                null_allowed ? " or null" : "", ", got ", it->type_name(), " ", it->dump());
  return it->get<bool>();
}

// A special token as tokenizer_config.json / special_tokens_map.json write it:
// a string, or an AddedToken object whose "content" is the string.
inline std::optional<std::string> json_token(const nlohmann::json& obj, const std::string& key,
                                             const std::filesystem::path& file) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object()) {
    const auto c = it->find("content");
    MAMCLIP_CHECK(c != it->end() && c->is_string(), value_error, "tokenizer: ", json_where(file, key),
                  " is an object without a string \"content\"");
    return c->get<std::string>();
  }
  throw value_error(::mamclip::detail::str_cat("tokenizer: ", json_where(file, key),
                                               " must be a string or an object with \"content\", got ",
                                               it->type_name()));
}

inline void read_special_tokens(const nlohmann::json& obj, const std::filesystem::path& file, SpecialTokens& sp,
                                std::vector<bool>& set) {
  std::pair<const char*, std::string*> keys[] = {{"pad_token", &sp.pad}, {"unk_token", &sp.unk},
                                                 {"cls_token", &sp.cls}, {"sep_token", &sp.sep},
                                                 {"mask_token", &sp.mask}};
  for (size_t i = 0; i < 5; ++i) {
    if (set[i]) continue;
    if (auto t = json_token(obj, keys[i].first, file)) {
      MAMCLIP_CHECK(!t->empty(), value_error, "tokenizer: ", json_where(file, keys[i].first), " is empty");
      *keys[i].second = std::move(*t);
      set[i] = true;
    }
  }
}

// model_max_length: a positive integer; a value beyond int64 (HF writes
// int(1e30) for "no limit", which JSON holds as a float) means no limit.
inline std::optional<int64_t> json_max_length(const nlohmann::json& obj, const std::filesystem::path& file) {
  const auto it = obj.find("model_max_length");
  if (it == obj.end() || it->is_null()) return std::nullopt;
  const std::string where = json_where(file, "model_max_length");
  if (it->is_number_integer()) {
    if (it->is_number_unsigned() &&
        it->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return std::nullopt;
    const int64_t v = it->get<int64_t>();
    MAMCLIP_CHECK(v > 0, value_error, "tokenizer: ", where, " must be positive, got ", v);
    return v;
  }
  if (it->is_number_float()) {
    const double v = it->get<double>();
    MAMCLIP_CHECK(v > 0, value_error, "tokenizer: ", where, " must be positive, got ", it->dump());
    if (v >= 9.2e18) return std::nullopt;
    MAMCLIP_CHECK(v == static_cast<double>(static_cast<int64_t>(v)), value_error, "tokenizer: ", where,
                  " must be an integer, got ", it->dump());
    return static_cast<int64_t>(v);
  }
  throw value_error(::mamclip::detail::str_cat("tokenizer: ", where, " must be an integer, got ", it->type_name()));
}

// The WordPiece model of a tokenizer.json: the tokens in id order, with the
// settings it carries folded into `s` where tokenizer_config.json left them open.
struct TokenizerJsonModel {
  std::vector<std::string> tokens;
  std::optional<std::string> unk;
  std::optional<int64_t> max_input_chars_per_word;
  std::optional<bool> lowercase, handle_chinese_chars, strip_accents;
};

inline TokenizerJsonModel read_tokenizer_json(const std::filesystem::path& file) {
  const nlohmann::json j = read_json_object(file);
  TokenizerJsonModel out;
  const auto model = j.find("model");
  MAMCLIP_CHECK(model != j.end() && model->is_object(), value_error, "tokenizer: ", json_where(file, "model"),
                " must be an object (the tokenizer's model)");
  const auto type = model->find("type");
  MAMCLIP_CHECK(type != model->end() && type->is_string() && *type == "WordPiece", value_error, "tokenizer: ",
                json_where(file, "model.type"), " is ", type == model->end() ? "absent" : type->dump(),
                "; expected \"WordPiece\" (a BERT tokenizer)");

  if (const auto p = model->find("continuing_subword_prefix"); p != model->end() && !p->is_null())
    MAMCLIP_CHECK(p->is_string() && *p == "##", value_error, "tokenizer: ",
                  json_where(file, "model.continuing_subword_prefix"), " is ", p->dump(),
                  "; only \"##\" (BERT's) is supported");
  if (const auto u = model->find("unk_token"); u != model->end() && !u->is_null()) {
    MAMCLIP_CHECK(u->is_string() && !u->get<std::string>().empty(), value_error, "tokenizer: ",
                  json_where(file, "model.unk_token"), " must be a non-empty string, got ", u->dump());
    out.unk = u->get<std::string>();
  }
  if (const auto m = model->find("max_input_chars_per_word"); m != model->end() && !m->is_null()) {
    MAMCLIP_CHECK(m->is_number_integer() && m->get<int64_t>() > 0, value_error, "tokenizer: ",
                  json_where(file, "model.max_input_chars_per_word"), " must be a positive integer, got ",
                  m->dump());
    out.max_input_chars_per_word = m->get<int64_t>();
  }

  const auto vocab = model->find("vocab");
  MAMCLIP_CHECK(vocab != model->end() && vocab->is_object(), value_error, "tokenizer: ",
                json_where(file, "model.vocab"), " must be an object {token: id}, got ",
                vocab == model->end() ? "nothing" : vocab->type_name());
  const size_t n = vocab->size();
  MAMCLIP_CHECK(n > 0, value_error, "tokenizer: ", json_where(file, "model.vocab"), " is empty");
  out.tokens.assign(n, std::string());
  std::vector<bool> seen(n, false);
  for (const auto& [token, id] : vocab->items()) {
    MAMCLIP_CHECK(id.is_number_integer(), value_error, "tokenizer: ", json_where(file, "model.vocab"),
                  ": the id of \"", token, "\" must be an integer, got ", id.dump());
    // Unsigned ids above int64 compare as out of range through the uint64 path.
    const bool in_range = id.is_number_unsigned() ? id.get<uint64_t>() < n
                                                  : (id.get<int64_t>() >= 0 && id.get<uint64_t>() < n);
    MAMCLIP_CHECK(in_range, value_error, "tokenizer: ", json_where(file, "model.vocab"), ": \"", token,
                  "\" has id ", id.dump(), "; the ids of ", n, " tokens must be a permutation of 0..", n - 1);
    const size_t i = id.get<size_t>();
    MAMCLIP_CHECK(!seen[i], value_error, "tokenizer: ", json_where(file, "model.vocab"), ": id ", i,
                  " is given to both \"", out.tokens[i], "\" and \"", token, "\"; the ids of ", n,
                  " tokens must be a permutation of 0..", n - 1);
    seen[i] = true;
    out.tokens[i] = token;
  }

  if (const auto norm = j.find("normalizer"); norm != j.end() && !norm->is_null()) {
    MAMCLIP_CHECK(norm->is_object(), value_error, "tokenizer: ", json_where(file, "normalizer"),
                  " must be an object or null, got ", norm->type_name());
    const auto nt = norm->find("type");
    MAMCLIP_CHECK(nt != norm->end() && *nt == "BertNormalizer", value_error, "tokenizer: ",
                  json_where(file, "normalizer.type"), " is ", nt == norm->end() ? "absent" : nt->dump(),
                  "; only \"BertNormalizer\" (or no normalizer) gives BERT's tokenization");
    const auto clean = json_bool(*norm, "clean_text", file, false, "normalizer.");
    MAMCLIP_CHECK(clean.value_or(true), value_error, "tokenizer: ", json_where(file, "normalizer.clean_text"),
                  " is false; only clean_text=true (BERT's) is supported");
    out.lowercase = json_bool(*norm, "lowercase", file, false, "normalizer.");
    out.handle_chinese_chars = json_bool(*norm, "handle_chinese_chars", file, false, "normalizer.");
    out.strip_accents = json_bool(*norm, "strip_accents", file, /*null_allowed=*/true, "normalizer.");
  }

  // Added tokens must already be vocabulary entries (BERT's specials are);
  // others would be matched before WordPiece, which this tokenizer does not do.
  if (const auto added = j.find("added_tokens"); added != j.end() && !added->is_null()) {
    MAMCLIP_CHECK(added->is_array(), value_error, "tokenizer: ", json_where(file, "added_tokens"),
                  " must be an array, got ", added->type_name());
    for (size_t k = 0; k < added->size(); ++k) {
      const auto& a = (*added)[k];
      const auto c = a.is_object() ? a.find("content") : a.end();
      const auto id = a.is_object() ? a.find("id") : a.end();
      MAMCLIP_CHECK(a.is_object() && c != a.end() && c->is_string() && id != a.end() && id->is_number_integer(),
                    value_error, "tokenizer: ", json_where(file, "added_tokens"), ": entry ", k,
                    " must be an object with a string \"content\" and an integer \"id\"");
      const int64_t i = id->get<int64_t>();
      MAMCLIP_CHECK(i >= 0 && static_cast<uint64_t>(i) < n && out.tokens[static_cast<size_t>(i)] == *c, value_error,
                    "tokenizer: ", json_where(file, "added_tokens"), ": \"", c->get<std::string>(), "\" (id ", i,
                    ") is not the vocabulary entry with that id; only added tokens that are in model.vocab are "
                    "supported");
    }
  }
  return out;
}

// The settings of dir; the tokenizer.json model goes to *json_model when read.
inline BertTokenizerSettings read_settings(const std::string& dir, TokenizerJsonModel* json_model) {
  namespace fs = std::filesystem;
  std::error_code ec;
  MAMCLIP_CHECK(fs::is_directory(dir, ec), io_error, "load_bert_tokenizer: \"", dir,
                "\" is not a directory (expected a model directory with vocab.txt or tokenizer.json)");
  const fs::path root(dir);
  BertTokenizerSettings s;
  std::vector<bool> special_set(5, false);
  std::optional<bool> lower, chinese;
  bool strip_given = false;

  const fs::path config = root / "tokenizer_config.json";
  if (fs::exists(config, ec)) {
    const nlohmann::json c = detail::read_json_object(config);
    lower = detail::json_bool(c, "do_lower_case", config);
    chinese = detail::json_bool(c, "tokenize_chinese_chars", config);
    // strip_accents: null is HF's "follow do_lower_case", and it is final.
    if (c.contains("strip_accents")) {
      s.options.strip_accents = detail::json_bool(c, "strip_accents", config, /*null_allowed=*/true);
      strip_given = true;
    }
    s.model_max_length = detail::json_max_length(c, config);
    detail::read_special_tokens(c, config, s.specials, special_set);
  }
  const fs::path map = root / "special_tokens_map.json";
  if (fs::exists(map, ec)) detail::read_special_tokens(detail::read_json_object(map), map, s.specials, special_set);

  const fs::path vocab_txt = root / "vocab.txt", tokenizer_json = root / "tokenizer.json";
  if (fs::exists(vocab_txt, ec)) {
    s.vocab_file = vocab_txt.string();
  } else if (fs::exists(tokenizer_json, ec)) {
    s.vocab_file = tokenizer_json.string();
    s.vocab_from_tokenizer_json = true;
    detail::TokenizerJsonModel m = detail::read_tokenizer_json(tokenizer_json);
    if (!special_set[1] && m.unk) s.specials.unk = *m.unk;
    if (m.max_input_chars_per_word) s.options.max_input_chars_per_word = *m.max_input_chars_per_word;
    if (!lower) lower = m.lowercase;
    if (!chinese) chinese = m.handle_chinese_chars;
    if (!strip_given) s.options.strip_accents = m.strip_accents;
    if (json_model) *json_model = std::move(m);
  } else {
    throw io_error(::mamclip::detail::str_cat("load_bert_tokenizer: directory \"", dir,
                                              "\" holds neither vocab.txt nor tokenizer.json"));
  }
  s.options.do_lower_case = lower.value_or(true);
  s.options.tokenize_chinese_chars = chinese.value_or(true);
  return s;
}

}  // namespace detail

// Reads the settings of dir (tokenizer_config.json, special_tokens_map.json,
// and tokenizer.json when there is no vocab.txt); loads no vocabulary.
inline BertTokenizerSettings read_bert_tokenizer_settings(const std::string& dir) {
  return detail::read_settings(dir, nullptr);
}

inline BertTokenizer load_bert_tokenizer(const std::string& dir, BertTokenizerSettings* settings_out = nullptr) {
  detail::TokenizerJsonModel model;
  BertTokenizerSettings s = detail::read_settings(dir, &model);
  std::shared_ptr<const Vocab> vocab;
  if (s.vocab_from_tokenizer_json)
    vocab = std::make_shared<const Vocab>(
        Vocab::from_tokens(std::move(model.tokens), s.vocab_file + " (model.vocab)", s.specials));
  else
    vocab = std::make_shared<const Vocab>(Vocab::load(s.vocab_file, s.specials));
  BertTokenizer tok(std::move(vocab), s.options);
  if (settings_out) *settings_out = std::move(s);
  return tok;
}

}  // namespace mamclip::text
