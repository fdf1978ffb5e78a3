// Fused recurrent cell steps: the recurrent product, both biases and every gate non-linearity of
// one time step are one recorded op (one tape node instead of a dozen), the pre-activations are
// written once into one buffer that the GEMM accumulates onto (beta = 1, no bias-row copy and no
// separate add), and the backward is written out by hand. Each has a float64 gradient check.
#include <cstring>

#include "autograd/elementwise.h"
#include "autograd/ops.h"
#include "autograd/vmath.h"

namespace tg {
using namespace detail;

namespace {

// Lanes: float32 runs 8 at a time on the vmath vector type, float64 one at a time through std::.
template <class T> using V = std::conditional_t<std::is_same_v<T, float>, vmath::f8, double>;
template <class T> inline constexpr int64_t kLanes = std::is_same_v<T, float> ? 8 : 1;
template <class T> inline V<T> ld(const T* p, int64_t m) {
  V<T> v{};
  std::memcpy(&v, p, sizeof(T) * static_cast<size_t>(m));
  return v;
}
template <class T> inline void st(T* p, const V<T>& v, int64_t m) { std::memcpy(p, &v, sizeof(T) * static_cast<size_t>(m)); }
// f(j, m) for each chunk [j, j + m) of a row of n elements, m <= lanes (the tail is a short chunk).
template <class T, class F> inline void chunks(int64_t n, F&& f) {
  int64_t j = 0;
  for (; j + kLanes<T> <= n; j += kLanes<T>) f(j, kLanes<T>);
  if (j < n) f(j, n - j);
}

struct Mat {  // a 2-D view as the kernels see it: rows of `cols` unit-stride elements, `ld` apart
  const void* p;
  int64_t ld;
};
Mat rows_of(const char* op, const char* what, const Tensor& t, int64_t rows, int64_t cols, DType dtype) {
  if (t.dim() != 2 || t.size(0) != rows || t.size(1) != cols || t.dtype() != dtype)
    throw std::invalid_argument(fmt::format("{}: {} must be [{}, {}] {}, got {} {}", op, what, rows, cols,
                                            dtype_name(dtype), t.shape().str(), dtype_name(t.dtype())));
  if (cols > 1 && t.strides()[1] != 1) return {nullptr, 0};
  return {t.raw_data(), rows > 1 ? t.strides()[0] : cols};
}
// The operand as unit-stride rows: a copy (never recorded) only when its columns are strided.
Tensor unit_rows(const Tensor& t) {
  return (t.dim() == 2 && (t.size(1) <= 1 || t.strides()[1] == 1)) ? t : t.detach().contiguous();
}
Tensor dense(const Tensor& t) { return t.is_contiguous() ? t : t.detach().contiguous(); }

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
  rows_of(op, "h", h, B, H, dt);
  rows_of(op, "projected input", px, B, G * H, dt);
  if (b.defined() && (b.dim() != 1 || b.size(0) != G * H || b.dtype() != dt))
    throw std::invalid_argument(fmt::format("{}: bias must be [{}] {}, got {} {}", op, G * H, dtype_name(dt),
                                            b.shape().str(), dtype_name(b.dtype())));
  return {B, H, dt};
}

// pre[r, :] = px[r, :] + b (or px alone) for r < B, then pre += h @ w^T.
template <class T>
void preactivation(T* pre, const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b, int64_t B, int64_t N,
                   bool add_px) {
  const Tensor pxu = add_px ? unit_rows(px) : Tensor(), hu = unit_rows(h);
  const Tensor bc = b.defined() ? dense(b) : Tensor();
  const T* pb = b.defined() ? bc.data<T>() : nullptr;
  const T* pp = add_px ? pxu.data<T>() : nullptr;
  const int64_t lp = add_px && B > 1 ? pxu.strides()[0] : N;
  for (int64_t r = 0; r < B; ++r) {
    T* o = pre + r * N;
    if (pp && pb) for (int64_t j = 0; j < N; ++j) o[j] = pp[r * lp + j] + pb[j];
    else if (pp) for (int64_t j = 0; j < N; ++j) o[j] = pp[r * lp + j];
    else if (pb) for (int64_t j = 0; j < N; ++j) o[j] = pb[j];
    else for (int64_t j = 0; j < N; ++j) o[j] = T(0);
  }
  const int64_t H = h.size(1);
  const Tensor wc = dense(w);
  gemm_raw<T>(false, true, B, N, H, hu.data<T>(), B > 1 ? hu.strides()[0] : H, wc.data<T>(), H, T(1), pre, N);
}

// gb[j] = sum over rows of d[r, j] (the bias gradient), d [B, N] contiguous.
template <class T> Tensor column_sum(const T* d, int64_t B, int64_t N, DType dt) {
  Tensor gb = zeros(Shape{N}, dt);
  T* o = gb.data<T>();
  for (int64_t r = 0; r < B; ++r)
    for (int64_t j = 0; j < N; ++j) o[j] += d[r * N + j];
  return gb;
}

// The gradients every cell sends through its recurrent product: h gets dpre @ w (plus `dh`, when
// given, accumulated in place), w gets the product dpre^T h, b gets the column sums of dpre.
template <class T>
void recurrent_backward(Grads& gr, int ih, int iw, int ib, const T* dpre_p, const Tensor& dpre, const Tensor& h,
                        const Tensor& w, int64_t B, int64_t N, int64_t H, Tensor dh) {
  if (gr.needs(ih)) {
    const Tensor wc = dense(w);
    if (!dh.defined()) {
      dh = empty(Shape{B, H}, dpre.dtype());
      gemm_raw<T>(false, false, B, H, N, dpre_p, N, wc.data<T>(), H, T(0), dh.data<T>(), H);
    } else {
      gemm_raw<T>(false, false, B, H, N, dpre_p, N, wc.data<T>(), H, T(1), dh.data<T>(), H);
    }
    gr.add(ih, std::move(dh));
  }
  if (gr.needs(iw)) gr.add_product(iw, dpre, h);
  if (ib >= 0 && gr.needs(ib)) gr.add(ib, column_sum<T>(dpre_p, B, N, dpre.dtype()));
}

Tensor contiguous_grad(const Tensor& g) { return g.is_contiguous() ? g : g.contiguous(); }

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

void rnn_backward_recorded(const Tensor& g, Grads& gr, const Tensor& px, const Tensor& h, const Tensor& w,
                           const Tensor& b, bool relu) {
  const Tensor pre = gates_of(px, h, w, b);
  Tensor dpre;
  if (relu) {
    dpre = mul(g, gt(pre.detach(), scalar(0.0, pre.dtype())));
  } else {
    const Tensor y = tanh(pre);
    dpre = mul(g, 1.0 - y * y);
  }
  if (gr.needs(0)) gr.add(0, dpre);
  add_recurrent(gr, 1, 2, b.defined() ? 3 : -1, dpre, h, w, Tensor());
}

void lstm_backward_recorded(const Tensor& g, Grads& gr, const Tensor& px, const Tensor& h, const Tensor& c,
                            const Tensor& w, const Tensor& b, int64_t H) {
  const Tensor pre = gates_of(px, h, w, b);
  const Tensor i = sigmoid(part(pre, 0, H)), f = sigmoid(part(pre, 1, H)), gg = tanh(part(pre, 2, H)),
               o = sigmoid(part(pre, 3, H));
  const Tensor tc = tanh(f * c + i * gg);
  const Tensor gh = select(g, 0, 0), gc = select(g, 0, 1);
  const Tensor dcn = gc + gh * o * (1.0 - tc * tc);
  const Tensor dG = cat({dcn * gg * i * (1.0 - i), dcn * c * f * (1.0 - f), dcn * i * (1.0 - gg * gg),
                         gh * tc * o * (1.0 - o)},
                        1);
  if (gr.needs(0)) gr.add(0, dG);
  if (gr.needs(2)) gr.add(2, dcn * f);
  add_recurrent(gr, 1, 3, b.defined() ? 4 : -1, dG, h, w, Tensor());
}

void gru_backward_recorded(const Tensor& gy, Grads& gr, const Tensor& px, const Tensor& h, const Tensor& w,
                           const Tensor& b, int64_t H) {
  const Tensor q = gates_of(zeros_like(px.detach()), h, w, b);  // h w^T + b
  const Tensor r = sigmoid(part(px, 0, H) + part(q, 0, H)), z = sigmoid(part(px, 1, H) + part(q, 1, H));
  const Tensor qn = part(q, 2, H);
  const Tensor n = tanh(part(px, 2, H) + r * qn);
  const Tensor dz = gy * (h - n) * z * (1.0 - z);
  const Tensor dn = gy * (1.0 - z) * (1.0 - n * n);
  const Tensor dr = dn * qn * r * (1.0 - r);
  if (gr.needs(0)) gr.add(0, cat({dr, dz, dn}, 1));
  add_recurrent(gr, 1, 2, b.defined() ? 3 : -1, cat({dr, dz, dn * r}, 1), h, w, gy * z);
}

}  // namespace

