// safetensors reading and writing; see safetensors.h for the format.
#include "autograd/safetensors.h"

#include <fcntl.h>
#include <unistd.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <stdexcept>

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

// JSON text may be anything here: keep error messages short and printable.
std::string preview(std::string_view s) {
  std::string out;
  for (char c : s.substr(0, 40)) {
    const auto u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? std::string(1, c) : fmt::format("\\x{:02x}", u);
  }
  return s.size() > 40 ? out + "..." : out;
}

// Deepest nesting of [ and { outside strings, stopping early once past `limit`.
int json_depth(std::string_view s, int limit) {
  int depth = 0, deepest = 0;
  bool in_string = false, escaped = false;
  for (char c : s) {
    if (in_string) {
      if (escaped) escaped = false;
      else if (c == '\\') escaped = true;
      else if (c == '"') in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      deepest = std::max(deepest, ++depth);
      if (deepest > limit) return deepest;
    } else if (c == '}' || c == ']') {
      --depth;
    }
  }
  return deepest;
}

// Reads a JSON non-negative integer that fits in `limit`; false for anything else.
bool as_count(const json& j, uint64_t limit, uint64_t& out) {
  if (j.is_number_unsigned()) {
    out = j.get<uint64_t>();
  } else if (j.is_number_integer()) {
    const auto v = j.get<int64_t>();
    if (v < 0) return false;
    out = static_cast<uint64_t>(v);
  } else {
    return false;
  }
  return out <= limit;
}

struct Entry {
  std::string name;
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

NamedTensors load_safetensors(const std::filesystem::path& path, TensorMetadata* metadata) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(fmt::format("load_safetensors: cannot open {}: {}", path.string(), errno_text()));
  in.seekg(0, std::ios::end);
  const std::streamoff size = in.tellg();
  if (size < 0) throw std::runtime_error(fmt::format("load_safetensors: cannot read {} (not a regular file?)", path.string()));
  in.seekg(0, std::ios::beg);
  std::vector<uint8_t> bytes(static_cast<size_t>(size));
  if (!bytes.empty() && !in.read(reinterpret_cast<char*>(bytes.data()), size))
    throw std::runtime_error(fmt::format("load_safetensors: reading {} failed", path.string()));
  return parse_safetensors(bytes.data(), bytes.size(), path.string(), metadata);
}

