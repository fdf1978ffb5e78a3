// Matrix products through CBLAS. A transposed view is passed as a transpose flag, never copied.
#include <cblas.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "autograd/elementwise.h"
#include "autograd/ops.h"

namespace tg {
using namespace detail;

namespace {

std::atomic<int> g_threads{0};  // 0: not chosen yet (atomic: first matmuls may race on threads)

void ensure_threads() {
  if (g_threads) return;
  const char* env = std::getenv("TG_NUM_THREADS");
  set_num_threads(env && std::atoi(env) > 0 ? std::atoi(env) : 1);
}

Tensor dense(const Tensor& t) { return t.is_contiguous() ? t : t.detach().contiguous(); }

// A 2-D operand as BLAS sees it: pointer, transpose flag, leading dimension.
struct Operand {
  Tensor keep;  // holds storage alive (and any copy we had to make)
  bool trans = false;
  int64_t ld = 1;
};

// rows x cols matrix at `base` with strides (rs, cs); copies only when neither layout is BLAS-able.
Operand as_operand(const Tensor& t, int64_t rows, int64_t cols, int64_t rs, int64_t cs) {
  if (cs == 1 && (rs >= std::max<int64_t>(1, cols) || rows == 1)) return {t, false, std::max<int64_t>({rs, cols, 1})};
  if (rs == 1 && (cs >= std::max<int64_t>(1, rows) || cols == 1)) return {t, true, std::max<int64_t>({cs, rows, 1})};
  return {};
}

// CBLAS takes int sizes: refuse what does not fit instead of truncating (every cblas_ call is here).
void check_blas_sizes(int64_t m, int64_t n, int64_t k, int64_t lda, int64_t ldb, int64_t ldc) {
  constexpr int64_t kMax = std::numeric_limits<int>::max();
  if (m > kMax || n > kMax || k > kMax || lda > kMax || ldb > kMax || ldc > kMax)
    throw std::length_error(fmt::format("matmul: matrix product too large for BLAS (M={}, N={}, K={}, lda={}, ldb={}, "
                                        "ldc={}; each must be at most 2^31-1 = {})",
                                        m, n, k, lda, ldb, ldc, kMax));
}

template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  check_blas_sizes(m, n, k, lda, ldb, ldc);
  auto fa = ta ? CblasTrans : CblasNoTrans, fb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, fa, fb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
  else
    cblas_dgemm(CblasRowMajor, fa, fb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// Below this many multiply-adds a plain loop beats the BLAS call (dispatch and packing cost
// more than the arithmetic): the toy benchmark's 1x16x16 products.
constexpr int64_t kSmallGemm = 4096;

// dot(a, b) over k elements; float32 runs 8 lanes (a different summation order than BLAS, which
// is fine: no caller depends on bit-identical products).
template <class T> inline T dot(const T* a, const T* b, int64_t k) {
  int64_t p = 0;
  T s = 0;
  if constexpr (std::is_same_v<T, float>) {
    using f8 = float __attribute__((vector_size(32)));
    if (k >= 8) {
      f8 acc{};
      for (; p + 8 <= k; p += 8) {
        f8 va, vb;
        std::memcpy(&va, a + p, sizeof va);
        std::memcpy(&vb, b + p, sizeof vb);
        acc += va * vb;
      }
      s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    }
  }
  for (; p < k; ++p) s += a[p] * b[p];
  return s;
}
// c[j] = av * b[j] (kSet) or c[j] += av * b[j], 8 float lanes at a time (written out: at these
// sizes the auto-vectoriser's alias checks and epilogues cost more than the arithmetic).
template <bool kSet, class T> inline void axpy(T* c, const T* b, T av, int64_t n) {
  int64_t j = 0;
  if constexpr (std::is_same_v<T, float>) {
    using f8 = float __attribute__((vector_size(32)));
    const f8 va = f8{} + av;
    for (; j + 8 <= n; j += 8) {
      f8 vb, vc;
      std::memcpy(&vb, b + j, sizeof vb);
      if constexpr (kSet) {
        vc = va * vb;
      } else {
        std::memcpy(&vc, c + j, sizeof vc);
        vc += va * vb;
      }
      std::memcpy(c + j, &vc, sizeof vc);
    }
  }
  for (; j < n; ++j) c[j] = kSet ? av * b[j] : c[j] + av * b[j];
}

// c[i, :] (beta)= sum_p a(i, p) * b[p, :] for rows of exactly 8 * NV floats, accumulated in
// registers; a(i, p) is a[p * lda + i] when ta, else a[i * lda + p].
template <int NV>
void rows_in_registers(bool ta, int64_t m, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb,
                       float beta, float* c, int64_t ldc) {
  using f8 = float __attribute__((vector_size(32)));
  for (int64_t i = 0; i < m; ++i) {
    float* crow = c + i * ldc;
    f8 acc[NV];
    for (int v = 0; v < NV; ++v) {
      acc[v] = f8{};
      if (beta != 0.0f) {
        std::memcpy(&acc[v], crow + 8 * v, sizeof(f8));
        if (beta != 1.0f) acc[v] *= beta;
      }
    }
    const int64_t a_step = ta ? lda : 1;
    const float* ap = ta ? a + i : a + i * lda;
    for (int64_t p = 0; p < k; ++p) {
      const f8 av = f8{} + ap[p * a_step];
      const float* brow = b + p * ldb;
      for (int v = 0; v < NV; ++v) {
        f8 vb;
        std::memcpy(&vb, brow + 8 * v, sizeof vb);
        acc[v] += av * vb;
      }
    }
    for (int v = 0; v < NV; ++v) std::memcpy(crow + 8 * v, &acc[v], sizeof(f8));
  }
}

template <class T>
void small_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                T beta, T* c, int64_t ldc) {
  if (!ta && tb) {  // a @ b^T (the recurrent h W^T, x W^T): contiguous dot products
    for (int64_t i = 0; i < m; ++i) {
      const T* arow = a + i * lda;
      T* crow = c + i * ldc;
      for (int64_t j = 0; j < n; ++j) {
        const T s = dot(arow, b + j * ldb, k);
        crow[j] = beta == T(0) ? s : (beta == T(1) ? crow[j] + s : beta * crow[j] + s);
      }
    }
    return;
  }
  if (tb) {  // a^T @ b^T: rare, plain loops
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        T s = 0;
        for (int64_t p = 0; p < k; ++p) s += a[p * lda + i] * b[j * ldb + p];
        T& cij = c[i * ldc + j];
        cij = beta == T(0) ? s : beta * cij + s;
      }
    return;
  }
  // a @ b and a^T @ b: rows of c as sums of scaled rows of b
  if constexpr (std::is_same_v<T, float>) {
    // Rows of up to 32 floats stay in registers across all k terms (one load of c, not k).
    switch (n) {
      case 8: return rows_in_registers<1>(ta, m, k, a, lda, b, ldb, beta, c, ldc);
      case 16: return rows_in_registers<2>(ta, m, k, a, lda, b, ldb, beta, c, ldc);
      case 24: return rows_in_registers<3>(ta, m, k, a, lda, b, ldb, beta, c, ldc);
      case 32: return rows_in_registers<4>(ta, m, k, a, lda, b, ldb, beta, c, ldc);
      default: break;
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    T* crow = c + i * ldc;
    int64_t p = 0;
    if (beta == T(0)) {
      axpy<true>(crow, b, ta ? a[i] : a[i * lda], n);  // k >= 1 here
      p = 1;
    } else if (beta != T(1)) {
      for (int64_t j = 0; j < n; ++j) crow[j] *= beta;
    }
    for (; p < k; ++p) axpy<false>(crow, b + p * ldb, ta ? a[p * lda + i] : a[i * lda + p], n);
  }
}

// c[batch] (+)= a[batch] @ b[batch] for 2-D or 3-D views (3-D batch dims may be 1 to broadcast).
void matmul_into(const Tensor& a_in, const Tensor& b_in, Tensor& c, double beta) {
  Tensor a = a_in, b = b_in;
  const bool batched = a.dim() == 3;
  const int64_t m = a.size(-2), k = a.size(-1), n = b.size(-1);
  const int64_t batch = batched ? c.size(0) : 1;
  auto operand = [&](Tensor& t, int64_t rows, int64_t cols) {
    const int64_t r = t.dim();
    Operand op = as_operand(t, rows, cols, t.strides()[r - 2], t.strides()[r - 1]);
    if (!op.keep.defined()) {
      t = t.contiguous();
      op = as_operand(t, rows, cols, t.strides()[r - 2], t.strides()[r - 1]);
    }
    return op;
  };
  ensure_threads();
  Operand oa = operand(a, m, k), ob = operand(b, k, n);
  if (m == 0 || n == 0) return;
  dispatch_float("matmul", a.device(), a.dtype(), [&]<class T>() {
    for (int64_t i = 0; i < batch; ++i) {
      const T* pa = a.data<T>() + (batched && a.size(0) > 1 ? i * a.strides()[0] : 0);
      const T* pb = b.data<T>() + (batched && b.size(0) > 1 ? i * b.strides()[0] : 0);
      T* pc = c.data<T>() + (batched ? i * c.strides()[0] : 0);
      if (k == 0) {
        if (beta == 0) for (int64_t j = 0; j < m * n; ++j) pc[j] = 0;
        continue;
      }
      if (m * n * k <= kSmallGemm) {
        small_gemm<T>(oa.trans, ob.trans, m, n, k, pa, oa.ld, pb, ob.ld, T(beta), pc, n);
      } else {
        gemm<T>(oa.trans, ob.trans, m, n, k, T(1), pa, oa.ld, pb, ob.ld, T(beta), pc, n);
      }
    }
  });
}

Tensor matmul_2d_or_3d(const Tensor& a, const Tensor& b) {
  Shape s;
  if (a.dim() == 3) s = Shape{std::max(a.size(0), b.size(0)), a.size(1), b.size(2)};
  else s = Shape{a.size(0), b.size(1)};
  Tensor out = empty(s, a.dtype());
  matmul_into(a, b, out, 0.0);
  return out;
}

}  // namespace

namespace detail {
template <class T>
void gemm_raw(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
              T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {
    if (beta == T(0)) for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = T(0);
    else if (beta != T(1)) for (int64_t i = 0; i < m; ++i) for (int64_t j = 0; j < n; ++j) c[i * ldc + j] *= beta;
    return;
  }
  int64_t mn = 0, mnk = 0;
  const bool huge = __builtin_mul_overflow(m, n, &mn) || __builtin_mul_overflow(mn, k, &mnk);
  if (!huge && mnk <= kSmallGemm) return small_gemm<T>(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
  ensure_threads();
  gemm<T>(ta, tb, m, n, k, T(1), a, std::max<int64_t>(lda, 1), b, std::max<int64_t>(ldb, 1), beta, c, ldc);
}
template void gemm_raw<float>(bool, bool, int64_t, int64_t, int64_t, const float*, int64_t, const float*, int64_t,
                              float, float*, int64_t);
template void gemm_raw<double>(bool, bool, int64_t, int64_t, int64_t, const double*, int64_t, const double*, int64_t,
                               double, double*, int64_t);

Tensor blas_rows(const Tensor& t) {
  const bool ok = t.dim() == 2 && (t.size(1) <= 1 || t.strides()[1] == 1) &&
                  (t.size(0) <= 1 || t.strides()[0] >= std::max<int64_t>(t.size(1), 1));
  return ok ? t : t.detach().contiguous();
}
int64_t row_stride(const Tensor& t) { return t.size(0) > 1 ? t.strides()[0] : std::max<int64_t>(t.size(1), 1); }

void addmm_tn(Tensor& c, const Tensor& a_in, const Tensor& b_in, double beta) {
  const Tensor a = blas_rows(a_in), b = blas_rows(b_in);
  const int64_t M = a.size(0), P = a.size(1), Q = b.size(1);
  dispatch_float("addmm_tn", c.device(), c.dtype(), [&]<class T>() {
    gemm_raw<T>(true, false, P, Q, M, a.data<T>(), row_stride(a), b.data<T>(), row_stride(b), T(beta), c.data<T>(), Q);
  });
}
}  // namespace detail

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument(fmt::format("set_num_threads: need at least 1 thread, got {}", n));
  g_threads = n;
  openblas_set_num_threads(n);
}
int get_num_threads() {
  ensure_threads();
  return g_threads;
}

TG_REGISTER_OP("matmul", "linalg");
Tensor matmul(const Tensor& a, const Tensor& b) {
  check_same_dtype("matmul", a, b);
  if (a.dim() < 2 || b.dim() < 2)
    throw std::invalid_argument(fmt::format("matmul: needs matrices (rank >= 2), got {} @ {}; use unsqueeze(0) to "
                                            "make a vector a 1xN matrix",
                                            a.shape().str(), b.shape().str()));
  if (a.size(-1) != b.size(-2))
    throw std::invalid_argument(fmt::format("matmul: inner dimensions differ: {} @ {} ({} vs {})", a.shape().str(),
                                            b.shape().str(), a.size(-1), b.size(-2)));
  if (b.dim() == 2 && a.dim() > 2) {  // N-D @ 2-D: fold the leading dims into rows
    Shape lead(a.shape().begin(), a.shape().end() - 1);
    Tensor flat = matmul(a.reshape(Shape{-1, a.size(-1)}), b);
    lead.push_back(b.size(1));
    return flat.reshape(lead);
  }
  if (a.dim() != b.dim() || a.dim() > 3 ||
      (a.dim() == 3 && a.size(0) != b.size(0) && a.size(0) != 1 && b.size(0) != 1))
    throw std::invalid_argument(fmt::format("matmul: unsupported shapes {} @ {}; supported: 2-D @ 2-D, N-D @ 2-D, "
                                            "3-D @ 3-D with equal (or 1) batch",
                                            a.shape().str(), b.shape().str()));
  Tensor out = matmul_2d_or_3d(a, b);
  return record("matmul", {a, b}, out, [as = Saved(a, 0), bs = Saved(b, 1)](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: recorded products
      if (gr.needs(0)) gr.add(0, sum_to(matmul(g, transpose(*bs, -1, -2)), as.shape()));
      if (gr.needs(1)) gr.add(1, sum_to(matmul(transpose(*as, -1, -2), g), bs.shape()));
      return;
    }
    if (gr.needs(0)) gr.add(0, sum_to(matmul_2d_or_3d(g, transpose(*bs, -1, -2)), as.shape()));
    if (gr.needs(1)) {
      if (as.dim() == 2) gr.add_product(1, *as, g);
      else gr.add(1, sum_to(matmul_2d_or_3d(transpose(*as, -1, -2), g), bs.shape()));
    }
  });
}

