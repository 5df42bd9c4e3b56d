#pragma once
// Unicode for the BERT tokenizer, with the semantics of CPython's str and
// unicodedata (what HuggingFace's Python BertTokenizer runs on), on utf8proc's
// tables.
//
// Text is UTF-8 at the API and UTF-32 (std::u32string, one code point per
// element, never a surrogate) inside. Invalid UTF-8 decodes like Python's
// bytes.decode("utf-8", "replace"): each maximal ill-formed subpart becomes one
// U+FFFD (which the tokenizer then drops, as it drops every U+FFFD).
//
// Unicode version: utf8proc's (15.0 for utf8proc 2.8). CPython 3.11 uses 14.0;
// the two disagree only on code points first assigned after 14.0, which Python
// 3.11 sees as unassigned (category Cn, so the tokenizer drops them) and
// utf8proc sees as letters, marks, symbols. tests/text/test_unicode.cpp checks
// every code point against the Python data in tests/fixtures/tokenizer.

#if !__has_include(<utf8proc.h>)
#error "mamclip/text needs utf8proc (Debian: libutf8proc-dev); link the mamclip::text CMake target"
#endif
#include <utf8proc.h>

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "mamclip/core/error.hpp"

namespace mamclip::text::unicode {

inline constexpr char32_t kReplacement = 0xFFFD;

// ---- UTF-8

// Appends the UTF-8 bytes of a Unicode scalar value.
inline void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out += static_cast<char>(c);
  } else if (c < 0x800) {
    out += static_cast<char>(0xC0 | (c >> 6));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else if (c < 0x10000) {
    out += static_cast<char>(0xE0 | (c >> 12));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (c >> 18));
    out += static_cast<char>(0x80 | ((c >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((c >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (c & 0x3F));
  }
}

inline std::string to_utf8(std::u32string_view s) {
  std::string out;
  out.reserve(s.size());
  for (char32_t c : s) append_utf8(out, c);
  return out;
}

// Decodes one code point at bytes[i]; advances i past it. An ill-formed
// sequence yields U+FFFD and advances past its maximal subpart (Unicode 15
// section 3.9, "U+FFFD substitution of maximal subparts", as CPython does).
inline char32_t next_code_point(std::string_view bytes, size_t& i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(bytes[k]); };
  const unsigned char b0 = b(i);
  if (b0 < 0x80) {
    ++i;
    return b0;
  }
  int need;
  char32_t cp;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1, cp = b0 & 0x1F;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2, cp = b0 & 0x0F;
    if (b0 == 0xE0) lo = 0xA0;  // no overlong forms
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3, cp = b0 & 0x07;
    if (b0 == 0xF0) lo = 0x90;  // no overlong forms
    if (b0 == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    ++i;
    return kReplacement;
  }
  size_t k = i + 1;
  for (int n = 0; n < need; ++n, ++k) {
    const unsigned char lo_n = n == 0 ? lo : 0x80, hi_n = n == 0 ? hi : 0xBF;
    if (k >= bytes.size() || b(k) < lo_n || b(k) > hi_n) {
      i = k;  // the maximal subpart: the lead byte and the continuation bytes that fitted
      return kReplacement;
    }
    cp = (cp << 6) | (b(k) & 0x3F);
  }
  i = k;
  return cp;
}

inline std::u32string from_utf8(std::string_view bytes) {
  std::u32string out;
  out.reserve(bytes.size());
  for (size_t i = 0; i < bytes.size();) out += next_code_point(bytes, i);
  return out;
}

// ---- character properties

inline utf8proc_category_t category(char32_t c) { return utf8proc_category(static_cast<utf8proc_int32_t>(c)); }
// The two-letter general category ("Lu", "Mn", "Cn", ...), as unicodedata.category().
inline std::string_view category_name(char32_t c) {
  return utf8proc_category_string(static_cast<utf8proc_int32_t>(c));
}
inline bool is_category_c(char32_t c) {  // Cc Cf Cs Co Cn
  switch (category(c)) {
    case UTF8PROC_CATEGORY_CC: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_CS:
    case UTF8PROC_CATEGORY_CO: case UTF8PROC_CATEGORY_CN:
      return true;
    default:
      return false;
  }
}
inline bool is_category_p(char32_t c) {  // Pc Pd Ps Pe Pi Pf Po
  switch (category(c)) {
    case UTF8PROC_CATEGORY_PC: case UTF8PROC_CATEGORY_PD: case UTF8PROC_CATEGORY_PS: case UTF8PROC_CATEGORY_PE:
    case UTF8PROC_CATEGORY_PI: case UTF8PROC_CATEGORY_PF: case UTF8PROC_CATEGORY_PO:
      return true;
    default:
      return false;
  }
}

// str.isspace(): category Zs, or bidirectional class WS, B or S. This set is
// what str.split() and str.strip() split on, which is wider than BERT's own
// whitespace test (U+001C..U+001F, U+0085, U+2028, U+2029 are in it).
inline bool is_python_space(char32_t c) {
  if (c <= 0x20) return c == 0x20 || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F);
  if (c < 0x85) return false;
  return c == 0x85 || c == 0xA0 || c == 0x1680 || (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 ||
         c == 0x202F || c == 0x205F || c == 0x3000;
}

// BERT's _is_whitespace: space, \t, \n, \r, or category Zs.
inline bool is_bert_whitespace(char32_t c) {
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r') return true;
  if (c < 0x80) return false;
  return category(c) == UTF8PROC_CATEGORY_ZS;
}
// BERT's _is_control: any category C* except \t, \n, \r (which are whitespace).
inline bool is_bert_control(char32_t c) {
  if (c == '\t' || c == '\n' || c == '\r') return false;
  if (c < 0x80) return c < 0x20 || c == 0x7F;
  return is_category_c(c);
}
// BERT's _is_punctuation: every non-alphanumeric printable ASCII character
// (so $ ^ ` + < = > | ~ count, though Unicode calls them symbols), or P*.
inline bool is_bert_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  if (c < 0x80) return false;
  return is_category_p(c);
}
// BERT's _is_chinese_char: the CJK Unified Ideographs blocks it lists (not
// Hangul, Hiragana or Katakana, which are written with spaces).
inline bool is_cjk_ideograph(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// ---- case

// The Unicode Cased property (Lowercase, Uppercase or Lt), which Python's
// final-sigma rule reads. Letters with a case mapping are cased; the ranges
// list the Other_Lowercase / Other_Uppercase characters that have none
// (ordinal indicators, modifier letters, squared/circled Latin capitals).
inline bool is_cased(char32_t c) {
  switch (category(c)) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT:
      return true;
    default:
      break;
  }
  const auto ci = static_cast<utf8proc_int32_t>(c);
  if (utf8proc_tolower(ci) != ci || utf8proc_toupper(ci) != ci) return true;
  static constexpr std::array<std::pair<char32_t, char32_t>, 25> kOther{{
      {0xAA, 0xAA}, {0xBA, 0xBA}, {0x2B0, 0x2B8}, {0x2C0, 0x2C1}, {0x2E0, 0x2E4}, {0x37A, 0x37A},
      {0x1D2C, 0x1D6A}, {0x1D78, 0x1D78}, {0x1D9B, 0x1DBF}, {0x2071, 0x2071}, {0x207F, 0x207F},
      {0x2090, 0x209C}, {0x2C7C, 0x2C7D}, {0xA69C, 0xA69D}, {0xA770, 0xA770}, {0xA7F8, 0xA7F9},
      {0xAB5C, 0xAB5F}, {0x10780, 0x10780}, {0x10783, 0x10785}, {0x10787, 0x107B0}, {0x107B2, 0x107BA},
      {0x1E030, 0x1E06D}, {0x1F130, 0x1F149}, {0x1F150, 0x1F169}, {0x1F170, 0x1F189}}};
  for (const auto& [a, b] : kOther)
    if (c >= a && c <= b) return true;
  return false;
}

// Case_Ignorable: Mn, Me, Cf, Lm, Sk, or Word_Break MidLetter / MidNumLet /
// Single_Quote.
inline bool is_case_ignorable(char32_t c) {
  switch (c) {
    case 0x27: case 0x2E: case 0x3A: case 0xB7: case 0x387: case 0x55F: case 0x5F4: case 0x2018: case 0x2019:
    case 0x2024: case 0x2027: case 0xFE13: case 0xFE52: case 0xFE55: case 0xFF07: case 0xFF0E: case 0xFF1A:
      return true;
    default:
      break;
  }
  switch (category(c)) {
    case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_ME: case UTF8PROC_CATEGORY_CF: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_SK:
      return true;
    default:
      return false;
  }
}

// Appends str.lower() of a single character: the full lower-case mapping
// without context. U+0130 (I with dot above) is the one character whose full
// mapping is longer than its simple one (i + U+0307); capital sigma maps to
// σ here, its final form needs context (see lower()).
inline void append_lower(std::u32string& out, char32_t c) {
  if (c < 0x80) {
    out += (c >= 'A' && c <= 'Z') ? c + 32 : c;
  } else if (c == 0x130) {
    out += U'i';
    out += char32_t{0x307};
  } else {
    out += static_cast<char32_t>(utf8proc_tolower(static_cast<utf8proc_int32_t>(c)));
  }
}

// str.lower(): the full mapping, with the Final_Sigma rule: Σ becomes ς when a
// cased letter precedes it and none follows (case-ignorable characters in
// between are skipped both ways), as CPython's handle_capital_sigma.
inline std::u32string lower(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    const char32_t c = s[i];
    if (c != 0x3A3) {
      append_lower(out, c);
      continue;
    }
    size_t j = i;
    while (j > 0 && is_case_ignorable(s[j - 1])) --j;
    bool final_sigma = j > 0 && is_cased(s[j - 1]);
    if (final_sigma) {
      size_t k = i + 1;
      while (k < s.size() && is_case_ignorable(s[k])) ++k;
      final_sigma = k == s.size() || !is_cased(s[k]);
    }
    out += final_sigma ? char32_t{0x3C2} : char32_t{0x3C3};
  }
  return out;
}

