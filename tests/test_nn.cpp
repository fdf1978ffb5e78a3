// Tests for the nn layer: BPTT against a hand-written reference, gradient checks of every cell and
// sequence module, masking against per-sequence runs, and the Module API.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "tapegrad/autograd/gradcheck.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/nn/text_classifier.h"

using namespace tg;

namespace {

constexpr DType F64 = DType::Float64;
enum class Kind { RNN, LSTM, GRU };
const char* kind_name(Kind k) { return k == Kind::RNN ? "RNN" : k == Kind::LSTM ? "LSTM" : "GRU"; }

Tensor dot(const Tensor& a, const Tensor& w) { return sum(a * w); }

double max_diff(const Tensor& a, const Tensor& b) {
  REQUIRE((a.defined() && b.defined()));
  REQUIRE(a.shape() == b.shape());
  auto x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no exception)";
}

std::unique_ptr<nn::RNNBase> make(Kind k, const nn::RNNOptions& o) {
  if (k == Kind::RNN) return std::make_unique<nn::RNN>(o);
  if (k == Kind::LSTM) return std::make_unique<nn::LSTM>(o);
  return std::make_unique<nn::GRU>(o);
}

nn::RNNOutput run(nn::RNNBase& m, Kind k, const Tensor& x, const Tensor& h0, const Tensor& c0,
                  const nn::Lengths& len = {}) {
  if (k == Kind::RNN) return static_cast<nn::RNN&>(m)(x, h0, len);
  if (k == Kind::LSTM) return static_cast<nn::LSTM&>(m)(x, h0, c0, len);
  return static_cast<nn::GRU&>(m)(x, h0, len);
}

// The parameter slots themselves, so gradcheck's private copies can be bound into the module.
std::vector<Tensor*> slots(nn::RNNCellBase& c) { return {&c.weight_ih, &c.weight_hh, &c.bias_ih, &c.bias_hh}; }
std::vector<Tensor*> slots(nn::RNNBase& m) {
  std::vector<Tensor*> out;
  for (int64_t l = 0; l < m.options.num_layers; ++l)
    for (int d = 0; d < m.num_directions(); ++d)
      for (Tensor* s : slots(m.cell(l, d == 1))) out.push_back(s);
  return out;
}
void bind_params(const std::vector<Tensor*>& s, const std::vector<Tensor>& in, size_t first) {
  for (size_t i = 0; i < s.size(); ++i) *s[i] = in[first + i];
}

}  // namespace

