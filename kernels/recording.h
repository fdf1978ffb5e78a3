#pragma once
// Recording kernel calls to replay them: the mechanism under a captured training step (tg::capture,
// autograd/capture.h), the way a GPU backend records a CUDA graph. While a thread records,
// kernels_for() hands it tables whose entries run the kernel, then append a thunk that runs it
// again with the same arguments: the same pointers (tensor memory, which the capture keeps alive),
// copies of the shape and stride arrays, and stand-ins owned by the recording for the weights a
// recurrent layer packs. Replay runs the thunks in order, with no op, node or tensor made.
//
// What a thunk cannot reproduce is refused or checked, never frozen:
//  - refused, with a CaptureError when the step is captured: random draws (a replay would repeat
//    the same numbers), copies from or to plain host memory, the optimizer kernels (their scalars
//    come from host step counts; Optimizer::step is replayed eagerly instead), the row-sparse
//    kernels (their row lists are host vectors), and nll_rows (nll_loss's mean divides by a weight
//    sum computed on the host);
//  - checked: a kernel whose result the host reads (an index range check, item(), a norm, a
//    finiteness check) runs again at replay, and a different result throws CaptureError, because
//    the host decisions taken at capture would no longer hold.
#include <cstdint>
#include <functional>
#include <memory>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "tapegrad/kernels/kernels.h"

namespace tg::kern {

// A step that cannot be captured, or whose replay would no longer match what was captured.
struct CaptureError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class Recording {
 public:
  using Thunk = std::function<void()>;
  void add(Thunk t) { thunks_.push_back(std::move(t)); }
  void replay() const {
    for (const Thunk& t : thunks_) t();
  }
  size_t size() const { return thunks_.size(); }
  // The recording's own stand-in for a packed weight: `pack` into `seen` makes a new one (a later
  // pack into the same object is a new weight), products reading `seen` get the latest. A product
  // on a weight packed before the recording started has none: CaptureError.
  std::shared_ptr<PackedWeight> packed_target(const PackedWeight* seen);
  std::shared_ptr<PackedWeight> packed_source(const PackedWeight* seen) const;

 private:
  std::vector<Thunk> thunks_;
  std::unordered_map<const PackedWeight*, std::shared_ptr<PackedWeight>> packed_;
};

// This thread's kernel calls go into r (which must outlive stop_recording) until stop_recording.
// Recording twice at once on one thread is a CaptureError.
void start_recording(Recording& r);
void stop_recording();
// This thread's recording, or null (also while a RecordingPause is alive).
Recording* recording();

// Kernels called while this lives run without being recorded: a piece of the step that is
// replayed as code, not as kernels (an optimizer's step).
class RecordingPause {
 public:
  RecordingPause();
  ~RecordingPause();
  RecordingPause(const RecordingPause&) = delete;
  RecordingPause& operator=(const RecordingPause&) = delete;

 private:
  Recording* paused_;
};

}  // namespace tg::kern
