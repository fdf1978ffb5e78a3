// `tapegrad-train predict`: classify sentences with a saved checkpoint.
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <algorithm>
#include <iostream>
#include <string>
#include <vector>

#include "tapegrad/autograd/tensor.h"
#include "cli.h"
#include "tapegrad/data/tokenizer.h"

namespace po = boost::program_options;

namespace tgcli {

using namespace tg;

int run_predict(int argc, char** argv) {
  std::string checkpoint;
  std::vector<std::string> sentences;
  int64_t batch = 0;
  int threads = 0;
  bool as_json = false;
  bool allow_non_finite = false;
  po::options_description desc(
      "tapegrad-train predict: classify sentences with a checkpoint saved by `train`.\n"
      "Usage: tapegrad-train predict --checkpoint DIR [options] [SENTENCE ...]\n"
      "Without sentences, classifies each line of standard input. Prints one line per sentence:\n"
      "  binary:       <probability of label 1, 4 decimals> <label 0|1> <sentence>\n"
      "  K > 2 classes: <label> <probability of label 0> ... <of label K-1, 4 decimals> <sentence>\n\nOptions");
  // clang-format off
  desc.add_options()
    ("help,h", "show this help")
    ("checkpoint", po::value(&checkpoint), "checkpoint folder, or a run folder (then its best/ is used)")
    ("batch", po::value(&batch)->default_value(batch), "batch size (0 = the checkpoint's --eval-batch, so "
                                                       "results match train-time evaluation bit for bit)")
    ("threads", po::value(&threads)->default_value(threads), "threads for matrix products (OpenBLAS); 0 = the cores available (TG_NUM_THREADS overrides)")
    ("json", po::bool_switch(&as_json), "print JSON lines {label, logit, probability, text} at full precision (K > 2 classes: "
                                               "{label, logits, probabilities, text}, probabilities the softmax)")
    ("allow-non-finite", po::bool_switch(&allow_non_finite), "load a checkpoint whose weights hold NaN or Inf "
                                                             "(to inspect a diverged run; its outputs may be nan); "
                                                             "without it such a checkpoint is refused");
  // clang-format on
  po::options_description hidden;
  hidden.add_options()("sentence", po::value(&sentences)->composing());
  po::options_description all;
  all.add(desc).add(hidden);
  po::positional_options_description pos;
  pos.add("sentence", -1);
  po::variables_map vm;
  po::store(po::command_line_parser(argc, argv).options(all).positional(pos).run(), vm);
  if (vm.count("help")) {
    std::cout << desc << "\n";
    return 0;
  }
  po::notify(vm);
  if (checkpoint.empty()) throw std::invalid_argument("--checkpoint DIR is required (see --help)");
  if (batch < 0 || threads < 0) throw std::invalid_argument("--batch and --threads must be >= 0");
  if (threads > 0) set_num_threads(threads);

  const fs::path dir = resolve_checkpoint(checkpoint, "best");
  const std::string elsewhere = other_checkpoint_advice(dir, false);
  // manifest.json's checksums and config.json against model.safetensors, before anything is used
  verify_checkpoint(dir, {"config.json", "vocab.txt", "model.safetensors"}, elsewhere);
  Checkpoint ck = read_checkpoint_meta(dir);
  const json training = ck.config.value("training", json::object());
  const int64_t max_len = training.value("max-len", int64_t{100});
  if (batch == 0) batch = training.value("eval-batch", int64_t{256});
  if (max_len < 1 || batch < 1) throw std::runtime_error(fmt::format("{}: bad max-len or eval-batch", dir.string()));

  {
    // Sizes from config.json are checked before anything is allocated (a crafted or corrupt
    // checkpoint must not make predict allocate without bound or overflow a shape).
    const auto need = [&](const nn::TextClassifierOptions& m, int64_t b) {
      return estimate_memory(m, b, max_len, 1, false).bytes;
    };
    std::string budget_source;
    const long double budget = memory_budget(&budget_source);
    const long double bytes = need(ck.model, batch);
    if (bytes > budget) {
      const nn::TextClassifierOptions d;
      std::string worst = "model.vocab_size";
      long double best_saving = 0;
      auto consider = [&](const char* key, nn::TextClassifierOptions m, int64_t b) {
        const long double saving = bytes - need(m, b);
        if (saving > best_saving) best_saving = saving, worst = key;
      };
      nn::TextClassifierOptions m = ck.model;
      m.embed = std::min(m.embed, d.embed);
      consider("model.embed", m, batch);
      m = ck.model;
      m.hidden = std::min(m.hidden, d.hidden);
      consider("model.hidden", m, batch);
      m = ck.model;
      m.layers = std::min(m.layers, d.layers);
      consider("model.layers", m, batch);
      consider(vm["batch"].defaulted() ? "training.eval-batch" : "--batch", ck.model, std::min<int64_t>(batch, 256));
      throw std::runtime_error(fmt::format(
          "{}: {} ({} embed {} hidden {} x{}, vocab {}, batch {} x {} tokens) needs about {} to predict with, but "
          "this machine has {} ({}); refusing to load it",
          (dir / "config.json").string(), worst, nn::cell_type_name(ck.model.cell), ck.model.embed, ck.model.hidden,
          ck.model.layers, ck.model.vocab_size, batch, max_len, format_bytes(bytes), format_bytes(budget),
          budget_source));
    }
  }
  nn::TextClassifier model(ck.model);
  nn::load_weights(model, dir / "model.safetensors", true, nullptr, LoadOptions{.allow_non_finite = true});
  if (const std::string bad = non_finite_weight(model); !bad.empty()) {
    if (!allow_non_finite)
      throw std::runtime_error(fmt::format(
          "{}: {}; non-finite weights are refused (the run that wrote them had diverged, and every prediction "
          "would be nan). To inspect them anyway: tapegrad-train predict --allow-non-finite --checkpoint {}{}",
          (dir / "model.safetensors").string(), bad, checkpoint,
          elsewhere.empty() ? "" : fmt::format("; or use another checkpoint ({})", elsewhere)));
    fmt::print(stderr, "tapegrad-train: warning: {}: {}; loaded anyway (--allow-non-finite)\n",
               (dir / "model.safetensors").string(), bad);
  }
  model.eval();

  if (sentences.empty() && !vm.count("sentence"))
    for (std::string line; std::getline(std::cin, line);) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      sentences.push_back(line);
    }
  std::vector<data::Example> rows;
  rows.reserve(sentences.size());
  for (const auto& s : sentences) rows.push_back({s, 0});
  const auto encoded = data::encode_all(rows, ck.vocab, data::tokenize, max_len);
  const auto preds = predict_all(model, encoded, batch);
  std::string out;
  for (size_t i = 0; i < preds.size(); ++i) {
    const Prediction& p = preds[i];
    if (as_json) {
      out += prediction_json(p, sentences[i]) + "\n";
    } else if (!p.probabilities.empty()) {
      out += fmt::format("{}", p.label);
      for (double q : p.probabilities) out += fmt::format(" {:.4f}", q);
      out += " " + sentences[i] + "\n";
    } else {
      out += fmt::format("{:.4f} {} {}\n", p.probability, p.label, sentences[i]);
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace tgcli
