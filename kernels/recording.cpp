// Recording tables (kernels/recording.h): for each (device, dtype), a KernelTable of the same
// shape as kTables' whose entries run the real kernel and append a thunk to this thread's
// recording; null where the real entry is null, so callers' checks see the same table.
#include "tapegrad/kernels/recording.h"

#include <array>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

namespace tg::kern {

namespace detail {
std::atomic<int> g_recording_threads{0};
}

namespace {

thread_local Recording* t_recording = nullptr;  // null while paused
thread_local bool t_started = false;

Recording& rec() { return *t_recording; }
// A wrapper called while this thread does not record (an entry fetched while recording and kept
// past a pause or the end) just runs the kernel.
bool recording_now() { return t_recording != nullptr; }

// ---- arguments as a thunk keeps them ---------------------------------------------------------

template <class A> struct Keep {  // values and tensor-memory pointers: as they are
  static std::decay_t<A> keep(A v) { return v; }
  static const std::decay_t<A>& use(const std::decay_t<A>& v) { return v; }
};

struct KeptView {
  void* data;
  std::array<int64_t, kMaxRank> sizes{}, strides{};
  int64_t rank;
};
KeptView keep_view(const View& v) {
  if (v.rank > kMaxRank) throw CaptureError("capture: a kernel view of rank " + std::to_string(v.rank) + " (at most 8)");
  KeptView k{v.data, {}, {}, v.rank};
  for (int64_t d = 0; d < v.rank; ++d) {
    k.sizes[static_cast<size_t>(d)] = v.sizes[d];
    k.strides[static_cast<size_t>(d)] = v.strides[d];
  }
  return k;
}
View use_view(const KeptView& k) { return {k.data, k.sizes.data(), k.strides.data(), k.rank}; }
template <> struct Keep<const View&> {
  static KeptView keep(const View& v) { return keep_view(v); }
  static View use(const KeptView& k) { return use_view(k); }
};

struct KeptCell {
  CellArgs args;
  std::shared_ptr<PackedWeight> packed;
};
template <> struct Keep<const CellArgs&> {
  static KeptCell keep(const CellArgs& a) { return {a, a.w_packed ? rec().packed_source(a.w_packed) : nullptr}; }
  static CellArgs use(const KeptCell& k) {
    CellArgs a = k.args;
    a.w_packed = k.packed.get();
    return a;
  }
};
template <> struct Keep<const PackedWeight&> {
  static std::shared_ptr<PackedWeight> keep(const PackedWeight& w) { return rec().packed_source(&w); }
  static const PackedWeight& use(const std::shared_ptr<PackedWeight>& w) { return *w; }
};

// ---- the real entry a wrapper stands for -----------------------------------------------------

// Get<D, T, &KernelTable::reduce, &ReduceKernels::sum>{}() is kTables[D][T].reduce->sum.
template <int D, int T, auto Family, auto Member> struct Get {
  auto operator()() const { return (kTables[D][T].*Family)->*Member; }
};
template <int D, int T, auto Family, auto Member, size_t I> struct GetAt {
  auto operator()() const { return ((kTables[D][T].*Family)->*Member)[I]; }
};

// Runs the kernel, then records it with its arguments kept.
template <class G, class Sig> struct Rec;
template <class G, class... A> struct Rec<G, void (*)(A...)> {
  static void fn(A... a) {
    const auto real = G{}();
    real(a...);
    if (!recording_now()) return;
    rec().add([real, kept = std::tuple<decltype(Keep<A>::keep(std::declval<A>()))...>(Keep<A>::keep(a)...)] {
      std::apply([real](const auto&... k) { real(Keep<A>::use(k)...); }, kept);
    });
  }
};

// Throws, naming the kernel and why a replay could not reproduce it (runs it when not recording).
template <class G, class Why, class Sig> struct Refuse;
template <class G, class Why, class R, class... A> struct Refuse<G, Why, R (*)(A...)> {
  static R fn(A... a) {
    if (!recording_now()) return G{}()(a...);
    throw CaptureError(std::string("capture: the step calls ") + Why::kKernel + ", which a replay cannot repeat: " +
                       Why::kWhy);
  }
};
#define TG_REFUSAL(tag, kernel, why)                  \
  struct tag {                                        \
    static constexpr const char* kKernel = kernel;    \
    static constexpr const char* kWhy = why;          \
  }
constexpr const char* kRandomWhy =
    "it draws random numbers on the host, and a replay would repeat the same draws (dropout, rand, "
    "multinomial). Keep random ops out of the captured step, or run the step eagerly";
TG_REFUSAL(RandomFill, "a random fill (rand, randn, uniform, randint)", kRandomWhy);
TG_REFUSAL(RandomMask, "dropout's random mask", kRandomWhy);
TG_REFUSAL(Multinomial, "multinomial", kRandomWhy);
TG_REFUSAL(HostCopy, "a copy between a tensor and host memory (a tensor made from a std::vector or braces, "
                     "a checkpoint read or write, an MPI buffer)",
           "the host memory may be gone or hold other values at replay. Make such tensors before capturing "
           "and copy_() new values into them between replays");
TG_REFUSAL(Optimizer, "an optimizer kernel outside Optimizer::step",
           "its step size comes from host step counts. Optimizer::step() itself is captured (it is replayed "
           "as code, hooks included)");
TG_REFUSAL(RowSparse, "a row-sparse gradient kernel", "its row list is a host vector of the rows one batch touched");
TG_REFUSAL(Nll, "nll_loss (cross_entropy)",
           "its reduced loss is summed on the host, and its mean divides by a weight sum computed there "
           "from the targets. Run this step eagerly (binary_cross_entropy_with_logits and mse_loss can be "
           "captured)");

// ---- kernels whose result the host reads: run again at replay and compared ---------------------

[[noreturn]] void diverged(const char* what, const std::string& then, const std::string& now) {
  throw CaptureError(std::string("captured step replay: ") + what + " gave " + now + " where the capture saw " + then +
                     ": the step took a host decision on tensor values there, so replaying its kernels would no "
                     "longer match running it (the replay stopped at this point; the optimizer has not run). "
                     "Run this step eagerly, or capture it again");
}
bool same_bits(double a, double b) { return std::memcmp(&a, &b, sizeof a) == 0; }

// A kernel whose result the host reads, all arguments kept like Rec's: run again at each replay,
// and a different result throws. `What` names the check in the error.
template <class G, class What, class Sig> struct Checked;
template <class G, class What, class R, class... A> struct Checked<G, What, R (*)(A...)> {
  static R fn(A... a) {
    const auto real = G{}();
    const R then = real(a...);
    if (!recording_now()) return then;
    rec().add([real, then, kept = std::tuple<decltype(Keep<A>::keep(std::declval<A>()))...>(Keep<A>::keep(a)...)] {
      const R now = std::apply([real](const auto&... k) { return real(Keep<A>::use(k)...); }, kept);
      if (!same_result(now, then)) diverged(What::kWhat, show(then), show(now));
    });
    return then;
  }
  static bool same_result(R x, R y) {
    if constexpr (std::is_floating_point_v<R>) return same_bits(x, y);
    else return x == y;
  }
  static std::string show(R v) {
    if constexpr (std::is_same_v<R, bool>) return v ? "true" : "false";
    else return std::to_string(v);
  }
};
#define TG_CHECKED(tag, what) \
  struct tag {                \
    static constexpr const char* kWhat = what; \
  }
TG_CHECKED(LoadCheck, "reading one element on the host (item(), a scalar argument)");
TG_CHECKED(ZeroDivisorCheck, "integer division's check for a zero divisor (the first zero's position, -1: none)");
TG_CHECKED(FiniteCheck, "anomaly mode's finiteness check (all finite)");
TG_CHECKED(NormCheck, "a norm read on the host (clip_grad_norm_ outside an optimizer hook)");
TG_CHECKED(ClampCheck, "clip_grad_value_'s largest magnitude, read on the host");

// Kernels whose host-side arguments or results need more than Rec or Checked give them.
template <int D, int T> struct ByHand {
  static const KernelTable& real() { return kTables[D][T]; }
  static void to_doubles(const View& src, double* out) {
    const auto f = real().elementwise->to_doubles;
    f(src, out);
    if (!recording_now()) return;
    std::vector<double> then(out, out + numel(src));
    rec().add([f, k = keep_view(src), then = std::move(then)] {
      std::vector<double> now(then.size());
      f(use_view(k), now.data());
      if (std::memcmp(now.data(), then.data(), now.size() * sizeof(double)) != 0)
        diverged("copying a tensor's values to the host (to_vector)", "other values", "different ones");
    });
  }
  static int64_t first_out_of_range(const int64_t* index, int64_t n, int64_t limit, const int64_t* skip,
                                    int64_t* kept, int64_t* value) {
    const auto f = real().index->first_out_of_range;
    const int64_t i = f(index, n, limit, skip, kept, value);
    const bool has_skip = skip != nullptr, wants_kept = kept != nullptr;
    const int64_t skip_v = skip ? *skip : 0, kept_v = kept ? *kept : 0;
    if (!recording_now()) return i;
    rec().add([f, index, n, limit, has_skip, skip_v, wants_kept, kept_v, i] {
      int64_t now_kept = 0, bad = 0;
      const int64_t now = f(index, n, limit, has_skip ? &skip_v : nullptr, wants_kept ? &now_kept : nullptr, &bad);
      if (now != i)
        diverged("an index range check", "every index in [0, " + std::to_string(limit) + ")",
                 "index " + std::to_string(bad) + " at position " + std::to_string(now));
      if (wants_kept && now_kept != kept_v)
        diverged("the count of indices that are not ignore_index", std::to_string(kept_v), std::to_string(now_kept));
    });
    return i;
  }
  // Shape arrays the kernel reads beyond its view: copied.
  static void sum(const View& x, void* out, const int64_t* keep_sizes) {
    const auto f = real().reduce->sum;
    f(x, out, keep_sizes);
    if (!recording_now()) return;
    std::array<int64_t, kMaxRank> ks{};
    const KeptView kx = keep_view(x);  // rank checked here
    std::copy(keep_sizes, keep_sizes + x.rank, ks.begin());
    rec().add([f, kx, out, ks] { f(use_view(kx), out, ks.data()); });
  }
  static void scatter_to_argmax(const void* g, const int64_t* index, void* out, const int64_t* keep_sizes,
                                const int64_t* out_strides, int64_t rank, int64_t dim) {
    const auto f = real().index->scatter_to_argmax;
    f(g, index, out, keep_sizes, out_strides, rank, dim);
    if (!recording_now()) return;
    if (rank > kMaxRank) throw CaptureError("capture: scatter_to_argmax of rank " + std::to_string(rank));
    std::array<int64_t, kMaxRank> ks{}, st{};
    std::copy(keep_sizes, keep_sizes + rank, ks.begin());
    std::copy(out_strides, out_strides + rank, st.begin());
    rec().add([f, g, index, out, ks, st, rank, dim] { f(g, index, out, ks.data(), st.data(), rank, dim); });
  }
  static void pack(bool transposed, int64_t k, int64_t n, const void* w, int64_t ldw, PackedWeight& out) {
    const auto f = real().linalg->pack;
    f(transposed, k, n, w, ldw, out);
    if (!recording_now()) return;
    rec().add([f, transposed, k, n, w, ldw, own = rec().packed_target(&out)] { f(transposed, k, n, w, ldw, *own); });
  }
};

// ---- the tables ------------------------------------------------------------------------------

struct RecordingRow {
  ElementwiseKernels elementwise;
  ReduceKernels reduce;
  LinalgKernels linalg;
  IndexKernels index;
  RnnKernels rnn;
  OptimKernels optim;
  SelectKernels select;
  NormKernels norm;
  KernelTable table;
};

template <int D, int T> struct Build {
  template <auto F, auto M> using G = Get<D, T, F, M>;
  // Each wrapper where the real entry is set, else null.
  template <auto F, auto M> static auto wrap() {
    using Fn = decltype(G<F, M>{}());
    return G<F, M>{}() ? &Rec<G<F, M>, Fn>::fn : Fn{nullptr};
  }
  template <auto F, auto M, class Why> static auto refuse() {
    using Fn = decltype(G<F, M>{}());
    return G<F, M>{}() ? &Refuse<G<F, M>, Why, Fn>::fn : Fn{nullptr};
  }
  template <auto F, auto M, size_t... I, class Arr>
  static void wrap_array(Arr& out, std::index_sequence<I...>) {
    ((out[I] = ((kTables[D][T].*F)->*M)[I] ? &Rec<GetAt<D, T, F, M, I>, std::decay_t<decltype(out[I])>>::fn : nullptr),
     ...);
  }
  template <auto F, auto M, class What> static auto checked() {
    using Fn = decltype(G<F, M>{}());
    return G<F, M>{}() ? &Checked<G<F, M>, What, Fn>::fn : Fn{nullptr};
  }
  // A ByHand wrapper where the real entry is set, else null.
  template <class Fn> static Fn by_hand(Fn real, Fn wrapper) { return real ? wrapper : nullptr; }

  static void build(RecordingRow& r) {
    const KernelTable& k = kTables[D][T];
    using K = KernelTable;
    using GD = ByHand<D, T>;
    r.table = {};
    if (k.elementwise) {
      using E = ElementwiseKernels;
      E& e = r.elementwise;
      const E& re = *k.elementwise;
      wrap_array<&K::elementwise, &E::binary>(e.binary, std::make_index_sequence<static_cast<size_t>(Binary::kCount)>());
      wrap_array<&K::elementwise, &E::unary>(e.unary, std::make_index_sequence<static_cast<size_t>(Unary::kCount)>());
      wrap_array<&K::elementwise, &E::copy_from>(e.copy_from, std::make_index_sequence<kNumDTypes>());
      e.fill = wrap<&K::elementwise, &E::fill>();
      e.add_scaled = wrap<&K::elementwise, &E::add_scaled>();
      e.scale = wrap<&K::elementwise, &E::scale>();
      e.zero_bytes = wrap<&K::elementwise, &E::zero_bytes>();
      e.copy_bytes = refuse<&K::elementwise, &E::copy_bytes, HostCopy>();
      e.repeat_row = wrap<&K::elementwise, &E::repeat_row>();
      e.iota = wrap<&K::elementwise, &E::iota>();
      e.load = checked<&K::elementwise, &E::load, LoadCheck>();
      e.store = wrap<&K::elementwise, &E::store>();
      e.to_doubles = by_hand(re.to_doubles, &GD::to_doubles);
      e.first_zero = checked<&K::elementwise, &E::first_zero, ZeroDivisorCheck>();
      e.fill_random = refuse<&K::elementwise, &E::fill_random, RandomFill>();
      e.bernoulli_mask = refuse<&K::elementwise, &E::bernoulli_mask, RandomMask>();
      e.all_finite = checked<&K::elementwise, &E::all_finite, FiniteCheck>();
      e.fill_random_int = refuse<&K::elementwise, &E::fill_random_int, RandomFill>();
      r.table.elementwise = &e;
    }
    if (k.reduce) {
      using R = ReduceKernels;
      R& x = r.reduce;
      const R& rr = *k.reduce;
      x.sum = by_hand(rr.sum, &GD::sum);
      x.max_rows = wrap<&K::reduce, &R::max_rows>();
      x.softmax_rows = wrap<&K::reduce, &R::softmax_rows>();
      x.column_sums = wrap<&K::reduce, &R::column_sums>();
      x.bce_with_logits = wrap<&K::reduce, &R::bce_with_logits>();
      x.bce_with_logits_backward = wrap<&K::reduce, &R::bce_with_logits_backward>();
      x.nll_rows = refuse<&K::reduce, &R::nll_rows, Nll>();
      x.nll_rows_backward = wrap<&K::reduce, &R::nll_rows_backward>();
      x.norm_accumulate = checked<&K::reduce, &R::norm_accumulate, NormCheck>();
      x.norm2_rows = refuse<&K::reduce, &R::norm2_rows, RowSparse>();
      x.clamp_abs = checked<&K::reduce, &R::clamp_abs, ClampCheck>();
      r.table.reduce = &x;
    }
    if (k.linalg) {
      using L = LinalgKernels;
      L& x = r.linalg;
      const L& rl = *k.linalg;
      x.gemm = wrap<&K::linalg, &L::gemm>();
      x.pack = by_hand(rl.pack, &GD::pack);
      x.gemm_packed = wrap<&K::linalg, &L::gemm_packed>();
      x.packed_pays = rl.packed_pays;  // a function of the shape alone
      r.table.linalg = &x;
    }
    if (k.index) {
      using I = IndexKernels;
      I& x = r.index;
      const I& ri = *k.index;
      x.gather = wrap<&K::index, &I::gather>();
      x.scatter_add = wrap<&K::index, &I::scatter_add>();
      x.scatter_to_argmax = by_hand(ri.scatter_to_argmax, &GD::scatter_to_argmax);
      x.first_out_of_range = by_hand(ri.first_out_of_range, &GD::first_out_of_range);
      r.table.index = &x;
    }
    if (k.rnn) {
      using N = RnnKernels;
      N& x = r.rnn;
      x.rnn_forward = wrap<&K::rnn, &N::rnn_forward>();
      x.rnn_backward = wrap<&K::rnn, &N::rnn_backward>();
      x.lstm_forward = wrap<&K::rnn, &N::lstm_forward>();
      x.lstm_backward = wrap<&K::rnn, &N::lstm_backward>();
      x.gru_forward = wrap<&K::rnn, &N::gru_forward>();
      x.gru_backward = wrap<&K::rnn, &N::gru_backward>();
      r.table.rnn = &x;
    }
    if (k.optim) {
      using O = OptimKernels;
      O& x = r.optim;
      x.sgd = refuse<&K::optim, &O::sgd, Optimizer>();
      x.adam = refuse<&K::optim, &O::adam, Optimizer>();
      x.sgd_rows = refuse<&K::optim, &O::sgd_rows, Optimizer>();
      x.adam_rows = refuse<&K::optim, &O::adam_rows, Optimizer>();
      x.adagrad = refuse<&K::optim, &O::adagrad, Optimizer>();
      x.rmsprop = refuse<&K::optim, &O::rmsprop, Optimizer>();
      x.divide = refuse<&K::optim, &O::divide, HostCopy>();
      r.table.optim = &x;
    }
    if (k.select) {
      using S = SelectKernels;
      S& x = r.select;
      x.topk_rows = wrap<&K::select, &S::topk_rows>();
      x.invert_rows = wrap<&K::select, &S::invert_rows>();
      x.multinomial_rows = refuse<&K::select, &S::multinomial_rows, Multinomial>();
      r.table.select = &x;
    }
    if (k.norm) {
      using M = NormKernels;
      M& x = r.norm;
      x.layer_norm = wrap<&K::norm, &M::layer_norm>();
      x.layer_norm_backward = wrap<&K::norm, &M::layer_norm_backward>();
      r.table.norm = &x;
    }
  }
};

struct RecordingTables {
  RecordingRow rows[kNumDevices][kNumDTypes];
  RecordingTables() {
    static_assert(kNumDevices == 1 && kNumDTypes == 3, "a new device or dtype needs its recording row here");
    Build<0, 0>::build(rows[0][0]);
    Build<0, 1>::build(rows[0][1]);
    Build<0, 2>::build(rows[0][2]);
  }
};
const RecordingTables& recording_tables() {
  static const RecordingTables t;
  return t;
}

}  // namespace

namespace detail {
const KernelTable& table_for_this_thread(Device device, DType dtype) {
  if (!t_recording) return kTables[static_cast<int>(device)][static_cast<int>(dtype)];
  return recording_tables().rows[static_cast<int>(device)][static_cast<int>(dtype)].table;
}
}  // namespace detail

std::shared_ptr<PackedWeight> Recording::packed_target(const PackedWeight* seen) {
  auto own = std::make_shared<PackedWeight>();
  packed_[seen] = own;
  return own;
}

std::shared_ptr<PackedWeight> Recording::packed_source(const PackedWeight* seen) const {
  auto it = packed_.find(seen);
  if (it == packed_.end())
    throw CaptureError("capture: a product reads a weight packed before the capture started; the packed-weight "
                       "cache must repack inside the captured step (a tapegrad bug: please report it)");
  return it->second;
}

void start_recording(Recording& r) {
  if (t_started) throw CaptureError("capture: this thread is already capturing a step; captures do not nest");
  (void)recording_tables();  // built before the first wrapper can run
  t_started = true;
  t_recording = &r;
  detail::g_recording_threads.fetch_add(1, std::memory_order_relaxed);
}

void stop_recording() {
  if (!t_started) return;
  t_started = false;
  t_recording = nullptr;
  detail::g_recording_threads.fetch_sub(1, std::memory_order_relaxed);
}

Recording* recording() { return t_recording; }

RecordingPause::RecordingPause() : paused_(t_recording) { t_recording = nullptr; }
RecordingPause::~RecordingPause() { t_recording = paused_; }

}  // namespace tg::kern
