#pragma once
// Every differentiable op. Each is defined next to its backward in one of the ops_*.cpp files,
// grouped by family, and has a float64 gradient check in tests/test_gradcheck.cpp.
// Binary elementwise ops broadcast like NumPy. Dims may be negative (counted from the end).
#include <concepts>
#include <optional>
#include <vector>

#include "autograd/tape.h"
#include "autograd/tensor.h"

namespace tg {

// ---- elementwise (ops_elementwise.cpp) ----
Tensor add(const Tensor& a, const Tensor& b);
Tensor sub(const Tensor& a, const Tensor& b);
Tensor mul(const Tensor& a, const Tensor& b);
Tensor div(const Tensor& a, const Tensor& b);
Tensor neg(const Tensor& x);
Tensor pow(const Tensor& x, double exponent);
Tensor pow(const Tensor& base, const Tensor& exponent);  // base > 0 where exponent needs a gradient
Tensor exp(const Tensor& x);
Tensor log(const Tensor& x);
Tensor sqrt(const Tensor& x);
Tensor abs(const Tensor& x);
Tensor tanh(const Tensor& x);
Tensor sigmoid(const Tensor& x);
Tensor relu(const Tensor& x);
Tensor clamp(const Tensor& x, double lo, double hi);
Tensor where(const Tensor& mask, const Tensor& a, const Tensor& b);  // mask != 0 picks a
Tensor maximum(const Tensor& a, const Tensor& b);  // elementwise, ties send the gradient to a

// Not differentiable: comparisons give 0/1 in the inputs' dtype.
Tensor eq(const Tensor& a, const Tensor& b);
Tensor gt(const Tensor& a, const Tensor& b);
Tensor lt(const Tensor& a, const Tensor& b);
Tensor ge(const Tensor& a, const Tensor& b);
Tensor le(const Tensor& a, const Tensor& b);

// In place, not recorded: for optimizers and gradient accumulation (under NoGradGuard or on
// tensors that do not require grad). `dst` keeps its shape; `src` broadcasts to it.
void add_(Tensor& dst, const Tensor& src, double alpha = 1.0);
void mul_(Tensor& dst, double factor);
void fill_(Tensor& dst, double value);
void copy_(Tensor& dst, const Tensor& src);

Tensor operator+(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& a, const Tensor& b);
Tensor operator*(const Tensor& a, const Tensor& b);
Tensor operator/(const Tensor& a, const Tensor& b);
Tensor operator-(const Tensor& x);
Tensor operator+(const Tensor& a, double b);
Tensor operator-(const Tensor& a, double b);
Tensor operator*(const Tensor& a, double b);
Tensor operator/(const Tensor& a, double b);
Tensor operator+(double a, const Tensor& b);
Tensor operator-(double a, const Tensor& b);
Tensor operator*(double a, const Tensor& b);
Tensor operator/(double a, const Tensor& b);
// Scalars follow PyTorch's promotion: a floating scalar (the double overloads above) keeps a float
// tensor's dtype and makes an integer tensor float32 (ids * 0.5 is float32 [0.5, ...]); an integer
// scalar (these templates) keeps the tensor's dtype (ids + 1 stays int64). Division is true
// division either way (int / int is float32) and an integer zero divisor throws std::domain_error.
template <std::integral I> Tensor operator+(const Tensor& a, I b) { return add(a, scalar(static_cast<double>(b), a.dtype())); }
template <std::integral I> Tensor operator-(const Tensor& a, I b) { return sub(a, scalar(static_cast<double>(b), a.dtype())); }
template <std::integral I> Tensor operator*(const Tensor& a, I b) { return mul(a, scalar(static_cast<double>(b), a.dtype())); }
template <std::integral I> Tensor operator/(const Tensor& a, I b) { return div(a, scalar(static_cast<double>(b), a.dtype())); }
template <std::integral I> Tensor operator+(I a, const Tensor& b) { return add(scalar(static_cast<double>(a), b.dtype()), b); }
template <std::integral I> Tensor operator-(I a, const Tensor& b) { return sub(scalar(static_cast<double>(a), b.dtype()), b); }
template <std::integral I> Tensor operator*(I a, const Tensor& b) { return mul(scalar(static_cast<double>(a), b.dtype()), b); }
template <std::integral I> Tensor operator/(I a, const Tensor& b) { return div(scalar(static_cast<double>(a), b.dtype()), b); }

// ---- reductions (ops_reduce.cpp) ----
Tensor sum(const Tensor& x);
Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim = false);
Tensor mean(const Tensor& x);
Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim = false);
Tensor max(const Tensor& x);                                 // gradient to the first maximum
Tensor max(const Tensor& x, int64_t dim, bool keepdim = false);
Tensor argmax(const Tensor& x, int64_t dim, bool keepdim = false);  // int64, not differentiable
Tensor logsumexp(const Tensor& x, std::vector<int64_t> dims, bool keepdim = false);
Tensor sum_to(const Tensor& x, const Shape& shape);  // reverses broadcasting

