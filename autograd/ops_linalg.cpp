// Matrix products: shape checks and the recorded ops; the products themselves are the kernel
// table's gemm (kernels/cpu_gemm.cpp). A transposed view is passed as a transpose flag, never copied.
#include <algorithm>

#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

namespace tg {
using namespace detail;

namespace {

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
  Operand oa = operand(a, m, k), ob = operand(b, k, n);
  if (m == 0 || n == 0) return;
  const auto gemm = float_kernels_of("matmul", a).linalg->gemm;
  const int64_t elem = static_cast<int64_t>(dtype_size(a.dtype()));
  char* pa = static_cast<char*>(mem(a));
  char* pb = static_cast<char*>(mem(b));
  char* pc = static_cast<char*>(mem(c));
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t a_off = batched && a.size(0) > 1 ? i * a.strides()[0] : 0;
    const int64_t b_off = batched && b.size(0) > 1 ? i * b.strides()[0] : 0;
    const int64_t c_off = batched ? i * c.strides()[0] : 0;
    gemm(oa.trans, ob.trans, m, n, k, pa + a_off * elem, oa.ld, pb + b_off * elem, ob.ld, beta, pc + c_off * elem, n);
  }
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
  kern::kernels_for(Device::CPU, dtype_of<T>()).linalg->gemm(ta, tb, m, n, k, a, lda, b, ldb, beta, c, ldc);
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
  float_kernels_of("addmm_tn", c).linalg->gemm(true, false, P, Q, M, mem(a), row_stride(a), mem(b), row_stride(b), beta,
                                                mem(c), Q);
}
}  // namespace detail

void set_num_threads(int n) {
  if (n < 1) throw std::invalid_argument(fmt::format("set_num_threads: need at least 1 thread, got {}", n));
  kern::set_kernel_threads(n);
}
int get_num_threads() { return kern::kernel_threads(); }
int available_cores() { return kern::available_cores(); }

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
  const kern::KernelTable& k = float_kernels_of("linear", x);
  if (has_bias) {  // every output row starts as the bias
    const Tensor bc = dense(bias);
    k.elementwise->repeat_row(mem(out), mem(bc), nbytes_of(bc), rows);
  }
  k.linalg->gemm(false, true, rows, outf, in, mem(x2), row_stride(x2), mem(w), std::max<int64_t>(in, 1),
                 has_bias ? 1.0 : 0.0, mem(out), std::max<int64_t>(outf, 1));
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
    const kern::KernelTable& k = float_kernels_of("linear_backward", g);
    if (gr.needs(0)) {
      Tensor dx = empty(xs, g.dtype());
      k.linalg->gemm(false, false, rows, in, outf, mem(g), std::max<int64_t>(outf, 1), mem(ws.get()),
                     std::max<int64_t>(in, 1), 0.0, mem(dx), std::max<int64_t>(in, 1));
      gr.add(0, std::move(dx));
    }
    if (gr.needs(1)) gr.add_product(1, g, *x2s);  // x is read only for the weight's gradient (as in PyTorch)
    if (has_bias && gr.needs(2)) {
      Tensor gb = empty(Shape{outf}, g.dtype());
      k.reduce->column_sums(mem(g), rows, outf, outf, mem(gb));
      gr.add(2, std::move(gb));
    }
  });
}

}  // namespace tg
