#pragma once
// A captured training step: run a fixed-shape step once while its kernels are recorded, then
// replay those kernels without running the C++ that issued them (no op, node, tensor or
// allocation per replay). The same mechanism a GPU backend uses for CUDA graphs; on a small model
// the per-op bookkeeping, not the arithmetic, is most of a step (bench/NOTES.md, the toy).
//
//   Tensor x = ..., y = ...;                       // the step's inputs: fixed tensors
//   Tensor loss;
//   tg::CapturedStep step = tg::capture([&] {
//     opt.zero_grad();
//     loss = binary_cross_entropy_with_logits(model.forward(x), y);
//     loss.backward();
//     opt.step();                                   // replayed as code: hooks, schedules, counters
//   }, {x, y});
//   for (...) { step.replay({next_x, next_y}); log(loss.item()); }  // copies into x and y
//
// The contract (what differs from running the function again):
//  - The capture runs the function once, for real: that run is a training step.
//  - Replay reads the same memory: give new inputs through replay(inputs) (or copy_() into the
//    tensors the function read), same shapes. Rebinding a variable to a new tensor feeds nothing:
//    the replay still reads the captured tensor. Tensors the function made (loss, outputs,
//    gradients) are rewritten in place.
//  - Optimizer::step() is replayed as code, so hooks (clipping, LR schedules) and step counts work
//    as when run eagerly. The parameters' gradients must still be the ones the capture made
//    (zero_grad() belongs inside the captured function): a replay checks, and throws otherwise.
//  - What a replay cannot reproduce is refused when capturing or checked when replaying (a
//    CaptureError, never a stale result): random ops, tensors made from host memory, nll_loss,
//    host reads of tensor values that change (kernels/recording.h lists them). Host code in the
//    function (printing, counters) runs once, at capture.
//  - Memory: every tensor the step touched stays allocated while the CapturedStep lives, and a
//    replay bumps their versions, so an eager graph that saved one of them throws on backward.
//  - One thread replays at a time; captures do not nest.
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "tapegrad/autograd/tensor.h"
#include "tapegrad/kernels/recording.h"

namespace tg {

using CaptureError = kern::CaptureError;

namespace detail {
struct CaptureState;
}

class CapturedStep {
 public:
  CapturedStep() = default;
  // Runs the recorded step again. CaptureError when empty, when another thread is replaying it,
  // or when a checked host decision no longer holds.
  void replay();
  // Copies each of `inputs` into the input tensor named at capture (same shape and dtype, else
  // invalid_argument naming it), then replays: the safe way to feed a new batch, since a replay
  // reads the captured tensors' memory, not whatever a variable names now.
  void replay(const std::vector<Tensor>& inputs);
  size_t recorded_kernels() const;  // thunks, the optimizer steps among them
  explicit operator bool() const { return state_ != nullptr; }

 private:
  friend CapturedStep capture(const std::function<void()>& step, std::vector<Tensor> inputs);
  explicit CapturedStep(std::shared_ptr<detail::CaptureState> s) : state_(std::move(s)) {}
  detail::CaptureState& live() const;  // CaptureError when empty
  std::shared_ptr<detail::CaptureState> state_;
};

// Runs `step` once, recording it. CaptureError when it does something a replay cannot repeat
// (then nothing is kept), and whatever `step` itself throws. `inputs`: the tensors the step reads
// its batch from, for replay(inputs).
CapturedStep capture(const std::function<void()>& step, std::vector<Tensor> inputs = {});

namespace detail {
bool capturing_on_this_thread();
// Whether this thread is capturing a step now (and not inside a replayed-as-code part). Called on
// hot paths (per cell step, per item()): while no thread records, one load and a branch.
inline bool capturing() { return kern::any_thread_recording() && capturing_on_this_thread(); }
// The storage behind a kernel argument, kept alive for the replays (kernel_bridge.h's mem()).
void keep_for_capture(const Storage& s);
// While capturing: runs `now` unrecorded and records `replay` to run in its place at each replay
// (an optimizer step: code that reads host state). Otherwise runs `now`.
void run_as_code(const std::function<void()>& now, std::function<void()> replay);
// Bumped when a capture starts: caches of derived kernel data (packed weights) drop what they
// made before it, so that the capture records their rebuild.
uint64_t capture_epoch();
}  // namespace detail

}  // namespace tg
