// Checkpoint integrity: manifest.json (SHA-256 of every file tapegrad wrote in a checkpoint
// folder, written last), its verification before a checkpoint is used, the model description
// stored in model.safetensors compared with config.json, and the finite-weights check.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string_view>

#include "tapegrad/autograd/safetensors.h"
#include "cli.h"

namespace tgcli {

using namespace tg;

namespace {

// ---- SHA-256 (FIPS 180-4) ----
class Sha256 {
 public:
  void update(const void* data, size_t n) {
    const auto* p = static_cast<const uint8_t*>(data);
    total_ += n;
    if (used_) {
      const size_t take = std::min(n, size_t{64} - used_);
      std::memcpy(block_.data() + used_, p, take);
      used_ += take, p += take, n -= take;
      if (used_ < 64) return;
      compress(block_.data());
      used_ = 0;
    }
    for (; n >= 64; p += 64, n -= 64) compress(p);
    std::memcpy(block_.data(), p, n);
    used_ = n;
  }
  std::string hex() {
    const uint64_t bits = total_ * 8;
    const uint8_t one = 0x80, zero = 0;
    update(&one, 1);
    while (used_ != 56) update(&zero, 1);
    uint8_t len[8];
    for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(bits >> (56 - 8 * i));
    update(len, 8);
    std::string out;
    for (uint32_t w : h_) out += fmt::format("{:08x}", w);
    return out;
  }

 private:
  static uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }
  void compress(const uint8_t* b) {
    static constexpr uint32_t k[64] = {
        0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
        0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
        0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
        0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
        0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
        0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
        0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
        0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
    uint32_t w[64];
    for (int i = 0; i < 16; ++i)
      w[i] = (uint32_t{b[4 * i]} << 24) | (uint32_t{b[4 * i + 1]} << 16) | (uint32_t{b[4 * i + 2]} << 8) | b[4 * i + 3];
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h_[0], bb = h_[1], c = h_[2], d = h_[3], e = h_[4], f = h_[5], g = h_[6], h = h_[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c));
      h = g, g = f, f = e, e = d + t1, d = c, c = bb, bb = a, a = t1 + t2;
    }
    h_[0] += a, h_[1] += bb, h_[2] += c, h_[3] += d, h_[4] += e, h_[5] += f, h_[6] += g, h_[7] += h;
  }
  std::array<uint32_t, 8> h_ = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                                0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::array<uint8_t, 64> block_{};
  size_t used_ = 0;
  uint64_t total_ = 0;
};

// A file's size and SHA-256, refusing what is not a regular file (opened without blocking, so
// a FIFO in a checkpoint cannot hang the reader) and what is larger than `max_bytes`.
struct FileDigest {
  uint64_t bytes = 0;
  std::string sha256;
};
FileDigest digest_file(const fs::path& path, long double max_bytes) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) throw std::runtime_error(fmt::format("cannot open {}: {}", path.string(), std::strerror(errno)));
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat st {};
  if (::fstat(fd, &st) != 0) throw std::runtime_error(fmt::format("cannot stat {}: {}", path.string(), std::strerror(errno)));
  if (!S_ISREG(st.st_mode)) throw std::runtime_error(fmt::format("{} is not a regular file", path.string()));
  FileDigest d;
  d.bytes = static_cast<uint64_t>(st.st_size);
  if (static_cast<long double>(d.bytes) > max_bytes)
    throw std::runtime_error(fmt::format("{} holds {}, more than this machine's memory ({}): not a checkpoint it "
                                         "could load",
                                         path.string(), format_bytes(static_cast<long double>(d.bytes)),
                                         format_bytes(max_bytes)));
  Sha256 h;
  std::vector<char> buf(1 << 20);
  uint64_t read = 0;
  while (true) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::runtime_error(fmt::format("reading {} failed: {}", path.string(), std::strerror(errno)));
    }
    if (n == 0) break;
    h.update(buf.data(), static_cast<size_t>(n));
    read += static_cast<uint64_t>(n);
  }
  d.bytes = read;
  d.sha256 = h.hex();
  return d;
}

// A plain file name: no folder part, no "." or "..", nothing a terminal would interpret.
bool plain_name(const std::string& n) {
  if (n.empty() || n == "." || n == ".." || n.size() > 255) return false;
  for (unsigned char c : n)
    if (c == '/' || c < 0x20 || c == 0x7f) return false;
  return true;
}

bool is_dist_child() { return std::getenv("TG_DIST_CHILD") != nullptr; }

}  // namespace

std::string sha256_hex(std::string_view bytes) {
  Sha256 h;
  h.update(bytes.data(), bytes.size());
  return h.hex();
}

std::string sha256_file(const fs::path& path) { return digest_file(path, 1e30L).sha256; }

