// Captured steps (capture.h): the autograd side of kernels/recording.h. The recording holds the
// kernels; this keeps the memory they point into alive and runs the replayed-as-code parts.
#include "tapegrad/autograd/capture.h"

#include <atomic>
#include <unordered_set>
#include <vector>

#include <fmt/format.h>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/storage.h"

namespace tg {

namespace detail {

struct CaptureState {
  kern::Recording recording;
  // Storages handed to recorded kernels. No reference is taken while capturing, so the run takes
  // the same paths as an eager one (several decide by use counts); frees are deferred instead, so
  // an address seen here cannot come back as another storage before the capture ends.
  std::unordered_set<const Storage*> seen;
  alloc::Deferred deferred;  // every block this thread freed while capturing
  std::vector<Ref<Storage>> kept;  // the storages of `seen` still alive at the end, for the replays
  std::atomic<bool> replaying{false};
  std::vector<Tensor> inputs;  // named at capture, for replay(inputs)
  ~CaptureState() {
    kept.clear();
    alloc::free_deferred(deferred);
  }
};

namespace {
thread_local CaptureState* t_capture = nullptr;
std::atomic<uint64_t> g_epoch{0};
}  // namespace

bool capturing_on_this_thread() { return t_capture && kern::recording(); }

void keep_for_capture(const Storage& s) {
  if (capturing_on_this_thread()) t_capture->seen.insert(&s);  // not another thread's, nor run-as-code
}

void run_as_code(const std::function<void()>& now, std::function<void()> replay) {
  if (!capturing()) return now();
  {
    kern::RecordingPause pause;
    now();
  }
  kern::recording()->add(std::move(replay));
}

uint64_t capture_epoch() { return g_epoch.load(std::memory_order_relaxed); }

}  // namespace detail

CapturedStep capture(const std::function<void()>& step, std::vector<Tensor> inputs) {
  for (size_t i = 0; i < inputs.size(); ++i)
    if (!inputs[i].defined()) throw std::invalid_argument(fmt::format("capture: input {} is an undefined tensor", i));
  auto state = std::make_shared<detail::CaptureState>();
  state->inputs = std::move(inputs);
  kern::start_recording(state->recording);  // CaptureError when this thread already captures
  detail::g_epoch.fetch_add(1, std::memory_order_relaxed);
  detail::t_capture = state.get();
  alloc::defer_frees(&state->deferred);
  struct End {
    ~End() {
      alloc::defer_frees(nullptr);
      detail::t_capture = nullptr;
      kern::stop_recording();
    }
  } end;
  step();
  // A storage whose header was freed is dead (its bytes went with it, or are deferred too).
  std::unordered_set<const void*> dead;
  for (const auto& [p, n] : state->deferred) dead.insert(p);
  for (const Storage* s : state->seen)
    if (!dead.count(s)) state->kept.emplace_back(const_cast<Storage*>(s));
  return CapturedStep(std::move(state));
}

detail::CaptureState& CapturedStep::live() const {
  if (!state_) throw CaptureError("CapturedStep::replay: this step is empty (default-constructed or moved from)");
  return *state_;
}

void CapturedStep::replay() {
  detail::CaptureState& st = live();
  if (detail::capturing())
    throw CaptureError("CapturedStep::replay: called while capturing another step; a capture cannot record a replay");
  bool idle = false;
  if (!st.replaying.compare_exchange_strong(idle, true, std::memory_order_acquire))
    throw CaptureError("CapturedStep::replay: another thread is replaying this step now; one replay at a time");
  struct Done {
    std::atomic<bool>& flag;
    ~Done() { flag.store(false, std::memory_order_release); }
  } done{st.replaying};
  // The replay rewrites these bytes without going through an op: a graph recorded since that saved
  // one of them must throw on backward rather than read the new values.
  for (const Ref<Storage>& s : st.kept) s->bump_version();
  st.recording.replay();
}

void CapturedStep::replay(const std::vector<Tensor>& inputs) {
  std::vector<Tensor>& mine = live().inputs;
  if (inputs.size() != mine.size())
    throw std::invalid_argument(fmt::format("CapturedStep::replay: {} inputs given, the step was captured with {}",
                                            inputs.size(), mine.size()));
  for (size_t i = 0; i < inputs.size(); ++i)
    if (!inputs[i].defined() || !(inputs[i].shape() == mine[i].shape()) || inputs[i].dtype() != mine[i].dtype())
      throw std::invalid_argument(fmt::format(
          "CapturedStep::replay: input {} is {}, the step was captured with {} {}; a captured step has fixed "
          "shapes (capture another one for this shape, or run it eagerly)",
          i, inputs[i].defined() ? inputs[i].shape().str() + " " + dtype_name(inputs[i].dtype()) : "undefined",
          mine[i].shape().str(), dtype_name(mine[i].dtype())));
  {
    NoGradGuard no_grad;
    for (size_t i = 0; i < inputs.size(); ++i)
      if (inputs[i].impl() != mine[i].impl()) copy_(mine[i], inputs[i]);
  }
  replay();
}

size_t CapturedStep::recorded_kernels() const { return state_ ? state_->recording.size() : 0; }

}  // namespace tg
