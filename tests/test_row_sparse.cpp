// Row-sparse embedding gradients (autograd/row_sparse.h): training with them must give the very
// bits of the dense path (detail::set_row_sparse_grads(false)), for the parameters, the gradients,
// the clipped norms and the optimizer state, however the table's gradient is reached.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/row_sparse.h"
#include "tapegrad/optim/adagrad.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tapegrad/optim/rmsprop.h"
#include "tapegrad/optim/sgd.h"

using namespace tg;

namespace {

bool same_bits(const std::vector<double>& a, const std::vector<double>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(double)) == 0;
}

// Restores the thread count and the row-sparse switch however a test ends.
struct Restore {
  int threads = get_num_threads();
  ~Restore() {
    set_num_threads(threads);
    detail::set_row_sparse_grads(true);
  }
};

enum class Use { One, Accumulate, TwoLookups, Tied, Padding, UserWrite, Hook, ThroughNode };

struct Setup {
  Use use = Use::One;
  std::string opt = "adam";
  int64_t V = 64, E = 6, B = 4, T = 3;
  int steps = 6;
  double max_norm = 0.05;  // small enough that most steps are clipped
  DType dtype = DType::Float32;
};

struct Result {
  std::vector<double> w, u;
  std::vector<std::vector<double>> grads;  // W's gradient after each step (clipped)
  std::vector<double> norms;
  std::string state;
  int marked = 0;  // steps whose W gradient was still marked when the step began
  int marked_after = 0;  // ... and after it (kept only by updates that honour the mark)
  int clipped = 0;
};

std::unique_ptr<optim::Optimizer> make_opt(const std::string& kind, std::vector<Tensor> params) {
  if (kind == "adam") return std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = 1e-2});
  if (kind == "adam_l2_amsgrad")
    return std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = 1e-2, .weight_decay = 0.1, .amsgrad = true});
  if (kind == "adamw") return std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = 1e-2, .weight_decay = 0.1});
  if (kind == "sgd_momentum")
    return std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .weight_decay = 0.01});
  if (kind == "sgd_nesterov")
    return std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = 0.1, .momentum = 0.9, .nesterov = true});
  if (kind == "sgd") return std::make_unique<optim::SGD>(params, optim::SGDOptions{.lr = 0.1});
  if (kind == "rmsprop") return std::make_unique<optim::RMSprop>(params, optim::RMSpropOptions{.momentum = 0.5});
  if (kind == "adagrad") return std::make_unique<optim::Adagrad>(params, optim::AdagradOptions{});
  FAIL("unknown optimizer " << kind);
  return nullptr;
}

struct Model {
  Tensor W, U;
  explicit Model(const Setup& s) {
    W = (randn({s.V, s.E}, s.dtype) * 0.5).requires_grad_();
    U = randn({s.E, 1}, s.dtype).requires_grad_();
  }
  Tensor loss(const Setup& s, const Tensor& idx, const Tensor& idx2) const {
    const int64_t pad = s.use == Use::Padding ? 2 : -1;
    Tensor h = sum(embedding(s.use == Use::ThroughNode ? W.clone() : W, idx, pad), {1});
    if (s.use == Use::TwoLookups) h = h + sum(embedding(W, idx2), {1});
    h = tanh(h);
    Tensor out = mean(matmul(h, U) * matmul(h, U));
    if (s.use == Use::Tied) out = out + mean(tanh(linear(h, W)));  // W's gradient also gets a product
    return out;
  }
};

// Adds 1 to g's last element through data<T>(), which bumps no version (a table's last row is
// rarely looked up, so a stale mark would hide the write).
void raw_write(const Tensor& g) {
  if (g.dtype() == DType::Float32) g.data<float>()[g.numel() - 1] += 1.0f;
  else g.data<double>()[g.numel() - 1] += 1.0;
}

// One training run from a fixed seed; the row-sparse switch decides the path.
Result train(const Setup& s, bool sparse, int from_step = 0, Model* resume = nullptr,
             const nlohmann::json* opt_state = nullptr) {
  detail::set_row_sparse_grads(sparse);
  manual_seed(7);
  Model fresh(s);
  Model& m = resume ? *resume : fresh;
  if (s.use == Use::Hook && !resume)
    m.W.register_hook([](const Tensor& g) {
      raw_write(g);
      return Tensor();
    });
  auto opt = make_opt(s.opt, {m.W, m.U});
  if (opt_state) opt->load_state_dict(*opt_state);
  optim::ClipGradNorm clip(s.max_norm);
  opt->add_hook(clip);
  Result r;
  for (int step = 0; step < s.steps; ++step) {
    // A fresh batch every step (drawn even when resuming, so the draws line up), with some
    // index 2s for the padding case.
    Tensor idx = randint(0, s.V, {s.B, s.T}), idx2 = randint(0, s.V, {s.B, s.T});
    if (step < from_step) continue;
    opt->zero_grad();
    m.loss(s, idx, idx2).backward();
    if (s.use == Use::Accumulate) m.loss(s, idx2, idx).backward();  // no zero_grad between
    if (s.use == Use::UserWrite) raw_write(m.W.grad());  // grad() must have dropped the mark
    if (detail::zero_rows(detail::param_grad(m.W))) ++r.marked;
    opt->step();
    if (detail::zero_rows(detail::param_grad(m.W))) ++r.marked_after;
    r.norms.push_back(clip.last_norm());
    if (clip.last_norm() > s.max_norm) ++r.clipped;
    r.grads.push_back(detail::param_grad(m.W).to_vector());
  }
  r.w = m.W.to_vector();
  r.u = m.U.to_vector();
  r.state = opt->state_dict().dump();
  return r;
}

