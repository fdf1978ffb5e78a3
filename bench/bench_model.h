#pragma once
// The model and configurations of ../shared/bench/SPEC.md, written with the public API the way a
// user would: Embedding -> nn::RNN / nn::LSTM -> last state -> Linear (a logit per example).
// Shared by bench_rnn_bench (one process) and optim/dist's bench_dist (data-parallel).
#include <cstdint>
#include <map>
#include <memory>
#include <string>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"

namespace tg::bench {

struct Config { int64_t V, E, H, T, B; bool lstm; int warm, N; };
inline const std::map<std::string, Config> kConfigs = {
    {"toy", {16, 8, 16, 4, 1, false, 200, 5000}},
    {"small", {5000, 64, 128, 32, 32, false, 20, 200}},
    {"medium", {20000, 128, 256, 64, 64, false, 20, 30}},
    {"lstm-small", {5000, 64, 128, 32, 32, true, 20, 100}},
    // Not in SPEC.md (see NOTES.md, "oneDNN peer"): medium's shape with the LSTM cell; fewer
    // timed steps, as each is ~4x medium's work.
    {"lstm-medium", {20000, 128, 256, 64, 64, true, 5, 10}},
};

class Net : public nn::Module {
 public:
  explicit Net(const Config& c) : lstm_(c.lstm) {
    emb_ = register_module("emb", std::make_shared<nn::Embedding>(c.V, c.E));
    // Only h_n is read, so the module is told not to assemble the per-step output sequence.
    nn::RNNOptions o{.input_size = c.E, .hidden_size = c.H, .batch_first = true, .output_sequence = false};
    if (lstm_) lstm_mod_ = register_module("lstm", std::make_shared<nn::LSTM>(o));
    else rnn_ = register_module("rnn", std::make_shared<nn::RNN>(o));
    fc_ = register_module("fc", std::make_shared<nn::Linear>(c.H, 1));
  }
  Tensor forward(const Tensor& x) {
    Tensor e = (*emb_)(x);
    Tensor h = lstm_ ? (*lstm_mod_)(e).h_n : (*rnn_)(e).h_n;
    return (*fc_)(select(h, 0, -1)).reshape({-1});
  }

 private:
  bool lstm_;
  std::shared_ptr<nn::Embedding> emb_;
  std::shared_ptr<nn::RNN> rnn_;
  std::shared_ptr<nn::LSTM> lstm_mod_;
  std::shared_ptr<nn::Linear> fc_;
};

}  // namespace tg::bench
