// safetensors IO (autograd/safetensors.h) and model checkpoints (nn/text_classifier.h).
#include <doctest/doctest.h>

#include <atomic>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "autograd/ops.h"
#include "autograd/safetensors.h"
#include "autograd/tape.h"
#include "nn/text_classifier.h"

namespace fs = std::filesystem;
using namespace tg;
using Bytes = std::vector<uint8_t>;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    static std::atomic<int> counter{0};
    path = fs::temp_directory_path() / ("tg_ckpt_test_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

Bytes read_bytes(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return Bytes(std::istreambuf_iterator<char>(in), {});
}
void write_bytes(const fs::path& p, const Bytes& b) {
  std::ofstream out(p, std::ios::binary);
  out.write(reinterpret_cast<const char*>(b.data()), static_cast<std::streamsize>(b.size()));
}

// A file from a raw header text and data bytes (no padding, no checksum unless in the text).
Bytes make_file(const std::string& header, const Bytes& data = {}, uint64_t declared = UINT64_MAX) {
  const uint64_t n = declared == UINT64_MAX ? header.size() : declared;
  Bytes out(8 + header.size() + data.size());
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  if (!header.empty()) std::memcpy(out.data() + 8, header.data(), header.size());
  if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
  return out;
}

std::string error_of(const Bytes& b, const std::string& name = "probe.safetensors") {
  try {
    parse_safetensors(b.data(), b.size(), name);
  } catch (const std::runtime_error& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("WRONG EXCEPTION TYPE: ") + e.what();
  }
  return "NO ERROR";
}

#define CHECK_ERROR(bytes, phrase)                                        \
  do {                                                                    \
    const std::string msg_ = error_of(bytes);                             \
    INFO(msg_);                                                           \
    CHECK(msg_.find("probe.safetensors") != std::string::npos);           \
    CHECK(msg_.find(phrase) != std::string::npos);                        \
  } while (0)

bool same_bytes(const Tensor& a, const Tensor& b) {
  if (a.dtype() != b.dtype() || !(a.shape() == b.shape())) return false;
  Tensor x = a.contiguous(), y = b.contiguous();
  return x.numel() == 0 ||
         std::memcmp(x.raw_data(), y.raw_data(), static_cast<size_t>(x.numel()) * dtype_size(x.dtype())) == 0;
}

NamedTensors sample_tensors() {
  manual_seed(3);
  return {
      {"w32", randn({3, 4})},
      {"a64", randn({2, 3, 2}, DType::Float64)},
      {"idx", from_vector(std::vector<int64_t>{-5, 0, 7, int64_t(1) << 60}, Shape{2, 2})},
      {"scalar", scalar(2.5)},
      {"empty", zeros({0, 3})},
      {"empty_i64", empty({4, 0}, DType::Int64)},
      {"t", randn({4, 3}).t()},  // a transposed view: saved row-major
      {"z_last_empty", zeros({0})},
  };
}

}  // namespace

