#include "tapegrad/nn/init.h"

#include <fmt/format.h>

#include <stdexcept>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"

namespace tg::nn::init {

namespace {

void check_float(const char* fn, const Tensor& t) {
  if (!t.defined()) throw std::invalid_argument(fmt::format("init::{}: the tensor is undefined", fn));
  if (!is_floating(t.dtype()))
    throw std::invalid_argument(fmt::format("init::{}: needs a float tensor, got {} of shape {}", fn,
                                            dtype_name(t.dtype()), t.shape().str()));
}

// Values are generated in row-major order in double and copied in, so the result is the same
// for float32 and float64 tensors and for any layout of `t`.
void assign(const Tensor& t, const std::vector<double>& v) {
  NoGradGuard no_grad;
  Tensor dst = t;
  copy_(dst, from_vector(v, t.shape()));
}

std::vector<double> draw_uniform(int64_t n, double lo, double hi) {
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& x : v) x = lo + (hi - lo) * next_uniform();
  return v;
}
std::vector<double> draw_normal(int64_t n, double mean, double std) {
  std::vector<double> v(static_cast<size_t>(n));
  for (auto& x : v) x = mean + std * next_normal();
  return v;
}

int64_t fan(const Tensor& t, FanMode mode) {
  auto [in, out] = fan_in_and_fan_out(t);
  return mode == FanMode::FanIn ? in : out;
}

}  // namespace

std::pair<int64_t, int64_t> fan_in_and_fan_out(const Tensor& t) {
  if (t.dim() < 2)
    throw std::invalid_argument(fmt::format("init: fan in and fan out need a tensor of rank >= 2, got shape {}",
                                            t.shape().str()));
  int64_t receptive = 1;
  for (int64_t d = 2; d < t.dim(); ++d) receptive *= t.size(d);
  return {t.size(1) * receptive, t.size(0) * receptive};
}

void uniform_(const Tensor& t, double lo, double hi) {
  check_float("uniform_", t);
  assign(t, draw_uniform(t.numel(), lo, hi));
}

void normal_(const Tensor& t, double mean, double std) {
  check_float("normal_", t);
  assign(t, draw_normal(t.numel(), mean, std));
}

void constant_(const Tensor& t, double value) {
  check_float("constant_", t);
  NoGradGuard no_grad;  // initialisation is not part of any graph
  Tensor dst = t;
  fill_(dst, value);
}
void zeros_(const Tensor& t) { constant_(t, 0.0); }
void ones_(const Tensor& t) { constant_(t, 1.0); }

void xavier_uniform_(const Tensor& t, double gain) {
  check_float("xavier_uniform_", t);
  auto [in, out] = fan_in_and_fan_out(t);
  double bound = gain * std::sqrt(6.0 / static_cast<double>(in + out));
  uniform_(t, -bound, bound);
}

void xavier_normal_(const Tensor& t, double gain) {
  check_float("xavier_normal_", t);
  auto [in, out] = fan_in_and_fan_out(t);
  normal_(t, 0.0, gain * std::sqrt(2.0 / static_cast<double>(in + out)));
}

void kaiming_uniform_(const Tensor& t, double a, FanMode mode) {
  check_float("kaiming_uniform_", t);
  double std = std::sqrt(2.0 / (1.0 + a * a)) / std::sqrt(static_cast<double>(fan(t, mode)));
  double bound = std::sqrt(3.0) * std;  // a uniform's std is bound / sqrt(3)
  uniform_(t, -bound, bound);
}

void kaiming_normal_(const Tensor& t, double a, FanMode mode) {
  check_float("kaiming_normal_", t);
  normal_(t, 0.0, std::sqrt(2.0 / (1.0 + a * a)) / std::sqrt(static_cast<double>(fan(t, mode))));
}

void orthogonal_(const Tensor& t, double gain) {
  check_float("orthogonal_", t);
  if (t.dim() < 2)
    throw std::invalid_argument("init::orthogonal_: needs a tensor of rank >= 2, got shape " + t.shape().str());
  const int64_t rows = t.size(0), cols = rows ? t.numel() / rows : 0;
  if (t.numel() == 0) return;
  // Factor the tall orientation (m >= n) so Gram-Schmidt has n independent columns to work on.
  const bool tall = rows >= cols;
  const int64_t m = tall ? rows : cols, n = tall ? cols : rows;
  std::vector<double> g = draw_normal(rows * cols, 0.0, 1.0);  // row-major rows x cols
  std::vector<double> q(static_cast<size_t>(m * n));           // column k at q[k*m ...]
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t r = tall ? i : j, c = tall ? j : i;  // element (r, c) of the m x n matrix
      q[c * m + r] = g[i * cols + j];
    }
  // Modified Gram-Schmidt: Q R with R's diagonal positive; multiplying each column by
  // sign(R_kk) as PyTorch does is then a no-op, and Q is uniform over orthogonal matrices.
  for (int64_t k = 0; k < n; ++k) {
    double* qk = &q[k * m];
    double norm = 0;
    for (int64_t r = 0; r < m; ++r) norm += qk[r] * qk[r];
    norm = std::sqrt(norm);
    if (norm < 1e-300) throw std::runtime_error("init::orthogonal_: degenerate random matrix; try another seed");
    for (int64_t r = 0; r < m; ++r) qk[r] /= norm;
    for (int64_t j = k + 1; j < n; ++j) {
      double* qj = &q[j * m];
      double dot = 0;
      for (int64_t r = 0; r < m; ++r) dot += qk[r] * qj[r];
      for (int64_t r = 0; r < m; ++r) qj[r] -= dot * qk[r];
    }
  }
  std::vector<double> out(static_cast<size_t>(rows * cols));
  for (int64_t i = 0; i < rows; ++i)
    for (int64_t j = 0; j < cols; ++j) {
      const int64_t r = tall ? i : j, c = tall ? j : i;
      out[i * cols + j] = gain * q[c * m + r];
    }
  assign(t, out);
}

}  // namespace tg::nn::init
