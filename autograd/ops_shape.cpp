// Shape ops. Views share storage with their input; cat/stack/index_select copy.
#include "tapegrad/autograd/elementwise.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"

namespace tg {
using namespace detail;

TG_REGISTER_OP("reshape", "shape");
Tensor reshape(const Tensor& x, Shape shape) {
  int64_t infer = -1, known = 1;
  for (int64_t i = 0; i < shape.size(); ++i) {
    if (shape[i] == -1) {
      if (infer >= 0) throw std::invalid_argument("reshape: only one dimension can be -1, got " + shape.str());
      infer = i;
    } else if (shape[i] < 0) {
      throw std::invalid_argument("reshape: negative size in " + shape.str());
    } else if (__builtin_mul_overflow(known, shape[i], &known)) {
      throw std::length_error(fmt::format("reshape: target shape {} has more elements than int64 can count (tensor "
                                          "{} has {})",
                                          shape.str(), x.shape().str(), x.numel()));
    }
  }
  if (infer >= 0) shape[infer] = known == 0 ? 0 : x.numel() / known;
  const int64_t n = checked_numel("reshape", shape);
  if (n != x.numel())
    throw std::invalid_argument(fmt::format("reshape: cannot view shape {} ({} elements) as {} ({} elements)",
                                            x.shape().str(), x.numel(), shape.str(), n));
  if (shape == x.shape()) return x;
  Tensor src = x.is_contiguous() ? x : contiguous(x.detach());
  Tensor out = make_view(src, shape, contiguous_strides(shape), src.offset());
  return record("reshape", {x}, out, [in = x.shape()](const Tensor& g, Grads& gr) { gr.add(0, g.reshape(in)); });
}

TG_REGISTER_OP("transpose", "shape");
Tensor transpose(const Tensor& x, int64_t d0, int64_t d1) {
  if (x.dim() < 2 && (d0 == d1 || x.dim() == 0)) return x;
  int64_t a = normalize_dim("transpose", d0, x.dim()), b = normalize_dim("transpose", d1, x.dim());
  if (a == b) return x;
  Shape s = x.shape();
  Strides st = x.strides();
  std::swap(s[a], s[b]);
  std::swap(st[a], st[b]);
  Tensor out = make_view(x, s, st, x.offset());
  return record("transpose", {x}, out, [a, b](const Tensor& g, Grads& gr) { gr.add(0, transpose(g, a, b)); });
}

TG_REGISTER_OP("permute", "shape");
Tensor permute(const Tensor& x, const Shape& order) {
  if (order.size() != x.dim())
    throw std::invalid_argument(fmt::format("permute: order {} has {} entries for a tensor of shape {}", order.str(),
                                            order.size(), x.shape().str()));
  Shape s, inverse;
  Strides st;
  inverse.resize(order.size());
  bool seen[kMaxRank] = {};
  for (int64_t i = 0; i < order.size(); ++i) {
    int64_t d = normalize_dim("permute", order[i], x.dim());
    if (seen[d]) throw std::invalid_argument("permute: dim repeated in order " + order.str());
    seen[d] = true;
    s.push_back(x.size(d));
    st.push_back(x.strides()[d]);
    inverse[d] = i;
  }
  Tensor out = make_view(x, s, st, x.offset());
  return record("permute", {x}, out, [inverse](const Tensor& g, Grads& gr) { gr.add(0, permute(g, inverse)); });
}

TG_REGISTER_OP("squeeze", "shape");
Tensor squeeze(const Tensor& x, int64_t dim) {
  int64_t d = normalize_dim("squeeze", dim, x.dim());
  if (x.dim() == 0 || x.size(d) != 1) return x;  // as in PyTorch: a dim that is not 1 stays
  Shape s = x.shape();
  Strides st = x.strides();
  s.erase(d);
  st.erase(d);
  Tensor out = make_view(x, s, st, x.offset());
  return record("squeeze", {x}, out, [in = x.shape()](const Tensor& g, Grads& gr) { gr.add(0, g.reshape(in)); });
}

TG_REGISTER_OP("unsqueeze", "shape");
Tensor unsqueeze(const Tensor& x, int64_t dim) {
  int64_t d = normalize_dim("unsqueeze", dim, x.dim() + 1);
  Shape s = x.shape();
  Strides st = x.strides();
  int64_t stride = d < x.dim() ? x.strides()[d] * x.size(d) : 1;
  s.insert(d, 1);
  st.insert(d, stride);
  Tensor out = make_view(x, s, st, x.offset());
  return record("unsqueeze", {x}, out, [d](const Tensor& g, Grads& gr) { gr.add(0, squeeze(g, d)); });
}

TG_REGISTER_OP("expand", "shape");
Tensor expand(const Tensor& x, const Shape& shape) {
  if (shape.size() < x.dim())
    throw std::invalid_argument(fmt::format("expand: target {} has fewer dims than the tensor {}", shape.str(),
                                            x.shape().str()));
  const int64_t lead = shape.size() - x.dim();
  Shape s;
  Strides st;
  for (int64_t i = 0; i < shape.size(); ++i) {
    int64_t j = i - lead;
    int64_t want = shape[i];
    if (want < -1) throw std::invalid_argument("expand: negative size in target shape " + shape.str());
    if (j < 0) {
      if (want < 0) throw std::invalid_argument("expand: -1 is not allowed for a new leading dim in " + shape.str());
      s.push_back(want);
      st.push_back(0);
      continue;
    }
    int64_t have = x.size(j);
    if (want == -1) want = have;
    if (have != want && have != 1)
      throw std::invalid_argument(fmt::format("expand: cannot expand shape {} to {} (dim {} has size {}, only size-1 "
                                              "dims expand)",
                                              x.shape().str(), shape.str(), j, have));
    s.push_back(want);
    st.push_back(have == want ? x.strides()[j] : 0);
  }
  if (s == x.shape()) return x;
  checked_numel("expand", s);  // e.g. [1] to [2^62, 4]: a view whose element count overflows
  Tensor out = make_view(x, s, st, x.offset());
  return record("expand", {x}, out, [in = x.shape()](const Tensor& g, Grads& gr) { gr.add(0, sum_to(g, in)); });
}

TG_REGISTER_OP("narrow", "shape");
Tensor narrow(const Tensor& x, int64_t dim, int64_t start, int64_t length) {
  int64_t d = normalize_dim("narrow", dim, x.dim());
  if (x.dim() == 0) throw std::invalid_argument("narrow: cannot narrow a rank-0 tensor");
  if (start < 0) start += x.size(d);
  if (start < 0 || length < 0 || start > x.size(d) || length > x.size(d) - start)  // no start + length overflow
    throw std::out_of_range(fmt::format("narrow: start {} length {} is outside dim {} of size {} (shape {})", start,
                                        length, d, x.size(d), x.shape().str()));
  Shape s = x.shape();
  s[d] = length;
  Tensor out = make_view(x, s, x.strides(), x.offset() + start * x.strides()[d]);
  return record("narrow", {x}, out, [d, start](const Tensor& g, Grads& gr) { gr.add_window(0, d, start, g); });
}

TG_REGISTER_OP("select", "shape");
Tensor select(const Tensor& x, int64_t dim, int64_t index) {  // one view and one node (not narrow + squeeze)
  if (x.dim() == 0) throw std::invalid_argument("select: cannot select from a rank-0 tensor");
  int64_t d = normalize_dim("select", dim, x.dim());
  if (index < 0) index += x.size(d);
  if (index < 0 || index >= x.size(d))
    throw std::out_of_range(fmt::format("select: index {} is outside dim {} of size {} (shape {})", index, d,
                                        x.size(d), x.shape().str()));
  Shape s = x.shape();
  Strides st = x.strides();
  const int64_t off = x.offset() + index * st[d];
  s.erase(d);
  st.erase(d);
  Tensor out = make_view(x, s, st, off);
  return record("select", {x}, out, [d, index](const Tensor& g, Grads& gr) { gr.add_window(0, d, index, g, true); });
}

TG_REGISTER_OP("cat", "shape");
Tensor cat(const std::vector<Tensor>& xs, int64_t dim) {
  if (xs.empty()) throw std::invalid_argument("cat: needs at least one tensor");
  const Tensor& first = xs[0];
  int64_t d = normalize_dim("cat", dim, first.dim());
  Shape s = first.shape();
  s[d] = 0;
  for (size_t i = 0; i < xs.size(); ++i) {
    check_same_dtype("cat", first, xs[i]);
    bool ok = xs[i].dim() == first.dim();
    for (int64_t k = 0; ok && k < first.dim(); ++k) ok = k == d || xs[i].size(k) == first.size(k);
    if (!ok)
      throw std::invalid_argument(fmt::format("cat: tensor {} has shape {}, incompatible with {} along dim {} (all "
                                              "dims but the cat dim must match)",
                                              i, xs[i].shape().str(), first.shape().str(), d));
    if (__builtin_add_overflow(s[d], xs[i].size(d), &s[d]))
      throw std::length_error(fmt::format("cat: the sizes along dim {} overflow int64", d));
  }
  Tensor out = empty(s, first.dtype());
  std::vector<int64_t> sizes;
  int64_t at = 0;
  const int64_t step = out.strides()[d];
  for (auto& x : xs) {
    Tensor window = make_view(out, x.shape(), out.strides(), at * step);
    copy_(window, x);
    sizes.push_back(x.size(d));
    at += x.size(d);
  }
  return record("cat", std::span<const Tensor>(xs), out, [sizes, d](const Tensor& g, Grads& gr) {
    int64_t start = 0;
    for (size_t i = 0; i < sizes.size(); ++i) {
      if (gr.needs(static_cast<int>(i))) gr.add(static_cast<int>(i), g.narrow(d, start, sizes[i]));
      start += sizes[i];
    }
  });
}

TG_REGISTER_OP("stack", "shape");
Tensor stack(const std::vector<Tensor>& xs, int64_t dim) {  // one node; a single tensor is an unsqueeze view
  if (xs.empty()) throw std::invalid_argument("stack: needs at least one tensor");
  int64_t d = normalize_dim("stack", dim, xs[0].dim() + 1);
  for (size_t i = 1; i < xs.size(); ++i) {
    if (!(xs[i].shape() == xs[0].shape()))
      throw std::invalid_argument(fmt::format("stack: tensor {} has shape {}, expected {} like tensor 0", i,
                                              xs[i].shape().str(), xs[0].shape().str()));
    check_same_dtype("stack", xs[0], xs[i]);
  }
  if (xs.size() == 1) return unsqueeze(xs[0], d);
  Shape s = xs[0].shape();
  s.insert(d, static_cast<int64_t>(xs.size()));
  Tensor out = empty(s, xs[0].dtype());
  Strides part = out.strides();  // entry i of the output: drop dim d, start at i * stride(d)
  const int64_t step = part[d];
  part.erase(d);
  for (size_t i = 0; i < xs.size(); ++i) {
    Tensor window = make_view(out, xs[i].shape(), part, static_cast<int64_t>(i) * step);
    copy_(window, xs[i]);
  }
  return record("stack", std::span<const Tensor>(xs), out, [d, n = xs.size()](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: recorded selects
      for (size_t i = 0; i < n; ++i)
        if (gr.needs(static_cast<int>(i))) gr.add(static_cast<int>(i), select(g, d, static_cast<int64_t>(i)));
      return;
    }
    Strides st = g.strides();
    const int64_t gstep = st[d];
    st.erase(d);
    Shape s = g.shape();
    s.erase(d);
    for (size_t i = 0; i < n; ++i)
      if (gr.needs(static_cast<int>(i))) gr.add(static_cast<int>(i), make_view(g, s, st, g.offset() + static_cast<int64_t>(i) * gstep));
  });
}

