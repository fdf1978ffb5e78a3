// Neural-network ops: embedding, softmax family, losses, dropout, fused cell non-linearity.
#include <cmath>
#include <cstring>

#include "autograd/elementwise.h"
#include "autograd/vmath.h"
#include "autograd/ops.h"

namespace tg {
using namespace detail;

namespace {
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
  const int64_t* ix = indices.data<int64_t>();
  for (int64_t i = 0; i < indices.numel(); ++i)
    if (ix[i] < 0 || ix[i] >= V)
      throw std::out_of_range(fmt::format("embedding: index {} at position {} is out of range [0, {}) for weight {}; "
                                          "map unknown words to an <unk> id below {}",
                                          ix[i], i, V, weight.shape().str(), V));
  Tensor w = weight.detach().contiguous();
  Shape s = indices.shape();
  s.push_back(E);
  Tensor out = empty(s, weight.dtype());
  const size_t row = static_cast<size_t>(E) * dtype_size(weight.dtype());
  const char* src = static_cast<const char*>(w.raw_data());
  char* dst = static_cast<char*>(out.raw_data());
  for (int64_t i = 0; i < indices.numel(); ++i) std::memcpy(dst + i * row, src + ix[i] * row, row);
  return record("embedding", {weight}, out, [indices_s = Saved(indices, "its indices"), V, E, padding_idx](const Tensor& g, Grads& gr) {
    const Tensor& indices = *indices_s;
    if (grad_enabled()) {  // create_graph: index_add (recorded; its own gradient is index_select)
      const int64_t n = indices.numel();
      Tensor rows = g.reshape(Shape{n, E});
      if (padding_idx >= 0) {
        std::vector<double> keep(static_cast<size_t>(n));
        const int64_t* ix = indices.data<int64_t>();
        for (int64_t i = 0; i < n; ++i) keep[static_cast<size_t>(i)] = ix[i] == padding_idx ? 0.0 : 1.0;
        rows = mul(rows, from_vector(keep, Shape{n, 1}).to(g.dtype()));
      }
      return gr.add(0, index_add(rows, 0, indices.reshape(Shape{n}), V));
    }
    Tensor gw = zeros(Shape{V, E}, g.dtype());
    Tensor gc = g.contiguous();
    dispatch_float("embedding_backward", g.device(), g.dtype(), [&]<class T>() {
      const int64_t* ix = indices.data<int64_t>();
      const T* pg = gc.data<T>();
      T* pw = gw.data<T>();
      for (int64_t i = 0; i < indices.numel(); ++i) {
        if (ix[i] == padding_idx) continue;
        T* dst = pw + ix[i] * E;
        const T* src = pg + i * E;
        for (int64_t k = 0; k < E; ++k) dst[k] += src[k];
      }
    });
    gr.add(0, gw);
  });
}

TG_REGISTER_OP("softmax", "nn");
Tensor softmax(const Tensor& x, int64_t dim) {
  int64_t d = normalize_dim("softmax", dim, x.dim());
  if (x.dim() == 0) return ones_like(x) + x * 0.0;
  Tensor xt = transpose(x.detach(), d, -1).contiguous();  // rows along the softmax dim
  const int64_t n = xt.size(-1), rows = n ? xt.numel() / n : 0;
  Tensor yt = empty(xt.shape(), x.dtype());
  dispatch_float("softmax", x.device(), x.dtype(), [&]<class T>() {
    const T* p = xt.data<T>();
    T* o = yt.data<T>();
    for (int64_t r = 0; r < rows; ++r) {
      const T* in = p + r * n;
      T* out = o + r * n;
      T m = in[0];
      for (int64_t i = 1; i < n; ++i) m = in[i] > m ? in[i] : m;
      T total = 0;
      for (int64_t i = 0; i < n; ++i) total += (out[i] = vmath::exp(in[i] - m));
      for (int64_t i = 0; i < n; ++i) out[i] /= total;
    }
  });
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
    shift = dispatch_float("log_softmax", x.device(), x.dtype(), [&]<class T>() {
      return unary_map<T>(shift, [](T v) { return std::isfinite(v) ? v : T(0); });
    });
  }
  Tensor z = x - shift;
  return z - log(x.dim() == 0 ? exp(z) : sum(exp(z), {d}, true));
}

