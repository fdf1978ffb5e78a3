#pragma once
// Internal: row-sparse gradients. An embedding lookup touches a few rows of its table, yet its
// gradient is a full [V, E] tensor, and zeroing it, its norm and the optimizer's read of it cost
// a pass over the whole table every step. The embedding backward therefore marks the gradient it
// makes with the rows it touched (detail::ZeroRows, tensor.h); the gradient stays a plain dense
// tensor with exactly the dense values, so whoever reads it sees nothing different. Only the code
// here and the consumers that ask zero_rows() (clip_grad_norm_, Adam, SGD) use the mark, each
// computing the same bits as its dense path while reading only the marked rows.
//
// A mark is dropped (the tensor is then simply dense) when anything else adds into the gradient,
// when it passes through a node, and when user code can get hold of it, so a mark is never stale.
#include <cstdint>

#include "tapegrad/autograd/tensor.h"

namespace tg::detail {

// Whether embedding backwards mark their gradients (default on). Off, every path is the dense one:
// for tests that compare the two bit for bit.
void set_row_sparse_grads(bool on);
bool row_sparse_grads();

// The mark of g when it can be trusted, else null.
const ZeroRows* zero_rows(const Tensor& g);
// Drops g's mark, if any: g is about to reach code that may write it without bumping its version.
inline void forget_zero_rows(const TensorImpl* g) {
  if (g && g->meta && g->meta->zero_rows) [[unlikely]]
    g->meta->zero_rows->valid.store(false, std::memory_order_relaxed);
}
inline void forget_zero_rows(const Tensor& g) { forget_zero_rows(g.impl()); }

// param's gradient without dropping its mark (Tensor::grad() drops it): for clipping and the
// optimizers, which honour the mark.
inline Tensor param_grad(const Tensor& param) { return Tensor(param.impl()->grad); }

// The embedding weight's gradient: zeros [V, E] plus each row of g (contiguous [n, E]) added at
// row ix[i] (skipping padding_idx), in index order. Marked when few enough rows are touched, and
// then built in a buffer recycled from an earlier marked gradient, whose stale rows alone are zeroed.
Tensor embedding_grad(const Tensor& g, const int64_t* ix, int64_t n, int64_t V, int64_t E, int64_t padding_idx);

// Tensor::zero_grad: a marked gradient nobody else holds is kept for the next embedding_grad of
// its shape (per thread, a few), instead of being freed; `grad` is left empty either way.
void recycle_grad(Ref<TensorImpl>& grad);

// slot += g in place (slot exclusively owned, contiguous, g of its shape) when both are marked:
// only the union of their rows is added, and slot is marked with it. False when not both are
// marked; the caller then adds densely (and the version bump drops slot's mark).
bool add_marked_(Tensor& slot, const Tensor& g);

// clip_grad_norm_'s pieces: the norm_type-norm accumulation of g into acc, and g *= factor, each
// over the marked rows only when g is marked (same bits as the dense kernels).
double norm_accumulate(const Tensor& g, double norm_type, double acc);
void scale_grad_(Tensor& g, double factor);

}  // namespace tg::detail
