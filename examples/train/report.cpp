#include "report.h"

#include "cli.h"  // write_file_atomic

#include <sys/stat.h>
#include <unistd.h>

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>

namespace tgcli {

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const auto s = static_cast<int64_t>(seconds + 0.5);
  if (s >= 3600) return fmt::format("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
  return fmt::format("{}:{:02}", s / 60, s % 60);
}

Progress::Progress(bool tty, bool quiet) : tty_(tty), quiet_(quiet) {}

void Progress::start_epoch(int64_t epoch, int64_t epochs, int64_t batches, int64_t first_batch) {
  epoch_ = epoch;
  epochs_ = epochs;
  batches_ = batches;
  first_ = first_batch;
  start_ = last_draw_ = Clock::now();
}

void Progress::update(int64_t done, int64_t examples, double loss, double grad_norm) {
  if (quiet_) return;
  const auto now = Clock::now();
  const double secs = std::chrono::duration<double>(now - start_).count();
  const int64_t steps = done - first_;
  const double rate = secs > 0 ? static_cast<double>(examples) / secs : 0.0;
  const double eta = steps > 0 ? secs / static_cast<double>(steps) * static_cast<double>(batches_ - done) : NAN;
  if (tty_) {
    if (done < batches_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
    last_draw_ = now;
    constexpr int kWidth = 28;
    const auto filled = static_cast<int>(kWidth * done / std::max<int64_t>(batches_, 1));
    std::string bar(static_cast<size_t>(filled), '=');
    if (filled < kWidth) bar += '>' + std::string(static_cast<size_t>(kWidth - filled - 1), ' ');
    fmt::print("\r\033[Kepoch {}/{} [{}] {}/{}  {:.0f} ex/s  loss {:.4f}  |g| {:.3g}  ETA {}", epoch_, epochs_, bar,
               done, batches_, rate, loss, grad_norm, format_duration(eta));
    std::fflush(stdout);
    bar_shown_ = true;
  } else {
    const int64_t every = std::max<int64_t>(1, (batches_ + 9) / 10);
    if (done % every != 0 && done != batches_) return;
    fmt::print("epoch {}/{} step {}/{} ({:.0f}%): loss {:.4f}, grad norm {:.3g}, {:.0f} ex/s, ETA {}\n", epoch_,
               epochs_, done, batches_, 100.0 * static_cast<double>(done) / static_cast<double>(batches_), loss,
               grad_norm, rate, format_duration(eta));
    std::fflush(stdout);
  }
}

void Progress::message(const std::string& line) {
  if (quiet_) return;
  if (tty_ && bar_shown_) {
    fmt::print("\r\033[K");
    bar_shown_ = false;
  }
  fmt::print("{}\n", line);
  std::fflush(stdout);
}

void Progress::end_epoch() {
  if (quiet_ || !tty_ || !bar_shown_) return;
  fmt::print("\n");
  std::fflush(stdout);
  bar_shown_ = false;
}

namespace {

bool executable_on_path(const std::string& name) {
  const char* path = std::getenv("PATH");
  if (!path) return false;
  std::stringstream ss(path);
  for (std::string dir; std::getline(ss, dir, ':');) {
    const std::string p = (dir.empty() ? "." : dir) + "/" + name;
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) && ::access(p.c_str(), X_OK) == 0) return true;
  }
  return false;
}

}  // namespace

