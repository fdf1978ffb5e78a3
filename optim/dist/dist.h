#pragma once
// Data-parallel training over MPI (Boost.MPI on Open MPI). Every rank holds the whole model,
// trains on its own shard of each batch, and before every update the gradients are averaged
// across ranks, so all ranks apply the same update and stay bit-identical.
//
//   int main(int argc, char** argv) {
//     tg::dist::Context ctx(argc, argv);                    // MPI_Init (once per process)
//     return tg::dist::run_or_abort([&] {                   // an exception on any rank ends the job
//       Model model(...);
//       tg::dist::broadcast_parameters(ctx, model.parameters());   // same start everywhere
//       optim::Adam opt(model.parameters(), {.lr = 1e-3});
//       tg::dist::AllReduceGradients sync(ctx);
//       opt.add_hook(sync);                                 // FIRST: average the gradients ...
//       opt.add_hook(optim::ClipGradNorm(5.0));             // ... then clip the averaged gradient
//       for (auto& b : data::make_batches(ex, B, seed, epoch, true, true, ctx.rank(), ctx.world_size()))
//         { opt.zero_grad(); loss(b).backward(); opt.step(); }
//       double total = ctx.all_reduce_sum(local_loss_sum);  // metrics over all ranks
//       return 0;
//     });
//   }
//
// Run with `mpirun -np 2 ./prog` (see docs/distributed.md). Without mpirun a program is a
// world of one: everything here works and the collectives are no-ops.
// Built only when MPI is found (CMake target tapegrad_dist, which defines TG_HAVE_MPI=1).
// This header includes no MPI or Boost header.
#include <cstddef>
#include <cstdint>
#include <exception>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "tapegrad/autograd/tensor.h"

namespace tg::optim {
class Optimizer;
}

namespace tg::dist {

// The MPI environment and MPI_COMM_WORLD. The first Context in a process initialises MPI
// (boost::mpi::environment); copies share it and MPI is finalised when the last copy goes.
// Create it once at the top of main and keep it for the life of the program: MPI cannot be
// initialised again after it was finalised. It also installs a std::terminate handler that
// prints the error and calls MPI_Abort, so an exception escaping a thread also ends the job.
class Context {
 public:
  Context();
  Context(int& argc, char**& argv);

  int rank() const;
  int world_size() const;
  bool is_root() const { return rank() == 0; }

  void barrier() const;
  // Over all ranks, for metrics (loss sums, correct counts). Every rank must call, in the same order.
  double all_reduce_sum(double local) const;
  double all_reduce_mean(double local) const;   // all_reduce_sum / world_size
  double all_reduce_max(double local) const;
  // Element-wise sum of `values` (same length on every rank), in place.
  void all_reduce_sum(std::vector<double>& values) const;
  // Every rank's `local` (lengths may differ between ranks), concatenated in rank order, on
  // every rank. E.g. per-rank predictions of a sharded evaluation.
  std::vector<double> all_gather(const std::vector<double>& local) const;
  // Every rank's string (any bytes; e.g. a saved RNG state), index = rank, on every rank.
  std::vector<std::string> all_gather(const std::string& local) const;

  struct Impl;  // implementation detail (dist.cpp)

 private:
  std::shared_ptr<Impl> impl_;
  friend class AllReduceGradients;
  friend void broadcast_parameters(const Context&, const std::vector<Tensor>&, int);
  friend std::vector<uint64_t> gather_hashes(const Context&, uint64_t);
};

// Copies `params` (any dtype) from `root` to every other rank, in place and under NoGradGuard:
// call it once after building the model (and after loading a checkpoint on root only).
// Every rank must pass the same list (same count, shapes and dtypes); checked, and a mismatch
// throws on every rank.
void broadcast_parameters(const Context& ctx, const std::vector<Tensor>& params, int root = 0);

// FNV-1a hash of the bytes of `params`, and the hashes of every rank (index = rank).
uint64_t hash_parameters(const std::vector<Tensor>& params);
std::vector<uint64_t> gather_hashes(const Context& ctx, uint64_t local);
// True on every rank when all ranks hold bit-identical `params`.
bool parameters_in_sync(const Context& ctx, const std::vector<Tensor>& params);

// Optimizer hook that replaces every parameter's gradient by its mean over the ranks.
// Gradients are packed by dtype (float32, float64) into flat buffers and summed with one
// MPI_Allreduce per bucket of at most `bucket_bytes` (default 25 MB), then divided by the
// world size. A parameter whose gradient is undefined on a rank counts as zeros there; it gets
// the averaged gradient on every rank if any rank had one, and stays undefined everywhere
// otherwise (a has-gradient count travels in the same buffers, so there is no extra call).
// Register it before clipping so every rank clips the same averaged gradient:
//   opt.add_hook(sync); opt.add_hook(optim::ClipGradNorm(5));   // hooks run in add order
// Copies share the statistics (like ClipGradNorm): keep one, pass another to add_hook.
// Parameters that do not require grad (frozen) are skipped. Every rank must step the same
// number of times with the same parameter list; the lists are compared on the first step and
// whenever the list of trainable parameters changes (which must then happen on every rank at
// the same step), and a mismatch throws on every rank.
class AllReduceGradients {
 public:
  static constexpr size_t kDefaultBucketBytes = 25u << 20;
  explicit AllReduceGradients(const Context& ctx, size_t bucket_bytes = kDefaultBucketBytes);
  void operator()(optim::Optimizer& opt) const;

