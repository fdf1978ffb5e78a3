// `tapegrad-train train`: the training loop, on every rank of a data-parallel run.
#include <unistd.h>

#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <memory>
#include <stdexcept>

#include "autograd/ops.h"
#include "autograd/tape.h"
#include "data/tokenizer.h"
#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/sgd.h"
#include "train.h"

namespace po = boost::program_options;

namespace tgcli {

using namespace tg;

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_sigint(int) {
  g_interrupted = 1;
  std::signal(SIGINT, SIG_DFL);  // a second Ctrl-C stops at once
}
// With --np, Ctrl-C reaches the launching process, which has mpirun forward SIGUSR1 to every
// rank (see dist::maybe_relaunch_under_mpirun); `kill -USR1 <mpirun pid>` does the same.
extern "C" void on_sigusr1(int) { g_interrupted = 1; }

struct NonFiniteGradient {};

std::unique_ptr<optim::Optimizer> make_optimizer(const TrainOptions& o, const std::vector<Tensor>& params) {
  if (o.optimizer == "adam")
    return std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = o.lr, .weight_decay = o.weight_decay});
  if (o.optimizer == "adamw")
    return std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = o.lr, .weight_decay = o.weight_decay});
  return std::make_unique<optim::SGD>(
      params, optim::SGDOptions{.lr = o.lr, .momentum = o.momentum, .weight_decay = o.weight_decay});
}

std::vector<data::Example> read_split(const std::string& path, const TrainOptions& o, const char* what,
                                      int64_t limit, bool report_skipped) {
  data::ReadReport report;
  auto rows = data::read_glue_tsv(path, data::ReadOptions{.skip_bad_lines = o.skip_bad_lines}, &report);
  if (report.skipped && report_skipped) {
    fmt::print(stderr, "tapegrad-train: warning: skipped {} malformed line(s) of {}:\n", report.skipped, path);
    for (const auto& e : report.first_errors) fmt::print(stderr, "  {}\n", e);
  }
  if (limit > 0 && static_cast<int64_t>(rows.size()) > limit) rows.resize(static_cast<size_t>(limit));
  if (rows.empty()) throw std::runtime_error(fmt::format("{}: the {} set has no examples", path, what));
  return rows;
}

}  // namespace

