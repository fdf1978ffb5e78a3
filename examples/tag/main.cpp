// tapegrad-tag: train a BiLSTM part-of-speech tagger on CoNLL-U files (Universal Dependencies),
// checkpoint and resume it, and score saved taggers. See docs/tagging.md.
#include <boost/program_options.hpp>
#include <fmt/format.h>

#include <csignal>
#include <cstring>
#include <iostream>
#include <map>

#include "tag_cli.h"
#include "examples/train/cli.h"
#include "examples/train/command_main.h"

namespace po = boost::program_options;

namespace tgtag {

int train_main(TagOptions o, const std::map<std::string, bool>& given);
using tgcli::get_if;

json to_json(const TagOptions& o) {
  return json{{"train", o.train},
              {"dev", o.dev},
              {"test", o.test},
              {"save", o.save},
              {"word-embed", o.word_embed},
              {"char-embed", o.char_embed},
              {"char-filters", o.char_filters},
              {"hidden", o.hidden},
              {"layers", o.layers},
              {"dropout", o.dropout},
              {"no-lowercase", o.no_lowercase},
              {"min-freq", o.min_freq},
              {"max-word-len", o.max_word_len},
              {"epochs", o.epochs},
              {"batch", o.batch},
              {"eval-batch", o.eval_batch},
              {"lr", o.lr},
              {"clip", o.clip},
              {"seed", o.seed},
              {"threads", o.threads},
              {"skip-bad-lines", o.skip_bad_lines},
              {"max-train", o.max_train},
              {"bucket", o.bucket}};
}


TagOptions tag_options_from_json(const json& j) {
  TagOptions o;
  try {
    get_if(j, "train", o.train);
    get_if(j, "dev", o.dev);
    get_if(j, "test", o.test);
    get_if(j, "save", o.save);
    get_if(j, "word-embed", o.word_embed);
    get_if(j, "char-embed", o.char_embed);
    get_if(j, "char-filters", o.char_filters);
    get_if(j, "hidden", o.hidden);
    get_if(j, "layers", o.layers);
    get_if(j, "dropout", o.dropout);
    get_if(j, "no-lowercase", o.no_lowercase);
    get_if(j, "min-freq", o.min_freq);
    get_if(j, "max-word-len", o.max_word_len);
    get_if(j, "epochs", o.epochs);
    get_if(j, "batch", o.batch);
    get_if(j, "eval-batch", o.eval_batch);
    get_if(j, "lr", o.lr);
    get_if(j, "clip", o.clip);
    get_if(j, "seed", o.seed);
    get_if(j, "threads", o.threads);
    get_if(j, "skip-bad-lines", o.skip_bad_lines);
    get_if(j, "max-train", o.max_train);
    get_if(j, "bucket", o.bucket);
  } catch (const json::exception& e) {
    throw std::runtime_error(fmt::format("config.json: bad \"training\" section: {}", e.what()));
  }
  return o;
}

namespace {

void check(const TagOptions& o) {
  auto positive = [](const char* name, int64_t v) {
    if (v < 1) throw std::invalid_argument(fmt::format("--{} must be >= 1, got {}", name, v));
  };
  positive("word-embed", o.word_embed);
  positive("char-embed", o.char_embed);
  positive("char-filters", o.char_filters);
  positive("hidden", o.hidden);
  positive("layers", o.layers);
  positive("min-freq", o.min_freq);
  positive("max-word-len", o.max_word_len);
  positive("epochs", o.epochs);
  positive("batch", o.batch);
  positive("eval-batch", o.eval_batch);
  positive("threads", o.threads);
  if (o.max_train < 0) throw std::invalid_argument(fmt::format("--max-train must be >= 0, got {}", o.max_train));
  if (o.stop_after < 0) throw std::invalid_argument(fmt::format("--stop-after must be >= 0, got {}", o.stop_after));
  if (!(o.dropout >= 0 && o.dropout < 1))
    throw std::invalid_argument(fmt::format("--dropout must be in [0, 1), got {}", o.dropout));
  if (!(o.lr > 0 && std::isfinite(o.lr))) throw std::invalid_argument(fmt::format("--lr must be > 0, got {}", o.lr));
  if (!(o.clip >= 0 && std::isfinite(o.clip)))
    throw std::invalid_argument(fmt::format("--clip must be >= 0 (0 = off), got {}", o.clip));
}

}  // namespace

int run_train(int argc, char** argv) {
  TagOptions o;
  po::options_description d(
      "tapegrad-tag train: train a BiLSTM UPOS tagger (word embeddings + char CNN -> BiLSTM -> softmax) on\n"
      "CoNLL-U files. Dev UPOS accuracy after every epoch picks DIR/best/; the test file, if given, is scored\n"
      "once at the end with best/'s weights.\n\nOptions");
  // clang-format off
  d.add_options()
    ("help,h", "show this help")
    ("train", po::value(&o.train), "training CoNLL-U file (required unless --resume)")
    ("dev", po::value(&o.dev), "dev CoNLL-U file, evaluated after every epoch (required unless --resume)")
    ("test", po::value(&o.test), "test CoNLL-U file, evaluated once at the end from best/")
    ("save", po::value(&o.save), "run folder: best/, last/, metrics.jsonl, metrics.png, test.json, confusion.png")
    ("resume", po::value(&o.resume), "continue the run saved in DIR (run or checkpoint folder) exactly")
    ("overwrite", po::bool_switch(&o.overwrite), "let a fresh run replace tapegrad's files in a used --save folder")
    ("word-embed", po::value(&o.word_embed)->default_value(o.word_embed), "word embedding size")
    ("char-embed", po::value(&o.char_embed)->default_value(o.char_embed), "character embedding size")
    ("char-filters", po::value(&o.char_filters)->default_value(o.char_filters), "char CNN filters (width 3)")
    ("hidden", po::value(&o.hidden)->default_value(o.hidden), "BiLSTM hidden size per direction")
    ("layers", po::value(&o.layers)->default_value(o.layers), "stacked BiLSTM layers")
    ("dropout", po::value(&o.dropout)->default_value(o.dropout), "dropout on the BiLSTM's input and output")
    ("no-lowercase", po::bool_switch(&o.no_lowercase), "look words up with their case (default: lowercased)")
    ("min-freq", po::value(&o.min_freq)->default_value(o.min_freq),
     "vocabulary: training words seen at least this often (others are <unk>, known by their characters)")
    ("max-word-len", po::value(&o.max_word_len)->default_value(o.max_word_len), "characters per word for the CNN")
    ("epochs", po::value(&o.epochs)->default_value(o.epochs), "training epochs")
    ("batch", po::value(&o.batch)->default_value(o.batch), "sentences per batch")
    ("eval-batch", po::value(&o.eval_batch)->default_value(o.eval_batch), "sentences per evaluation batch")
    ("lr", po::value(&o.lr)->default_value(o.lr), "Adam learning rate")
    ("clip", po::value(&o.clip)->default_value(o.clip), "clip the global gradient norm (0 = off)")
    ("seed", po::value(&o.seed)->default_value(o.seed), "random seed: initialisation, dropout and data order")
    ("threads", po::value(&o.threads)->default_value(o.threads), "threads for matrix products (OpenBLAS)")
    ("skip-bad-lines", po::bool_switch(&o.skip_bad_lines), "drop sentences with malformed lines (counted) instead of stopping")
    ("bucket", po::bool_switch(&o.bucket), "batch sentences of similar length together (less padding)")
    ("max-train", po::value(&o.max_train)->default_value(o.max_train),
     "train on the first N training sentences only (0 = all; speed runs and smoke tests)")
    ("stop-after", po::value(&o.stop_after)->default_value(o.stop_after),
     "stop after N optimizer steps in total, saving last/ to resume from (0 = run all epochs)")
    ("quiet,q", po::bool_switch(&o.quiet), "print only the final JSON line");
  // clang-format on
  po::variables_map vm;
  if (!tgcli::parse_options(d, argc, argv, vm)) return 0;
  std::map<std::string, bool> given;
  for (const auto& [name, v] : vm) given[name] = !v.defaulted();
  if (o.resume.empty() && (o.train.empty() || o.dev.empty()))
    throw std::invalid_argument("--train FILE and --dev FILE are required (or --resume DIR)");
  check(o);
  return train_main(o, given);
}

}  // namespace tgtag

namespace {
constexpr const char* kUsage =
    "usage: tapegrad-tag train --train FILE --dev FILE [--test FILE] [--save DIR] [options]   train a tagger\n"
    "       tapegrad-tag train --resume DIR [options]                  continue a saved run exactly\n"
    "       tapegrad-tag eval --checkpoint DIR --data FILE             score a saved tagger on a CoNLL-U file\n"
    "       tapegrad-tag <command> --help                              all options with their defaults\n";
}

int main(int argc, char** argv) {
  return tgcli::command_main("tapegrad-tag", kUsage, {{"train", tgtag::run_train}, {"eval", tgtag::run_eval}},
                             argc, argv);
}
