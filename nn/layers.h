#pragma once
// Feed-forward layers: Linear, Embedding, Dropout, activations, and Sequential to chain them.
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "nn/module.h"

namespace tg::nn {

// A module with one tensor in and one out: what Sequential can chain.
class UnaryModule : public Module {
 public:
  virtual Tensor forward(const Tensor& x) = 0;
  Tensor operator()(const Tensor& x) { return forward(x); }
};

// y = x W^T + b over the last dim. PyTorch's initialization: weight and bias U(±1/sqrt(in)).
class Linear : public UnaryModule {
 public:
  Linear(int64_t in_features, int64_t out_features, bool bias = true, DType dtype = DType::Float32);
  Tensor forward(const Tensor& x) override;

  const int64_t in_features, out_features;
  Tensor& weight;  // [out, in]
  Tensor& bias;    // [out], undefined when built without bias
};

// Rows of `weight` [num, dim] picked by int64 indices of any shape -> [..., dim]. Init N(0, 1).
// The padding_idx row (if >= 0) starts at zero and never gets a gradient. padding_idx = -1 means
// no padding row (PyTorch's padding_idx=None). Unlike here, PyTorch reads a negative padding_idx
// from the end: its padding_idx=-1 is the last row, which here is num_embeddings - 1.
class Embedding : public UnaryModule {
 public:
  Embedding(int64_t num_embeddings, int64_t embedding_dim, int64_t padding_idx = -1, DType dtype = DType::Float32);
  Tensor forward(const Tensor& indices) override;

  const int64_t num_embeddings, embedding_dim, padding_idx;
  Tensor& weight;
};

// Zeroes elements with probability p while training (scaling the rest by 1/(1-p)); identity in eval.
class Dropout : public UnaryModule {
 public:
  explicit Dropout(double p = 0.5);
  Tensor forward(const Tensor& x) override;

  const double p;
};

class Tanh : public UnaryModule {
 public:
  Tensor forward(const Tensor& x) override;
};
class Sigmoid : public UnaryModule {
 public:
  Tensor forward(const Tensor& x) override;
};
class ReLU : public UnaryModule {
 public:
  Tensor forward(const Tensor& x) override;
};

// Applies its modules in order. They are registered as submodules "0", "1", ... so parameter
// names read "0.weight", "2.bias" as in PyTorch.
class Sequential : public UnaryModule {
 public:
  Sequential() = default;
  Sequential(std::initializer_list<std::shared_ptr<UnaryModule>> modules);
  void push_back(std::shared_ptr<UnaryModule> m);
  Tensor forward(const Tensor& x) override;

  size_t size() const { return layers_.size(); }
  const std::shared_ptr<UnaryModule>& operator[](size_t i) const { return layers_.at(i); }

 private:
  std::vector<std::shared_ptr<UnaryModule>> layers_;
};

}  // namespace tg::nn
