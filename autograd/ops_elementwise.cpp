// Elementwise ops: forward kernel and backward side by side.
#include <cmath>

#include "autograd/elementwise.h"
#include "autograd/vmath.h"
#include "autograd/ops.h"

namespace tg {
using namespace detail;

namespace detail {

Shape broadcast_shapes(const char* op, const Shape& a, const Shape& b) {
  Shape out;
  const int64_t r = std::max(a.size(), b.size());
  out.resize(r);
  for (int64_t i = 0; i < r; ++i) {
    int64_t da = i - (r - a.size()) >= 0 ? a[i - (r - a.size())] : 1;
    int64_t db = i - (r - b.size()) >= 0 ? b[i - (r - b.size())] : 1;
    if (da != db && da != 1 && db != 1)
      throw std::invalid_argument(fmt::format("{}: shapes {} and {} do not broadcast (dim {}: {} vs {}); "
                                              "sizes must match or be 1",
                                              op, a.str(), b.str(), i, da, db));
    out[i] = da == 1 ? db : da;
  }
  return out;
}

void check_same_dtype(const char* op, const Tensor& a, const Tensor& b) {
  if (!a.defined() || !b.defined()) throw std::invalid_argument(std::string(op) + ": undefined tensor argument");
  if (a.dtype() != b.dtype())
    throw std::invalid_argument(fmt::format("{}: dtype mismatch, {} {} vs {} {}; convert one with .to()", op,
                                            a.shape().str(), dtype_name(a.dtype()), b.shape().str(),
                                            dtype_name(b.dtype())));
}

int64_t normalize_dim(const char* op, int64_t dim, int64_t rank) {
  int64_t r = std::max<int64_t>(rank, 1);
  if (dim < -r || dim >= r)
    throw std::out_of_range(fmt::format("{}: dim {} out of range for a tensor of rank {} (valid: [{}, {}])", op, dim,
                                        rank, -r, r - 1));
  return dim < 0 ? dim + r : dim;
}

}  // namespace detail

namespace {

template <class F>
Tensor binary(const char* op, const Tensor& a, const Tensor& b, F f) {
  check_same_dtype(op, a, b);
  Shape s = broadcast_shapes(op, a.shape(), b.shape());
  return dispatch(op, a.device(), a.dtype(), [&]<class T>() { return binary_map<T>(a, b, s, a.dtype(), f); });
}
template <class F>
Tensor binary_float(const char* op, const Tensor& a, const Tensor& b, F f) {
  check_same_dtype(op, a, b);
  Shape s = broadcast_shapes(op, a.shape(), b.shape());
  return dispatch_float(op, a.device(), a.dtype(), [&]<class T>() { return binary_map<T>(a, b, s, a.dtype(), f); });
}
template <class F>
Tensor unary_float(const char* op, const Tensor& x, F f) {
  return dispatch_float(op, x.device(), x.dtype(), [&]<class T>() { return unary_map<T>(x, f); });
}
// exp/tanh/sigmoid: float32 goes through the SIMD kernels of vmath.h, float64 through std::.
template <class VecF, class ScalarF>
Tensor unary_transcendental(const char* op, const Tensor& x_in, VecF vec, ScalarF scalar_f) {
  if (x_in.dtype() != DType::Float32) return unary_float(op, x_in, scalar_f);
  Tensor x = x_in.is_contiguous() ? x_in : x_in.contiguous();
  Tensor out = empty(x.shape(), x.dtype());
  vmath::map(x.data<float>(), out.data<float>(), x.numel(), vec);
  return out;
}

template <class F>
Tensor unary_any(const char* op, const Tensor& x, F f) {
  return dispatch(op, x.device(), x.dtype(), [&]<class T>() { return unary_map<T>(x, f); });
}

}  // namespace

TG_REGISTER_OP("add", "elementwise");
Tensor add(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return add(promote_to(a, b), promote_to(b, a));
  Tensor out = binary("add", a, b, [](auto x, auto y) { return x + y; });
  return record("add", {a, b}, out, [sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& gr) {
    if (gr.needs(0)) gr.add(0, sum_to(g, sa));
    if (gr.needs(1)) gr.add(1, sum_to(g, sb));
  });
}

TG_REGISTER_OP("sub", "elementwise");
Tensor sub(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return sub(promote_to(a, b), promote_to(b, a));
  Tensor out = binary("sub", a, b, [](auto x, auto y) { return x - y; });
  return record("sub", {a, b}, out, [sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& gr) {
    if (gr.needs(0)) gr.add(0, sum_to(g, sa));
    if (gr.needs(1)) gr.add(1, sum_to(neg(g), sb));
  });
}

TG_REGISTER_OP("mul", "elementwise");
Tensor mul(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return mul(promote_to(a, b), promote_to(b, a));
  Tensor out = binary("mul", a, b, [](auto x, auto y) { return x * y; });
  return record("mul", {a, b}, out, [a = Saved(a, 0), b = Saved(b, 1)](const Tensor& g, Grads& gr) {
    if (gr.needs(0)) gr.add(0, sum_to(mul(g, *b), a.shape()));
    if (gr.needs(1)) gr.add(1, sum_to(mul(g, *a), b.shape()));
  });
}

TG_REGISTER_OP("div", "elementwise");
// True division: int / int is float32, as in PyTorch. Unlike PyTorch (inf / nan), an integer
// divisor that is zero throws std::domain_error: the only way to get inf from integers is to ask
// for it (convert to float first). A float divisor of 0 gives inf / nan as usual.
Tensor div(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return div(promote_to(a, b), promote_to(b, a));
  if (a.defined() && b.defined() && !is_floating(a.dtype()) && !is_floating(b.dtype())) {
    Tensor bc = b.contiguous();
    const int64_t* pb = bc.data<int64_t>();
    for (int64_t i = 0, n = bc.numel(); i < n; ++i)
      if (pb[i] == 0)
        throw std::domain_error(fmt::format("div: integer division by zero (divisor {} int64, element {} is 0); "
                                            "convert to float first if inf is wanted",
                                            b.shape().str(), i));
    return div(a.to(DType::Float32), b.to(DType::Float32));
  }
  Tensor out = binary("div", a, b, [](auto x, auto y) { return x / y; });
  return record("div", {a, b}, out, [sa = a.shape(), b = Saved(b, 1), out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    if (gr.needs(0)) gr.add(0, sum_to(div(g, *b), sa));
    if (gr.needs(1)) gr.add(1, sum_to(neg(div(mul(g, out.connected()), *b)), b.shape()));
  });
}

TG_REGISTER_OP("neg", "elementwise");
Tensor neg(const Tensor& x) {
  Tensor out = unary_any("neg", x, [](auto v) { return -v; });
  return record("neg", {x}, out, [](const Tensor& g, Grads& gr) { gr.add(0, neg(g)); });
}

TG_REGISTER_OP("pow", "elementwise");
Tensor pow(const Tensor& x, double e) {
  if (x.defined() && !is_floating(x.dtype())) return pow(x.to(DType::Float32), e);  // int ** float -> float32
  Tensor out = unary_float("pow", x, [e](auto v) { return static_cast<decltype(v)>(std::pow(v, e)); });
  return record("pow", {x}, out, [x = Saved(x, 0), e](const Tensor& g, Grads& gr) {
    gr.add(0, e == 0 ? zeros_like(g) : mul(g, pow(*x, e - 1) * e));
  });
}

TG_REGISTER_OP("pow_tensor", "elementwise");
Tensor pow(const Tensor& base, const Tensor& exponent) {
  if (mixed_int_float(base, exponent)) return pow(promote_to(base, exponent), promote_to(exponent, base));
  Tensor out = binary_float("pow", base, exponent, [](auto x, auto y) { return std::pow(x, y); });
  return record("pow_tensor", {base, exponent}, out, [base_s = Saved(base, 0), exponent_s = Saved(exponent, 1), out_s = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    const Tensor& base = *base_s;
    const Tensor& exponent = *exponent_s;
    if (gr.needs(0)) gr.add(0, sum_to(mul(g, where(exponent, mul(exponent, pow(base, exponent - 1.0)), zeros_like(exponent))), base.shape()));
    if (gr.needs(1)) {
      // d/dy x^y = x^y log x, which is 0 * -inf = NaN at x = 0; the limit (PyTorch's value) is 0 for y >= 0.
      Tensor at_zero = binary("pow_backward", base, exponent, [](auto x, auto y) { return decltype(x)(x == 0 && y >= 0); });
      const Tensor out = out_s.connected();
      gr.add(1, sum_to(mul(g, where(at_zero, zeros_like(out), mul(out, log(base)))), exponent.shape()));
    }
  });
}

TG_REGISTER_OP("exp", "elementwise");
Tensor exp(const Tensor& x) {
  Tensor out = unary_transcendental("exp", x, [](vmath::f8 v) { return vmath::exp(v); }, [](auto v) { return std::exp(v); });
  return record("exp", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) { gr.add(0, mul(g, out.connected())); });
}

