// Captured training steps (autograd/capture.h): a replay must give the bits of running the step
// eagerly, for every cell, optimizer and hook, on new data at each step; what cannot be replayed
// must throw CaptureError when captured or replayed. (test_gradcheck.cpp also passes every op's
// gradient check through a captured step.)
#include <doctest/doctest.h>

#include <cmath>
#include <memory>
#include <thread>

#include "tapegrad/autograd/capture.h"
#include "tapegrad/kernels/recording.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tapegrad/optim/sgd.h"

using namespace tg;

namespace {

enum class Cell { Rnn, Lstm, Gru };

// Embedding -> recurrent layer -> last state -> Linear: the benchmark's model.
class Classifier : public nn::Module {
 public:
  Classifier(Cell cell, int64_t V, int64_t E, int64_t H) : cell_(cell) {
    emb_ = register_module("emb", std::make_shared<nn::Embedding>(V, E));
    nn::RNNOptions o{.input_size = E, .hidden_size = H, .batch_first = true, .output_sequence = false};
    if (cell == Cell::Rnn) rnn_ = register_module("rnn", std::make_shared<nn::RNN>(o));
    if (cell == Cell::Lstm) lstm_ = register_module("lstm", std::make_shared<nn::LSTM>(o));
    if (cell == Cell::Gru) gru_ = register_module("gru", std::make_shared<nn::GRU>(o));
    fc_ = register_module("fc", std::make_shared<nn::Linear>(H, 1));
  }
  Tensor forward(const Tensor& x) {
    Tensor e = (*emb_)(x);
    Tensor h = cell_ == Cell::Rnn ? (*rnn_)(e).h_n : cell_ == Cell::Lstm ? (*lstm_)(e).h_n : (*gru_)(e).h_n;
    return (*fc_)(select(h, 0, -1)).reshape({-1});
  }

 private:
  Cell cell_;
  std::shared_ptr<nn::Embedding> emb_;
  std::shared_ptr<nn::RNN> rnn_;
  std::shared_ptr<nn::LSTM> lstm_;
  std::shared_ptr<nn::GRU> gru_;
  std::shared_ptr<nn::Linear> fc_;
};

bool same_bits(const Tensor& a, const Tensor& b) { return a.shape() == b.shape() && a.to_vector() == b.to_vector(); }

struct Trainer {
  Classifier model;
  std::unique_ptr<optim::Optimizer> opt;
  std::shared_ptr<optim::ClipGradNorm> clip = std::make_shared<optim::ClipGradNorm>(0.5);
  Tensor x, y, loss;
  Trainer(Cell cell, bool adam, int64_t V, int64_t E, int64_t H, int64_t B, int64_t T) : model((manual_seed(3), cell), V, E, H) {
    if (adam) opt = std::make_unique<optim::Adam>(model.parameters(), optim::AdamOptions{.lr = 1e-2});
    else opt = std::make_unique<optim::SGD>(model.parameters(), optim::SGDOptions{.lr = 0.1, .momentum = 0.9});
    opt->add_hook([c = clip](optim::Optimizer& o) { (*c)(o); });
    x = zeros({B, T}, DType::Int64);
    y = zeros({B}, DType::Float32);
  }
  void step() {
    opt->zero_grad();
    loss = binary_cross_entropy_with_logits(model.forward(x), y);
    loss.backward();
    opt->step();
  }
};

void train_both_ways(Cell cell, bool adam, int64_t V, int64_t E, int64_t H, int64_t B, int64_t T) {
  Trainer eager(cell, adam, V, E, H, B, T), captured(cell, adam, V, E, H, B, T);
  CapturedStep step;
  manual_seed(17);
  for (int s = 0; s < 6; ++s) {
    CAPTURE(s);
    const Tensor xs = randint(0, V, {B, T}), ys = randint(0, 2, {B}).to(DType::Float32);
    copy_(eager.x, xs);
    copy_(eager.y, ys);
    eager.step();
    if (s == 0) {
      copy_(captured.x, xs);
      copy_(captured.y, ys);
      step = capture([&] { captured.step(); }, {captured.x, captured.y});
    } else {
      step.replay({xs, ys});
    }
    CHECK(same_bits(eager.loss, captured.loss));
    CHECK(eager.clip->last_norm() == captured.clip->last_norm());
    const auto pe = eager.model.parameters(), pc = captured.model.parameters();
    for (size_t i = 0; i < pe.size(); ++i) CHECK_MESSAGE(same_bits(pe[i], pc[i]), "parameter " << i);
  }
  CHECK(captured.opt->step_count() == 6);
  CHECK(step.recorded_kernels() > 10);
  CHECK_THROWS_WITH_AS(step.replay({randint(0, V, {B, T + 1}), zeros({B})}), doctest::Contains("fixed shapes"),
                       std::invalid_argument);
  CHECK_THROWS_AS(step.replay({randint(0, V, {B, T})}), std::invalid_argument);
}

}  // namespace

