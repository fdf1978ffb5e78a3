// `tapegrad-train train`: SST-2-style binary text classification with checkpoints and resume.
#include <unistd.h>

#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <chrono>
#include <csignal>
#include <cmath>
#include <iostream>
#include <limits>
#include <memory>
#include <optional>
#include <set>
#include <stdexcept>

#include "autograd/ops.h"
#include "autograd/safetensors.h"
#include "autograd/tape.h"
#include "cli.h"
#include "data/dataset.h"
#include "data/tokenizer.h"
#include "optim/adam.h"
#include "optim/clip.h"
#include "optim/sgd.h"
#include "report.h"
#ifdef TG_HAVE_MPI
#include "optim/dist/dist.h"
#endif

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

po::options_description train_description(TrainOptions& o) {
  po::options_description d(
      "tapegrad-train train: train a recurrent sentence classifier on GLUE-style TSV files\n"
      "(header 'sentence<TAB>label', labels 0/1). Defaults are the PyTorch reference configuration\n"
      "of bench/accuracy (LSTM, embed 128, hidden 256, dropout 0.5, Adam 1e-3, clip 5, 3 epochs).\n\nOptions");
  // clang-format off
  d.add_options()
    ("help,h", "show this help")
    ("train", po::value(&o.train), "training TSV file (required unless --resume)")
    ("dev", po::value(&o.dev), "dev TSV file, evaluated after every epoch (required unless --resume)")
    ("model", po::value(&o.model)->default_value(o.model), "recurrent cell: rnn (tanh), lstm or gru")
    ("embed", po::value(&o.embed)->default_value(o.embed), "word embedding size")
    ("hidden", po::value(&o.hidden)->default_value(o.hidden), "hidden state size (per direction)")
    ("layers", po::value(&o.layers)->default_value(o.layers), "stacked recurrent layers")
    ("bidirectional", po::bool_switch(&o.bidirectional), "also run a reverse-direction layer (default off)")
    ("dropout", po::value(&o.dropout)->default_value(o.dropout),
     "dropout on the features before the output layer (and between stacked layers)")
    ("embed-dropout", po::value(&o.embed_dropout)->default_value(o.embed_dropout), "dropout on the word embeddings")
    ("pooling", po::value(&o.pooling)->default_value(o.pooling),
     "sentence features: last (final hidden state, as the reference), max or mean over the real time steps")
    ("epochs", po::value(&o.epochs)->default_value(o.epochs), "training epochs")
    ("batch", po::value(&o.batch)->default_value(o.batch), "training batch size")
    ("lr", po::value(&o.lr)->default_value(o.lr), "learning rate")
    ("optimizer", po::value(&o.optimizer)->default_value(o.optimizer), "adam, adamw or sgd")
    ("clip", po::value(&o.clip)->default_value(o.clip), "clip the global gradient norm to this (0 = off)")
    ("weight-decay", po::value(&o.weight_decay)->default_value(o.weight_decay),
     "weight decay (L2 for adam and sgd, decoupled for adamw; PyTorch's AdamW default would be 0.01)")
    ("momentum", po::value(&o.momentum)->default_value(o.momentum), "momentum (sgd only)")
    ("seed", po::value(&o.seed)->default_value(o.seed), "random seed: initialisation, dropout and data order")
    ("threads", po::value(&o.threads)->default_value(o.threads), "threads for matrix products (OpenBLAS)")
    ("max-len", po::value(&o.max_len)->default_value(o.max_len), "keep at most this many tokens per sentence")
    ("min-freq", po::value(&o.min_freq)->default_value(o.min_freq),
     "vocabulary: training-set words seen at least this often (others are <unk>)")
    ("bucket", po::bool_switch(&o.bucket), "batch sentences of similar length together (less padding; default off)")
    ("save", po::value(&o.save), "run folder: DIR/best/ (best dev accuracy), DIR/last/ (resumable), "
                                 "DIR/metrics.jsonl, DIR/metrics.png (default: save nothing)")
    ("resume", po::value(&o.resume), "continue the run saved in DIR (a run folder or a checkpoint folder) exactly "
                                     "where it stopped; model, data and seed options come from its config.json")
    ("eval-every", po::value(&o.eval_every)->default_value(o.eval_every),
     "also evaluate (and checkpoint) every N optimizer steps (0 = only after each epoch)")
    ("eval-batch", po::value(&o.eval_batch)->default_value(o.eval_batch), "batch size for evaluation")
    ("skip-bad-lines", po::bool_switch(&o.skip_bad_lines), "skip malformed TSV lines (counted) instead of stopping")
    ("max-train", po::value(&o.max_train)->default_value(o.max_train),
     "use only the first N training rows (0 = all; for smoke tests)")
    ("stop-after", po::value(&o.stop_after)->default_value(o.stop_after),
     "stop after N optimizer steps in total, saving DIR/last/ to resume from (0 = run all epochs)")
    ("quiet,q", po::bool_switch(&o.quiet), "print only the final JSON line (and errors)")
    ("np", po::value(&o.np)->default_value(o.np),
     "data-parallel processes: re-runs itself under mpirun -np N; --batch stays the global batch "
     "(split evenly, so it must be divisible by N)")
    ("hostfile", po::value(&o.hostfile),
     "with --np: an Open MPI hostfile ('host slots=K' lines) to spread the processes over machines");
  // clang-format on
  return d;
}

