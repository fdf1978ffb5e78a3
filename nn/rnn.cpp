#include "nn/rnn.h"

#include <fmt/format.h>

#include <stdexcept>

#include "autograd/ops.h"
#include "autograd/tape.h"

namespace tg::nn {

Lengths::Lengths(const Tensor& lengths) {
  if (!lengths.defined()) return;
  if (lengths.dtype() != DType::Int64 || lengths.dim() != 1)
    throw std::invalid_argument(fmt::format("lengths must be an int64 tensor [batch], got {} {}",
                                            dtype_name(lengths.dtype()), lengths.shape().str()));
  Tensor c = lengths.contiguous();
  values_.assign(c.data<int64_t>(), c.data<int64_t>() + c.numel());
  given_ = true;
}

namespace {

// The T per-step slices of the input projection, in time linear in T. select() once per step
// would be quadratic: every narrow backward builds a zero gradient the size of the whole
// projection and adds it in. Here each slice adds its gradient into one shared buffer, and a
// single node recorded before the slices (so its backward runs after all of theirs) hands the
// buffer to x. The slices reach that node through a one-element token that only orders them.
std::vector<Tensor> unbind(const Tensor& x, int64_t dim) {
  Shape s = x.shape();
  Strides st = x.strides(), buf_st = contiguous_strides(x.shape());
  const int64_t n = s[dim], step = st[dim], buf_step = buf_st[dim];
  s.erase(dim);
  st.erase(dim);
  buf_st.erase(dim);
  auto buffer = std::make_shared<Tensor>();
  Tensor token = record("unbind", {x}, zeros(Shape{1}, x.dtype()),
                        [buffer, shape = x.shape(), dtype = x.dtype()](const Tensor&, Grads& gr) {
                          Tensor g = buffer->defined() ? std::move(*buffer) : zeros(shape, dtype);
                          *buffer = Tensor();  // ready for another backward through a retained graph
                          gr.add(0, std::move(g));
                        });
  std::vector<Tensor> pieces;
  pieces.reserve(static_cast<size_t>(n));
  for (int64_t t = 0; t < n; ++t)
    pieces.push_back(record("unbind_slice", {token}, make_view(x, s, st, x.offset() + t * step),
                            [buffer, s, buf_st, offset = t * buf_step, shape = x.shape()](const Tensor& g,
                                                                                          Grads& gr) {
                              if (!buffer->defined()) *buffer = zeros(shape, g.dtype());
                              Tensor window = make_view(*buffer, s, buf_st, offset);
                              add_(window, g);
                              gr.add(0, zeros(Shape{1}, g.dtype()));
                            }));
  return pieces;
}

}  // namespace

RNNBase::RNNBase(const char* type, const RNNOptions& o, bool has_cell_state, const CellFactory& make_cell)
    : options(o), type_(type), has_cell_state_(has_cell_state) {
  if (o.input_size <= 0 || o.hidden_size <= 0 || o.num_layers <= 0)
    throw std::invalid_argument(fmt::format("{}: input_size, hidden_size and num_layers must be positive, got {}, {}, "
                                            "{}",
                                            type, o.input_size, o.hidden_size, o.num_layers));
  if (!(o.dropout >= 0.0 && o.dropout < 1.0))
    throw std::invalid_argument(fmt::format("{}: dropout must be in [0, 1), got {}", type, o.dropout));
  const int64_t D = num_directions();
  for (int64_t l = 0; l < o.num_layers; ++l)
    for (int64_t d = 0; d < D; ++d) {
      auto name = fmt::format("cell{}{}", l, d ? "_reverse" : "");
      cells_.push_back(register_module(name, make_cell(l == 0 ? o.input_size : D * o.hidden_size)));
    }
}

RNNCellBase& RNNBase::cell(int64_t layer, bool reverse) const {
  if (layer < 0 || layer >= options.num_layers || (reverse && !options.bidirectional))
    throw std::out_of_range(fmt::format("{}: no cell for layer {}{} (num_layers {}, bidirectional {})", type_, layer,
                                        reverse ? " reverse" : "", options.num_layers, options.bidirectional));
  return *cells_[layer * num_directions() + (reverse ? 1 : 0)];
}

std::vector<std::pair<std::string, Tensor>> RNNBase::flat_named_parameters() const {
  std::vector<std::pair<std::string, Tensor>> out;
  for (size_t i = 0; i < cells_.size(); ++i) {
    const RNNCellBase& c = *cells_[i];
    auto suffix = fmt::format("_l{}{}", i / num_directions(), i % num_directions() ? "_reverse" : "");
    out.emplace_back("weight_ih" + suffix, c.weight_ih);
    out.emplace_back("weight_hh" + suffix, c.weight_hh);
    if (c.has_bias) {
      out.emplace_back("bias_ih" + suffix, c.bias_ih);
      out.emplace_back("bias_hh" + suffix, c.bias_hh);
    }
  }
  return out;
}

Tensor RNNBase::initial_state(const char* what, const Tensor& s, int64_t batch, DType dtype) const {
  const Shape want{options.num_layers * num_directions(), batch, options.hidden_size};
  if (!s.defined()) return zeros(want, dtype);
  if (!(s.shape() == want))
    throw std::invalid_argument(fmt::format("{}: {} must be [num_layers*num_directions, batch, hidden_size] = {}, "
                                            "got {}",
                                            type_, what, want.str(), s.shape().str()));
  if (s.dtype() != dtype)
    throw std::invalid_argument(fmt::format("{}: {} is {} but the input is {}", type_, what, dtype_name(s.dtype()),
                                            dtype_name(dtype)));
  return s;
}

RNNOutput RNNBase::run(const Tensor& input, const Tensor& h0_in, const Tensor& c0_in, const Lengths& lengths) {
  const RNNOptions& o = options;
  const int64_t D = num_directions();
  const int64_t tdim = o.batch_first ? 1 : 0;  // everything stays in the caller's layout: no transposes
  if (input.dim() != 3 || input.size(2) != o.input_size || input.size(0) == 0 || input.size(1) == 0)
    throw std::invalid_argument(fmt::format("{}: input must be {} with input_size {} and T, B >= 1, got {}", type_,
                                            o.batch_first ? "[B, T, input_size]" : "[T, B, input_size]",
                                            o.input_size, input.shape().str()));
  const DType dtype = cells_[0]->weight_ih.dtype();
  if (input.dtype() != dtype)
    throw std::invalid_argument(fmt::format("{}: input is {} but the parameters are {}; convert the input or call "
                                            "to({})",
                                            type_, dtype_name(input.dtype()), dtype_name(dtype),
                                            dtype_name(input.dtype())));
  const int64_t T = input.size(tdim), B = input.size(1 - tdim);
  Tensor h0 = initial_state("h0", h0_in, B, dtype);
  Tensor c0 = has_cell_state_ ? initial_state("c0", c0_in, B, dtype) : Tensor();

  // masks[t]: [B, 1], 1 where step t is real; left undefined for steps where every sequence is.
  std::vector<Tensor> masks(static_cast<size_t>(T));
  if (lengths.given()) {
    const auto& len = lengths.values();
    if (static_cast<int64_t>(len.size()) != B)
      throw std::invalid_argument(fmt::format("{}: lengths has {} entries for a batch of {}", type_, len.size(), B));
    for (int64_t b = 0; b < B; ++b)
      if (len[b] < 1 || len[b] > T)
        throw std::invalid_argument(
            fmt::format("{}: lengths[{}] = {} is outside [1, {}] (the input's T)", type_, b, len[b], T));
    for (int64_t t = 0; t < T; ++t) {
      std::vector<double> m(static_cast<size_t>(B));
      bool padded = false;
      for (int64_t b = 0; b < B; ++b) {
        m[b] = t < len[b] ? 1.0 : 0.0;
        padded |= t >= len[b];
      }
      if (padded) masks[t] = from_vector(m, Shape{B, 1}).to(dtype);
    }
  }

  Tensor layer_in = input;
  std::vector<Tensor> h_n, c_n;
  for (int64_t l = 0; l < o.num_layers; ++l) {
    std::vector<Tensor> dir_out;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      RNNCellBase& cell = *cells_[k];
      std::vector<Tensor> proj = unbind(cell.project(layer_in), tdim);  // all T steps in one linear call
      LSTMState state{select(h0, 0, k), c0.defined() ? select(c0, 0, k) : Tensor()};
      std::vector<Tensor> out(static_cast<size_t>(T));
      for (int64_t s = 0; s < T; ++s) {
        const int64_t t = d == 0 ? s : T - 1 - s;
        LSTMState next = cell.step_state(proj[t], state);
        if (const Tensor& m = masks[t]; m.defined()) {
          out[t] = next.h * m;
          next.h = where(m, next.h, state.h);
          if (next.c.defined()) next.c = where(m, next.c, state.c);
        } else {
          out[t] = next.h;
        }
        state = std::move(next);
      }
      h_n.push_back(state.h);
      if (has_cell_state_) c_n.push_back(state.c);
      dir_out.push_back(stack(out, tdim));
    }
    Tensor layer_out = D == 1 ? dir_out[0] : cat(dir_out, 2);
    if (l + 1 < o.num_layers && o.dropout > 0 && is_training()) layer_out = dropout(layer_out, o.dropout, true);
    layer_in = layer_out;
  }
  return {layer_in, stack(h_n, 0), has_cell_state_ ? stack(c_n, 0) : Tensor()};
}

