// Tests of optim/dist (data-parallel training over MPI). Every rank runs every test case, in the
// same order, so the collectives inside them match; run under `mpirun -np 2` (CTest does).
//   tapegrad_dist_tests [doctest options]          the tests
//   tapegrad_dist_tests --spin [seconds]           trains forever (for kill_rank_check.sh)
//   tapegrad_dist_tests --throw-on-rank R [--unhandled]   rank R throws at step 5
//   tapegrad_dist_tests --relaunch N               (without mpirun) re-executes itself under mpirun -np N
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <mpi.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tapegrad/optim/dist/dist.h"
#include "tapegrad/optim/sgd.h"

using namespace tg;

namespace {

dist::Context* g_ctx = nullptr;
dist::Context& ctx() { return *g_ctx; }

// Embedding -> tanh RNN -> last state -> Linear -> one logit per sequence.
class Net : public nn::Module {
 public:
  Net(int64_t V, int64_t E, int64_t H, DType dt) {
    emb = register_module("emb", std::make_shared<nn::Embedding>(V, E, -1, dt));
    rnn = register_module("rnn", std::make_shared<nn::RNN>(nn::RNNOptions{
                                     .input_size = E, .hidden_size = H, .batch_first = true, .dtype = dt}));
    fc = register_module("fc", std::make_shared<nn::Linear>(H, 1, true, dt));
  }
  Tensor forward(const Tensor& x) {
    Tensor h = (*rnn)((*emb)(x)).h_n;
    return (*fc)(select(h, 0, -1)).reshape({-1});
  }
  std::shared_ptr<nn::Embedding> emb;
  std::shared_ptr<nn::RNN> rnn;
  std::shared_ptr<nn::Linear> fc;
};

std::vector<char> raw_bytes(const std::vector<Tensor>& ps) {
  std::vector<char> out;
  for (const auto& p : ps) {
    const Tensor c = p.contiguous();
    const char* d = static_cast<const char*>(c.raw_data());
    out.insert(out.end(), d, d + c.numel() * dtype_size(c.dtype()));
  }
  return out;
}

// Rank 0 gets every rank's bytes; true on rank 0 when all are identical (true elsewhere).
bool bytes_identical_on_root(const std::vector<char>& mine) {
  const int W = ctx().world_size();
  std::vector<char> all(ctx().is_root() ? mine.size() * W : 0);
  MPI_Gather(mine.data(), static_cast<int>(mine.size()), MPI_BYTE, all.data(), static_cast<int>(mine.size()),
             MPI_BYTE, 0, MPI_COMM_WORLD);
  if (!ctx().is_root()) return true;
  for (int r = 1; r < W; ++r)
    if (std::memcmp(all.data(), all.data() + r * mine.size(), mine.size()) != 0) return false;
  return true;
}

}  // namespace

TEST_CASE("context: rank, world size, metric reductions") {
  const int W = ctx().world_size(), r = ctx().rank();
  CHECK(W >= 2);  // CTest runs this under mpirun -np 2
  CHECK(r >= 0);
  CHECK(r < W);
  CHECK(ctx().is_root() == (r == 0));
  CHECK(ctx().all_reduce_sum(r + 1.0) == W * (W + 1) / 2.0);
  CHECK(ctx().all_reduce_mean(r + 1.0) == doctest::Approx((W + 1) / 2.0));
  CHECK(ctx().all_reduce_max(static_cast<double>(r)) == W - 1);
  std::vector<double> v = {1.0, static_cast<double>(r)};
  ctx().all_reduce_sum(v);
  CHECK(v[0] == W);
  CHECK(v[1] == W * (W - 1) / 2.0);
  ctx().barrier();
  CHECK(dist::run_or_abort([] { return 3; }) == 3);
  CHECK(dist::run_or_abort([] {}) == 0);
  dist::Context again;  // shares the running environment
  CHECK(again.rank() == r);
}