void validate(const TrainOptions& o) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
  };
  need(!o.train.empty(), "--train FILE is required");
  need(!o.dev.empty(), "--dev FILE is required");
  nn::parse_cell_type(o.model);
  nn::parse_pooling(o.pooling);
  need(o.optimizer == "adam" || o.optimizer == "adamw" || o.optimizer == "sgd",
       "--optimizer must be adam, adamw or sgd, got " + o.optimizer);
  need(o.embed >= 1 && o.hidden >= 1 && o.layers >= 1, "--embed, --hidden and --layers must be >= 1");
  need(o.dropout >= 0 && o.dropout < 1 && o.embed_dropout >= 0 && o.embed_dropout < 1,
       "--dropout and --embed-dropout must be in [0, 1)");
  need(o.epochs >= 1 && o.batch >= 1 && o.eval_batch >= 1, "--epochs, --batch and --eval-batch must be >= 1");
  need(o.lr > 0 && std::isfinite(o.lr), "--lr must be > 0");
  need(o.clip >= 0 && o.weight_decay >= 0 && o.momentum >= 0, "--clip, --weight-decay and --momentum must be >= 0");
  need(o.threads >= 1, "--threads must be >= 1");
  need(o.max_len >= 1 && o.min_freq >= 1, "--max-len and --min-freq must be >= 1");
  need(o.eval_every >= 0 && o.max_train >= 0 && o.stop_after >= 0,
       "--eval-every, --max-train and --stop-after must be >= 0");
  need(o.np >= 1, fmt::format("--np must be >= 1, got {}", o.np));
  need(o.batch % o.np == 0, fmt::format("--batch {} is not divisible by --np {}: --batch is the global batch, split "
                                        "evenly over the processes (use a multiple of {})",
                                        o.batch, o.np, o.np));
  need(o.hostfile.empty() || o.np > 1, "--hostfile " + o.hostfile + " needs --np N with N > 1");
}

// The processes of a data-parallel run: a world of one unless started with --np N (or by mpirun).
class World {
 public:
  // Creates the MPI context when this process is an MPI rank (started by mpirun, e.g. through
  // --np); otherwise stays a world of one.
  void start(int np) {
#ifdef TG_HAVE_MPI
    if (np > 1 || dist::launched_by_mpirun()) {
      ctx_.emplace();
      rank_ = ctx_->rank();
      size_ = ctx_->world_size();
    }
#endif
    if (np > 1 && size_ != np)
      throw std::runtime_error(fmt::format("--np {}: this process is one of {} (not started by mpirun -np {}; "
                                           "is TG_DIST_CHILD set in the environment?)",
                                           np, size_, np));
  }
  int rank() const { return rank_; }
  int size() const { return size_; }
  bool root() const { return rank_ == 0; }

