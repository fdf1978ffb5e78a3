#include "tapegrad/optim/rmsprop.h"

#include <cmath>
#include <stdexcept>

#include "tapegrad/autograd/kernel_bridge.h"

namespace tg::optim {

namespace {

enum Buffer : size_t { kSquareAvg, kMomentumBuffer, kGradAvg };

ParamGroup rmsprop_defaults(const RMSpropOptions& o) {
  return {{}, o.lr, o.weight_decay,
          {{"alpha", o.alpha}, {"eps", o.eps}, {"momentum", o.momentum}, {"centered", o.centered ? 1.0 : 0.0}}};
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
      using tg::detail::mem;
      tg::detail::float_kernels_of("RMSprop", p)
          .optim->rmsprop(mem(p), mem(g), mem(sq), buf ? mem(*buf) : nullptr, ga ? mem(*ga) : nullptr, p.numel(), grp.lr,
                          grp.weight_decay, alpha, eps, mom);
    }
  }
}

}  // namespace tg::optim
