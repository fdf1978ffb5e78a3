// `tapegrad-tag train`: train the BiLSTM tagger with dev model selection, best/ and last/
// checkpoints, exact resume, metrics, and a final test evaluation from best/.
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <limits>
#include <map>
#include <numeric>
#include <random>

#include "tapegrad/autograd/ops.h"
#include "examples/train/train.h"  // RunLock, open_run_folder, replace_checkpoint_folder, TrainerState
#include "tapegrad/nn/text_classifier.h"    // save_weights / load_weights
#include "tapegrad/optim/adam.h"
#include "tapegrad/optim/clip.h"
#include "tag_cli.h"

namespace tgtag {

using namespace tg;
using tgcli::TrainerState;

namespace {

volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_stop(int sig) {
  g_stop = sig;
  std::signal(sig, SIG_DFL);  // a second Ctrl-C stops at once
}

struct NonFiniteGradient {};

// "sentences N, fnv1a64 X" over every FORM and UPOS in order: a resumed run notices other data.
std::string fingerprint(const std::vector<data::ConlluSentence>& rows) {
  uint64_t h = 0xcbf29ce484222325ull;
  auto mix = [&h](std::string_view s, char end) {
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
    h = (h ^ static_cast<unsigned char>(end)) * 0x100000001b3ull;
  };
  for (const auto& s : rows) {
    for (const auto& w : s.words) {
      mix(w.form, '\t');
      mix(w.upos, '\n');
    }
    mix("", '\n');
  }
  return fmt::format("sentences {}, fnv1a64 {:016x}", rows.size(), h);
}

// The batches of epoch `epoch` (sentence indices): a function of seed and epoch only, so a
// resumed run continues mid-epoch with the same batches. With `bucket`, each pool of 20
// batches' worth of shuffled sentences is sorted by length before it is cut into batches, and
// the batches are shuffled: about the same randomness, far less padding.
std::vector<std::vector<size_t>> epoch_batches(const std::vector<EncodedSentence>& data, size_t batch, uint64_t seed,
                                               int64_t epoch, bool bucket) {
  const size_t n = data.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 gen(seed * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch));
  for (size_t i = n; i > 1; --i) std::swap(order[i - 1], order[static_cast<size_t>(gen() % i)]);
  if (bucket) {
    const size_t pool = 20 * batch;
    for (size_t b = 0; b < n; b += pool)
      std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(b),
                       order.begin() + static_cast<std::ptrdiff_t>(std::min(n, b + pool)),
                       [&](size_t x, size_t y) { return data[x].words.size() < data[y].words.size(); });
  }
  std::vector<std::vector<size_t>> batches;
  for (size_t b = 0; b < n; b += batch)
    batches.emplace_back(order.begin() + static_cast<std::ptrdiff_t>(b),
                         order.begin() + static_cast<std::ptrdiff_t>(std::min(n, b + batch)));
  if (bucket)
    for (size_t i = batches.size(); i > 1; --i) std::swap(batches[i - 1], batches[static_cast<size_t>(gen() % i)]);
  return batches;
}

struct TagRun {
  TagOptions o;
  json config;
  data::Vocab words, chars;
  TaggerOptions mo;
  std::unique_ptr<Tagger> model;
  std::unique_ptr<optim::Adam> opt;
  TrainerState st;
  fs::path save;
  tgcli::RunLock lock;

