#pragma once
// Optimizer base: parameter groups, per-parameter state, hooks and (de)serialisation.
// Concrete optimizers (sgd.h, adam.h, rmsprop.h, adagrad.h) only implement update() and
// validate(); the update rules follow PyTorch 1.13's single-tensor implementations.
//
//   optim::Adam opt(model.parameters(), {.lr = 1e-3});
//   optim::ClipGradNorm clip(1.0);
//   opt.add_hook(clip);                            // hooks run in order before every update
//   opt.add_hook(optim::CosineAnnealingLR(10000));
//   for (...) { loss.backward(); opt.step(); opt.zero_grad(); log(clip.last_norm()); }
#include <cstdint>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "tapegrad/autograd/tensor.h"

namespace tg::optim {

// A field left at kUseDefault takes the optimizer's default when the group is added, so
// `ParamGroup{{w}, 0.1}` overrides only the learning rate.
inline constexpr double kUseDefault = std::numeric_limits<double>::quiet_NaN();

struct ParamGroup {
  std::vector<Tensor> params;
  double lr = kUseDefault;
  double weight_decay = kUseDefault;
  // Optimizer-specific hyper-parameters by name ("momentum", "beta1", "amsgrad" as 0/1, ...).
  // Missing keys are filled from the defaults; unknown keys are rejected, so typos fail loudly.
  std::map<std::string, double> options = {};
  // The lr schedulers derive the lr from (kept here so it is saved with the optimizer and a
  // resumed run gets the same schedule). NaN until a scheduler first runs on this group.
  double initial_lr = std::numeric_limits<double>::quiet_NaN();

  double option(const std::string& key) const;  // throws std::out_of_range naming the key
};

class Optimizer;
// Runs before every update: may read or rewrite gradients and group lrs (clipping, schedules).
using Hook = std::function<void(Optimizer&)>;

class Optimizer {
 public:
  virtual ~Optimizer();
  Optimizer(const Optimizer&) = delete;
  Optimizer& operator=(const Optimizer&) = delete;

  // Runs the hooks in the order they were added, then applies one update, then counts the step.
  void step();
  // Drops every gradient (undefined, not zero-filled), so the next backward starts afresh and
  // parameters that receive no gradient are skipped by the next step.
  void zero_grad();

  std::vector<ParamGroup>& param_groups() { return groups_; }
  const std::vector<ParamGroup>& param_groups() const { return groups_; }
  // Fills unset fields from the defaults, validates, and rejects a parameter already optimized.
  void add_param_group(ParamGroup group);
  std::vector<Tensor> parameters_with_grad() const;

  int add_hook(Hook h);        // returns an id for remove_hook
  void remove_hook(int id);    // unknown ids are ignored
  // Completed updates. Hooks run with step_count() == k before update k (0-based).
  int64_t step_count() const { return step_count_; }
  const std::string& name() const { return name_; }

  // Group hyper-parameters, step counts and every state tensor's bytes (hex), so a round trip
  // through JSON text resumes bit for bit. Parameters themselves are not included.
  nlohmann::json state_dict() const;
  // Loads into an optimizer built over the same parameter layout. Everything is checked first
  // (optimizer kind, group and parameter counts, shapes, dtypes, byte counts): on error it
  // throws std::invalid_argument and leaves this optimizer unchanged.
  void load_state_dict(const nlohmann::json& state);

 protected:
  // `defaults` holds the lr, weight_decay and the full option map (its params are ignored).
  // `buffer_names` names the per-parameter state tensors, in the order ParamState keeps them.
  Optimizer(std::string name, ParamGroup defaults, std::vector<std::string> buffer_names);
  // Derived constructors call this last, once validate() can be dispatched to them.
  void add_param_groups(std::vector<ParamGroup> groups);

  struct ParamState {
    int64_t step = 0;             // updates this parameter received (it may miss some)
    std::vector<Tensor> buffers;  // parallel to buffer_names(); undefined until first needed
  };

  virtual void update() = 0;
  // Throws std::invalid_argument("<Name>: <field> must be ..., got <value>") for a bad group.
  virtual void validate(const ParamGroup& group) const = 0;

  // State of params[i] of group g; grows with the group so appended parameters get fresh state.
  ParamState& state(size_t group, size_t index);
  // The gradient to use for `param`, or an undefined tensor when none flowed. Contiguous (copied
  // only if a caller installed a strided one) and checked against the parameter's dtype. Its
  // row-sparse mark (autograd/row_sparse.h) is dropped unless keep_row_mark: only an update that
  // never writes the gradient through raw pointers may keep it (Adam and SGD do, and use it).
  Tensor grad_for(const Tensor& param, bool keep_row_mark = false) const;
  // Buffer b of `st`, allocated as zeros (or `fill`) the first time it is asked for.
  Tensor& buffer(ParamState& st, size_t b, const Tensor& like, double fill = 0.0);
  const std::vector<std::string>& buffer_names() const { return buffer_names_; }

 private:
  std::string name_;
  ParamGroup defaults_;
  std::vector<std::string> buffer_names_;
  std::vector<ParamGroup> groups_;
  std::vector<std::vector<ParamState>> state_;
  // shared_ptr so a hook that removes itself is not destroyed while it runs.
  std::map<int, std::shared_ptr<Hook>> hooks_;
  int next_hook_id_ = 0;
  int64_t step_count_ = 0;
  // A captured step (autograd/capture.h) replays step() as code through this handle, which the
  // destructor clears: a replay after the optimizer is gone throws instead of touching it.
  std::shared_ptr<Optimizer*> self_ = std::make_shared<Optimizer*>(this);
  void step_now();
  std::vector<const void*> grad_storages() const;  // per parameter, in group order; null: none
};

// Formats a double the shortest way that reads back exactly (used in error messages).
std::string format_value(double v);

}  // namespace tg::optim
