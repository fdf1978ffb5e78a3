// topk and multinomial: values, ties and NaN, reproducibility under manual_seed, the sampling
// distribution (chi-square with a fixed seed, so the draws and the statistic are fixed), errors.
#include <doctest/doctest.h>

#include <cmath>
#include <set>

#include "tapegrad/autograd/ops.h"
#include "test_util.h"

using namespace tg;
using tg::test::error_of;
using tg::test::has;

namespace {
constexpr DType F64 = DType::Float64;
std::vector<int64_t> ints(const Tensor& t) {
  std::vector<int64_t> v;
  for (double d : t.to_vector()) v.push_back(static_cast<int64_t>(d));
  return v;
}
// Pearson's statistic of observed counts against expected ones (cells with expectation 0 must be empty).
double chi_square(const std::vector<double>& observed, const std::vector<double>& expected) {
  double chi = 0;
  for (size_t i = 0; i < observed.size(); ++i) {
    if (expected[i] == 0) {
      CHECK(observed[i] == 0);
      continue;
    }
    chi += (observed[i] - expected[i]) * (observed[i] - expected[i]) / expected[i];
  }
  return chi;
}
}  // namespace

TEST_SUITE("select") {

TEST_CASE("topk: values and indices along each dim, largest and smallest, sorted or in position order") {
  Tensor x = tensor({{3, 1, 4, 1, 5}, {9, 2, 6, 5, 3}}, F64);
  TopK a = topk(x, 2);
  CHECK(a.values.shape() == Shape{2, 2});
  CHECK(a.values.to_vector() == std::vector<double>{5, 4, 9, 6});
  CHECK(ints(a.indices) == std::vector<int64_t>{4, 2, 0, 2});
  CHECK(a.indices.dtype() == DType::Int64);
  TopK s = topk(x, 3, 1, /*largest=*/false);
  CHECK(s.values.to_vector() == std::vector<double>{1, 1, 3, 2, 3, 5});
  CHECK(ints(s.indices) == std::vector<int64_t>{1, 3, 0, 1, 4, 3});  // the tie 1, 1: lower position first
  TopK u = topk(x, 3, 1, true, /*sorted=*/false);                    // the same three, in position order
  CHECK(ints(u.indices) == std::vector<int64_t>{0, 2, 4, 0, 2, 3});
  CHECK(u.values.to_vector() == std::vector<double>{3, 4, 5, 9, 6, 5});
  TopK d0 = topk(x, 1, 0);
  CHECK(d0.values.shape() == Shape{1, 5});
  CHECK(d0.values.to_vector() == std::vector<double>{9, 2, 6, 5, 5});
  CHECK(ints(d0.indices) == std::vector<int64_t>{1, 1, 1, 1, 0});  // 5 vs 5: row 0 first
  TopK i64 = topk(from_vector(std::vector<int64_t>{7, -2, 7, 10}, {4}), 3);
  CHECK(ints(i64.values) == std::vector<int64_t>{10, 7, 7});
  CHECK(ints(i64.indices) == std::vector<int64_t>{3, 0, 2});
  CHECK(topk(x, 0, 1).values.shape() == Shape{2, 0});
  CHECK(topk(scalar(2.5, F64), 1).values.item() == 2.5);
}

TEST_CASE("topk: NaN counts as the largest value, as in PyTorch") {
  Tensor x = tensor({1.0, NAN, 3.0, NAN, -1.0}, F64);
  TopK a = topk(x, 3);
  CHECK(ints(a.indices) == std::vector<int64_t>{1, 3, 2});
  CHECK(std::isnan(a.values.to_vector()[0]));
  TopK s = topk(x, 4, 0, false);
  CHECK(ints(s.indices) == std::vector<int64_t>{4, 0, 2, 1});
}

TEST_CASE("topk: the gradient goes to the picked positions only") {
  Tensor x = tensor({{0.5, 2.0, -1.0}, {4.0, 3.0, 8.0}}, F64).requires_grad_();
  TopK t = topk(x, 2, -1);
  (t.values * tensor({{1.0, 10.0}, {100.0, 1000.0}}, F64)).sum().backward();
  CHECK(x.grad().to_vector() == std::vector<double>{10, 1, 0, 1000, 0, 100});
}

TEST_CASE("topk: k out of range is refused with the shape") {
  Tensor x = randn({2, 3});
  const std::string e = error_of([&] { topk(x, 4, 1); });
  CHECK(has(e, "topk"));
  CHECK(has(e, "[2, 3]"));
  CHECK(has(e, "k = 4"));
  CHECK_THROWS_AS(topk(x, -1, 0), std::out_of_range);
  CHECK_THROWS_AS(topk(x, 3, 0), std::out_of_range);
  CHECK_THROWS_AS(topk(x, 1, 2), std::out_of_range);
}

TEST_CASE("masked_fill: broadcast masks of any dtype, the gradient zero where masked") {
  Tensor x = tensor({{1, 2, 3}, {4, 5, 6}}, F64).requires_grad_();
  Tensor y = masked_fill(x, from_vector(std::vector<int64_t>{0, 1, 0}, {3}), -INFINITY);
  auto v = y.to_vector();
  CHECK(v[0] == 1);
  CHECK(v[1] == -INFINITY);
  CHECK(v[4] == -INFINITY);
  CHECK(v[5] == 6);
  masked_fill(x, from_vector(std::vector<double>{0.5, 0}, {2, 1}), 7.0).sum().backward();  // 0.5 is set (non-zero), not truncated
  CHECK(x.grad().to_vector() == std::vector<double>{0, 0, 0, 1, 1, 1});
  Tensor ids = from_vector(std::vector<int64_t>{3, 4, 5}, {3});
  CHECK(ints(masked_fill(ids, tensor({1.0, 0.0, 0.25}), -1.0)) == std::vector<int64_t>{-1, 4, -1});
  CHECK(masked_fill(x, scalar(1.0, F64), 0.0).to_vector() == std::vector<double>(6, 0.0));
  std::string e = error_of([&] { masked_fill(x, ones({3, 3}), 0.0); });
  CHECK(has(e, "masked_fill"));
  CHECK(has(e, "[3, 3]"));
  CHECK(has(e, "[2, 3]"));
  CHECK(has(error_of([&] { masked_fill(x, ones({2, 2, 3}), 0.0); }), "keeps x's shape"));
  CHECK(has(error_of([&] { masked_fill(ids, ones({3}), 0.5); }), "int64"));
}

TEST_CASE("multinomial: the same seed gives the same draws, a new seed others") {
  Tensor p = tensor({{0.1, 0.5, 0.4, 0.0}, {1.0, 1.0, 1.0, 1.0}}, F64);
  for (bool replacement : {true, false}) {
    CAPTURE(replacement);
    manual_seed(123);
    auto a = ints(multinomial(p, 3, replacement));
    manual_seed(123);
    auto b = ints(multinomial(p, 3, replacement));
    CHECK(a == b);
    manual_seed(124);
    std::vector<int64_t> c;
    for (int i = 0; i < 20 && (c.empty() || c == a); ++i) c = ints(multinomial(p, 3, replacement));
    CHECK(c != a);
  }
  CHECK(multinomial(p, 3).shape() == Shape{2, 3});
  CHECK(multinomial(tensor({0.2, 0.8}), 5, true).shape() == Shape{5});
  CHECK(multinomial(tensor({0.2, 0.8}), 5, true).dtype() == DType::Int64);
}

TEST_CASE("multinomial with replacement follows the probabilities (chi-square, fixed seed)") {
  // Unnormalised weights; float32 and float64. 3 degrees of freedom: P(chi2 > 40) < 1e-8.
  for (DType dt : {DType::Float32, F64}) {
    CAPTURE(dtype_name(dt));
    manual_seed(7);
    const std::vector<double> w = {1, 2, 0, 3, 4};
    const int64_t n = 20000;
    Tensor draws = multinomial(from_vector(w, {5}).to(dt), n, true);
    std::vector<double> counts(5, 0.0), expected(5);
    for (int64_t i : ints(draws)) counts[static_cast<size_t>(i)] += 1;
    for (size_t i = 0; i < 5; ++i) expected[i] = n * w[i] / 10.0;
    CHECK(chi_square(counts, expected) < 40.0);
  }
}

TEST_CASE("multinomial without replacement: distinct draws, distributed as sequential draws") {
  manual_seed(8);
  const std::vector<double> w = {0.1, 0.2, 0.3, 0.4, 0.0};
  const int64_t rows = 10000;
  Tensor p = from_vector(w, {1, 5}).expand({rows, 5});  // a broadcast view: contiguous() copies it
  auto d = ints(multinomial(p, 2));
  std::vector<double> first(5, 0.0), second(5, 0.0), e_first(5), e_second(5, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    CHECK(d[2 * r] != d[2 * r + 1]);
    first[static_cast<size_t>(d[2 * r])] += 1;
    second[static_cast<size_t>(d[2 * r + 1])] += 1;
  }
  for (size_t i = 0; i < 5; ++i) {
    e_first[i] = rows * w[i];
    for (size_t j = 0; j < 5; ++j)  // P(second = i) = sum_j P(first = j) w_i / (1 - w_j)
      if (j != i) e_second[i] += rows * w[j] * w[i] / (1 - w[j]);
  }
  CHECK(chi_square(first, e_first) < 40.0);
  CHECK(chi_square(second, e_second) < 40.0);
  // All of the non-zero entries: a permutation of them.
  auto all = ints(multinomial(tensor({0.0, 5.0, 1.0, 2.0}), 3));
  CHECK(std::set<int64_t>(all.begin(), all.end()) == std::set<int64_t>{1, 2, 3});
}

TEST_CASE("multinomial: bad probabilities and sizes are refused, naming the row and value") {
  auto e = [](const Tensor& p, int64_t k, bool repl = false) { return error_of([&] { multinomial(p, k, repl); }); };
  std::string m = e(tensor({{0.5, 0.5}, {0.2, -0.5}}, F64), 1);
  CHECK(has(m, "multinomial"));
  CHECK(has(m, "row 1"));
  CHECK(has(m, "-0.5"));
  m = e(tensor({{0.5, 0.5}, {NAN, 1.0}}), 1);
  CHECK(has(m, "row 1"));
  CHECK(has(m, "nan"));
  CHECK(has(e(tensor({INFINITY, 1.0}), 1), "inf"));
  m = e(tensor({{0.5, 0.5}, {0.0, 0.0}}), 1, true);
  CHECK(has(m, "row 1"));
  CHECK(has(m, "sums to 0"));
  m = e(tensor({0.0, 1.0, 2.0, 0.0}), 3);
  CHECK(has(m, "only 2 non-zero"));
  CHECK(has(e(tensor({1.0, 2.0}), 3), "without replacement"));
  CHECK(e(tensor({1.0, 2.0}), 3, true).empty());
  CHECK(has(e(tensor({1.0, 2.0}), 0), "num_samples"));
  CHECK(has(e(randn({2, 2, 2}), 1), "[2, 2, 2]"));
  CHECK(has(e(from_vector(std::vector<int64_t>{1, 2}, {2}), 1), "float32 or float64"));
  CHECK(has(e(zeros({2, 0}), 1), "no categories"));
}

}  // TEST_SUITE
