// The LSTM training step of ../shared/bench/SPEC.md written against oneDNN (libdnnl 2.6) the way a
// user of its fused RNN primitives would (what PyTorch 2.x runs for CPU LSTM training): embedding
// gather -> lstm_forward (training) -> Linear(H,1) on h_T -> BCE with logits -> gradients of head
// and loss -> lstm_backward (diff weights) -> embedding scatter -> clip global norm 5 -> Adam(1e-3).
// Weights live in the layout lstm_forward prefers (format_tag::any, reordered once at start-up);
// reorders the backward pass needs (its weights layout, its diff-weights layout) happen per step
// and are timed, as they are part of a real step.
//   bench_onednn_lstm step --config lstm-small [--threads N]   one JSON line, like bench_rnn_bench
//   bench_onednn_lstm check                                    loss, gradients and one Adam step
//                                                              against tapegrad's nn::LSTM, float32
#include <fmt/format.h>
#include <omp.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <oneapi/dnnl/dnnl.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/bench_model.h"
#include "tapegrad/autograd/ops.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"

using Clock = std::chrono::steady_clock;
using tg::bench::Config;
using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

namespace {

constexpr int kRepeats = 5;
constexpr float kLr = 1e-3f, kBeta1 = 0.9f, kBeta2 = 0.999f, kEps = 1e-8f, kMaxNorm = 5.0f;

// A parameter with its gradient and Adam moments, all the same length (a oneDNN buffer's padding
// included: padded entries have zero gradient, so they stay zero).
struct Param {
  float* w;
  size_t n;
  std::vector<float> g, m, v;
  Param(float* weights, size_t count) : w(weights), n(count), g(count), m(count), v(count) {}
};

// Torch-layout ([4H, in], gates i f g o) initial values of one model, shared by both sides of --check.
struct InitialWeights {
  std::vector<float> emb, w_ih, w_hh, b_ih, b_hh, fc_w, fc_b;
};

InitialWeights random_weights(const Config& c, unsigned seed) {
  std::mt19937 gen(seed);
  const float k = 1.0f / std::sqrt(static_cast<float>(c.H));
  std::uniform_real_distribution<float> u(-k, k);
  std::normal_distribution<float> normal(0.f, 1.f);
  auto fill = [&](size_t n, auto& dist) { std::vector<float> v(n); for (auto& x : v) x = dist(gen); return v; };
  const size_t G = 4 * c.H;
  return {fill(c.V * c.E, normal), fill(G * c.E, u), fill(G * c.H, u), fill(G, u), fill(G, u), fill(c.H, u), fill(1, u)};
}

class OneDnnLstmStep {
 public:
  OneDnnLstmStep(const Config& c, const InitialWeights& init, std::vector<int64_t> tokens, std::vector<float> labels)
      : c_(c), tokens_(std::move(tokens)), labels_(std::move(labels)), eng_(dnnl::engine::kind::cpu, 0), s_(eng_) {
    const int64_t T = c.T, B = c.B, E = c.E, H = c.H;
    const dnnl::memory::desc src_d({T, B, E}, dt::f32, tag::tnc), dst_d({T, B, H}, dt::f32, tag::tnc),
        iter_d({1, 1, B, H}, dt::f32, tag::ldnc), bias_d({1, 1, 4, H}, dt::f32, tag::ldgo),
        wl_any({1, 1, E, 4, H}, dt::f32, tag::any), wi_any({1, 1, H, 4, H}, dt::f32, tag::any);
    auto dir = dnnl::rnn_direction::unidirectional_left2right;
    // h_0 = c_0 = 0 passed as zero memories: oneDNN 2.6's backward computes a wrong diff_weights_iter
    // when src_iter is omitted (caught by `check`). h_T comes back in dst_iter (the head reads it).
    fwd_pd_ = dnnl::lstm_forward::primitive_desc(
        dnnl::lstm_forward::desc(dnnl::prop_kind::forward_training, dir, src_d, iter_d, iter_d, wl_any, wi_any, bias_d,
                                 dst_d, iter_d, iter_d),
        eng_);
    bwd_pd_ = dnnl::lstm_backward::primitive_desc(
        dnnl::lstm_backward::desc(dnnl::prop_kind::backward, dir, src_d, iter_d, iter_d, wl_any, wi_any, bias_d, dst_d,
                                  iter_d, iter_d, src_d, iter_d, iter_d, wl_any, wi_any, bias_d, dst_d, iter_d, iter_d),
        eng_, fwd_pd_);
    fwd_ = dnnl::lstm_forward(fwd_pd_);
    bwd_ = dnnl::lstm_backward(bwd_pd_);
    auto mem = [&](const dnnl::memory::desc& d) { return dnnl::memory(d, eng_); };
    src_ = mem(src_d), dst_ = mem(dst_d), h_n_ = mem(iter_d), c_n_ = mem(iter_d), bias_ = mem(bias_d);
    diff_src_ = mem(src_d), diff_dst_ = mem(dst_d), diff_h_n_ = mem(iter_d), diff_c_n_ = mem(iter_d);
    h0_ = mem(iter_d), c0_ = mem(iter_d), diff_h0_ = mem(iter_d), diff_c0_ = mem(iter_d);
    std::memset(h0_.get_data_handle(), 0, iter_d.get_size());
    std::memset(c0_.get_data_handle(), 0, iter_d.get_size());
    diff_bias_ = mem(bias_d), workspace_ = mem(fwd_pd_.workspace_desc());
    wl_ = mem(fwd_pd_.weights_layer_desc()), wi_ = mem(fwd_pd_.weights_iter_desc());
    wl_bwd_ = mem(bwd_pd_.weights_layer_desc()), wi_bwd_ = mem(bwd_pd_.weights_iter_desc());
    dwl_ = mem(bwd_pd_.diff_weights_layer_desc()), dwi_ = mem(bwd_pd_.diff_weights_iter_desc());
    // The optimizer updates the forward layout; the backward's diff layout is reordered to it.
    dwl_fwd_ = mem(fwd_pd_.weights_layer_desc()), dwi_fwd_ = mem(fwd_pd_.weights_iter_desc());
    std::memset(diff_dst_.get_data_handle(), 0, dst_d.get_size());  // only h_T feeds the loss
    std::memset(diff_c_n_.get_data_handle(), 0, iter_d.get_size());
    // Torch [4H, in] is oneDNN's ldgoi; reorder once into what lstm_forward prefers.
    load_torch_layout(init.w_ih, E, wl_);
    load_torch_layout(init.w_hh, H, wi_);
    emb_ = init.emb, b_ih_ = init.b_ih, b_hh_ = init.b_hh, fc_w_ = init.fc_w, fc_b_ = init.fc_b;
    params_.emplace_back(emb_.data(), emb_.size());
    params_.emplace_back(static_cast<float*>(wl_.get_data_handle()), wl_.get_desc().get_size() / sizeof(float));
    params_.emplace_back(static_cast<float*>(wi_.get_data_handle()), wi_.get_desc().get_size() / sizeof(float));
    params_.emplace_back(b_ih_.data(), b_ih_.size());
    params_.emplace_back(b_hh_.data(), b_hh_.size());
    params_.emplace_back(fc_w_.data(), fc_w_.size());
    params_.emplace_back(fc_b_.data(), fc_b_.size());
  }

