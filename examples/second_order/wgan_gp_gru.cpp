// A WGAN-GP critic step with a GRU critic: loss = critic(fake).mean() - critic(real).mean()
// + lambda * mean((||d critic(x_hat) / d x_hat|| - 1)^2) with x_hat between real and fake, the
// penalty's gradient taken with create_graph so that loss.backward() differentiates through it.
// Four Adam steps against PyTorch running the same computation from the same weights
// (tests/second_order/reference_wgan_gp.json, written by tests/second_order/generate.py).
//   wgan_gp_gru [reference dir]
#include <fmt/format.h>

#include "examples/second_order/second_order.h"

int main(int argc, char** argv) {
  using namespace tg::second_order;
  const std::string dir = argc > 1 ? argv[1] : TG_SECOND_ORDER_REFERENCES;
  std::vector<WganStep> steps = wgan_gp_gru(load_json(dir + "/reference_wgan_gp.json"));
  bool ok = true;
  for (size_t k = 0; k < steps.size(); ++k) {
    const WganStep& s = steps[k];
    fmt::print("step {}: penalty {:.10f} loss {:.10f}\n", k + 1, s.penalty, s.loss);
    fmt::print("  vs PyTorch: penalty {}\n", s.penalty_diff.str());
    fmt::print("  vs PyTorch: d penalty / d weights {}{}\n", s.penalty_grad_diff.str(),
               s.same_unused ? "" : "; the unused weights differ");
    fmt::print("  vs PyTorch: loss {}\n", s.loss_diff.str());
    fmt::print("  vs PyTorch: weights after the step {}\n", s.weight_diff.str());
    ok = ok && s.penalty_diff.rel < 1e-10 && s.penalty_grad_diff.rel < 1e-10 && s.same_unused && s.loss_diff.rel < 1e-10 &&
         s.weight_diff.rel < 1e-10;
  }
  fmt::print("{}\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
