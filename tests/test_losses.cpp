// cross_entropy, nll_loss and binary_cross_entropy_with_logits against PyTorch: outputs and
// gradients of seeded random cases (extra dims, class weights, label smoothing, ignore_index,
// pos_weight, every reduction) made offline by tests/loss_reference.py, to 1e-12 relative in
// float64. Then the errors, and the [N, T, C] path without a copy.
#include <doctest/doctest.h>

#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>

#include "tapegrad/autograd/ops.h"
#include "test_util.h"

using namespace tg;
using tg::test::error_of;
using tg::test::has;

namespace {
constexpr DType F64 = DType::Float64;

nlohmann::json load_reference() {
  std::ifstream in(std::string(TG_SOURCE_DIR) + "/tests/loss_reference.json");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}
Shape shape_of(const nlohmann::json& j) { return Shape(j.get<std::vector<int64_t>>()); }
Reduction reduction_of(const std::string& r) {
  return r == "mean" ? Reduction::Mean : r == "sum" ? Reduction::Sum : Reduction::None;
}
// The reference's values; null in the file stands for NaN.
std::vector<double> values_of(const nlohmann::json& j) {
  std::vector<double> v;
  for (const auto& e : j) v.push_back(e.is_null() ? NAN : e.get<double>());
  return v;
}
Tensor f64(const nlohmann::json& values, const Shape& s) { return from_vector(values_of(values), s); }
// Relative error to the reference, the denominator floored at 1e-3 of the tensor's largest
// magnitude (a gradient entry that cancels to ~1e-17 has no relative digits to compare). NaN
// must meet NaN (infinite error otherwise).
double max_rel_error(const Tensor& got, const nlohmann::json& want) {
  auto a = got.to_vector();
  auto b = values_of(want);
  REQUIRE(a.size() == b.size());
  double peak = 0, worst = 0;
  for (double v : b)
    if (!std::isnan(v)) peak = std::max(peak, std::abs(v));
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isnan(a[i]) || std::isnan(b[i])) {
      if (std::isnan(a[i]) != std::isnan(b[i])) worst = INFINITY;
      continue;
    }
    worst = std::max(worst, std::abs(a[i] - b[i]) / std::max(std::abs(b[i]), 1e-3 * peak));
  }
  return worst;
}
}  // namespace

