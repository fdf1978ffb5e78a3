// Reductions: sum, mean, max, logsumexp, and sum_to (the adjoint of broadcasting).
#include <cmath>
#include <limits>

#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

namespace tg {
using namespace detail;

namespace {

struct ReducePlan {
  Shape keep_shape;  // input shape with reduced dims set to 1
  Shape out_shape;   // what the caller gets (keep_shape without reduced dims unless keepdim)
  int64_t count = 1; // elements folded into each output
};

ReducePlan plan_reduce(const char* op, const Shape& in, std::vector<int64_t> dims, bool keepdim) {
  bool reduce[kMaxRank] = {};
  if (dims.empty()) for (int64_t d = 0; d < in.size(); ++d) reduce[d] = true;
  for (int64_t d : dims) {
    int64_t nd = normalize_dim(op, d, in.size());
    if (in.size() == 0) continue;
    if (reduce[nd] && !dims.empty() && std::count(dims.begin(), dims.end(), d) > 1)
      throw std::invalid_argument(fmt::format("{}: dim {} listed twice", op, d));
    reduce[nd] = true;
  }
  ReducePlan p;
  for (int64_t d = 0; d < in.size(); ++d) {
    p.keep_shape.push_back(reduce[d] ? 1 : in[d]);
    if (reduce[d]) p.count *= in[d];
    if (!reduce[d] || keepdim) p.out_shape.push_back(reduce[d] ? 1 : in[d]);
  }
  return p;
}

// Sums x into a new tensor of keep_shape (x's shape with 1 in the reduced dims).
Tensor sum_kernel(const Tensor& x, const Shape& keep_shape) {
  Tensor out = empty(keep_shape, x.dtype());
  kernels_of(x).reduce->sum(view_of(x), mem(out), keep_shape.begin());
  return out;
}

const int64_t* index_data(const Tensor& index) { return static_cast<const int64_t*>(mem(index)); }
int64_t* index_data(Tensor& index) { return static_cast<int64_t*>(mem(index)); }

// Broadcasts a reduced gradient back to the input's shape (a stride-0 view, no copy).
Tensor expand_back(const Tensor& g, const Shape& keep_shape, const Shape& in_shape) {
  return g.reshape(keep_shape).expand(in_shape);
}

}  // namespace

TG_REGISTER_OP("sum", "reduce");
Tensor sum(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  ReducePlan p = plan_reduce("sum", x.shape(), std::move(dims), keepdim);
  Tensor out = sum_kernel(x, p.keep_shape);
  if (!(p.out_shape == p.keep_shape)) {
    NoGradGuard ng;
    out = out.reshape(p.out_shape);
  }
  return record("sum", {x}, out, [p, in = x.shape()](const Tensor& g, Grads& gr) {
    gr.add(0, expand_back(g, p.keep_shape, in));
  });
}
Tensor sum(const Tensor& x) { return sum(x, {}, false); }

TG_REGISTER_OP("mean", "reduce");
Tensor mean(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  ReducePlan p = plan_reduce("mean", x.shape(), dims, keepdim);
  if (p.count == 0) throw std::invalid_argument("mean: reducing over an empty dimension of shape " + x.shape().str());
  return sum(x, std::move(dims), keepdim) * (1.0 / static_cast<double>(p.count));
}
Tensor mean(const Tensor& x) { return mean(x, {}, false); }

TG_REGISTER_OP("max", "reduce");
Tensor max(const Tensor& x, int64_t dim, bool keepdim) {
  int64_t d = normalize_dim("max", dim, x.dim());
  if (x.dim() == 0) return max(x);
  if (x.size(d) == 0) throw std::invalid_argument("max: reducing over an empty dim of shape " + x.shape().str());
  // Move `dim` last so each output is one contiguous run of the input.
  Tensor xt = transpose(x.detach(), d, -1).contiguous();
  const int64_t n = x.size(d), rows = x.numel() / n;
  Shape keep = x.shape();
  keep[d] = 1;
  Tensor values = empty(Shape{rows}, x.dtype()), index = empty(Shape{rows}, DType::Int64);
  kernels_of(x).reduce->max_rows(mem(xt), rows, n, mem(values), index_data(index));
  Shape moved = x.shape();  // the transposed layout's shape, with dim d last and reduced
  std::swap(moved[d], moved[moved.size() - 1]);
  moved[moved.size() - 1] = 1;
  Tensor out;
  {
    NoGradGuard ng;
    out = transpose(values.reshape(moved), d, -1).contiguous();
    if (!keepdim) out = out.squeeze(d);
    index = transpose(index.reshape(moved), d, -1).contiguous();
  }
  return record("max", {x}, out, [index, keep, d, in = x.shape()](const Tensor& g_in, Grads& gr) {
    // create_graph: the same scatter of ones is a constant mask, times g expanded (recorded).
    const bool recording = grad_enabled();
    const Tensor g = recording ? ones(keep, g_in.dtype()) : g_in;
    Tensor gi = zeros(in, g.dtype());
    Tensor gk = g.reshape(keep).contiguous();
    kernels_of(gi).index->scatter_to_argmax(mem(gk), index_data(index), mem(gi), keep.begin(), gi.strides().begin(),
                                            keep.size(), d);
    gr.add(0, recording ? mul(gi, expand_back(g_in, keep, in)) : gi);
  });
}

Tensor max(const Tensor& x) {
  if (x.numel() == 0) throw std::invalid_argument("max: empty tensor of shape " + x.shape().str());
  Tensor flat;
  {
    NoGradGuard ng;
    flat = x.detach().reshape(Shape{x.numel()});
  }
  Tensor m;
  {
    NoGradGuard ng;
    m = max(flat, 0, false);
  }
  Tensor index = argmax(flat, 0, false);
  return record("max", {x}, m, [index, in = x.shape()](const Tensor& g, Grads& gr) {
    const bool recording = grad_enabled();  // create_graph: a one-hot mask times g (recorded)
    // A kernel puts g at the argmax (the host never reads the index: a captured step's replay
    // follows a new argmax).
    Tensor gi = zeros(Shape{in.numel()}, g.dtype());
    const Tensor gk = recording ? ones(Shape{1}, g.dtype()) : g.reshape(Shape{1}).contiguous();
    const Shape one{1};
    kernels_of(gi).index->scatter_to_argmax(mem(gk), index_data(index), mem(gi), one.begin(), gi.strides().begin(), 1, 0);
    gr.add(0, recording ? mul(gi.reshape(in), g) : gi.reshape(in));
  });
}

Tensor argmax(const Tensor& x, int64_t dim, bool keepdim) {
  int64_t d = normalize_dim("argmax", dim, x.dim());
  if (x.dim() == 0) return zeros(Shape{}, DType::Int64);  // PyTorch: the one element is the max
  if (x.size(d) == 0)
    throw std::invalid_argument(fmt::format("argmax: reducing over dim {} of size 0 (shape {})", d, x.shape().str()));
  NoGradGuard ng;
  Tensor xt = transpose(x.detach(), d, -1).contiguous();
  const int64_t n = x.size(d), rows = x.numel() / n;
  Tensor index = empty(Shape{rows}, DType::Int64);
  // The first maximum; a NaN is the maximum (PyTorch), the same rule as max(x, dim), so max(x)
  // (whose gradient goes to argmax of the flattened tensor) agrees with it.
  kernels_of(x).reduce->max_rows(mem(xt), rows, n, nullptr, index_data(index));
  Shape moved = x.shape();
  std::swap(moved[d], moved[moved.size() - 1]);
  moved[moved.size() - 1] = 1;
  Tensor out = transpose(index.reshape(moved), d, -1).contiguous();
  return keepdim ? out : out.squeeze(d);
}

TG_REGISTER_OP("logsumexp", "reduce");
Tensor logsumexp(const Tensor& x, std::vector<int64_t> dims, bool keepdim) {
  ReducePlan p = plan_reduce("logsumexp", x.shape(), dims, true);
  // Shift by the (constant) max for stability; the gradient does not depend on the shift.
  Tensor shift;
  {
    NoGradGuard ng;
    shift = x.detach();
    for (int64_t d = 0; d < x.dim(); ++d)
      if (p.keep_shape[d] == 1 && x.size(d) != 1) shift = max(shift, d, true);
    // A slice that is all -inf (or has +inf/NaN) gets shift 0 so the result is -inf/inf/NaN, as it should.
    shift = unary_map("logsumexp", kern::Unary::FiniteOrZero, shift);
  }
  Tensor out = log(sum(exp(x - shift), dims, true)) + shift;
  if (!keepdim) {
    Shape s = plan_reduce("logsumexp", x.shape(), std::move(dims), false).out_shape;
    out = out.reshape(s);
  }
  return out;
}

Tensor sum_to(const Tensor& x, const Shape& shape) {
  if (x.shape() == shape) return x;
  const int64_t lead = x.dim() - shape.size();
  if (lead < 0)
    throw std::invalid_argument(fmt::format("sum_to: cannot reduce shape {} to the larger rank of {}", x.shape().str(),
                                            shape.str()));
  std::vector<int64_t> dims;
  for (int64_t i = 0; i < x.dim(); ++i)
    if (i < lead || (shape[i - lead] == 1 && x.size(i) != 1)) dims.push_back(i);
  Tensor s = dims.empty() ? x : sum(x, dims, true);
  return s.reshape(shape);
}

}  // namespace tg
