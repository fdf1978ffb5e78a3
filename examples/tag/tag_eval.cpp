// tapegrad-tag: evaluation (accuracy, per-tag table, confusion matrix) and the `eval` subcommand.
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <iostream>
#include <numeric>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"
#include "examples/train/cli.h"
#include "examples/train/command_main.h"
#include "examples/train/report.h"
#include "tapegrad/nn/text_classifier.h"  // load_weights
#include "tag_cli.h"

namespace po = boost::program_options;

namespace tgtag {

using namespace tg;

std::vector<data::ConlluSentence> read_split(const std::string& path, const char* what, bool skip_bad_lines,
                                             bool quiet) {
  data::ReadReport report;
  auto rows = data::read_conllu(path, data::ReadOptions{.skip_bad_lines = skip_bad_lines}, &report);
  if (report.skipped && !quiet) {
    fmt::print(stderr, "tapegrad-tag: warning: skipped {} malformed line(s) of {} (and their sentences):\n",
               report.skipped, path);
    for (const auto& e : report.first_errors) fmt::print(stderr, "  {}\n", e);
  }
  if (rows.empty()) throw std::runtime_error(fmt::format("{}: the {} set has no sentences", path, what));
  return rows;
}

Evaluation evaluate(Tagger& model, const std::vector<EncodedSentence>& data, int64_t batch) {
  const auto C = static_cast<int64_t>(model.options.tags.size());
  Evaluation e;
  e.confusion.assign(static_cast<size_t>(C), std::vector<int64_t>(static_cast<size_t>(C), 0));
  const bool was_training = model.is_training();
  model.eval();
  NoGradGuard no_grad;
  double loss_sum = 0;
  int64_t loss_count = 0;
  for (size_t first = 0; first < data.size(); first += static_cast<size_t>(batch)) {
    std::vector<size_t> rows(std::min(data.size() - first, static_cast<size_t>(batch)));
    std::iota(rows.begin(), rows.end(), first);
    const TagBatch b = make_batch(data, rows);
    const Tensor logits = model.forward(b).reshape(Shape{b.batch * b.max_len, C});
    const Tensor sum = cross_entropy(logits, b.targets, -100, Reduction::Sum);
    loss_sum += sum.item();
    const Tensor pred = argmax(logits, 1).contiguous();
    const int64_t* p = pred.data<int64_t>();
    size_t k = 0;
    for (int64_t i = 0; i < b.batch; ++i)
      for (int64_t t = 0; t < b.lengths[static_cast<size_t>(i)]; ++t, ++k) {
        const int64_t gold = b.gold[k], guess = p[i * b.max_len + t];
        ++e.tokens;
        if (gold < 0) {
          ++e.unknown_gold;
          continue;
        }
        ++loss_count;
        e.correct += gold == guess;
        ++e.confusion[static_cast<size_t>(gold)][static_cast<size_t>(guess)];
      }
    e.sentences += b.batch;
  }
  e.loss = loss_count ? loss_sum / static_cast<double>(loss_count) : 0.0;
  model.train(was_training);
  return e;
}

namespace {
using TagScore = tgcli::ClassScore;
std::vector<TagScore> scores(const Evaluation& e) { return tgcli::class_scores(e.confusion); }
}  // namespace

std::string tag_table(const Evaluation& e, const std::vector<std::string>& tags) {
  const std::vector<TagScore> s = scores(e);
  std::string out = fmt::format("{:<8} {:>9} {:>7} {:>7} {:>8}\n", "tag", "precision", "recall", "F1", "support");
  double macro = 0;
  int64_t present = 0;  // tags that occur in the gold data or the predictions
  for (size_t c = 0; c < tags.size(); ++c) {
    out += fmt::format("{:<8} {:>9.2f} {:>7.2f} {:>7.2f} {:>8}\n", tags[c], 100 * s[c].precision, 100 * s[c].recall,
                       100 * s[c].f1, s[c].support);
    if (s[c].support || s[c].predicted) macro += s[c].f1, ++present;
  }
  out += fmt::format("accuracy {:.2f}% of {} tokens ({} sentences), macro F1 {:.2f}{}\n", 100 * e.accuracy(), e.tokens,
                     e.sentences, 100 * macro / static_cast<double>(std::max<int64_t>(present, 1)),
                     e.unknown_gold ? fmt::format(", {} tokens with tags unseen in training", e.unknown_gold) : "");
  return out;
}

json tag_report(const Evaluation& e, const std::vector<std::string>& tags) {
  const std::vector<TagScore> s = scores(e);
  json per_tag = json::object();
  for (size_t c = 0; c < tags.size(); ++c)
    per_tag[tags[c]] = {{"precision", s[c].precision}, {"recall", s[c].recall}, {"f1", s[c].f1},
                        {"support", s[c].support}};
  return json{{"accuracy", e.accuracy()}, {"tokens", e.tokens},   {"correct", e.correct},
              {"sentences", e.sentences}, {"loss", e.loss},       {"unknown_gold", e.unknown_gold},
              {"tags", tags},             {"per_tag", per_tag},   {"confusion", e.confusion}};
}

void write_confusion(const fs::path& dir, const Evaluation& e, const std::vector<std::string>& tags,
                     const std::string& title) {
  tgcli::write_confusion(dir, e.confusion, tags, title, "tapegrad-tag", "fraction of the gold tag");
}

TagCheckpoint read_tag_checkpoint(const fs::path& dir) {
  TagCheckpoint c;
  c.config = tgcli::read_json(dir / "config.json");
  if (!c.config.is_object() || c.config.value("format", std::string()) != "tapegrad-tagger")
    throw std::runtime_error(fmt::format("{}: not a tapegrad-tag checkpoint (expected \"format\": \"tapegrad-tagger\"; "
                                         "a tapegrad-train checkpoint is used with tapegrad-train predict)",
                                         (dir / "config.json").string()));
  try {
    c.model = tagger_options_from_json(c.config.at("model"));
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("{}: {}", (dir / "config.json").string(), e.what()));
  }
  c.words = data::Vocab::load(dir / "vocab.txt");
  c.chars = data::Vocab::load(dir / "chars.txt");
  if (c.words.size() != c.model.words || c.chars.size() != c.model.chars)
    throw std::runtime_error(fmt::format("{}: vocab.txt has {} words and chars.txt {} characters, but config.json says "
                                         "{} and {}",
                                         dir.string(), c.words.size(), c.chars.size(), c.model.words, c.model.chars));
  if (!std::is_sorted(c.model.tags.begin(), c.model.tags.end()) ||
      std::adjacent_find(c.model.tags.begin(), c.model.tags.end()) != c.model.tags.end())
    throw std::runtime_error(fmt::format("{}: the model's tags are not sorted and distinct", (dir / "config.json").string()));
  return c;
}