const std::string& png_terminal() {
  static const std::string term = [] {
    if (!executable_on_path("gnuplot")) return std::string();
    std::FILE* p = ::popen("gnuplot -e 'set terminal' 2>&1 </dev/null", "r");
    if (!p) return std::string();
    std::string out;
    char buf[4096];
    for (size_t n; (n = std::fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
    ::pclose(p);
    auto has = [&](const char* t) {
      std::istringstream is(out);
      for (std::string line; std::getline(is, line);) {
        std::istringstream ls(line);
        std::string first;
        if (ls >> first && first == t) return true;
      }
      return false;
    };
    return std::string(has("pngcairo") ? "pngcairo" : has("png") ? "png" : "");
  }();
  return term;
}

std::string gp_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("''") : std::string(1, c);
  return out + "'";
}

void plot_metrics(const std::filesystem::path& dir, const std::vector<nlohmann::json>& history,
                  const std::string& title, const std::string& loss_label) {
  plot_history(dir, history, title, loss_label, "dev accuracy",
               {{"train_loss", "train loss", false}, {"dev_loss", "dev loss", false},
                {"dev_accuracy", "dev accuracy", true}});
}

void plot_history(const std::filesystem::path& dir, const std::vector<nlohmann::json>& history,
                  const std::string& title, const std::string& ylabel, const std::string& y2label,
                  const std::vector<PlotSeries>& series) {
  static bool warned = false;
  auto warn = [&](const std::string& why) {
    if (!warned) fmt::print(stderr, "tapegrad-train: warning: {}; metrics.png is not written\n", why);
    warned = true;
  };
  if (history.empty()) return;
  const std::string& term = png_terminal();
  if (term.empty()) {
    warn(executable_on_path("gnuplot") ? "gnuplot has no png terminal"
                                       : "gnuplot not found (Debian: apt-get install gnuplot-nox)");
    return;
  }
  const std::filesystem::path out = dir / "metrics.png", tmp = dir / "metrics.png.tmp";
  std::string script = fmt::format(
      "set terminal {} size 900,560\nset output {}\nset title {} noenhanced\nset xlabel 'optimizer step'\n"
      "set ylabel {}\nset grid\nset key outside bottom center horizontal\n",
      term, gp_quote(tmp.string()), gp_quote(title), gp_quote(ylabel));
  if (!y2label.empty()) script += fmt::format("set y2label {}\nset ytics nomirror\nset y2tics\n", gp_quote(y2label));
  script += "$m << EOD\n";
  for (const auto& r : history) {
    script += fmt::format("{}", r.value("step", int64_t{0}));
    for (const auto& s : series) {
      const auto it = r.find(s.key);
      script += it != r.end() && it->is_number() ? fmt::format(" {:.9g}", it->get<double>()) : std::string(" NaN");
    }
    script += "\n";
  }
  script += "EOD\nplot ";
  for (size_t k = 0; k < series.size(); ++k)
    script += fmt::format("{}$m using 1:{}{} with linespoints title {}", k ? ", " : "", k + 2,
                          series[k].right_axis ? " axes x1y2" : "", gp_quote(series[k].title));
  script += "\nset output\n";
  std::FILE* p = ::popen("gnuplot >/dev/null 2>&1", "w");
  if (!p) return warn("cannot start gnuplot");
  std::fwrite(script.data(), 1, script.size(), p);
  const int rc = ::pclose(p);
  std::error_code ec;
  if (rc != 0 || !std::filesystem::exists(tmp, ec)) {
    std::filesystem::remove(tmp, ec);
    return warn("gnuplot failed");
  }
  std::filesystem::rename(tmp, out, ec);
  if (ec) warn("cannot rename " + tmp.string() + ": " + ec.message());
}

std::vector<ClassScore> class_scores(const ConfusionMatrix& confusion) {
  const size_t C = confusion.size();
  std::vector<ClassScore> s(C);
  for (size_t g = 0; g < C; ++g)
    for (size_t p = 0; p < C; ++p) {
      s[g].support += confusion[g][p];
      s[p].predicted += confusion[g][p];
    }
  for (size_t c = 0; c < C; ++c) {
    const auto hit = static_cast<double>(confusion[c][c]);
    s[c].precision = s[c].predicted ? hit / static_cast<double>(s[c].predicted) : 0.0;
    s[c].recall = s[c].support ? hit / static_cast<double>(s[c].support) : 0.0;
    const double pr = s[c].precision + s[c].recall;
    s[c].f1 = pr > 0 ? 2 * s[c].precision * s[c].recall / pr : 0.0;
  }
  return s;
}

double macro_f1(const std::vector<ClassScore>& scores) {
  double sum = 0;
  int64_t present = 0;  // classes that occur in the gold data or the predictions
  for (const auto& c : scores)
    if (c.support || c.predicted) sum += c.f1, ++present;
  return present ? sum / static_cast<double>(present) : 0.0;
}

void write_confusion(const std::filesystem::path& dir, const ConfusionMatrix& confusion,
                     const std::vector<std::string>& names, const std::string& title, const std::string& program,
                     const std::string& row_label) {
  namespace fs = std::filesystem;
  const size_t C = names.size();
  std::string tsv = "gold\\predicted";
  for (const auto& t : names) tsv += "\t" + t;
  tsv += "\n";
  for (size_t g = 0; g < C; ++g) {
    tsv += names[g];
    for (size_t p = 0; p < C; ++p) tsv += fmt::format("\t{}", confusion[g][p]);
    tsv += "\n";
  }
  write_file_atomic(dir / "confusion.tsv", tsv);
  const std::string& term = png_terminal();
  if (term.empty()) {
    fmt::print(stderr, "{}: warning: gnuplot (with a png terminal) not found; confusion.png is not written\n", program);
    return;
  }
  const fs::path tmp = dir / "confusion.png.tmp";
  std::string ticks;
  for (size_t c = 0; c < C; ++c) ticks += fmt::format("{}{} {}", c ? ", " : "", gp_quote(names[c]), c);
  std::string script = fmt::format(
      "set terminal {} size 820,760\nset output {}\nset title {} noenhanced\nset xlabel 'predicted'\n"
      "set ylabel 'gold'\nset xtics ({}) rotate by 90 right noenhanced\nset ytics ({}) noenhanced\n"
      "set xrange [-0.5:{}.5]\nset yrange [{}.5:-0.5]\nset cbrange [0:1]\nset cblabel {}\n"
      "set palette defined (0 'white', 0.02 '#dbe9f6', 0.3 '#6baed6', 1 '#08306b')\nset view map\n$m << EOD\n",
      term, gp_quote(tmp.string()), gp_quote(title), ticks, ticks, C - 1, C - 1, gp_quote(row_label));
  std::string light, dark;  // cell counts, drawn black on light cells and white on dark ones
  for (size_t g = 0; g < C; ++g) {
    int64_t row = 0;
    for (size_t p = 0; p < C; ++p) row += confusion[g][p];
    for (size_t p = 0; p < C; ++p) {
      const int64_t n = confusion[g][p];
      script += fmt::format("{}{:.6g}", p ? " " : "", row ? static_cast<double>(n) / static_cast<double>(row) : 0.0);
      if (n) (row && 2 * n > row ? dark : light) += fmt::format("{} {} {}\n", p, g, n);
    }
    script += "\n";
  }
  script += "EOD\n$l << EOD\n" + light + "EOD\n$d << EOD\n" + dark +
            "EOD\nplot $m matrix with image notitle, $l using 1:2:3 with labels font ',7' tc 'black' notitle, "
            "$d using 1:2:3 with labels font ',7' tc 'white' notitle\nset output\n";
  std::FILE* p = ::popen("gnuplot >/dev/null 2>&1", "w");
  if (!p) return;
  std::fwrite(script.data(), 1, script.size(), p);
  const int rc = ::pclose(p);
  std::error_code ec;
  if (rc != 0 || !fs::exists(tmp, ec)) {
    fs::remove(tmp, ec);
    fmt::print(stderr, "{}: warning: gnuplot failed; confusion.png is not written\n", program);
    return;
  }
  fs::rename(tmp, dir / "confusion.png", ec);
}

}  // namespace tgcli
