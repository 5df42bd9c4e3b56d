// Vocab: vocab.txt parsing as HuggingFace's load_vocab (Python universal
// newlines), the real vocabularies, and the error messages.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "text/text_fixtures.hpp"

namespace test_vocab {
using namespace mamclip;
using namespace mamclip::test;
using text::Vocab;

namespace {
const std::string kSpecials = "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n";

// A file in the build's temporary folder, removed at the end of the test.
struct TempFile {
  std::string path;
  explicit TempFile(const std::string& name, const std::string& content) {
    path = (std::filesystem::temp_directory_path() / ("mamclip_test_vocab_" + name)).string();
    std::ofstream(path, std::ios::binary) << content;
  }
  ~TempFile() { std::remove(path.c_str()); }
};
}  // namespace

TEST_CASE("vocab.txt: one token per line, id = line index; \\n, \\r\\n and lone \\r all end a line") {
  const Vocab v = Vocab::from_text(kSpecials + "breast\r\nmass\rcalc\n##ific\n\nlast");
  CHECK(v.size() == 11);
  CHECK(v.find("breast") == 5);
  CHECK(v.find("mass") == 6);
  CHECK(v.find("calc") == 7);
  CHECK(v.find("##ific") == 8);
  CHECK(v.find("") == 9);  // an empty line is a token, as in HuggingFace
  CHECK(v.find("last") == 10);  // no newline at the end: still a token
  CHECK(!v.find("breast\r"));
  CHECK(v.token(6) == "mass");
  CHECK(v.pad_id() == 0);
  CHECK(v.cls_id() == 2);
  CHECK(v.mask_id() == 4);
  CHECK(v.id_or_unk("nope") == 1);
  CHECK(v.is_special_id(3));
  CHECK(!v.is_special_id(5));
  // A trailing newline adds no empty token; a BOM stays in the first token, as Python's utf-8 codec keeps it.
  CHECK(Vocab::from_text(kSpecials + "x\n").size() == 6);
  const Vocab bom = Vocab::from_text("\xEF\xBB\xBFx\n" + kSpecials);
  CHECK(bom.find("\xEF\xBB\xBFx") == 0);
  CHECK(bom.max_token_chars() == 6);  // [MASK]
}

TEST_CASE("the real vocabularies load with their documented ids") {
  const auto pv = shared_vocab(kPubmed), bv = shared_vocab(kBert);
  if (!pv || !bv) return;
  const Vocab p = Vocab::load(*pv);
  CHECK(p.size() == 30522);
  CHECK(p.pad_id() == 0);
  CHECK(p.unk_id() == 1);
  CHECK(p.cls_id() == 2);
  CHECK(p.sep_id() == 3);
  CHECK(p.mask_id() == 4);
  CHECK(p.find("breast") == 3739);
  CHECK(p.find("mammography") == 19721);
  CHECK(p.find("calcification") == 14640);
  CHECK(p.token(30521) == "zns");
  const Vocab b = Vocab::load(*bv);
  CHECK(b.size() == 30522);
  CHECK(b.unk_id() == 100);
  CHECK(b.cls_id() == 101);
  CHECK(b.sep_id() == 102);
  CHECK(b.mask_id() == 103);
  CHECK(b.find("the") == 1996);
  CHECK(b.find("##s") == 2015);
  CHECK(b.token(30521) == "##\xEF\xBD\x9E");  // "##～"
}

TEST_CASE("vocab errors name the file, the token, the lines and the missing special tokens") {
  MAMCLIP_REQUIRE_THROWS_WITH(Vocab::load("/nonexistent/dir/vocab.txt"), io_error,
                              "vocab: cannot open \"/nonexistent/dir/vocab.txt\": no such file");
  const std::string dir = std::filesystem::temp_directory_path().string();
  MAMCLIP_REQUIRE_THROWS_WITH(Vocab::load(dir), io_error,
                              "vocab: \"" + dir + "\" is a directory; expected the vocab.txt file inside a model directory");

  const TempFile dup("dup.txt", kSpecials + "breast\nmass\nbreast\n");
  MAMCLIP_REQUIRE_THROWS_WITH(Vocab::load(dup.path), value_error,
                              "vocab: duplicate token \"breast\" at lines 6 and 8 of " + dup.path +
                                  " (ids 5 and 7); every token must appear once");

  const TempFile missing("missing.txt", "[PAD]\n[UNK]\n[SEP]\nbreast\n");
  MAMCLIP_REQUIRE_THROWS_WITH(Vocab::load(missing.path), value_error,
                              "vocab: " + missing.path +
                                  " (4 tokens) lacks the special tokens [CLS], [MASK]; a BERT vocabulary needs [PAD], "
                                  "[UNK], [CLS], [SEP] and [MASK]");
  MAMCLIP_REQUIRE_THROWS_WITH(Vocab::from_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n"), value_error,
                              "vocab: <memory> (4 tokens) lacks the special token [MASK]; a BERT vocabulary needs");
  MAMCLIP_REQUIRE_THROWS_WITH(Vocab::from_text(""), value_error,
                              "(0 tokens) lacks the special tokens [PAD], [UNK], [CLS], [SEP], [MASK]");

  MAMCLIP_REQUIRE_THROWS_WITH(Vocab::from_text(kSpecials + "ok\nbad\xFFx\n"), value_error,
                              "vocab: line 7 of <memory> is not valid UTF-8 (byte 0xff at byte 4 of the line)");
  // U+FFFD written out in UTF-8 is a valid token.
  CHECK(Vocab::from_text(kSpecials + "\xEF\xBF\xBD\n").size() == 6);

  const Vocab v = Vocab::from_text(kSpecials);
  MAMCLIP_REQUIRE_THROWS_WITH(v.token(5), index_error, "vocab: id 5 is out of range for <memory> (5 tokens)");
  MAMCLIP_REQUIRE_THROWS_WITH(v.token(-1), index_error, "vocab: id -1 is out of range");

  // Renamed special tokens are checked by their names.
  text::SpecialTokens sp;
  sp.cls = "<s>";
  MAMCLIP_REQUIRE_THROWS_WITH(Vocab::from_text(kSpecials, "custom", sp), value_error,
                              "vocab: custom (5 tokens) lacks the special token <s>; a BERT vocabulary needs [PAD], "
                              "[UNK], <s>, [SEP] and [MASK]");
}

}  // namespace test_vocab