TG_REGISTER_OP("log", "elementwise");
Tensor log(const Tensor& x) {
  Tensor out = unary_float("log", x, [](auto v) { return std::log(v); });
  return record("log", {x}, out, [x = Saved(x, 0)](const Tensor& g, Grads& gr) { gr.add(0, div(g, *x)); });
}

TG_REGISTER_OP("sqrt", "elementwise");
Tensor sqrt(const Tensor& x) {
  Tensor out = unary_float("sqrt", x, [](auto v) { return std::sqrt(v); });
  return record("sqrt", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) { gr.add(0, div(g, out.connected() * 2.0)); });
}

TG_REGISTER_OP("abs", "elementwise");
Tensor abs(const Tensor& x) {
  Tensor out = unary_any("abs", x, [](auto v) { return v < 0 ? -v : v; });
  return record("abs", {x}, out, [x = Saved(x, 0)](const Tensor& g, Grads& gr) {
    Tensor sign = unary_any("abs", *x, [](auto v) { return decltype(v)((v > 0) - (v < 0)); });
    gr.add(0, mul(g, sign));
  });
}

TG_REGISTER_OP("tanh", "elementwise");
Tensor tanh(const Tensor& x) {
  Tensor out = unary_transcendental("tanh", x, [](vmath::f8 v) { return vmath::tanh(v); }, [](auto v) { return std::tanh(v); });
  return record("tanh", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: g (1 - y^2) in recorded ops
      const Tensor y = out.connected();
      return gr.add(0, mul(g, 1.0 - y * y));
    }
    gr.add(0, binary_float("tanh_backward", g, *out, [](auto d, auto y) { return d * (1 - y * y); }));
  });
}

