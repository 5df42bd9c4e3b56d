// The Unicode layer against CPython's unicodedata and str on every code point
// (tests/fixtures/tokenizer/unicode.json), and UTF-8 decoding against
// bytes.decode("utf-8", "replace").
#include <iostream>
#include <map>

#include "text/text_fixtures.hpp"

namespace test_unicode {
using namespace mamclip;
using namespace mamclip::test;
namespace uc = mamclip::text::unicode;

namespace {

std::u32string u32(const nlohmann::json& row, size_t from) {
  std::u32string s;
  for (size_t i = from; i < row.size(); ++i) s += static_cast<char32_t>(row[i].get<uint32_t>());
  return s;
}

std::string hex_list(std::u32string_view s) {
  std::ostringstream os;
  for (size_t i = 0; i < s.size(); ++i) os << (i ? " " : "") << "U+" << std::hex << std::uppercase << uint32_t(s[i]);
  return os.str();
}

// Per-code-point flags from a list of inclusive [start, end] ranges.
std::vector<bool> from_runs(const nlohmann::json& runs) {
  std::vector<bool> v(0x110000, false);
  for (const auto& r : runs)
    for (uint32_t c = r[0].get<uint32_t>(); c <= r[1].get<uint32_t>(); ++c) v[c] = true;
  return v;
}

}  // namespace

TEST_CASE("UTF-8 decoding replaces each maximal ill-formed subpart by one U+FFFD, as Python does") {
  const std::vector<std::pair<std::string, std::u32string>> cases{
      {"abc\xff" "def", U"abc\uFFFDdef"},
      {"\xc3\x28", U"\uFFFD("},
      {"\xe2\x82", U"\uFFFD"},
      {"\xe2\x82\xac", U"\u20AC"},
      {"\xed\xa0\x80", U"\uFFFD\uFFFD\uFFFD"},  // a surrogate: the lead byte alone is the subpart
      {"\xf0\x9f\x98", U"\uFFFD"},
      {"\xf4\x90\x80\x80", U"\uFFFD\uFFFD\uFFFD\uFFFD"},  // above U+10FFFF
      {"\xc0\xaf", U"\uFFFD\uFFFD"},                      // overlong
      {"\xe0\x80\xaf", U"\uFFFD\uFFFD\uFFFD"},
      {"\x80\x80", U"\uFFFD\uFFFD"},
      {"\xf0\x90\x80", U"\uFFFD"},
      {"end \xc3", U"end \uFFFD"},
      {"\xf0\x9f\x98\x80", U"\U0001F600"},
      {"\xe0\xa0\x80", U"\u0800"},
      {std::string("a\0b", 3), std::u32string(U"a\0b", 3)},
  };
  for (const auto& [bytes, expected] : cases) {
    INFO("bytes " << escaped(bytes));
    CHECK(uc::from_utf8(bytes) == expected);
  }
  for (char32_t c : {char32_t{0}, char32_t{0x7F}, char32_t{0x80}, char32_t{0x7FF}, char32_t{0x800}, char32_t{0xFFFF},
                     char32_t{0x10000}, char32_t{0x10FFFF}}) {
    const std::u32string s(1, c);
    CHECK(uc::from_utf8(uc::to_utf8(s)) == s);
  }
}

TEST_CASE("categories, str.lower(), NFD, NFC, isspace, Cased, Case_Ignorable equal CPython's on every code point") {
  const auto j = load_json(tokenizer_fixture("unicode.json"));
  std::vector<std::string> py_cat(0x110000);
  const auto& runs = j["categories"];
  for (size_t r = 0; r < runs.size(); ++r) {
    const uint32_t start = runs[r][0].get<uint32_t>();
    const uint32_t end = r + 1 < runs.size() ? runs[r + 1][0].get<uint32_t>() : 0x110000;
    for (uint32_t c = start; c < end; ++c) py_cat[c] = runs[r][1].get<std::string>();
  }
  std::map<uint32_t, std::u32string> lower, nfd, nfc;
  for (const auto& row : j["lower"]) lower[row[0].get<uint32_t>()] = u32(row, 1);
  for (const auto& row : j["nfd"]) nfd[row[0].get<uint32_t>()] = u32(row, 1);
  for (const auto& row : j["nfc"]) nfc[row[0].get<uint32_t>()] = u32(row, 1);
  std::vector<bool> space(0x110000, false);
  for (const auto& c : j["isspace"]) space[c.get<uint32_t>()] = true;
  const auto cased = from_runs(j["cased"]);
  const auto ignorable = from_runs(j["case_ignorable_not_cased"]);

  size_t checked = 0, newer = 0, failures = 0;
  const auto fail = [&](uint32_t c, const std::string& what) {
    if (++failures <= 30) UNSCOPED_INFO("U+" << std::hex << std::uppercase << c << ": " << what);
  };
  for (uint32_t c = 0; c < 0x110000; ++c) {
    if (c >= 0xD800 && c < 0xE000) continue;
    const char32_t ch = c;
    const std::string ours(uc::category_name(ch));
    if (py_cat[c] == "Cn" && ours != "Cn") {
      ++newer;  // assigned after the Unicode version of the Python that wrote the fixture
      continue;
    }
    ++checked;
    if (ours != py_cat[c]) fail(c, "category " + ours + ", Python " + py_cat[c]);

    std::u32string lo;
    uc::append_lower(lo, ch);
    const auto lit = lower.find(c);
    const std::u32string lo_expected = lit == lower.end() ? std::u32string(1, ch) : lit->second;
    if (lo != lo_expected) fail(c, "lower " + hex_list(lo) + ", Python " + hex_list(lo_expected));

    std::u32string d_expected;
    if (c >= 0xAC00 && c <= 0xD7A3) {  // Hangul syllable: L V (T), by the Unicode formula
      const uint32_t s = c - 0xAC00;
      d_expected += char32_t(0x1100 + s / 588);
      d_expected += char32_t(0x1161 + (s % 588) / 28);
      if (s % 28) d_expected += char32_t(0x11A7 + s % 28);
    } else {
      const auto it = nfd.find(c);
      d_expected = it == nfd.end() ? std::u32string(1, ch) : it->second;
    }
    const std::u32string d = uc::nfd(std::u32string(1, ch));
    if (d != d_expected) fail(c, "NFD " + hex_list(d) + ", Python " + hex_list(d_expected));

    const auto cit = nfc.find(c);
    const std::u32string c_expected = cit == nfc.end() ? std::u32string(1, ch) : cit->second;
    const std::u32string composed = uc::nfc(std::u32string(1, ch));
    if (composed != c_expected) fail(c, "NFC " + hex_list(composed) + ", Python " + hex_list(c_expected));

    if (uc::is_python_space(ch) != space[c]) fail(c, "isspace differs");
    if (uc::is_cased(ch) != cased[c]) fail(c, std::string("Cased: ours ") + (cased[c] ? "no" : "yes"));
    if (!cased[c] && uc::is_case_ignorable(ch) != ignorable[c])
      fail(c, std::string("Case_Ignorable: ours ") + (ignorable[c] ? "no" : "yes"));
  }
  std::cout << "unicode: " << checked << " code points checked against Python (Unicode "
            << j["unidata"].get<std::string>() << "), " << newer << " assigned only in utf8proc's Unicode "
            << utf8proc_unicode_version() << ", " << failures << " differences\n";
  CHECK(checked > 1000000);
  CHECK(failures == 0);
}

TEST_CASE("BERT's character classes") {
  // Punctuation: all non-alphanumeric printable ASCII, and Unicode P*; not symbols beyond ASCII.
  for (char32_t c : std::u32string(U"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u00A1\u00BF\u2014\u3001\uFF0C"))
    CHECK(uc::is_bert_punctuation(c));
  for (char32_t c : std::u32string(U"aZ09 \u00A9\u00B1\u20AC\u2192")) CHECK_FALSE(uc::is_bert_punctuation(c));
  // Control: C* except tab, newline, carriage return.
  for (char32_t c : std::u32string(U"\u0001\u001F\u007F\u0085\u200B\uFEFF\uE000\u0378")) CHECK(uc::is_bert_control(c));
  for (char32_t c : std::u32string(U"\t\n\r a")) CHECK_FALSE(uc::is_bert_control(c));
  // Whitespace: space, \t \n \r and Zs (not U+2028, which only Python's split sees).
  for (char32_t c : std::u32string(U" \t\n\r\u00A0\u3000\u2003")) CHECK(uc::is_bert_whitespace(c));
  CHECK_FALSE(uc::is_bert_whitespace(U'\u2028'));
  CHECK(uc::is_python_space(U'\u2028'));
  CHECK_FALSE(uc::is_python_space(U'\u200B'));
  // CJK: the listed ideograph blocks only.
  for (char32_t c : {char32_t{0x4E73}, char32_t{0x3400}, char32_t{0x20000}, char32_t{0xF900}, char32_t{0x2F800}})
    CHECK(uc::is_cjk_ideograph(c));
  for (char32_t c : {char32_t{0x3042}, char32_t{0x30AB}, char32_t{0xAC00}, char32_t{0x3000}, char32_t{0x2E80}})
    CHECK_FALSE(uc::is_cjk_ideograph(c));
}

TEST_CASE("str.lower() final sigma, strip_accents, and NFC reordering of combining marks") {
  CHECK(uc::lower(U"\u0391\u03A3") == U"\u03B1\u03C2");                // ΑΣ -> ας
  CHECK(uc::lower(U"\u03A3\u0391") == U"\u03C3\u03B1");                // ΣΑ -> σα
  CHECK(uc::lower(U"\u03A3") == U"\u03C3");                            // alone: not final
  CHECK(uc::lower(U"\u0391.\u03A3") == U"\u03B1.\u03C2");              // '.' is case-ignorable
  CHECK(uc::lower(U"\u0391\u03A3.\u0392") == U"\u03B1\u03C3.\u03B2");  // a cased letter follows
  CHECK(uc::lower(U"\u0130") == U"i\u0307");
  CHECK(uc::strip_accents(U"r\u00E9sum\u00E9 \u00C5 \u1E69") == U"resume A s");
  CHECK(uc::strip_accents(U"\u0301") == U"");
  // Canonical order: dot below (220) before dot above (230), whatever order they came in.
  CHECK(uc::nfd(U"a\u0307\u0323") == U"a\u0323\u0307");
  CHECK(uc::nfc(U"a\u0307\u0323") == U"\u1EA1\u0307");
  CHECK(uc::nfc(U"e\u0301") == U"\u00E9");
  CHECK(uc::nfc(U"\u212A") == U"K");  // Kelvin sign: a singleton decomposition
  CHECK(uc::nfc(U"\u1100\u1161\u11A8") == U"\uAC01");
}

}  // namespace test_unicode
