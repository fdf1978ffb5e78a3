// CPU reductions: sums over dims, row maxima, softmax rows, column sums, the fused losses and
// the gradient norms of clip_grad_*.
#include <algorithm>
#include <cmath>
#include <type_traits>
#include <vector>

#include "tapegrad/kernels/cpu.h"
#include "tapegrad/kernels/parallel.h"
#include "tapegrad/kernels/strided.h"
#include "tapegrad/kernels/vmath.h"

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

template <class T> void column_sums_kernel(const void* d_p, int64_t rows, int64_t cols, int64_t ld, void* out) {
  const T* d = static_cast<const T*>(d_p);
  T* o = static_cast<T*>(out);
  for (int64_t j = 0; j < cols; ++j) o[j] = T(0);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < cols; ++j) o[j] += d[r * ld + j];
}

template <class T> T softplus_neg(T v) { return (v < 0 ? -v : T(0)) + std::log1p(std::exp(-std::abs(v))); }

template <class T>
void bce_kernel(const void* x_p, const void* y_p, const void* pw_p, const void* w_p, void* per, int64_t n, void* total,
                double scale) {
  const T *px = static_cast<const T*>(x_p), *py = static_cast<const T*>(y_p);
  const T *pw = static_cast<const T*>(pw_p), *w = static_cast<const T*>(w_p);
  T* o = static_cast<T*>(per);
  double acc = 0;
  for (int64_t i = 0; i < n; ++i) {
    const T v = px[i], y = py[i];
    const T l = pw ? T(1) + (pw[i] - T(1)) * y : T(1);
    T loss = (T(1) - y) * v + l * softplus_neg(v);
    if (w) loss *= w[i];
    o[i] = loss;
    acc += loss;
  }
  if (total) *static_cast<T*>(total) = static_cast<T>(acc * scale);
}

template <class T>
void bce_backward_kernel(const void* x_p, const void* y_p, const void* pw_p, const void* w_p, const void* g_p,
                         void* out, int64_t n, double scale, bool per_element, bool wrt_logits) {
  const T *px = static_cast<const T*>(x_p), *py = static_cast<const T*>(y_p), *pg = static_cast<const T*>(g_p);
  const T *pw = static_cast<const T*>(pw_p), *w = static_cast<const T*>(w_p);
  T* o = static_cast<T*>(out);
  for (int64_t i = 0; i < n; ++i) {
    T gi = static_cast<T>(scale) * (per_element ? pg[i] : pg[0]);
    if (w) gi *= w[i];
    const T v = px[i], y = py[i];
    if (wrt_logits) {
      const T l = pw ? T(1) + (pw[i] - T(1)) * y : T(1);
      o[i] = gi * ((T(1) - y) - l / (T(1) + std::exp(v)));  // sigmoid(-v): exp(v) = inf gives 0
    } else {
      o[i] = gi * (pw ? -v + (pw[i] - T(1)) * softplus_neg(v) : -v);
    }
  }
}

template <class T>
double nll_rows_kernel(const View& lp, const int64_t* t, const void* w_p, int64_t ignore_index, double smoothing,
                       void* out, double* weight_sum) {
  const T* p = static_cast<const T*>(lp.data);
  const T* w = static_cast<const T*>(w_p);
  T* o = static_cast<T*>(out);
  const int64_t R = lp.sizes[0], C = lp.sizes[1], sr = lp.strides[0], sc = lp.strides[1];
  const double picked_share = 1.0 - smoothing, spread = C ? smoothing / static_cast<double>(C) : 0.0;
  double total = 0, wsum = 0;
  for (int64_t r = 0; r < R; ++r) {
    if (t[r] == ignore_index) {
      o[r] = T(0);
      continue;
    }
    const T* row = p + r * sr;
    const double wt = w ? static_cast<double>(w[t[r]]) : 1.0;
    double loss = -picked_share * wt * static_cast<double>(row[t[r] * sc]);
    if (smoothing != 0) {
      double s = 0;
      for (int64_t c = 0; c < C; ++c) s += (w ? static_cast<double>(w[c]) : 1.0) * static_cast<double>(row[c * sc]);
      loss -= spread * s;
    }
    o[r] = static_cast<T>(loss);
    total += o[r];
    wsum += wt;
  }
  *weight_sum = wsum;
  return total;
}

template <class T>
void nll_rows_backward_kernel(const int64_t* t, const void* w_p, const void* g_p, int64_t R, int64_t C,
                              int64_t ignore_index, double smoothing, double scale, bool per_element, void* out) {
  const T* w = static_cast<const T*>(w_p);
  const T* pg = static_cast<const T*>(g_p);
  T* o = static_cast<T*>(out);
  const double spread = C ? smoothing / static_cast<double>(C) : 0.0;
  for (int64_t r = 0; r < R; ++r) {
    T* row = o + r * C;
    if (t[r] == ignore_index) {
      for (int64_t c = 0; c < C; ++c) row[c] = T(0);
      continue;
    }
    const double gr = -scale * static_cast<double>(per_element ? pg[r] : pg[0]);
    for (int64_t c = 0; c < C; ++c) row[c] = static_cast<T>(gr * spread * (w ? static_cast<double>(w[c]) : 1.0));
    const double wt = w ? static_cast<double>(w[t[r]]) : 1.0;
    row[t[r]] = static_cast<T>(gr * ((1.0 - smoothing) * wt + spread * wt));
  }
}

template <class T> double norm_accumulate_serial(const T* d, int64_t n, double norm_type, double acc);

