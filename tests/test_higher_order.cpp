// tg::grad and create_graph: gradients returned without touching .grad(), only the graph between
// outputs and inputs run, and gradients that can be differentiated again.
#include <doctest/doctest.h>

#include <cmath>
#include <stdexcept>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"
#include "test_util.h"

using namespace tg;

namespace {
constexpr DType F64 = DType::Float64;
using test::error_of;
using test::has;
}  // namespace

TEST_SUITE("higher-order gradients") {

TEST_CASE("grad of x^3 is 3x^2, its grad is 6x, and .grad() is never touched") {
  Tensor x = tensor({1.0, -2.0, 0.5}, F64).requires_grad_();
  Tensor y = (x * x * x).sum();
  auto g = grad({y}, {x}, {.create_graph = true});
  REQUIRE(g.size() == 1);
  CHECK(g[0].to_vector() == std::vector<double>{3, 12, 0.75});
  CHECK(g[0].requires_grad());
  auto gg = grad({g[0].sum()}, {x});
  CHECK(gg[0].to_vector() == std::vector<double>{6, -12, 3});
  CHECK_FALSE(x.grad().defined());
  CHECK_FALSE(gg[0].requires_grad());  // no create_graph the second time
}

TEST_CASE("without create_graph the gradient is a constant and the graph is freed") {
  Tensor x = tensor({1.0, 2.0}, F64).requires_grad_();
  Tensor y = (x * x).sum();
  auto g = grad({y}, {x});
  CHECK(g[0].to_vector() == std::vector<double>{2, 4});
  CHECK_FALSE(g[0].requires_grad());
  CHECK(has(error_of([&] { grad({y}, {x}); }), "already been freed"));
  Tensor z = (x * x).sum();
  grad({z}, {x}, {.retain_graph = true});
  CHECK(grad({z}, {x})[0].to_vector() == std::vector<double>{2, 4});
}

TEST_CASE("backward(create_graph) leaves a differentiable .grad()") {
  Tensor x = tensor({0.3, -0.7}, F64).requires_grad_();
  tanh(x).sum().backward(/*retain_graph=*/false, /*create_graph=*/true);
  Tensor g = x.grad();  // 1 - tanh^2
  REQUIRE(g.requires_grad());
  x.zero_grad();
  g.sum().backward();  // d/dx (1 - tanh^2 x) = -2 tanh x (1 - tanh^2 x)
  auto h = x.grad().to_vector();
  for (int i = 0; i < 2; ++i) {
    const double v = i == 0 ? 0.3 : -0.7, t = std::tanh(v);
    CHECK(h[static_cast<size_t>(i)] == doctest::Approx(-2 * t * (1 - t * t)).epsilon(1e-14));
  }
}

TEST_CASE("interior inputs, several outputs, grad_outputs") {
  Tensor x = tensor({1.0, 2.0, 3.0}, F64).requires_grad_();
  Tensor y = x * 2.0;
  Tensor a = (y * y).sum(), b = y * x;
  auto g = grad({a, b}, {y, x}, {.grad_outputs = {Tensor(), tensor({1.0, 0.0, 2.0}, F64)}});
  // d a/dy = 2y; d b/dy = x * go; d a/dx = 8x; d b/dx = 4x * go
  CHECK(g[0].to_vector() == std::vector<double>{4 + 1, 8 + 0, 12 + 6});
  CHECK(g[1].to_vector() == std::vector<double>{8 + 4, 16 + 0, 24 + 24});
}

TEST_CASE("only the graph between outputs and inputs runs: other leaves get nothing") {
  nn::Linear critic(3, 1, true, F64);
  Tensor x = ones({4, 3}, F64).requires_grad_();
  Tensor out = critic.forward(x).sum();
  auto g = grad({out}, {x}, {.create_graph = true});
  CHECK(g[0].shape() == Shape{4, 3});
  CHECK_FALSE(critic.weight.grad().defined());
  CHECK_FALSE(critic.bias.grad().defined());
  // The penalty's gradient reaches the weights through the recorded backward.
  Tensor penalty = (g[0] * g[0]).sum();
  penalty.backward();
  CHECK(critic.weight.grad().defined());
  CHECK_FALSE(critic.bias.grad().defined());  // d critic/dx does not depend on the bias
}

TEST_CASE("unused inputs and bad arguments give clear errors") {
  Tensor x = tensor({1.0}, F64).requires_grad_(), u = tensor({2.0}, F64).requires_grad_();
  Tensor y = (x * 3.0).sum();
  CHECK(has(error_of([&] { grad({y}, {x, u}, {.retain_graph = true}); }), "input 1 (shape [1]) was not used"));
  auto g = grad({y}, {x, u}, {.retain_graph = true, .allow_unused = true});
  CHECK(g[0].item() == 3.0);
  CHECK_FALSE(g[1].defined());
  CHECK(has(error_of([&] { grad({y}, {tensor({1.0}, F64)}); }), "does not require grad"));
  CHECK(has(error_of([&] { grad({tensor({1.0}, F64)}, {x}); }), "output 0"));
  Tensor v = x * 2.0;
  CHECK(has(error_of([&] { grad({v}, {x}, {.grad_outputs = {tensor({1.0, 2.0}, F64)}}); }), "grad_outputs[0]"));
  Tensor w = expand(x, {3}) * 1.0;
  CHECK(has(error_of([&] { grad({w}, {x}); }), "a gradient for it is needed"));
}

TEST_CASE("a Hessian-vector product through an LSTM equals finite differences of the gradient") {
  manual_seed(31);
  nn::LSTM lstm(nn::RNNOptions{.input_size = 2, .hidden_size = 3, .batch_first = true});
  lstm.to(F64);
  Tensor x = randn({2, 4, 2}, F64);
  std::vector<Tensor> params = lstm.parameters();
  auto loss_of = [&] { Tensor h = lstm(x).h_n; return (h * h).sum(); };
  auto gradient = [&] { return grad({loss_of()}, params); };
  std::vector<Tensor> v;
  for (auto& p : params) v.push_back(randn(p.shape(), F64));
  auto g = grad({loss_of()}, params, {.create_graph = true});
  Tensor dot = scalar(0.0, F64);
  for (size_t i = 0; i < params.size(); ++i) dot = dot + (g[i] * v[i]).sum();
  auto hv = grad({dot}, params);
  // (g(w + eps v) - g(w - eps v)) / 2 eps
  const double eps = 1e-5;
  auto shifted = [&](double s) {
    NoGradGuard ng;
    for (size_t i = 0; i < params.size(); ++i) { Tensor p = params[i]; add_(p, v[i], s); }
  };
  shifted(eps);
  auto gp = gradient();
  shifted(-2 * eps);
  auto gm = gradient();
  shifted(eps);
  double worst = 0;
  for (size_t i = 0; i < params.size(); ++i) {
    auto a = hv[i].to_vector(), p = gp[i].to_vector(), m = gm[i].to_vector();
    for (size_t k = 0; k < a.size(); ++k) worst = std::max(worst, std::abs(a[k] - (p[k] - m[k]) / (2 * eps)));
  }
  CHECK(worst < 1e-6);
}

}  // TEST_SUITE