TEST_SUITE("nn") {

TEST_CASE("BPTT through nn::RNN matches a hand-written reference") {
  manual_seed(11);
  const int64_t I = 3, H = 4, T = 5, B = 2;
  nn::RNN rnn({.input_size = I, .hidden_size = H, .dtype = F64});
  Tensor x = randn({T, B, I}, F64).requires_grad_();
  Tensor w_last = randn({1, B, H}, F64), w_out = randn({T, B, H}, F64);
  nn::RNNOutput r = rnn(x);
  Tensor loss = dot(r.h_n, w_last) + dot(r.output, w_out);
  loss.backward(/*retain_graph=*/true);

  auto Wih = rnn.cell(0).weight_ih.to_vector(), Whh = rnn.cell(0).weight_hh.to_vector();
  auto bih = rnn.cell(0).bias_ih.to_vector(), bhh = rnn.cell(0).bias_hh.to_vector();
  auto xs = x.to_vector(), wl = w_last.to_vector(), wo = w_out.to_vector();
  auto X = [&](int64_t t, int64_t b, int64_t i) { return xs[(t * B + b) * I + i]; };
  // hs[t + 1][b * H + j] = h_t; hs[0] = h_{-1} = 0
  std::vector<std::vector<double>> hs(T + 1, std::vector<double>(B * H, 0.0));
  for (int64_t t = 0; t < T; ++t)
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) {
        double a = bih[j] + bhh[j];
        for (int64_t i = 0; i < I; ++i) a += Wih[j * I + i] * X(t, b, i);
        for (int64_t k = 0; k < H; ++k) a += Whh[j * H + k] * hs[t][b * H + k];
        hs[t + 1][b * H + j] = std::tanh(a);
      }
  std::vector<double> gWih(H * I, 0), gWhh(H * H, 0), gb(H, 0), gx(T * B * I, 0), carry(B * H, 0);
  for (int64_t t = T - 1; t >= 0; --t) {
    std::vector<double> delta(B * H);
    for (int64_t n = 0; n < B * H; ++n) {
      double dh = carry[n] + wo[t * B * H + n] + (t == T - 1 ? wl[n] : 0.0);  // W_hh^T delta_{t+1} + dL/dh_t
      delta[n] = dh * (1 - hs[t + 1][n] * hs[t + 1][n]);
    }
    std::fill(carry.begin(), carry.end(), 0.0);
    for (int64_t b = 0; b < B; ++b)
      for (int64_t j = 0; j < H; ++j) {
        double dj = delta[b * H + j];
        gb[j] += dj;
        for (int64_t i = 0; i < I; ++i) {
          gWih[j * I + i] += dj * X(t, b, i);
          gx[(t * B + b) * I + i] += Wih[j * I + i] * dj;
        }
        for (int64_t k = 0; k < H; ++k) {
          gWhh[j * H + k] += dj * hs[t][b * H + k];
          carry[b * H + k] += Whh[j * H + k] * dj;
        }
      }
  }
  auto near = [](const Tensor& g, const std::vector<double>& ref) {
    auto v = g.to_vector();
    REQUIRE(v.size() == ref.size());
    for (size_t i = 0; i < v.size(); ++i) CHECK(std::abs(v[i] - ref[i]) < 1e-10);
  };
  CHECK(max_diff(r.h_n.reshape({B, H}), from_vector(hs[T], {B, H})) < 1e-12);
  near(rnn.cell(0).weight_ih.grad(), gWih);
  near(rnn.cell(0).weight_hh.grad(), gWhh);
  near(rnn.cell(0).bias_ih.grad(), gb);
  near(rnn.cell(0).bias_hh.grad(), gb);
  near(x.grad(), gx);
  loss.backward();  // through the retained graph again: every gradient doubles
  for (auto& g : gx) g *= 2;
  near(x.grad(), gx);
}

TEST_CASE("cells compute PyTorch's gate equations") {
  manual_seed(12);
  const int64_t I = 2, H = 3;
  Tensor x = randn({1, I}, F64), h = randn({1, H}, F64), c = randn({1, H}, F64);
  auto xv = x.to_vector(), hv = h.to_vector(), cv = c.to_vector();
  // pre(cell, gate, j) = (W_ih x + b_ih)[gate*H + j], and rec(...) the same for W_hh h + b_hh
  auto affine = [](const Tensor& W, const Tensor& b, const std::vector<double>& v, int64_t row) {
    auto w = W.to_vector();
    double a = b.to_vector()[row];
    for (size_t i = 0; i < v.size(); ++i) a += w[row * v.size() + i] * v[i];
    return a;
  };
  auto sig = [](double v) { return 1 / (1 + std::exp(-v)); };
  nn::LSTMCell lstm(I, H, true, F64);
  nn::LSTMState s = lstm(x, {h, c});
  nn::GRUCell gru(I, H, true, F64);
  Tensor hg = gru(x, h);
  nn::RNNCell relu_cell(I, H, true, nn::Nonlinearity::ReLU, F64);
  Tensor hr = relu_cell(x, h);
  for (int64_t j = 0; j < H; ++j) {
    auto L = [&](int64_t g) { return affine(lstm.weight_ih, lstm.bias_ih, xv, g * H + j) +
                                     affine(lstm.weight_hh, lstm.bias_hh, hv, g * H + j); };
    double c_new = sig(L(1)) * cv[j] + sig(L(0)) * std::tanh(L(2));
    CHECK(s.c.at({0, j}) == doctest::Approx(c_new));
    CHECK(s.h.at({0, j}) == doctest::Approx(sig(L(3)) * std::tanh(c_new)));
    auto gi = [&](int64_t g) { return affine(gru.weight_ih, gru.bias_ih, xv, g * H + j); };
    auto gh = [&](int64_t g) { return affine(gru.weight_hh, gru.bias_hh, hv, g * H + j); };
    double r = sig(gi(0) + gh(0)), z = sig(gi(1) + gh(1)), n = std::tanh(gi(2) + r * gh(2));
    CHECK(hg.at({0, j}) == doctest::Approx((1 - z) * n + z * hv[j]));
    double pre = affine(relu_cell.weight_ih, relu_cell.bias_ih, xv, j) + affine(relu_cell.weight_hh, relu_cell.bias_hh, hv, j);
    CHECK(hr.at({0, j}) == doctest::Approx(std::max(pre, 0.0)));
  }
}

