#include <doctest/doctest.h>
#include <fmt/format.h>

#include "autograd/format.h"
#include "autograd/ops.h"

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
