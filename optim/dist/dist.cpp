#include "tapegrad/optim/dist/dist.h"

#include <fmt/format.h>
#include <mpi.h>

#include <algorithm>
#include <boost/mpi/communicator.hpp>
#include <boost/mpi/environment.hpp>
#include <chrono>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>

#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/optim/optimizer.h"

namespace tg::dist {

namespace {

using Clock = std::chrono::steady_clock;

bool mpi_active() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

// Best rank we can name in a message, also before MPI_Init.
int rank_for_message() {
  if (mpi_active()) {
    int r = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &r);
    return r;
  }
  for (const char* v : {"OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"})
    if (const char* s = std::getenv(v)) return std::atoi(s);
  return 0;
}

void print_error(const char* what) {
  // One write so lines of different ranks do not interleave mid-line.
  std::string line = fmt::format("rank {}: error: {}\n", rank_for_message(), what);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

[[noreturn]] void on_terminate() {
  std::string what = "terminate called without an active exception";
  if (std::exception_ptr e = std::current_exception()) {
    try {
      std::rethrow_exception(e);
    } catch (const std::exception& x) {
      what = x.what();
    } catch (...) {
      what = "unknown exception";
    }
  }
  abort_job(what.c_str(), 1);
}

void check(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(fmt::format("{} failed: {}", call, std::string(msg, len)));
}

// Hash of the (dtype, shape) list: ranks compare it before the first collective on a layout,
// so a mismatched model fails with a message instead of corrupting or hanging.
uint64_t fnv1a(const void* p, size_t n, uint64_t h = 1469598103934665603ull) {
  const auto* b = static_cast<const unsigned char*>(p);
  for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  return h;
}
uint64_t layout_hash(const std::vector<Tensor>& params) {
  uint64_t h = fnv1a("", 0);
  for (const auto& p : params) {
    const int64_t meta[2] = {static_cast<int64_t>(p.dtype()), p.dim()};
    h = fnv1a(meta, sizeof meta, h);
    for (int64_t d = 0; d < p.dim(); ++d) {
      const int64_t s = p.size(d);
      h = fnv1a(&s, sizeof s, h);
    }
  }
  return h;
}

// Throws on every rank (same message) when the ranks' layout hashes differ. One small call.
void check_same_layout(MPI_Comm comm, uint64_t h, const char* what) {
  uint64_t v[2] = {h, ~h}, mx[2];
  check(MPI_Allreduce(v, mx, 2, MPI_UINT64_T, MPI_MAX, comm), "MPI_Allreduce");
  if (mx[0] != h || ~mx[1] != h)  // max(h) == min(h) iff all equal; same verdict on every rank
    throw std::invalid_argument(fmt::format(
        "{}: the ranks hold different parameter lists (count, shapes or dtypes differ); "
        "every rank must build the same model", what));
}

template <class T> MPI_Datatype mpi_type();
template <> MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }
template <> MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }

}  // namespace

// ---- Context ------------------------------------------------------------------------------------

struct Context::Impl {
  std::unique_ptr<boost::mpi::environment> env;
  boost::mpi::communicator world;  // MPI_COMM_WORLD; constructed after env, destroyed before it
  int rank = 0, size = 1;
  MPI_Comm comm() const { return static_cast<MPI_Comm>(world); }
};

namespace {
std::mutex g_mutex;
std::weak_ptr<Context::Impl>& shared_impl() {
  static std::weak_ptr<Context::Impl> w;
  return w;
}

template <class MakeEnv> std::shared_ptr<Context::Impl> acquire(MakeEnv make_env) {
  std::lock_guard<std::mutex> lock(g_mutex);
  if (auto existing = shared_impl().lock()) return existing;
  int fin = 0;
  MPI_Finalized(&fin);
  if (fin) throw std::runtime_error("dist::Context: MPI was already finalised; create one Context for the whole program");
  auto env = make_env();  // MPI_Init unless something else initialised MPI (then it is left alone)
  auto impl = std::make_shared<Context::Impl>(Context::Impl{std::move(env), boost::mpi::communicator(), 0, 1});
  impl->rank = impl->world.rank();
  impl->size = impl->world.size();
  shared_impl() = impl;
  std::set_terminate(on_terminate);
  return impl;
}
}  // namespace