namespace {
void check_tanh_only(const char* type, const RNNOptions& o) {
  if (o.nonlinearity != Nonlinearity::Tanh)
    throw std::invalid_argument(fmt::format("{}: nonlinearity applies to RNN only", type));
}
}  // namespace

RNN::RNN(const RNNOptions& o)
    : RNNBase("RNN", o, false, [&o](int64_t in) {
        return std::make_shared<RNNCell>(in, o.hidden_size, o.bias, o.nonlinearity, o.dtype);
      }) {}

RNNOutput RNN::forward(const Tensor& input, const Tensor& h0, const Lengths& lengths) {
  return run(input, h0, Tensor(), lengths);
}

LSTM::LSTM(const RNNOptions& o)
    : RNNBase("LSTM", o, true, [&o](int64_t in) {
        check_tanh_only("LSTM", o);
        return std::make_shared<LSTMCell>(in, o.hidden_size, o.bias, o.dtype);
      }) {}

RNNOutput LSTM::forward(const Tensor& input, const Tensor& h0, const Tensor& c0, const Lengths& lengths) {
  return run(input, h0, c0, lengths);
}

GRU::GRU(const RNNOptions& o)
    : RNNBase("GRU", o, false, [&o](int64_t in) {
        check_tanh_only("GRU", o);
        return std::make_shared<GRUCell>(in, o.hidden_size, o.bias, o.dtype);
      }) {}

RNNOutput GRU::forward(const Tensor& input, const Tensor& h0, const Lengths& lengths) {
  return run(input, h0, Tensor(), lengths);
}

}  // namespace tg::nn
