// safetensors reading and writing; see safetensors.h for the format.
#include "tapegrad/autograd/safetensors.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <deque>
#include <limits>
#include <stdexcept>
#include <unordered_set>

#include <nlohmann/json.hpp>

namespace tg {

static_assert(std::endian::native == std::endian::little,
              "safetensors IO copies tensor bytes as they are: a big-endian host needs byte swaps here");

namespace {

using json = nlohmann::json;

constexpr int kMaxJsonDepth = 16;  // a valid header nests 3 levels deep

const char* st_dtype(DType t) {
  switch (t) {
    case DType::Float32: return "F32";
    case DType::Float64: return "F64";
    case DType::Int64: return "I64";
  }
  return "?";
}

bool parse_st_dtype(const std::string& s, DType& out) {
  if (s == "F32") out = DType::Float32;
  else if (s == "F64") out = DType::Float64;
  else if (s == "I64") out = DType::Int64;
  else return false;
  return true;
}

std::string checksum_text(uint32_t crc) { return fmt::format("crc32:{:08x}", crc); }

std::string errno_text() { return std::strerror(errno); }

// Names and JSON text may be anything here: keep error messages short and printable.
std::string preview(std::string_view s) { return printable(s, 40); }

struct Entry {
  // Into the header text (or, for a name written with escapes, into HeaderParser::decoded): no
  // allocation per entry while parsing; the text must outlive the entries.
  std::string_view name;
  DType dtype = DType::Float32;
  Shape shape;
  uint64_t begin = 0, end = 0;
};

}  // namespace

uint32_t crc32(const void* data, size_t size, uint32_t crc) {
  static const std::array<uint32_t, 256> table = [] {
    std::array<uint32_t, 256> t{};
    for (uint32_t i = 0; i < 256; ++i) {
      uint32_t c = i;
      for (int k = 0; k < 8; ++k) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
      t[i] = c;
    }
    return t;
  }();
  const auto* p = static_cast<const uint8_t*>(data);
  crc = ~crc;
  for (size_t i = 0; i < size; ++i) crc = table[(crc ^ p[i]) & 0xFFu] ^ (crc >> 8);
  return ~crc;
}

std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors, const TensorMetadata& metadata) {
  std::vector<std::pair<std::string, Tensor>> sorted;
  sorted.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    if (!t.defined()) throw std::invalid_argument(fmt::format("save_safetensors: tensor '{}' is undefined", name));
    if (name == "__metadata__")
      throw std::invalid_argument("save_safetensors: '__metadata__' is reserved and cannot name a tensor");
    sorted.emplace_back(name, t.detach().contiguous());
  }
  std::sort(sorted.begin(), sorted.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 1; i < sorted.size(); ++i)
    if (sorted[i].first == sorted[i - 1].first)
      throw std::invalid_argument(fmt::format("save_safetensors: tensor name '{}' appears twice", sorted[i].first));
  if (metadata.count(kChecksumKey))
    throw std::invalid_argument(fmt::format("save_safetensors: metadata key '{}' is reserved (it is filled in)",
                                            kChecksumKey));

  json header = json::object();
  uint64_t offset = 0;
  uint32_t crc = 0;
  for (const auto& [name, t] : sorted) {
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * dtype_size(t.dtype());
    header[name] = {{"dtype", st_dtype(t.dtype())}, {"shape", t.shape().vec()}, {"data_offsets", {offset, offset + bytes}}};
    if (bytes) crc = crc32(t.raw_data(), bytes, crc);
    offset += bytes;
  }
  json meta = json::object();
  for (const auto& [k, v] : metadata) meta[k] = v;
  meta[kChecksumKey] = checksum_text(crc);
  header["__metadata__"] = std::move(meta);

  std::string text;
  try {
    text = header.dump();
  } catch (const json::exception& e) {  // a name or metadata string that is not valid UTF-8
    throw std::invalid_argument(fmt::format("save_safetensors: cannot encode the header: {}", e.what()));
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  std::vector<uint8_t> out(8 + text.size() + offset);
  const uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out[i] = static_cast<uint8_t>(n >> (8 * i));
  std::memcpy(out.data() + 8, text.data(), text.size());
  uint8_t* p = out.data() + 8 + text.size();
  for (const auto& [name, t] : sorted) {
    const size_t bytes = static_cast<size_t>(t.numel()) * dtype_size(t.dtype());
    if (bytes) std::memcpy(p, t.raw_data(), bytes);
    p += bytes;
  }
  return out;
}

void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors, const TensorMetadata& metadata) {
  const std::vector<uint8_t> bytes = serialize_safetensors(tensors, metadata);
  std::filesystem::path tmp = path;
  tmp += ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) throw std::runtime_error(fmt::format("save_safetensors: cannot create {}: {}", tmp.string(), errno_text()));
  bool ok = bytes.empty() || std::fwrite(bytes.data(), 1, bytes.size(), f) == bytes.size();
  ok = ok && std::fflush(f) == 0 && ::fsync(::fileno(f)) == 0;
  std::string err = ok ? "" : errno_text();
  if (std::fclose(f) != 0 && ok) {
    ok = false;
    err = errno_text();
  }
  if (!ok) {
    std::remove(tmp.c_str());
    throw std::runtime_error(fmt::format("save_safetensors: writing {} failed: {}", tmp.string(), err));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    err = errno_text();
    std::remove(tmp.c_str());
    throw std::runtime_error(fmt::format("save_safetensors: renaming {} to {} failed: {}", tmp.string(),
                                         path.string(), err));
  }
  // Make the rename itself durable.
  std::filesystem::path dir = path.parent_path();
  if (dir.empty()) dir = ".";
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0 || ::fsync(fd) != 0) {
    err = errno_text();
    if (fd >= 0) ::close(fd);
    throw std::runtime_error(fmt::format("save_safetensors: syncing directory {} failed: {}", dir.string(), err));
  }
  ::close(fd);
}

