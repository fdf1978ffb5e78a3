#pragma once
// Module: the base of every layer. A module owns named parameter and buffer slots and named
// submodules; everything else (traversal, train/eval, dtype conversion, checkpoints) is here.
//
// Writing a module:
//   struct Affine : tg::nn::Module {
//     Tensor& scale = register_parameter("scale", tg::ones({4}));
//     Tensor& shift = register_parameter("shift", tg::zeros({4}));
//     Tensor forward(const Tensor& x) { return x * scale + shift; }
//   };
// register_parameter returns a reference to the slot the module stores, so the member and the
// registry are the same object: to(), load_state_dict() and plain assignment to the member are
// all seen by both.
#include <map>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tapegrad/autograd/tensor.h"

namespace tg::nn {

class Module {
 public:
  Module() = default;
  virtual ~Module();
  // Members are references into this module's slots; a copy would alias the original's.
  Module(const Module&) = delete;
  Module& operator=(const Module&) = delete;

  // Recursive, in registration order, dotted names ("rnn.cell0.weight_hh"). A tensor reachable
  // under two names (a shared submodule, a tied weight) is listed once, under its first name.
  std::vector<Tensor> parameters() const;
  std::vector<std::pair<std::string, Tensor>> named_parameters() const;
  std::vector<Tensor> buffers() const;
  std::vector<std::pair<std::string, Tensor>> named_buffers() const;
  const std::vector<std::pair<std::string, std::shared_ptr<Module>>>& named_children() const { return children_; }

  // Dotted path given by register_module ("rnn.cell0"), or set by the user on a top-level model;
  // setting it renames the submodules below. Forward functions record their ops under it, so
  // anomaly errors (DetectAnomalyGuard) say which module an op came from.
  const std::string& name() const { return name_; }
  void set_name(std::string name);

  void train(bool on = true);  // recursive
  void eval() { train(false); }
  bool is_training() const { return training_; }
  void zero_grad();            // drops every parameter's gradient

  // Converts floating parameters and buffers (and their gradients) by replacing the tensors in
  // their slots. Members see the new tensors; handles copied out earlier (an optimizer's
  // parameter list) still point at the old ones, so convert before building the optimizer.
  // Tied tensors stay tied. Integer buffers are left alone.
  void to(DType dtype);

  // Parameters then buffers, dotted names. A snapshot: the tensors are detached copies, so later
  // training does not change a saved state_dict.
  std::map<std::string, Tensor> state_dict() const;
  // Validates every entry first and throws std::invalid_argument listing all missing keys,
  // unexpected keys (both only when strict) and shape mismatches; nothing is copied unless all
  // entries are valid. Then copies in place (converting dtype), so handles stay valid.
  void load_state_dict(const std::map<std::string, Tensor>& state, bool strict = true);

 protected:
  // Parameters become leaves that require grad. An undefined tensor reserves the name for an
  // absent optional parameter (Linear without bias); it is skipped everywhere.
  Tensor& register_parameter(std::string name, Tensor t);
  Tensor& register_buffer(std::string name, Tensor t);
  template <class M>
  std::shared_ptr<M> register_module(std::string name, std::shared_ptr<M> m) {
    static_assert(std::is_base_of_v<Module, M>, "register_module: M must derive from tg::nn::Module");
    add_child(std::move(name), m);
    return m;
  }

 private:
  struct Slot {
    std::string name;
    std::unique_ptr<Tensor> value;  // heap slot: members refer to it, so it must never move
  };
  using SlotList = std::vector<std::pair<std::string, Tensor*>>;
  void collect(const std::string& prefix, bool buffers, SlotList& out) const;
  void check_new_name(const std::string& name, const char* what) const;
  void add_child(std::string name, std::shared_ptr<Module> m);

  std::vector<Slot> params_, buffers_;
  std::vector<std::pair<std::string, std::shared_ptr<Module>>> children_;
  bool training_ = true;
  std::string name_;
};

}  // namespace tg::nn
