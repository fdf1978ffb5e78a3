#pragma once
// Text -> tokens for the classification pipeline. Pure functions, no state.

#include <string>
#include <string_view>
#include <vector>

namespace tg::data {

// Splits `text` exactly as the regex
//   [a-z0-9]+(?:['\-][a-z0-9]+)*|'[a-z]+|[^\sa-z0-9]
// would (leftmost-first alternation) on the ASCII-lower-cased text decoded as
// UTF-8, with `\s` meaning Unicode whitespace (Python `str.isspace`). So:
//   "don't" -> {"don't"}, "does n't" -> {"does", "n't"}, "it 's" -> {"it", "'s"},
//   "well-made" -> {"well-made"}, "a--b" -> {"a", "-", "-", "b"}.
// Any other non-space code point is its own token (its original bytes); each
// invalid UTF-8 sequence (maximal ill-formed subpart, as Python/WHATWG decoders
// count them) becomes one U+FFFD token. Never throws on any input bytes except
// std::bad_alloc.
std::vector<std::string> tokenize(std::string_view text);

// Strict UTF-8: rejects overlong forms, surrogates (U+D800..DFFF), code points
// above U+10FFFF and truncated sequences.
bool is_valid_utf8(std::string_view s);

// Byte offset of the first ill-formed byte, or s.size() if `s` is valid.
// Readers use it to point error messages at the right line.
size_t first_invalid_utf8(std::string_view s);

// The UTF-8 encoding of U+FFFD, emitted for invalid input bytes.
inline constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

}  // namespace tg::data