// ---------------------------------------------------------------------------------------------
// Reading.
//
// The header is parsed by a small strict JSON reader written for this structure: one pass over
// the text, no DOM, so any header within kMaxSafetensorsHeader parses in linear time. (nlohmann's
// callback parser walks the parent object at every object end, which made 200,000 entries take
// hours.) It accepts exactly RFC 8259 JSON (strings must be valid UTF-8, no BOM, no comments) and
// rejects duplicate keys in any object. Errors: a syntax error or too deep nesting is reported
// at once; otherwise a repeated key; otherwise the first structural problem found.

namespace {

struct JsonSyntaxError {
  std::string what;
  size_t offset;
};
struct JsonTooDeep {};

class HeaderParser {
 public:
  HeaderParser(std::string_view text, uint64_t data_size) : begin_(text.data()), p_(text.data()),
                                                            end_(text.data() + text.size()), data_size_(data_size) {}

  std::vector<Entry> entries;
  std::deque<std::string> decoded;  // names that held escapes (Entry::name points here)
  TensorMetadata metadata;
  std::string error;      // the first structural problem
  std::string duplicate;  // the first repeated key found while parsing (top-level names: see below)

  void parse() {
    ws();
    if (p_ == end_) syntax(begin_ == end_ ? "the header is empty" : "the header holds only whitespace");
    if (*p_ != '{') {
      note(fmt::format("header must be a JSON object, got {}", type_here()));
      skip_value();
    } else {
      top_object();
    }
    ws();
    if (p_ != end_) syntax(fmt::format("unexpected {} after the end of the JSON value", char_here()));
  }

 private:
  const char* const begin_;
  const char* p_;
  const char* const end_;
  const uint64_t data_size_;
  int depth_ = 0;
  bool have_metadata_ = false;
  std::string scratch_;

  [[noreturn]] void syntax(const std::string& what) { throw JsonSyntaxError{what, static_cast<size_t>(p_ - begin_)}; }
  void note(std::string what) {
    if (error.empty()) error = std::move(what);
  }
  void note_duplicate(std::string_view key) {
    if (duplicate.empty()) duplicate = std::string(key);
  }
  std::string char_here() const {
    if (p_ == end_) return "end of header";
    const auto u = static_cast<unsigned char>(*p_);
    return (u >= 0x20 && u < 0x7f) ? fmt::format("'{}'", *p_) : fmt::format("byte 0x{:02x}", u);
  }
  const char* type_here() const {
    switch (*p_) {
      case '{': return "object";
      case '[': return "array";
      case '"': return "string";
      case 't': case 'f': return "boolean";
      case 'n': return "null";
      default: return "number";
    }
  }
  void ws() {
    while (p_ != end_ && (*p_ == ' ' || *p_ == '\n' || *p_ == '\r' || *p_ == '\t')) ++p_;
  }
  void expect(char c, const char* context) {
    ws();
    if (p_ == end_ || *p_ != c) syntax(fmt::format("expected '{}' {}, got {}", c, context, char_here()));
    ++p_;
  }
  void enter() {
    if (++depth_ > kMaxJsonDepth) throw JsonTooDeep{};
  }

  // Text of a value for messages: its source with whitespace outside strings removed, at most
  // about 60 characters (preview() shortens it further).
  static std::string compact(const char* from, const char* to) {
    std::string out;
    bool in_string = false, escaped = false;
    for (const char* q = from; q != to && out.size() < 60; ++q) {
      const char c = *q;
      if (in_string) {
        if (escaped) escaped = false;
        else if (c == '\\') escaped = true;
        else if (c == '"') in_string = false;
      } else if (c == '"') {
        in_string = true;
      } else if (c == ' ' || c == '\n' || c == '\r' || c == '\t') {
        continue;
      }
      out += c;
    }
    return out;
  }

