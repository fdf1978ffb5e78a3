// CPU optimizer updates (optim/*.cpp call them through the table): one pass over each parameter,
// its gradient and its state, nothing allocated. Scalars are rounded to T where PyTorch hands
// them to its kernels as Python floats, so the updates match PyTorch's bit for bit in float64.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tapegrad/kernels/cpu.h"
#include "tapegrad/kernels/parallel.h"
#include "tapegrad/kernels/sqrt_loop.h"

namespace tg::kern::cpu {
namespace {

// Elements per thread at least: an update is ~20 flops an element, so a part runs >= ~10 us.
constexpr int64_t kUpdateGrain = int64_t{1} << 15;

// The update loops are shared by the dense entries and the row-sparse ones (TG_ONE_BODY).
template <class T>
TG_ONE_BODY void sgd_kernel(T* p, const T* g, T* buf, int64_t n, bool first, double lr_, double wd_, double mom_,
                double damp_, bool nesterov) {
  // Scalars are rounded to T first, as PyTorch does when it passes them as `alpha`.
  const T lr = static_cast<T>(lr_), wd = static_cast<T>(wd_), mom = static_cast<T>(mom_);
  const T keep = static_cast<T>(1.0 - damp_);
  const bool decay = wd_ != 0, use_mom = mom_ != 0;
  for (int64_t i = 0; i < n; ++i) {
    T d = g[i];
    if (decay) d = d + wd * p[i];
    if (use_mom) {
      buf[i] = first ? d : buf[i] * mom + keep * d;
      d = nesterov ? d + mom * buf[i] : buf[i];
    }
    p[i] = p[i] + (-lr) * d;
  }
}

template <class T, bool l2, bool decoupled, bool amsgrad>
TG_ONE_BODY void adam_kernel(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, const AdamScalars& s) {
  // Each scalar is rounded to T where PyTorch hands it to a kernel as a Python float; the
  // bias corrections themselves are computed in double, as PyTorch does in Python.
  const T decay = static_cast<T>(1.0 - s.lr * s.wd), wd = static_cast<T>(s.wd);
  const T b1 = static_cast<T>(s.beta1), b2 = static_cast<T>(s.beta2);
  const T one_b1 = static_cast<T>(1.0 - s.beta1), one_b2 = static_cast<T>(1.0 - s.beta2);
  const T bc2 = static_cast<T>(s.bc2_sqrt), eps = static_cast<T>(s.eps), neg_step = static_cast<T>(-s.step_size);
  sqrt_loop<T>(
      n,
      [&](int64_t i) {
        T gi = g[i];
        if constexpr (l2) gi = gi + wd * p[i];
        if constexpr (decoupled) p[i] = p[i] * decay;
        const T mi = m[i] * b1 + one_b1 * gi;
        const T vi = v[i] * b2 + one_b2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        if constexpr (amsgrad) {
          // Like torch.maximum, a NaN in either operand propagates.
          const T mx = (vmax[i] < vi || vi != vi) ? vi : vmax[i];
          vmax[i] = mx;
          return mx;
        } else {
          return vi;
        }
      },
      [&](int64_t i, T root) { p[i] = p[i] + neg_step * m[i] / (root / bc2 + eps); });
}

// The gradient with L2 weight decay folded in; recomputed after a block's square roots rather
// than stored (Adagrad, RMSprop).
template <bool decay, class T>
inline T decayed_grad(const T* g, const T* p, T wd, int64_t i) {
  if constexpr (decay) return g[i] + wd * p[i];
  else return g[i];
}

template <class T, bool decay>
void adagrad_kernel(T* p, const T* g, T* sum, int64_t n, double clr_, double wd_, double eps_) {
  const T neg_clr = static_cast<T>(-clr_), wd = static_cast<T>(wd_), eps = static_cast<T>(eps_);
  const auto grad = [&](int64_t i) { return decayed_grad<decay>(g, p, wd, i); };
  sqrt_loop<T>(
      n,
      [&](int64_t i) {
        const T gi = grad(i);
        return sum[i] = sum[i] + gi * gi;
      },
      [&](int64_t i, T root) { p[i] = p[i] + neg_clr * grad(i) / (root + eps); });
}

template <class T, bool decay, bool centered, bool use_momentum>
void rmsprop_kernel(T* p, const T* g, T* sq, T* buf, T* ga, int64_t n, double lr_, double wd_, double alpha_,
                    double eps_, double mom_) {
  const T lr = static_cast<T>(lr_), wd = static_cast<T>(wd_), alpha = static_cast<T>(alpha_);
  const T one_alpha = static_cast<T>(1.0 - alpha_), eps = static_cast<T>(eps_), mom = static_cast<T>(mom_);
  const auto grad = [&](int64_t i) { return decayed_grad<decay>(g, p, wd, i); };
  sqrt_loop<T>(
      n,
      [&](int64_t i) {
        const T gi = grad(i);
        const T s = sq[i] * alpha + one_alpha * gi * gi;
        sq[i] = s;
        if constexpr (centered) {
          const T a = ga[i] * alpha + one_alpha * gi;
          ga[i] = a;
          return s + T(-1) * a * a;  // may round below 0: NaN, as in PyTorch
        } else {
          return s;
        }
      },
      [&](int64_t i, T root) {
        const T avg = root + eps;
        if constexpr (use_momentum) {
          buf[i] = buf[i] * mom + grad(i) / avg;
          p[i] = p[i] + (-lr) * buf[i];
        } else {
          p[i] = p[i] + (-lr) * grad(i) / avg;
        }
      });
}

template <class T>
void sgd_entry(void* p, const void* g, void* buf, int64_t n, bool first, double lr, double wd, double mom, double damp,
               bool nesterov) {
  T* pt = static_cast<T*>(p);
  const T* gt = static_cast<const T*>(g);
  T* bt = static_cast<T*>(buf);
  parallel_for(n, kUpdateGrain, [&](int64_t b, int64_t e) {
    sgd_kernel<T>(pt + b, gt + b, bt ? bt + b : nullptr, e - b, first, lr, wd, mom, damp, nesterov);
  });
}

template <class T>
void adam_entry(void* p, const void* g, void* m, void* v, void* vmax, int64_t n, const AdamScalars& s) {
  T *pt = static_cast<T*>(p), *mt = static_cast<T*>(m), *vt = static_cast<T*>(v), *xt = static_cast<T*>(vmax);
  const T* gt = static_cast<const T*>(g);
  with_flags(
      [&](auto l2, auto decoupled, auto amsgrad) {
        parallel_for(n, kUpdateGrain, [&](int64_t b, int64_t e) {
          adam_kernel<T, l2, decoupled, amsgrad>(pt + b, gt + b, mt + b, vt + b, xt ? xt + b : nullptr, e - b, s);
        });
      },
      !s.decoupled && s.wd != 0, s.decoupled, s.amsgrad);
}

// Zeros that stand in for the gradient of the rows a row-sparse gradient leaves +0: the dense
// loop runs on them unchanged (same bits as on the real zeros) without reading gradient memory.
constexpr int64_t kZeroSpan = 2048;
template <class T> constexpr T kZeros[kZeroSpan] = {};

// update(begin, end, g) over the elements [0, n) of rows of L elements, split by rows over the
// team (elements are independent, so any split gives the same bits); g is the gradient at begin
// for runs of listed rows and kZeros for the rest.
template <class T, class Update>
void over_rows(int64_t n, int64_t L, const int64_t* rows, int64_t nrows, const T* g, Update&& update) {
  const int64_t* end = rows + nrows;
  parallel_for(n / L, std::max<int64_t>(1, kUpdateGrain / L), [&](int64_t rb, int64_t re) {
    const int64_t* r = std::lower_bound(rows, end, rb);
    for (int64_t row = rb; row < re;) {
      if (r != end && *r == row) {
        int64_t last = row;
        while (r != end && *r == last && last < re) ++r, ++last;
        update(row * L, last * L, g + row * L);
        row = last;
      } else {
        const int64_t stop = r != end && *r < re ? *r : re;
        for (int64_t b = row * L; b < stop * L; b += kZeroSpan) update(b, std::min(b + kZeroSpan, stop * L), kZeros<T>);
        row = stop;
      }
    }
  });
}

template <class T>
void sgd_rows_entry(void* p, const void* g, void* buf, int64_t n, int64_t L, const int64_t* rows, int64_t nrows,
                    bool first, double lr, double wd, double mom, double damp, bool nesterov) {
  if (n <= 0 || L <= 0) return;
  T* pt = static_cast<T*>(p);
  T* bt = static_cast<T*>(buf);
  over_rows<T>(n, L, rows, nrows, static_cast<const T*>(g), [&](int64_t b, int64_t e, const T* gb) {
    sgd_kernel<T>(pt + b, gb, bt ? bt + b : nullptr, e - b, first, lr, wd, mom, damp, nesterov);
  });
}

template <class T>
void adam_rows_entry(void* p, const void* g, void* m, void* v, void* vmax, int64_t n, int64_t L, const int64_t* rows,
                     int64_t nrows, const AdamScalars& s) {
  if (n <= 0 || L <= 0) return;
  T *pt = static_cast<T*>(p), *mt = static_cast<T*>(m), *vt = static_cast<T*>(v), *xt = static_cast<T*>(vmax);
  with_flags(
      [&](auto l2, auto decoupled, auto amsgrad) {
        over_rows<T>(n, L, rows, nrows, static_cast<const T*>(g), [&](int64_t b, int64_t e, const T* gb) {
          adam_kernel<T, l2, decoupled, amsgrad>(pt + b, gb, mt + b, vt + b, xt ? xt + b : nullptr, e - b, s);
        });
      },
      !s.decoupled && s.wd != 0, s.decoupled, s.amsgrad);
}

template <class T> void adagrad_entry(void* p, const void* g, void* sum, int64_t n, double clr, double wd, double eps) {
  with_flags(
      [&](auto decay) {
        adagrad_kernel<T, decay>(static_cast<T*>(p), static_cast<const T*>(g), static_cast<T*>(sum), n, clr, wd, eps);
      },
      wd != 0);
}

template <class T>
void rmsprop_entry(void* p, const void* g, void* sq, void* buf, void* ga, int64_t n, double lr, double wd,
                   double alpha, double eps, double mom) {
  with_flags(
      [&](auto decay, auto centered, auto use_momentum) {
        rmsprop_kernel<T, decay, centered, use_momentum>(static_cast<T*>(p), static_cast<const T*>(g),
                                                         static_cast<T*>(sq), static_cast<T*>(buf),
                                                         static_cast<T*>(ga), n, lr, wd, alpha, eps, mom);
      },
      wd != 0, ga != nullptr, buf != nullptr);
}

template <class T> void divide_entry(void* dst, const void* src, int64_t n, double w) {
  T* d = static_cast<T*>(dst);
  const T* s = static_cast<const T*>(src);
  const T tw = static_cast<T>(w);
  for (int64_t j = 0; j < n; ++j) d[j] = s[j] / tw;
}

template <class T> constexpr OptimKernels make_optim() {
  OptimKernels k{};
  k.sgd = &sgd_entry<T>;
  k.adam = &adam_entry<T>;
  k.sgd_rows = &sgd_rows_entry<T>;
  k.adam_rows = &adam_rows_entry<T>;
  k.adagrad = &adagrad_entry<T>;
  k.rmsprop = &rmsprop_entry<T>;
  k.divide = &divide_entry<T>;
  return k;
}

}  // namespace

constinit const OptimKernels kOptimF32 = make_optim<float>();
constinit const OptimKernels kOptimF64 = make_optim<double>();

}  // namespace tg::kern::cpu
