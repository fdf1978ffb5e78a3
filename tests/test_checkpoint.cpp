// safetensors IO (autograd/safetensors.h) and model checkpoints (nn/text_classifier.h).
#include <doctest/doctest.h>
#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/safetensors.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/nn/text_classifier.h"

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

TEST_CASE("safetensors: tensors must tile the data section (no gap, no trailing bytes), as the reference reader") {
  const Bytes eight(8);
  const std::string f1 = "{\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": ";
  CHECK_ERROR(make_file("{\"a\": " + f1 + "[4, 8]}}", eight), "4-byte gap at the start of the data section");
  CHECK_ERROR(make_file("{\"a\": " + f1 + "[0, 4]}}", eight), "4 trailing bytes after the last tensor");
  CHECK_ERROR(make_file("{}", eight), "8 trailing bytes");
  const Bytes twelve(12);
  CHECK_ERROR(make_file("{\"a\": " + f1 + "[0, 4]}, \"b\": " + f1 + "[8, 12]}}", twelve),
              "4-byte gap between tensors 'a' [0, 4] and 'b' [8, 12]");
  // A zero-size tensor inside another one.
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [0, 8]}, "
                        "\"b\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 4]}}",
                        eight),
              "overlap");
  // Header order need not be offset order.
  const Bytes swapped = make_file("{\"a\": " + f1 + "[4, 8]}, \"b\": " + f1 + "[0, 4]}}", eight);
  CHECK(parse_safetensors(swapped.data(), swapped.size(), "p").size() == 2);
  // What tapegrad writes loads (also the sample with empty tensors, and a whole model).
  const Bytes ours = serialize_safetensors(sample_tensors(), {{"format", "pt"}});
  CHECK(parse_safetensors(ours.data(), ours.size(), "p").size() == sample_tensors().size());
  TempDir dir;
  manual_seed(4);
  nn::TextClassifier m({.vocab_size = 20, .embed = 6, .hidden = 5, .layers = 2, .cell = nn::CellType::GRU,
                        .bidirectional = true});
  nn::save_weights(m, dir.path / "m.safetensors");
  CHECK_NOTHROW(nn::load_weights(m, dir.path / "m.safetensors"));
}

// Generates a header of `count` zero-size entries (names in order, or `reversed`).
static Bytes many_entries(int count, bool reversed, const std::string& extra = "") {
  std::string h = "{";
  h.reserve(static_cast<size_t>(count) * 56 + 64);
  char buf[96];
  for (int i = 0; i < count; ++i) {
    const int k = std::snprintf(buf, sizeof buf, "%s\"t%07d\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}",
                                i ? "," : "", reversed ? count - 1 - i : i);
    h.append(buf, static_cast<size_t>(k));
  }
  h += extra + "}";
  return make_file(h);
}

TEST_CASE("safetensors: a header of a million entries parses (the parser is linear; it was quadratic)") {
  // 1,000,000 zero-size entries, 55 MB of header. The old parser (nlohmann's callback parser,
  // which walks the parent object at every object end) took 3.4 s for 20,000 and 15 s for 40,000
  // entries: quadratic, so about 2.5 hours for this one, far past the CTest timeout (1500 s).
  // Nothing is timed here: the test only has to finish.
  const int n = 1'000'000;
  for (bool reversed : {false, true}) {
    const Bytes b = many_entries(n, reversed);
    REQUIRE(b.size() - 8 <= kMaxSafetensorsHeader);
    const NamedTensors t = parse_safetensors(b.data(), b.size(), "big");
    REQUIRE(t.size() == static_cast<size_t>(n));
    CHECK(t.front().first == "t0000000");
    CHECK(t.back().first == "t0999999");
    CHECK(t[500000].second.shape() == Shape{0});
  }
  // Duplicate keys are still found, at the end of a long header too.
  CHECK_ERROR(many_entries(n, false, ",\"t0000000\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[0,0]}"),
              "repeats the key 't0000000'");
}

