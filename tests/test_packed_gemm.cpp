// The float32 products on a packed weight (kernels/cpu_packed_gemm.cpp) against a double triple
// loop over odd sizes, and the recurrent cells' cache of packed weights: repacked after an
// in-place write or an optimizer step, never stale for a new weight, safe from two threads.
#include <doctest/doctest.h>

#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/kernels/kernels.h"
#include "tapegrad/optim/sgd.h"
#include "test_util.h"

using namespace tg;
using tg::test::ThreadsScope;

namespace {
const kern::LinalgKernels& lin32() { return *kern::kernels_for(kern::Device::CPU, kern::DType::Float32).linalg; }

// c = beta c + a op(w) through the packed path, checked element by element against double sums
// (with a float32 error bound from the sum of |terms|) and for writes outside c's m x n block.
bool check_product(int64_t m, int64_t n, int64_t k, bool transposed, float beta, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int64_t lda = k + (k % 3), ldw = (transposed ? k : n) + 1, ldc = n + 2;
  std::vector<float> a(static_cast<size_t>(m * lda)), w(static_cast<size_t>((transposed ? n : k) * ldw)),
      c(static_cast<size_t>(m * ldc));
  for (auto& x : a) x = u(rng);
  for (auto& x : w) x = u(rng);
  for (auto& x : c) x = beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : u(rng);
  const std::vector<float> c0 = c;
  kern::PackedWeight pw;
  lin32().pack(transposed, k, n, w.data(), ldw, pw);
  lin32().gemm_packed(m, a.data(), lda, pw, beta, c.data(), ldc);
  bool ok = true;
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < ldc; ++j) {
      const size_t at = static_cast<size_t>(i * ldc + j);
      if (j >= n) {  // padding between rows of c: untouched (NaN-aware compare)
        if (std::memcmp(&c[at], &c0[at], sizeof(float)) != 0) ok = false;
        continue;
      }
      double s = 0, mag = 0;
      for (int64_t p = 0; p < k; ++p) {
        const double t = double(a[static_cast<size_t>(i * lda + p)]) *
                         double(transposed ? w[static_cast<size_t>(j * ldw + p)] : w[static_cast<size_t>(p * ldw + j)]);
        s += t;
        mag += std::abs(t);
      }
      if (beta != 0.0f) {
        s += double(beta) * double(c0[at]);
        mag += std::abs(double(beta) * double(c0[at]));
      }
      const double tol = double(k + 2) * 1.2e-7 * mag + 1e-30;
      if (!(std::abs(double(c[at]) - s) <= tol)) ok = false;
    }
  if (!ok) MESSAGE("mismatch at m=" << m << " n=" << n << " k=" << k << " transposed=" << transposed << " beta=" << beta);
  return ok;
}
}  // namespace

TEST_CASE("packed gemm: every odd size against a double triple loop, both layouts, beta 0, 1 and 0.5") {
  std::mt19937 rng(7);
  const int64_t sizes[] = {1, 2, 7, 15, 16, 17, 31, 33, 63, 64, 65, 100, 257};
  int checked = 0;
  for (int64_t m : sizes)
    for (int64_t n : sizes)
      for (int64_t k : sizes) {
        if (m * n * k > 300000) continue;  // the reference is a triple loop (and runs under ASan)
        const bool tr = (m + n + k) % 2 == 0;
        const float beta = (m + 2 * n + k) % 3 == 0 ? 0.5f : ((m + n) % 2 ? 1.0f : 0.0f);
        CHECK(check_product(m, n, k, tr, beta, rng));
        ++checked;
      }
  for (float beta : {0.0f, 1.0f})
    for (bool tr : {false, true}) {
      CHECK(check_product(257, 100, 65, tr, beta, rng));
      CHECK(check_product(64, 257, 257, tr, beta, rng));
    }
  CHECK(checked > 1000);
}

TEST_CASE("packed gemm: the same bits on 1 and 2 threads (panels split across threads)") {
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const int64_t m = 256, k = 512, n = 513;  // 2^26 + multiply-adds: big enough to split (cpu_packed_gemm.cpp)
  std::vector<float> a(static_cast<size_t>(m * k)), w(static_cast<size_t>(n * k));
  for (auto& x : a) x = u(rng);
  for (auto& x : w) x = u(rng);
  kern::PackedWeight pw;
  lin32().pack(true, k, n, w.data(), k, pw);
  std::vector<float> c1(static_cast<size_t>(m * n), 1.0f), c2 = c1;
  {
    ThreadsScope one(1);
    lin32().gemm_packed(m, a.data(), k, pw, 1.0, c1.data(), n);
  }
  {
    ThreadsScope two(2);
    lin32().gemm_packed(m, a.data(), k, pw, 1.0, c2.data(), n);
  }
  CHECK(c1 == c2);
}

