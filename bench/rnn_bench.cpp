// The RNN training-step benchmark of ../shared/bench/SPEC.md, written with the public API the way
// a user would: Embedding -> nn::RNN / nn::LSTM -> last state -> Linear -> BCE with logits;
// one step = zero grads, forward, backward, clip global norm 5 (optimizer hook), Adam(1e-3).
//   bench_rnn_bench step --config small [--threads 1]   one JSON line
//   bench_rnn_bench toytrain                            the seed example's 300-epoch run, timed
#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "autograd/ops.h"
#include "nn/nn.h"
#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/sgd.h"

using namespace tg;
using Clock = std::chrono::steady_clock;

namespace {

struct Config { int64_t V, E, H, T, B; bool lstm; int warm, N; };
const std::map<std::string, Config> kConfigs = {
    {"toy", {16, 8, 16, 4, 1, false, 200, 5000}},
    {"small", {5000, 64, 128, 32, 32, false, 20, 200}},
    {"medium", {20000, 128, 256, 64, 64, false, 20, 30}},
    {"lstm-small", {5000, 64, 128, 32, 32, true, 20, 100}},
};
constexpr int kRepeats = 5;

double flops_per_step(const Config& c) {  // SPEC.md's nominal count: matmuls only, backward = 2x forward
  double G = c.lstm ? 4 : 1;
  double fwd = c.T * (2.0 * c.B * c.E * G * c.H + 2.0 * c.B * c.H * G * c.H) + 2.0 * c.B * c.H;
  return 3 * fwd;
}

class Net : public nn::Module {
 public:
  Net(const Config& c) : lstm_(c.lstm) {
    emb_ = register_module("emb", std::make_shared<nn::Embedding>(c.V, c.E));
    // Only h_n is read, so the module is told not to assemble the per-step output sequence.
    nn::RNNOptions o{.input_size = c.E, .hidden_size = c.H, .batch_first = true, .output_sequence = false};
    if (lstm_) lstm_mod_ = register_module("lstm", std::make_shared<nn::LSTM>(o));
    else rnn_ = register_module("rnn", std::make_shared<nn::RNN>(o));
    fc_ = register_module("fc", std::make_shared<nn::Linear>(c.H, 1));
  }
  Tensor forward(const Tensor& x) {
    Tensor e = (*emb_)(x);
    Tensor h = lstm_ ? (*lstm_mod_)(e).h_n : (*rnn_)(e).h_n;
    return (*fc_)(select(h, 0, -1)).reshape({-1});
  }

 private:
  bool lstm_;
  std::shared_ptr<nn::Embedding> emb_;
  std::shared_ptr<nn::RNN> rnn_;
  std::shared_ptr<nn::LSTM> lstm_mod_;
  std::shared_ptr<nn::Linear> fc_;
};

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

int toytrain() {  // SPEC.md: 300 epochs x 8 sentences of 4 tokens, per-sentence SGD(0.1), no clipping
  auto t0 = Clock::now();
  Config c = kConfigs.at("toy");
  manual_seed(0);
  Tensor X = randint(0, c.V, {8, c.T});
  Tensor Y = randint(0, 2, {8}).to(DType::Float32);
  Net model(c);
  optim::SGD opt(model.parameters(), optim::SGDOptions{.lr = 0.1});
  Tensor loss;
  for (int epoch = 0; epoch < 300; ++epoch)
    for (int64_t s = 0; s < 8; ++s) {
      opt.zero_grad();
      loss = binary_cross_entropy_with_logits(model.forward(narrow(X, 0, s, 1)), narrow(Y, 0, s, 1));
      loss.backward();
      opt.step();
    }
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  fmt::print("{{\"mode\": \"toytrain\", \"train_s\": {:.6f}, \"final_loss\": {:.8g}}}\n", secs, loss.item());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "step", config = "small";
  int threads = 1;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--config") config = argv[i + 1];
    else if (k == "--threads") threads = std::atoi(argv[i + 1]);
  }
  set_num_threads(threads);
  if (mode == "toytrain") return toytrain();
  if (!kConfigs.count(config)) {
    fmt::print(stderr, "unknown config '{}': toy, small, medium, lstm-small\n", config);
    return 2;
  }
  const Config c = kConfigs.at(config);
  manual_seed(0);
  Tensor x = randint(0, c.V, {c.B, c.T});
  Tensor y = randint(0, 2, {c.B}).to(DType::Float32);
  Net model(c);
  optim::Adam opt(model.parameters(), optim::AdamOptions{.lr = 1e-3});
  opt.add_hook(optim::ClipGradNorm(5.0));
  Tensor loss;
  auto step = [&] {
    opt.zero_grad();
    loss = binary_cross_entropy_with_logits(model.forward(x), y);
    loss.backward();
    opt.step();
  };
  for (int i = 0; i < c.warm; ++i) step();
  std::vector<double> per_step;
  for (int r = 0; r < kRepeats; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < c.N; ++i) step();
    per_step.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / c.N);
  }
  std::vector<double> sorted = per_step;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted[sorted.size() / 2], fl = flops_per_step(c);
  fmt::print("{{\"config\": \"{}\", \"threads\": {}, \"median_ms\": {:.6f}, \"min_ms\": {:.6f}, \"gflops\": {:.3f}, "
             "\"peak_rss_mb\": {:.1f}, \"repeats_ms\": [{:.6f}], \"final_loss\": {:.8g}}}\n",
             config, threads, med, sorted.front(), fl / (med * 1e-3) / 1e9, peak_rss_mb(),
             fmt::join(per_step, ", "), loss.item());
  return 0;
}
