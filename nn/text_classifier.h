#pragma once
// A recurrent sentence classifier: binary (SST-2 and the like) or K classes (SST-5, TREC):
//
//   tokens [B, T] -> Embedding(padding_idx) -> dropout(embed_dropout)
//                 -> RNN / LSTM / GRU (batch_first, packed by each row's length)
//                 -> features: last  = the last layer's h_n (forward and reverse concatenated
//                                      when bidirectional): the state after each row's last
//                                      real token, and for the reverse direction after reading
//                                      back to the first
//                              max   = max over the real time steps of the outputs
//                              mean  = mean over the real time steps of the outputs
//                 -> dropout(dropout) -> Linear(features, 1) -> logits [B]      (num_classes 2)
//                                  or Linear(features, K) -> logits [B, K]   (num_classes K > 2)
//
// Two classes keep the single logit trained with binary cross-entropy (so checkpoints written
// before num_classes existed load unchanged); K > 2 classes get K logits for cross_entropy.
//
// With pooling `last` and embed_dropout 0 this is exactly the model of the PyTorch reference
// (bench/accuracy/train_ref.py): nn.Embedding(padding_idx=0) -> nn.LSTM/GRU/RNN over a packed
// sequence -> nn.Dropout on h_n -> nn.Linear(., 1); between stacked layers the recurrent module
// applies the same dropout, as nn.LSTM(dropout=...) does when layers > 1.
//
// Parameter names: embedding.weight, rnn.cell{l}[_reverse].{weight_ih,weight_hh,bias_ih,bias_hh},
// fc.weight, fc.bias. torch_names() maps them to the reference model's state_dict keys
// (emb.weight, rnn.weight_ih_l0, out.weight, ...).
#include <cstdint>
#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "tapegrad/autograd/safetensors.h"
#include "tapegrad/nn/layers.h"
#include "tapegrad/nn/module.h"
#include "tapegrad/nn/rnn.h"
#include "tapegrad/nn/weights.h"  // save_weights / load_weights (they lived here before)

namespace tg::nn {

enum class CellType { RNN, LSTM, GRU };
enum class Pooling { Last, Max, Mean };

const char* cell_type_name(CellType c);  // "rnn", "lstm", "gru"
const char* pooling_name(Pooling p);     // "last", "max", "mean"
// Throw std::invalid_argument listing the accepted names.
CellType parse_cell_type(std::string_view s);
Pooling parse_pooling(std::string_view s);

struct TextClassifierOptions {
  int64_t vocab_size = 0;
  int64_t embed = 128;
  int64_t hidden = 256;
  int64_t layers = 1;
  CellType cell = CellType::LSTM;
  bool bidirectional = false;
  double dropout = 0.5;        // on the features before the output layer, and between layers
  double embed_dropout = 0.0;  // on the embedded tokens
  Pooling pooling = Pooling::Last;
  int64_t padding_idx = 0;     // its embedding row is zero and gets no gradient
  int64_t num_classes = 2;     // 2: one logit per row; K > 2: K logits per row
};

class TextClassifier : public Module {
 public:
  // Parameters are created in the order embedding, recurrent cells, output layer (PyTorch's), from
  // the current thread's generator.
  explicit TextClassifier(const TextClassifierOptions& options);

  // tokens: int64 [B, T], row b padded after its first lengths[b] tokens (1 <= lengths[b] <= T);
  // no lengths = every row is T long. Returns one logit per row, [B] (num_classes 2), or
  // [B, num_classes] logits.
  Tensor forward(const Tensor& tokens, const Lengths& lengths = {});
  Tensor operator()(const Tensor& tokens, const Lengths& lengths = {}) { return forward(tokens, lengths); }

  int64_t feature_size() const;  // input size of the output layer
  int64_t num_parameters() const;
  // (our name, the reference PyTorch model's state_dict key) for every parameter.
  std::vector<std::pair<std::string, std::string>> torch_names() const;

  const TextClassifierOptions options;
  std::shared_ptr<Embedding> embedding;
  std::shared_ptr<RNNBase> rnn;
  std::shared_ptr<Linear> fc;

 private:
  RNNOutput run_rnn(const Tensor& x, const Lengths& lengths);
};

}  // namespace tg::nn
