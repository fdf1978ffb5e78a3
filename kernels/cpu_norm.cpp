// CPU layer normalisation: forward and backward row by row, arithmetic in double.
#include <cmath>
#include <vector>

#include "tapegrad/kernels/cpu.h"

namespace tg::kern::cpu {
namespace {

template <class T>
void layer_norm_kernel(const void* x_p, const void* w_p, const void* b_p, int64_t rows, int64_t m, double eps,
                       void* y_p, void* mean_p, void* rstd_p) {
  const T *x = static_cast<const T*>(x_p), *w = static_cast<const T*>(w_p), *b = static_cast<const T*>(b_p);
  T* y = static_cast<T*>(y_p);
  double *mean = static_cast<double*>(mean_p), *rstd = static_cast<double*>(rstd_p);
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * m;
    T* yr = y + r * m;
    // Two passes (mean, then squared deviations): no cancellation when |mean| >> std.
    double mu = 0, var = 0;
    for (int64_t i = 0; i < m; ++i) mu += static_cast<double>(xr[i]);
    mu /= static_cast<double>(m);
    for (int64_t i = 0; i < m; ++i) {
      const double d = static_cast<double>(xr[i]) - mu;
      var += d * d;
    }
    var /= static_cast<double>(m);
    const double rs = 1.0 / std::sqrt(var + eps);
    mean[r] = mu;
    rstd[r] = rs;
    // In double: float32's rounding of the mean alone would cost digits when |mean| >> std.
    for (int64_t i = 0; i < m; ++i) {
      double v = (static_cast<double>(xr[i]) - mu) * rs;
      if (w) v *= static_cast<double>(w[i]);
      if (b) v += static_cast<double>(b[i]);
      yr[i] = static_cast<T>(v);
    }
  }
}

template <class T>
void layer_norm_backward_kernel(const void* x_p, const void* g_p, const void* w_p, const void* mean_p,
                                const void* rstd_p, int64_t rows, int64_t m, void* dx_p, void* dw_p, void* db_p) {
  const T *x = static_cast<const T*>(x_p), *g = static_cast<const T*>(g_p), *w = static_cast<const T*>(w_p);
  const double *mean = static_cast<const double*>(mean_p), *rstd = static_cast<const double*>(rstd_p);
  T *dx = static_cast<T*>(dx_p), *dw = static_cast<T*>(dw_p), *db = static_cast<T*>(db_p);
  std::vector<double> acc_w(dw ? m : 0, 0.0), acc_b(db ? m : 0, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const T *xr = x + r * m, *gr = g + r * m;
    const double mu = mean[r], rs = rstd[r];
    double sum_d = 0, sum_dx = 0;  // sums of dxhat and of dxhat * xhat over the row
    for (int64_t i = 0; i < m; ++i) {
      const double xhat = (static_cast<double>(xr[i]) - mu) * rs, gi = static_cast<double>(gr[i]);
      const double d = w ? gi * static_cast<double>(w[i]) : gi;
      sum_d += d;
      sum_dx += d * xhat;
      if (dw) acc_w[i] += gi * xhat;
      if (db) acc_b[i] += gi;
    }
    if (!dx) continue;
    // dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))
    const double md = sum_d / static_cast<double>(m), mdx = sum_dx / static_cast<double>(m);
    T* o = dx + r * m;
    for (int64_t i = 0; i < m; ++i) {
      const double xhat = (static_cast<double>(xr[i]) - mu) * rs, gi = static_cast<double>(gr[i]);
      const double d = w ? gi * static_cast<double>(w[i]) : gi;
      o[i] = static_cast<T>(rs * (d - md - xhat * mdx));
    }
  }
  for (int64_t i = 0; dw && i < m; ++i) dw[i] = static_cast<T>(acc_w[i]);
  for (int64_t i = 0; db && i < m; ++i) db[i] = static_cast<T>(acc_b[i]);
}

template <class T> constexpr NormKernels make_norm() {
  NormKernels k{};
  k.layer_norm = &layer_norm_kernel<T>;
  k.layer_norm_backward = &layer_norm_backward_kernel<T>;
  return k;
}

}  // namespace

constinit const NormKernels kNormF32 = make_norm<float>();
constinit const NormKernels kNormF64 = make_norm<double>();

}  // namespace tg::kern::cpu
