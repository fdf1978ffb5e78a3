// read_glue_tsv with ReadOptions::max_label: multi-class labels 0..max_label, file:line errors
// for anything else; the default (1) stays the binary reader.
#include <doctest/doctest.h>

#include <sstream>
#include <stdexcept>
#include <string>

#include "tapegrad/data/dataset.h"

using namespace tg::data;

TEST_CASE("read_glue_tsv: max_label accepts 0..K-1 and names file:line for another label") {
  std::istringstream ok("sentence\tlabel\na\t0\nb\t3\nc\t2\n");
  const auto rows = read_glue_tsv(ok, "k4.tsv", ReadOptions{.max_label = 3});
  REQUIRE(rows.size() == 3);
  CHECK(rows[1] == Example{"b", 3});
  CHECK(rows[2].label == 2);
  for (const char* bad : {"4", "-1", "1.0", "x", "99999999999"}) {
    std::istringstream in(std::string("sentence\tlabel\na\t0\nb\t") + bad + "\n");
    try {
      read_glue_tsv(in, "k4.tsv", ReadOptions{.max_label = 3});
      FAIL("accepted label " << bad);
    } catch (const std::runtime_error& e) {
      CHECK(std::string(e.what()).find("k4.tsv:3: label must be an integer from 0 to 3") == 0);
    }
  }
  std::istringstream skipped("sentence\tlabel\na\t5\nb\t1\n");
  ReadReport report;
  CHECK(read_glue_tsv(skipped, "k4.tsv", ReadOptions{.skip_bad_lines = true, .max_label = 3}, &report).size() == 1);
  CHECK(report.skipped == 1);
  std::istringstream binary("sentence\tlabel\na\t2\n");
  CHECK_THROWS_WITH_AS(read_glue_tsv(binary, "b.tsv"), "b.tsv:2: label must be 0 or 1, got '2'", std::runtime_error);
}
