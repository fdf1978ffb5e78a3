#include "tapegrad/nn/layers.h"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/nn/init.h"

namespace tg::nn {

namespace {
int64_t positive(const char* module, const char* what, int64_t v) {
  if (v <= 0) throw std::invalid_argument(fmt::format("{}: {} must be positive, got {}", module, what, v));
  return v;
}
Tensor init_linear_weight(int64_t in, int64_t out, DType dtype) {
  Tensor w = empty(Shape{positive("Linear", "out_features", out), positive("Linear", "in_features", in)}, dtype);
  init::kaiming_uniform_(w);
  return w;
}
Tensor init_linear_bias(int64_t in, int64_t out, bool on, DType dtype) {
  if (!on) return Tensor();
  double bound = 1.0 / std::sqrt(static_cast<double>(in));
  return uniform(Shape{out}, -bound, bound, dtype);
}
}  // namespace

Linear::Linear(int64_t in, int64_t out, bool has_bias, DType dtype)
    : in_features(in),
      out_features(out),
      weight(register_parameter("weight", init_linear_weight(in, out, dtype))),
      bias(register_parameter("bias", init_linear_bias(in, out, has_bias, dtype))) {}

Tensor Linear::forward(const Tensor& x) {
  NameScope scope(name());
  if (x.dim() < 1 || x.size(-1) != in_features)
    throw std::invalid_argument(fmt::format("Linear({}, {}): input must be [..., {}], got {}", in_features,
                                            out_features, in_features, x.shape().str()));
  return linear(x, weight, bias);
}

Embedding::Embedding(int64_t num, int64_t dim, int64_t pad, DType dtype)
    : num_embeddings(positive("Embedding", "num_embeddings", num)),
      embedding_dim(positive("Embedding", "embedding_dim", dim)),
      padding_idx(pad),
      weight(register_parameter("weight", randn(Shape{num, dim}, dtype))) {
  if (pad < -1 || pad >= num)
    throw std::invalid_argument(
        fmt::format("Embedding: padding_idx must be in [0, {}) or -1 for none, got {}", num, pad));
  if (pad >= 0) init::zeros_(weight.detach().narrow(0, pad, 1));  // detached: a view op would be recorded
}

Tensor Embedding::forward(const Tensor& indices) {
  NameScope scope(name());
  return embedding(weight, indices, padding_idx);
}

Dropout::Dropout(double p_) : p(p_) {
  if (!(p >= 0.0 && p <= 1.0)) throw std::invalid_argument(fmt::format("Dropout: p must be in [0, 1], got {}", p));
}
Tensor Dropout::forward(const Tensor& x) { return dropout(x, p, is_training()); }

namespace {
Shape checked_normalized_shape(Shape s) {
  bool ok = s.size() >= 1;
  for (int64_t d : s) ok = ok && d > 0;
  if (!ok) throw std::invalid_argument("LayerNorm: normalized_shape must be one or more positive sizes, got " + s.str());
  return s;
}
}  // namespace

LayerNorm::LayerNorm(Shape shape, double eps_, bool affine, bool has_bias, DType dtype)
    : normalized_shape(checked_normalized_shape(shape)),
      eps(eps_),
      weight(register_parameter("weight", affine ? ones(normalized_shape, dtype) : Tensor())),
      bias(register_parameter("bias", affine && has_bias ? zeros(normalized_shape, dtype) : Tensor())) {
  if (!(eps >= 0) || !std::isfinite(eps))
    throw std::invalid_argument(fmt::format("LayerNorm: eps must be finite and >= 0, got {}", eps));
}
LayerNorm::LayerNorm(int64_t size, double eps_, bool affine, bool has_bias, DType dtype)
    : LayerNorm(Shape{size}, eps_, affine, has_bias, dtype) {}

Tensor LayerNorm::forward(const Tensor& x) {
  NameScope scope(name());
  return layer_norm(x, normalized_shape, weight, bias, eps);
}

Tensor Tanh::forward(const Tensor& x) { return tanh(x); }
Tensor Sigmoid::forward(const Tensor& x) { return sigmoid(x); }
Tensor ReLU::forward(const Tensor& x) { return relu(x); }

Sequential::Sequential(std::initializer_list<std::shared_ptr<UnaryModule>> modules) {
  for (auto& m : modules) push_back(m);
}

void Sequential::push_back(std::shared_ptr<UnaryModule> m) {
  layers_.push_back(register_module(std::to_string(layers_.size()), std::move(m)));
}

Tensor Sequential::forward(const Tensor& x) {
  Tensor y = x;
  for (auto& m : layers_) y = m->forward(y);
  return y;
}

}  // namespace tg::nn