TEST_SUITE("checkpoint") {

TEST_CASE("safetensors: round trip of every dtype, rank 0, empty and strided tensors") {
  TempDir dir;
  const fs::path p = dir.path / "t.safetensors";
  const NamedTensors in = sample_tensors();
  save_safetensors(p, in, {{"format", "pt"}, {"note", "héllo"}});
  CHECK_FALSE(fs::exists(dir.path / "t.safetensors.tmp"));
  TensorMetadata meta;
  const NamedTensors out = load_safetensors(p, &meta);
  REQUIRE(out.size() == in.size());
  for (size_t i = 1; i < out.size(); ++i) CHECK(out[i - 1].first < out[i].first);  // sorted by name
  for (const auto& [name, t] : in) {
    auto it = std::find_if(out.begin(), out.end(), [&](const auto& e) { return e.first == name; });
    REQUIRE(it != out.end());
    INFO(name);
    CHECK(same_bytes(it->second, t));
    CHECK(it->second.is_contiguous());
    CHECK_FALSE(it->second.requires_grad());
  }
  CHECK(meta.at("format") == "pt");
  CHECK(meta.at("note") == "héllo");
  CHECK(meta.at(kChecksumKey).rfind("crc32:", 0) == 0);

  // Layout: 8-byte length, space-padded header, data 8-byte aligned and exactly as long as needed.
  const Bytes b = read_bytes(p);
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= uint64_t(b[i]) << (8 * i);
  CHECK((8 + n) % 8 == 0);
  CHECK(b[8] == '{');
  size_t data_bytes = 0;
  for (const auto& [name, t] : in) data_bytes += static_cast<size_t>(t.numel()) * dtype_size(t.dtype());
  CHECK(b.size() == 8 + n + data_bytes);
  CHECK(serialize_safetensors(in, {{"format", "pt"}, {"note", "héllo"}}) == b);

  // An empty file list is valid too.
  save_safetensors(p, {});
  CHECK(load_safetensors(p).empty());
}

TEST_CASE("safetensors: crc32 matches the standard check value") {
  CHECK(crc32("123456789", 9) == 0xCBF43926u);
  CHECK(crc32("", 0) == 0u);
  CHECK(crc32("56789", 5, crc32("1234", 4)) == 0xCBF43926u);
}

TEST_CASE("safetensors: writing rejects bad input and reports I/O errors with the path") {
  CHECK_THROWS_AS(serialize_safetensors({{"a", Tensor()}}), std::invalid_argument);
  CHECK_THROWS_AS(serialize_safetensors({{"a", zeros({1})}, {"a", zeros({2})}}), std::invalid_argument);
  CHECK_THROWS_AS(serialize_safetensors({{"__metadata__", zeros({1})}}), std::invalid_argument);
  CHECK_THROWS_AS(serialize_safetensors({}, {{kChecksumKey, "x"}}), std::invalid_argument);
  TempDir dir;
  const fs::path p = dir.path / "missing_dir" / "t.safetensors";
  try {
    save_safetensors(p, {{"a", zeros({1})}});
    FAIL("expected an error");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("missing_dir") != std::string::npos);
  }
  try {
    load_safetensors(dir.path / "nope.safetensors");
    FAIL("expected an error");
  } catch (const std::runtime_error& e) {
    CHECK(std::string(e.what()).find("nope.safetensors") != std::string::npos);
  }
}

TEST_CASE("safetensors: a file truncated at any length is rejected") {
  const Bytes good = serialize_safetensors(sample_tensors());
  CHECK_NOTHROW(parse_safetensors(good.data(), good.size(), "probe.safetensors"));
  for (size_t len = 0; len < good.size(); ++len) {
    const Bytes cut(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(len));
    const std::string msg = error_of(cut);
    INFO("length " << len << ": " << msg);
    CHECK(msg.find("probe.safetensors") != std::string::npos);
    CHECK(msg.find("WRONG EXCEPTION") == std::string::npos);
  }
  CHECK_ERROR(Bytes(5, 0), "too short");
  // Trailing bytes after the last tensor are refused (as the reference reader does).
  Bytes longer = good;
  longer.push_back(0);
  CHECK_ERROR(longer, "1 trailing bytes after the last tensor");
}

TEST_CASE("safetensors: header length problems") {
  CHECK_ERROR(make_file("{}", {}, uint64_t(1) << 63), "exceeds");
  CHECK_ERROR(make_file("{}", {}, kMaxSafetensorsHeader + 1), "exceeds");
  CHECK_ERROR(make_file("{}", {}, 3), "runs past the end");
  CHECK_ERROR(make_file("{}", {}, 0), "not valid JSON");
  const Bytes empty_object = make_file("{}");
  CHECK_NOTHROW(parse_safetensors(empty_object.data(), empty_object.size(), "probe.safetensors"));
}

TEST_CASE("safetensors: malformed JSON and wrong structure") {
  CHECK_ERROR(make_file("{"), "not valid JSON");
  CHECK_ERROR(make_file("not json at all"), "not valid JSON");
  CHECK_ERROR(make_file("{\"a\": {}} trailing"), "not valid JSON");
  CHECK_ERROR(make_file(std::string("{\"a\"\0:1}", 8)), "not valid JSON");
  CHECK_ERROR(make_file("[1, 2]"), "must be a JSON object");
  CHECK_ERROR(make_file("{\"a\": 1}"), "entry must be an object");
  CHECK_ERROR(make_file(std::string(100000, '[') + std::string(100000, ']')), "nests deeper");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [1]}}", Bytes(4)), "missing field 'data_offsets'");
  CHECK_ERROR(make_file("{\"a\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", Bytes(4)), "missing field 'dtype'");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"data_offsets\": [0, 4]}}", Bytes(4)), "missing field 'shape'");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4], \"x\": 1}}", Bytes(4)),
              "unknown field 'x'");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                        "\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                        Bytes(4)),
              "repeats the key 'a'");
  CHECK_ERROR(make_file("{\"__metadata__\": [1]}"), "__metadata__ must be an object");
  CHECK_ERROR(make_file("{\"__metadata__\": {\"k\": 1}}"), "must be a string");
}

