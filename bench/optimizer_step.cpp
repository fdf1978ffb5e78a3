// One Adam step (zero_grad-free: the gradient is set) on a parameter the size of the medium
// config's embedding (20000 x 128 floats): how much the update's own threads buy.
//   bench_optimizer_step THREADS      -> one JSON line, best of 5 blocks of 50 steps
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/optim/adam.h"

using namespace tg;

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  if (threads < 1) {
    fmt::print(stderr, "usage: bench_optimizer_step THREADS (>= 1)\n");
    return 2;
  }
  set_num_threads(threads);
  Tensor w = randn({20000, 128});
  w.requires_grad_(true);
  optim::Adam opt({w}, optim::AdamOptions{});
  const Tensor g = randn({20000, 128});
  double best = 1e30;
  for (int block = 0; block < 5; ++block) {
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < 50; ++i) {
      w.set_grad(g);
      opt.step();
    }
    best = std::min(best, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / 50);
  }
  fmt::print("{{\"bench\": \"adam_step\", \"elements\": {}, \"threads\": {}, \"best_ms\": {:.4f}}}\n", w.numel(), threads,
             best * 1e3);
  return 0;
}
