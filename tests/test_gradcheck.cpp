// Every registered op against central differences in float64: random inputs, broadcasting,
// non-square and size-1 dims, values kept away from kinks. The last test fails for any registered
// op that has no case here.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <set>

#include "tapegrad/autograd/capture.h"
#include "tapegrad/autograd/gradcheck.h"
#include "tapegrad/autograd/ops.h"

using namespace tg;

namespace {

constexpr DType F64 = DType::Float64;
using Fn = std::function<Tensor(const std::vector<Tensor>&)>;

std::set<std::string>& checked_ops() {
  static std::set<std::string> ops;
  return ops;
}

Tensor leaf(Tensor t) { return t.to(F64).requires_grad_(); }
Tensor rnd(const Shape& s) { return leaf(randn(s, F64)); }
// Values in [lo, hi]: keeps inputs away from kinks (abs, relu, clamp) and poles (log, div).
Tensor away(const Shape& s, double lo, double hi) {
  Tensor u = uniform(s, lo, hi, F64);
  Tensor sign = where(gt(rand(s, F64), scalar(0.5, F64)), ones(s, F64), full(s, -1.0, F64));
  return leaf(u * sign);
}
Tensor positive(const Shape& s) { return leaf(uniform(s, 0.5, 2.0, F64)); }

// Ops whose step cannot be captured (capture.h): CaptureError when capturing, never a replay that
// differs from running eagerly.
std::map<std::string, std::string>& refused_by_capture() {
  static std::map<std::string, std::string> ops;
  return ops;
}

Tensor with_values(const Tensor& like, std::vector<double> v) { return from_vector(v, like.shape()).to(like.dtype()); }

// The same function, forward and backward, captured once and replayed on new input values (the
// old ones rotated by one place and scaled by 1.05, which keeps each case's domain): outputs and
// gradients must have the bits of an eager run on those values.
void check_captured(const std::string& op, const Fn& fn, const std::vector<Tensor>& inputs) {
  std::vector<Tensor> xs;
  for (const Tensor& in : inputs) {
    Tensor x = in.detach().clone();
    if (in.requires_grad()) x.requires_grad_();
    xs.push_back(x);
  }
  Tensor probe = fn(xs);
  if (!probe.requires_grad()) return;
  const Tensor w = randn(probe.shape(), probe.dtype());
  Tensor out;
  auto body = [&] {
    for (Tensor& x : xs) x.zero_grad();
    out = fn(xs);
    (out * w).sum().backward();
  };
  CapturedStep step;
  try {
    step = capture(body);
  } catch (const CaptureError& e) {
    refused_by_capture()[op] = e.what();
    return;
  }
  for (int round = 1; round <= 2; ++round) {
    CAPTURE(round);
    std::vector<Tensor> ys;
    for (Tensor& x : xs) {
      std::vector<double> v = x.to_vector();
      if (!v.empty()) std::rotate(v.begin(), v.begin() + 1, v.end());
      for (double& e : v) e *= 1.05;
      NoGradGuard ng;
      copy_(x, with_values(x, v));
      Tensor y = with_values(x, v);
      if (x.requires_grad()) y.requires_grad_();
      ys.push_back(y);
    }
    try {
      step.replay();
    } catch (const CaptureError& e) {  // a host decision no longer holds: refused, not wrong
      refused_by_capture()[op] = e.what();
      return;
    }
    Tensor want = fn(ys);
    (want * w).sum().backward();
    CHECK_MESSAGE(out.to_vector() == want.to_vector(), "captured output of " << op);
    for (size_t i = 0; i < xs.size(); ++i) {
      if (!ys[i].grad().defined()) continue;
      REQUIRE_MESSAGE(xs[i].grad().defined(), "captured gradient of input " << i << " of " << op);
      CHECK_MESSAGE(xs[i].grad().to_vector() == ys[i].grad().to_vector(), "captured gradient of input " << i << " of "
                                                                                                       << op);
    }
  }
}

void check(const std::string& op, const Fn& fn, const std::vector<Tensor>& inputs, double eps = 1e-6,
           double rtol = 1e-5) {
  INFO("op: " << op);
  check_captured(op, fn, inputs);
  GradcheckOptions o;
  o.name = op;
  o.eps = eps;
  o.atol = 1e-6;
  o.rtol = rtol;
  auto r = gradcheck(fn, inputs, o);
  CHECK_MESSAGE(r.ok, r.message);
  checked_ops().insert(op);
}

}  // namespace

