// Selection and sampling: topk (differentiable in its values) and multinomial (not differentiable).
#include <cmath>

#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

namespace tg {
using namespace detail;

namespace {
const int64_t* index_data(const Tensor& index) { return static_cast<const int64_t*>(mem(index)); }
int64_t* index_data(Tensor& index) { return static_cast<int64_t*>(mem(index)); }
}  // namespace

// Ties go to the lower position and NaN ranks above every number, so the result is deterministic;
// sorted = false gives the same k elements in position order (PyTorch leaves that order open).
TG_REGISTER_OP("topk", "select");
TopK topk(const Tensor& x, int64_t k, int64_t dim, bool largest, bool sorted) {
  const int64_t d = normalize_dim("topk", dim, x.dim());
  const int64_t n = x.dim() == 0 ? 1 : x.size(d);
  if (k < 0 || k > n)
    throw std::out_of_range(fmt::format("topk: k = {} is out of range for dim {} of size {} (input {}); k must be in "
                                        "[0, {}]",
                                        k, dim, n, x.shape().str(), n));
  if (x.dim() == 0) {  // PyTorch: a scalar is one element along dim 0 or -1
    TopK r = topk(x.reshape(Shape{1}), k, 0, largest, sorted);
    if (k == 1) r = {r.values.reshape(Shape{}), r.indices.reshape(Shape{})};
    return r;
  }
  // Rows along dim: move it last, one contiguous run per row.
  Tensor xt;
  {
    NoGradGuard ng;
    xt = transpose(x.detach(), d, -1).contiguous();
  }
  const int64_t last = x.dim() - 1, rows = x.numel() == 0 ? 0 : x.numel() / n;
  Shape moved = xt.shape();
  moved[last] = k;
  Tensor vt = empty(moved, x.dtype()), it = empty(moved, DType::Int64);
  kernels_of(x).select->topk_rows(mem(xt), rows, n, k, largest, sorted, mem(vt), index_data(it));
  Tensor values, indices;
  {
    NoGradGuard ng;
    values = transpose(vt, d, -1).contiguous();
    indices = transpose(it, d, -1).contiguous();
  }
  // Gradient: g scattered back to the picked positions, zero elsewhere. The positions of a row are
  // distinct, so this is a gather from [g, 0] through the inverse index (recorded under
  // create_graph, where index_select's own gradient carries it further).
  values = record("topk", {x}, values, [it_s = Saved(it, "its indices"), d, last, rows, n, k, moved](const Tensor& g, Grads& gr) {
    const Tensor& it = *it_s;
    Tensor inv = empty(Shape{rows * n}, DType::Int64);
    kernels_of(it).select->invert_rows(index_data(it), rows, k, n, index_data(inv));
    Tensor gt = transpose(g, d, -1).contiguous().reshape(Shape{rows * k});
    Tensor padded = cat({gt, zeros(Shape{1}, g.dtype())}, 0);
    Shape full = moved;
    full[last] = n;
    gr.add(0, transpose(index_select(padded, 0, inv).reshape(full), d, -1));
  });
  return {values, indices};
}

TG_REGISTER_OP("masked_fill", "select");
Tensor masked_fill(const Tensor& x, const Tensor& mask, double value) {
  if (!x.defined() || !mask.defined()) throw std::invalid_argument("masked_fill: undefined tensor argument");
  if (!(broadcast_shapes("masked_fill", mask.shape(), x.shape()) == x.shape()))
    throw std::invalid_argument(fmt::format("masked_fill: mask {} does not broadcast to x {} (the result keeps x's "
                                            "shape); give the mask x's shape or size-1 dims",
                                            mask.shape().str(), x.shape().str()));
  if (!is_floating(x.dtype()) && !(std::isfinite(value) && value == std::trunc(value)))
    throw std::invalid_argument(fmt::format("masked_fill: value {} cannot be stored in the int64 tensor x {}", value,
                                            x.shape().str()));
  // The mask in x's dtype as 0 / 1 (a float mask's 0.5 must not truncate to 0 on the way).
  Tensor m = mask.dtype() == x.dtype() ? mask.detach() : (1 - eq(mask.detach(), scalar(0.0, mask.dtype()))).to(x.dtype());
  Tensor out = binary_map("masked_fill", kern::Binary::MaskedFill, m, x, {value, 0});
  return record("masked_fill", {x}, out, [ms = Saved(m, "its mask")](const Tensor& g, Grads& gr) {
    gr.add(0, masked_fill(g, *ms, 0.0));  // linear in g: recorded itself under create_graph
  });
}

Tensor multinomial(const Tensor& probs_in, int64_t num_samples, bool replacement) {
  if (probs_in.dim() != 1 && probs_in.dim() != 2)
    throw std::invalid_argument("multinomial: probs must be [C] or [N, C], got " + probs_in.shape().str());
  const kern::KernelTable& kt = float_kernels_of("multinomial", probs_in);
  const int64_t C = probs_in.size(-1), N = probs_in.dim() == 2 ? probs_in.size(0) : 1;
  const std::string shape = probs_in.shape().str();
  if (C == 0) throw std::invalid_argument("multinomial: probs " + shape + " has no categories to draw from");
  if (num_samples <= 0)
    throw std::invalid_argument(fmt::format("multinomial: num_samples must be positive, got {}", num_samples));
  if (!replacement && num_samples > C)
    throw std::invalid_argument(fmt::format("multinomial: cannot draw {} samples without replacement from {} "
                                            "categories (probs {}); pass replacement = true or draw at most {}",
                                            num_samples, C, shape, C));
  Tensor p = probs_in.detach().contiguous();
  Tensor out = empty(probs_in.dim() == 2 ? Shape{N, num_samples} : Shape{num_samples}, DType::Int64);
  const kern::MultinomialStatus st =
      kt.select->multinomial_rows(mem(p), N, C, num_samples, replacement, &next_uniform, index_data(out));
  using S = kern::MultinomialStatus;
  switch (st.kind) {
    case S::Ok: return out;
    case S::BadValue:
      throw std::invalid_argument(fmt::format("multinomial: probs {} row {} has {} at column {}; every entry must be "
                                              "finite and >= 0",
                                              shape, st.row, st.value, st.col));
    case S::ZeroRow:
      throw std::invalid_argument(fmt::format("multinomial: probs {} row {} sums to 0; every row needs a positive "
                                              "entry",
                                              shape, st.row));
    case S::SumOverflow:
      throw std::invalid_argument(fmt::format("multinomial: probs {} row {} sums to infinity; scale the row down "
                                              "(it need not be normalised)",
                                              shape, st.row));
    case S::TooFewNonzero:
      throw std::invalid_argument(fmt::format("multinomial: cannot draw {} samples without replacement from probs {} "
                                              "row {}, which has only {} non-zero entries; pass replacement = true or "
                                              "draw at most {}",
                                              num_samples, shape, st.row, st.nonzero, st.nonzero));
  }
  return out;
}

}  // namespace tg
