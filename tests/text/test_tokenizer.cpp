// BertTokenizer against HuggingFace's Python BertTokenizer (fixture ids for
// two real vocabularies, uncased and cased), WordPiece and BasicTokenizer
// rules, encode / encode_batch / decode.
#include <chrono>
#include <iostream>

#include "text/text_fixtures.hpp"

namespace test_tokenizer {
using namespace mamclip;
using namespace mamclip::test;
using text::BertTokenizer;
using text::BertTokenizerOptions;
using text::EncodeOptions;
using text::Padding;

namespace {

std::vector<int64_t> ids_of(const nlohmann::json& j) { return j.get<std::vector<int64_t>>(); }

struct Fixture {
  std::optional<BertTokenizer> pubmed, bert, pubmed_cased;
  bool ok = false;
};

Fixture load_tokenizers() {
  Fixture f;
  const auto pv = shared_vocab(kPubmed), bv = shared_vocab(kBert);
  if (!pv || !bv) return f;
  const auto pvocab = load_shared_vocab(*pv);
  f.pubmed.emplace(pvocab);
  f.bert.emplace(load_shared_vocab(*bv));
  BertTokenizerOptions cased;
  cased.do_lower_case = false;
  f.pubmed_cased.emplace(pvocab, cased);
  f.ok = true;
  return f;
}

}  // namespace

TEST_CASE("token ids equal HuggingFace BertTokenizer's on every fixture text, both vocabularies, both cases") {
  const Fixture f = load_tokenizers();
  if (!f.ok) return;
  const auto records = load_jsonl(tokenizer_fixture("texts.jsonl"));
  struct Config {
    const char* key;
    const BertTokenizer* tok;
  };
  const Config configs[] = {{"pubmed", &*f.pubmed}, {"bert", &*f.bert}, {"pubmed_cased", &*f.pubmed_cased}};
  size_t compared = 0, mismatches = 0, invalid_utf8 = 0, total_ids = 0;
  for (const auto& r : records) {
    const std::string text = r.contains("hex") ? from_hex(r["hex"].get<std::string>()) : r["text"].get<std::string>();
    invalid_utf8 += r.contains("hex") ? 1 : 0;
    for (const auto& c : configs) {
      const auto expected = ids_of(r[c.key]);
      const auto actual = c.tok->token_ids(text);
      total_ids += expected.size();
      if (actual != expected) {
        if (++mismatches <= 20)
          UNSCOPED_INFO("[" << c.key << "] text \"" << escaped(text) << "\"\n  expected " << list_str(expected)
                            << "\n  actual   " << list_str(actual));
      }
    }
    ++compared;
  }
  std::cout << "tokenizer fixture: compared " << compared << " texts (" << invalid_utf8 << " of them invalid UTF-8) x 3 "
            << "configurations, " << total_ids << " ids, " << mismatches << " mismatches\n";
  CHECK(compared >= 2000);
  REQUIRE(mismatches == 0);
}

TEST_CASE("encode pads to max_length and truncates exactly as HuggingFace's tokenizer(...) call") {
  const auto pv = shared_vocab(kPubmed);
  if (!pv) return;
  const BertTokenizer tok(load_shared_vocab(*pv));
  const auto extras = load_json(tokenizer_fixture("extras.json"));
  size_t n = 0;
  for (const auto& e : extras["encode"]) {
    EncodeOptions opt;
    opt.max_length = e["max_length"].get<int64_t>();
    const auto text = e["text"].get<std::string>();
    const auto enc = tok.encode(text, opt);
    INFO("text \"" << escaped(text) << "\" max_length " << opt.max_length);
    CHECK(enc.input_ids == ids_of(e["input_ids"]));
    CHECK(enc.attention_mask == ids_of(e["attention_mask"]));
    ++n;
  }
  CHECK(n >= 100);
}

TEST_CASE("decode matches HuggingFace decode with and without special tokens and clean-up") {
  const auto pv = shared_vocab(kPubmed), bv = shared_vocab(kBert);
  if (!pv || !bv) return;
  const BertTokenizer pubmed(load_shared_vocab(*pv)), bert(load_shared_vocab(*bv));
  const auto extras = load_json(tokenizer_fixture("extras.json"));
  size_t n = 0;
  for (const auto& d : extras["decode"]) {
    const BertTokenizer& tok = d["vocab"] == "pubmed" ? pubmed : bert;
    const auto ids = ids_of(d["ids"]);
    const bool skip = d["skip_special_tokens"].get<bool>(), clean = d["clean_up"].get<bool>();
    INFO("ids " << list_str(ids) << " skip_special_tokens " << skip << " clean_up " << clean);
    CHECK(tok.decode(ids, skip, clean) == d["text"].get<std::string>());
    ++n;
  }
  CHECK(n >= 100);
}

TEST_CASE("BasicTokenizer alone matches HuggingFace's, final sigma and never_split included") {
  const auto extras = load_json(tokenizer_fixture("extras.json"));
  for (const auto& b : extras["basic"]) {
    const auto& cfg = b["config"];
    text::BasicTokenizerOptions opt;
    opt.do_lower_case = cfg["do_lower_case"].get<bool>();
    if (cfg.contains("strip_accents")) opt.strip_accents = cfg["strip_accents"].get<bool>();
    if (cfg.contains("tokenize_chinese_chars")) opt.tokenize_chinese_chars = cfg["tokenize_chinese_chars"].get<bool>();
    opt.never_split = b["never_split"].get<std::vector<std::string>>();
    const text::BasicTokenizer bt(opt);
    const auto text = b["text"].get<std::string>();
    INFO("config " << cfg.dump() << " text \"" << escaped(text) << "\"");
    CHECK(bt.tokenize(std::string_view(text)) == b["tokens"].get<std::vector<std::string>>());
  }
}

TEST_CASE("WordPiece: greedy longest match, ## continuations, whole-word [UNK], the 100-character limit") {
  const auto v = tiny_vocab({"un", "##aff", "##able", "unaff", "a", "##a", "b", "##bb"});
  const text::WordPiece wp(v);
  CHECK(wp.tokenize("unaffable") == std::vector<std::string>{"unaff", "##able"});  // longest first: unaff, not un
  CHECK(wp.tokenize("unable") == std::vector<std::string>{"un", "##able"});
  CHECK(wp.tokenize("bbb") == std::vector<std::string>{"b", "##bb"});
  // One unmatched position makes the whole word [UNK], not just that part.
  CHECK(wp.tokenize("unx") == std::vector<std::string>{"[UNK]"});
  CHECK(wp.tokenize("unaffablex") == std::vector<std::string>{"[UNK]"});
  // 100 code points are split; 101 are [UNK] without looking (counted in code points, not bytes).
  CHECK(wp.tokenize(std::string(100, 'a')).size() == 100);
  CHECK(wp.tokenize(std::string(101, 'a')) == std::vector<std::string>{"[UNK]"});
  const text::WordPiece short_words(v, 3);
  CHECK(short_words.tokenize("aaa").size() == 3);
  CHECK(short_words.tokenize("aaaa") == std::vector<std::string>{"[UNK]"});
  MAMCLIP_REQUIRE_THROWS_WITH(text::WordPiece(v, 0), value_error,
                              "WordPiece: max_input_chars_per_word must be positive, got 0");
}

TEST_CASE("special tokens are cut out wherever they are; lower-case look-alikes are split as punctuation") {
  const auto v = tiny_vocab({"x", "y", "[", "]", "cls", "mask", "##y", "breast"});
  const BertTokenizer tok(v);
  CHECK(tok.tokenize("x[MASK]y") == std::vector<std::string>{"x", "[MASK]", "y"});
  CHECK(tok.tokenize("[CLS] breast [SEP]") == std::vector<std::string>{"[CLS]", "breast", "[SEP]"});
  CHECK(tok.tokenize("[cls]") == std::vector<std::string>{"[", "cls", "]"});
  CHECK(tok.tokenize("[MASK][MASK]") == std::vector<std::string>{"[MASK]", "[MASK]"});
  // Uncased: the control character hides nothing, lower-casing already broke the match.
  CHECK(tok.tokenize(std::string("[C\0LS]", 6)) == std::vector<std::string>{"[", "cls", "]"});
  BertTokenizerOptions cased;
  cased.do_lower_case = false;
  const BertTokenizer ctok(v, cased);
  // Cased: dropping \0 makes "[CLS]" appear after the cut; BasicTokenizer keeps it whole (never_split).
  CHECK(ctok.tokenize(std::string("[C\0LS]", 6)) == std::vector<std::string>{"[CLS]"});
  CHECK(ctok.tokenize("Breast") == std::vector<std::string>{"[UNK]"});
}

TEST_CASE("encode: [CLS] ... [SEP], truncation to max_length, padding with [PAD], attention mask") {
  const auto v = tiny_vocab({"a", "b", "c"});
  const BertTokenizer tok(v);
  EncodeOptions opt;
  opt.max_length = 6;
  auto e = tok.encode("a b", opt);
  CHECK(e.input_ids == std::vector<int64_t>{2, 5, 6, 3, 0, 0});
  CHECK(e.attention_mask == std::vector<int64_t>{1, 1, 1, 1, 0, 0});
  e = tok.encode("a b c a b c", opt);  // 6 tokens: keep 4, then [SEP]
  CHECK(e.input_ids == std::vector<int64_t>{2, 5, 6, 7, 5, 3});
  CHECK(e.attention_mask == std::vector<int64_t>(6, 1));
  e = tok.encode("", opt);
  CHECK(e.input_ids == std::vector<int64_t>{2, 3, 0, 0, 0, 0});

  opt.padding = Padding::none;
  CHECK(tok.encode("a b", opt).input_ids == std::vector<int64_t>{2, 5, 6, 3});
  opt.truncation = false;
  CHECK(tok.encode("a b c a b c", opt).input_ids.size() == 8);
  opt.add_special_tokens = false;
  opt.truncation = true;
  CHECK(tok.encode("a b c a b c a", opt).input_ids == std::vector<int64_t>{5, 6, 7, 5, 6, 7});

  // The defaults are MAM-CLIP's: 100 ids.
  CHECK(tok.encode("a").input_ids.size() == 100);
  CHECK(tok.encode("a").attention_mask[2] == 1);
  CHECK(tok.encode("a").attention_mask[3] == 0);

  EncodeOptions bad;
  bad.max_length = 1;
  MAMCLIP_REQUIRE_THROWS_WITH(tok.encode("a", bad), value_error,
                              "encode: max_length 1 cannot hold [CLS] and [SEP]; it must be at least 2");
  bad.max_length = 0;
  MAMCLIP_REQUIRE_THROWS_WITH(tok.encode("a", bad), value_error, "encode: max_length must be positive, got 0");
}

TEST_CASE("encode_batch stacks [B, L] int64 tensors; padding to max_length or to the longest") {
  const auto v = tiny_vocab({"a", "b", "c"});
  const BertTokenizer tok(v);
  EncodeOptions opt;
  opt.max_length = 5;
  auto b = tok.encode_batch({"a", "a b c a", ""}, opt);
  CHECK(b.input_ids.shape() == Shape{3, 5});
  CHECK(b.attention_mask.shape() == Shape{3, 5});
  CHECK(b.input_ids.to_vector() == std::vector<int64_t>{2, 5, 3, 0, 0, /**/ 2, 5, 6, 7, 3, /**/ 2, 3, 0, 0, 0});
  CHECK(b.attention_mask.to_vector() == std::vector<int64_t>{1, 1, 1, 0, 0, /**/ 1, 1, 1, 1, 1, /**/ 1, 1, 0, 0, 0});

  opt.padding = Padding::longest;
  b = tok.encode_batch({"a", "a b"}, opt);
  CHECK(b.input_ids.shape() == Shape{2, 4});
  CHECK(b.input_ids.to_vector() == std::vector<int64_t>{2, 5, 3, 0, 2, 5, 6, 3});

  CHECK(tok.encode_batch({}, EncodeOptions{}).input_ids.shape() == Shape{0, 100});

  opt.padding = Padding::none;
  MAMCLIP_REQUIRE_THROWS_WITH(tok.encode_batch({"a", "a b"}, opt), value_error,
                              "encode_batch: without padding every text needs the same number of tokens; text 0 has 3 "
                              "and the longest has 4");
  opt.padding = Padding::max_length;
  opt.truncation = false;
  MAMCLIP_REQUIRE_THROWS_WITH(tok.encode_batch({"a b c a b c"}, opt), value_error,
                              "encode_batch: a text has 8 tokens, more than max_length 5, and truncation is off");
}

TEST_CASE("decode joins pieces, skips special tokens on request and maps unknown ids to [UNK]") {
  const auto v = tiny_vocab({"breast", "mass", "##es", ".", "'", "s", "it"});
  const BertTokenizer tok(v);
  const std::vector<int64_t> ids{2, 5, 6, 7, 8, 3, 0, 0};
  CHECK(tok.decode(ids) == "[CLS] breast masses. [SEP] [PAD] [PAD]");
  CHECK(tok.decode(ids, /*skip_special_tokens=*/true) == "breast masses.");
  CHECK(tok.decode(ids, true, /*clean_up_tokenization_spaces=*/false) == "breast masses .");
  CHECK(tok.decode({11, 9, 10}, true) == "it's");
  CHECK(tok.decode({5, 999, -3}) == "breast [UNK] [UNK]");
  CHECK(tok.decode({5, 999, -3}, true) == "breast");
  CHECK(tok.decode({}) == "");
}

TEST_CASE("tokenizing is fast enough for the data loader") {
  const auto pv = shared_vocab(kPubmed);
  if (!pv) return;
  const BertTokenizer tok(load_shared_vocab(*pv));
  const std::string caption =
      "Left MLO view: irregular spiculated mass at 2:00 o'clock, 4 cm from the nipple, measuring 1.8 x 1.2 cm, with "
      "associated fine pleomorphic calcifications; heterogeneously dense breasts (ACR C). BI-RADS 5.";
  const auto t0 = std::chrono::steady_clock::now();
  size_t total = 0;
  for (int i = 0; i < 2000; ++i) total += tok.encode(caption).input_ids.size();
  const double us = std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - t0).count() / 2000;
  std::cout << "encode of a " << caption.size() << "-byte caption: " << us << " us\n";
  CHECK(total == 200000);
  CHECK(us < 2000);  // generous: a debug build on a busy machine
}

}  // namespace test_tokenizer