TG_REGISTER_OP("binary_cross_entropy_with_logits", "nn");
Tensor binary_cross_entropy_with_logits(const Tensor& logits, const Tensor& target, Reduction r) {
  if (!(logits.shape() == target.shape()))
    throw std::invalid_argument(fmt::format("binary_cross_entropy_with_logits: logits {} and target {} must have the "
                                            "same shape",
                                            logits.shape().str(), target.shape().str()));
  check_same_dtype("binary_cross_entropy_with_logits", logits, target);
  // One fused op (the toy benchmark's loss was a dozen recorded nodes): per element
  // max(x, 0) - x*y + log(1 + exp(-|x|)), which never exponentiates a large positive number.
  Tensor x = logits.contiguous(), y = target.contiguous();
  const int64_t n = x.numel();
  Tensor per = empty(x.shape(), x.dtype());
  double total = dispatch_float("binary_cross_entropy_with_logits", x.device(), x.dtype(), [&]<class T>() {
    const T *px = x.data<T>(), *py = y.data<T>();
    T* o = per.data<T>();
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) {
      const T v = px[i];
      o[i] = (v > 0 ? v : T(0)) - v * py[i] + std::log1p(std::exp(-std::abs(v)));
      acc += o[i];
    }
    return acc;
  });
  const double scale = r == Reduction::Mean ? 1.0 / static_cast<double>(std::max<int64_t>(n, 1)) : 1.0;
  Tensor out = r == Reduction::None ? per : scalar(total * scale, x.dtype());
  if (r == Reduction::Mean && n == 0) out = scalar(NAN, x.dtype());
  return record("binary_cross_entropy_with_logits", {logits, target}, out, [xs = Saved(x, 0), ys = Saved(y, 1), r, scale](const Tensor& g, Grads& gr) {
    const Tensor& x = *xs;
    const Tensor& y = *ys;
    if (grad_enabled()) {  // create_graph: scale g (sigmoid(x) - y) and scale g (-x), recorded
      const Tensor sg = g * scale;
      if (gr.needs(0)) gr.add(0, mul(sg, sigmoid(x) - y));
      if (gr.needs(1)) gr.add(1, mul(sg, neg(x)));
      return;
    }
    Tensor gc = g.contiguous();
    const int64_t n = x.numel();
    auto grad_of = [&](bool wrt_logits) {
      Tensor d = empty(x.shape(), x.dtype());
      dispatch_float("binary_cross_entropy_with_logits_backward", x.device(), x.dtype(), [&]<class T>() {
        const T *px = x.data<T>(), *py = y.data<T>(), *pg = gc.data<T>();
        T* o = d.data<T>();
        for (int64_t i = 0; i < n; ++i) {
          const T gi = static_cast<T>(scale) * (r == Reduction::None ? pg[i] : pg[0]);
          o[i] = gi * (wrt_logits ? T(1) / (T(1) + std::exp(-px[i])) - py[i] : -px[i]);
        }
      });
      return d;
    };
    if (gr.needs(0)) gr.add(0, grad_of(true));
    if (gr.needs(1)) gr.add(1, grad_of(false));
  });
}

TG_REGISTER_OP("nll_loss", "nn");
Tensor nll_loss(const Tensor& log_probs, const Tensor& target_in, int64_t ignore_index, Reduction r) {
  if (log_probs.dim() != 2 || target_in.dim() != 1 || target_in.size(0) != log_probs.size(0))
    throw std::invalid_argument(fmt::format("nll_loss: expected log_probs [N, C] and target [N], got {} and {}",
                                            log_probs.shape().str(), target_in.shape().str()));
  if (target_in.dtype() != DType::Int64)
    throw std::invalid_argument(std::string("nll_loss: target must be int64 class indices, got ") +
                                dtype_name(target_in.dtype()));
  const int64_t N = log_probs.size(0), C = log_probs.size(1);
  Tensor target = target_in.contiguous();
  const int64_t* t = target.data<int64_t>();
  int64_t valid = 0;
  for (int64_t i = 0; i < N; ++i) {
    if (t[i] == ignore_index) continue;
    if (t[i] < 0 || t[i] >= C)
      throw std::out_of_range(fmt::format("nll_loss: target {} at position {} is out of range [0, {}) classes", t[i],
                                          i, C));
    ++valid;
  }
  // Per-element losses (0 where ignored), then the reduction; mean divides by the valid count.
  Tensor picked = zeros(Shape{N}, log_probs.dtype());
  Tensor lp = log_probs.detach();
  dispatch_float("nll_loss", lp.device(), lp.dtype(), [&]<class T>() {
    const T* p = lp.data<T>();
    T* o = picked.data<T>();
    for (int64_t i = 0; i < N; ++i)
      if (t[i] != ignore_index) o[i] = -p[i * lp.strides()[0] + t[i] * lp.strides()[1]];
  });
  Tensor out = picked;
  double scale = 1.0;
  if (r != Reduction::None) {
    scale = r == Reduction::Mean ? 1.0 / static_cast<double>(std::max<int64_t>(valid, 1)) : 1.0;
    out = scalar(picked.sum().item() * scale, log_probs.dtype());
    if (r == Reduction::Mean && valid == 0) out = scalar(NAN, log_probs.dtype());
  }
  return record("nll_loss", {log_probs}, out, [target_s = Saved(target, "its target"), ignore_index, scale, N, C, r](const Tensor& g, Grads& gr) {
    const Tensor& target = *target_s;
    if (grad_enabled()) {  // create_graph: a constant one-hot times g, recorded
      std::vector<double> onehot(static_cast<size_t>(N * C), 0.0);
      const int64_t* t = target.data<int64_t>();
      for (int64_t i = 0; i < N; ++i)
        if (t[i] != ignore_index) onehot[static_cast<size_t>(i * C + t[i])] = -scale;
      const Tensor m = from_vector(onehot, Shape{N, C}).to(g.dtype());
      return gr.add(0, mul(m, r == Reduction::None ? g.reshape(Shape{N, 1}) : g));
    }
    Tensor gl = zeros(Shape{N, C}, g.dtype());
    Tensor gc = g.contiguous();
    dispatch_float("nll_loss_backward", g.device(), g.dtype(), [&]<class T>() {
      const int64_t* t = target.data<int64_t>();
      const T* pg = gc.data<T>();
      T* o = gl.data<T>();
      for (int64_t i = 0; i < N; ++i)
        if (t[i] != ignore_index) o[i * C + t[i]] = -static_cast<T>(scale) * (r == Reduction::None ? pg[i] : pg[0]);
    });
    gr.add(0, gl);
  });
}

