// Elementwise maps on large float32 tensors (no graph): how much the maps' own threads buy.
//   bench_elementwise_threads THREADS   -> one JSON line per (op, size): median ms of 7 blocks
// Compare two runs, e.g. `bench_elementwise_threads 1` and `bench_elementwise_threads 2`.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <functional>
#include <vector>

#include "tapegrad/autograd/ops.h"

using namespace tg;

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  if (threads < 1) {
    fmt::print(stderr, "usage: bench_elementwise_threads THREADS (>= 1)\n");
    return 2;
  }
  set_num_threads(threads);
  NoGradGuard no_grad;
  for (int64_t n : {int64_t{1} << 16, int64_t{1} << 18, int64_t{1} << 20, int64_t{1} << 22}) {
    const Tensor a = randn({n}), b = randn({n});
    const std::vector<std::pair<const char*, std::function<Tensor()>>> ops = {
        {"add", [&] { return a + b; }}, {"mul_scalar", [&] { return a * 0.5; }},
        {"tanh", [&] { return tanh(a); }}, {"exp", [&] { return exp(a); }}};
    for (const auto& [name, op] : ops) {
      const int reps = static_cast<int>(std::max<int64_t>(4, (int64_t{1} << 24) / n));
      std::vector<double> ms;
      for (int block = 0; block < 7; ++block) {
        const auto start = std::chrono::steady_clock::now();
        for (int i = 0; i < reps; ++i) op();
        ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count() / reps);
      }
      std::sort(ms.begin(), ms.end());
      fmt::print("{{\"op\": \"{}\", \"elements\": {}, \"threads\": {}, \"median_ms\": {:.5f}}}\n", name, n, threads,
                 ms[ms.size() / 2]);
    }
  }
  return 0;
}
