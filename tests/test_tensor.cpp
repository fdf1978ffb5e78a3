#include <doctest/doctest.h>
#include <fmt/format.h>

#include "tapegrad/autograd/format.h"
#include "tapegrad/autograd/ops.h"

using namespace tg;

TEST_CASE("factories, views and printing") {
  Tensor a = arange(6, DType::Float32).reshape({2, 3});
  CHECK(a.shape() == Shape{2, 3});
  CHECK(a.at({1, 2}) == 5.0);
  Tensor t = a.t();
  CHECK(t.shape() == Shape{3, 2});
  CHECK(!t.is_contiguous());
  CHECK(t.at({2, 1}) == 5.0);
  CHECK(t.impl()->storage.get() == a.impl()->storage.get());  // transpose views
  Tensor c = t.contiguous();
  CHECK(c.is_contiguous());
  CHECK(c.to_vector() == std::vector<double>{0, 3, 1, 4, 2, 5});
  std::string s = fmt::format("{}", a);
  CHECK(s.find("shape=[2, 3]") != std::string::npos);
  CHECK(s.find("float32") != std::string::npos);
  Tensor big = zeros({100, 100});
  CHECK(fmt::format("{}", big).find("...") != std::string::npos);
}

TEST_CASE("manual_seed makes random factories reproducible") {
  manual_seed(7);
  auto x = randn({5}).to_vector();
  manual_seed(7);
  CHECK(randn({5}).to_vector() == x);
  auto st = get_rng_state();
  auto y = rand({3}).to_vector();
  set_rng_state(st);
  CHECK(rand({3}).to_vector() == y);
}

TEST_CASE("bad inputs raise errors naming the op and shapes") {
  Tensor a = ones({2, 3}), b = ones({4, 3});
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("add: shapes [2, 3] and [4, 3]"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(matmul(a, b), doctest::Contains("matmul: inner dimensions"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(add(a, ones({2, 3}, DType::Float64)), doctest::Contains("dtype mismatch"),
                       std::invalid_argument);
  Tensor w = ones({4, 2});
  CHECK_THROWS_WITH_AS(embedding(w, from_vector(std::vector<int64_t>{1, 4}, {2})),
                       doctest::Contains("index 4 at position 1 is out of range [0, 4)"), std::out_of_range);
  CHECK_THROWS_WITH_AS(index_select(w, 0, from_vector(std::vector<int64_t>{-1}, {1})),
                       doctest::Contains("index_select: index -1"), std::out_of_range);
  Tensor x = ones({2}).requires_grad_();
  CHECK_THROWS_WITH_AS((x * 2.0).backward(), doctest::Contains("without a gradient"), std::invalid_argument);
  Tensor y = ones({2});
  CHECK_THROWS_WITH_AS(y.sum().backward(), doctest::Contains("does not require grad"), std::invalid_argument);
  CHECK_THROWS_WITH_AS(y.grad(), doctest::Contains("grad: tensor of shape [2] does not require grad"),
                       std::invalid_argument);
  CHECK_THROWS_AS(a.reshape({4, 2}), std::invalid_argument);
  CHECK_THROWS_AS(zeros({1, 1, 1, 1, 1, 1, 1, 1, 1}), std::invalid_argument);
}

// Products under 4096 multiply-adds run tapegrad's own float32 kernels (vectorised, rows held in
// registers for widths 8-32); each shape and transpose case must equal the float64 product.
TEST_CASE("float32 small matrix products equal float64 ones, every kernel path") {
  manual_seed(31);
  auto max_rel = [](const Tensor& x32, const Tensor& x64) {
    Tensor d = abs(x32.to(DType::Float64) - x64);
    return max(d).item() / (max(abs(x64)).item() + 1e-12);
  };
  for (int64_t m : {1, 3, 5})
    for (int64_t k : {1, 3, 8, 16, 19})
      for (int64_t n : {1, 7, 8, 16, 24, 32, 40}) {
        CAPTURE(m);
        CAPTURE(k);
        CAPTURE(n);
        Tensor a = randn({m, k}, DType::Float64), b = randn({k, n}, DType::Float64);
        Tensor at = randn({k, m}, DType::Float64), bt = randn({n, k}, DType::Float64);
        Tensor a32 = a.to(DType::Float32), b32 = b.to(DType::Float32);
        Tensor at32 = at.to(DType::Float32), bt32 = bt.to(DType::Float32);
        CHECK(max_rel(matmul(a32, b32), matmul(a, b)) < 1e-5);                                 // a @ b
        CHECK(max_rel(matmul(transpose(at32, 0, 1), b32), matmul(transpose(at, 0, 1), b)) < 1e-5);  // a^T @ b
        CHECK(max_rel(matmul(a32, transpose(bt32, 0, 1)), matmul(a, transpose(bt, 0, 1))) < 1e-5);  // a @ b^T
        // Weight gradients accumulate a^T @ b over several uses of the weight (beta = 1).
        Tensor w64 = randn({n, k}, DType::Float64).requires_grad_(), w32 = w64.detach().to(DType::Float32).requires_grad_();
        Tensor x = randn({m, k}, DType::Float64), y = randn({m, k}, DType::Float64);
        (sum(linear(x, w64)) + sum(linear(y, w64) * 2.0)).backward();
        (sum(linear(x.to(DType::Float32), w32)) + sum(linear(y.to(DType::Float32), w32) * 2.0)).backward();
        CHECK(max_rel(w32.grad(), w64.grad()) < 1e-5);
      }
}
