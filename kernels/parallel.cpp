#include "tapegrad/kernels/parallel.h"

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <thread>

#include "tapegrad/kernels/kernels.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace tg::kern {

namespace {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  _mm_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

struct Job {
  detail::RangeFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;
  int parts = 0;
};

int64_t part_begin(const Job& j, int k) { return j.n / j.parts * k + std::min<int64_t>(k, j.n % j.parts); }

// How long a worker keeps polling for the next loop before it sleeps. A recurrent layer issues one
// product per time step, tens of microseconds apart: a condition-variable wake-up per product (a
// few microseconds, more when the core was given away) cost up to 20 % of a split 64x256x256
// product, so between the steps of one pass the workers spin. Past this idle time (the optimizer
// step, data loading, a process that stopped training) they sleep and give the core back.
constexpr auto kSpin = std::chrono::microseconds(500);

// One loop at a time: the caller holds `busy`, publishes the job and bumps `generation`, runs part
// 0 itself and spins until every worker has finished its part (`remaining`; the parts are equal,
// so that wait is short). Workers poll `generation` for kSpin, then sleep on `wake`.
struct Team {
  std::mutex busy;
  std::mutex m;  // the sleeping side's wake-up, and `error`
  std::condition_variable wake;
  int workers = 0;                         // started (and detached); worker w runs part w + 1
  std::atomic<uint64_t> generation{0};     // bumped per job; each worker runs each job once
  std::atomic<int> remaining{0};           // workers that have not finished the current job
  Job job;                                 // written before `generation` is bumped (release)
  std::exception_ptr error;                // the first exception a worker's part threw (under m)
};

thread_local bool t_in_team = false;  // a worker's (or a running caller's) nested loop runs serially

Team* g_team = nullptr;
std::once_flag g_team_once;

// The first generation after `seen`: polled for kSpin, then slept for.
uint64_t next_generation(Team& team, uint64_t seen) {
  const auto until = std::chrono::steady_clock::now() + kSpin;
  for (int i = 1;; ++i) {
    if (const uint64_t g = team.generation.load(std::memory_order_acquire); g != seen) return g;
    cpu_relax();
    if (i % 256 != 0) continue;
    sched_yield();  // every ~256 polls: a thread that shares this core may run
    if (std::chrono::steady_clock::now() > until) {
      std::unique_lock lock(team.m);
      team.wake.wait(lock, [&] { return team.generation.load(std::memory_order_acquire) != seen; });
      return team.generation.load(std::memory_order_acquire);
    }
  }
}

// `seen`: the generation before the first job this worker must run (read by the starting caller:
// the thread may start after that job was published).
void worker_main(Team* team, int w, uint64_t seen) {
  t_in_team = true;
  for (;;) {
    seen = next_generation(*team, seen);
    const Job job = team->job;
    if (w + 1 < job.parts) {
      try {
        job.fn(job.ctx, part_begin(job, w + 1), part_begin(job, w + 2));
      } catch (...) {  // handed to the caller, which rethrows it once every part is done
        std::lock_guard lock(team->m);
        if (!team->error) team->error = std::current_exception();
      }
    }
    team->remaining.fetch_sub(1, std::memory_order_acq_rel);
  }
}

Team& team() {
  std::call_once(g_team_once, [] {
    g_team = new Team;  // never destroyed: workers may still sleep on it while the process exits
    // A forked child has none of the parent's threads: it starts an empty team of its own.
    pthread_atfork(nullptr, nullptr, [] { g_team = new Team; });
  });
  return *g_team;
}

}  // namespace

void detail::parallel_for_impl(int64_t n, int64_t grain, RangeFn fn, void* ctx) {
  const int64_t by_size = n / std::max<int64_t>(grain, 1);
  const int parts = static_cast<int>(std::min<int64_t>(kernel_threads(), by_size));
  if (parts < 2 || t_in_team) return fn(ctx, 0, n);
  Team& t = team();
  std::unique_lock busy(t.busy, std::try_to_lock);
  if (!busy.owns_lock()) return fn(ctx, 0, n);
  const Job job{fn, ctx, n, parts};
  // Every started worker takes part in every job (those past `parts` only check in), so a worker
  // never misses a generation and `remaining` counts all of them.
  for (; t.workers < parts - 1; ++t.workers)
    std::thread(worker_main, &t, t.workers, t.generation.load(std::memory_order_relaxed)).detach();
  t.job = job;
  t.remaining.store(t.workers, std::memory_order_relaxed);
  t.generation.fetch_add(1, std::memory_order_release);
  {
    std::lock_guard lock(t.m);  // a worker between its last poll and its wait holds m: no lost wake-up
  }
  t.wake.notify_all();  // no syscall when nobody sleeps
  // Every part must be done before this returns or throws: they all read the caller's ctx.
  std::exception_ptr error;
  t_in_team = true;
  try {
    fn(ctx, 0, part_begin(job, 1));
  } catch (...) {
    error = std::current_exception();
  }
  t_in_team = false;
  for (int i = 0; t.remaining.load(std::memory_order_acquire) != 0; ++i) {
    cpu_relax();
    if ((i & 1023) == 1023) sched_yield();  // a worker that was descheduled needs this core
  }
  {
    std::lock_guard lock(t.m);
    if (!error) error = t.error;
    t.error = nullptr;
  }
  if (error) std::rethrow_exception(error);
}

}  // namespace tg::kern