TEST_CASE("safetensors: dtype problems") {
  const Bytes four(4);
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F16\", \"shape\": [2], \"data_offsets\": [0, 4]}}", four),
              "dtype 'F16' is not supported");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"f32\", \"shape\": [1], \"data_offsets\": [0, 4]}}", four),
              "dtype 'f32' is not supported");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": 5, \"shape\": [1], \"data_offsets\": [0, 4]}}", four),
              "dtype must be a string");
}

TEST_CASE("safetensors: shape problems") {
  const Bytes eight(8);
  auto entry = [](const std::string& shape, const std::string& offsets = "[0, 8]") {
    return "{\"a\": {\"dtype\": \"F32\", \"shape\": " + shape + ", \"data_offsets\": " + offsets + "}}";
  };
  CHECK_ERROR(make_file(entry("[-2]"), eight), "non-negative integers");
  CHECK_ERROR(make_file(entry("[2.0]"), eight), "non-negative integers");
  CHECK_ERROR(make_file(entry("[true]"), eight), "non-negative integers");
  CHECK_ERROR(make_file(entry("2"), eight), "shape must be an array");
  CHECK_ERROR(make_file(entry("[1,1,1,1,1,1,1,1,2]"), eight), "rank 9 exceeds");
  CHECK_ERROR(make_file(entry("[1099511627776, 1099511627776]"), eight), "too many elements");
  CHECK_ERROR(make_file(entry("[18446744073709551615]"), eight), "non-negative integers");
  CHECK_ERROR(make_file(entry("[0, 4611686018427387904, 4]", "[0, 0]"), eight), "too many elements");
  CHECK_ERROR(make_file(entry("[3]"), eight), "needs 12 bytes but data_offsets [0, 8] span 8");
  CHECK_ERROR(make_file(entry("[]"), eight), "needs 4 bytes");
  for (const Bytes& fine : {make_file(entry("[2]"), eight), make_file(entry("[1, 0, 5]", "[0, 0]")),
                            make_file(entry("[0, 1152921504606846976]", "[0, 0]"))})
    CHECK_NOTHROW(parse_safetensors(fine.data(), fine.size(), "p"));
}

TEST_CASE("safetensors: offset problems") {
  const Bytes eight(8);
  auto entry = [](const std::string& offsets) {
    return "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": " + offsets + "}}";
  };
  CHECK_ERROR(make_file(entry("[8, 12]"), eight), "run past the 8-byte data section");
  CHECK_ERROR(make_file(entry("[18446744073709551612, 18446744073709551616]"), eight), "data_offsets must be");
  CHECK_ERROR(make_file(entry("[18446744073709551610, 18446744073709551614]"), eight), "run past");
  CHECK_ERROR(make_file(entry("[4, 0]"), eight), "begin > end");
  CHECK_ERROR(make_file(entry("[-4, 0]"), eight), "data_offsets must be");
  CHECK_ERROR(make_file(entry("[0, 4, 8]"), eight), "data_offsets must be");
  CHECK_ERROR(make_file(entry("[0.0, 4]"), eight), "data_offsets must be");
  CHECK_ERROR(make_file(entry("\"0-4\""), eight), "data_offsets must be");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
                        "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
                        eight),
              "overlap");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                        "\"b\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}",
                        eight),
              "overlap");
  // Empty tensors at the same offset are fine (gaps are not: see the next test case).
  const Bytes fine = make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 4]}, "
                               "\"b\": {\"dtype\": \"I64\", \"shape\": [0, 2], \"data_offsets\": [4, 4]}, "
                               "\"d\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}, "
                               "\"c\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
                               eight);
  NamedTensors t;
  CHECK_NOTHROW(t = parse_safetensors(fine.data(), fine.size(), "p"));
  CHECK(t.size() == 4);
}