  unsigned hex4() {
    if (end_ - p_ < 4) syntax("truncated \\u escape");
    unsigned v = 0;
    for (int i = 0; i < 4; ++i, ++p_) {
      const char c = *p_;
      v <<= 4;
      if (c >= '0' && c <= '9') v |= static_cast<unsigned>(c - '0');
      else if (c >= 'a' && c <= 'f') v |= static_cast<unsigned>(c - 'a' + 10);
      else if (c >= 'A' && c <= 'F') v |= static_cast<unsigned>(c - 'A' + 10);
      else syntax("\\u must be followed by 4 hex digits");
    }
    return v;
  }
  static void put_utf8(std::string& out, unsigned cp) {
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else if (cp < 0x800) {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      out += static_cast<char>(0xE0 | (cp >> 12));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      out += static_cast<char>(0xF0 | (cp >> 18));
      out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  // One UTF-8 sequence starting at p_ (a byte >= 0x80), as RFC 3629 allows; advances past it.
  void utf8_sequence() {
    const auto b0 = static_cast<unsigned char>(*p_);
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (b0 >= 0xC2 && b0 <= 0xDF) len = 2;
    else if (b0 == 0xE0) len = 3, lo = 0xA0;
    else if (b0 == 0xED) len = 3, hi = 0x9F;  // no UTF-16 surrogates
    else if (b0 >= 0xE1 && b0 <= 0xEF) len = 3;
    else if (b0 == 0xF0) len = 4, lo = 0x90;
    else if (b0 == 0xF4) len = 4, hi = 0x8F;  // nothing above U+10FFFF
    else if (b0 >= 0xF1 && b0 <= 0xF3) len = 4;
    else syntax(fmt::format("invalid UTF-8 byte 0x{:02x} in a string", b0));
    if (end_ - p_ < len) syntax("truncated UTF-8 sequence in a string");
    for (int i = 1; i < len; ++i) {
      const auto b = static_cast<unsigned char>(p_[i]);
      if (b < (i == 1 ? lo : 0x80) || b > (i == 1 ? hi : 0xBF)) {
        p_ += i;
        syntax(fmt::format("invalid UTF-8 sequence in a string (byte 0x{:02x})", b));
      }
    }
    p_ += len;
  }
  // A string at p_ (which is '"'): a view of its text in the header when it has no escape (the
  // usual case: no copy), else its decoded text in `scratch`.
  std::string_view string_view(std::string& scratch) {
    const char* from = p_ + 1;
    for (const char* q = from; q != end_; ++q) {
      const auto u = static_cast<unsigned char>(*q);
      if (u == '"') {
        p_ = q + 1;
        return {from, static_cast<size_t>(q - from)};
      }
      if (u == '\\' || u < 0x20 || u >= 0x80) break;  // escapes, errors and UTF-8: the full reader
    }
    string(scratch);
    return scratch;
  }
  // A string at p_ (which is '"'); its decoded text into `out`.
  void string(std::string& out) {
    out.clear();
    ++p_;
    const char* run = p_;
    while (true) {
      if (p_ == end_) syntax("unterminated string");
      const auto u = static_cast<unsigned char>(*p_);
      if (u == '"') {
        out.append(run, p_);
        ++p_;
        return;
      }
      if (u == '\\') {
        out.append(run, p_);
        if (++p_ == end_) syntax("unterminated string");
        const char e = *p_++;
        switch (e) {
          case '"': out += '"'; break;
          case '\\': out += '\\'; break;
          case '/': out += '/'; break;
          case 'b': out += '\b'; break;
          case 'f': out += '\f'; break;
          case 'n': out += '\n'; break;
          case 'r': out += '\r'; break;
          case 't': out += '\t'; break;
          case 'u': {
            unsigned cp = hex4();
            if (cp >= 0xDC00 && cp <= 0xDFFF) syntax("\\u escape of a low surrogate without a high one");
            if (cp >= 0xD800 && cp <= 0xDBFF) {
              if (end_ - p_ < 2 || p_[0] != '\\' || p_[1] != 'u') syntax("\\u escape of a high surrogate without a low one");
              p_ += 2;
              const unsigned low = hex4();
              if (low < 0xDC00 || low > 0xDFFF) syntax("\\u escape of a high surrogate without a low one");
              cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            }
            put_utf8(out, cp);
            break;
          }
          default:
            --p_;
            syntax(fmt::format("invalid escape '\\{}' in a string", preview(std::string_view(p_, 1))));
        }
        run = p_;
      } else if (u < 0x20) {
        syntax(fmt::format("control character 0x{:02x} in a string (must be escaped)", u));
      } else if (u >= 0x80) {
        utf8_sequence();
      } else {
        ++p_;
      }
    }
  }
  // A number at p_. True with `value` when it is an integer in [0, UINT64_MAX] (as nlohmann reads
  // "-0" as the integer 0, so do we).
  bool number(uint64_t& value) {
    bool negative = false, zero = true, overflow = false, integral = true;
    value = 0;
    if (*p_ == '-') {
      negative = true;
      ++p_;
    }
    auto digit = [&] { return p_ != end_ && *p_ >= '0' && *p_ <= '9'; };
    if (!digit()) syntax("invalid number");
    if (*p_ == '0') {
      ++p_;
    } else {
      while (digit()) {
        const auto d = static_cast<uint64_t>(*p_ - '0');
        zero = false;
        if (__builtin_mul_overflow(value, 10, &value) || __builtin_add_overflow(value, d, &value)) overflow = true;
        ++p_;
      }
    }
    if (p_ != end_ && *p_ == '.') {
      ++p_;
      if (!digit()) syntax("invalid number: no digit after '.'");
      while (digit()) ++p_;
      integral = false;
    }
    if (p_ != end_ && (*p_ == 'e' || *p_ == 'E')) {
      ++p_;
      if (p_ != end_ && (*p_ == '+' || *p_ == '-')) ++p_;
      if (!digit()) syntax("invalid number: no digit in the exponent");
      while (digit()) ++p_;
      integral = false;
    }
    return integral && !overflow && (!negative || zero);
  }
  void literal(std::string_view word) {
    if (static_cast<size_t>(end_ - p_) < word.size() || std::string_view(p_, word.size()) != word)
      syntax(fmt::format("unexpected {}", char_here()));
    p_ += word.size();
  }

  // Any value, checked and dropped (repeated keys in its objects are still noted).
  void skip_value() {
    ws();
    if (p_ == end_) syntax("expected a value, got end of header");
    switch (*p_) {
      case '{': {
        enter();
        ++p_;
        std::unordered_set<std::string> keys;
        ws();
        if (p_ != end_ && *p_ == '}') {
          ++p_;
        } else {
          while (true) {
            ws();
            if (p_ == end_ || *p_ != '"') syntax(fmt::format("expected a string key, got {}", char_here()));
            string(scratch_);
            if (!keys.insert(scratch_).second) note_duplicate(scratch_);
            expect(':', "after an object key");
            skip_value();
            ws();
            if (p_ != end_ && *p_ == ',') { ++p_; continue; }
            if (p_ != end_ && *p_ == '}') { ++p_; break; }
            syntax(fmt::format("expected ',' or '}}' in an object, got {}", char_here()));
          }
        }
        --depth_;
        return;
      }
      case '[': {
        enter();
        ++p_;
        ws();
        if (p_ != end_ && *p_ == ']') {
          ++p_;
        } else {
          while (true) {
            skip_value();
            ws();
            if (p_ != end_ && *p_ == ',') { ++p_; continue; }
            if (p_ != end_ && *p_ == ']') { ++p_; break; }
            syntax(fmt::format("expected ',' or ']' in an array, got {}", char_here()));
          }
        }
        --depth_;
        return;
      }
      case '"': string(scratch_); return;
      case 't': literal("true"); return;
      case 'f': literal("false"); return;
      case 'n': literal("null"); return;
      default: {
        if (*p_ != '-' && (*p_ < '0' || *p_ > '9')) syntax(fmt::format("expected a value, got {}", char_here()));
        uint64_t ignored;
        number(ignored);
        return;
      }
    }
  }

  // An object's members: calls member(key) with p_ at the value, which must consume it.
  template <class F>
  void members(F&& member) {
    enter();
    ++p_;  // '{'
    ws();
    if (p_ != end_ && *p_ == '}') {
      ++p_;
      --depth_;
      return;
    }
    std::string scratch;
    while (true) {
      ws();
      if (p_ == end_ || *p_ != '"') syntax(fmt::format("expected a string key, got {}", char_here()));
      const std::string_view key = string_view(scratch);
      expect(':', "after an object key");
      ws();
      if (p_ == end_) syntax("expected a value, got end of header");
      member(key);
      ws();
      if (p_ != end_ && *p_ == ',') { ++p_; continue; }
      if (p_ != end_ && *p_ == '}') { ++p_; break; }
      syntax(fmt::format("expected ',' or '}}' in an object, got {}", char_here()));
    }
    --depth_;
  }

  // An array of non-negative integers <= limit. Returns false (after consuming it) when any
  // element is something else; `count` is the number of elements, the first `cap` stored.
  bool counts(uint64_t limit, uint64_t* out, size_t cap, size_t& count) {
    enter();
    ++p_;  // '['
    count = 0;
    bool ok = true;
    ws();
    if (p_ != end_ && *p_ == ']') {
      ++p_;
      --depth_;
      return true;
    }
    while (true) {
      ws();
      if (p_ == end_) syntax("expected a value, got end of header");
      uint64_t v = 0;
      if (*p_ == '-' || (*p_ >= '0' && *p_ <= '9')) {
        if (!number(v) || v > limit) ok = false;
      } else {
        skip_value();
        ok = false;
      }
      if (count < cap) out[count] = v;
      ++count;
      ws();
      if (p_ != end_ && *p_ == ',') { ++p_; continue; }
      if (p_ != end_ && *p_ == ']') { ++p_; break; }
      syntax(fmt::format("expected ',' or ']' in an array, got {}", char_here()));
    }
    --depth_;
    return ok;
  }

  void top_object() {
    members([&](std::string_view key) {
      if (key == "__metadata__") {
        if (have_metadata_) note_duplicate(key);
        have_metadata_ = true;
        metadata_object();
      } else {
        entry(key);
      }
    });
  }

  void metadata_object() {
    if (*p_ != '{') {
      note(fmt::format("__metadata__ must be an object, got {}", type_here()));
      skip_value();
      return;
    }
    members([&](std::string_view key) {
      if (*p_ != '"') {
        note(fmt::format("__metadata__ value of '{}' must be a string, got {}", preview(key), type_here()));
        skip_value();
        return;
      }
      std::string value;
      string(value);
      if (!metadata.emplace(std::string(key), std::move(value)).second) note_duplicate(key);
    });
  }

  void entry(std::string_view key) {
    entries.emplace_back();
    Entry& e = entries.back();
    if (key.data() >= begin_ && key.data() < end_) {
      e.name = key;
    } else {  // decoded from escapes: kept here (a deque never moves its elements)
      decoded.emplace_back(key);
      e.name = decoded.back();
    }
    auto who = [&] { return fmt::format("tensor '{}'", preview(key)); };  // only on errors: this runs per entry
    if (*p_ != '{') {
      note(fmt::format("{}: entry must be an object, got {}", who(), type_here()));
      skip_value();
      return;
    }
    bool have_dtype = false, have_shape = false, have_offsets = false, bad = false;
    std::string dtype_text;
    const char *shape_from = nullptr, *shape_to = nullptr;
    auto shape_text = [&] { return preview(compact(shape_from, shape_to)); };
    uint64_t dims[kMaxRank] = {};
    size_t rank = 0;
    uint64_t offsets[2] = {};
    auto fail = [&](std::string what) {
      bad = true;
      note(fmt::format("{}: {}", who(), what));
    };
    members([&](std::string_view field) {
      const char* start = p_;
      if (field == "dtype") {
        if (have_dtype) note_duplicate(field);
        have_dtype = true;
        if (*p_ != '"') {
          fail(fmt::format("dtype must be a string, got {}", type_here()));
          skip_value();
          return;
        }
        string(dtype_text);
        if (!parse_st_dtype(dtype_text, e.dtype))
          fail(fmt::format("dtype '{}' is not supported (tapegrad reads F32, F64 and I64)", preview(dtype_text)));
      } else if (field == "shape") {
        if (have_shape) note_duplicate(field);
        have_shape = true;
        if (*p_ != '[') {
          fail(fmt::format("shape must be an array, got {}", type_here()));
          skip_value();
          return;
        }
        const bool ok = counts(static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), dims, kMaxRank, rank);
        shape_from = start;
        shape_to = p_;
        if (rank > static_cast<size_t>(kMaxRank)) fail(fmt::format("rank {} exceeds tapegrad's maximum of {}", rank, kMaxRank));
        else if (!ok) fail(fmt::format("shape {} must hold non-negative integers", shape_text()));
      } else if (field == "data_offsets") {
        if (have_offsets) note_duplicate(field);
        have_offsets = true;
        size_t n = 0;
        bool ok = false;
        if (*p_ == '[') ok = counts(std::numeric_limits<uint64_t>::max(), offsets, 2, n) && n == 2;
        else skip_value();
        if (!ok)
          fail(fmt::format("data_offsets must be [begin, end] with non-negative integers, got {}",
                           preview(compact(start, p_))));
      } else {
        fail(fmt::format("unknown field '{}' (expected dtype, shape, data_offsets)", preview(field)));
        skip_value();
      }
    });
    if (bad) return;
    for (auto [have, field] : {std::pair{have_dtype, "dtype"}, {have_shape, "shape"}, {have_offsets, "data_offsets"}})
      if (!have) return fail(fmt::format("missing field '{}'", field));

    // Every partial product of the non-zero dims must fit, or Shape::numel and the strides overflow.
    const uint64_t elem = dtype_size(e.dtype);
    const uint64_t max_elems = static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / elem;
    uint64_t numel = 1, nonzero = 1;
    for (size_t i = 0; i < rank; ++i) {
      const uint64_t dim = dims[i];
      if ((dim != 0 && __builtin_mul_overflow(nonzero, dim, &nonzero)) || nonzero > max_elems)
        return fail(fmt::format("shape {} has too many elements", shape_text()));
      e.shape.push_back(static_cast<int64_t>(dim));
      numel *= dim;  // <= nonzero, so no overflow
    }
    const uint64_t begin = offsets[0], end = offsets[1];
    if (begin > end) return fail(fmt::format("data_offsets [{}, {}] has begin > end", begin, end));
    if (end > data_size_)
      return fail(fmt::format("data_offsets [{}, {}] run past the {}-byte data section (truncated file?)", begin, end,
                              data_size_));
    if (numel * elem != end - begin)
      return fail(fmt::format("shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}", e.shape.str(),
                              dtype_text, numel * elem, begin, end, end - begin));
    e.begin = begin;
    e.end = end;
  }
};

}  // namespace

namespace {

// An error naming the file: "safetensors file <name>: <what>".
struct Where {
  std::string_view file;
  std::runtime_error operator()(std::string_view what) const {
    return std::runtime_error(fmt::format("safetensors file {}: {}", file, what));
  }
};

struct Header {
  std::vector<Entry> entries;    // in header order (never moved: an entry is large)
  std::deque<std::string> decoded;  // what names with escapes point into
  std::vector<uint32_t> by_name;  // indices into entries, sorted by name
  std::vector<size_t> order;      // indices into entries by offset: they tile the data section
  TensorMetadata metadata;
};

// The header length from the first 8 bytes of a `size`-byte file.
uint64_t header_length(const uint8_t* first8, uint64_t size, const Where& fail) {
  if (size < 8) throw fail(fmt::format("{} bytes is too short to hold the 8-byte header length", size));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(first8[i]) << (8 * i);
  if (n > kMaxSafetensorsHeader)
    throw fail(fmt::format("header length {} exceeds the {}-byte limit (corrupt or not a safetensors file)", n,
                           kMaxSafetensorsHeader));
  if (n > size - 8)
    throw fail(fmt::format("header length {} runs past the end of the file ({} bytes after the length field); "
                           "the file is truncated or not a safetensors file",
                           n, size - 8));
  return n;
}

// Parses and checks the header of a file whose data section holds `data_size` bytes: every entry,
// no repeated key, and tensors that tile the data section exactly (as the reference reader
// requires: no gap, no overlap, no trailing bytes).
Header read_header(std::string_view text, uint64_t data_size, const Where& fail) {
  HeaderParser p(text, data_size);
  // The smallest entry ("a":{"dtype":"F32","shape":[],"data_offsets":[0,0]},) takes 50 bytes:
  // reserving for that many never copies the entries; untouched pages cost no memory.
  p.entries.reserve(text.size() / 50 + 1);
  try {
    p.parse();
  } catch (const JsonSyntaxError& e) {
    throw fail(fmt::format("header is not valid JSON: {} at byte {} of the header", e.what, e.offset));
  } catch (const JsonTooDeep&) {
    throw fail(fmt::format("header JSON nests deeper than {} levels", kMaxJsonDepth));
  }
  // Sorted by name (usually they are already: writers sort them), permuting indices, not entries.
  Header h;
  h.entries = std::move(p.entries);
  {
    const std::vector<Entry>& in = h.entries;
    // Keys: 16 bytes of the name, big-endian (so they order as the strings do; zero-padded),
    // taken after the prefix all names share (a model's names mostly begin alike, "model.layers."),
    // then the whole names on a tie: the sort touches the strings only where those bytes agree.
    size_t common = in.empty() ? 0 : in[0].name.size();
    for (size_t i = 1; i < in.size() && common > 0; ++i) {
      const std::string_view a = in[0].name;
      const std::string_view b = in[i].name;
      const size_t n = std::min(common, b.size());
      common = static_cast<size_t>(std::mismatch(a.data(), a.data() + n, b.data()).first - a.data());
    }
    struct Key {
      uint64_t hi, lo;
      uint32_t index;
    };
    std::vector<Key> keys(in.size());
    for (size_t i = 0; i < keys.size(); ++i) {
      unsigned char bytes[16] = {};
      const std::string_view n = in[i].name;
      if (n.size() > common) std::memcpy(bytes, n.data() + common, std::min<size_t>(16, n.size() - common));
      uint64_t w[2];
      std::memcpy(w, bytes, 16);
      keys[i] = {__builtin_bswap64(w[0]), __builtin_bswap64(w[1]), static_cast<uint32_t>(i)};
    }
    auto name_less = [&](const Key& a, const Key& b) {
      if (a.hi != b.hi) return a.hi < b.hi;
      if (a.lo != b.lo) return a.lo < b.lo;
      return in[a.index].name < in[b.index].name;
    };
    if (!std::is_sorted(keys.begin(), keys.end(), name_less)) std::sort(keys.begin(), keys.end(), name_less);
    h.by_name.resize(keys.size());
    for (size_t i = 0; i < keys.size(); ++i) h.by_name[i] = keys[i].index;
    // A repeated name sorts next to itself; names whose keys differ differ.
    for (size_t i = 1; i < keys.size() && p.duplicate.empty(); ++i)
      if (keys[i].hi == keys[i - 1].hi && keys[i].lo == keys[i - 1].lo &&
          in[keys[i].index].name == in[keys[i - 1].index].name)
        p.duplicate = std::string(in[keys[i].index].name);
  }
  const std::string duplicate = std::move(p.duplicate);
  if (!duplicate.empty()) throw fail(fmt::format("header repeats the key '{}'", preview(duplicate)));
  if (!p.error.empty()) throw fail(p.error);

  struct Span {
    uint64_t begin, end;
    size_t index;
  };
  std::vector<Span> spans(h.entries.size());
  for (size_t i = 0; i < spans.size(); ++i) spans[i] = {h.entries[i].begin, h.entries[i].end, i};
  auto offset_less = [](const Span& x, const Span& y) { return x.begin != y.begin ? x.begin < y.begin : x.end < y.end; };
  if (!std::is_sorted(spans.begin(), spans.end(), offset_less)) std::sort(spans.begin(), spans.end(), offset_less);
  h.order.resize(spans.size());
  for (size_t i = 0; i < spans.size(); ++i) h.order[i] = spans[i].index;
  uint64_t pos = 0;
  const Entry* prev = nullptr;
  for (size_t i : h.order) {
    const Entry& e = h.entries[i];
    if (e.begin < pos)
      throw fail(fmt::format("tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", preview(prev->name), prev->begin,
                             prev->end, preview(e.name), e.begin, e.end));
    if (e.begin > pos)
      throw fail(prev ? fmt::format("{}-byte gap between tensors '{}' [{}, {}] and '{}' [{}, {}] (tensors must tile "
                                    "the data section)",
                                    e.begin - pos, preview(prev->name), prev->begin, prev->end, preview(e.name),
                                    e.begin, e.end)
                      : fmt::format("{}-byte gap at the start of the data section, before tensor '{}' [{}, {}] "
                                    "(tensors must tile the data section)",
                                    e.begin, preview(e.name), e.begin, e.end));
    pos = e.end;
    prev = &e;
  }
  if (pos != data_size)
    throw fail(fmt::format("{} trailing bytes after the last tensor (the tensors end at byte {} of the {}-byte "
                           "data section)",
                           data_size - pos, pos, data_size));
  h.metadata = std::move(p.metadata);
  h.decoded = std::move(p.decoded);  // moving a deque keeps its elements where they are
  return h;
}

void check_checksum(const TensorMetadata& metadata, uint32_t data_crc, const Where& fail) {
  const auto it = metadata.find(kChecksumKey);
  if (it == metadata.end()) return;
  const std::string& want = it->second;
  if (want.size() != 14 || want.compare(0, 6, "crc32:") != 0 ||
      want.find_first_not_of("0123456789abcdef", 6) != std::string::npos)
    throw fail(fmt::format("__metadata__ {} is '{}', expected crc32:<8 lowercase hex digits>", kChecksumKey,
                           preview(want)));
  const std::string got = checksum_text(data_crc);
  if (got != want)
    throw fail(fmt::format("data section checksum mismatch: the header records {}, the data has {} (the file is "
                           "corrupt)",
                           want, got));
}

// Index of the first NaN or infinity in `count` IEEE values of `Bits` (exponent mask `exp`).
template <class Bits>
int64_t first_non_finite(const void* data, int64_t count, Bits exp) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (int64_t i = 0; i < count; ++i) {
    Bits b;
    std::memcpy(&b, p + static_cast<size_t>(i) * sizeof(Bits), sizeof(Bits));
    if ((b & exp) == exp) return i;
  }
  return -1;
}

void check_finite(std::string_view name, const Tensor& t, const Where& fail) {
  int64_t bad = -1;
  double value = 0;
  if (t.dtype() == DType::Float32) {
    bad = first_non_finite<uint32_t>(t.raw_data(), t.numel(), 0x7F800000u);
    if (bad >= 0) value = static_cast<const float*>(t.raw_data())[bad];
  } else if (t.dtype() == DType::Float64) {
    bad = first_non_finite<uint64_t>(t.raw_data(), t.numel(), 0x7FF0000000000000ull);
    if (bad >= 0) value = static_cast<const double*>(t.raw_data())[bad];
  }
  if (bad < 0) return;
  std::string index;
  int64_t rest = bad;
  for (int64_t d = t.dim() - 1; d >= 0; --d) {
    const int64_t extent = t.shape()[d];
    index = fmt::format("{}{}", rest % extent, index.empty() ? "" : ", " + index);
    rest /= extent;
  }
  throw fail(fmt::format("tensor '{}' holds {} at element {} (index [{}]); non-finite weights are refused (load "
                         "with LoadOptions{{.allow_non_finite = true}} to inspect them)",
                         preview(name), std::isnan(value) ? "NaN" : (value > 0 ? "+Inf" : "-Inf"), bad, index));
}

Tensor allocate(const Entry& e, const Where& fail) {
  try {
    return empty(e.shape, e.dtype);
  } catch (const std::bad_alloc&) {
    throw fail(fmt::format("cannot allocate {} bytes for tensor '{}'", e.end - e.begin, preview(e.name)));
  }
}

// An open file descriptor, closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Reads exactly `n` bytes at `offset`; false if the file ends first.
bool read_at(int fd, uint64_t offset, void* buf, uint64_t n, const Where& fail) {
  auto* p = static_cast<char*>(buf);
  while (n > 0) {
    const size_t chunk = static_cast<size_t>(std::min<uint64_t>(n, uint64_t(1) << 30));
    const ssize_t got = ::pread(fd, p, chunk, static_cast<off_t>(offset));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw fail(fmt::format("read failed at byte {}: {}", offset, errno_text()));
    }
    if (got == 0) return false;
    p += got;
    offset += static_cast<uint64_t>(got);
    n -= static_cast<uint64_t>(got);
  }
  return true;
}

