#include "tapegrad/nn/module.h"

#include <fmt/format.h>

#include <set>
#include <stdexcept>
#include <unordered_map>
#include <unordered_set>

#include "tapegrad/autograd/ops.h"
#include "tapegrad/autograd/tape.h"

namespace tg::nn {

Module::~Module() = default;

void Module::check_new_name(const std::string& name, const char* what) const {
  if (name.empty() || name.find('.') != std::string::npos)
    throw std::invalid_argument(fmt::format("{}: name '{}' must be non-empty and contain no '.'", what, name));
  auto taken = [&](const auto& list, auto key) {
    for (auto& e : list)
      if (key(e) == name) return true;
    return false;
  };
  if (taken(params_, [](const Slot& s) { return s.name; }) || taken(buffers_, [](const Slot& s) { return s.name; }) ||
      taken(children_, [](const auto& c) { return c.first; }))
    throw std::invalid_argument(fmt::format("{}: name '{}' is already registered in this module", what, name));
}

Tensor& Module::register_parameter(std::string name, Tensor t) {
  check_new_name(name, "register_parameter");
  if (t.defined()) {
    if (!t.is_leaf())
      throw std::invalid_argument(fmt::format("register_parameter: '{}' is the output of a recorded op; parameters "
                                              "must be leaves (pass t.detach())",
                                              name));
    if (!is_floating(t.dtype()))
      throw std::invalid_argument(fmt::format("register_parameter: '{}' is {}; parameters must be float32 or float64",
                                              name, dtype_name(t.dtype())));
    t.requires_grad_();
  }
  params_.push_back({std::move(name), std::make_unique<Tensor>(std::move(t))});
  return *params_.back().value;
}

Tensor& Module::register_buffer(std::string name, Tensor t) {
  check_new_name(name, "register_buffer");
  buffers_.push_back({std::move(name), std::make_unique<Tensor>(std::move(t))});
  return *buffers_.back().value;
}

void Module::add_child(std::string name, std::shared_ptr<Module> m) {
  check_new_name(name, "register_module");
  if (!m) throw std::invalid_argument(fmt::format("register_module: '{}' is a null module", name));
  if (m.get() == this) throw std::invalid_argument(fmt::format("register_module: '{}' is the module itself", name));
  m->set_name(name_.empty() ? name : name_ + "." + name);
  children_.emplace_back(std::move(name), std::move(m));
}

// Recursion is fine: module trees are a few levels deep.
void Module::set_name(std::string name) {
  name_ = std::move(name);
  for (auto& [key, child] : children_) child->set_name(name_.empty() ? key : name_ + "." + key);
}

// Recursion is fine: module trees are a few levels deep.
void Module::collect(const std::string& prefix, bool buffers, SlotList& out) const {
  for (auto& s : buffers ? buffers_ : params_)
    if (s.value->defined()) out.emplace_back(prefix + s.name, s.value.get());
  for (auto& [name, child] : children_) child->collect(prefix + name + ".", buffers, out);
}

namespace {
std::vector<std::pair<std::string, Tensor>> unique_tensors(const std::vector<std::pair<std::string, Tensor*>>& slots) {
  std::vector<std::pair<std::string, Tensor>> out;
  std::unordered_set<const TensorImpl*> seen;
  for (auto& [name, t] : slots)
    if (seen.insert(t->impl()).second) out.emplace_back(name, *t);
  return out;
}
std::vector<Tensor> values(std::vector<std::pair<std::string, Tensor>> named) {
  std::vector<Tensor> out;
  out.reserve(named.size());
  for (auto& e : named) out.push_back(std::move(e.second));
  return out;
}
}  // namespace

std::vector<std::pair<std::string, Tensor>> Module::named_parameters() const {
  SlotList slots;
  collect("", false, slots);
  return unique_tensors(slots);
}
std::vector<std::pair<std::string, Tensor>> Module::named_buffers() const {
  SlotList slots;
  collect("", true, slots);
  return unique_tensors(slots);
}
std::vector<Tensor> Module::parameters() const { return values(named_parameters()); }
std::vector<Tensor> Module::buffers() const { return values(named_buffers()); }

void Module::train(bool on) {
  training_ = on;
  for (auto& c : children_) c.second->train(on);
}

void Module::zero_grad() {
  for (auto& p : parameters()) p.zero_grad();
}

void Module::to(DType dtype) {
  if (!is_floating(dtype))
    throw std::invalid_argument(fmt::format("Module::to: target dtype must be float32 or float64, got {}",
                                            dtype_name(dtype)));
  SlotList slots;
  collect("", false, slots);
  collect("", true, slots);
  NoGradGuard no_grad;
  // Keyed by the old tensor so every slot that shared it gets the same new one.
  std::unordered_map<const TensorImpl*, Tensor> converted;
  for (auto& [name, slot] : slots) {
    if (!is_floating(slot->dtype()) || slot->dtype() == dtype) continue;
    auto it = converted.find(slot->impl());
    if (it == converted.end()) {
      Tensor t = slot->detach().to(dtype);
      if (slot->requires_grad()) t.requires_grad_();
      if (slot->requires_grad() && slot->grad().defined()) t.set_grad(slot->grad().to(dtype));
      it = converted.emplace(slot->impl(), t).first;
    }
    *slot = it->second;
  }
}

std::map<std::string, Tensor> Module::state_dict() const {
  SlotList slots;
  collect("", false, slots);
  collect("", true, slots);
  std::map<std::string, Tensor> out;
  NoGradGuard no_grad;
  for (auto& [name, t] : slots) out.emplace(name, t->detach().clone());
  return out;
}

void Module::load_state_dict(const std::map<std::string, Tensor>& state, bool strict) {
  SlotList slots;
  collect("", false, slots);
  collect("", true, slots);
  std::vector<std::string> missing, mismatched;
  std::set<std::string> known;
  for (auto& [name, slot] : slots) {
    known.insert(name);
    auto it = state.find(name);
    if (it == state.end()) {
      missing.push_back(name);
    } else if (!it->second.defined()) {
      mismatched.push_back(fmt::format("{}: expected shape {}, got an undefined tensor", name, slot->shape().str()));
    } else if (!(it->second.shape() == slot->shape())) {
      mismatched.push_back(
          fmt::format("{}: expected shape {}, got {}", name, slot->shape().str(), it->second.shape().str()));
    }
  }
  std::vector<std::string> unexpected;
  for (auto& [name, t] : state)
    if (!known.count(name)) unexpected.push_back(name);
  std::string errors;
  if (strict && !missing.empty()) errors += fmt::format("\n  missing keys: {}", fmt::join(missing, ", "));
  if (strict && !unexpected.empty()) errors += fmt::format("\n  unexpected keys: {}", fmt::join(unexpected, ", "));
  for (auto& m : mismatched) errors += "\n  shape mismatch for " + m;
  if (!errors.empty())
    throw std::invalid_argument("load_state_dict: nothing was loaded because of these errors:" + errors);
  NoGradGuard no_grad;
  for (auto& [name, slot] : slots) {
    auto it = state.find(name);
    if (it == state.end()) continue;
    Tensor dst = *slot;  // in place: the model's and any optimizer's handles keep working
    copy_(dst, it->second);
  }
}

}  // namespace tg::nn
