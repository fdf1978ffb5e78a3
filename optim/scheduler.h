#pragma once
// Learning-rate schedules.
//
// StepLR, ExponentialLR, CosineAnnealingLR and LinearWarmup count OPTIMIZER STEPS. They are hooks
// (opt.add_hook(StepLR(100))): before update k (0-based, k == opt.step_count()) each sets every
// group's lr to lr_at(k, base), where base is the group's initial_lr, captured from its lr the
// first time a scheduler runs on it. Both k and initial_lr are part of Optimizer::state_dict, so
// these schedulers hold no state of their own and a resumed run continues the schedule exactly.
// They set the lr outright (closed forms): attach one per optimizer; to warm up into another
// schedule, pass it to LinearWarmup.
//
// ReduceLROnPlateau counts EPOCHS: the training loop calls report(metric) once per evaluation
// and it multiplies the groups' lrs by `factor` when the metric stops improving. Its state is
// saved separately (state_dict/load_state_dict). Don't combine it with a per-step scheduler,
// which would overwrite the reduced lr.
#include <concepts>
#include <cstdint>
#include <functional>
#include <memory>

#include <nlohmann/json.hpp>

namespace tg::optim {

class Optimizer;

// lr = base * gamma^floor(k / step_size)
class StepLR {
 public:
  explicit StepLR(int64_t step_size, double gamma = 0.1);
  double lr_at(int64_t step, double base_lr) const;
  void operator()(Optimizer& opt) const;

 private:
  int64_t step_size_;
  double gamma_;
};

// lr = base * gamma^k
class ExponentialLR {
 public:
  explicit ExponentialLR(double gamma);
  double lr_at(int64_t step, double base_lr) const;
  void operator()(Optimizer& opt) const;

 private:
  double gamma_;
};

// lr = eta_min + (base - eta_min) * (1 + cos(pi * k / T_max)) / 2 (PyTorch's closed form; past
// T_max it rises again, as PyTorch's does).
class CosineAnnealingLR {
 public:
  explicit CosineAnnealingLR(int64_t T_max, double eta_min = 0.0);
  double lr_at(int64_t step, double base_lr) const;
  void operator()(Optimizer& opt) const;

 private:
  int64_t T_max_;
  double eta_min_;
};

// lr = base * (start_factor + (1 - start_factor) * k / warmup_steps) for k < warmup_steps, then
// base, or, when given `after`, after.lr_at(k - warmup_steps, base): the following schedule
// starts its own count when warm-up ends (like torch's SequentialLR).
class LinearWarmup {
 public:
  LinearWarmup(int64_t warmup_steps, double start_factor);
  template <class Schedule>
    requires requires(const Schedule& s) { { s.lr_at(int64_t{0}, 0.0) } -> std::convertible_to<double>; }
  LinearWarmup(int64_t warmup_steps, double start_factor, Schedule after) : LinearWarmup(warmup_steps, start_factor) {
    after_ = [after](int64_t k, double base) { return after.lr_at(k, base); };
  }
  double lr_at(int64_t step, double base_lr) const;
  void operator()(Optimizer& opt) const;

 private:
  int64_t warmup_steps_;
  double start_factor_;
  std::function<double(int64_t, double)> after_;
};

enum class PlateauMode { Min, Max };
enum class ThresholdMode { Rel, Abs };

struct PlateauOptions {
  PlateauMode mode = PlateauMode::Min;   // Min: lower metric is better (a loss)
  double factor = 0.1;                   // new lr = max(lr * factor, min_lr)
  int64_t patience = 10;                 // reports without improvement tolerated before reducing
  double threshold = 1e-4;               // Rel: must beat best * (1 -/+ threshold); Abs: best -/+ threshold
  ThresholdMode threshold_mode = ThresholdMode::Rel;
  int64_t cooldown = 0;                  // reports to wait after a reduction before counting again
  double min_lr = 0.0;
  double eps = 1e-8;                     // reductions smaller than this are skipped
};

// torch.optim.lr_scheduler.ReduceLROnPlateau. Holds a reference to `opt`, which must outlive it;
// copies share their state.
class ReduceLROnPlateau {
 public:
  explicit ReduceLROnPlateau(Optimizer& opt, PlateauOptions options = {});
  // Call once per epoch (or evaluation). Returns true when it lowered some group's lr.
  bool report(double metric);

  double best() const { return st_->best; }
  int64_t num_bad_epochs() const { return st_->num_bad_epochs; }
  int64_t epochs() const { return st_->last_epoch; }  // reports so far

  nlohmann::json state_dict() const;
  void load_state_dict(const nlohmann::json& state);  // throws std::invalid_argument, loads nothing on error

 private:
  struct State {
    double best = 0;
    int64_t num_bad_epochs = 0, cooldown_counter = 0, last_epoch = 0;
  };
  bool is_better(double a, double best) const;

  Optimizer* opt_;
  PlateauOptions o_;
  std::shared_ptr<State> st_;
};

}  // namespace tg::optim
