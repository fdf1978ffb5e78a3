// Two threads training two independent models at once, each on its own thread-local tape and
// generator, must give exactly what sequential runs give.
#include <doctest/doctest.h>

#include <thread>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"

using namespace tg;

namespace {
std::vector<double> train(uint64_t seed) {
  manual_seed(seed);
  nn::Embedding emb(20, 6);
  nn::GRU gru(nn::RNNOptions{.input_size = 6, .hidden_size = 8, .batch_first = true});
  nn::Linear fc(8, 1);
  std::vector<Tensor> params = emb.parameters();
  for (auto& p : gru.parameters()) params.push_back(p);
  for (auto& p : fc.parameters()) params.push_back(p);
  optim::Adam opt(params, {.lr = 1e-2});
  opt.add_hook(optim::ClipGradNorm(1.0));
  Tensor x = randint(0, 20, {4, 7}), y = randint(0, 2, {4}).to(DType::Float32);
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    Tensor logits = fc(select(gru(emb(x)).h_n, 0, -1)).reshape({-1});
    binary_cross_entropy_with_logits(logits, y).backward();
    opt.step();
  }
  std::vector<double> out;
  for (auto& p : params)
    for (double v : p.to_vector()) out.push_back(v);
  return out;
}
}  // namespace

TEST_SUITE("threads") {
TEST_CASE("two models trained on two threads equal sequential runs") {
  auto a_seq = train(1), b_seq = train(2);
  std::vector<double> a_par, b_par;
  std::thread ta([&] { a_par = train(1); }), tb([&] { b_par = train(2); });
  ta.join();
  tb.join();
  CHECK(a_par == a_seq);
  CHECK(b_par == b_seq);
  CHECK(a_seq != b_seq);
}
}
