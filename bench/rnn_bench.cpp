// The RNN training-step benchmark of ../shared/bench/SPEC.md, written with the public API the way
// a user would: Embedding -> nn::RNN / nn::LSTM -> last state -> Linear -> BCE with logits;
// one step = zero grads, forward, backward, clip global norm 5 (optimizer hook), Adam(1e-3).
//   bench_rnn_bench step --config small [--threads N] [--captured]
//                                                       one JSON line (default: the available cores);
//                                                       --captured replays a captured step
//   bench_rnn_bench cores                               the cores available to this process
//   bench_rnn_bench toytrain                            the seed example's 300-epoch run, timed
#include <fmt/format.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <memory>
#include <string>

#include "tapegrad/autograd/capture.h"
#include "tapegrad/autograd/ops.h"
#include "bench/bench_model.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tapegrad/optim/sgd.h"

using namespace tg;
using Clock = std::chrono::steady_clock;
using bench::Config;
using bench::kConfigs;
using bench::Net;

namespace {

constexpr int kRepeats = 5;

double flops_per_step(const Config& c) {  // SPEC.md's nominal count: matmuls only, backward = 2x forward
  double G = c.lstm ? 4 : 1;
  double fwd = c.T * (2.0 * c.B * c.E * G * c.H + 2.0 * c.B * c.H * G * c.H) + 2.0 * c.B * c.H;
  return 3 * fwd;
}

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
  int threads = 0;
  bool captured = false;
  for (int i = 2; i < argc; ++i) {
    std::string k = argv[i];
    if (k == "--captured") captured = true;
    else if (i + 1 < argc && k == "--config") config = argv[++i];
    else if (i + 1 < argc && k == "--threads") threads = std::atoi(argv[++i]);
  }
  if (mode == "cores") {
    fmt::print("{}\n", available_cores());
    return 0;
  }
  if (threads > 0) set_num_threads(threads);
  threads = get_num_threads();
  if (mode == "toytrain") return toytrain();
  if (!kConfigs.count(config)) {
    fmt::print(stderr, "unknown config '{}': toy, small, medium, lstm-small, lstm-medium\n", config);
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
  auto eager_step = [&] {
    opt.zero_grad();
    loss = binary_cross_entropy_with_logits(model.forward(x), y);
    loss.backward();
    opt.step();
  };
  // --captured: the same step recorded once (that run is the first warm-up step) and replayed
  // (autograd/capture.h); the inputs are fixed tensors, as in the eager loop.
  CapturedStep replay;
  if (captured) replay = capture(eager_step);
  auto step = [&] { captured ? replay.replay() : eager_step(); };
  for (int i = captured ? 1 : 0; i < c.warm; ++i) step();
  std::vector<double> per_step;
  for (int r = 0; r < kRepeats; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < c.N; ++i) step();
    per_step.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / c.N);
  }
  std::vector<double> sorted = per_step;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted[sorted.size() / 2], fl = flops_per_step(c);
  fmt::print("{{\"config\": \"{}\", \"captured\": {}, \"threads\": {}, \"median_ms\": {:.6f}, \"min_ms\": {:.6f}, \"gflops\": {:.3f}, "
             "\"peak_rss_mb\": {:.1f}, \"repeats_ms\": [{:.6f}], \"final_loss\": {:.8g}}}\n",
             config, captured, threads, med, sorted.front(), fl / (med * 1e-3) / 1e9, peak_rss_mb(),
             fmt::join(per_step, ", "), loss.item());
  return 0;
}