TEST_CASE("gradcheck: RNNCell (tanh, relu), LSTMCell, GRUCell") {
  manual_seed(13);
  const int64_t I = 2, H = 3, B = 2;
  auto check = [&](nn::RNNCellBase& cell, const std::function<Tensor(const std::vector<Tensor>&)>& f,
                   const char* name) {
    std::vector<Tensor> in{randn({B, I}, F64).requires_grad_(), randn({B, H}, F64).requires_grad_(),
                           randn({B, H}, F64).requires_grad_()};
    auto s = slots(cell);
    for (Tensor* p : s) in.push_back(*p);
    GradcheckOptions opt;
    opt.name = name;
    CHECK(gradcheck([&](const std::vector<Tensor>& v) { bind_params(s, v, 3); return f(v); }, in, opt).ok);
  };
  nn::RNNCell tanh_cell(I, H, true, nn::Nonlinearity::Tanh, F64), relu_cell(I, H, true, nn::Nonlinearity::ReLU, F64);
  nn::LSTMCell lstm(I, H, true, F64);
  nn::GRUCell gru(I, H, true, F64);
  check(tanh_cell, [&](auto& v) { return tanh_cell(v[0], v[1]); }, "RNNCell tanh");
  check(relu_cell, [&](auto& v) { return relu_cell(v[0], v[1]); }, "RNNCell relu");
  check(lstm, [&](auto& v) { auto s = lstm(v[0], {v[1], v[2]}); return cat({s.h, s.c}, 1); }, "LSTMCell");
  check(gru, [&](auto& v) { return gru(v[0], v[1]); }, "GRUCell");
}

TEST_CASE("gradcheck: 2-layer bidirectional RNN, LSTM, GRU; batch_first both ways; packed sorted and unsorted") {
  const int64_t I = 2, H = 3, T = 3, B = 2, L = 2;
  for (Kind k : {Kind::RNN, Kind::LSTM, Kind::GRU})
    for (bool batch_first : {false, true})
      for (int lengths_case : {0, 1, 2}) {  // none, sorted {3, 2}, unsorted {1, 3}
        std::string kind = kind_name(k);
        CAPTURE(kind);
        CAPTURE(batch_first);
        CAPTURE(lengths_case);
        manual_seed(14);
        auto m = make(k, {.input_size = I, .hidden_size = H, .num_layers = L, .batch_first = batch_first,
                          .bidirectional = true, .dtype = F64});
        Shape xs = batch_first ? Shape{B, T, I} : Shape{T, B, I};
        Shape os = batch_first ? Shape{B, T, 2 * H} : Shape{T, B, 2 * H};
        Tensor wo = randn(os, F64), wh = randn({2 * L, B, H}, F64), wc = randn({2 * L, B, H}, F64);
        std::vector<Tensor> in{randn(xs, F64).requires_grad_(), randn({2 * L, B, H}, F64).requires_grad_(),
                               randn({2 * L, B, H}, F64).requires_grad_()};
        auto s = slots(*m);
        for (Tensor* p : s) in.push_back(*p);
        nn::Lengths len = lengths_case == 0   ? nn::Lengths{}
                          : lengths_case == 1 ? nn::Lengths{3, 2}
                                              : nn::Lengths{1, 3};
        auto f = [&](const std::vector<Tensor>& v) {
          bind_params(s, v, 3);
          nn::RNNOutput r = run(*m, k, v[0], v[1], v[2], len);
          Tensor cn = r.c_n.defined() ? dot(r.c_n, wc) : scalar(0.0, F64);
          return stack({dot(r.output, wo), dot(r.h_n, wh), cn}, 0);
        };
        GradcheckOptions opt;
        opt.name = kind_name(k);
        CHECK(gradcheck(f, in, opt).ok);
      }
}