TEST_CASE("context: all_gather of doubles (ragged) and of strings") {
  const int W = ctx().world_size(), r = ctx().rank();
  // Rank r contributes r + 1 values r*10, r*10+1, ... (rank 1 includes -0.0 and a NaN-free
  // negative, to see the bits come through unchanged).
  std::vector<double> mine;
  for (int i = 0; i <= r; ++i) mine.push_back(r * 10.0 + i);
  if (r == 1) mine.push_back(-0.0);
  const std::vector<double> all = ctx().all_gather(mine);
  std::vector<double> expect;
  for (int q = 0; q < W; ++q) {
    for (int i = 0; i <= q; ++i) expect.push_back(q * 10.0 + i);
    if (q == 1) expect.push_back(-0.0);
  }
  REQUIRE(all.size() == expect.size());
  CHECK(std::memcmp(all.data(), expect.data(), all.size() * sizeof(double)) == 0);
  CHECK(ctx().all_gather(std::vector<double>{}).empty());

  // Strings of different lengths, with a NUL byte inside; an empty one from the last rank.
  std::string s = r == W - 1 ? std::string() : fmt::format("rank {}", r) + std::string(1, '\0') + std::string(r, 'x');
  const std::vector<std::string> strs = ctx().all_gather(s);
  REQUIRE(strs.size() == static_cast<size_t>(W));
  for (int q = 0; q < W; ++q)
    CHECK(strs[static_cast<size_t>(q)] ==
          (q == W - 1 ? std::string() : fmt::format("rank {}", q) + std::string(1, '\0') + std::string(q, 'x')));
}

TEST_CASE("broadcast_parameters copies root's values into every rank, any dtype") {
  manual_seed(100 + ctx().rank());  // different values on every rank
  std::vector<Tensor> ps = {randn({3, 4}), randn({5}, DType::Float64), randint(0, 1000, {7}),
                            randn({4, 3}).t()};  // a strided one too
  const auto before = dist::gather_hashes(ctx(), dist::hash_parameters(ps));
  CHECK(before[0] != before[1]);
  dist::broadcast_parameters(ctx(), ps);
  CHECK(dist::parameters_in_sync(ctx(), ps));
  CHECK(bytes_identical_on_root(raw_bytes(ps)));
  CHECK(dist::gather_hashes(ctx(), dist::hash_parameters(ps))[0] == before[0]);  // root's values won

  // A different parameter list on one rank fails on every rank instead of hanging.
  std::vector<Tensor> bad = {zeros({ctx().rank() == 0 ? 3 : 4})};
  CHECK_THROWS_WITH_AS(dist::broadcast_parameters(ctx(), bad), doctest::Contains("different parameter lists"),
                       std::invalid_argument);
}

TEST_CASE("20 steps of Embedding+RNN+Linear, Adam, clipping, different data per rank: bit-identical") {
  manual_seed(1 + ctx().rank());  // different initial weights: broadcast must fix that
  Net model(50, 8, 16, DType::Float32);
  dist::broadcast_parameters(ctx(), model.parameters());
  const std::vector<char> initial = raw_bytes(model.parameters());
  optim::Adam opt(model.parameters(), {.lr = 1e-2});
  dist::AllReduceGradients sync(ctx());
  optim::ClipGradNorm clip(0.5);
  opt.add_hook(sync);  // before clipping
  opt.add_hook(clip);
  manual_seed(1000 + ctx().rank());  // different data on every rank
  int local_grads_differ = 0;
  for (int step = 0; step < 20; ++step) {
    Tensor x = randint(0, 50, {4, 6});
    Tensor y = randint(0, 2, {4}).to(DType::Float32);
    opt.zero_grad();
    binary_cross_entropy_with_logits(model.forward(x), y).backward();
    local_grads_differ += !dist::parameters_in_sync(ctx(), {model.fc->weight.grad()});
    opt.step();
  }
  CHECK(local_grads_differ == 20);  // the ranks really computed different gradients
  CHECK(clip.last_norm() > 0);
  CHECK(sync.stats().steps == 20);
  CHECK(sync.stats().last_calls == 1);  // one float32 bucket: one MPI_Allreduce per step
  CHECK(sync.stats().total_allreduce_s > 0);
  const std::vector<char> final_bytes = raw_bytes(model.parameters());
  CHECK(final_bytes != initial);
  CHECK(bytes_identical_on_root(final_bytes));
  CHECK(dist::parameters_in_sync(ctx(), model.parameters()));
}

