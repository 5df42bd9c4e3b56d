#pragma once
// WordPiece (HuggingFace WordpieceTokenizer): greedy longest-match-first
// segmentation of one word into vocabulary pieces, continuation pieces
// prefixed with "##".
//
//   "unaffable" -> "un", "##aff", "##able"
//
// A word longer than max_input_chars_per_word code points, or one with a
// position where no piece matches, becomes a single [UNK] (the whole word, not
// just the unmatched part).

#include <algorithm>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/text/unicode.hpp"
#include "mamclip/text/vocab.hpp"

namespace mamclip::text {

class WordPiece {
 public:
  WordPiece() = default;
  explicit WordPiece(std::shared_ptr<const Vocab> vocab, int64_t max_input_chars_per_word = 100)
      : vocab_(std::move(vocab)), max_chars_(max_input_chars_per_word) {
    MAMCLIP_CHECK(vocab_ != nullptr, value_error, "WordPiece: vocab is null");
    MAMCLIP_CHECK(max_chars_ > 0, value_error, "WordPiece: max_input_chars_per_word must be positive, got ",
                  max_chars_);
  }

  const Vocab& vocab() const { return *vocab_; }
  int64_t max_input_chars_per_word() const { return max_chars_; }

  // Appends the ids of the pieces of `word` (one word: no whitespace in it).
  void encode(std::u32string_view word, std::vector<int64_t>& ids) const {
    if (word.empty()) return;
    if (static_cast<int64_t>(word.size()) > max_chars_) {
      ids.push_back(vocab_->unk_id());
      return;
    }
    // UTF-8 of the word, with the byte offset of every code point, so each
    // candidate is a byte range looked up without allocating.
    std::string utf8;
    std::vector<size_t> at;
    at.reserve(word.size() + 1);
    for (char32_t c : word) {
      at.push_back(utf8.size());
      unicode::append_utf8(utf8, c);
    }
    at.push_back(utf8.size());

    const size_t n = word.size(), first = ids.size();
    std::string candidate;  // "##" + piece for continuation pieces
    size_t start = 0;
    while (start < n) {
      // No vocabulary entry is longer than max_token_chars(), so longer
      // candidates are skipped: same result as starting from the word's end.
      const size_t longest = vocab_->max_token_chars(), prefix = start > 0 ? 2 : 0;
      const size_t limit = longest > prefix ? longest - prefix : 0;
      size_t end = std::min(n, start + std::max<size_t>(limit, 1));
      std::optional<int64_t> id;
      for (; end > start; --end) {
        std::string_view piece(utf8.data() + at[start], at[end] - at[start]);
        if (start > 0) {
          candidate.assign("##");
          candidate.append(piece);
          piece = candidate;
        }
        if ((id = vocab_->find(piece))) break;
      }
      if (!id) {
        ids.resize(first);
        ids.push_back(vocab_->unk_id());
        return;
      }
      ids.push_back(*id);
      start = end;
    }
  }

  std::vector<int64_t> encode(std::u32string_view word) const {
    std::vector<int64_t> ids;
    encode(word, ids);
    return ids;
  }

  // The pieces as strings (UTF-8), for inspection.
  std::vector<std::string> tokenize(std::string_view word) const {
    std::vector<std::string> out;
    for (int64_t id : encode(unicode::from_utf8(word))) out.push_back(vocab_->token(id));
    return out;
  }

 private:
  std::shared_ptr<const Vocab> vocab_;
  int64_t max_chars_ = 100;
};

}  // namespace mamclip::text
