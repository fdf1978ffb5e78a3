// Losses with PyTorch's semantics: binary cross-entropy with logits (weight, pos_weight), and
// nll_loss / cross_entropy over any extra dims (class weights, label smoothing, class dim 1 or last).
#include <cmath>

#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

namespace tg {
using namespace detail;

namespace {
const int64_t* index_data(const Tensor& index) { return static_cast<const int64_t*>(mem(index)); }
void* mem_or_null(const Tensor& t) { return t.defined() ? mem(t) : nullptr; }

// An optional weight broadcast to `shape` as a contiguous constant (undefined stays undefined).
Tensor broadcast_weight(const char* op, const char* what, const Tensor& w, const Tensor& like) {
  if (!w.defined()) return w;
  check_same_dtype(op, like, w);
  bool fits = w.dim() <= like.dim();
  for (int64_t i = 1; fits && i <= w.dim(); ++i) fits = w.size(-i) == 1 || w.size(-i) == like.size(-i);
  if (!fits)
    throw std::invalid_argument(fmt::format("{}: {} {} does not broadcast to the input {}; give it the input's "
                                            "shape or size-1 dims (pos_weight: [C] for classes along the last dim)",
                                            op, what, w.shape().str(), like.shape().str()));
  NoGradGuard ng;
  return w.detach().expand(like.shape()).contiguous();
}
}  // namespace

TG_REGISTER_OP("binary_cross_entropy_with_logits", "nn");
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target, const BCEWithLogitsOptions& o) {
  constexpr const char* op = "binary_cross_entropy_with_logits";
  if (!(logits.shape() == target.shape()))
    throw std::invalid_argument(fmt::format("{}: logits {} and target {} must have the same shape", op,
                                            logits.shape().str(), target.shape().str()));
  check_same_dtype(op, logits, target);
  const kern::KernelTable& k = float_kernels_of(op, logits);
  // One fused op (the toy benchmark's loss was a dozen recorded nodes).
  Tensor x = logits.contiguous(), y = target.contiguous();
  Tensor pw = broadcast_weight(op, "pos_weight", o.pos_weight, x), w = broadcast_weight(op, "weight", o.weight, x);
  const int64_t n = x.numel();
  const Reduction r = o.reduction;
  Tensor per = empty(x.shape(), x.dtype());
  const double scale = r == Reduction::Mean ? 1.0 / static_cast<double>(std::max<int64_t>(n, 1)) : 1.0;
  Tensor out = r == Reduction::None ? per : empty(Shape{}, x.dtype());
  k.reduce->bce_with_logits(mem(x), mem(y), mem_or_null(pw), mem_or_null(w), mem(per), n,
                            r == Reduction::None ? nullptr : mem(out), scale);
  if (r == Reduction::Mean && n == 0) out = scalar(NAN, x.dtype());
  return record(op, {logits, target}, out, [xs = Saved(x, 0), ys = Saved(y, 1), pws = Saved(pw, "its pos_weight"),
                                            wts = Saved(w, "its weight"), r, scale](const Tensor& g, Grads& gr) {
    const Tensor &x = *xs, &y = *ys, &pw = *pws, &w = *wts;
    if (grad_enabled()) {  // create_graph: the same gradients in recorded ops
      const Tensor sg = w.defined() ? g * scale * w : g * scale;
      if (!pw.defined()) {
        if (gr.needs(0)) gr.add(0, mul(sg, sigmoid(x) - y));
        if (gr.needs(1)) gr.add(1, mul(sg, neg(x)));
        return;
      }
      if (gr.needs(0)) gr.add(0, mul(sg, (1.0 - y) - (1.0 + (pw - 1.0) * y) * sigmoid(neg(x))));
      if (gr.needs(1)) gr.add(1, mul(sg, (pw - 1.0) * (relu(neg(x)) + log(1.0 + exp(neg(abs(x))))) - x));
      return;
    }
    Tensor gc = g.contiguous();
    const kern::KernelTable& k = float_kernels_of("binary_cross_entropy_with_logits_backward", x);
    auto grad_of = [&](bool wrt_logits) {
      Tensor d = empty(x.shape(), x.dtype());
      k.reduce->bce_with_logits_backward(mem(x), mem(y), mem_or_null(pw), mem_or_null(w), mem(gc), mem(d), x.numel(),
                                         scale, r == Reduction::None, wrt_logits);
      return d;
    };
    if (gr.needs(0)) gr.add(0, grad_of(true));
    if (gr.needs(1)) gr.add(1, grad_of(false));
  });
}
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target, Reduction r) {
  return binary_cross_entropy_with_logits(logits, target, BCEWithLogitsOptions{r, Tensor(), Tensor()});
}

