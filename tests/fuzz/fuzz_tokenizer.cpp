// libFuzzer target: tg::data::tokenize, is_valid_utf8, first_invalid_utf8.
//
// Properties checked against an independent reimplementation in this file:
//  - the validators agree with a plain strict UTF-8 decoder (no overlongs, surrogates,
//    > U+10FFFF, truncations);
//  - tokenize never throws, returns no empty token, and every token is valid UTF-8;
//  - for valid input, concatenating the tokens gives the ASCII-lower-cased input with its
//    Unicode whitespace (Python str.isspace) removed: nothing lost, nothing invented.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "tapegrad/data/tokenizer.h"
#include "tests/fuzz/common.h"

namespace {

// Independent strict decoder: length of the valid sequence at s[i], 0 if ill-formed.
size_t valid_seq(std::string_view s, size_t i, char32_t& cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  size_t len;
  char32_t min;
  if (b0 < 0x80) { cp = b0; return 1; }
  if ((b0 & 0xE0) == 0xC0) { len = 2; cp = b0 & 0x1F; min = 0x80; }
  else if ((b0 & 0xF0) == 0xE0) { len = 3; cp = b0 & 0x0F; min = 0x800; }
  else if ((b0 & 0xF8) == 0xF0) { len = 4; cp = b0 & 0x07; min = 0x10000; }
  else return 0;
  if (i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

size_t ref_first_invalid(std::string_view s) {
  size_t i = 0;
  char32_t cp;
  while (i < s.size()) {
    const size_t n = valid_seq(s, i, cp);
    if (n == 0) return i;
    i += n;
  }
  return s.size();
}

bool ref_is_space(char32_t cp) {  // Python's str.isspace()
  switch (cp) {
    case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x1C: case 0x1D: case 0x1E:
    case 0x1F: case 0x20: case 0x85: case 0xA0: case 0x1680: case 0x2028: case 0x2029:
    case 0x202F: case 0x205F: case 0x3000:
      return true;
    default:
      return cp >= 0x2000 && cp <= 0x200A;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const size_t bad = tg::data::first_invalid_utf8(text);
  FUZZ_CHECK(bad == ref_first_invalid(text));
  FUZZ_CHECK(tg::data::is_valid_utf8(text) == (bad == size));

  const std::vector<std::string> tokens = tg::data::tokenize(text);
  std::string joined;
  for (const std::string& t : tokens) {
    FUZZ_CHECK(!t.empty());
    FUZZ_CHECK(tg::data::is_valid_utf8(t));
    joined += t;
  }
  if (bad == size) {
    std::string expect;
    size_t i = 0;
    char32_t cp;
    while (i < size) {
      const size_t n = valid_seq(text, i, cp);
      if (!ref_is_space(cp)) {
        for (size_t k = 0; k < n; ++k) {
          char c = text[i + k];
          expect += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
        }
      }
      i += n;
    }
    FUZZ_CHECK(joined == expect);
  }
  return 0;
}
