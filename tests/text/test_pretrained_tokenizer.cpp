// load_bert_tokenizer / read_bert_tokenizer_settings on small model directories
// written here: vocab.txt, tokenizer.json only (ids out of file order),
// tokenizer_config.json settings, and every refusal with its message.
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "mamclip/text/pretrained.hpp"
#include "text/text_fixtures.hpp"

namespace test_pretrained_tokenizer {
using namespace mamclip;
using namespace mamclip::test;
using namespace mamclip::test::files;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kTokens{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "breast", "mass",
                                       "##es",  ",",     ".",     "Breast", "cafe",  "café",   "的"};

std::string vocab_txt() {
  std::string s;
  for (const auto& t : kTokens) s += t + "\n";
  return s;
}

// tokenizer.json with kTokens; the vocab object lists them in reverse id order
// (JSON objects have no order: ids, not positions, must decide).
nlohmann::json tokenizer_json() {
  nlohmann::json vocab = nlohmann::json::object();
  for (size_t i = kTokens.size(); i-- > 0;) vocab[kTokens[i]] = i;
  nlohmann::json added = nlohmann::json::array();
  for (int i = 0; i < 5; ++i) added.push_back({{"id", i}, {"content", kTokens[static_cast<size_t>(i)]}, {"special", true}});
  return {{"version", "1.0"},
          {"added_tokens", added},
          {"normalizer",
           {{"type", "BertNormalizer"},
            {"clean_text", true},
            {"handle_chinese_chars", true},
            {"strip_accents", nullptr},
            {"lowercase", true}}},
          {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
          {"model",
           {{"type", "WordPiece"},
            {"unk_token", "[UNK]"},
            {"continuing_subword_prefix", "##"},
            {"max_input_chars_per_word", 100},
            {"vocab", vocab}}}};
}

std::vector<int64_t> ids(const text::BertTokenizer& tok, const std::string& s) { return tok.token_ids(s); }

}  // namespace

TEST_CASE("load_bert_tokenizer: vocab.txt with no config is uncased BERT with HF's defaults") {
  TempDir d("vocab");
  write_file(d / "vocab.txt", vocab_txt());
  text::BertTokenizerSettings s;
  const auto tok = text::load_bert_tokenizer(d.str(), &s);
  CHECK(tok.vocab().size() == 14);
  CHECK(s.vocab_file == (d.path() / "vocab.txt").string());
  CHECK_FALSE(s.vocab_from_tokenizer_json);
  CHECK(s.options.do_lower_case);
  CHECK(s.options.tokenize_chinese_chars);
  CHECK_FALSE(s.options.strip_accents.has_value());
  CHECK_FALSE(s.model_max_length.has_value());
  // Lower-cased and accent-stripped: "Breast" -> breast, "Café" -> cafe.
  CHECK(ids(tok, "Breast MASSES, Café.") == std::vector<int64_t>{5, 6, 7, 8, 11, 9});
  CHECK(tok.encode("breast", {.max_length = 4}).input_ids == std::vector<int64_t>{2, 5, 3, 0});
}

TEST_CASE("load_bert_tokenizer: tokenizer.json alone gives the same ids as the equivalent vocab.txt") {
  TempDir a("json"), b("txt");
  write_file(a / "tokenizer.json", tokenizer_json().dump());
  write_file(b / "vocab.txt", vocab_txt());
  text::BertTokenizerSettings s;
  const auto from_json = text::load_bert_tokenizer(a.str(), &s);
  const auto from_txt = text::load_bert_tokenizer(b.str());
  CHECK(s.vocab_from_tokenizer_json);
  CHECK(s.vocab_file == (a.path() / "tokenizer.json").string());
  REQUIRE(from_json.vocab().tokens() == kTokens);
  for (const char* t : {"Breast masses, café.", "[MASK] breast 的x", "", "unknownword breast"})
    CHECK(ids(from_json, t) == ids(from_txt, t));
  CHECK(from_json.vocab().source().find("(model.vocab)") != std::string::npos);
}

TEST_CASE("load_bert_tokenizer: tokenizer.json normalizer and WordPiece settings count when no config says otherwise") {
  TempDir d("json_cased");
  auto j = tokenizer_json();
  j["normalizer"]["lowercase"] = false;
  j["normalizer"]["handle_chinese_chars"] = false;
  j["model"]["max_input_chars_per_word"] = 5;
  j["model"]["unk_token"] = "[MASK]";  // an odd choice, but it must be obeyed
  write_file(d / "tokenizer.json", j.dump());
  text::BertTokenizerSettings s;
  const auto tok = text::load_bert_tokenizer(d.str(), &s);
  CHECK_FALSE(s.options.do_lower_case);
  CHECK_FALSE(s.options.tokenize_chinese_chars);
  CHECK(s.options.max_input_chars_per_word == 5);
  CHECK(s.specials.unk == "[MASK]");
  CHECK(tok.vocab().unk_id() == 4);
  // Cased: "breast" stays, "BREAST" is unknown; 6 characters exceed the 5-character limit.
  CHECK(ids(tok, "Breast mass") == std::vector<int64_t>{4, 6});
  CHECK(ids(tok, "cafe café") == std::vector<int64_t>{11, 12});  // cased: accents kept

  // tokenizer_config.json wins over the normalizer.
  write_file(d / "tokenizer_config.json", R"({"do_lower_case": true, "strip_accents": false})");
  const auto lowered = text::load_bert_tokenizer(d.str(), &s);
  CHECK(s.options.do_lower_case);
  REQUIRE(s.options.strip_accents.has_value());
  CHECK_FALSE(*s.options.strip_accents);
  CHECK(ids(lowered, "Mass Café") == std::vector<int64_t>{6, 12});
}

TEST_CASE("load_bert_tokenizer: tokenizer_config.json settings, AddedToken specials and model_max_length") {
  TempDir d("config");
  std::string v = vocab_txt();
  v.replace(v.find("[MASK]"), 6, "<mask>");
  write_file(d / "vocab.txt", v);
  write_file(d / "tokenizer_config.json", R"({
    "do_lower_case": false, "tokenize_chinese_chars": false, "strip_accents": true,
    "mask_token": {"__type": "AddedToken", "content": "<mask>", "lstrip": true},
    "model_max_length": 512, "tokenizer_class": "BertTokenizer"})");
  text::BertTokenizerSettings s;
  const auto tok = text::load_bert_tokenizer(d.str(), &s);
  CHECK_FALSE(s.options.do_lower_case);
  CHECK_FALSE(s.options.tokenize_chinese_chars);
  CHECK(s.options.strip_accents == std::optional<bool>(true));
  CHECK(s.model_max_length == std::optional<int64_t>(512));
  CHECK(s.specials.mask == "<mask>");
  CHECK(tok.vocab().mask_id() == 4);
  // Cased with accents stripped: "Breast" is an entry, "café" -> "cafe".
  CHECK(ids(tok, "Breast café <mask>") == std::vector<int64_t>{10, 11, 4});
  CHECK(text::read_bert_tokenizer_settings(d.str()).model_max_length == std::optional<int64_t>(512));