void write_manifest(const fs::path& dir, const std::vector<std::string>& files) {
  json list = json::object();
  for (const std::string& name : files) {
    const FileDigest d = digest_file(dir / name, 1e30L);
    list[name] = {{"bytes", d.bytes}, {"sha256", d.sha256}};
  }
  const json m = {{"format", kManifestFormat},
                  {"note", "SHA-256 of every file tapegrad-train wrote in this checkpoint; checked before it is "
                           "used (files not listed here, such as your notes, are not checked)"},
                  {"files", list}};
  write_file_synced(dir / kManifestName, m.dump(1) + "\n");
}

void verify_checkpoint(const fs::path& dir, const std::vector<std::string>& required, const std::string& elsewhere) {
  const fs::path mpath = dir / kManifestName;
  const fs::path weights = dir / "model.safetensors";
  const std::string then =
      elsewhere.empty() ? "" : fmt::format(" ({})", elsewhere);
  // model.safetensors' header first: it says whether the checkpoint was written with a
  // manifest and which model the weights are for (read without reading the weights).
  TensorMetadata meta;
  std::error_code ec;
  const bool have_weights = fs::exists(fs::symlink_status(weights, ec));
  if (have_weights) meta = read_safetensors_metadata(weights);
  const bool written_with_manifest = meta.count(kManifestKey) > 0;

  if (!fs::exists(fs::symlink_status(mpath, ec))) {
    if (written_with_manifest)
      throw std::runtime_error(fmt::format(
          "checkpoint {}: {} is missing, but model.safetensors records that the checkpoint was written with one: "
          "the folder was changed after it was written, and its files cannot be checked. Restore the folder from a "
          "backup or use another checkpoint{}",
          dir.string(), kManifestName, then));
    if (!is_dist_child())
      fmt::print(stderr,
                 "tapegrad-train: warning: checkpoint {} has no {} (written by a tapegrad-train before checkpoint "
                 "manifests): its files are not checked against checksums, only config.json against the model "
                 "description in model.safetensors\n",
                 dir.string(), kManifestName);
  } else {
    json m;
    try {
      m = read_json(mpath);
      if (!m.is_object() || m.value("format", std::string()) != kManifestFormat || !m.contains("files") ||
          !m.at("files").is_object())
        throw std::runtime_error(fmt::format("not a tapegrad checkpoint manifest (expected \"format\": \"{}\" and a "
                                             "\"files\" object)",
                                             kManifestFormat));
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("checkpoint {}: {} is unreadable: {}. Restore the folder from a backup or "
                                           "use another checkpoint{}",
                                           dir.string(), kManifestName, printable(e.what(), 300), then));
    }
    std::string budget_source;
    const long double budget = memory_budget(&budget_source);
    std::set<std::string> listed;
    for (const auto& [name, entry] : m.at("files").items()) {
      if (!plain_name(name))
        throw std::runtime_error(fmt::format("checkpoint {}: {} lists '{}', which is not a file name in the "
                                             "checkpoint folder; the manifest is corrupt or crafted. Restore the "
                                             "folder from a backup or use another checkpoint{}",
                                             dir.string(), kManifestName, printable(name, 80), then));
      uint64_t bytes = 0;
      std::string want;
      try {
        bytes = entry.at("bytes").get<uint64_t>();
        want = entry.at("sha256").get<std::string>();
      } catch (const json::exception&) {
        throw std::runtime_error(fmt::format("checkpoint {}: {}: the entry of {} lacks \"bytes\" or \"sha256\"; "
                                             "restore the folder from a backup or use another checkpoint{}",
                                             dir.string(), kManifestName, name, then));
      }
      listed.insert(name);
      const fs::path file = dir / name;
      if (!fs::exists(fs::symlink_status(file, ec)))
        throw std::runtime_error(fmt::format("checkpoint {}: {} is missing ({} lists it, {} bytes): the checkpoint is "
                                             "incomplete. Restore the file from a backup or use another checkpoint{}",
                                             dir.string(), name, kManifestName, bytes, then));
      FileDigest got;
      try {
        got = digest_file(file, budget);
      } catch (const std::exception& e) {
        throw std::runtime_error(fmt::format("checkpoint {}: {}; restore {} from a backup or use another checkpoint{}",
                                             dir.string(), e.what(), name, then));
      }
      if (got.bytes != bytes || got.sha256 != want)
        throw std::runtime_error(fmt::format(
            "checkpoint {}: {} does not match {} ({}): it was changed or corrupted after the checkpoint was written, "
            "and loading it could silently change the model's predictions. Restore the original {} from a backup "
            "or use another checkpoint{}",
            dir.string(), name, kManifestName,
            got.bytes != bytes ? fmt::format("{} bytes, the manifest records {}", got.bytes, bytes)
                               : fmt::format("SHA-256 {}, the manifest records {}", got.sha256.substr(0, 16),
                                             printable(want, 16)),
            name, then));
    }
    for (const std::string& name : required)
      if (!listed.count(name))
        throw std::runtime_error(fmt::format("checkpoint {}: {} does not list {}, so it cannot be checked; the "
                                             "manifest is corrupt or crafted. Restore the folder from a backup or use "
                                             "another checkpoint{}",
                                             dir.string(), kManifestName, name, then));
  }

  // The vocabulary the weights were trained with (a changed word would silently map to another
  // embedding row), and the model they were written for, against config.json's (also without a
  // manifest: an edited "pooling" would load and change every output).
  if (const auto v = meta.find(kVocabKey); v != meta.end()) {
    std::string got;
    try {
      got = digest_file(dir / "vocab.txt", memory_budget(nullptr)).sha256;
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("checkpoint {}: {}; restore vocab.txt from a backup or use another "
                                           "checkpoint{}",
                                           dir.string(), e.what(), then));
    }
    if (got != v->second)
      throw std::runtime_error(fmt::format(
          "checkpoint {}: vocab.txt is not the vocabulary the weights were trained with (SHA-256 {}, model.safetensors "
          "records {}): a changed word would silently feed another word's embedding. Restore the original vocab.txt "
          "from a backup or use another checkpoint{}",
          dir.string(), got.substr(0, 16), printable(v->second, 16), then));
  }
  const auto it = meta.find("tapegrad_model");
  if (it == meta.end()) return;  // written by another tool (no description to compare)
  json stored, given;
  try {
    stored = json::parse(it->second);
  } catch (const json::exception&) {
    throw std::runtime_error(fmt::format("checkpoint {}: model.safetensors' tapegrad_model metadata is not JSON: "
                                         "the file is corrupt; use another checkpoint{}",
                                         dir.string(), then));
  }
  given = read_json(dir / "config.json").value("model", json());
  if (stored == given) return;
  std::string diffs;
  int shown = 0;
  std::set<std::string> keys;
  if (stored.is_object())
    for (const auto& [k, v] : stored.items()) keys.insert(k);
  if (given.is_object())
    for (const auto& [k, v] : given.items()) keys.insert(k);
  for (const std::string& k : keys) {
    const json a = given.is_object() && given.contains(k) ? given.at(k) : json("(absent)");
    const json b = stored.is_object() && stored.contains(k) ? stored.at(k) : json("(absent)");
    if (a == b) continue;
    if (shown++ < 4)
      diffs += fmt::format("{}model.{}: config.json says {}, the weights were trained with {}", diffs.empty() ? "" : "; ",
                           printable(k, 40), printable(a.dump(-1, ' ', false, json::error_handler_t::replace), 40),
                           printable(b.dump(-1, ' ', false, json::error_handler_t::replace), 40));
  }
  if (diffs.empty()) diffs = "the \"model\" section is not an object";
  throw std::runtime_error(fmt::format(
      "checkpoint {}: config.json does not describe the model in model.safetensors ({}): config.json was edited "
      "after the checkpoint was written, and the weights would run as another model. Restore config.json's \"model\" "
      "section to what model.safetensors records, or use another checkpoint{}",
      dir.string(), diffs, then));
}