TEST_CASE("safetensors: repeated keys are refused at every level") {
  const std::string e = "{\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}";
  CHECK_ERROR(make_file("{\"a\": " + e + ", \"b\": " + e + ", \"a\": " + e + "}"), "repeats the key 'a'");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}}"),
              "repeats the key 'dtype'");
  CHECK_ERROR(make_file("{\"__metadata__\": {\"k\": \"1\", \"k\": \"2\"}}"), "repeats the key 'k'");
  CHECK_ERROR(make_file("{\"__metadata__\": {}, \"__metadata__\": {}}"), "repeats the key '__metadata__'");
  // The same name spelled with and without an escape is the same key (names are compared decoded).
  CHECK_ERROR(make_file("{\"ab\": " + e + ", \"\\u0061b\": " + e + "}"), "repeats the key 'ab'");
  CHECK_ERROR(make_file("{\"model.layers.1.w\\n\": " + e + ", \"model.layers.1.w\\u000a\": " + e + "}"),
              "repeats the key 'model.layers.1.w\\x0a'");
  // Inside a value that is wrong anyway, the repeat is what is reported.
  CHECK_ERROR(make_file("{\"a\": {\"x\": {\"y\": 1, \"y\": 2}}}"), "repeats the key 'y'");
}

TEST_CASE("safetensors: the header must be strict JSON") {
  const std::string e = "{\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [0, 0]}";
  CHECK_ERROR(make_file("{\"a\": " + e + ",}"), "not valid JSON");                      // trailing comma
  CHECK_ERROR(make_file("{\"a\": " + e + " // c\n}"), "not valid JSON");                 // comment
  CHECK_ERROR(make_file("\xEF\xBB\xBF{}"), "not valid JSON");                            // BOM
  CHECK_ERROR(make_file("{\"a\\x\": " + e + "}"), "invalid escape");                     // bad escape
  CHECK_ERROR(make_file("{\"a\tb\": " + e + "}"), "control character 0x09");             // raw tab in a string
  CHECK_ERROR(make_file("{\"\xC3\x28\": " + e + "}"), "invalid UTF-8");                  // bad UTF-8
  CHECK_ERROR(make_file("{\"\xED\xA0\x80\": " + e + "}"), "invalid UTF-8");              // UTF-8 surrogate
  CHECK_ERROR(make_file("{\"\\ud800\": " + e + "}"), "high surrogate without a low one");
  CHECK_ERROR(make_file("{\"\\udc00\": " + e + "}"), "low surrogate");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [01], \"data_offsets\": [0, 0]}}"), "not valid JSON");
  CHECK_ERROR(make_file("{\"a\": {\"dtype\": \"F32\", \"shape\": [NaN], \"data_offsets\": [0, 0]}}"), "not valid JSON");
  CHECK_ERROR(make_file("   "), "only whitespace");
  // Escapes decode; padding spaces and newlines are whitespace.
  const Bytes fine = make_file("{\"\\u00e9\\ud83d\\ude00\\n\": " + e + "}\n   ");
  const NamedTensors t = parse_safetensors(fine.data(), fine.size(), "p");
  REQUIRE(t.size() == 1);
  CHECK(t[0].first == "\xC3\xA9\xF0\x9F\x98\x80\n");
}

