#pragma once
// tapegrad-tag: shared pieces of its `train` and `eval` subcommands (see docs/tagging.md).
// Checkpoints, run folders, manifests, progress and plots are tapegrad-train's (examples/train).
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tapegrad/data/conllu.h"
#include "tapegrad/data/vocab.h"
#include "tagger.h"

namespace tgtag {

namespace fs = std::filesystem;

// Every `train` option; config.json's "training" section (keys = option names).
struct TagOptions {
  std::string train, dev, test, save, resume;
  int64_t word_embed = 100, char_embed = 30, char_filters = 50, hidden = 128, layers = 1;
  double dropout = 0.5;
  bool no_lowercase = false;
  int64_t min_freq = 2, max_word_len = 30;
  int64_t epochs = 20, batch = 32, eval_batch = 256;
  double lr = 2e-3, clip = 5.0;
  uint64_t seed = 1;
  int threads = 1;
  bool skip_bad_lines = false;
  bool bucket = false;    // batches of sentences of similar length
  int64_t max_train = 0;  // first N training sentences only (0 = all)
  // Not part of the run (not saved): how this process runs it.
  int64_t stop_after = 0;
  bool quiet = false, overwrite = false;
};
json to_json(const TagOptions& o);
TagOptions tag_options_from_json(const json& j);

// Reads a CoNLL-U split; `what` names it in messages ("training", "dev", "test").
std::vector<tg::data::ConlluSentence> read_split(const std::string& path, const char* what, bool skip_bad_lines,
                                                 bool quiet);

// Token-level results of running a model over sentences.
struct Evaluation {
  int64_t tokens = 0, correct = 0, sentences = 0;
  double loss = 0;                          // mean cross-entropy over tokens with known tags
  std::vector<std::vector<int64_t>> confusion;  // [gold][predicted], known gold tags only
  int64_t unknown_gold = 0;                 // tokens whose tag the model does not know (always wrong)
  double accuracy() const { return tokens ? static_cast<double>(correct) / static_cast<double>(tokens) : 0.0; }
};
Evaluation evaluate(Tagger& model, const std::vector<EncodedSentence>& data, int64_t batch);
// Per-tag precision / recall / F1 / support as a printable table, and as JSON.
std::string tag_table(const Evaluation& e, const std::vector<std::string>& tags);
json tag_report(const Evaluation& e, const std::vector<std::string>& tags);
// dir/confusion.tsv and dir/confusion.png (gnuplot heat map, rows normalised; a warning without
// gnuplot).
void write_confusion(const fs::path& dir, const Evaluation& e, const std::vector<std::string>& tags,
                     const std::string& title);

// A checkpoint's model: config.json, vocab.txt, chars.txt (after verify_checkpoint).
struct TagCheckpoint {
  json config;
  TaggerOptions model;
  tg::data::Vocab words, chars;
};
TagCheckpoint read_tag_checkpoint(const fs::path& dir);

int run_train(int argc, char** argv);
int run_eval(int argc, char** argv);

}  // namespace tgtag
