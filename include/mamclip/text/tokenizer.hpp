#pragma once
// BertTokenizer: the ids HuggingFace's Python BertTokenizer (transformers 4.57)
// gives, plus encoding as MAM-CLIP uses it ([CLS] ... [SEP], truncation and
// padding to max_length 100, attention mask) and decoding.
//
//   auto tok = text::BertTokenizer::from_file("vocab.txt");           // uncased
//   auto enc = tok.encode("Spiculated mass, BI-RADS 5.");              // 100 ids + mask
//   auto batch = tok.encode_batch({"a", "b c"});                       // Tensor<int64_t> [2, 100]
//   tok.decode(enc.input_ids, /*skip_special_tokens=*/true);           // "spiculated mass, bi - rads 5."
//
// token_ids(text) follows PreTrainedTokenizer.tokenize + BertTokenizer._tokenize:
//   1. do_lower_case: lower-case every character with str.lower() one at a
//      time (so never a final sigma), except where a special token ([UNK],
//      [SEP], [PAD], [CLS], [MASK], tried in that order) starts
//   2. cut out every special token (leftmost, longest first): each is its own id,
//      whatever surrounds it ("x[MASK]y" -> x, [MASK], y)
//   3. BasicTokenizer on each piece between them, with the special tokens as
//      never_split (one can reappear once control characters are dropped)
//   4. WordPiece on every word
// The special-token matching is exact for prefix-free special tokens (BERT's
// are); HuggingFace's trie behaves differently only when one special token is
// a prefix of another.
//
// MAM-CLIP's reference code loads AutoTokenizer, i.e. the Rust "fast"
// tokenizer; it differs from the Python one on a handful of rare inputs
// (unassigned code points, some CJK compatibility ideographs, ...), see
// tools/make_tokenizer_fixture.py.

#include <algorithm>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/tensor.hpp"
#include "mamclip/core/tensor_data.hpp"  // to_vector() for callers reading the batches
#include "mamclip/text/basic_tokenizer.hpp"
#include "mamclip/text/unicode.hpp"
#include "mamclip/text/vocab.hpp"
#include "mamclip/text/wordpiece.hpp"

namespace mamclip::text {

struct BertTokenizerOptions {
  bool do_lower_case = true;
  bool tokenize_chinese_chars = true;
  // Unset: strip accents exactly when lower-casing (HuggingFace's None).
  std::optional<bool> strip_accents;
  int64_t max_input_chars_per_word = 100;
};

enum class Padding {
  none,        // no padding
  longest,     // to the longest sequence of the batch
  max_length,  // to max_length (what MAM-CLIP uses)
};

// Defaults are MAM-CLIP's call: padding="max_length", truncation=True, max_length=100.
struct EncodeOptions {
  int64_t max_length = 100;
  Padding padding = Padding::max_length;
  bool truncation = true;  // keep the first max_length - 2 tokens, then add [CLS] and [SEP]
  bool add_special_tokens = true;
};

struct Encoding {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> attention_mask;  // 1 for tokens, 0 for padding
};

struct BatchEncoding {
  Tensor<int64_t> input_ids;       // [B, L]
  Tensor<int64_t> attention_mask;  // [B, L]
};

namespace detail {
// A CPU int64 tensor holding `values` (core only: no ops needed).
inline Tensor<int64_t> int64_tensor(const std::vector<int64_t>& values, const Shape& shape) {
  Tensor<int64_t> t = Tensor<int64_t>::empty(shape);
  std::copy(values.begin(), values.end(), t.data_ptr());
  return t;
}
}  // namespace detail

class BertTokenizer {
 public:
  BertTokenizer(std::shared_ptr<const Vocab> vocab, BertTokenizerOptions options = {})
      : vocab_(std::move(vocab)), options_(options) {
    MAMCLIP_CHECK(vocab_ != nullptr, value_error, "BertTokenizer: vocab is null");
    for (const std::string& s : vocab_->specials().all()) {
      MAMCLIP_CHECK(!s.empty(), value_error, "BertTokenizer: special tokens must not be empty");
      specials_.push_back(unicode::from_utf8(s));
      special_ids_.push_back(*vocab_->find(s));
      never_split_.insert(specials_.back());
    }
    wordpiece_ = WordPiece(vocab_, options.max_input_chars_per_word);
    BasicTokenizerOptions bo;
    bo.do_lower_case = options.do_lower_case;
    bo.tokenize_chinese_chars = options.tokenize_chinese_chars;
    bo.strip_accents = options.strip_accents;
    basic_ = BasicTokenizer(bo);
  }