TG_REGISTER_OP("split", "shape");
std::vector<Tensor> split(const Tensor& x, int64_t size, int64_t dim) {
  int64_t d = normalize_dim("split", dim, x.dim());
  if (size <= 0) throw std::invalid_argument(fmt::format("split: size must be positive, got {}", size));
  std::vector<Tensor> out;
  for (int64_t start = 0; start < x.size(d); start += size)
    out.push_back(narrow(x, d, start, std::min(size, x.size(d) - start)));
  return out;
}

namespace {
const int64_t* index_data(const Tensor& index) { return static_cast<const int64_t*>(mem(index)); }

void check_indices(const char* op, const Tensor& index, int64_t limit, const Shape& source) {
  if (index.dtype() != DType::Int64)
    throw std::invalid_argument(fmt::format("{}: indices must be int64, got {}", op, dtype_name(index.dtype())));
  Tensor c = index.contiguous();
  int64_t bad = 0;
  if (const int64_t i = kernels_of(c).index->first_out_of_range(index_data(c), c.numel(), limit, nullptr, nullptr, &bad);
      i >= 0)
    throw std::out_of_range(fmt::format("{}: index {} at position {} is out of range [0, {}) for source of shape {}",
                                        op, bad, i, limit, source.str()));
}
}  // namespace

