// libFuzzer target: tg::data::Vocab::load (a vocabulary file) and Vocab::build on the tokens of
// the same bytes.
//
// Properties:
//  - Vocab::load throws only std::runtime_error ("file:line: problem");
//  - a loaded vocab starts with <pad>, <unk>; id(word(i)) == i for every id; save() then load()
//    gives an equal vocab;
//  - Vocab::build over tokenize(lines) keeps its promise that whatever it builds survives
//    save()/load() (to_lines() -> from_lines() accepts it), and encode() gives ids in range.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <string>
#include <string_view>
#include <vector>

#include "tapegrad/data/tokenizer.h"
#include "tapegrad/data/vocab.h"
#include "tests/fuzz/common.h"

using tg::data::Vocab;

namespace {

void check_consistent(const Vocab& v) {
  FUZZ_CHECK(v.size() >= 2);
  FUZZ_CHECK(v.word(Vocab::kPadId) == Vocab::kPad);
  FUZZ_CHECK(v.word(Vocab::kUnkId) == Vocab::kUnk);
  for (int64_t i = 0; i < v.size(); ++i) FUZZ_CHECK(v.id(v.word(i)) == i);
  bool threw = false;
  try {
    (void)v.word(v.size());
  } catch (const std::out_of_range&) {
    threw = true;
  }
  FUZZ_CHECK(threw);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const fuzz::TempFile file("vocab.txt", data, size);
  const auto& path = file.path();
  try {
    Vocab v = Vocab::load(path);
    check_consistent(v);
    const fuzz::TempFile copy("vocab-copy.txt");
    v.save(copy.path());
    FUZZ_CHECK(Vocab::load(copy.path()) == v);
  } catch (const std::runtime_error& e) {
    fuzz::note("Vocab::load", e);
    FUZZ_CHECK(std::string_view(e.what()).starts_with(path.string() + ":"));
  }

  // Build from the same bytes read as a corpus, one document per line.
  std::vector<std::vector<std::string>> docs;
  std::string_view text(reinterpret_cast<const char*>(data), size);
  while (!text.empty()) {
    const size_t nl = text.find('\n');
    docs.push_back(tg::data::tokenize(text.substr(0, nl)));
    if (nl == std::string_view::npos) break;
    text.remove_prefix(nl + 1);
  }
  // Raw lines too: build() must filter words that cannot be stored.
  std::vector<std::string> raw;
  text = std::string_view(reinterpret_cast<const char*>(data), size);
  for (size_t b = 0; b < text.size();) {
    size_t e = text.find_first_of(std::string_view("\n\0", 2), b);
    if (e == std::string_view::npos) e = text.size();
    raw.emplace_back(text.substr(b, e - b + (e < text.size() ? 1 : 0)));  // keep the separator
    b = e + 1;
  }
  docs.push_back(raw);
  const int64_t max_size = size % 7 == 0 ? 0 : static_cast<int64_t>(2 + size % 5);
  Vocab built = Vocab::build(docs, 1 + static_cast<int64_t>(size % 2), max_size);
  check_consistent(built);
  if (max_size) FUZZ_CHECK(built.size() <= max_size);
  FUZZ_CHECK(Vocab::from_lines(built.to_lines()) == built);
  for (const auto& doc : docs)
    for (int64_t id : built.encode(doc)) FUZZ_CHECK(id >= 0 && id < built.size());
  return 0;
}