TG_REGISTER_OP("rnn_cell", "rnn");
Tensor rnn_cell(const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b, bool relu) {
  const CellArgs a = check_cell("rnn_cell", 1, px, h, w, b);
  const int64_t B = a.B, H = a.H;
  Tensor out = empty(Shape{B, H}, a.dtype);
  dispatch_float("rnn_cell", out.device(), a.dtype, [&]<class T>() {
    T* o = out.data<T>();
    preactivation<T>(o, px, h, w, b, B, H, true);
    for (int64_t r = 0; r < B; ++r)
      chunks<T>(H, [&](int64_t j, int64_t m) {
        const V<T> x = ld(o + r * H + j, m);
        st(o + r * H + j, relu ? V<T>(x > T(0) ? x : V<T>{}) : V<T>(vmath::tanh(x)), m);
      });
  });
  const bool has_b = b.defined();
  std::initializer_list<Tensor> inputs = {px, h, w, has_b ? b : Tensor()};
  return record("rnn_cell", inputs, out, [ys = SavedOutputStorage(out), pxs = Saved(px, 0), hs = Saved(h, 1), ws = Saved(w, 2),
                                         bs = Saved(has_b ? b : Tensor(), 3), B, H, relu,
                                         has_b](const Tensor& g_in, Grads& gr) {
    if (grad_enabled()) return rnn_backward_recorded(g_in, gr, *pxs, *hs, *ws, *bs, relu);
    const Storage* y = &ys.get();
    const Tensor &h = *hs, &w = *ws;
    const Tensor g = contiguous_grad(g_in);
    Tensor d = empty(Shape{B, H}, g.dtype());
    dispatch_float("rnn_cell_backward", g.device(), g.dtype(), [&]<class T>() {
      const T *pg = g.data<T>(), *py = static_cast<const T*>(y->data());
      T* pd = d.data<T>();
      for (int64_t r = 0; r < B; ++r)
        chunks<T>(H, [&](int64_t j, int64_t m) {
          const int64_t k = r * H + j;
          const V<T> gy = ld(pg + k, m), yy = ld(py + k, m);
          st(pd + k, relu ? V<T>(yy > T(0) ? gy : V<T>{}) : V<T>(gy * (T(1) - yy * yy)), m);
        });
      recurrent_backward<T>(gr, 1, 2, has_b ? 3 : -1, pd, d, h, w, B, H, H, Tensor());
    });
    if (gr.needs(0)) gr.add(0, std::move(d));
  });
}