TEST_CASE("masking: a padded batch equals per-sequence runs (outputs, h_n, c_n, all gradients)") {
  const int64_t I = 2, H = 3, T = 4, B = 3, L = 2;
  const std::vector<int64_t> lens{4, 2, 3};
  for (Kind k : {Kind::RNN, Kind::LSTM, Kind::GRU})
    for (bool bidir : {false, true}) {
      std::string kind = kind_name(k);
      CAPTURE(kind);
      CAPTURE(bidir);
      manual_seed(15);
      const int64_t D = bidir ? 2 : 1;
      auto m = make(k, {.input_size = I, .hidden_size = H, .num_layers = L, .bidirectional = bidir, .dtype = F64});
      const bool lstm = k == Kind::LSTM;
      Tensor x = randn({T, B, I}, F64).requires_grad_();  // padded steps hold garbage on purpose
      Tensor h0 = randn({L * D, B, H}, F64).requires_grad_(), c0 = randn({L * D, B, H}, F64).requires_grad_();
      Tensor wh = randn({L * D, B, H}, F64), wc = randn({L * D, B, H}, F64), wo = randn({T, B, D * H}, F64);
      auto loss_of = [&](const nn::RNNOutput& r, const Tensor& wh_, const Tensor& wc_, const Tensor& wo_) {
        Tensor l = dot(r.h_n, wh_) + dot(r.output, wo_);
        return lstm ? l + dot(r.c_n, wc_) : l;
      };
      auto grads = [&] {
        std::vector<Tensor> g{x.grad(), h0.grad()};
        if (lstm) g.push_back(c0.grad());
        for (auto& p : m->parameters()) g.push_back(p.grad());
        return g;
      };
      nn::Lengths len = bidir ? nn::Lengths(from_vector(lens, {B})) : nn::Lengths(lens);  // both forms
      nn::RNNOutput batched = run(*m, k, x, h0, c0, len);
      loss_of(batched, wh, wc, wo).backward();
      auto g_batched = grads();
      m->zero_grad();
      for (Tensor* t : {&x, &h0, &c0}) t->zero_grad();

      Tensor total = scalar(0.0, F64);
      for (int64_t b = 0; b < B; ++b) {
        auto col = [&](const Tensor& t) { return narrow(t, 1, b, 1); };
        Tensor xb = narrow(col(x), 0, 0, lens[b]);
        nn::RNNOutput r = run(*m, k, xb, col(h0), col(c0));
        total = total + loss_of(r, col(wh), col(wc), narrow(col(wo), 0, 0, lens[b]));
        CHECK(max_diff(r.h_n, col(batched.h_n)) < 1e-12);
        if (lstm) CHECK(max_diff(r.c_n, col(batched.c_n)) < 1e-12);
        CHECK(max_diff(r.output, narrow(col(batched.output), 0, 0, lens[b])) < 1e-12);
        if (lens[b] < T) CHECK(max_diff(narrow(col(batched.output), 0, lens[b], T - lens[b]),
                                        zeros({T - lens[b], 1, D * H}, F64)) == 0.0);
      }
      total.backward();
      auto g_single = grads();
      REQUIRE(g_single.size() == g_batched.size());
      for (size_t i = 0; i < g_single.size(); ++i) {
        CAPTURE(i);
        CHECK(max_diff(g_batched[i], g_single[i]) < 1e-10);
      }
    }
}

TEST_CASE("output_sequence = false: same final states, no output, same gradients") {
  const int64_t I = 3, H = 4, T = 5, B = 4;
  for (Kind k : {Kind::RNN, Kind::LSTM, Kind::GRU})
    for (int64_t layers : {1, 2}) {
      std::string kind = kind_name(k);
      CAPTURE(kind);
      CAPTURE(layers);
      nn::RNNOptions o{.input_size = I, .hidden_size = H, .num_layers = layers, .batch_first = true,
                       .bidirectional = true, .dtype = F64};
      manual_seed(21);
      auto full_model = make(k, o);
      o.output_sequence = false;
      auto lean_model = make(k, o);
      lean_model->load_state_dict(full_model->state_dict());
      Tensor x = randn({B, T, I}, F64);
      const nn::Lengths len{2, 5, 1, 4};
      nn::RNNOutput a = run(*full_model, k, x, Tensor(), Tensor(), len);
      nn::RNNOutput b = run(*lean_model, k, x, Tensor(), Tensor(), len);
      CHECK(a.output.defined());
      CHECK_FALSE(b.output.defined());
      CHECK(max_diff(a.h_n, b.h_n) == 0.0);
      (sum(a.h_n) + sum(b.h_n)).backward();  // one graph: the models share no parameters
      auto pa = full_model->parameters(), pb = lean_model->parameters();
      for (size_t i = 0; i < pa.size(); ++i) CHECK(max_diff(pa[i].grad(), pb[i].grad()) == 0.0);
    }
}

