#pragma once
// MAM-CLIP's masked-language-model masking (reference: base_masker and
// encode_mlm in train/files/dataset.py, tokenization in model.py), seeded.
//
// It works on the caption's whitespace words (Python's str.split()), not on
// tokens. Each word is chosen independently with probability `ratio` (0.15;
// the reference draws random.random() < ratio per word, so the number of
// chosen words is Binomial(n, 0.15), not a fixed 15 %). A chosen word is, with
// u = (draw / ratio):
//   u < 0.8         masked:    "[MASK]" once per WordPiece piece of the word
//   0.8 <= u < 0.9  random:    ONE uniformly drawn vocabulary entry that is not
//                              a special token (it may be a "##" piece, and it
//                              may have a different number of pieces than the word)
//   u >= 0.9        unchanged: the word itself
// The label string holds the original word for every chosen word and "[PAD]"
// once per piece for every other word. The input string and the label string
// are then tokenized separately (padding to max_length, truncation), so the
// label ids keep [CLS] at position 0 and [SEP] after the last token: MAM-CLIP's
// loss (NLL, ignore index 0 = [PAD]) counts those positions. Nothing keeps the
// two sequences aligned when a random token has a different number of pieces
// than the word it replaced; that is the reference's behaviour and is kept.
//
// Randomness: each caption takes one stream of the Generator
// (gen.next_offset()); word i uses elements 2i (chosen? which branch?) and
// 2i+1 (which random token) of that stream, so a caption's masking depends
// only on (seed, its position in the draw order), never on other captions'
// lengths.

#include <cmath>
#include <string>
#include <string_view>
#include <vector>

#include "mamclip/core/error.hpp"
#include "mamclip/core/random.hpp"
#include "mamclip/text/tokenizer.hpp"
#include "mamclip/text/unicode.hpp"

namespace mamclip::text {

struct MlmOptions {
  double ratio = 0.15;           // probability that a word is chosen (MAM-CLIP validation uses 0)
  double mask_fraction = 0.8;    // of chosen words: replaced by [MASK] per piece
  double random_fraction = 0.1;  // of chosen words: replaced by a random token; the rest stay unchanged
  int64_t max_length = 100;      // context length of both tokenizations
};

enum class MlmAction {
  keep,       // not chosen: input has the word, label has [PAD] per piece
  mask,       // input has [MASK] per piece, label has the word
  random,     // input has one random vocabulary token, label has the word
  unchanged,  // input has the word, label has the word
};

struct MlmDecision {
  MlmAction action = MlmAction::keep;
  int64_t random_id = -1;  // the vocabulary id inserted by MlmAction::random
};

struct MaskedCaption {
  std::string input;                   // words joined by single spaces
  std::string label;
  std::vector<MlmDecision> decisions;  // one per word
};

struct MlmEncoding {
  std::vector<int64_t> input_ids, attention_mask, labels;  // max_length each
};

struct MlmBatch {
  Tensor<int64_t> input_ids;       // [B, max_length]
  Tensor<int64_t> attention_mask;  // [B, max_length], of the input
  Tensor<int64_t> labels;          // [B, max_length], [PAD] (0 for BERT vocabularies) = ignore
};

class MlmMasker {
 public:
  explicit MlmMasker(BertTokenizer tokenizer, MlmOptions options = {})
      : tokenizer_(std::move(tokenizer)), options_(options) {
    MAMCLIP_CHECK(options.ratio >= 0 && options.ratio <= 1, value_error, "MlmMasker: ratio must be in [0, 1], got ",
                  options.ratio);
    MAMCLIP_CHECK(options.mask_fraction >= 0 && options.random_fraction >= 0 &&
                      options.mask_fraction + options.random_fraction <= 1,
                  value_error, "MlmMasker: mask_fraction ", options.mask_fraction, " and random_fraction ",
                  options.random_fraction, " must be non-negative and sum to at most 1");
    const Vocab& v = tokenizer_.vocab();
    for (int64_t id = 0; id < v.size(); ++id)
      if (!v.is_special_token(v.token(id))) candidates_.push_back(id);
    MAMCLIP_CHECK(!candidates_.empty(), value_error, "MlmMasker: the vocabulary ", v.source(),
                  " has no token besides the special ones to draw random replacements from");
  }

  const BertTokenizer& tokenizer() const { return tokenizer_; }
  const MlmOptions& options() const { return options_; }
  // The ids a random replacement is drawn from: every id whose token is not special.
  const std::vector<int64_t>& candidate_ids() const { return candidates_; }

  // The whitespace words of a caption (Python's str.split()), as views into it.
  static std::vector<std::string_view> words(std::string_view caption) {
    std::vector<std::string_view> out;
    size_t i = 0, start = 0;
    bool in_word = false;
    while (i < caption.size()) {
      const size_t at = i;
      const bool space = unicode::is_python_space(unicode::next_code_point(caption, i));
      if (space && in_word) out.push_back(caption.substr(start, at - start));
      if (!space && !in_word) start = at;
      in_word = !space;
    }
    if (in_word) out.push_back(caption.substr(start));
    return out;
  }

