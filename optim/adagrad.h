#pragma once
// Adagrad as in PyTorch 1.13's torch.optim.Adagrad (dense gradients, foreach=False). With t the
// parameter's step count:
//   g = grad + weight_decay * p
//   sum += g * g                          (sum starts at initial_accumulator_value)
//   p -= lr / (1 + (t - 1) * lr_decay) * g / (sqrt(sum) + eps)
#include <vector>

#include "tapegrad/optim/optimizer.h"

namespace tg::optim {

struct AdagradOptions {
  double lr = 1e-2;
  double lr_decay = 0.0;
  double weight_decay = 0.0;
  double initial_accumulator_value = 0.0;
  double eps = 1e-10;
};

class Adagrad : public Optimizer {
 public:
  explicit Adagrad(std::vector<Tensor> params, AdagradOptions options = {});
  // Per-group lr, weight_decay and options ("lr_decay", "initial_accumulator_value", "eps")
  // override `defaults`.
  Adagrad(std::vector<ParamGroup> groups, AdagradOptions defaults);

 protected:
  void update() override;
  void validate(const ParamGroup& group) const override;
};

}  // namespace tg::optim
