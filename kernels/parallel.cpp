#include "tapegrad/kernels/parallel.h"

#include <pthread.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "tapegrad/kernels/kernels.h"

namespace tg::kern {

namespace {

struct Job {
  detail::RangeFn fn = nullptr;
  void* ctx = nullptr;
  int64_t n = 0;
  int parts = 0;
};

int64_t part_begin(const Job& j, int k) { return j.n / j.parts * k + std::min<int64_t>(k, j.n % j.parts); }

// One loop at a time: the caller holds `busy`, publishes the job under `m`, runs part 0 itself and
// waits until every worker has looked at the job. Workers sleep on a condition variable between
// loops: the loops worth splitting take hundreds of microseconds, a wake-up a few.
struct Team {
  std::mutex busy;
  std::mutex m;
  std::condition_variable wake, done;
  int workers = 0;                   // started (and detached); worker w runs part w + 1
  uint64_t generation = 0;           // bumped per job; each worker runs each job once
  int remaining = 0;                 // workers that have not finished the current job
  Job job;
};

thread_local bool t_in_team = false;  // a worker's (or a running caller's) nested loop runs serially

Team* g_team = nullptr;
std::once_flag g_team_once;

void worker_main(Team* team, int w) {
  t_in_team = true;
  uint64_t seen = 0;
  std::unique_lock lock(team->m);
  for (;;) {
    team->wake.wait(lock, [&] { return team->generation != seen; });
    seen = team->generation;
    const Job job = team->job;
    lock.unlock();
    if (w + 1 < job.parts) job.fn(job.ctx, part_begin(job, w + 1), part_begin(job, w + 2));
    lock.lock();
    if (--team->remaining == 0) team->done.notify_one();
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
  const int parts = static_cast<int>(std::min<int64_t>(blas_threads(), by_size));
  if (parts < 2 || t_in_team) return fn(ctx, 0, n);
  Team& t = team();
  std::unique_lock busy(t.busy, std::try_to_lock);
  if (!busy.owns_lock()) return fn(ctx, 0, n);
  const Job job{fn, ctx, n, parts};
  {
    std::lock_guard lock(t.m);
    for (; t.workers < parts - 1; ++t.workers) std::thread(worker_main, &t, t.workers).detach();
    t.job = job;
    t.remaining = t.workers;
    ++t.generation;
  }
  t.wake.notify_all();
  t_in_team = true;
  fn(ctx, 0, part_begin(job, 1));
  t_in_team = false;
  std::unique_lock lock(t.m);
  t.done.wait(lock, [&] { return t.remaining == 0; });
}

}  // namespace tg::kern
