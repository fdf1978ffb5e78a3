#include "tapegrad/nn/rnn.h"

#include <fmt/format.h>

#include <algorithm>
#include <numeric>
#include <stdexcept>

#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"

namespace tg::nn {

Lengths::Lengths(const Tensor& lengths) {
  if (!lengths.defined()) return;
  if (lengths.dtype() != DType::Int64 || lengths.dim() != 1)
    throw std::invalid_argument(fmt::format("lengths must be an int64 tensor [batch], got {} {}",
                                            dtype_name(lengths.dtype()), lengths.shape().str()));
  Tensor c = lengths.contiguous();
  values_.resize(static_cast<size_t>(c.numel()));
  detail::copy_bytes_out(c, values_.data());
  given_ = true;
}

namespace {

// Concatenates pieces along dim 0, skipping the copy when there is only one.
Tensor cat_rows(const std::vector<Tensor>& pieces) { return pieces.size() == 1 ? pieces[0] : cat(pieces, 0); }

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
  NameScope scope(name());
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
  // Undefined initial states stay undefined: each layer starts from zeros of its own (no
  // [layers, B, H] buffer and no select node per layer).
  Tensor h0 = h0_in.defined() ? initial_state("h0", h0_in, B, dtype) : Tensor();
  Tensor c0 = has_cell_state_ && c0_in.defined() ? initial_state("c0", c0_in, B, dtype) : Tensor();