const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

// A safetensors file opened and its header read and checked; the data section not read yet.
struct OpenFile {
  Fd fd;
  std::string text;  // the header's text: the entries' names point into it
  Header header;
  uint64_t data_start = 0, data_size = 0;
};

void open_and_read_header(const std::filesystem::path& path, const Where& fail, OpenFile& f) {
  // O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below).
  f.fd.fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (f.fd.fd < 0)
    throw std::runtime_error(fmt::format("load_safetensors: cannot open {}: {}", path.string(), errno_text()));
  struct stat st {};
  if (::fstat(f.fd.fd, &st) != 0)
    throw std::runtime_error(fmt::format("load_safetensors: cannot stat {}: {}", path.string(), errno_text()));
  if (!S_ISREG(st.st_mode))
    throw std::runtime_error(fmt::format("load_safetensors: {} is {}, not a regular file", path.string(),
                                         file_kind(st.st_mode)));
  const auto size = static_cast<uint64_t>(st.st_size);
  uint8_t first8[8] = {};
  if (size >= 8 && !read_at(f.fd.fd, 0, first8, 8, fail))
    throw fail("the file ended while reading the header length (did it change while loading?)");
  const uint64_t n = header_length(first8, size, fail);
  std::string& text = f.text;
  text.assign(static_cast<size_t>(n), '\0');
  if (!read_at(f.fd.fd, 8, text.data(), n, fail))
    throw fail("the file ended while reading the header (did it change while loading?)");
  f.data_start = 8 + n;
  f.data_size = size - 8 - n;
  f.header = read_header(text, f.data_size, fail);
}

}  // namespace

