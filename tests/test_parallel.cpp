// kern::parallel_for (the kernels' own threads): every index exactly once, nested and concurrent
// callers, a forked child, and the kernels that use it giving the same bits on any thread count.
#include <doctest/doctest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/kernels/parallel.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "test_util.h"

using namespace tg;
using tg::test::ThreadsScope;

namespace {

bool covers_once(int64_t n, int64_t grain) {
  std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
  kern::parallel_for(n, grain, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) hits[i].fetch_add(1);
  });
  for (auto& h : hits)
    if (h.load() != 1) return false;
  return true;
}
}  // namespace

TEST_CASE("parallel_for: every index once, nested and concurrent callers") {
  ThreadsScope threads(3);
  for (int64_t n : {1, 2, 7, 1000, 4099})
    for (int64_t grain : {1, 3, 1000, 5000}) {
      CAPTURE(n);
      CAPTURE(grain);
      CHECK(covers_once(n, grain));
    }
  std::atomic<int> parts{0};
  kern::parallel_for(3000, 1000, [&](int64_t, int64_t) { parts.fetch_add(1); });
  CHECK(parts.load() == 3);  // three threads, three grains of work: split three ways
  // A loop started from inside another runs serially, and is still complete.
  std::atomic<int64_t> inner_total{0};
  kern::parallel_for(4, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      kern::parallel_for(1000, 10, [&](int64_t ib, int64_t ie) { inner_total.fetch_add(ie - ib); });
  });
  CHECK(inner_total.load() == 4000);
  // Two threads of the user's at once: one gets the team, the other runs alone; both complete.
  bool ok[2] = {false, false};
  std::thread a([&] { for (int r = 0; r < 50; ++r) ok[0] = covers_once(5000, 100); });
  std::thread b([&] { for (int r = 0; r < 50; ++r) ok[1] = covers_once(5000, 100); });
  a.join();
  b.join();
  CHECK((ok[0] && ok[1]));
}

TEST_CASE("parallel_for: a forked child starts its own team") {
  ThreadsScope threads(2);
  CHECK(covers_once(10000, 100));  // the parent's workers exist now
  const pid_t child = fork();
  REQUIRE(child >= 0);
  if (child == 0) {
    alarm(20);  // a deadlock in the child fails the test instead of hanging it
    _exit(covers_once(10000, 100) ? 0 : 1);
  }
  int status = 0;
  REQUIRE(waitpid(child, &status, 0) == child);
  CHECK(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 0);
}

TEST_CASE("kernels that split their loops give the same bits on 1 thread and on 3") {
  auto run = [](int n_threads) {
    ThreadsScope threads(n_threads);
    manual_seed(5);
    Tensor w = randn({700, 300});  // 210,000 elements: several norm blocks and update grains
    w.requires_grad_(true);
    optim::Adam opt({w}, optim::AdamOptions{.lr = 1e-2, .weight_decay = 0.1});
    std::vector<double> norms;
    for (int step = 0; step < 3; ++step) {
      opt.zero_grad();
      Tensor loss = (w * w * w).sum() + (w * 2.0).sum();  // the backward adds two gradients
      loss.backward();
      norms.push_back(optim::clip_grad_norm_({w}, 1.0));
      opt.step();
    }
    return std::pair{w.detach().to_vector(), norms};
  };
  const auto [w1, n1] = run(1);
  const auto [w3, n3] = run(3);
  CHECK(n1 == n3);
  CHECK(w1 == w3);
  Tensor z = zeros({1 << 20});  // a fill split across threads
  CHECK(sum(z).item() == 0.0);
}

TEST_CASE("elementwise maps over large tensors split across threads: same bits as one thread") {
  // Odd sizes above two grains of every map, so the parts end mid-vector; float32 takes the SIMD
  // paths (exp, tanh, sigmoid), float64 the scalar ones.
  for (DType dt : {DType::Float32, DType::Float64}) {
    CAPTURE(dtype_name(dt));
    auto run = [dt](int n_threads) {
      ThreadsScope threads(n_threads);
      manual_seed(9);
      Tensor a = randn({(1 << 18) + 5, 3}, dt), b = randn({(1 << 18) + 5, 3}, dt);
      std::vector<Tensor> outs{a + b, a * b, a / 3.0, 2.0 - a,  tanh(a),    exp(a),
                               sigmoid(a), log(abs(b) + 1.0), relu(a),  neg(b), maximum(a, b)};
      std::vector<std::vector<double>> values;
      for (const Tensor& t : outs) values.push_back(t.to_vector());
      return values;
    };
    const auto one = run(1), three = run(3);
    REQUIRE(one.size() == three.size());
    for (size_t i = 0; i < one.size(); ++i) {
      CAPTURE(i);
      CHECK(one[i] == three[i]);
    }
  }
}

TEST_CASE("parallel_for: workers that went to sleep between loops wake for the next one") {
  ThreadsScope threads(2);
  for (int r = 0; r < 5; ++r) {
    CHECK(covers_once(10000, 100));
    std::this_thread::sleep_for(std::chrono::milliseconds(3));  // past the workers' spin time
  }
  for (int r = 0; r < 2000; ++r) REQUIRE(covers_once(64, 8));  // back to back: workers still spinning
}

