// In-place writes and backward: every in-place write bumps its storage's version, every tensor an
// op saved for backward checks it, so a write between forward and backward throws (naming the op,
// the input, its shape and both versions) instead of giving a silently wrong gradient.
#include <doctest/doctest.h>

#include <stdexcept>
#include <string>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/sgd.h"
#include "test_util.h"

using namespace tg;

using test::error_of;
using test::has;

TEST_SUITE("in-place writes") {

TEST_CASE("mul_ on a saved operand between forward and backward throws, naming op, input, shape, versions") {
  Tensor x = tensor({1.0, 2.0, 3.0}, DType::Float64).requires_grad_();
  Tensor c = tensor({1.0, 1.0, 1.0}, DType::Float64);
  Tensor y = x * c;
  mul_(c, 10);  // c needs no grad, so this is allowed; without the check x.grad would be [10, 10, 10]
  const std::string e = error_of([&] { y.sum().backward(); });
  INFO(e);
  CHECK(has(e, "backward of op 'mul'"));
  CHECK(has(e, "its input 1"));
  CHECK(has(e, "shape [3]"));
  CHECK(has(e, "version is now 1, it was 0"));
  CHECK(has(e, "modified by an in-place operation"));
  CHECK_THROWS_AS(y.sum().backward(), std::runtime_error);
}

TEST_CASE("an update of a parameter between forward and backward throws instead of [4, 6, 8]") {
  Tensor w = tensor({1.0, 2.0, 3.0}, DType::Float64).requires_grad_();
  Tensor l = (w * w).sum();
  {
    NoGradGuard g;
    add_(w, ones({3}, DType::Float64));
  }
  const std::string e = error_of([&] { l.backward(); });
  INFO(e);
  CHECK(has(e, "'mul'"));
  CHECK(has(e, "its input"));
  CHECK(!w.grad().defined());  // nothing was accumulated
}

TEST_CASE("an optimizer step between a forward and its backward throws") {
  Tensor w = tensor({1.0, 2.0, 3.0}, DType::Float64).requires_grad_();
  optim::SGD opt({w}, optim::SGDOptions{.lr = 0.1});
  Tensor l1 = (w * w).sum();
  Tensor l2 = (w * w * w).sum();  // recorded before the step
  l1.backward();
  opt.step();
  CHECK(has(error_of([&] { l2.backward(); }), "modified by an in-place operation"));
  // A forward recorded after the step is fine.
  w.zero_grad();
  (w * w).sum().backward();
  const auto g = w.grad().to_vector();
  CHECK(g[0] == doctest::Approx(2 * (1.0 - 0.1 * 2)));
}

TEST_CASE("load_state_dict between forward and backward throws") {
  nn::Linear lin(3, 2, true, DType::Float64);
  Tensor x = ones({4, 3}, DType::Float64).requires_grad_();  // x's gradient reads the weight
  Tensor l = lin.forward(x).sum();
  auto state = lin.state_dict();
  lin.load_state_dict(state);  // same values, but written in place: the recorded graph is stale
  CHECK(has(error_of([&] { l.backward(); }), "'linear': its input 1"));
  // Only what a gradient needs is checked (as in PyTorch): with a constant input, the weight's
  // gradient reads x alone, so overwriting the weight does not stop it.
  Tensor c = ones({4, 3}, DType::Float64);
  Tensor l2 = lin.forward(c).sum();
  lin.load_state_dict(state);
  l2.backward();
  CHECK(lin.weight.grad().defined());
}

TEST_CASE("writes into a saved output are caught: exp, tanh, sigmoid, relu, sqrt, softmax") {
  const auto check_output = [](const char* op, auto f) {
    Tensor x = tensor({0.5, 1.0, 2.0}, DType::Float64).requires_grad_();
    Tensor y = f(x);
    {
      NoGradGuard g;
      mul_(y, 2.0);
    }
    const std::string e = error_of([&] { y.sum().backward(); });
    INFO(op, ": ", e);
    CHECK(has(e, std::string("backward of op '") + op + "'"));
    CHECK(has(e, "its output"));
  };
  check_output("exp", [](const Tensor& x) { return exp(x); });
  check_output("tanh", [](const Tensor& x) { return tanh(x); });
  check_output("sigmoid", [](const Tensor& x) { return sigmoid(x); });
  check_output("relu", [](const Tensor& x) { return relu(x); });
  check_output("sqrt", [](const Tensor& x) { return sqrt(x); });
  check_output("softmax", [](const Tensor& x) { return softmax(x, 0); });
}

TEST_CASE("fill_ and copy_ bump the version too, also through a view of the same storage") {
  Tensor x = tensor({1.0, 2.0, 3.0}, DType::Float64).requires_grad_();
  Tensor c = tensor({4.0, 5.0, 6.0}, DType::Float64);
  Tensor y = x * c;
  Tensor part = c.narrow(0, 1, 1);
  fill_(part, 0.0);
  CHECK(has(error_of([&] { y.sum().backward(); }), "its input 1"));

  Tensor c2 = tensor({4.0, 5.0, 6.0}, DType::Float64);
  Tensor y2 = x * c2;
  copy_(c2, tensor({4.0, 5.0, 6.0}, DType::Float64));  // even an identical copy counts
  CHECK(has(error_of([&] { y2.sum().backward(); }), "version is now 1, it was 0"));
}

TEST_CASE("a write into something backward does not read is fine, and so is a write after backward") {
  Tensor x = tensor({1.0, 2.0, 3.0}, DType::Float64).requires_grad_();
  Tensor c = tensor({1.0, 1.0, 1.0}, DType::Float64);
  Tensor y = x + c;  // add saves no tensor
  mul_(c, 10);
  y.sum().backward();
  CHECK(x.grad().to_vector() == std::vector<double>{1, 1, 1});

  Tensor w = tensor({1.0, 2.0, 3.0}, DType::Float64).requires_grad_();
  (w * w).sum().backward();
  {
    NoGradGuard g;
    add_(w, ones({3}, DType::Float64));
  }
  w.zero_grad();
  (w * w).sum().backward();
  CHECK(w.grad().to_vector() == std::vector<double>{4, 6, 8});
}

TEST_CASE("in-place writes into an expanded (stride-0) view are refused") {
  Tensor base = tensor({1.0, 2.0}, DType::Float64);
  Tensor e = base.expand({3, 2});
  const std::string msg = error_of([&] { add_(e, ones({3, 2}, DType::Float64)); });
  INFO(msg);
  CHECK(has(msg, "add_"));
  CHECK(has(msg, "expand()ed view"));
  CHECK(base.to_vector() == std::vector<double>{1, 2});  // nothing was written
  CHECK_THROWS_AS(mul_(e, 2.0), std::invalid_argument);
  CHECK_THROWS_AS(fill_(e, 0.0), std::invalid_argument);
  CHECK_THROWS_AS(copy_(e, zeros({3, 2}, DType::Float64)), std::invalid_argument);
  // A size-1 dim with stride 0 aliases nothing: allowed.
  Tensor one = tensor({1.0}, DType::Float64).expand({1});
  add_(one, ones({1}, DType::Float64));
  CHECK(one.item() == 2.0);
}

TEST_CASE("in-place writes into a tensor that requires grad are refused while recording") {
  Tensor w = tensor({1.0, 2.0}, DType::Float64).requires_grad_();
  const std::string e = error_of([&] { add_(w, ones({2}, DType::Float64)); });
  INFO(e);
  CHECK(has(e, "add_"));
  CHECK(has(e, "requires grad"));
  CHECK(has(e, "NoGradGuard"));
  Tensor h = w * 2.0;  // an interior tensor
  CHECK_THROWS_AS(mul_(h, 3.0), std::invalid_argument);
  CHECK_THROWS_AS(fill_(w, 0.0), std::invalid_argument);
  CHECK_THROWS_AS(copy_(w, zeros({2}, DType::Float64)), std::invalid_argument);
  CHECK(w.to_vector() == std::vector<double>{1, 2});
  NoGradGuard g;
  add_(w, ones({2}, DType::Float64));  // an optimizer-style update
  CHECK(w.to_vector() == std::vector<double>{2, 3});
}

TEST_CASE("inputs saved by role: where's mask, embedding's and index_select's indices, a loss target") {
  Tensor a = tensor({1.0, 2.0, 3.0}, DType::Float64).requires_grad_();
  Tensor mask = tensor({1.0, 0.0, 1.0}, DType::Float64);
  Tensor y = where(mask, a, a * 2.0);
  fill_(mask, 0.0);
  CHECK(has(error_of([&] { y.sum().backward(); }), "its mask"));

  Tensor w = tensor({{1.0, 2.0}, {3.0, 4.0}}, DType::Float64).requires_grad_();
  Tensor ids = from_vector(std::vector<int64_t>{0, 1, 1}, Shape{3});
  Tensor e = embedding(w, ids);
  fill_(ids, 0);
  CHECK(has(error_of([&] { e.sum().backward(); }), "'embedding': its indices"));

  Tensor ids2 = from_vector(std::vector<int64_t>{1, 0}, Shape{2});
  Tensor s = index_select(w, 0, ids2);
  fill_(ids2, 1);
  CHECK(has(error_of([&] { s.sum().backward(); }), "its indices"));

  Tensor logits = tensor({{1.0, 2.0}, {0.5, 0.1}}, DType::Float64).requires_grad_();
  Tensor target = from_vector(std::vector<int64_t>{1, 0}, Shape{2});
  Tensor l = cross_entropy(logits, target);
  fill_(target, 0);
  CHECK(has(error_of([&] { l.backward(); }), "its target"));
}

TEST_CASE("the fused recurrent cells check their saved output, state and weights") {
  const int64_t B = 2, H = 3;
  Tensor h = ones({B, H}, DType::Float64) * 0.1;
  Tensor c = ones({B, H}, DType::Float64) * 0.2;
  Tensor w1 = ones({H, H}, DType::Float64).requires_grad_(), w4 = ones({4 * H, H}, DType::Float64).requires_grad_(),
         w3 = ones({3 * H, H}, DType::Float64).requires_grad_();
  Tensor px1 = ones({B, H}, DType::Float64) * 0.01, px4 = ones({B, 4 * H}, DType::Float64) * 0.01,
         px3 = ones({B, 3 * H}, DType::Float64) * 0.01;

  Tensor r = rnn_cell(px1, h, w1, Tensor());
  {
    NoGradGuard g;
    mul_(r, 2.0);
  }
  CHECK(has(error_of([&] { r.sum().backward(); }), "'rnn_cell': its output"));

  Tensor l = lstm_cell(px4, h, c, w4, Tensor());
  mul_(c, 2.0);
  CHECK(has(error_of([&] { l.sum().backward(); }), "'lstm_cell': its input 2"));

  Tensor gr = gru_cell(px3, h, w3, Tensor());
  mul_(h, 2.0);
  CHECK(has(error_of([&] { gr.sum().backward(); }), "'gru_cell': its input 1"));

  // Unmodified, the same cells backward fine.
  Tensor h2 = ones({B, H}, DType::Float64) * 0.1;
  lstm_cell(px4, h2, c, w4, Tensor()).sum().backward();
  CHECK(w4.grad().defined());
}

TEST_CASE("versions: each in-place write bumps once, views share the counter, clone() does not") {
  Tensor x = zeros({4}, DType::Float64);
  const uint64_t v0 = x.impl()->storage->version();
  add_(x, ones({4}, DType::Float64));
  mul_(x, 2.0);
  Tensor v = x.narrow(0, 0, 2);
  fill_(v, 1.0);
  CHECK(x.impl()->storage->version() == v0 + 3);
  Tensor k = x.clone();
  mul_(k, 2.0);
  CHECK(x.impl()->storage->version() == v0 + 3);
}

}  // TEST_SUITE
