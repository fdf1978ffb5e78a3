// The exact Hessian of f(x) = sum(tanh(x W^T + b) * softmax(x)) + sum(sigmoid(x) * x^2) / n,
// n = 5, as n tg::grad calls on one create_graph gradient, against central finite differences of
// the gradient (and against torch.autograd.functional.hessian from
// tests/second_order/reference_hessian.json).
//   hessian [reference dir]
#include <fmt/format.h>

#include "tapegrad/autograd/format.h"
#include "examples/second_order/second_order.h"

int main(int argc, char** argv) {
  using namespace tg::second_order;
  const std::string dir = argc > 1 ? argv[1] : TG_SECOND_ORDER_REFERENCES;
  HessianResult r = hessian(load_json(dir + "/reference_hessian.json"));
  fmt::print("Hessian:\n{}\n", r.exact);
  fmt::print("vs central differences of the gradient (h = {:.0e}): {} (tolerance {:.2e})\n", r.h, r.fd_diff.str(),
             r.tolerance);
  fmt::print("symmetry: max |H - H^T| {:.2e}\n", r.symmetry.abs);
  fmt::print("vs PyTorch: f {}; gradient {}; Hessian {}\n", r.f_diff.str(), r.grad_diff.str(), r.torch_diff.str());
  const bool ok = r.fd_diff.abs < r.tolerance && r.torch_diff.rel < 1e-12 && r.symmetry.abs < 1e-14;
  fmt::print("{}\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
