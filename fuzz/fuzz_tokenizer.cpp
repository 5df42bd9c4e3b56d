// libFuzzer target for the BERT tokenizer: arbitrary bytes (invalid UTF-8,
// control characters, special tokens, any Unicode) as one text, through an
// uncased and a cased tokenizer on a real vocabulary and an uncased one on a
// tiny vocabulary with a short word limit (most words [UNK] or split into
// single characters). Nothing may crash, read out of bounds or leak, and:
//   - every id is in [0, vocab size); ids are deterministic
//   - encode without truncation is [CLS] + token_ids + [SEP], mask all ones;
//     with truncation to max_length it is a prefix of that, closed by [SEP];
//     with padding it is exactly max_length long, padded with [PAD] / mask 0
//   - BasicTokenizer words are non-empty and hold no whitespace
//   - decode (with and without special tokens) gives valid UTF-8
//
// The real vocabulary: $MAMCLIP_FUZZ_VOCAB, else PubMedBERT's vocab.txt under
// MAMCLIP_SHARED_DATA (given by fuzz/run_fuzzers.sh), else a built-in one.
// Built and run by fuzz/run_fuzzers.sh (clang++ -fsanitize=fuzzer,address,undefined, -lutf8proc).

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "mamclip/text/text.hpp"

#ifndef MAMCLIP_SHARED_DATA
#define MAMCLIP_SHARED_DATA "../shared/data"
#endif

namespace {

using namespace mamclip;

[[noreturn]] void fail(const char* what, const std::string& detail = "") {
  std::fprintf(stderr, "fuzz_tokenizer: property violated: %s %s\n", what, detail.c_str());
  std::abort();
}

std::shared_ptr<const text::Vocab> builtin_vocab() {
  std::vector<std::string> tokens{"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "breast", "mass", "##es", "cal",
                                  "##ci",  "##fication", "##s", ".", ",", "-", "(", ")", "a", "##a", "é", "的",
                                  "σ", "##σ", "ς", "1", "##1", "birads"};
  return std::make_shared<const text::Vocab>(text::Vocab::from_tokens(tokens, "built-in"));
}

std::shared_ptr<const text::Vocab> real_vocab() {
  std::string path;
  if (const char* env = std::getenv("MAMCLIP_FUZZ_VOCAB")) path = env;
  else path = std::string(MAMCLIP_SHARED_DATA) + "/vocab/pubmedbert-base-uncased-abstract-fulltext/vocab.txt";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) {
    std::fprintf(stderr, "fuzz_tokenizer: %s is absent; using the built-in vocabulary only\n", path.c_str());
    return builtin_vocab();
  }
  std::fprintf(stderr, "fuzz_tokenizer: vocabulary %s\n", path.c_str());
  return std::make_shared<const text::Vocab>(text::Vocab::load(path));
}

struct Tokenizers {
  std::vector<text::BertTokenizer> all;
  text::BasicTokenizer basic_uncased, basic_cased;
  Tokenizers() : basic_uncased(text::BasicTokenizerOptions{}), basic_cased(cased_basic()) {
    const auto real = real_vocab();
    text::BertTokenizerOptions cased;
    cased.do_lower_case = false;
    text::BertTokenizerOptions tiny;
    tiny.max_input_chars_per_word = 4;
    tiny.tokenize_chinese_chars = false;
    all.emplace_back(real);
    all.emplace_back(real, cased);
    all.emplace_back(builtin_vocab(), tiny);
  }
  static text::BasicTokenizerOptions cased_basic() {
    text::BasicTokenizerOptions o;
    o.do_lower_case = false;
    o.strip_accents = true;
    return o;
  }
};

bool valid_utf8(const std::string& s) { return text::unicode::to_utf8(text::unicode::from_utf8(s)) == s; }

void check_words(const text::BasicTokenizer& bt, std::u32string_view text) {
  for (const auto& w : bt.tokenize(text)) {
    if (w.empty()) fail("BasicTokenizer gave an empty word");
    for (char32_t c : w)
      if (text::unicode::is_python_space(c)) fail("BasicTokenizer word holds whitespace");
  }
}

void check(const text::BertTokenizer& tok, std::string_view text, int64_t max_length) {
  const auto& v = tok.vocab();
  const auto ids = tok.token_ids(text);
  for (int64_t id : ids)
    if (id < 0 || id >= v.size()) fail("id out of range", std::to_string(id));
  if (tok.token_ids(text) != ids) fail("token_ids is not deterministic");

  text::EncodeOptions full;
  full.padding = text::Padding::none;
  full.truncation = false;
  const auto e = tok.encode(text, full);
  if (e.input_ids.size() != ids.size() + 2 || e.input_ids.front() != v.cls_id() || e.input_ids.back() != v.sep_id() ||
      !std::equal(ids.begin(), ids.end(), e.input_ids.begin() + 1))
    fail("encode without truncation is not [CLS] + token_ids + [SEP]");
  if (e.attention_mask != std::vector<int64_t>(e.input_ids.size(), 1)) fail("unpadded mask is not all ones");

  text::EncodeOptions cut;
  cut.max_length = max_length;
  cut.padding = text::Padding::none;
  const auto t = tok.encode(text, cut);
  const size_t kept = std::min<size_t>(ids.size(), static_cast<size_t>(max_length - 2));
  if (t.input_ids.size() != kept + 2 || t.input_ids.back() != v.sep_id() ||
      !std::equal(t.input_ids.begin(), t.input_ids.end() - 1, e.input_ids.begin()))
    fail("truncated encoding is not a prefix closed by [SEP]");

  text::EncodeOptions padded;
  padded.max_length = max_length;
  const auto p = tok.encode(text, padded);
  if (static_cast<int64_t>(p.input_ids.size()) != max_length || p.attention_mask.size() != p.input_ids.size())
    fail("padded encoding has the wrong length");
  for (size_t i = 0; i < p.input_ids.size(); ++i) {
    const bool real = i < t.input_ids.size();
    if (p.attention_mask[i] != (real ? 1 : 0) || p.input_ids[i] != (real ? t.input_ids[i] : v.pad_id()))
      fail("padded encoding differs from the truncated one plus [PAD]");
  }

  const std::string d = tok.decode(e.input_ids), ds = tok.decode(e.input_ids, true), dn = tok.decode(ids, false, false);
  if (!valid_utf8(d) || !valid_utf8(ds) || !valid_utf8(dn)) fail("decode gave invalid UTF-8");
  for (const auto& piece : tok.tokenize(text))
    if (!v.contains(piece)) fail("tokenize gave a string outside the vocabulary", piece);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const Tokenizers tokenizers;
  // The first byte picks max_length (2..257); the rest, up to kMaxText bytes,
  // is the text. Every tokenizer step is local to a word (at most 100 code
  // points count) or linear in the text, so longer texts reach nothing new,
  // while each instrumented byte costs ~20 tokenizations: the cap keeps
  // executions per second in the hundreds.
  constexpr size_t kMaxText = 4096;
  const int64_t max_length = size > 0 ? 2 + data[0] : 100;
  const std::string_view text(reinterpret_cast<const char*>(data) + (size > 0 ? 1 : 0),
                              std::min(size > 0 ? size - 1 : 0, kMaxText));
  try {
    for (const auto& tok : tokenizers.all) check(tok, text, max_length);
    const std::u32string u = text::unicode::from_utf8(text);
    check_words(tokenizers.basic_uncased, u);
    check_words(tokenizers.basic_cased, u);
  } catch (const mamclip::error& e) {
    // No text is an error: every byte sequence has a tokenization.
    fail("the tokenizer threw on a text:", e.what());
  }
  return 0;
}
