// Graph lifetime, reentrancy and threads: independent graphs stay independent, graphs nobody can
// reach are freed, backward from a hook and from other threads either works or throws clearly.
#include <doctest/doctest.h>

#include <atomic>
#include <stdexcept>
#include <thread>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"

using namespace tg;

TEST_SUITE("graph lifetime") {

TEST_CASE("two independent losses on one thread each backward on their own") {
  Tensor w = tensor({1.0, 2.0, 3.0}).requires_grad_();
  Tensor l1 = (w * w).sum();
  Tensor l2 = (w * 3.0).sum();
  l1.backward();
  CHECK(w.grad().to_vector() == std::vector<double>{2, 4, 6});
  l2.backward();  // its graph was not touched by l1's backward
  CHECK(w.grad().to_vector() == std::vector<double>{5, 7, 9});
}

TEST_CASE("losses sharing an interior node: the shared part outlives the first backward") {
  Tensor w = tensor({1.0, -2.0}).requires_grad_();
  Tensor h = w * w;  // consumed by both losses
  Tensor l1 = h.sum();
  Tensor l2 = (h * 3.0).sum();
  l1.backward();
  CHECK(w.grad().to_vector() == std::vector<double>{2, -4});
  l2.backward();
  CHECK(w.grad().to_vector() == std::vector<double>{8, -16});
  // Now every consumer of h has been walked: h's graph is freed, a third use names the fix.
  CHECK_THROWS_WITH_AS((h * 2.0).sum().backward(), doctest::Contains("already been freed"), std::runtime_error);
}

TEST_CASE("a GAN's two players: generator and discriminator graphs interleaved") {
  manual_seed(21);
  Tensor g_w = randn({3, 3}, DType::Float64).requires_grad_();
  Tensor d_w = randn({1, 3}, DType::Float64).requires_grad_();
  Tensor z = randn({4, 3}, DType::Float64);
  Tensor fake = tanh(matmul(z, g_w));
  Tensor d_loss = sigmoid(matmul(fake.detach(), d_w.t())).mean();  // D on a detached fake
  Tensor g_loss = (-sigmoid(matmul(fake, d_w.t()))).mean();        // G through D
  d_loss.backward();
  CHECK_FALSE(g_w.grad().defined());
  Tensor d_grad_after_d = d_w.grad().clone();
  g_loss.backward();
  CHECK(g_w.grad().defined());
  // Same gradients when each graph is built and walked alone.
  Tensor g2 = g_w.detach().requires_grad_(), d2 = d_w.detach().requires_grad_();
  (-sigmoid(matmul(tanh(matmul(z, g2)), d2.t()))).mean().backward();
  CHECK(g_w.grad().to_vector() == g2.grad().to_vector());
  CHECK((d_w.grad() - d_grad_after_d).to_vector() == d2.grad().to_vector());
}

TEST_CASE("a forward with grad on and no backward frees its nodes with its output") {
  const int64_t base = live_nodes();
  nn::RNN rnn({.input_size = 3, .hidden_size = 5, .batch_first = true});
  Tensor x = randn({2, 4, 3});
  for (int i = 0; i < 1000; ++i) {
    Tensor y = rnn(x).output.sum();  // an evaluation that forgot NoGradGuard
    CHECK(y.requires_grad());
    CHECK(live_nodes() > base);
  }
  CHECK(live_nodes() == base);
}

TEST_CASE("training interleaved with grad-on evaluation keeps no graph alive") {
  const int64_t base = live_nodes();
  Tensor w = tensor({0.5, -0.5}).requires_grad_();
  Tensor x = tensor({1.0, 2.0});
  for (int step = 0; step < 200; ++step) {
    Tensor loss = (tanh(w * x) * tanh(w * x)).sum();
    Tensor val = (tanh(w * x * 2.0)).sum();  // validation, grad on, never backwarded
    loss.backward();
    {
      NoGradGuard ng;
      add_(w, w.grad() * -0.1);
    }
    w.zero_grad();
  }
  CHECK(live_nodes() == base);
}

TEST_CASE("a hidden state carried without detach() keeps the whole history, detach() frees it") {
  const int64_t base = live_nodes();
  Tensor w = tensor({0.5}).requires_grad_();
  Tensor h = zeros({1});
  for (int t = 0; t < 50; ++t) h = tanh(h * w + 1.0);
  CHECK(live_nodes() == base + 150);
  h = h.detach();
  CHECK(live_nodes() == base);
}

TEST_CASE("retain_grad on a tensor that dies before backward") {
  Tensor x = tensor({1.0, 2.0}).requires_grad_();
  Tensor loss;
  {
    Tensor h = x * 2.0;
    h.retain_grad();
    loss = (h * h).sum();
  }  // h's handle is gone; its node lives on in loss's graph
  loss.backward();
  CHECK(x.grad().to_vector() == std::vector<double>{8, 16});
}

TEST_CASE("backward inside a hook: on another graph it works, on the graph being walked it throws") {
  Tensor w = tensor({1.0, 2.0}).requires_grad_();
  Tensor v = tensor({3.0}).requires_grad_();
  Tensor h = w * 2.0;
  Tensor other = (v * v).sum();
  bool ran = false;
  h.register_hook([&](const Tensor& g) {
    other.backward();  // a disjoint graph: its own pass (hooks run with grad off, as in PyTorch)
    ran = true;
    return g;
  });
  (h * h).sum().backward();
  CHECK(ran);
  CHECK(v.grad().item() == 6.0);
  CHECK(w.grad().to_vector() == std::vector<double>{8, 16});

  Tensor a = tensor({1.0}).requires_grad_();
  Tensor b = a * 3.0;
  Tensor loss = (b * b).sum();
  bool reenter = true;
  b.register_hook([&](const Tensor& g) {
    if (reenter) loss.backward(/*retain_graph=*/true);  // the graph this hook runs in
    return g;
  });
  CHECK_THROWS_WITH_AS(loss.backward(/*retain_graph=*/true), doctest::Contains("another backward() is walking"),
                       std::runtime_error);
  // The failed pass left the graph walkable.
  reenter = false;
  a.zero_grad();
  loss.backward();
  CHECK(a.grad().item() == 18.0);
}

TEST_CASE("pass ids are global: a pass on another thread does not skip a parameter") {
  Tensor w = tensor({1.0, 1.0}).requires_grad_();
  (w * 2.0).sum().backward();
  w.zero_grad();
  std::thread([&] { (w * 3.0).sum().backward(); }).join();
  REQUIRE(w.grad().defined());
  CHECK(w.grad().to_vector() == std::vector<double>{3, 3});
}

TEST_CASE("threads backward into the same parameters at once: every contribution lands") {
  Tensor w = tensor({1.0, 2.0, 3.0}).requires_grad_();
  constexpr int kThreads = 4, kIters = 200;
  std::vector<std::thread> pool;
  std::atomic<int> errors{0};
  for (int t = 0; t < kThreads; ++t)
    pool.emplace_back([&, t] {
      try {
        for (int i = 0; i < kIters; ++i) (w * double(t + 1)).sum().backward();
      } catch (...) {
        ++errors;
      }
    });
  for (auto& th : pool) th.join();
  CHECK(errors == 0);
  const double per = kIters * (1 + 2 + 3 + 4);  // integers: exact in any order of accumulation
  CHECK(w.grad().to_vector() == std::vector<double>{per, per, per});
}

TEST_CASE("another thread walking a graph that is being walked gets a clear error") {
  Tensor a = tensor({2.0}).requires_grad_();
  Tensor b = a * 3.0;
  Tensor loss = (b * b).sum();
  std::string seen;
  b.register_hook([&](const Tensor& g) {
    std::thread([&] {
      try {
        loss.backward(/*retain_graph=*/true);
      } catch (const std::runtime_error& e) {
        seen = e.what();
      }
    }).join();
    return g;
  });
  loss.backward(/*retain_graph=*/true);
  INFO(seen);
  CHECK(seen.find("another backward() is walking") != std::string::npos);
  CHECK(a.grad().item() == 36.0);  // the thread's attempt added nothing
}


TEST_CASE("live_nodes counts nodes made on a thread that has ended, and their release elsewhere") {
  const int64_t before = live_nodes();
  Tensor kept;
  std::thread([&] {
    Tensor w = tensor({1.0, 2.0}).requires_grad_();
    kept = (w * 2.0).sum();  // two nodes, outliving the thread
  }).join();
  CHECK(live_nodes() == before + 2);
  kept = Tensor();  // freed on this thread
  CHECK(live_nodes() == before);
}

}  // TEST_SUITE