  // Element-wise sum over the ranks, in place.
  void sum(std::vector<double>& v) const {
#ifdef TG_HAVE_MPI
    if (size_ > 1) ctx_->all_reduce_sum(v);
#endif
    (void)v;
  }
  std::vector<double> gather(const std::vector<double>& v) const {
#ifdef TG_HAVE_MPI
    if (size_ > 1) return ctx_->all_gather(v);
#endif
    return v;
  }
  std::vector<std::string> gather(const std::string& s) const {
#ifdef TG_HAVE_MPI
    if (size_ > 1) return ctx_->all_gather(s);
#endif
    return {s};
  }
  void broadcast(const std::vector<Tensor>& params) const {
#ifdef TG_HAVE_MPI
    if (size_ > 1) dist::broadcast_parameters(*ctx_, params, 0);
#endif
    (void)params;
  }
  // Registers the gradient all-reduce (must come before clipping).
  void add_gradient_sync(optim::Optimizer& opt) {
#ifdef TG_HAVE_MPI
    if (size_ > 1) {
      sync_.emplace(*ctx_);
      opt.add_hook(*sync_);
    }
#endif
    (void)opt;
  }
  double allreduce_seconds() const {
#ifdef TG_HAVE_MPI
    if (sync_) return sync_->stats().total_allreduce_s;
#endif
    return 0;
  }
  // Runs fn; in a job of several ranks an exception on one ends every rank within seconds.
  template <class F> int run(F&& fn) {
#ifdef TG_HAVE_MPI
    if (size_ > 1) return dist::run_or_abort(fn);
#endif
    return fn();
  }

 private:
  int rank_ = 0, size_ = 1;
#ifdef TG_HAVE_MPI
  std::optional<dist::Context> ctx_;
  std::optional<dist::AllReduceGradients> sync_;
#endif
};

// Options a resumed run must share with the checkpoint: they fix the model, the vocabulary, the
// data order or the random stream.
const std::set<std::string> kFixedOnResume = {"model",     "embed",     "hidden",  "layers", "bidirectional",
                                              "dropout",   "embed-dropout", "pooling", "batch", "optimizer",
                                              "seed",      "max-len",   "min-freq", "bucket", "max-train",
                                              "momentum"};

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

double bce(float logit, float label) {  // the stable form binary_cross_entropy_with_logits uses
  const double x = logit, y = label;
  return std::max(x, 0.0) - x * y + std::log1p(std::exp(-std::abs(x)));
}

uint32_t weights_crc(const nn::Module& m) {  // = the data-section CRC of its model.safetensors
  uint32_t crc = 0;
  for (const auto& [name, t] : m.state_dict())
    if (t.numel()) crc = crc32(t.raw_data(), static_cast<size_t>(t.numel()) * dtype_size(t.dtype()), crc);
  return crc;
}

// Replaces `dir` by the complete folder `staged` (rename, so readers never see half a checkpoint).
void swap_in(const fs::path& staged, const fs::path& dir) {
  fs::path old = dir;
  old += ".old";
  fs::remove_all(old);
  if (fs::exists(dir)) fs::rename(dir, old);
  fs::rename(staged, dir);
  fsync_dir(dir.parent_path());
  fs::remove_all(old);
}

void copy_checkpoint(const fs::path& from, const fs::path& to) {
  fs::path staged = to;
  staged += ".tmp";
  fs::remove_all(staged);
  fs::copy(from, staged, fs::copy_options::recursive);
  swap_in(staged, to);
}

struct Run {
  TrainOptions opts;
  json config;
  data::Vocab vocab;
  std::vector<data::Example> train_rows, dev_rows;
  std::vector<data::EncodedExample> train, dev;
  std::unique_ptr<nn::TextClassifier> model;
  std::unique_ptr<optim::Optimizer> opt;
  TrainerState st;
  fs::path save;

