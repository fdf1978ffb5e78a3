#pragma once
// Tensor files in the safetensors format (the format of Hugging Face's `safetensors` package, which
// PyTorch users load with `safetensors.torch.load_file`):
//
//   8 bytes    N, the header length, unsigned little-endian
//   N bytes    JSON object: {"<name>": {"dtype": "F32"|"F64"|"I64", "shape": [d0, ...],
//                                       "data_offsets": [begin, end]}, ...,
//                            "__metadata__": {"<key>": "<string>", ...}}
//              padded with spaces so the data section starts 8-byte aligned
//   the rest   the data section: each tensor's elements, row-major, little-endian, at
//              [begin, end) relative to the start of the data section
//
// We write tensors sorted by name, packed without gaps, and add a CRC-32 of the data section to
// the metadata (key kChecksumKey, value "crc32:xxxxxxxx"). Readers verify it when present, so
// files written by other tools (which lack it) load as well.
//
// Loading validates everything before it returns (sizes, JSON, dtypes, shapes, offsets, checksum,
// finite values); any problem throws std::runtime_error naming the file and what is wrong, and
// nothing is returned. As the reference reader (huggingface safetensors) requires, the header is
// strict JSON without repeated keys, and the tensors tile the data section exactly: sorted by
// offset, each begins where the previous one ends, the first at 0, the last at the end of the
// file (no gap, no overlap, no trailing bytes). Tensor names and other file text in messages go
// through printable(). The header is parsed in time linear in its length.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tapegrad/autograd/tensor.h"

namespace tg {

using NamedTensors = std::vector<std::pair<std::string, Tensor>>;
using TensorMetadata = std::map<std::string, std::string>;

inline constexpr const char* kChecksumKey = "tapegrad_checksum";
inline constexpr uint64_t kMaxSafetensorsHeader = 100'000'000;  // bytes, as the reference reader

// The file's bytes. Tensors may be any layout (they are written row-major). Throws
// std::invalid_argument for an undefined tensor, a duplicate or reserved ("__metadata__") name,
// or metadata using kChecksumKey (which we fill in).
std::vector<uint8_t> serialize_safetensors(const NamedTensors& tensors, const TensorMetadata& metadata = {});

// Writes serialize_safetensors() atomically: to `path`.tmp, flushed and fsync'ed, renamed over
// `path`, then the directory is fsync'ed. A crash leaves either the old file or the new one.
// Throws std::runtime_error naming the path on I/O failure.
void save_safetensors(const std::filesystem::path& path, const NamedTensors& tensors,
                      const TensorMetadata& metadata = {});

struct LoadOptions {
  // F32/F64 tensors holding NaN or +-Inf are refused (naming the tensor and the first bad
  // element) unless this is set, e.g. to inspect a diverged checkpoint.
  bool allow_non_finite = false;
};

// Tensors sorted by name, each a fresh contiguous tensor (requires_grad off). `metadata`, when
// given, receives __metadata__ (including the checksum entry, if any).
//
// Reads the 8-byte length and the header first and checks them against the file's size before
// allocating anything; refuses what is not a regular file (directory, FIFO, device: opened
// without blocking) and a data section larger than the machine's memory.
NamedTensors load_safetensors(const std::filesystem::path& path, TensorMetadata* metadata = nullptr,
                              const LoadOptions& options = {});

// Only the header's __metadata__ (string keys and values), read and checked as load_safetensors
// does but without reading the data section (so neither the checksum nor the values are checked).
// For comparing what a writer stored there (save_safetensors' `metadata`) with other files.
TensorMetadata read_safetensors_metadata(const std::filesystem::path& path);

// The same as load_safetensors from bytes in memory; `name` stands for the file in error
// messages. Never reads outside [data, data + size), whatever the bytes.
NamedTensors parse_safetensors(const uint8_t* data, size_t size, std::string_view name = "<memory>",
                               TensorMetadata* metadata = nullptr, const LoadOptions& options = {});

// `s` for an error message: C0 and C1 control characters, DEL, line/paragraph separators and
// bidirectional overrides become \xNN or \uNNNN, a backslash becomes \\, bytes that are not
// UTF-8 become \xNN; other text is kept. At most `max_chars` characters, then "...".
std::string printable(std::string_view s, size_t max_chars = std::string_view::npos);

// CRC-32 (ISO-HDLC, as zlib.crc32 / Python's binascii.crc32); pass the previous value to continue.
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

}  // namespace tg
