#include "tapegrad/autograd/gradcheck.h"

#include <fmt/format.h>

#include <cmath>

#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"

namespace tg {

namespace {
std::string index_str(const Shape& s, int64_t flat) {
  std::vector<int64_t> idx(static_cast<size_t>(s.size()));
  for (int64_t d = s.size() - 1; d >= 0; --d) {
    idx[d] = s[d] ? flat % s[d] : 0;
    flat = s[d] ? flat / s[d] : 0;
  }
  return fmt::format("[{}]", fmt::join(idx, ", "));
}
}  // namespace

GradcheckResult gradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs_in, GradcheckOptions opt) {
  std::vector<Tensor> inputs;
  for (size_t i = 0; i < inputs_in.size(); ++i) {
    const Tensor& t = inputs_in[i];
    if (t.requires_grad() && t.dtype() != DType::Float64)
      throw std::invalid_argument(fmt::format("gradcheck({}): input {} is {}; gradient checks need float64 inputs "
                                              "(use .to(tg::DType::Float64))",
                                              opt.name, i, dtype_name(t.dtype())));
    // Private contiguous leaves so perturbation never touches the caller's data.
    Tensor c = t.detach().clone();
    if (t.requires_grad()) c.requires_grad_();
    inputs.push_back(c);
  }
  Tensor out0 = fn(inputs);
  const int64_t n_out = out0.numel();
  if (out0.dtype() != DType::Float64)
    throw std::invalid_argument(fmt::format("gradcheck({}): output is {}, expected float64", opt.name,
                                            dtype_name(out0.dtype())));
  // Analytic Jacobian rows: backward with a one-hot seed per output element.
  std::vector<std::vector<std::vector<double>>> analytic(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].requires_grad()) analytic[i].assign(static_cast<size_t>(n_out), {});
  for (int64_t j = 0; j < n_out; ++j) {
    Tensor out = j == 0 ? out0 : fn(inputs);
    for (auto& x : inputs) if (x.requires_grad()) x.zero_grad();
    if (out.requires_grad()) {
      Tensor seed = zeros(out.shape(), DType::Float64);
      detail::kernels_of(seed).elementwise->store(detail::mem(seed), j, 1.0);
      out.backward(seed);
    }
    for (size_t i = 0; i < inputs.size(); ++i) {
      if (!inputs[i].requires_grad()) continue;
      Tensor g = inputs[i].grad();
      analytic[i][j] = g.defined() ? g.to_vector() : std::vector<double>(static_cast<size_t>(inputs[i].numel()), 0.0);
    }
  }
  GradcheckResult result;
  NoGradGuard no_grad;
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (!inputs[i].requires_grad()) continue;
    // Perturb element k of the (private, contiguous) input in place, one kernel store at a time.
    const kern::ElementwiseKernels& ew = *detail::kernels_of(inputs[i]).elementwise;
    void* p = detail::mem(inputs[i]);
    for (int64_t k = 0; k < inputs[i].numel(); ++k) {
      const double saved = ew.load(p, k);
      ew.store(p, k, saved + opt.eps);
      std::vector<double> plus = fn(inputs).to_vector();
      ew.store(p, k, saved - opt.eps);
      std::vector<double> minus = fn(inputs).to_vector();
      ew.store(p, k, saved);
      for (int64_t j = 0; j < n_out; ++j) {
        double numeric = (plus[j] - minus[j]) / (2 * opt.eps);
        double a = analytic[i][j][k];
        double err = std::abs(a - numeric);
        result.max_abs_error = std::max(result.max_abs_error, err);
        if (!(err <= opt.atol + opt.rtol * std::abs(numeric)) && result.ok) {
          result.ok = false;
          result.message = fmt::format("gradcheck({}): d output{} / d input {}{} (input shape {}): analytic {:.10g}, "
                                       "numeric {:.10g}, difference {:.3g} exceeds atol {} + rtol {} * |numeric|",
                                       opt.name, index_str(out0.shape(), j), i, index_str(inputs[i].shape(), k),
                                       inputs[i].shape().str(), a, numeric, err, opt.atol, opt.rtol);
        }
      }
    }
  }
  if (!result.ok && opt.throw_on_failure) throw std::runtime_error(result.message);
  return result;
}

GradcheckResult gradgradcheck(const GradcheckFn& fn, const std::vector<Tensor>& inputs, GradcheckOptions opt) {
  std::vector<size_t> wrt;
  for (size_t i = 0; i < inputs.size(); ++i)
    if (inputs[i].requires_grad()) wrt.push_back(i);
  Shape out_shape;
  {
    std::vector<Tensor> probe;
    for (const Tensor& t : inputs) probe.push_back(t.detach());
    NoGradGuard no_grad;
    out_shape = fn(probe).shape();
  }
  // A fixed, non-symmetric cotangent (no random draws: the caller's generator is left alone).
  const int64_t n_out = checked_numel("gradgradcheck", out_shape);
  std::vector<double> vv(static_cast<size_t>(n_out));
  for (int64_t k = 0; k < n_out; ++k) vv[static_cast<size_t>(k)] = 0.5 + 0.75 * std::sin(1.0 + 1.3 * static_cast<double>(k));
  std::vector<Tensor> args = inputs;
  args.push_back(from_vector(vv, out_shape).requires_grad_());
  const size_t n_in = inputs.size();
  auto first_derivatives = [&fn, wrt, n_in](const std::vector<Tensor>& a) {
    EnableGradGuard recording;  // gradcheck evaluates its function under NoGradGuard for the differences
    std::vector<Tensor> xs(a.begin(), a.begin() + static_cast<std::ptrdiff_t>(n_in));
    Tensor y = fn(xs);
    std::vector<Tensor> targets;
    for (size_t i : wrt) targets.push_back(xs[i]);
    if (!y.requires_grad()) return zeros(Shape{1}, DType::Float64);
    std::vector<Tensor> g = grad({y}, targets, GradOptions{.grad_outputs = {a.back()}, .create_graph = true,
                                                           .allow_unused = true});
    std::vector<Tensor> flat;
    for (size_t k = 0; k < g.size(); ++k)
      flat.push_back(g[k].defined() ? g[k].reshape(Shape{-1}) : zeros(Shape{targets[k].numel()}, DType::Float64));
    return flat.empty() ? zeros(Shape{1}, DType::Float64) : cat(flat, 0);
  };
  GradcheckOptions o = opt;
  o.name = "gradgrad(" + opt.name + ")";
  return gradcheck(first_derivatives, args, o);
}

}  // namespace tg