// The 2-norm's squares summed into eight lanes: element i of the first n & ~7 goes to lane i % 8,
// the rest to lane 0, each lane in index order. Eight independent sums let the loop vectorise (one
// running sum cannot be reordered). Shared by the dense norm and the row-restricted one below.
template <class T> TG_ONE_BODY void sum_squares(const T* d, int64_t n, double* lanes) {
  double part[8];
  for (int k = 0; k < 8; ++k) part[k] = lanes[k];
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int k = 0; k < 8; ++k) part[k] += static_cast<double>(d[i + k]) * static_cast<double>(d[i + k]);
  for (; i < n; ++i) part[0] += static_cast<double>(d[i]) * static_cast<double>(d[i]);
  for (int k = 0; k < 8; ++k) lanes[k] = part[k];
}

// Long inputs are cut into blocks of a fixed size whatever the thread count; the blocks' sums are
// added in order, so the norm (and a clipped update) is the same bits on 1 thread or many.
constexpr int64_t kNormBlock = int64_t{1} << 16;

template <class T> double norm_accumulate_kernel(const void* x, int64_t n, double norm_type, double acc) {
  const T* d = static_cast<const T*>(x);
  if (n <= kNormBlock || std::isinf(norm_type)) return norm_accumulate_serial(d, n, norm_type, acc);
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> sums(static_cast<size_t>(blocks));
  parallel_for(blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k)
      sums[k] = norm_accumulate_serial(d + k * kNormBlock, std::min(kNormBlock, n - k * kNormBlock), norm_type, 0.0);
  });
  for (double s : sums) acc += s;
  return acc;
}

template <class T> double norm_accumulate_serial(const T* d, int64_t n, double norm_type, double acc) {
  if (std::isinf(norm_type)) {
    // A NaN must stick, as in PyTorch's max, so the caller sees it in the returned norm.
    for (int64_t i = 0; i < n; ++i) {
      const double a = std::abs(static_cast<double>(d[i]));
      if (acc == acc && !(a <= acc)) acc = a;
    }
  } else if (norm_type == 2.0) {
    double part[8] = {};
    sum_squares(d, n, part);
    for (double p : part) acc += p;
  } else if (norm_type == 1.0) {
    for (int64_t i = 0; i < n; ++i) acc += std::abs(static_cast<double>(d[i]));
  } else {
    for (int64_t i = 0; i < n; ++i) acc += std::pow(std::abs(static_cast<double>(d[i])), norm_type);
  }
  return acc;
}

// One block [b0, b0 + m) of a row-sparse x, summed as norm_accumulate_serial(x + b0, m, 2, acc)
// sums it. Rows of L elements outside the ascending [r, end) are +0, and adding +0 * +0 to a lane
// changes nothing, so only the 8-aligned spans around the listed rows are read (each element once,
// in the same lane and order as the dense sum), then the tail the dense sum sends to lane 0.
template <class T>
double norm2_block_rows(const T* d, int64_t b0, int64_t m, int64_t L, const int64_t* r, const int64_t* end,
                        double acc) {
  double part[8] = {};
  const int64_t main = m & ~int64_t{7};
  int64_t lo = -1, hi = -1;  // the span waiting to be read, relative to b0
  for (; r != end; ++r) {
    int64_t s = *r * L - b0, e = s + L;
    if (s >= m) break;
    if (end - r > kRowsAhead) {  // the listed rows are scattered and cold (cpu.h)
      const int64_t next = r[kRowsAhead] * L - b0, from = std::max<int64_t>(next, 0), to = std::min(next + L, m);
      if (from < to) prefetch_bytes(d + b0 + from, static_cast<size_t>(to - from) * sizeof(T));
    }
    s = std::max<int64_t>(s, 0) & ~int64_t{7};
    e = (std::min(e, main) + 7) & ~int64_t{7};
    if (s >= e) continue;  // only in the tail
    if (s <= hi) {         // rows ascend, so spans only overlap the one before
      hi = std::max(hi, e);
    } else {
      if (hi > lo) sum_squares(d + b0 + lo, hi - lo, part);
      lo = s;
      hi = e;
    }
  }
  if (hi > lo) sum_squares(d + b0 + lo, hi - lo, part);
  if (m > main) sum_squares(d + b0 + main, m - main, part);
  for (double p : part) acc += p;
  return acc;
}

template <class T>
double norm2_rows_kernel(const void* x, int64_t n, int64_t L, const int64_t* rows, int64_t nrows, double acc) {
  const T* d = static_cast<const T*>(x);
  const int64_t* end = rows + nrows;
  if (n <= kNormBlock) return norm2_block_rows(d, 0, n, L, rows, end, acc);
  // The dense kernel's blocks; one without a listed row sums to +0 there too.
  const int64_t blocks = (n + kNormBlock - 1) / kNormBlock;
  std::vector<double> sums(static_cast<size_t>(blocks), 0.0);
  parallel_for(blocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t k = b; k < e; ++k) {
      const int64_t b0 = k * kNormBlock, m = std::min(kNormBlock, n - b0);
      const int64_t* first = std::lower_bound(rows, end, b0 / L);
      if (first != end && *first * L < b0 + m) sums[k] = norm2_block_rows(d, b0, m, L, first, end, 0.0);
    }
  });
  for (double s : sums) acc += s;
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
    k.nll_rows = &nll_rows_kernel<T>;
    k.nll_rows_backward = &nll_rows_backward_kernel<T>;
    k.norm_accumulate = &norm_accumulate_kernel<T>;
    k.norm2_rows = &norm2_rows_kernel<T>;
    k.clamp_abs = &clamp_abs_kernel<T>;
  }
  return k;
}

}  // namespace

constinit const ReduceKernels kReduceF32 = make_reduce<float>();
constinit const ReduceKernels kReduceF64 = make_reduce<double>();
constinit const ReduceKernels kReduceI64 = make_reduce<int64_t>();

}  // namespace tg::kern::cpu
