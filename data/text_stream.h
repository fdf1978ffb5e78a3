#pragma once
// Plain text -> one token stream -> truncated-BPTT chunks, for language modelling.
//
// Tokens. Character level: one token per Unicode code point of UTF-8 text (so "é" is one token,
// not two bytes). Invalid UTF-8 is an error naming the byte offset, line and column; no byte is
// guessed at or dropped, so what the model sees is exactly the file. Word level: tokens are runs
// of non-whitespace, and every line end ("\n") becomes the token "<eos>" (as in PyTorch's
// word_language_model); other whitespace separates words only.
//
// Batching (PyTorch's batchify + get_batch): the stream is cut into B contiguous streams of
// L = n / B tokens (the last n % B tokens are dropped); chunk i holds, for every stream, tokens
// [i*T, i*T + t) as input and the same positions shifted by one as targets (t = T except for a
// shorter last chunk). Stream b's chunk i+1 continues exactly where chunk i ended, which is what
// lets a model carry its hidden state from one chunk to the next.
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <vector>

namespace tg::data {

enum class TokenLevel { Char, Word };
TokenLevel parse_token_level(std::string_view s);  // "char" | "word"; invalid_argument otherwise
const char* token_level_name(TokenLevel level);

// The whole file. Throws std::runtime_error naming the path when it is missing, not a regular
// file, unreadable, or empty.
std::string read_text_file(const std::filesystem::path& path);

// Splits text into tokens (see above). `source` names the text in error messages
// ("input.txt: invalid UTF-8 at byte 1234 (line 5, column 7): ...").
std::vector<std::string> tokenize_text(std::string_view text, TokenLevel level, std::string_view source);

// Token <-> id. Id 0 is always "<unk>": tokens of the validation text (or a prompt) not seen in
// training map to it.
class TextVocab {
 public:
  static constexpr int64_t kUnkId = 0;
  static constexpr std::string_view kUnk = "<unk>";

  // Tokens of `tokens` (the training split only) seen at least `min_freq` times. Characters are
  // ordered by code point; words most frequent first, ties in byte order, so the same text
  // always yields the same ids. `max_size` caps the size including <unk> (0 = no cap; 1 is
  // invalid). Throws std::invalid_argument on bad limits.
  static TextVocab build(const std::vector<std::string>& tokens, TokenLevel level, int64_t max_size = 0,
                         int64_t min_freq = 1);
  // From the list tokens() gave (stored with a checkpoint): entry 0 must be "<unk>", no entry
  // empty or repeated. Throws std::invalid_argument naming `source`.
  static TextVocab from_tokens(const std::vector<std::string>& tokens, std::string_view source);

  int64_t size() const { return static_cast<int64_t>(tokens_.size()); }
  int64_t id(std::string_view token) const;      // kUnkId when absent
  const std::string& token(int64_t id) const;    // std::out_of_range naming the id
  const std::vector<std::string>& tokens() const { return tokens_; }
  std::vector<int64_t> encode(const std::vector<std::string>& tokens) const;
  // Text of the ids: characters concatenated; words joined by spaces, "<eos>" as a line end.
  std::string decode(const std::vector<int64_t>& ids, TokenLevel level) const;

 private:
  std::vector<std::string> tokens_;
  std::map<std::string, int64_t, std::less<>> index_;
};

struct StreamSplit {
  std::vector<int64_t> train, valid;
};
// The first (1 - valid_fraction) of the ids train, the rest validation; valid_fraction in (0, 1).
// Throws std::invalid_argument when either part would be empty.
StreamSplit split_stream(const std::vector<int64_t>& ids, double valid_fraction);

// One chunk, time-major: inputs[t * batch + b] is stream b's token at position t of the chunk.
struct StreamChunk {
  std::vector<int64_t> inputs, targets;
  int64_t steps = 0, batch = 0;
};

class BpttBatcher {
 public:
  // Throws std::invalid_argument (naming `what`, the sizes and the largest values that fit) when
  // batch or steps is < 1 or the streams are too short for one chunk of `steps` tokens.
  BpttBatcher(const std::vector<int64_t>& ids, int64_t batch, int64_t steps, std::string_view what = "the text");
  int64_t num_chunks() const { return (stream_len_ - 1 + steps_ - 1) / steps_; }
  int64_t stream_length() const { return stream_len_; }
  int64_t batch() const { return batch_; }
  int64_t tokens_per_pass() const { return (stream_len_ - 1) * batch_; }  // targets over all chunks
  StreamChunk chunk(int64_t i) const;  // std::out_of_range unless 0 <= i < num_chunks()

 private:
  std::vector<int64_t> ids_;
  int64_t batch_, steps_, stream_len_;
};

}  // namespace tg::data
