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

bool capturing() { return t_capture && kern::recording(); }

void keep_for_capture(const Storage& s) {
  CaptureState* c = t_capture;
  if (!c || !kern::recording()) return;  // another thread's capture, or a replayed-as-code part
  c->seen.insert(&s);
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
  if (detail::t_capture)
    throw CaptureError("capture: this thread is already capturing a step; captures do not nest");
  for (size_t i = 0; i < inputs.size(); ++i)
    if (!inputs[i].defined()) throw std::invalid_argument(fmt::format("capture: input {} is an undefined tensor", i));
  auto state = std::make_shared<detail::CaptureState>();
  state->inputs = std::move(inputs);
  detail::g_epoch.fetch_add(1, std::memory_order_relaxed);
  kern::start_recording(state->recording);
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

void CapturedStep::replay() {
  if (!state_) throw CaptureError("CapturedStep::replay: this step is empty (default-constructed or moved from)");
  if (detail::capturing())
    throw CaptureError("CapturedStep::replay: called while capturing another step; a capture cannot record a replay");
  bool idle = false;
  if (!state_->replaying.compare_exchange_strong(idle, true, std::memory_order_acquire))
    throw CaptureError("CapturedStep::replay: another thread is replaying this step now; one replay at a time");
  struct Done {
    std::atomic<bool>& flag;
    ~Done() { flag.store(false, std::memory_order_release); }
  } done{state_->replaying};
  // The replay rewrites these bytes without going through an op: a graph recorded since that saved
  // one of them must throw on backward rather than read the new values.
  for (const Ref<Storage>& s : state_->kept) s->bump_version();
  state_->recording.replay();
}

void CapturedStep::replay(const std::vector<Tensor>& inputs) {
  if (!state_) throw CaptureError("CapturedStep::replay: this step is empty (default-constructed or moved from)");
  std::vector<Tensor>& mine = state_->inputs;
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
size_t CapturedStep::kept_storages() const { return state_ ? state_->kept.size() : 0; }

}  // namespace tg
