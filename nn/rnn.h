#pragma once
// Multi-layer, optionally bidirectional RNN / LSTM / GRU over whole sequences. Each is its cell
// applied step by step and recorded on the tape like any other ops (no hand-written BPTT); per
// layer and direction the input projection of all time steps is one linear call.
//
// Variable-length batches are packed, as PyTorch's PackedSequence: with `lengths`, the rows are
// sorted by length (stable, longest first) so the sequences still running at step t are a prefix
// of the batch, every step computes only those rows, and results are put back in the caller's
// order. h_n holds each sequence's state after its last real token; outputs at padded steps are
// zero. The reverse direction starts each sequence from its initial state at its own last token.
// The cost of a batch follows its real tokens, not B x T.
#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/nn/module.h"
#include "tapegrad/nn/rnn_cells.h"

namespace tg::nn {

struct RNNOptions {
  int64_t input_size = 0, hidden_size = 0, num_layers = 1;
  bool bias = true, batch_first = false, bidirectional = false;
  double dropout = 0;  // between layers, while training; never after the last layer
  // false: forward() leaves RNNOutput::output undefined and returns only the final states, which
  // saves copying every step's state when only h_n is read (a classifier on the last state).
  bool output_sequence = true;
  Nonlinearity nonlinearity = Nonlinearity::Tanh;  // RNN only
  DType dtype = DType::Float32;
};

struct RNNOutput {
  Tensor output;  // [T, B, D*H], or [B, T, D*H] when batch_first; zeros at padded steps
                  // (undefined with output_sequence = false)
  Tensor h_n;     // [L*D, B, H], entry layer*D + direction (reverse = 1)
  Tensor c_n;     // same, LSTM only
};

// Real length of each sequence in the batch, from an int64 tensor [B] or a list; none = all T.
class Lengths {
 public:
  Lengths() = default;
  Lengths(const Tensor& lengths);  // implicit so forward(x, h0, lengths_tensor) reads naturally
  Lengths(std::vector<int64_t> lengths) : values_(std::move(lengths)), given_(true) {}
  Lengths(std::initializer_list<int64_t> lengths) : values_(lengths), given_(true) {}
  bool given() const { return given_; }
  const std::vector<int64_t>& values() const { return values_; }

 private:
  std::vector<int64_t> values_;
  bool given_ = false;
};

class RNNBase : public Module {
 public:
  const RNNOptions options;
  int64_t num_directions() const { return options.bidirectional ? 2 : 1; }
  // Registered as "cell{layer}" and "cell{layer}_reverse".
  RNNCellBase& cell(int64_t layer, bool reverse = false) const;
  // The same tensors under PyTorch's flat names (weight_ih_l0, bias_hh_l1_reverse, ...), for
  // moving checkpoints between the two.
  std::vector<std::pair<std::string, Tensor>> flat_named_parameters() const;

 protected:
  using CellFactory = std::function<std::shared_ptr<RNNCellBase>(int64_t input_size)>;
  RNNBase(const char* type, const RNNOptions& options, bool has_cell_state, const CellFactory& make_cell);
  RNNOutput run(const Tensor& input, const Tensor& h0, const Tensor& c0, const Lengths& lengths);

 private:
  Tensor initial_state(const char* what, const Tensor& s, int64_t batch, DType dtype) const;
  const char* type_;
  bool has_cell_state_;
  std::vector<std::shared_ptr<RNNCellBase>> cells_;  // index layer * D + direction
};

// Elman RNN (tanh or relu).
class RNN : public RNNBase {
 public:
  explicit RNN(const RNNOptions& options);
  RNNOutput forward(const Tensor& input, const Tensor& h0 = Tensor(), const Lengths& lengths = {});
  RNNOutput operator()(const Tensor& input, const Tensor& h0 = Tensor(), const Lengths& lengths = {}) {
    return forward(input, h0, lengths);
  }
};

class LSTM : public RNNBase {
 public:
  explicit LSTM(const RNNOptions& options);
  RNNOutput forward(const Tensor& input, const Tensor& h0 = Tensor(), const Tensor& c0 = Tensor(),
                    const Lengths& lengths = {});
  RNNOutput operator()(const Tensor& input, const Tensor& h0 = Tensor(), const Tensor& c0 = Tensor(),
                       const Lengths& lengths = {}) {
    return forward(input, h0, c0, lengths);
  }
};

class GRU : public RNNBase {
 public:
  explicit GRU(const RNNOptions& options);
  RNNOutput forward(const Tensor& input, const Tensor& h0 = Tensor(), const Lengths& lengths = {});
  RNNOutput operator()(const Tensor& input, const Tensor& h0 = Tensor(), const Lengths& lengths = {}) {
    return forward(input, h0, lengths);
  }
};

}  // namespace tg::nn
