#pragma once
// `tapegrad-train train`: SST-2-style binary text classification with checkpoints and resume.
// Shared by its files: train_options.cpp (command line, resume options, --np relaunch),
// train.cpp (the training loop), evaluate.cpp (dev evaluation and the final summary),
// checkpoint_io.cpp (checkpoints and the run folder) and parallel.cpp (the ranks).
#include <boost/program_options/variables_map.hpp>

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "cli.h"
#include "tapegrad/data/dataset.h"
#include "parallel.h"
#include "report.h"

namespace tgcli {

// An exclusive flock(2) on DIR/tapegrad.lock, held for the life of the run (released when the
// process ends, however it ends). The file holds the holder's pid.
class RunLock {
 public:
  RunLock() = default;
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;
  ~RunLock();
  // Creates dir when missing and takes the lock; throws std::runtime_error naming the pid of the
  // process that holds it.
  void acquire(const fs::path& dir);
  // Releases the lock; removes the lock file when acquire created it (a refused run leaves a
  // folder it does not own as it found it).
  void abandon();

 private:
  int fd_ = -1;
  fs::path path_;
  bool created_ = false;
};

struct Run {
  TrainOptions opts;
  json config;
  tg::data::Vocab vocab;
  std::vector<tg::data::Example> train_rows, dev_rows;
  std::vector<tg::data::EncodedExample> train, dev;
  std::vector<std::string> label_names;  // label i's name in reports (--label-names, else "i")
  std::unique_ptr<tg::nn::TextClassifier> model;
  std::unique_ptr<tg::optim::Optimizer> opt;
  TrainerState st;
  fs::path save;
  RunLock lock;  // on `save`, rank 0 only
  // A resumed run's data paths that came from the checkpoint's config.json rather than the
  // command line: checked before they are read, and their contents never quoted in errors.
  bool train_from_checkpoint = false, dev_from_checkpoint = false;
  fs::path config_source;              // a resumed run's config.json, for messages
  std::set<std::string> cli_given;     // options given on the command line
  // Seconds since the run began, over resumes: the elapsed time saved before this process
  // started plus this process's time since `started`.
  std::chrono::steady_clock::time_point started;
  double elapsed_before = 0;
  double elapsed() const {
    return elapsed_before + std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  }

  // A full checkpoint in dir (replaced as a whole), plus `extra` files (name, content).
  void write_checkpoint(const fs::path& dir, const std::vector<std::pair<std::string, std::string>>& extra = {});
  void write_metrics();
};

// Exit status of a run stopped by a non-finite value: the training loss, the weights after an
// update, or --max-skipped-steps consecutive steps with a non-finite gradient norm.
constexpr int kExitNonFinite = 3;

// --inject-fault KIND@STEP: a deliberate fault at optimizer step STEP (1-based, whole run), so
// that tests reach each non-finite path on every machine instead of hoping a huge --lr rounds
// the same way everywhere.
struct InjectedFault {
  enum class Kind { None, NanLoss, NanGrad, NanGradPersistent, NanWeight };
  Kind kind = Kind::None;
  int64_t step = 0;
  bool loss_at(int64_t s) const { return kind == Kind::NanLoss && s == step; }
  bool grad_at(int64_t s) const {
    return (kind == Kind::NanGrad && s == step) || (kind == Kind::NanGradPersistent && s >= step);
  }
  bool weight_at(int64_t s) const { return kind == Kind::NanWeight && s == step; }
};
// "" -> Kind::None; throws std::invalid_argument naming the value and the accepted forms.
InjectedFault parse_fault(const std::string& spec);

// Refuses (std::invalid_argument) a model and batch whose estimated memory exceeds the machine's
// (memory_budget), naming the option that contributes most, where its value came from, the
// estimate and the machine's memory.
void check_memory(const Run& r, int64_t vocab_size);

// Everything after the options are settled, on every rank; returns the exit code.
// resume_dir is re-resolved after open_run_folder's recovery (DIR/last.old may become DIR/last).
int train_body(Run& r, World& world, const boost::program_options::variables_map& vm, fs::path resume_dir);

// ---- evaluate.cpp ----
// Called on every rank at the same steps. Each rank predicts its share of the dev batches; the
// logits are gathered so every rank holds the same predictions and trainer state; only rank 0
// prints and writes (best/ when the accuracy improved, last/, the metrics).
void evaluate(Run& r, const World& world, Progress& progress, int64_t epoch, int64_t done, int64_t batches);
json final_summary(const Run& r, bool stopped, const World& world);

// ---- classes.cpp ----
// The labels of a batch as int64 class indices, for cross_entropy.
tg::Tensor class_targets(const tg::data::Batch& b);
// A dev class report (evaluate.cpp's: macro_f1, per_class) as a table, scores in %.
std::string class_table(const json& report);
// Warns on stderr about classes 0..K-1 that no training row has.
void warn_missing_classes(const Run& r);

// ---- checkpoint_io.cpp ----
// Loads resume_dir's weights, optimizer and trainer state into r (a --lr given on the command
// line replaces the saved one) and sets this rank's random generator. Returns a note for the
// start message when the checkpoint was written by another number of processes, else "".
std::string restore_checkpoint(Run& r, const World& world, const boost::program_options::variables_map& vm,
                               const fs::path& resume_dir);
// The run folder a checkpoint folder belongs to (its parent when it is named last, best,
// last.old or best.old), else "".
fs::path run_folder_of(const fs::path& checkpoint_dir);
// Rank 0, with --save, before anything is read: takes the lock on the run folder (creating it),
// refuses a folder that holds files of another run (unless --overwrite) and a --resume DIR/best
// that would overwrite a newer DIR/last, then finishes or undoes what a killed or failed write
// left (best.old/last.old without best/last are renamed back; *.tmp are removed).
void open_run_folder(Run& r, const fs::path& resume_dir);
// The same for any program's run folder (tapegrad-tag's too): `program` names it in messages.
void open_run_folder(RunLock& lock, const fs::path& dir, const fs::path& resume_dir, bool overwrite, bool quiet,
                     const std::string& program);
// replace_checkpoint_folder: see cli.h.
// Rank 0, with --save: a run resumed into another folder brings the source run's best/ along.
void prepare_run_folder(const Run& r, const fs::path& resume_dir);
// Every rank's generator state into the trainer state (a collective: every rank calls it).
void capture_rng(Run& r, const World& world);
// With --save, writes last/ (every rank calls it; rank 0 writes).
void save_last(Run& r, const World& world);
// What a failed run leaves behind, for its error message, and whether it can be resumed.
std::pair<std::string, bool> describe_last_checkpoint(const Run& r);

}  // namespace tgcli
