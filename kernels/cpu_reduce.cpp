// CPU reductions: sums over dims, row maxima, softmax rows, column sums, the fused losses and
// the gradient norms of clip_grad_*.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "kernels/cpu.h"
#include "kernels/strided.h"
#include "kernels/vmath.h"

namespace tg::kern::cpu {
namespace {

// Sums x into a zeroed contiguous tensor of sizes keep (x's rank), walking x in memory order.
template <class T> void sum_kernel(const View& x, void* out_p, const int64_t* keep) {
  T* po = static_cast<T*>(out_p);
  const T* px = static_cast<const T*>(x.data);
  int64_t out_n = 1;
  for (int64_t d = 0; d < x.rank; ++d) out_n *= keep[d];
  for (int64_t i = 0; i < out_n; ++i) po[i] = T(0);
  if (out_n == 1) {  // full reduction: accumulate in double for float32 accuracy
    using Acc = std::conditional_t<std::is_floating_point_v<T>, double, T>;
    Acc acc = 0;
    const int64_t* st[1] = {x.strides};
    for_each_run<1>(x.rank, x.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
      for (int64_t i = 0; i < len; ++i) acc += px[off[0] + i * in[0]];
    });
    po[0] = static_cast<T>(acc);
    return;
  }
  // The output's strides broadcast to x: contiguous strides of keep, 0 along reduced dims.
  int64_t so[kMaxRank];
  for (int64_t d = x.rank - 1, acc = 1; d >= 0; --d) {
    so[d] = keep[d] == 1 ? 0 : acc;
    acc *= keep[d];
  }
  const int64_t* st[2] = {x.strides, so};
  for_each_run<2>(x.rank, x.sizes, st, [&](const int64_t* off, int64_t len, const int64_t* in) {
    const T* a = px + off[0];
    T* o = po + off[1];
    if (in[1] == 0) {
      T acc = 0;
      for (int64_t i = 0; i < len; ++i) acc += a[i * in[0]];
      *o += acc;
    } else if (in[0] == 1 && in[1] == 1) {
      for (int64_t i = 0; i < len; ++i) o[i] += a[i];
    } else {
      for (int64_t i = 0; i < len; ++i) o[i * in[1]] += a[i * in[0]];
    }
  });
}

template <class T> void max_rows_kernel(const void* x, int64_t rows, int64_t n, void* values, int64_t* index) {
  const T* p = static_cast<const T*>(x);
  T* v = static_cast<T*>(values);
  for (int64_t r = 0; r < rows; ++r) {
    // The first maximum; a NaN is the maximum (PyTorch), so max(x) and max(x, dim) agree.
    const T* row = p + r * n;
    int64_t best = 0;
    for (int64_t i = 1; i < n; ++i)
      if (row[i] > row[best] || (std::isnan(static_cast<double>(row[i])) && !std::isnan(static_cast<double>(row[best]))))
        best = i;
    if (v) v[r] = row[best];
    index[r] = best;
  }
}

template <class T> void softmax_rows_kernel(const void* x, void* y, int64_t rows, int64_t n) {
  const T* p = static_cast<const T*>(x);
  T* o = static_cast<T*>(y);
  for (int64_t r = 0; r < rows; ++r) {
    const T* in = p + r * n;
    T* out = o + r * n;
    T m = in[0];
    for (int64_t i = 1; i < n; ++i) m = in[i] > m ? in[i] : m;
    T total = 0;
    for (int64_t i = 0; i < n; ++i) total += (out[i] = vmath::exp(in[i] - m));
    for (int64_t i = 0; i < n; ++i) out[i] /= total;
  }
}

template <class T> void column_sums_kernel(const void* d_p, int64_t rows, int64_t cols, void* out) {
  const T* d = static_cast<const T*>(d_p);
  T* o = static_cast<T*>(out);
  for (int64_t j = 0; j < cols; ++j) o[j] = T(0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) o[j] += d[r * cols + j];
}

template <class T> double bce_kernel(const void* x_p, const void* y_p, void* per, int64_t n) {
  const T *px = static_cast<const T*>(x_p), *py = static_cast<const T*>(y_p);
  T* o = static_cast<T*>(per);
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T v = px[i];  // never exponentiates a large positive number
    o[i] = (v > 0 ? v : T(0)) - v * py[i] + std::log1p(std::exp(-std::abs(v)));
    acc += o[i];
  }
  return acc;
}