  // zero grads, forward, backward (gradients in params_[i].g, unclipped). Returns the loss.
  float forward_backward() {
    const int64_t T = c_.T, B = c_.B, E = c_.E, H = c_.H;
    float* src = f(src_);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) std::memcpy(src + (t * B + b) * E, &emb_[tokens_[b * T + t] * E], E * sizeof(float));
    float* bias = f(bias_);
    for (int64_t i = 0; i < 4 * H; ++i) bias[i] = b_ih_[i] + b_hh_[i];
    fwd_.execute(s_, {{DNNL_ARG_SRC_LAYER, src_}, {DNNL_ARG_SRC_ITER, h0_}, {DNNL_ARG_SRC_ITER_C, c0_}, {DNNL_ARG_WEIGHTS_LAYER, wl_}, {DNNL_ARG_WEIGHTS_ITER, wi_},
                      {DNNL_ARG_BIAS, bias_}, {DNNL_ARG_DST_LAYER, dst_}, {DNNL_ARG_DST_ITER, h_n_},
                      {DNNL_ARG_DST_ITER_C, c_n_}, {DNNL_ARG_WORKSPACE, workspace_}});
    s_.wait();
    // Head and loss: z_b = h_T[b] . fc_w + fc_b, loss = mean BCE-with-logits, dz = (sigmoid(z) - y) / B.
    const float* h = f(h_n_);
    float* dh = f(diff_h_n_);
    auto& g_fc_w = params_[5].g;
    auto& g_fc_b = params_[6].g;
    std::fill(g_fc_w.begin(), g_fc_w.end(), 0.f);
    g_fc_b[0] = 0;
    double loss = 0;
    for (int64_t b = 0; b < B; ++b) {
      float z = fc_b_[0];
      for (int64_t j = 0; j < H; ++j) z += h[b * H + j] * fc_w_[j];
      const float y = labels_[b];
      loss += std::max(z, 0.f) - z * y + std::log1p(std::exp(-std::fabs(z)));
      const float dz = (1.f / (1.f + std::exp(-z)) - y) / static_cast<float>(B);
      g_fc_b[0] += dz;
      for (int64_t j = 0; j < H; ++j) g_fc_w[j] += dz * h[b * H + j], dh[b * H + j] = dz * fc_w_[j];
    }
    reorder(wl_, wl_bwd_), reorder(wi_, wi_bwd_);
    for (dnnl::memory* m : {&dwl_, &dwi_, &diff_bias_})  // lstm_backward accumulates into these
      std::memset(m->get_data_handle(), 0, m->get_desc().get_size());
    bwd_.execute(s_, {{DNNL_ARG_SRC_LAYER, src_}, {DNNL_ARG_SRC_ITER, h0_}, {DNNL_ARG_SRC_ITER_C, c0_},
                      {DNNL_ARG_DIFF_SRC_ITER, diff_h0_}, {DNNL_ARG_DIFF_SRC_ITER_C, diff_c0_}, {DNNL_ARG_WEIGHTS_LAYER, wl_bwd_}, {DNNL_ARG_WEIGHTS_ITER, wi_bwd_},
                      {DNNL_ARG_BIAS, bias_}, {DNNL_ARG_DST_LAYER, dst_}, {DNNL_ARG_DST_ITER, h_n_},
                      {DNNL_ARG_DST_ITER_C, c_n_}, {DNNL_ARG_DIFF_SRC_LAYER, diff_src_},
                      {DNNL_ARG_DIFF_WEIGHTS_LAYER, dwl_}, {DNNL_ARG_DIFF_WEIGHTS_ITER, dwi_},
                      {DNNL_ARG_DIFF_BIAS, diff_bias_}, {DNNL_ARG_DIFF_DST_LAYER, diff_dst_},
                      {DNNL_ARG_DIFF_DST_ITER, diff_h_n_}, {DNNL_ARG_DIFF_DST_ITER_C, diff_c_n_},
                      {DNNL_ARG_WORKSPACE, workspace_}});
    s_.wait();
    reorder(dwl_, dwl_fwd_), reorder(dwi_, dwi_fwd_);
    std::memcpy(params_[1].g.data(), f(dwl_fwd_), params_[1].n * sizeof(float));
    std::memcpy(params_[2].g.data(), f(dwi_fwd_), params_[2].n * sizeof(float));
    const float* db = f(diff_bias_);
    std::copy(db, db + 4 * H, params_[3].g.begin());
    std::copy(db, db + 4 * H, params_[4].g.begin());  // b_ih and b_hh enter as one sum
    auto& g_emb = params_[0].g;
    std::fill(g_emb.begin(), g_emb.end(), 0.f);
    const float* dsrc = f(diff_src_);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t b = 0; b < B; ++b) {
        float* row = &g_emb[tokens_[b * T + t] * E];
        for (int64_t e = 0; e < E; ++e) row[e] += dsrc[(t * B + b) * E + e];
      }
    return static_cast<float>(loss / B);
  }

  void clip_and_adam() {
    double sq = 0;
    for (auto& p : params_)
      for (float x : p.g) sq += static_cast<double>(x) * x;
    const double coef = kMaxNorm / (std::sqrt(sq) + 1e-6);
    ++t_;
    const float bc1 = 1.f - std::pow(kBeta1, static_cast<float>(t_)), bc2 = std::sqrt(1.f - std::pow(kBeta2, static_cast<float>(t_)));
    const float scale = coef < 1 ? static_cast<float>(coef) : 1.f, step = kLr / bc1;
    for (auto& p : params_) {
      float *w = p.w, *g = p.g.data(), *m = p.m.data(), *v = p.v.data();
      const int64_t n = static_cast<int64_t>(p.n);
#pragma omp parallel for simd if (n > 65536)
      for (int64_t i = 0; i < n; ++i) {
        const float gi = g[i] * scale;
        m[i] = kBeta1 * m[i] + (1 - kBeta1) * gi;
        v[i] = kBeta2 * v[i] + (1 - kBeta2) * gi * gi;
        w[i] -= step * m[i] / (std::sqrt(v[i]) / bc2 + kEps);
      }
    }
  }

  float step() {
    float loss = forward_backward();
    clip_and_adam();
    return loss;
  }

  // Parameter i (in InitialWeights order) or its gradient, in torch layout.
  std::vector<float> torch_layout(size_t i, bool grad) {
    const Param& p = params_[i];
    if (i != 1 && i != 2) return grad ? p.g : std::vector<float>(p.w, p.w + p.n);
    dnnl::memory& fwd_layout = i == 1 ? (grad ? dwl_fwd_ : wl_) : (grad ? dwi_fwd_ : wi_);
    const int64_t in = i == 1 ? c_.E : c_.H;
    dnnl::memory plain({{1, 1, in, 4, c_.H}, dt::f32, tag::ldgoi}, eng_);
    reorder(fwd_layout, plain);
    return std::vector<float>(f(plain), f(plain) + 4 * c_.H * in);
  }

 private:
  static float* f(const dnnl::memory& m) { return static_cast<float*>(m.get_data_handle()); }
  void reorder(dnnl::memory& from, dnnl::memory& to) {
    if (from.get_desc() == to.get_desc()) {
      if (from.get_data_handle() != to.get_data_handle()) std::memcpy(f(to), f(from), from.get_desc().get_size());
      return;
    }
    dnnl::reorder(from, to).execute(s_, from, to);
    s_.wait();
  }
  void load_torch_layout(const std::vector<float>& torch_w, int64_t in, dnnl::memory& dst) {
    dnnl::memory plain({{1, 1, in, 4, c_.H}, dt::f32, tag::ldgoi}, eng_);
    std::memcpy(f(plain), torch_w.data(), torch_w.size() * sizeof(float));
    reorder(plain, dst);
  }

  Config c_;
  std::vector<int64_t> tokens_;
  std::vector<float> labels_;
  dnnl::engine eng_;
  dnnl::stream s_;
  dnnl::lstm_forward::primitive_desc fwd_pd_;
  dnnl::lstm_backward::primitive_desc bwd_pd_;
  dnnl::lstm_forward fwd_;
  dnnl::lstm_backward bwd_;
  dnnl::memory h0_, c0_, diff_h0_, diff_c0_;
  dnnl::memory src_, dst_, h_n_, c_n_, bias_, diff_src_, diff_dst_, diff_h_n_, diff_c_n_, diff_bias_, workspace_;
  dnnl::memory wl_, wi_, wl_bwd_, wi_bwd_, dwl_, dwi_, dwl_fwd_, dwi_fwd_;
  std::vector<float> emb_, b_ih_, b_hh_, fc_w_, fc_b_;
  std::vector<Param> params_;
  int t_ = 0;
};

