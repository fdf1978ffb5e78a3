// Data-parallel throughput of the RNN benchmark (../shared/bench/SPEC.md) over MPI: each rank
// runs bench/rnn_bench.cpp's training step on its own batch of B examples (different data per
// rank); gradients are averaged by dist::AllReduceGradients before clipping (norm 5) and Adam(1e-3).
//   bench_dist [--config medium] [--warm 20] [--steps 30] [--repeats 5] [--threads 1] [--bucket-mb 25]
//   mpirun -np 2 bench_dist --config medium
// Prints one JSON line (root only): examples/s over all ranks, median step time, and the time
// spent in all-reduce per step (mean over the timed steps, worst rank; includes waiting for the
// slower rank) and its share of the step, and the all-reduce alone (ranks synchronised first).
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "bench/bench_model.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tapegrad/optim/dist/dist.h"

using namespace tg;
using Clock = std::chrono::steady_clock;
using bench::Config;
using bench::kConfigs;
using bench::Net;

namespace {

int run_bench(dist::Context& ctx, int argc, char** argv) {
  std::string config = "medium";
  int warm = 20, steps = 30, repeats = 5, threads = 1;
  double bucket_mb = 25;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string k = argv[i];
    const char* v = argv[i + 1];
    if (k == "--config") config = v;
    else if (k == "--warm") warm = std::atoi(v);
    else if (k == "--steps") steps = std::atoi(v);
    else if (k == "--repeats") repeats = std::atoi(v);
    else if (k == "--threads") threads = std::atoi(v);
    else if (k == "--bucket-mb") bucket_mb = std::atof(v);
    else throw std::invalid_argument("unknown option " + k + " (--config --warm --steps --repeats --threads --bucket-mb)");
  }
  if (!kConfigs.count(config))
    throw std::invalid_argument("unknown config '" + config + "': toy, small, medium, lstm-small");
  if (steps < 1 || repeats < 1 || warm < 0) throw std::invalid_argument("--steps and --repeats must be >= 1");
  set_num_threads(threads);
  const Config c = kConfigs.at(config);

  manual_seed(0);
  Net model(c);
  dist::broadcast_parameters(ctx, model.parameters());
  manual_seed(1000 + static_cast<uint64_t>(ctx.rank()));  // different data on every rank
  Tensor x = randint(0, c.V, {c.B, c.T});
  Tensor y = randint(0, 2, {c.B}).to(DType::Float32);

  optim::Adam opt(model.parameters(), optim::AdamOptions{.lr = 1e-3});
  dist::AllReduceGradients sync(ctx, static_cast<size_t>(bucket_mb * (1 << 20)));
  opt.add_hook(sync);
  opt.add_hook(optim::ClipGradNorm(5.0));
  Tensor loss;
  auto step = [&] {
    opt.zero_grad();
    loss = binary_cross_entropy_with_logits(model.forward(x), y);
    loss.backward();
    opt.step();
  };
  for (int i = 0; i < warm; ++i) step();
  std::vector<double> per_step_ms, allreduce_ms, hook_ms;
  for (int r = 0; r < repeats; ++r) {
    ctx.barrier();
    sync.reset_stats();
    const auto t0 = Clock::now();
    for (int i = 0; i < steps; ++i) step();
    ctx.barrier();
    const double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / steps;
    per_step_ms.push_back(ctx.all_reduce_max(ms));
    allreduce_ms.push_back(ctx.all_reduce_max(sync.stats().total_allreduce_s * 1e3 / steps));
    hook_ms.push_back(ctx.all_reduce_max(sync.stats().total_s * 1e3 / steps));
  }
  const bool in_sync = dist::parameters_in_sync(ctx, model.parameters());
  // The all-reduce alone, with both ranks arriving together (the timed steps above also count
  // waiting for the slower rank). Re-averaging the already identical gradients changes nothing.
  std::vector<double> alone_ms;
  for (int i = 0; i < 10; ++i) {
    ctx.barrier();
    sync(opt);
    alone_ms.push_back(ctx.all_reduce_max(sync.stats().last_allreduce_s * 1e3));
  }
  std::sort(alone_ms.begin(), alone_ms.end());
  std::vector<size_t> order(per_step_ms.size());  // the repeat with the median step time
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return per_step_ms[a] < per_step_ms[b]; });
  const size_t r_med = order[order.size() / 2];
  const double med = per_step_ms[r_med];
  if (ctx.is_root())
    fmt::print("{{\"config\": \"{}\", \"world_size\": {}, \"per_rank_batch\": {}, \"threads\": {}, "
               "\"median_step_ms\": {:.3f}, \"examples_per_s\": {:.1f}, \"allreduce_ms_per_step\": {:.3f}, \"allreduce_alone_ms\": {:.3f}, "
               "\"allreduce_share\": {:.4f}, \"hook_ms_per_step\": {:.3f}, \"allreduce_calls_per_step\": {}, "
               "\"allreduce_mb_per_step\": {:.2f}, \"repeats_step_ms\": [{:.3f}], \"repeats_allreduce_ms\": [{:.3f}], "
               "\"params_in_sync\": {}, \"final_loss_rank0\": {:.6g}}}\n",
               config, ctx.world_size(), c.B, threads, med, ctx.world_size() * c.B / (med * 1e-3),
               allreduce_ms[r_med], alone_ms[alone_ms.size() / 2], allreduce_ms[r_med] / med, hook_ms[r_med], sync.stats().last_calls,
               sync.stats().last_bytes / 1e6, fmt::join(per_step_ms, ", "), fmt::join(allreduce_ms, ", "),
               in_sync, loss.item());
  return in_sync ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  dist::Context ctx(argc, argv);
  return dist::run_or_abort([&] { return run_bench(ctx, argc, argv); });
}
