// CPU optimizer updates (optim/*.cpp call them through the table): one pass over each parameter,
// its gradient and its state, nothing allocated. Scalars are rounded to T where PyTorch hands
// them to its kernels as Python floats, so the updates match PyTorch's bit for bit in float64.
#include <cmath>
#include <cstdint>

#include "tapegrad/kernels/cpu.h"
#include "tapegrad/kernels/parallel.h"
#include "tapegrad/kernels/sqrt_loop.h"

namespace tg::kern::cpu {
namespace {

// Elements per thread at least: an update is ~20 flops an element, so a part runs >= ~10 us.
constexpr int64_t kUpdateGrain = int64_t{1} << 15;

template <class T>
void sgd_kernel(T* p, const T* g, T* buf, int64_t n, bool first, double lr_, double wd_, double mom_,
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
void adam_kernel(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, const AdamScalars& s) {
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
  return {&sgd_entry<T>, &adam_entry<T>, &adagrad_entry<T>, &rmsprop_entry<T>, &divide_entry<T>};
}

}  // namespace

constinit const OptimKernels kOptimF32 = make_optim<float>();
constinit const OptimKernels kOptimF64 = make_optim<double>();

}  // namespace tg::kern::cpu