TG_REGISTER_OP("sigmoid", "elementwise");
Tensor sigmoid(const Tensor& x) {
  Tensor out = unary_transcendental("sigmoid", x, [](vmath::f8 v) { return vmath::sigmoid(v); }, [](auto v) { return decltype(v)(1) / (1 + std::exp(-v)); });
  return record("sigmoid", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: g y (1 - y) in recorded ops
      const Tensor y = out.connected();
      return gr.add(0, mul(g, y * (1.0 - y)));
    }
    gr.add(0, binary_float("sigmoid_backward", g, *out, [](auto d, auto y) { return d * y * (1 - y); }));
  });
}

TG_REGISTER_OP("relu", "elementwise");
Tensor relu(const Tensor& x) {
  Tensor out = unary_any("relu", x, [](auto v) { return v > 0 ? v : decltype(v)(0); });
  return record("relu", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    if (grad_enabled())  // create_graph: g times a constant mask (relu'' = 0)
      return gr.add(0, mul(g, unary_any("relu_backward", *out, [](auto y) { return decltype(y)(y > 0); })));
    gr.add(0, binary("relu_backward", g, *out, [](auto d, auto y) { return y > 0 ? d : decltype(d)(0); }));
  });
}

TG_REGISTER_OP("clamp", "elementwise");
Tensor clamp(const Tensor& x, double lo, double hi) {
  if (lo > hi) throw std::invalid_argument(fmt::format("clamp: lower bound {} is above upper bound {}", lo, hi));
  Tensor out = unary_any("clamp", x, [lo, hi](auto v) {
    using T = decltype(v);
    return v < T(lo) ? T(lo) : (v > T(hi) ? T(hi) : v);
  });
  return record("clamp", {x}, out, [x = Saved(x, 0), lo, hi](const Tensor& g, Grads& gr) {
    if (grad_enabled())  // create_graph: g times a constant mask
      return gr.add(0, mul(g, unary_any("clamp_backward", *x, [lo, hi](auto v) {
                             using T = decltype(v);
                             return T(v >= T(lo) && v <= T(hi));
                           })));
    gr.add(0, binary("clamp_backward", g, *x, [lo, hi](auto d, auto v) {
      using T = decltype(d);
      return (v >= T(lo) && v <= T(hi)) ? d : T(0);
    }));
  });
}

