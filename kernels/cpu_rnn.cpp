// CPU fused recurrent cell steps (autograd/ops_rnn.cpp records them): the recurrent product,
// both biases and every gate non-linearity of one time step, forward, and the pointwise part of
// the hand-written backward. The pre-activations are written once into one buffer that the GEMM
// accumulates onto (beta = 1: no bias-row copy and no separate add).
#include <algorithm>
#include <cstring>
#include <type_traits>

#include "tapegrad/kernels/cpu.h"
#include "tapegrad/kernels/parallel.h"
#include "tapegrad/kernels/vmath.h"

namespace tg::kern::cpu {
namespace {

// Lanes: float32 runs vmath::kLanes at a time on the vmath vector type, float64 one at a time through std::.
template <class T> using V = std::conditional_t<std::is_same_v<T, float>, vmath::vf, double>;
template <class T> inline constexpr int64_t kLanes = std::is_same_v<T, float> ? vmath::kLanes : 1;
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

// Rows of a step's pointwise work split over the kernel threads from this many elements a part:
// the team spins between the steps' products (kernels/parallel.cpp), so a part of 8k elements
// (a few microseconds of tanh) outlasts handing it over. Rows are independent: the same bits.
constexpr int64_t kRowElements = int64_t{1} << 13;
template <class F> inline void each_row(int64_t B, int64_t per_row, F&& f) {
  parallel_for(B, std::max<int64_t>(1, kRowElements / std::max<int64_t>(per_row, 1)), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) f(r);
  });
}

// pre[r, :] = px[r, :] + b (or px alone, or b alone) for r < B, then pre += h @ w^T; N = G H.
template <class T> void preactivation(T* pre, const CellArgs& a, int64_t N, bool add_px) {
  const T* pb = static_cast<const T*>(a.b);
  const T* pp = add_px ? static_cast<const T*>(a.px) : nullptr;
  const int64_t lp = a.ld_px;
  each_row(a.B, N, [&](int64_t r) {
    T* o = pre + r * N;
    if (pp && pb) for (int64_t j = 0; j < N; ++j) o[j] = pp[r * lp + j] + pb[j];
    else if (pp) for (int64_t j = 0; j < N; ++j) o[j] = pp[r * lp + j];
    else if (pb) for (int64_t j = 0; j < N; ++j) o[j] = pb[j];
    else for (int64_t j = 0; j < N; ++j) o[j] = T(0);
  });
  if constexpr (std::is_same_v<T, float>)
    if (a.w_packed) return gemm_packed(a.B, a.h, a.ld_h, *a.w_packed, 1.0, pre, N);
  gemm<T>(false, true, a.B, N, a.H, static_cast<const T*>(a.h), a.ld_h, static_cast<const T*>(a.w), a.H, T(1), pre, N);
}

template <class T> void rnn_forward(const CellArgs& a, bool relu, void* out_p) {
  const int64_t B = a.B, H = a.H;
  T* o = static_cast<T*>(out_p);
  preactivation<T>(o, a, H, true);
  each_row(B, H, [&](int64_t r) {
    chunks<T>(H, [&](int64_t j, int64_t m) {
      const V<T> x = ld(o + r * H + j, m);
      st(o + r * H + j, relu ? V<T>(x > T(0) ? x : V<T>{}) : V<T>(vmath::tanh(x)), m);
    });
  });
}

template <class T>
void rnn_backward(const void* g_p, const void* y_p, void* d_p, int64_t ld_d, int64_t B, int64_t H, bool relu) {
  const T *pg = static_cast<const T*>(g_p), *py = static_cast<const T*>(y_p);
  T* pd = static_cast<T*>(d_p);
  each_row(B, H, [&](int64_t r) {
    chunks<T>(H, [&](int64_t j, int64_t m) {
      const int64_t k = r * H + j;
      const V<T> gy = ld(pg + k, m), yy = ld(py + k, m);
      st(pd + r * ld_d + j, relu ? V<T>(yy > T(0) ? gy : V<T>{}) : V<T>(gy * (T(1) - yy * yy)), m);
    });
  });
}

