// Elementwise ops: forward kernel and backward side by side.
#include <cmath>

#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

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

void not_floating_error(const char* op, DType t) {
  throw std::invalid_argument(std::string(op) + ": expects a float32 or float64 tensor, got " + dtype_name(t) +
                              ". Convert with .to(tg::DType::Float32).");
}

Tensor binary_map(const char* op, kern::Binary f, const Tensor& a, const Tensor& b, kern::Scalars s) {
  check_same_dtype(op, a, b);
  const Shape shape = broadcast_shapes(op, a.shape(), b.shape());
  const kern::KernelTable& k = kernels_of(a);
  const kern::BinaryFn fn = k.elementwise->binary[static_cast<int>(f)];
  if (!fn) not_floating_error(op, a.dtype());  // the float-only maps have no int64 entry
  Tensor out = empty(shape, a.dtype());
  fn(view_of(out), view_of(a), view_of(b), s);
  return out;
}

Tensor unary_map(const char* op, kern::Unary f, const Tensor& x, kern::Scalars s) {
  const kern::KernelTable& k = kernels_of(x);
  const kern::UnaryFn fn = k.elementwise->unary[static_cast<int>(f)];
  if (!fn) not_floating_error(op, x.dtype());
  Tensor out = empty(x.shape(), x.dtype());
  fn(view_of(out), view_of(x), s);
  return out;
}

}  // namespace detail

namespace {
using kern::Binary;
using kern::Unary;
Tensor binary(const char* op, Binary f, const Tensor& a, const Tensor& b, kern::Scalars s = {}) {
  return binary_map(op, f, a, b, s);
}
Tensor unary(const char* op, Unary f, const Tensor& x, kern::Scalars s = {}) { return unary_map(op, f, x, s); }
}  // namespace

TG_REGISTER_OP("add", "elementwise");
Tensor add(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return add(promote_to(a, b), promote_to(b, a));
  Tensor out = binary("add", Binary::Add, a, b);
  return record("add", {a, b}, out, [sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& gr) {
    if (gr.needs(0)) gr.add(0, sum_to(g, sa));
    if (gr.needs(1)) gr.add(1, sum_to(g, sb));
  });
}

TG_REGISTER_OP("sub", "elementwise");
Tensor sub(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return sub(promote_to(a, b), promote_to(b, a));
  Tensor out = binary("sub", Binary::Sub, a, b);
  return record("sub", {a, b}, out, [sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& gr) {
    if (gr.needs(0)) gr.add(0, sum_to(g, sa));
    if (gr.needs(1)) gr.add(1, sum_to(neg(g), sb));
  });
}

TG_REGISTER_OP("mul", "elementwise");
Tensor mul(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return mul(promote_to(a, b), promote_to(b, a));
  Tensor out = binary("mul", Binary::Mul, a, b);
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
    if (const int64_t i = kernels_of(b).elementwise->first_zero(view_of(b)); i >= 0)
      throw std::domain_error(fmt::format("div: integer division by zero (divisor {} int64, element {} is 0); "
                                          "convert to float first if inf is wanted",
                                          b.shape().str(), i));
    return div(a.to(DType::Float32), b.to(DType::Float32));
  }
  Tensor out = binary("div", Binary::Div, a, b);
  return record("div", {a, b}, out, [sa = a.shape(), b = Saved(b, 1), out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    if (gr.needs(0)) gr.add(0, sum_to(div(g, *b), sa));
    if (gr.needs(1)) gr.add(1, sum_to(neg(div(mul(g, out.connected()), *b)), b.shape()));
  });
}

TG_REGISTER_OP("neg", "elementwise");
Tensor neg(const Tensor& x) {
  Tensor out = unary("neg", Unary::Neg, x);
  return record("neg", {x}, out, [](const Tensor& g, Grads& gr) { gr.add(0, neg(g)); });
}

TG_REGISTER_OP("pow", "elementwise");
Tensor pow(const Tensor& x, double e) {
  if (x.defined() && !is_floating(x.dtype())) return pow(x.to(DType::Float32), e);  // int ** float -> float32
  Tensor out = unary("pow", Unary::PowScalar, x, {e});
  return record("pow", {x}, out, [x = Saved(x, 0), e](const Tensor& g, Grads& gr) {
    gr.add(0, e == 0 ? zeros_like(g) : mul(g, pow(*x, e - 1) * e));
  });
}

