// Why RNNs are hard to train, measured: the norm of dL/dh_t at every time step t (docs/rnn.md).
//
// Task: sequences of --seq-len one-hot tokens over 8 symbols. The first token is 0 or 1 and is the
// label; the other tokens are drawn uniformly from 2..7 and carry no information. A classifier on
// the last hidden state h_T can only succeed if the label survives T-1 noisy updates, and the
// training signal for that reaches step 1 only by back-propagating through all T-1 updates.
//
// Six cells: rnn (tanh), rnn_big (tanh, W_hh = --gain * orthogonal: exploding), lstm and gru
// (PyTorch's initialisation), lstm_fb and gru_zb (forget / update gate bias + --gate-bias, so the
// gate starts near 1). Each is unrolled by hand with nn::*Cell::step, so every h_t (and the LSTM's
// c_t) is a tensor we can hook, and trained twice from the same weights on the same batches:
// without and with optim::ClipGradNorm (the hook also reports the norm before clipping).
// Written to --out:
//   grad_flow.csv  cell,clip,train_step,t,state,grad_norm,relative
//                  ||dL/dh_t|| (state h; LSTMs also c) on a fixed probe batch at train steps 0,
//                  steps/2 and steps; relative = grad_norm / grad_norm at t = T
//   grad_norm.csv  cell,clip,train_step,loss,grad_norm   (global gradient norm before clipping)
//   summary.csv    cell,clip,final_loss,accuracy,learned_at,ratio_init,ratio_final
//                  accuracy on 1000 held-out sequences; learned_at: first step whose smoothed
//                  training loss is < 0.1 (-1: never); ratio: ||dL/dh_1|| / ||dL/dh_T||
//   plots.gp, and grad_flow.png and grad_norm.png drawn by it when gnuplot is installed
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <limits>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tapegrad/optim/sgd.h"

namespace po = boost::program_options;
namespace fs = std::filesystem;
using namespace tg;

namespace {

struct Config {
  int64_t steps = 1500, seq_len = 50, hidden = 32, vocab = 8, batch = 32, eval_size = 1000, probe_size = 256;
  double lr = 0.003, clip = 1.0, gain = 2.0, gate_bias = 2.0;
  uint64_t seed = 1;
  std::string optimizer = "adam", out = "runs/gradient_flow";
  std::vector<std::string> cells;
  bool plot = true;
};

// A batch of the task: x [T, B, V] one-hot, y [B] in {0, 1}.
struct Batch {
  Tensor x, y;
};

Batch make_batch(std::mt19937_64& rng, const Config& c, int64_t batch) {
  const int64_t T = c.seq_len, V = c.vocab;
  std::vector<float> x(static_cast<size_t>(T * batch * V), 0.0f), y(static_cast<size_t>(batch));
  std::uniform_int_distribution<int64_t> bit(0, 1), noise(2, V - 1);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t label = bit(rng);
    y[static_cast<size_t>(b)] = static_cast<float>(label);
    for (int64_t t = 0; t < T; ++t) {
      const int64_t tok = t == 0 ? label : noise(rng);
      x[static_cast<size_t>((t * batch + b) * V + tok)] = 1.0f;
    }
  }
  return {from_vector(x, {T, batch, V}), from_vector(y, {batch})};
}

double l2(const Tensor& g) {
  double s = 0;
  for (double v : g.to_vector()) s += v * v;
  return std::sqrt(s);
}

// One recurrent cell unrolled step by step, then a linear read-out of h_T.
class Classifier : public nn::Module {
 public:
  Classifier(const std::string& kind, const Config& c) {
    if (kind == "lstm" || kind == "lstm_fb") {
      lstm_ = register_module("cell", std::make_shared<nn::LSTMCell>(c.vocab, c.hidden));
      cell_ = lstm_.get();
      if (kind == "lstm_fb") {  // gate order i, f, g, o: shift the forget gate's slice of b_ih
        NoGradGuard ng;
        Tensor f = narrow(lstm_->bias_ih, 0, c.hidden, c.hidden);
        add_(f, scalar(c.gate_bias));
      }
    } else if (kind == "gru" || kind == "gru_zb") {
      gru_ = register_module("cell", std::make_shared<nn::GRUCell>(c.vocab, c.hidden));
      cell_ = gru_.get();
      if (kind == "gru_zb") {  // gate order r, z, n: shift the update gate's slice of b_ih
        NoGradGuard ng;
        Tensor z = narrow(gru_->bias_ih, 0, c.hidden, c.hidden);
        add_(z, scalar(c.gate_bias));
      }
    } else if (kind == "rnn" || kind == "rnn_big") {
      rnn_ = register_module("cell", std::make_shared<nn::RNNCell>(c.vocab, c.hidden));
      cell_ = rnn_.get();
      if (kind == "rnn_big") nn::init::orthogonal_(rnn_->weight_hh, c.gain);  // spectral radius = gain
    } else {
      throw std::invalid_argument("unknown cell " + kind);
    }
    fc_ = register_module("fc", std::make_shared<nn::Linear>(c.hidden, 1));
  }

