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
// Loading validates everything before it returns (sizes, JSON, dtypes, shapes, offsets, overlaps,
// checksum); any problem throws std::runtime_error naming the file and what is wrong, and nothing
// is returned.
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "autograd/tensor.h"

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

// Tensors sorted by name, each a fresh contiguous tensor (requires_grad off). `metadata`, when
// given, receives __metadata__ (including the checksum entry, if any).
NamedTensors load_safetensors(const std::filesystem::path& path, TensorMetadata* metadata = nullptr);

// The same from bytes in memory; `name` stands for the file in error messages. Never reads
// outside [data, data + size), whatever the bytes.
NamedTensors parse_safetensors(const uint8_t* data, size_t size, std::string_view name = "<memory>",
                               TensorMetadata* metadata = nullptr);

// CRC-32 (ISO-HDLC, as zlib.crc32 / Python's binascii.crc32); pass the previous value to continue.
uint32_t crc32(const void* data, size_t size, uint32_t crc = 0);

}  // namespace tg