  // HF's "no limit" sentinel int(1e30) is larger than int64: no limit.
  write_file(d / "tokenizer_config.json", R"({"model_max_length": 1000000000000000019884624838656})");
  CHECK_FALSE(text::read_bert_tokenizer_settings(d.str()).model_max_length.has_value());
  write_file(d / "tokenizer_config.json", R"({"model_max_length": 1e30, "mask_token": "<mask>"})");
  CHECK_FALSE(text::read_bert_tokenizer_settings(d.str()).model_max_length.has_value());

  // special_tokens_map.json fills what tokenizer_config.json leaves open.
  write_file(d / "tokenizer_config.json", "{}");
  write_file(d / "special_tokens_map.json", R"({"mask_token": "<mask>"})");
  CHECK(text::load_bert_tokenizer(d.str()).vocab().mask_id() == 4);
}

TEST_CASE("load_bert_tokenizer: errors name the directory or file and the key") {
  TempDir d("errors");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str() + "/nope"), io_error,
                              "load_bert_tokenizer: \"" + d.str() + "/nope\" is not a directory");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), io_error,
                              "\" holds neither vocab.txt nor tokenizer.json");

  const std::string cfg = (d.path() / "tokenizer_config.json").string();
  write_file(d / "vocab.txt", vocab_txt());
  write_file(d / "tokenizer_config.json", "{\"do_lower_case\": tru");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), value_error,
                              "tokenizer: \"" + cfg + "\" is not valid JSON");
  write_file(d / "tokenizer_config.json", "[1]");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), value_error, "must hold a JSON object, got array");
  write_file(d / "tokenizer_config.json", R"({"do_lower_case": "yes"})");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), value_error,
                              "tokenizer: \"" + cfg + "\", key \"do_lower_case\" must be a boolean, got string \"yes\"");
  write_file(d / "tokenizer_config.json", R"({"model_max_length": -3})");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), value_error,
                              "key \"model_max_length\" must be positive, got -3");
  write_file(d / "tokenizer_config.json", R"({"model_max_length": "512"})");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), value_error,
                              "key \"model_max_length\" must be an integer, got string");
  write_file(d / "tokenizer_config.json", R"({"unk_token": 5})");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), value_error,
                              "key \"unk_token\" must be a string or an object with \"content\", got number");
  write_file(d / "tokenizer_config.json", R"({"unk_token": "<unk>"})");
  MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), value_error, "lacks the special token <unk>");
}

