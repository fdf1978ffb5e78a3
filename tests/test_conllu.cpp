// Tests for the CoNLL-U reader (data/conllu.h).
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include "tapegrad/data/conllu.h"

using namespace tg::data;

namespace {

std::vector<ConlluSentence> parse(const std::string& text, const ReadOptions& o = {}, ReadReport* rep = nullptr) {
  std::istringstream in(text);
  return read_conllu(in, "t.conllu", o, rep);
}

std::string error_of(const std::string& text) {
  try {
    parse(text);
  } catch (const std::runtime_error& e) {
    return e.what();
  }
  return "(no error)";
}

std::string row(const std::string& id, const std::string& form, const std::string& upos) {
  return id + "\t" + form + "\t" + form + "\t" + upos + "\tX\t_\t0\troot\t_\t_\n";
}

}  // namespace

TEST_CASE("conllu: words, comments, multi-word tokens and empty nodes") {
  const std::string text = "# sent_id = 1\n# text = Don't go.\n" + row("1-2", "Don't", "_") + row("1", "Do", "AUX") +
                           row("2", "n't", "PART") + row("2.1", "x", "_") + row("3", "go", "VERB") +
                           row("4", ".", "PUNCT") + "\n" + row("1", "Hi", "INTJ");  // no blank line at EOF
  ReadReport rep;
  const auto s = parse(text, {}, &rep);
  REQUIRE(s.size() == 2);
  CHECK(rep.rows == 2);
  REQUIRE(s[0].words.size() == 4);
  CHECK(s[0].words[0] == ConlluWord{"Do", "Do", "AUX", "X"});
  CHECK(s[0].words[1].upos == "PART");
  CHECK(s[0].words[3].form == ".");
  CHECK(s[0].line == 4);
  CHECK(s[1].words.size() == 1);
  CHECK(s[1].line == 10);
}

TEST_CASE("conllu: CRLF, BOM, several blank lines and a comment-only block") {
  const std::string text = "\xEF\xBB\xBF# newdoc\r\n\r\n" + row("1", "a", "DET") + "\n\n\n" + row("1", "b", "NOUN");
  const auto s = parse(text);
  REQUIRE(s.size() == 2);
  CHECK(s[0].words[0].form == "a");
  CHECK(s[1].words[0].upos == "NOUN");
}

TEST_CASE("conllu: malformed lines name file:line and the problem") {
  CHECK(error_of(row("1", "a", "DET") + "1\ta\tb\n") == "t.conllu:2: expected 10 tab-separated columns (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC), got 3");
  CHECK(error_of(row("1", "a", "DET") + row("3", "b", "NOUN")) == "t.conllu:2: word ID 3 out of order (expected 2)");
  CHECK(error_of(row("x", "a", "DET")).starts_with("t.conllu:1: bad ID 'x'"));
  CHECK(error_of(row("01", "a", "DET")).starts_with("t.conllu:1: bad ID '01'"));
  CHECK(error_of(row("2-1", "a", "_")).starts_with("t.conllu:1: bad multi-word token ID '2-1'"));
  CHECK(error_of(row("1.x", "a", "_")).starts_with("t.conllu:1: bad empty-node ID '1.x'"));
  CHECK(error_of(row("1", "a", "_")).starts_with("t.conllu:1: word 1 ('a'): UPOS (column 4) is '_'"));
  CHECK(error_of(row("1", "", "DET")) == "t.conllu:1: word 1: FORM (column 2) is empty");
  CHECK(error_of(row("1", "a", "DET") + "# late\n").starts_with("t.conllu:2: a comment line inside a sentence"));
  CHECK(error_of(row("1", "a", "DET") + "  \n").starts_with("t.conllu:2: a line of only spaces"));
  CHECK(error_of(row("1", "a\xff", "DET")).starts_with("t.conllu:1: invalid UTF-8 (byte 0xff at column 4"));
  CHECK(error_of(row("1-2", "ab", "_") + row("1", "a", "DET") + "\n").starts_with(
      "t.conllu:3: the sentence ends inside multi-word token 1-2"));
  CHECK(error_of(row("1", "a", "DET") + row("3-4", "ab", "_")).starts_with(
      "t.conllu:2: multi-word token '3-4' does not start at the next word ID 2"));
}

TEST_CASE("conllu: skip_bad_lines drops the sentences with bad lines and reports them") {
  const std::string text = row("1", "a", "DET") + "\n" + row("1", "b", "_") + row("2", "c", "NOUN") + "\n" +
                           row("1", "d", "VERB") + "\n";
  ReadReport rep;
  const auto s = parse(text, ReadOptions{.skip_bad_lines = true}, &rep);
  REQUIRE(s.size() == 2);
  CHECK(s[0].words[0].form == "a");
  CHECK(s[1].words[0].form == "d");
  CHECK(rep.skipped == 1);
  REQUIRE(rep.first_errors.size() == 1);
  CHECK(rep.first_errors[0].starts_with("t.conllu:3:"));
  CHECK_THROWS_AS(parse(text), std::runtime_error);
}

TEST_CASE("conllu: files: missing file and folder are errors, same result as a stream") {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("tg_conllu_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  CHECK_THROWS_WITH_AS(read_conllu(dir / "absent.conllu"), doctest::Contains("cannot open"), std::runtime_error);
  CHECK_THROWS_WITH_AS(read_conllu(dir), doctest::Contains("is a folder"), std::runtime_error);
  const std::string text = row("1", "a", "DET") + row("2", "b", "NOUN") + "\n";
  std::ofstream(dir / "x.conllu", std::ios::binary) << text;
  CHECK(read_conllu(dir / "x.conllu") == parse(text));
  fs::remove_all(dir);
}

TEST_CASE("conllu: the UD English-LinES files parse, with the sizes SOURCE.md gives") {
  const char* env = std::getenv("TAPEGRAD_DATA");
  const std::filesystem::path root = env ? env : std::filesystem::path(TG_SOURCE_DIR) / ".." / "shared" / "data";
  const auto dir = root / "ud_english_lines";
  if (!std::filesystem::exists(dir / "en_lines-ud-dev.conllu")) return;  // data not installed here
  CHECK(read_conllu(dir / "en_lines-ud-dev.conllu").size() == 1118);
  CHECK(read_conllu(dir / "en_lines-ud-test.conllu").size() == 1121);
}