Context::Context() : impl_(acquire([] { return std::make_unique<boost::mpi::environment>(); })) {}
Context::Context(int& argc, char**& argv)
    : impl_(acquire([&] { return std::make_unique<boost::mpi::environment>(argc, argv); })) {}

int Context::rank() const { return impl_->rank; }
int Context::world_size() const { return impl_->size; }
void Context::barrier() const { check(MPI_Barrier(impl_->comm()), "MPI_Barrier"); }

double Context::all_reduce_sum(double local) const {
  double out = 0;
  check(MPI_Allreduce(&local, &out, 1, MPI_DOUBLE, MPI_SUM, impl_->comm()), "MPI_Allreduce");
  return out;
}
double Context::all_reduce_mean(double local) const { return all_reduce_sum(local) / impl_->size; }
double Context::all_reduce_max(double local) const {
  double out = 0;
  check(MPI_Allreduce(&local, &out, 1, MPI_DOUBLE, MPI_MAX, impl_->comm()), "MPI_Allreduce");
  return out;
}
void Context::all_reduce_sum(std::vector<double>& values) const {
  if (values.size() > static_cast<size_t>(INT_MAX)) throw std::invalid_argument("all_reduce_sum: too many values");
  check(MPI_Allreduce(MPI_IN_PLACE, values.data(), static_cast<int>(values.size()), MPI_DOUBLE, MPI_SUM,
                      impl_->comm()),
        "MPI_Allreduce");
}

namespace {
// Counts and displacements for MPI_Allgatherv of `n` local items (ints: MPI's limit).
std::vector<int> gather_counts(MPI_Comm comm, int size, size_t n, std::vector<int>& displs) {
  if (n > static_cast<size_t>(INT_MAX)) throw std::invalid_argument("all_gather: too many values on one rank");
  const int local = static_cast<int>(n);
  std::vector<int> counts(static_cast<size_t>(size));
  check(MPI_Allgather(&local, 1, MPI_INT, counts.data(), 1, MPI_INT, comm), "MPI_Allgather");
  displs.assign(static_cast<size_t>(size), 0);
  int64_t total = 0;
  for (int r = 0; r < size; ++r) {
    if (total > INT_MAX) throw std::invalid_argument("all_gather: more than INT_MAX values in all");
    displs[static_cast<size_t>(r)] = static_cast<int>(total);
    total += counts[static_cast<size_t>(r)];
  }
  if (total > INT_MAX) throw std::invalid_argument("all_gather: more than INT_MAX values in all");
  return counts;
}
}  // namespace

std::vector<double> Context::all_gather(const std::vector<double>& local) const {
  if (impl_->size == 1) return local;
  std::vector<int> displs;
  const std::vector<int> counts = gather_counts(impl_->comm(), impl_->size, local.size(), displs);
  std::vector<double> out(static_cast<size_t>(displs.back()) + static_cast<size_t>(counts.back()));
  check(MPI_Allgatherv(local.data(), static_cast<int>(local.size()), MPI_DOUBLE, out.data(), counts.data(),
                       displs.data(), MPI_DOUBLE, impl_->comm()),
        "MPI_Allgatherv");
  return out;
}

std::vector<std::string> Context::all_gather(const std::string& local) const {
  if (impl_->size == 1) return {local};
  std::vector<int> displs;
  const std::vector<int> counts = gather_counts(impl_->comm(), impl_->size, local.size(), displs);
  std::vector<char> all(static_cast<size_t>(displs.back()) + static_cast<size_t>(counts.back()));
  check(MPI_Allgatherv(local.data(), static_cast<int>(local.size()), MPI_CHAR, all.data(), counts.data(),
                       displs.data(), MPI_CHAR, impl_->comm()),
        "MPI_Allgatherv");
  std::vector<std::string> out;
  for (size_t r = 0; r < counts.size(); ++r)
    out.emplace_back(all.data() + displs[r], static_cast<size_t>(counts[r]));
  return out;
}

// ---- broadcast / hashes -------------------------------------------------------------------------

