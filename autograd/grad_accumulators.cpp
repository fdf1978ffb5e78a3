#include "tapegrad/autograd/grad_accumulators.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>

#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

namespace tg::detail {

Tensor ProductAccumulator::flush(Tensor total, bool total_exclusive, const Shape& shape, DType dtype) {
  Tensor target = total.defined() && total_exclusive ? total : total.defined() ? total.clone() : tg::empty(shape, dtype);
  double beta = total.defined() ? 1.0 : 0.0;
  int64_t macs = 0;
  for (auto& [pa, pb] : products_) macs += pa.size(0) * pa.size(1) * pb.size(1);
  if (products_.size() == 1 || macs <= kDirectProductMacs) {  // small: accumulate each, no stacking copies
    for (auto& [pa, pb] : products_) {
      addmm_tn(target, pa, pb, beta);
      beta = 1.0;
    }
  } else if (Tensor a_all, b_all; tiled(a_all, b_all)) {
    addmm_tn(target, a_all, b_all, beta);
  } else {
    std::vector<Tensor> as, bs;
    as.reserve(products_.size());
    bs.reserve(products_.size());
    for (auto& [pa, pb] : products_) {
      as.push_back(pa);
      bs.push_back(pb);
    }
    addmm_tn(target, cat(as, 0), cat(bs, 0), beta);
  }
  products_.clear();
  return target;
}

bool ProductAccumulator::tiled(Tensor& a_all, Tensor& b_all) const {
  const Tensor& a0 = products_[0].first;
  const Storage* storage = a0.impl()->storage.get();
  const int64_t P = a0.size(1), Q = products_[0].second.size(1);
  int64_t lo = INT64_MAX, rows = 0;
  for (auto& [pa, pb] : products_) {
    if (pa.impl()->storage.get() != storage || pa.size(1) != P || pa.dtype() != a0.dtype()) return false;
    if (pa.size(0) > 1 && pa.strides()[0] % P != 0) return false;
    if (P > 1 && pa.strides()[1] != 1) return false;
    lo = std::min(lo, pa.offset());
    rows += pa.size(0);
  }
  // Row i of a block sits at row first + i * step of [lo, ...) in units of P.
  const auto first = [&](const Tensor& pa) { return (pa.offset() - lo) / P; };
  const auto step = [&](const Tensor& pa) { return pa.size(0) > 1 ? pa.strides()[0] / P : int64_t{1}; };
  // Every row of every a starts at lo + r P for a distinct r < rows: then they cover [lo, lo + rows P).
  std::vector<uint8_t> seen(static_cast<size_t>(rows), 0);
  for (auto& [pa, pb] : products_) {
    if ((pa.offset() - lo) % P != 0) return false;
    for (int64_t i = 0, r = first(pa); i < pa.size(0); ++i, r += step(pa)) {
      if (r < 0 || r >= rows || seen[static_cast<size_t>(r)]) return false;
      seen[static_cast<size_t>(r)] = 1;
    }
  }
  a_all = make_view(a0, Shape{rows, P}, Strides{P, 1}, lo);
  b_all = tg::empty(Shape{rows, Q}, products_[0].second.dtype());
  const kern::ElementwiseKernels& ew = *kernels_of(b_all).elementwise;
  for (auto& [pa, pb] : products_) {  // b's rows go where their a's rows are
    const Shape sizes{pa.size(0), Q};
    const Strides strides{step(pa) * Q, 1};
    ew.copy_from[static_cast<int>(pb.dtype())](window_view_of(b_all, sizes, strides, first(pa) * Q), view_of(pb));
  }
  return true;
}

Tensor ProductAccumulator::product(const Tensor& a, const Tensor& b) {
  Tensor g = tg::empty(Shape{a.size(1), b.size(1)}, a.dtype());
  addmm_tn(g, a, b, 0.0);
  return g;
}

namespace {
// Where window w lies in `slot`: its strides (w.dim dropped when squeezed) and its first element,
// counted from the slot's first element.
struct WindowLayout {
  Strides strides;
  int64_t offset;
};
WindowLayout layout_of(const Tensor& slot, const WindowAccumulator::Window& w) {
  WindowLayout l{slot.strides(), w.start * slot.strides()[w.dim]};
  if (w.squeezed) l.strides.erase(w.dim);
  return l;
}
// The window as a kernel view; `l` must outlive it.
kern::View kernel_view(const Tensor& slot, const WindowAccumulator::Window& w, const WindowLayout& l) {
  return window_view_of(slot, w.window_shape, l.strides, l.offset);
}
}  // namespace

void WindowAccumulator::add(Tensor& slot, bool& exclusive, const Window& w, const Tensor& g) {
  if (!slot.defined()) {
    slot = zeros(w.full, g.dtype());
    exclusive = true;
  } else if (!exclusive) {
    slot = slot.clone();
    exclusive = true;
  }
  // The slot is ours and contiguous (zeros() or clone()), so the window is added in place by the
  // kernel directly: no view tensor, no version bump (nothing saved it).
  const WindowLayout l = layout_of(slot, w);
  kernels_of(slot).elementwise->add_scaled(kernel_view(slot, w, l), view_of(g), 1.0);
}

Tensor WindowAccumulator::full_size(const Window& w, const Tensor& g) {
  Tensor full = zeros(w.full, g.dtype());
  const WindowLayout l = layout_of(full, w);
  Tensor window = make_view(full, w.window_shape, l.strides, full.offset() + l.offset);
  add_(window, g);
  return full;
}

Tensor WindowAccumulator::padded(const Window& w, const Tensor& g) {
  Tensor win = w.squeezed ? unsqueeze(g, w.dim) : g;
  const int64_t len = win.size(w.dim);
  std::vector<Tensor> parts;
  Shape pad = win.shape();
  if (w.start > 0) {
    pad[w.dim] = w.start;
    parts.push_back(zeros(pad, g.dtype()));
  }
  parts.push_back(win);
  const int64_t after = w.full[w.dim] - w.start - len;
  if (after > 0) {
    pad[w.dim] = after;
    parts.push_back(zeros(pad, g.dtype()));
  }
  return parts.size() == 1 ? win : cat(parts, w.dim);
}

// ---- WindowSlots ---------------------------------------------------------------------------

bool WindowSlots::Coverage::fresh(int64_t start, int64_t len) const {
  for (int64_t k = start; k < start + len; ++k)
    if (written[static_cast<size_t>(k)]) return false;
  return true;
}

void WindowSlots::Coverage::mark(int64_t start, int64_t len) {
  for (int64_t k = start; k < start + len; ++k) written[static_cast<size_t>(k)] = 1;
}

WindowSlots::Coverage* WindowSlots::find(const void* owner) {
  for (size_t i = 0; i < used_; ++i)
    if (slots_[i].owner == owner) return &slots_[i];
  return nullptr;
}

WindowSlots::Coverage& WindowSlots::start(const void* owner, Tensor& slot, bool& exclusive,
                                          const WindowAccumulator::Window& w, DType dtype) {
  slot = tg::empty(w.full, dtype);
  exclusive = true;
  if (used_ == slots_.size()) slots_.emplace_back();
  Coverage& c = slots_[used_++];
  c.owner = owner;
  c.dim = w.dim;
  c.written.assign(static_cast<size_t>(w.full[w.dim]), 0);
  c.pending.clear();
  c.borrower = "";
  c.lent = false;
  return c;
}

void WindowSlots::settle(const void* owner, Tensor& slot, bool& exclusive) {
  Coverage* c = find(owner);
  if (!c) return;
  if (!c->pending.empty())
    throw std::logic_error(fmt::format("backward of '{}': it borrowed a window of its input's gradient "
                                       "(Grads::window_buffer) and did not hand it to add_window before another "
                                       "gradient reached that input; call add_window with the buffer first",
                                       c->borrower));
  const int64_t n = static_cast<int64_t>(c->written.size());
  const kern::ElementwiseKernels& ew = *kernels_of(slot).elementwise;
  const Strides& st = slot.strides();
  for (int64_t k = 0; k < n;) {
    int64_t end = k;
    while (end < n && !c->written[static_cast<size_t>(end)]) ++end;
    if (end > k) {  // indices [k, end) were never written
      Shape sizes = slot.shape();
      sizes[c->dim] = end - k;
      ew.fill(window_view_of(slot, sizes, st, k * st[c->dim]), 0.0);
    }
    k = end + 1;
  }
  exclusive = !c->lent;
  Coverage& last = slots_[--used_];
  if (c != &last) std::swap(*c, last);  // the last of this pass's slots fills the gap
}

void WindowSlots::add(const void* owner, Tensor& slot, bool& exclusive, const WindowAccumulator::Window& w,
                      const Tensor& g, const char* op) {
  Coverage* c = find(owner);
  if (!slot.defined()) {
    if (w.full.numel() < kMinElements) return WindowAccumulator::add(slot, exclusive, w, g);
    c = &start(owner, slot, exclusive, w, g.dtype());
  }
  const int64_t len = w.squeezed ? 1 : w.window_shape[w.dim];
  // While windows write the slot, only lent windows share its memory (it was allocated here).
  if (c && g.impl()->storage.get() == slot.impl()->storage.get()) {  // a lent window, written in place
    const auto it = std::find(c->pending.begin(), c->pending.end(), w.start);
    if (c->dim != w.dim || it == c->pending.end() || g.offset() != slot.offset() + layout_of(slot, w).offset)
      throw std::logic_error(fmt::format("backward of '{}': a window gradient {} shares memory with the gradient it "
                                         "is added to and is not the window Grads::window_buffer lent for it",
                                         op, g.shape().str()));
    c->pending.erase(it);
    return;
  }
  if (c && c->dim == w.dim && c->fresh(w.start, len)) {
    c->mark(w.start, len);
    const WindowLayout l = layout_of(slot, w);
    kernels_of(slot).elementwise->copy_from[static_cast<int>(g.dtype())](kernel_view(slot, w, l), view_of(g));
    return;
  }
  settle(owner, slot, exclusive);
  WindowAccumulator::add(slot, exclusive, w, g);
}

Tensor WindowSlots::lend(const void* owner, Tensor& slot, bool& exclusive, const WindowAccumulator::Window& w,
                         DType dtype, const char* op) {
  Coverage* c = find(owner);
  if (!slot.defined()) {
    if (w.full.numel() < kMinElements) return Tensor();
    c = &start(owner, slot, exclusive, w, dtype);
  }
  const int64_t len = w.squeezed ? 1 : w.window_shape[w.dim];
  if (!c || c->dim != w.dim || w.window_shape.size() != 2 || !c->fresh(w.start, len)) return Tensor();
  const WindowLayout l = layout_of(slot, w);
  if (w.window_shape[1] > 1 && l.strides[1] != 1) return Tensor();
  Tensor view = alias_of(slot, w.window_shape, l.strides, slot.offset() + l.offset);  // inside the slot: w fits
  c->mark(w.start, len);
  c->pending.push_back(w.start);
  c->borrower = op;
  c->lent = true;
  return view;
}

}  // namespace tg::detail
