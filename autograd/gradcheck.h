#pragma once
// Finite-difference gradient checking in float64: the analytic Jacobian (one backward per output
// element) against central differences (two forwards per input element).
#include <functional>
#include <string>
#include <vector>

#include "tapegrad/autograd/tensor.h"

namespace tg {

struct GradcheckOptions {
  double eps = 1e-6;
  double atol = 1e-5;
  double rtol = 1e-3;
  std::string name = "function";  // reported on failure: use the op's name
  bool throw_on_failure = true;
};

struct GradcheckResult {
  bool ok = true;
  std::string message;  // on failure: op, input, element index, analytic vs numeric
  double max_abs_error = 0;
};

using GradcheckFn = std::function<Tensor(const std::vector<Tensor>&)>;

// Inputs that require grad are checked; they must be float64. Throws std::runtime_error on a
// mismatch unless options.throw_on_failure is false.
GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs, GradcheckOptions options = {});

// Second derivatives (torch.autograd.gradgradcheck): gradcheck of the function
//   (inputs, v) -> the gradients of <fn(inputs), v> with respect to the inputs that require grad,
// computed by tg::grad with create_graph, with v a fixed cotangent of fn's output shape. v is an
// input of that function too, so the backward's dependence on the incoming gradient is checked
// as well as its dependence on the inputs.
GradcheckResult gradgradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs,
                              GradcheckOptions options = {});

}  // namespace tg