void check_same(const Result& a, const Result& b) {
  CHECK(same_bits(a.w, b.w));
  CHECK(same_bits(a.u, b.u));
  CHECK(same_bits(a.norms, b.norms));
  REQUIRE(a.grads.size() == b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) CHECK(same_bits(a.grads[i], b.grads[i]));
  CHECK(a.state == b.state);
}

}  // namespace

TEST_CASE("row-sparse embedding gradients train bit for bit like dense ones, for every optimizer") {
  Restore restore;
  for (const char* opt : {"adam", "adam_l2_amsgrad", "adamw", "sgd_momentum", "sgd_nesterov", "sgd", "rmsprop",
                          "adagrad"}) {
    for (DType dtype : {DType::Float32, DType::Float64}) {
      CAPTURE(opt);
      CAPTURE(dtype_name(dtype));
      Setup s{.opt = opt, .dtype = dtype};
      const Result sparse = train(s, true), dense = train(s, false);
      check_same(sparse, dense);
      CHECK(sparse.marked == s.steps);  // the row-sparse path really ran
      CHECK(dense.marked == 0);
      const bool honours = std::string(opt).starts_with("adam") || std::string(opt).starts_with("sgd");
      CHECK(sparse.marked_after == (honours ? s.steps : 0));
      CHECK(sparse.clipped > 0);
    }
  }
}

TEST_CASE("row-sparse gradients: accumulation, two lookups, tied weights, padding_idx, user writes") {
  Restore restore;
  struct Case {
    Use use;
    const char* name;
    bool stays_marked;
  };
  for (const Case c : {Case{Use::Accumulate, "two backwards", true}, Case{Use::TwoLookups, "two lookups", true},
                       Case{Use::Tied, "embedding + linear", false}, Case{Use::Padding, "padding_idx", true},
                       Case{Use::UserWrite, "write through grad()", false}, Case{Use::Hook, "leaf hook", false},
                       Case{Use::ThroughNode, "through clone()", false}}) {
    for (const char* opt : {"adam", "adamw", "sgd_momentum"}) {
      CAPTURE(c.name);
      CAPTURE(opt);
      Setup s{.use = c.use, .opt = opt};
      const Result sparse = train(s, true), dense = train(s, false);
      check_same(sparse, dense);
      CHECK(sparse.marked == (c.stays_marked ? s.steps : 0));
    }
  }
}

TEST_CASE("row-sparse gradients: padding rows stay zero and untouched rows still move under Adam") {
  Restore restore;
  manual_seed(3);
  Tensor W = randn({10, 3}).requires_grad_();
  const Tensor before = W.clone();
  optim::Adam opt({W}, {.lr = 0.1});
  opt.zero_grad();
  sum(embedding(W, from_vector(std::vector<int64_t>{1, 2, 2, 5}, {4}), 2)).backward();
  const Tensor g = detail::param_grad(W);
  REQUIRE(detail::zero_rows(g));
  CHECK(detail::zero_rows(g)->rows == std::vector<int64_t>{1, 5});
  opt.step();  // a first Adam step moves only rows with a gradient; the state of every row is written
  CHECK(W.at({2, 0}) == before.at({2, 0}));
  CHECK(W.at({1, 0}) != before.at({1, 0}));
  CHECK(W.grad().at({2, 1}) == 0.0);
  CHECK_FALSE(detail::zero_rows(g));  // W.grad() above handed it out
}

TEST_CASE("row-sparse gradients: tg::grad hands out no marked gradient") {
  Restore restore;
  manual_seed(5);
  Tensor W = randn({40, 4}).requires_grad_();
  const Tensor idx = from_vector(std::vector<int64_t>{3, 7, 3}, {3});
  const Tensor g = tg::grad({sum(tanh(embedding(W, idx)))}, {W})[0];
  CHECK_FALSE(detail::zero_rows(g));
  detail::set_row_sparse_grads(false);
  CHECK(same_bits(g.to_vector(), tg::grad({sum(tanh(embedding(W, idx)))}, {W})[0].to_vector()));
}

