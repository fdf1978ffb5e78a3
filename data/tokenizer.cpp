#include "tapegrad/data/tokenizer.h"

#include <cstdint>

namespace tg::data {
namespace {

unsigned char lower(unsigned char c) {
  return (c >= 'A' && c <= 'Z') ? static_cast<unsigned char>(c + ('a' - 'A')) : c;
}

bool is_word_char(unsigned char c) {  // [a-z0-9] after lower-casing
  c = lower(c);
  return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

bool is_letter(unsigned char c) {  // [a-z] after lower-casing
  c = lower(c);
  return c >= 'a' && c <= 'z';
}

bool in(unsigned char c, unsigned char lo, unsigned char hi) { return c >= lo && c <= hi; }

struct Decoded {
  size_t len;     // bytes consumed, always >= 1
  char32_t cp;    // U+FFFD when !valid
  bool valid;
};

// Decodes one code point at s[i]. On ill-formed input it consumes the maximal
// subpart (Unicode ch. 3, "U+FFFD substitution of maximal subparts") so that
// replacement counts match Python's and browsers' decoders.
Decoded decode(std::string_view s, size_t i) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  if (b0 < 0x80) return {1, b0, true};
  size_t need;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range for the second byte
  char32_t cp;
  if (in(b0, 0xC2, 0xDF)) { need = 1; cp = b0 & 0x1F; }
  else if (b0 == 0xE0) { need = 2; lo = 0xA0; cp = b0 & 0x0F; }      // no overlongs
  else if (b0 == 0xED) { need = 2; hi = 0x9F; cp = b0 & 0x0F; }      // no surrogates
  else if (in(b0, 0xE1, 0xEF)) { need = 2; cp = b0 & 0x0F; }
  else if (b0 == 0xF0) { need = 3; lo = 0x90; cp = b0 & 0x07; }     // no overlongs
  else if (b0 == 0xF4) { need = 3; hi = 0x8F; cp = b0 & 0x07; }     // <= U+10FFFF
  else if (in(b0, 0xF1, 0xF3)) { need = 3; cp = b0 & 0x07; }
  else return {1, 0xFFFD, false};  // 80..C1, F5..FF can never start a character
  size_t k = 1;
  for (; k <= need; ++k) {
    if (i + k >= s.size()) break;
    const auto b = static_cast<unsigned char>(s[i + k]);
    if (k == 1 ? !in(b, lo, hi) : !in(b, 0x80, 0xBF)) break;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (k <= need) return {k, 0xFFFD, false};
  return {need + 1, cp, true};
}

// Python's str.isspace() set, which is what `\s` means in a Unicode regex.
bool is_space(char32_t cp) {
  if (cp <= 0x7F) return (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20);
  return cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
         cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

size_t word_run_end(std::string_view s, size_t i) {
  while (i < s.size() && is_word_char(static_cast<unsigned char>(s[i]))) ++i;
  return i;
}

std::string lowered(std::string_view piece) {
  std::string out(piece);
  for (char& c : out) c = static_cast<char>(lower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::vector<std::string> tokenize(std::string_view text) {
  std::vector<std::string> out;
  const size_t n = text.size();
  size_t i = 0;
  auto at = [&](size_t k) { return static_cast<unsigned char>(text[k]); };
  while (i < n) {
    const unsigned char c = at(i);
    if (is_word_char(c)) {
      // Greedy scan is exact here: each repetition needs separator + >=1 word
      // char, so the regex never gains from backtracking.
      size_t j = word_run_end(text, i);
      while (j + 1 < n && (at(j) == '\'' || at(j) == '-') && is_word_char(at(j + 1)))
        j = word_run_end(text, j + 1);
      out.push_back(lowered(text.substr(i, j - i)));
      i = j;
    } else if (c == '\'' && i + 1 < n && is_letter(at(i + 1))) {
      size_t j = i + 1;
      while (j < n && is_letter(at(j))) ++j;
      out.push_back(lowered(text.substr(i, j - i)));
      i = j;
    } else {
      const Decoded d = decode(text, i);
      if (!d.valid) out.emplace_back(kReplacementChar);
      else if (!is_space(d.cp)) out.emplace_back(text.substr(i, d.len));
      i += d.len;
    }
  }
  return out;
}

size_t first_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<unsigned char>(s[i]) < 0x80) { ++i; continue; }
    const Decoded d = decode(s, i);
    if (!d.valid) return i;
    i += d.len;
  }
  return s.size();
}

bool is_valid_utf8(std::string_view s) { return first_invalid_utf8(s) == s.size(); }

}  // namespace tg::data