TEST_CASE("modules name their ops for anomaly errors: register_module paths, set_name on the model") {
  manual_seed(22);
  nn::TextClassifier model({.vocab_size = 5, .embed = 3, .hidden = 4, .cell = nn::CellType::LSTM});
  CHECK(model.name().empty());
  CHECK(model.rnn->name() == "rnn");
  CHECK(static_cast<nn::RNNBase&>(*model.rnn).cell(0).name() == "rnn.cell0");
  model.set_name("clf");
  CHECK(model.fc->name() == "clf.fc");
  CHECK(static_cast<nn::RNNBase&>(*model.rnn).cell(0).name() == "clf.rnn.cell0");
  {
    NoGradGuard no_grad;
    Tensor& w = static_cast<nn::RNNBase&>(*model.rnn).cell(0).weight_hh;
    fill_(w, std::numeric_limits<double>::infinity());
  }
  DetectAnomalyGuard guard;
  Tensor tokens = from_vector(std::vector<int64_t>{1, 2, 3, 4}, {2, 2});
  CHECK_THROWS_WITH_AS(model.forward(tokens, nn::Lengths{2, 1}), doctest::Contains("in module 'clf.rnn.cell0'"),
                       std::runtime_error);
}

TEST_CASE("Module: names, counts, state_dict round trip, load errors leave the model unchanged") {
  manual_seed(16);
  nn::LSTM lstm({.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true});
  auto named = lstm.named_parameters();
  REQUIRE(named.size() == 16);
  CHECK(named[0].first == "cell0.weight_ih");
  CHECK(named[5].first == "cell0_reverse.weight_hh");
  CHECK(named[15].first == "cell1_reverse.bias_hh");
  CHECK(lstm.parameters().size() == 16);
  CHECK(named[8].second.shape() == Shape{16, 8});  // layer 1 sees both directions of layer 0
  auto flat = lstm.flat_named_parameters();
  CHECK(flat[5].first == "weight_hh_l0_reverse");
  CHECK(flat[5].second.impl() == named[5].second.impl());

  nn::Sequential seq{std::make_shared<nn::Linear>(3, 5), std::make_shared<nn::Tanh>(),
                     std::make_shared<nn::Linear>(5, 2, false)};
  std::vector<std::string> names;
  for (auto& [n, t] : seq.named_parameters()) names.push_back(n);
  CHECK(names == std::vector<std::string>{"0.weight", "0.bias", "2.weight"});

  auto sd = lstm.state_dict();
  CHECK(sd.size() == 16);
  Tensor w = lstm.cell(1).weight_hh;  // a handle taken before loading must stay valid
  nn::LSTM other({.input_size = 3, .hidden_size = 4, .num_layers = 2, .bidirectional = true});
  lstm.load_state_dict(other.state_dict());
  CHECK(max_diff(w, other.cell(1).weight_hh) == 0.0);
  lstm.load_state_dict(sd);
  CHECK(max_diff(w, sd.at("cell1.weight_hh")) == 0.0);
  CHECK(w.requires_grad());

  auto bad = other.state_dict();
  bad.erase("cell0.bias_ih");
  bad["cell9.weight"] = zeros({1});
  bad["cell1.weight_ih"] = zeros({8, 16});
  std::string msg = message_of([&] { lstm.load_state_dict(bad); });
  CHECK(msg.find("missing keys: cell0.bias_ih") != std::string::npos);
  CHECK(msg.find("unexpected keys: cell9.weight") != std::string::npos);
  CHECK(msg.find("cell1.weight_ih: expected shape [16, 8], got [8, 16]") != std::string::npos);
  auto after = lstm.state_dict();
  for (auto& [n, t] : sd) CHECK(max_diff(after.at(n), t) == 0.0);  // nothing partially loaded
  bad.erase("cell1.weight_ih");
  CHECK_THROWS_AS(lstm.load_state_dict(bad), std::invalid_argument);
  lstm.load_state_dict(bad, /*strict=*/false);  // missing/unexpected tolerated, the rest loaded
  CHECK(max_diff(lstm.cell(0).weight_ih, other.cell(0).weight_ih) == 0.0);
  CHECK(max_diff(lstm.cell(0).bias_ih, sd.at("cell0.bias_ih")) == 0.0);
  bad["cell1.weight_ih"] = zeros({8, 16});
  CHECK_THROWS_AS(lstm.load_state_dict(bad, false), std::invalid_argument);  // shapes always checked
}