template <class T> void lstm_forward(const CellArgs& a, void* act_p, void* out_p) {
  const int64_t B = a.B, H = a.H, N = 4 * H, lc = a.ld_c;
  T* G = static_cast<T*>(act_p);
  preactivation<T>(G, a, N, true);
  const T* pc = static_cast<const T*>(a.c);
  T *ph = static_cast<T*>(out_p), *pcn = ph + B * H;
  each_row(B, N, [&](int64_t r) {
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
}

template <class T>
void lstm_backward(const void* act_p, const void* g_p, const void* out_p, const void* c_p, int64_t lc, void* dG_p,
                   int64_t ld_d, void* dc_p, int64_t B, int64_t H) {
  const int64_t N = 4 * H;
  const T *A = static_cast<const T*>(act_p), *pgh = static_cast<const T*>(g_p), *pgc = pgh + B * H;
  const T *pcn = static_cast<const T*>(out_p) + B * H, *pc = static_cast<const T*>(c_p);
  T *pd = static_cast<T*>(dG_p), *pdc = static_cast<T*>(dc_p);
  each_row(B, N, [&](int64_t r) {
    chunks<T>(H, [&](int64_t j, int64_t m) {
      const T* a = A + r * N + j;
      T* d = pd + r * ld_d + j;
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
  });
}

template <class T> void gru_forward(const CellArgs& a, void* ph_p, void* act_p, void* out_p) {
  const int64_t B = a.B, H = a.H, N = 3 * H;
  T* P = static_cast<T*>(ph_p);
  preactivation<T>(P, a, N, false);
  const T *pp = static_cast<const T*>(a.px), *phh = static_cast<const T*>(a.h);
  const int64_t lp = a.ld_px, lh = a.ld_h;
  T *A = static_cast<T*>(act_p), *o = static_cast<T*>(out_p);
  each_row(B, N, [&](int64_t r) {
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
}

template <class T>
void gru_backward(const void* act_p, const void* ph_p, const void* g_p, const void* h_p, int64_t lh, void* dpx_p,
                  int64_t ld_d, void* dph_p, void* dh_p, int64_t B, int64_t H) {
  const int64_t N = 3 * H;
  const T *A = static_cast<const T*>(act_p), *P = static_cast<const T*>(ph_p), *pg = static_cast<const T*>(g_p),
          *phh = static_cast<const T*>(h_p);
  T *dx = static_cast<T*>(dpx_p), *dq = static_cast<T*>(dph_p), *pdh = static_cast<T*>(dh_p);
  each_row(B, N, [&](int64_t r) {
    chunks<T>(H, [&](int64_t j, int64_t m) {
      const int64_t k = r * N + j;
      const V<T> rr = ld(A + k, m), z = ld(A + k + H, m), n = ld(A + k + 2 * H, m);
      const V<T> gy = ld(pg + r * H + j, m), hp = ld(phh + r * lh + j, m);
      const V<T> dz = gy * (hp - n) * z * (T(1) - z);
      const V<T> dn = gy * (T(1) - z) * (T(1) - n * n);
      const V<T> dr = dn * ld(P + k + 2 * H, m) * rr * (T(1) - rr);
      T* x = dx + r * ld_d + j;
      st(x, dr, m);
      st(x + H, dz, m);
      st(x + 2 * H, dn, m);
      st(dq + k, dr, m);
      st(dq + k + H, dz, m);
      st(dq + k + 2 * H, V<T>(dn * rr), m);
      st(pdh + r * H + j, V<T>(gy * z), m);
    });
  });
}

template <class T> constexpr RnnKernels make_rnn() {
  return {&rnn_forward<T>, &rnn_backward<T>, &lstm_forward<T>, &lstm_backward<T>, &gru_forward<T>, &gru_backward<T>};
}

}  // namespace

constinit const RnnKernels kRnnF32 = make_rnn<float>();
constinit const RnnKernels kRnnF64 = make_rnn<double>();

}  // namespace tg::kern::cpu
