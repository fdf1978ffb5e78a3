// Soak test (not in CI; `./run.sh soak`): trains the seed sentiment model's size (vocab 16,
// embed 8, hidden 16, T 4, B 1, RNN, BCE with logits, clip 5, Adam) for many steps through the
// public API and checks that resident memory stays flat after warm-up.
//
//   tapegrad_soak [--steps N] [--warmup N] [--max-growth PERCENT] [--no-rss-check]
//                 [--inject-leak BYTES] [--mode train|forward-only|mixed]
//
// --mode forward-only: no training, each step is a forward pass with gradients on and no
// backward (an inference loop that forgot NoGradGuard): its graph must be freed with its output.
// --mode mixed: every training step is followed by a grad-on evaluation forward of the next
// sentence (a validation loss computed with gradients on), whose graph nobody backwards.
// In every mode, no recorded node may be alive between steps (tg::live_nodes() == 0).
//
// RSS is read from /proc/self/statm at the end of step --warmup (default 1,000) and after the last
// step; the program fails (exit 1) when it grew by more than --max-growth percent (default 1).
// Every 1,000 steps it also evaluates the corpus under NoGradGuard, as a training loop would.
// --no-rss-check: report only (an ASan build with its default quarantine grows RSS by design;
// `./run.sh soak` runs the ASan build with the quarantine off, where RSS stays flat too, and
// LeakSanitizer checks for leaks at exit). --inject-leak BYTES leaks that many bytes per step, to
// show that both checks fail when memory is lost.
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/nn/nn.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"

using namespace tg;

namespace {

constexpr int64_t kVocab = 16, kEmbed = 8, kHidden = 16, kT = 4;

const std::vector<std::pair<std::string, int>> kCorpus = {
    {"the movie is good", 1},      {"the movie is bad", 0},         {"i love this film", 1},
    {"i hate this film", 0},       {"the acting was great", 1},     {"the acting was terrible", 0},
    {"this film is great", 1},     {"this film is terrible", 0},
};

class Net : public nn::Module {
 public:
  Net() {
    emb = register_module("embedding", std::make_shared<nn::Embedding>(kVocab, kEmbed));
    rnn = register_module("rnn", std::make_shared<nn::RNN>(
                                     nn::RNNOptions{.input_size = kEmbed, .hidden_size = kHidden, .batch_first = true}));
    fc = register_module("fc", std::make_shared<nn::Linear>(kHidden, 1));
  }
  Tensor forward(const Tensor& ids) {  // [1, T] -> [1]
    nn::RNNOutput out = (*rnn)((*emb)(ids));
    return (*fc)(select(out.h_n, 0, -1)).reshape({-1});
  }
  std::shared_ptr<nn::Embedding> emb;
  std::shared_ptr<nn::RNN> rnn;
  std::shared_ptr<nn::Linear> fc;
};

// Resident set size in bytes, from /proc/self/statm (second field, in pages).
int64_t rss_bytes() {
  std::ifstream f("/proc/self/statm");
  int64_t size = 0, resident = 0;
  f >> size >> resident;
  return resident * static_cast<int64_t>(::sysconf(_SC_PAGESIZE));
}

double mib(int64_t b) { return static_cast<double>(b) / (1024.0 * 1024.0); }

struct Args {
  int64_t steps = 100'000, warmup = 1'000, inject_leak = 0;
  double max_growth = 1.0;
  bool rss_check = true;
  std::string mode = "train";
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) throw std::invalid_argument(k + " needs a value");
      return argv[++i];
    };
    if (k == "--steps") a.steps = std::stoll(value());
    else if (k == "--warmup") a.warmup = std::stoll(value());
    else if (k == "--max-growth") a.max_growth = std::stod(value());
    else if (k == "--inject-leak") a.inject_leak = std::stoll(value());
    else if (k == "--no-rss-check") a.rss_check = false;
    else if (k == "--mode") a.mode = value();
    else throw std::invalid_argument("unknown option " + k);
  }
  if (a.mode != "train" && a.mode != "forward-only" && a.mode != "mixed")
    throw std::invalid_argument("--mode must be train, forward-only or mixed, got '" + a.mode + "'");
  if (a.warmup < 1 || a.steps <= a.warmup)
    throw std::invalid_argument("need 1 <= --warmup < --steps");
  return a;
}

}  // namespace