void broadcast_parameters(const Context& ctx, const std::vector<Tensor>& params, int root) {
  const Context::Impl& c = *ctx.impl_;
  if (root < 0 || root >= c.size)
    throw std::invalid_argument(fmt::format("broadcast_parameters: root {} out of range [0, {})", root, c.size));
  if (c.size == 1) return;
  check_same_layout(c.comm(), layout_hash(params), "broadcast_parameters");
  NoGradGuard no_grad;
  size_t total = 0;
  for (const auto& p : params) total += static_cast<size_t>(p.numel()) * dtype_size(p.dtype());
  std::vector<char> buf(total);
  if (c.rank == root) {
    size_t off = 0;
    for (const auto& p : params) {
      const Tensor src = p.contiguous();
      const size_t n = static_cast<size_t>(p.numel()) * dtype_size(p.dtype());
      tg::detail::copy_bytes_out(src, buf.data() + off);
      off += n;
    }
  }
  constexpr size_t kChunk = AllReduceGradients::kDefaultBucketBytes;
  for (size_t off = 0; off < total; off += kChunk)
    check(MPI_Bcast(buf.data() + off, static_cast<int>(std::min(kChunk, total - off)), MPI_BYTE, root, c.comm()),
          "MPI_Bcast");
  if (c.rank == root) return;
  size_t off = 0;
  for (const auto& p : params) {
    const size_t n = static_cast<size_t>(p.numel()) * dtype_size(p.dtype());
    if (p.is_contiguous()) {
      tg::detail::copy_bytes_in(p, buf.data() + off);
      p.impl()->storage->bump_version();
    } else {
      Tensor tmp = empty(p.shape(), p.dtype());
      tg::detail::copy_bytes_in(tmp, buf.data() + off);
      Tensor dst = p;
      copy_(dst, tmp);
    }
    off += n;
  }
}

uint64_t hash_parameters(const std::vector<Tensor>& params) {
  uint64_t h = layout_hash(params);
  for (const auto& p : params) {
    const Tensor c = p.contiguous();
    std::vector<char> bytes(tg::detail::nbytes_of(c));  // a check, not a hot path: hashed from a copy
    tg::detail::copy_bytes_out(c, bytes.data());
    h = fnv1a(bytes.data(), bytes.size(), h);
  }
  return h;
}

std::vector<uint64_t> gather_hashes(const Context& ctx, uint64_t local) {
  std::vector<uint64_t> all(ctx.world_size());
  check(MPI_Allgather(&local, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, ctx.impl_->comm()), "MPI_Allgather");
  return all;
}

bool parameters_in_sync(const Context& ctx, const std::vector<Tensor>& params) {
  const auto all = gather_hashes(ctx, hash_parameters(params));
  return std::all_of(all.begin(), all.end(), [&](uint64_t h) { return h == all[0]; });
}

// ---- AllReduceGradients -------------------------------------------------------------------------

struct AllReduceGradients::State {
  std::shared_ptr<Context::Impl> ctx;
  size_t bucket_bytes;
  Stats stats;
  // Reused every step so the hook allocates nothing once warm.
  std::vector<Tensor> params;
  std::vector<float> buf32;
  std::vector<double> buf64;
  uint64_t checked_layout = 0;
  bool checked = false;

