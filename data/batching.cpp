#include "tapegrad/data/batching.h"

#include <fmt/core.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <stdexcept>

namespace tg::data {
namespace {

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Separate streams keep the example permutation and the batch-order shuffle
// independent, so enabling bucketing doesn't change which examples a rank sees.
enum Stream : uint64_t { kExampleOrder = 0, kBatchOrder = 1 };

std::mt19937_64 make_rng(uint64_t seed, int64_t epoch, Stream stream) {
  uint64_t s = splitmix64(seed);
  s = splitmix64(s ^ static_cast<uint64_t>(epoch));
  s = splitmix64(s ^ stream);
  return std::mt19937_64(s);
}

// Uniform in [0, bound) without modulo bias; bound >= 1.
uint64_t bounded(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t threshold = (0 - bound) % bound;  // 2^64 mod bound
  for (;;) {
    const uint64_t r = rng();
    if (r >= threshold) return r % bound;
  }
}

template <class T>
void fisher_yates(std::vector<T>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    const auto j = static_cast<size_t>(bounded(rng, i));
    std::swap(v[i - 1], v[j]);
  }
}

Batch collate(const std::vector<EncodedExample>& examples, const size_t* idx, size_t count) {
  Batch b;
  b.batch = static_cast<int64_t>(count);
  for (size_t k = 0; k < count; ++k)
    b.max_len = std::max(b.max_len, static_cast<int64_t>(examples[idx[k]].ids.size()));
  b.tokens.assign(count * static_cast<size_t>(b.max_len), Vocab::kPadId);
  b.lengths.reserve(count);
  b.labels.reserve(count);
  b.example_index.assign(idx, idx + count);
  for (size_t k = 0; k < count; ++k) {
    const auto& ex = examples[idx[k]];
    std::copy(ex.ids.begin(), ex.ids.end(), b.tokens.begin() + static_cast<std::ptrdiff_t>(k * static_cast<size_t>(b.max_len)));
    b.lengths.push_back(static_cast<int64_t>(ex.ids.size()));
    b.labels.push_back(static_cast<float>(ex.label));
  }
  return b;
}

}  // namespace

std::vector<EncodedExample> encode_all(const std::vector<Example>& examples, const Vocab& vocab,
                                       const Tokenizer& tokenizer, int64_t max_len) {
  if (max_len < 1) throw std::invalid_argument(fmt::format("encode_all: max_len must be >= 1, got {}", max_len));
  if (!tokenizer) throw std::invalid_argument("encode_all: tokenizer is empty");
  std::vector<EncodedExample> out;
  out.reserve(examples.size());
  for (const auto& ex : examples) {
    std::vector<std::string> toks = tokenizer(ex.text);
    if (toks.size() > static_cast<size_t>(max_len)) toks.resize(static_cast<size_t>(max_len));
    EncodedExample e{vocab.encode(toks), ex.label};
    if (e.ids.empty()) e.ids.push_back(Vocab::kUnkId);
    out.push_back(std::move(e));
  }
  return out;
}

std::vector<size_t> permutation(size_t n, uint64_t seed, int64_t epoch) {
  std::vector<size_t> p(n);
  std::iota(p.begin(), p.end(), size_t{0});
  auto rng = make_rng(seed, epoch, kExampleOrder);
  fisher_yates(p, rng);
  return p;
}

std::vector<Batch> make_batches(const std::vector<EncodedExample>& examples, int64_t batch_size,
                                uint64_t seed, int64_t epoch, bool shuffle, bool bucket_by_length,
                                int rank, int world_size) {
  if (batch_size < 1) throw std::invalid_argument(fmt::format("make_batches: batch_size must be >= 1, got {}", batch_size));
  if (world_size < 1 || rank < 0 || rank >= world_size)
    throw std::invalid_argument(fmt::format(
        "make_batches: need 0 <= rank < world_size, got rank {} world_size {}", rank, world_size));
  for (size_t i = 0; i < examples.size(); ++i)
    if (examples[i].ids.empty())
      throw std::invalid_argument(fmt::format("make_batches: example {} has no token ids (encode_all never produces that)", i));

  std::vector<size_t> order;
  if (shuffle) order = permutation(examples.size(), seed, epoch);
  else {
    order.resize(examples.size());
    std::iota(order.begin(), order.end(), size_t{0});
  }
  const auto W = static_cast<size_t>(world_size);
  if (W > 1) {
    const size_t per_rank = order.size() / W;
    std::vector<size_t> shard;
    shard.reserve(per_rank);
    for (size_t k = 0; k < per_rank; ++k) shard.push_back(order[k * W + static_cast<size_t>(rank)]);
    order = std::move(shard);
  }

  const auto B = static_cast<size_t>(batch_size);
  std::vector<Batch> batches;
  batches.reserve((order.size() + B - 1) / B);
  if (bucket_by_length) {
    const size_t chunk = 100 * B;
    auto len = [&](size_t i) { return examples[i].ids.size(); };
    for (size_t start = 0; start < order.size(); start += chunk) {
      const auto first = order.begin() + static_cast<std::ptrdiff_t>(start);
      const auto last = order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), start + chunk));
      std::stable_sort(first, last, [&](size_t a, size_t b) { return len(a) < len(b); });
    }
  }
  for (size_t start = 0; start < order.size(); start += B)
    batches.push_back(collate(examples, order.data() + start, std::min(B, order.size() - start)));
  if (bucket_by_length && shuffle) {
    auto rng = make_rng(seed, epoch, kBatchOrder);
    fisher_yates(batches, rng);
  }
  return batches;
}

}  // namespace tg::data