  void write_checkpoint(const fs::path& dir) {
    tgcli::replace_checkpoint_folder(dir, [&](const fs::path& staged) {
      fs::create_directories(staged);
      tgcli::write_file_synced(staged / "config.json", config.dump(2) + "\n");
      words.save(staged / "vocab.txt");
      chars.save(staged / "chars.txt");
      nn::save_weights(*model, staged / "model.safetensors",
                       {{"format", "pt"},
                        {"tapegrad_model", config["model"].dump()},
                        {tgcli::kVocabKey, tgcli::sha256_file(staged / "vocab.txt")},
                        {"tapegrad_chars_sha256", tgcli::sha256_file(staged / "chars.txt")},
                        {tgcli::kManifestKey, tgcli::kManifestName}});
      tgcli::write_file_synced(staged / "optimizer.json", opt->state_dict().dump() + "\n");
      tgcli::write_file_synced(staged / "trainer.json", tgcli::to_json(st).dump(1) + "\n");
      tgcli::write_manifest(staged, {"model.safetensors", "config.json", "vocab.txt", "chars.txt", "optimizer.json",
                                     "trainer.json"});
    });
  }
  void save_last() {
    if (save.empty()) return;
    st.rng = get_rng_state().bytes;
    write_checkpoint(save / "last");
  }
  void write_metrics() {
    std::string lines;
    for (const auto& r : st.history) lines += r.dump() + "\n";
    tgcli::write_file_atomic(save / "metrics.jsonl", lines);
    tgcli::plot_metrics(save, st.history,
                        fmt::format("tapegrad-tag: BiLSTM tagger, word {} + char CNN {}, hidden {}, seed {}",
                                    o.word_embed, o.char_filters, o.hidden, o.seed),
                        "loss (cross-entropy per token)");
  }
};

const std::vector<std::string> kRequired = {"model.safetensors", "config.json", "vocab.txt", "chars.txt",
                                            "optimizer.json", "trainer.json"};

}  // namespace

