// CPU selection and sampling kernels: topk along rows, its gradient's inverse index, multinomial.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <type_traits>
#include <vector>

#include "tapegrad/kernels/cpu.h"

namespace tg::kern::cpu {
namespace {

// a above b in topk's order: NaN above every number (PyTorch), otherwise numeric.
template <class T> bool above(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    const bool an = std::isnan(a), bn = std::isnan(b);
    if (an || bn) return an && !bn;
  }
  return a > b;
}

template <class T>
void topk_rows_kernel(const void* x_p, int64_t rows, int64_t n, int64_t k, bool largest, bool sorted, void* values_p,
                      int64_t* index) {
  const T* x = static_cast<const T*>(x_p);
  T* values = static_cast<T*>(values_p);
  std::vector<int64_t> order(static_cast<size_t>(n));
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * n;
    // A strict total order: equal values (and two NaNs) go by position, so ties are deterministic.
    auto first = [&](int64_t i, int64_t j) {
      const T a = largest ? row[i] : row[j], b = largest ? row[j] : row[i];
      if (above(a, b)) return true;
      if (above(b, a)) return false;
      return i < j;
    };
    std::iota(order.begin(), order.end(), int64_t(0));
    if (sorted) {
      std::partial_sort(order.begin(), order.begin() + k, order.end(), first);
    } else {
      if (k < n) std::nth_element(order.begin(), order.begin() + k, order.end(), first);
      std::sort(order.begin(), order.begin() + k);
    }
    for (int64_t j = 0; j < k; ++j) {
      index[r * k + j] = order[j];
      values[r * k + j] = row[order[j]];
    }
  }
}

void invert_rows_kernel(const int64_t* index, int64_t rows, int64_t k, int64_t n, int64_t* inv) {
  std::fill(inv, inv + rows * n, rows * k);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < k; ++j) inv[r * n + index[r * k + j]] = r * k + j;
}

template <class T>
MultinomialStatus multinomial_rows_kernel(const void* probs, int64_t rows, int64_t n, int64_t k, bool replacement,
                                          double (*draw)(), int64_t* out) {
  const T* p = static_cast<const T*>(probs);
  MultinomialStatus st;
  for (int64_t r = 0; r < rows && st.kind == MultinomialStatus::Ok; ++r) {
    double total = 0;
    int64_t nonzero = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double v = static_cast<double>(p[r * n + i]);
      if (!(v >= 0) || std::isinf(v)) {
        st = {MultinomialStatus::BadValue, r, i, v, 0};
        break;
      }
      total += v;
      nonzero += v > 0;
    }
    if (st.kind != MultinomialStatus::Ok) break;
    if (total == 0) st = {MultinomialStatus::ZeroRow, r, -1, 0, 0};
    else if (std::isinf(total)) st = {MultinomialStatus::SumOverflow, r, -1, 0, 0};
    else if (!replacement && nonzero < k) st = {MultinomialStatus::TooFewNonzero, r, -1, 0, nonzero};
  }
  if (st.kind != MultinomialStatus::Ok) return st;

  std::vector<double> cdf(static_cast<size_t>(n));
  std::vector<std::pair<double, int64_t>> keys;
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = p + r * n;
    int64_t* o = out + r * k;
    if (replacement || k == 1) {  // one draw without replacement is one draw with it
      double acc = 0;
      int64_t last_positive = 0;
      for (int64_t i = 0; i < n; ++i) {
        acc += static_cast<double>(row[i]);
        cdf[i] = acc;
        if (row[i] > 0) last_positive = i;
      }
      for (int64_t s = 0; s < k; ++s) {
        // The first position whose cumulative weight exceeds u: its own weight is positive.
        const double u = draw() * acc;
        const int64_t i = std::upper_bound(cdf.begin(), cdf.end(), u) - cdf.begin();
        o[s] = i < n ? i : last_positive;  // u rounded up to the total
      }
      continue;
    }
    // Without replacement: the exponential race (each positive entry draws E / w, E ~ Exp(1));
    // the k smallest keys, in increasing order, are distributed as k sequential draws that each
    // remove what they picked.
    keys.clear();
    for (int64_t i = 0; i < n; ++i) {
      const double u = draw();
      if (row[i] > 0) keys.emplace_back(-std::log1p(-u) / static_cast<double>(row[i]), i);
    }
    std::partial_sort(keys.begin(), keys.begin() + k, keys.end());
    for (int64_t s = 0; s < k; ++s) o[s] = keys[s].second;
  }
  return st;
}

template <class T> constexpr SelectKernels make_select() {
  SelectKernels k{};
  k.topk_rows = &topk_rows_kernel<T>;
  k.invert_rows = &invert_rows_kernel;
  if constexpr (std::is_floating_point_v<T>) k.multinomial_rows = &multinomial_rows_kernel<T>;
  return k;
}

}  // namespace

constinit const SelectKernels kSelectF32 = make_select<float>();
constinit const SelectKernels kSelectF64 = make_select<double>();
constinit const SelectKernels kSelectI64 = make_select<int64_t>();

}  // namespace tg::kern::cpu