std::string printable(std::string_view s, size_t max_chars) {
  std::string out;
  size_t chars = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const auto* end = p + s.size();
  while (p != end) {
    if (chars++ == max_chars) return out + "...";
    const unsigned char c = *p;
    if (c == '\\') {
      out += "\\\\";
      ++p;
      continue;
    }
    if (c < 0x80) {
      if (c < 0x20 || c == 0x7f) out += fmt::format("\\x{:02x}", c);
      else out += static_cast<char>(c);
      ++p;
      continue;
    }
    // A UTF-8 sequence (RFC 3629), or an invalid byte.
    int len = 0;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) len = 2;
    else if (c == 0xE0) len = 3, lo = 0xA0;
    else if (c == 0xED) len = 3, hi = 0x9F;
    else if (c >= 0xE1 && c <= 0xEF) len = 3;
    else if (c == 0xF0) len = 4, lo = 0x90;
    else if (c == 0xF4) len = 4, hi = 0x8F;
    else if (c >= 0xF1 && c <= 0xF3) len = 4;
    bool ok = len > 0 && end - p >= len;
    for (int i = 1; ok && i < len; ++i) ok = p[i] >= (i == 1 ? lo : 0x80) && p[i] <= (i == 1 ? hi : 0xBF);
    if (!ok) {
      out += fmt::format("\\x{:02x}", c);
      ++p;
      continue;
    }
    uint32_t cp = c & (0xFF >> (len + 1));
    for (int i = 1; i < len; ++i) cp = (cp << 6) | (p[i] & 0x3F);
    // C1 controls, line/paragraph separators and bidirectional overrides would change how the
    // rest of a message reads on a terminal.
    if (cp <= 0x9F || cp == 0x2028 || cp == 0x2029 || (cp >= 0x202A && cp <= 0x202E) || (cp >= 0x2066 && cp <= 0x2069))
      out += fmt::format("\\u{:04x}", cp);
    else
      out.append(reinterpret_cast<const char*>(p), static_cast<size_t>(len));
    p += len;
  }
  return out;
}