// ---- shape (ops_shape.cpp); which of these view and which copy is noted per op ----
Tensor reshape(const Tensor& x, Shape shape);  // view when contiguous, else copies; one dim may be -1
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1);  // view
Tensor permute(const Tensor& x, const Shape& order);        // view
Tensor squeeze(const Tensor& x, int64_t dim);               // view
Tensor unsqueeze(const Tensor& x, int64_t dim);             // view
Tensor expand(const Tensor& x, const Shape& shape);         // view (stride 0), size-1 dims only
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length);  // view
Tensor select(const Tensor& x, int64_t dim, int64_t index);  // view, drops dim
Tensor cat(const std::vector<Tensor>& xs, int64_t dim);      // copies
Tensor stack(const std::vector<Tensor>& xs, int64_t dim);    // copies
std::vector<Tensor> split(const Tensor& x, int64_t size, int64_t dim);  // views of `size` (last may be shorter)
Tensor index_select(const Tensor& x, int64_t dim, const Tensor& index);  // copies; index int64 1-D
// zeros with `size` along dim, then slice i of src added at index[i] (repeats add up): the
// gradient of index_select, whose gradient it is in turn.
Tensor index_add(const Tensor& src, int64_t dim, const Tensor& index, int64_t size);
Tensor contiguous(const Tensor& x);  // copies only when not already contiguous
Tensor to_dtype(const Tensor& x, DType t);

// ---- linear algebra (ops_linalg.cpp) ----
// 2-D @ 2-D, N-D @ 2-D (leading dims flattened), and batched 3-D @ 3-D (batch 1 broadcasts).
// Transposed views go to BLAS as transpose flags: no copies.
Tensor matmul(const Tensor& a, const Tensor& b);
// x @ w^T + b in one recorded op (nn.Linear's and the RNN input projection's hot path).
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias = Tensor());

// ---- neural-network ops (ops_nn.cpp) ----
// weight [V, E], indices int64 any shape -> [..., E]. Rows equal to padding_idx get no gradient;
// -1: none (PyTorch counts a negative padding_idx from the end: its -1 is V - 1 here).
Tensor embedding(const Tensor& weight, const Tensor& indices, int64_t padding_idx = -1);
Tensor softmax(const Tensor& x, int64_t dim);
Tensor log_softmax(const Tensor& x, int64_t dim);
enum class Reduction { Mean, Sum, None };
// Stable: max(x,0) - x*y + log(1 + exp(-|x|)). `target` same shape, values in [0, 1].
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target,
                                        Reduction r = Reduction::Mean);
// logits [N, C], target int64 [N]; entries equal to ignore_index contribute nothing.
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index = -100,
                     Reduction r = Reduction::Mean);
Tensor nll_loss(const Tensor& log_probs, const Tensor& target, int64_t ignore_index = -100,
                Reduction r = Reduction::Mean);
Tensor mse_loss(const Tensor& a, const Tensor& b, Reduction r = Reduction::Mean);
// Zeroes each element with probability p and scales the rest by 1/(1-p); identity when !training.
Tensor dropout(const Tensor& x, double p, bool training = true);
// Fused tanh(a + b) (the Elman cell's non-linearity on two projections); same as the composite.
Tensor add_tanh(const Tensor& a, const Tensor& b);

// ---- fused recurrent cell steps (ops_rnn.cpp): what the nn cells run, one recorded op per step ----
// px is the input projection x W_ih^T + b_ih of the step [B, G*H]; w is W_hh [G*H, H], b is b_hh
// [G*H] or undefined. Every operand may be a row-strided view (a slice of a larger buffer).
// Elman: act(px + h w^T + b), act = tanh, or relu when `relu`. -> [B, H]
Tensor rnn_cell(const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b, bool relu = false);
// LSTM, gates i, f, g, o: c' = sigmoid(f) c + sigmoid(i) tanh(g), h' = sigmoid(o) tanh(c').
// -> [2, B, H]: entry 0 is h', entry 1 is c' (select them: both are contiguous).
Tensor lstm_cell(const Tensor& px, const Tensor& h, const Tensor& c, const Tensor& w, const Tensor& b);
// GRU, gates r, z, n (PyTorch's): q = h w^T + b; r, z = sigmoid(px + q); n = tanh(px_n + r q_n);
// h' = (1 - z) n + z h. -> [B, H]
Tensor gru_cell(const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b);
// One step's projected input as a window of the whole sequence's projection `seq`: select(seq, dim,
// start) when `squeezed`, else narrow(seq, dim, start, length). Given to a cell below in place of
// that view, it records no view op per time step: the cell reads the window where it lies, and its
// gradient goes straight into that window of seq's gradient (what nn::RNN / LSTM / GRU run).
struct SeqWindow {
  Tensor seq;
  int64_t dim = 0, start = 0, length = 1;
  bool squeezed = false;
};
Tensor rnn_cell(const SeqWindow& px, const Tensor& h, const Tensor& w, const Tensor& b, bool relu = false);
Tensor lstm_cell(const SeqWindow& px, const Tensor& h, const Tensor& c, const Tensor& w, const Tensor& b);
Tensor gru_cell(const SeqWindow& px, const Tensor& h, const Tensor& w, const Tensor& b);

}  // namespace tg