TG_REGISTER_OP("where", "elementwise");
Tensor where(const Tensor& mask, const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return where(mask, promote_to(a, b), promote_to(b, a));
  check_same_dtype("where", a, b);
  Tensor m = mask.dtype() == a.dtype() ? mask : mask.to(a.dtype());
  Shape s = broadcast_shapes("where", broadcast_shapes("where", m.shape(), a.shape()), b.shape());
  // where = m ? a : b, written as two broadcasts so the shared kernel does the work.
  Tensor ma = binary("where", m, a, [](auto c, auto x) { return c != 0 ? x : decltype(x)(0); });
  Tensor mb = binary("where", m, b, [](auto c, auto x) { return c != 0 ? decltype(x)(0) : x; });
  Tensor out = binary("where", ma.expand(s), mb.expand(s), [](auto x, auto y) { return x + y; });
  return record("where", {a, b}, out, [ms = Saved(m, "its mask"), sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& gr) {
    const Tensor& m = *ms;
    if (grad_enabled()) {  // create_graph: where() of g itself, recorded
      const Tensor z = zeros_like(g);
      if (gr.needs(0)) gr.add(0, sum_to(where(m, g, z), sa));
      if (gr.needs(1)) gr.add(1, sum_to(where(m, z, g), sb));
      return;
    }
    if (gr.needs(0)) gr.add(0, sum_to(binary("where", m, g, [](auto c, auto x) { return c != 0 ? x : decltype(x)(0); }), sa));
    if (gr.needs(1)) gr.add(1, sum_to(binary("where", m, g, [](auto c, auto x) { return c != 0 ? decltype(x)(0) : x; }), sb));
  });
}

TG_REGISTER_OP("maximum", "elementwise");
Tensor maximum(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return maximum(promote_to(a, b), promote_to(b, a));
  // A NaN in either operand wins (as in PyTorch), and its operand gets the gradient.
  const auto a_wins_at = [](auto x, auto y) { return x != x || (y == y && x >= y); };
  Tensor out = binary("maximum", a, b, [=](auto x, auto y) { return a_wins_at(x, y) ? x : y; });
  return record("maximum", {a, b}, out, [a = Saved(a, 0), b = Saved(b, 1), a_wins_at](const Tensor& g, Grads& gr) {
    Tensor a_wins = binary("maximum", *a, *b, [=](auto x, auto y) { return decltype(x)(a_wins_at(x, y)); });
    if (gr.needs(0)) gr.add(0, sum_to(mul(g, a_wins), a.shape()));
    if (gr.needs(1)) gr.add(1, sum_to(mul(g, 1.0 - a_wins), b.shape()));
  });
}

