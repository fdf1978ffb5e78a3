#pragma once
// Word <-> id mapping. Ids are dense: 0 is padding, 1 is unknown.

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace tg::data {

class Vocab {
 public:
  static constexpr int64_t kPadId = 0;
  static constexpr int64_t kUnkId = 1;
  static constexpr std::string_view kPad = "<pad>";
  static constexpr std::string_view kUnk = "<unk>";

  // A vocab holding only <pad> and <unk>.
  Vocab();

  // Words seen at least `min_freq` times, most frequent first, ties in byte
  // order, so the same corpus always yields the same ids. `max_size` caps the
  // total size *including* <pad> and <unk> (0 = no cap; 1 is invalid).
  // Tokens that could not survive save()/load() (empty, containing '\n', '\r'
  // or NUL, or not valid UTF-8) and literal "<pad>"/"<unk>" are not added;
  // they encode as <unk>. Throws std::invalid_argument on bad limits.
  static Vocab build(const std::vector<std::vector<std::string>>& docs,
                     int64_t min_freq = 1, int64_t max_size = 0);

  int64_t id(std::string_view word) const;  // kUnkId if absent
  const std::string& word(int64_t id) const;  // std::out_of_range if bad id
  int64_t size() const { return static_cast<int64_t>(words_.size()); }
  std::vector<int64_t> encode(const std::vector<std::string>& tokens) const;

  // One word per line, '\n'-terminated. Written to `path.tmp`, fsync'ed and
  // renamed, so a crash never leaves a truncated vocab under `path`.
  // Throws std::runtime_error naming the path on I/O failure.
  void save(const std::filesystem::path& path) const;
  // Throws std::runtime_error "file:line: problem" on any malformed content.
  static Vocab load(const std::filesystem::path& path);

  // Same content as the file, one entry per word, for embedding in other
  // formats. from_lines validates like load(); `source` names the origin in
  // error messages.
  std::vector<std::string> to_lines() const { return words_; }
  static Vocab from_lines(const std::vector<std::string>& lines,
                          std::string_view source = "<lines>");

  friend bool operator==(const Vocab& a, const Vocab& b) { return a.words_ == b.words_; }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  void add(std::string word);

  std::vector<std::string> words_;
  std::unordered_map<std::string, int64_t, Hash, std::equal_to<>> index_;
};

}  // namespace tg::data
