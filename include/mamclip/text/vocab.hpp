#pragma once
// A WordPiece vocabulary: token <-> id, from a vocab.txt file (one token per
// line, id = line index from 0), as HuggingFace's load_vocab reads it.
//
// Lines end at \n, \r\n or a lone \r (Python's universal newlines); a last line
// without a newline counts, a trailing newline adds no empty token. Bytes are
// kept as they are (a UTF-8 BOM stays part of the first token, as in Python).
//
// Errors:
//   io_error     the file is missing, not a regular file, or unreadable (names the path)
//   value_error  a line is not valid UTF-8, a token appears twice (names it, both
//                line numbers and ids: HuggingFace silently keeps the later id, which
//                leaves an id that decodes but never encodes), or a special token is
//                missing (names every missing one)

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/text/unicode.hpp"

namespace mamclip::text {

// The names of BERT's special tokens (HuggingFace BertTokenizer's defaults).
struct SpecialTokens {
  std::string pad = "[PAD]";
  std::string unk = "[UNK]";
  std::string cls = "[CLS]";
  std::string sep = "[SEP]";
  std::string mask = "[MASK]";

  // In HuggingFace's all_special_tokens order, which is the order its
  // lower-casing pass tries them in.
  std::vector<std::string> all() const { return {unk, sep, pad, cls, mask}; }
};

namespace detail {
// Heterogeneous lookup: find(std::string_view) without building a std::string.
struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
}  // namespace detail

class Vocab {
 public:
  Vocab() = default;

  // Reads vocab.txt. `specials` must all be present.
  static Vocab load(const std::string& path, const SpecialTokens& specials = {}) {
    namespace fs = std::filesystem;
    std::error_code ec;
    const auto status = fs::status(path, ec);
    MAMCLIP_CHECK(fs::exists(status), io_error, "vocab: cannot open \"", path, "\": no such file");
    MAMCLIP_CHECK(!fs::is_directory(status), io_error, "vocab: \"", path,
                  "\" is a directory; expected the vocab.txt file inside a model directory");
    std::ifstream f(path, std::ios::binary);
    MAMCLIP_CHECK(f.good(), io_error, "vocab: cannot open \"", path, "\": ", std::strerror(errno));
    std::ostringstream ss;
    ss << f.rdbuf();
    MAMCLIP_CHECK(!f.bad(), io_error, "vocab: error while reading \"", path, "\"");
    return from_text(ss.str(), path, specials);
  }

  // Parses the contents of a vocab.txt; `source` names it in errors.
  static Vocab from_text(std::string_view content, const std::string& source = "<memory>",
                         const SpecialTokens& specials = {}) {
    std::vector<std::string> tokens;
    size_t start = 0;
    for (size_t i = 0; i < content.size(); ++i) {
      if (content[i] != '\n' && content[i] != '\r') continue;
      tokens.emplace_back(content.substr(start, i - start));
      if (content[i] == '\r' && i + 1 < content.size() && content[i + 1] == '\n') ++i;
      start = i + 1;
    }
    if (start < content.size()) tokens.emplace_back(content.substr(start));
    return from_tokens(std::move(tokens), source, specials);
  }

