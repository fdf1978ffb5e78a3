// `tapegrad-lm train`: the options, the truncated-BPTT training loop, validation and checkpoints.
#include <boost/program_options.hpp>
#include <fmt/format.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <csignal>
#include <iostream>
#include <limits>
#include <numbers>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/safetensors.h"
#include "tapegrad/autograd/tape.h"
#include "command_main.h"
#include "lm.h"
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"

namespace po = boost::program_options;

namespace tglm {

using namespace tg;

namespace {

volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_stop_signal(int sig) {
  g_interrupted = sig;
  std::signal(sig, SIG_DFL);  // a second Ctrl-C stops at once
}

po::options_description train_description(LmOptions& o, std::string& seed) {
  po::options_description d(
      "tapegrad-lm train: a recurrent language model on a plain-text (UTF-8) file, truncated BPTT over\n"
      "--batch contiguous streams of the text; the first 90% trains, the last 10% validates.\n\nOptions");
  // clang-format off
  d.add_options()
    ("help,h", "show this help")
    ("text", po::value(&o.text), "UTF-8 text file (required unless --resume)")
    ("level", po::value(&o.level)->default_value(o.level), "tokens: char (Unicode code points) or word "
                                                           "(whitespace-separated, line ends as <eos>)")
    ("vocab-cap", po::value(&o.vocab_cap)->default_value(o.vocab_cap),
     "keep at most this many tokens, <unk> included, most frequent first (0 = all)")
    ("min-freq", po::value(&o.min_freq)->default_value(o.min_freq), "keep tokens seen at least this often in training")
    ("valid-fraction", po::value(&o.valid_fraction)->default_value(o.valid_fraction),
     "the last fraction of the text is held out for validation")
    ("model", po::value(&o.model)->default_value(o.model), "recurrent cell: rnn (tanh), lstm or gru")
    ("embed", po::value(&o.embed)->default_value(o.embed), "token embedding size")
    ("hidden", po::value(&o.hidden)->default_value(o.hidden), "hidden state size")
    ("layers", po::value(&o.layers)->default_value(o.layers), "stacked recurrent layers")
    ("dropout", po::value(&o.dropout)->default_value(o.dropout),
     "dropout on the embeddings, between layers and before the decoder")
    ("tie-weights", po::bool_switch(&o.tie_weights), "the decoder reuses the embedding matrix (needs --embed == --hidden)")
    ("batch", po::value(&o.batch)->default_value(o.batch), "contiguous streams trained side by side")
    ("bptt", po::value(&o.bptt)->default_value(o.bptt), "sequence length: time steps per chunk (truncated BPTT)")
    ("epochs", po::value(&o.epochs)->default_value(o.epochs), "passes over the training text")
    ("lr", po::value(&o.lr)->default_value(o.lr), "Adam learning rate")
    ("clip", po::value(&o.clip)->default_value(o.clip), "clip the global gradient norm to this (0 = off)")
    ("weight-decay", po::value(&o.weight_decay)->default_value(o.weight_decay), "L2 weight decay")
    ("seed", po::value(&seed)->default_value(std::to_string(o.seed)), "random seed: initialisation and dropout")
    ("threads", po::value(&o.threads)->default_value(o.threads), "threads for matrix products")
    ("eval-every", po::value(&o.eval_every)->default_value(o.eval_every),
     "validate (and checkpoint) every N steps (0 = after each epoch only)")
    ("eval-batch", po::value(&o.eval_batch)->default_value(o.eval_batch), "streams of the validation text")
    ("time-limit", po::value(&o.time_limit)->default_value(o.time_limit),
     "stop (validating and saving) once this many seconds were spent training, evaluation not counted (0 = none)")
    ("stop-after", po::value(&o.stop_after)->default_value(o.stop_after),
     "stop after N optimizer steps in total, saving DIR/last/ to resume from (0 = none)")
    ("save", po::value(&o.save), "run folder: DIR/best/, DIR/last/, DIR/metrics.jsonl, DIR/metrics.png")
    ("resume", po::value(&o.resume), "continue the run saved in DIR exactly where it stopped")
    ("overwrite", po::bool_switch(&o.overwrite), "let a fresh run replace tapegrad's files in a used --save folder")
    ("quiet,q", po::bool_switch(&o.quiet), "print only the final JSON line (and errors)");
  // clang-format on
  return d;
}

void validate(const LmOptions& o) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument(what);
  };
  need(!o.text.empty(), "--text FILE is required");
  data::parse_token_level(o.level);
  nn::parse_cell_type(o.model);
  need(o.embed >= 1 && o.hidden >= 1 && o.layers >= 1, "--embed, --hidden and --layers must be >= 1");
  need(o.dropout >= 0 && o.dropout < 1, fmt::format("--dropout must be in [0, 1), got {:g}", o.dropout));
  need(!o.tie_weights || o.embed == o.hidden,
       fmt::format("--tie-weights needs --embed equal to --hidden (got {} and {})", o.embed, o.hidden));
  need(o.batch >= 1 && o.bptt >= 1 && o.epochs >= 1 && o.eval_batch >= 1,
       "--batch, --bptt, --epochs and --eval-batch must be >= 1");
  need(o.valid_fraction > 0 && o.valid_fraction < 1,
       fmt::format("--valid-fraction must be in (0, 1), got {:g}", o.valid_fraction));
  need(o.lr > 0 && std::isfinite(o.lr), "--lr must be > 0");
  need(o.clip >= 0 && std::isfinite(o.clip) && o.weight_decay >= 0 && std::isfinite(o.weight_decay),
       "--clip and --weight-decay must be finite and >= 0");
  need(o.threads >= 1, "--threads must be >= 1");
  need(o.vocab_cap == 0 || o.vocab_cap >= 2, "--vocab-cap must be 0 (no cap) or >= 2");
  need(o.min_freq >= 1 && o.eval_every >= 0 && o.stop_after >= 0, "--min-freq >= 1, --eval-every and --stop-after >= 0");
  need(o.time_limit >= 0 && std::isfinite(o.time_limit), "--time-limit must be >= 0 seconds");
}

