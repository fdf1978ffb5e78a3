#include "tapegrad/optim/adagrad.h"

#include <cmath>
#include <stdexcept>

#include "tapegrad/autograd/kernel_bridge.h"

namespace tg::optim {

namespace {

ParamGroup adagrad_defaults(const AdagradOptions& o) {
  return {{}, o.lr, o.weight_decay,
          {{"lr_decay", o.lr_decay}, {"initial_accumulator_value", o.initial_accumulator_value}, {"eps", o.eps}}};
}

}  // namespace

Adagrad::Adagrad(std::vector<Tensor> params, AdagradOptions options)
    : Adagrad(std::vector<ParamGroup>{ParamGroup{std::move(params)}}, options) {}

Adagrad::Adagrad(std::vector<ParamGroup> groups, AdagradOptions defaults)
    : Optimizer("Adagrad", adagrad_defaults(defaults), {"sum"}) {
  add_param_groups(std::move(groups));
}

void Adagrad::validate(const ParamGroup& g) const {
  const double decay = g.option("lr_decay"), init = g.option("initial_accumulator_value"), eps = g.option("eps");
  if (!(g.lr >= 0)) throw std::invalid_argument("Adagrad: lr must be >= 0, got " + format_value(g.lr));
  if (!(decay >= 0)) throw std::invalid_argument("Adagrad: lr_decay must be >= 0, got " + format_value(decay));
  if (!(g.weight_decay >= 0))
    throw std::invalid_argument("Adagrad: weight_decay must be >= 0, got " + format_value(g.weight_decay));
  if (!(init >= 0))
    throw std::invalid_argument("Adagrad: initial_accumulator_value must be >= 0, got " + format_value(init));
  if (!(eps >= 0)) throw std::invalid_argument("Adagrad: eps must be >= 0, got " + format_value(eps));
}

void Adagrad::update() {
  auto& groups = param_groups();
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const ParamGroup& grp = groups[gi];
    const double lr_decay = grp.option("lr_decay"), eps = grp.option("eps");
    const double init = grp.option("initial_accumulator_value");
    for (size_t i = 0; i < grp.params.size(); ++i) {
      const Tensor& p = grp.params[i];
      Tensor g = grad_for(p);
      if (!g.defined()) continue;
      ParamState& st = state(gi, i);
      const double t = static_cast<double>(++st.step);
      const double clr = grp.lr / (1.0 + (t - 1.0) * lr_decay);
      Tensor& sum = buffer(st, 0, p, init);
      using tg::detail::mem;
      tg::detail::float_kernels_of("Adagrad", p).optim->adagrad(mem(p), mem(g), mem(sum), p.numel(), clr, grp.weight_decay,
                                                                eps);
    }
  }
}

}  // namespace tg::optim
