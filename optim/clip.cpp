#include "tapegrad/optim/clip.h"

#include <algorithm>
#include <limits>
#include <stdexcept>

#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/row_sparse.h"
#include "tapegrad/optim/optimizer.h"

namespace tg::optim {

namespace {

void check_norm_args(double max_norm, double norm_type) {
  if (!(max_norm >= 0)) throw std::invalid_argument("clip_grad_norm_: max_norm must be >= 0, got " + format_value(max_norm));
  if (!(norm_type > 0))
    throw std::invalid_argument("clip_grad_norm_: norm_type must be > 0 or INFINITY, got " + format_value(norm_type));
}

// Visits the defined gradients of `params` (a vector<Tensor> or an optimizer's groups) without
// collecting them, so the hooks allocate nothing per step. Row-sparse marks are kept: the norm and
// the scaling below honour them, and clamping leaves a +0 row +0.
template <class F> void for_each_grad(const std::vector<Tensor>& params, F&& f) {
  for (const auto& p : params) {
    if (!p.requires_grad()) continue;  // frozen parameters have no gradient to clip
    Tensor g = tg::detail::param_grad(p);
    if (g.defined()) f(g);
  }
}
template <class F> void for_each_grad(const Optimizer& opt, F&& f) {
  for (const auto& grp : opt.param_groups()) for_each_grad(grp.params, f);
}

template <class Params> double total_norm(const Params& params, double norm_type) {
  const bool inf = std::isinf(norm_type);
  double acc = 0;
  for_each_grad(params, [&](const Tensor& g0) {
    acc = tg::detail::norm_accumulate(g0.contiguous(), norm_type, acc);
  });
  if (inf || norm_type == 1.0) return acc;
  return norm_type == 2.0 ? std::sqrt(acc) : std::pow(acc, 1.0 / norm_type);
}

template <class Params> double clip_norm(const Params& params, double max_norm, double norm_type) {
  check_norm_args(max_norm, norm_type);
  const double norm = total_norm(params, norm_type);
  const double coef = max_norm / (norm + 1e-6);
  if (std::isfinite(norm) && coef < 1.0)
    for_each_grad(params, [&](Tensor g) { tg::detail::scale_grad_(g, coef); });
  return norm;
}

template <class Params> double clip_value(const Params& params, double limit) {
  if (!(limit >= 0)) throw std::invalid_argument("clip_grad_value_: limit must be >= 0, got " + format_value(limit));
  double max_abs = 0;
  for_each_grad(params, [&](Tensor g) {
    Tensor c = g.contiguous();
    max_abs = tg::detail::float_kernels_of("clip_grad_value_", c).reduce->clamp_abs(tg::detail::mem(c), c.numel(), limit,
                                                                                     max_abs);
    // The kernel wrote through a raw pointer: count it as the in-place write it is, so a graph
    // that saved this gradient (create_graph) refuses to use the old values.
    c.impl()->storage->bump_version();
    if (c.impl() != g.impl()) copy_(g, c);  // the gradient was a strided view: write back
  });
  return max_abs;
}

}  // namespace

double clip_grad_norm_(const std::vector<Tensor>& params, double max_norm, double norm_type) {
  return clip_norm(params, max_norm, norm_type);
}

void clip_grad_value_(const std::vector<Tensor>& params, double limit) { clip_value(params, limit); }

ClipGradNorm::ClipGradNorm(double max_norm, double norm_type)
    : max_norm_(max_norm), norm_type_(norm_type),
      last_(std::make_shared<double>(std::numeric_limits<double>::quiet_NaN())) {
  check_norm_args(max_norm, norm_type);
}

void ClipGradNorm::operator()(Optimizer& opt) const { *last_ = clip_norm(opt, max_norm_, norm_type_); }

ClipGradValue::ClipGradValue(double limit)
    : limit_(limit), last_(std::make_shared<double>(std::numeric_limits<double>::quiet_NaN())) {
  if (!(limit >= 0)) throw std::invalid_argument("ClipGradValue: limit must be >= 0, got " + format_value(limit));
}

void ClipGradValue::operator()(Optimizer& opt) const { *last_ = clip_value(opt, limit_); }

}  // namespace tg::optim
