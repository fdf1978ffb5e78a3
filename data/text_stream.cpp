#include "tapegrad/data/text_stream.h"

#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <iterator>
#include <stdexcept>
#include <system_error>

namespace tg::data {
namespace {

constexpr std::string_view kEos = "<eos>";

// Length of the UTF-8 sequence starting at s[i], or 0 when it is not a valid one (overlong
// forms, surrogates and code points above U+10FFFF are invalid, as in RFC 3629).
size_t utf8_length(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = b(i);
  if (c < 0x80) return 1;
  size_t n = 0;
  unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) n = 2;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
  else return 0;
  if (i + n > s.size()) return 0;
  if (b(i + 1) < lo || b(i + 1) > hi) return 0;
  for (size_t k = 2; k < n; ++k)
    if (b(i + k) < 0x80 || b(i + k) > 0xBF) return 0;
  return n;
}

[[noreturn]] void invalid_utf8(std::string_view text, size_t at, std::string_view source) {
  int64_t line = 1, column = 1;
  for (size_t k = 0; k < at; ++k) {
    if (text[k] == '\n') ++line, column = 1;
    else if ((static_cast<unsigned char>(text[k]) & 0xC0) != 0x80) ++column;
  }
  throw std::invalid_argument(fmt::format(
      "{}: invalid UTF-8 at byte {} (line {}, column {}): byte 0x{:02X} does not start a valid sequence. The "
      "text must be UTF-8 (character tokens are code points); convert it first, e.g. iconv -f latin1 -t utf-8",
      source, at, line, column, static_cast<unsigned>(static_cast<unsigned char>(text[at]))));
}

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\v' || c == '\f'; }

}  // namespace

TokenLevel parse_token_level(std::string_view s) {
  if (s == "char") return TokenLevel::Char;
  if (s == "word") return TokenLevel::Word;
  throw std::invalid_argument(fmt::format("unknown token level '{}' (expected char or word)", s));
}

const char* token_level_name(TokenLevel level) { return level == TokenLevel::Char ? "char" : "word"; }

std::string read_text_file(const std::filesystem::path& path) {
  std::error_code ec;
  const auto st = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(st)) throw std::runtime_error(fmt::format("{}: no such file", path.string()));
  if (!std::filesystem::is_regular_file(st))
    throw std::runtime_error(fmt::format("{}: not a regular file", path.string()));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("{}: cannot open: {}", path.string(), std::strerror(errno)));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw std::runtime_error(fmt::format("{}: read error: {}", path.string(), std::strerror(errno)));
  if (text.empty()) throw std::runtime_error(fmt::format("{}: the file is empty (0 bytes): nothing to train on", path.string()));
  return text;
}

std::vector<std::string> tokenize_text(std::string_view text, TokenLevel level, std::string_view source) {
  std::vector<std::string> out;
  if (level == TokenLevel::Char) {
    out.reserve(text.size());
    for (size_t i = 0; i < text.size();) {
      const size_t n = utf8_length(text, i);
      if (n == 0) invalid_utf8(text, i, source);
      out.emplace_back(text.substr(i, n));
      i += n;
    }
    return out;
  }
  for (size_t i = 0; i < text.size();) {
    if (text[i] == '\n') {
      out.emplace_back(kEos);
      ++i;
    } else if (is_space(text[i])) {
      ++i;
    } else {
      size_t j = i;
      while (j < text.size() && text[j] != '\n' && !is_space(text[j])) {
        const size_t n = utf8_length(text, j);
        if (n == 0) invalid_utf8(text, j, source);
        j += n;
      }
      out.emplace_back(text.substr(i, j - i));
      i = j;
    }
  }
  return out;
}

TextVocab TextVocab::build(const std::vector<std::string>& tokens, TokenLevel level, int64_t max_size,
                           int64_t min_freq) {
  if (max_size < 0 || max_size == 1)
    throw std::invalid_argument(fmt::format("vocabulary cap {} is invalid: 0 (no cap) or >= 2 (it includes <unk>)",
                                            max_size));
  if (min_freq < 1) throw std::invalid_argument(fmt::format("minimum frequency {} is invalid: must be >= 1", min_freq));
  std::map<std::string, int64_t, std::less<>> counts;
  for (const auto& t : tokens)
    if (t != kUnk) ++counts[t];
  std::vector<std::pair<std::string, int64_t>> kept;
  for (auto& [t, c] : counts)
    if (c >= min_freq) kept.emplace_back(t, c);
  // Most frequent first (stable: ties stay in byte order) so a cap keeps the commonest; characters
  // then go back to byte order, which for UTF-8 is code point order.
  std::stable_sort(kept.begin(), kept.end(), [](const auto& a, const auto& b) { return a.second > b.second; });
  if (max_size > 0 && static_cast<int64_t>(kept.size()) > max_size - 1) kept.resize(static_cast<size_t>(max_size - 1));
  if (level == TokenLevel::Char)
    std::sort(kept.begin(), kept.end());
  std::vector<std::string> list{std::string(kUnk)};
  for (auto& [t, c] : kept) list.push_back(t);
  return from_tokens(list, "TextVocab::build");
}

