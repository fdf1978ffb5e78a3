#include "tapegrad/autograd/row_sparse.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <iterator>
#include <utility>
#include <vector>

#include "tapegrad/autograd/capture.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

namespace tg::detail {
namespace {

std::atomic<bool> g_enabled{true};

// Marked gradients dropped by zero_grad, waiting for the next embedding backward of their shape.
// Per thread (no lock), and a few: one per embedding table of the model being trained.
constexpr size_t kMaxSpares = 4;
thread_local std::vector<Tensor> t_spares;

// Rows of L elements as runs [begin, end) of consecutive ascending rows.
template <class F> void for_each_run(const std::vector<int64_t>& rows, F&& f) {
  for (size_t i = 0; i < rows.size();) {
    size_t j = i + 1;
    while (j < rows.size() && rows[j] == rows[j - 1] + 1) ++j;
    f(rows[i], rows[j - 1] + 1);
    i = j;
  }
}

// The distinct rows of ix[0, n) other than `skip`, ascending, into `rows`.
void touched_rows(const int64_t* ix, int64_t n, int64_t V, int64_t skip, std::vector<int64_t>& rows) {
  rows.clear();
  if (V <= 16 * n) {  // a byte per row, scanned in order: cheaper than sorting n indices
    thread_local std::vector<unsigned char> seen;
    seen.assign(static_cast<size_t>(V), 0);
    for (int64_t i = 0; i < n; ++i) seen[static_cast<size_t>(ix[i])] = 1;
    for (int64_t r = 0; r < V; ++r)
      if (seen[static_cast<size_t>(r)] && r != skip) rows.push_back(r);
    return;
  }
  rows.assign(ix, ix + n);
  std::sort(rows.begin(), rows.end());
  rows.erase(std::unique(rows.begin(), rows.end()), rows.end());
  if (auto it = std::lower_bound(rows.begin(), rows.end(), skip); it != rows.end() && *it == skip) rows.erase(it);
}

int64_t row_len(const Tensor& g) { return g.size(0) ? g.numel() / g.size(0) : 0; }

// A contiguous [b, e) run of rows of g as a 1-D view (sizes, strides: the caller's, kept alive).
kern::View rows_view(const Tensor& g, int64_t b, int64_t e, int64_t* size, const int64_t* stride) {
  const int64_t L = row_len(g);
  *size = (e - b) * L;
  return {static_cast<char*>(mem(g)) + b * L * static_cast<int64_t>(dtype_size(g.dtype())), size, stride, 1};
}

void mark(Tensor& g, std::vector<int64_t>&& rows) {
  AutogradMeta& meta = g.impl()->autograd_meta();
  if (!meta.zero_rows) meta.zero_rows = std::make_unique<ZeroRows>();
  ZeroRows& z = *meta.zero_rows;
  z.rows = std::move(rows);
  z.storage = g.impl()->storage.get();
  z.version = z.storage->version();
  z.valid.store(true, std::memory_order_relaxed);
}

// A recycled [V, E] buffer of dtype t with its stale rows zeroed, or an undefined tensor.
Tensor take_spare(const Shape& s, DType t) {
  for (size_t i = 0; i < t_spares.size(); ++i) {
    if (!(t_spares[i].shape() == s) || t_spares[i].dtype() != t) continue;
    Tensor x = std::move(t_spares[i]);
    t_spares.erase(t_spares.begin() + static_cast<std::ptrdiff_t>(i));
    ZeroRows& z = *x.impl()->meta->zero_rows;
    const auto& k = kernels_of(x);
    const size_t row_bytes = static_cast<size_t>(row_len(x)) * dtype_size(t);
    if (z.rows.size() * 2 > static_cast<size_t>(s[0])) {
      k.elementwise->zero_bytes(mem(x), nbytes_of(x));
    } else {
      char* base = static_cast<char*>(mem(x));
      for_each_run(z.rows, [&](int64_t b, int64_t e) {
        k.elementwise->zero_bytes(base + static_cast<size_t>(b) * row_bytes, static_cast<size_t>(e - b) * row_bytes);
      });
    }
    z.valid.store(false, std::memory_order_relaxed);
    return x;
  }
  return Tensor();
}

}  // namespace

void set_row_sparse_grads(bool on) { g_enabled.store(on, std::memory_order_relaxed); }
bool row_sparse_grads() { return g_enabled.load(std::memory_order_relaxed); }

const ZeroRows* zero_rows(const Tensor& g) {
  const TensorImpl* t = g.impl();
  if (!t || !t->meta || !t->meta->zero_rows) return nullptr;
  const ZeroRows& z = *t->meta->zero_rows;
  if (!z.valid.load(std::memory_order_relaxed) || z.storage != t->storage.get() ||
      z.version != t->storage->version() || t->shape.size() == 0 || t->offset != 0 || !g.is_contiguous())
    return nullptr;
  return &z;
}

Tensor embedding_grad(const Tensor& g, const int64_t* ix, int64_t n, int64_t V, int64_t E, int64_t padding_idx) {
  const kern::KernelTable& k = float_kernels_of("embedding_backward", g);
  const Tensor gc = g.contiguous();
  std::vector<int64_t> rows;
  Tensor gw;
  // Marked only while few rows are touched: past half the table, whole-table passes are as cheap.
  // Never in a step being captured: the rows are found on the host, once (capture.h).
  bool marked = false;
  if (row_sparse_grads() && V * E > 0 && !capturing()) {
    touched_rows(ix, n, V, padding_idx, rows);
    if (rows.size() * 2 <= static_cast<size_t>(V)) {
      marked = true;
      gw = take_spare(Shape{V, E}, g.dtype());
    }
  }
  if (!gw.defined()) gw = zeros(Shape{V, E}, g.dtype());
  k.index->scatter_add(mem(gc), mem(gw), 1, n, V, E, ix, padding_idx);
  if (marked) mark(gw, std::move(rows));
  return gw;
}

void recycle_grad(Ref<TensorImpl>& grad) {
  if (!grad || grad->use_count() != 1 || grad->storage->use_count() != 1) return;
  Tensor g(std::move(grad));
  if (!zero_rows(g)) return;  // its stale rows are unknown: freed as usual
  if (t_spares.size() == kMaxSpares) t_spares.erase(t_spares.begin());
  t_spares.push_back(std::move(g));
}

bool add_marked_(Tensor& slot, const Tensor& g) {
  const ZeroRows* zs = zero_rows(slot);
  const ZeroRows* zg = zs ? zero_rows(g) : nullptr;
  if (!zg || !(slot.shape() == g.shape()) || slot.dtype() != g.dtype()) return false;
  std::vector<int64_t> both;
  both.reserve(zs->rows.size() + zg->rows.size());
  std::set_union(zs->rows.begin(), zs->rows.end(), zg->rows.begin(), zg->rows.end(), std::back_inserter(both));
  // Outside the union both are +0 and +0 + +0 is +0: the dense add_ leaves those rows as they are.
  // Inside it, g's unlisted rows are its real +0s, added as add_ adds them.
  const auto& k = kernels_of(slot);
  const int64_t stride = 1;
  for_each_run(both, [&](int64_t b, int64_t e) {
    int64_t ns = 0, ng = 0;
    const kern::View dst = rows_view(slot, b, e, &ns, &stride), src = rows_view(g, b, e, &ng, &stride);
    k.elementwise->add_scaled(dst, src, 1.0);
  });
  slot.impl()->storage->bump_version();  // a write like any add_: tensors saved from it see it
  mark(slot, std::move(both));
  return true;
}

double norm_accumulate(const Tensor& g, double norm_type, double acc) {
  const kern::KernelTable& k = float_kernels_of("clip_grad_norm_", g);
  if (const ZeroRows* z = norm_type == 2.0 ? zero_rows(g) : nullptr)
    return k.reduce->norm2_rows(mem(g), g.numel(), row_len(g), z->rows.data(), static_cast<int64_t>(z->rows.size()),
                                acc);
  return k.reduce->norm_accumulate(mem(g), g.numel(), norm_type, acc);
}

void scale_grad_(Tensor& g, double factor) {
  const ZeroRows* z = zero_rows(g);
  // With a finite factor >= 0 (clipping's) the unlisted +0 rows stay +0, as mul_ leaves them.
  if (!z || !(factor >= 0 && std::isfinite(factor))) return mul_(g, factor);
  const auto& k = kernels_of(g);
  const int64_t stride = 1;
  for_each_run(z->rows, [&](int64_t b, int64_t e) {
    int64_t size = 0;
    k.elementwise->scale(rows_view(g, b, e, &size, &stride), factor);
  });
  g.impl()->storage->bump_version();
  ZeroRows& w = *g.impl()->meta->zero_rows;
  w.version = w.storage->version();
}

}  // namespace tg::detail
