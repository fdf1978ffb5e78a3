#include "tapegrad/optim/scheduler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <stdexcept>

#include "tapegrad/optim/optimizer.h"

namespace tg::optim {

namespace {

template <class Sched> void apply(const Sched& s, Optimizer& opt) {
  const int64_t k = opt.step_count();
  for (auto& g : opt.param_groups()) {
    if (std::isnan(g.initial_lr)) g.initial_lr = g.lr;
    g.lr = s.lr_at(k, g.initial_lr);
  }
}

void require(bool ok, const char* who, const char* what, double got) {
  if (!ok) throw std::invalid_argument(std::string(who) + ": " + what + ", got " + format_value(got));
}

}  // namespace

StepLR::StepLR(int64_t step_size, double gamma) : step_size_(step_size), gamma_(gamma) {
  require(step_size >= 1, "StepLR", "step_size must be >= 1", static_cast<double>(step_size));
  require(gamma >= 0, "StepLR", "gamma must be >= 0", gamma);
}
double StepLR::lr_at(int64_t k, double base) const {
  return base * std::pow(gamma_, static_cast<double>(k / step_size_));
}
void StepLR::operator()(Optimizer& opt) const { apply(*this, opt); }

ExponentialLR::ExponentialLR(double gamma) : gamma_(gamma) {
  require(gamma >= 0, "ExponentialLR", "gamma must be >= 0", gamma);
}
double ExponentialLR::lr_at(int64_t k, double base) const { return base * std::pow(gamma_, static_cast<double>(k)); }
void ExponentialLR::operator()(Optimizer& opt) const { apply(*this, opt); }

CosineAnnealingLR::CosineAnnealingLR(int64_t T_max, double eta_min) : T_max_(T_max), eta_min_(eta_min) {
  require(T_max >= 1, "CosineAnnealingLR", "T_max must be >= 1", static_cast<double>(T_max));
  require(eta_min >= 0, "CosineAnnealingLR", "eta_min must be >= 0", eta_min);
}
double CosineAnnealingLR::lr_at(int64_t k, double base) const {
  return eta_min_ + (base - eta_min_) * (1 + std::cos(std::numbers::pi * static_cast<double>(k) /
                                                      static_cast<double>(T_max_))) / 2;
}
void CosineAnnealingLR::operator()(Optimizer& opt) const { apply(*this, opt); }

LinearWarmup::LinearWarmup(int64_t warmup_steps, double start_factor)
    : warmup_steps_(warmup_steps), start_factor_(start_factor) {
  require(warmup_steps >= 0, "LinearWarmup", "warmup_steps must be >= 0", static_cast<double>(warmup_steps));
  require(start_factor >= 0 && start_factor <= 1, "LinearWarmup", "start_factor must be in [0, 1]", start_factor);
}
double LinearWarmup::lr_at(int64_t k, double base) const {
  if (k < warmup_steps_)
    return base * (start_factor_ + (1.0 - start_factor_) * static_cast<double>(k) / static_cast<double>(warmup_steps_));
  return after_ ? after_(k - warmup_steps_, base) : base;
}
void LinearWarmup::operator()(Optimizer& opt) const { apply(*this, opt); }

// ---- ReduceLROnPlateau ------------------------------------------------------------------------

ReduceLROnPlateau::ReduceLROnPlateau(Optimizer& opt, PlateauOptions o) : opt_(&opt), o_(o), st_(std::make_shared<State>()) {
  const char* who = "ReduceLROnPlateau";
  require(o.factor >= 0 && o.factor < 1, who, "factor must be in [0, 1)", o.factor);
  require(o.patience >= 0, who, "patience must be >= 0", static_cast<double>(o.patience));
  require(o.threshold >= 0, who, "threshold must be >= 0", o.threshold);
  require(o.cooldown >= 0, who, "cooldown must be >= 0", static_cast<double>(o.cooldown));
  require(o.min_lr >= 0, who, "min_lr must be >= 0", o.min_lr);
  require(o.eps >= 0, who, "eps must be >= 0", o.eps);
  st_->best = o.mode == PlateauMode::Min ? std::numeric_limits<double>::infinity()
                                         : -std::numeric_limits<double>::infinity();
}

bool ReduceLROnPlateau::is_better(double a, double best) const {
  const bool rel = o_.threshold_mode == ThresholdMode::Rel;
  if (o_.mode == PlateauMode::Min) return rel ? a < best * (1.0 - o_.threshold) : a < best - o_.threshold;
  return rel ? a > best * (o_.threshold + 1.0) : a > best + o_.threshold;
}

bool ReduceLROnPlateau::report(double metric) {
  State& s = *st_;
  ++s.last_epoch;
  if (is_better(metric, s.best)) {
    s.best = metric;
    s.num_bad_epochs = 0;
  } else {
    ++s.num_bad_epochs;
  }
  if (s.cooldown_counter > 0) {
    --s.cooldown_counter;
    s.num_bad_epochs = 0;  // bad epochs during cooldown don't count
  }
  bool reduced = false;
  if (s.num_bad_epochs > o_.patience) {
    for (auto& g : opt_->param_groups()) {
      const double new_lr = std::max(g.lr * o_.factor, o_.min_lr);
      if (g.lr - new_lr > o_.eps) {
        g.lr = new_lr;
        reduced = true;
      }
    }
    s.cooldown_counter = o_.cooldown;
    s.num_bad_epochs = 0;
  }
  return reduced;
}

nlohmann::json ReduceLROnPlateau::state_dict() const {
  const State& s = *st_;
  // best starts at +-inf, which JSON numbers cannot hold.
  nlohmann::json best = std::isfinite(s.best) ? nlohmann::json(s.best)
                                              : nlohmann::json(std::isnan(s.best) ? "nan" : s.best > 0 ? "inf" : "-inf");
  return {{"scheduler", "ReduceLROnPlateau"}, {"best", best}, {"num_bad_epochs", s.num_bad_epochs},
          {"cooldown_counter", s.cooldown_counter}, {"last_epoch", s.last_epoch}};
}

void ReduceLROnPlateau::load_state_dict(const nlohmann::json& j) {
  const std::string pre = "ReduceLROnPlateau::load_state_dict: ";
  try {
    if (j.at("scheduler").get<std::string>() != "ReduceLROnPlateau")
      throw std::invalid_argument(pre + "state is for " + j.at("scheduler").get<std::string>());
    State s;
    const auto& b = j.at("best");
    if (b.is_number()) s.best = b.get<double>();
    else if (b == "inf") s.best = std::numeric_limits<double>::infinity();
    else if (b == "-inf") s.best = -std::numeric_limits<double>::infinity();
    else if (b == "nan") s.best = std::numeric_limits<double>::quiet_NaN();
    else throw std::invalid_argument(pre + "best is not a number: " + b.dump());
    s.num_bad_epochs = j.at("num_bad_epochs").get<int64_t>();
    s.cooldown_counter = j.at("cooldown_counter").get<int64_t>();
    s.last_epoch = j.at("last_epoch").get<int64_t>();
    if (s.num_bad_epochs < 0 || s.cooldown_counter < 0 || s.last_epoch < 0)
      throw std::invalid_argument(pre + "negative counter in " + j.dump());
    *st_ = s;
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(pre + "malformed state: " + e.what());
  }
}

}  // namespace tg::optim
