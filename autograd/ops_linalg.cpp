// Matrix products through CBLAS. A transposed view is passed as a transpose flag, never copied.
#include <cblas.h>

#include <atomic>
#include <cstdlib>

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

template <class T>
void gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  auto fa = ta ? CblasTrans : CblasNoTrans, fb = tb ? CblasTrans : CblasNoTrans;
  if constexpr (std::is_same_v<T, float>)
    cblas_sgemm(CblasRowMajor, fa, fb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
  else
    cblas_dgemm(CblasRowMajor, fa, fb, int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

// Below this many multiply-adds a plain loop beats the BLAS call (dispatch and packing cost
// more than the arithmetic): the toy benchmark's 1x16x16 products.
constexpr int64_t kSmallGemm = 4096;

template <class T>
void small_gemm(bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* a, int64_t lda, const T* b, int64_t ldb,
                T beta, T* c, int64_t ldc) {
  for (int64_t i = 0; i < m; ++i) {
    T* crow = c + i * ldc;
    if (beta == T(0)) for (int64_t j = 0; j < n; ++j) crow[j] = T(0);
    else if (beta != T(1)) for (int64_t j = 0; j < n; ++j) crow[j] *= beta;
    for (int64_t p = 0; p < k; ++p) {
      const T av = ta ? a[p * lda + i] : a[i * lda + p];
      if (!tb) {
        const T* brow = b + p * ldb;
        for (int64_t j = 0; j < n; ++j) crow[j] += av * brow[j];
      } else {
        for (int64_t j = 0; j < n; ++j) crow[j] += av * b[j * ldb + p];
      }
    }
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
void addmm_tn(Tensor& c, const Tensor& a, const Tensor& b, double beta) {
  matmul_into(a.detach().t(), b.detach(), c, beta);
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
  return record("matmul", {a, b}, out, [a, b](const Tensor& g, Grads& gr) {
    if (gr.needs(0)) gr.add(0, sum_to(matmul_2d_or_3d(g, transpose(b, -1, -2)), a.shape()));
    if (gr.needs(1)) {
      if (a.dim() == 2) gr.add_product(1, a, g);
      else gr.add(1, sum_to(matmul_2d_or_3d(transpose(a, -1, -2), g), b.shape()));
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
  Tensor x2 = x.detach().reshape(Shape{-1, in});
  Shape out_shape = x.shape();
  out_shape[out_shape.size() - 1] = outf;
  Tensor out2 = empty(Shape{x2.size(0), outf}, x.dtype());
  if (bias.defined()) {  // seed the rows with the bias, then accumulate the product on top (beta = 1)
    copy_(out2, bias.detach());
    matmul_into(x2, weight.detach().t(), out2, 1.0);
  } else {
    matmul_into(x2, weight.detach().t(), out2, 0.0);
  }
  Tensor out = make_view(out2, out_shape, contiguous_strides(out_shape), 0);
  return record("linear", {x, weight, bias}, out, [x2, weight, has_bias = bias.defined(), xs = x.shape()](
                                                       const Tensor& g, Grads& gr) {
    Tensor g2 = g.reshape(Shape{-1, g.size(-1)});
    if (gr.needs(0)) gr.add(0, matmul_2d_or_3d(g2, weight).reshape(xs));
    if (gr.needs(1)) gr.add_product(1, g2, x2);
    if (has_bias && gr.needs(2)) gr.add(2, sum(g2, {0}));
  });
}

}  // namespace tg
