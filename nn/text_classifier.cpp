#include "tapegrad/nn/text_classifier.h"

#include <fmt/format.h>

#include <stdexcept>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/safetensors.h"
#include "tapegrad/autograd/tape.h"

namespace tg::nn {

const char* cell_type_name(CellType c) {
  switch (c) {
    case CellType::RNN: return "rnn";
    case CellType::LSTM: return "lstm";
    case CellType::GRU: return "gru";
  }
  return "?";
}

const char* pooling_name(Pooling p) {
  switch (p) {
    case Pooling::Last: return "last";
    case Pooling::Max: return "max";
    case Pooling::Mean: return "mean";
  }
  return "?";
}

CellType parse_cell_type(std::string_view s) {
  if (s == "rnn") return CellType::RNN;
  if (s == "lstm") return CellType::LSTM;
  if (s == "gru") return CellType::GRU;
  throw std::invalid_argument(fmt::format("unknown recurrent cell '{}' (expected rnn, lstm or gru)", s));
}

Pooling parse_pooling(std::string_view s) {
  if (s == "last") return Pooling::Last;
  if (s == "max") return Pooling::Max;
  if (s == "mean") return Pooling::Mean;
  throw std::invalid_argument(fmt::format("unknown pooling '{}' (expected last, max or mean)", s));
}

namespace {

const TextClassifierOptions& checked(const TextClassifierOptions& o) {
  if (o.vocab_size < 1 || o.embed < 1 || o.hidden < 1 || o.layers < 1)
    throw std::invalid_argument(fmt::format(
        "TextClassifier: vocab_size, embed, hidden and layers must be >= 1, got {}, {}, {}, {}", o.vocab_size,
        o.embed, o.hidden, o.layers));
  if (!(o.dropout >= 0 && o.dropout < 1) || !(o.embed_dropout >= 0 && o.embed_dropout < 1))
    throw std::invalid_argument(fmt::format("TextClassifier: dropout and embed_dropout must be in [0, 1), got {} and {}",
                                            o.dropout, o.embed_dropout));
  if (o.padding_idx < -1 || o.padding_idx >= o.vocab_size)
    throw std::invalid_argument(fmt::format("TextClassifier: padding_idx {} is outside [-1, vocab_size {})",
                                            o.padding_idx, o.vocab_size));
  if (o.num_classes < 2)
    throw std::invalid_argument(fmt::format(
        "TextClassifier: num_classes must be >= 2 (2 = binary, one logit), got {}", o.num_classes));
  return o;
}

}  // namespace

TextClassifier::TextClassifier(const TextClassifierOptions& o) : options(checked(o)) {
  embedding = register_module("embedding", std::make_shared<Embedding>(o.vocab_size, o.embed, o.padding_idx));
  RNNOptions ro{.input_size = o.embed,
                .hidden_size = o.hidden,
                .num_layers = o.layers,
                .batch_first = true,
                .bidirectional = o.bidirectional,
                .dropout = o.layers > 1 ? o.dropout : 0.0,
                .output_sequence = o.pooling != Pooling::Last};
  switch (o.cell) {
    case CellType::RNN: rnn = register_module("rnn", std::make_shared<RNN>(ro)); break;
    case CellType::LSTM: rnn = register_module("rnn", std::make_shared<LSTM>(ro)); break;
    case CellType::GRU: rnn = register_module("rnn", std::make_shared<GRU>(ro)); break;
  }
  fc = register_module("fc", std::make_shared<Linear>(feature_size(), o.num_classes > 2 ? o.num_classes : 1));
}

int64_t TextClassifier::feature_size() const { return options.hidden * (options.bidirectional ? 2 : 1); }

int64_t TextClassifier::num_parameters() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += p.numel();
  return n;
}

std::vector<std::pair<std::string, std::string>> TextClassifier::torch_names() const {
  std::vector<std::pair<std::string, std::string>> out{{"embedding.weight", "emb.weight"}};
  // flat_named_parameters lists the cells in registration order, as named_parameters does.
  const auto ours = rnn->named_parameters();
  const auto flat = rnn->flat_named_parameters();
  for (size_t i = 0; i < ours.size() && i < flat.size(); ++i)
    out.emplace_back("rnn." + ours[i].first, "rnn." + flat[i].first);
  out.emplace_back("fc.weight", "out.weight");
  out.emplace_back("fc.bias", "out.bias");
  return out;
}

RNNOutput TextClassifier::run_rnn(const Tensor& x, const Lengths& lengths) {
  switch (options.cell) {
    case CellType::RNN: return static_cast<RNN&>(*rnn).forward(x, Tensor(), lengths);
    case CellType::LSTM: return static_cast<LSTM&>(*rnn).forward(x, Tensor(), Tensor(), lengths);
    case CellType::GRU: return static_cast<GRU&>(*rnn).forward(x, Tensor(), lengths);
  }
  throw std::logic_error("TextClassifier: bad cell type");
}

Tensor TextClassifier::forward(const Tensor& tokens, const Lengths& lengths) {
  NameScope scope(name());
  if (tokens.dim() != 2 || tokens.dtype() != DType::Int64)
    throw std::invalid_argument(fmt::format("TextClassifier: tokens must be int64 [batch, time], got {} {}",
                                            dtype_name(tokens.dtype()), tokens.shape().str()));
  const int64_t B = tokens.size(0), T = tokens.size(1);
  Tensor x = embedding->forward(tokens);
  if (options.embed_dropout > 0) x = dropout(x, options.embed_dropout, is_training());
  RNNOutput r = run_rnn(x, lengths);  // checks the lengths against B and T

  Tensor features;
  if (options.pooling == Pooling::Last) {
    const int64_t last = r.h_n.size(0) - 1;  // [L*D, B, H]; the last layer's entries are at the end
    features = options.bidirectional ? cat({select(r.h_n, 0, last - 1), select(r.h_n, 0, last)}, 1)
                                     : select(r.h_n, 0, last);
  } else {
    // r.output [B, T, F] is zero at padded steps.
    bool padded = false;
    std::vector<double> len(static_cast<size_t>(B), static_cast<double>(T));
    if (lengths.given())
      for (int64_t b = 0; b < B; ++b) {
        len[b] = static_cast<double>(lengths.values()[b]);
        padded |= lengths.values()[b] < T;
      }
    if (options.pooling == Pooling::Max) {
      Tensor out = r.output;
      if (padded) {
        std::vector<double> m(static_cast<size_t>(B * T));
        for (int64_t b = 0; b < B; ++b)
          for (int64_t t = 0; t < T; ++t) m[b * T + t] = t < lengths.values()[b] ? 1.0 : 0.0;
        Tensor mask = from_vector(m, Shape{B, T, 1}).to(out.dtype());
        out = where(mask, out, full(Shape{}, -1e30, out.dtype()));
      }
      features = max(out, 1);
    } else {
      features = sum(r.output, {1}) / from_vector(len, Shape{B, 1}).to(r.output.dtype());
    }
  }
  features = dropout(features, options.dropout, is_training());
  Tensor logits = fc->forward(features);
  return options.num_classes > 2 ? logits : logits.reshape({B});
}

}  // namespace tg::nn