TEST_CASE("safetensors: a directory, a FIFO and a huge sparse file are refused by name, without reading them") {
  TempDir dir;
  auto load_error = [](const fs::path& p) {
    try {
      load_safetensors(p);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    } catch (const std::exception& e) {
      return std::string("WRONG EXCEPTION TYPE: ") + e.what();
    }
    return std::string("NO ERROR");
  };
  std::string msg = load_error(dir.path);
  INFO(msg);
  CHECK(msg.find(dir.path.string()) != std::string::npos);
  CHECK(msg.find("is a directory, not a regular file") != std::string::npos);

  const fs::path fifo = dir.path / "pipe.safetensors";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  msg = load_error(fifo);  // used to block forever waiting for a writer
  CHECK(msg.find("pipe.safetensors is a FIFO (named pipe), not a regular file") != std::string::npos);
  CHECK(load_error("/dev/null").find("/dev/null is a character device") != std::string::npos);
  CHECK_THROWS_AS(read_safetensors_metadata(dir.path), std::runtime_error);

  // 1 TB sparse files: a small header and then nothing the header declares; then a header that
  // declares the whole terabyte as one tensor. Neither may allocate the file's size.
  const fs::path big = dir.path / "sparse.safetensors";
  auto sparse = [&](const std::string& header) {
    write_bytes(big, make_file(header));
    return ::truncate(big.c_str(), static_cast<off_t>(uint64_t(1) << 40)) == 0;
  };
  if (sparse("{}")) {
    msg = load_error(big);
    CHECK(msg.find("sparse.safetensors") != std::string::npos);
    CHECK(msg.find("trailing bytes after the last tensor") != std::string::npos);
    const uint64_t data = (uint64_t(1) << 40) - 8 - 128;
    std::string h = fmt::format("{{\"a\": {{\"dtype\": \"F32\", \"shape\": [{}], \"data_offsets\": [0, {}]}}}}",
                                data / 4, data);
    REQUIRE(h.size() <= 128);
    h.append(128 - h.size(), ' ');
    REQUIRE(sparse(h));
    msg = load_error(big);
    INFO(msg);
    CHECK(msg.find("sparse.safetensors") != std::string::npos);
    CHECK((msg.find("more than this machine's") != std::string::npos || msg.find("cannot allocate") != std::string::npos));
  } else {
    MESSAGE("this file system cannot hold a 1 TB sparse file; sparse cases skipped");
  }
  // A header length larger than the file is caught before the header is read.
  write_bytes(big, make_file("{}", {}, 99'000'000));
  CHECK(load_error(big).find("runs past the end of the file") != std::string::npos);
}

TEST_CASE("safetensors: non-finite weights are refused with the tensor and index, unless allowed") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  Tensor a = from_vector(std::vector<float>{0, 1, 2, 3, 4, nan}, Shape{2, 3});
  Tensor b = from_vector(std::vector<double>{1, -std::numeric_limits<double>::infinity()}, Shape{2});
  Tensor c = from_vector(std::vector<float>{std::numeric_limits<float>::infinity()}, Shape{});
  for (auto [t, phrase] : {std::pair{a, "tensor 'w' holds NaN at element 5 (index [1, 2])"},
                           std::pair{b, "tensor 'w' holds -Inf at element 1 (index [1])"},
                           std::pair{c, "tensor 'w' holds +Inf at element 0 (index [])"}}) {
    const Bytes file = serialize_safetensors({{"ok", zeros({2})}, {"w", t}});
    CHECK_ERROR(file, phrase);
    CHECK_ERROR(file, "LoadOptions{.allow_non_finite = true}");
    const NamedTensors got = parse_safetensors(file.data(), file.size(), "p", nullptr, {.allow_non_finite = true});
    CHECK(same_bytes(got.at(1).second, t));
  }
  // Through a file and into a model: refused, model unchanged; allowed on request.
  TempDir dir;
  manual_seed(5);
  nn::TextClassifier m({.vocab_size = 10, .embed = 4, .hidden = 3});
  NamedTensors state;
  for (auto& [name, t] : m.state_dict()) state.emplace_back(name, t.clone());
  Tensor& w = state.back().second;  // fc.bias or similar
  static_cast<float*>(w.raw_data())[0] = nan;
  save_safetensors(dir.path / "nan.safetensors", state);
  const auto before = m.state_dict();
  try {
    nn::load_weights(m, dir.path / "nan.safetensors");
    FAIL("expected an error");
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    CHECK(msg.find("nan.safetensors") != std::string::npos);
    CHECK(msg.find("tensor '" + state.back().first + "' holds NaN at element 0") != std::string::npos);
  }
  for (auto& [name, t] : m.state_dict()) CHECK(same_bytes(t, before.at(name)));
  CHECK_THROWS_AS(load_safetensors(dir.path / "nan.safetensors"), std::runtime_error);
  nn::load_weights(m, dir.path / "nan.safetensors", true, nullptr, {.allow_non_finite = true});
  REQUIRE(m.state_dict().at(state.back().first).dtype() == DType::Float32);
  CHECK(std::isnan(static_cast<const float*>(m.state_dict().at(state.back().first).contiguous().raw_data())[0]));
}

