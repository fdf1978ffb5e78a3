#pragma once
// Gradient clipping, as free functions and as hooks for Optimizer::add_hook.
// Parameters without a gradient are skipped. Gradients are changed in place.
#include <cmath>
#include <memory>
#include <vector>

#include "tapegrad/autograd/tensor.h"

namespace tg::optim {

class Optimizer;

// Scales all gradients together by max_norm / (total_norm + 1e-6) when that factor is below 1
// (PyTorch's formula), where total_norm is the norm_type-norm of all gradients concatenated
// (norm_type > 0, or INFINITY for the largest magnitude). One pass, accumulated in double.
// Returns the norm before clipping. A non-finite norm leaves the gradients untouched, so the
// caller can detect it and skip the step.
double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type = 2.0);
// Clamps every gradient element to [-limit, limit].
void clip_grad_value_(const std::vector<Tensor>& params, double limit);

// Hook form. Copies share the recorded value, so keep one copy and pass another to add_hook:
//   ClipGradNorm clip(5.0);  opt.add_hook(clip);  ...  opt.step();  log(clip.last_norm());
class ClipGradNorm {
 public:
  explicit ClipGradNorm(double max_norm, double norm_type = 2.0);
  void operator()(Optimizer& opt) const;
  double last_norm() const { return *last_; }  // pre-clip norm of the latest step; NaN before one

 private:
  double max_norm_, norm_type_;
  std::shared_ptr<double> last_;
};

class ClipGradValue {
 public:
  explicit ClipGradValue(double limit);
  void operator()(Optimizer& opt) const;
  double last_max_abs() const { return *last_; }  // largest |grad| before clipping; NaN before one

 private:
  double limit_;
  std::shared_ptr<double> last_;
};

}  // namespace tg::optim
