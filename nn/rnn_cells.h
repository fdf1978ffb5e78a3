#pragma once
// One time step of the Elman RNN, LSTM and GRU, with PyTorch's parameter names, layouts and gate
// order, so checkpoints map one to one. Every cell splits its step in two:
//   project(x)   = x W_ih^T + b_ih             (no recurrence: the sequence modules do it for all
//                                               time steps in one linear call)
//   step(px, h)  = the rest, given that projection
// and forward(x, h) = step(project(x), h).
#include <cstdint>

#include "autograd/ops.h"
#include "nn/module.h"

namespace tg::nn {

enum class Nonlinearity { Tanh, ReLU };

// h and c of an LSTM; the other cells use h only.
struct LSTMState {
  Tensor h, c;
};

class RNNCellBase : public Module {
 public:
  const int64_t input_size, hidden_size, gates;  // gates: 1 (RNN), 4 (LSTM), 3 (GRU)
  const bool has_bias;
  Tensor& weight_ih;  // [gates*H, I]
  Tensor& weight_hh;  // [gates*H, H]
  Tensor& bias_ih;    // [gates*H], undefined without bias
  Tensor& bias_hh;    // [gates*H], undefined without bias

  // x [..., I] -> [..., gates*H]
  Tensor project(const Tensor& x) const;
  // One step of the sequence modules, its projected input [B, gates*H] a window of the whole
  // sequence's projection (no view op recorded per step); c is used by LSTM only.
  virtual LSTMState step_state(const SeqWindow& px, const LSTMState& state) = 0;

 protected:
  // All parameters U(±1/sqrt(hidden_size)), drawn in the order above (PyTorch's).
  RNNCellBase(const char* type, int64_t input_size, int64_t hidden_size, int64_t gates, bool bias, DType dtype);
  // Checks px [B, gates*H] and h [B, H] (an undefined h becomes zeros); returns h.
  Tensor check_step(const Tensor& px, const Tensor& h, const char* what = "h") const;
  Tensor check_step(const Shape& px, DType px_dtype, const Tensor& h, const char* what = "h") const;
  Tensor recurrent(const Tensor& h) const;  // h W_hh^T + b_hh
  const char* type_;
};

// h' = act(W_ih x + b_ih + W_hh h + b_hh), act = tanh or relu.
class RNNCell : public RNNCellBase {
 public:
  RNNCell(int64_t input_size, int64_t hidden_size, bool bias = true, Nonlinearity nonlinearity = Nonlinearity::Tanh,
          DType dtype = DType::Float32);
  Tensor forward(const Tensor& x, const Tensor& h = Tensor());  // x [B, I], h [B, H] (default zeros)
  Tensor operator()(const Tensor& x, const Tensor& h = Tensor()) { return forward(x, h); }
  Tensor step(const Tensor& px, const Tensor& h);
  Tensor step(const SeqWindow& px, const Tensor& h);
  LSTMState step_state(const SeqWindow& px, const LSTMState& s) override { return {step(px, s.h), Tensor()}; }

  const Nonlinearity nonlinearity;
};

// Gates i, f, g, o: c' = f*c + i*g, h' = o*tanh(c').
// step() is one fused op returning h' and c'; inside it c' also feeds h', so a hook on the
// returned c' sees only the gradient that reaches it through later steps, not through this h'
// (examples/gradient_flow.cpp writes the step out with composite ops to see the whole dL/dc_t).
class LSTMCell : public RNNCellBase {
 public:
  LSTMCell(int64_t input_size, int64_t hidden_size, bool bias = true, DType dtype = DType::Float32);
  LSTMState forward(const Tensor& x, const LSTMState& state = {});  // undefined h or c are zeros
  LSTMState operator()(const Tensor& x, const LSTMState& state = {}) { return forward(x, state); }
  LSTMState step(const Tensor& px, const LSTMState& state);
  LSTMState step(const SeqWindow& px, const LSTMState& state);
  LSTMState step_state(const SeqWindow& px, const LSTMState& s) override { return step(px, s); }
};

// Gates r, z, n: n = tanh(W_in x + b_in + r*(W_hn h + b_hn)), h' = (1-z)*n + z*h.
class GRUCell : public RNNCellBase {
 public:
  GRUCell(int64_t input_size, int64_t hidden_size, bool bias = true, DType dtype = DType::Float32);
  Tensor forward(const Tensor& x, const Tensor& h = Tensor());
  Tensor operator()(const Tensor& x, const Tensor& h = Tensor()) { return forward(x, h); }
  Tensor step(const Tensor& px, const Tensor& h);
  Tensor step(const SeqWindow& px, const Tensor& h);
  LSTMState step_state(const SeqWindow& px, const LSTMState& s) override { return {step(px, s.h), Tensor()}; }
};

}  // namespace tg::nn
