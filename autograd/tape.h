#pragma once
// The tape: every op recorded while gradients are on becomes a Node, appended in creation order
// to an arena owned by the thread's current Tape. backward() walks that list in reverse (a valid
// topological order by construction: no sorting, no recursion) and then frees it in one sweep.
#include <cstddef>
#include <initializer_list>
#include <span>
#include <unordered_map>
#include <string>
#include <utility>
#include <vector>

#include "autograd/tensor.h"

namespace tg {

class Tape;


struct Edge {
  enum Kind : uint8_t { None, Interior, Leaf, Freed };
  Kind kind = None;
  Node* node = nullptr;       // Interior: the producing node
  Ref<TensorImpl> leaf;       // Leaf: where the gradient accumulates
  Shape shape;                // the input's shape, checked against every gradient
  DType dtype = DType::Float32;
};

class Grads;

struct Node {
  const char* op = "";
  uint32_t index = 0;
  uint32_t n_inputs = 0;
  Edge* inputs = nullptr;     // arena-allocated array
  Shape out_shape;
  DType out_dtype = DType::Float32;
  Tensor grad;                // gradient of the output, accumulated during backward
  bool grad_exclusive = false;
  Ref<TensorImpl> watched;    // set when the output has hooks or retain_grad()
  virtual void backward(const Tensor& grad_out, Grads& grads) = 0;
  virtual ~Node() {
    for (uint32_t i = 0; i < n_inputs; ++i) inputs[i].~Edge();  // the arena holds only their bytes
  }
};

// What an op's backward sees: which inputs want a gradient, and where to add it.
class Grads {
 public:
  explicit Grads(Node* n) : node_(n) {}
  bool needs(int i) const { return node_->inputs[i].kind != Edge::None; }
  const Shape& input_shape(int i) const { return node_->inputs[i].shape; }
  void add(int i, Tensor g);  // g must have input i's shape and dtype
  // Adds a^T @ b (a [M, P], b [M, Q]: the weight gradient of a matrix product) to input i. For a
  // leaf, all such products of one backward pass are stacked into a single GEMM at the end, so
  // a weight used at every step of an unrolled RNN gets one large product instead of T small ones.
  void add_product(int i, const Tensor& a, const Tensor& b);
  // Adds g into the window [start, start + g.size(dim)) along `dim` of input i's gradient, without
  // materialising a full-size zero gradient per call (narrow/select backward in a loop stays linear).
  // `squeezed`: g lacks `dim` (a select's gradient), the window is one index wide.
  void add_window(int i, int64_t dim, int64_t start, const Tensor& g, bool squeezed = false);

 private:
  Node* node_;
};

// A tensor an op's backward reads, with the version its storage had when the op was recorded.
// Every tensor a backward lambda captures is held as a Saved: if an in-place write (add_, mul_,
// fill_, copy_, an optimizer step, load_state_dict) changed its bytes before backward runs, get()
// throws, naming the op, which input (or the output) it was, its shape and both versions,
// instead of letting backward compute a wrong gradient from the new values. Shape and dtype
// cannot change in place, so reading them needs no check.
class Saved {
 public:
  static constexpr int kOutput = -1;    // the op's result
  static constexpr int kInternal = -2;  // something the op computed for its backward (a mask, ...)
  Saved() = default;
  // `input`: which input of the op this is (0, 1, ...), or kOutput / kInternal.
  Saved(const Tensor& t, int input)
      : t_(t), version_(t.defined() ? t.impl()->storage->version() : 0), input_(input) {}
  const Tensor& get() const {
    if (t_.defined() && t_.impl()->storage->version() != version_) throw_modified();
    return t_;
  }
  const Tensor& operator*() const { return get(); }
  bool defined() const { return t_.defined(); }
  const Shape& shape() const { return t_.shape(); }
  DType dtype() const { return t_.dtype(); }
  int64_t dim() const { return t_.dim(); }
  int64_t size(int64_t d) const { return t_.size(d); }
  int64_t numel() const { return t_.numel(); }

 private:
  [[noreturn]] void throw_modified() const;
  Tensor t_;
  uint64_t version_ = 0;
  int input_ = kOutput;
};

class Tape {
 public:
  Tape();
  ~Tape();
  Tape(const Tape&) = delete;
  Tape& operator=(const Tape&) = delete;

  static Tape& current();  // this thread's tape: the innermost TapeScope's, else a thread-local default
  size_t size() const { return nodes_.size(); }
  Node* node(size_t i) const { return nodes_[i]; }
  const Ref<TapeSegment>& segment() const { return segment_; }
  size_t arena_bytes() const { return arena_capacity_; }
  // The NameScope a node was recorded in, kept only while anomaly detection is on; null if none.
  const std::string* scope_of(const Node* n) const;
  void set_scope(const Node* n, const std::string& scope) { scopes_[n] = scope; }
  // Destroys every node; tensors recorded here become detached-by-release (see Edge::Freed).
  void release();

