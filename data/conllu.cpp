#include "tapegrad/data/conllu.h"

#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <stdexcept>
#include <utility>

#include "tapegrad/data/tokenizer.h"

namespace tg::data {
namespace {

constexpr size_t kColumns = 10;
constexpr const char* kColumnNames = "ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC";

// A field quoted for a message: control bytes escaped, cut after 40 bytes (on a UTF-8 boundary).
std::string quoted(std::string_view s) {
  std::string out = "'";
  size_t i = 0;
  for (; i < s.size() && out.size() < 41; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7F) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  if (i < s.size()) {
    while (i < s.size() && (static_cast<unsigned char>(s[i]) & 0xC0) == 0x80) out += s[i++];
    out += "...";
  }
  return out + "'";
}

// A positive decimal below 10^9 (no sign, no leading zero).
bool parse_index(std::string_view s, long& out) {
  if (s.empty() || s.size() > 9 || s[0] == '0') return false;
  if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  std::from_chars(s.data(), s.data() + s.size(), out);
  return true;
}

std::vector<std::string_view> split_tabs(std::string_view line) {
  std::vector<std::string_view> f;
  for (size_t b = 0;;) {
    const size_t e = line.find('\t', b);
    f.push_back(line.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b));
    if (e == std::string_view::npos) return f;
    b = e + 1;
  }
}

class Reader {
 public:
  Reader(std::string_view name, const ReadOptions& opts, ReadReport& rep) : name_(name), opts_(opts), rep_(rep) {}

  void line(size_t lineno, std::string_view text) {
    lineno_ = lineno;
    if (text.empty()) return end_sentence();
    if (!is_valid_utf8(text)) {
      const size_t pos = first_invalid_utf8(text);
      return bad(fmt::format("invalid UTF-8 (byte 0x{:02x} at column {}; expected UTF-8 text)",
                             static_cast<unsigned char>(text[pos]), pos + 1));
    }
    if (text[0] == '#') {
      if (!cur_.words.empty() || last_id_ > 0)
        bad("a comment line inside a sentence (comments go before a sentence's first word line)");
      return;
    }
    if (text.find_first_not_of(" \t") == std::string_view::npos)
      return bad("a line of only spaces or tabs (a sentence ends with an empty line)");
    const std::vector<std::string_view> f = split_tabs(text);
    if (f.size() != kColumns)
      return bad(fmt::format("expected {} tab-separated columns ({}), got {}", kColumns, kColumnNames, f.size()));
    word_line(f);
  }

  void finish() { end_sentence(); }
  std::vector<ConlluSentence> take() { return std::move(out_); }

 private:
  void word_line(const std::vector<std::string_view>& f) {
    const std::string_view id = f[0];
    long a = 0, b = 0;
    if (const size_t dash = id.find('-'); dash != std::string_view::npos) {  // multi-word token a-b
      if (!parse_index(id.substr(0, dash), a) || !parse_index(id.substr(dash + 1), b) || b <= a)
        return bad(fmt::format("bad multi-word token ID {} (expected N-M with integers 1 <= N < M)", quoted(id)));
      if (a != last_id_ + 1)
        return bad(fmt::format("multi-word token {} does not start at the next word ID {}", quoted(id), last_id_ + 1));
      range_begin_ = a;
      range_end_ = b;
      return;
    }
    if (const size_t dot = id.find('.'); dot != std::string_view::npos) {  // empty node a.b
      const std::string_view head = id.substr(0, dot);
      if (!(head == "0" || parse_index(head, a)) || !parse_index(id.substr(dot + 1), b))
        return bad(fmt::format("bad empty-node ID {} (expected N.M with integers N >= 0, M >= 1)", quoted(id)));
      if (head != "0" && a != last_id_)
        return bad(fmt::format("empty node {} does not follow word {}", quoted(id), head));
      return;
    }
    if (!parse_index(id, a))
      return bad(fmt::format("bad ID {} (expected a word ID 1, 2, ..., a range N-M or an empty node N.M)", quoted(id)));
    if (a != last_id_ + 1)
      return bad(fmt::format("word ID {} out of order (expected {})", a, last_id_ + 1));
    last_id_ = a;
    if (f[1].empty()) return bad(fmt::format("word {}: FORM (column 2) is empty", a));
    if (f[3].empty() || f[3] == "_")
      return bad(fmt::format("word {} ({}): UPOS (column 4) is {} (expected a tag such as NOUN)", a, quoted(f[1]),
                             f[3].empty() ? "empty" : "'_'"));
    if (f[3].find(' ') != std::string_view::npos)
      return bad(fmt::format("word {}: UPOS {} contains a space", a, quoted(f[3])));
    if (cur_.words.empty()) cur_.line = lineno_;
    cur_.words.push_back(ConlluWord{std::string(f[1]), std::string(f[2]), std::string(f[3]), std::string(f[4])});
  }

  void end_sentence() {
    if (range_end_ > last_id_)
      bad(fmt::format("the sentence ends inside multi-word token {}-{} (words {} to {} are missing)", range_begin_,
                      range_end_, last_id_ + 1, range_end_));
    if (!broken_ && !cur_.words.empty()) out_.push_back(std::move(cur_));
    cur_ = ConlluSentence{};
    last_id_ = range_begin_ = range_end_ = 0;
    broken_ = false;
  }

  void bad(const std::string& what) {
    std::string msg = fmt::format("{}:{}: {}", name_, lineno_, what);
    if (!opts_.skip_bad_lines) throw std::runtime_error(msg);
    ++rep_.skipped;
    if (rep_.first_errors.size() < kMaxReportedErrors) rep_.first_errors.push_back(std::move(msg));
    broken_ = true;  // the rest of this sentence is read for its own errors, then dropped
  }

  std::string_view name_;
  const ReadOptions& opts_;
  ReadReport& rep_;
  size_t lineno_ = 0;
  long last_id_ = 0, range_begin_ = 0, range_end_ = 0;  // the last multi-word token's range
  bool broken_ = false;
  ConlluSentence cur_;
  std::vector<ConlluSentence> out_;
};

}  // namespace

std::vector<ConlluSentence> read_conllu(std::istream& in, std::string_view name, const ReadOptions& opts,
                                        ReadReport* report) {
  ReadReport local;
  ReadReport& rep = report ? *report : local;
  rep = ReadReport{};
  Reader reader(name, opts, rep);
  std::string line;
  for (size_t lineno = 1; std::getline(in, line); ++lineno) {
    if (lineno == 1 && line.starts_with("\xEF\xBB\xBF")) line.erase(0, 3);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    reader.line(lineno, line);
  }
  if (in.bad()) throw std::runtime_error(fmt::format("{}: read error", name));
  reader.finish();
  std::vector<ConlluSentence> out = reader.take();
  rep.rows = out.size();
  return out;
}

std::vector<ConlluSentence> read_conllu(const std::filesystem::path& path, const ReadOptions& opts,
                                        ReadReport* report) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw std::runtime_error(fmt::format("{}: is a folder (expected a CoNLL-U file)", path.string()));
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
  return read_conllu(in, path.string(), opts, report);
}

}  // namespace tg::data