TG_REGISTER_OP("lstm_cell", "rnn");
Tensor lstm_cell(const Tensor& px, const Tensor& h, const Tensor& c, const Tensor& w, const Tensor& b) {
  const CellArgs a = check_cell("lstm_cell", 4, px, h, w, b);
  const int64_t B = a.B, H = a.H, N = 4 * H;
  const Mat cm = rows_of("lstm_cell", "c", c, B, H, a.dtype);
  const Tensor cu = cm.p ? c : dense(c);
  const int64_t lc = cm.p ? cm.ld : H;
  Tensor act = empty(Shape{B, N}, a.dtype);  // activated gates i, f, g, o: saved for backward
  Tensor out = empty(Shape{2, B, H}, a.dtype);  // [h', c']
  dispatch_float("lstm_cell", out.device(), a.dtype, [&]<class T>() {
    T* G = act.data<T>();
    preactivation<T>(G, px, h, w, b, B, N, true);
    const T* pc = cu.data<T>();
    T *ph = out.data<T>(), *pcn = ph + B * H;
    for (int64_t r = 0; r < B; ++r)
      chunks<T>(H, [&](int64_t j, int64_t m) {
        T* g = G + r * N + j;
        const V<T> i = vmath::sigmoid(ld(g, m)), f = vmath::sigmoid(ld(g + H, m)), gg = vmath::tanh(ld(g + 2 * H, m)),
                   o = vmath::sigmoid(ld(g + 3 * H, m));
        st(g, i, m);
        st(g + H, f, m);
        st(g + 2 * H, gg, m);
        st(g + 3 * H, o, m);
        const V<T> cn = f * ld(pc + r * lc + j, m) + i * gg;
        st(pcn + r * H + j, cn, m);
        st(ph + r * H + j, V<T>(o * vmath::tanh(cn)), m);
      });
  });
  const bool has_b = b.defined();
  std::initializer_list<Tensor> inputs = {px, h, c, w, has_b ? b : Tensor()};
  return record("lstm_cell", inputs, out,
                [act, ys = SavedOutputStorage(out), pxs = Saved(px, 0), hs = Saved(h, 1), cus = Saved(cu, 2),
                 cs = Saved(c, 2), lc, ws = Saved(w, 3), bs = Saved(has_b ? b : Tensor(), 4), B, H,
                 has_b](const Tensor& g_in, Grads& gr) {
                  if (grad_enabled()) return lstm_backward_recorded(g_in, gr, *pxs, *hs, *cs, *ws, *bs, H);
                  const Storage* y = &ys.get();
                  const Tensor &h = *hs, &cu = *cus, &w = *ws;
                  const int64_t N = 4 * H;
                  const Tensor g = contiguous_grad(g_in);
                  Tensor dG = empty(Shape{B, N}, g.dtype()), dc = empty(Shape{B, H}, g.dtype());
                  dispatch_float("lstm_cell_backward", g.device(), g.dtype(), [&]<class T>() {
                    const T *A = act.data<T>(), *pgh = g.data<T>(), *pgc = pgh + B * H;
                    const T *pcn = static_cast<const T*>(y->data()) + B * H, *pc = cu.data<T>();
                    T *pd = dG.data<T>(), *pdc = dc.data<T>();
                    for (int64_t r = 0; r < B; ++r)
                      chunks<T>(H, [&](int64_t j, int64_t m) {
                        const T* a = A + r * N + j;
                        T* d = pd + r * N + j;
                        const int64_t k = r * H + j;
                        const V<T> i = ld(a, m), f = ld(a + H, m), gg = ld(a + 2 * H, m), o = ld(a + 3 * H, m);
                        const V<T> tc = vmath::tanh(ld(pcn + k, m)), gh = ld(pgh + k, m);
                        const V<T> dcn = ld(pgc + k, m) + gh * o * (T(1) - tc * tc);
                        st(d, V<T>(dcn * gg * i * (T(1) - i)), m);
                        st(d + H, V<T>(dcn * ld(pc + r * lc + j, m) * f * (T(1) - f)), m);
                        st(d + 2 * H, V<T>(dcn * i * (T(1) - gg * gg)), m);
                        st(d + 3 * H, V<T>(gh * tc * o * (T(1) - o)), m);
                        st(pdc + k, V<T>(dcn * f), m);
                      });
                    recurrent_backward<T>(gr, 1, 3, has_b ? 4 : -1, pd, dG, h, w, B, N, H, Tensor());
                  });
                  if (gr.needs(2)) gr.add(2, std::move(dc));
                  if (gr.needs(0)) gr.add(0, std::move(dG));
                });
}

