// Fused recurrent cell steps: the recurrent product, both biases and every gate non-linearity of
// one time step are one recorded op (one tape node instead of a dozen). The kernels
// (kernels/cpu_rnn.cpp) write the pre-activations once into one buffer that the GEMM accumulates
// onto; the backward is written out by hand, its pointwise part a kernel too. Each has a float64
// gradient check.
#include "tapegrad/autograd/capture.h"
#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

namespace tg {
using namespace detail;

namespace {

// Checks that t is [rows, cols] of `dtype`; returns whether its rows are unit-stride (and so
// readable by the kernels as they are).
bool check_rows(const char* op, const char* what, const Tensor& t, int64_t rows, int64_t cols, DType dtype) {
  if (t.dim() != 2 || t.size(0) != rows || t.size(1) != cols || t.dtype() != dtype)
    throw std::invalid_argument(fmt::format("{}: {} must be [{}, {}] {}, got {} {}", op, what, rows, cols,
                                            dtype_name(dtype), t.shape().str(), dtype_name(t.dtype())));
  return cols <= 1 || t.strides()[1] == 1;
}
// The operand as unit-stride rows: a copy (never recorded) only when its columns are strided.
Tensor unit_rows(const Tensor& t) {
  return (t.dim() == 2 && (t.size(1) <= 1 || t.strides()[1] == 1)) ? t : t.detach().contiguous();
}
Tensor dense(const Tensor& t) { return t.is_contiguous() ? t : t.detach().contiguous(); }
// The distance between rows of a unit-stride [rows, cols] operand (cols for a single row).
int64_t row_ld(const Tensor& t, int64_t rows, int64_t cols) { return rows > 1 ? t.strides()[0] : cols; }

struct CellArgs {
  int64_t B, H;
  DType dtype;
};

// Checks px [B, G*H], h [B, H], w [G*H, H], b [G*H] (optional) and returns B, H.
CellArgs check_cell(const char* op, int64_t G, const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b) {
  if (!px.defined() || !h.defined() || !w.defined()) throw std::invalid_argument(std::string(op) + ": undefined tensor argument");
  if (w.dim() != 2 || w.size(0) % G != 0 || w.size(0) != G * w.size(1))
    throw std::invalid_argument(fmt::format("{}: weight must be [{} * hidden, hidden], got {}", op, G, w.shape().str()));
  const int64_t H = w.size(1);
  if (px.dim() != 2 || px.size(1) != G * H)
    throw std::invalid_argument(fmt::format("{}: projected input must be [batch, {}], got {}", op, G * H, px.shape().str()));
  const int64_t B = px.size(0);
  const DType dt = w.dtype();
  if (!is_floating(dt)) throw std::invalid_argument(fmt::format("{}: weight must be float32 or float64", op));
  check_rows(op, "h", h, B, H, dt);
  check_rows(op, "projected input", px, B, G * H, dt);
  if (b.defined() && (b.dim() != 1 || b.size(0) != G * H || b.dtype() != dt))
    throw std::invalid_argument(fmt::format("{}: bias must be [{}] {}, got {} {}", op, G * H, dtype_name(dt),
                                            b.shape().str(), dtype_name(b.dtype())));
  return {B, H, dt};
}

// Recurrent weights packed for the float32 products (kernels/packed_gemm.h), per thread: a layer
// multiplies by the same W_hh at each of its T steps, forward and backward, and packing it once
// per optimizer step instead of once per product is 12-16 % of a small model's training step.
// An entry is found by storage, element 0 and shape and is valid for one version of the storage
// (every in-place write bumps it: the step after an optimizer update repacks). It holds a
// reference to the storage, so a freed weight's address cannot come back as a new weight and hit
// the stale panels; an entry whose storage nobody else holds any more is the first to go.
class PackedWeights {
 public:
  // The packed op(w): w^T (forward: h w^T) when transposed, else w (backward: dpre w), or null
  // when the product is float64, w is not contiguous, or packing does not pay for this shape.
  const kern::PackedWeight* get(const Tensor& w, bool transposed, int64_t m) {
    if (w.dtype() != DType::Float32 || !w.is_contiguous()) return nullptr;
    const kern::LinalgKernels& lin = *kernels_of(w).linalg;
    const int64_t rows = w.size(0), cols = w.size(1);
    const int64_t k = transposed ? cols : rows, n = transposed ? rows : cols;
    if (!lin.packed_pays || !lin.packed_pays(m, n, k)) return nullptr;
    const Storage* st = w.impl()->storage.get();
    const void* first = mem(w);  // element 0
    // A step being captured must record its packing (capture.h): panels made before it began
    // would be read at every replay however the weight changed since. 0: not capturing.
    const uint64_t epoch = detail::capturing() ? capture_epoch() : 0;
    Entry* e = nullptr;
    for (Entry& x : entries_)
      if (x.storage.get() == st && x.first == first && x.rows == rows && x.cols == cols) e = &x;
    if (!e) {
      e = &victim();
      e->storage = w.impl()->storage;
      e->first = first;
      e->rows = rows;
      e->cols = cols;
      e->valid[0] = e->valid[1] = false;
      e->version = st->version();
      e->epoch = epoch;
    }
    if (e->version != st->version() || (epoch != 0 && e->epoch != epoch)) {
      e->version = st->version();
      e->valid[0] = e->valid[1] = false;
      e->epoch = epoch;
    }
    e->used = ++clock_;
    kern::PackedWeight& p = e->packed[transposed];
    if (!e->valid[transposed]) {
      lin.pack(transposed, k, n, first, cols, p);
      e->valid[transposed] = true;
    }
    return &p;
  }