TEST_CASE("row-sparse gradients: large tables on two threads match one-thread dense bits") {
  Restore restore;
  // 3000 x 50: several 65,536-element norm blocks, rows not a multiple of 8 long, and enough
  // elements for the updates to be split over threads.
  Setup s{.V = 3000, .E = 50, .B = 32, .T = 20, .steps = 4, .max_norm = 0.01};
  for (const char* opt : {"adam", "sgd_momentum"}) {
    CAPTURE(opt);
    s.opt = opt;
    set_num_threads(1);
    const Result dense = train(s, false);
    set_num_threads(2);
    const Result sparse2 = train(s, true), dense2 = train(s, false);
    set_num_threads(1);
    const Result sparse1 = train(s, true);
    check_same(sparse2, dense);
    check_same(dense2, dense);
    check_same(sparse1, dense);
    CHECK(sparse2.marked == s.steps);
  }
}

TEST_CASE("row-sparse gradients: an optimizer checkpoint taken mid-run resumes to the dense bits") {
  Restore restore;
  Setup s{.opt = "adam", .steps = 6};
  const Result dense = train(s, false);
  // Three steps, then a round trip of the parameters and the optimizer state through JSON text.
  Setup first = s;
  first.steps = 3;
  const Result head = train(first, true);
  const nlohmann::json state = nlohmann::json::parse(head.state);
  manual_seed(7);
  Model m(s);
  {
    NoGradGuard no_grad;
    copy_(m.W, from_vector(head.w, {s.V, s.E}).to(s.dtype));
    copy_(m.U, from_vector(head.u, {s.E, 1}).to(s.dtype));
  }
  const Result tail = train(s, true, 3, &m, &state);
  CHECK(same_bits(tail.w, dense.w));
  CHECK(same_bits(tail.u, dense.u));
  CHECK(tail.state == dense.state);
  CHECK(tail.marked == 3);
}

TEST_CASE("row-sparse kernels: the norm and the updates match the dense kernels bit for bit") {
  Restore restore;
  std::mt19937_64 rng(11);
  for (int threads : {1, 2}) {
    set_num_threads(threads);
    for (int64_t L : {1, 3, 8, 13, 50, 128}) {
      for (int64_t R : {int64_t{5}, int64_t{3000}}) {
        CAPTURE(threads);
        CAPTURE(L);
        CAPTURE(R);
        const int64_t n = R * L;
        std::vector<int64_t> rows;
        for (int64_t r = 0; r < R; ++r)
          if (rng() % 5 == 0 || (r > 0 && !rows.empty() && rows.back() == r - 1 && rng() % 2)) rows.push_back(r);
        std::normal_distribution<double> normal;
        std::vector<float> g(static_cast<size_t>(n), 0.0f), p(g.size()), m(g.size()), v(g.size());
        for (int64_t r : rows)
          for (int64_t k = 0; k < L; ++k) g[static_cast<size_t>(r * L + k)] = static_cast<float>(normal(rng));
        for (size_t i = 0; i < g.size(); ++i) {
          p[i] = static_cast<float>(normal(rng));
          m[i] = static_cast<float>(normal(rng) * 0.1);
          v[i] = static_cast<float>(std::abs(normal(rng)) * 0.1);
        }
        const auto& k = kern::kernels_for(kern::Device::CPU, kern::DType::Float32);
        const int64_t nr = static_cast<int64_t>(rows.size());
        const double dense = k.reduce->norm_accumulate(g.data(), n, 2.0, 0.25);
        const double sparse = k.reduce->norm2_rows(g.data(), n, L, rows.data(), nr, 0.25);
        CHECK(std::memcmp(&dense, &sparse, sizeof(double)) == 0);

        kern::AdamScalars s{1e-2, 0.1, 0.9, 0.999, 1e-8, 0.05, 0.3, true, false};
        auto p2 = p, m2 = m, v2 = v, x1 = v, x2 = v;
        k.optim->adam(p.data(), g.data(), m.data(), v.data(), x1.data(), n, s);
        k.optim->adam_rows(p2.data(), g.data(), m2.data(), v2.data(), x2.data(), n, L, rows.data(), nr, s);
        CHECK(std::memcmp(p.data(), p2.data(), p.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(m.data(), m2.data(), m.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(v.data(), v2.data(), v.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(x1.data(), x2.data(), x1.size() * sizeof(float)) == 0);

        auto b1 = m, b2 = m;
        k.optim->sgd(p.data(), g.data(), b1.data(), n, false, 0.1, 0.01, 0.9, 0.1, false);
        k.optim->sgd_rows(p2.data(), g.data(), b2.data(), n, L, rows.data(), nr, false, 0.1, 0.01, 0.9, 0.1, false);
        CHECK(std::memcmp(p.data(), p2.data(), p.size() * sizeof(float)) == 0);
        CHECK(std::memcmp(b1.data(), b2.data(), b1.size() * sizeof(float)) == 0);
      }
    }
  }
}