TG_REGISTER_OP("pow_tensor", "elementwise");
Tensor pow(const Tensor& base, const Tensor& exponent) {
  if (mixed_int_float(base, exponent)) return pow(promote_to(base, exponent), promote_to(exponent, base));
  Tensor out = binary("pow", Binary::Pow, base, exponent);
  return record("pow_tensor", {base, exponent}, out, [base_s = Saved(base, 0), exponent_s = Saved(exponent, 1), out_s = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    const Tensor& base = *base_s;
    const Tensor& exponent = *exponent_s;
    if (gr.needs(0)) gr.add(0, sum_to(mul(g, where(exponent, mul(exponent, pow(base, exponent - 1.0)), zeros_like(exponent))), base.shape()));
    if (gr.needs(1)) {
      // d/dy x^y = x^y log x, which is 0 * -inf = NaN at x = 0; the limit (PyTorch's value) is 0 for y >= 0.
      Tensor at_zero = binary("pow_backward", Binary::PowZeroMask, base, exponent);
      const Tensor out = out_s.connected();
      gr.add(1, sum_to(mul(g, where(at_zero, zeros_like(out), mul(out, log(base)))), exponent.shape()));
    }
  });
}

TG_REGISTER_OP("exp", "elementwise");
Tensor exp(const Tensor& x) {
  Tensor out = unary("exp", Unary::Exp, x);
  return record("exp", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) { gr.add(0, mul(g, out.connected())); });
}

TG_REGISTER_OP("log", "elementwise");
Tensor log(const Tensor& x) {
  Tensor out = unary("log", Unary::Log, x);
  return record("log", {x}, out, [x = Saved(x, 0)](const Tensor& g, Grads& gr) { gr.add(0, div(g, *x)); });
}

TG_REGISTER_OP("sqrt", "elementwise");
Tensor sqrt(const Tensor& x) {
  Tensor out = unary("sqrt", Unary::Sqrt, x);
  return record("sqrt", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) { gr.add(0, div(g, out.connected() * 2.0)); });
}

TG_REGISTER_OP("abs", "elementwise");
Tensor abs(const Tensor& x) {
  Tensor out = unary("abs", Unary::Abs, x);
  return record("abs", {x}, out, [x = Saved(x, 0)](const Tensor& g, Grads& gr) {
    Tensor sign = unary("abs", Unary::Sign, *x);
    gr.add(0, mul(g, sign));
  });
}

TG_REGISTER_OP("tanh", "elementwise");
Tensor tanh(const Tensor& x) {
  Tensor out = unary("tanh", Unary::Tanh, x);
  return record("tanh", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: g (1 - y^2) in recorded ops
      const Tensor y = out.connected();
      return gr.add(0, mul(g, 1.0 - y * y));
    }
    gr.add(0, binary("tanh_backward", Binary::TanhBackward, g, *out));
  });
}

TG_REGISTER_OP("sigmoid", "elementwise");
Tensor sigmoid(const Tensor& x) {
  Tensor out = unary("sigmoid", Unary::Sigmoid, x);
  return record("sigmoid", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: g y (1 - y) in recorded ops
      const Tensor y = out.connected();
      return gr.add(0, mul(g, y * (1.0 - y)));
    }
    gr.add(0, binary("sigmoid_backward", Binary::SigmoidBackward, g, *out));
  });
}

TG_REGISTER_OP("relu", "elementwise");
Tensor relu(const Tensor& x) {
  Tensor out = unary("relu", Unary::Relu, x);
  return record("relu", {x}, out, [out = Saved(out, Saved::kOutput)](const Tensor& g, Grads& gr) {
    if (grad_enabled())  // create_graph: g times a constant mask (relu'' = 0)
      return gr.add(0, mul(g, unary("relu_backward", Unary::ReluMask, *out)));
    gr.add(0, binary("relu_backward", Binary::ReluBackward, g, *out));
  });
}