TG_REGISTER_OP("cross_entropy", "nn");
Tensor cross_entropy(const Tensor& logits, const Tensor& target, int64_t ignore_index, Reduction r) {
  if (logits.dim() != 2)
    throw std::invalid_argument("cross_entropy: expected logits [N, C], got " + logits.shape().str());
  return nll_loss(log_softmax(logits, 1), target, ignore_index, r);
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
  dispatch_float("dropout", x.device(), x.dtype(), [&]<class T>() {
    T* m = mask.data<T>();
    for (int64_t i = 0; i < mask.numel(); ++i) m[i] = next_uniform() >= p ? T(keep_scale) : T(0);
  });
  return x * mask;
}

TG_REGISTER_OP("add_tanh", "nn");
Tensor add_tanh(const Tensor& a, const Tensor& b) {
  check_same_dtype("add_tanh", a, b);
  Shape s = broadcast_shapes("add_tanh", a.shape(), b.shape());
  Tensor out;
  if (a.dtype() == DType::Float32 && a.shape() == s && b.shape() == s) {
    // Same shapes (the RNN case, where one side may be a strided time-step slice): SIMD over runs.
    out = empty(s, a.dtype());
    const auto f = [](vmath::f8 x, vmath::f8 y) { return vmath::tanh(x + y); };
    if (a.is_contiguous() && b.is_contiguous()) {
      vmath::map(a.data<float>(), b.data<float>(), out.data<float>(), out.numel(), f);
    } else {
      Strides so = out.strides(), sa = a.strides(), sb = b.strides();
      const Strides* st[3] = {&so, &sa, &sb};
      const int64_t base[3] = {0, 0, 0};
      float *po = out.data<float>(), *pa = a.data<float>(), *pb = b.data<float>();
      for_each_run<3>(s, st, base, [&](const int64_t* off, int64_t len, const int64_t* in) {
        if (in[1] == 1 && in[2] == 1) {
          vmath::map(pa + off[1], pb + off[2], po + off[0], len, f);
        } else {
          for (int64_t i = 0; i < len; ++i) po[off[0] + i] = vmath::tanh(pa[off[1] + i * in[1]] + pb[off[2] + i * in[2]]);
        }
      });
    }
  } else {
    out = dispatch_float("add_tanh", a.device(), a.dtype(), [&]<class T>() {
      return binary_map<T>(a, b, s, a.dtype(), [](T x, T y) { return vmath::tanh(x + y); });
    });
  }
  return record("add_tanh", {a, b}, out, [out_s = Saved(out, Saved::kOutput), sa = a.shape(), sb = b.shape()](const Tensor& g, Grads& gr) {
    if (grad_enabled()) {  // create_graph: g (1 - y^2), recorded
      const Tensor y = out_s.connected();
      const Tensor d = mul(g, 1.0 - y * y);
      if (gr.needs(0)) gr.add(0, sum_to(d, sa));
      if (gr.needs(1)) gr.add(1, sum_to(d, sb));
      return;
    }
    const Tensor& out = *out_s;
    Tensor d = dispatch_float("add_tanh_backward", g.device(), g.dtype(), [&]<class T>() {
      return binary_map<T>(g, out, g.shape(), g.dtype(), [](T dy, T y) { return dy * (1 - y * y); });
    });
    if (gr.needs(0)) gr.add(0, sum_to(d, sa));
    if (gr.needs(1)) gr.add(1, sum_to(d, sb));
  });
}

}  // namespace tg