#define TG_COMPARISON(fn, expr)                                                                     \
  Tensor fn(const Tensor& a, const Tensor& b) {                                                   \
    if (mixed_int_float(a, b)) return fn(promote_to(a, b), promote_to(b, a));                     \
    return binary(#fn, a, b, [](auto x, auto y) { return decltype(x)(expr); });                   \
  }
TG_COMPARISON(eq, x == y)
TG_COMPARISON(gt, x > y)
TG_COMPARISON(lt, x < y)
TG_COMPARISON(ge, x >= y)
TG_COMPARISON(le, x <= y)
#undef TG_COMPARISON

// ---- in place ----------------------------------------------------------------------------------
// In-place writes are not recorded. So that they can never make a gradient silently wrong, each one
// (1) refuses a destination that requires grad while gradients are being recorded (the write
// would be invisible to backward), (2) refuses a destination with a stride-0 (expanded) dim, whose
// elements alias one memory location, and (3) bumps the storage's version, which every tensor
// saved for backward checks (tg::Saved).

namespace {
void check_inplace(const char* op, const Tensor& dst) {
  if (!dst.defined()) throw std::invalid_argument(std::string(op) + ": undefined destination tensor");
  if (dst.requires_grad() && grad_enabled())
    throw std::invalid_argument(fmt::format(
        "{}: in-place write into a tensor that requires grad (shape {}) while gradients are recorded; the write "
        "would not be part of the graph, so its gradient would be wrong. Update parameters inside a "
        "tg::NoGradGuard (as the optimizers do), or use the out-of-place op (x = x + y)",
        op, dst.shape().str()));
  for (int64_t d = 0; d < dst.dim(); ++d)
    if (dst.strides()[d] == 0 && dst.shape()[d] > 1)
      throw std::invalid_argument(fmt::format(
          "{}: the destination (shape {}, strides {}) is an expand()ed view: its {} elements along dim {} are one "
          "memory location, so an in-place write would apply once per alias. Write into a copy instead: "
          "x = x.contiguous() (or clone())",
          op, dst.shape().str(), dst.strides().str(), dst.shape()[d], d));
}
void bump(const Tensor& dst) { dst.impl()->storage->bump_version(); }
}  // namespace

void add_(Tensor& dst, const Tensor& src, double alpha) {
  check_inplace("add_", dst);
  check_same_dtype("add_", dst, src);
  if (!(src.shape() == dst.shape()) && !(broadcast_shapes("add_", dst.shape(), src.shape()) == dst.shape()))
    throw std::invalid_argument(fmt::format("add_: source {} does not broadcast to destination {}",
                                            src.shape().str(), dst.shape().str()));
  dispatch("add_", dst.device(), dst.dtype(), [&]<class T>() {
    T* d = dst.data<T>();
    const T* s = src.data<T>();
    const T al = static_cast<T>(alpha);
    if (dst.is_contiguous() && src.is_contiguous() && src.shape() == dst.shape()) {
      const int64_t n = dst.numel();
      if (alpha == 1.0) for (int64_t i = 0; i < n; ++i) d[i] += s[i];
      else for (int64_t i = 0; i < n; ++i) d[i] += al * s[i];
      return;  // bumped below
    }
    Strides ss = broadcast_strides(src.shape(), src.strides(), dst.shape());
    Strides sd = dst.strides();
    const Strides* st[2] = {&sd, &ss};
    const int64_t base[2] = {0, 0};
    for_each_run<2>(dst.shape(), st, base, [&](const int64_t* off, int64_t len, const int64_t* in) {
      for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] += al * s[off[1] + i * in[1]];
    });
  });
  bump(dst);
}

void mul_(Tensor& dst, double factor) {
  check_inplace("mul_", dst);
  dispatch("mul_", dst.device(), dst.dtype(), [&]<class T>() {
    T* d = dst.data<T>();
    const T f = static_cast<T>(factor);
    if (dst.is_contiguous()) {
      for (int64_t i = 0, n = dst.numel(); i < n; ++i) d[i] *= f;
      return;
    }
    Strides sd = dst.strides();
    const Strides* st[1] = {&sd};
    const int64_t base[1] = {0};
    for_each_run<1>(dst.shape(), st, base, [&](const int64_t* off, int64_t len, const int64_t* in) {
      for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] *= f;
    });
  });
  bump(dst);
}

