#pragma once
// Internal to the CPU kernels: loops over strided (possibly broadcast, stride 0) layouts in
// row-major order of a shape. The innermost dimension is handed to the callback as one run so
// it can vectorise.
#include <cstdint>

#include "tapegrad/kernels/kernels.h"

namespace tg::kern::cpu {

// f(offsets[N], n_inner, inner_strides[N]) for each run of the innermost dim of `sizes`.
template <int N, class F>
void for_each_run(int64_t rank, const int64_t* sizes, const int64_t* const (&strides)[N], F&& f) {
  int64_t off[N] = {};
  int64_t total = 1;
  for (int64_t d = 0; d < rank; ++d) total *= sizes[d];
  if (total == 0) return;
  if (rank == 0) {
    int64_t inner[N] = {};
    f(off, int64_t(1), inner);
    return;
  }
  const int64_t last = rank - 1;
  int64_t inner[N];
  for (int k = 0; k < N; ++k) inner[k] = strides[k][last];
  int64_t idx[kMaxRank] = {};
  const int64_t outer = total / sizes[last];
  for (int64_t o = 0; o < outer; ++o) {
    f(off, sizes[last], inner);
    for (int64_t d = last - 1; d >= 0; --d) {  // odometer increment over the outer dims
      ++idx[d];
      for (int k = 0; k < N; ++k) off[k] += strides[k][d];
      if (idx[d] < sizes[d]) break;
      for (int k = 0; k < N; ++k) off[k] -= strides[k][d] * sizes[d];
      idx[d] = 0;
    }
  }
}

// The strides of `from` broadcast to a shape of rank to_rank: 0 for new or size-1 dims.
inline void broadcast_strides(const View& from, int64_t to_rank, int64_t* out) {
  const int64_t lead = to_rank - from.rank;
  for (int64_t i = 0; i < to_rank; ++i) {
    const int64_t j = i - lead;
    out[i] = (j < 0 || from.sizes[j] == 1) ? 0 : from.strides[j];
  }
}

}  // namespace tg::kern::cpu
