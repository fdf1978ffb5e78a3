// Second derivatives of every registered op against central differences of tg::grad's
// create_graph gradients (tg::gradgradcheck), in float64 on small random inputs with broadcasting
// and non-square shapes. The last test fails for any registered op without a case here.
#include <doctest/doctest.h>

#include <set>

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
Tensor away(const Shape& s, double lo, double hi) {
  Tensor u = uniform(s, lo, hi, F64);
  Tensor sign = where(gt(rand(s, F64), scalar(0.5, F64)), ones(s, F64), full(s, -1.0, F64));
  return leaf(u * sign);
}
Tensor positive(const Shape& s) { return leaf(uniform(s, 0.5, 2.0, F64)); }

void check2(const std::string& op, const Fn& fn, const std::vector<Tensor>& inputs, double rtol = 1e-4,
            double eps = 1e-6) {
  INFO("op: " << op);
  GradcheckOptions o;
  o.name = op;
  o.eps = eps;
  o.atol = 1e-5;
  o.rtol = rtol;
  o.throw_on_failure = false;
  auto r = gradgradcheck(fn, inputs, o);
  CHECK_MESSAGE(r.ok, r.message);
  checked_ops().insert(op);
}

}  // namespace

TEST_SUITE("gradgradcheck") {

TEST_CASE("elementwise ops, with broadcasting") {
  manual_seed(21);
  const Shape sa{2, 3}, sb{3};
  check2("add", [](auto& v) { return add(v[0], v[1]) * v[0]; }, {rnd(sa), rnd(sb)});  // add is linear: times x
  check2("sub", [](auto& v) { return sub(v[0], v[1]) * v[1]; }, {rnd(sa), rnd(sb)});
  check2("mul", [](auto& v) { return mul(v[0], v[1]); }, {rnd(sa), rnd(sb)});
  check2("div", [](auto& v) { return div(v[0], v[1]); }, {rnd(sa), away(sb, 0.5, 2.0)});
  check2("maximum", [](auto& v) { return maximum(v[0], v[1]) * v[0]; }, {rnd(sa), rnd(sb)});
  check2("pow_tensor", [](auto& v) { return pow(v[0], v[1]); }, {positive(sa), rnd(sb)});
  check2("where", [](auto& v) { return where(gt(v[0].detach(), scalar(0.0, F64)), v[0] * v[0], v[1]); },
         {rnd(sa), rnd(sb)});
  const Shape s{2, 3};
  check2("neg", [](auto& v) { return neg(v[0]) * v[0]; }, {rnd(s)});
  check2("pow", [](auto& v) { return pow(v[0], 3.0); }, {rnd(s)});
  check2("pow", [](auto& v) { return pow(v[0], -1.5); }, {positive(s)});
  check2("exp", [](auto& v) { return exp(v[0]); }, {rnd(s)});
  check2("log", [](auto& v) { return log(v[0]); }, {positive(s)});
  check2("sqrt", [](auto& v) { return sqrt(v[0]); }, {positive(s)});
  check2("abs", [](auto& v) { return abs(v[0]) * v[0]; }, {away(s, 0.1, 2.0)});
  check2("tanh", [](auto& v) { return tanh(v[0]); }, {rnd(s)});
  check2("sigmoid", [](auto& v) { return sigmoid(v[0]); }, {rnd(s)});
  check2("relu", [](auto& v) { return relu(v[0]) * v[0]; }, {away(s, 0.1, 2.0)});
  check2("clamp", [](auto& v) { return clamp(v[0], -0.5, 0.5) * v[0]; }, {leaf(uniform(s, -0.4, 0.4, F64))});
}

TEST_CASE("reductions") {
  manual_seed(22);
  Tensor x = rnd({2, 3, 2});
  check2("sum", [](auto& v) { return sum(v[0] * v[0], {1}); }, {x});
  check2("mean", [](auto& v) { return mean(v[0] * v[0], {2}, true); }, {x});
  check2("max", [](auto& v) { return max(v[0] * v[0], 1); }, {x});
  check2("max", [](auto& v) { return max(v[0] * v[0]); }, {x});
  check2("logsumexp", [](auto& v) { return logsumexp(v[0], {1}); }, {x});
}

TEST_CASE("shape ops") {
  manual_seed(23);
  Tensor x = rnd({2, 3, 2});
  auto sq = [](const Tensor& t) { return t * t; };
  check2("reshape", [&](auto& v) { return sq(reshape(transpose(v[0], 0, 2), {3, 4})); }, {x});
  check2("transpose", [&](auto& v) { return sq(transpose(v[0], 0, 2)); }, {x});
  check2("permute", [&](auto& v) { return sq(permute(v[0], {2, 0, 1})); }, {x});
  check2("squeeze", [&](auto& v) { return sq(squeeze(v[0], 1)); }, {rnd({3, 1, 2})});
  check2("unsqueeze", [&](auto& v) { return sq(unsqueeze(v[0], 1)); }, {rnd({3, 2})});
  check2("expand", [&](auto& v) { return sq(expand(v[0], {2, 3, 4})); }, {rnd({3, 1})});
  check2("narrow", [&](auto& v) { return sq(narrow(v[0], 1, 1, 2)); }, {x});
  check2("select", [&](auto& v) { return sq(select(v[0], 1, -1)); }, {x});
  check2("cat", [&](auto& v) { return sq(cat({v[0], v[1], v[0]}, 1)); }, {rnd({2, 3}), rnd({2, 1})});
  check2("stack", [&](auto& v) { return sq(stack({v[0], v[1]}, 1)); }, {rnd({2, 3}), rnd({2, 3})});
  check2("split", [](auto& v) {
    auto parts = split(v[0], 2, 2);
    return parts[0] * parts[1];
  }, {rnd({2, 3, 4})});
  Tensor idx = from_vector(std::vector<int64_t>{2, 0, 2, 1}, {4});
  check2("index_select", [&](auto& v) { return sq(index_select(v[0], 0, idx)); }, {rnd({3, 2})});
  check2("index_add", [&](auto& v) { return sq(index_add(v[0], 0, idx, 5)); }, {rnd({4, 2})});
  check2("contiguous", [&](auto& v) { return sq(contiguous(transpose(v[0], 0, 1))); }, {rnd({3, 2})});
  check2("clone", [&](auto& v) { return sq(v[0].clone()); }, {rnd({3, 2})});
  check2("to_dtype", [&](auto& v) { return sq(v[0].to(DType::Float32).to(F64)); },
         {leaf(tensor({0.5, 0.25, -2.0}))}, /*float32 rounding needs a wide step*/ 1e-3, 1e-2);
}

TEST_CASE("matrix products") {
  manual_seed(24);
  check2("matmul", [](auto& v) { return matmul(v[0], v[1]) * matmul(v[0], v[1]); }, {rnd({3, 4}), rnd({4, 2})});
  check2("matmul", [](auto& v) { return matmul(v[0], v[1]) * 2.0; }, {rnd({2, 3, 4}), rnd({2, 4, 2})});
  check2("linear", [](auto& v) {
    Tensor y = linear(v[0], v[1], v[2]);
    return y * y;
  }, {rnd({4, 3}), rnd({2, 3}), rnd({2})});
  check2("linear", [](auto& v) { return tanh(linear(v[0], v[1])); }, {rnd({2, 2, 3}), rnd({4, 3})});
}

TEST_CASE("neural-network ops and losses") {
  manual_seed(25);
  Tensor ids = from_vector(std::vector<int64_t>{1, 3, 1, 0}, {2, 2});
  check2("embedding", [ids](auto& v) { Tensor e = embedding(v[0], ids, 0); return e * e; }, {rnd({4, 3})});
  check2("softmax", [](auto& v) { return softmax(v[0], 1); }, {rnd({2, 4})});
  check2("log_softmax", [](auto& v) { return log_softmax(v[0], -1); }, {rnd({2, 3})});
  Tensor y = rand({3, 2}, F64);
  check2("binary_cross_entropy_with_logits",
         [y](auto& v) { return binary_cross_entropy_with_logits(v[0], y, Reduction::None); }, {rnd({3, 2})});
  check2("binary_cross_entropy_with_logits",
         [](auto& v) { return binary_cross_entropy_with_logits(v[0], v[1]); }, {rnd({4}), leaf(rand({4}, F64))});
  Tensor t = from_vector(std::vector<int64_t>{2, 0, -100, 1}, {4});
  check2("cross_entropy", [t](auto& v) { return cross_entropy(v[0], t); }, {rnd({4, 3})});
  check2("nll_loss", [t](auto& v) { Tensor l = nll_loss(v[0], t, -100, Reduction::None); return l * l; },
         {rnd({4, 3})});
  {
    Tensor t3 = from_vector(std::vector<int64_t>{0, 2, 1, -100, 3, 0}, {2, 3});
    CrossEntropyOptions o;
    o.weight = uniform({4}, 0.5, 2.0, F64);
    o.label_smoothing = 0.1;
    check2("cross_entropy", [t3, o](auto& v) { return cross_entropy(v[0], t3, o); }, {rnd({2, 4, 3})});
    o.class_dim = -1;
    o.reduction = Reduction::None;
    check2("nll_loss", [t3, o](auto& v) { Tensor l = nll_loss(v[0], t3, o); return l * l; }, {rnd({2, 3, 4})});
    BCEWithLogitsOptions b;
    b.pos_weight = uniform({2}, 0.5, 3.0, F64);
    b.weight = uniform({3, 1}, 0.5, 2.0, F64);
    check2("binary_cross_entropy_with_logits", [b](auto& v) { return binary_cross_entropy_with_logits(v[0], v[1], b); },
           {rnd({3, 2}), leaf(rand({3, 2}, F64))});
  }
  check2("mse_loss", [](auto& v) { return mse_loss(v[0], v[1]); }, {rnd({2, 3}), rnd({2, 3})});
  check2("dropout", [](auto& v) { manual_seed(11); Tensor d = dropout(v[0], 0.4); return d * d; }, {rnd({3, 4})});
  check2("add_tanh", [](auto& v) { return add_tanh(v[0], v[1]); }, {rnd({3, 4}), rnd({4})});
  check2("layer_norm", [](auto& v) { return layer_norm(v[0], {4}, v[1], v[2]); }, {rnd({3, 4}), rnd({4}), rnd({4})});
  check2("layer_norm", [](auto& v) { return layer_norm(v[0], {2, 3}); }, {rnd({2, 2, 3})});
}

TEST_CASE("fused recurrent cells: the recorded backward of a create_graph pass") {
  manual_seed(26);
  const int64_t B = 2, H = 3;
  check2("rnn_cell", [](auto& v) { return rnn_cell(v[0], v[1], v[2], v[3]); },
         {rnd({B, H}), rnd({B, H}), rnd({H, H}), rnd({H})});
  check2("rnn_cell", [](auto& v) { Tensor y = rnn_cell(v[0], v[1], v[2], Tensor(), true); return y * y; },
         {away({B, H}, 1.0, 2.0), rnd({B, H}), leaf(randn({H, H}, F64) * 0.1)});
  check2("lstm_cell", [](auto& v) { return lstm_cell(v[0], v[1], v[2], v[3], v[4]); },
         {rnd({B, 4 * H}), rnd({B, H}), rnd({B, H}), rnd({4 * H, H}), rnd({4 * H})});
  check2("gru_cell", [](auto& v) { return gru_cell(v[0], v[1], v[2], v[3]); },
         {rnd({B, 3 * H}), rnd({B, H}), rnd({3 * H, H}), rnd({3 * H})});
  check2("gru_cell", [](auto& v) { return gru_cell(narrow(v[0], 1, 1, 3 * H), v[1], v[2], Tensor()); },
         {rnd({B, 3 * H + 1}), rnd({B, H}), rnd({3 * H, H})});
}

TEST_CASE("selection") {
  manual_seed(27);
  check2("topk", [](auto& v) { Tensor t = topk(v[0], 2, 1).values; return t * t; }, {rnd({3, 4})});
  check2("topk", [](auto& v) { Tensor t = topk(v[0], 2, 0, false).values; return t * t; }, {rnd({3, 2})});
  const Tensor mask = from_vector(std::vector<int64_t>{0, 1, 1}, {3});
  check2("masked_fill", [mask](auto& v) { Tensor m = masked_fill(v[0], mask, -1.0); return m * m * v[1]; },
         {rnd({2, 3}), rnd({3})});
}

TEST_CASE("every registered op has a second-derivative check") {
  std::vector<std::string> missing;
  for (const OpInfo& op : registered_ops())
    if (!checked_ops().count(op.name)) missing.push_back(op.name);
  INFO("ops without a gradgradcheck case: " << [&] { std::string s; for (auto& m : missing) s += m + " "; return s; }());
  CHECK(missing.empty());
}

TEST_CASE("gradgradcheck catches a backward that is right to first order but not differentiable") {
  // Its backward computes g * 2x with a raw copy of x: first derivatives are right, but the
  // gradient does not depend on x in the graph, so the second derivative comes out 0, not 2.
  auto opaque = [](const std::vector<Tensor>& v) {
    Tensor out = (v[0] * v[0]).detach();
    return record("opaque_square", {v[0]}, out, [x = Saved(v[0].detach().clone(), 0)](const Tensor& g, Grads& gr) {
      gr.add(0, g * (*x * 2.0));
    });
  };
  GradcheckOptions o;
  o.name = "opaque_square";
  o.throw_on_failure = false;
  Tensor x = rnd({3});
  CHECK(gradcheck(opaque, {x}, o).ok);
  auto r = gradgradcheck(opaque, {x}, o);
  CHECK_FALSE(r.ok);
  CHECK(r.message.find("gradgrad(opaque_square)") != std::string::npos);
}

}  // TEST_SUITE
