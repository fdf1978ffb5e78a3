#pragma once
// Readers for labelled text corpora. Every problem is reported as
// "file:line: what is wrong (what was expected)" so it can be fixed by hand.

#include <cstddef>
#include <filesystem>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

namespace tg::data {

struct Example {
  std::string text;
  int label = 0;
  bool operator==(const Example&) const = default;
};

struct ReadOptions {
  // Skip malformed lines / files (and invalid UTF-8) instead of throwing;
  // they are counted in ReadReport. Structural problems that make the whole
  // input unusable (missing file, missing header) still throw.
  bool skip_bad_lines = false;
  // read_glue_tsv: the largest label accepted (1 = binary 0/1; K-1 for K classes).
  int max_label = 1;
};

struct ReadReport {
  size_t rows = 0;     // examples returned
  size_t skipped = 0;  // lines/files rejected (only with skip_bad_lines)
  std::vector<std::string> first_errors;  // first kMaxReportedErrors messages
};

inline constexpr size_t kMaxReportedErrors = 20;

// GLUE single-sentence TSV (SST-2, CoLA-style): header "sentence\tlabel", then
// "<text>\t<0|1>" rows (labels 0..opts.max_label for multi-class data). Trailing spaces of the text are stripped (GLUE's SST-2
// has one before every tab), CRLF and a UTF-8 BOM are tolerated, trailing
// blank lines at end of file are ignored.
std::vector<Example> read_glue_tsv(const std::filesystem::path& path, const ReadOptions& opts = {},
                                   ReadReport* report = nullptr);
std::vector<Example> read_glue_tsv(std::istream& in, std::string_view name,
                                   const ReadOptions& opts = {}, ReadReport* report = nullptr);

// "<label>\t<text>" lines, no header; label is a non-negative decimal int.
// Exactly one tab per line; same stripping/CRLF/blank-line rules as above.
std::vector<Example> read_label_text(const std::filesystem::path& path, const ReadOptions& opts = {},
                                     ReadReport* report = nullptr);
std::vector<Example> read_label_text(std::istream& in, std::string_view name,
                                     const ReadOptions& opts = {}, ReadReport* report = nullptr);

// `dir/<label>/<any file>`: one example per regular file, the whole file is
// the text (trailing whitespace stripped). Labels are non-negative decimal
// folder names. Entries whose names start with '.' and non-directories
// directly in `dir` are ignored. Output order: labels ascending, then file
// names in byte order, so it does not depend on the filesystem.
std::vector<Example> read_class_dirs(const std::filesystem::path& dir, const ReadOptions& opts = {},
                                     ReadReport* report = nullptr);

}  // namespace tg::data
