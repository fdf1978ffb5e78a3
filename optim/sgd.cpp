#include "tapegrad/optim/sgd.h"

#include <stdexcept>

#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/row_sparse.h"

namespace tg::optim {

namespace {

ParamGroup sgd_defaults(const SGDOptions& o) {
  return {{}, o.lr, o.weight_decay,
          {{"momentum", o.momentum}, {"dampening", o.dampening}, {"nesterov", o.nesterov ? 1.0 : 0.0}}};
}

}  // namespace

SGD::SGD(std::vector<Tensor> params, SGDOptions options) : SGD(std::vector<ParamGroup>{{std::move(params)}}, options) {}

SGD::SGD(std::vector<ParamGroup> groups, SGDOptions defaults)
    : Optimizer("SGD", sgd_defaults(defaults), {"momentum_buffer"}) {
  add_param_groups(std::move(groups));
}

void SGD::validate(const ParamGroup& g) const {
  const double mom = g.option("momentum"), damp = g.option("dampening");
  if (!(g.lr >= 0)) throw std::invalid_argument("SGD: lr must be >= 0, got " + format_value(g.lr));
  if (!(mom >= 0)) throw std::invalid_argument("SGD: momentum must be >= 0, got " + format_value(mom));
  if (!(g.weight_decay >= 0))
    throw std::invalid_argument("SGD: weight_decay must be >= 0, got " + format_value(g.weight_decay));
  if (g.option("nesterov") != 0 && (mom <= 0 || damp != 0))
    throw std::invalid_argument("SGD: nesterov requires momentum > 0 and dampening == 0, got momentum=" +
                                format_value(mom) + ", dampening=" + format_value(damp));
}

void SGD::update() {
  auto& groups = param_groups();
  for (size_t gi = 0; gi < groups.size(); ++gi) {
    const ParamGroup& grp = groups[gi];
    const double mom = grp.option("momentum"), damp = grp.option("dampening");
    const bool nesterov = grp.option("nesterov") != 0;
    for (size_t i = 0; i < grp.params.size(); ++i) {
      const Tensor& p = grp.params[i];
      Tensor g = grad_for(p, /*keep_row_mark=*/true);
      if (!g.defined()) continue;
      ParamState& st = state(gi, i);
      // PyTorch seeds the buffer with the first gradient, so it starts uninitialised here.
      const bool first = !st.buffers[0].defined();
      if (mom != 0 && first) st.buffers[0] = empty(p.shape(), p.dtype());
      using tg::detail::mem;
      const kern::OptimKernels& k = *tg::detail::float_kernels_of("SGD", p).optim;
      void* buf = mom != 0 ? mem(st.buffers[0]) : nullptr;
      if (const tg::detail::ZeroRows* z = tg::detail::zero_rows(g))  // reads g only in the rows it has
        k.sgd_rows(mem(p), mem(g), buf, p.numel(), p.numel() / p.size(0), z->rows.data(),
                   static_cast<int64_t>(z->rows.size()), first, grp.lr, grp.weight_decay, mom, damp, nesterov);
      else
        k.sgd(mem(p), mem(g), buf, p.numel(), first, grp.lr, grp.weight_decay, mom, damp, nesterov);
      ++st.step;
    }
  }
}

}  // namespace tg::optim