std::string other_checkpoint_advice(const fs::path& dir, bool resume) {
  const std::string name = dir.filename().string();
  if (name != "best" && name != "last") return "";
  const fs::path other = dir.parent_path() / (name == "best" ? "last" : "best");
  std::error_code ec;
  if (!fs::is_regular_file(other / "config.json", ec)) return "";
  if (resume)
    return name == "last" ? fmt::format("e.g. tapegrad-train train --resume {} --save NEW_FOLDER", other.string())
                          : fmt::format("e.g. tapegrad-train train --resume {}", other.string());
  return fmt::format("e.g. --checkpoint {}", other.string());
}

std::string non_finite_weight(const nn::Module& model) {
  for (const auto& [name, p] : model.named_parameters()) {
    const std::vector<double> v = p.detach().to_vector();
    for (size_t k = 0; k < v.size(); ++k) {
      if (std::isfinite(v[k])) continue;
      std::string index;
      auto rest = static_cast<int64_t>(k);
      for (int64_t d = p.dim() - 1; d >= 0; --d) {
        const int64_t extent = p.shape()[d];
        index = fmt::format("{}{}", rest % extent, index.empty() ? "" : ", " + index);
        rest /= extent;
      }
      return fmt::format("parameter '{}' {} holds {} at [{}]", printable(name, 80), p.shape().str(),
                         std::isnan(v[k]) ? "NaN" : v[k] > 0 ? "+Inf" : "-Inf", index);
    }
  }
  return "";
}

}  // namespace tgcli