TEST_CASE("safetensors: names in error messages have control characters escaped") {
  CHECK(printable("plain.name") == "plain.name");
  CHECK(printable("h\xC3\xA9llo") == "h\xC3\xA9llo");
  CHECK(printable("a\x1b[31mred\n") == "a\\x1b[31mred\\x0a");
  CHECK(printable("back\\slash") == "back\\\\slash");
  CHECK(printable("c1\xC2\x9B" "x") == "c1\\u009bx");
  CHECK(printable("bidi\xE2\x80\xAE") == "bidi\\u202e");
  CHECK(printable("\xFF\xC3") == "\\xff\\xc3");
  CHECK(printable("abcdef", 3) == "abc...");
  // From the parser (a JSON escape can put any control character into a name).
  CHECK_ERROR(make_file("{\"evil\\u001b[2J\": {\"dtype\": \"F16\", \"shape\": [0], \"data_offsets\": [0, 0]}}"),
              "tensor 'evil\\x1b[2J': dtype 'F16'");
  // From load_weights / load_state_dict (unexpected keys).
  TempDir dir;
  manual_seed(6);
  nn::TextClassifier m({.vocab_size = 10, .embed = 4, .hidden = 3});
  NamedTensors state;
  for (auto& [name, t] : m.state_dict()) state.emplace_back(name, t);
  state.emplace_back("x\x1b]0;pwned\x07", zeros({1}));
  save_safetensors(dir.path / "ctl.safetensors", state);
  try {
    nn::load_weights(m, dir.path / "ctl.safetensors");
    FAIL("expected an error");
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    INFO(msg);
    CHECK(msg.find("x\\x1b]0;pwned\\x07") != std::string::npos);
    CHECK(msg.find('\x1b') == std::string::npos);
  }
  CHECK_NOTHROW(nn::load_weights(m, dir.path / "ctl.safetensors", false));
}

TEST_CASE("safetensors: string metadata round trips and can be read without the data") {
  TempDir dir;
  manual_seed(7);
  nn::TextClassifier m({.vocab_size = 10, .embed = 4, .hidden = 3});
  const std::map<std::string, std::string> meta{{"tapegrad.config", "{\"embed\": 4, \"hidden\": 3}"}, {"format", "pt"}};
  nn::save_weights(m, dir.path / "m.safetensors", meta);
  TensorMetadata read = read_safetensors_metadata(dir.path / "m.safetensors");
  CHECK(read.count(kChecksumKey) == 1);
  read.erase(kChecksumKey);
  CHECK(read == meta);
  std::map<std::string, std::string> loaded;
  nn::load_weights(m, dir.path / "m.safetensors", true, &loaded);
  loaded.erase(kChecksumKey);
  CHECK(loaded == meta);
  // Header only: a corrupt data section does not stop it (load_safetensors would refuse it).
  Bytes b = read_bytes(dir.path / "m.safetensors");
  b.back() ^= 1;
  write_bytes(dir.path / "m.safetensors", b);
  CHECK(read_safetensors_metadata(dir.path / "m.safetensors").at("format") == "pt");
  CHECK_THROWS_AS(load_safetensors(dir.path / "m.safetensors"), std::runtime_error);
}

TEST_CASE("safetensors: fuzz regression inputs are refused (or, a valid one, load)") {
  const fs::path dir = fs::path(TG_SOURCE_DIR) / "tests" / "fuzz" / "regressions" / "safetensors";
  REQUIRE(fs::is_directory(dir));
  int count = 0;
  for (const auto& f : fs::directory_iterator(dir)) {
    INFO(f.path().string());
    const Bytes b = read_bytes(f.path());
    if (f.path().filename() == "control_bytes_name") {  // a valid file: the name is only printed escaped
      CHECK(parse_safetensors(b.data(), b.size(), "p").at(0).first == "x\x1b]0;t\x07");
      continue;
    }
    if (f.path().filename() == "mixed_pytorch_names") {  // valid: one weight named PyTorch's way
      CHECK(parse_safetensors(b.data(), b.size(), "p").back().first == "rnn.weight_hh_l0");
      continue;
    }
    CHECK(error_of(b).find("probe.safetensors") != std::string::npos);
    ++count;
  }
  CHECK(count >= 5);  // and control_bytes_name
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