double flops_per_step(const Config& c) {  // SPEC.md's nominal count, the same as bench_rnn_bench's
  double fwd = c.T * (2.0 * c.B * c.E * 4 * c.H + 2.0 * c.B * c.H * 4 * c.H) + 2.0 * c.B * c.H;
  return 3 * fwd;
}

double peak_rss_mb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// The instruction set oneDNN's kernels run with (DNNL_MAX_CPU_ISA=AVX2 caps it, e.g. to match an
// OpenBLAS pinned to OPENBLAS_CORETYPE=Haswell).
const char* effective_isa() {
  switch (dnnl::get_effective_cpu_isa()) {
    case dnnl::cpu_isa::avx2: return "avx2";
    case dnnl::cpu_isa::avx2_vnni: return "avx2_vnni";
    case dnnl::cpu_isa::avx512_core: return "avx512_core";
    case dnnl::cpu_isa::avx512_core_vnni: return "avx512_core_vnni";
    case dnnl::cpu_isa::avx512_core_bf16: return "avx512_core_bf16";
    case dnnl::cpu_isa::avx512_core_amx: return "avx512_core_amx";
    default: return "other";
  }
}

void random_batch(const Config& c, unsigned seed, std::vector<int64_t>& tokens, std::vector<float>& labels) {
  std::mt19937 gen(seed);
  std::uniform_int_distribution<int64_t> tok(0, c.V - 1), bit(0, 1);
  tokens.resize(c.B * c.T), labels.resize(c.B);
  for (auto& t : tokens) t = tok(gen);
  for (auto& y : labels) y = static_cast<float>(bit(gen));
}

