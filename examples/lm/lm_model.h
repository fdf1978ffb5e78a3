#pragma once
// The language model of tapegrad-lm (PyTorch's word_language_model RNNModel):
//
//   tokens [T, B] -> Embedding -> dropout -> RNN / LSTM / GRU (num_layers, dropout between layers)
//                 -> dropout -> Linear(hidden, vocab) -> logits [T * B, vocab]
//
// With tie_weights the decoder's weight IS the embedding matrix (embed must equal hidden): one
// parameter, used twice, so backward accumulates both uses' gradients into it.
// Parameter names: embedding.weight, rnn.cell{l}.{weight_ih,weight_hh,bias_ih,bias_hh}, then
// decoder.weight and decoder.bias, or decoder_bias alone when tied.
#include <cstdint>
#include <memory>
#include <string>

#include "tapegrad/nn/layers.h"
#include "tapegrad/nn/module.h"
#include "tapegrad/nn/rnn.h"
#include "tapegrad/nn/text_classifier.h"

namespace tglm {

struct LmModelOptions {
  int64_t vocab_size = 0, embed = 256, hidden = 256, layers = 1;
  tg::nn::CellType cell = tg::nn::CellType::LSTM;
  double dropout = 0.0;
  bool tie_weights = false;
};

// The recurrent state carried from one chunk to the next: h [layers, B, hidden] (and c for an
// LSTM). Undefined tensors mean zeros (the start of a stream).
struct LmState {
  tg::Tensor h, c;
  LmState detached() const { return {h.defined() ? h.detach() : h, c.defined() ? c.detach() : c}; }
};

class LanguageModel : public tg::nn::Module {
 public:
  explicit LanguageModel(const LmModelOptions& options);  // invalid_argument on bad options
  // tokens int64 [T, B]; `state` is read and replaced by the state after the last step.
  tg::Tensor forward(const tg::Tensor& tokens, LmState& state);
  int64_t num_parameters() const;

  const LmModelOptions options;
  std::shared_ptr<tg::nn::Embedding> embedding;
  std::shared_ptr<tg::nn::RNNBase> rnn;
  std::shared_ptr<tg::nn::Linear> decoder;  // null when tied

 private:
  tg::Tensor* tied_bias_ = nullptr;  // the decoder's bias when tied
};

}  // namespace tglm