  static BertTokenizer from_file(const std::string& vocab_path, BertTokenizerOptions options = {},
                                 const SpecialTokens& specials = {}) {
    return BertTokenizer(std::make_shared<const Vocab>(Vocab::load(vocab_path, specials)), options);
  }

  const Vocab& vocab() const { return *vocab_; }
  const std::shared_ptr<const Vocab>& vocab_ptr() const { return vocab_; }
  const BertTokenizerOptions& options() const { return options_; }

  // tokenize + convert_tokens_to_ids: no [CLS]/[SEP], no truncation.
  std::vector<int64_t> token_ids(std::string_view text) const {
    std::vector<int64_t> ids;
    append_token_ids(text, ids);
    return ids;
  }

  // The tokens (vocabulary strings) of token_ids(text).
  std::vector<std::string> tokenize(std::string_view text) const {
    std::vector<std::string> out;
    for (int64_t id : token_ids(text)) out.push_back(vocab_->token(id));
    return out;
  }

  Encoding encode(std::string_view text, const EncodeOptions& opt = {}) const {
    check_options(opt, "encode");
    Encoding e;
    if (opt.add_special_tokens) e.input_ids.push_back(vocab_->cls_id());
    append_token_ids(text, e.input_ids);
    if (opt.truncation) {
      const int64_t keep = opt.max_length - (opt.add_special_tokens ? 1 : 0);  // [CLS] is in already; [SEP] follows
      if (static_cast<int64_t>(e.input_ids.size()) > keep) e.input_ids.resize(static_cast<size_t>(keep));
    }
    if (opt.add_special_tokens) e.input_ids.push_back(vocab_->sep_id());
    e.attention_mask.assign(e.input_ids.size(), 1);
    if (opt.padding == Padding::max_length) pad(e, opt.max_length);
    return e;
  }

  // Encodes each text and stacks them: [B, L], L = max_length for
  // Padding::max_length, the longest sequence for Padding::longest.
  BatchEncoding encode_batch(const std::vector<std::string>& texts, const EncodeOptions& opt = {}) const {
    check_options(opt, "encode_batch");
    EncodeOptions unpadded = opt;
    unpadded.padding = Padding::none;
    std::vector<Encoding> rows;
    rows.reserve(texts.size());
    int64_t longest = 0;
    for (const auto& t : texts) {
      rows.push_back(encode(t, unpadded));
      longest = std::max<int64_t>(longest, static_cast<int64_t>(rows.back().input_ids.size()));
    }
    int64_t length = longest;
    if (opt.padding == Padding::max_length) {
      MAMCLIP_CHECK(longest <= opt.max_length, value_error, "encode_batch: a text has ", longest,
                    " tokens, more than max_length ", opt.max_length,
                    ", and truncation is off; turn truncation on or raise max_length");
      length = opt.max_length;
    }
    std::vector<int64_t> ids, mask;
    ids.reserve(rows.size() * static_cast<size_t>(length));
    mask.reserve(ids.capacity());
    for (size_t b = 0; b < rows.size(); ++b) {
      Encoding& e = rows[b];
      MAMCLIP_CHECK(opt.padding != Padding::none || static_cast<int64_t>(e.input_ids.size()) == length, value_error,
                    "encode_batch: without padding every text needs the same number of tokens; text ", b, " has ",
                    e.input_ids.size(), " and the longest has ", length);
      pad(e, length);
      ids.insert(ids.end(), e.input_ids.begin(), e.input_ids.end());
      mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
    }
    const Shape shape{static_cast<int64_t>(rows.size()), length};
    return {detail::int64_tensor(ids, shape), detail::int64_tensor(mask, shape)};
  }