  // A vocabulary whose id i is tokens[i].
  static Vocab from_tokens(std::vector<std::string> tokens, const std::string& source = "<memory>",
                           const SpecialTokens& specials = {}) {
    Vocab v;
    v.source_ = source;
    v.tokens_ = std::move(tokens);
    v.ids_.reserve(v.tokens_.size());
    for (size_t i = 0; i < v.tokens_.size(); ++i) {
      const std::string& t = v.tokens_[i];
      validate_utf8(t, source, i);
      const auto [it, inserted] = v.ids_.emplace(t, static_cast<int64_t>(i));
      MAMCLIP_CHECK(inserted, value_error, "vocab: duplicate token \"", t, "\" at lines ", it->second + 1, " and ",
                    i + 1, " of ", source, " (ids ", it->second, " and ", i, "); every token must appear once");
      v.max_token_chars_ = std::max(v.max_token_chars_, unicode::from_utf8(t).size());
    }
    v.specials_ = specials;
    std::vector<std::string> missing;
    for (const std::string* s : {&specials.pad, &specials.unk, &specials.cls, &specials.sep, &specials.mask})
      if (!v.find(*s)) missing.push_back(*s);
    if (!missing.empty()) {
      std::string list;
      for (size_t i = 0; i < missing.size(); ++i) list += (i ? ", " : "") + missing[i];
      throw value_error(::mamclip::detail::str_cat(
          "vocab: ", source, " (", v.tokens_.size(), " tokens) lacks the special token", missing.size() > 1 ? "s " : " ",
          list, "; a BERT vocabulary needs ", specials.pad, ", ", specials.unk, ", ", specials.cls, ", ",
          specials.sep, " and ", specials.mask));
    }
    v.pad_id_ = *v.find(specials.pad);
    v.unk_id_ = *v.find(specials.unk);
    v.cls_id_ = *v.find(specials.cls);
    v.sep_id_ = *v.find(specials.sep);
    v.mask_id_ = *v.find(specials.mask);
    return v;
  }

  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  const std::string& source() const { return source_; }
  const SpecialTokens& specials() const { return specials_; }

  std::optional<int64_t> find(std::string_view token) const {
    const auto it = ids_.find(token);
    if (it == ids_.end()) return std::nullopt;
    return it->second;
  }
  bool contains(std::string_view token) const { return ids_.find(token) != ids_.end(); }
  // The id of `token`, or the [UNK] id (HuggingFace's _convert_token_to_id).
  int64_t id_or_unk(std::string_view token) const { return find(token).value_or(unk_id_); }

  const std::string& token(int64_t id) const {
    MAMCLIP_CHECK(id >= 0 && id < size(), index_error, "vocab: id ", id, " is out of range for ", source_, " (",
                  size(), " tokens)");
    return tokens_[static_cast<size_t>(id)];
  }
  const std::vector<std::string>& tokens() const { return tokens_; }

  int64_t pad_id() const { return pad_id_; }
  int64_t unk_id() const { return unk_id_; }
  int64_t cls_id() const { return cls_id_; }
  int64_t sep_id() const { return sep_id_; }
  int64_t mask_id() const { return mask_id_; }
  bool is_special_id(int64_t id) const {
    return id == pad_id_ || id == unk_id_ || id == cls_id_ || id == sep_id_ || id == mask_id_;
  }
  bool is_special_token(std::string_view t) const {
    return t == specials_.pad || t == specials_.unk || t == specials_.cls || t == specials_.sep || t == specials_.mask;
  }
  // The longest token in code points: no WordPiece candidate longer than this
  // ("##" included) can be in the vocabulary.
  size_t max_token_chars() const { return max_token_chars_; }

 private:
  static void validate_utf8(const std::string& t, const std::string& source, size_t line_index) {
    for (size_t i = 0; i < t.size();) {
      const size_t at = i;
      if (unicode::next_code_point(t, i) == unicode::kReplacement &&
          !(i - at == 3 && static_cast<unsigned char>(t[at]) == 0xEF && static_cast<unsigned char>(t[at + 1]) == 0xBF &&
            static_cast<unsigned char>(t[at + 2]) == 0xBD)) {
        std::ostringstream hex;
        hex << std::hex << static_cast<unsigned>(static_cast<unsigned char>(t[at]));
        throw value_error(::mamclip::detail::str_cat("vocab: line ", line_index + 1, " of ", source,
                                                     " is not valid UTF-8 (byte 0x", hex.str(), " at byte ", at + 1,
                                                     " of the line)"));
      }
    }
  }

  std::string source_;
  std::vector<std::string> tokens_;
  std::unordered_map<std::string, int64_t, detail::StringHash, std::equal_to<>> ids_;
  SpecialTokens specials_;
  size_t max_token_chars_ = 0;
  int64_t pad_id_ = -1, unk_id_ = -1, cls_id_ = -1, sep_id_ = -1, mask_id_ = -1;
};

}  // namespace mamclip::text
