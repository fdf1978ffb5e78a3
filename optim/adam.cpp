#include "optim/adam.h"

#include <cmath>
#include <stdexcept>

#include "optim/kernels.h"

namespace tg::optim {

namespace {

enum Buffer : size_t { kExpAvg, kExpAvgSq, kMaxExpAvgSq };

AdamWOptions widen(const AdamOptions& o) { return {o.lr, o.betas, o.eps, o.weight_decay, o.amsgrad}; }

ParamGroup adam_defaults(const AdamWOptions& o) {
  return {{}, o.lr, o.weight_decay,
          {{"beta1", o.betas.first}, {"beta2", o.betas.second}, {"eps", o.eps}, {"amsgrad", o.amsgrad ? 1.0 : 0.0}}};
}

struct AdamScalars {
  double lr, wd, beta1, beta2, eps;
  double step_size;  // lr / (1 - beta1^t)
  double bc2_sqrt;   // sqrt(1 - beta2^t)
  bool amsgrad, decoupled;
};

template <class T, bool l2, bool decoupled, bool amsgrad>
void adam_kernel(T* p, const T* g, T* m, T* v, T* vmax, int64_t n, const AdamScalars& s) {
  // Each scalar is rounded to T where PyTorch hands it to a kernel as a Python float; the
  // bias corrections themselves are computed in double, as PyTorch does in Python.
  const T decay = static_cast<T>(1.0 - s.lr * s.wd), wd = static_cast<T>(s.wd);
  const T b1 = static_cast<T>(s.beta1), b2 = static_cast<T>(s.beta2);
  const T one_b1 = static_cast<T>(1.0 - s.beta1), one_b2 = static_cast<T>(1.0 - s.beta2);
  const T bc2 = static_cast<T>(s.bc2_sqrt), eps = static_cast<T>(s.eps), neg_step = static_cast<T>(-s.step_size);
  detail::sqrt_loop<T>(
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

}  // namespace

Adam::Adam(std::vector<Tensor> params, AdamOptions options)
    : Adam(std::vector<ParamGroup>{ParamGroup{std::move(params)}}, options) {}

Adam::Adam(std::vector<ParamGroup> groups, AdamOptions defaults) : Adam("Adam", std::move(groups), widen(defaults), false) {}

Adam::Adam(const char* name, std::vector<ParamGroup> groups, const AdamWOptions& defaults, bool decoupled)
    : Optimizer(name, adam_defaults(defaults), {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"}), decoupled_(decoupled) {
  add_param_groups(std::move(groups));
}

AdamW::AdamW(std::vector<Tensor> params, AdamWOptions options)
    : AdamW(std::vector<ParamGroup>{ParamGroup{std::move(params)}}, options) {}

AdamW::AdamW(std::vector<ParamGroup> groups, AdamWOptions defaults) : Adam("AdamW", std::move(groups), defaults, true) {}

void Adam::validate(const ParamGroup& g) const {
  const std::string& n = name();
  const double b1 = g.option("beta1"), b2 = g.option("beta2"), eps = g.option("eps");
  if (!(g.lr >= 0)) throw std::invalid_argument(n + ": lr must be >= 0, got " + format_value(g.lr));
  if (!(eps >= 0)) throw std::invalid_argument(n + ": eps must be >= 0, got " + format_value(eps));
  if (!(b1 >= 0 && b1 < 1)) throw std::invalid_argument(n + ": beta1 must be in [0, 1), got " + format_value(b1));
  if (!(b2 >= 0 && b2 < 1)) throw std::invalid_argument(n + ": beta2 must be in [0, 1), got " + format_value(b2));
  if (!(g.weight_decay >= 0))
    throw std::invalid_argument(n + ": weight_decay must be >= 0, got " + format_value(g.weight_decay));
}

void Adam::update() {
  auto& groups = param_groups();
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const ParamGroup& grp = groups[gi];
    AdamScalars s{};
    s.lr = grp.lr;
    s.wd = grp.weight_decay;
    s.beta1 = grp.option("beta1");
    s.beta2 = grp.option("beta2");
    s.eps = grp.option("eps");
    s.amsgrad = grp.option("amsgrad") != 0;
    s.decoupled = decoupled_;
    double cached_t = -1, cached_step_size = 0, cached_bc2 = 0;  // parameters usually share a step count
    for (size_t i = 0; i < grp.params.size(); ++i) {
      const Tensor& p = grp.params[i];
      Tensor g = grad_for(p);
      if (!g.defined()) continue;
      ParamState& st = state(gi, i);
      const double t = static_cast<double>(++st.step);
      if (t != cached_t) {
        cached_t = t;
        cached_step_size = s.lr / (1.0 - std::pow(s.beta1, t));
        cached_bc2 = std::sqrt(1.0 - std::pow(s.beta2, t));
      }
      s.step_size = cached_step_size;
      s.bc2_sqrt = cached_bc2;
      Tensor& m = buffer(st, kExpAvg, p);
      Tensor& v = buffer(st, kExpAvgSq, p);
      Tensor* vmax = s.amsgrad ? &buffer(st, kMaxExpAvgSq, p) : nullptr;
      dispatch_float(name().c_str(), p.device(), p.dtype(), [&]<class T>() {
        T* vm = vmax ? vmax->data<T>() : nullptr;
        detail::with_flags(
            [&](auto l2, auto decoupled, auto amsgrad) {
              adam_kernel<T, l2, decoupled, amsgrad>(p.data<T>(), g.data<T>(), m.data<T>(), v.data<T>(), vm, p.numel(), s);
            },
            !s.decoupled && s.wd != 0, s.decoupled, s.amsgrad);
      });
    }
  }
}

}  // namespace tg::optim
