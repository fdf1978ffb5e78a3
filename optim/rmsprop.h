#pragma once
// RMSprop as in PyTorch 1.13's torch.optim.RMSprop (foreach=False):
//   g = grad + weight_decay * p
//   sq = alpha * sq + (1 - alpha) * g * g
//   avg = sqrt(sq) + eps                 centered: ga = alpha * ga + (1 - alpha) * g,
//                                                  avg = sqrt(sq - ga * ga) + eps
//   momentum > 0: buf = momentum * buf + g / avg,  p -= lr * buf
//   otherwise:    p -= lr * g / avg
#include <vector>

#include "tapegrad/optim/optimizer.h"

namespace tg::optim {

struct RMSpropOptions {
  double lr = 1e-2;
  double alpha = 0.99;
  double eps = 1e-8;
  double weight_decay = 0.0;
  double momentum = 0.0;
  bool centered = false;
};

class RMSprop : public Optimizer {
 public:
  explicit RMSprop(std::vector<Tensor> params, RMSpropOptions options = {});
  // Per-group lr, weight_decay and options ("alpha", "eps", "momentum", "centered") override `defaults`.
  RMSprop(std::vector<ParamGroup> groups, RMSpropOptions defaults);

 protected:
  void update() override;
  void validate(const ParamGroup& group) const override;
};

}  // namespace tg::optim