// ---- normalization

namespace detail {
inline int combining_class(char32_t c) {
  return utf8proc_get_property(static_cast<utf8proc_int32_t>(c))->combining_class;
}
}  // namespace detail

// Canonical decomposition (NFD): full recursive decomposition, Hangul
// syllables included, then the canonical ordering of combining marks (a
// stable sort of each run of non-zero combining classes).
inline std::u32string nfd(std::u32string_view s) {
  std::u32string out;
  out.reserve(s.size() + s.size() / 2);
  utf8proc_int32_t buf[32];
  for (char32_t c : s) {
    if (c < 0xC0) {  // nothing below U+00C0 decomposes
      out += c;
      continue;
    }
    const utf8proc_ssize_t n =
        utf8proc_decompose_char(static_cast<utf8proc_int32_t>(c), buf, 32, UTF8PROC_DECOMPOSE, nullptr);
    MAMCLIP_CHECK(n > 0 && n <= 32, value_error, "nfd: utf8proc could not decompose U+", std::hex,
                  static_cast<uint32_t>(c), " (", utf8proc_errmsg(n < 0 ? n : 0), ")");
    for (utf8proc_ssize_t k = 0; k < n; ++k) out += static_cast<char32_t>(buf[k]);
  }
  // Canonical ordering: insertion sort inside runs of non-starters is stable and
  // the runs are short (a few marks).
  for (size_t i = 1; i < out.size(); ++i) {
    const int cc = detail::combining_class(out[i]);
    if (cc == 0) continue;
    size_t j = i;
    const char32_t c = out[i];
    while (j > 0) {
      const int prev = detail::combining_class(out[j - 1]);
      if (prev == 0 || prev <= cc) break;
      out[j] = out[j - 1];
      --j;
    }
    out[j] = c;
  }
  return out;
}