TEST_CASE("W ranks with batch B train exactly like one process with batch W*B (float64, Adam, clipping)") {
  const int W = ctx().world_size(), r = ctx().rank();
  const int64_t V = 40, E = 6, H = 12, T = 5, B = 4;
  const int steps = 10;
  const double max_norm = 0.2;  // small enough to clip every step, so the order of hooks matters
  auto batch = [&](int step) {  // the global batch of `step`: same on every rank
    manual_seed(5000 + step);
    Tensor x = randint(0, V, {W * B, T});
    Tensor y = randint(0, 2, {W * B}).to(DType::Float64);
    return std::pair{x, y};
  };

  manual_seed(7);
  Net model(V, E, H, DType::Float64);
  dist::broadcast_parameters(ctx(), model.parameters());
  optim::Adam opt(model.parameters(), {.lr = 1e-2});
  optim::ClipGradNorm clip(max_norm);
  opt.add_hook(dist::AllReduceGradients(ctx()));
  opt.add_hook(clip);
  std::vector<double> norms;
  for (int step = 0; step < steps; ++step) {
    auto [x, y] = batch(step);
    opt.zero_grad();
    Tensor loss = binary_cross_entropy_with_logits(model.forward(narrow(x, 0, r * B, B)), narrow(y, 0, r * B, B));
    loss.backward();  // mean over this rank's B examples; averaging over ranks gives the W*B mean
    opt.step();
    norms.push_back(clip.last_norm());
  }
  CHECK(dist::parameters_in_sync(ctx(), model.parameters()));

  if (ctx().is_root()) {  // the single-process reference, no MPI involved
    manual_seed(7);
    Net ref(V, E, H, DType::Float64);
    optim::Adam ropt(ref.parameters(), {.lr = 1e-2});
    optim::ClipGradNorm rclip(max_norm);
    ropt.add_hook(rclip);
    for (int step = 0; step < steps; ++step) {
      auto [x, y] = batch(step);
      ropt.zero_grad();
      binary_cross_entropy_with_logits(ref.forward(x), y).backward();
      ropt.step();
      CHECK(rclip.last_norm() > max_norm);
      CHECK(norms[step] == doctest::Approx(rclip.last_norm()).epsilon(1e-9));  // clipped the averaged gradient
    }
    const auto got = model.named_parameters(), want = ref.named_parameters();
    REQUIRE(got.size() == want.size());
    double worst = 0, moved = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      const auto a = got[i].second.to_vector(), b = want[i].second.to_vector();
      for (size_t j = 0; j < a.size(); ++j) {
        worst = std::max(worst, std::abs(a[j] - b[j]) / std::max(std::abs(b[j]), 1e-12));
      }
    }
    manual_seed(7);
    Net init(V, E, H, DType::Float64);
    for (size_t i = 0; i < got.size(); ++i) {
      const auto a = got[i].second.to_vector(), b = init.named_parameters()[i].second.to_vector();
      for (size_t j = 0; j < a.size(); ++j) moved = std::max(moved, std::abs(a[j] - b[j]));
    }
    MESSAGE(fmt::format("largest relative difference to the single-process run: {:.3g} (largest change {:.3g})",
                        worst, moved));
    CHECK(worst <= 1e-6);
    CHECK(moved > 1e-2);  // training did move the weights
  }
  ctx().barrier();
}