TEST_CASE("safetensors: a flipped data bit is caught by the checksum") {
  NamedTensors in{{"w", randn({16, 16})}};
  Bytes good = serialize_safetensors(in);
  for (size_t pos : {good.size() - 1, good.size() - 512, good.size() - 1024}) {
    Bytes bad = good;
    bad[pos] ^= 0x10;
    CHECK_ERROR(bad, "checksum mismatch");
  }
  // Malformed checksum text.
  CHECK_ERROR(make_file("{\"__metadata__\": {\"tapegrad_checksum\": \"md5:abc\"}}"), "expected crc32:");
  // Without a checksum (a file from another writer) the same flip goes unnoticed: that is the
  // checksum's job, and such files must still load.
  std::string header = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
  Bytes plain = make_file(header, Bytes{0, 0, 128, 63});
  NamedTensors t = parse_safetensors(plain.data(), plain.size(), "p");
  CHECK(t.at(0).second.item() == 1.0);
}

TEST_CASE("safetensors: random corruption never crashes") {
  const Bytes good = serialize_safetensors(sample_tensors(), {{"format", "pt"}});
  std::mt19937_64 rng(12345);
  int accepted = 0;
  for (int iter = 0; iter < 3000; ++iter) {
    Bytes b = good;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      // Mostly in the length field and the header, where the structure lives.
      const size_t limit = rng() % 4 ? std::min<size_t>(b.size(), 400) : b.size();
      b[rng() % limit] = static_cast<uint8_t>(rng());
    }
    if (rng() % 8 == 0) b.resize(rng() % b.size());
    try {
      parse_safetensors(b.data(), b.size(), "fuzz");
      ++accepted;  // e.g. a flip inside padding spaces or a metadata string
    } catch (const std::runtime_error&) {
    }
  }
  CHECK(accepted < 3000);
}

TEST_CASE("TextClassifier: shapes, parameter names and PyTorch names") {
  manual_seed(1);
  nn::TextClassifier m({.vocab_size = 20, .embed = 6, .hidden = 5, .layers = 2, .cell = nn::CellType::GRU,
                        .bidirectional = true, .pooling = nn::Pooling::Max});
  auto names = m.named_parameters();
  CHECK(names.front().first == "embedding.weight");
  CHECK(names.back().first == "fc.bias");
  CHECK(m.fc->weight.shape() == Shape{1, 10});
  CHECK(m.embedding->weight.at({0, 0}) == 0.0);
  const auto torch = m.torch_names();
  CHECK(torch.size() == names.size());
  CHECK(std::find(torch.begin(), torch.end(), std::make_pair(std::string("rnn.cell1_reverse.weight_hh"),
                                                             std::string("rnn.weight_hh_l1_reverse"))) != torch.end());
  Tensor tokens = from_vector(std::vector<int64_t>{3, 4, 5, 6, 0, 0}, Shape{2, 3});
  CHECK(m.forward(tokens, nn::Lengths({3, 1})).shape() == Shape{2});
  CHECK_THROWS_AS(m.forward(tokens, nn::Lengths({4, 1})), std::invalid_argument);
  CHECK_THROWS_AS(nn::parse_cell_type("transformer"), std::invalid_argument);
  CHECK_THROWS_AS(nn::parse_pooling("attention"), std::invalid_argument);
  CHECK_THROWS_AS(nn::TextClassifier({.vocab_size = 0}), std::invalid_argument);
}

TEST_CASE("TextClassifier: padding never changes a sentence's logit") {
  for (auto cell : {nn::CellType::RNN, nn::CellType::LSTM, nn::CellType::GRU})
    for (auto pooling : {nn::Pooling::Last, nn::Pooling::Max, nn::Pooling::Mean})
      for (bool bi : {false, true}) {
        manual_seed(2);
        nn::TextClassifier m({.vocab_size = 12, .embed = 4, .hidden = 3, .layers = 2, .cell = cell,
                              .bidirectional = bi, .pooling = pooling});
        m.eval();
        NoGradGuard ng;
        const double alone =
            m.forward(from_vector(std::vector<int64_t>{5, 7}, Shape{1, 2}), nn::Lengths({2})).item();
        const Tensor padded = m.forward(from_vector(std::vector<int64_t>{3, 4, 5, 6, 9, 5, 7, 0, 0, 0}, Shape{2, 5}),
                                        nn::Lengths({5, 2}));
        INFO(nn::cell_type_name(cell) << " " << nn::pooling_name(pooling) << " bi " << bi);
        CHECK(padded.at({1}) == doctest::Approx(alone).epsilon(1e-6));
      }
}

