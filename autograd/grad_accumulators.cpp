#include "autograd/grad_accumulators.h"

#include "autograd/elementwise.h"
#include "autograd/kernel_bridge.h"
#include "autograd/ops.h"

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

Tensor ProductAccumulator::product(const Tensor& a, const Tensor& b) {
  Tensor g = tg::empty(Shape{a.size(1), b.size(1)}, a.dtype());
  addmm_tn(g, a, b, 0.0);
  return g;
}

namespace {
// The window of `full` (contiguous, ours) as a view.
Tensor window_of(const Tensor& full, const WindowAccumulator::Window& w) {
  Strides st = full.strides();
  const int64_t offset = full.offset() + w.start * st[w.dim];
  if (w.squeezed) st.erase(w.dim);
  return make_view(full, w.window_shape, st, offset);
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
  Strides st = slot.strides();
  const int64_t offset = w.start * st[w.dim];
  if (w.squeezed) st.erase(w.dim);
  kernels_of(slot).elementwise->add_scaled(window_view_of(slot, w.window_shape, st, offset), view_of(g), 1.0);
}

Tensor WindowAccumulator::full_size(const Window& w, const Tensor& g) {
  Tensor full = zeros(w.full, g.dtype());
  Tensor window = window_of(full, w);
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

}  // namespace tg::detail