NamedTensors load_safetensors(const std::filesystem::path& path, TensorMetadata* metadata_out,
                              const LoadOptions& options) {
  const std::string name = path.string();
  const Where fail{name};
  OpenFile f;
  open_and_read_header(path, fail, f);
  Header& h = f.header;
  // Tensors are allocated before they are read: a data section larger than the machine's memory
  // (a huge sparse file, say) is refused up front rather than ending in std::bad_alloc.
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0 && f.data_size / static_cast<uint64_t>(page) > static_cast<uint64_t>(pages))
    throw fail(fmt::format("the data section holds {} bytes, more than this machine's {} bytes of memory",
                           f.data_size, static_cast<uint64_t>(pages) * static_cast<uint64_t>(page)));

  // In file order (the tensors tile the data section), so the checksum runs over it in order;
  // small tensors are copied out of a buffer (one read for many), large ones read directly.
  std::vector<Tensor> tensors(h.entries.size());
  uint32_t crc = 0;
  constexpr uint64_t kBuffer = 1 << 20;
  std::vector<uint8_t> buffer;
  uint64_t buf_begin = 0, buf_end = 0;  // data-section offsets held in buffer
  for (size_t i : h.order) {
    const Entry& e = h.entries[i];
    tensors[i] = allocate(e, fail);
    const uint64_t bytes = e.end - e.begin;
    if (bytes == 0) continue;
    auto* dst = static_cast<uint8_t*>(tensors[i].raw_data());
    bool ok = true;
    if (bytes >= kBuffer) {
      ok = read_at(f.fd.fd, f.data_start + e.begin, dst, bytes, fail);
    } else {
      if (e.begin < buf_begin || e.end > buf_end) {
        buffer.resize(static_cast<size_t>(kBuffer));
        buf_begin = e.begin;
        buf_end = std::min(f.data_size, e.begin + kBuffer);
        ok = read_at(f.fd.fd, f.data_start + buf_begin, buffer.data(), buf_end - buf_begin, fail);
      }
      if (ok) std::memcpy(dst, buffer.data() + (e.begin - buf_begin), static_cast<size_t>(bytes));
    }
    if (!ok)
      throw fail(fmt::format("the file ended while reading tensor '{}' (did it change while loading?)",
                             preview(e.name)));
    crc = crc32(dst, static_cast<size_t>(bytes), crc);
  }
  check_checksum(h.metadata, crc, fail);
  if (!options.allow_non_finite)
    for (const uint32_t i : h.by_name) check_finite(h.entries[i].name, tensors[i], fail);

  NamedTensors out;
  out.reserve(tensors.size());
  for (const uint32_t i : h.by_name) out.emplace_back(std::string(h.entries[i].name), std::move(tensors[i]));
  if (metadata_out) *metadata_out = std::move(h.metadata);
  return out;
}

