#include "lm_model.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"

namespace tglm {

using namespace tg;

namespace {

const LmModelOptions& checked(const LmModelOptions& o) {
  if (o.vocab_size < 2 || o.embed < 1 || o.hidden < 1 || o.layers < 1)
    throw std::invalid_argument(fmt::format("LanguageModel: vocab_size must be >= 2 and embed, hidden, layers >= 1, "
                                            "got {}, {}, {}, {}",
                                            o.vocab_size, o.embed, o.hidden, o.layers));
  if (!(o.dropout >= 0 && o.dropout < 1))
    throw std::invalid_argument(fmt::format("LanguageModel: dropout must be in [0, 1), got {}", o.dropout));
  if (o.tie_weights && o.embed != o.hidden)
    throw std::invalid_argument(fmt::format("LanguageModel: tied weights need embed == hidden (the decoder reuses the "
                                            "[vocab, embed] embedding as its [vocab, hidden] weight), got embed {} "
                                            "and hidden {}",
                                            o.embed, o.hidden));
  return o;
}

}  // namespace

LanguageModel::LanguageModel(const LmModelOptions& o) : options(checked(o)) {
  embedding = register_module("embedding", std::make_shared<nn::Embedding>(o.vocab_size, o.embed));
  nn::RNNOptions ro{.input_size = o.embed, .hidden_size = o.hidden, .num_layers = o.layers,
                    .dropout = o.layers > 1 ? o.dropout : 0.0};
  switch (o.cell) {
    case nn::CellType::RNN: rnn = register_module("rnn", std::make_shared<nn::RNN>(ro)); break;
    case nn::CellType::LSTM: rnn = register_module("rnn", std::make_shared<nn::LSTM>(ro)); break;
    case nn::CellType::GRU: rnn = register_module("rnn", std::make_shared<nn::GRU>(ro)); break;
  }
  if (o.tie_weights) {
    // nn.Linear's bias initialisation, U(+-1/sqrt(hidden)), drawn after the recurrent weights.
    const double bound = 1.0 / std::sqrt(static_cast<double>(o.hidden));
    tied_bias_ = &register_parameter("decoder_bias", uniform(Shape{o.vocab_size}, -bound, bound));
  } else {
    decoder = register_module("decoder", std::make_shared<nn::Linear>(o.hidden, o.vocab_size));
  }
}

int64_t LanguageModel::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

Tensor LanguageModel::forward(const Tensor& tokens, LmState& state) {
  NameScope scope(name());
  if (tokens.dim() != 2 || tokens.dtype() != DType::Int64)
    throw std::invalid_argument(fmt::format("LanguageModel: tokens must be int64 [time, batch], got {} {}",
                                            dtype_name(tokens.dtype()), tokens.shape().str()));
  const int64_t T = tokens.size(0), B = tokens.size(1);
  Tensor x = dropout(embedding->forward(tokens), options.dropout, is_training());
  nn::RNNOutput r;
  switch (options.cell) {
    case nn::CellType::RNN: r = static_cast<nn::RNN&>(*rnn).forward(x, state.h); break;
    case nn::CellType::LSTM: r = static_cast<nn::LSTM&>(*rnn).forward(x, state.h, state.c); break;
    case nn::CellType::GRU: r = static_cast<nn::GRU&>(*rnn).forward(x, state.h); break;
  }
  state.h = r.h_n;
  state.c = r.c_n;
  Tensor out = dropout(r.output, options.dropout, is_training()).reshape(Shape{T * B, options.hidden});
  return options.tie_weights ? linear(out, embedding->weight, *tied_bias_) : decoder->forward(out);
}

}  // namespace tglm
