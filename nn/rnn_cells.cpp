#include "nn/rnn_cells.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "autograd/ops.h"
#include "autograd/tape.h"

namespace tg::nn {

namespace {
Tensor cell_param(const char* type, const Shape& shape, int64_t hidden, bool on, DType dtype) {
  if (!on) return Tensor();
  for (int64_t d : shape)
    if (d <= 0) throw std::invalid_argument(fmt::format("{}: input_size and hidden_size must be positive", type));
  double bound = 1.0 / std::sqrt(static_cast<double>(hidden));
  return uniform(shape, -bound, bound, dtype);
}
}  // namespace

RNNCellBase::RNNCellBase(const char* type, int64_t in, int64_t hidden, int64_t g, bool bias, DType dtype)
    : input_size(in),
      hidden_size(hidden),
      gates(g),
      has_bias(bias),
      weight_ih(register_parameter("weight_ih", cell_param(type, {g * hidden, in}, hidden, true, dtype))),
      weight_hh(register_parameter("weight_hh", cell_param(type, {g * hidden, hidden}, hidden, true, dtype))),
      bias_ih(register_parameter("bias_ih", cell_param(type, {g * hidden}, hidden, bias, dtype))),
      bias_hh(register_parameter("bias_hh", cell_param(type, {g * hidden}, hidden, bias, dtype))),
      type_(type) {}

Tensor RNNCellBase::project(const Tensor& x) const {
  NameScope scope(name());
  if (x.dim() < 1 || x.size(-1) != input_size)
    throw std::invalid_argument(fmt::format("{}: input must be [..., {}] (input_size), got {}", type_, input_size,
                                            x.shape().str()));
  if (x.dtype() != weight_ih.dtype())
    throw std::invalid_argument(fmt::format("{}: input is {} but the parameters are {}; convert one of them", type_,
                                            dtype_name(x.dtype()), dtype_name(weight_ih.dtype())));
  return linear(x, weight_ih, bias_ih);
}

Tensor RNNCellBase::recurrent(const Tensor& h) const { return linear(h, weight_hh, bias_hh); }

Tensor RNNCellBase::check_step(const Tensor& px, const Tensor& h, const char* what) const {
  return check_step(px.shape(), px.dtype(), h, what);
}

Tensor RNNCellBase::check_step(const Shape& px, DType px_dtype, const Tensor& h, const char* what) const {
  const int64_t G = gates * hidden_size;
  if (px.size() != 2 || px[1] != G)
    throw std::invalid_argument(fmt::format("{}: projected input must be [B, {}], got {}", type_, G, px.str()));
  if (!h.defined()) return zeros(Shape{px[0], hidden_size}, px_dtype);
  if (!(h.shape() == Shape{px[0], hidden_size}))
    throw std::invalid_argument(fmt::format("{}: {} must be [{}, {}] (batch, hidden_size), got {}", type_, what,
                                            px[0], hidden_size, h.shape().str()));
  if (h.dtype() != px_dtype)
    throw std::invalid_argument(fmt::format("{}: {} is {} but the input is {}", type_, what, dtype_name(h.dtype()),
                                            dtype_name(px_dtype)));
  return h;
}

namespace {
// The shape of the window's view (the op itself reports a window that does not fit).
Shape window_shape(const SeqWindow& w) {
  Shape s = w.seq.shape();
  const int64_t d = w.dim < 0 ? w.dim + s.size() : w.dim;
  if (d < 0 || d >= s.size()) return s;
  if (w.squeezed) s.erase(d);
  else s[d] = w.length;
  return s;
}

void check_batched(const char* type, const Tensor& x) {
  if (x.dim() != 2)
    throw std::invalid_argument(fmt::format("{}: input must be [batch, input_size], got {}", type, x.shape().str()));
}
}  // namespace

RNNCell::RNNCell(int64_t in, int64_t hidden, bool bias, Nonlinearity nl, DType dtype)
    : RNNCellBase("RNNCell", in, hidden, 1, bias, dtype), nonlinearity(nl) {}

Tensor RNNCell::forward(const Tensor& x, const Tensor& h) {
  check_batched(type_, x);
  return step(project(x), h);
}

Tensor RNNCell::step(const Tensor& px, const Tensor& h_in) {
  NameScope scope(name());
  Tensor h = check_step(px, h_in);
  return rnn_cell(px, h, weight_hh, bias_hh, nonlinearity == Nonlinearity::ReLU);  // one fused op
}

Tensor RNNCell::step(const SeqWindow& px, const Tensor& h_in) {
  NameScope scope(name());
  Tensor h = check_step(window_shape(px), px.seq.dtype(), h_in);
  return rnn_cell(px, h, weight_hh, bias_hh, nonlinearity == Nonlinearity::ReLU);
}

LSTMCell::LSTMCell(int64_t in, int64_t hidden, bool bias, DType dtype)
    : RNNCellBase("LSTMCell", in, hidden, 4, bias, dtype) {}

LSTMState LSTMCell::forward(const Tensor& x, const LSTMState& state) {
  check_batched(type_, x);
  return step(project(x), state);
}

LSTMState LSTMCell::step(const Tensor& px, const LSTMState& state) {
  NameScope scope(name());
  Tensor h = check_step(px, state.h, "h");
  Tensor c = check_step(px, state.c, "c");
  Tensor hc = lstm_cell(px, h, c, weight_hh, bias_hh);  // one fused op: [2, B, H] = h', c'
  return {select(hc, 0, 0), select(hc, 0, 1)};
}

LSTMState LSTMCell::step(const SeqWindow& px, const LSTMState& state) {
  NameScope scope(name());
  const Shape shape = window_shape(px);
  Tensor h = check_step(shape, px.seq.dtype(), state.h, "h");
  Tensor c = check_step(shape, px.seq.dtype(), state.c, "c");
  Tensor hc = lstm_cell(px, h, c, weight_hh, bias_hh);
  return {select(hc, 0, 0), select(hc, 0, 1)};
}

GRUCell::GRUCell(int64_t in, int64_t hidden, bool bias, DType dtype)
    : RNNCellBase("GRUCell", in, hidden, 3, bias, dtype) {}

Tensor GRUCell::forward(const Tensor& x, const Tensor& h) {
  check_batched(type_, x);
  return step(project(x), h);
}

Tensor GRUCell::step(const Tensor& px, const Tensor& h_in) {
  NameScope scope(name());
  Tensor h = check_step(px, h_in);
  return gru_cell(px, h, weight_hh, bias_hh);  // one fused op
}

Tensor GRUCell::step(const SeqWindow& px, const Tensor& h_in) {
  NameScope scope(name());
  Tensor h = check_step(window_shape(px), px.seq.dtype(), h_in);
  return gru_cell(px, h, weight_hh, bias_hh);
}

}  // namespace tg::nn