TG_REGISTER_OP("gru_cell", "rnn");
Tensor gru_cell(const Tensor& px, const Tensor& h, const Tensor& w, const Tensor& b) {
  const CellArgs a = check_cell("gru_cell", 3, px, h, w, b);
  const int64_t B = a.B, H = a.H, N = 3 * H;
  const Tensor pxu = unit_rows(px), hu = unit_rows(h);
  Tensor ph = empty(Shape{B, N}, a.dtype);   // h w^T + b: its n part is saved for backward
  Tensor act = empty(Shape{B, N}, a.dtype);  // r, z, n
  Tensor out = empty(Shape{B, H}, a.dtype);
  dispatch_float("gru_cell", out.device(), a.dtype, [&]<class T>() {
    T* P = ph.data<T>();
    preactivation<T>(P, px, h, w, b, B, N, false);
    const T *pp = pxu.data<T>(), *phh = hu.data<T>();
    const int64_t lp = B > 1 ? pxu.strides()[0] : N, lh = B > 1 ? hu.strides()[0] : H;
    T *A = act.data<T>(), *o = out.data<T>();
    for (int64_t r = 0; r < B; ++r)
      chunks<T>(H, [&](int64_t j, int64_t m) {
        const T *x = pp + r * lp + j, *q = P + r * N + j;
        T* s = A + r * N + j;
        const V<T> rr = vmath::sigmoid(V<T>(ld(x, m) + ld(q, m)));
        const V<T> z = vmath::sigmoid(V<T>(ld(x + H, m) + ld(q + H, m)));
        const V<T> n = vmath::tanh(V<T>(ld(x + 2 * H, m) + rr * ld(q + 2 * H, m)));
        st(s, rr, m);
        st(s + H, z, m);
        st(s + 2 * H, n, m);
        st(o + r * H + j, V<T>(n + z * (ld(phh + r * lh + j, m) - n)), m);
      });
  });
  const bool has_b = b.defined();
  std::initializer_list<Tensor> inputs = {px, h, w, has_b ? b : Tensor()};
  return record("gru_cell", inputs, out, [act, ph, pxs = Saved(px, 0), hus = Saved(hu, 1), hs = Saved(h, 1), ws = Saved(w, 2),
                                         bs = Saved(has_b ? b : Tensor(), 3), B, H,
                                         has_b](const Tensor& g_in, Grads& gr) {
    if (grad_enabled()) return gru_backward_recorded(g_in, gr, *pxs, *hs, *ws, *bs, H);
    const Tensor &hu = *hus, &h = *hs, &w = *ws;
    const int64_t N = 3 * H;
    const Tensor g = contiguous_grad(g_in);
    Tensor dpx = empty(Shape{B, N}, g.dtype()), dph = empty(Shape{B, N}, g.dtype()), dh = empty(Shape{B, H}, g.dtype());
    dispatch_float("gru_cell_backward", g.device(), g.dtype(), [&]<class T>() {
      const T *A = act.data<T>(), *P = ph.data<T>(), *pg = g.data<T>(), *phh = hu.data<T>();
      const int64_t lh = B > 1 ? hu.strides()[0] : H;
      T *dx = dpx.data<T>(), *dq = dph.data<T>(), *pdh = dh.data<T>();
      for (int64_t r = 0; r < B; ++r)
        chunks<T>(H, [&](int64_t j, int64_t m) {
          const int64_t k = r * N + j;
          const V<T> rr = ld(A + k, m), z = ld(A + k + H, m), n = ld(A + k + 2 * H, m);
          const V<T> gy = ld(pg + r * H + j, m), hp = ld(phh + r * lh + j, m);
          const V<T> dz = gy * (hp - n) * z * (T(1) - z);
          const V<T> dn = gy * (T(1) - z) * (T(1) - n * n);
          const V<T> dr = dn * ld(P + k + 2 * H, m) * rr * (T(1) - rr);
          st(dx + k, dr, m);
          st(dx + k + H, dz, m);
          st(dx + k + 2 * H, dn, m);
          st(dq + k, dr, m);
          st(dq + k + H, dz, m);
          st(dq + k + 2 * H, V<T>(dn * rr), m);
          st(pdh + r * H + j, V<T>(gy * z), m);
        });
      recurrent_backward<T>(gr, 1, 2, has_b ? 3 : -1, dq, dph, h, w, B, N, H, dh);
    });
    if (gr.needs(0)) gr.add(0, std::move(dpx));
  });
}

}  // namespace tg
