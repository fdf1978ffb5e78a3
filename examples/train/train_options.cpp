// `tapegrad-train train`: its options, their checks, and the settings of a resumed run.
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <iostream>
#include <set>
#include <stdexcept>

#include "train.h"

namespace po = boost::program_options;

namespace tgcli {

using namespace tg;

namespace {

po::options_description train_description(TrainOptions& o, std::string& seed) {
  po::options_description d(
      "tapegrad-train train: train a recurrent sentence classifier on GLUE-style TSV files\n"
      "(header 'sentence<TAB>label', labels 0..K-1: 0/1 is binary, one logit and binary cross-entropy;\n"
      "K > 2 classes give K logits and cross-entropy). Dev evaluation reports accuracy, macro-F1 and\n"
      "per-class precision/recall/F1; best/ is the checkpoint with the best dev accuracy.\n"
      "Defaults are the PyTorch reference configuration\n"
      "of bench/accuracy (LSTM, embed 128, hidden 256, dropout 0.5, Adam 1e-3, clip 5, 3 epochs).\n\nOptions");
  // clang-format off
  d.add_options()
    ("help,h", "show this help")
    ("train", po::value(&o.train), "training TSV file (required unless --resume)")
    ("dev", po::value(&o.dev), "dev TSV file, evaluated after every epoch (required unless --resume)")
    ("classes", po::value(&o.classes)->default_value(o.classes),
     "K: labels are 0..K-1 (a label outside is an error naming its file and line); 0 = the largest training "
     "label + 1, at least 2")
    ("label-names", po::value(&o.label_names), "file with one class name per line (line i names label i), "
                                               "used in the per-class report and the confusion matrix")
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
    ("seed", po::value(&seed)->default_value(std::to_string(o.seed)),
     "random seed: initialisation, dropout and data order (0 to 2^64-1)")
    ("threads", po::value(&o.threads)->default_value(o.threads), "threads for matrix products (OpenBLAS); 0 = the cores available, split over the local --np processes (TG_NUM_THREADS overrides)")
    ("max-len", po::value(&o.max_len)->default_value(o.max_len), "keep at most this many tokens per sentence")
    ("min-freq", po::value(&o.min_freq)->default_value(o.min_freq),
     "vocabulary: training-set words seen at least this often (others are <unk>)")
    ("bucket", po::bool_switch(&o.bucket), "batch sentences of similar length together (less padding; default off)")
    ("save", po::value(&o.save), "run folder: DIR/best/ (best dev accuracy), DIR/last/ (resumable), "
                                 "DIR/metrics.jsonl, DIR/metrics.png, DIR/confusion.tsv and DIR/confusion.png (dev, at the best "
                                 "checkpoint) (default: save nothing)")
    ("resume", po::value(&o.resume), "continue the run saved in DIR (a run folder or a checkpoint folder) exactly "
                                     "where it stopped; model, data and seed options come from its config.json; "
                                     "it writes into DIR's run folder unless --save says otherwise")
    ("overwrite", po::bool_switch(&o.overwrite), "let a fresh run (or one resumed into another folder) replace "
                                                 "tapegrad's files in a --save folder that holds another run "
                                                 "(each only once a complete new one is written; other files are "
                                                 "kept); without it such a folder is refused")
    ("allow-data-change", po::bool_switch(&o.allow_data_change),
     "with --resume: continue although the training or dev rows differ from those the checkpoint was trained on "
     "(their fingerprint is in trainer.json); without it a mismatch is refused")
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
  need(o.classes == 0 || (o.classes >= 2 && o.classes <= kMaxClasses),
       fmt::format("--classes must be 0 (infer from the training labels) or 2..{}, got {}", kMaxClasses, o.classes));
  need(o.dropout >= 0 && o.dropout < 1 && o.embed_dropout >= 0 && o.embed_dropout < 1,
       "--dropout and --embed-dropout must be in [0, 1)");
  need(o.epochs >= 1 && o.batch >= 1 && o.eval_batch >= 1, "--epochs, --batch and --eval-batch must be >= 1");
  need(o.lr > 0 && std::isfinite(o.lr), "--lr must be > 0");
  need(o.clip >= 0 && o.weight_decay >= 0 && o.momentum >= 0, "--clip, --weight-decay and --momentum must be >= 0");
  need(std::isfinite(o.clip) && std::isfinite(o.weight_decay) && std::isfinite(o.momentum),
       fmt::format("--clip, --weight-decay and --momentum must be finite, got {:g}, {:g} and {:g} (--clip 0 turns "
                   "clipping off)",
                   o.clip, o.weight_decay, o.momentum));
  need(o.momentum == 0 || o.optimizer == "sgd",
       fmt::format("--momentum {:g} applies to --optimizer sgd only; {} keeps its own moment estimates (betas 0.9, "
                   "0.999) and would ignore it. Leave --momentum out or use --optimizer sgd",
                   o.momentum, o.optimizer));
  need(o.threads >= 0, "--threads must be >= 0 (0 = auto)");
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
                                              "momentum",  "classes"};

uint64_t parse_seed(const std::string& s) {
  uint64_t v = 0;
  const char* end = s.data() + s.size();
  const auto [ptr, ec] = std::from_chars(s.data(), end, v);
  if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos || ec != std::errc() || ptr != end)
    throw std::invalid_argument(fmt::format("--seed must be an integer from 0 to 2^64-1 = 18446744073709551615, got "
                                            "'{}'",
                                            s));
  return v;
}

// Refuses arguments that are neither options nor their values: `--save my run` would otherwise
// save to `my`, `-q epochs 5` train the default 3 epochs.
void refuse_stray_arguments(const po::parsed_options& parsed, const po::options_description& desc, int argc,
                            char** argv) {
  const std::vector<std::string> stray = po::collect_unrecognized(parsed.options, po::include_positional);
  if (stray.empty()) return;
  const std::string& a = stray.front();
  std::string after;
  for (int i = 2; i < argc; ++i)
    if (a == argv[i]) {
      after = i > 2 ? fmt::format(" (after '{}')", argv[i - 1]) : "";
      break;
    }
  std::string hint;
  if (desc.find_nothrow(a, false)) hint = fmt::format("; did you mean --{}?", a);
  else if (a.find(' ') == std::string::npos) hint = "; quote an option value that contains spaces";
  throw po::error(fmt::format("unexpected argument '{}'{}{}: every argument must be an --option or the value of "
                              "one{}",
                              a, after, hint,
                              stray.size() > 1 ? fmt::format(" ({} such arguments)", stray.size()) : std::string()));
}

}  // namespace

