// README's first example: write a function, differentiate it, check the gradient.
#include <fmt/format.h>

#include "tapegrad/autograd/format.h"
#include "tapegrad/autograd/gradcheck.h"
#include "tapegrad/autograd/ops.h"

int main() {
  using namespace tg;
  manual_seed(0);
  Tensor w = randn({3, 2}).requires_grad_();
  Tensor x = tensor({{0.1, 0.2, 0.3}});
  Tensor loss = tanh(matmul(x, w)).pow(2).sum();  // recorded on the tape
  loss.backward();                                 // walks it in reverse
  fmt::print("loss = {:.4f}\ndloss/dw = {}\n", loss.item(), w.grad());

  auto f = [](const std::vector<Tensor>& v) { return tanh(matmul(v[0], v[1])).pow(2).sum(); };
  auto r = gradcheck(f, {x.to(DType::Float64), w.detach().to(DType::Float64).requires_grad_()});
  fmt::print("gradcheck: {} (max abs error {:.2e})\n", r.ok ? "ok" : "FAILED", r.max_abs_error);
  return r.ok ? 0 : 1;
}