TEST_CASE("AllReduceGradients: undefined gradients, mixed dtypes, small buckets") {
  const int W = ctx().world_size(), r = ctx().rank();
  for (size_t bucket : {dist::AllReduceGradients::kDefaultBucketBytes, size_t{16}}) {
    CAPTURE(bucket);
    Tensor a = zeros({3, 5}).requires_grad_();                     // every rank has a gradient
    Tensor b = zeros({7}, DType::Float64).requires_grad_();        // only rank 0 has one
    Tensor c = zeros({2}).requires_grad_();                        // nobody has one
    Tensor d = zeros({4, 2}, DType::Float64).requires_grad_();     // only the last rank has one
    Tensor e = zeros({3});                                         // frozen: skipped
    optim::SGD opt({a, b, c, d, e}, {.lr = 0.0});
    a.set_grad(full({3, 5}, r + 1.0));
    if (r == 0) b.set_grad(full({7}, 2.0, DType::Float64));
    if (r == W - 1) d.set_grad(arange(0, 8, 1, DType::Float64).reshape({4, 2}));
    dist::AllReduceGradients sync(ctx(), bucket);
    sync(opt);
    REQUIRE(a.grad().defined());
    REQUIRE(b.grad().defined());
    REQUIRE(d.grad().defined());
    CHECK_FALSE(c.grad().defined());
    CHECK_FALSE(e.requires_grad());
    for (double v : a.grad().to_vector()) CHECK(v == doctest::Approx((W + 1) / 2.0));
    for (double v : b.grad().to_vector()) CHECK(v == doctest::Approx(2.0 / W));
    const auto dv = d.grad().to_vector();
    for (size_t j = 0; j < dv.size(); ++j) CHECK(dv[j] == doctest::Approx(j / double(W)));
    // float32: 15 + 2 values, + 2 flags; float64: 7 + 8 values + 2 flags.
    const size_t n32 = 15 + 2 + 2, n64 = 7 + 8 + 2;
    CHECK(sync.stats().last_bytes == n32 * 4 + n64 * 8);
    const int calls = bucket >= 1000 ? 2 : static_cast<int>((n32 * 4 + 15) / 16 + (n64 * 8 + 15) / 16);
    CHECK(sync.stats().last_calls == calls);
    opt.step();  // the SGD update accepts what the hook installed

    // Freezing a parameter on every rank changes the layout: compared again, then skipped.
    d.requires_grad_(false);
    a.set_grad(full({3, 5}, 2.0 * (r + 1)));
    sync(opt);
    for (double v : a.grad().to_vector()) CHECK(v == doctest::Approx(W + 1.0));
    CHECK(sync.stats().last_bytes == (n32 * 4 + (n64 - 8 - 1) * 8));
  }
}

namespace {

// A long training loop for kill_rank_check.sh.
int spin(double seconds, int throw_on_rank, bool unhandled) {
  manual_seed(1);
  Net model(200, 16, 32, DType::Float32);
  dist::broadcast_parameters(ctx(), model.parameters());
  optim::Adam opt(model.parameters(), {.lr = 1e-3});
  opt.add_hook(dist::AllReduceGradients(ctx()));
  opt.add_hook(optim::ClipGradNorm(5.0));
  manual_seed(10 + ctx().rank());
  const auto t0 = std::chrono::steady_clock::now();
  for (int step = 0;; ++step) {
    if (step == 5 && ctx().rank() == throw_on_rank) {
      if (unhandled) {  // no run_or_abort: the terminate handler installed by Context ends the job
        std::thread([] { throw std::runtime_error("injected failure in a thread"); }).join();
      }
      throw std::runtime_error("injected failure at step 5");
    }
    opt.zero_grad();
    binary_cross_entropy_with_logits(model.forward(randint(0, 200, {8, 10})), randint(0, 2, {8}).to(DType::Float32))
        .backward();
    opt.step();
    if (step == 0) {
      fmt::print("ready rank {} pid {}\n", ctx().rank(), getpid());
      std::fflush(stdout);
    }
    if (std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() > seconds) return 0;
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string(argv[1]) == "--relaunch") {  // what a CLI's --np N does
    dist::maybe_relaunch_under_mpirun(argc, argv, std::atoi(argv[2]));  // no return when N > 1
    dist::Context context(argc, argv);
    fmt::print("relaunched rank {} of {} child={}\n", context.rank(), context.world_size(),
               std::getenv("TG_DIST_CHILD") ? 1 : 0);
    return 0;
  }
  dist::Context context(argc, argv);
  g_ctx = &context;
  std::optional<int> throw_on;
  bool unhandled = false;
  double spin_s = -1;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--spin") spin_s = i + 1 < argc ? std::atof(argv[i + 1]) : 120;
    if (a == "--throw-on-rank" && i + 1 < argc) throw_on = std::atoi(argv[i + 1]);
    if (a == "--unhandled") unhandled = true;
  }
  if (throw_on || spin_s >= 0) {
    if (unhandled && throw_on) return spin(120, *throw_on, true);
    return dist::run_or_abort([&] { return spin(spin_s >= 0 ? spin_s : 120, throw_on.value_or(-1), false); });
  }
  doctest::Context dt(argc, argv);
  if (!context.is_root()) dt.setOption("minimal", true);  // one full report, from rank 0
  const int failed = dist::run_or_abort([&] { return dt.run(); });
  const double any = context.all_reduce_sum(failed != 0 ? 1.0 : 0.0);
  if (context.is_root() && any > 0) fmt::print(stderr, "tapegrad_dist_tests: {} rank(s) failed\n", any);
  return any > 0 ? 1 : 0;
}
