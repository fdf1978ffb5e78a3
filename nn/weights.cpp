#include "nn/weights.h"

#include <fmt/format.h>

#include <map>
#include <regex>
#include <stdexcept>

namespace tg::nn {
namespace {
// "cell{layer}[_reverse].{weight_ih,...}" at the end of a dotted name (our RNN / LSTM / GRU).
const std::regex& ours() {
  static const std::regex r(R"((^|\.)cell(\d+)(_reverse)?\.(weight_ih|weight_hh|bias_ih|bias_hh)$)");
  return r;
}
// "{weight_ih,...}_l{layer}[_reverse]" at the end (torch.nn.RNN / LSTM / GRU).
const std::regex& theirs() {
  static const std::regex r(R"((^|\.)(weight_ih|weight_hh|bias_ih|bias_hh)_l(\d+)(_reverse)?$)");
  return r;
}
}  // namespace

std::string pytorch_name(const std::string& name) { return std::regex_replace(name, ours(), "$1$4_l$2$3"); }
std::string tapegrad_name(const std::string& name) { return std::regex_replace(name, theirs(), "$1cell$3$4.$2"); }

void save_weights(const Module& module, const std::filesystem::path& path, const SaveWeightsOptions& options) {
  NamedTensors tensors;
  for (auto& [name, t] : module.state_dict())
    tensors.emplace_back(options.names == WeightNames::PyTorch ? pytorch_name(name) : name, t);
  save_safetensors(path, tensors, options.metadata);
}

void load_weights(Module& module, const std::filesystem::path& path, bool strict, const LoadOptions& options) {
  NamedTensors tensors = load_safetensors(path, nullptr, options);
  const std::map<std::string, Tensor> known = module.state_dict();
  std::map<std::string, Tensor> state;
  for (auto& [name, t] : tensors) {
    const std::string mine = known.count(name) ? name : tapegrad_name(name);
    if (!strict && !known.count(mine)) continue;
    if (!state.emplace(mine, t).second)
      throw std::invalid_argument(fmt::format("load_weights: {} holds '{}' under both naming schemes (ours and "
                                              "PyTorch's); keep one",
                                              path.string(), printable(mine)));
  }
  try {
    module.load_state_dict(state, strict);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("load_weights: {}: {}", path.string(), e.what()));
  }
}

}  // namespace tg::nn