TG_REGISTER_OP("nll_loss", "nn");
Tensor nll_loss(const Tensor& log_probs, const Tensor& target_in, const CrossEntropyOptions& o) {
  const std::string shapes = fmt::format("input {}, target {}", log_probs.shape().str(), target_in.shape().str());
  if (log_probs.dim() == 0)
    throw std::invalid_argument("nll_loss: input must have a class dim ([N, C], [C] or [N, C, d...]), got " + shapes);
  const int64_t cd = log_probs.dim() == 1 ? 0 : normalize_dim("nll_loss", o.class_dim, log_probs.dim());
  const int64_t last = log_probs.dim() - 1, C = log_probs.size(cd);
  Shape target_shape = log_probs.shape();
  target_shape.erase(cd);
  if (!(target_in.shape() == target_shape))
    throw std::invalid_argument(fmt::format("nll_loss: {}: the target must be the input's shape without its class dim "
                                            "{}, i.e. {} (class dim 1 is PyTorch's layout; pass class_dim = -1 for "
                                            "classes last)",
                                            shapes, cd, target_shape.str()));
  if (target_in.dtype() != DType::Int64)
    throw std::invalid_argument(std::string("nll_loss: target must be int64 class indices, got ") +
                                dtype_name(target_in.dtype()) + " (" + shapes + ")");
  const kern::KernelTable& k = float_kernels_of("nll_loss", log_probs);
  Tensor weight;
  if (o.weight.defined()) {
    check_same_dtype("nll_loss", log_probs, o.weight);
    if (!(o.weight.shape() == Shape{C}))
      throw std::invalid_argument(fmt::format("nll_loss: weight {} must be [{}], one per class ({})",
                                              o.weight.shape().str(), C, shapes));
    weight = o.weight.detach().contiguous();
  }
  const double e = o.label_smoothing;
  if (!(e >= 0.0 && e <= 1.0))
    throw std::invalid_argument(fmt::format("nll_loss: label_smoothing must be in [0, 1], got {}", e));
  const int64_t R = target_in.numel();
  Tensor target = target_in.contiguous();
  const int64_t* t = index_data(target);
  int64_t bad = 0;
  if (const int64_t i = kernels_of(target).index->first_out_of_range(t, R, C, &o.ignore_index, nullptr, &bad); i >= 0)
    throw std::out_of_range(fmt::format("nll_loss: target {} at position {} is out of range [0, {}) classes ({}); "
                                        "use ignore_index ({}) for padding",
                                        bad, i, C, shapes, o.ignore_index));
  // Rows of C classes: a view when the classes are last, else a permute copy (recorded).
  Tensor rows = log_probs;
  if (cd != last) {
    Shape order;
    for (int64_t d = 0; d <= last; ++d)
      if (d != cd) order.push_back(d);
    order.push_back(cd);
    rows = permute(rows, order);
  }
  rows = rows.reshape(Shape{R, C});
  Tensor per = empty(Shape{R}, log_probs.dtype());
  double weight_sum = 0;
  const double total = k.reduce->nll_rows(view_of(rows), t, mem_or_null(weight), o.ignore_index, e, mem(per), &weight_sum);
  const Reduction r = o.reduction;
  Tensor out;
  double scale = 1.0;
  if (r == Reduction::None) {
    NoGradGuard ng;
    out = per.reshape(target_shape);
  } else {
    scale = r == Reduction::Mean ? 1.0 / weight_sum : 1.0;  // all ignored: NaN below, as in PyTorch
    out = scalar(r == Reduction::Mean && weight_sum == 0 ? NAN : total * scale, log_probs.dtype());
  }
  return record("nll_loss", {rows}, out, [target_s = Saved(target, "its target"), weight_s = Saved(weight, "its weight"),
                                          ignore = o.ignore_index, e, scale, R, C, r](const Tensor& g, Grads& gr) {
    const Tensor &target = *target_s, &weight = *weight_s;
    const kern::KernelTable& k = float_kernels_of("nll_loss_backward", g);
    if (grad_enabled()) {  // create_graph: a constant matrix (the gradient for g = 1) times g, recorded
      Tensor m = empty(Shape{R, C}, g.dtype());
      const Tensor one = ones(Shape{}, g.dtype());
      k.reduce->nll_rows_backward(index_data(target), mem_or_null(weight), mem(one), R, C, ignore, e, scale, false, mem(m));
      return gr.add(0, mul(m, r == Reduction::None ? g.reshape(Shape{R, 1}) : g));
    }
    Tensor gl = empty(Shape{R, C}, g.dtype());
    Tensor gc = g.contiguous();
    k.reduce->nll_rows_backward(index_data(target), mem_or_null(weight), mem(gc), R, C, ignore, e, scale,
                                r == Reduction::None, mem(gl));
    gr.add(0, gl);
  });
}
Tensor nll_loss(const Tensor& log_probs, const Tensor& target, int64_t ignore_index, Reduction r) {
  CrossEntropyOptions o;
  o.ignore_index = ignore_index;
  o.reduction = r;
  return nll_loss(log_probs, target, o);
}

TG_REGISTER_OP("cross_entropy", "nn");
Tensor cross_entropy(const Tensor& logits, const Tensor& target, const CrossEntropyOptions& o) {
  if (logits.dim() == 0)
    throw std::invalid_argument("cross_entropy: logits must have a class dim ([N, C], [C] or [N, C, d...]), got " +
                                logits.shape().str());
  const int64_t cd = logits.dim() == 1 ? 0 : normalize_dim("cross_entropy", o.class_dim, logits.dim());
  return nll_loss(log_softmax(logits, cd), target, o);
}
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, Reduction r) {
  CrossEntropyOptions o;
  o.ignore_index = ignore_index;
  o.reduction = r;
  return cross_entropy(logits, target, o);
}

}  // namespace tg
