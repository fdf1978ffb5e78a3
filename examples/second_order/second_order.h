#pragma once
// The three second-order examples (hvp_lstm.cpp, wgan_gp_gru.cpp, hessian.cpp), shared with their
// test (tests/test_second_order.cpp). Each runs tapegrad on the weights and data of a reference
// file written offline by tests/second_order/generate.py (PyTorch 1.13, float64) and measures how
// far tapegrad's numbers are from PyTorch's.
#include <fmt/format.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/adam.h"

namespace tg::second_order {

constexpr DType F64 = DType::Float64;
using nlohmann::json;

inline json load_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open " + path + " (written by tests/second_order/generate.py)");
  return json::parse(in);
}

// {"shape": [...], "data": [...]} -> a float64 (or int64) tensor.
inline Tensor f64(const json& j) {
  return from_vector(j.at("data").get<std::vector<double>>(), Shape(j.at("shape").get<std::vector<int64_t>>()));
}
inline Tensor i64(const json& j) {
  return from_vector(j.at("data").get<std::vector<int64_t>>(), Shape(j.at("shape").get<std::vector<int64_t>>()));
}

// Largest difference over several comparisons: absolute, and relative to the largest magnitude
// of the reference tensor (a normwise relative error, so entries that are zero in both count 0).
struct Diff {
  double abs = 0, rel = 0;
  void add(const Tensor& ours, const Tensor& ref) {
    if (!(ours.shape() == ref.shape()))
      throw std::runtime_error("shape mismatch: " + ours.shape().str() + " vs " + ref.shape().str());
    std::vector<double> a = ours.to_vector(), b = ref.to_vector();
    double d = 0, m = 0;
    for (size_t k = 0; k < a.size(); ++k) {
      d = std::max(d, std::abs(a[k] - b[k]));
      m = std::max(m, std::abs(b[k]));
    }
    abs = std::max(abs, d);
    rel = std::max(rel, m > 0 ? d / m : d);
  }
  void add(double ours, double ref) { add(scalar(ours, F64), scalar(ref, F64)); }
  std::string str() const { return fmt::format("max abs {:.2e}, max rel {:.2e}", abs, rel); }
};

// PyTorch's flat RNN parameter names -> tapegrad's: "lstm.weight_ih_l0" -> "lstm.cell0.weight_ih",
// "gru.bias_hh_l1_reverse" -> "gru.cell1_reverse.bias_hh"; other names are the same in both.
inline std::string tapegrad_name(const std::string& torch_name) {
  for (const char* p : {"weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l"}) {
    const std::string key = p;
    const size_t at = torch_name.find(key);
    if (at == std::string::npos) continue;
    const std::string prefix = torch_name.substr(0, at);  // "lstm." (or "" for a bare RNN)
    const std::string param = key.substr(0, key.size() - 2);
    const std::string layer = torch_name.substr(at + key.size());  // "0" or "0_reverse"
    return prefix + "cell" + layer + "." + param;
  }
  return torch_name;
}

// Loads {torch name: tensor} into the module (strict: every parameter must be given).
inline void load_torch_params(nn::Module& m, const json& params) {
  std::map<std::string, Tensor> state;
  for (auto& [name, t] : params.items()) state[tapegrad_name(name)] = f64(t);
  m.load_state_dict(state);
}

// The module's parameters in the order of PyTorch's names.
inline std::vector<Tensor> params_by_torch_names(const nn::Module& m, const json& names) {
  std::map<std::string, Tensor> mine;
  for (auto& [n, t] : m.named_parameters()) mine[n] = t;
  std::vector<Tensor> out;
  for (const auto& n : names) out.push_back(mine.at(tapegrad_name(n.get<std::string>())));
  return out;
}

// ---- 1. Hessian-vector product of an LSTM classifier's loss w.r.t. its weights ------------------

class LSTMClassifier : public nn::Module {
 public:
  LSTMClassifier(int64_t vocab, int64_t embed, int64_t hidden) {
    emb = register_module("emb", std::make_shared<nn::Embedding>(vocab, embed, -1, F64));
    lstm = register_module("lstm", std::make_shared<nn::LSTM>(nn::RNNOptions{
        .input_size = embed, .hidden_size = hidden, .batch_first = true, .output_sequence = false, .dtype = F64}));
    fc = register_module("fc", std::make_shared<nn::Linear>(hidden, 1, true, F64));
  }
  Tensor forward(const Tensor& ids, const Tensor& lengths) {  // ids [B, T] -> logits [B]
    nn::RNNOutput out = (*lstm)((*emb)(ids), {}, {}, lengths);
    return (*fc)(select(out.h_n, 0, 0)).reshape({-1});
  }
  std::shared_ptr<nn::Embedding> emb;
  std::shared_ptr<nn::LSTM> lstm;
  std::shared_ptr<nn::Linear> fc;
};

struct HvpResult {
  double loss = 0;
  Diff loss_diff, grad_diff, hvp_diff;
};

