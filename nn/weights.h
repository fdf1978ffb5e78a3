#pragma once
// A module's weights (its state_dict) in one safetensors file, under its own names or PyTorch's.
// With WeightNames::PyTorch the recurrent modules' tensors are written under torch.nn.RNN / LSTM /
// GRU's flat names ("rnn.weight_ih_l0", "rnn.bias_hh_l1_reverse"), so
// `torch_module.load_state_dict(safetensors.torch.load_file(path), strict=True)` takes the file as
// it is; every other name (Linear, Embedding, LayerNorm: "weight", "bias") is already PyTorch's.
// load_weights reads either naming, so a state_dict saved from PyTorch with
// safetensors.torch.save_file loads directly too.
#include <filesystem>
#include <map>
#include <string>

#include "tapegrad/autograd/safetensors.h"
#include "tapegrad/nn/module.h"

namespace tg::nn {

enum class WeightNames { Tapegrad, PyTorch };

// The module's state_dict() to a safetensors file (see autograd/safetensors.h), atomically: a
// crash leaves the old file or the new one. `metadata` goes into the file's __metadata__.
void save_weights(const Module& module, const std::filesystem::path& path,
                  const std::map<std::string, std::string>& metadata = {}, WeightNames names = WeightNames::Tapegrad);

// Loads a safetensors file into `module` through load_state_dict (in place, converting dtype),
// under either naming: the file is validated first, then every name and shape; on any error
// (std::runtime_error for the file, std::invalid_argument naming the file for names/shapes) nothing
// in the module has changed. Not strict: file tensors the module lacks are ignored and module
// tensors the file lacks keep their values (shapes are still checked). `metadata` receives the
// file's __metadata__ (plus the checksum entry). Non-finite weights are refused unless
// options.allow_non_finite (see load_safetensors).
void load_weights(Module& module, const std::filesystem::path& path, bool strict = true,
                  std::map<std::string, std::string>* metadata = nullptr, const LoadOptions& options = {});

// PyTorch's name for one of our state_dict keys: "rnn.cell1_reverse.weight_ih" ->
// "rnn.weight_ih_l1_reverse"; any other name comes back unchanged. tapegrad_name is the inverse.
std::string pytorch_name(const std::string& name);
std::string tapegrad_name(const std::string& name);

}  // namespace tg::nn
