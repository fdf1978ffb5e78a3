// libFuzzer target: the checkpoint loader. parse_safetensors() from memory, load_safetensors()
// from a file, and nn::load_weights() of the file into a small TextClassifier (the seed
// sentiment model's size: vocab 16, embed 8, hidden 16, RNN).
//
// Properties:
//  - parse/load throw only std::runtime_error; load_weights only std::runtime_error or
//    std::invalid_argument;
//  - a parsed file is self-consistent (sorted unique names, rank <= 8, no __metadata__ tensor) and
//    survives serialize_safetensors() -> parse_safetensors() unchanged, bytes included;
//  - the file path gives the same tensors as the memory path;
//  - a failed load_weights leaves every weight of the model bit-for-bit unchanged; a successful
//    strict one makes the model's weights equal to the file's.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "tapegrad/autograd/safetensors.h"
#include "tapegrad/nn/text_classifier.h"
#include "tests/fuzz/common.h"

namespace {

bool same_tensor(const tg::Tensor& a, const tg::Tensor& b) {
  if (a.dtype() != b.dtype() || a.shape() != b.shape()) return false;
  const size_t bytes = static_cast<size_t>(a.numel()) * tg::dtype_size(a.dtype());
  return bytes == 0 || std::memcmp(a.contiguous().raw_data(), b.contiguous().raw_data(), bytes) == 0;
}

bool same(const tg::NamedTensors& a, const tg::NamedTensors& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i].first != b[i].first || !same_tensor(a[i].second, b[i].second)) return false;
  return true;
}

bool same(const std::map<std::string, tg::Tensor>& a, const std::map<std::string, tg::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (auto ia = a.begin(), ib = b.begin(); ia != a.end(); ++ia, ++ib)
    if (ia->first != ib->first || !same_tensor(ia->second, ib->second)) return false;
  return true;
}

tg::nn::TextClassifier& model() {
  static std::unique_ptr<tg::nn::TextClassifier> m = [] {
    tg::manual_seed(0);
    return std::make_unique<tg::nn::TextClassifier>(tg::nn::TextClassifierOptions{
        .vocab_size = 16, .embed = 8, .hidden = 16, .cell = tg::nn::CellType::RNN, .dropout = 0.0});
  }();
  return *m;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tg::NamedTensors parsed;
  tg::TensorMetadata meta;
  bool ok = true;
  try {
    parsed = tg::parse_safetensors(data, size, "<fuzz>", &meta);
  } catch (const std::runtime_error& e) {
    ok = false;
    fuzz::note("parse_safetensors", e);
    FUZZ_CHECK(std::string(e.what()).starts_with("safetensors file <fuzz>: "));
  }

  if (ok) {
    for (size_t i = 0; i < parsed.size(); ++i) {
      FUZZ_CHECK(parsed[i].first != "__metadata__");
      FUZZ_CHECK(i == 0 || parsed[i - 1].first < parsed[i].first);
      FUZZ_CHECK(parsed[i].second.dim() <= tg::kMaxRank);
      FUZZ_CHECK(!parsed[i].second.requires_grad());
    }
    // Round trip through our writer (which adds its own checksum entry).
    tg::TensorMetadata user_meta = meta;
    user_meta.erase(tg::kChecksumKey);
    bool encodable = true;
    std::vector<uint8_t> again;
    try {
      again = tg::serialize_safetensors(parsed, user_meta);
    } catch (const std::invalid_argument&) {
      encodable = false;  // names or metadata that nlohmann cannot dump (invalid UTF-8)
    }
    if (encodable) {
      tg::TensorMetadata meta2;
      tg::NamedTensors reparsed = tg::parse_safetensors(again.data(), again.size(), "<again>", &meta2);
      FUZZ_CHECK(same(parsed, reparsed));
      meta2.erase(tg::kChecksumKey);
      FUZZ_CHECK(meta2 == user_meta);
    }
  }

  // The file path: the same answer, then into a model.
  const fuzz::TempFile file("model.safetensors", data, size);
  const auto& path = file.path();
  bool file_ok = true;
  try {
    FUZZ_CHECK(same(tg::load_safetensors(path), parsed));
  } catch (const std::runtime_error&) {
    file_ok = false;
  }
  FUZZ_CHECK(file_ok == ok);

  auto& m = model();
  const auto before = m.state_dict();
  for (bool strict : {true, false}) {
    try {
      tg::nn::load_weights(m, path, strict);
      FUZZ_CHECK(ok);
      if (std::getenv("FUZZ_VERBOSE")) std::fprintf(stderr, "[load_weights%s] loaded\n", strict ? " strict" : "");
      if (strict) {
        // Every model weight now equals the file's tensor (converted to the model's dtype); the
        // file may name a recurrent weight PyTorch's way (rnn.weight_hh_l0 for rnn.cell0.weight_hh).
        std::map<std::string, tg::Tensor> file;
        for (auto& [n, t] : parsed) file.emplace(before.count(n) ? n : tg::nn::tapegrad_name(n), t);
        const auto after = m.state_dict();
        FUZZ_CHECK(after.size() == file.size());
        for (const auto& [n, t] : after) {
          const auto it = file.find(n);
          FUZZ_CHECK(it != file.end());
          FUZZ_CHECK(same_tensor(t, it->second.to(t.dtype())));
        }
      }
      m.load_state_dict(before);  // restore for the next input
    } catch (const std::runtime_error& e) {
      fuzz::note(strict ? "load_weights strict" : "load_weights", e);
      FUZZ_CHECK(same(m.state_dict(), before));
    } catch (const std::invalid_argument& e) {
      fuzz::note(strict ? "load_weights strict" : "load_weights", e);
      FUZZ_CHECK(same(m.state_dict(), before));
    }
  }
  return 0;
}
