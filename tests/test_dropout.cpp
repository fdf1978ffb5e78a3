// dropout's mask: the right keep rate, no correlation between neighbours or between calls,
// reproducible from the seed, and thread streams that follow it. The thresholds are 6 standard
// deviations of the statistic under a fair Bernoulli, so a correct mask fails about once in 10^9.
#include <doctest/doctest.h>

#include <cmath>
#include <thread>
#include <vector>

#include "tapegrad/autograd/ops.h"

using namespace tg;

namespace {
std::vector<double> kept_flags(const Tensor& y) {  // 1 where dropout kept the element
  std::vector<double> v = y.to_vector();
  for (double& e : v) e = e != 0.0 ? 1.0 : 0.0;
  return v;
}
double mean(const std::vector<double>& v) {
  double s = 0;
  for (double e : v) s += e;
  return s / static_cast<double>(v.size());
}
}  // namespace

TEST_CASE("dropout: keep rate, scale, independence of neighbours and calls") {
  manual_seed(123);
  const int64_t n = 1 << 20;
  Tensor x = ones({1024, 1024});
  for (double p : {0.1, 0.3, 0.5, 0.9}) {
    CAPTURE(p);
    Tensor y = dropout(x, p);
    std::vector<double> values = y.to_vector(), kept = kept_flags(y);
    const double q = 1 - p, sigma = std::sqrt(p * q / n);
    CHECK(std::abs(mean(kept) - q) < 6 * sigma);
    int64_t off_values = 0;  // neither dropped nor scaled by 1 / (1 - p)
    for (double e : values) off_values += !(e == 0.0 || std::abs(e - 1 / q) < 1e-6);
    CHECK(off_values == 0);
    // Neighbours (lag 1, and lag 2 in case pairs of elements shared a draw) and two calls on
    // the same input: both kept with probability q^2.
    std::vector<double> other = kept_flags(dropout(x, p));
    for (int64_t lag : {1, 2}) {
      double both = 0;
      for (int64_t i = 0; i + lag < n; ++i) both += kept[i] * kept[i + lag];
      CHECK(std::abs(both / (n - lag) - q * q) < 6 * std::sqrt(q * q * (1 - q * q) / n));
    }
    double both_calls = 0;
    for (int64_t i = 0; i < n; ++i) both_calls += kept[i] * other[i];
    CHECK(std::abs(both_calls / n - q * q) < 6 * std::sqrt(q * q * (1 - q * q) / n));
  }
  // Rows of a mask are not shifted copies of each other (a counter that wrapped per row would be).
  Tensor y = dropout(ones({2, 4096}), 0.5);
  CHECK(select(y, 0, 0).to_vector() != select(y, 0, 1).to_vector());
  // p below the mask's 2^-32 resolution keeps everything; p = 1 drops everything.
  CHECK(mean(kept_flags(dropout(x, 1e-12))) == 1.0);
  CHECK(mean(kept_flags(dropout(x, 1.0))) == 0.0);
}

TEST_CASE("dropout: the mask is a function of the seed, on every thread") {
  auto mask_after_seed = [](uint64_t seed) {
    manual_seed(seed);
    return dropout(ones({64, 64}), 0.5).to_vector();
  };
  CHECK(mask_after_seed(7) == mask_after_seed(7));
  CHECK(mask_after_seed(7) != mask_after_seed(8));
  auto worker_mask = [](uint64_t seed) {
    manual_seed(seed);
    std::vector<double> out;
    std::thread([&] { out = dropout(ones({64, 64}), 0.5).to_vector(); }).join();
    return out;
  };
  CHECK(worker_mask(7) == worker_mask(7));
  CHECK(worker_mask(7) != worker_mask(8));
}