  // A full checkpoint in dir (replaced as a whole), plus `extra` files (name, content).
  void write_checkpoint(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& extra = {}) {
    fs::path staged = dir;
    staged += ".tmp";
    fs::remove_all(staged);
    fs::create_directories(staged);
    for (const auto& [name, content] : extra) write_file_synced(staged / name, content);
    nn::save_weights(*model, staged / "model.safetensors",
                     {{"format", "pt"}, {"tapegrad_model", config["model"].dump()}});
    write_file_synced(staged / "config.json", config.dump(2) + "\n");
    vocab.save(staged / "vocab.txt");
    write_file_synced(staged / "optimizer.json", opt->state_dict().dump() + "\n");
    write_file_synced(staged / "trainer.json", to_json(st).dump(1) + "\n");
    fsync_dir(staged);
    swap_in(staged, dir);
  }

  void write_metrics() {
    std::string lines;
    for (const auto& r : st.history) lines += r.dump() + "\n";
    write_file_atomic(save / "metrics.jsonl", lines);
    plot_metrics(save, st.history,
                 fmt::format("tapegrad-train: {}{}, {} pooling, embed {}, hidden {}, {} layer(s), seed {}",
                             opts.bidirectional ? "bi" : "", opts.model, opts.pooling, opts.embed, opts.hidden,
                             opts.layers, opts.seed));
  }
};

json final_summary(const Run& r, bool stopped, const World& world) {
  const TrainerState& st = r.st;
  return json{{"dev_accuracy", st.best_accuracy < 0 ? json(nullptr) : json(st.best_accuracy)},
              {"epoch_of_best", st.best_epoch},
              {"step_of_best", st.best_step},
              {"final_dev_accuracy", st.last_dev_accuracy < 0 ? json(nullptr) : json(st.last_dev_accuracy)},
              {"final_dev_loss", st.last_dev_accuracy < 0 ? json(nullptr) : json(st.last_dev_loss)},
              {"train_seconds", st.train_seconds},
              {"examples_per_second", st.train_seconds > 0 ? static_cast<double>(st.examples) / st.train_seconds : 0.0},
              {"allreduce_seconds", world.allreduce_seconds()},
              {"model", r.opts.model},
              {"bidirectional", r.opts.bidirectional},
              {"pooling", r.opts.pooling},
              {"params", r.model->num_parameters()},
              {"vocab", r.vocab.size()},
              {"train_examples", r.train.size()},
              {"seed", r.opts.seed},
              {"threads", r.opts.threads},
              {"world_size", world.size()},
              {"epochs", r.opts.epochs},
              {"steps", st.step},
              {"skipped_steps", st.skipped_steps},
              {"weights_checksum", fmt::format("crc32:{:08x}", weights_crc(*r.model))},
              {"save", r.save.empty() ? json(nullptr) : json(r.save.string())},
              {"stopped_early", stopped}};
}

// Exit status of a run stopped by a non-finite training loss.
constexpr int kExitNonFinite = 3;

int train_body(Run& r, World& world, const po::variables_map& vm, const fs::path& resume_dir);

}  // namespace

