#pragma once
// Adam (L2 penalty added to the gradient) and AdamW (decoupled weight decay), following
// PyTorch 1.13's torch.optim.Adam / AdamW (foreach=False). With t the parameter's step count:
//   g = grad (+ weight_decay * p for Adam)        AdamW instead first does p *= 1 - lr * weight_decay
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g * g           amsgrad: v_max = max(v_max, v), used below for v
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
#include <utility>
#include <vector>

#include "tapegrad/optim/optimizer.h"

namespace tg::optim {

struct AdamOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 0.0;
  bool amsgrad = false;
};

struct AdamWOptions {
  double lr = 1e-3;
  std::pair<double, double> betas = {0.9, 0.999};
  double eps = 1e-8;
  double weight_decay = 1e-2;
  bool amsgrad = false;
};

class Adam : public Optimizer {
 public:
  explicit Adam(std::vector<Tensor> params, AdamOptions options = {});
  // Per-group lr, weight_decay and options ("beta1", "beta2", "eps", "amsgrad") override `defaults`.
  Adam(std::vector<ParamGroup> groups, AdamOptions defaults);

 protected:
  Adam(const char* name, std::vector<ParamGroup> groups, const AdamWOptions& defaults, bool decoupled);
  void update() override;
  void validate(const ParamGroup& group) const override;

 private:
  bool decoupled_;
};

class AdamW : public Adam {
 public:
  explicit AdamW(std::vector<Tensor> params, AdamWOptions options = {});
  AdamW(std::vector<ParamGroup> groups, AdamWOptions defaults);
};

}  // namespace tg::optim
