#pragma once
// Internal: the two accumulation mechanisms that keep unrolled recurrent graphs cheap in
// backward. Grads::add_product and Grads::add_window (tape.h) hand their gradients to these; the
// walk in backward.cpp only decides which slot they go to.
#include <cstdint>
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
  // A full-size gradient that is g in the window and zero elsewhere, in plain ops (when no pass
  // owns a slot to add into).
  static Tensor full_size(const Window& w, const Tensor& g);
  // The same in recorded, differentiable ops (create_graph): zeros on both sides of g, cat.
  static Tensor padded(const Window& w, const Tensor& g);
};

// The gradients of interior nodes (a recurrent layer's input projection) that only windows have
// been written into so far, during one backward pass. Such a gradient is allocated without
// zeroing: each slot knows which indices along its window dim a window wrote, a window on
// unwritten indices is copied in instead of added, and what no window wrote is zeroed once, when
// the gradient is read or a whole gradient joins it (settle). A backward may also borrow an
// unwritten window as the buffer it writes that window's gradient into (lend); it must hand that
// very window to add before anything else reaches the same gradient. A lent window is also read
// elsewhere (the weight-gradient product stages it), so once one is lent the buffer is no longer
// the node's to add into in place.
class WindowSlots {
 public:
  // Below this many elements a gradient is zeroed and added into as before: the bookkeeping costs
  // more than a pass over 16 KB (the toy config's 64-element projection).
  static constexpr int64_t kMinElements = 4096;
  // Zeroes what no window wrote in `owner`'s slot, if windows wrote it; a no-op otherwise.
  void settle(const void* owner, Tensor& slot, bool& exclusive);
  // g into its window of the owner's slot (slot and exclusive: the owner's gradient and flag).
  void add(const void* owner, Tensor& slot, bool& exclusive, const WindowAccumulator::Window& w, const Tensor& g,
           const char* op);
  // The window itself, unit-stride rows of a 2-D window, or an undefined tensor when it is not
  // free to lend (written already, another dim, the slot made otherwise, strided columns).
  // `op`: the borrowing backward's op, for the error when it breaks the contract.
  Tensor lend(const void* owner, Tensor& slot, bool& exclusive, const WindowAccumulator::Window& w, DType dtype,
              const char* op);
  void clear() { used_ = 0; }
  bool empty() const { return used_ == 0; }  // no window-written gradient in this pass (the usual case)

 private:
  struct Coverage {
    const void* owner = nullptr;
    int64_t dim = 0;
    std::vector<uint8_t> written;  // per index along dim
    std::vector<int64_t> pending;  // starts of lent windows not handed to add yet
    const char* borrower = "";     // the op that borrowed the last one
    bool lent = false;
    bool fresh(int64_t start, int64_t len) const;
    void mark(int64_t start, int64_t len);
  };
  Coverage* find(const void* owner);
  Coverage& start(const void* owner, Tensor& slot, bool& exclusive, const WindowAccumulator::Window& w, DType dtype);
  // The first used_ are this pass's; the rest keep their vectors' memory for the next passes
  // (the scratch that holds this is reused by a thread's passes).
  std::vector<Coverage> slots_;
  size_t used_ = 0;
};

}  // namespace tg::detail
