#pragma once
// Internal: the one place where tensors become kernel arguments. An op looks its kernels up by
// the tensor's (device, dtype) once per call and hands them views of tensor memory; nothing
// else in autograd/, optim/ or nn/ touches a tensor's bytes (tests/source_scan.cmake checks).
#include <string>

#include "tapegrad/autograd/capture.h"
#include "tapegrad/autograd/tensor.h"
#include "tapegrad/kernels/kernels.h"

namespace tg::detail {

inline const kern::KernelTable& kernels_of(const Tensor& t) { return kern::kernels_for(t.device(), t.dtype()); }

// kernels_of(t) for an op that is defined on floating point only; otherwise throws (naming the op).
[[noreturn]] void not_floating_error(const char* op, DType t);
inline const kern::KernelTable& float_kernels_of(const char* op, const Tensor& t) {
  if (!is_floating(t.dtype())) [[unlikely]] not_floating_error(op, t.dtype());
  return kernels_of(t);
}

// Element 0 of t, and t as a strided view. The view points into t's shape and strides: t must
// outlive it (bind temporaries to a name first).
// While a step is being captured (capture.h), every storage a kernel is handed is kept alive for
// the replays, which reuse the pointer (keep_for_capture).
inline void* mem(const Storage& s) {  // a saved output's whole storage (tg::SavedOutputStorage)
  if (kern::any_thread_recording()) [[unlikely]] keep_for_capture(s);
  return s.data();
}
inline void* mem(const Tensor& t) {
  if (kern::any_thread_recording()) [[unlikely]]
    if (const TensorImpl* i = t.impl(); i && i->storage) keep_for_capture(*i->storage);
  return t.raw_data();
}
inline kern::View view_of(const Tensor& t) { return {mem(t), t.shape().begin(), t.strides().begin(), t.dim()}; }

// A window of t as a strided view: `sizes` and `strides` (elements) from element `offset` past t's
// first element. They must outlive the view, and the window must lie inside t (the caller checks).
inline kern::View window_view_of(const Tensor& t, const Shape& sizes, const Strides& strides, int64_t offset) {
  return {static_cast<char*>(mem(t)) + offset * static_cast<int64_t>(dtype_size(t.dtype())), sizes.begin(),
          strides.begin(), sizes.size()};
}

inline size_t nbytes_of(const Tensor& t) { return static_cast<size_t>(t.numel()) * dtype_size(t.dtype()); }
// The bytes of a contiguous tensor copied out to / in from plain memory (serialisation, MPI buffers).
inline void copy_bytes_out(const Tensor& contiguous, void* dst) {
  kernels_of(contiguous).elementwise->copy_bytes(dst, mem(contiguous), nbytes_of(contiguous));
}
inline void copy_bytes_in(const Tensor& contiguous, const void* src) {
  kernels_of(contiguous).elementwise->copy_bytes(mem(contiguous), src, nbytes_of(contiguous));
}

}  // namespace tg::detail