  bool has_cell_state() const { return bool(lstm_); }

  // x [T, B, V] -> logits [B]. With `h_norms` (size T), hooks store ||dL/dh_t|| of time step t
  // (1-based) in h_norms[t-1], and for the LSTM ||dL/dc_t|| in c_norms[t-1].
  Tensor forward(const Tensor& x, std::vector<double>* h_norms = nullptr, std::vector<double>* c_norms = nullptr) {
    const Tensor px = cell_->project(x);  // all time steps' input projections in one call
    nn::LSTMState s;
    for (int64_t t = 0; t < x.size(0); ++t) {
      const Tensor pt = select(px, 0, t);
      if (lstm_) s = lstm_step(pt, s);
      else if (gru_) s.h = gru_->step(pt, s.h);
      else s.h = rnn_->step(pt, s.h);
      auto record_into = [t](std::vector<double>* norms) {
        return [norms, t](const Tensor& g) {
          (*norms)[static_cast<size_t>(t)] = l2(g);
          return Tensor();  // keep the gradient as it is
        };
      };
      if (h_norms) s.h.register_hook(record_into(h_norms));
      if (c_norms && lstm_) s.c.register_hook(record_into(c_norms));
    }
    return (*fc_)(s.h).reshape({-1});
  }

 private:
  // LSTMCell::step is one fused op, inside which c_t also feeds h_t; a hook on its c_t output sees
  // only the gradient arriving through c_{t+1}. Written out with composite ops, c_t feeds h_t on
  // the tape, so the hook sees the whole dL/dc_t (through h_t and c_{t+1}), as docs/rnn.md plots.
  nn::LSTMState lstm_step(const Tensor& px, const nn::LSTMState& s) const {
    const int64_t B = px.size(0), H = lstm_->hidden_size;
    const Tensor h = s.h.defined() ? s.h : zeros({B, H}), c = s.c.defined() ? s.c : zeros({B, H});
    std::vector<Tensor> q = split(px + linear(h, lstm_->weight_hh, lstm_->bias_hh), H, 1);  // i, f, g, o
    Tensor c_next = sigmoid(q[1]) * c + sigmoid(q[0]) * tanh(q[2]);
    return {sigmoid(q[3]) * tanh(c_next), c_next};
  }

  std::shared_ptr<nn::RNNCell> rnn_;
  std::shared_ptr<nn::LSTMCell> lstm_;
  std::shared_ptr<nn::GRUCell> gru_;
  nn::RNNCellBase* cell_ = nullptr;
  std::shared_ptr<nn::Linear> fc_;
};

// rnn: tanh Elman cell; rnn_big: the same with W_hh = gain * orthogonal (spectral radius gain > 1);
// lstm_fb / gru_zb: LSTM / GRU whose forget / update gate starts near 1 (its bias + gate_bias).
// Everything else is PyTorch's initialisation.
const char* const kCells[] = {"rnn", "rnn_big", "lstm", "lstm_fb", "gru", "gru_zb"};

struct Result {
  double final_loss = 0, accuracy = 0, ratio_init = 0, ratio_final = 0;
  int64_t learned_at = -1;  // first step whose smoothed training loss is below 0.1; -1: never
};

std::string fmt_double(double v) { return std::isfinite(v) ? fmt::format("{:.6g}", v) : (v != v ? "nan" : "inf"); }

