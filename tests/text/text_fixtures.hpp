#pragma once
// Shared by the text/ tests: the real vocabularies in MAMCLIP_SHARED_DATA and
// the fixtures in tests/fixtures/tokenizer (written by
// tools/make_tokenizer_fixture.py with HuggingFace's Python BertTokenizer).

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "mamclip/text/text.hpp"
#include "support/test_support.hpp"

namespace mamclip::test {

inline constexpr const char* kPubmed = "pubmedbert-base-uncased-abstract-fulltext";
inline constexpr const char* kBert = "bert-base-uncased";

// The path of a real vocab.txt, or nullopt with a warning when the shared
// data is not there (the calling test then skips, visibly).
inline std::optional<std::string> shared_vocab(const std::string& name) {
  const std::string path = std::string(MAMCLIP_SHARED_DATA) + "/vocab/" + name + "/vocab.txt";
  if (!std::filesystem::exists(path)) {
    WARN("SKIPPED: " << path << " is absent (set MAMCLIP_SHARED_DATA to the shared data folder)");
    return std::nullopt;
  }
  return path;
}

inline std::shared_ptr<const text::Vocab> load_shared_vocab(const std::string& path) {
  return std::make_shared<const text::Vocab>(text::Vocab::load(path));
}

inline std::string tokenizer_fixture(const std::string& name) { return fixture_path("tokenizer/" + name); }

inline std::vector<nlohmann::json> load_jsonl(const std::string& path) {
  std::ifstream f(path);
  if (!f) FAIL("cannot open fixture " << path);
  std::vector<nlohmann::json> out;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

inline std::string from_hex(const std::string& hex) {
  std::string out;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) out += static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16));
  return out;
}

// A printable form of a text for failure messages: non-ASCII and control
// characters as \u escapes.
inline std::string escaped(const std::string& s) {
  std::string out;
  char buf[16];
  for (char32_t c : text::unicode::from_utf8(s)) {
    if (c >= 0x20 && c < 0x7F) {
      out += static_cast<char>(c);
    } else {
      std::snprintf(buf, sizeof buf, c < 0x10000 ? "\\u%04X" : "\\U%08X", static_cast<unsigned>(c));
      out += buf;
    }
  }
  return out;
}

template <class T>
std::string list_str(const std::vector<T>& v) {
  std::ostringstream os;
  os << '[';
  for (size_t i = 0; i < v.size(); ++i) os << (i ? ", " : "") << v[i];
  os << ']';
  return os.str();
}

// A tiny in-memory vocabulary with BERT's special tokens at 0..4.
inline std::shared_ptr<const text::Vocab> tiny_vocab(std::vector<std::string> extra) {
  std::vector<std::string> tokens{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  tokens.insert(tokens.end(), extra.begin(), extra.end());
  return std::make_shared<const text::Vocab>(text::Vocab::from_tokens(tokens, "tiny"));
}

}  // namespace mamclip::test
