#include "tapegrad/data/dataset.h"

#include <fmt/core.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <limits>
#include <stdexcept>
#include <utility>

#include "tapegrad/data/tokenizer.h"

namespace fs = std::filesystem;

namespace tg::data {
namespace {

constexpr std::string_view kGlueHeader = "sentence\tlabel";
constexpr std::string_view kBom = "\xEF\xBB\xBF";

// Quoted, escaped and shortened copy of a bad line for error messages, so a
// stray tab or control byte is visible and a 10 MB line doesn't flood logs.
std::string preview(std::string_view s) {
  constexpr size_t kMax = 60;
  std::string out = "'";
  size_t i = 0;
  for (; i < s.size() && i < kMax; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\t') out += "<TAB>";
    else if (c < 0x20 || c == 0x7F) out += fmt::format("\\x{:02x}", c);
    else out += static_cast<char>(c);
  }
  if (i < s.size()) {
    // Don't leave half a UTF-8 character dangling before the ellipsis.
    while (!out.empty() && (static_cast<unsigned char>(out.back()) & 0xC0) == 0x80) out.pop_back();
    if (!out.empty() && static_cast<unsigned char>(out.back()) >= 0xC0) out.pop_back();
    out += "...";
  }
  return out + "'";
}

std::string_view strip_trailing_spaces(std::string_view s) {
  while (!s.empty() && s.back() == ' ') s.remove_suffix(1);
  return s;
}

// Non-negative decimal that fits an int; rejects signs, spaces, "", "1.0".
bool parse_label(std::string_view s, int& out) {
  if (s.empty() || s.size() > 10) return false;
  if (!std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  long long v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || v > std::numeric_limits<int>::max()) return false;
  out = static_cast<int>(v);
  return true;
}

// Returns an error description (empty = ok).
using RowParser = std::function<std::string(std::string_view line, Example& out)>;

std::string parse_glue_row(std::string_view line, Example& out, int max_label) {
  const auto tabs = std::count(line.begin(), line.end(), '\t');
  if (tabs != 1)
    return fmt::format("expected 2 tab-separated fields (sentence<TAB>label), got {}: {}", tabs + 1,
                       preview(line));
  const size_t tab = line.find('\t');
  const std::string_view label = line.substr(tab + 1);
  if (max_label == 1) {
    if (label != "0" && label != "1") return fmt::format("label must be 0 or 1, got {}", preview(label));
  } else if (!parse_label(label, out.label) || out.label > max_label) {
    return fmt::format("label must be an integer from 0 to {}, got {}", max_label, preview(label));
  }
  out.text = std::string(strip_trailing_spaces(line.substr(0, tab)));
  if (max_label == 1) out.label = label == "1" ? 1 : 0;
  return {};
}

std::string parse_label_text_row(std::string_view line, Example& out) {
  const auto tabs = std::count(line.begin(), line.end(), '\t');
  if (tabs != 1)
    return fmt::format("expected 2 tab-separated fields (label<TAB>text), got {}: {}", tabs + 1,
                       preview(line));
  const size_t tab = line.find('\t');
  if (!parse_label(line.substr(0, tab), out.label))
    return fmt::format("label must be a non-negative integer, got {}", preview(line.substr(0, tab)));
  out.text = std::string(strip_trailing_spaces(line.substr(tab + 1)));
  return {};
}

// Throws or records+counts a bad item, depending on options.
class Problems {
 public:
  Problems(const ReadOptions& opts, ReadReport& rep) : opts_(opts), rep_(rep) {}
  void bad(std::string msg) {
    if (!opts_.skip_bad_lines) throw std::runtime_error(std::move(msg));
    ++rep_.skipped;
    if (rep_.first_errors.size() < kMaxReportedErrors) rep_.first_errors.push_back(std::move(msg));
  }