int train_main(TagOptions o, const std::map<std::string, bool>& given) {
  TagRun r;
  fs::path resume_dir;
  if (!o.resume.empty()) {
    resume_dir = tgcli::resolve_checkpoint(o.resume, "last");
    tgcli::verify_checkpoint(resume_dir, kRequired, tgcli::other_checkpoint_advice(resume_dir, true));
    const TagCheckpoint c = read_tag_checkpoint(resume_dir);
    TagOptions saved = tag_options_from_json(c.config.value("training", json::object()));
    // What may change on resume: how long to train, how this process runs, the test file.
    for (const auto& [name, on_cli] : given) {
      if (!on_cli) continue;
      if (name == "epochs") saved.epochs = o.epochs;
      else if (name == "threads") saved.threads = o.threads;
      else if (name == "test") saved.test = o.test;
      else if (name == "eval-batch") saved.eval_batch = o.eval_batch;
      else if (name == "save") saved.save = o.save;
      else if (name != "resume" && name != "stop-after" && name != "quiet" && name != "overwrite")
        throw std::invalid_argument(fmt::format("--{} cannot be changed when resuming: the run continues with the "
                                                "settings in {} (drop --{}, or start a new run)",
                                                name, (resume_dir / "config.json").string(), name));
    }
    saved.stop_after = o.stop_after;
    saved.quiet = o.quiet;
    saved.overwrite = o.overwrite;
    saved.resume = o.resume;
    if (!given.count("save") || !given.at("save")) {
      const fs::path folder = tgcli::run_folder_of(resume_dir);
      saved.save = folder.empty() ? saved.save : folder.string();
    }
    o = saved;
    r.words = c.words;
    r.chars = c.chars;
    r.mo = c.model;
  }
  r.o = o;
  set_num_threads(o.threads);
  r.save = o.save;
  if (!r.save.empty()) tgcli::open_run_folder(r.lock, r.save, resume_dir, o.overwrite, o.quiet, "tapegrad-tag");

  auto train_rows = read_split(o.train, "training", o.skip_bad_lines, false);
  if (o.max_train > 0 && static_cast<int64_t>(train_rows.size()) > o.max_train)
    train_rows.resize(static_cast<size_t>(o.max_train));
  const auto dev_rows = read_split(o.dev, "dev", o.skip_bad_lines, false);
  std::vector<data::ConlluSentence> test_rows;
  if (!o.test.empty()) test_rows = read_split(o.test, "test", o.skip_bad_lines, false);
  const std::string train_fp = fingerprint(train_rows), dev_fp = fingerprint(dev_rows);

  if (resume_dir.empty()) {
    std::vector<std::vector<std::string>> docs, char_docs;
    std::vector<std::string> tags;
    for (const auto& s : train_rows) {
      std::vector<std::string> d;
      for (const auto& w : s.words) {
        d.push_back(o.no_lowercase ? w.form : lowercase_ascii(w.form));
        char_docs.push_back(utf8_chars(w.form));
        tags.push_back(w.upos);
      }
      docs.push_back(std::move(d));
    }
    std::sort(tags.begin(), tags.end());
    tags.erase(std::unique(tags.begin(), tags.end()), tags.end());
    r.words = data::Vocab::build(docs, o.min_freq);
    r.chars = data::Vocab::build(char_docs, 1);
    r.mo = TaggerOptions{.words = r.words.size(), .chars = r.chars.size(), .tags = tags, .word_embed = o.word_embed,
                         .char_embed = o.char_embed, .char_filters = o.char_filters, .hidden = o.hidden,
                         .layers = o.layers, .dropout = o.dropout, .lowercase = !o.no_lowercase,
                         .max_word_len = o.max_word_len};
  }
  std::vector<EncodedSentence> train, dev, test;
  for (const auto& s : train_rows) train.push_back(encode(s, r.words, r.chars, r.mo.tags, r.mo));
  for (const auto& s : dev_rows) dev.push_back(encode(s, r.words, r.chars, r.mo.tags, r.mo));
  for (const auto& s : test_rows) test.push_back(encode(s, r.words, r.chars, r.mo.tags, r.mo));

  manual_seed(o.seed);
  r.model = std::make_unique<Tagger>(r.mo);
  r.opt = std::make_unique<optim::Adam>(r.model->parameters(), optim::AdamOptions{.lr = o.lr});
  optim::ClipGradNorm clip(o.clip > 0 ? o.clip : std::numeric_limits<double>::infinity());
  r.opt->add_hook(clip);
  r.opt->add_hook([clip](optim::Optimizer&) {
    if (!std::isfinite(clip.last_norm())) throw NonFiniteGradient{};
  });
  r.config = json{{"format", "tapegrad-tagger"}, {"version", 1}, {"model", to_json(r.mo)}, {"training", to_json(o)}};

  if (!resume_dir.empty()) {
    nn::load_weights(*r.model, resume_dir / "model.safetensors");
    try {
      r.opt->load_state_dict(tgcli::read_json(resume_dir / "optimizer.json"));
    } catch (const std::invalid_argument& e) {
      throw std::runtime_error(fmt::format("{}: {}", (resume_dir / "optimizer.json").string(), e.what()));
    }
    const fs::path tj = resume_dir / "trainer.json";
    r.st = tgcli::trainer_state_from_json(tgcli::read_json(tj), tj.string());
    for (const auto& [saved, now, path, what] :
         {std::tuple{r.st.train_data, train_fp, o.train, "training"}, std::tuple{r.st.dev_data, dev_fp, o.dev, "dev"}})
      if (!saved.empty() && saved != now)
        throw std::runtime_error(fmt::format("{}: these {} sentences differ from the ones the checkpoint was trained "
                                             "on ({} now; {} recorded in {}), so resuming would not continue the same "
                                             "run. Give the original file or start a new run",
                                             path, what, now, saved, tj.string()));
    set_rng_state(RngState{r.st.rng});
  }
  r.st.train_data = train_fp;
  r.st.dev_data = dev_fp;
  if (!r.save.empty() && !resume_dir.empty() && !r.st.history.empty()) r.write_metrics();

  const bool tty = ::isatty(STDOUT_FILENO) != 0;
  tgcli::Progress progress(tty, o.quiet);
  int64_t train_tokens = 0;
  for (const auto& s : train) train_tokens += static_cast<int64_t>(s.words.size());
  progress.message(fmt::format(
      "tapegrad-tag: {} train ({} tokens) / {} dev / {} test sentences, {} words, {} characters, {} tags; word {} + "
      "char CNN {} -> BiLSTM {} x{} ({} parameters), {} thread(s){}",
      train.size(), train_tokens, dev.size(), test.size(), r.words.size(), r.chars.size(), r.mo.tags.size(),
      o.word_embed, o.char_filters, o.hidden, o.layers, r.model->num_parameters(), o.threads,
      resume_dir.empty() ? "" : fmt::format(", resumed from {} at epoch {} step {}", resume_dir.string(), r.st.epoch,
                                            r.st.step)));

  std::signal(SIGINT, on_stop);
  std::signal(SIGTERM, on_stop);
  const auto C = static_cast<int64_t>(r.mo.tags.size());
  const auto started = std::chrono::steady_clock::now();
  const double elapsed_before = r.st.elapsed;
  auto elapsed = [&] {
    return elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  };
  bool stopped = o.stop_after > 0 && r.st.step >= o.stop_after;
  for (int64_t epoch = r.st.epoch; epoch <= o.epochs && !stopped; ++epoch) {
    const auto batches = epoch_batches(train, static_cast<size_t>(o.batch), o.seed, epoch, o.bucket);
    const auto n = static_cast<int64_t>(batches.size());
    const int64_t first = epoch == r.st.epoch ? r.st.batch_pos : 0;
    if (first >= n) continue;
    progress.start_epoch(epoch, o.epochs, n, first);
    double epoch_loss = 0;
    int64_t epoch_sentences = 0, epoch_tokens = 0;
    for (int64_t i = first; i < n; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      const TagBatch b = make_batch(train, batches[static_cast<size_t>(i)]);
      r.opt->zero_grad();
      const Tensor logits = r.model->forward(b).reshape(Shape{b.batch * b.max_len, C});
      const Tensor loss = cross_entropy(logits, b.targets, -100);
      const double loss_value = loss.item();
      const int64_t tokens = std::accumulate(b.lengths.begin(), b.lengths.end(), int64_t{0});
      const int64_t step_no = r.st.step + 1;
      if (!std::isfinite(loss_value)) {
        progress.end_epoch();
        fmt::print(stderr, "tapegrad-tag: error: step {} (epoch {}, batch {}/{}): the training loss is {}; stopped "
                   "without updating the weights{}. Try a lower --lr (now {:g})\n",
                   step_no, epoch, i + 1, n, loss_value, r.save.empty() ? "" : fmt::format("; {} is kept", (r.save / "last").string()), o.lr);
        return 3;
      }
      loss.backward();
      try {
        r.opt->step();
      } catch (const NonFiniteGradient&) {
        ++r.st.skipped_steps;
        fmt::print(stderr, "tapegrad-tag: warning: step {}: gradient norm is {}; update skipped\n", step_no,
                   clip.last_norm());
      }
      r.st.train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      r.st.loss_sum += loss_value * static_cast<double>(tokens);
      r.st.loss_count += tokens;
      r.st.examples += b.batch;
      ++r.st.step;
      r.st.epoch = epoch;
      r.st.batch_pos = i + 1;
      epoch_loss += loss_value * static_cast<double>(tokens);
      epoch_tokens += tokens;
      epoch_sentences += b.batch;
      progress.update(i + 1, epoch_sentences, epoch_loss / static_cast<double>(epoch_tokens), clip.last_norm());

      if (i + 1 == n) {  // end of the epoch: dev evaluation, best/ and last/
        const auto e0 = std::chrono::steady_clock::now();
        const Evaluation ev = evaluate(*r.model, dev, o.eval_batch);
        const double eval_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - e0).count();
        const bool better = ev.accuracy() > r.st.best_accuracy;
        if (better) {
          r.st.best_accuracy = ev.accuracy();
          r.st.best_epoch = epoch;
          r.st.best_step = r.st.step;
        }
        r.st.last_dev_accuracy = ev.accuracy();
        r.st.last_dev_loss = ev.loss;
        const double train_loss = r.st.loss_count ? r.st.loss_sum / static_cast<double>(r.st.loss_count) : 0.0;
        r.st.history.push_back(json{{"epoch", epoch},
                                    {"step", r.st.step},
                                    {"train_loss", train_loss},
                                    {"dev_loss", ev.loss},
                                    {"dev_accuracy", ev.accuracy()},
                                    {"best", better},
                                    {"train_seconds", r.st.train_seconds},
                                    {"sentences_per_s", static_cast<double>(r.st.examples) / r.st.train_seconds},
                                    {"eval_seconds", eval_s}});
        r.st.loss_sum = 0;
        r.st.loss_count = 0;
        progress.end_epoch();
        progress.message(fmt::format("epoch {}/{}: train loss {:.4f}, dev loss {:.4f}, dev UPOS accuracy {:.2f}%{} "
                                     "({:.0f} sentences/s)",
                                     epoch, o.epochs, train_loss, ev.loss, 100 * ev.accuracy(),
                                     better ? " (best so far)" : "",
                                     static_cast<double>(r.st.examples) / r.st.train_seconds));
        r.st.elapsed = elapsed();
        if (!r.save.empty()) {
          r.st.rng = get_rng_state().bytes;
          if (better) r.write_checkpoint(r.save / "best");
          r.write_checkpoint(r.save / "last");
          r.write_metrics();
        }
      }
      if (g_stop) {
        if (i + 1 != n) {
          r.st.elapsed = elapsed();
          r.save_last();
        }
        progress.end_epoch();
        fmt::print(stderr, "tapegrad-tag: {} at step {}{}\n", g_stop == SIGTERM ? "terminated (SIGTERM)" : "interrupted",
                   r.st.step, r.save.empty() ? " (nothing saved: no --save)"
                                             : fmt::format("; continue with: tapegrad-tag train --resume {}", r.save.string()));
        return 128 + g_stop;
      }
      if (o.stop_after > 0 && r.st.step >= o.stop_after) {
        if (i + 1 != n) {
          r.st.elapsed = elapsed();
          r.save_last();
        }
        stopped = true;
        break;
      }
    }
    progress.end_epoch();
  }
  std::signal(SIGINT, SIG_DFL);
  std::signal(SIGTERM, SIG_DFL);

  json summary{{"train_sentences", train.size()},
               {"dev_sentences", dev.size()},
               {"epochs", o.epochs},
               {"steps", r.st.step},
               {"parameters", r.model->num_parameters()},
               {"threads", o.threads},
               {"seed", o.seed},
               {"best_dev_accuracy", r.st.best_accuracy},
               {"best_epoch", r.st.best_epoch},
               {"train_seconds", r.st.train_seconds},
               {"train_sentences_per_s", r.st.train_seconds > 0 ? static_cast<double>(r.st.examples) / r.st.train_seconds : 0.0},
               {"stopped", stopped}};
  if (stopped) {
    if (!o.quiet)
      fmt::print("stopped after step {} as asked (--stop-after){}\n", r.st.step,
                 r.save.empty() ? "" : fmt::format("; continue with --resume {}", r.save.string()));
  } else if (!test.empty()) {
    // The test set, once, with the weights of the best dev epoch.
    Tagger best(r.mo);
    const fs::path best_dir = r.save.empty() ? fs::path() : r.save / "best";
    if (!best_dir.empty() && fs::exists(best_dir / "model.safetensors")) {
      tgcli::verify_checkpoint(best_dir, kRequired, "");
      nn::load_weights(best, best_dir / "model.safetensors");
    } else {
      fmt::print(stderr, "tapegrad-tag: note: no --save, so the test set is scored with the last weights, not the "
                 "best dev epoch's\n");
      best.load_state_dict(r.model->state_dict());
    }
    const Evaluation ev = evaluate(best, test, o.eval_batch);
    if (!o.quiet)
      fmt::print("test set ({}), weights of epoch {} (best dev UPOS accuracy {:.2f}%):\n{}", o.test, r.st.best_epoch,
                 100 * r.st.best_accuracy, tag_table(ev, r.mo.tags));
    if (!r.save.empty()) {
      tgcli::write_file_atomic(r.save / "test.json", tag_report(ev, r.mo.tags).dump(1) + "\n");
      write_confusion(r.save, ev, r.mo.tags,
                      fmt::format("tapegrad-tag: UPOS confusion on {} ({:.2f}% accuracy)", fs::path(o.test).filename().string(),
                                  100 * ev.accuracy()));
    }
    summary["test_accuracy"] = ev.accuracy();
    summary["test_tokens"] = ev.tokens;
    summary["test_loss"] = ev.loss;
  }
  if (!o.quiet && r.st.best_accuracy >= 0)
    fmt::print("best dev UPOS accuracy {:.2f}% at epoch {} (step {}){}\n", 100 * r.st.best_accuracy, r.st.best_epoch,
               r.st.best_step, r.save.empty() ? "" : "; checkpoint " + (r.save / "best").string());
  if (!r.save.empty()) summary["save"] = r.save.string();
  fmt::print("{}\n", summary.dump(-1, ' ', false, json::error_handler_t::replace));
  std::fflush(stdout);
  return 0;
}

}  // namespace tgtag