template <class T>
void bce_backward_kernel(const void* x_p, const void* y_p, const void* g_p, void* out, int64_t n, double scale,
                         bool per_element, bool wrt_logits) {
  const T *px = static_cast<const T*>(x_p), *py = static_cast<const T*>(y_p), *pg = static_cast<const T*>(g_p);
  T* o = static_cast<T*>(out);
  for (int64_t i = 0; i < n; ++i) {
    const T gi = static_cast<T>(scale) * (per_element ? pg[i] : pg[0]);
    o[i] = gi * (wrt_logits ? T(1) / (T(1) + std::exp(-px[i])) - py[i] : -px[i]);
  }
}

template <class T> void nll_pick_kernel(const View& lp, const int64_t* t, int64_t ignore_index, void* out) {
  const T* p = static_cast<const T*>(lp.data);
  T* o = static_cast<T*>(out);
  for (int64_t i = 0; i < lp.sizes[0]; ++i)
    if (t[i] != ignore_index) o[i] = -p[i * lp.strides[0] + t[i] * lp.strides[1]];
}

template <class T>
void nll_backward_kernel(const int64_t* t, const void* g_p, void* out, int64_t N, int64_t C, int64_t ignore_index,
                         double scale, bool per_element) {
  const T* pg = static_cast<const T*>(g_p);
  T* o = static_cast<T*>(out);
  for (int64_t i = 0; i < N; ++i)
    if (t[i] != ignore_index) o[i * C + t[i]] = -static_cast<T>(scale) * (per_element ? pg[i] : pg[0]);
}

template <class T> double norm_accumulate_kernel(const void* x, int64_t n, double norm_type, double acc) {
  const T* d = static_cast<const T*>(x);
  if (std::isinf(norm_type)) {
    // A NaN must stick, as in PyTorch's max, so the caller sees it in the returned norm.
    for (int64_t i = 0; i < n; ++i) {
      const double a = std::abs(static_cast<double>(d[i]));
      if (acc == acc && !(a <= acc)) acc = a;
    }
  } else if (norm_type == 2.0) {
    // Eight independent partial sums: the loop vectorises (one running sum cannot be reordered).
    double part[8] = {};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
      for (int k = 0; k < 8; ++k) part[k] += static_cast<double>(d[i + k]) * static_cast<double>(d[i + k]);
    for (; i < n; ++i) part[0] += static_cast<double>(d[i]) * static_cast<double>(d[i]);
    for (double p : part) acc += p;
  } else if (norm_type == 1.0) {
    for (int64_t i = 0; i < n; ++i) acc += std::abs(static_cast<double>(d[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) acc += std::pow(std::abs(static_cast<double>(d[i])), norm_type);
  }
  return acc;
}

template <class T> double clamp_abs_kernel(void* x, int64_t n, double limit, double max_abs) {
  T* d = static_cast<T*>(x);
  const T hi = static_cast<T>(limit), lo = -hi;
  for (int64_t i = 0; i < n; ++i) {
    const double a = std::abs(static_cast<double>(d[i]));
    if (max_abs == max_abs && !(a <= max_abs)) max_abs = a;
    d[i] = std::clamp(d[i], lo, hi);
  }
  return max_abs;
}

template <class T> constexpr ReduceKernels make_reduce() {
  ReduceKernels k{};
  k.sum = &sum_kernel<T>;
  k.max_rows = &max_rows_kernel<T>;
  if constexpr (std::is_floating_point_v<T>) {
    k.softmax_rows = &softmax_rows_kernel<T>;
    k.column_sums = &column_sums_kernel<T>;
    k.bce_with_logits = &bce_kernel<T>;
    k.bce_with_logits_backward = &bce_backward_kernel<T>;
    k.nll_pick = &nll_pick_kernel<T>;
    k.nll_backward = &nll_backward_kernel<T>;
    k.norm_accumulate = &norm_accumulate_kernel<T>;
    k.clamp_abs = &clamp_abs_kernel<T>;
  }
  return k;
}

}  // namespace

constinit const ReduceKernels kReduceF32 = make_reduce<float>();
constinit const ReduceKernels kReduceF64 = make_reduce<double>();
constinit const ReduceKernels kReduceI64 = make_reduce<int64_t>();

}  // namespace tg::kern::cpu