  // Packs the gradients of `ps` (all of dtype T) into `buf`, followed by one has-gradient flag
  // per parameter; all-reduces it in buckets; writes the averages back.
  template <class T> void reduce(const std::vector<Tensor>& ps, std::vector<T>& buf, MPI_Comm comm) {
    if (ps.empty()) return;
    size_t n = 0;
    for (const auto& p : ps) n += static_cast<size_t>(p.numel());
    buf.resize(n + ps.size());
    size_t off = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
      const size_t k = static_cast<size_t>(ps[i].numel());
      const Tensor g = ps[i].grad();
      if (g.defined()) {
        if (g.dtype() != ps[i].dtype() || !(g.shape() == ps[i].shape()))
          throw std::invalid_argument(fmt::format("AllReduceGradients: gradient {} {} does not match parameter {} {}",
                                                  g.shape().str(), dtype_name(g.dtype()), ps[i].shape().str(),
                                                  dtype_name(ps[i].dtype())));
        const Tensor gc = g.contiguous();
        tg::detail::copy_bytes_out(gc, buf.data() + off);
        buf[n + i] = T(1);
      } else {
        std::fill_n(buf.data() + off, k, T(0));
        buf[n + i] = T(0);
      }
      off += k;
    }
    const size_t per_call = std::clamp<size_t>(bucket_bytes / sizeof(T), 1, static_cast<size_t>(INT_MAX));
    for (size_t b = 0; b < buf.size(); b += per_call) {
      const int count = static_cast<int>(std::min(per_call, buf.size() - b));
      const auto t0 = Clock::now();
      check(MPI_Allreduce(MPI_IN_PLACE, buf.data() + b, count, mpi_type<T>(), MPI_SUM, comm), "MPI_Allreduce");
      stats.last_allreduce_s += std::chrono::duration<double>(Clock::now() - t0).count();
      ++stats.last_calls;
      stats.last_bytes += static_cast<size_t>(count) * sizeof(T);
    }
    const T w = static_cast<T>(ctx->size);
    off = 0;
    for (size_t i = 0; i < ps.size(); ++i) {
      const size_t k = static_cast<size_t>(ps[i].numel());
      if (buf[n + i] != T(0)) {  // some rank had a gradient: every rank installs the mean
        Tensor p = ps[i];
        Tensor g = p.grad();
        const bool in_place = g.defined() && p.impl()->grad_exclusive && g.is_contiguous();
        if (!in_place) g = empty(p.shape(), p.dtype());
        tg::detail::kernels_of(g).optim->divide(tg::detail::mem(g), buf.data() + off, static_cast<int64_t>(k),
                                                static_cast<double>(w));
        if (in_place) g.impl()->storage->bump_version();  // a raw write into a gradient someone may have saved
        if (!in_place) {
          p.set_grad(g);
          p.impl()->grad_exclusive = true;  // freshly allocated here; nobody else holds it
        }
      }
      off += k;
    }
  }
};

AllReduceGradients::AllReduceGradients(const Context& ctx, size_t bucket_bytes)
    : state_(std::make_shared<State>()) {
  if (bucket_bytes < sizeof(double))
    throw std::invalid_argument(fmt::format("AllReduceGradients: bucket_bytes must be >= 8, got {}", bucket_bytes));
  state_->ctx = ctx.impl_;
  state_->bucket_bytes = bucket_bytes;
}

const AllReduceGradients::Stats& AllReduceGradients::stats() const { return state_->stats; }
void AllReduceGradients::reset_stats() const { state_->stats = Stats{}; }

void AllReduceGradients::operator()(optim::Optimizer& opt) const {
  State& s = *state_;
  const auto t0 = Clock::now();
  s.stats.last_allreduce_s = 0;
  s.stats.last_calls = 0;
  s.stats.last_bytes = 0;
  if (s.ctx->size > 1) {
    const MPI_Comm comm = s.ctx->comm();
    std::vector<Tensor>& all = s.params;  // the trainable parameters; frozen ones are skipped
    all.clear();
    for (const auto& g : opt.param_groups())
      for (const auto& p : g.params)
        if (p.requires_grad()) all.push_back(p);
    const uint64_t layout = layout_hash(all);
    if (!s.checked || layout != s.checked_layout) {
      // First step, or parameters were added, frozen or unfrozen since: compare with the other
      // ranks (one small call). A deterministic program changes its parameters on every rank at
      // the same step, so every rank makes this call together.
      check_same_layout(comm, layout, "AllReduceGradients");
      s.checked = true;
      s.checked_layout = layout;
    }
    std::vector<Tensor> p32, p64;
    for (const auto& p : all) {
      if (p.dtype() == DType::Float32) p32.push_back(p);
      else if (p.dtype() == DType::Float64) p64.push_back(p);
    }
    s.reduce<float>(p32, s.buf32, comm);
    s.reduce<double>(p64, s.buf64, comm);
  }
  s.stats.last_total_s = std::chrono::duration<double>(Clock::now() - t0).count();
  s.stats.total_allreduce_s += s.stats.last_allreduce_s;
  s.stats.total_s += s.stats.last_total_s;
  ++s.stats.steps;
}

// ---- failure handling ---------------------------------------------------------------------------

namespace detail {
int fail(const char* what) {
  print_error(what);
  if (mpi_active()) MPI_Abort(MPI_COMM_WORLD, 1);
  return 1;
}
}  // namespace detail

void abort_job(const char* message, int code) {
  print_error(message);
  if (mpi_active()) MPI_Abort(MPI_COMM_WORLD, code);
  std::_Exit(code);
}

}  // namespace tg::dist
