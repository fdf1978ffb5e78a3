// Neural-network ops: embedding, softmax family, mse_loss, dropout, layer_norm, fused cell
// non-linearity. The other losses are in ops_loss.cpp.
#include <cmath>
#include <utility>

#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/row_sparse.h"

namespace tg {
using namespace detail;

namespace {
const int64_t* index_data(const Tensor& index) { return static_cast<const int64_t*>(mem(index)); }

Tensor reduce(const Tensor& per_element, Reduction r) {
  switch (r) {
    case Reduction::Mean: return mean(per_element);
    case Reduction::Sum: return sum(per_element);
    case Reduction::None: return per_element;
  }
  return per_element;
}
}  // namespace

TG_REGISTER_OP("embedding", "nn");
Tensor embedding(const Tensor& weight, const Tensor& indices_in, int64_t padding_idx) {
  if (weight.dim() != 2)
    throw std::invalid_argument("embedding: weight must be [num_embeddings, dim], got " + weight.shape().str());
  if (indices_in.dtype() != DType::Int64)
    throw std::invalid_argument(fmt::format("embedding: indices must be int64, got {} of shape {}",
                                            dtype_name(indices_in.dtype()), indices_in.shape().str()));
  const int64_t V = weight.size(0), E = weight.size(1);
  Tensor indices = indices_in.contiguous();
  const int64_t* ix = index_data(indices);
  int64_t bad = 0;
  if (const int64_t i = kernels_of(indices).index->first_out_of_range(ix, indices.numel(), V, nullptr, nullptr, &bad);
      i >= 0)
    throw std::out_of_range(fmt::format("embedding: index {} at position {} is out of range [0, {}) for weight {}; "
                                        "map unknown words to an <unk> id below {}",
                                        bad, i, V, weight.shape().str(), V));
  Tensor w = weight.detach().contiguous();
  Shape s = indices.shape();
  s.push_back(E);
  Tensor out = empty(s, weight.dtype());
  kernels_of(w).index->gather(mem(w), mem(out), 1, indices.numel(), V, E, ix);
  return record("embedding", {weight}, out, [indices_s = Saved(indices, "its indices"), V, E, padding_idx](const Tensor& g, Grads& gr) {
    const Tensor& indices = *indices_s;
    if (grad_enabled()) {  // create_graph: index_add (recorded; its own gradient is index_select)
      const int64_t n = indices.numel();
      Tensor rows = g.reshape(Shape{n, E});
      if (padding_idx >= 0) {  // a constant mask: 0 for the padding rows
        const Tensor pad = eq(indices.reshape(Shape{n, 1}), scalar(static_cast<double>(padding_idx), DType::Int64));
        rows = mul(rows, 1.0 - pad.to(g.dtype()));
      }
      return gr.add(0, index_add(rows, 0, indices.reshape(Shape{n}), V));
    }
    gr.add(0, embedding_grad(g, index_data(indices), indices.numel(), V, E, padding_idx));
  });
}

TG_REGISTER_OP("softmax", "nn");
Tensor softmax(const Tensor& x, int64_t dim) {
  int64_t d = normalize_dim("softmax", dim, x.dim());
  if (x.dim() == 0) return ones_like(x) + x * 0.0;
  Tensor xt = transpose(x.detach(), d, -1).contiguous();  // rows along the softmax dim
  const int64_t n = xt.size(-1), rows = n ? xt.numel() / n : 0;
  Tensor yt = empty(xt.shape(), x.dtype());
  float_kernels_of("softmax", x).reduce->softmax_rows(mem(xt), mem(yt), rows, n);
  Tensor out = transpose(yt, d, -1).contiguous();
  return record("softmax", {x}, out, [out_s = Saved(out, Saved::kOutput), d](const Tensor& g, Grads& gr) {
    const Tensor out = out_s.connected();
    gr.add(0, mul(out, sub(g, sum(mul(g, out), {d}, true))));
  });
}

TG_REGISTER_OP("log_softmax", "nn");
Tensor log_softmax(const Tensor& x, int64_t dim) {
  // (x - m) - log(sum(exp(x - m))), m the max along dim (a constant: the gradient does not depend
  // on it). x - logsumexp(x) lost the small term to rounding when |x| is large: float32
  // [1e4, 1e4] gave -0.693359, float64 [1e300, 1e300] gave 0; here x - m is exact.
  int64_t d = normalize_dim("log_softmax", dim, x.dim());
  if (x.numel() == 0) return x - x.detach();  // nothing to normalise (max would refuse the empty dim)
  Tensor shift;
  {
    NoGradGuard ng;
    shift = x.dim() == 0 ? x.detach() : max(x.detach(), d, true);
    // A slice with -inf/+inf/NaN as its max gets shift 0, so the result is NaN/-inf as it should be.
    shift = unary_map("log_softmax", kern::Unary::FiniteOrZero, shift);
  }
  Tensor z = x - shift;
  return z - log(x.dim() == 0 ? exp(z) : sum(exp(z), {d}, true));
}

TG_REGISTER_OP("mse_loss", "nn");
Tensor mse_loss(const Tensor& a, const Tensor& b, Reduction r) {
  if (!(a.shape() == b.shape()))
    throw std::invalid_argument(fmt::format("mse_loss: shapes {} and {} must match", a.shape().str(), b.shape().str()));
  Tensor d = a - b;
  return reduce(d * d, r);
}

TG_REGISTER_OP("dropout", "nn");
Tensor dropout(const Tensor& x, double p, bool training) {
  if (!(p >= 0.0 && p <= 1.0)) throw std::invalid_argument(fmt::format("dropout: p must be in [0, 1], got {}", p));
  if (!training || p == 0.0) return x;
  if (p == 1.0) return x * 0.0;
  Tensor mask = empty(x.shape(), x.dtype());
  const double keep_scale = 1.0 / (1.0 - p);
  float_kernels_of("dropout", x).elementwise->bernoulli_mask(mem(mask), mask.numel(), next_random_u64(), p, keep_scale);
  return x * mask;
}

TG_REGISTER_OP("layer_norm", "nn");
Tensor layer_norm(const Tensor& x, const Shape& normalized_shape, const Tensor& weight, const Tensor& bias, double eps) {
  const int64_t D = normalized_shape.size(), lead = x.dim() - D;
  bool fits = D >= 1 && lead >= 0;
  for (int64_t i = 0; fits && i < D; ++i) fits = x.size(lead + i) == normalized_shape[i];
  if (!fits)
    throw std::invalid_argument(fmt::format("layer_norm: input {} does not end in normalized_shape {}; pass the "
                                            "input's trailing dims (e.g. [{}] to normalise over the last one)",
                                            x.shape().str(), normalized_shape.str(), x.dim() ? x.size(-1) : 1));
  for (const auto& [t, what] : {std::pair{&weight, "weight"}, std::pair{&bias, "bias"}}) {
    if (!t->defined()) continue;
    check_same_dtype("layer_norm", x, *t);
    if (!(t->shape() == normalized_shape))
      throw std::invalid_argument(fmt::format("layer_norm: {} {} must have normalized_shape {}", what,
                                              t->shape().str(), normalized_shape.str()));
  }
  if (!(eps >= 0) || !std::isfinite(eps))
    throw std::invalid_argument(fmt::format("layer_norm: eps must be finite and >= 0, got {}", eps));
  const kern::KernelTable& k = float_kernels_of("layer_norm", x);
  const int64_t m = normalized_shape.numel();
  int64_t rows = 1;
  for (int64_t d = 0; d < lead; ++d) rows *= x.size(d);
  Tensor xc = x.detach().contiguous();
  Tensor wc = weight.defined() ? weight.detach().contiguous() : Tensor();
  Tensor bc = bias.defined() ? bias.detach().contiguous() : Tensor();
  Tensor y = empty(x.shape(), x.dtype()), mu = empty(Shape{rows}, DType::Float64),
         rstd = empty(Shape{rows}, DType::Float64);
  k.norm->layer_norm(mem(xc), wc.defined() ? mem(wc) : nullptr, bc.defined() ? mem(bc) : nullptr, rows, m, eps,
                     mem(y), mem(mu), mem(rstd));
  return record("layer_norm", {x, weight, bias}, y, [xs = Saved(xc, 0), ws = Saved(wc, 1), mu_s = Saved(mu, "its mean"),
                                                     rstd_s = Saved(rstd, "its 1/std"), xo = Saved(x, 0), wo = Saved(weight, 1),
                                                     normalized_shape, lead, rows, m, eps](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: the same gradients from recorded ops on the original x, weight
      const Tensor& x = *xo;
      const Tensor& w = *wo;
      std::vector<int64_t> dims;
      for (int64_t d = lead; d < x.dim(); ++d) dims.push_back(d);
      const Tensor xc = x - mean(x, dims, true);
      const Tensor rs = pow(mean(xc * xc, dims, true) + eps, -0.5);
      const Tensor xhat = xc * rs;
      const Tensor d = w.defined() ? g * w : g;
      if (gr.needs(0)) gr.add(0, rs * (d - mean(d, dims, true) - xhat * mean(d * xhat, dims, true)));
      if (gr.needs(1)) gr.add(1, sum_to(g * xhat, normalized_shape));
      if (gr.needs(2)) gr.add(2, sum_to(g, normalized_shape));
      return;
    }
    const Tensor gc = g.contiguous();
    const Tensor& wc = *ws;
    Tensor dx = gr.needs(0) ? empty(xs.shape(), g.dtype()) : Tensor();
    Tensor dw = gr.needs(1) ? empty(normalized_shape, g.dtype()) : Tensor();
    Tensor db = gr.needs(2) ? empty(normalized_shape, g.dtype()) : Tensor();
    auto ptr = [](const Tensor& t) { return t.defined() ? mem(t) : nullptr; };
    float_kernels_of("layer_norm_backward", g).norm->layer_norm_backward(mem(*xs), mem(gc), ptr(wc), mem(*mu_s),
                                                                         mem(*rstd_s), rows, m, ptr(dx), ptr(dw), ptr(db));
    if (dx.defined()) gr.add(0, dx);
    if (dw.defined()) gr.add(1, dw);
    if (db.defined()) gr.add(2, db);
  });
}

TG_REGISTER_OP("add_tanh", "nn");
Tensor add_tanh(const Tensor& a, const Tensor& b) {
  Tensor out = binary_map("add_tanh", kern::Binary::AddTanh, a, b);  // float32: 8 lanes per step
  return record("add_tanh", {a, b}, out, [out_s = Saved(out, Saved::kOutput), sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: g (1 - y^2), recorded
      const Tensor y = out_s.connected();
      const Tensor d = mul(g, 1.0 - y * y);
      if (gr.needs(0)) gr.add(0, sum_to(d, sa));
      if (gr.needs(1)) gr.add(1, sum_to(d, sb));
      return;
    }
    const Tensor& out = *out_s;
    Tensor d = binary_map("add_tanh_backward", kern::Binary::TanhBackward, g, out);
    if (gr.needs(0)) gr.add(0, sum_to(d, sa));
    if (gr.needs(1)) gr.add(1, sum_to(d, sb));
  });
}

}  // namespace tg