// A module written the intended way: members bound to registered slots.
struct Scaler : nn::Module {
  Tensor& scale = register_parameter("scale", ones({2}));
  Tensor& running = register_buffer("running", zeros({2}));
  Tensor& steps = register_buffer("steps", zeros({1}, DType::Int64));
  Tensor forward(const Tensor& x) { return x * scale; }
};
struct TiedPair : nn::Module {
  std::shared_ptr<nn::Linear> a = register_module("a", std::make_shared<nn::Linear>(3, 3));
  std::shared_ptr<nn::Linear> b = register_module("b", std::make_shared<nn::Linear>(3, 3));
  TiedPair() { b->weight = a->weight; }  // assigning a member rebinds the registered slot
};

TEST_CASE("Module: custom modules, buffers, tied weights") {
  Scaler s;
  CHECK(s.parameters().size() == 1);
  auto bufs = s.named_buffers();
  REQUIRE(bufs.size() == 2);
  CHECK((bufs[0].first == "running" && bufs[1].first == "steps"));
  s.to(F64);
  CHECK((s.scale.dtype() == F64 && s.running.dtype() == F64 && s.steps.dtype() == DType::Int64));
  CHECK(s.state_dict().size() == 3);
  CHECK(s.forward(ones({2}, F64)).requires_grad());
  CHECK_THROWS_AS(nn::Module().load_state_dict(s.state_dict()), std::invalid_argument);

  TiedPair t;
  auto named = t.named_parameters();
  REQUIRE(named.size() == 3);  // b.weight is a.weight, listed once
  CHECK(named[2].first == "b.bias");
  t.to(F64);
  CHECK(t.a->weight.impl() == t.b->weight.impl());
  CHECK(t.a->weight.dtype() == F64);
  CHECK(t.state_dict().size() == 4);
}

TEST_CASE("Module: to(Float64), train/eval, zero_grad") {
  manual_seed(17);
  nn::Linear lin(4, 3);
  lin.to(F64);
  CHECK(lin.weight.dtype() == F64);
  for (auto& p : lin.parameters()) CHECK((p.dtype() == F64 && p.requires_grad() && p.is_leaf()));
  lin(randn({2, 4}, F64)).sum().backward();
  CHECK(lin.weight.grad().dtype() == F64);
  lin.zero_grad();
  CHECK(!lin.weight.grad().defined());
  nn::GRU gru({.input_size = 2, .hidden_size = 3});
  gru.to(F64);
  CHECK(gru(randn({2, 1, 2}, F64)).h_n.dtype() == F64);
  CHECK(message_of([&] { gru(randn({2, 1, 2})); }).find("GRU: input is float32 but the parameters are float64") !=
        std::string::npos);

  nn::Sequential seq{std::make_shared<nn::Linear>(8, 8), std::make_shared<nn::Dropout>(0.5)};
  Tensor x = ones({4, 8});
  CHECK(seq.is_training());
  seq.eval();
  CHECK(!seq[1]->is_training());
  CHECK(max_diff(seq(x), seq(x)) == 0.0);
  seq.train();
  auto y = nn::Dropout(0.5)(x).to_vector();
  CHECK(std::count(y.begin(), y.end(), 0.0) + std::count(y.begin(), y.end(), 2.0) == 32);
  CHECK(std::count(y.begin(), y.end(), 0.0) > 0);

  nn::RNN deep({.input_size = 3, .hidden_size = 8, .num_layers = 3, .dropout = 0.5});
  Tensor xs = randn({5, 2, 3});
  deep.eval();
  Tensor e1 = deep(xs).output, e2 = deep(xs).output;
  CHECK(max_diff(e1, e2) == 0.0);
  deep.train();
  CHECK(max_diff(deep(xs).output, e1) > 0.0);
}

