// Cost of one recorded op on a tiny tensor: forward add of two 16-element tensors, then backward
// through it (tape walk, gradient accumulation into both leaves, tape release). Per-op overhead
// is what decides small-RNN speed, so this is the number to watch.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <vector>

#include "tapegrad/autograd/ops.h"

int main(int argc, char** argv) {
  using namespace tg;
  const int chain = argc > 1 ? std::atoi(argv[1]) : 100;  // adds per backward
  const int iters = 2000, repeats = 5;
  Tensor a = randn({16}).requires_grad_(), b = randn({16}).requires_grad_();
  auto step = [&] {
    Tensor y = a;
    for (int i = 0; i < chain; ++i) y = add(y, b);
    y.backward(ones({16}));
  };
  for (int i = 0; i < 200; ++i) step();
  std::vector<double> ns;
  for (int r = 0; r < repeats; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < iters; ++i) step();
    double total = std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
    ns.push_back(total / (double(iters) * chain));
  }
  std::sort(ns.begin(), ns.end());
  fmt::print("{{\"bench\": \"recorded_add_16\", \"ns_per_op_fwd_bwd_median\": {:.1f}, \"min\": {:.1f}}}\n",
             ns[ns.size() / 2], ns[0]);
}