int step_bench(const std::string& name, const Config& c, int threads) {
  std::vector<int64_t> tokens;
  std::vector<float> labels;
  random_batch(c, 0, tokens, labels);
  OneDnnLstmStep net(c, random_weights(c, 0), tokens, labels);
  float loss = 0;
  for (int i = 0; i < c.warm; ++i) loss = net.step();
  std::vector<double> per_step;
  for (int r = 0; r < kRepeats; ++r) {
    auto t0 = Clock::now();
    for (int i = 0; i < c.N; ++i) loss = net.step();
    per_step.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count() / c.N);
  }
  std::vector<double> sorted = per_step;
  std::sort(sorted.begin(), sorted.end());
  const double med = sorted[sorted.size() / 2];
  fmt::print("{{\"impl\": \"onednn\", \"config\": \"{}\", \"threads\": {}, \"median_ms\": {:.6f}, \"min_ms\": {:.6f}, "
             "\"gflops\": {:.3f}, \"peak_rss_mb\": {:.1f}, \"repeats_ms\": [{:.6f}], \"final_loss\": {:.8g}, \"isa\": \"{}\"}}\n",
             name, threads, med, sorted.front(), flops_per_step(c) / (med * 1e-3) / 1e9, peak_rss_mb(),
             fmt::join(per_step, ", "), loss, effective_isa());
  return 0;
}