TEST_SUITE("losses") {

TEST_CASE("cross_entropy, nll_loss, binary_cross_entropy_with_logits match PyTorch to 1e-12") {
  const nlohmann::json ref = load_reference();
  int n_class = 0, n_bce = 0;
  double worst = 0;
  for (const auto& c : ref["cases"]) {
    const std::string op = c["op"];
    const Shape in_shape = shape_of(c["input_shape"]), out_shape = shape_of(c["output_shape"]);
    CAPTURE(op);
    CAPTURE(in_shape.str());
    CAPTURE(c["reduction"].get<std::string>());
    Tensor x = f64(c["input"], in_shape).requires_grad_();
    Tensor v = f64(c["cotangent"], out_shape);
    if (op == "binary_cross_entropy_with_logits") {
      ++n_bce;
      Tensor y = f64(c["target"], in_shape).requires_grad_();
      BCEWithLogitsOptions o;
      o.reduction = reduction_of(c["reduction"]);
      if (!c["weight"].is_null()) o.weight = f64(c["weight"], shape_of(c["weight_shape"]));
      if (!c["pos_weight"].is_null()) o.pos_weight = f64(c["pos_weight"], shape_of(c["pos_weight_shape"]));
      Tensor out = binary_cross_entropy_with_logits(x, y, o);
      (out * v).sum().backward();
      const double e = std::max({max_rel_error(out, c["output"]), max_rel_error(x.grad(), c["grad_input"]),
                                 max_rel_error(y.grad(), c["grad_target"])});
      CHECK(e < 1e-12);
      worst = std::max(worst, e);
      continue;
    }
    ++n_class;
    CAPTURE(c["label_smoothing"].get<double>());
    CAPTURE(c["class_dim"].get<int64_t>());
    Tensor target = from_vector(c["target"].get<std::vector<int64_t>>(), shape_of(c["target_shape"]));
    CrossEntropyOptions o;
    o.ignore_index = c["ignore_index"];
    o.reduction = reduction_of(c["reduction"]);
    o.label_smoothing = c["label_smoothing"];
    o.class_dim = c["class_dim"];
    if (!c["weight"].is_null()) o.weight = f64(c["weight"], {in_shape[o.class_dim == -1 ? in_shape.size() - 1 : in_shape.size() == 1 ? 0 : 1]});
    Tensor out = op == "cross_entropy" ? cross_entropy(x, target, o) : nll_loss(x, target, o);
    CHECK(out.shape() == out_shape);
    (out * v).sum().backward();
    const double e = std::max(max_rel_error(out, c["output"]), max_rel_error(x.grad(), c["grad_input"]));
    CHECK(e < 1e-12);
    worst = std::max(worst, e);
  }
  MESSAGE("worst relative error against PyTorch: " << worst);
  CHECK(n_class >= 100);
  CHECK(n_bce >= 5);
}

TEST_CASE("cross_entropy over [N, T, C] with class_dim = -1: no copy, same as PyTorch's [N, C, T] layout") {
  manual_seed(41);
  Tensor lp = randn({2, 3, 4}, F64).requires_grad_();
  Tensor target = from_vector(std::vector<int64_t>{0, 3, -100, 2, 1, 1}, {2, 3});
  CrossEntropyOptions last;
  last.class_dim = -1;
  const int64_t before = live_nodes();
  Tensor a = nll_loss(lp, target, last);
  CHECK(live_nodes() - before == 2);  // a reshape view and the loss: the classes are already rows
  Tensor moved = permute(lp.detach(), {0, 2, 1}).contiguous().requires_grad_();  // [N, C, T]
  Tensor b = nll_loss(moved, target, CrossEntropyOptions{});
  CHECK(a.item() == doctest::Approx(b.item()).epsilon(1e-14));
  a.backward();
  b.backward();
  auto ga = lp.grad().to_vector(), gb = permute(moved.grad(), {0, 2, 1}).contiguous().to_vector();
  for (size_t i = 0; i < ga.size(); ++i) CHECK(ga[i] == doctest::Approx(gb[i]).epsilon(1e-14));
  // The old signatures keep their meaning.
  Tensor x = randn({4, 3}, F64);
  Tensor t = from_vector(std::vector<int64_t>{2, 0, -100, 1}, {4});
  CHECK(cross_entropy(x, t).item() == cross_entropy(x, t, CrossEntropyOptions{}).item());
  CHECK(nll_loss(x, t, -100, Reduction::Sum).item() == doctest::Approx(-(x.at({0, 2}) + x.at({1, 0}) + x.at({3, 1}))));
}

TEST_CASE("losses refuse bad shapes, dtypes and values, naming the op and the shapes") {
  Tensor x = randn({2, 3, 4});
  Tensor t = zeros({2, 4}, DType::Int64);
  std::string e = error_of([&] { cross_entropy(x, zeros({2, 3}, DType::Int64)); });
  CHECK(has(e, "nll_loss"));
  CHECK(has(e, "[2, 3, 4]"));
  CHECK(has(e, "[2, 4]"));  // the target shape it expected
  CHECK(has(e, "class_dim = -1"));
  CrossEntropyOptions o;
  o.weight = ones({4});
  CHECK(has(error_of([&] { cross_entropy(x, t, o); }), "weight [4] must be [3]"));
  o.weight = ones({3}, F64);
  CHECK(has(error_of([&] { cross_entropy(x, t, o); }), "dtype"));
  o = {};
  o.label_smoothing = 1.5;
  CHECK(has(error_of([&] { cross_entropy(x, t, o); }), "label_smoothing"));
  CHECK(has(error_of([&] { cross_entropy(x, full({2, 4}, 3.0, DType::Int64)); }), "target 3 at position 0"));
  CHECK(has(error_of([&] { cross_entropy(x, zeros({2, 4})); }), "int64"));
  CHECK(has(error_of([&] { cross_entropy(scalar(1.0), zeros({}, DType::Int64)); }), "class dim"));
  o = {};
  o.class_dim = 3;
  CHECK(has(error_of([&] { cross_entropy(x, t, o); }), "dim 3 out of range"));
  Tensor l = randn({4, 3}), y = rand({4, 3});
  BCEWithLogitsOptions b;
  b.pos_weight = ones({4});
  e = error_of([&] { binary_cross_entropy_with_logits(l, y, b); });
  CHECK(has(e, "binary_cross_entropy_with_logits"));
  CHECK(has(e, "pos_weight [4]"));
  CHECK(has(e, "[4, 3]"));
  b = {};
  b.weight = ones({3}, F64);
  CHECK(has(error_of([&] { binary_cross_entropy_with_logits(l, y, b); }), "dtype"));
  CHECK(has(error_of([&] { binary_cross_entropy_with_logits(l, rand({3, 4})); }), "same shape"));
}

TEST_CASE("binary_cross_entropy_with_logits with pos_weight stays finite for large logits") {
  Tensor x = tensor({-800.0, -40.0, 0.0, 40.0, 800.0}, F64).requires_grad_();
  Tensor y = tensor({1.0, 0.0, 0.5, 1.0, 0.0}, F64);
  BCEWithLogitsOptions o;
  o.pos_weight = scalar(3.0, F64);
  o.reduction = Reduction::None;
  Tensor l = binary_cross_entropy_with_logits(x, y, o);
  auto v = l.to_vector();
  CHECK(v[0] == doctest::Approx(3 * 800.0));  // y = 1: pos_weight * softplus(800)
  CHECK(v[4] == doctest::Approx(800.0));      // y = 0: softplus(800)
  l.sum().backward();
  auto g = x.grad().to_vector();
  CHECK(g[0] == doctest::Approx(-3.0));
  CHECK(g[4] == doctest::Approx(1.0));
  for (double d : g) CHECK(std::isfinite(d));
}

}  // TEST_SUITE
