#include "autograd/gradcheck.h"

#include <fmt/format.h>

#include <cmath>

#include "autograd/ops.h"

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
      seed.data<double>()[j] = 1.0;
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
    double* p = inputs[i].data<double>();
    for (int64_t k = 0; k < inputs[i].numel(); ++k) {
      const double saved = p[k];
      p[k] = saved + opt.eps;
      std::vector<double> plus = fn(inputs).to_vector();
      p[k] = saved - opt.eps;
      std::vector<double> minus = fn(inputs).to_vector();
      p[k] = saved;
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

}  // namespace tg