TG_REGISTER_OP("linear", "linalg");
Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias) {
  check_same_dtype("linear", x, weight);
  if (weight.dim() != 2 || x.dim() < 1 || x.size(-1) != weight.size(1))
    throw std::invalid_argument(fmt::format("linear: input {} does not match weight {} (expected input [..., {}] and "
                                            "weight [out_features, in_features])",
                                            x.shape().str(), weight.shape().str(),
                                            weight.dim() == 2 ? weight.size(1) : -1));
  if (bias.defined()) {
    check_same_dtype("linear", x, bias);
    if (bias.dim() != 1 || bias.size(0) != weight.size(0))
      throw std::invalid_argument(fmt::format("linear: bias {} must be [{}] for weight {}", bias.shape().str(),
                                              weight.size(0), weight.shape().str()));
  }
  const int64_t in = weight.size(1), outf = weight.size(0);
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < x.dim(); ++d) rows *= x.size(d);
  // x as [rows, in] with unit-stride rows (a copy only for a strided x), the output written once:
  // bias rows, then the product accumulated on top (beta = 1). No transposed views are built.
  Tensor x2 = x.dim() == 2 ? blas_rows(x) : dense(x).detach().reshape(Shape{rows, in});
  const Tensor w = dense(weight);
  Shape out_shape = x.shape();
  out_shape[out_shape.size() - 1] = outf;
  Tensor out = empty(out_shape, x.dtype());
  const bool has_bias = bias.defined();
  dispatch_float("linear", x.device(), x.dtype(), [&]<class T>() {
    T* o = out.data<T>();
    if (has_bias) {
      const Tensor bc = dense(bias);
      const T* pb = bc.data<T>();
      for (int64_t r = 0; r < rows; ++r) std::memcpy(o + r * outf, pb, sizeof(T) * static_cast<size_t>(outf));
    }
    gemm_raw<T>(false, true, rows, outf, in, x2.data<T>(), row_stride(x2), w.data<T>(), std::max<int64_t>(in, 1),
                T(has_bias ? 1 : 0), o, std::max<int64_t>(outf, 1));
  });
  return record("linear", {x, weight, bias}, out, [x2s = Saved(x2, 0), ws = Saved(w, 1), xo = Saved(x, 0), wo = Saved(weight, 1),
                                                   has_bias, xs = x.shape(), rows, in, outf](const Tensor& g_in,
                                                                                             Grads& gr) {
    if (grad_enabled()) {  // create_graph: the same three gradients in recorded ops
      const Tensor g2 = g_in.reshape(Shape{rows, outf});
      // The original x and weight (x2 and w are detached BLAS-ready copies or views of them).
      if (gr.needs(0)) gr.add(0, matmul(g2, *wo).reshape(xs));
      if (gr.needs(1)) gr.add(1, matmul(transpose(g2, 0, 1), xo.get().reshape(Shape{rows, in})));
      if (has_bias && gr.needs(2)) gr.add(2, sum(g2, {0}));
      return;
    }
    Tensor g = dense(g_in);
    if (g.dim() != 2) g = g.reshape(Shape{rows, outf});
    dispatch_float("linear_backward", g.device(), g.dtype(), [&]<class T>() {
      const T* pg = g.data<T>();
      if (gr.needs(0)) {
        Tensor dx = empty(xs, g.dtype());
        gemm_raw<T>(false, false, rows, in, outf, pg, std::max<int64_t>(outf, 1), ws.get().data<T>(), std::max<int64_t>(in, 1),
                    T(0), dx.data<T>(), std::max<int64_t>(in, 1));
        gr.add(0, std::move(dx));
      }
      if (gr.needs(1)) gr.add_product(1, g, *x2s);  // x is read only for the weight's gradient (as in PyTorch)
      if (has_bias && gr.needs(2)) {
        Tensor gb = zeros(Shape{outf}, g.dtype());
        T* o = gb.data<T>();
        for (int64_t r = 0; r < rows; ++r) axpy<false>(o, pg + r * outf, T(1), outf);
        gr.add(2, std::move(gb));
      }
    });
  });
}

}  // namespace tg
