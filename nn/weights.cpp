#include "tapegrad/nn/weights.h"

#include <fmt/format.h>

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

void save_weights(const Module& module, const std::filesystem::path& path,
                  const std::map<std::string, std::string>& metadata, WeightNames names) {
  NamedTensors tensors;
  for (auto& [name, t] : module.state_dict())
    tensors.emplace_back(names == WeightNames::PyTorch ? pytorch_name(name) : name, t);
  save_safetensors(path, tensors, metadata);
}

void load_weights(Module& module, const std::filesystem::path& path, bool strict,
                  std::map<std::string, std::string>* metadata, const LoadOptions& options) {
  const std::map<std::string, Tensor> known = module.state_dict();
  // Names go into load_state_dict's messages: a name with control characters (never a weight's
  // name) is passed on as printable() shows it, so the messages stay readable.
  std::map<std::string, Tensor> state;
  for (auto& [file_name, t] : load_safetensors(path, metadata, options)) {
    const std::string name = printable(file_name);
    const std::string mine = known.count(name) ? name : tapegrad_name(name);
    if (!strict && !known.count(mine)) continue;
    if (!is_floating(t.dtype()))
      throw std::invalid_argument(fmt::format("{}: tensor '{}' is {}; model weights must be F32 or F64",
                                              path.string(), name, dtype_name(t.dtype())));
    if (!state.emplace(mine, t).second)
      throw std::invalid_argument(fmt::format("{}: '{}' is there under both namings (tapegrad's and PyTorch's); keep "
                                              "one",
                                              path.string(), mine));
  }
  try {
    module.load_state_dict(state, strict);
  } catch (const std::invalid_argument& e) {
    throw std::invalid_argument(fmt::format("{}: {}", path.string(), e.what()));
  }
}

}  // namespace tg::nn
