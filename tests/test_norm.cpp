// layer_norm against its textbook composite (float64 and float32), its errors, and nn::LayerNorm.
#include <doctest/doctest.h>

#include <cmath>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/layers.h"
#include "test_util.h"

using namespace tg;
using tg::test::error_of;
using tg::test::has;

namespace {
constexpr DType F64 = DType::Float64;
Tensor composite(const Tensor& x, const std::vector<int64_t>& dims, const Tensor& w, const Tensor& b, double eps) {
  Tensor c = x - mean(x, dims, true);
  Tensor y = c / sqrt(mean(c * c, dims, true) + eps);
  if (w.defined()) y = y * w;
  if (b.defined()) y = y + b;
  return y;
}
void close(const Tensor& a, const Tensor& b, double tol) {
  auto x = a.to_vector(), y = b.to_vector();
  REQUIRE(x.size() == y.size());
  for (size_t i = 0; i < x.size(); ++i) CHECK(x[i] == doctest::Approx(y[i]).epsilon(tol).scale(1.0));
}
}  // namespace

TEST_SUITE("norm") {

TEST_CASE("layer_norm equals the composite, values and gradients, float64 and float32") {
  manual_seed(31);
  for (DType dt : {F64, DType::Float32}) {
    CAPTURE(dtype_name(dt));
    const double tol = dt == F64 ? 1e-12 : 1e-5;
    // A large mean (1e3) with unit spread: the two-pass variance keeps full precision.
    Tensor x = (randn({4, 3, 6}, dt) + 1000.0).requires_grad_();
    Tensor w = randn({3, 6}, dt).requires_grad_(), b = randn({3, 6}, dt).requires_grad_();
    Tensor g = randn({4, 3, 6}, dt);
    Tensor y = layer_norm(x, {3, 6}, w, b);
    (y * g).sum().backward();
    auto gx = x.grad(), gw = w.grad(), gb = b.grad();
    Tensor x2 = x.detach().requires_grad_(), w2 = w.detach().requires_grad_(), b2 = b.detach().requires_grad_();
    Tensor y2 = composite(x2.to(F64), {1, 2}, w2.to(F64), b2.to(F64), 1e-5);
    (y2 * g.to(F64)).sum().backward();
    close(y, y2, tol);
    close(gw, w2.grad(), tol);
    close(gb, b2.grad(), tol);
    close(gx, x2.grad(), tol);
  }
}

TEST_CASE("layer_norm: shape, dtype and eps errors name the op and the shapes") {
  Tensor x = randn({2, 3});
  std::string e = error_of([&] { layer_norm(x, {2}); });
  CHECK(has(e, "layer_norm"));
  CHECK(has(e, "[2, 3]"));
  CHECK(has(e, "[2]"));
  CHECK(has(error_of([&] { layer_norm(x, {3}, ones({4})); }), "weight [4]"));
  CHECK(has(error_of([&] { layer_norm(x, {3}, Tensor(), ones({3}, F64)); }), "dtype"));
  CHECK(has(error_of([&] { layer_norm(x, {3}, Tensor(), Tensor(), -1.0); }), "eps"));
  CHECK(has(error_of([&] { layer_norm(x, {}); }), "normalized_shape"));
  CHECK(has(error_of([&] { layer_norm(x.to(DType::Int64), {3}); }), "float32 or float64"));
}

TEST_CASE("nn::LayerNorm: PyTorch's parameter names and initial values, forward = layer_norm") {
  nn::LayerNorm ln(4);
  auto params = ln.named_parameters();
  REQUIRE(params.size() == 2);
  CHECK(params[0].first == "weight");
  CHECK(params[1].first == "bias");
  CHECK(ln.weight.to_vector() == std::vector<double>(4, 1.0));
  CHECK(ln.bias.to_vector() == std::vector<double>(4, 0.0));
  Tensor x = randn({3, 4});
  CHECK(ln(x).to_vector() == layer_norm(x, {4}, ln.weight, ln.bias).to_vector());
  nn::LayerNorm plain({2, 4}, 1e-6, /*elementwise_affine=*/false);
  CHECK(plain.parameters().empty());
  CHECK(plain(randn({5, 2, 4})).shape() == Shape{5, 2, 4});
  nn::LayerNorm no_bias(4, 1e-5, true, /*bias=*/false);
  CHECK(no_bias.parameters().size() == 1);
  CHECK_THROWS_AS(nn::LayerNorm(0), std::invalid_argument);
  CHECK(has(error_of([&] { ln(randn({3, 5})); }), "layer_norm"));
}

}  // TEST_SUITE
