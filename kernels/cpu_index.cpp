// CPU gather / scatter kernels: index_select, embedding and their adjoints, max's backward.
#include <cstring>
#include <type_traits>

#include "tapegrad/kernels/cpu.h"

namespace tg::kern::cpu {
namespace {

template <class T>
void gather_kernel(const void* src_p, void* dst_p, int64_t outer, int64_t n, int64_t src_n, int64_t inner,
                   const int64_t* ix) {
  const T* src = static_cast<const T*>(src_p);
  T* dst = static_cast<T*>(dst_p);
  const size_t row_bytes = static_cast<size_t>(inner) * sizeof(T);
  if (row_bytes == 0) return;
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < n; ++i) {
      if (i + kRowsAhead < n) prefetch_bytes(src + (o * src_n + ix[i + kRowsAhead]) * inner, row_bytes);
      std::memcpy(dst + (o * n + i) * inner, src + (o * src_n + ix[i]) * inner, row_bytes);
    }
}

template <class T>
void scatter_add_kernel(const void* src_p, void* dst_p, int64_t outer, int64_t n, int64_t dst_n, int64_t inner,
                        const int64_t* ix, int64_t skip) {
  const T* src = static_cast<const T*>(src_p);
  T* dst = static_cast<T*>(dst_p);
  for (int64_t o = 0; o < outer; ++o)
    for (int64_t i = 0; i < n; ++i) {
      if (i + kRowsAhead < n && ix[i + kRowsAhead] != skip)
        prefetch_bytes<1>(dst + (o * dst_n + ix[i + kRowsAhead]) * inner, static_cast<size_t>(inner) * sizeof(T));
      if (ix[i] == skip) continue;
      T* row = dst + (o * dst_n + ix[i]) * inner;
      const T* srow = src + (o * n + i) * inner;
      for (int64_t k = 0; k < inner; ++k) row[k] += srow[k];
    }
}

template <class T>
void scatter_to_argmax_kernel(const void* g_p, const int64_t* ix, void* out_p, const int64_t* keep,
                              const int64_t* out_strides, int64_t rank, int64_t dim) {
  // Walk the reduced positions; each sends its gradient to its argmax along dim.
  const T* pg = static_cast<const T*>(g_p);
  T* po = static_cast<T*>(out_p);
  int64_t count = 1;
  for (int64_t j = 0; j < rank; ++j) count *= keep[j];
  const int64_t inner = out_strides[dim];
  for (int64_t k = 0; k < count; ++k) {
    int64_t off = 0, rem = k;
    for (int64_t j = rank - 1; j >= 0; --j) {
      off += (rem % keep[j]) * out_strides[j];
      rem /= keep[j];
    }
    po[off + ix[k] * inner] += pg[k];
  }
}

int64_t first_out_of_range_kernel(const int64_t* ix, int64_t n, int64_t limit, const int64_t* skip, int64_t* kept,
                                  int64_t* value) {
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (skip && ix[i] == *skip) continue;
    if (ix[i] < 0 || ix[i] >= limit) {
      *value = ix[i];
      return i;
    }
    ++count;
  }
  if (kept) *kept = count;
  return -1;
}

template <class T> constexpr IndexKernels make_index() {
  IndexKernels k{};
  k.gather = &gather_kernel<T>;
  k.scatter_add = &scatter_add_kernel<T>;
  k.scatter_to_argmax = &scatter_to_argmax_kernel<T>;
  if constexpr (std::is_same_v<T, int64_t>) k.first_out_of_range = &first_out_of_range_kernel;
  return k;
}

}  // namespace

constinit const IndexKernels kIndexF32 = make_index<float>();
constinit const IndexKernels kIndexF64 = make_index<double>();
constinit const IndexKernels kIndexI64 = make_index<int64_t>();

}  // namespace tg::kern::cpu
