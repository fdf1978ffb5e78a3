// save_weights / load_weights: round trips, strictness, errors, and PyTorch's own parameter names,
// against a state_dict and outputs that torch.nn.LSTM / GRU produced (tests/torch_weights/, made
// offline by generate.py there).
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <functional>
#include <set>
#include <unistd.h>

#include <fmt/format.h>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/nn/weights.h"

using namespace tg;
namespace fs = std::filesystem;

namespace {

// What generate.py builds in PyTorch: lstm = LSTM(3, 4, num_layers=2, bidirectional=True), gru = GRU(3, 4).
class Pair : public nn::Module {
 public:
  explicit Pair(DType dtype) {
    lstm = register_module("lstm", std::make_shared<nn::LSTM>(nn::RNNOptions{
                                       .input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true,
                                       .dtype = dtype}));
    gru = register_module("gru", std::make_shared<nn::GRU>(nn::RNNOptions{.input_size = 3, .hidden_size = 4,
                                                                          .dtype = dtype}));
  }
  std::shared_ptr<nn::LSTM> lstm;
  std::shared_ptr<nn::GRU> gru;
};

fs::path reference_dir() { return fs::path(TG_SOURCE_DIR) / "tests" / "torch_weights"; }

nlohmann::json expected() {
  std::ifstream in(reference_dir() / "expected.json");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

fs::path scratch(const std::string& name) {
  fs::path dir = fs::temp_directory_path() / fmt::format("tg_weights_{}", ::getpid());
  fs::create_directories(dir);
  return dir / name;
}

void check_close(const Tensor& got, const std::vector<double>& want) {
  std::vector<double> g = got.to_vector();
  REQUIRE(g.size() == want.size());
  for (size_t i = 0; i < g.size(); ++i) CHECK(g[i] == doctest::Approx(want[i]).epsilon(1e-12));
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_SUITE("weights") {

TEST_CASE("names: ours <-> PyTorch's for the recurrent modules, everything else unchanged") {
  CHECK(nn::pytorch_name("rnn.cell0.weight_ih") == "rnn.weight_ih_l0");
  CHECK(nn::pytorch_name("enc.rnn.cell12_reverse.bias_hh") == "enc.rnn.bias_hh_l12_reverse");
  CHECK(nn::pytorch_name("cell1.weight_hh") == "weight_hh_l1");
  CHECK(nn::pytorch_name("fc.weight") == "fc.weight");
  CHECK(nn::pytorch_name("mycell0.weight_ih") == "mycell0.weight_ih");
  for (std::string n : {"rnn.cell0.weight_ih", "a.b.cell3_reverse.bias_ih", "emb.weight", "cell2.bias_hh"})
    CHECK(nn::tapegrad_name(nn::pytorch_name(n)) == n);
}

TEST_CASE("a file torch wrote loads under PyTorch's names and computes what torch computed") {
  const nlohmann::json ref = expected();
  Pair m(DType::Float64);
  nn::load_weights(m, reference_dir() / "weights.safetensors");  // strict
  const auto shape = ref["input_shape"].get<std::vector<int64_t>>();
  Tensor x = from_vector(ref["input"].get<std::vector<double>>(), Shape{shape[0], shape[1], shape[2]});
  NoGradGuard no_grad;
  nn::RNNOutput lstm = (*m.lstm)(x), gru = (*m.gru)(x);
  check_close(lstm.output, ref["lstm_output"].get<std::vector<double>>());
  check_close(lstm.h_n, ref["lstm_h_n"].get<std::vector<double>>());
  check_close(lstm.c_n, ref["lstm_c_n"].get<std::vector<double>>());
  check_close(gru.output, ref["gru_output"].get<std::vector<double>>());
  check_close(gru.h_n, ref["gru_h_n"].get<std::vector<double>>());
}

TEST_CASE("saved under PyTorch's names, the file holds exactly torch's state_dict keys and shapes") {
  const nlohmann::json ref = expected();
  Pair m(DType::Float32);
  const fs::path path = scratch("torch_names.safetensors");
  nn::save_weights(m, path, {}, nn::WeightNames::PyTorch);
  std::map<std::string, std::vector<int64_t>> written, wanted;
  for (auto& [name, t] : load_safetensors(path)) written[name] = std::vector<int64_t>(t.shape().begin(), t.shape().end());
  for (auto& [name, s] : ref["state_dict"].items()) wanted[name] = s.get<std::vector<int64_t>>();
  CHECK(written == wanted);  // torch's load_state_dict(strict=True) accepts exactly these
  // and it reads back into tapegrad bit for bit
  Pair back(DType::Float32);
  nn::load_weights(back, path);
  for (auto& [name, t] : m.state_dict()) CHECK_MESSAGE(back.state_dict().at(name).to_vector() == t.to_vector(), name);
  fs::remove_all(path.parent_path());
}

TEST_CASE("round trip under our names; strict and non-strict loading; errors name the file and the keys") {
  manual_seed(3);
  Pair m(DType::Float32);
  const fs::path path = scratch("ours.safetensors");
  nn::save_weights(m, path, {{"note", "round trip"}});
  CHECK(read_safetensors_metadata(path).at("note") == "round trip");
  Pair back(DType::Float32);
  nn::load_weights(back, path);
  for (auto& [name, t] : m.state_dict()) CHECK(back.state_dict().at(name).to_vector() == t.to_vector());

  // A module with more (or fewer) tensors than the file.
  nn::LSTM lone(nn::RNNOptions{.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true});
  std::string e = error_of([&] { nn::load_weights(lone, path); });
  CHECK(e.find(path.string()) != std::string::npos);
  CHECK(e.find("unexpected keys") != std::string::npos);
  // Not strict: unknown names skipped, shapes still checked.
  nn::GRU small(nn::RNNOptions{.input_size = 3, .hidden_size = 4});
  nn::save_weights(small, path);
  Pair partial(DType::Float32);
  const auto before = partial.lstm->state_dict();
  CHECK_THROWS(nn::load_weights(partial, path));  // strict: the file lacks every lstm.* / gru.* name
  nn::GRU other(nn::RNNOptions{.input_size = 3, .hidden_size = 4});
  nn::load_weights(other, path, /*strict=*/false);
  CHECK(other.state_dict().at("cell0.weight_hh").to_vector() == small.state_dict().at("cell0.weight_hh").to_vector());
  nn::GRU wide(nn::RNNOptions{.input_size = 5, .hidden_size = 4});
  e = error_of([&] { nn::load_weights(wide, path, /*strict=*/false); });
  CHECK(e.find("shape mismatch for cell0.weight_ih") != std::string::npos);

  // One weight under both namings: refused, nothing loaded.
  nn::GRU both(nn::RNNOptions{.input_size = 3, .hidden_size = 4});
  NamedTensors twice;
  for (auto& [name, t] : small.state_dict()) twice.emplace_back(name, t);
  twice.emplace_back("weight_hh_l0", small.state_dict().at("cell0.weight_hh"));
  save_safetensors(path, twice);
  const auto kept = both.state_dict().at("cell0.weight_hh").to_vector();
  e = error_of([&] { nn::load_weights(both, path); });
  CHECK(e.find("under both namings") != std::string::npos);
  CHECK(both.state_dict().at("cell0.weight_hh").to_vector() == kept);
  nn::save_weights(small, path);

  // A truncated file is an error naming it, never a crash.
  const auto size = fs::file_size(path);
  fs::resize_file(path, size / 2);
  e = error_of([&] { nn::load_weights(other, path); });
  CHECK(e.find(path.string()) != std::string::npos);
  fs::remove_all(path.parent_path());
}

}  // TEST_SUITE