int run_eval(int argc, char** argv) {
  std::string checkpoint, data_path, report;
  int64_t batch = 256;
  int threads = 1;
  po::options_description d(
      "tapegrad-tag eval: tag a CoNLL-U file with a saved tagger and score it against its UPOS column\n\nOptions");
  d.add_options()("help,h", "show this help")(
      "checkpoint", po::value(&checkpoint)->required(), "a checkpoint folder, or a run folder (its best/ is used)")(
      "data", po::value(&data_path)->required(), "CoNLL-U file to evaluate on")(
      "report", po::value(&report), "also write DIR/confusion.tsv, DIR/confusion.png and DIR/eval.json")(
      "eval-batch", po::value(&batch)->default_value(batch), "sentences per batch")(
      "threads", po::value(&threads)->default_value(threads), "threads for matrix products (OpenBLAS)");
  po::variables_map vm;
  if (!tgcli::parse_options(d, argc, argv, vm)) return 0;
  if (batch < 1) throw std::invalid_argument(fmt::format("--eval-batch must be >= 1, got {}", batch));
  if (threads < 1) throw std::invalid_argument(fmt::format("--threads must be >= 1, got {}", threads));
  set_num_threads(threads);
  const fs::path dir = tgcli::resolve_checkpoint(checkpoint, "best");
  tgcli::verify_checkpoint(dir, {"model.safetensors", "config.json", "vocab.txt", "chars.txt"},
                           tgcli::other_checkpoint_advice(dir, false));
  const TagCheckpoint c = read_tag_checkpoint(dir);
  const auto rows = read_split(data_path, "evaluation", false, false);
  Tagger model(c.model);
  nn::load_weights(model, dir / "model.safetensors");
  std::vector<EncodedSentence> enc;
  for (const auto& s : rows) enc.push_back(encode(s, c.words, c.chars, c.model.tags, c.model));
  const Evaluation e = evaluate(model, enc, batch);
  fmt::print("{}", tag_table(e, c.model.tags));
  if (!report.empty()) {
    fs::create_directories(report);
    tgcli::write_file_atomic(fs::path(report) / "eval.json", tag_report(e, c.model.tags).dump(1) + "\n");
    write_confusion(report, e, c.model.tags,
                    fmt::format("tapegrad-tag: UPOS confusion on {} ({:.2f}% accuracy)",
                                fs::path(data_path).filename().string(), 100 * e.accuracy()));
  }
  fmt::print("{}\n", json{{"checkpoint", dir.string()}, {"data", data_path}, {"accuracy", e.accuracy()},
                          {"tokens", e.tokens}, {"sentences", e.sentences}, {"loss", e.loss}}
                         .dump(-1, ' ', false, json::error_handler_t::replace));
  return 0;
}

}  // namespace tgtag
