// data/text_stream: tokens, vocabulary, the train/validation split and the BPTT batcher.
#include <doctest/doctest.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <fstream>
#include <stdexcept>
#include <string>
#include <unistd.h>

#include "tapegrad/data/text_stream.h"

using namespace tg::data;

namespace {
std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("text_stream: character tokens are code points; invalid UTF-8 names byte, line and column") {
  const auto t = tokenize_text("a\xC3\xA9\n\xE2\x82\xAC", TokenLevel::Char, "s");
  REQUIRE(t.size() == 4);
  CHECK(t[1] == "\xC3\xA9");
  CHECK(t[2] == "\n");
  CHECK(t[3] == "\xE2\x82\xAC");
  const std::string msg = message_of([] { tokenize_text("ab\ncd\xFF", TokenLevel::Char, "in.txt"); });
  CHECK(msg.find("in.txt: invalid UTF-8 at byte 5 (line 2, column 3)") != std::string::npos);
  // truncated sequence, overlong form, surrogate
  CHECK_THROWS_AS(tokenize_text("x\xC3", TokenLevel::Char, "s"), std::invalid_argument);
  CHECK_THROWS_AS(tokenize_text("\xC0\x80", TokenLevel::Char, "s"), std::invalid_argument);
  CHECK_THROWS_AS(tokenize_text("\xED\xA0\x80", TokenLevel::Char, "s"), std::invalid_argument);
  CHECK_THROWS_AS(tokenize_text("ok w\xFF", TokenLevel::Word, "s"), std::invalid_argument);
}

TEST_CASE("text_stream: word tokens with <eos> at line ends") {
  const auto t = tokenize_text("the cat\t sat\n\nend", TokenLevel::Word, "s");
  const std::vector<std::string> want{"the", "cat", "sat", "<eos>", "<eos>", "end"};
  CHECK(t == want);
}

TEST_CASE("text_stream: vocabulary from the training tokens, <unk> at 0, cap and decode") {
  const auto chars = tokenize_text("banana\n", TokenLevel::Char, "s");
  const TextVocab v = TextVocab::build(chars, TokenLevel::Char);
  const std::vector<std::string> want{"<unk>", "\n", "a", "b", "n"};
  CHECK(v.tokens() == want);
  CHECK(v.id("z") == TextVocab::kUnkId);
  CHECK(v.decode(v.encode(chars), TokenLevel::Char) == "banana\n");
  // a capped character set keeps the most frequent, in code point order
  const TextVocab capped = TextVocab::build(chars, TokenLevel::Char, 3);
  CHECK(capped.tokens() == std::vector<std::string>{"<unk>", "a", "n"});

  const auto words = tokenize_text("b a a c c c\nb", TokenLevel::Word, "s");
  const TextVocab w = TextVocab::build(words, TokenLevel::Word, 4);
  CHECK(w.tokens() == std::vector<std::string>{"<unk>", "c", "a", "b"});  // <eos> (1x) falls off the cap
  CHECK(w.decode({1, 2, 0}, TokenLevel::Word) == "c a <unk>");
  CHECK(TextVocab::build(words, TokenLevel::Word, 0, 2).size() == 4);  // b, a, c seen twice or more

  CHECK_THROWS_AS(TextVocab::build(words, TokenLevel::Word, 1), std::invalid_argument);
  CHECK_THROWS_AS(TextVocab::from_tokens({"a", "b"}, "v"), std::invalid_argument);
  CHECK_THROWS_AS(TextVocab::from_tokens({"<unk>", "a", "a"}, "v"), std::invalid_argument);
  CHECK(TextVocab::from_tokens(v.tokens(), "v").tokens() == v.tokens());
  CHECK_THROWS_AS(v.token(5), std::out_of_range);
}

TEST_CASE("text_stream: split keeps order, first part train") {
  std::vector<int64_t> ids(10);
  for (int64_t i = 0; i < 10; ++i) ids[static_cast<size_t>(i)] = i;
  const StreamSplit s = split_stream(ids, 0.2);
  CHECK(s.train == std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7});
  CHECK(s.valid == std::vector<int64_t>{8, 9});
  CHECK_THROWS_AS(split_stream(ids, 0.05), std::invalid_argument);
  CHECK_THROWS_AS(split_stream(ids, 1.0), std::invalid_argument);
}

TEST_CASE("text_stream: BPTT chunks are contiguous per stream, targets shifted by one") {
  std::vector<int64_t> ids(23);
  for (int64_t i = 0; i < 23; ++i) ids[static_cast<size_t>(i)] = i;
  const BpttBatcher b(ids, 2, 4);  // streams 0..10 and 11..21 (22 dropped)
  CHECK(b.stream_length() == 11);
  CHECK(b.num_chunks() == 3);  // 10 targets per stream: 4 + 4 + 2
  CHECK(b.tokens_per_pass() == 20);
  const StreamChunk c0 = b.chunk(0), c2 = b.chunk(2);
  CHECK(c0.steps == 4);
  CHECK(c0.inputs == std::vector<int64_t>{0, 11, 1, 12, 2, 13, 3, 14});
  CHECK(c0.targets == std::vector<int64_t>{1, 12, 2, 13, 3, 14, 4, 15});
  CHECK(c2.steps == 2);
  CHECK(c2.inputs == std::vector<int64_t>{8, 19, 9, 20});
  CHECK(c2.targets == std::vector<int64_t>{9, 20, 10, 21});
  CHECK_THROWS_AS(b.chunk(3), std::out_of_range);
  const std::string msg = message_of([&] { BpttBatcher(ids, 4, 8, "train.txt"); });
  CHECK(msg.find("train.txt holds 23 tokens") != std::string::npos);
  CHECK(msg.find("at most 4") != std::string::npos);  // 5 tokens per stream -> steps <= 4
  CHECK_THROWS_AS(BpttBatcher(ids, 0, 4), std::invalid_argument);
}

TEST_CASE("text_stream: read_text_file refuses missing and empty files") {
  const auto dir = std::filesystem::temp_directory_path() / ("tg_text_stream_" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  CHECK(message_of([&] { read_text_file(dir / "nope.txt"); }).find("no such file") != std::string::npos);
  { std::ofstream(dir / "empty.txt"); }
  CHECK(message_of([&] { read_text_file(dir / "empty.txt"); }).find("empty") != std::string::npos);
  CHECK(message_of([&] { read_text_file(dir); }).find("not a regular file") != std::string::npos);
  { std::ofstream(dir / "t.txt") << "hi\n"; }
  CHECK(read_text_file(dir / "t.txt") == "hi\n");
  std::filesystem::remove_all(dir);
}