inline HvpResult hvp_lstm(const json& ref) {
  const json& s = ref.at("sizes");
  LSTMClassifier model(s.at("vocab").get<int64_t>(), s.at("embed").get<int64_t>(), s.at("hidden").get<int64_t>());
  load_torch_params(model, ref.at("params"));
  // parameters() is in registration order, which is PyTorch's (emb, lstm weight_ih, weight_hh,
  // bias_ih, bias_hh, fc weight, bias): v is given in that order.
  std::vector<Tensor> w = model.parameters();
  if (w.size() != ref.at("names").size()) throw std::runtime_error("hvp_lstm: parameter count differs from the reference");
  std::vector<Tensor> v;
  for (size_t k = 0; k < w.size(); ++k) {
    const std::string name = ref.at("names")[k].get<std::string>();
    if (model.named_parameters()[k].first != tapegrad_name(name))
      throw std::runtime_error("hvp_lstm: parameter " + std::to_string(k) + " is " + model.named_parameters()[k].first +
                               ", the reference's is " + name);
    v.push_back(f64(ref.at("v").at(name)));
  }

  // H v = d/dw <dL/dw, v>: a create_graph gradient, then the gradient of its dot product with v.
  Tensor loss = binary_cross_entropy_with_logits(model.forward(i64(ref.at("ids")), i64(ref.at("lengths"))),
                                                 f64(ref.at("labels")));
  std::vector<Tensor> g = grad({loss}, w, {.grad_outputs = {}, .create_graph = true});
  Tensor gv = sum(g[0] * v[0]);
  for (size_t k = 1; k < w.size(); ++k) gv = gv + sum(g[k] * v[k]);
  std::vector<Tensor> hv = grad({gv}, w);

  HvpResult r;
  r.loss = loss.item();
  r.loss_diff.add(r.loss, ref.at("loss").get<double>());
  size_t k = 0;
  for (const auto& n : ref.at("names")) {
    r.grad_diff.add(g[k], f64(ref.at("grad").at(n.get<std::string>())));
    r.hvp_diff.add(hv[k], f64(ref.at("hvp").at(n.get<std::string>())));
    ++k;
  }
  return r;
}

// ---- 2. WGAN-GP gradient penalty with a GRU critic, trained a few Adam steps -------------------

class GRUCritic : public nn::Module {
 public:
  GRUCritic(int64_t features, int64_t hidden) {
    gru = register_module("gru", std::make_shared<nn::GRU>(nn::RNNOptions{
        .input_size = features, .hidden_size = hidden, .batch_first = true, .output_sequence = false, .dtype = F64}));
    fc = register_module("fc", std::make_shared<nn::Linear>(hidden, 1, true, F64));
  }
  Tensor forward(const Tensor& x) {  // x [B, T, features] -> [B]
    return (*fc)(select((*gru)(x).h_n, 0, 0)).reshape({-1});
  }
  std::shared_ptr<nn::GRU> gru;
  std::shared_ptr<nn::Linear> fc;
};

// mean over the batch of (||d critic(x_hat) / d x_hat|| - 1)^2, differentiable w.r.t. the critic.
inline Tensor gradient_penalty(GRUCritic& critic, const Tensor& x_hat) {
  Tensor g = grad({sum(critic.forward(x_hat))}, {x_hat}, {.grad_outputs = {}, .create_graph = true})[0];  // [B, T, F]
  Tensor norm = sqrt(sum(g * g, {1, 2}));
  return mean(pow(norm - 1.0, 2.0));
}

struct WganStep {
  double penalty = 0, loss = 0;
  Diff penalty_diff, penalty_grad_diff, loss_diff, weight_diff;
  bool same_unused = true;  // the weights the penalty does not depend on (fc.bias) are PyTorch's
};

inline std::vector<WganStep> wgan_gp_gru(const json& ref) {
  const json& s = ref.at("sizes");
  GRUCritic critic(s.at("features").get<int64_t>(), s.at("hidden").get<int64_t>());
  load_torch_params(critic, ref.at("params"));
  const json& a = ref.at("adam");
  optim::Adam opt(critic.parameters(), {.lr = a.at("lr").get<double>(),
                                        .betas = {a.at("beta1").get<double>(), a.at("beta2").get<double>()},
                                        .eps = a.at("eps").get<double>()});
  const double lambda = ref.at("lambda").get<double>();
  std::vector<WganStep> steps;
  for (const json& st : ref.at("train")) {
    Tensor real = f64(st.at("real")), fake = f64(st.at("fake")), eps = f64(st.at("eps"));  // eps [B, 1, 1]
    Tensor x_hat = (eps * real + (1.0 - eps) * fake).requires_grad_();
    Tensor penalty = gradient_penalty(critic, x_hat);
    // d penalty / d weights alone (second derivatives of the critic), before the step.
    std::vector<Tensor> w = params_by_torch_names(critic, ref.at("names"));
    std::vector<Tensor> penalty_grad = grad({penalty}, w, {.grad_outputs = {}, .retain_graph = true, .allow_unused = true});
    Tensor loss = mean(critic.forward(fake)) - mean(critic.forward(real)) + penalty * lambda;
    opt.zero_grad();
    loss.backward();  // through the penalty's recorded backward too: second derivatives
    opt.step();
    WganStep r;
    r.penalty = penalty.item();
    r.loss = loss.item();
    r.penalty_diff.add(r.penalty, st.at("penalty").get<double>());
    r.loss_diff.add(r.loss, st.at("loss").get<double>());
    size_t k = 0;
    for (const auto& n : ref.at("names")) {
      const json& want = st.at("penalty_grad").at(n.get<std::string>());
      if (want.is_null() || !penalty_grad[k].defined()) r.same_unused = r.same_unused && want.is_null() && !penalty_grad[k].defined();
      else r.penalty_grad_diff.add(penalty_grad[k], f64(want));
      r.weight_diff.add(w[k++], f64(st.at("params_after").at(n.get<std::string>())));
    }
    steps.push_back(r);
  }
  return steps;
}