Result train(const std::string& kind, bool clip, const Config& c, const Batch& probe, const Batch& held_out,
             std::ofstream& flow_csv, std::ofstream& norm_csv) {
  manual_seed(c.seed);  // same initial weights with and without clipping
  Classifier model(kind, c);
  std::unique_ptr<optim::Optimizer> opt;
  if (c.optimizer == "adam") opt = std::make_unique<optim::Adam>(model.parameters(), optim::AdamOptions{.lr = c.lr});
  else opt = std::make_unique<optim::SGD>(model.parameters(), optim::SGDOptions{.lr = c.lr, .momentum = 0.9});
  // Without clipping the hook has an infinite threshold: it only measures the pre-clip norm.
  optim::ClipGradNorm clipper(clip ? c.clip : std::numeric_limits<double>::infinity());
  opt->add_hook(clipper);
  const std::string clip_name = clip ? fmt::format("{:g}", c.clip) : "none";

  Result r;
  // ||dL/dh_t|| on the fixed probe batch, measured without updating; returns ||dL/dh_1||/||dL/dh_T||.
  auto probe_flow = [&](int64_t step) {
    std::vector<double> h(static_cast<size_t>(c.seq_len), std::nan("")), cs = h;
    model.zero_grad();
    binary_cross_entropy_with_logits(model.forward(probe.x, &h, &cs), probe.y).backward();
    model.zero_grad();
    for (const auto& [state, norms] : {std::pair{"h", &h}, std::pair{"c", &cs}}) {
      if (*state == 'c' && !model.has_cell_state()) continue;
      for (int64_t t = 0; t < c.seq_len; ++t) {
        const double n = (*norms)[static_cast<size_t>(t)];
        flow_csv << fmt::format("{},{},{},{},{},{},{}\n", kind, clip_name, step, t + 1, state, fmt_double(n),
                                fmt_double(n / norms->back()));
      }
    }
    return h.front() / h.back();
  };

  std::mt19937_64 rng(c.seed * 7919 + 1);  // the same batch stream for every run
  const int64_t mid = c.steps / 2;
  double loss_avg = 0;
  for (int64_t step = 0; step < c.steps; ++step) {
    if (step == 0) r.ratio_init = probe_flow(step);
    else if (step == mid) probe_flow(step);
    Batch b = make_batch(rng, c, c.batch);
    opt->zero_grad();
    Tensor loss = binary_cross_entropy_with_logits(model.forward(b.x), b.y);
    loss.backward();
    opt->step();  // the clip hook runs first and records the norm it saw
    const double l = loss.item();
    norm_csv << fmt::format("{},{},{},{},{}\n", kind, clip_name, step, fmt_double(l), fmt_double(clipper.last_norm()));
    loss_avg = step == 0 ? l : 0.95 * loss_avg + 0.05 * l;
    if (r.learned_at < 0 && loss_avg < 0.1) r.learned_at = step;
  }
  r.ratio_final = probe_flow(c.steps);
  r.final_loss = loss_avg;

  NoGradGuard ng;
  const std::vector<double> logits = model.forward(held_out.x).to_vector(), y = held_out.y.to_vector();
  int64_t right = 0;
  for (size_t i = 0; i < y.size(); ++i) right += (logits[i] > 0) == (y[i] > 0.5);
  r.accuracy = static_cast<double>(right) / static_cast<double>(y.size());
  return r;
}

const char* kPlotScript = R"(# Draws grad_flow.png and grad_norm.png from the CSVs next to this file: gnuplot plots.gp
set datafile separator ','
set logscale y
set format y '10^{%L}'
set grid ytics
set key bottom right font ',9' noenhanced
cells = '@CELLS@'
colour(c) = c eq 'rnn' ? '#d62728' : c eq 'rnn_big' ? '#ff7f0e' : c eq 'lstm' ? '#1f77b4' : \
            c eq 'lstm_fb' ? '#17becf' : c eq 'gru' ? '#2ca02c' : '#bcbd22'
finite(x) = (x == x && abs(x) < 1e300) ? x : NaN

# grad_flow.csv: cell,clip,train_step,t,state,grad_norm,relative
set terminal pngcairo size 1200,440 font ',10'
set output 'grad_flow.png'
ccells = '@CCELLS@'
sel(c, k, s, st) = (strcol(1) eq c && strcol(2) eq k && column(3) == s && strcol(5) eq st) ? finite(column(7)) : NaN
set multiplot layout 1,3 title "||dL/dh_t|| / ||dL/dh_{@T@}|| on a fixed probe batch (label = first token, T = @T@)\n".\
  "dotted: the LSTM's cell state, ||dL/dc_t|| / ||dL/dc_{@T@}||"
set xlabel 'time step t'
set xrange [1:@T@]
set yrange [1e-20:*]
set ylabel '||dL/dh_t|| / ||dL/dh_{@T@}||'
do for [s in '0 @MID@ @END@'] {
  set title (s eq '0' ? 'at initialisation' : sprintf('after %s updates (dashed: clipped to @CLIP@)', s))
  plot for [i=1:words(cells)] 'grad_flow.csv' using 4:(sel(word(cells,i), 'none', s+0, 'h')) \
         with lines lw 2 lc rgb colour(word(cells,i)) title word(cells,i), \
       for [i=1:(s eq '0' ? 0 : words(cells))] '' using 4:(sel(word(cells,i), '@CLIP@', s+0, 'h')) \
         with lines lw 2 dt 2 lc rgb colour(word(cells,i)) notitle, \
       for [i=1:words(ccells)] '' using 4:(sel(word(ccells,i), 'none', s+0, 'c')) \
         with lines lw 2 dt 3 lc rgb colour(word(ccells,i)) title word(ccells,i).' c'
  unset ylabel
}
unset multiplot

