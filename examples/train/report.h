#pragma once
// What `train` shows while it runs: a progress bar on a terminal, periodic lines otherwise, and
// the metrics plot.
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace tgcli {

class Progress {
 public:
  // tty: redraw one line in place; otherwise print a line about every 10% of the epoch.
  Progress(bool tty, bool quiet);
  void start_epoch(int64_t epoch, int64_t epochs, int64_t batches, int64_t first_batch);
  // After batch `done` (1-based count within the epoch) of the epoch.
  void update(int64_t done, int64_t examples_since_start, double mean_loss, double grad_norm);
  // A full line (clears the bar first on a terminal).
  void message(const std::string& line);
  void end_epoch();

 private:
  using Clock = std::chrono::steady_clock;
  bool tty_, quiet_, bar_shown_ = false;
  int64_t epoch_ = 0, epochs_ = 0, batches_ = 0, first_ = 0;
  Clock::time_point start_, last_draw_;
};

std::string format_duration(double seconds);  // "1:05", "1:02:03"

// "pngcairo", "png" or "" (no gnuplot, or no png terminal). Asked once.
const std::string& png_terminal();
std::string gp_quote(const std::string& s);  // a gnuplot single-quoted string

// Writes dir/metrics.png from the evaluation records with gnuplot (pngcairo, else png). Warns
// once on stderr and does nothing when gnuplot is missing or fails.
void plot_metrics(const std::filesystem::path& dir, const std::vector<nlohmann::json>& history,
                  const std::string& title, const std::string& loss_label = "loss (binary cross-entropy)");

// The same for any records: one line per series (a numeric key of the records, NaN where a
// record lacks it) against "step"; right_axis series use the y2 axis (y2label, "" = none).
struct PlotSeries {
  std::string key, title;
  bool right_axis = false;
};
void plot_history(const std::filesystem::path& dir, const std::vector<nlohmann::json>& history,
                  const std::string& title, const std::string& ylabel, const std::string& y2label,
                  const std::vector<PlotSeries>& series);

// Per-class scores from a confusion matrix [gold][predicted] (0 where a class is never
// predicted / never gold), and their macro average over the classes that occur in either.
struct ClassScore {
  double precision = 0, recall = 0, f1 = 0;
  int64_t support = 0, predicted = 0;
};
using ConfusionMatrix = std::vector<std::vector<int64_t>>;
std::vector<ClassScore> class_scores(const ConfusionMatrix& confusion);
double macro_f1(const std::vector<ClassScore>& scores);

// dir/confusion.tsv and dir/confusion.png (a gnuplot heat map, rows normalised to the fraction of
// the gold class, counts in the cells), both written atomically. `program` names the warning
// printed when gnuplot (with a png terminal) is missing or fails; the TSV is written anyway.
void write_confusion(const std::filesystem::path& dir, const ConfusionMatrix& confusion,
                     const std::vector<std::string>& names, const std::string& title, const std::string& program,
                     const std::string& row_label = "fraction of the gold class");

}  // namespace tgcli