// A batcher whose size error names the options to change.
data::BpttBatcher make_batcher(const std::vector<int64_t>& ids, int64_t batch, int64_t steps, const std::string& what,
                               const char* batch_option) {
  try {
    return data::BpttBatcher(ids, batch, steps, what);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{} (--bptt is the sequence length, {} the streams)", e.what(),
                                            batch_option));
  }
}

Tensor tokens_tensor(const std::vector<int64_t>& ids, int64_t steps, int64_t batch) {
  return from_vector(ids, Shape{steps, batch});
}

// Mean nats per target token over the whole validation stream, state carried from chunk to chunk.
double validate_stream(LanguageModel& model, const data::BpttBatcher& valid) {
  NoGradGuard no_grad;
  model.eval();
  LmState state;
  double sum = 0;
  for (int64_t i = 0; i < valid.num_chunks(); ++i) {
    const data::StreamChunk c = valid.chunk(i);
    const Tensor logits = model.forward(tokens_tensor(c.inputs, c.steps, c.batch), state);
    sum += cross_entropy(logits, from_vector(c.targets, Shape{c.steps * c.batch}), -100, Reduction::Sum).item();
  }
  model.train();
  return sum / static_cast<double>(valid.tokens_per_pass());
}

}  // namespace

int run_lm_train(int argc, char** argv) {
  LmOptions o;
  std::string seed;
  const po::options_description desc = train_description(o, seed);
  po::variables_map vm;
  if (!tgcli::parse_options(desc, argc, argv, vm)) return 0;
  try {
    size_t used = 0;
    o.seed = std::stoull(seed, &used);
    if (used != seed.size() || seed.find('-') != std::string::npos) throw std::invalid_argument("");
  } catch (const std::exception&) {
    throw std::invalid_argument(fmt::format("--seed '{}' is not an integer in [0, 2^64-1]", seed));
  }

  // A resumed run takes its settings from the checkpoint; only how long and how it runs may change.
  fs::path resume_dir;
  LmCheckpoint ck;
  if (!o.resume.empty()) {
    resume_dir = tgcli::resolve_checkpoint(o.resume, "last");
    require_lm_checkpoint(resume_dir);
    tgcli::verify_checkpoint(resume_dir, lm_checkpoint_files(), tgcli::other_checkpoint_advice(resume_dir, true));
    ck = read_lm_checkpoint(resume_dir);
    LmOptions saved = lm_options_from_json(ck.config.at("training"));
    static const std::set<std::string> may_change{"epochs", "time-limit", "stop-after", "threads", "quiet",
                                                  "save",   "resume",     "overwrite",  "eval-every", "text"};
    for (const auto& [name, value] : vm)
      if (!value.defaulted() && !may_change.count(name))
        throw std::invalid_argument(fmt::format("--{} cannot change when resuming (it fixes the model, the data or the "
                                                "random stream); {} records the value used. Start a new run to change it",
                                                name, (resume_dir / "config.json").string()));
    for (const char* name : {"epochs", "time-limit", "stop-after", "threads", "eval-every"})
      if (!vm.count(name) || vm[name].defaulted()) continue;
      else if (std::string(name) == "epochs") saved.epochs = o.epochs;
      else if (std::string(name) == "time-limit") saved.time_limit = o.time_limit;
      else if (std::string(name) == "stop-after") saved.stop_after = o.stop_after;
      else if (std::string(name) == "threads") saved.threads = o.threads;
      else saved.eval_every = o.eval_every;
    if (vm.count("text")) saved.text = o.text;
    saved.quiet = o.quiet;
    saved.overwrite = o.overwrite;
    saved.resume = o.resume;
    saved.save = o.save;
    if (saved.save.empty()) {
      const fs::path folder = tgcli::run_folder_of(resume_dir);
      if (folder.empty())
        throw std::invalid_argument(fmt::format("--resume {}: not DIR/last or DIR/best of a run folder; say where to "
                                                "save with --save DIR",
                                                resume_dir.string()));
      saved.save = folder.string();
    }
    o = saved;
  }
  validate(o);
  set_num_threads(o.threads);

  // The run folder first (lock, leftovers of a killed write): the training CLI's code.
  tgcli::Run folder;
  folder.save = o.save;
  folder.opts.overwrite = o.overwrite;
  folder.opts.quiet = o.quiet;
  if (!folder.save.empty()) {
    try {
      tgcli::open_run_folder(folder, resume_dir);
    } catch (const std::runtime_error& e) {  // its advice names the classifier CLI; the commands are ours
      std::string msg = e.what();
      for (size_t at; (at = msg.find("tapegrad-train")) != std::string::npos;) msg.replace(at, 14, "tapegrad-lm");
      throw std::runtime_error(msg);
    }
  }

  const auto started = std::chrono::steady_clock::now();
  const data::TokenLevel level = data::parse_token_level(o.level);
  const std::string text = data::read_text_file(o.text);
  const std::vector<std::string> tokens = data::tokenize_text(text, level, o.text);
  // The vocabulary comes from the training part only (split by token count before encoding).
  const auto n_valid = static_cast<int64_t>(static_cast<double>(tokens.size()) * o.valid_fraction);
  if (n_valid < 1 || static_cast<int64_t>(tokens.size()) - n_valid < 1)
    throw std::invalid_argument(fmt::format("--text {}: {} token(s) are too few to hold out a validation part of "
                                            "--valid-fraction {:g}; give a longer text",
                                            o.text, tokens.size(), o.valid_fraction));
  const data::TextVocab vocab =
      resume_dir.empty()
          ? data::TextVocab::build({tokens.begin(), tokens.end() - n_valid}, level, o.vocab_cap, o.min_freq)
          : ck.vocab;
  if (vocab.size() < 2)
    throw std::invalid_argument(fmt::format("--text {}: the training part yields no token (with --min-freq {})", o.text,
                                            o.min_freq));
  const data::StreamSplit split = data::split_stream(vocab.encode(tokens), o.valid_fraction);
  const std::string pct = fmt::format("{:g}%", 100 * (1 - o.valid_fraction));
  const data::BpttBatcher train = make_batcher(
      split.train, o.batch, o.bptt, fmt::format("the training part of {} (first {})", o.text, pct), "--batch");
  const data::BpttBatcher valid = make_batcher(
      split.valid, o.eval_batch, o.bptt,
      fmt::format("the validation part of {} (last {:g}%)", o.text, 100 * o.valid_fraction), "--eval-batch");

  LmTrainerState st;
  const std::string fingerprint = stream_fingerprint(vocab.encode(tokens));
  if (!resume_dir.empty()) {
    st = lm_trainer_state_from_json(tgcli::read_json(resume_dir / "trainer.json"),
                                    (resume_dir / "trainer.json").string());
    if (st.data != fingerprint)
      throw std::runtime_error(fmt::format("--text {}: the tokens differ from those the checkpoint was trained on ({} "
                                           "now, {} recorded in {}); give the original text",
                                           o.text, fingerprint, st.data, (resume_dir / "trainer.json").string()));
  }
  st.data = fingerprint;

  manual_seed(o.seed);
  const LmModelOptions mo = model_options(o, vocab.size());
  LanguageModel model(mo);
  optim::Adam opt(model.parameters(), optim::AdamOptions{.lr = o.lr, .weight_decay = o.weight_decay});
  optim::ClipGradNorm clip(o.clip > 0 ? o.clip : std::numeric_limits<double>::infinity());
  opt.add_hook(clip);
  const json config{{"format", "tapegrad-lm"}, {"version", 1}, {"model", to_json(mo)}, {"training", to_json(o)}};
  LmState state;
  if (!resume_dir.empty()) {
    nn::load_weights(model, resume_dir / "model.safetensors");
    opt.load_state_dict(tgcli::read_json(resume_dir / "optimizer.json"));
    set_rng_state(RngState{st.rng});
    if (st.chunk > 0) state = read_lm_state(resume_dir, mo, o.batch);
  }

  const fs::path save = o.save;
  auto write_metrics = [&] {
    std::string lines;
    for (const auto& h : st.history) lines += h.dump() + "\n";
    tgcli::write_file_atomic(save / "metrics.jsonl", lines);
    tgcli::plot_history(save, st.history,
                        fmt::format("tapegrad-lm: {} {}, embed {}, hidden {} x{}, B {}, T {}, seed {}", o.level,
                                    o.model, o.embed, o.hidden, o.layers, o.batch, o.bptt, o.seed),
                        "loss (nats per token)", "",
                        {{"train_loss", "train loss", false}, {"valid_loss", "validation loss", false}});
  };
  const double elapsed_before = st.elapsed;
  auto elapsed = [&] {
    return elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  auto checkpoint = [&](bool best) {
    if (save.empty()) return;
    st.rng = get_rng_state().bytes;
    st.elapsed = elapsed();
    write_lm_checkpoint(save / "last", config, vocab, model, state, opt, st);
    if (best) write_lm_checkpoint(save / "best", config, vocab, model, state, opt, st);
    write_metrics();
  };

  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  tgcli::Progress progress(tty, o.quiet);
  progress.message(fmt::format(
      "tapegrad-lm: {} {} tokens ({} train / {} validation), vocab {}, {} embed {} hidden {} x{}{} ({} parameters), "
      "batch {} x bptt {} ({} steps per epoch), {} thread(s){}",
      split.train.size() + split.valid.size(), o.level, split.train.size(), split.valid.size(), vocab.size(), o.model,
      o.embed, o.hidden, o.layers, o.tie_weights ? " tied" : "", model.num_parameters(), o.batch, o.bptt,
      train.num_chunks(), o.threads,
      resume_dir.empty() ? "" : fmt::format(", resumed from {} at epoch {} step {}", resume_dir.string(), st.epoch,
                                            st.step)));

  auto evaluate = [&](int64_t epoch, int64_t done, int64_t n) {
    const auto t0 = std::chrono::steady_clock::now();
    const double v = validate_stream(model, valid);
    const double eval_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double train_loss = st.loss_count ? st.loss_sum / static_cast<double>(st.loss_count) : NAN;
    st.loss_sum = 0;
    st.loss_count = 0;
    st.last_valid = v;
    const bool best = st.best_valid < 0 || v < st.best_valid;
    if (best) st.best_valid = v, st.best_step = st.step;
    json rec{{"epoch", epoch},
             {"epoch_fraction", static_cast<double>(done) / static_cast<double>(n)},
             {"step", st.step},
             {"tokens", st.tokens},
             {"train_loss", std::isfinite(train_loss) ? json(train_loss) : json(nullptr)},
             {"valid_loss", v},
             {"valid_bpc", v / std::numbers::ln2},
             {"valid_ppl", std::exp(v)},
             {"train_seconds", st.train_seconds},
             {"seconds_per_step", st.step ? st.train_seconds / static_cast<double>(st.step) : 0.0},
             {"eval_seconds", eval_seconds},
             {"elapsed", elapsed()}};
    st.history.push_back(rec);
    progress.message(fmt::format("step {} (epoch {}, {:.0f}%): train loss {:.4f}, validation {:.4f} nats/{} = {:.4f} "
                                 "bits/{}{} [{:.3f} s/step, validation {:.1f} s]",
                                 st.step, epoch, 100.0 * static_cast<double>(done) / static_cast<double>(n), train_loss,
                                 v, o.level, v / std::numbers::ln2, o.level, best ? " (best)" : "",
                                 rec["seconds_per_step"].get<double>(), eval_seconds));
    checkpoint(best);
  };

  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  std::string stop_reason;
  if (o.stop_after > 0 && st.step >= o.stop_after) stop_reason = "stop-after";
  const int64_t n = train.num_chunks();
  for (int64_t epoch = st.epoch; epoch <= o.epochs && stop_reason.empty(); ++epoch) {
    const int64_t first = epoch == st.epoch ? st.chunk : 0;
    if (first >= n) continue;
    if (first == 0) state = LmState{};  // the streams start over: nothing to carry
    progress.start_epoch(epoch, o.epochs, n, first);
    int64_t epoch_tokens = 0;
    double epoch_loss = 0;
    for (int64_t i = first; i < n; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const data::StreamChunk c = train.chunk(i);
      const int64_t count = c.steps * c.batch;
      opt.zero_grad();
      LmState carried = state.detached();  // truncated BPTT: no gradient into the previous chunk
      const Tensor logits = model.forward(tokens_tensor(c.inputs, c.steps, c.batch), carried);
      const Tensor loss = cross_entropy(logits, from_vector(c.targets, Shape{count}));
      const double loss_value = loss.item();
      if (!std::isfinite(loss_value)) {
        progress.end_epoch();
        fmt::print(stderr, "tapegrad-lm: error: step {}: the training loss is {}; stopped without updating the "
                   "weights. Try a lower --lr (now {:g}) or --clip (now {:g}); {}\n", st.step + 1, loss_value, o.lr,
                   o.clip, save.empty() ? "nothing was saved (no --save)"
                                        : fmt::format("the last checkpoint is in {}", (save / "last").string()));
        return tgcli::kExitNonFinite;
      }
      loss.backward();
      opt.step();
      state = carried.detached();
      st.train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      st.loss_sum += loss_value * static_cast<double>(count);
      st.loss_count += count;
      st.tokens += count;
      ++st.step;
      st.epoch = epoch;
      st.chunk = i + 1;
      epoch_tokens += count;
      epoch_loss += loss_value * static_cast<double>(count);
      progress.update(i + 1, epoch_tokens, epoch_loss / static_cast<double>(epoch_tokens), clip.last_norm());
      if (o.stop_after > 0 && st.step >= o.stop_after) stop_reason = "stop-after";
      if (o.time_limit > 0 && st.train_seconds >= o.time_limit) stop_reason = "time-limit";
      if (g_interrupted) stop_reason = g_interrupted == SIGTERM ? "terminated" : "interrupted";
      if (i + 1 == n || (o.eval_every > 0 && st.step % o.eval_every == 0) || !stop_reason.empty())
        evaluate(epoch, i + 1, n);
      if (!stop_reason.empty()) break;
    }
    progress.end_epoch();
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);

  const json summary{
      {"status", stop_reason.empty() ? "finished" : stop_reason},
      {"step", st.step},
      {"epoch", st.epoch},
      {"tokens", st.tokens},
      {"parameters", model.num_parameters()},
      {"vocab", vocab.size()},
      {"best_valid_loss", st.best_valid},
      {"best_valid_bpc", st.best_valid / std::numbers::ln2},
      {"best_step", st.best_step},
      {"last_valid_loss", st.last_valid},
      {"train_seconds", st.train_seconds},
      {"seconds_per_step", st.step ? st.train_seconds / static_cast<double>(st.step) : 0.0},
      {"tokens_per_second", st.train_seconds > 0 ? static_cast<double>(st.tokens) / st.train_seconds : 0.0},
      {"threads", o.threads},
      {"save", o.save}};
  if (!o.quiet && !stop_reason.empty() && !save.empty())
    fmt::print("stopped ({}) after step {}; continue with: tapegrad-lm train --resume {}\n", stop_reason, st.step,
               save.string());
  fmt::print("{}\n", summary.dump());
  std::fflush(stdout);
  if (stop_reason == "interrupted") return 128 + SIGINT;
  if (stop_reason == "terminated") return 128 + SIGTERM;
  return 0;
}

}  // namespace tglm
