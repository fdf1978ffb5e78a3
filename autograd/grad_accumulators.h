#pragma once
// Internal: the two accumulation mechanisms that keep unrolled recurrent graphs cheap in
// backward. Grads::add_product and Grads::add_window (tape.h) hand their gradients to these; the
// walk in backward.cpp only decides which slot they go to.
#include <utility>
#include <vector>

#include "tapegrad/autograd/tensor.h"

namespace tg::detail {

// The weight-gradient products a^T b one leaf receives during a pass (W_hh gets one per time
// step), staged and computed when the pass ends: one GEMM over the stacked factors, or, when
// they are small in total, one small product each (no stacking copies).
class ProductAccumulator {
 public:
  // Below this many multiply-adds in total the products are accumulated one by one; above it,
  // one large product beats T small BLAS calls by more than the stacking copy costs.
  static constexpr int64_t kDirectProductMacs = 65536;

  bool empty() const { return products_.empty(); }
  void clear() { products_.clear(); }  // keeps the capacity: a thread's passes reuse it
  // a is kept as it is when its rows are unit-stride (a window of a larger gradient: see flush).
  void add(const Tensor& a, const Tensor& b) {
    products_.emplace_back(a.dim() == 2 && (a.size(1) <= 1 || a.strides()[1] == 1) ? a : a.contiguous(), b.contiguous());
  }
  // total + sum of the staged a^T b (shape, dtype: the leaf's), into total itself when the caller
  // owns it exclusively; the staged products are dropped.
  Tensor flush(Tensor total, bool total_exclusive, const Shape& shape, DType dtype);
  // a^T b on its own, for a product that is not staged (no pass running, anomaly mode).
  static Tensor product(const Tensor& a, const Tensor& b);

 private:
  // The a's as one [R, P] view when they are disjoint blocks of rows of one buffer that together
  // cover one contiguous range (a recurrent layer's gate gradients, written by the cells straight
  // into the sequence's gradient); b stacked in the matching row order. False otherwise.
  bool tiled(Tensor& a_all, Tensor& b_all) const;
  std::vector<std::pair<Tensor, Tensor>> products_;
};

// A node's gradient that only windows have been written into so far, allocated without zeroing:
// which indices along `dim` a window wrote (the rest is garbage until zero_rest), and whether a
// backward was lent one of its windows as a buffer (Grads::window_buffer; that window is then also
// read elsewhere, a stacked weight-gradient product, so the buffer is no longer ours to add into in
// place). Lives for one backward pass.
struct WindowCoverage {
  const void* owner = nullptr;  // the node
  int64_t dim = 0;
  std::vector<uint8_t> written;  // per index along dim
  std::vector<int64_t> pending;  // starts of lent windows not handed back to add_window yet
  bool lent = false;
  bool fresh(int64_t start, int64_t len) const;
  void mark(int64_t start, int64_t len);
  void zero_rest(const Tensor& slot) const;
};

// The gradient of a slice (narrow, select: one per time step) added into its window of one
// full-size buffer, so T slices cost T window additions instead of T full-size gradients.
struct WindowAccumulator {
  // Where the window of g sits in a gradient of shape `full`: along `dim` from `start`; g has
  // window_shape (that dim dropped when `squeezed`).
  struct Window {
    const Shape& full;
    int64_t dim, start;
    const Shape& window_shape;
    bool squeezed;
  };
  // Adds g into the window of *slot, first making the slot an exclusively owned full-size
  // buffer (zeros, or a copy of a shared one).
  static void add(Tensor& slot, bool& exclusive, const Window& w, const Tensor& g);
  // g copied into its window of a slot whose window is unwritten (WindowCoverage::fresh).
  static void write(const Tensor& slot, const Window& w, const Tensor& g);
  // The window of a contiguous slot as a view (no autograd link).
  static Tensor view(const Tensor& slot, const Window& w);
  // A full-size gradient that is g in the window and zero elsewhere, in plain ops (when no pass
  // owns a slot to add into).
  static Tensor full_size(const Window& w, const Tensor& g);
  // The same in recorded, differentiable ops (create_graph): zeros on both sides of g, cat.
  static Tensor padded(const Window& w, const Tensor& g);
};

}  // namespace tg::detail