TG_REGISTER_OP("clamp", "elementwise");
Tensor clamp(const Tensor& x, double lo, double hi) {
  if (lo > hi) throw std::invalid_argument(fmt::format("clamp: lower bound {} is above upper bound {}", lo, hi));
  Tensor out = unary("clamp", Unary::Clamp, x, {lo, hi});
  return record("clamp", {x}, out, [x = Saved(x, 0), lo, hi](const Tensor& g, Grads& gr) {
    if (grad_enabled())  // create_graph: g times a constant mask
      return gr.add(0, mul(g, unary("clamp_backward", Unary::ClampMask, *x, {lo, hi})));
    gr.add(0, binary("clamp_backward", Binary::ClampBackward, g, *x, {lo, hi}));
  });
}

TG_REGISTER_OP("where", "elementwise");
Tensor where(const Tensor& mask, const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return where(mask, promote_to(a, b), promote_to(b, a));
  check_same_dtype("where", a, b);
  Tensor m = mask.dtype() == a.dtype() ? mask : mask.to(a.dtype());
  Shape s = broadcast_shapes("where", broadcast_shapes("where", m.shape(), a.shape()), b.shape());
  // where = m ? a : b, written as two broadcasts so the shared kernel does the work.
  Tensor ma = binary("where", Binary::KeepWhereSet, m, a);
  Tensor mb = binary("where", Binary::KeepWhereUnset, m, b);
  Tensor out = binary("where", Binary::Add, ma.expand(s), mb.expand(s));
  return record("where", {a, b}, out, [ms = Saved(m, "its mask"), sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& gr) {
    const Tensor& m = *ms;
    if (grad_enabled()) {  // create_graph: where() of g itself, recorded
      const Tensor z = zeros_like(g);
      if (gr.needs(0)) gr.add(0, sum_to(where(m, g, z), sa));
      if (gr.needs(1)) gr.add(1, sum_to(where(m, z, g), sb));
      return;
    }
    if (gr.needs(0)) gr.add(0, sum_to(binary("where", Binary::KeepWhereSet, m, g), sa));
    if (gr.needs(1)) gr.add(1, sum_to(binary("where", Binary::KeepWhereUnset, m, g), sb));
  });
}

TG_REGISTER_OP("maximum", "elementwise");
Tensor maximum(const Tensor& a, const Tensor& b) {
  if (mixed_int_float(a, b)) return maximum(promote_to(a, b), promote_to(b, a));
  // A NaN in either operand wins (as in PyTorch), and its operand gets the gradient.
  Tensor out = binary("maximum", Binary::Maximum, a, b);
  return record("maximum", {a, b}, out, [a = Saved(a, 0), b = Saved(b, 1)](const Tensor& g, Grads& gr) {
    Tensor a_wins = binary("maximum", Binary::MaximumMask, *a, *b);
    if (gr.needs(0)) gr.add(0, sum_to(mul(g, a_wins), a.shape()));
    if (gr.needs(1)) gr.add(1, sum_to(mul(g, 1.0 - a_wins), b.shape()));
  });
}

#define TG_COMPARISON(fn, op)                                                 \
  Tensor fn(const Tensor& a, const Tensor& b) {                               \
    if (mixed_int_float(a, b)) return fn(promote_to(a, b), promote_to(b, a)); \
    return binary(#fn, op, a, b);                                             \
  }
TG_COMPARISON(eq, Binary::Eq)
TG_COMPARISON(gt, Binary::Gt)
TG_COMPARISON(lt, Binary::Lt)
TG_COMPARISON(ge, Binary::Ge)
TG_COMPARISON(le, Binary::Le)
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
  kernels_of(dst).elementwise->add_scaled(view_of(dst), view_of(src), alpha);
  bump(dst);
}

void mul_(Tensor& dst, double factor) {
  check_inplace("mul_", dst);
  kernels_of(dst).elementwise->scale(view_of(dst), factor);
  bump(dst);
}

void fill_(Tensor& dst, double value) {
  check_inplace("fill_", dst);
  kernels_of(dst).elementwise->fill(view_of(dst), value);
  bump(dst);
}

void copy_(Tensor& dst, const Tensor& src) {
  check_inplace("copy_", dst);
  if (!src.defined()) throw std::invalid_argument("copy_: undefined source tensor");
  if (!(broadcast_shapes("copy_", dst.shape(), src.shape()) == dst.shape()))
    throw std::invalid_argument(fmt::format("copy_: source {} does not broadcast to destination {}",
                                            src.shape().str(), dst.shape().str()));
  kernels_of(dst).elementwise->copy_from[static_cast<int>(src.dtype())](view_of(dst), view_of(src));
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