TEST_CASE("load_bert_tokenizer: tokenizer.json that a BERT tokenizer cannot reproduce is refused") {
  TempDir d("json_errors");
  const std::string file = (d.path() / "tokenizer.json").string();
  const auto refuse = [&](const nlohmann::json& j, const std::string& message) {
    write_file(d / "tokenizer.json", j.dump());
    MAMCLIP_REQUIRE_THROWS_WITH(text::load_bert_tokenizer(d.str()), value_error, message);
  };
  auto j = tokenizer_json();
  j["model"]["type"] = "BPE";
  refuse(j, "tokenizer: \"" + file + "\", key \"model.type\" is \"BPE\"; expected \"WordPiece\"");
  j = tokenizer_json();
  j.erase("model");
  refuse(j, "key \"model\" must be an object");
  j = tokenizer_json();
  j["model"]["continuing_subword_prefix"] = "@@";
  refuse(j, "key \"model.continuing_subword_prefix\" is \"@@\"; only \"##\" (BERT's) is supported");
  j = tokenizer_json();
  j["model"]["max_input_chars_per_word"] = 0;
  refuse(j, "key \"model.max_input_chars_per_word\" must be a positive integer, got 0");

  j = tokenizer_json();
  j["model"]["vocab"]["cafe"] = 14;  // 14 tokens: ids must be 0..13
  refuse(j, "key \"model.vocab\": \"cafe\" has id 14; the ids of 14 tokens must be a permutation of 0..13");
  j = tokenizer_json();
  j["model"]["vocab"]["cafe"] = -1;
  refuse(j, "\"cafe\" has id -1; the ids of 14 tokens must be a permutation of 0..13");
  j = tokenizer_json();
  j["model"]["vocab"]["cafe"] = 5;  // "breast" has 5
  refuse(j, "key \"model.vocab\": id 5 is given to both \"");
  j = tokenizer_json();
  j["model"]["vocab"]["cafe"] = "11";
  refuse(j, "the id of \"cafe\" must be an integer, got \"11\"");
  j = tokenizer_json();
  j["model"]["vocab"] = nlohmann::json::array();
  refuse(j, "key \"model.vocab\" must be an object {token: id}, got array");
  j = tokenizer_json();
  j["model"]["vocab"] = nlohmann::json::object();
  refuse(j, "key \"model.vocab\" is empty");

  j = tokenizer_json();
  j["normalizer"] = {{"type", "Lowercase"}};
  refuse(j, "key \"normalizer.type\" is \"Lowercase\"; only \"BertNormalizer\" (or no normalizer)");
  j = tokenizer_json();
  j["normalizer"]["clean_text"] = false;
  refuse(j, "key \"normalizer.clean_text\" is false");
  j = tokenizer_json();
  j["normalizer"]["lowercase"] = 1;
  refuse(j, "key \"normalizer.lowercase\" must be a boolean, got number 1");
  j = tokenizer_json();
  j["added_tokens"].push_back({{"id", 14}, {"content", "<extra>"}});
  refuse(j, "key \"added_tokens\": \"<extra>\" (id 14) is not the vocabulary entry with that id");

  // The special tokens must be in the vocabulary.
  j = tokenizer_json();
  nlohmann::json vocab = nlohmann::json::object();
  for (size_t i = 0; i < kTokens.size(); ++i) vocab[kTokens[i] == "[SEP]" ? "[sep]" : kTokens[i]] = i;
  j["model"]["vocab"] = vocab;
  j.erase("added_tokens");
  refuse(j, "tokenizer.json (model.vocab) (14 tokens) lacks the special token [SEP]");

  // A normalizer may be absent (null): the defaults hold.
  j = tokenizer_json();
  j["normalizer"] = nullptr;
  write_file(d / "tokenizer.json", j.dump());
  CHECK(text::load_bert_tokenizer(d.str()).options().do_lower_case);
}

}  // namespace test_pretrained_tokenizer
