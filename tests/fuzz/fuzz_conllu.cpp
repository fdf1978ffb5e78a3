// libFuzzer target: the CoNLL-U reader in data/conllu.h (read_conllu), from a stream and from a
// file, strict and with skip_bad_lines.
//
// Properties:
//  - only std::runtime_error escapes, and with skip_bad_lines nothing does;
//  - a strict read that succeeds returns exactly what the lenient read returns, and the lenient
//    read then skipped nothing; a strict failure names "<fuzz>:LINE:";
//  - the report is consistent (rows, skipped, at most kMaxReportedErrors messages);
//  - every sentence has words; every FORM and UPOS is non-empty valid UTF-8 without tab or
//    newline, UPOS is not "_" and has no space;
//  - reading the same bytes from a file gives the same result as from a stream.
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/data/conllu.h"
#include "tapegrad/data/tokenizer.h"
#include "tests/fuzz/common.h"

namespace {

using tg::data::ConlluSentence;
using tg::data::ReadOptions;
using tg::data::ReadReport;

void check_field(const std::string& s) {
  FUZZ_CHECK(tg::data::is_valid_utf8(s));
  FUZZ_CHECK(s.find('\t') == std::string::npos);
  FUZZ_CHECK(s.find('\n') == std::string::npos);
}

void check_sentences(const std::vector<ConlluSentence>& ss) {
  for (const ConlluSentence& s : ss) {
    FUZZ_CHECK(!s.words.empty());
    FUZZ_CHECK(s.line >= 1);
    for (const auto& w : s.words) {
      FUZZ_CHECK(!w.form.empty() && !w.upos.empty() && w.upos != "_");
      FUZZ_CHECK(w.upos.find(' ') == std::string::npos);
      for (const std::string* f : {&w.form, &w.lemma, &w.upos, &w.xpos}) check_field(*f);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string bytes(reinterpret_cast<const char*>(data), size);
  ReadReport rep;
  std::vector<ConlluSentence> lenient;
  {
    std::istringstream in(bytes);
    lenient = tg::data::read_conllu(in, "<fuzz>", ReadOptions{.skip_bad_lines = true}, &rep);  // never throws
  }
  FUZZ_CHECK(rep.rows == lenient.size());
  FUZZ_CHECK(rep.first_errors.size() == std::min(rep.skipped, tg::data::kMaxReportedErrors));
  for (const auto& e : rep.first_errors) FUZZ_CHECK(e.starts_with("<fuzz>:"));
  check_sentences(lenient);
  try {
    std::istringstream in(bytes);
    ReadReport srep;
    const std::vector<ConlluSentence> strict = tg::data::read_conllu(in, "<fuzz>", ReadOptions{}, &srep);
    FUZZ_CHECK(rep.skipped == 0);
    FUZZ_CHECK(strict == lenient);
    FUZZ_CHECK(srep.rows == strict.size() && srep.skipped == 0);
  } catch (const std::runtime_error& e) {
    fuzz::note("conllu strict", e);
    FUZZ_CHECK(rep.skipped > 0);
    FUZZ_CHECK(std::string(e.what()).starts_with("<fuzz>:"));
  }
  const fuzz::TempFile file("input.conllu", data, size);
  const std::vector<ConlluSentence> from_file =
      tg::data::read_conllu(file.path(), ReadOptions{.skip_bad_lines = true});
  FUZZ_CHECK(from_file == lenient);
  return 0;
}
