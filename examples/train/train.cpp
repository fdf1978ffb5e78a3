// `tapegrad-train train`: the training loop, on every rank of a data-parallel run.
#include <unistd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <chrono>
#include <csignal>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <stdexcept>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "tapegrad/data/tokenizer.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tapegrad/optim/sgd.h"
#include "train.h"

namespace po = boost::program_options;

namespace tgcli {

using namespace tg;

int train_threads(int requested, int world_size) {
  if (requested > 0) return requested;
  if (const char* env = std::getenv("TG_NUM_THREADS"); env && *env) return get_num_threads();
  // Ranks of this job on this machine (Open MPI says how many share the host; else assume all).
  int local = world_size;
  if (const char* l = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE"); l && std::atoi(l) > 0) local = std::atoi(l);
  return std::max(1, available_cores() / std::max(1, local));
}

namespace {

// The signal that asked the run to stop (SIGINT, SIGTERM; SIGUSR1 counts as SIGINT, SIGUSR2 as
// SIGTERM), or 0.
volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_stop_signal(int sig) {
  g_interrupted = sig;
  std::signal(sig, SIG_DFL);  // a second Ctrl-C (or SIGTERM) stops at once
}
// With --np, Ctrl-C reaches the launching process, which has mpirun forward SIGUSR1 to every
// rank (see dist::maybe_relaunch_under_mpirun); `kill -USR1 <mpirun pid>` does the same.
extern "C" void on_sigusr1(int) { g_interrupted = SIGINT; }
// ... and SIGTERM to the launching process reaches every rank as SIGUSR2.
extern "C" void on_sigusr2(int) { g_interrupted = SIGTERM; }

struct NonFiniteGradient {};

// The flat index of x's first NaN/Inf, or -1. Exponent bits all set = Inf or NaN; an integer OR
// over them vectorises, so checking every weight after every step costs a fraction of a step.
int64_t first_non_finite(const Tensor& x) {
  if (x.dtype() == DType::Float32 && x.is_contiguous()) {
    const auto* bits = reinterpret_cast<const uint32_t*>(x.data<float>());
    const int64_t n = x.numel();
    constexpr int64_t kBlock = 4096;
    for (int64_t b = 0; b < n; b += kBlock) {
      uint32_t bad = 0;
      const int64_t e = std::min(n, b + kBlock);
      for (int64_t k = b; k < e; ++k) bad |= static_cast<uint32_t>((bits[k] & 0x7f800000u) == 0x7f800000u);
      if (bad)
        for (int64_t k = b; k < e; ++k)
          if ((bits[k] & 0x7f800000u) == 0x7f800000u) return k;
    }
    return -1;
  }
  const std::vector<double> v = x.to_vector();
  for (size_t k = 0; k < v.size(); ++k)
    if (!std::isfinite(v[k])) return static_cast<int64_t>(k);
  return -1;
}

std::string index_string(const Shape& shape, int64_t flat) {
  std::vector<int64_t> idx(static_cast<size_t>(shape.size()));
  for (int64_t d = shape.size() - 1; d >= 0; --d) {
    idx[static_cast<size_t>(d)] = flat % shape[d];
    flat /= shape[d];
  }
  return fmt::format("[{}]", fmt::join(idx, ", "));
}

// The part every non-finite stop message shares: what is kept, what to try, how to continue.
std::string stop_advice(const Run& r) {
  const auto [note, resumable] = describe_last_checkpoint(r);
  return fmt::format("{}. Try a lower learning rate (--lr, now {:g}) or gradient clipping (--clip, now {}){}", note,
                     r.opt->param_groups()[0].lr,
                     r.opts.clip > 0 ? fmt::format("{:g}", r.opts.clip) : std::string("off"),
                     resumable ? fmt::format("; to continue from the checkpoint: tapegrad-train train --resume {} "
                                             "--lr <smaller>",
                                             r.save.string())
                               : std::string());
}

void poison_first_element(const Tensor& t) {
  NoGradGuard no_grad;
  if (t.dtype() == DType::Float64)
    t.data<double>()[0] = std::numeric_limits<double>::quiet_NaN();
  else
    t.data<float>()[0] = std::numeric_limits<float>::quiet_NaN();
  t.impl()->storage->bump_version();
}

std::unique_ptr<optim::Optimizer> make_optimizer(const TrainOptions& o, const std::vector<Tensor>& params) {
  if (o.optimizer == "adam")
    return std::make_unique<optim::Adam>(params, optim::AdamOptions{.lr = o.lr, .weight_decay = o.weight_decay});
  if (o.optimizer == "adamw")
    return std::make_unique<optim::AdamW>(params, optim::AdamWOptions{.lr = o.lr, .weight_decay = o.weight_decay});
  return std::make_unique<optim::SGD>(
      params, optim::SGDOptions{.lr = o.lr, .momentum = o.momentum, .weight_decay = o.weight_decay});
}

// Reads a data file (labels 0..max_label; label_rule says why, in the error for another label).
// `from_checkpoint`: the path came from a resumed checkpoint's config.json,
// not from the command line, so it must name a regular file and no error or warning quotes its
// contents (a crafted config.json must not make tapegrad-train print lines of /etc/passwd).
std::vector<data::Example> read_split(const std::string& path, const TrainOptions& o, const char* what,
                                      const char* option, int64_t limit, bool report_skipped, bool from_checkpoint,
                                      int max_label, const std::string& label_rule) {
  const std::string origin =
      from_checkpoint ? fmt::format("{} (the {} file named by the checkpoint's config.json; give another with {} "
                                    "FILE)",
                                    path, what, option)
                      : path;
  // "path:LINE: ..." -> "path:LINE" (the part of a reader's message that quotes no content)
  auto where_only = [&](const std::string& msg) {
    if (msg.rfind(path + ":", 0) == 0) {
      const size_t b = path.size() + 1, e = msg.find(':', b);
      if (e != std::string::npos && e > b && msg.find_first_not_of("0123456789", b) == e)
        return fmt::format("line {}", msg.substr(b, e - b));
    }
    return std::string("the file");
  };
  if (from_checkpoint) {
    std::error_code ec;
    const fs::file_status st = fs::status(path, ec);
    if (!fs::exists(st)) throw std::runtime_error(fmt::format("{} does not exist", origin));
    if (!fs::is_regular_file(st)) throw std::runtime_error(fmt::format("{} is not a regular file", origin));
  }
  data::ReadReport report;
  std::vector<data::Example> rows;
  try {
    rows = data::read_glue_tsv(path, data::ReadOptions{.skip_bad_lines = o.skip_bad_lines, .max_label = max_label},
                               &report);
  } catch (const std::exception& e) {
    if (!from_checkpoint) {
      const std::string msg = e.what();
      if (msg.find(": label must be") != std::string::npos && !label_rule.empty())
        throw std::runtime_error(fmt::format("{} ({})", msg, label_rule));
      throw;
    }
    throw std::runtime_error(fmt::format("{} is not a GLUE TSV file (sentence<TAB>label): {} is malformed (its "
                                         "contents are not shown because the path came from the checkpoint)",
                                         origin, where_only(e.what())));
  }
  if (report.skipped && report_skipped) {
    fmt::print(stderr, "tapegrad-train: warning: skipped {} malformed line(s) of {}:\n", report.skipped, origin);
    for (const auto& e : report.first_errors) fmt::print(stderr, "  {}\n", from_checkpoint ? where_only(e) : e);
  }
  if (limit > 0 && static_cast<int64_t>(rows.size()) > limit) rows.resize(static_cast<size_t>(limit));
  if (rows.empty()) throw std::runtime_error(fmt::format("{}: the {} set has no examples", origin, what));
  return rows;
}

// A resumed run trains on the rows its checkpoint was trained on, unless --allow-data-change.
void check_fingerprint(const std::string& saved, const std::string& now, const std::string& path, const char* what,
                       const char* option, const fs::path& trainer_json, bool allowed, bool root) {
  if (saved.empty() || saved == now) return;
  if (allowed) {
    if (root)
      fmt::print(stderr, "tapegrad-train: warning: the {} rows of {} differ from the checkpoint's ({} now, {} then); "
                 "continuing as --allow-data-change says (not the same run any more)\n",
                 what, path, now, saved);
    return;
  }
  throw std::runtime_error(fmt::format(
      "{} {}: these {} rows differ from the ones the checkpoint was trained on ({} now; {} recorded in {}), so "
      "resuming would not continue the same run. Give the original file, or add --allow-data-change to continue "
      "on these rows",
      option, path, what, now, saved, trainer_json.string()));
}

}  // namespace

InjectedFault parse_fault(const std::string& spec) {
  if (spec.empty()) return {};
  static const std::pair<const char*, InjectedFault::Kind> kinds[] = {
      {"nan-loss", InjectedFault::Kind::NanLoss},
      {"nan-grad", InjectedFault::Kind::NanGrad},
      {"nan-grad-persistent", InjectedFault::Kind::NanGradPersistent},
      {"nan-weight", InjectedFault::Kind::NanWeight}};
  const auto bad = [&] {
    return std::invalid_argument(fmt::format("--inject-fault '{}': expected KIND@STEP with KIND one of nan-loss, "
                                             "nan-grad, nan-grad-persistent, nan-weight and STEP an optimizer step "
                                             ">= 1 (e.g. nan-grad@5)",
                                             spec));
  };
  const size_t at = spec.find('@');
  if (at == std::string::npos) throw bad();
  InjectedFault f;
  const std::string kind = spec.substr(0, at), step = spec.substr(at + 1);
  bool known = false;
  for (const auto& [name, k] : kinds)
    if (kind == name) f.kind = k, known = true;
  if (!known || step.empty() || step.size() > 18 || step.find_first_not_of("0123456789") != std::string::npos)
    throw bad();
  f.step = std::stoll(step);
  if (f.step < 1) throw bad();
  return f;
}

int train_body(Run& r, World& world, const po::variables_map& vm, fs::path resume_dir) {
  TrainOptions& o = r.opts;
  const int W = world.size();
  const bool root = world.root();
  if (o.batch % W != 0)
    throw std::invalid_argument(fmt::format("--batch {} is not divisible by the {} processes: --batch is the global "
                                            "batch, split evenly over them",
                                            o.batch, W));
  const int64_t rank_batch = o.batch / W;
  const int threads = train_threads(o.threads, W);
  set_num_threads(threads);
  r.save = o.save;

  // The run folder first: a second run into it fails here, before reading anything.
  if (!r.save.empty() && root) open_run_folder(r, resume_dir);
  if (W > 1) {
    std::vector<double> barrier = {0};  // the others wait for rank 0's recovery of the folder
    world.sum(barrier);
  }
  if (!resume_dir.empty() && !fs::is_regular_file(resume_dir / "config.json")) {
    // open_run_folder renamed DIR/last.old back to DIR/last
    const std::string name = resume_dir.filename().string();
    if (name.size() > 4 && name.ends_with(".old")) resume_dir = resume_dir.parent_path() / name.substr(0, name.size() - 4);
  }

  r.started = std::chrono::steady_clock::now();
  // K classes: --classes (or the checkpoint's), else the largest training label + 1 (at least 2);
  // dev labels must then lie in 0..K-1.
  const bool classes_given = o.classes > 0;
  r.train_rows = read_split(o.train, o, "training", "--train", o.max_train, root, r.train_from_checkpoint,
                            classes_given ? static_cast<int>(o.classes - 1) : kMaxClasses - 1,
                            classes_given ? fmt::format("the model has {} classes: --classes {}{}", o.classes,
                                                        o.classes, resume_dir.empty() ? "" : " (from the checkpoint)")
                                          : fmt::format("at most {} classes", kMaxClasses));
  if (!classes_given) {
    int top = 1;
    for (const auto& e : r.train_rows) top = std::max(top, e.label);
    o.classes = top + 1;
  }
  r.dev_rows = read_split(o.dev, o, "dev", "--dev", 0, root, r.dev_from_checkpoint, static_cast<int>(o.classes - 1),
                          classes_given ? fmt::format("the model has {} classes: --classes {}", o.classes, o.classes)
                                        : fmt::format("the model has {} classes, the largest training label + 1 in "
                                                      "{}; give --classes K if the training data lacks some",
                                                      o.classes, o.train));
  r.label_names = read_label_names(o.label_names, o.classes);
  if (root) warn_missing_classes(r);
  if (static_cast<int64_t>(r.train_rows.size()) < W)
    throw std::invalid_argument(fmt::format("{}: {} training example(s) cannot be shared by {} processes", o.train,
                                            r.train_rows.size(), W));
  const std::string train_data = data_fingerprint(r.train_rows), dev_data = data_fingerprint(r.dev_rows);
  if (!resume_dir.empty()) {
    const fs::path tj = resume_dir / "trainer.json";
    const TrainerState saved = trainer_state_from_json(read_json(tj), tj.string());
    check_fingerprint(saved.train_data, train_data, o.train, "training", "--train", tj, o.allow_data_change, root);
    check_fingerprint(saved.dev_data, dev_data, o.dev, "dev", "--dev", tj, o.allow_data_change, root);
    r.vocab = data::Vocab::load(resume_dir / "vocab.txt");
  } else {
    std::vector<std::vector<std::string>> docs;
    docs.reserve(r.train_rows.size());
    for (const auto& e : r.train_rows) docs.push_back(data::tokenize(e.text));
    r.vocab = data::Vocab::build(docs, o.min_freq);
  }
  r.train = data::encode_all(r.train_rows, r.vocab, data::tokenize, o.max_len);
  r.dev = data::encode_all(r.dev_rows, r.vocab, data::tokenize, o.max_len);

  check_memory(r, r.vocab.size());
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
  r.st.train_data = train_data;
  r.st.dev_data = dev_data;
  const InjectedFault fault = parse_fault(o.inject_fault);
  const std::vector<std::pair<std::string, Tensor>> named_params = r.model->named_parameters();
  int64_t consecutive_skips = 0;  // in this process: a resumed run starts counting again

  if (!r.save.empty() && root) {
    prepare_run_folder(r, resume_dir);
    // A kill after last/ but before metrics.jsonl was rewritten (or a resume into another
    // folder) leaves metrics.jsonl behind the checkpoint's history: bring it up to date now, as
    // a resumed run that has nothing left to train would never write it.
    if (!resume_dir.empty() && !r.st.history.empty()) {
      std::string lines;
      for (const auto& h : r.st.history) lines += h.dump() + "\n";
      std::ifstream in(r.save / "metrics.jsonl", std::ios::binary);
      const std::string have((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      if (have != lines) r.write_metrics();
    }
  }

  // Under mpirun stdout is a pseudo-terminal; --np says what the launching terminal was, and
  // a job started by mpirun directly gets plain lines.
  const char* tty_env = std::getenv("TG_TRAIN_STDOUT_TTY");
  const bool tty = tty_env ? std::string(tty_env) == "1" : W == 1 && ::isatty(STDOUT_FILENO) != 0;
  Progress progress(tty, o.quiet || !root);  // only rank 0 prints
  progress.message(fmt::format(
      "tapegrad-train: {} train / {} dev examples, {}vocab {}, {}{} embed {} hidden {} x{} ({} parameters), {} "
      "threads{}{}{}",
      r.train.size(), r.dev.size(), o.classes > 2 ? fmt::format("{} classes, ", o.classes) : "", r.vocab.size(), o.bidirectional ? "bi" : "", o.model, o.embed, o.hidden, o.layers,
      r.model->num_parameters(), threads,
      W > 1 ? fmt::format(", {} processes x batch {}", W, rank_batch) : "",
      resume_dir.empty() ? ""
                         : fmt::format(", resumed from {} at epoch {} step {}", resume_dir.string(), r.st.epoch,
                                       r.st.step),
      rng_note));

  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::signal(SIGUSR1, on_sigusr1);
  std::signal(SIGUSR2, on_sigusr2);
  r.elapsed_before = r.st.elapsed;

  // --stop-after counts steps of the whole run, so a checkpoint already past it trains no further.
  bool stopped = o.stop_after > 0 && r.st.step >= o.stop_after;
  const bool multiclass = r.model->options.num_classes > 2;
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
      r.opt->zero_grad();
      Tensor loss = multiclass ? cross_entropy(r.model->forward(tokens, b.lengths), class_targets(b))
                               : binary_cross_entropy_with_logits(r.model->forward(tokens, b.lengths),
                                                                  from_vector(b.labels, Shape{b.batch}));
      const int64_t step_no = r.st.step + 1;
      if (fault.loss_at(step_no)) loss = loss * std::numeric_limits<double>::quiet_NaN();
      // The step's loss summed over its examples on all ranks (every rank has b.batch of them),
      // and whether any rank was interrupted (SIGINT) or terminated (SIGTERM): one small
      // all-reduce, so all ranks decide alike (also which of the two it was).
      const int seen = g_interrupted;
      std::vector<double> step_vals = {loss.item() * static_cast<double>(b.batch), seen == SIGINT ? 1.0 : 0.0,
                                       seen == SIGTERM ? 1.0 : 0.0};
      world.sum(step_vals);
      const double step_loss_sum = step_vals[0];
      const int64_t step_examples = b.batch * W;
      const std::string where = fmt::format("step {} (epoch {}, batch {}/{})", step_no, epoch, i + 1, n);
      if (!std::isfinite(step_loss_sum)) {
        progress.end_epoch();
        if (root) {
          const double mean = step_loss_sum / static_cast<double>(step_examples);
          fmt::print(stderr, "tapegrad-train: error: {}: the training loss is {}. Stopped without updating the weights; {}\n",
                     where, std::isnan(mean) ? "nan" : mean > 0 ? "inf" : "-inf", stop_advice(r));
        }
        return kExitNonFinite;
      }
      loss.backward();
      if (fault.grad_at(step_no))
        for (const auto& np : named_params)
          if (np.second.grad().defined()) {
            poison_first_element(np.second.grad());
            break;
          }
      bool skipped = false;
      try {
        r.opt->step();
        consecutive_skips = 0;
      } catch (const NonFiniteGradient&) {
        skipped = true;
        ++r.st.skipped_steps;
        ++consecutive_skips;
        if (o.max_skipped_steps > 0 && consecutive_skips >= o.max_skipped_steps) {
          progress.end_epoch();
          if (root)
            fmt::print(stderr,
                       "tapegrad-train: error: {}: the gradient norm was {} at {} consecutive steps ({}-{}) while "
                       "the loss stayed finite, so each update was skipped and the weights have not changed since "
                       "{}. Stopped (--max-skipped-steps {}; 0 = never stop for skipped steps); {}\n",
                       where, clip.last_norm(), consecutive_skips, step_no - consecutive_skips + 1, step_no,
                       step_no - consecutive_skips > 0 ? fmt::format("step {}", step_no - consecutive_skips)
                                                   : std::string("the start"),
                       o.max_skipped_steps, stop_advice(r));
          return kExitNonFinite;
        }
        if (root)
          fmt::print(stderr, "tapegrad-train: warning: step {}: gradient norm is {}; update skipped ({} in a row; "
                     "the run stops at {})\n", step_no, clip.last_norm(), consecutive_skips,
                     o.max_skipped_steps > 0 ? fmt::format("{}", o.max_skipped_steps) : std::string("never"));
      }
      if (!skipped) {
        if (fault.weight_at(step_no)) poison_first_element(named_params.front().second);
        // Finite gradients can still make non-finite weights (a huge --lr, an overflowing
        // moment); training on from them would only ever give NaN, so stop while last/ is good.
        for (const auto& [name, p] : named_params) {
          const int64_t k = first_non_finite(p);
          if (k < 0) continue;
          progress.end_epoch();
          if (root) {
            const double v = p.reshape(Shape{p.numel()}).at({k});
            fmt::print(stderr,
                       "tapegrad-train: error: {}: after the update, parameter '{}' {} holds {} at {} (the loss, "
                       "{:.4g}, and the gradient norm, {:.4g}, were finite). Stopped; nothing of this step is saved; {}\n",
                       where, name, p.shape().str(), std::isnan(v) ? "nan" : v > 0 ? "inf" : "-inf",
                       index_string(p.shape(), k), step_loss_sum / static_cast<double>(step_examples),
                       clip.last_norm(), stop_advice(r));
          }
          return kExitNonFinite;
        }
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
      const bool interrupted = W > 1 ? step_vals[1] + step_vals[2] > 0 : g_interrupted != 0;
      if (interrupted) {
        // SIGTERM (a scheduler, `kill`) is handled like Ctrl-C; the exit status says which it was
        // (SIGTERM when any rank saw one).
        const int sig = (W > 1 ? step_vals[2] > 0 : g_interrupted == SIGTERM) ? SIGTERM : SIGINT;
        if (!evaluated) save_last(r, world);
        progress.end_epoch();
        if (root)
          fmt::print(stderr, "tapegrad-train: {} at step {}{}\n",
                     sig == SIGTERM ? "terminated (SIGTERM)" : "interrupted", r.st.step,
                     r.save.empty() ? " (nothing saved: no --save)"
                                    : fmt::format("; saved {}; continue with: tapegrad-train train --resume {}",
                                                  (r.save / "last").string(), r.save.string()));
        return 128 + sig;
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
  std::signal(SIGTERM, SIG_DFL);
  std::signal(SIGUSR1, SIG_DFL);
  std::signal(SIGUSR2, SIG_DFL);

  if (root) {
    const json summary = final_summary(r, stopped, world);
    if (!o.quiet) {
      if (stopped)
        fmt::print("stopped after step {} as asked (--stop-after){}\n", r.st.step,
                   r.save.empty() ? "" : fmt::format("; continue with --resume {}", r.save.string()));
      else if (r.st.best_accuracy >= 0)
        fmt::print("best dev accuracy {:.2f}% at epoch {} (step {}){}\n", 100 * r.st.best_accuracy, r.st.best_epoch,
                   r.st.best_step, r.save.empty() ? "" : "; checkpoint " + (r.save / "best").string());
      if (!stopped && r.st.best_report.is_object()) fmt::print("{}", class_table(r.st.best_report));
    }
    fmt::print("{}\n", summary.dump());
    std::fflush(stdout);
  }
  return 0;
}

}  // namespace tgcli