// One step on a tiny shape in both implementations from the same weights and batch: the loss, every
// gradient (before clipping) and every parameter after clip + Adam must agree to float32 rounding.
int check() {
  const Config c{11, 5, 7, 6, 3, true, 0, 0};
  std::vector<int64_t> tokens;
  std::vector<float> labels;
  random_batch(c, 1, tokens, labels);
  InitialWeights init = random_weights(c, 1);
  for (auto& w : init.fc_w) w *= 20;  // a head large enough that the gradients are not tiny (and clipping engages)
  OneDnnLstmStep ours(c, init, tokens, labels);
  if (const char* dump = std::getenv("TG_CHECK_DUMP")) {  // the inputs, for bench/onednn_check_torch.py
    FILE* out = std::fopen(dump, "w");
    fmt::print(out, "{{\"tokens\": [{}], \"labels\": [{}], \"emb\": [{}], \"w_ih\": [{}], \"w_hh\": [{}], \"b_ih\": [{}], \"b_hh\": [{}], \"fc_w\": [{}], \"fc_b\": [{}]}}\n",
               fmt::join(tokens, ","), fmt::join(labels, ","), fmt::join(init.emb, ","), fmt::join(init.w_ih, ","),
               fmt::join(init.w_hh, ","), fmt::join(init.b_ih, ","), fmt::join(init.b_hh, ","), fmt::join(init.fc_w, ","), fmt::join(init.fc_b, ","));
    std::fclose(out);
  }

  tg::bench::Net ref(c);
  const std::vector<std::pair<std::string, const std::vector<float>*>> names = {
      {"emb.weight", &init.emb}, {"lstm.cell0.weight_ih", &init.w_ih}, {"lstm.cell0.weight_hh", &init.w_hh},
      {"lstm.cell0.bias_ih", &init.b_ih}, {"lstm.cell0.bias_hh", &init.b_hh}, {"fc.weight", &init.fc_w},
      {"fc.bias", &init.fc_b}};
  std::map<std::string, tg::Tensor> by_name;
  for (auto& [n, t] : ref.named_parameters()) by_name[n] = t;
  std::map<std::string, tg::Tensor> state;
  for (auto& [n, v] : names) {
    if (!by_name.count(n)) {
      fmt::print(stderr, "check: tapegrad's model has no parameter '{}'\n", n);
      return 1;
    }
    state[n] = tg::from_vector(*v, by_name[n].shape());
  }
  ref.load_state_dict(state);
  tg::optim::Adam opt(ref.parameters(), tg::optim::AdamOptions{.lr = 1e-3});
  opt.add_hook(tg::optim::ClipGradNorm(5.0));
  opt.zero_grad();
  tg::Tensor x = tg::from_vector(tokens, {c.B, c.T});
  tg::Tensor loss = tg::binary_cross_entropy_with_logits(ref.forward(x), tg::from_vector(labels, {c.B}));
  loss.backward();

  double worst = 0;
  auto compare = [&](const std::string& what, const std::vector<float>& a, const std::vector<double>& b) {
    double num = 0, den = 0;
    for (size_t i = 0; i < b.size(); ++i) num = std::max(num, std::fabs(a[i] - b[i])), den = std::max(den, std::fabs(b[i]));
    const double rel = a.size() == b.size() ? num / std::max(den, 1e-30) : INFINITY;
    worst = std::max(worst, rel);
    fmt::print("{:32s} max|ref| {:10.3e}  max rel err {:9.2e}\n", what, den, rel);
  };
  compare("loss", {ours.forward_backward()}, loss.to_vector());
  for (size_t i = 0; i < names.size(); ++i) compare("grad " + names[i].first, ours.torch_layout(i, true), by_name[names[i].first].grad().to_vector());
  ours.clip_and_adam();
  opt.step();
  for (size_t i = 0; i < names.size(); ++i) {  // the update itself is ~lr: compare the change, not the value
    std::vector<float> delta = ours.torch_layout(i, false);
    std::vector<double> ref_delta = by_name[names[i].first].to_vector();
    for (size_t k = 0; k < delta.size() && k < ref_delta.size(); ++k) delta[k] -= (*names[i].second)[k], ref_delta[k] -= (*names[i].second)[k];
    compare("adam step " + names[i].first, delta, ref_delta);
  }
  const bool ok = worst < 1e-4;
  fmt::print("{}: worst relative error {:.2e} (limit 1e-4)\n", ok ? "PASS" : "FAIL", worst);
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "step", config = "lstm-small";
  int threads = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--config") config = argv[i + 1];
    else if (k == "--threads") threads = std::atoi(argv[i + 1]);
  }
  if (threads > 0) omp_set_num_threads(threads);  // Debian's libdnnl runs on OpenMP
  threads = omp_get_max_threads();
  try {
    if (mode == "check") return check();
    if (mode != "step") {
      fmt::print(stderr, "usage: bench_onednn_lstm step --config lstm-small|lstm-medium [--threads N] | check\n");
      return 2;
    }
    auto it = tg::bench::kConfigs.find(config);
    if (it == tg::bench::kConfigs.end() || !it->second.lstm) {
      fmt::print(stderr, "unknown LSTM config '{}': lstm-small, lstm-medium\n", config);
      return 2;
    }
    return step_bench(config, it->second, threads);
  } catch (const dnnl::error& e) {
    fmt::print(stderr, "oneDNN error: {} (status {})\n", e.what(), static_cast<int>(e.status));
    return 1;
  }
}
