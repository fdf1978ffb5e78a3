// libFuzzer target: the TSV / text readers in data/dataset.h (read_glue_tsv, read_label_text),
// from a stream and from a file, strict and with skip_bad_lines.
//
// Properties:
//  - only std::exception subclasses escape; with skip_bad_lines, read_label_text never throws
//    and read_glue_tsv throws only for a missing header;
//  - a strict read that succeeds returns exactly what the lenient read returns, and the lenient
//    read then skipped nothing;
//  - the report is consistent (rows, skipped, at most kMaxReportedErrors messages);
//  - every example's text is valid UTF-8 with no tab, newline or trailing space, and its label is
//    0/1 (GLUE) or non-negative (label<TAB>text);
//  - reading the same bytes from a file gives the same result as from a stream.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/data/dataset.h"
#include "tapegrad/data/tokenizer.h"
#include "tests/fuzz/common.h"

namespace {

using tg::data::Example;
using tg::data::ReadOptions;
using tg::data::ReadReport;

void check_examples(const std::vector<Example>& ex, bool glue) {
  for (const Example& e : ex) {
    FUZZ_CHECK(tg::data::is_valid_utf8(e.text));
    FUZZ_CHECK(e.text.find('\t') == std::string::npos);
    FUZZ_CHECK(e.text.find('\n') == std::string::npos);
    FUZZ_CHECK(e.text.empty() || e.text.back() != ' ');
    if (glue) FUZZ_CHECK(e.label == 0 || e.label == 1);
    else FUZZ_CHECK(e.label >= 0);
  }
}

template <class Read>
void exercise(const std::string& bytes, bool glue, Read read) {
  // Lenient.
  ReadReport rep;
  std::vector<Example> lenient;
  bool lenient_ok = true;
  try {
    std::istringstream in(bytes);
    lenient = read(in, ReadOptions{.skip_bad_lines = true}, &rep);
  } catch (const std::runtime_error& e) {
    lenient_ok = false;
    fuzz::note(glue ? "glue lenient" : "label_text lenient", e);
    // Only the structural problem may throw when skipping.
    FUZZ_CHECK(glue);
    FUZZ_CHECK(std::string(e.what()).find(":1: missing header") != std::string::npos);
  }
  if (lenient_ok) {
    FUZZ_CHECK(rep.rows == lenient.size());
    FUZZ_CHECK(rep.first_errors.size() == std::min(rep.skipped, tg::data::kMaxReportedErrors));
    check_examples(lenient, glue);
  }
  // Strict.
  try {
    std::istringstream in(bytes);
    ReadReport srep;
    std::vector<Example> strict = read(in, ReadOptions{}, &srep);
    FUZZ_CHECK(lenient_ok);
    FUZZ_CHECK(rep.skipped == 0);
    FUZZ_CHECK(strict == lenient);
    FUZZ_CHECK(srep.rows == strict.size() && srep.skipped == 0);
  } catch (const std::runtime_error& e) {
    fuzz::note(glue ? "glue strict" : "label_text strict", e);
    FUZZ_CHECK(!lenient_ok || rep.skipped > 0);
    FUZZ_CHECK(std::string(e.what()).starts_with("<fuzz>:"));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  exercise(bytes, true, [](std::istream& in, const ReadOptions& o, ReadReport* r) {
    return tg::data::read_glue_tsv(in, "<fuzz>", o, r);
  });
  exercise(bytes, false, [](std::istream& in, const ReadOptions& o, ReadReport* r) {
    return tg::data::read_label_text(in, "<fuzz>", o, r);
  });

  // The file entry points: same bytes, same answer.
  const fuzz::TempFile file("input.tsv", data, size);
  const auto& path = file.path();
  const ReadOptions lenient{.skip_bad_lines = true};
  for (bool glue : {true, false}) {
    std::vector<Example> from_file, from_stream;
    bool file_ok = true, stream_ok = true;
    try {
      from_file = glue ? tg::data::read_glue_tsv(path, lenient) : tg::data::read_label_text(path, lenient);
    } catch (const std::runtime_error&) {
      file_ok = false;
    }
    try {
      std::istringstream in(bytes);
      from_stream = glue ? tg::data::read_glue_tsv(in, "<fuzz>", lenient) : tg::data::read_label_text(in, "<fuzz>", lenient);
    } catch (const std::runtime_error&) {
      stream_ok = false;
    }
    FUZZ_CHECK(file_ok == stream_ok);
    FUZZ_CHECK(from_file == from_stream);
  }
  return 0;
}
