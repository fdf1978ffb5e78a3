// `tapegrad-train train`: its options, their checks, and the settings of a resumed run.
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <cmath>
#include <iostream>
#include <set>
#include <stdexcept>

#include "train.h"

namespace po = boost::program_options;

namespace tgcli {

using namespace tg;

namespace {

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
    ("max-skipped-steps", po::value(&o.max_skipped_steps)->default_value(o.max_skipped_steps),
     "stop (exit status 3) after this many consecutive steps skipped for a non-finite gradient norm "
     "(0 = never stop for skipped steps)")
    ("inject-fault", po::value(&o.inject_fault),
     "for testing the non-finite paths: KIND@STEP makes optimizer step STEP (counted over the whole run, "
     "from 1) go wrong on purpose. KIND: nan-loss (the loss is NaN), nan-grad (one gradient element is NaN, "
     "that step only), nan-grad-persistent (from STEP on, every step), nan-weight (a weight is NaN after "
     "the update)")
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
  need(o.max_skipped_steps >= 0,
       fmt::format("--max-skipped-steps must be >= 0 (0 = never stop for skipped steps), got {}", o.max_skipped_steps));
  parse_fault(o.inject_fault);  // throws naming the bad value
}

// Options a resumed run must share with the checkpoint: they fix the model, the vocabulary, the
// data order or the random stream.
const std::set<std::string> kFixedOnResume = {"model",     "embed",     "hidden",  "layers", "bidirectional",
                                              "dropout",   "embed-dropout", "pooling", "batch", "optimizer",
                                              "seed",      "max-len",   "min-freq", "bucket", "max-train",
                                              "momentum"};

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
    r.opts.inject_fault = cli.inject_fault;
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
  relaunch_for_np(argc, argv, r.opts);
  world.start(r.opts.np);
  return world.run([&] { return train_body(r, world, vm, resume_dir); });
}

}  // namespace tgcli
