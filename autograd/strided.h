#pragma once
// Internal: loops over strided (possibly broadcast, stride 0) layouts in row-major order of
// `shape`. The innermost dimension is handed to the callback as one run so it can vectorise.
#include <cstdint>

#include "autograd/shape.h"

namespace tg::detail {

// f(offsets[N], n_inner, inner_strides[N]) for each run of the innermost dim.
template <int N, class F>
void for_each_run(const Shape& shape, const Strides* const (&strides)[N], const int64_t (&base)[N], F&& f) {
  const int64_t rank = shape.size();
  int64_t off[N];
  for (int k = 0; k < N; ++k) off[k] = base[k];
  if (shape.numel() == 0) return;
  if (rank == 0) {
    int64_t inner[N] = {};
    f(off, int64_t(1), inner);
    return;
  }
  const int64_t last = rank - 1;
  int64_t inner[N];
  for (int k = 0; k < N; ++k) inner[k] = (*strides[k])[last];
  int64_t idx[kMaxRank] = {};
  const int64_t outer = shape.numel() / shape[last];
  for (int64_t o = 0; o < outer; ++o) {
    f(off, shape[last], inner);
    for (int64_t d = last - 1; d >= 0; --d) {  // odometer increment over the outer dims
      ++idx[d];
      for (int k = 0; k < N; ++k) off[k] += (*strides[k])[d];
      if (idx[d] < shape[d]) break;
      for (int k = 0; k < N; ++k) off[k] -= (*strides[k])[d] * shape[d];
      idx[d] = 0;
    }
  }
}

// Strides of `s` (a tensor of shape `from` with strides `st`) broadcast to `to`: 0 for new or size-1 dims.
inline Strides broadcast_strides(const Shape& from, const Strides& st, const Shape& to) {
  Strides out;
  out.resize(to.size());
  const int64_t lead = to.size() - from.size();
  for (int64_t i = 0; i < to.size(); ++i) {
    int64_t j = i - lead;
    out[i] = (j < 0 || from[j] == 1) ? 0 : st[j];
  }
  return out;
}

}  // namespace tg::detail