  // One decision per word, from one stream of `gen`.
  std::vector<MlmDecision> draw(std::string_view caption, Generator& gen) const {
    const uint64_t seed = gen.seed(), offset = gen.next_offset();
    const size_t n = words(caption).size();
    std::vector<MlmDecision> out(n);
    const double mask_end = options_.mask_fraction, random_end = options_.mask_fraction + options_.random_fraction;
    for (size_t i = 0; i < n; ++i) {
      const double u = 1.0 - Philox::uniform(seed, offset, 2 * i);  // [0, 1) like random.random()
      if (!(u < options_.ratio)) continue;
      const double p = u / options_.ratio;
      if (p < mask_end) {
        out[i].action = MlmAction::mask;
      } else if (p < random_end) {
        out[i].action = MlmAction::random;
        const double v = 1.0 - Philox::uniform(seed, offset, 2 * i + 1);
        const auto k = std::min(candidates_.size() - 1, static_cast<size_t>(v * static_cast<double>(candidates_.size())));
        out[i].random_id = candidates_[k];
      } else {
        out[i].action = MlmAction::unchanged;
      }
    }
    return out;
  }

  // The masked input and label strings for given decisions (the deterministic
  // half of the reference's base_masker).
  MaskedCaption apply(std::string_view caption, const std::vector<MlmDecision>& decisions) const {
    const auto ws = words(caption);
    MAMCLIP_CHECK(ws.size() == decisions.size(), value_error, "MlmMasker::apply: the caption has ", ws.size(),
                  " words but ", decisions.size(), " decisions were given");
    const Vocab& v = tokenizer_.vocab();
    const std::string& mask = v.specials().mask;
    const std::string& pad = v.specials().pad;
    MaskedCaption out;
    out.decisions = decisions;
    std::vector<std::string> in_words, label_words;
    for (size_t i = 0; i < ws.size(); ++i) {
      const std::string_view w = ws[i];
      switch (decisions[i].action) {
        case MlmAction::keep:
          in_words.emplace_back(w);
          label_words.insert(label_words.end(), pieces(w), pad);
          break;
        case MlmAction::mask:
          in_words.insert(in_words.end(), pieces(w), mask);
          label_words.emplace_back(w);
          break;
        case MlmAction::random: {
          const int64_t id = decisions[i].random_id;
          MAMCLIP_CHECK(id >= 0 && id < v.size(), value_error, "MlmMasker::apply: random_id ", id, " of word ", i,
                        " is outside the vocabulary (", v.size(), " tokens)");
          in_words.push_back(strip_end_of_word(v.token(id)));
          label_words.emplace_back(w);
          break;
        }
        case MlmAction::unchanged:
          in_words.emplace_back(w);
          label_words.emplace_back(w);
          break;
      }
    }
    out.input = join(in_words);
    out.label = join(label_words);
    return out;
  }

  MaskedCaption mask(std::string_view caption, Generator& gen) const { return apply(caption, draw(caption, gen)); }

  // Masks and tokenizes one caption: padding to max_length, truncation.
  MlmEncoding encode(std::string_view caption, Generator& gen) const { return encode_masked(mask(caption, gen)); }

  MlmEncoding encode_masked(const MaskedCaption& m) const {
    EncodeOptions eo;
    eo.max_length = options_.max_length;
    Encoding in = tokenizer_.encode(m.input, eo);
    Encoding lab = tokenizer_.encode(m.label, eo);
    return {std::move(in.input_ids), std::move(in.attention_mask), std::move(lab.input_ids)};
  }

  // One stream of `gen` per caption, in order.
  MlmBatch encode_batch(const std::vector<std::string>& captions, Generator& gen) const {
    const int64_t L = options_.max_length;
    std::vector<int64_t> ids, mask, labels;
    ids.reserve(captions.size() * static_cast<size_t>(L));
    mask.reserve(ids.capacity());
    labels.reserve(ids.capacity());
    for (const auto& c : captions) {
      const MlmEncoding e = encode(c, gen);
      ids.insert(ids.end(), e.input_ids.begin(), e.input_ids.end());
      mask.insert(mask.end(), e.attention_mask.begin(), e.attention_mask.end());
      labels.insert(labels.end(), e.labels.begin(), e.labels.end());
    }
    const Shape shape{static_cast<int64_t>(captions.size()), L};
    return {detail::int64_tensor(ids, shape), detail::int64_tensor(mask, shape),
            detail::int64_tensor(labels, shape)};
  }

 private:
  // The reference's measure_word_len: len(tokenizer.encode(word)) - 2.
  size_t pieces(std::string_view word) const { return tokenizer_.token_ids(word).size(); }

  // The reference strips a BPE end-of-word marker from random tokens
  // (.replace("</w>", "")); BERT vocabularies have none, but a custom one may.
  static std::string strip_end_of_word(const std::string& t) {
    std::string out;
    size_t i = 0;
    while (true) {
      const size_t j = t.find("</w>", i);
      out.append(t, i, j == std::string::npos ? std::string::npos : j - i);
      if (j == std::string::npos) break;
      i = j + 4;
    }
    return out;
  }

  static std::string join(const std::vector<std::string>& ws) {
    std::string s;
    for (size_t i = 0; i < ws.size(); ++i) {
      if (i) s += ' ';
      s += ws[i];
    }
    return s;
  }

  BertTokenizer tokenizer_;
  MlmOptions options_;
  std::vector<int64_t> candidates_;
};

}  // namespace mamclip::text