TEST_CASE("gemm's one-shot packing path: every layout, deep k, beta 0 and 1, same bits on 1 and 2 threads") {
  // Shapes that LinalgKernels::gemm sends to cpu::gemm_by_packing (m >= 96, wide C, >= 2^20
  // multiply-adds): op(b) is packed into scratch, k in slices of 512, panels split over the team.
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  struct Shape3 { int64_t m, n, k; };
  for (const Shape3 sh : {Shape3{128, 128, 1100}, Shape3{100, 160, 96}, Shape3{257, 64, 600}})
    for (bool ta : {false, true})
      for (bool tb : {false, true})
        for (float beta : {0.0f, 1.0f}) {
          const auto [m, n, k] = sh;
          CAPTURE(m); CAPTURE(n); CAPTURE(k); CAPTURE(ta); CAPTURE(tb); CAPTURE(beta);
          const int64_t lda = (ta ? m : k) + 3, ldb = (tb ? k : n) + 5, ldc = n + 1;
          std::vector<float> a(static_cast<size_t>((ta ? k : m) * lda)), b(static_cast<size_t>((tb ? n : k) * ldb));
          for (auto& x : a) x = u(rng);
          for (auto& x : b) x = u(rng);
          std::vector<float> c0(static_cast<size_t>(m * ldc));
          for (auto& x : c0) x = beta == 0.0f ? std::numeric_limits<float>::quiet_NaN() : u(rng);
          std::vector<float> c1 = c0, c2 = c0;
          {
            ThreadsScope one(1);
            lin32().gemm(ta, tb, m, n, k, a.data(), lda, b.data(), ldb, beta, c1.data(), ldc);
          }
          {
            ThreadsScope two(2);
            lin32().gemm(ta, tb, m, n, k, a.data(), lda, b.data(), ldb, beta, c2.data(), ldc);
          }
          CHECK(std::memcmp(c1.data(), c2.data(), c1.size() * sizeof(float)) == 0);
          int bad = 0;
          for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < ldc; ++j) {
              const size_t at = static_cast<size_t>(i * ldc + j);
              if (j >= n) {  // the gap between rows of c stays as it was
                bad += std::memcmp(&c1[at], &c0[at], sizeof(float)) != 0;
                continue;
              }
              double s = beta == 0.0f ? 0.0 : double(c0[at]), mag = std::abs(s);
              for (int64_t p = 0; p < k; ++p) {
                const double t = double(ta ? a[static_cast<size_t>(p * lda + i)] : a[static_cast<size_t>(i * lda + p)]) *
                                 double(tb ? b[static_cast<size_t>(j * ldb + p)] : b[static_cast<size_t>(p * ldb + j)]);
                s += t;
                mag += std::abs(t);
              }
              bad += !(std::abs(double(c1[at]) - s) <= double(k + 2) * 1.2e-7 * mag + 1e-30);
            }
          CHECK(bad == 0);
        }
}

TEST_CASE("packed gemm: bad operands are refused naming the op and the sizes") {
  kern::PackedWeight pw;
  float x[4] = {};
  CHECK(test::has(test::error_of([&] { lin32().gemm_packed(1, x, 1, pw, 0.0, x, 1); }), "gemm_packed"));
  CHECK(test::has(test::error_of([&] { lin32().pack(false, 2, 3, x, 2, pw); }), "ldw=2"));
  CHECK(test::has(test::error_of([&] { lin32().pack(true, 0, 3, x, 3, pw); }), "k=0"));
  lin32().pack(false, 2, 2, x, 2, pw);
  CHECK(test::has(test::error_of([&] { lin32().gemm_packed(2, x, 1, pw, 0.0, x, 2); }), "lda=1"));
  const bool f64_packed = kern::kernels_for(kern::Device::CPU, kern::DType::Float64).linalg->gemm_packed != nullptr;
  CHECK_FALSE(f64_packed);  // float64 stays on BLAS
}

namespace {
// Big enough for the packed path (B H G H > 4096 multiply-adds) at float32.
constexpr int64_t kB = 8, kH = 40;

Tensor lstm_out(const Tensor& px, const Tensor& h, const Tensor& c, const Tensor& w, const Tensor& b) {
  return lstm_cell(px, h, c, w, b);
}
bool same(const Tensor& a, const Tensor& b) { return a.to_vector() == b.to_vector(); }
}  // namespace

