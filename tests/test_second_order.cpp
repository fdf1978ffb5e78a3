// The second-order examples (examples/second_order/) against PyTorch numbers committed in
// tests/second_order/ (written offline by tests/second_order/generate.py; no torch needed here):
// an LSTM classifier's Hessian-vector product, a WGAN-GP critic with a GRU trained four Adam
// steps through its gradient penalty, and an exact Hessian against finite differences.
#include <doctest/doctest.h>

#include "examples/second_order/second_order.h"

using namespace tg;
using namespace tg::second_order;

namespace {
json reference(const char* name) { return load_json(std::string(TG_SOURCE_DIR) + "/tests/second_order/" + name); }
}  // namespace

TEST_CASE("second order: Hessian-vector product of an LSTM classifier's loss matches PyTorch") {
  const int64_t nodes = live_nodes();
  {
    HvpResult r = hvp_lstm(reference("reference_hvp_lstm.json"));
    INFO("loss " << r.loss_diff.str() << "; gradient " << r.grad_diff.str() << "; H v " << r.hvp_diff.str());
    CHECK(r.loss_diff.rel < 1e-12);
    CHECK(r.grad_diff.rel < 1e-10);
    CHECK(r.hvp_diff.rel < 1e-10);
  }
  CHECK(live_nodes() == nodes);  // the create_graph graph is freed with its tensors
}

TEST_CASE("second order: WGAN-GP gradient penalty with a GRU critic trains like PyTorch") {
  std::vector<WganStep> steps = wgan_gp_gru(reference("reference_wgan_gp.json"));
  REQUIRE(steps.size() == 4);
  for (size_t k = 0; k < steps.size(); ++k) {
    const WganStep& s = steps[k];
    INFO("step " << k + 1 << ": penalty " << s.penalty_diff.str() << "; d penalty / d weights "
                 << s.penalty_grad_diff.str() << "; loss " << s.loss_diff.str() << "; weights " << s.weight_diff.str());
    CHECK(s.penalty > 0);
    CHECK(s.penalty_diff.rel < 1e-10);
    CHECK(s.penalty_grad_diff.rel < 1e-10);
    CHECK(s.same_unused);  // fc.bias: no gradient, in both
    CHECK(s.loss_diff.rel < 1e-10);
    CHECK(s.weight_diff.rel < 1e-10);
  }
}

TEST_CASE("second order: exact Hessian by tg::grad matches finite differences of the gradient and PyTorch") {
  HessianResult r = hessian(reference("reference_hessian.json"));
  INFO("vs finite differences " << r.fd_diff.str() << " (tolerance " << r.tolerance << "); vs PyTorch "
                                << r.torch_diff.str() << "; symmetry " << r.symmetry.str());
  REQUIRE(r.exact.shape() == Shape{5, 5});
  CHECK(r.fd_diff.abs < r.tolerance);
  CHECK(r.torch_diff.rel < 1e-12);
  CHECK(r.symmetry.abs < 1e-14);
  CHECK(r.f_diff.rel < 1e-14);
  CHECK(r.grad_diff.rel < 1e-13);
  // A ten times coarser step errs about a hundred times more: the differences are dominated by
  // the h^2 truncation term, as the tolerance assumes, not by rounding.
  HessianResult coarse = hessian(reference("reference_hessian.json"), 1e-3);
  CHECK(coarse.fd_diff.abs > 10 * r.fd_diff.abs);
}
