#pragma once
// tapegrad-train: shared pieces of the `train` and `predict` subcommands.
#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "tapegrad/data/batching.h"
#include "tapegrad/data/vocab.h"
#include "tapegrad/nn/text_classifier.h"
#include "tapegrad/optim/optimizer.h"

namespace tgcli {

namespace fs = std::filesystem;
using json = nlohmann::json;

// The most classes `train` accepts (a label of 2^31 must not allocate a 2^31-row output layer).
inline constexpr int kMaxClasses = 10000;

// Every `train` option. JSON keys are the option names (config.json's "training" section).
struct TrainOptions {
  std::string train, dev;
  std::string model = "lstm";
  int64_t embed = 128, hidden = 256, layers = 1;
  bool bidirectional = false;
  double dropout = 0.5, embed_dropout = 0.0;
  std::string pooling = "last";
  int64_t epochs = 3, batch = 64;
  double lr = 1e-3;
  std::string optimizer = "adam";
  double clip = 5.0, weight_decay = 0.0, momentum = 0.0;
  uint64_t seed = 1;
  int threads = 0;  // 0: auto (train_threads)
  int64_t max_len = 100, min_freq = 1;
  bool bucket = false;
  std::string save, resume;
  int64_t eval_every = 0, eval_batch = 256;
  bool skip_bad_lines = false;
  int64_t max_train = 0;
  bool quiet = false;
  int64_t stop_after = 0;
  int64_t max_skipped_steps = 20;  // consecutive skipped steps that stop a run (0 = never)
  int64_t classes = 0;             // K (labels 0..K-1); 0: max training label + 1, at least 2
  std::string label_names;         // file: line i names label i (reports only)
  // Launch options: not saved in config.json (a run may be resumed with another world size).
  int np = 1;             // processes (MPI ranks); --batch stays the global batch
  std::string hostfile;   // passed to mpirun as --hostfile
  std::string inject_fault;  // KIND@STEP (tests of the non-finite paths); not saved either
  bool overwrite = false;          // a fresh run may replace tapegrad's files in a used run folder
  bool allow_data_change = false;  // a resumed run may train on data other than the checkpoint's
};
// out = j[key] when the key is there: options read back from a checkpoint's JSON keep their
// defaults for keys an older checkpoint lacks.
template <class T> void get_if(const json& j, const char* key, T& out) {
  if (j.contains(key)) out = j.at(key).get<T>();
}

json to_json(const TrainOptions& o);
TrainOptions train_options_from_json(const json& j);  // missing keys keep their defaults
tg::nn::TextClassifierOptions model_options(const TrainOptions& o, int64_t vocab_size);
json to_json(const tg::nn::TextClassifierOptions& m);
tg::nn::TextClassifierOptions model_options_from_json(const json& j);

// Where training stands; trainer.json.
struct TrainerState {
  int64_t epoch = 1;       // epoch in progress, 1-based
  int64_t batch_pos = 0;   // batches of `epoch` already trained on
  int64_t step = 0;        // optimizer steps so far (skipped ones included)
  int64_t examples = 0;    // training examples seen
  int64_t skipped_steps = 0;
  double loss_sum = 0;     // sum over examples of the training loss since the last evaluation
  int64_t loss_count = 0;
  double best_accuracy = -1;
  int64_t best_epoch = 0, best_step = 0;
  double last_dev_accuracy = -1, last_dev_loss = 0;
  double train_seconds = 0, elapsed = 0;
  std::string rng;         // tg::get_rng_state() bytes (rank 0's in a data-parallel run)
  int64_t world_size = 1;  // processes that trained up to here
  std::vector<std::string> rank_rng;  // world_size > 1: every rank's generator state, by rank
  std::vector<json> history;  // every evaluation record, in order
  // data_fingerprint() of the training rows used and of the dev rows ("" in older checkpoints).
  std::string train_data, dev_data;
  // The dev class report (macro_f1, per_class, confusion) of the best and of the last evaluation
  // (null before the first, and in checkpoints from before multi-class support).
  json best_report, last_report;
};
json to_json(const TrainerState& s);
TrainerState trainer_state_from_json(const json& j, const std::string& source);

// "rows N, fnv1a64 XXXXXXXXXXXXXXXX": the row count and a hash of every row (text and label) in
// order. A resumed run compares it with trainer.json's to notice other data.
std::string data_fingerprint(const std::vector<tg::data::Example>& rows);

// ---- memory ----
// A rough upper estimate, in bytes, of what a model needs: parameters (times `copies`: 1 to
// predict; weights, gradients and optimizer moments to train) plus the activations of a batch of
// `batch` sequences of `max_len` tokens (kept for backward when `training`). Computed in long
// double, so absurd sizes (2^62) give a huge number instead of overflowing.
struct MemoryNeed {
  long double parameters = 0;
  long double bytes = 0;
};
MemoryNeed estimate_memory(const tg::nn::TextClassifierOptions& m, int64_t batch, int64_t max_len, int copies,
                           bool training);
// The memory this process may use, in bytes: TG_TRAIN_MEMORY_LIMIT when set (tests), else the
// smaller of MemTotal (/proc/meminfo, or sysconf) and the cgroup limit; `source` says which.
long double memory_budget(std::string* source);
std::string format_bytes(long double bytes);  // "23.6 GB"

// ---- files ----
json read_json(const fs::path& path);                        // runtime_error naming the file
void write_file_synced(const fs::path& path, const std::string& bytes);  // write + fsync (no rename)
void write_file_atomic(const fs::path& path, const std::string& bytes);  // tmp + fsync + rename
void fsync_dir(const fs::path& dir);
// Replaces the checkpoint folder `dir` as a whole: write(staged) fills a staged folder, which is
// then swapped in, so readers (and a kill at any moment) see the old or the new one, never half of
// one; on failure the staged folder is removed and the old checkpoint kept (checkpoint_io.cpp).
void replace_checkpoint_folder(const fs::path& dir, const std::function<void(const fs::path&)>& write);
// A checkpoint folder: `dir` itself when it holds config.json, else dir/<prefer>, else the other
// of best/last. Throws std::runtime_error saying what was looked for.
fs::path resolve_checkpoint(const fs::path& dir, const std::string& prefer);

// ---- checkpoint integrity (manifest.cpp) ----
// Every checkpoint folder tapegrad writes holds manifest.json, written last (before the folder is
// swapped in): {"format": kManifestFormat, "files": {"<name>": {"bytes": N, "sha256": "<hex>"}}}
// for each file tapegrad wrote there. model.safetensors' metadata holds kManifestKey, so a
// deleted manifest is noticed; a checkpoint from before manifests has neither and only warns.
inline constexpr const char* kManifestName = "manifest.json";
inline constexpr const char* kManifestFormat = "tapegrad-checkpoint-manifest/1";
inline constexpr const char* kManifestKey = "tapegrad_manifest";
inline constexpr const char* kVocabKey = "tapegrad_vocab_sha256";  // model.safetensors metadata
std::string sha256_hex(std::string_view bytes);
std::string sha256_file(const fs::path& path);  // throws std::runtime_error naming the file
// dir/manifest.json listing `files` (names in dir), fsync'ed.
void write_manifest(const fs::path& dir, const std::vector<std::string>& files);
// Before a checkpoint is used: every file manifest.json lists exists with its size and SHA-256,
// the manifest lists every name in `required`, and the "model" section of config.json equals
// the model description saved in model.safetensors (also without a manifest). Throws
// std::runtime_error naming the file, what is wrong and what to do; `elsewhere` (may be empty)
// names another checkpoint to use instead. Files not listed (a user's notes) are not checked.
void verify_checkpoint(const fs::path& dir, const std::vector<std::string>& required, const std::string& elsewhere);
// "parameter 'NAME' [shape] holds NaN at [i, j]" for the first non-finite weight, or "".
std::string non_finite_weight(const tg::nn::Module& model);
// The other checkpoint of dir's run folder, as advice for a message ("" when there is none):
// for predict "--checkpoint RUN/last", for resume "--resume RUN/best --save NEW_FOLDER".
std::string other_checkpoint_advice(const fs::path& dir, bool resume);

struct Checkpoint {
  json config;
  tg::data::Vocab vocab;
  tg::nn::TextClassifierOptions model;
};
// config.json + vocab.txt, checked against each other.
Checkpoint read_checkpoint_meta(const fs::path& dir);
// The name of every label 0..classes-1: the lines of `file` ("" = the numbers themselves).
// Throws std::runtime_error naming the file when it has fewer than `classes` names.
std::vector<std::string> read_label_names(const std::string& file, int64_t classes);

// ---- model evaluation ----
// Binary models: logit and probability (of label 1). K > 2 classes: logits and probabilities
// (softmax) hold K values and probability is that of the predicted label.
struct Prediction {
  float logit = 0;
  double probability = 0;
  int label = 0;
  std::vector<float> logits;
  std::vector<double> probabilities;
};
double probability_of(float logit);
// Fills p (label = the first largest logit) from K > 2 logits.
void set_class_logits(Prediction& p, const float* logits, int64_t classes);
// Logits in the input's order, batches of `batch` in input order (the same for train-time dev
// evaluation and `predict`, so they agree bit for bit). With shards > 1 only the batches k with
// k % shards == shard are run (the others' predictions stay default): a data-parallel rank's
// share of an evaluation, each batch computed exactly as in the unsharded call.
std::vector<Prediction> predict_all(tg::nn::TextClassifier& model,
                                    const std::vector<tg::data::EncodedExample>& examples, int64_t batch,
                                    int shard = 0, int shards = 1);
std::string prediction_json(const Prediction& p, const std::string& text);

// Subcommands: return the process exit code. run_train takes main's argc/argv (argv[1] is
// "train"; it re-executes them under mpirun for --np); run_predict takes them from the subcommand.
// --threads: `requested` when positive; else TG_NUM_THREADS when set; else the available cores
// split evenly over the processes of this job on this machine (at least 1 each).
int train_threads(int requested, int world_size);
int run_train(int argc, char** argv);
int run_predict(int argc, char** argv);

}  // namespace tgcli