TextVocab TextVocab::from_tokens(const std::vector<std::string>& tokens, std::string_view source) {
  if (tokens.empty() || tokens[0] != kUnk)
    throw std::invalid_argument(fmt::format("{}: a vocabulary starts with \"<unk>\" (id 0)", source));
  TextVocab v;
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i].empty()) throw std::invalid_argument(fmt::format("{}: entry {} is empty", source, i));
    if (!v.index_.emplace(tokens[i], static_cast<int64_t>(i)).second)
      throw std::invalid_argument(fmt::format("{}: entry {} repeats an earlier token", source, i));
  }
  v.tokens_ = tokens;
  return v;
}

int64_t TextVocab::id(std::string_view token) const {
  const auto it = index_.find(token);
  return it == index_.end() ? kUnkId : it->second;
}

const std::string& TextVocab::token(int64_t id) const {
  if (id < 0 || id >= size())
    throw std::out_of_range(fmt::format("TextVocab: id {} is outside [0, {})", id, size()));
  return tokens_[static_cast<size_t>(id)];
}

std::vector<int64_t> TextVocab::encode(const std::vector<std::string>& tokens) const {
  std::vector<int64_t> ids;
  ids.reserve(tokens.size());
  for (const auto& t : tokens) ids.push_back(id(t));
  return ids;
}

std::string TextVocab::decode(const std::vector<int64_t>& ids, TokenLevel level) const {
  std::string out;
  bool line_start = true;
  for (const int64_t i : ids) {
    const std::string& t = token(i);
    if (level == TokenLevel::Char) {
      out += t;
    } else if (t == kEos) {
      out += '\n';
      line_start = true;
    } else {
      if (!line_start) out += ' ';
      out += t;
      line_start = false;
    }
  }
  return out;
}

StreamSplit split_stream(const std::vector<int64_t>& ids, double valid_fraction) {
  if (!(valid_fraction > 0 && valid_fraction < 1))
    throw std::invalid_argument(fmt::format("validation fraction {} must be in (0, 1)", valid_fraction));
  const auto n = static_cast<int64_t>(ids.size());
  const auto n_valid = static_cast<int64_t>(static_cast<double>(n) * valid_fraction);
  if (n_valid < 1 || n - n_valid < 1)
    throw std::invalid_argument(fmt::format("{} token(s) cannot be split into a training part and a validation part "
                                            "of fraction {}: give a longer text",
                                            n, valid_fraction));
  StreamSplit s;
  s.train.assign(ids.begin(), ids.end() - n_valid);
  s.valid.assign(ids.end() - n_valid, ids.end());
  return s;
}

BpttBatcher::BpttBatcher(const std::vector<int64_t>& ids, int64_t batch, int64_t steps, std::string_view what)
    : batch_(batch), steps_(steps), stream_len_(0) {
  if (batch < 1 || steps < 1)
    throw std::invalid_argument(fmt::format("{}: batch (streams) and sequence length must be >= 1, got {} and {}",
                                            what, batch, steps));
  const auto n = static_cast<int64_t>(ids.size());
  stream_len_ = n / batch;
  // A chunk of `steps` inputs needs steps + 1 tokens per stream (targets are shifted by one).
  if (stream_len_ < steps + 1)
    throw std::invalid_argument(fmt::format(
        "{} holds {} tokens: {} streams of {} tokens each are too short for one chunk of {} steps (it needs {} "
        "tokens per stream). Use a sequence length of at most {} or at most {} streams, or a longer text",
        what, n, batch, stream_len_, steps, steps + 1, std::max<int64_t>(stream_len_ - 1, 0),
        std::max<int64_t>(n / (steps + 1), 0)));
  ids_.assign(ids.begin(), ids.begin() + stream_len_ * batch);
}

StreamChunk BpttBatcher::chunk(int64_t i) const {
  if (i < 0 || i >= num_chunks())
    throw std::out_of_range(fmt::format("BpttBatcher: chunk {} is outside [0, {})", i, num_chunks()));
  const int64_t start = i * steps_;
  StreamChunk c;
  c.steps = std::min(steps_, stream_len_ - 1 - start);
  c.batch = batch_;
  c.inputs.resize(static_cast<size_t>(c.steps * batch_));
  c.targets.resize(c.inputs.size());
  for (int64_t t = 0; t < c.steps; ++t)
    for (int64_t b = 0; b < batch_; ++b) {
      const auto k = static_cast<size_t>(b * stream_len_ + start + t);
      c.inputs[static_cast<size_t>(t * batch_ + b)] = ids_[k];
      c.targets[static_cast<size_t>(t * batch_ + b)] = ids_[k + 1];
    }
  return c;
}

}  // namespace tg::data
