#include "tapegrad/autograd/tensor.h"

#include <fmt/format.h>

#include <cmath>
#include <mutex>
#include <random>
#include <sstream>
#include <stdexcept>
#include <thread>

#include "tapegrad/autograd/capture.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/row_sparse.h"

namespace tg {

// ---- construction ------------------------------------------------------------------------------

namespace {
// empty() for a factory named `op`: the shape is checked (negative sizes, element and byte counts
// that overflow int64) before anything is allocated.
Tensor empty_for(const char* op, const Shape& s, DType t) {
  const int64_t n = checked_numel(op, s, static_cast<int64_t>(dtype_size(t)));
  auto impl = make_ref<TensorImpl>();
  impl->storage = Storage::create(static_cast<size_t>(n) * dtype_size(t), Device::CPU);
  impl->shape = s;
  impl->strides = contiguous_strides(s);
  impl->dtype = t;
  return Tensor(std::move(impl));
}
}  // namespace

Tensor empty(const Shape& s, DType t) { return empty_for("empty", s, t); }

Tensor make_view(const Tensor& base, const Shape& s, const Strides& st, int64_t offset) {
  // Every view op computes its own shape, strides and offset; this is the one place that makes
  // sure none of them can reach outside the storage (a bug there would read or write out of bounds).
  bool empty_view = false;
  for (int64_t d : s) empty_view |= d == 0;
  if (!empty_view) {
    int64_t lo = offset, hi = offset;
    bool overflow = false;
    for (int64_t d = 0; d < s.size(); ++d) {
      int64_t reach = 0;
      overflow |= __builtin_mul_overflow(s[d] - 1, st[d], &reach);
      overflow |= __builtin_add_overflow(reach < 0 ? lo : hi, reach, reach < 0 ? &lo : &hi);
    }
    const auto nbytes = static_cast<uint64_t>(base.impl()->storage->nbytes());
    if (overflow || lo < 0 || static_cast<uint64_t>(hi) * dtype_size(base.dtype()) >= nbytes)
      throw std::out_of_range(fmt::format("view: shape {} with strides {} at offset {} reaches elements [{}, {}] "
                                          "outside its storage of {} elements",
                                          s.str(), st.str(), offset, lo, hi, nbytes / dtype_size(base.dtype())));
  }
  return detail::alias_of(base, s, st, offset);
}

Tensor detail::alias_of(const Tensor& base, const Shape& s, const Strides& st, int64_t offset) {
  auto impl = make_ref<TensorImpl>();
  impl->storage = base.impl()->storage;
  impl->shape = s;
  impl->strides = st;
  impl->offset = offset;
  impl->dtype = base.dtype();
  return Tensor(std::move(impl));
}

Tensor full(const Shape& s, double value, DType t) {
  Tensor x = empty_for("full", s, t);
  fill_(x, value);
  return x;
}
Tensor zeros(const Shape& s, DType t) {
  Tensor x = empty_for("zeros", s, t);
  detail::kernels_of(x).elementwise->zero_bytes(detail::mem(x), detail::nbytes_of(x));
  return x;
}
Tensor ones(const Shape& s, DType t) {
  Tensor x = empty_for("ones", s, t);
  fill_(x, 1.0);
  return x;
}
Tensor scalar(double value, DType t) { return full(Shape{}, value, t); }
Tensor zeros_like(const Tensor& x) { return zeros(x.shape(), x.dtype()); }
Tensor ones_like(const Tensor& x) { return ones(x.shape(), x.dtype()); }

Tensor arange(double start, double end, double step, DType t) {
  const double span = (end - start) / step, count = std::ceil(span);
  if (step == 0 || !(span >= 0))
    throw std::invalid_argument(fmt::format("arange: step {} cannot go from {} to {}", step, start, end));
  if (!(count < 0x1p62))
    throw std::length_error(fmt::format("arange: [{}, {}) in steps of {} has too many elements", start, end, step));
  const int64_t n = static_cast<int64_t>(count);
  Tensor x = empty_for("arange", Shape{n}, t);
  detail::kernels_of(x).elementwise->iota(detail::mem(x), n, start, step);
  return x;
}
Tensor arange(int64_t n, DType t) { return arange(0.0, static_cast<double>(n), 1.0, t); }

template <class V>
static Tensor from_values(const std::vector<V>& v, const Shape& s) {
  const int64_t n = checked_numel("from_vector", s, sizeof(V));
  if (static_cast<int64_t>(v.size()) != n)
    throw std::invalid_argument(fmt::format("from_vector: {} values do not fill shape {} ({} elements)", v.size(),
                                            s.str(), n));
  Tensor x = empty(s, dtype_of<V>());
  if (!v.empty()) detail::copy_bytes_in(x, v.data());
  return x;
}
Tensor from_vector(const std::vector<float>& v, const Shape& s) { return from_values(v, s); }
Tensor from_vector(const std::vector<double>& v, const Shape& s) { return from_values(v, s); }
Tensor from_vector(const std::vector<int64_t>& v, const Shape& s) { return from_values(v, s); }

Tensor tensor(std::initializer_list<double> v, DType t) {
  return from_vector(std::vector<double>(v), Shape{static_cast<int64_t>(v.size())}).to(t);
}
Tensor tensor(std::initializer_list<std::initializer_list<double>> v, DType t) {
  std::vector<double> flat;
  int64_t cols = v.size() ? static_cast<int64_t>(v.begin()->size()) : 0;
  for (auto& row : v) {
    if (static_cast<int64_t>(row.size()) != cols)
      throw std::invalid_argument("tensor: rows of a nested initializer list must have equal length");
    flat.insert(flat.end(), row.begin(), row.end());
  }
  return from_vector(flat, Shape{static_cast<int64_t>(v.size()), cols}).to(t);
}

// ---- random ------------------------------------------------------------------------------------

namespace {
// One generator per thread (see manual_seed in tensor.h). A thread that chose its stream (called
// manual_seed or set_rng_state; the thread that loaded the library starts as if it had called
// manual_seed(5489)) keeps it. Every other thread derives its stream from the last manual_seed:
// `epoch` is bumped by every manual_seed, and such a thread whose stream was derived in an older
// epoch re-derives it before its next draw. The mutex guards seed and streams.
struct SeedState {
  std::mutex m;
  uint64_t seed = 5489u;        // std::mt19937_64's default seed: the loading thread's stream is unchanged
  uint64_t streams = 0;         // worker streams handed out since `seed` was set
  std::atomic<uint64_t> epoch{1};
};
SeedState g_seed;  // constant-initialized

struct ThreadGen {
  std::mt19937_64 gen;
  uint64_t epoch = 0;        // 0: not derived yet
  bool own_stream = false;   // manual_seed / set_rng_state on this thread: never re-derived
};
thread_local ThreadGen t_gen;
// The loading thread (normally the main thread) owns mt19937_64(5489), the default-constructed state.
[[maybe_unused]] const bool g_loader_owns_stream = (t_gen.own_stream = true);

uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// The seed of worker stream k under global seed `seed` (k counts from 0).
uint64_t stream_seed(uint64_t seed, uint64_t k) { return splitmix64(splitmix64(seed) ^ splitmix64(~k)); }

[[gnu::noinline]] void rederive(ThreadGen& t) {
  std::lock_guard lock(g_seed.m);
  t.epoch = g_seed.epoch.load(std::memory_order_relaxed);
  t.gen.seed(stream_seed(g_seed.seed, g_seed.streams++));
}

std::mt19937_64& rng() {
  ThreadGen& t = t_gen;
  if (!t.own_stream && t.epoch != g_seed.epoch.load(std::memory_order_acquire)) [[unlikely]] rederive(t);
  return t.gen;
}
}  // namespace

void manual_seed(uint64_t seed) {
  ThreadGen& t = t_gen;
  std::lock_guard lock(g_seed.m);
  g_seed.seed = seed;
  g_seed.streams = 0;
  g_seed.epoch.fetch_add(1, std::memory_order_release);
  t.gen.seed(seed);  // the calling thread's stream: mt19937_64(seed), a function of the seed alone
  t.own_stream = true;
}
uint64_t next_random_u64() { return rng()(); }
double next_uniform() { return static_cast<double>(rng()() >> 11) * 0x1.0p-53; }
double next_normal() {
  // Box-Muller on our own uniforms: identical streams on every standard library.
  double u1 = next_uniform(), u2 = next_uniform();
  if (u1 < 1e-300) u1 = 1e-300;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}
RngState get_rng_state() {
  std::ostringstream os;
  os << rng();
  return {os.str()};
}
void set_rng_state(const RngState& s) {
  std::istringstream is(s.bytes);
  std::mt19937_64 g;
  is >> g;
  if (is.fail()) throw std::invalid_argument("set_rng_state: the state string is not a saved generator state");
  // Set directly (not through rng()): a stale thread must not take a worker stream number first.
  ThreadGen& t = t_gen;
  t.gen = g;
  t.own_stream = true;
}

Tensor uniform(const Shape& s, double lo, double hi, DType t) {
  Tensor x = empty_for("uniform", s, t);
  detail::float_kernels_of("uniform", x).elementwise->fill_random(detail::mem(x), x.numel(), &next_uniform, lo, hi - lo);
  return x;
}
Tensor rand(const Shape& s, DType t) { return uniform(s, 0.0, 1.0, t); }
Tensor randn(const Shape& s, DType t) {
  Tensor x = empty_for("randn", s, t);
  detail::float_kernels_of("randn", x).elementwise->fill_random(detail::mem(x), x.numel(), &next_normal, 0.0, 1.0);
  return x;
}
Tensor randint(int64_t low, int64_t high, const Shape& s) {
  if (high <= low) throw std::invalid_argument(fmt::format("randint: empty range [{}, {})", low, high));
  Tensor x = empty_for("randint", s, DType::Int64);
  const uint64_t span = static_cast<uint64_t>(high) - static_cast<uint64_t>(low);  // no signed overflow
  detail::kernels_of(x).elementwise->fill_random_int(detail::mem(x), x.numel(), &next_random_u64, low, span);
  return x;
}

// ---- accessors ---------------------------------------------------------------------------------

void Tensor::undefined_error(const char* what) {
  throw std::invalid_argument(fmt::format("{}: the tensor is undefined (a default-constructed Tensor(), or a gradient "
                                          "that was never computed); check .defined() first",
                                          what));
}

int64_t Tensor::size_out_of_range(int64_t d) const {
  throw std::out_of_range(fmt::format("size: dim {} out of range for a tensor of shape {}", d, shape().str()));
}

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (int64_t i = dim() - 1; i >= 0; --i) {
    if (shape()[i] != 1 && strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  live("raw_data");
  return static_cast<char*>(impl()->storage->data()) + impl()->offset * static_cast<int64_t>(dtype_size(dtype()));
}

namespace {
// A host read inside a captured step would run once, at capture, and never at a replay.
void refuse_host_read_while_capturing(const char* what) {
  if (detail::capturing()) [[unlikely]]
    throw CaptureError(fmt::format("{}: reads tensor values on the host inside a captured step, where a replay would "
                                   "not read them again; read them after replay() (the step's tensors are "
                                   "rewritten in place)",
                                   what));
}
}  // namespace

double Tensor::item() const {
  live("item");
  refuse_host_read_while_capturing("item()");
  if (numel() != 1)
    throw std::invalid_argument(fmt::format("item: needs a one-element tensor, got shape {}", shape().str()));
  return detail::kernels_of(*this).elementwise->load(detail::mem(*this), 0);
}

double Tensor::at(std::initializer_list<int64_t> idx) const {
  live("at");
  refuse_host_read_while_capturing("at()");
  if (static_cast<int64_t>(idx.size()) != dim())
    throw std::out_of_range(fmt::format("at: {} indices for a tensor of shape {}", idx.size(), shape().str()));
  int64_t off = 0, d = 0;
  for (int64_t i : idx) {
    if (i < 0 || i >= shape()[d])
      throw std::out_of_range(fmt::format("at: index {} out of range [0, {}) in dim {} of shape {}", i, shape()[d],
                                          d, shape().str()));
    off += i * strides()[d++];
  }
  return detail::kernels_of(*this).elementwise->load(detail::mem(*this), off);
}

std::vector<double> Tensor::to_vector() const {
  live("to_vector");
  refuse_host_read_while_capturing("to_vector()");
  std::vector<double> out(static_cast<size_t>(numel()));
  detail::kernels_of(*this).elementwise->to_doubles(detail::view_of(*this), out.data());
  return out;
}


// ---- autograd state ----------------------------------------------------------------------------

Tensor& Tensor::requires_grad_(bool on) {
  live("requires_grad_");
  if (on && !is_floating(dtype()))
    throw std::invalid_argument(fmt::format("requires_grad_: only float tensors can require gradients; this one is {}",
                                            dtype_name(dtype())));
  if (!on && impl()->grad_fn)
    throw std::invalid_argument("requires_grad_(false): this tensor is the output of a recorded op; use detach()");
  impl()->requires_grad = on;
  return *this;
}
const std::string& Tensor::name() const {
  static const std::string none;
  return live("name")->meta ? impl()->meta->name : none;
}
bool Tensor::is_leaf() const { return live("is_leaf")->grad_fn == nullptr; }
Tensor Tensor::grad() const {
  if (!live("grad")->requires_grad)
    throw std::invalid_argument(fmt::format("grad: tensor of shape {} does not require grad, so it never gets a "
                                            "gradient; call requires_grad_() on it before the forward pass",
                                            shape().str()));
  // The caller may write it through a raw pointer, which bumps no version: the row mark must go.
  detail::forget_zero_rows(impl()->grad.get());
  return Tensor(impl()->grad);
}
void Tensor::set_grad(const Tensor& g) {
  live("set_grad");
  if (g.defined() && (!(g.shape() == shape()) || g.dtype() != dtype()))
    throw std::invalid_argument(fmt::format("set_grad: gradient {} {} does not match tensor {} {}", g.shape().str(),
                                            dtype_name(g.dtype()), shape().str(), dtype_name(dtype())));
  detail::forget_zero_rows(g.impl());
  impl()->grad = g.defined() ? g.ref() : Ref<TensorImpl>();
  impl()->grad_exclusive = false;
}
void Tensor::zero_grad() {
  detail::recycle_grad(live("zero_grad")->grad);
  impl()->grad.reset();
  impl()->grad_exclusive = false;
}
Tensor Tensor::detach() const { return make_view(*this, shape(), strides(), offset()); }

// ---- method forms ------------------------------------------------------------------------------

Tensor Tensor::contiguous() const { return tg::contiguous(*this); }
Tensor Tensor::to(DType t) const { return tg::to_dtype(*this, t); }
Tensor Tensor::reshape(const Shape& s) const { return tg::reshape(*this, s); }
Tensor Tensor::transpose(int64_t a, int64_t b) const { return tg::transpose(*this, a, b); }
Tensor Tensor::permute(const Shape& o) const { return tg::permute(*this, o); }
Tensor Tensor::squeeze(int64_t d) const { return tg::squeeze(*this, d); }
Tensor Tensor::unsqueeze(int64_t d) const { return tg::unsqueeze(*this, d); }
Tensor Tensor::expand(const Shape& s) const { return tg::expand(*this, s); }
Tensor Tensor::narrow(int64_t d, int64_t s, int64_t l) const { return tg::narrow(*this, d, s, l); }
Tensor Tensor::sum() const { return tg::sum(*this); }
Tensor Tensor::sum(const std::vector<int64_t>& d, bool k) const { return tg::sum(*this, d, k); }
Tensor Tensor::mean() const { return tg::mean(*this); }
Tensor Tensor::mean(const std::vector<int64_t>& d, bool k) const { return tg::mean(*this, d, k); }
Tensor Tensor::matmul(const Tensor& o) const { return tg::matmul(*this, o); }
Tensor Tensor::tanh() const { return tg::tanh(*this); }
Tensor Tensor::sigmoid() const { return tg::sigmoid(*this); }
Tensor Tensor::relu() const { return tg::relu(*this); }
Tensor Tensor::exp() const { return tg::exp(*this); }
Tensor Tensor::log() const { return tg::log(*this); }
Tensor Tensor::pow(double e) const { return tg::pow(*this, e); }
Tensor Tensor::sqrt() const { return tg::sqrt(*this); }
Tensor Tensor::abs() const { return tg::abs(*this); }

}  // namespace tg
