#include "tapegrad/data/vocab.h"

#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <unistd.h>

#include "tapegrad/data/tokenizer.h"

namespace tg::data {
namespace {

// Empty string means "fine"; otherwise the reason the word cannot be stored.
std::string word_problem(std::string_view w) {
  if (w.empty()) return "empty word";
  if (w.find('\r') != std::string_view::npos) return "word contains a carriage return (CR)";
  if (w.find('\0') != std::string_view::npos) return "word contains a NUL byte";
  if (w.find('\n') != std::string_view::npos) return "word contains a newline";
  if (!is_valid_utf8(w)) return "word is not valid UTF-8";
  return {};
}

std::string errno_text() { return std::strerror(errno); }

}  // namespace

Vocab::Vocab() {
  add(std::string(kPad));
  add(std::string(kUnk));
}

void Vocab::add(std::string word) {
  index_.emplace(word, static_cast<int64_t>(words_.size()));
  words_.push_back(std::move(word));
}

Vocab Vocab::build(const std::vector<std::vector<std::string>>& docs, int64_t min_freq,
                   int64_t max_size) {
  if (min_freq < 0) throw std::invalid_argument(fmt::format("Vocab::build: min_freq must be >= 0, got {}", min_freq));
  if (max_size < 0 || max_size == 1)
    throw std::invalid_argument(fmt::format(
        "Vocab::build: max_size must be 0 (unlimited) or >= 2 (it counts <pad> and <unk>), got {}",
        max_size));
  std::unordered_map<std::string, int64_t, Hash, std::equal_to<>> counts;
  for (const auto& doc : docs)
    for (const auto& tok : doc) {
      auto it = counts.find(std::string_view(tok));
      if (it != counts.end()) ++it->second;
      else counts.emplace(tok, 1);
    }
  std::vector<std::pair<const std::string*, int64_t>> ranked;
  ranked.reserve(counts.size());
  for (const auto& [w, c] : counts)
    if (c >= min_freq && w != kPad && w != kUnk && word_problem(w).empty()) ranked.emplace_back(&w, c);
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : *a.first < *b.first;
  });
  Vocab v;
  size_t keep = ranked.size();
  if (max_size > 0) keep = std::min(keep, static_cast<size_t>(max_size) - 2);
  v.words_.reserve(keep + 2);
  for (size_t i = 0; i < keep; ++i) v.add(*ranked[i].first);
  return v;
}

int64_t Vocab::id(std::string_view word) const {
  auto it = index_.find(word);
  return it == index_.end() ? kUnkId : it->second;
}

const std::string& Vocab::word(int64_t id) const {
  if (id < 0 || id >= size())
    throw std::out_of_range(fmt::format("Vocab::word: id {} out of range for vocab of size {}", id, size()));
  return words_[static_cast<size_t>(id)];
}

std::vector<int64_t> Vocab::encode(const std::vector<std::string>& tokens) const {
  std::vector<int64_t> ids;
  ids.reserve(tokens.size());
  for (const auto& t : tokens) ids.push_back(id(t));
  return ids;
}

Vocab Vocab::from_lines(const std::vector<std::string>& lines, std::string_view source) {
  auto fail = [&](size_t line, const std::string& what) {
    return std::runtime_error(fmt::format("{}:{}: {}", source, line, what));
  };
  if (lines.empty()) throw fail(1, fmt::format("vocab is empty; expected '{}' on line 1", kPad));
  Vocab v;
  v.words_.reserve(lines.size());
  for (size_t i = 0; i < lines.size(); ++i) {
    const std::string& w = lines[i];
    // Checked before the special tokens so a CRLF file gets the real reason
    // instead of "expected <pad>, got <pad>".
    if (std::string p = word_problem(w); !p.empty()) throw fail(i + 1, p);
    if (i < 2) {
      const std::string_view want = i == 0 ? kPad : kUnk;
      if (w != want) throw fail(i + 1, fmt::format("expected '{}' on line {}, got '{}'", want, i + 1, w));
      continue;
    }
    if (auto it = v.index_.find(std::string_view(w)); it != v.index_.end())
      throw fail(i + 1, fmt::format("duplicate word '{}' (first on line {})", w, it->second + 1));
    v.add(w);
  }
  if (lines.size() < 2) throw fail(2, fmt::format("expected '{}' on line 2, vocab ends after line 1", kUnk));
  return v;
}

Vocab Vocab::load(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("Vocab::load: cannot open {}: {}", path.string(), errno_text()));
  std::vector<std::string> lines;
  std::string line;
  // getline drops the final '\n', so "a\nb\n" and "a\nb" both give {a, b};
  // an empty line anywhere else becomes an "empty word" error.
  while (std::getline(in, line)) lines.push_back(line);
  if (in.bad()) throw std::runtime_error(fmt::format("Vocab::load: read error on {}", path.string()));
  return from_lines(lines, path.string());
}

void Vocab::save(const std::filesystem::path& path) const {
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error(fmt::format("Vocab::save: cannot create {}: {}", tmp.string(), errno_text()));
  bool ok = true;
  for (const auto& w : words_) {
    if (std::fwrite(w.data(), 1, w.size(), f) != w.size() || std::fputc('\n', f) == EOF) {
      ok = false;
      break;
    }
  }
  // fsync before rename: otherwise after a power loss the rename can be on
  // disk while the data is not, leaving an empty vocab under the final name.
  ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  const std::string err = ok ? std::string() : errno_text();
  ok = (std::fclose(f) == 0) && ok;
  if (!ok) {
    std::remove(tmp.c_str());
    throw std::runtime_error(fmt::format("Vocab::save: writing {} failed: {}", tmp.string(), err.empty() ? errno_text() : err));
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw std::runtime_error(fmt::format("Vocab::save: renaming {} to {} failed: {}", tmp.string(), path.string(), ec.message()));
  }
}

}  // namespace tg::data