TEST_SUITE("capture") {

TEST_CASE("a replayed step has the bits of the eager step, on new data each time") {
  for (Cell cell : {Cell::Rnn, Cell::Lstm, Cell::Gru})
    for (bool adam : {true, false}) {
      CAPTURE(static_cast<int>(cell));
      CAPTURE(adam);
      train_both_ways(cell, adam, 16, 8, 16, 1, 4);      // the toy: tiny products, dense embedding rows
      train_both_ways(cell, adam, 500, 16, 128, 32, 5);  // packed recurrent weights, row-sparse eager gradient
    }
}

TEST_CASE("what a replay cannot repeat is refused when capturing") {
  manual_seed(1);
  Tensor w = randn({4, 3}).requires_grad_();
  auto refused = [&](const std::function<void()>& f, const char* needle) {
    try {
      capture(f);
      FAIL("no CaptureError");
    } catch (const CaptureError& e) {
      CHECK_MESSAGE(std::string(e.what()).find(needle) != std::string::npos, e.what());
    }
  };
  refused([&] { (dropout(w, 0.5) * 2.0).sum().backward(); }, "random");
  refused([&] { (w * randn({4, 3})).sum().backward(); }, "random");
  refused([&] { (w * tensor({1.0, 2.0, 3.0})).sum().backward(); }, "host memory");
  refused([&] { cross_entropy(w, from_vector(std::vector<int64_t>{0, 1, 2, 0}, {4})).backward(); }, "host memory");
  Tensor t = from_vector(std::vector<int64_t>{0, 1, 2, 0}, {4});
  refused([&] { cross_entropy(w, t).backward(); }, "nll_loss");
  refused([&] { capture([] {}); }, "do not nest");
  // A gradient a create_graph backward adds to is replaced by a recorded sum, which a replay would
  // not accumulate: refused.
  (w * 2.0).sum().backward();
  refused([&] { (w * 3.0).sum().backward(false, true); }, "zero_grad");
}

TEST_CASE("a replay whose host decisions no longer hold throws instead of reading out of range") {
  Tensor table = randn({5, 2}).requires_grad_();
  Tensor ids = from_vector(std::vector<int64_t>{0, 4, 2}, {3});
  Tensor out;
  CapturedStep step = capture([&] {
    table.zero_grad();
    out = embedding(table, ids).sum();
    out.backward();
  });
  copy_(ids, from_vector(std::vector<int64_t>{1, 1, 3}, {3}));
  step.replay();
  CHECK(table.grad().to_vector() == std::vector<double>{0, 0, 2, 2, 0, 0, 1, 1, 0, 0});
  copy_(ids, from_vector(std::vector<int64_t>{1, 7, 3}, {3}));  // row 7 of 5
  CHECK_THROWS_AS(step.replay(), CaptureError);
  // item(), at() and to_vector() inside the step are refused when capturing (the log line would
  // run once); kernels whose results the host reads are re-checked at each replay instead.
  Tensor a = randn({3}).requires_grad_();
  CHECK_THROWS_WITH_AS(capture([&] { (void)a.sum().item(); }), doctest::Contains("after replay()"), CaptureError);
  CHECK_THROWS_AS(capture([&] { (void)a.to_vector(); }), CaptureError);
  CHECK_THROWS_AS(capture([&] { (void)a.at({1}); }), CaptureError);
  Tensor s;
  CapturedStep step2 = capture([&] { s = a.sum(); });
  step2.replay();
  CHECK(s.item() == a.sum().item());  // read after the replay
}

TEST_CASE("replay checks the optimizer it replays") {
  Classifier model(Cell::Rnn, 10, 4, 8);
  Tensor x = randint(0, 10, {2, 3}), y = zeros({2});
  CapturedStep step;
  {
    optim::Adam opt(model.parameters(), optim::AdamOptions{.lr = 1e-3});
    step = capture([&] {
      opt.zero_grad();
      binary_cross_entropy_with_logits(model.forward(x), y).backward();
      opt.step();
    });
    step.replay();
    opt.zero_grad();  // outside the captured function: the replay's gradients would go unread
    CHECK_THROWS_WITH_AS(step.replay(), doctest::Contains("no longer has the gradient"), CaptureError);
  }
  CHECK_THROWS_WITH_AS(step.replay(), doctest::Contains("destroyed"), CaptureError);
  CHECK_THROWS_AS(CapturedStep().replay(), CaptureError);
}

TEST_CASE("a replay invalidates eager graphs that saved what it rewrites") {
  Tensor w = randn({3}).requires_grad_();
  Tensor out;
  CapturedStep step = capture([&] {
    w.zero_grad();
    out = (w * w).sum();
    out.backward();
  });
  Tensor later = out * w;  // saves out
  step.replay();
  CHECK_THROWS(later.sum().backward());
}

TEST_CASE("one replay at a time") {
  Tensor w = randn({64, 64}).requires_grad_();
  CapturedStep step = capture([&] {
    w.zero_grad();
    matmul(w, w).sum().backward();
  });
  std::atomic<int> refused{0};
  auto many = [&] {
    for (int i = 0; i < 200; ++i) try {
        step.replay();
      } catch (const CaptureError&) {
        ++refused;
      }
  };
  std::thread a(many), b(many);
  a.join();
  b.join();
  step.replay();  // usable afterwards, and every replay computed the same gradient
  Tensor twin = w.detach().clone().requires_grad_();
  matmul(twin, twin).sum().backward();
  CHECK(w.grad().to_vector() == twin.grad().to_vector());
  CHECK(refused.load() < 400);
}

TEST_CASE("kernels whose results the host reads are run again at each replay and must agree") {
  // The recording layer on its own: float32 kernels on plain memory, recorded, then replayed
  // with the memory unchanged (passes) and changed (CaptureError).
  std::vector<float> x = {1.0f, -2.0f, 3.0f, 0.5f};
  const int64_t size = 4, stride = 1;
  const kern::View v{x.data(), &size, &stride, 1};
  kern::Recording rec;
  kern::start_recording(rec);
  const kern::KernelTable& r = kern::kernels_for(kern::Device::CPU, kern::DType::Float32);
  CHECK(r.elementwise->load(x.data(), 2) == 3.0);
  CHECK(r.elementwise->all_finite(v));
  CHECK(r.reduce->norm_accumulate(x.data(), 4, 2.0, 0.0) == doctest::Approx(14.25));
  std::vector<double> host(4);
  r.elementwise->to_doubles(v, host.data());
  const auto adam = r.optim->adam;
  kern::stop_recording();
  CHECK(rec.size() == 4);
  CHECK_NOTHROW(rec.replay());
  x[2] = NAN;  // every recorded read now sees another value: the first check stops the replay
  CHECK_THROWS_WITH_AS(rec.replay(), doctest::Contains("reading one element on the host"), CaptureError);
  x[2] = 3.0f;
  x[0] = 7.0f;  // load and all_finite agree again; the norm does not
  CHECK_THROWS_WITH_AS(rec.replay(), doctest::Contains("a norm read on the host"), CaptureError);
  // A recording table's entry called after the recording ended runs the plain kernel, refused or not.
  std::vector<float> p(4, 1.0f), g(4, 0.5f), m(4, 0.0f), s2(4, 0.0f);
  const kern::AdamScalars sc{1e-3, 0.0, 0.9, 0.999, 1e-8, 1e-3 / 0.1, std::sqrt(1 - 0.999), false, false};
  adam(p.data(), g.data(), m.data(), s2.data(), nullptr, 4, sc);
  CHECK(p[0] < 1.0f);
}

TEST_CASE("optimizer kernels outside Optimizer::step are refused; the step itself is replayed") {
  Tensor w = randn({3}).requires_grad_();
  optim::Adam opt({w}, optim::AdamOptions{.lr = 1e-2});
  w.zero_grad();
  (w * w).sum().backward();
  kern::Recording rec;
  kern::start_recording(rec);
  std::vector<float> p(3), g(3), m(3), v(3);
  const kern::AdamScalars sc{1e-3, 0.0, 0.9, 0.999, 1e-8, 1e-2, 0.03, false, false};
  CHECK_THROWS_WITH_AS(kern::kernels_for(kern::Device::CPU, kern::DType::Float32)
                           .optim->adam(p.data(), g.data(), m.data(), v.data(), nullptr, 3, sc),
                       doctest::Contains("an optimizer kernel outside Optimizer::step"), CaptureError);
  kern::stop_recording();
  CapturedStep step = capture([&] { opt.step(); });
  step.replay();
  CHECK(opt.step_count() == 2);
}

TEST_CASE("capture and replay misuse: a replay inside a capture, an undefined input, parameters added") {
  Tensor w = randn({3}).requires_grad_();
  CapturedStep inner = capture([&] {
    w.zero_grad();
    (w * 2.0).sum().backward();
  });
  CHECK_THROWS_WITH_AS(capture([&] { inner.replay(); }), doctest::Contains("a capture cannot record a replay"),
                       CaptureError);
  CHECK_THROWS_WITH_AS(capture([] {}, {Tensor()}), doctest::Contains("input 0 is an undefined tensor"),
                       std::invalid_argument);
  optim::SGD opt({w}, optim::SGDOptions{.lr = 0.1});
  CapturedStep step = capture([&] {
    opt.zero_grad();
    (w * w).sum().backward();
    opt.step();
  });
  Tensor extra = randn({2}).requires_grad_();
  opt.add_param_group(optim::ParamGroup{{extra}});
  CHECK_THROWS_WITH_AS(step.replay(), doctest::Contains("parameters were added"), CaptureError);
}

}  // TEST_SUITE