TG_REGISTER_OP("index_select", "shape");
Tensor index_select(const Tensor& x_in, int64_t dim, const Tensor& index_in) {
  int64_t d = normalize_dim("index_select", dim, x_in.dim());
  if (index_in.dim() != 1)
    throw std::invalid_argument("index_select: index must be 1-D, got shape " + index_in.shape().str());
  check_indices("index_select", index_in, x_in.size(d), x_in.shape());
  Tensor x = x_in.detach().contiguous(), index = index_in.contiguous();
  Shape s = x.shape();
  s[d] = index.numel();
  int64_t outer = 1, inner = 1;
  for (int64_t k = 0; k < d; ++k) outer *= x.size(k);
  for (int64_t k = d + 1; k < x.dim(); ++k) inner *= x.size(k);
  const int64_t n = index.numel(), src_n = x.size(d);
  Tensor out = empty(s, x.dtype());
  kernels_of(x).index->gather(mem(x), mem(out), outer, n, src_n, inner, index_data(index));
  return record("index_select", {x_in}, out, [index_s = Saved(index, "its indices"), in = x.shape(), d, outer, inner, n](const Tensor& g, Grads& gr) {
    const Tensor& index = *index_s;
    if (grad_enabled()) return gr.add(0, index_add(g, d, index, in[d]));  // create_graph: recorded
    Tensor gi = zeros(in, g.dtype());
    Tensor gc = g.contiguous();
    kernels_of(gc).index->scatter_add(mem(gc), mem(gi), outer, n, in[d], inner, index_data(index), -1);
    gr.add(0, gi);
  });
}

