#pragma once
// BERT's basic tokenizer (HuggingFace tokenization_bert.BasicTokenizer, the
// Python one, transformers 4.57): cleaning, CJK spacing, NFC, whitespace split,
// lower-casing and accent stripping, punctuation split. Its output words go to
// WordPiece.
//
//   BasicTokenizer bt;                           // do_lower_case = true
//   bt.tokenize(U"Héllo, WORLD!")                // {"hello", ",", "world", "!"}
//
// Order of the steps (each one matters for exactness):
//   1. drop U+0000, U+FFFD and control characters (category C* except \t \n \r);
//      turn whitespace (space, \t, \n, \r, Zs) into a space
//   2. put spaces around CJK ideographs (tokenize_chinese_chars)
//   3. NFC
//   4. split on Python whitespace (str.split(), which also splits at U+2028/U+2029)
//   5. for each word not in never_split: str.lower() when do_lower_case, then
//      strip accents (NFD, drop Mn) unless strip_accents == false; without
//      do_lower_case, strip accents only when strip_accents == true
//   6. split every punctuation character off into its own word (words in
//      never_split stay whole)

#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "mamclip/text/unicode.hpp"

namespace mamclip::text {

struct BasicTokenizerOptions {
  bool do_lower_case = true;
  bool tokenize_chinese_chars = true;
  // Unset: follows do_lower_case (HuggingFace's strip_accents=None).
  std::optional<bool> strip_accents;
  bool split_on_punctuation = true;
  // Words (after step 4) kept as they are: not lower-cased, not split.
  std::vector<std::string> never_split;
};

class BasicTokenizer {
 public:
  explicit BasicTokenizer(BasicTokenizerOptions options = {}) : options_(std::move(options)) {
    for (const auto& w : options_.never_split) never_split_.insert(unicode::from_utf8(w));
  }
  const BasicTokenizerOptions& options() const { return options_; }

  // `extra_never_split` adds to the options' never_split for this call.
  std::vector<std::u32string> tokenize(std::u32string_view text,
                                       const std::set<std::u32string, std::less<>>* extra_never_split = nullptr) const {
    const auto never = [&](std::u32string_view w) {
      return never_split_.count(w) > 0 || (extra_never_split && extra_never_split->count(w) > 0);
    };
    std::u32string cleaned;
    cleaned.reserve(text.size() + 8);
    for (char32_t c : text) {
      if (c == 0 || c == unicode::kReplacement || unicode::is_bert_control(c)) continue;
      if (unicode::is_bert_whitespace(c)) {
        cleaned += U' ';
      } else if (options_.tokenize_chinese_chars && unicode::is_cjk_ideograph(c)) {
        cleaned += U' ';
        cleaned += c;
        cleaned += U' ';
      } else {
        cleaned += c;
      }
    }
    const std::u32string normalized = unicode::nfc(cleaned);

    const bool strip = options_.do_lower_case ? options_.strip_accents.value_or(true)
                                              : options_.strip_accents.value_or(false);
    std::vector<std::u32string> out;
    for_each_python_word(normalized, [&](std::u32string_view word) {
      if (never(word)) {
        out.emplace_back(word);
        return;
      }
      std::u32string w(word);
      if (options_.do_lower_case) w = unicode::lower(w);
      if (strip) w = unicode::strip_accents(w);
      split_on_punctuation(w, out);
    });
    return out;
  }

  // UTF-8 in and out.
  std::vector<std::string> tokenize(std::string_view text) const {
    std::vector<std::string> out;
    for (const auto& w : tokenize(std::u32string_view(unicode::from_utf8(text)))) out.push_back(unicode::to_utf8(w));
    return out;
  }

  // Calls fn(word) for each maximal run of non-whitespace, whitespace as
  // str.split() sees it.
  template <class Fn>
  static void for_each_python_word(std::u32string_view s, Fn&& fn) {
    size_t i = 0;
    while (i < s.size()) {
      while (i < s.size() && unicode::is_python_space(s[i])) ++i;
      const size_t start = i;
      while (i < s.size() && !unicode::is_python_space(s[i])) ++i;
      if (i > start) fn(s.substr(start, i - start));
    }
  }

 private:
  // Appends the pieces of `w`: each punctuation character alone, the runs
  // between them whole. The pieces are non-empty and hold no Python
  // whitespace, so HuggingFace's final re-split by whitespace changes nothing.
  void split_on_punctuation(const std::u32string& w, std::vector<std::u32string>& out) const {
    if (!options_.split_on_punctuation) {
      if (!w.empty()) out.push_back(w);
      return;
    }
    size_t start = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      if (!unicode::is_bert_punctuation(w[i])) continue;
      if (i > start) out.push_back(w.substr(start, i - start));
      out.push_back(w.substr(i, 1));
      start = i + 1;
    }
    if (start < w.size()) out.push_back(w.substr(start));
  }

  BasicTokenizerOptions options_;
  std::set<std::u32string, std::less<>> never_split_;
};

}  // namespace mamclip::text