void fill_(Tensor& dst, double value) {
  check_inplace("fill_", dst);
  dispatch("fill_", dst.device(), dst.dtype(), [&]<class T>() {
    T* d = dst.data<T>();
    const T v = static_cast<T>(value);
    Strides sd = dst.strides();
    const Strides* st[1] = {&sd};
    const int64_t base[1] = {0};
    for_each_run<1>(dst.shape(), st, base, [&](const int64_t* off, int64_t len, const int64_t* in) {
      for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] = v;
    });
  });
  bump(dst);
}

void copy_(Tensor& dst, const Tensor& src) {
  check_inplace("copy_", dst);
  if (!src.defined()) throw std::invalid_argument("copy_: undefined source tensor");
  if (!(broadcast_shapes("copy_", dst.shape(), src.shape()) == dst.shape()))
    throw std::invalid_argument(fmt::format("copy_: source {} does not broadcast to destination {}",
                                            src.shape().str(), dst.shape().str()));
  dispatch("copy_", dst.device(), dst.dtype(), [&]<class D>() {
    dispatch("copy_", src.device(), src.dtype(), [&]<class S>() {
      D* d = dst.data<D>();
      const S* s = src.data<S>();
      if (dst.is_contiguous() && src.is_contiguous() && src.shape() == dst.shape()) {
        const int64_t n = dst.numel();
        for (int64_t i = 0; i < n; ++i) d[i] = static_cast<D>(s[i]);
        return;
      }
      Strides ss = broadcast_strides(src.shape(), src.strides(), dst.shape());
      Strides sd = dst.strides();
      const Strides* st[2] = {&sd, &ss};
      const int64_t base[2] = {0, 0};
      for_each_run<2>(dst.shape(), st, base, [&](const int64_t* off, int64_t len, const int64_t* in) {
        for (int64_t i = 0; i < len; ++i) d[off[0] + i * in[0]] = static_cast<D>(s[off[1] + i * in[1]]);
      });
    });
  });
  bump(dst);
}

// ---- operators ---------------------------------------------------------------------------------

Tensor operator+(const Tensor& a, const Tensor& b) { return add(a, b); }
Tensor operator-(const Tensor& a, const Tensor& b) { return sub(a, b); }
Tensor operator*(const Tensor& a, const Tensor& b) { return mul(a, b); }
Tensor operator/(const Tensor& a, const Tensor& b) { return div(a, b); }
Tensor operator-(const Tensor& x) { return neg(x); }
// A floating scalar takes a float tensor's dtype and makes an integer tensor float32 (PyTorch's
// default float dtype); integer scalars are the templates in ops.h.
namespace {
DType scalar_dtype(const Tensor& t) { return is_floating(t.dtype()) ? t.dtype() : DType::Float32; }
}  // namespace
Tensor operator+(const Tensor& a, double b) { return add(a, scalar(b, scalar_dtype(a))); }
Tensor operator-(const Tensor& a, double b) { return sub(a, scalar(b, scalar_dtype(a))); }
Tensor operator*(const Tensor& a, double b) { return mul(a, scalar(b, scalar_dtype(a))); }
Tensor operator/(const Tensor& a, double b) { return div(a, scalar(b, scalar_dtype(a))); }
Tensor operator+(double a, const Tensor& b) { return add(scalar(a, scalar_dtype(b)), b); }
Tensor operator-(double a, const Tensor& b) { return sub(scalar(a, scalar_dtype(b)), b); }
Tensor operator*(double a, const Tensor& b) { return mul(scalar(a, scalar_dtype(b)), b); }
Tensor operator/(double a, const Tensor& b) { return div(scalar(a, scalar_dtype(b)), b); }

}  // namespace tg