  // HuggingFace decode(): tokens joined by spaces, " ##" removed, outer
  // whitespace stripped, then (clean_up_tokenization_spaces, BertTokenizer's
  // default) " ." " ?" " !" " ," " ' " " n't" " 'm" " 's" " 've" " 're" lose
  // their space. Ids outside the vocabulary decode to [UNK].
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = false,
                     bool clean_up_tokenization_spaces = true) const {
    std::string joined;
    bool first = true;
    for (int64_t id : ids) {
      if (skip_special_tokens && vocab_->is_special_id(id)) continue;
      const std::string& tok = (id >= 0 && id < vocab_->size()) ? vocab_->token(id) : vocab_->specials().unk;
      if (skip_special_tokens && vocab_->is_special_token(tok)) continue;
      if (!first) joined += ' ';
      joined += tok;
      first = false;
    }
    std::string out = replace_all(joined, " ##", "");
    out = python_strip(out);
    if (clean_up_tokenization_spaces) {
      static constexpr std::pair<std::string_view, std::string_view> kRules[] = {
          {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"},
          {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
      for (const auto& [from, to] : kRules) out = replace_all(out, from, to);
    }
    return out;
  }

 private:
  void check_options(const EncodeOptions& opt, const char* op) const {
    MAMCLIP_CHECK(opt.max_length > 0 || (!opt.truncation && opt.padding != Padding::max_length), value_error, op,
                  ": max_length must be positive, got ", opt.max_length);
    MAMCLIP_CHECK(!(opt.truncation && opt.add_special_tokens) || opt.max_length >= 2, value_error, op,
                  ": max_length ", opt.max_length, " cannot hold [CLS] and [SEP]; it must be at least 2");
  }

  void pad(Encoding& e, int64_t length) const {
    if (static_cast<int64_t>(e.input_ids.size()) >= length) return;
    e.input_ids.resize(static_cast<size_t>(length), vocab_->pad_id());
    e.attention_mask.resize(static_cast<size_t>(length), 0);
  }

  // Which special token (index into specials_) starts at s[i]; the first in
  // HuggingFace's order when `first_listed`, the longest otherwise.
  std::optional<size_t> special_at(std::u32string_view s, size_t i, bool first_listed) const {
    std::optional<size_t> best;
    for (size_t k = 0; k < specials_.size(); ++k) {
      const auto& sp = specials_[k];
      if (s.substr(i, sp.size()) != sp) continue;
      if (first_listed) return k;
      if (!best || sp.size() > specials_[*best].size()) best = k;
    }
    return best;
  }

  void append_token_ids(std::string_view text, std::vector<int64_t>& ids) const {
    std::u32string s = unicode::from_utf8(text);
    if (options_.do_lower_case) {
      std::u32string lowered;
      lowered.reserve(s.size());
      for (size_t i = 0; i < s.size();) {
        if (may_start_special(s[i])) {
          if (const auto k = special_at(s, i, /*first_listed=*/true)) {
            lowered += specials_[*k];
            i += specials_[*k].size();
            continue;
          }
        }
        unicode::append_lower(lowered, s[i]);
        ++i;
      }
      s = std::move(lowered);
    }
    size_t chunk = 0;
    const auto flush = [&](size_t end) {
      if (end <= chunk) return;
      for (const auto& word : basic_.tokenize(std::u32string_view(s).substr(chunk, end - chunk), &never_split_))
        wordpiece_.encode(word, ids);
    };
    for (size_t i = 0; i < s.size();) {
      const auto k = may_start_special(s[i]) ? special_at(s, i, /*first_listed=*/false) : std::nullopt;
      if (!k) {
        ++i;
        continue;
      }
      flush(i);
      ids.push_back(special_ids_[*k]);
      i += specials_[*k].size();
      chunk = i;
    }
    flush(s.size());
  }

  // Cheap pre-filter: a position can only start a special token if its first
  // character starts one.
  bool may_start_special(char32_t c) const {
    for (const auto& sp : specials_)
      if (sp[0] == c) return true;
    return false;
  }

  static std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
    std::string out;
    out.reserve(s.size());
    size_t i = 0;
    while (true) {
      const size_t j = s.find(from, i);
      if (j == std::string_view::npos) break;
      out.append(s.substr(i, j - i));
      out.append(to);
      i = j + from.size();
    }
    out.append(s.substr(i));
    return out;
  }

  // str.strip(): Python whitespace off both ends.
  static std::string python_strip(const std::string& s) {
    const std::u32string u = unicode::from_utf8(s);
    size_t a = 0, b = u.size();
    while (a < b && unicode::is_python_space(u[a])) ++a;
    while (b > a && unicode::is_python_space(u[b - 1])) --b;
    if (a == 0 && b == u.size()) return s;
    return unicode::to_utf8(std::u32string_view(u).substr(a, b - a));
  }

  std::shared_ptr<const Vocab> vocab_;
  BertTokenizerOptions options_;
  std::vector<std::u32string> specials_;  // SpecialTokens::all() order
  std::vector<int64_t> special_ids_;
  std::set<std::u32string, std::less<>> never_split_;
  WordPiece wordpiece_;
  BasicTokenizer basic_;
};

}  // namespace mamclip::text