# grad_norm.csv: cell,clip,train_step,loss,grad_norm
set terminal pngcairo size 1500,700 font ',10'
set output 'grad_norm.png'
stats 'grad_norm.csv' using (finite(column(5)) > 0 ? finite(column(5)) : NaN) nooutput
set yrange [10**floor(log10(STATS_min)):10**ceil(log10(STATS_max))]
nsel(c, k) = (strcol(1) eq c && strcol(2) eq k) ? finite(column(5)) : NaN
set multiplot layout (words(cells) + 2) / 3, 3 title 'global gradient norm per training step, before clipping (grey: no clipping; orange: clipped to @CLIP@)'
set xlabel 'training step'
set xrange [0:@STEPS@]
set key top right
do for [i=1:words(cells)] {
  set title word(cells,i) noenhanced
  if (i % 3 == 1) { set ylabel '||grad||_2' } else { unset ylabel }
  plot 'grad_norm.csv' using 3:(nsel(word(cells,i), 'none')) with lines lw 1 lc rgb '#606060' title 'none', \
       '' using 3:(nsel(word(cells,i), '@CLIP@')) with lines lw 1 lc rgb '#50ff7f0e' title 'clip @CLIP@', \
       @CLIP@ with lines dt 2 lc rgb 'black' notitle
}
unset multiplot
)";

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::string cur;
  for (char ch : s + ",") {
    if (ch != ',') cur += ch;
    else if (!cur.empty()) out.push_back(std::exchange(cur, {}));
  }
  return out;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}

std::string shell_quote(const std::string& s) { return "'" + replace_all(s, "'", "'\\''") + "'"; }

}  // namespace