// Canonical composition (NFC) = NFD, then utf8proc's canonical composition
// (composition exclusions and blocking respected).
inline std::u32string nfc(std::u32string_view s) {
  bool ascii = true;
  for (char32_t c : s) ascii = ascii && c < 0x80;
  if (ascii) return std::u32string(s);  // ASCII is NFC
  std::u32string d = nfd(s);
  static_assert(sizeof(char32_t) == sizeof(utf8proc_int32_t));
  const utf8proc_ssize_t n = utf8proc_normalize_utf32(reinterpret_cast<utf8proc_int32_t*>(d.data()),
                                                      static_cast<utf8proc_ssize_t>(d.size()),
                                                      static_cast<utf8proc_option_t>(UTF8PROC_COMPOSE | UTF8PROC_STABLE));
  MAMCLIP_CHECK(n >= 0, value_error, "nfc: utf8proc failed (", utf8proc_errmsg(n), ")");
  d.resize(static_cast<size_t>(n));
  return d;
}

// BERT's _run_strip_accents: NFD, then drop the non-spacing marks (Mn).
inline std::u32string strip_accents(std::u32string_view s) {
  std::u32string d = nfd(s);
  std::u32string out;
  out.reserve(d.size());
  for (char32_t c : d)
    if (c < 0x300 || category(c) != UTF8PROC_CATEGORY_MN) out += c;
  return out;
}

}  // namespace mamclip::text::unicode
