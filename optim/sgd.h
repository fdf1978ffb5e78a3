#pragma once
// Stochastic gradient descent with optional momentum, dampening, Nesterov and L2 weight decay;
// the update is PyTorch 1.13's torch.optim.SGD (foreach=False):
//   g = grad + weight_decay * p
//   buf = g on the first step, else momentum * buf + (1 - dampening) * g
//   g = nesterov ? g + momentum * buf : buf          (only when momentum != 0)
//   p -= lr * g
#include <vector>

#include "tapegrad/optim/optimizer.h"

namespace tg::optim {

struct SGDOptions {
  double lr = 0.01;
  double momentum = 0.0;
  double dampening = 0.0;
  double weight_decay = 0.0;
  bool nesterov = false;
};

class SGD : public Optimizer {
 public:
  explicit SGD(std::vector<Tensor> params, SGDOptions options = {});
  // Per-group values (lr, weight_decay, options["momentum"], ...) override `defaults`.
  SGD(std::vector<ParamGroup> groups, SGDOptions defaults);

 protected:
  void update() override;
  void validate(const ParamGroup& group) const override;
};

}  // namespace tg::optim
