#include "optim/rmsprop.h"

#include <cmath>
#include <stdexcept>

#include "optim/kernels.h"

namespace tg::optim {

namespace {

enum Buffer : size_t { kSquareAvg, kMomentumBuffer, kGradAvg };

ParamGroup rmsprop_defaults(const RMSpropOptions& o) {
  return {{}, o.lr, o.weight_decay,
          {{"alpha", o.alpha}, {"eps", o.eps}, {"momentum", o.momentum}, {"centered", o.centered ? 1.0 : 0.0}}};
}

template <class T, bool decay, bool centered, bool use_momentum>
void rmsprop_kernel(T* p, const T* g, T* sq, T* buf, T* ga, int64_t n, double lr_, double wd_, double alpha_,
                    double eps_, double mom_) {
  const T lr = static_cast<T>(lr_), wd = static_cast<T>(wd_), alpha = static_cast<T>(alpha_);
  const T one_alpha = static_cast<T>(1.0 - alpha_), eps = static_cast<T>(eps_), mom = static_cast<T>(mom_);
  // The decayed gradient is recomputed after the block's square roots rather than stored.
  auto grad = [&](int64_t i) -> T {
    if constexpr (decay) return g[i] + wd * p[i];
    else return g[i];
  };
  detail::sqrt_loop<T>(
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

}  // namespace

RMSprop::RMSprop(std::vector<Tensor> params, RMSpropOptions options)
    : RMSprop(std::vector<ParamGroup>{ParamGroup{std::move(params)}}, options) {}

RMSprop::RMSprop(std::vector<ParamGroup> groups, RMSpropOptions defaults)
    : Optimizer("RMSprop", rmsprop_defaults(defaults), {"square_avg", "momentum_buffer", "grad_avg"}) {
  add_param_groups(std::move(groups));
}

void RMSprop::validate(const ParamGroup& g) const {
  const double alpha = g.option("alpha"), eps = g.option("eps"), mom = g.option("momentum");
  if (!(g.lr >= 0)) throw std::invalid_argument("RMSprop: lr must be >= 0, got " + format_value(g.lr));
  if (!(eps >= 0)) throw std::invalid_argument("RMSprop: eps must be >= 0, got " + format_value(eps));
  if (!(mom >= 0)) throw std::invalid_argument("RMSprop: momentum must be >= 0, got " + format_value(mom));
  if (!(g.weight_decay >= 0))
    throw std::invalid_argument("RMSprop: weight_decay must be >= 0, got " + format_value(g.weight_decay));
  if (!(alpha >= 0)) throw std::invalid_argument("RMSprop: alpha must be >= 0, got " + format_value(alpha));
}

void RMSprop::update() {
  auto& groups = param_groups();
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const ParamGroup& grp = groups[gi];
    const double alpha = grp.option("alpha"), eps = grp.option("eps"), mom = grp.option("momentum");
    const bool centered = grp.option("centered") != 0;
    for (size_t i = 0; i < grp.params.size(); ++i) {
      const Tensor& p = grp.params[i];
      Tensor g = grad_for(p);
      if (!g.defined()) continue;
      ParamState& st = state(gi, i);
      ++st.step;
      Tensor& sq = buffer(st, kSquareAvg, p);
      Tensor* buf = mom > 0 ? &buffer(st, kMomentumBuffer, p) : nullptr;
      Tensor* ga = centered ? &buffer(st, kGradAvg, p) : nullptr;
      dispatch_float("RMSprop", p.device(), p.dtype(), [&]<class T>() {
        T* b = buf ? buf->data<T>() : nullptr;
        T* a = ga ? ga->data<T>() : nullptr;
        detail::with_flags(
            [&](auto decay, auto centered, auto use_momentum) {
              rmsprop_kernel<T, decay, centered, use_momentum>(p.data<T>(), g.data<T>(), sq.data<T>(), b, a,
                                                               p.numel(), grp.lr, grp.weight_decay, alpha, eps, mom);
            },
            grp.weight_decay != 0, centered, buf != nullptr);
      });
    }
  }
}

}  // namespace tg::optim
