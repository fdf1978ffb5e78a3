#include "tapegrad/optim/optimizer.h"

#include <charconv>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <unordered_set>

#include <fmt/format.h>

#include "tapegrad/autograd/capture.h"
#include "tapegrad/autograd/kernel_bridge.h"
#include "tapegrad/autograd/row_sparse.h"

namespace tg::optim {

using nlohmann::json;

std::string format_value(double v) { return fmt::format("{}", v); }

double ParamGroup::option(const std::string& key) const {
  auto it = options.find(key);
  if (it == options.end()) throw std::out_of_range("ParamGroup: no option '" + key + "'");
  return it->second;
}

Optimizer::Optimizer(std::string name, ParamGroup defaults, std::vector<std::string> buffer_names)
    : name_(std::move(name)), defaults_(std::move(defaults)), buffer_names_(std::move(buffer_names)) {
  defaults_.params.clear();
}

Optimizer::~Optimizer() { *self_ = nullptr; }

void Optimizer::add_param_groups(std::vector<ParamGroup> groups) {
  for (auto& g : groups) add_param_group(std::move(g));
}

void Optimizer::add_param_group(ParamGroup group) {
  if (std::isnan(group.lr)) group.lr = defaults_.lr;
  if (std::isnan(group.weight_decay)) group.weight_decay = defaults_.weight_decay;
  for (const auto& [key, value] : group.options)
    if (!defaults_.options.count(key))
      throw std::invalid_argument(name_ + ": unknown option '" + key + "'");
  for (const auto& [key, value] : defaults_.options) group.options.try_emplace(key, value);
  validate(group);

  std::unordered_set<const TensorImpl*> seen;
  for (const auto& g : groups_)
    for (const auto& p : g.params) seen.insert(p.impl());
  for (size_t i = 0; i < group.params.size(); ++i) {
    const Tensor& p = group.params[i];
    const std::string where = fmt::format("{}: parameter {} of group {}", name_, i, groups_.size());
    if (!p.defined()) throw std::invalid_argument(where + " is an undefined tensor");
    if (!is_floating(p.dtype()))
      throw std::invalid_argument(where + " is " + dtype_name(p.dtype()) + "; only float tensors can be optimized");
    if (!p.is_leaf()) throw std::invalid_argument(where + " is not a leaf; optimize the tensor you created instead");
    // Kernels walk raw pointers; a strided view would update the wrong elements.
    if (!p.is_contiguous()) throw std::invalid_argument(where + " is not contiguous");
    if (!seen.insert(p.impl()).second)
      throw std::invalid_argument(where + " appears more than once among the optimized parameters");
  }
  groups_.push_back(std::move(group));
  state_.emplace_back();
}

std::vector<Tensor> Optimizer::parameters_with_grad() const {
  std::vector<Tensor> out;
  for (const auto& g : groups_)
    for (const auto& p : g.params)
      if (p.requires_grad() && tg::detail::param_grad(p).defined()) out.push_back(p);
  return out;
}

void Optimizer::zero_grad() {
  for (auto& g : groups_)
    for (auto& p : g.params) p.zero_grad();
}

int Optimizer::add_hook(Hook h) {
  if (!h) throw std::invalid_argument(name_ + ": add_hook got an empty function");
  hooks_.emplace(next_hook_id_, std::make_shared<Hook>(std::move(h)));
  return next_hook_id_++;
}

void Optimizer::remove_hook(int id) { hooks_.erase(id); }

void Optimizer::step() {
  if (!tg::detail::capturing()) return step_now();
  // Captured: run now, and at each replay run again as code (hooks, the step count and the
  // update's scalars live on the host), on the gradients the captured backward rewrites.
  tg::detail::run_as_code([this] { step_now(); }, [self = self_, seen = grad_storages()] {
    Optimizer* o = *self;
    if (!o)
      throw tg::CaptureError("CapturedStep::replay: the optimizer this step was captured with has been destroyed");
    const std::vector<const void*> now = o->grad_storages();
    if (now.size() != seen.size())
      throw tg::CaptureError(fmt::format("CapturedStep::replay: {}: parameters were added since the step was "
                                         "captured; capture it again",
                                         o->name_));
    for (size_t i = 0; i < now.size(); ++i)
      if (now[i] != seen[i])
        throw tg::CaptureError(fmt::format(
            "CapturedStep::replay: {}: parameter {} no longer has the gradient tensor the captured step wrote "
            "(zero_grad() or a backward outside the captured function replaced it), so the update would not "
            "see the replayed gradients. Call zero_grad() inside the captured function, or capture again",
            o->name_, i));
    o->step_now();
  });
}

std::vector<const void*> Optimizer::grad_storages() const {
  std::vector<const void*> out;
  for (const auto& g : groups_)
    for (const auto& p : g.params) {
      const TensorImpl* gi = p.impl()->grad.get();
      out.push_back(gi ? gi->storage.get() : nullptr);
    }
  return out;
}

void Optimizer::step_now() {
  // Advance by id rather than by iterator so hooks may add or remove hooks while running.
  for (auto it = hooks_.begin(); it != hooks_.end();) {
    const int id = it->first;
    std::shared_ptr<Hook> h = it->second;
    (*h)(*this);
    it = hooks_.upper_bound(id);
  }
  update();
  // The update wrote the parameters through raw pointers: a graph recorded before this step that
  // saved one of them must not be walked as if nothing happened (backward throws instead).
  for (const ParamGroup& g : groups_)
    for (const Tensor& p : g.params)
      if (p.defined()) p.impl()->storage->bump_version();
  ++step_count_;
}

Optimizer::ParamState& Optimizer::state(size_t group, size_t index) {
  auto& st = state_.at(group);
  if (st.size() < groups_[group].params.size()) st.resize(groups_[group].params.size());
  ParamState& s = st[index];
  if (s.buffers.size() != buffer_names_.size()) s.buffers.resize(buffer_names_.size());
  return s;
}

Tensor Optimizer::grad_for(const Tensor& param, bool keep_row_mark) const {
  if (!param.requires_grad()) return Tensor();  // frozen: skipped like a parameter without a gradient
  Tensor g = tg::detail::param_grad(param);
  if (!g.defined()) return g;
  if (!keep_row_mark) tg::detail::forget_zero_rows(g);
  if (g.dtype() != param.dtype() || !(g.shape() == param.shape()))
    throw std::invalid_argument(fmt::format("{}: gradient {} {} does not match parameter {} {}", name_,
                                            g.shape().str(), dtype_name(g.dtype()), param.shape().str(),
                                            dtype_name(param.dtype())));
  return g.is_contiguous() ? g : g.contiguous();
}

Tensor& Optimizer::buffer(ParamState& st, size_t b, const Tensor& like, double fill) {
  Tensor& t = st.buffers[b];
  if (!t.defined()) t = fill == 0.0 ? zeros_like(like) : full(like.shape(), fill, like.dtype());
  return t;
}

// ---- serialisation ----------------------------------------------------------------------------

namespace {

// JSON has no NaN/Inf; those go as strings. Finite values are JSON numbers, which nlohmann writes
// in the shortest form that parses back to the same double.
json put_double(double v) {
  if (std::isfinite(v)) return v;
  return std::isnan(v) ? "nan" : (v > 0 ? "inf" : "-inf");
}

double get_double(const json& j, const std::string& what) {
  if (j.is_number()) return j.get<double>();
  if (j.is_string()) {
    const auto& s = j.get_ref<const std::string&>();
    if (s == "nan") return std::numeric_limits<double>::quiet_NaN();
    if (s == "inf") return std::numeric_limits<double>::infinity();
    if (s == "-inf") return -std::numeric_limits<double>::infinity();
  }
  throw std::invalid_argument("load_state_dict: " + what + " is not a number: " + j.dump());
}

json shape_json(const Shape& s) { return s.vec(); }

json tensor_json(const Tensor& t) {
  static const char* digits = "0123456789abcdef";
  const size_t n = static_cast<size_t>(t.numel()) * dtype_size(t.dtype());
  std::vector<unsigned char> bytes(n);
  tg::detail::copy_bytes_out(t.contiguous(), bytes.data());
  std::string hex(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    hex[2 * i] = digits[bytes[i] >> 4];
    hex[2 * i + 1] = digits[bytes[i] & 15];
  }
  return {{"shape", shape_json(t.shape())}, {"dtype", dtype_name(t.dtype())}, {"hex", std::move(hex)}};
}

// Rebuilds a buffer for `param`, insisting on the parameter's shape and dtype.
Tensor tensor_from_json(const json& j, const Tensor& param, const std::string& what) {
  if (!j.is_object() || !j.contains("shape") || !j.contains("dtype") || !j.contains("hex"))
    throw std::invalid_argument("load_state_dict: " + what + " needs shape, dtype and hex");
  const Shape shape(j.at("shape").get<std::vector<int64_t>>());
  const std::string dtype = j.at("dtype").get<std::string>();
  if (!(shape == param.shape()) || dtype != dtype_name(param.dtype()))
    throw std::invalid_argument(fmt::format("load_state_dict: {} is {} {}, but the parameter is {} {}", what,
                                            shape.str(), dtype, param.shape().str(), dtype_name(param.dtype())));
  const std::string& hex = j.at("hex").get_ref<const std::string&>();
  const size_t n = static_cast<size_t>(param.numel()) * dtype_size(param.dtype());
  if (hex.size() != 2 * n)
    throw std::invalid_argument(fmt::format("load_state_dict: {} has {} hex digits, expected {}", what,
                                            hex.size(), 2 * n));
  Tensor t = empty(param.shape(), param.dtype());
  std::vector<unsigned char> bytes(n);
  for (size_t i = 0; i < n; ++i) {
    unsigned v = 0;
    auto r = std::from_chars(hex.data() + 2 * i, hex.data() + 2 * i + 2, v, 16);
    if (r.ec != std::errc() || r.ptr != hex.data() + 2 * i + 2)
      throw std::invalid_argument("load_state_dict: " + what + " has a bad hex digit at " + std::to_string(2 * i));
    bytes[i] = static_cast<unsigned char>(v);
  }
  tg::detail::copy_bytes_in(t, bytes.data());
  return t;
}

}  // namespace

json Optimizer::state_dict() const {
  json groups = json::array(), states = json::array();
  for (size_t g = 0; g < groups_.size(); ++g) {
    const ParamGroup& pg = groups_[g];
    json opts = json::object();
    for (const auto& [k, v] : pg.options) opts[k] = put_double(v);
    json shapes = json::array();
    for (const auto& p : pg.params) shapes.push_back({{"shape", shape_json(p.shape())}, {"dtype", dtype_name(p.dtype())}});
    groups.push_back({{"lr", put_double(pg.lr)},
                      {"weight_decay", put_double(pg.weight_decay)},
                      {"initial_lr", put_double(pg.initial_lr)},
                      {"options", std::move(opts)},
                      {"params", std::move(shapes)}});
    json per_param = json::array();
    for (size_t i = 0; i < pg.params.size(); ++i) {
      json s = {{"step", int64_t{0}}, {"buffers", json::object()}};
      if (i < state_[g].size()) {
        const ParamState& st = state_[g][i];
        s["step"] = st.step;
        for (size_t b = 0; b < st.buffers.size(); ++b)
          if (st.buffers[b].defined()) s["buffers"][buffer_names_[b]] = tensor_json(st.buffers[b]);
      }
      per_param.push_back(std::move(s));
    }
    states.push_back(std::move(per_param));
  }
  return {{"optimizer", name_}, {"step_count", step_count_}, {"param_groups", std::move(groups)},
          {"state", std::move(states)}};
}

void Optimizer::load_state_dict(const json& j) {
  const std::string pre = "load_state_dict: ";
  try {
    if (!j.is_object()) throw std::invalid_argument(pre + "expected a JSON object");
    const std::string kind = j.at("optimizer").get<std::string>();
    if (kind != name_) throw std::invalid_argument(pre + "state is for " + kind + ", this optimizer is " + name_);
    const json& jg = j.at("param_groups");
    const json& js = j.at("state");
    if (!jg.is_array() || !js.is_array() || jg.size() != groups_.size() || js.size() != groups_.size())
      throw std::invalid_argument(fmt::format("{}expected {} parameter groups, got {}", pre, groups_.size(),
                                              jg.is_array() ? jg.size() : 0));
    // Build everything aside and swap in at the end, so a bad entry leaves *this untouched.
    std::vector<ParamGroup> groups = groups_;
    std::vector<std::vector<ParamState>> state(groups_.size());
    for (size_t g = 0; g < groups_.size(); ++g) {
      const auto& params = groups_[g].params;
      const json& saved = jg[g];
      const std::string gname = fmt::format("group {}", g);
      if (saved.at("params").size() != params.size() || js[g].size() != params.size())
        throw std::invalid_argument(fmt::format("{}{} has {} parameters, the saved state has {}", pre, gname,
                                                params.size(), saved.at("params").size()));
      ParamGroup& pg = groups[g];
      pg.lr = get_double(saved.at("lr"), gname + " lr");
      pg.weight_decay = get_double(saved.at("weight_decay"), gname + " weight_decay");
      pg.initial_lr = get_double(saved.at("initial_lr"), gname + " initial_lr");
      pg.options.clear();
      for (const auto& [k, v] : saved.at("options").items()) {
        if (!defaults_.options.count(k)) throw std::invalid_argument(pre + gname + " has unknown option '" + k + "'");
        pg.options[k] = get_double(v, gname + " option " + k);
      }
      if (pg.options.size() != defaults_.options.size())
        throw std::invalid_argument(pre + gname + " is missing options for " + name_);
      validate(pg);
      state[g].resize(params.size());
      for (size_t i = 0; i < params.size(); ++i) {
        const std::string pname = fmt::format("{} parameter {}", gname, i);
        const json& sp = saved.at("params")[i];
        if (!(Shape(sp.at("shape").get<std::vector<int64_t>>()) == params[i].shape()) ||
            sp.at("dtype").get<std::string>() != dtype_name(params[i].dtype()))
          throw std::invalid_argument(fmt::format("{}{} was saved as {} {}, but is {} {}", pre, pname,
                                                  sp.at("shape").dump(), sp.at("dtype").get<std::string>(),
                                                  params[i].shape().str(), dtype_name(params[i].dtype())));
        const json& ps = js[g][i];
        ParamState& st = state[g][i];
        st.step = ps.at("step").get<int64_t>();
        st.buffers.resize(buffer_names_.size());
        for (const auto& [bname, bj] : ps.at("buffers").items()) {
          size_t b = 0;
          while (b < buffer_names_.size() && buffer_names_[b] != bname) ++b;
          if (b == buffer_names_.size())
            throw std::invalid_argument(pre + pname + " has unknown state '" + bname + "' for " + name_);
          st.buffers[b] = tensor_from_json(bj, params[i], pname + " " + bname);
        }
      }
    }
    const int64_t steps = j.at("step_count").get<int64_t>();
    groups_ = std::move(groups);
    state_ = std::move(state);
    step_count_ = steps;
  } catch (const json::exception& e) {
    throw std::invalid_argument(pre + "malformed state: " + e.what());
  }
}

}  // namespace tg::optim