int run_train(int argc, char** argv) {
  Run r;
  TrainOptions cli;
  po::options_description desc = train_description(cli);
  po::variables_map vm;
  po::store(po::command_line_parser(argc - 1, argv + 1).options(desc).run(), vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  po::notify(vm);

  fs::path resume_dir;
  if (!cli.resume.empty()) {
    resume_dir = resolve_checkpoint(cli.resume, "last");
    if (!fs::exists(resume_dir / "trainer.json"))
      throw std::runtime_error(fmt::format("{} has no trainer.json: not a resumable checkpoint", resume_dir.string()));
    json saved_cfg = read_json(resume_dir / "config.json");
    json saved = saved_cfg.at("training"), given = to_json(cli);
    for (const auto& [name, value] : vm) {
      if (value.defaulted() || !given.contains(name)) continue;
      if (kFixedOnResume.count(name) && saved.contains(name) && saved[name] != given[name])
        throw std::invalid_argument(fmt::format("--{} {} conflicts with the checkpoint's {} in {}; leave it out "
                                                "when resuming",
                                                name, given[name].dump(), saved[name].dump(), resume_dir.string()));
      saved[name] = given[name];
    }
    r.opts = train_options_from_json(saved);
    r.opts.resume = cli.resume;
    r.opts.quiet = cli.quiet;
    r.opts.stop_after = cli.stop_after;
    r.opts.np = cli.np;
    r.opts.hostfile = cli.hostfile;
    if (!vm.count("save") || vm["save"].defaulted()) {
      // Continue in the run folder the checkpoint belongs to.
      const fs::path parent = resume_dir.parent_path();
      r.opts.save = (resume_dir.filename() == "last" || resume_dir.filename() == "best") ? parent.string()
                                                                                           : r.opts.save;
    }
  } else {
    r.opts = cli;
  }
  validate(r.opts);

  // --np N: this process becomes `mpirun -np N <this program> <same arguments>` (returns at once
  // in the ranks mpirun starts). Options were checked above, so a bad one is reported once.
  World world;
#ifdef TG_HAVE_MPI
  if (r.opts.np > 1) {
    std::vector<std::string> mpirun_args;
    if (!r.opts.hostfile.empty()) {
      // Checked by the launching process only: the ranks on other machines need not have it.
      if (!std::getenv("TG_DIST_CHILD") && !dist::launched_by_mpirun() && !fs::is_regular_file(r.opts.hostfile))
        throw std::invalid_argument("--hostfile " + r.opts.hostfile + ": no such file");
      mpirun_args = {"--hostfile", fs::absolute(r.opts.hostfile).string()};
    }
    // mpirun gives its ranks a pseudo-terminal even when its own output goes to a file: tell
    // rank 0 what the user's stdout really is (progress bar or plain lines).
    if (!std::getenv("TG_DIST_CHILD") && !dist::launched_by_mpirun()) {
      ::setenv("TG_TRAIN_STDOUT_TTY", ::isatty(STDOUT_FILENO) ? "1" : "0", 1);
      mpirun_args.insert(mpirun_args.end(), {"-x", "TG_TRAIN_STDOUT_TTY"});
    }
    dist::maybe_relaunch_under_mpirun(argc, argv, r.opts.np, mpirun_args);
  }
#else
  if (r.opts.np > 1)
    throw std::runtime_error(fmt::format("--np {}: this tapegrad-train was built without MPI (Debian: apt-get install "
                                         "libopenmpi-dev openmpi-bin libboost-mpi-dev, then rebuild)",
                                         r.opts.np));
#endif
  world.start(r.opts.np);
  return world.run([&] { return train_body(r, world, vm, resume_dir); });
}

namespace {

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

  auto t_start = std::chrono::steady_clock::now();
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
  if (!resume_dir.empty()) {
    nn::load_weights(*r.model, resume_dir / "model.safetensors");
    const json ostate = read_json(resume_dir / "optimizer.json");
    try {
      r.opt->load_state_dict(ostate);
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(fmt::format("{}: {}", (resume_dir / "optimizer.json").string(), e.what()));
    }
    if (vm.count("lr") && !vm["lr"].defaulted())
      for (auto& g : r.opt->param_groups()) g.lr = o.lr;
    r.st = trainer_state_from_json(read_json(resume_dir / "trainer.json"), (resume_dir / "trainer.json").string());
    if (r.st.world_size == W) {
      set_rng_state(RngState{W > 1 ? r.st.rank_rng[static_cast<size_t>(world.rank())] : r.st.rng});
    } else {
      // Another world size: rank 0 continues the saved stream, the others start fresh ones. The
      // data order is the same (--batch is global); dropout masks differ, so the run goes on
      // correctly but not bit-identically to one that kept its world size.
      if (world.rank() == 0) set_rng_state(RngState{r.st.rng});
      else manual_seed(o.seed + static_cast<uint64_t>(world.rank()) + 1000003ull * static_cast<uint64_t>(r.st.step));
      rng_note = fmt::format(" (checkpoint written by {} process(es), continuing with {}: not bit-identical to a "
                             "run that kept {})",
                             r.st.world_size, W, r.st.world_size);
    }
  }
  // Every rank starts from rank 0's weights (identical anyway: same seed, same file).
  world.broadcast(r.model->parameters());
  // Dropout: rank r > 0 draws from its own stream (seed + r); rank 0 continues the one that
  // initialised the model, so a 1-process run is unchanged.
  if (resume_dir.empty() && world.rank() > 0) manual_seed(o.seed + static_cast<uint64_t>(world.rank()));
  r.st.world_size = W;

  if (!r.save.empty() && root) {
    fs::create_directories(r.save);
    if (resume_dir.empty()) {
      // A fresh run replaces what an earlier run left in this folder.
      for (const char* sub : {"best", "last"})
        if (fs::exists(r.save / sub / "config.json")) fs::remove_all(r.save / sub);
      for (const char* f : {"metrics.jsonl", "metrics.png"}) fs::remove(r.save / f);
    } else {
      const fs::path src_best = resume_dir.parent_path() / "best";
      std::error_code ec;
      if (fs::exists(src_best / "config.json") && !fs::equivalent(src_best.parent_path(), r.save, ec))
        copy_checkpoint(src_best, r.save / "best");
    }
  }

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
  const double elapsed0 = r.st.elapsed;
  auto elapsed = [&] {
    return elapsed0 + std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  };
  // Every rank's generator state into the trainer state (a collective: every rank calls it).
  auto capture_rng = [&] {
    const std::string mine = get_rng_state().bytes;
    if (W > 1) {
      r.st.rank_rng = world.gather(mine);
      r.st.rng = r.st.rank_rng[0];
    } else {
      r.st.rng = mine;
      r.st.rank_rng.clear();
    }
  };

  // Called on every rank at the same steps. Each rank predicts its share of the dev batches;
  // the logits are gathered so every rank holds the same predictions and trainer state; only
  // rank 0 writes.
  auto evaluate = [&](int64_t epoch, int64_t done, int64_t batches) {
    std::vector<Prediction> preds = predict_all(*r.model, r.dev, o.eval_batch, world.rank(), W);
    if (W > 1) {
      std::vector<double> mine;  // (index, logit) of the rows this rank predicted
      const std::vector<data::Batch> dev_batches = data::make_batches(r.dev, o.eval_batch, 0, 0, false, false);
      for (size_t k = static_cast<size_t>(world.rank()); k < dev_batches.size(); k += static_cast<size_t>(W))
        for (size_t idx : dev_batches[k].example_index) {
          mine.push_back(static_cast<double>(idx));
          mine.push_back(static_cast<double>(preds[idx].logit));
        }
      const std::vector<double> all = world.gather(mine);
      if (all.size() != 2 * preds.size())
        throw std::logic_error(fmt::format("evaluation: gathered {} predictions for {} dev examples", all.size() / 2,
                                           preds.size()));
      for (size_t j = 0; j < all.size(); j += 2) {
        Prediction& p = preds[static_cast<size_t>(all[j])];
        p.logit = static_cast<float>(all[j + 1]);
        p.probability = probability_of(p.logit);
        p.label = p.logit > 0 ? 1 : 0;
      }
    }
    double loss = 0;
    int64_t correct = 0;
    for (size_t i = 0; i < preds.size(); ++i) {
      loss += bce(preds[i].logit, static_cast<float>(r.dev[i].label));
      correct += preds[i].label == r.dev[i].label;
    }
    const double dev_loss = loss / static_cast<double>(preds.size());
    const double acc = static_cast<double>(correct) / static_cast<double>(preds.size());
    const double train_loss = r.st.loss_count ? r.st.loss_sum / static_cast<double>(r.st.loss_count) : NAN;
    r.st.loss_sum = 0;
    r.st.loss_count = 0;
    r.st.last_dev_accuracy = acc;
    r.st.last_dev_loss = dev_loss;
    const bool best = acc > r.st.best_accuracy;
    if (best) {
      r.st.best_accuracy = acc;
      r.st.best_epoch = epoch;
      r.st.best_step = r.st.step;
    }
    r.st.elapsed = elapsed();
    const double eps = r.st.train_seconds > 0 ? static_cast<double>(r.st.examples) / r.st.train_seconds : 0.0;
    json rec{{"epoch", epoch},
             {"epoch_fraction", static_cast<double>(done) / static_cast<double>(batches)},
             {"step", r.st.step},
             {"train_loss", std::isfinite(train_loss) ? json(train_loss) : json(nullptr)},
             {"dev_loss", dev_loss},
             {"dev_accuracy", acc},
             {"examples_per_second", eps},
             {"elapsed", r.st.elapsed},
             {"lr", r.opt->param_groups()[0].lr}};
    r.st.history.push_back(rec);
    progress.message(fmt::format("epoch {}/{} step {}: train_loss {:.4f}  dev_loss {:.4f}  dev_accuracy {:.2f}%{}  "
                                 "{:.0f} ex/s  {}",
                                 epoch, o.epochs, r.st.step, train_loss, dev_loss, 100 * acc, best ? " (best)" : "",
                                 eps, format_duration(r.st.elapsed)));
    if (!r.save.empty()) {
      capture_rng();
      if (root) {
        // best/ before last/: if the process dies in between, last/ is the previous evaluation,
        // and resuming from it redoes this one and writes both again.
        if (best) {
          std::string lines;
          for (size_t i = 0; i < preds.size(); ++i) lines += prediction_json(preds[i], r.dev_rows[i].text) + "\n";
          r.write_checkpoint(r.save / "best", {{"dev_predictions.jsonl", lines}});
        }
        r.write_checkpoint(r.save / "last");
        r.write_metrics();
      }
    }
  };
  auto save_last = [&] {  // every rank calls it
    if (r.save.empty()) return;
    r.st.elapsed = elapsed();
    capture_rng();
    if (root) r.write_checkpoint(r.save / "last");
  };
  // What a failed run leaves behind, for its error message; "" args when nothing to resume.
  auto last_checkpoint = [&]() -> std::pair<std::string, bool> {
    if (r.save.empty()) return {"nothing is saved without --save", false};
    const fs::path last = r.save / "last";
    try {
      const json t = read_json(last / "trainer.json");
      return {fmt::format("the last good checkpoint, {} (step {}), is kept", last.string(), t.at("step").get<int64_t>()),
              true};
    } catch (const std::exception&) {
      return {fmt::format("no checkpoint had been written to {} yet", r.save.string()), false};
    }
  };

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
          const auto [note, resumable] = last_checkpoint();
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
      if (evaluated) evaluate(epoch, i + 1, n);
      // One process: a Ctrl-C seen now. Several: one seen by any rank before this step's
      // all-reduce (the same verdict on every rank).
      const bool interrupted = W > 1 ? step_vals[1] > 0 : g_interrupted != 0;
      if (interrupted) {
        if (!evaluated) save_last();
        progress.end_epoch();
        if (root)
          fmt::print(stderr, "tapegrad-train: interrupted at step {}{}\n", r.st.step,
                     r.save.empty() ? " (nothing saved: no --save)"
                                    : fmt::format("; saved {}; continue with: tapegrad-train train --resume {}",
                                                  (r.save / "last").string(), r.save.string()));
        return 130;
      }
      if (o.stop_after > 0 && r.st.step >= o.stop_after) {
        if (!evaluated) save_last();
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

}  // namespace

}  // namespace tgcli