int train_body(Run& r, World& world, const po::variables_map& vm, const fs::path& resume_dir) {
  TrainOptions& o = r.opts;
  const int W = world.size();
  const bool root = world.root();
  if (o.batch % W != 0)
    throw std::invalid_argument(fmt::format("--batch {} is not divisible by the {} processes: --batch is the global "
                                            "batch, split evenly over them",
                                            o.batch, W));
  const int64_t rank_batch = o.batch / W;
  set_num_threads(o.threads);
  r.save = o.save;

  r.started = std::chrono::steady_clock::now();
  r.train_rows = read_split(o.train, o, "training", o.max_train, root);
  r.dev_rows = read_split(o.dev, o, "dev", 0, root);
  if (static_cast<int64_t>(r.train_rows.size()) < W)
    throw std::invalid_argument(fmt::format("{}: {} training example(s) cannot be shared by {} processes", o.train,
                                            r.train_rows.size(), W));
  if (!resume_dir.empty()) {
    r.vocab = data::Vocab::load(resume_dir / "vocab.txt");
  } else {
    std::vector<std::vector<std::string>> docs;
    docs.reserve(r.train_rows.size());
    for (const auto& e : r.train_rows) docs.push_back(data::tokenize(e.text));
    r.vocab = data::Vocab::build(docs, o.min_freq);
  }
  r.train = data::encode_all(r.train_rows, r.vocab, data::tokenize, o.max_len);
  r.dev = data::encode_all(r.dev_rows, r.vocab, data::tokenize, o.max_len);

  manual_seed(o.seed);
  const nn::TextClassifierOptions mo = model_options(o, r.vocab.size());
  r.model = std::make_unique<nn::TextClassifier>(mo);
  r.opt = make_optimizer(o, r.model->parameters());
  // Data-parallel: average the gradients over the ranks FIRST, so every rank clips (and checks)
  // the same averaged gradient and applies the same update.
  world.add_gradient_sync(*r.opt);
  optim::ClipGradNorm clip(o.clip > 0 ? o.clip : std::numeric_limits<double>::infinity());
  r.opt->add_hook(clip);  // with --clip 0 it only measures the norm
  r.opt->add_hook([clip](optim::Optimizer&) {
    if (!std::isfinite(clip.last_norm())) throw NonFiniteGradient{};
  });
  r.config = json{{"format", "tapegrad-text-classifier"}, {"version", 1}, {"model", to_json(mo)}, {"training", to_json(o)}};

  std::string rng_note;
  if (!resume_dir.empty()) rng_note = restore_checkpoint(r, world, vm, resume_dir);
  // Every rank starts from rank 0's weights (identical anyway: same seed, same file).
  world.broadcast(r.model->parameters());
  // Dropout: rank r > 0 draws from its own stream (seed + r); rank 0 continues the one that
  // initialised the model, so a 1-process run is unchanged.
  if (resume_dir.empty() && world.rank() > 0) manual_seed(o.seed + static_cast<uint64_t>(world.rank()));
  r.st.world_size = W;

  if (!r.save.empty() && root) prepare_run_folder(r, resume_dir);

  // Under mpirun stdout is a pseudo-terminal; --np says what the launching terminal was, and
  // a job started by mpirun directly gets plain lines.
  const char* tty_env = std::getenv("TG_TRAIN_STDOUT_TTY");
  const bool tty = tty_env ? std::string(tty_env) == "1" : W == 1 && ::isatty(STDOUT_FILENO) != 0;
  Progress progress(tty, o.quiet || !root);  // only rank 0 prints
  progress.message(fmt::format(
      "tapegrad-train: {} train / {} dev examples, vocab {}, {}{} embed {} hidden {} x{} ({} parameters), {} "
      "threads{}{}{}",
      r.train.size(), r.dev.size(), r.vocab.size(), o.bidirectional ? "bi" : "", o.model, o.embed, o.hidden, o.layers,
      r.model->num_parameters(), o.threads,
      W > 1 ? fmt::format(", {} processes x batch {}", W, rank_batch) : "",
      resume_dir.empty() ? ""
                         : fmt::format(", resumed from {} at epoch {} step {}", resume_dir.string(), r.st.epoch,
                                       r.st.step),
      rng_note));

  std::signal(SIGINT, on_sigint);
  std::signal(SIGUSR1, on_sigusr1);
  r.elapsed_before = r.st.elapsed;

  // --stop-after counts steps of the whole run, so a checkpoint already past it trains no further.
  bool stopped = o.stop_after > 0 && r.st.step >= o.stop_after;
  for (int64_t epoch = r.st.epoch; epoch <= o.epochs && !stopped; ++epoch) {
    // Rank r takes positions r, r+W, ... of the epoch's permutation in batches of --batch / W:
    // together the ranks' batch i holds exactly the examples of the 1-process batch i.
    const std::vector<data::Batch> batches =
        data::make_batches(r.train, rank_batch, o.seed, epoch, true, o.bucket, world.rank(), W);
    const auto n = static_cast<int64_t>(batches.size());
    const int64_t first = epoch == r.st.epoch ? r.st.batch_pos : 0;
    if (first >= n) continue;
    progress.start_epoch(epoch, o.epochs, n, first);
    double epoch_loss = 0;
    int64_t epoch_examples = 0;
    for (int64_t i = first; i < n; ++i) {
      const data::Batch& b = batches[static_cast<size_t>(i)];
      const auto t0 = std::chrono::steady_clock::now();
      Tensor tokens = from_vector(b.tokens, Shape{b.batch, b.max_len});
      Tensor labels = from_vector(b.labels, Shape{b.batch});
      r.opt->zero_grad();
      Tensor loss = binary_cross_entropy_with_logits(r.model->forward(tokens, b.lengths), labels);
      // The step's loss summed over its examples on all ranks (every rank has b.batch of them),
      // and whether any rank was interrupted: one small all-reduce, so all ranks decide alike.
      std::vector<double> step_vals = {loss.item() * static_cast<double>(b.batch), g_interrupted ? 1.0 : 0.0};
      world.sum(step_vals);
      const double step_loss_sum = step_vals[0];
      const int64_t step_examples = b.batch * W;
      if (!std::isfinite(step_loss_sum)) {
        progress.end_epoch();
        if (root) {
          const auto [note, resumable] = describe_last_checkpoint(r);
          const double mean = step_loss_sum / static_cast<double>(step_examples);
          fmt::print(stderr,
                     "tapegrad-train: error: step {} (epoch {}, batch {}/{}): the training loss is {}. Stopped without "
                     "updating the weights; {}. Try a lower learning rate (--lr, now {:g}) or gradient clipping "
                     "(--clip, now {}){}\n",
                     r.st.step + 1, epoch, i + 1, n, std::isnan(mean) ? "nan" : mean > 0 ? "inf" : "-inf", note,
                     r.opt->param_groups()[0].lr, o.clip > 0 ? fmt::format("{:g}", o.clip) : std::string("off"),
                     resumable ? fmt::format("; to continue from the checkpoint: tapegrad-train train --resume {} "
                                             "--lr <smaller>",
                                             r.save.string())
                               : std::string());
        }
        return kExitNonFinite;
      }
      loss.backward();
      try {
        r.opt->step();
      } catch (const NonFiniteGradient&) {
        ++r.st.skipped_steps;
        if (root)
          fmt::print(stderr, "tapegrad-train: warning: step {}: gradient norm is {}; update skipped\n", r.st.step + 1,
                     clip.last_norm());
      }
      r.st.train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      r.st.loss_sum += step_loss_sum;
      r.st.loss_count += step_examples;
      r.st.examples += step_examples;
      ++r.st.step;
      r.st.epoch = epoch;
      r.st.batch_pos = i + 1;
      epoch_loss += step_loss_sum;
      epoch_examples += step_examples;
      progress.update(i + 1, epoch_examples, epoch_loss / static_cast<double>(epoch_examples), clip.last_norm());

      const bool evaluated = i + 1 == n || (o.eval_every > 0 && r.st.step % o.eval_every == 0);
      if (evaluated) evaluate(r, world, progress, epoch, i + 1, n);
      // One process: a Ctrl-C seen now. Several: one seen by any rank before this step's
      // all-reduce (the same verdict on every rank).
      const bool interrupted = W > 1 ? step_vals[1] > 0 : g_interrupted != 0;
      if (interrupted) {
        if (!evaluated) save_last(r, world);
        progress.end_epoch();
        if (root)
          fmt::print(stderr, "tapegrad-train: interrupted at step {}{}\n", r.st.step,
                     r.save.empty() ? " (nothing saved: no --save)"
                                    : fmt::format("; saved {}; continue with: tapegrad-train train --resume {}",
                                                  (r.save / "last").string(), r.save.string()));
        return 130;
      }
      if (o.stop_after > 0 && r.st.step >= o.stop_after) {
        if (!evaluated) save_last(r, world);
        stopped = true;
        break;
      }
    }
    progress.end_epoch();
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGUSR1, SIG_DFL);

  if (root) {
    const json summary = final_summary(r, stopped, world);
    if (!o.quiet) {
      if (stopped)
        fmt::print("stopped after step {} as asked (--stop-after){}\n", r.st.step,
                   r.save.empty() ? "" : fmt::format("; continue with --resume {}", r.save.string()));
      else if (r.st.best_accuracy >= 0)
        fmt::print("best dev accuracy {:.2f}% at epoch {} (step {}){}\n", 100 * r.st.best_accuracy, r.st.best_epoch,
                   r.st.best_step, r.save.empty() ? "" : "; checkpoint " + (r.save / "best").string());
    }
    fmt::print("{}\n", summary.dump());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace tgcli