NamedTensors parse_safetensors(const uint8_t* data, size_t size, std::string_view name, TensorMetadata* metadata_out) {
  auto fail = [&](const std::string& what) {
    return std::runtime_error(fmt::format("safetensors file {}: {}", name, what));
  };
  if (size < 8) throw fail(fmt::format("{} bytes is too short to hold the 8-byte header length", size));
  uint64_t n = 0;
  for (int i = 0; i < 8; ++i) n |= static_cast<uint64_t>(data[i]) << (8 * i);
  if (n > kMaxSafetensorsHeader)
    throw fail(fmt::format("header length {} exceeds the {}-byte limit (corrupt or not a safetensors file)", n,
                           kMaxSafetensorsHeader));
  if (n > size - 8)
    throw fail(fmt::format("header length {} runs past the end of the file ({} bytes after the length field); "
                           "the file is truncated or not a safetensors file",
                           n, size - 8));
  const std::string_view text(reinterpret_cast<const char*>(data + 8), static_cast<size_t>(n));
  if (json_depth(text, kMaxJsonDepth) > kMaxJsonDepth)
    throw fail(fmt::format("header JSON nests deeper than {} levels", kMaxJsonDepth));

  // nlohmann keeps the last of duplicate keys silently; a header with two entries of one name
  // is ambiguous, so track keys per open object and reject repeats.
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  json header;
  try {
    header = json::parse(
        text.begin(), text.end(),
        [&](int, json::parse_event_t ev, json& parsed) {
          if (ev == json::parse_event_t::object_start) open_objects.emplace_back();
          else if (ev == json::parse_event_t::object_end && !open_objects.empty()) open_objects.pop_back();
          else if (ev == json::parse_event_t::key && !open_objects.empty() && parsed.is_string() &&
                   !open_objects.back().insert(parsed.get<std::string>()).second && duplicate.empty())
            duplicate = parsed.get<std::string>();
          return true;
        });
  } catch (const json::exception& e) {
    throw fail(fmt::format("header is not valid JSON: {}", e.what()));
  }
  if (!duplicate.empty()) throw fail(fmt::format("header repeats the key '{}'", preview(duplicate)));
  if (!header.is_object()) throw fail(fmt::format("header must be a JSON object, got {}", header.type_name()));

  const uint64_t data_size = size - 8 - n;
  const uint8_t* base = data + 8 + n;
  TensorMetadata metadata;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& key = it.key();
    const json& v = it.value();
    if (key == "__metadata__") {
      if (!v.is_object()) throw fail(fmt::format("__metadata__ must be an object, got {}", v.type_name()));
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string())
          throw fail(fmt::format("__metadata__ value of '{}' must be a string, got {}", preview(m.key()),
                                 m.value().type_name()));
        metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string who = fmt::format("tensor '{}'", preview(key));
    if (!v.is_object()) throw fail(fmt::format("{}: entry must be an object, got {}", who, v.type_name()));
    for (auto f = v.begin(); f != v.end(); ++f)
      if (f.key() != "dtype" && f.key() != "shape" && f.key() != "data_offsets")
        throw fail(fmt::format("{}: unknown field '{}' (expected dtype, shape, data_offsets)", who, preview(f.key())));
    for (const char* field : {"dtype", "shape", "data_offsets"})
      if (!v.contains(field)) throw fail(fmt::format("{}: missing field '{}'", who, field));

    Entry e;
    e.name = key;
    const json& dt = v["dtype"];
    if (!dt.is_string()) throw fail(fmt::format("{}: dtype must be a string, got {}", who, dt.type_name()));
    if (!parse_st_dtype(dt.get<std::string>(), e.dtype))
      throw fail(fmt::format("{}: dtype '{}' is not supported (tapegrad reads F32, F64 and I64)", who,
                             preview(dt.get<std::string>())));

    const json& sh = v["shape"];
    if (!sh.is_array()) throw fail(fmt::format("{}: shape must be an array, got {}", who, sh.type_name()));
    if (sh.size() > static_cast<size_t>(kMaxRank))
      throw fail(fmt::format("{}: rank {} exceeds tapegrad's maximum of {}", who, sh.size(), kMaxRank));
    // Every partial product of the non-zero dims must fit, or Shape::numel and the strides overflow.
    const uint64_t elem = dtype_size(e.dtype);
    const uint64_t max_elems = static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) / elem;
    uint64_t numel = 1, nonzero = 1;
    for (const json& d : sh) {
      uint64_t dim = 0;
      if (!as_count(d, static_cast<uint64_t>(std::numeric_limits<int64_t>::max()), dim))
        throw fail(fmt::format("{}: shape {} must hold non-negative integers", who, preview(sh.dump())));
      if (dim != 0 && __builtin_mul_overflow(nonzero, dim, &nonzero))
        throw fail(fmt::format("{}: shape {} has too many elements", who, preview(sh.dump())));
      if (nonzero > max_elems) throw fail(fmt::format("{}: shape {} has too many elements", who, preview(sh.dump())));
      e.shape.push_back(static_cast<int64_t>(dim));
      numel *= dim;  // <= nonzero, so no overflow
    }

    const json& off = v["data_offsets"];
    uint64_t begin = 0, end = 0;
    if (!off.is_array() || off.size() != 2 || !as_count(off[0], std::numeric_limits<uint64_t>::max(), begin) ||
        !as_count(off[1], std::numeric_limits<uint64_t>::max(), end))
      throw fail(fmt::format("{}: data_offsets must be [begin, end] with non-negative integers, got {}", who,
                             preview(off.dump())));
    if (begin > end) throw fail(fmt::format("{}: data_offsets [{}, {}] has begin > end", who, begin, end));
    if (end > data_size)
      throw fail(fmt::format("{}: data_offsets [{}, {}] run past the {}-byte data section (truncated file?)", who,
                             begin, end, data_size));
    if (numel * elem != end - begin)
      throw fail(fmt::format("{}: shape {} of {} needs {} bytes but data_offsets [{}, {}] span {}", who,
                             e.shape.str(), dt.get<std::string>(), numel * elem, begin, end, end - begin));
    e.begin = begin;
    e.end = end;
    entries.push_back(std::move(e));
  }

  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Entry& a = *by_offset[i - 1];
    const Entry& b = *by_offset[i];
    if (b.begin < a.end)
      throw fail(fmt::format("tensors '{}' [{}, {}] and '{}' [{}, {}] overlap", preview(a.name), a.begin, a.end,
                             preview(b.name), b.begin, b.end));
  }

  if (auto it = metadata.find(kChecksumKey); it != metadata.end()) {
    const std::string& want = it->second;
    if (want.size() != 14 || want.compare(0, 6, "crc32:") != 0 ||
        want.find_first_not_of("0123456789abcdef", 6) != std::string::npos)
      throw fail(fmt::format("__metadata__ {} is '{}', expected crc32:<8 lowercase hex digits>", kChecksumKey,
                             preview(want)));
    const std::string got = checksum_text(crc32(base, static_cast<size_t>(data_size)));
    if (got != want)
      throw fail(fmt::format("data section checksum mismatch: the header records {}, the data has {} (the file "
                             "is corrupt)",
                             want, got));
  }

  NamedTensors out;
  out.reserve(entries.size());
  for (const auto& e : entries) {  // header order: sorted by name
    Tensor t = empty(e.shape, e.dtype);
    if (e.end > e.begin) std::memcpy(t.raw_data(), base + e.begin, static_cast<size_t>(e.end - e.begin));
    out.emplace_back(e.name, std::move(t));
  }
  if (metadata_out) *metadata_out = std::move(metadata);
  return out;
}

}  // namespace tg
