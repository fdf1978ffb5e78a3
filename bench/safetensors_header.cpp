// Times the safetensors header parser on a header of about 100 MB (kMaxSafetensorsHeader), the
// worst size a file may have (issue 14: "<= 1 s for 100 MB of header"). Not a test: prints times.
//   bench_safetensors_header [MEGABYTES] [REPEATS] [CASE]   (CASE 0, 1 or 2: only that header)
// Three headers: zero-size entries in name order, the same shuffled, and shuffled entries of one
// F32 element each whose data_offsets tile a data section (so the offset sort and the tiling check
// do real work). Names look like a deep model's ("model.layers.123456.mlp.weight").
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <cstdint>
#include <cstdlib>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "tapegrad/autograd/safetensors.h"

namespace {

std::vector<uint8_t> file_of(const std::string& header_text, uint64_t data_bytes) {
  std::string h = header_text;
  h.append((8 - h.size() % 8) % 8, ' ');
  std::vector<uint8_t> out(8 + h.size() + data_bytes, 0);
  for (int i = 0; i < 8; ++i) out[static_cast<size_t>(i)] = static_cast<uint8_t>(static_cast<uint64_t>(h.size()) >> (8 * i));
  std::copy(h.begin(), h.end(), out.begin() + 8);
  return out;
}

// A header of about `target` bytes; `sized`: one F32 element per entry, tiling the data section.
std::vector<uint8_t> make(uint64_t target, bool shuffled, bool sized, size_t& count) {
  const char* kinds[] = {"attn.q_proj.weight", "attn.k_proj.weight", "mlp.up.bias", "norm.weight"};
  std::vector<std::string> names;
  uint64_t bytes = 2;
  for (uint64_t i = 0; bytes < target - 200; ++i) {
    names.push_back(fmt::format("model.layers.{}.{}", i / 4, kinds[i % 4]));
    bytes += names.back().size() + 70;
  }
  std::sort(names.begin(), names.end());
  count = names.size();
  std::vector<size_t> order(names.size());
  std::iota(order.begin(), order.end(), size_t{0});
  if (shuffled) std::shuffle(order.begin(), order.end(), std::mt19937_64(7));
  std::string h = "{";
  h.reserve(target + 64);
  for (size_t k = 0; k < order.size(); ++k) {
    const size_t i = order[k];
    const uint64_t b = sized ? 4 * i : 0, e = sized ? 4 * i + 4 : 0;
    h += fmt::format("{}\"{}\":{{\"dtype\":\"F32\",\"shape\":[{}],\"data_offsets\":[{},{}]}}", k ? "," : "", names[i],
                     sized ? 1 : 0, b, e);
  }
  h += "}";
  if (h.size() > target) {  // trim entries until it fits (rarely more than one)
    while (h.size() > target) {
      h.resize(h.rfind(",\""));
      --count;
    }
    h += "}";
    if (sized) return make(target - (h.size() - target) - 4096, shuffled, sized, count);
  }
  return file_of(h, sized ? 4 * count : 0);
}

}  // namespace

int main(int argc, char** argv) {
  const double mb = argc > 1 ? std::atof(argv[1]) : 100.0;
  const int repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  const uint64_t target = std::min<uint64_t>(static_cast<uint64_t>(mb * 1e6), tg::kMaxSafetensorsHeader - 8);
  struct Case {
    const char* name;
    bool shuffled, sized;
  };
  const int only = argc > 3 ? std::atoi(argv[3]) : -1;
  const Case cases[] = {{"zero-size, in order", false, false}, {"zero-size, shuffled", true, false},
                        {"1 element each, shuffled, tiling", true, true}};
  for (int ci = 0; ci < 3; ++ci) {
    if (only >= 0 && ci != only) continue;
    const Case& c = cases[ci];
    size_t count = 0;
    const std::vector<uint8_t> f = make(target, c.shuffled, c.sized, count);
    double best = 1e30, best_cpu = 1e30;
    size_t got = 0;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      const tg::NamedTensors t = tg::parse_safetensors(f.data(), f.size(), "bench");
      best_cpu = std::min(best_cpu, static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
      best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      got = t.size();
    }
    fmt::print("{:34s} {:9d} entries, {:6.1f} MB header: best of {}: {:.3f} s wall, {:.3f} s CPU (parse and "
               "{} tensors built)\n",
               c.name, got, static_cast<double>(f.size()) / 1e6, repeats, best, best_cpu, got);
    // The header alone, from a file (read_safetensors_metadata parses and checks all of it).
    const std::filesystem::path file = std::filesystem::temp_directory_path() / "tg_bench_header.safetensors";
    {
      std::ofstream out(file, std::ios::binary);
      out.write(reinterpret_cast<const char*>(f.data()), static_cast<std::streamsize>(f.size()));
    }
    double header_wall = 1e30, header_cpu = 1e30;
    for (int r = 0; r < repeats; ++r) {
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      (void)tg::read_safetensors_metadata(file);
      header_cpu = std::min(header_cpu, static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
      header_wall = std::min(header_wall, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    }
    std::filesystem::remove(file);
    fmt::print("{:34s} header only (read_safetensors_metadata): {:.3f} s wall, {:.3f} s CPU\n", "", header_wall,
               header_cpu);

  }
  return 0;
}