  struct Stats {
    double last_allreduce_s = 0;   // time inside MPI_Allreduce in the latest step (includes
                                   // waiting for slower ranks)
    double last_total_s = 0;       // the whole hook: pack + all-reduce + unpack
    double total_allreduce_s = 0;  // cumulative over all steps
    double total_s = 0;
    int64_t steps = 0;             // hook invocations
    int last_calls = 0;            // MPI_Allreduce calls in the latest step (= buckets)
    size_t last_bytes = 0;         // bytes all-reduced in the latest step
  };
  const Stats& stats() const;
  void reset_stats() const;

 private:
  struct State;
  std::shared_ptr<State> state_;
};

// Runs fn(); if it throws, prints "rank R: error: <what>" to stderr and calls
// MPI_Abort(MPI_COMM_WORLD, 1), so mpirun ends every rank within seconds instead of leaving
// the others blocked in a collective. Returns fn's exit code. Before MPI is initialised (or
// after it was finalised) it prints the error and returns 1 instead; mpirun then ends the
// job because a rank exited non-zero.
// fn returns int (the exit code) or void (0).
template <class F> int run_or_abort(F&& fn);
// MPI_Abort with a message, from anywhere (e.g. a signal-free fatal path).
[[noreturn]] void abort_job(const char* message, int code = 1);

// For a CLI's `--np N`: when np > 1 and this process is not already an MPI rank, runs
//   mpirun [--allow-run-as-root if root] [--oversubscribe if np > cores and no hostfile]
//          [--stdin none if stdin is a terminal] -np N -x TG_DIST_CHILD=1 <mpirun_args>
//          $TG_MPIRUN_ARGS <this executable> <argv[1..]>
// as a child in its own process group, waits for it and exits (std::_Exit) with its status: it
// does not return in the launching process. Signals: the first SIGINT (Ctrl-C) is relayed as
// SIGUSR1 and the first SIGTERM as SIGUSR2, which mpirun forwards to every rank (a program may
// catch them to stop cleanly, e.g. save a checkpoint; uncaught, they end the job); a later
// SIGINT or SIGTERM, or SIGHUP, makes mpirun end the job. If the launching process dies, mpirun gets SIGTERM (Linux).
// Returns normally (doing nothing) when np <= 1, when TG_DIST_CHILD is set or when already
// launched by mpirun (OMPI_COMM_WORLD_SIZE set); the caller then creates a Context.
// `mpirun_args` are extra mpirun options, e.g. {"--hostfile", "/abs/hosts"}. When they or
// $TG_MPIRUN_ARGS name hosts (--hostfile, --machinefile, --host, -H), --oversubscribe is not
// added: the hostfile's slots decide where ranks go. $TG_MPIRUN overrides the mpirun program,
// $TG_MPIRUN_ARGS adds options (split on spaces). Throws std::runtime_error if it cannot fork;
// if mpirun cannot be executed, says so on stderr and exits 127.
void maybe_relaunch_under_mpirun(int argc, char** argv, int np, const std::vector<std::string>& mpirun_args = {});
// True when launched by mpirun (Open MPI, MPICH or PMI environment variables present).
bool launched_by_mpirun();

namespace detail {
int fail(const char* what);  // prints; MPI_Abort when MPI is running, else returns 1
}

template <class F> int run_or_abort(F&& fn) {
  try {
    if constexpr (std::is_void_v<std::invoke_result_t<F&>>) {
      fn();
      return 0;
    } else {
      return static_cast<int>(fn());
    }
  } catch (const std::exception& e) {
    return detail::fail(e.what());
  } catch (...) {
    return detail::fail("unknown exception");
  }
}

}  // namespace tg::dist