  // Packed like PyTorch's PackedSequence. Rows are ordered by length (longest first, stable), so
  // the sequences still running at step t are the first active[t] rows, and the real tokens are
  // gathered time-major into one [N, I] matrix: step t is the block of rows
  // [offset[t], offset[t] + active[t]). Projections, steps and stacked layers touch real tokens
  // only; a row that ends keeps its state (its h_n); padded outputs are zero.
  std::vector<int64_t> len(static_cast<size_t>(B), T);
  if (lengths.given()) {
    if (static_cast<int64_t>(lengths.values().size()) != B)
      throw std::invalid_argument(
          fmt::format("{}: lengths has {} entries for a batch of {}", type_, lengths.values().size(), B));
    len = lengths.values();
    for (int64_t b = 0; b < B; ++b)
      if (len[b] < 1 || len[b] > T)
        throw std::invalid_argument(
            fmt::format("{}: lengths[{}] = {} is outside [1, {}] (the input's T)", type_, b, len[b], T));
  }
  std::vector<int64_t> order(static_cast<size_t>(B));
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return len[a] > len[b]; });
  const bool sorted = std::is_sorted(order.begin(), order.end());
  std::vector<int64_t> active(static_cast<size_t>(T), 0), offset(static_cast<size_t>(T) + 1, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < len[b]; ++t) ++active[t];
  for (int64_t t = 0; t < T; ++t) offset[t + 1] = offset[t] + active[t];
  // Without padding the rows stay in the caller's layout (time- or batch-major; nothing to
  // gather or scatter back); with padding the real tokens are gathered time-major.
  const bool unpadded = offset[T] == B * T;
  std::vector<int64_t> gather;  // packed row -> row of the flattened input
  if (!unpadded) {
    gather.reserve(static_cast<size_t>(offset[T]));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t i = 0; i < active[t]; ++i) gather.push_back(o.batch_first ? order[i] * T + t : t * B + order[i]);
  }

  // Unpadded, every layer works on the caller's 3-D layout itself ([B, T, F] or [T, B, F]): the
  // projection is one linear call over it and step t reads its window along the time dim, so no
  // reshape nodes are recorded (a tenth of the toy step's nodes). Packed, rows are [N, F].
  Tensor layer_in = input;
  if (!unpadded)
    layer_in = index_select(reshape(input, {B * T, o.input_size}), 0, from_vector(gather, Shape{offset[T]}));
  Tensor perm, unperm;
  if (!sorted) {
    std::vector<int64_t> inverse(static_cast<size_t>(B));
    for (int64_t i = 0; i < B; ++i) inverse[order[i]] = i;
    perm = from_vector(order, Shape{B});
    unperm = from_vector(inverse, Shape{B});
    if (h0.defined()) h0 = index_select(h0, 1, perm);
    if (c0.defined()) c0 = index_select(c0, 1, perm);
  }

  std::vector<Tensor> h_n, c_n;
  for (int64_t l = 0; l < o.num_layers; ++l) {
    const bool need_output = l + 1 < o.num_layers || o.output_sequence;
    std::vector<Tensor> dir_out;
    for (int64_t d = 0; d < D; ++d) {
      const int64_t k = l * D + d;
      RNNCellBase& cell = *cells_[k];
      const Tensor proj = cell.project(layer_in);  // every real token of the layer in one linear call
      auto px = [&](int64_t t) {
        return unpadded ? SeqWindow{proj, tdim, t, 1, true} : SeqWindow{proj, 0, offset[t], active[t], false};
      };
      auto initial = [&](const Tensor& s0) { return s0.defined() ? select(s0, 0, k) : zeros(Shape{B, o.hidden_size}, dtype); };
      const Tensor h0k = initial(h0), c0k = has_cell_state_ ? initial(c0) : Tensor();
      std::vector<Tensor> out(static_cast<size_t>(T));
      LSTMState state;
      if (d == 0) {
        // Forward: rows only ever leave, from the bottom; each leaving block's state is final.
        std::vector<Tensor> done_h, done_c;
        state = {h0k, c0k};
        int64_t rows = B;
        for (int64_t t = 0; t < T; ++t) {
          if (active[t] < rows) {
            done_h.push_back(narrow(state.h, 0, active[t], rows - active[t]));
            state.h = narrow(state.h, 0, 0, active[t]);
            if (state.c.defined()) {
              done_c.push_back(narrow(state.c, 0, active[t], rows - active[t]));
              state.c = narrow(state.c, 0, 0, active[t]);
            }
            rows = active[t];
          }
          state = cell.step_state(px(t), state);
          if (need_output) out[t] = state.h;
        }
        done_h.push_back(state.h);
        if (state.c.defined()) done_c.push_back(state.c);
        std::reverse(done_h.begin(), done_h.end());
        std::reverse(done_c.begin(), done_c.end());
        state = {cat_rows(done_h), done_c.empty() ? Tensor() : cat_rows(done_c)};
      } else {
        // Reverse: each row joins, from its initial state, at its own last token.
        int64_t rows = 0;
        for (int64_t t = T - 1; t >= 0; --t) {
          if (active[t] > rows) {
            Tensor h_new = narrow(h0k, 0, rows, active[t] - rows);
            state.h = rows == 0 ? h_new : cat({state.h, h_new}, 0);
            if (c0k.defined()) {
              Tensor c_new = narrow(c0k, 0, rows, active[t] - rows);
              state.c = rows == 0 ? c_new : cat({state.c, c_new}, 0);
            }
            rows = active[t];
          }
          state = cell.step_state(px(t), state);
          if (need_output) out[t] = state.h;
        }
      }
      h_n.push_back(state.h);
      if (has_cell_state_) c_n.push_back(state.c);
      if (need_output)  // in layer_in's layout: [B, T, H] / [T, B, H] unpadded, packed [N, H] rows
        dir_out.push_back(unpadded ? stack(out, tdim) : cat_rows(out));
    }
    if (!need_output) {
      layer_in = Tensor();
      break;
    }
    Tensor layer_out = D == 1 ? dir_out[0] : cat(dir_out, -1);
    if (l + 1 < o.num_layers && o.dropout > 0 && is_training()) layer_out = dropout(layer_out, o.dropout, true);
    layer_in = layer_out;
  }

  Tensor output;
  if (layer_in.defined()) {
    const int64_t F = layer_in.size(-1);
    if (unpadded) {
      output = layer_in;
    } else {  // back to the caller's layout: every padded position reads an appended zero row
      std::vector<int64_t> scatter(static_cast<size_t>(B * T), offset[T]);
      for (size_t j = 0; j < gather.size(); ++j) scatter[gather[j]] = static_cast<int64_t>(j);
      Tensor with_zero = cat({layer_in, zeros(Shape{1, F}, dtype)}, 0);
      output = reshape(index_select(with_zero, 0, from_vector(scatter, Shape{B * T})),
                       o.batch_first ? Shape{B, T, F} : Shape{T, B, F});
    }
  }
  Tensor hn = stack(h_n, 0), cn = has_cell_state_ ? stack(c_n, 0) : Tensor();
  if (!sorted) {
    hn = index_select(hn, 1, unperm);
    if (cn.defined()) cn = index_select(cn, 1, unperm);
  }
  return {output, hn, cn};
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