 private:
  const ReadOptions& opts_;
  ReadReport& rep_;
};

std::string utf8_problem(std::string_view text) {
  const size_t pos = first_invalid_utf8(text);
  return fmt::format("invalid UTF-8 (byte 0x{:02x} at column {}; expected UTF-8 text)",
                     static_cast<unsigned char>(text[pos]), pos + 1);
}

std::vector<Example> read_rows(std::istream& in, std::string_view name, bool glue_header,
                               const RowParser& parse, const ReadOptions& opts, ReadReport* report) {
  ReadReport local;
  ReadReport& rep = report ? *report : local;
  rep = ReadReport{};
  Problems problems(opts, rep);
  std::vector<Example> out;
  std::string line;
  size_t lineno = 0;
  auto next_line = [&]() -> bool {
    if (!std::getline(in, line)) return false;
    ++lineno;
    if (lineno == 1 && line.starts_with(kBom)) line.erase(0, kBom.size());
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
  };
  if (glue_header) {
    // The header is never skippable: without it we can't be sure the columns
    // mean what we think they mean.
    if (!next_line())
      throw std::runtime_error(fmt::format("{}:1: missing header (expected 'sentence<TAB>label'), input is empty", name));
    if (line != kGlueHeader)
      throw std::runtime_error(fmt::format("{}:1: missing header (expected 'sentence<TAB>label'), got {}", name, preview(line)));
  }
  // Blank lines are fine only at the very end (editors add them), so they are
  // judged once we see whether anything follows.
  size_t first_blank = 0, blanks = 0;
  while (next_line()) {
    if (line.empty()) {
      if (blanks++ == 0) first_blank = lineno;
      continue;
    }
    for (size_t k = 0; k < blanks; ++k)
      problems.bad(fmt::format("{}:{}: empty line (expected a data row)", name, first_blank + k));
    blanks = 0;
    if (!is_valid_utf8(line)) {
      problems.bad(fmt::format("{}:{}: {}", name, lineno, utf8_problem(line)));
      continue;
    }
    Example ex;
    if (std::string err = parse(line, ex); !err.empty()) {
      problems.bad(fmt::format("{}:{}: {}", name, lineno, err));
      continue;
    }
    out.push_back(std::move(ex));
  }
  if (in.bad()) throw std::runtime_error(fmt::format("{}:{}: read error", name, lineno + 1));
  rep.rows = out.size();
  return out;
}

std::ifstream open_or_throw(const fs::path& path, std::string_view who) {
  // A directory opens fine on Linux and then reads as empty, which would be
  // reported as a confusing "missing header".
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw std::runtime_error(fmt::format("{}: '{}' is a directory, expected a file", who, path.string()));
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw std::runtime_error(fmt::format("{}: cannot open '{}': {}", who, path.string(), std::strerror(errno)));
  return in;
}

bool is_trailing_ws(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\n'; }

bool hidden(const fs::path& p) { return p.filename().string().starts_with('.'); }

}  // namespace

std::vector<Example> read_glue_tsv(std::istream& in, std::string_view name, const ReadOptions& opts,
                                   ReadReport* report) {
  const auto parse = [&](std::string_view line, Example& ex) { return parse_glue_row(line, ex, opts.max_label); };
  return read_rows(in, name, true, parse, opts, report);
}

std::vector<Example> read_glue_tsv(const fs::path& path, const ReadOptions& opts, ReadReport* report) {
  std::ifstream in = open_or_throw(path, "read_glue_tsv");
  const auto parse = [&](std::string_view line, Example& ex) { return parse_glue_row(line, ex, opts.max_label); };
  return read_rows(in, path.string(), true, parse, opts, report);
}

std::vector<Example> read_label_text(std::istream& in, std::string_view name, const ReadOptions& opts,
                                     ReadReport* report) {
  return read_rows(in, name, false, parse_label_text_row, opts, report);
}

std::vector<Example> read_label_text(const fs::path& path, const ReadOptions& opts, ReadReport* report) {
  std::ifstream in = open_or_throw(path, "read_label_text");
  return read_rows(in, path.string(), false, parse_label_text_row, opts, report);
}

std::vector<Example> read_class_dirs(const fs::path& dir, const ReadOptions& opts, ReadReport* report) {
  ReadReport local;
  ReadReport& rep = report ? *report : local;
  rep = ReadReport{};
  Problems problems(opts, rep);
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw std::runtime_error(fmt::format("read_class_dirs: '{}' is not a directory{}", dir.string(),
                                         fs::exists(dir, ec) ? "" : " (it does not exist)"));
  std::vector<std::pair<int, fs::path>> classes;
  for (const auto& e : fs::directory_iterator(dir)) {
    if (hidden(e.path()) || !e.is_directory()) continue;
    int label = 0;
    if (!parse_label(e.path().filename().string(), label)) {
      problems.bad(fmt::format("{}: class folder name must be a non-negative integer label",
                               e.path().string()));
      continue;
    }
    classes.emplace_back(label, e.path());
  }
  if (classes.empty())
    throw std::runtime_error(fmt::format(
        "read_class_dirs: '{}' has no class folders (expected {}/<label>/<file>, label a non-negative integer)",
        dir.string(), dir.string()));
  std::sort(classes.begin(), classes.end());
  std::vector<Example> out;
  for (const auto& [label, cdir] : classes) {
    std::vector<fs::path> files;
    for (const auto& e : fs::directory_iterator(cdir))
      if (!hidden(e.path()) && e.is_regular_file()) files.push_back(e.path());
    std::sort(files.begin(), files.end());
    for (const auto& f : files) {
      std::ifstream in(f, std::ios::binary);
      if (!in.is_open()) {
        problems.bad(fmt::format("{}: cannot open file: {}", f.string(), std::strerror(errno)));
        continue;
      }
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (in.bad()) {
        problems.bad(fmt::format("{}: read error", f.string()));
        continue;
      }
      if (const size_t pos = first_invalid_utf8(text); pos != text.size()) {
        const std::string_view before = std::string_view(text).substr(0, pos);
        const size_t line = 1 + static_cast<size_t>(std::count(before.begin(), before.end(), '\n'));
        const size_t nl = before.rfind('\n');
        const size_t line_begin = nl == std::string_view::npos ? 0 : nl + 1;
        problems.bad(fmt::format("{}:{}: {}", f.string(), line,
                                 utf8_problem(std::string_view(text).substr(line_begin))));
        continue;
      }
      while (!text.empty() && is_trailing_ws(text.back())) text.pop_back();
      out.push_back({std::move(text), label});
    }
  }
  rep.rows = out.size();
  return out;
}

}  // namespace tg::data