TEST_CASE("packed weights: an in-place write or an optimizer step between forwards is seen") {
  manual_seed(21);
  Tensor px = randn({kB, 4 * kH}), h = randn({kB, kH}), c = randn({kB, kH}), b = randn({4 * kH});
  Tensor w = randn({4 * kH, kH}).requires_grad_();
  const Tensor y1 = lstm_out(px, h, c, w, b);
  CHECK(same(y1, lstm_out(px, h, c, w, b)));  // the cached panels give the same bits
  {
    NoGradGuard ng;
    add_(w, ones({4 * kH, kH}), 0.25);
  }
  const Tensor y2 = lstm_out(px, h, c, w, b);
  CHECK_FALSE(same(y1, y2));
  CHECK(same(y2, lstm_out(px, h, c, w.detach().clone(), b)));  // a fresh weight: packed afresh

  // An optimizer step, then forward and backward: both products see the updated weight.
  optim::SGD opt({w}, optim::SGDOptions{.lr = 0.5});
  Tensor hg = h.detach().clone().requires_grad_();
  sum(lstm_out(px, hg, c, w, b)).backward();
  opt.step();
  Tensor h1 = h.detach().clone().requires_grad_(), h2 = h.detach().clone().requires_grad_();
  const Tensor wf = w.detach().clone();
  const Tensor y3 = lstm_out(px, h1, c, w, b), y4 = lstm_out(px, h2, c, wf, b);
  CHECK(same(y3, y4));
  sum(y3).backward();
  sum(y4).backward();
  CHECK(same(h1.grad(), h2.grad()));
}

TEST_CASE("packed weights: a new weight where a freed one was never reuses the old panels") {
  manual_seed(22);
  Tensor px = randn({kB, kH}), h = randn({kB, kH});
  for (int i = 0; i < 20; ++i) {
    Tensor w = randn({kH, kH});
    const Tensor y = rnn_cell(px, h, w, Tensor());
    CHECK(same(y, rnn_cell(px, h, w.clone(), Tensor())));
  }  // each w is freed here; the next randn may take its block
}

TEST_CASE("packed weights: float32 cells' gradients match the float64 computation") {
  manual_seed(23);
  auto f64 = [](const Tensor& t) { return t.detach().to(DType::Float64).requires_grad_(); };
  for (int cell = 0; cell < 3; ++cell) {
    const int64_t G = cell == 0 ? 1 : (cell == 1 ? 4 : 3);
    Tensor px = randn({kB, G * kH}).requires_grad_(), h = randn({kB, kH}).requires_grad_(),
           c = randn({kB, kH}).requires_grad_(), w = (randn({G * kH, kH}) * 0.2).detach().requires_grad_(),
           b = randn({G * kH}).requires_grad_();
    std::vector<Tensor> in32{px, h, c, w, b}, in64;
    for (const Tensor& t : in32) in64.push_back(f64(t));
    auto run = [&](const std::vector<Tensor>& v) {
      Tensor y = cell == 0 ? rnn_cell(v[0], v[1], v[3], v[4])
                           : (cell == 1 ? lstm_cell(v[0], v[1], v[2], v[3], v[4]) : gru_cell(v[0], v[1], v[3], v[4]));
      // Two steps: the second reuses the first's panels, forward and backward.
      Tensor y2 = cell == 1 ? lstm_cell(v[0], select(y, 0, 0), select(y, 0, 1), v[3], v[4])
                            : (cell == 0 ? rnn_cell(v[0], y, v[3], v[4]) : gru_cell(v[0], y, v[3], v[4]));
      sum(y2 * y2).backward();
    };
    run(in32);
    run(in64);
    for (size_t i = 0; i < in32.size(); ++i) {
      if (cell != 1 && i == 2) continue;  // c: LSTM only
      const auto g32 = in32[i].grad().to_vector(), g64 = in64[i].grad().to_vector();
      double worst = 0, scale = 1e-6;
      for (size_t j = 0; j < g64.size(); ++j) {
        worst = std::max(worst, std::abs(g32[j] - g64[j]));
        scale = std::max(scale, std::abs(g64[j]));
      }
      INFO("cell " << cell << " input " << i);
      CHECK(worst <= 1e-4 * scale);
    }
  }
}

TEST_CASE("packed weights: two threads stepping the same weight get the serial result") {
  manual_seed(24);
  Tensor px = randn({kB, 3 * kH}), h = randn({kB, kH}), w = randn({3 * kH, kH}), b = randn({3 * kH});
  const auto want = gru_cell(px, h, w, b).to_vector();
  std::atomic<int> bad{0};
  auto run = [&] {
    for (int i = 0; i < 200; ++i)
      if (gru_cell(px, h, w, b).to_vector() != want) bad.fetch_add(1);
  };
  std::thread t(run);
  run();
  t.join();
  CHECK(bad.load() == 0);
}