int main(int argc, char** argv) try {
  Config c;
  po::options_description desc(
      "gradient_flow: ||dL/dh_t|| per time step for RNN, LSTM and GRU on a task whose label is the first token");
  desc.add_options()("help,h", "show this help")
      ("steps", po::value(&c.steps)->default_value(c.steps), "training steps per run")
      ("seq-len", po::value(&c.seq_len)->default_value(c.seq_len), "sequence length T")
      ("hidden", po::value(&c.hidden)->default_value(c.hidden), "hidden state size")
      ("batch", po::value(&c.batch)->default_value(c.batch), "sequences per training step")
      ("lr", po::value(&c.lr)->default_value(c.lr, "0.003"), "learning rate")
      ("optimizer", po::value(&c.optimizer)->default_value(c.optimizer), "adam or sgd (momentum 0.9)")
      ("clip", po::value(&c.clip)->default_value(c.clip), "max global gradient norm of the clipped runs")
      ("gain", po::value(&c.gain)->default_value(c.gain), "rnn_big: W_hh starts as gain * an orthogonal matrix")
      ("gate-bias", po::value(&c.gate_bias)->default_value(c.gate_bias),
       "added to the bias of lstm_fb's forget gate and gru_zb's update gate")
      ("cells", po::value<std::string>()->default_value("rnn,rnn_big,lstm,lstm_fb,gru,gru_zb"),
       "comma-separated subset of rnn, rnn_big, lstm, lstm_fb, gru, gru_zb")
      ("seed", po::value(&c.seed)->default_value(c.seed), "random seed (weights and data)")
      ("out", po::value(&c.out)->default_value(c.out), "output directory")
      ("no-plot", "write the CSVs and plots.gp but do not run gnuplot")
      ("quick", "a tiny run (for tests): 20 steps, hidden 16, batch 16");
  po::variables_map vm;
  po::store(po::parse_command_line(argc, argv, desc), vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  po::notify(vm);
  c.plot = !vm.count("no-plot");
  for (const std::string& list = vm["cells"].as<std::string>(); const auto& name : split_list(list)) {
    if (std::find(std::begin(kCells), std::end(kCells), name) == std::end(kCells))
      throw std::invalid_argument("--cells: unknown cell '" + name + "'");
    c.cells.push_back(name);
  }
  if (c.cells.empty()) throw std::invalid_argument("--cells: no cell given");
  if (vm.count("quick")) {
    if (vm["steps"].defaulted()) c.steps = 20;
    if (vm["hidden"].defaulted()) c.hidden = 16;
    if (vm["batch"].defaulted()) c.batch = 16;
    c.eval_size = 200;
    c.probe_size = 64;
  }
  if (c.steps < 2 || c.seq_len < 2 || c.hidden < 1 || c.batch < 1 || !(c.lr > 0) || !(c.clip > 0) || !(c.gain > 0))
    throw std::invalid_argument("need --steps >= 2, --seq-len >= 2, --hidden >= 1, --batch >= 1, --lr, --clip, --gain > 0");
  if (c.optimizer != "adam" && c.optimizer != "sgd")
    throw std::invalid_argument("--optimizer must be adam or sgd, got " + c.optimizer);

  fs::create_directories(c.out);
  const fs::path out(c.out);
  std::ofstream flow_csv(out / "grad_flow.csv"), norm_csv(out / "grad_norm.csv"), summary_csv(out / "summary.csv");
  if (!flow_csv || !norm_csv || !summary_csv) throw std::runtime_error("cannot write to " + c.out);
  flow_csv << "cell,clip,train_step,t,state,grad_norm,relative\n";
  norm_csv << "cell,clip,train_step,loss,grad_norm\n";
  summary_csv << "cell,clip,final_loss,accuracy,learned_at,ratio_init,ratio_final\n";

  std::mt19937_64 data_rng(c.seed * 104729 + 17);
  const Batch probe = make_batch(data_rng, c, c.probe_size), held_out = make_batch(data_rng, c, c.eval_size);

  fmt::print("T = {}, hidden {}, {} steps of {} sequences, {} lr {}, clip {}; ratio = ||dL/dh_1|| / ||dL/dh_T||\n",
             c.seq_len, c.hidden, c.steps, c.batch, c.optimizer, c.lr, c.clip);
  fmt::print("{:<8} {:<5} {:>10} {:>9} {:>8} {:>11} {:>11} {:>7}\n", "cell", "clip", "final loss", "accuracy",
             "learned", "ratio@0", "ratio@end", "time");
  for (const std::string& kind : c.cells) {
    for (bool clip : {false, true}) {
      const auto t0 = std::chrono::steady_clock::now();
      const Result r = train(kind, clip, c, probe, held_out, flow_csv, norm_csv);
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      const std::string clip_name = clip ? fmt::format("{:g}", c.clip) : "none";
      summary_csv << fmt::format("{},{},{},{},{},{},{}\n", kind, clip_name, fmt_double(r.final_loss),
                                 fmt_double(r.accuracy), r.learned_at, fmt_double(r.ratio_init),
                                 fmt_double(r.ratio_final));
      fmt::print("{:<8} {:<5} {:>10.4f} {:>8.1f}% {:>8} {:>11.3g} {:>11.3g} {:>6.1f}s\n", kind, clip_name,
                 r.final_loss, 100 * r.accuracy, r.learned_at < 0 ? std::string("never") : std::to_string(r.learned_at),
                 r.ratio_init, r.ratio_final, secs);
    }
  }
  flow_csv.close();
  norm_csv.close();
  summary_csv.close();

  std::string script = replace_all(kPlotScript, "@T@", std::to_string(c.seq_len));
  std::string cells, ccells;
  for (const std::string& kind : c.cells) {
    cells += (cells.empty() ? "" : " ") + kind;
    if (kind.starts_with("lstm")) ccells += (ccells.empty() ? "" : " ") + kind;
  }
  script = replace_all(script, "@CCELLS@", ccells);
  script = replace_all(script, "@CELLS@", cells);
  script = replace_all(script, "@MID@", std::to_string(c.steps / 2));
  script = replace_all(script, "@END@", std::to_string(c.steps));
  script = replace_all(script, "@STEPS@", std::to_string(c.steps));
  script = replace_all(script, "@CLIP@", fmt::format("{:g}", c.clip));
  std::ofstream(out / "plots.gp") << script;
  fmt::print("wrote {}/{{grad_flow,grad_norm,summary}}.csv and plots.gp\n", c.out);
  if (c.plot) {
    if (std::system("command -v gnuplot >/dev/null 2>&1") != 0) {
      fmt::print("gnuplot not found: skipping the plots (apt-get install gnuplot-nox, or ./run.sh gradient-flow)\n");
    } else {
      const std::string cmd = "cd " + shell_quote(c.out) + " && gnuplot plots.gp";
      if (std::system(cmd.c_str()) != 0) throw std::runtime_error("gnuplot failed: " + cmd);
      fmt::print("wrote {}/grad_flow.png and grad_norm.png\n", c.out);
    }
  }
  return 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "gradient_flow: {}\n", e.what());
  return 2;
}
