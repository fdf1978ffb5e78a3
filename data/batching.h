#pragma once
// Examples -> id sequences -> padded mini-batches, deterministically.

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "tapegrad/data/dataset.h"
#include "tapegrad/data/vocab.h"

namespace tg::data {

struct Batch {
  std::vector<int64_t> tokens;  // batch * max_len, row-major, padded with Vocab::kPadId
  int64_t batch = 0, max_len = 0;
  std::vector<int64_t> lengths;        // real tokens per row, each >= 1
  std::vector<float> labels;           // per row
  std::vector<size_t> example_index;   // row -> index into the input examples
};

struct EncodedExample {
  std::vector<int64_t> ids;
  int label = 0;
  bool operator==(const EncodedExample&) const = default;
};

using Tokenizer = std::function<std::vector<std::string>(std::string_view)>;

// Tokenizes, maps through `vocab`, keeps the first `max_len` ids (>= 1).
// Texts with no tokens become a single <unk> so no sequence is empty.
std::vector<EncodedExample> encode_all(const std::vector<Example>& examples, const Vocab& vocab,
                                       const Tokenizer& tokenizer, int64_t max_len);

// Permutation of 0..n-1 that depends only on (n, seed, epoch): mt19937_64
// (output fixed by the standard) plus a hand-written Fisher-Yates with
// rejection sampling, because std::shuffle / uniform_int_distribution differ
// between standard libraries.
std::vector<size_t> permutation(size_t n, uint64_t seed, int64_t epoch);

// One epoch of batches.
// - shuffle: example order is permutation(n, seed, epoch), else 0..n-1.
// - world_size > 1: the order is cut to a multiple of world_size and rank r
//   takes positions r, r+W, r+2W, ... so shards are disjoint and equal-sized
//   (all ranks then also get the same number of batches).
// - bucket_by_length: each consecutive chunk of 100*batch_size of the shard is
//   stably sorted by length and cut into batches; with shuffle the batch order
//   is then permuted (same way on every rank), so padding is small but batches
//   are not served shortest-first.
// The last batch may be smaller than batch_size. Throws std::invalid_argument
// on batch_size < 1, bad rank/world_size or an example with no ids.
std::vector<Batch> make_batches(const std::vector<EncodedExample>& examples, int64_t batch_size,
                                uint64_t seed, int64_t epoch, bool shuffle, bool bucket_by_length,
                                int rank = 0, int world_size = 1);

}  // namespace tg::data