void check_memory(const Run& r, int64_t vocab_size) {
  const TrainOptions& o = r.opts;
  const int copies = o.optimizer == "sgd" ? (o.momentum > 0 ? 3 : 2) : 4;
  // + 2: the optimizer state serialized for a checkpoint
  auto need = [&](const TrainOptions& x) {
    const nn::TextClassifierOptions m = model_options(x, vocab_size);
    const MemoryNeed t = estimate_memory(m, x.batch, x.max_len, copies + 2, true);
    const MemoryNeed e = estimate_memory(m, x.eval_batch, x.max_len, copies + 2, false);
    return std::pair{t.parameters, std::max(t.bytes, e.bytes)};
  };
  std::string budget_source;
  const long double budget = memory_budget(&budget_source);
  const auto [params, bytes] = need(o);
  if (bytes <= budget) return;
  // Name the option whose reduction to its default (or to its value, if already below) saves most.
  const TrainOptions d;
  struct Opt {
    const char* name;
    int64_t TrainOptions::*field;
  };
  const Opt opts[] = {{"embed", &TrainOptions::embed},   {"hidden", &TrainOptions::hidden},
                      {"layers", &TrainOptions::layers}, {"batch", &TrainOptions::batch},
                      {"max-len", &TrainOptions::max_len}, {"eval-batch", &TrainOptions::eval_batch}};
  const Opt* worst = nullptr;
  long double best_saving = 0;
  for (const Opt& op : opts) {
    TrainOptions x = o;
    x.*op.field = std::min(o.*op.field, d.*op.field);
    const long double saving = bytes - need(x).second;
    if (saving > best_saving) best_saving = saving, worst = &op;
  }
  std::string what;
  if (worst) {
    const bool from_ckpt = !r.config_source.empty() && !r.cli_given.count(worst->name);
    what = fmt::format("--{} {}{}", worst->name, o.*worst->field,
                       from_ckpt ? fmt::format(" (from {})", r.config_source.string()) : std::string());
  } else {
    what = fmt::format("the vocabulary of {} words (raise --min-freq)", vocab_size);
  }
  throw std::invalid_argument(fmt::format(
      "{} needs too much memory: {}{} embed {} hidden {} x{} with {}{} vocabulary words has {:.4g} parameters and "
      "training it (weights, gradients, optimizer state, batch {} x {} tokens) needs about {}, but this machine has "
      "{} ({}). Choose smaller sizes",
      what, o.bidirectional ? "bi" : "", o.model, o.embed, o.hidden, o.layers, vocab_size <= 2 ? "at least " : "",
      vocab_size, static_cast<double>(params), o.batch, o.max_len, format_bytes(bytes), format_bytes(budget),
      budget_source));
}

