#pragma once
// A module's weights (its state_dict) in one safetensors file, under its own names or PyTorch's.
// With WeightNames::PyTorch the recurrent modules' tensors are written under torch.nn.RNN / LSTM /
// GRU's flat names ("rnn.weight_ih_l0", "rnn.bias_hh_l1_reverse"), so
// `torch_module.load_state_dict(safetensors.torch.load_file(path), strict=True)` takes the file as it
// is; every other name (Linear, Embedding, LayerNorm: "weight", "bias") is already PyTorch's.
// load_weights reads either naming, so a file saved from PyTorch with safetensors.torch.save_file
// loads directly too.
#include <filesystem>
#include <string>

#include "autograd/safetensors.h"
#include "nn/module.h"

namespace tg::nn {

enum class WeightNames { Tapegrad, PyTorch };

struct SaveWeightsOptions {
  WeightNames names = WeightNames::Tapegrad;
  TensorMetadata metadata = {};  // stored in the file's __metadata__
};

// Written atomically (save_safetensors): a crash leaves the old file or the new one.
void save_weights(const Module& module, const std::filesystem::path& path, const SaveWeightsOptions& options = {});

// Every tensor of the file into the module (in place, converting dtype, as load_state_dict).
// strict: the file's names and the module's must match exactly. Not strict: file tensors the
// module lacks are ignored and module tensors the file lacks keep their values. A shape mismatch
// is always an error, and on any error nothing is loaded.
void load_weights(Module& module, const std::filesystem::path& path, bool strict = true,
                  const LoadOptions& options = {});

// PyTorch's name for one of our state_dict keys: "rnn.cell1_reverse.weight_ih" ->
// "rnn.weight_ih_l1_reverse"; any other name comes back unchanged. tapegrad_name is the inverse.
std::string pytorch_name(const std::string& name);
std::string tapegrad_name(const std::string& name);

}  // namespace tg::nn