 private:
  struct Entry {
    Ref<Storage> storage;
    const void* first = nullptr;
    int64_t rows = 0, cols = 0;
    uint64_t version = 0, used = 0, epoch = 0;
    bool valid[2] = {false, false};
    kern::PackedWeight packed[2];  // [0]: op(w) = w, [1]: op(w) = w^T
  };
  // An unused entry, else one whose weight is gone (only this cache holds its storage), else the
  // least recently used. Its panels' memory is kept for the next weight of the same size.
  Entry& victim() {
    Entry* best = &entries_[0];
    for (Entry& x : entries_) {
      if (!x.storage || x.storage->use_count() == 1) return x;
      if (x.used < best->used) best = &x;
    }
    return *best;
  }
  // Layers (and directions) of one model, each with its own W_hh.
  static constexpr int kEntries = 8;
  Entry entries_[kEntries];
  uint64_t clock_ = 0;
};
thread_local PackedWeights t_packed;

// A cell's operands as its kernel reads them: unit-stride rows (copies only for strided
// columns), the weight and bias contiguous. The tensors keep the memory the args point into.
struct CellOperands {
  Tensor px, h, c, w, b;
  kern::CellArgs args;
  CellOperands(const Tensor& px_in, const Tensor& h_in, const Tensor& w_in, const Tensor& b_in, int64_t B, int64_t H)
      : px(unit_rows(px_in)), h(unit_rows(h_in)), w(dense(w_in)), b(b_in.defined() ? dense(b_in) : Tensor()) {
    // w_in itself, not the dense copy: a copy's storage would be new at every step (get()
    // declines a strided weight).
    const kern::PackedWeight* packed = t_packed.get(w_in, true, B);
    args = {mem(px), row_ld(px, B, px.size(1)), mem(h), row_ld(h, B, H), nullptr, 0, mem(w),
            b.defined() ? mem(b) : nullptr, B, H, packed};
  }
};

// The gradients every cell sends through its recurrent product: h gets dpre @ w (plus `dh`, when
// given, accumulated in place), w gets the product dpre^T h, b gets the column sums of dpre.
// dpre: unit-stride rows (a window of the sequence's gradient, or its own buffer).
void recurrent_backward(Grads& gr, int ih, int iw, int ib, const Tensor& dpre, const Tensor& h, const Tensor& w,
                        int64_t B, int64_t N, int64_t H, Tensor dh) {
  const kern::KernelTable& k = kernels_of(dpre);
  const int64_t ld = row_ld(dpre, B, N);
  if (gr.needs(ih)) {
    const bool fresh = !dh.defined();
    if (fresh) dh = empty(Shape{B, H}, dpre.dtype());
    if (const kern::PackedWeight* packed = t_packed.get(w, false, B)) {
      k.linalg->gemm_packed(B, mem(dpre), ld, *packed, fresh ? 0.0 : 1.0, mem(dh), H);
    } else {
      const Tensor wc = dense(w);
      k.linalg->gemm(false, false, B, H, N, mem(dpre), ld, mem(wc), H, fresh ? 0.0 : 1.0, mem(dh), H);
    }
    gr.add(ih, std::move(dh));
  }
  if (gr.needs(iw)) gr.add_product(iw, dpre, h);
  if (ib >= 0 && gr.needs(ib)) {
    Tensor gb = empty(Shape{N}, dpre.dtype());
    k.reduce->column_sums(mem(dpre), B, N, ld, mem(gb));
    gr.add(ib, std::move(gb));
  }
}

Tensor contiguous_grad(const Tensor& g) { return g.is_contiguous() ? g : g.contiguous(); }

// Where a cell's projected input comes from: input 0 itself, or a window of it (a SeqWindow).
struct PxSource {
  int64_t dim = -1, start = 0, length = 0;
  bool squeezed = false;
  // px as the create_graph path reads it: connected to input 0 through a recorded view.
  Tensor view_of(const Tensor& input0) const {
    if (dim < 0) return input0;
    return squeezed ? select(input0, dim, start) : narrow(input0, dim, start, length);
  }
  void add_grad(Grads& gr, Tensor d) const {
    if (dim < 0) gr.add(0, std::move(d));
    else gr.add_window(0, dim, start, d, squeezed);
  }
  // Where a backward writes px's gradient [B, N] (unit-stride rows): its window of input 0's
  // gradient when Grads lends it (then add_grad copies nothing), else a new tensor. Handed to
  // add_grad before any other gradient is added.
  Tensor grad_buffer(Grads& gr, int64_t B, int64_t N, DType dtype) const {
    if (dim < 0 || !gr.needs(0)) return empty(Shape{B, N}, dtype);
    return gr.window_buffer(0, dim, start, Shape{B, N}, squeezed);
  }
};

// The window as an unrecorded view, and where it lies (dims and indices normalised).
std::pair<Tensor, PxSource> window_of(const char* op, const SeqWindow& w) {
  if (!w.seq.defined()) throw std::invalid_argument(fmt::format("{}: the SeqWindow's sequence is undefined", op));
  Tensor view;
  try {
    NoGradGuard no_grad;
    view = w.squeezed ? select(w.seq, w.dim, w.start) : narrow(w.seq, w.dim, w.start, w.length);
  } catch (const std::exception& e) {
    throw std::invalid_argument(fmt::format("{}: the projected-input window (dim {}, start {}, length {}{}) does not "
                                            "fit the sequence {}: {}",
                                            op, w.dim, w.start, w.length, w.squeezed ? ", squeezed" : "",
                                            w.seq.shape().str(), e.what()));
  }
  PxSource src;
  src.dim = w.dim < 0 ? w.dim + w.seq.dim() : w.dim;
  src.start = w.squeezed && w.start < 0 ? w.start + w.seq.size(src.dim) : w.start;
  src.length = w.squeezed ? 1 : w.length;
  src.squeezed = w.squeezed;
  return {view, src};
}

// create_graph: the cells' backwards in recorded ops, recomputing the gates from the saved
// (graph-connected) inputs, so the gradients they produce can be differentiated again. The fast
// hand-written kernels above stay the first-order path.
Tensor gates_of(const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b) {
  Tensor pre = px + matmul(h, transpose(w, 0, 1));
  return b.defined() ? pre + b : pre;
}
Tensor part(const Tensor& t, int64_t k, int64_t H) { return narrow(t, 1, k * H, H); }

void add_recurrent(Grads& gr, int ih, int iw, int ib, const Tensor& dpre, const Tensor& h, const Tensor& w,
                   const Tensor& dh_extra) {
  if (gr.needs(ih)) {
    Tensor dh = matmul(dpre, w);
    gr.add(ih, dh_extra.defined() ? dh + dh_extra : dh);
  }
  if (gr.needs(iw)) gr.add(iw, matmul(transpose(dpre, 0, 1), h));
  if (ib >= 0 && gr.needs(ib)) gr.add(ib, sum(dpre, {0}));
}

void rnn_backward_recorded(const Tensor& g, Grads& gr, const PxSource& src, const Tensor& px, const Tensor& h,
                           const Tensor& w, const Tensor& b, bool relu) {
  const Tensor pre = gates_of(px, h, w, b);
  Tensor dpre;
  if (relu) {
    dpre = mul(g, gt(pre.detach(), scalar(0.0, pre.dtype())));
  } else {
    const Tensor y = tanh(pre);
    dpre = mul(g, 1.0 - y * y);
  }
  if (gr.needs(0)) src.add_grad(gr, dpre);
  add_recurrent(gr, 1, 2, b.defined() ? 3 : -1, dpre, h, w, Tensor());
}

void lstm_backward_recorded(const Tensor& g, Grads& gr, const PxSource& src, const Tensor& px, const Tensor& h,
                            const Tensor& c, const Tensor& w, const Tensor& b, int64_t H) {
  const Tensor pre = gates_of(px, h, w, b);
  const Tensor i = sigmoid(part(pre, 0, H)), f = sigmoid(part(pre, 1, H)), gg = tanh(part(pre, 2, H)),
               o = sigmoid(part(pre, 3, H));
  const Tensor tc = tanh(f * c + i * gg);
  const Tensor gh = select(g, 0, 0), gc = select(g, 0, 1);
  const Tensor dcn = gc + gh * o * (1.0 - tc * tc);
  const Tensor dG = cat({dcn * gg * i * (1.0 - i), dcn * c * f * (1.0 - f), dcn * i * (1.0 - gg * gg),
                         gh * tc * o * (1.0 - o)},
                        1);
  if (gr.needs(0)) src.add_grad(gr, dG);
  if (gr.needs(2)) gr.add(2, dcn * f);
  add_recurrent(gr, 1, 3, b.defined() ? 4 : -1, dG, h, w, Tensor());
}

void gru_backward_recorded(const Tensor& gy, Grads& gr, const PxSource& src, const Tensor& px, const Tensor& h,
                           const Tensor& w, const Tensor& b, int64_t H) {
  const Tensor q = gates_of(zeros_like(px.detach()), h, w, b);  // h w^T + b
  const Tensor r = sigmoid(part(px, 0, H) + part(q, 0, H)), z = sigmoid(part(px, 1, H) + part(q, 1, H));
  const Tensor qn = part(q, 2, H);
  const Tensor n = tanh(part(px, 2, H) + r * qn);
  const Tensor dz = gy * (h - n) * z * (1.0 - z);
  const Tensor dn = gy * (1.0 - z) * (1.0 - n * n);
  const Tensor dr = dn * qn * r * (1.0 - r);
  if (gr.needs(0)) src.add_grad(gr, cat({dr, dz, dn}, 1));
  add_recurrent(gr, 1, 2, b.defined() ? 3 : -1, cat({dr, dz, dn * r}, 1), h, w, gy * z);
}

}  // namespace

namespace {
// input0: what the node's input edge 0 is (px itself, or the sequence px is a window of).
Tensor rnn_step(const Tensor& px, const Tensor& input0, const PxSource& src, const Tensor& h, const Tensor& w,
                const Tensor& b, bool relu) {
  const CellArgs a = check_cell("rnn_cell", 1, px, h, w, b);
  const int64_t B = a.B, H = a.H;
  Tensor out = empty(Shape{B, H}, a.dtype);
  const CellOperands ops(px, h, w, b, B, H);
  kernels_of(out).rnn->rnn_forward(ops.args, relu, mem(out));
  const bool has_b = b.defined();
  std::initializer_list<Tensor> inputs = {input0, h, w, has_b ? b : Tensor()};
  return record("rnn_cell", inputs, out, [ys = SavedOutputStorage(out), pxs = Saved(input0, 0), src, hs = Saved(h, 1),
                                         ws = Saved(w, 2), bs = Saved(has_b ? b : Tensor(), 3), B, H, relu,
                                         has_b](const Tensor& g_in, Grads& gr) {
    if (grad_enabled()) return rnn_backward_recorded(g_in, gr, src, src.view_of(*pxs), *hs, *ws, *bs, relu);
    const Storage& y = ys.get();
    const Tensor &h = *hs, &w = *ws;
    const Tensor g = contiguous_grad(g_in);
    const Tensor d = src.grad_buffer(gr, B, H, g.dtype());
    kernels_of(g).rnn->rnn_backward(mem(g), mem(y), mem(d), row_ld(d, B, H), B, H, relu);
    if (gr.needs(0)) src.add_grad(gr, d);
    recurrent_backward(gr, 1, 2, has_b ? 3 : -1, d, h, w, B, H, H, Tensor());
  });
}
}  // namespace

TG_REGISTER_OP("rnn_cell", "rnn");
Tensor rnn_cell(const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b, bool relu) {
  return rnn_step(px, px, PxSource{}, h, w, b, relu);
}
Tensor rnn_cell(const SeqWindow& px, const Tensor& h, const Tensor& w, const Tensor& b, bool relu) {
  auto [view, src] = window_of("rnn_cell", px);
  return rnn_step(view, px.seq, src, h, w, b, relu);
}

namespace {
Tensor lstm_step(const Tensor& px, const Tensor& input0, const PxSource& src, const Tensor& h, const Tensor& c,
                 const Tensor& w, const Tensor& b) {
  const CellArgs a = check_cell("lstm_cell", 4, px, h, w, b);
  const int64_t B = a.B, H = a.H, N = 4 * H;
  const bool c_unit = check_rows("lstm_cell", "c", c, B, H, a.dtype);
  const Tensor cu = c_unit ? c : dense(c);
  const int64_t lc = c_unit ? row_ld(c, B, H) : H;
  Tensor act = empty(Shape{B, N}, a.dtype);  // activated gates i, f, g, o: saved for backward
  Tensor out = empty(Shape{2, B, H}, a.dtype);  // [h', c']
  CellOperands ops(px, h, w, b, B, H);
  ops.args.c = mem(cu);
  ops.args.ld_c = lc;
  kernels_of(out).rnn->lstm_forward(ops.args, mem(act), mem(out));
  const bool has_b = b.defined();
  std::initializer_list<Tensor> inputs = {input0, h, c, w, has_b ? b : Tensor()};
  return record("lstm_cell", inputs, out,
                [act, ys = SavedOutputStorage(out), pxs = Saved(input0, 0), src, hs = Saved(h, 1), cus = Saved(cu, 2),
                 cs = Saved(c, 2), lc, ws = Saved(w, 3), bs = Saved(has_b ? b : Tensor(), 4), B, H,
                 has_b](const Tensor& g_in, Grads& gr) {
                  if (grad_enabled()) return lstm_backward_recorded(g_in, gr, src, src.view_of(*pxs), *hs, *cs, *ws, *bs, H);
                  const Storage& y = ys.get();
                  const Tensor &h = *hs, &cu = *cus, &w = *ws;
                  const int64_t N = 4 * H;
                  const Tensor g = contiguous_grad(g_in);
                  const Tensor dG = src.grad_buffer(gr, B, N, g.dtype());
                  Tensor dc = empty(Shape{B, H}, g.dtype());
                  kernels_of(g).rnn->lstm_backward(mem(act), mem(g), mem(y), mem(cu), lc, mem(dG), row_ld(dG, B, N),
                                                   mem(dc), B, H);
                  if (gr.needs(0)) src.add_grad(gr, dG);
                  recurrent_backward(gr, 1, 3, has_b ? 4 : -1, dG, h, w, B, N, H, Tensor());
                  if (gr.needs(2)) gr.add(2, std::move(dc));
                });
}
}  // namespace

TG_REGISTER_OP("lstm_cell", "rnn");
Tensor lstm_cell(const Tensor& px, const Tensor& h, const Tensor& c, const Tensor& w, const Tensor& b) {
  return lstm_step(px, px, PxSource{}, h, c, w, b);
}
Tensor lstm_cell(const SeqWindow& px, const Tensor& h, const Tensor& c, const Tensor& w, const Tensor& b) {
  auto [view, src] = window_of("lstm_cell", px);
  return lstm_step(view, px.seq, src, h, c, w, b);
}

namespace {
Tensor gru_step(const Tensor& px, const Tensor& input0, const PxSource& src, const Tensor& h, const Tensor& w,
                const Tensor& b) {
  const CellArgs a = check_cell("gru_cell", 3, px, h, w, b);
  const int64_t B = a.B, H = a.H, N = 3 * H;
  const CellOperands ops(px, h, w, b, B, H);
  const Tensor& hu = ops.h;
  Tensor ph = empty(Shape{B, N}, a.dtype);   // h w^T + b: its n part is saved for backward
  Tensor act = empty(Shape{B, N}, a.dtype);  // r, z, n
  Tensor out = empty(Shape{B, H}, a.dtype);
  kernels_of(out).rnn->gru_forward(ops.args, mem(ph), mem(act), mem(out));
  const bool has_b = b.defined();
  std::initializer_list<Tensor> inputs = {input0, h, w, has_b ? b : Tensor()};
  return record("gru_cell", inputs, out, [act, ph, pxs = Saved(input0, 0), src, hus = Saved(hu, 1), hs = Saved(h, 1), ws = Saved(w, 2),
                                         bs = Saved(has_b ? b : Tensor(), 3), B, H,
                                         has_b](const Tensor& g_in, Grads& gr) {
    if (grad_enabled()) return gru_backward_recorded(g_in, gr, src, src.view_of(*pxs), *hs, *ws, *bs, H);
    const Tensor &hu = *hus, &h = *hs, &w = *ws;
    const int64_t N = 3 * H;
    const Tensor g = contiguous_grad(g_in);
    const Tensor dpx = src.grad_buffer(gr, B, N, g.dtype());
    Tensor dph = empty(Shape{B, N}, g.dtype()), dh = empty(Shape{B, H}, g.dtype());
    kernels_of(g).rnn->gru_backward(mem(act), mem(ph), mem(g), mem(hu), row_ld(hu, B, H), mem(dpx), row_ld(dpx, B, N),
                                    mem(dph), mem(dh), B, H);
    if (gr.needs(0)) src.add_grad(gr, dpx);
    recurrent_backward(gr, 1, 2, has_b ? 3 : -1, dph, h, w, B, N, H, dh);
  });
}
}  // namespace

TG_REGISTER_OP("gru_cell", "rnn");
Tensor gru_cell(const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b) {
  return gru_step(px, px, PxSource{}, h, w, b);
}
Tensor gru_cell(const SeqWindow& px, const Tensor& h, const Tensor& w, const Tensor& b) {
  auto [view, src] = window_of("gru_cell", px);
  return gru_step(view, px.seq, src, h, w, b);
}

}  // namespace tg
