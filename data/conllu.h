#pragma once
// CoNLL-U reader (Universal Dependencies): sentences of words with their FORM, LEMMA, UPOS and
// XPOS, for tagging. Comment lines (# ...), multi-word token ranges (3-4) and empty nodes (5.1)
// are checked and skipped; every problem is "file:line: what is wrong (what was expected)".

#include <cstddef>
#include <filesystem>
#include <istream>
#include <string>
#include <string_view>
#include <vector>

#include "tapegrad/data/dataset.h"  // ReadOptions, ReadReport

namespace tg::data {

struct ConlluWord {
  std::string form, lemma, upos, xpos;
  bool operator==(const ConlluWord&) const = default;
};

struct ConlluSentence {
  std::vector<ConlluWord> words;  // never empty
  size_t line = 0;                // line of the first word, for messages
  bool operator==(const ConlluSentence&) const = default;
};

// Ten tab-separated columns per word line (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC),
// word IDs 1, 2, ... in each sentence, a blank line after each sentence (optional after the
// last). FORM and UPOS must be non-empty and UPOS not "_". CRLF and a UTF-8 BOM are tolerated;
// text must be valid UTF-8. With opts.skip_bad_lines a sentence holding a bad line is dropped
// (each bad line counted in the report) instead of throwing.
std::vector<ConlluSentence> read_conllu(const std::filesystem::path& path, const ReadOptions& opts = {},
                                        ReadReport* report = nullptr);
std::vector<ConlluSentence> read_conllu(std::istream& in, std::string_view name, const ReadOptions& opts = {},
                                        ReadReport* report = nullptr);

}  // namespace tg::data
