#include <doctest/doctest.h>

#include <cmath>
#include <thread>

#include "tapegrad/autograd/gradcheck.h"
#include "tapegrad/autograd/ops.h"

using namespace tg;

TEST_SUITE("autograd") {

TEST_CASE("gradients accumulate across backward calls until zeroed") {
  Tensor x = tensor({1.0, 2.0, 3.0}).requires_grad_();
  (x * x).sum().backward();
  CHECK(x.grad().to_vector() == std::vector<double>{2, 4, 6});
  (x * 3.0).sum().backward();
  CHECK(x.grad().to_vector() == std::vector<double>{5, 7, 9});
  x.zero_grad();
  CHECK_FALSE(x.grad().defined());
}

TEST_CASE("a gradient shared by two leaves is not aliased") {
  Tensor a = ones({3}).requires_grad_(), b = ones({3}).requires_grad_();
  (a + b).sum().backward();
  Tensor ga = a.grad();
  mul_(ga, 10.0);  // what an in-place clipping hook does
  CHECK(b.grad().to_vector() == std::vector<double>{1, 1, 1});
}

TEST_CASE("backward(gradient) on a non-scalar, and a leaf as root") {
  Tensor x = tensor({1.0, -2.0}).requires_grad_();
  Tensor y = x * 3.0;
  y.backward(tensor({1.0, 10.0}));
  CHECK(x.grad().to_vector() == std::vector<double>{3, 30});
  Tensor z = tensor({4.0}).requires_grad_();
  z.backward(tensor({2.0}));
  CHECK(z.grad().item() == 2.0);
}

TEST_CASE("a chain of 200,000 ops backwards without recursion") {
  Tensor x = scalar(0.5, DType::Float64).requires_grad_();
  Tensor y = x;
  const int64_t base = live_nodes();
  for (int i = 0; i < 200000; ++i) y = y * 1.0;
  CHECK(live_nodes() == base + 200000);
  y.backward();
  CHECK(x.grad().item() == 1.0);
  CHECK(live_nodes() <= base + 1);  // backward freed what it walked; only y's own node is left
  y = Tensor();
  CHECK(live_nodes() == base);

  // A forward-only chain as deep is freed by its last handle, iteratively (no stack overflow).
  Tensor z = x;
  for (int i = 0; i < 200000; ++i) z = z * 1.0;
  CHECK(live_nodes() == base + 200000);
  z = Tensor();
  CHECK(live_nodes() == base);
}

TEST_CASE("backward frees the graph it walked unless retain_graph") {
  const int64_t base = live_nodes();
  Tensor x = tensor({2.0}).requires_grad_();
  Tensor y = (x * x).sum();
  CHECK(live_nodes() == base + 2);
  y.backward(/*retain_graph=*/true);
  CHECK(live_nodes() == base + 2);
  y.backward();
  CHECK(x.grad().item() == 8.0);
  CHECK(live_nodes() == base + 1);  // the mul node is gone; y's node stays, marked freed
  CHECK_THROWS_WITH_AS(y.backward(), doctest::Contains("retain_graph=true"), std::runtime_error);
}

TEST_CASE("backward through a freed graph names detach() on a carried hidden state") {
  Tensor w = tensor({0.5}).requires_grad_();
  Tensor h = zeros({1});
  h = tanh(h * w + 1.0);
  h.sum().backward();  // frees the tape; h still points into it
  Tensor h2 = tanh(h * w + 1.0);
  CHECK_THROWS_WITH_AS(h2.sum().backward(), doctest::Contains("detach()"), std::runtime_error);
  Tensor h3 = tanh(h.detach() * w + 1.0);  // the fix the message suggests
  w.zero_grad();
  h3.sum().backward();
  CHECK(w.grad().defined());
}

TEST_CASE("NoGradGuard records nothing; detach cuts the graph") {
  const int64_t base = live_nodes();
  Tensor x = ones({2}).requires_grad_();
  {
    NoGradGuard ng;
    Tensor y = x * 2.0;
    CHECK_FALSE(y.requires_grad());
    CHECK(live_nodes() == base);
  }
  Tensor d = (x * 2.0).detach();
  CHECK_FALSE(d.requires_grad());
  CHECK(live_nodes() == base);  // the temporary's node died with it
  CHECK(grad_enabled());
}

TEST_CASE("retain_grad and hooks on non-leaf tensors") {
  Tensor x = tensor({1.0, 2.0}).requires_grad_();
  Tensor h = x * 3.0;
  h.retain_grad();
  double seen = 0;
  h.register_hook([&](const Tensor& g) { seen = g.sum().item(); return Tensor(); });
  (h * h).sum().backward();
  CHECK(h.grad().to_vector() == std::vector<double>{6, 12});
  CHECK(seen == 18.0);
  CHECK(x.grad().to_vector() == std::vector<double>{18, 36});

  Tensor y = tensor({1.0, 1.0}).requires_grad_();
  Tensor z = y * 2.0;
  z.register_hook([](const Tensor& g) { return g * 0.0; });  // replace the gradient
  z.sum().backward();
  CHECK(y.grad().to_vector() == std::vector<double>{0, 0});
  Tensor leaf = tensor({1.0}).requires_grad_();
  leaf.register_hook([](const Tensor& g) { return g * 5.0; });
  (leaf * 2.0).sum().backward();
  CHECK(leaf.grad().item() == 10.0);
}

TEST_CASE("a leaf used many times: products are batched, hooks see the total once") {
  manual_seed(3);
  Tensor w = randn({4, 3}, DType::Float64).requires_grad_();
  std::vector<Tensor> xs;
  for (int t = 0; t < 5; ++t) xs.push_back(randn({2, 3}, DType::Float64));
  int calls = 0;
  w.register_hook([&](const Tensor& g) { ++calls; return g; });
  Tensor loss = scalar(0.0, DType::Float64);
  for (auto& x : xs) loss = loss + (linear(x, w) * linear(x, w)).sum() + matmul(x, w.t()).sum();
  loss.backward();
  CHECK(calls == 1);
  // Same gradient computed one product at a time, by hand: d/dW sum((xW^T)^2) = 2 (xW^T)^T x, plus 1^T x.
  Tensor expected = zeros({4, 3}, DType::Float64);
  {
    NoGradGuard ng;
    for (auto& x : xs) expected = expected + matmul((linear(x, w) * 2.0 + 1.0).t(), x);
  }
  auto got = w.grad().to_vector(), want = expected.to_vector();
  for (size_t i = 0; i < want.size(); ++i) CHECK(got[i] == doctest::Approx(want[i]).epsilon(1e-12));
}

TEST_CASE("select in a loop accumulates windows of one gradient") {
  Tensor x = arange(0.0, 12.0, 1.0, DType::Float64).reshape({4, 3}).detach().requires_grad_();
  Tensor total = scalar(0.0, DType::Float64);
  for (int t = 0; t < 4; ++t) total = total + select(x, 0, t).sum() * double(t + 1);
  total.backward();
  CHECK(x.grad().to_vector() == std::vector<double>{1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4});
}

TEST_CASE("a user-defined op: forward, backward, gradient check") {
  // softplus(x) = log(1 + e^x), written as a custom op the way README shows.
  auto softplus = [](const Tensor& x) {
    Tensor out = log(1.0 + exp(x.detach()));
    return record("softplus", {x}, out, [x](const Tensor& g, Grads& grads) { grads.add(0, g * sigmoid(x)); });
  };
  Tensor x = randn({3, 2}, DType::Float64).requires_grad_();
  auto r = gradcheck([&](auto& v) { return softplus(v[0]); }, {x}, {.name = "softplus"});
  CHECK(r.ok);
}

TEST_CASE("to_dot draws the unrolled graph") {
  Tensor w = ones({2, 2}).requires_grad_();
  w.set_name("W");
  Tensor h = zeros({1, 2});
  for (int t = 0; t < 3; ++t) h = tanh(matmul(h, w) + 1.0);
  std::string dot = to_dot(h.sum());
  CHECK(dot.find("digraph") != std::string::npos);
  CHECK(dot.find("matmul") != std::string::npos);
  CHECK(dot.find("W [2, 2]") != std::string::npos);
}

TEST_CASE("graphs on different threads are independent") {
  auto work = [](double* out) {
    Tensor x = tensor({3.0}).requires_grad_();
    (x * x * x).sum().backward();
    *out = x.grad().item();
  };
  double a = 0, b = 0;
  std::thread t1(work, &a), t2(work, &b);
  t1.join();
  t2.join();
  CHECK(a == 27.0);
  CHECK(b == 27.0);
}

TEST_CASE("anomaly detection names the op that produced NaN") {
  DetectAnomalyGuard guard;
  Tensor x = tensor({-1.0}).requires_grad_();
  CHECK_THROWS_WITH_AS(sqrt(x), doctest::Contains("op 'sqrt'"), std::runtime_error);
  Tensor z = tensor({0.0}).requires_grad_();
  Tensor y = sqrt(z);  // forward is finite (0), backward divides by 0
  CHECK_THROWS_WITH_AS(y.sum().backward(), doctest::Contains("backward of op 'sqrt'"), std::runtime_error);
}

TEST_CASE("anomaly errors give the op, its input shapes, its tape index and the name scope") {
  DetectAnomalyGuard guard;
  const std::string module = "encoder.cell0";
  {
  REQUIRE(live_nodes() == 0);  // tape indices restart when no graph is alive
  Tensor a = ones({2, 3}).requires_grad_();
  Tensor s = (a * 2.0).sum();  // tape indices 0 and 1
  Tensor c = full({2, 3}, -1.0).requires_grad_();
  CHECK_THROWS_WITH_AS(sqrt(c), doctest::Contains("forward of op 'sqrt' (would be tape index 2) produced NaN or Inf; "
                                                  "input shapes [2, 3]"),
                       std::runtime_error);
  Tensor named = full({3}, 3e38).set_name("enc.bias");
  CHECK_THROWS_WITH_AS(named * 10.0, doctest::Contains("input shapes [3], []; named inputs: enc.bias"),
                       std::runtime_error);
  {
    NameScope scope(module);
    CHECK_THROWS_WITH_AS(sqrt(c), doctest::Contains("forward of op 'sqrt' in module 'encoder.cell0'"),
                         std::runtime_error);
  }
  }

  Tensor z = zeros({4}).requires_grad_();
  Tensor w = ones({4}).requires_grad_();
  Tensor y = (z * 1.0).sum();
  Tensor r;
  {
    NameScope scope(module);
    r = (sqrt(z) * w).sum() + y;  // sqrt is tape index 2, recorded in the scope
  }
  CHECK_THROWS_WITH_AS(r.backward(), doctest::Contains("backward of op 'sqrt' in module 'encoder.cell0' (tape index 2) "
                                                       "produced a non-finite gradient for input 0 (input shapes [4])"),
                       std::runtime_error);
  CHECK(current_name_scope() == nullptr);  // scopes are popped; an empty name pushes nothing
  NameScope unnamed{std::string()};
  CHECK(current_name_scope() == nullptr);
}

}