TEST_CASE("init: Linear and RNN ranges, Embedding padding, initializers") {
  manual_seed(18);
  auto in_range = [](const Tensor& t, double bound) {
    auto v = t.to_vector();
    double m = 0;
    for (double e : v) m = std::max(m, std::abs(e));
    CHECK(m <= bound);
    CHECK(m > 0.8 * bound);  // actually spread over the range
  };
  nn::Linear lin(64, 32);
  in_range(lin.weight, 1 / 8.0);
  in_range(lin.bias, 1 / 8.0);
  nn::LSTM lstm({.input_size = 5, .hidden_size = 16, .bidirectional = true});
  for (auto& p : lstm.parameters()) in_range(p, 0.25);

  nn::Embedding emb(5, 3, /*padding_idx=*/1);
  CHECK(max_diff(select(emb.weight, 0, 1), zeros({3})) == 0.0);
  emb(from_vector(std::vector<int64_t>{1, 2, 1, 4}, {2, 2})).sum().backward();
  Tensor g = emb.weight.grad();
  CHECK(max_diff(select(g, 0, 1), zeros({3})) == 0.0);
  CHECK(max_diff(select(g, 0, 2), ones({3})) == 0.0);

  Tensor q = empty({3, 5}, F64), q2 = empty({5, 3}, F64);
  nn::init::orthogonal_(q);
  nn::init::orthogonal_(q2, 2.0);
  Tensor eye = eq(arange(3, F64).reshape({3, 1}), arange(3, F64));
  CHECK(max_diff(matmul(q, q.t()), eye) < 1e-12);
  CHECK(max_diff(matmul(q2.t(), q2), 4.0 * eye) < 1e-12);
  Tensor a = empty({20, 30}), b = empty({20, 30});
  manual_seed(3);
  nn::init::xavier_uniform_(a);
  manual_seed(3);
  nn::init::xavier_uniform_(b);
  CHECK(max_diff(a, b) == 0.0);
  in_range(a, std::sqrt(6.0 / 50));
  nn::init::kaiming_uniform_(a);
  in_range(a, 1 / std::sqrt(30.0));
  nn::init::ones_(narrow(lstm.cell(0).bias_hh.detach(), 0, 16, 16));  // forget-gate bias via a view
  CHECK(lstm.cell(0).bias_hh.at({20}) == 1.0);
}

TEST_CASE("shape errors name the module and both shapes") {
  nn::RNN rnn({.input_size = 3, .hidden_size = 4, .num_layers = 2});
  auto has = [](const std::string& m, std::initializer_list<const char*> parts) {
    for (auto* p : parts) CHECK_MESSAGE(m.find(p) != std::string::npos, m);
  };
  has(message_of([&] { rnn(zeros({5, 2, 7})); }), {"RNN", "[T, B, input_size]", "[5, 2, 7]"});
  has(message_of([&] { rnn(zeros({5, 2, 3}), zeros({1, 2, 4})); }), {"RNN: h0", "[2, 2, 4]", "[1, 2, 4]"});
  has(message_of([&] { rnn(zeros({5, 2, 3}), {}, {5, 6}); }), {"RNN: lengths[1] = 6", "[1, 5]"});
  has(message_of([&] { rnn(zeros({5, 2, 3}), {}, {5}); }), {"1 entries for a batch of 2"});
  nn::LSTMCell cell(3, 4);
  has(message_of([&] { cell(zeros({2, 3}), {zeros({2, 4}), zeros({3, 4})}); }), {"LSTMCell: c", "[2, 4]", "[3, 4]"});
  has(message_of([&] { nn::Linear(3, 4)(zeros({2, 5})); }), {"Linear(3, 4)", "[2, 5]"});
}

}  // TEST_SUITE