  template <class N, class... Args> N* emplace(Args&&... args) {
    void* p = allocate(sizeof(N), alignof(N));
    N* n = new (p) N(std::forward<Args>(args)...);
    n->index = static_cast<uint32_t>(nodes_.size());
    nodes_.push_back(n);
    return n;
  }
  void* allocate(size_t bytes, size_t align);

 private:
  struct Chunk { char* data; size_t size; };
  std::vector<Node*> nodes_;
  std::vector<Chunk> chunks_;
  size_t chunk_ = 0, used_ = 0, arena_capacity_ = 0;
  Ref<TapeSegment> segment_;
  std::unordered_map<const Node*, std::string> scopes_;
};

// Makes `tape` current on this thread for the scope's lifetime; the previous one is restored after.
class TapeScope {
 public:
  explicit TapeScope(Tape& tape);
  ~TapeScope();
  TapeScope(const TapeScope&) = delete;
  TapeScope& operator=(const TapeScope&) = delete;

 private:
  Tape* previous_;
};

// Nothing is recorded inside a NoGradGuard (per thread).
class NoGradGuard {
 public:
  NoGradGuard();
  ~NoGradGuard();
  NoGradGuard(const NoGradGuard&) = delete;
  NoGradGuard& operator=(const NoGradGuard&) = delete;

 private:
  bool previous_;
};
bool grad_enabled();

// Inside it, the first op whose forward output or backward gradient holds NaN/Inf throws,
// naming the op, its input shapes, its index on the tape and the module it was recorded in.
class DetectAnomalyGuard {
 public:
  DetectAnomalyGuard();
  ~DetectAnomalyGuard();
  DetectAnomalyGuard(const DetectAnomalyGuard&) = delete;
  DetectAnomalyGuard& operator=(const DetectAnomalyGuard&) = delete;

 private:
  bool previous_;
};
bool anomaly_detection_enabled();

// Names what is recorded inside it (the innermost scope wins), for anomaly errors: "in module
// 'rnn.cell0'". nn::Module's forward functions open one with the module's name. `name` must
// outlive the scope; an empty name is ignored.
class NameScope {
 public:
  explicit NameScope(const std::string& name);
  ~NameScope();
  NameScope(const NameScope&) = delete;
  NameScope& operator=(const NameScope&) = delete;

 private:
  bool pushed_;
};
const std::string* current_name_scope();  // innermost, or null
void check_finite_output(const char* op, std::span<const Tensor> inputs, const Tensor& out);

namespace detail {
template <class F> struct LambdaNode final : Node {
  explicit LambdaNode(F&& f) : fn(std::move(f)) {}
  void backward(const Tensor& g, Grads& grads) override { fn(g, grads); }
  F fn;
};
bool should_record(std::span<const Tensor> inputs);
void link(Node* n, std::span<const Tensor> inputs, Tensor& out, const char* op);
}  // namespace detail

// Records `out = op(inputs)` with its backward: `backward(grad_out, grads)` calls grads.add(i, g)
// for each input i that grads.needs(i). This is how every built-in op is written, and the public
// way to add a differentiable op of your own (see README, "Writing an op").
template <class F>
Tensor record(const char* op, std::span<const Tensor> inputs, Tensor out, F&& backward) {
  if (anomaly_detection_enabled()) check_finite_output(op, inputs, out);
  if (!detail::should_record(inputs)) return out;
  Node* n = Tape::current().emplace<detail::LambdaNode<std::decay_t<F>>>(std::forward<F>(backward));
  detail::link(n, inputs, out, op);
  return out;
}
template <class F>
Tensor record(const char* op, std::initializer_list<Tensor> inputs, Tensor out, F&& backward) {
  return record(op, std::span<const Tensor>(inputs.begin(), inputs.size()), std::move(out),
                std::forward<F>(backward));
}

// Graphviz DOT of the graph that produced `root` (op names and shapes), walked without recursion.
std::string to_dot(const Tensor& root);

// Registry of differentiable ops, filled by TG_REGISTER_OP in each op's file. The gradcheck suite
// checks that every registered op has a gradient check.
struct OpInfo { const char* name; const char* family; };
const std::vector<OpInfo>& registered_ops();
struct OpRegistration { OpRegistration(const char* name, const char* family); };
#define TG_REGISTER_OP_CAT2(a, b) a##b
#define TG_REGISTER_OP_CAT(a, b) TG_REGISTER_OP_CAT2(a, b)
#define TG_REGISTER_OP(name, family) \
  static const ::tg::OpRegistration TG_REGISTER_OP_CAT(tg_op_reg_, __LINE__)(name, family)

}  // namespace tg