int run_train(int argc, char** argv) {
  Run r;
  TrainOptions cli;
  std::string seed;
  po::options_description desc = train_description(cli, seed);
  po::variables_map vm;
  const po::parsed_options parsed = po::command_line_parser(argc - 1, argv + 1).options(desc).run();
  po::store(parsed, vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  refuse_stray_arguments(parsed, desc, argc, argv);
  po::notify(vm);
  cli.seed = parse_seed(seed);
  for (const auto& [name, value] : vm)
    if (!value.defaulted()) r.cli_given.insert(name);

  fs::path resume_dir;
  if (!cli.resume.empty()) {
    resume_dir = resolve_checkpoint(cli.resume, "last");
    if (!fs::exists(resume_dir / "trainer.json"))
      throw std::runtime_error(fmt::format("{} has no trainer.json: not a resumable checkpoint", resume_dir.string()));
    // manifest.json's checksums and config.json against model.safetensors, before anything is used
    verify_checkpoint(resume_dir, {"config.json", "vocab.txt", "model.safetensors", "optimizer.json", "trainer.json"},
                      other_checkpoint_advice(resume_dir, true));
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
    try {
      r.opts = train_options_from_json(saved);
    } catch (const std::exception& e) {
      throw std::runtime_error(fmt::format("{}: bad \"training\" section: {}", (resume_dir / "config.json").string(),
                                           e.what()));
    }
    r.config_source = resume_dir / "config.json";
    r.opts.resume = cli.resume;
    r.opts.overwrite = cli.overwrite;
    r.opts.allow_data_change = cli.allow_data_change;
    r.opts.quiet = cli.quiet;
    r.opts.stop_after = cli.stop_after;
    r.opts.np = cli.np;
    r.opts.hostfile = cli.hostfile;
    r.opts.inject_fault = cli.inject_fault;
    // Nothing read from the checkpoint chooses where to write: the run continues in the run
    // folder the checkpoint belongs to, or in --save.
    if (r.cli_given.count("save")) {
      r.opts.save = cli.save;
    } else {
      const fs::path folder = run_folder_of(resume_dir);
      if (folder.empty())
        throw std::invalid_argument(fmt::format(
            "--resume {}: {} is a checkpoint folder outside a run folder (it is not DIR/last or DIR/best), so there "
            "is no run folder to continue in; say where the run goes on with --save DIR (the training.save path "
            "recorded in its config.json is never used)",
            cli.resume, resume_dir.string()));
      r.opts.save = folder.string();
    }
    // Data paths not given again come from config.json: they are checked before they are read
    // and their contents are never quoted (see read_split in train.cpp).
    r.train_from_checkpoint = !r.cli_given.count("train");
    r.dev_from_checkpoint = !r.cli_given.count("dev");
  } else {
    r.opts = cli;
  }
  validate(r.opts);
  check_memory(r, 2);  // at least <pad> and <unk>: absurd sizes fail before any data is read

  // --np N: this process becomes `mpirun -np N <this program> <same arguments>` (returns at once
  // in the ranks mpirun starts). Options were checked above, so a bad one is reported once.
  World world;
  relaunch_for_np(argc, argv, r.opts);
  world.start(r.opts.np);
  return world.run([&] { return train_body(r, world, vm, resume_dir); });
}

}  // namespace tgcli