// ---- 3. the exact Hessian of a small function against finite differences of its gradient --------

// f(x) = sum(tanh(x W^T + b) * softmax(x)) + sum(sigmoid(x) * x^2) / n, x [1, n].
inline Tensor hessian_f(const Tensor& x, const Tensor& W, const Tensor& b) {
  const double n = static_cast<double>(x.size(1));
  return sum(tanh(matmul(x, transpose(W, 0, 1)) + b) * softmax(x, 1)) + sum(sigmoid(x) * x * x) / n;
}

// Row i of the Hessian is the gradient of the gradient's entry i: n tg::grad calls on one
// create_graph gradient (retain_graph: every row walks the same recorded graph).
inline Tensor exact_hessian(const Tensor& x0, const Tensor& W, const Tensor& b) {
  Tensor x = x0.detach().requires_grad_();
  Tensor g = grad({hessian_f(x, W, b)}, {x}, {.grad_outputs = {}, .create_graph = true})[0];  // [1, n]
  const int64_t n = x.size(1);
  std::vector<Tensor> rows;
  for (int64_t i = 0; i < n; ++i)
    rows.push_back(grad({select(select(g, 0, 0), 0, i)}, {x}, {.grad_outputs = {}, .retain_graph = true})[0]);
  return cat(rows, 0);  // [n, n]
}

inline Tensor gradient_at(const Tensor& x0, const Tensor& W, const Tensor& b) {
  Tensor x = x0.detach().requires_grad_();
  return grad({hessian_f(x, W, b)}, {x})[0];
}

// Central differences of the gradient: column j is (g(x + h e_j) - g(x - h e_j)) / 2h.
inline Tensor fd_hessian(const Tensor& x, const Tensor& W, const Tensor& b, double h) {
  const int64_t n = x.size(1);
  std::vector<double> out(static_cast<size_t>(n * n));
  std::vector<double> base = x.to_vector();
  for (int64_t j = 0; j < n; ++j) {
    std::vector<double> up = base, down = base;
    up[j] += h;
    down[j] -= h;
    std::vector<double> gu = gradient_at(from_vector(up, x.shape()), W, b).to_vector();
    std::vector<double> gd = gradient_at(from_vector(down, x.shape()), W, b).to_vector();
    for (int64_t i = 0; i < n; ++i) out[i * n + j] = (gu[i] - gd[i]) / (2 * h);
  }
  return from_vector(out, Shape{n, n});
}

struct HessianResult {
  Tensor exact, fd;
  double h = 0, tolerance = 0;  // the finite-difference step and the error it allows
  Diff fd_diff, torch_diff, symmetry, f_diff, grad_diff;
};

// Central differences err by h^2/6 |f''''| (truncation) plus about eps |g| / h (rounding). Every
// derivative of f up to the fourth is O(1) here (tanh, sigmoid and softmax of O(1) arguments,
// |W| <= 1, n = 5), so with h = 1e-4 the error is ~1e-9; the tolerance allows fourth derivatives
// up to 60 (10 h^2) and 100 eps / h of rounding.
inline HessianResult hessian(const json& ref, double h = 1e-4) {
  Tensor W = f64(ref.at("W")), b = f64(ref.at("b")), x = f64(ref.at("x"));
  HessianResult r;
  r.h = h;
  r.tolerance = 10 * h * h + 100 * DBL_EPSILON / h;
  r.exact = exact_hessian(x, W, b);
  r.fd = fd_hessian(x, W, b, h);
  r.fd_diff.add(r.exact, r.fd);
  r.torch_diff.add(r.exact, f64(ref.at("hessian")));
  r.symmetry.add(r.exact, transpose(r.exact, 0, 1).contiguous());
  r.f_diff.add(hessian_f(x, W, b).item(), ref.at("f").get<double>());
  r.grad_diff.add(gradient_at(x, W, b), f64(ref.at("grad")));
  return r;
}

}  // namespace tg::second_order
