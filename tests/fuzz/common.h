#pragma once
// Shared helpers for the libFuzzer targets (built by tests/fuzz/CMakeLists.txt with clang,
// -fsanitize=fuzzer,address,undefined; run by `./run.sh fuzz SECONDS`).
//
// Contract checked by every target: for any input bytes the code under test either returns or
// throws a std::exception subclass. Crashes, sanitizer reports, leaks, hangs and any violated
// FUZZ_CHECK are findings.
#include <unistd.h>

#include <cstdint>
#include <exception>
#include <typeinfo>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#define FUZZ_CHECK(cond)                                                                   \
  do {                                                                                     \
    if (!(cond)) {                                                                         \
      std::fprintf(stderr, "FUZZ_CHECK failed: %s at %s:%d\n", #cond, __FILE__, __LINE__); \
      std::abort();                                                                        \
    }                                                                                      \
  } while (0)

namespace fuzz {

// FUZZ_VERBOSE=1 in the environment: print every expected error (to see what users get).
inline void note(const char* what, const std::exception& e) {
  static const bool verbose = std::getenv("FUZZ_VERBOSE") != nullptr;
  if (verbose) std::fprintf(stderr, "[%s] %s: %s\n", what, typeid(e).name(), e.what());
}

// A per-process path in tmpfs when available ("/dev/shm/tapegrad-fuzz-<pid>-<name>"). libFuzzer
// ends with _Exit (no atexit handlers), so files are removed after each input instead.
inline std::filesystem::path scratch_path(const std::string& name) {
  static const std::filesystem::path base =
      std::filesystem::is_directory("/dev/shm") ? "/dev/shm" : std::filesystem::temp_directory_path();
  return base / ("tapegrad-fuzz-" + std::to_string(::getpid()) + "-" + name);
}

// The input written to a file for readers that take a path; removed (with `name`.tmp) on scope exit.
class TempFile {
 public:
  TempFile(const std::string& name, const uint8_t* data, size_t size) : path_(scratch_path(name)) {
    std::FILE* f = std::fopen(path_.c_str(), "wb");
    FUZZ_CHECK(f != nullptr);
    FUZZ_CHECK(size == 0 || std::fwrite(data, 1, size, f) == size);
    FUZZ_CHECK(std::fclose(f) == 0);
  }
  explicit TempFile(const std::string& name) : path_(scratch_path(name)) {}  // created by the code under test
  ~TempFile() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
    std::filesystem::remove(path_.string() + ".tmp", ec);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

}  // namespace fuzz