TensorMetadata read_safetensors_metadata(const std::filesystem::path& path) {
  const std::string name = path.string();
  OpenFile f;
  open_and_read_header(path, Where{name}, f);
  return std::move(f.header.metadata);
}

NamedTensors parse_safetensors(const uint8_t* data, size_t size, std::string_view name, TensorMetadata* metadata_out,
                               const LoadOptions& options) {
  const Where fail{name};
  const uint64_t n = header_length(data, size, fail);
  const uint64_t data_size = size - 8 - n;
  const uint8_t* base = data + 8 + n;
  Header h = read_header(std::string_view(reinterpret_cast<const char*>(data + 8), static_cast<size_t>(n)), data_size,
                         fail);
  check_checksum(h.metadata, crc32(base, static_cast<size_t>(data_size)), fail);

  NamedTensors out;
  out.reserve(h.entries.size());
  for (const uint32_t i : h.by_name) {
    Entry& e = h.entries[i];
    Tensor t = allocate(e, fail);
    if (e.end > e.begin) std::memcpy(t.raw_data(), base + e.begin, static_cast<size_t>(e.end - e.begin));
    if (!options.allow_non_finite) check_finite(e.name, t, fail);
    out.emplace_back(std::string(e.name), std::move(t));
  }
  if (metadata_out) *metadata_out = std::move(h.metadata);
  return out;
}


}  // namespace tg