TG_REGISTER_OP("index_add", "shape");
Tensor index_add(const Tensor& src_in, int64_t dim, const Tensor& index_in, int64_t size) {
  int64_t d = normalize_dim("index_add", dim, src_in.dim());
  if (index_in.dim() != 1 || index_in.numel() != src_in.size(d))
    throw std::invalid_argument(fmt::format("index_add: index must be 1-D with one entry per slice of the source "
                                            "along dim {} ({}), got shape {}",
                                            d, src_in.size(d), index_in.shape().str()));
  if (size < 0) throw std::invalid_argument(fmt::format("index_add: size must be >= 0, got {}", size));
  Shape s = src_in.shape();
  s[d] = size;
  check_indices("index_add", index_in, size, s);
  Tensor src = src_in.detach().contiguous(), index = index_in.contiguous();
  int64_t outer = 1, inner = 1;
  for (int64_t k = 0; k < d; ++k) outer *= src.size(k);
  for (int64_t k = d + 1; k < src.dim(); ++k) inner *= src.size(k);
  const int64_t n = index.numel();
  Tensor out = zeros(s, src.dtype());
  // Indices were checked to be >= 0, so skip = -1 skips nothing.
  kernels_of(src).index->scatter_add(mem(src), mem(out), outer, n, size, inner, index_data(index), -1);
  return record("index_add", {src_in}, out, [index_s = Saved(index, "its indices"), d](const Tensor& g, Grads& gr) {
    gr.add(0, index_select(g, d, *index_s));
  });
}

TG_REGISTER_OP("clone", "shape");
// A copy that stays in the graph (x.clone() of a tensor that requires grad passes gradients back,
// as in PyTorch): the usual way to get a tensor one may write into in place.
Tensor Tensor::clone() const {
  Tensor out = empty(shape(), dtype());
  copy_(out, *this);
  return record("clone", {*this}, out, [](const Tensor& g, Grads& gr) { gr.add(0, g); });
}

TG_REGISTER_OP("contiguous", "shape");
Tensor contiguous(const Tensor& x) {
  if (x.is_contiguous()) return x;
  Tensor out = empty(x.shape(), x.dtype());
  copy_(out, x);
  return record("contiguous", {x}, out, [](const Tensor& g, Grads& gr) { gr.add(0, g); });
}

TG_REGISTER_OP("to_dtype", "shape");
Tensor to_dtype(const Tensor& x, DType t) {
  if (x.dtype() == t) return x;
  Tensor out = empty(x.shape(), t);
  copy_(out, x);
  if (!is_floating(t)) return out;
  return record("to_dtype", {x}, out, [from = x.dtype()](const Tensor& g, Grads& gr) { gr.add(0, g.to(from)); });
}

}  // namespace tg
