// MAM-CLIP's MLM masking: the string semantics against the reference
// algorithm run with HuggingFace's tokenizer (fixture, decisions injected),
// then the seeded draws: proportions, determinism, label layout.
#include <iostream>
#include <set>

#include "text/text_fixtures.hpp"

namespace test_mlm_masking {
using namespace mamclip;
using namespace mamclip::test;
using text::BertTokenizer;
using text::MlmAction;
using text::MlmDecision;
using text::MlmMasker;

namespace {

std::vector<MlmDecision> decisions_from(const nlohmann::json& j, const text::Vocab& v) {
  std::vector<MlmDecision> out;
  for (const auto& d : j) {
    MlmDecision m;
    if (d.is_array()) {
      m.action = MlmAction::random;
      m.random_id = *v.find(d[1].get<std::string>());
    } else if (d == "mask") {
      m.action = MlmAction::mask;
    } else if (d == "unchanged") {
      m.action = MlmAction::unchanged;
    }
    out.push_back(m);
  }
  return out;
}

// Captions in the style MAM-CLIP trains on, varied by a counter.
std::vector<std::string> captions(size_t n) {
  const char* shapes[] = {"oval", "round", "irregular"};
  const char* margins[] = {"circumscribed", "spiculated", "indistinct", "obscured"};
  const char* sides[] = {"left", "right"};
  std::vector<std::string> out;
  for (size_t i = 0; i < n; ++i)
    out.push_back(std::string(sides[i % 2]) + " breast, " + shapes[i % 3] + " " + margins[i % 4] + " mass at " +
                  std::to_string(1 + i % 12) + ":00 o'clock measuring " + std::to_string(i % 50) +
                  " mm with heterogeneously dense tissue, BI-RADS " + std::to_string(i % 6));
  return out;
}

}  // namespace

TEST_CASE("masked input and label strings and ids equal the reference masker's for the same decisions") {
  const auto pv = shared_vocab(kPubmed);
  if (!pv) return;
  const auto vocab = load_shared_vocab(*pv);
  const auto extras = load_json(tokenizer_fixture("extras.json"));
  size_t n = 0;
  for (const auto& m : extras["mlm"]) {
    text::MlmOptions opt;
    opt.max_length = m["max_length"].get<int64_t>();
    const MlmMasker masker(BertTokenizer(vocab), opt);
    const auto caption = m["caption"].get<std::string>();
    INFO("caption \"" << escaped(caption) << "\"");
    const auto masked = masker.apply(caption, decisions_from(m["decisions"], *vocab));
    CHECK(masked.input == m["input"].get<std::string>());
    CHECK(masked.label == m["label"].get<std::string>());
    const auto enc = masker.encode_masked(masked);
    CHECK(enc.input_ids == m["input_ids"].get<std::vector<int64_t>>());
    CHECK(enc.attention_mask == m["attention_mask"].get<std::vector<int64_t>>());
    CHECK(enc.labels == m["labels"].get<std::vector<int64_t>>());
    ++n;
  }
  CHECK(n >= 30);
}

TEST_CASE("apply: [MASK] per piece, [PAD] per piece in the label, one random token as a whole word") {
  // "mammography" -> mammo ##graphy (2 pieces); "mass" -> 1 piece; "x" -> [UNK] (1 piece).
  const auto v = tiny_vocab({"mammo", "##graphy", "mass", "##ive", "left"});
  const MlmMasker masker{BertTokenizer(v)};
  const std::string cap = "left mammography  mass\tx";
  CHECK(MlmMasker::words(cap) == std::vector<std::string_view>{"left", "mammography", "mass", "x"});
  const std::vector<MlmDecision> d{{MlmAction::keep, -1},
                                   {MlmAction::mask, -1},
                                   {MlmAction::random, *v->find("##ive")},
                                   {MlmAction::unchanged, -1}};
  const auto m = masker.apply(cap, d);
  CHECK(m.input == "left [MASK] [MASK] ##ive x");
  CHECK(m.label == "[PAD] mammography mass x");
  const auto keep_all = masker.apply(cap, std::vector<MlmDecision>(4));
  CHECK(keep_all.input == "left mammography mass x");
  CHECK(keep_all.label == "[PAD] [PAD] [PAD] [PAD] [PAD]");

  MAMCLIP_REQUIRE_THROWS_WITH(masker.apply(cap, std::vector<MlmDecision>(3)), value_error,
                              "MlmMasker::apply: the caption has 4 words but 3 decisions were given");
  MAMCLIP_REQUIRE_THROWS_WITH(masker.apply("a", {{MlmAction::random, 99}}), value_error,
                              "MlmMasker::apply: random_id 99 of word 0 is outside the vocabulary (10 tokens)");
  text::MlmOptions bad;
  bad.ratio = 1.5;
  MAMCLIP_REQUIRE_THROWS_WITH(MlmMasker(BertTokenizer(v), bad), value_error,
                              "MlmMasker: ratio must be in [0, 1], got 1.5");
  bad.ratio = 0.15;
  bad.mask_fraction = 0.95;
  MAMCLIP_REQUIRE_THROWS_WITH(MlmMasker(BertTokenizer(v), bad), value_error,
                              "MlmMasker: mask_fraction 0.95 and random_fraction 0.1 must be non-negative and sum to at "
                              "most 1");
}

TEST_CASE("seeded masking: 15 % of words chosen, split 80/10/10, random tokens never special") {
  const auto pv = shared_vocab(kPubmed);
  if (!pv) return;
  const MlmMasker masker(BertTokenizer(load_shared_vocab(*pv)));
  Generator gen(1234);
  size_t words = 0, chosen = 0, masked = 0, random = 0, unchanged = 0;
  std::set<int64_t> random_ids;
  for (const auto& c : captions(3000)) {
    for (const auto& d : masker.draw(c, gen)) {
      ++words;
      if (d.action == MlmAction::keep) continue;
      ++chosen;
      masked += d.action == MlmAction::mask;
      unchanged += d.action == MlmAction::unchanged;
      if (d.action == MlmAction::random) {
        ++random;
        random_ids.insert(d.random_id);
        CHECK(!masker.tokenizer().vocab().is_special_id(d.random_id));
      }
    }
  }
  const double f_chosen = double(chosen) / double(words);
  const double f_mask = double(masked) / double(chosen), f_random = double(random) / double(chosen),
               f_unchanged = double(unchanged) / double(chosen);
  std::cout << "mlm: " << words << " words, chosen " << f_chosen << ", of those mask " << f_mask << " random "
            << f_random << " unchanged " << f_unchanged << "\n";
  // Binomial standard deviations: 0.0016 for the chosen share (51k words), 0.0046 and 0.0035 for the
  // splits (7.5k chosen words); the bounds are 4-6 of them, and the seed is fixed.
  CHECK(std::abs(f_chosen - 0.15) < 0.006);
  CHECK(std::abs(f_mask - 0.8) < 0.025);
  CHECK(std::abs(f_random - 0.1) < 0.02);
  CHECK(std::abs(f_unchanged - 0.1) < 0.02);
  // Random tokens spread over the vocabulary: nearly all distinct, from both ends of it.
  CHECK(random_ids.size() > random * 9 / 10);
  CHECK(*random_ids.begin() < 3000);
  CHECK(*random_ids.rbegin() > 27000);
}

TEST_CASE("seeded masking is deterministic: same seed, same batch; another seed, another batch") {
  const auto pv = shared_vocab(kPubmed);
  if (!pv) return;
  const MlmMasker masker(BertTokenizer(load_shared_vocab(*pv)));
  const auto caps = captions(64);
  Generator g1(7), g2(7), g3(8);
  const auto a = masker.encode_batch(caps, g1);
  const auto b = masker.encode_batch(caps, g2);
  const auto c = masker.encode_batch(caps, g3);
  CHECK(a.input_ids.shape() == Shape{64, 100});
  CHECK(a.labels.shape() == Shape{64, 100});
  CHECK(a.input_ids.to_vector() == b.input_ids.to_vector());
  CHECK(a.labels.to_vector() == b.labels.to_vector());
  CHECK(a.attention_mask.to_vector() == b.attention_mask.to_vector());
  CHECK(a.labels.to_vector() != c.labels.to_vector());
  // One stream per caption: the generator moved by 64, and caption i's masking
  // does not depend on the captions before it.
  CHECK(g1.offset() == 64);
  Generator g4(7);
  g4.next_offset();
  const auto second = masker.encode(caps[1], g4);
  const auto av = a.labels.to_vector();
  CHECK(std::vector<int64_t>(av.begin() + 100, av.begin() + 200) == second.labels);
}

TEST_CASE("labels: [CLS] at 0, [SEP] after the last token, [PAD] elsewhere except the chosen words' pieces") {
  const auto pv = shared_vocab(kPubmed);
  if (!pv) return;
  const BertTokenizer tok(load_shared_vocab(*pv));
  const MlmMasker masker(tok);
  const auto& v = tok.vocab();
  Generator gen(99);
  size_t checked_masked = 0;
  for (const auto& cap : captions(200)) {
    const auto m = masker.mask(cap, gen);
    const auto e = masker.encode_masked(m);
    INFO("caption \"" << cap << "\" input \"" << m.input << "\" label \"" << m.label << "\"");
    REQUIRE(e.labels.size() == 100);
    CHECK(e.labels[0] == 2);  // [CLS] is a target in MAM-CLIP's loss
    CHECK(e.input_ids[0] == 2);
    const auto label_tokens = tok.token_ids(m.label);
    CHECK(e.labels[label_tokens.size() + 1] == v.sep_id());
    for (size_t i = label_tokens.size() + 2; i < 100; ++i) CHECK(e.labels[i] == v.pad_id());
    // When only [MASK] branches fire, input and labels stay aligned: every
    // [MASK] position carries the original piece, every other position [PAD].
    bool only_mask = true;
    for (const auto& d : m.decisions) only_mask = only_mask && (d.action == MlmAction::keep || d.action == MlmAction::mask);
    if (!only_mask) continue;
    const auto plain = tok.encode(cap);
    CHECK(e.input_ids.size() == plain.input_ids.size());
    for (size_t i = 1; i <= label_tokens.size(); ++i) {
      if (e.input_ids[i] == v.mask_id()) {
        CHECK(e.labels[i] == plain.input_ids[i]);
        ++checked_masked;
      } else {
        CHECK(e.labels[i] == v.pad_id());
        CHECK(e.input_ids[i] == plain.input_ids[i]);
      }
    }
  }
  CHECK(checked_masked > 100);
}

TEST_CASE("ratio 0 (MAM-CLIP's validation): input is the caption, labels are [CLS] [PAD]... [SEP]") {
  const auto v = tiny_vocab({"mass", "left"});
  text::MlmOptions opt;
  opt.ratio = 0;
  opt.max_length = 8;
  const MlmMasker masker(BertTokenizer(v), opt);
  Generator gen(1);
  const auto b = masker.encode_batch({"left mass", "mass"}, gen);
  CHECK(b.input_ids.to_vector() == std::vector<int64_t>{2, 6, 5, 3, 0, 0, 0, 0, /**/ 2, 5, 3, 0, 0, 0, 0, 0});
  CHECK(b.labels.to_vector() == std::vector<int64_t>{2, 0, 0, 3, 0, 0, 0, 0, /**/ 2, 0, 3, 0, 0, 0, 0, 0});
  CHECK(b.attention_mask.to_vector() == std::vector<int64_t>{1, 1, 1, 1, 0, 0, 0, 0, /**/ 1, 1, 1, 0, 0, 0, 0, 0});
}

}  // namespace test_mlm_masking