int main(int argc, char** argv) try {
  const Args args = parse(argc, argv);
  manual_seed(1);

  // Ids 1..14 for the corpus's 14 distinct words, 0 (<unk>) for any beyond 15: vocabulary 16.
  std::map<std::string, int64_t> vocab;
  std::vector<std::pair<std::vector<int64_t>, double>> data;
  for (const auto& [text, label] : kCorpus) {
    std::istringstream is(text);
    std::vector<int64_t> ids;
    for (std::string w; is >> w;) {
      auto it = vocab.find(w);
      if (it == vocab.end() && static_cast<int64_t>(vocab.size()) < kVocab - 1)
        it = vocab.emplace(w, static_cast<int64_t>(vocab.size()) + 1).first;
      ids.push_back(it == vocab.end() ? 0 : it->second);
    }
    if (static_cast<int64_t>(ids.size()) != kT) throw std::logic_error("corpus sentences must have 4 words");
    data.emplace_back(std::move(ids), label);
  }

  Net model;
  optim::Adam opt(model.parameters(), optim::AdamOptions{.lr = 0.01});
  optim::ClipGradNorm clip(5.0);
  opt.add_hook(clip);

  std::vector<void*> leaked;  // only with --inject-leak: dropped on purpose at the end
  int64_t rss_warm = 0, rss_peak = 0;
  double first_loss = NAN, window_loss = 0, last_loss = NAN;
  const auto t0 = std::chrono::steady_clock::now();
  fmt::print("soak: {} steps, mode {} (vocab {}, embed {}, hidden {}, T {}, B 1, RNN, Adam, clip 5), warm-up {} steps\n",
             args.steps, args.mode, kVocab, kEmbed, kHidden, kT, args.warmup);
  const bool train = args.mode != "forward-only";
  int64_t max_live_nodes = 0;
  std::fflush(stdout);
  for (int64_t step = 1; step <= args.steps; ++step) {
    const auto& [ids_v, label] = data[static_cast<size_t>(step - 1) % data.size()];
    Tensor ids = from_vector(ids_v, {1, kT});
    Tensor target = full({1}, label);
    double l = 0;
    if (train) {
      opt.zero_grad();
      Tensor loss = binary_cross_entropy_with_logits(model.forward(ids), target);
      loss.backward();
      opt.step();
      l = loss.item();
    }
    if (!train || args.mode == "mixed") {  // grad on, no backward: the graph dies with `eval_loss`
      const auto& [next_v, next_y] = data[static_cast<size_t>(step) % data.size()];
      Tensor eval_loss = binary_cross_entropy_with_logits(model.forward(from_vector(next_v, {1, kT})),
                                                          full({1}, next_y));
      if (!eval_loss.requires_grad()) throw std::logic_error("soak: the evaluation forward recorded nothing");
      if (!train) l = eval_loss.item();
    }
    max_live_nodes = std::max(max_live_nodes, live_nodes());
    if (!std::isfinite(l)) throw std::runtime_error(fmt::format("non-finite loss {} at step {}", l, step));
    if (step == 1) first_loss = l;
    window_loss += l;
    if (args.inject_leak > 0) {
      void* p = std::malloc(static_cast<size_t>(args.inject_leak));
      std::memset(p, 1, static_cast<size_t>(args.inject_leak));
      leaked.push_back(p);
      if (leaked.size() > 1) leaked.erase(leaked.begin());  // keeps only the latest: the others are lost
    }

    if (step % 1000 == 0) {
      // An evaluation pass, as between epochs of a real run.
      NoGradGuard no_grad;
      model.eval();
      int correct = 0;
      for (const auto& [v, y] : data)
        correct += (model.forward(from_vector(v, {1, kT})).item() > 0) == (y > 0.5);
      model.train();
      last_loss = window_loss / 1000.0;
      window_loss = 0;
      const int64_t rss = rss_bytes();
      rss_peak = std::max(rss_peak, rss);
      if (step % 10'000 == 0 || step == args.warmup)
        fmt::print("soak: step {:>7}  mean loss {:.3g}  accuracy {}/{}  RSS {:.2f} MiB\n", step, last_loss, correct,
                   data.size(), mib(rss));
      std::fflush(stdout);
    }
    if (step == args.warmup) rss_warm = rss_bytes();
  }
  const int64_t rss_end = rss_bytes();
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double growth = 100.0 * static_cast<double>(rss_end - rss_warm) / static_cast<double>(rss_warm);
  fmt::print("soak: {} steps in {:.1f} s ({:.0f} steps/s); loss {:.4f} at step 1, {:.3g} over the last 1,000\n",
             args.steps, secs, static_cast<double>(args.steps) / secs, first_loss, last_loss);
  fmt::print("soak: RSS after warm-up (step {}) {} bytes ({:.2f} MiB), at the end (step {}) {} bytes ({:.2f} MiB), "
             "peak sampled {:.2f} MiB; growth {:+.3f} % (limit {} %)\n",
             args.warmup, rss_warm, mib(rss_warm), args.steps, rss_end, mib(rss_end), mib(std::max(rss_peak, rss_end)),
             growth, args.max_growth);
  leaked.clear();  // with --inject-leak, the last block is lost too
  fmt::print("soak: recorded nodes alive between steps: at most {}\n", max_live_nodes);
  if (max_live_nodes != 0) {
    fmt::print(stderr, "soak: FAIL: {} recorded nodes outlived their step (graphs nobody can reach were kept)\n",
               max_live_nodes);
    return 1;
  }
  if (train && !(last_loss < first_loss)) {
    fmt::print(stderr, "soak: FAIL: the model did not train (loss {} -> {})\n", first_loss, last_loss);
    return 1;
  }
  if (args.rss_check && growth > args.max_growth) {
    fmt::print(stderr, "soak: FAIL: resident memory grew {:.3f} % after warm-up (limit {} %)\n", growth,
               args.max_growth);
    return 1;
  }
  fmt::print("soak: {}\n", args.rss_check ? "PASS" : "done (RSS not checked)");
  return 0;
} catch (const std::exception& e) {
  fmt::print(stderr, "soak: {}\n", e.what());
  return 2;
}
