#pragma once
// tapegrad-lm: train a character- (or word-) level recurrent language model on a plain-text file
// with truncated BPTT over contiguous streams, checkpoint and resume it exactly, and sample from
// it. See docs/lm.md. Checkpoints, manifests, the run lock, the progress bar and the plot are the
// training CLI's (examples/train), shared through the tapegrad_train_cli library.
#include <cstdint>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "cli.h"
#include "tapegrad/data/text_stream.h"
#include "lm_model.h"
#include "train.h"

namespace tglm {

namespace fs = std::filesystem;
using json = nlohmann::json;

// Every `train` option; JSON keys are the option names (config.json's "training" section).
struct LmOptions {
  std::string text;
  std::string level = "char";
  int64_t vocab_cap = 0, min_freq = 1;
  double valid_fraction = 0.1;
  std::string model = "lstm";
  int64_t embed = 128, hidden = 512, layers = 1;
  double dropout = 0.0;
  bool tie_weights = false;
  int64_t batch = 32, bptt = 128, epochs = 10;
  double lr = 2e-3;
  double clip = 5.0, weight_decay = 0.0;
  uint64_t seed = 1;
  int threads = 1;
  int64_t eval_every = 200, eval_batch = 16;
  double time_limit = 0;  // seconds of training (evaluation excluded), 0 = none
  int64_t stop_after = 0;
  std::string save, resume;
  bool overwrite = false, quiet = false;
};
json to_json(const LmOptions& o);
LmOptions lm_options_from_json(const json& j);  // missing keys keep their defaults
LmModelOptions model_options(const LmOptions& o, int64_t vocab_size);
json to_json(const LmModelOptions& m);
LmModelOptions lm_model_options_from_json(const json& j);

// Where training stands; trainer.json.
struct LmTrainerState {
  int64_t epoch = 1, chunk = 0;  // epoch in progress (1-based) and its chunks already trained
  int64_t step = 0, tokens = 0;
  double loss_sum = 0;  // nats summed over the target tokens since the last evaluation
  int64_t loss_count = 0;
  double best_valid = -1;
  int64_t best_step = 0;
  double last_valid = -1;
  double train_seconds = 0, elapsed = 0;
  std::string rng;
  std::string data;  // fingerprint of the token stream trained on
  std::vector<json> history;
};
json to_json(const LmTrainerState& s);
LmTrainerState lm_trainer_state_from_json(const json& j, const std::string& source);

// "tokens N, fnv1a64 XXXXXXXXXXXXXXXX" of a token stream.
std::string stream_fingerprint(const std::vector<int64_t>& ids);

// A checkpoint's description, vocabulary and model, checked against each other.
struct LmCheckpoint {
  json config;
  tg::data::TextVocab vocab;
  tg::data::TokenLevel level = tg::data::TokenLevel::Char;
  LmModelOptions model;
};
LmCheckpoint read_lm_checkpoint(const fs::path& dir);  // after verify_checkpoint
// Before verify_checkpoint: dir/config.json says "format": "tapegrad-lm" (so a classifier's
// checkpoint is named as such instead of failing on a missing file).
void require_lm_checkpoint(const fs::path& dir);
// The files every LM checkpoint holds (the manifest must list them).
const std::vector<std::string>& lm_checkpoint_files();
// Writes dir (replaced as a whole): config, vocab, weights, carried state, optimizer, trainer.
void write_lm_checkpoint(const fs::path& dir, const json& config, const tg::data::TextVocab& vocab,
                         const LanguageModel& model, const LmState& state, const tg::optim::Optimizer& opt,
                         const LmTrainerState& st);
LmState read_lm_state(const fs::path& dir, const LmModelOptions& m, int64_t batch);

int run_lm_train(int argc, char** argv);   // argv[0] is "train"
int run_lm_sample(int argc, char** argv);  // argv[0] is "sample"

}  // namespace tglm