TEST_CASE("large matrix products split across threads: deterministic, and equal to one thread's up to rounding") {
  // One-thread BLAS calls on blocks of C's rows (C taller than wide) or columns (wider than
  // tall), in every transposition, float32 and float64; sizes not multiples of the blocks.
  // OpenBLAS does not promise a block of C the bits it has in the whole product (some differ in
  // the last bits), so against one thread: up to rounding; at one thread count: the same bits.
  struct Case { int64_t m, k, n; bool ta, tb; };
  const Case cases[] = {{300, 70, 90, false, false}, {300, 70, 90, true, false}, {90, 130, 300, false, true},
                        {90, 130, 301, true, true},  {257, 1030, 129, true, false}};
  for (DType dt : {DType::Float32, DType::Float64})
    for (const Case& c : cases) {
      CAPTURE(dtype_name(dt));
      CAPTURE(c.m);
      CAPTURE(c.n);
      CAPTURE(c.ta);
      CAPTURE(c.tb);
      auto run = [&](int n_threads) {
        ThreadsScope threads(n_threads);
        manual_seed(3);
        Tensor a = randn(c.ta ? Shape{c.k, c.m} : Shape{c.m, c.k}, dt);
        Tensor b = randn(c.tb ? Shape{c.n, c.k} : Shape{c.k, c.n}, dt);
        return matmul(c.ta ? a.t() : a, c.tb ? b.t() : b).to_vector();
      };
      const auto one = run(1), two = run(2), three = run(3);
      CHECK(two == run(2));
      CHECK(three == run(3));
      const double tol = dt == DType::Float32 ? 1e-4 : 1e-12;  // relative to sqrt(k), the entries' scale
      double worst2 = 0, worst3 = 0;
      for (size_t i = 0; i < one.size(); ++i) {
        worst2 = std::max(worst2, std::abs(one[i] - two[i]));
        worst3 = std::max(worst3, std::abs(one[i] - three[i]));
      }
      CHECK(worst2 <= tol * std::sqrt(double(c.k)));
      CHECK(worst3 <= tol * std::sqrt(double(c.k)));
    }
}

TEST_CASE("recurrent layers split their steps across threads: the same states and state gradients") {
  // B = 64 rows of 256 (x 3 or 4 gates): each step's product (4-17 M multiply-adds) splits its panels and
  // the pointwise work splits its rows on 2 threads. h_n and dL/dh0 go through those paths only:
  // the same bits. The weight gradients are single large products (BLAS blocks): close.
  for (const char* kind : {"rnn", "lstm", "gru"}) {
    CAPTURE(kind);
    auto run = [kind](int n_threads) {
      ThreadsScope threads(n_threads);
      manual_seed(11);
      nn::RNNOptions o{.input_size = 16, .hidden_size = 256};
      std::shared_ptr<nn::Module> m;
      Tensor x = randn({3, 64, 16}), h0 = randn({1, 64, 256}).requires_grad_(true);
      Tensor hn;
      if (std::string(kind) == "rnn") {
        auto r = std::make_shared<nn::RNN>(o);
        hn = r->forward(x, h0).h_n;
        m = r;
      } else if (std::string(kind) == "lstm") {
        auto r = std::make_shared<nn::LSTM>(o);
        hn = r->forward(x, h0).h_n;
        m = r;
      } else {
        auto r = std::make_shared<nn::GRU>(o);
        hn = r->forward(x, h0).h_n;
        m = r;
      }
      (hn * hn).sum().backward();
      std::vector<std::vector<double>> out{hn.detach().to_vector(), h0.grad().to_vector()};
      for (const Tensor& p : m->parameters()) out.push_back(p.grad().to_vector());
      return out;
    };
    const auto one = run(1), two = run(2);
    REQUIRE(one.size() == two.size());
    CHECK(one[0] == two[0]);
    CHECK(one[1] == two[1]);
    for (size_t i = 2; i < one.size(); ++i) {
      CAPTURE(i);
      double worst = 0, scale = 0;
      for (size_t j = 0; j < one[i].size(); ++j) {
        worst = std::max(worst, std::abs(one[i][j] - two[i][j]));
        scale = std::max(scale, std::abs(one[i][j]));
      }
      CHECK(worst <= 1e-5 * std::max(1.0, scale));
    }
  }
}

TEST_CASE("parallel_for: an exception in any part reaches the caller after every part has finished") {
  ThreadsScope threads(2);
  for (int64_t bad : {int64_t{10}, int64_t{9990}}) {  // in the caller's part, in the worker's part
    CAPTURE(bad);
    std::atomic<int64_t> done{0};
    CHECK_THROWS_WITH_AS(kern::parallel_for(10000, 100,
                                            [&](int64_t b, int64_t e) {
                                              if (bad >= b && bad < e) throw std::runtime_error("part failed");
                                              std::this_thread::sleep_for(std::chrono::milliseconds(2));
                                              done.fetch_add(e - b);
                                            }),
                         "part failed", std::runtime_error);
    CHECK(done.load() == 5000);  // the other part ran to its end before the throw came out
    CHECK(covers_once(10000, 100));  // and the team still works
  }
}
