#include "tapegrad/optim/adam.h"

#include <cmath>
#include <stdexcept>

#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/row_sparse.h"

namespace tg::optim {

namespace {

enum Buffer : size_t { kExpAvg, kExpAvgSq, kMaxExpAvgSq };

AdamWOptions widen(const AdamOptions& o) { return {o.lr, o.betas, o.eps, o.weight_decay, o.amsgrad}; }

ParamGroup adam_defaults(const AdamWOptions& o) {
  return {{}, o.lr, o.weight_decay,
          {{"beta1", o.betas.first}, {"beta2", o.betas.second}, {"eps", o.eps}, {"amsgrad", o.amsgrad ? 1.0 : 0.0}}};
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
    kern::AdamScalars s{};
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
      Tensor g = grad_for(p, /*keep_row_mark=*/true);
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
      using tg::detail::mem;
      const kern::OptimKernels& k = *tg::detail::float_kernels_of(name().c_str(), p).optim;
      if (const tg::detail::ZeroRows* z = tg::detail::zero_rows(g))  // reads g only in the rows it has
        k.adam_rows(mem(p), mem(g), mem(m), mem(v), vmax ? mem(*vmax) : nullptr, p.numel(), p.numel() / p.size(0),
                    z->rows.data(), static_cast<int64_t>(z->rows.size()), s);
      else
        k.adam(mem(p), mem(g), mem(m), mem(v), vmax ? mem(*vmax) : nullptr, p.numel(), s);
    }
  }
}

}  // namespace tg::optim