TEST_SUITE("gradcheck") {

TEST_CASE("elementwise ops, with broadcasting") {
  manual_seed(1);
  const std::vector<std::pair<Shape, Shape>> shape_pairs = {
      {{3, 4}, {3, 4}}, {{2, 3, 4}, {4}}, {{3, 1}, {1, 5}}, {{1}, {2, 3}}, {{2, 1, 3}, {4, 1}}, {{}, {3}}};
  for (auto& [sa, sb] : shape_pairs) {
    CAPTURE(sa.str());
    CAPTURE(sb.str());
    check("add", [](auto& v) { return add(v[0], v[1]); }, {rnd(sa), rnd(sb)});
    check("sub", [](auto& v) { return sub(v[0], v[1]); }, {rnd(sa), rnd(sb)});
    check("mul", [](auto& v) { return mul(v[0], v[1]); }, {rnd(sa), rnd(sb)});
    check("div", [](auto& v) { return div(v[0], v[1]); }, {rnd(sa), away(sb, 0.5, 2.0)});
    check("maximum", [](auto& v) { return maximum(v[0], v[1]); }, {rnd(sa), rnd(sb)});
    check("pow_tensor", [](auto& v) { return pow(v[0], v[1]); }, {positive(sa), rnd(sb)});
    check("where", [](auto& v) { return where(gt(v[0].detach(), scalar(0.0, F64)), v[0], v[1]); },
          {rnd(sa), rnd(sb)});
  }
  for (Shape s : {Shape{5}, Shape{2, 3}, Shape{3, 1, 2}}) {
    check("neg", [](auto& v) { return neg(v[0]); }, {rnd(s)});
    check("pow", [](auto& v) { return pow(v[0], 3.0); }, {rnd(s)});
    check("pow", [](auto& v) { return pow(v[0], -1.5); }, {positive(s)});
    check("exp", [](auto& v) { return exp(v[0]); }, {rnd(s)});
    check("log", [](auto& v) { return log(v[0]); }, {positive(s)});
    check("sqrt", [](auto& v) { return sqrt(v[0]); }, {positive(s)});
    check("abs", [](auto& v) { return abs(v[0]); }, {away(s, 0.1, 2.0)});
    check("tanh", [](auto& v) { return tanh(v[0]); }, {rnd(s)});
    check("sigmoid", [](auto& v) { return sigmoid(v[0]); }, {rnd(s)});
    check("relu", [](auto& v) { return relu(v[0]); }, {away(s, 0.1, 2.0)});
    check("clamp", [](auto& v) { return clamp(v[0], -0.5, 0.5); }, {away(s, 0.6, 2.0)});
    check("clamp", [](auto& v) { return clamp(v[0], -0.5, 0.5); }, {leaf(uniform(s, -0.4, 0.4, F64))});
  }
}

TEST_CASE("reductions over all and given dims") {
  manual_seed(2);
  Tensor x = rnd({2, 3, 4});
  check("sum", [](auto& v) { return sum(v[0]); }, {x});
  check("sum", [](auto& v) { return sum(v[0], {1}); }, {x});
  check("sum", [](auto& v) { return sum(v[0], {0, 2}, true); }, {x});
  check("sum", [](auto& v) { return sum(v[0], {-1}); }, {rnd({1, 5})});
  check("mean", [](auto& v) { return mean(v[0]); }, {x});
  check("mean", [](auto& v) { return mean(v[0], {2}, true); }, {x});
  check("max", [](auto& v) { return max(v[0]); }, {x});
  check("max", [](auto& v) { return max(v[0], 1); }, {x});
  check("max", [](auto& v) { return max(v[0], 0, true); }, {rnd({3, 2})});
  check("logsumexp", [](auto& v) { return logsumexp(v[0], {1}); }, {x});
  check("logsumexp", [](auto& v) { return logsumexp(v[0], {0, 2}, true); }, {x});
}

TEST_CASE("shape ops") {
  manual_seed(3);
  Tensor x = rnd({2, 3, 4});
  check("reshape", [](auto& v) { return reshape(v[0], {4, -1}); }, {x});
  check("reshape", [](auto& v) { return reshape(transpose(v[0], 0, 2), {6, 4}); }, {x});  // non-contiguous copy
  check("transpose", [](auto& v) { return transpose(v[0], 0, 2) * 1.0; }, {x});
  check("permute", [](auto& v) { return permute(v[0], {2, 0, 1}) * 1.0; }, {x});
  check("squeeze", [](auto& v) { return squeeze(v[0], 1) * 1.0; }, {rnd({3, 1, 2})});
  check("unsqueeze", [](auto& v) { return unsqueeze(v[0], 1) * 1.0; }, {rnd({3, 2})});
  check("expand", [](auto& v) { return expand(v[0], {4, 3, 5}) * 1.0; }, {rnd({3, 1})});
  check("narrow", [](auto& v) { return narrow(v[0], 1, 1, 2) * 1.0; }, {x});
  check("cat", [](auto& v) { return cat({v[0], v[1], v[0]}, 1); }, {rnd({2, 3}), rnd({2, 1})});
  check("cat", [](auto& v) { return cat({v[0], v[1]}, 0); }, {rnd({1, 3}), rnd({2, 3})});
  check("stack", [](auto& v) { return stack({v[0], v[1]}, 1); }, {rnd({2, 3}), rnd({2, 3})});
  check("split", [](auto& v) {
    auto parts = split(v[0], 2, 2);
    return parts[0] * parts[1];
  }, {x});
  Tensor idx = from_vector(std::vector<int64_t>{2, 0, 2, 1}, {4});
  check("index_select", [idx](auto& v) { return index_select(v[0], 1, idx); }, {x});
  check("index_select", [idx](auto& v) { return index_select(v[0], 0, idx); }, {rnd({3, 2})});
  check("index_add", [idx](auto& v) { return index_add(v[0], 1, idx, 3); }, {rnd({2, 4, 3})});  // repeats add up
  check("index_add", [idx](auto& v) { return index_add(v[0], 0, idx, 5); }, {rnd({4, 2})});
  check("clone", [](auto& v) { return transpose(v[0], 0, 1).clone() * v[0].t(); }, {rnd({3, 2})});
  check("select", [](auto& v) { return select(v[0], 1, -1) * 1.0; }, {x});
  check("contiguous", [](auto& v) { return contiguous(transpose(v[0], 0, 1)); }, {rnd({3, 2})});
  check("to_dtype", [](auto& v) { return v[0].to(DType::Float32).to(F64) * 1.0; }, {leaf(tensor({0.5, 0.25, -2.0}))},
        /*eps: float32 rounding needs a wide step*/ 1e-2, 1e-4);
}

TEST_CASE("matrix products") {
  manual_seed(4);
  check("matmul", [](auto& v) { return matmul(v[0], v[1]); }, {rnd({3, 5}), rnd({5, 2})});
  check("matmul", [](auto& v) { return matmul(v[0], v[1]); }, {rnd({1, 4}), rnd({4, 1})});
  // Large enough (> 4096 multiply-adds) to go through BLAS rather than the small-product loop.
  check("matmul", [](auto& v) { return matmul(v[0], v[1]); }, {rnd({12, 30}), rnd({30, 14})});
  check("matmul", [](auto& v) { return matmul(transpose(v[0], 0, 1), v[1]); }, {rnd({30, 12}), rnd({30, 14})});
  check("linear", [](auto& v) { return linear(v[0], v[1], v[2]); }, {rnd({16, 20}), rnd({18, 20}), rnd({18})});
  check("matmul", [](auto& v) { return matmul(transpose(v[0], 0, 1), transpose(v[1], 0, 1)); },
        {rnd({5, 3}), rnd({2, 5})});
  check("matmul", [](auto& v) { return matmul(v[0], v[1]); }, {rnd({2, 3, 4}), rnd({4, 2})});
  check("matmul", [](auto& v) { return matmul(v[0], v[1]); }, {rnd({3, 2, 4}), rnd({3, 4, 5})});
  check("matmul", [](auto& v) { return matmul(v[0], v[1]); }, {rnd({1, 2, 4}), rnd({3, 4, 2})});
  check("linear", [](auto& v) { return linear(v[0], v[1], v[2]); }, {rnd({4, 3}), rnd({2, 3}), rnd({2})});
  check("linear", [](auto& v) { return linear(v[0], v[1]); }, {rnd({2, 5, 3}), rnd({4, 3})});
}

TEST_CASE("neural-network ops and losses") {
  manual_seed(5);
  Tensor ids = from_vector(std::vector<int64_t>{1, 3, 1, 0, 2, 3}, {2, 3});
  check("embedding", [ids](auto& v) { return embedding(v[0], ids); }, {rnd({4, 3})});
  Tensor no_pad = from_vector(std::vector<int64_t>{0, 3, 2, 3}, {4});
  check("embedding", [no_pad](auto& v) { return embedding(v[0], no_pad, 1); }, {rnd({4, 2})});
  Tensor w = rnd({4, 2});
  embedding(w, ids, 1).sum().backward();
  CHECK(w.grad().to_vector() == std::vector<double>{1, 1, 0, 0, 1, 1, 2, 2});  // row 1 is padding
  check("softmax", [](auto& v) { return softmax(v[0], 1); }, {rnd({3, 4})});
  check("softmax", [](auto& v) { return softmax(v[0], 0); }, {rnd({3, 2, 2})});
  check("log_softmax", [](auto& v) { return log_softmax(v[0], -1); }, {rnd({2, 5})});
  Tensor y = rand({3, 2}, F64);
  check("binary_cross_entropy_with_logits", [y](auto& v) { return binary_cross_entropy_with_logits(v[0] * 4.0, y); },
        {rnd({3, 2})});
  check("binary_cross_entropy_with_logits",
        [y](auto& v) { return binary_cross_entropy_with_logits(v[0], y, Reduction::None); }, {rnd({3, 2})});
  check("binary_cross_entropy_with_logits",
        [](auto& v) { return binary_cross_entropy_with_logits(v[0], v[1], Reduction::Sum); },
        {rnd({4}), leaf(rand({4}, F64))});
  {  // the fused op equals its textbook composite, including for large |logits|
    Tensor x = tensor({-40.0, -3.0, 0.0, 2.5, 40.0}, F64), t = tensor({1.0, 0.0, 0.5, 1.0, 0.0}, F64);
    Tensor composite = relu(x) - x * t + log(1.0 + exp(-abs(x)));
    auto fused = binary_cross_entropy_with_logits(x, t, Reduction::None).to_vector();
    auto want = composite.to_vector();
    for (size_t i = 0; i < want.size(); ++i) CHECK(fused[i] == doctest::Approx(want[i]).epsilon(1e-12));
  }
  Tensor t = from_vector(std::vector<int64_t>{2, 0, -100, 1}, {4});
  check("cross_entropy", [t](auto& v) { return cross_entropy(v[0], t); }, {rnd({4, 3})});
  check("cross_entropy", [t](auto& v) { return cross_entropy(v[0], t, -100, Reduction::Sum); }, {rnd({4, 3})});
  check("nll_loss", [t](auto& v) { return nll_loss(log_softmax(v[0], 1), t); }, {rnd({4, 3})});
  check("nll_loss", [t](auto& v) { return nll_loss(v[0], t, -100, Reduction::None); }, {rnd({4, 3})});
  {  // extra dims (class dim 1 and last), class weights, label smoothing, every reduction
    Tensor t3 = from_vector(std::vector<int64_t>{0, 2, 1, -100, 3, 0}, {2, 3});  // [N, d] or [N, T]
    CrossEntropyOptions o;
    o.weight = leaf(uniform({4}, 0.5, 2.0, F64)).detach();
    o.label_smoothing = 0.2;
    check("cross_entropy", [t3, o](auto& v) { return cross_entropy(v[0], t3, o); }, {rnd({2, 4, 3})});
    o.class_dim = -1;
    o.reduction = Reduction::None;
    check("cross_entropy", [t3, o](auto& v) { return cross_entropy(v[0], t3, o); }, {rnd({2, 3, 4})});
    o.reduction = Reduction::Sum;
    o.ignore_index = 0;
    Tensor t0 = from_vector(std::vector<int64_t>{0, 2, 1, 3, 3, 0}, {2, 3});
    check("nll_loss", [t0, o](auto& v) { return nll_loss(v[0], t0, o); }, {rnd({2, 3, 4})});
    CrossEntropyOptions plain;
    plain.reduction = Reduction::None;
    check("nll_loss", [](auto& v) { return nll_loss(v[0], from_vector(std::vector<int64_t>{1}, {1}).reshape({}), CrossEntropyOptions{}); },
          {rnd({3})});  // unbatched: [C] with target []
    check("nll_loss", [plain](auto& v) { return nll_loss(v[0], from_vector(std::vector<int64_t>{1, 0, 2, 2}, {1, 2, 2}), plain); },
          {rnd({1, 3, 2, 2})});
  }
  {  // pos_weight along the last dim, weight broadcast, both
    Tensor y4 = rand({4, 3}, F64);
    BCEWithLogitsOptions o;
    o.pos_weight = uniform({3}, 0.5, 3.0, F64);
    check("binary_cross_entropy_with_logits", [y4, o](auto& v) { return binary_cross_entropy_with_logits(v[0], y4, o); },
          {rnd({4, 3})});
    o.weight = uniform({4, 1}, 0.5, 2.0, F64);
    o.reduction = Reduction::None;
    check("binary_cross_entropy_with_logits", [o](auto& v) { return binary_cross_entropy_with_logits(v[0], v[1], o); },
          {rnd({4, 3}), leaf(rand({4, 3}, F64))});
  }
  check("mse_loss", [](auto& v) { return mse_loss(v[0], v[1]); }, {rnd({2, 3}), rnd({2, 3})});
  // Dropout: the same seed before every evaluation fixes the mask, so the function is deterministic.
  check("dropout", [](auto& v) { manual_seed(11); return dropout(v[0], 0.4); }, {rnd({4, 5})});
  check("add_tanh", [](auto& v) { return add_tanh(v[0], v[1]); }, {rnd({3, 4}), rnd({4})});
}

TEST_CASE("layer_norm: x, weight and bias; one or two normalized dims; without affine") {
  manual_seed(13);
  check("layer_norm", [](auto& v) { return layer_norm(v[0], {5}, v[1], v[2]); }, {rnd({3, 5}), rnd({5}), rnd({5})});
  check("layer_norm", [](auto& v) { return layer_norm(v[0], {3, 4}, v[1], v[2], 1e-3); },
        {rnd({2, 3, 4}), rnd({3, 4}), rnd({3, 4})});
  check("layer_norm", [](auto& v) { return layer_norm(v[0], {4}); }, {rnd({2, 3, 4})});
  check("layer_norm", [](auto& v) { return layer_norm(v[0], {4}, v[1]); }, {rnd({3, 4}), rnd({4})});
  check("layer_norm", [](auto& v) { return layer_norm(v[0], {4}, Tensor(), v[1]); }, {rnd({1, 4}), rnd({4})});
  check("layer_norm", [](auto& v) { return layer_norm(transpose(v[0], 0, 1), {3}, v[1], v[2]); },
        {rnd({3, 2}), rnd({3}), rnd({3})});  // a strided input
}

TEST_CASE("fused recurrent cells: gradients, strided operands, and the composite they replace") {
  manual_seed(9);
  const int64_t B = 3, H = 4;
  check("rnn_cell", [](auto& v) { return rnn_cell(v[0], v[1], v[2], v[3]); },
        {rnd({B, H}), rnd({B, H}), rnd({H, H}), rnd({H})});
  // px a column window of a wider tensor, h a row-strided view, no bias, relu (pre-activations away from 0)
  check("rnn_cell", [](auto& v) { return rnn_cell(narrow(v[0], 1, 1, 4), narrow(v[1], 1, 2, 4), v[2] * 0.1, Tensor(), true); },
        {away({B, 6}, 0.5, 2.0), rnd({B, 6}), rnd({H, H})});
  check("lstm_cell", [](auto& v) { return lstm_cell(v[0], v[1], v[2], v[3], v[4]); },
        {rnd({B, 4 * H}), rnd({B, H}), rnd({B, H}), rnd({4 * H, H}), rnd({4 * H})});
  check("lstm_cell",
        [](auto& v) { return lstm_cell(v[0], narrow(v[1], 1, 0, H), narrow(v[1], 1, H, H), v[2], Tensor()); },
        {rnd({B, 4 * H}), rnd({B, 2 * H}), rnd({4 * H, H})});
  check("gru_cell", [](auto& v) { return gru_cell(v[0], v[1], v[2], v[3]); },
        {rnd({B, 3 * H}), rnd({B, H}), rnd({3 * H, H}), rnd({3 * H})});
  check("gru_cell", [](auto& v) { return gru_cell(narrow(v[0], 1, 1, 3 * H), narrow(v[1], 1, 1, H), v[2], Tensor()); },
        {rnd({B, 3 * H + 2}), rnd({B, H + 1}), rnd({3 * H, H})});

  // Same values as the composite ops, in float64 and float32 (float32 within the vmath tolerance).
  for (DType dt : {F64, DType::Float32}) {
    CAPTURE(dtype_name(dt));
    const double tol = dt == F64 ? 1e-12 : 2e-6;
    auto close = [&](const Tensor& a, const Tensor& b) {
      auto x = a.to_vector(), y = b.to_vector();
      REQUIRE(x.size() == y.size());
      for (size_t i = 0; i < x.size(); ++i) CHECK(x[i] == doctest::Approx(y[i]).epsilon(tol).scale(1.0));
    };
    Tensor px1 = randn({B, H}, dt), px4 = randn({B, 4 * H}, dt), px3 = randn({B, 3 * H}, dt);
    Tensor h = randn({B, H}, dt), c = randn({B, H}, dt);
    Tensor w1 = randn({H, H}, dt) * 0.5, w4 = randn({4 * H, H}, dt) * 0.5, w3 = randn({3 * H, H}, dt) * 0.5;
    Tensor b1 = randn({H}, dt), b4 = randn({4 * H}, dt), b3 = randn({3 * H}, dt);
    close(rnn_cell(px1, h, w1, b1), tanh(px1 + matmul(h, w1.t()) + b1));
    close(rnn_cell(px1, h, w1, b1, true), relu(px1 + matmul(h, w1.t()) + b1));
    Tensor gates = px4 + matmul(h, w4.t()) + b4;
    Tensor c_new = sigmoid(narrow(gates, 1, H, H)) * c + sigmoid(narrow(gates, 1, 0, H)) * tanh(narrow(gates, 1, 2 * H, H));
    Tensor hc = lstm_cell(px4, h, c, w4, b4);
    close(select(hc, 0, 0), sigmoid(narrow(gates, 1, 3 * H, H)) * tanh(c_new));
    close(select(hc, 0, 1), c_new);
    Tensor q = matmul(h, w3.t()) + b3;
    Tensor r = sigmoid(narrow(px3, 1, 0, H) + narrow(q, 1, 0, H)), z = sigmoid(narrow(px3, 1, H, H) + narrow(q, 1, H, H));
    Tensor n = tanh(narrow(px3, 1, 2 * H, H) + r * narrow(q, 1, 2 * H, H));
    close(gru_cell(px3, h, w3, b3), (1.0 - z) * n + z * h);
  }
  CHECK_THROWS_AS(rnn_cell(randn({B, H}), randn({B, H + 1}), randn({H, H}), Tensor()), std::invalid_argument);
  CHECK_THROWS_AS(lstm_cell(randn({B, 4 * H}), randn({B, H}), randn({B, H}), randn({H, H}), Tensor()), std::invalid_argument);
}

TEST_CASE("stack and select are one node each, with gradients") {
  manual_seed(10);
  check("stack", [](auto& v) { return stack({v[0], v[1] * 2.0, v[0]}, 1); }, {rnd({2, 3}), rnd({2, 3})});
  check("stack", [](auto& v) { return stack({v[0]}, 0); }, {rnd({2, 3})});
  check("select", [](auto& v) { return select(v[0], 0, 1) + select(v[0], 2, 0); }, {rnd({2, 2, 2})});
  Tensor x = randn({3, 4}).requires_grad_();
  const int64_t before = live_nodes();
  Tensor y = select(x, 0, 2);
  CHECK(live_nodes() == before + 1);
  Tensor s = stack({y, y}, 0);
  CHECK(live_nodes() == before + 2);
  s.sum().backward();
  CHECK(x.grad().to_vector() == std::vector<double>{0, 0, 0, 0, 0, 0, 0, 0, 2, 2, 2, 2});
  CHECK_THROWS_AS(select(x, 0, 3), std::out_of_range);
}

TEST_CASE("selection: topk along every dim, non-square, largest and smallest") {
  manual_seed(12);
  Tensor x = rnd({3, 5});  // distinct values (almost surely): topk is smooth there
  check("topk", [](auto& v) { return topk(v[0], 2, 1).values; }, {x});
  check("topk", [](auto& v) { return topk(v[0], 2, 0).values; }, {x});
  check("topk", [](auto& v) { return topk(v[0], 3, -1, false).values; }, {x});
  check("topk", [](auto& v) { return topk(v[0], 2, 1, true, false).values; }, {x});
  check("topk", [](auto& v) { return topk(v[0], 2, 1).values; }, {rnd({2, 4, 3})});
  check("topk", [](auto& v) { return topk(transpose(v[0], 0, 1), 1, 0).values; }, {rnd({4, 2})});
  // masked_fill with masks of x's shape and broadcast ones, int64 and float.
  const Tensor row_mask = from_vector(std::vector<int64_t>{1, 0, 0, 1}, {4});
  const Tensor col_mask = from_vector(std::vector<double>{0, 1, 0}, {3, 1});
  const Tensor full_mask = gt(randn({3, 4}, F64), scalar(0.0, F64));
  check("masked_fill", [row_mask](auto& v) { return masked_fill(v[0], row_mask, -2.5); }, {rnd({3, 4})});
  check("masked_fill", [col_mask](auto& v) { return masked_fill(v[0], col_mask, 0.0); }, {rnd({3, 4})});
  check("masked_fill", [full_mask](auto& v) { return masked_fill(v[0] * v[0], full_mask, 1.0); }, {rnd({3, 4})});
  check("masked_fill", [row_mask](auto& v) { return masked_fill(v[0], row_mask, 3.0); }, {rnd({2, 3, 4})});
}

TEST_CASE("every registered op has a gradient check") {
  // doctest runs test cases in file order, so the cases above have filled checked_ops().
  std::vector<std::string> missing;
  for (const OpInfo& op : registered_ops())
    if (!checked_ops().count(op.name)) missing.push_back(op.name);
  INFO("ops without a gradcheck case: " << [&] { std::string s; for (auto& m : missing) s += m + " "; return s; }());
  CHECK(missing.empty());
  CHECK(registered_ops().size() >= 40);
}

TEST_CASE("every gradient check also passes through a captured step, or the capture refuses it") {
  // Only ops whose replay cannot be exact are refused: random draws, tensors made from host
  // vectors inside the function, and nll_loss's weight-sum mean (kernels/recording.h).
  const std::set<std::string> may_refuse = {"dropout", "nll_loss", "cross_entropy"};
  for (const auto& [op, why] : refused_by_capture()) {
    INFO(op << ": " << why);
    CHECK(may_refuse.count(op));
  }
  CHECK(checked_ops().size() > refused_by_capture().size() + 30);
}

TEST_CASE("gradcheck reports the op, input, element and both values on a wrong backward") {
  auto wrong = [](const std::vector<Tensor>& v) {
    Tensor out = v[0] * 1.0;
    return record("deliberately_wrong", {v[0]}, out.detach(), [](const Tensor& g, Grads& gr) { gr.add(0, g * 2.0); });
  };
  GradcheckOptions o;
  o.name = "deliberately_wrong";
  o.throw_on_failure = false;
  auto r = gradcheck(wrong, {rnd({2, 2})}, o);
  CHECK_FALSE(r.ok);
  CHECK(r.message.find("deliberately_wrong") != std::string::npos);
  CHECK(r.message.find("d input 0[") != std::string::npos);
  CHECK(r.message.find("analytic 2") != std::string::npos);
}

}