TEST_CASE("checkpoint: weights round trip through a file into a fresh model") {
  TempDir dir;
  const nn::TextClassifierOptions o{.vocab_size = 30, .embed = 8, .hidden = 7, .cell = nn::CellType::LSTM,
                                    .bidirectional = true};
  manual_seed(1);
  nn::TextClassifier a(o);
  manual_seed(2);
  nn::TextClassifier b(o);
  Tensor tokens = from_vector(std::vector<int64_t>{1, 2, 3, 4, 5, 0}, Shape{2, 3});
  a.eval();
  b.eval();
  NoGradGuard ng;
  CHECK(a.forward(tokens, nn::Lengths({3, 2})).at({0}) != b.forward(tokens, nn::Lengths({3, 2})).at({0}));
  nn::save_weights(a, dir.path / "m.safetensors", {{"format", "pt"}});
  std::map<std::string, std::string> meta;
  nn::load_weights(b, dir.path / "m.safetensors", true, &meta);
  CHECK(meta.at("format") == "pt");
  CHECK(same_bytes(a.forward(tokens, nn::Lengths({3, 2})), b.forward(tokens, nn::Lengths({3, 2}))));
  for (auto& [name, t] : a.state_dict()) CHECK(same_bytes(t, b.state_dict().at(name)));
}

TEST_CASE("checkpoint: a mismatched or corrupt file leaves the model unchanged") {
  TempDir dir;
  manual_seed(1);
  nn::TextClassifier small({.vocab_size = 30, .embed = 8, .hidden = 7});
  nn::save_weights(small, dir.path / "small.safetensors");
  manual_seed(2);
  nn::TextClassifier big({.vocab_size = 30, .embed = 8, .hidden = 9});
  const auto before = big.state_dict();
  auto unchanged = [&] {
    for (auto& [name, t] : big.state_dict())
      if (!same_bytes(t, before.at(name))) return false;
    return true;
  };
  try {
    nn::load_weights(big, dir.path / "small.safetensors");
    FAIL("expected a shape mismatch");
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    CHECK(msg.find("small.safetensors") != std::string::npos);
    CHECK(msg.find("shape mismatch") != std::string::npos);
    CHECK(msg.find("rnn.cell0.weight_hh") != std::string::npos);
  }
  CHECK(unchanged());

  // Missing and unexpected names.
  save_safetensors(dir.path / "partial.safetensors", {{"fc.bias", zeros({1})}, {"extra", zeros({1})}});
  CHECK_THROWS_AS(nn::load_weights(big, dir.path / "partial.safetensors"), std::invalid_argument);
  CHECK(unchanged());
  // Integer weights are refused rather than converted.
  NamedTensors ints;
  for (auto& [name, t] : big.state_dict()) ints.emplace_back(name, zeros(t.shape(), DType::Int64));
  save_safetensors(dir.path / "ints.safetensors", ints);
  CHECK_THROWS_AS(nn::load_weights(big, dir.path / "ints.safetensors"), std::invalid_argument);
  CHECK(unchanged());

  // A corrupt file of the right shapes.
  nn::save_weights(big, dir.path / "big.safetensors");
  Bytes b = read_bytes(dir.path / "big.safetensors");
  b[b.size() - 3] ^= 1;
  write_bytes(dir.path / "big.safetensors", b);
  manual_seed(3);
  nn::TextClassifier other({.vocab_size = 30, .embed = 8, .hidden = 9});
  const auto other_before = other.state_dict();
  CHECK_THROWS_AS(nn::load_weights(other, dir.path / "big.safetensors"), std::runtime_error);
  for (auto& [name, t] : other.state_dict()) CHECK(same_bytes(t, other_before.at(name)));
  // Truncated.
  b.resize(b.size() / 2);
  write_bytes(dir.path / "big.safetensors", b);
  CHECK_THROWS_AS(nn::load_weights(other, dir.path / "big.safetensors"), std::runtime_error);
  for (auto& [name, t] : other.state_dict()) CHECK(same_bytes(t, other_before.at(name)));
}

}  // TEST_SUITE
