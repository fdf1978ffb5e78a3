#pragma once
// The tape: every op recorded while gradients are on becomes a Node that points at the nodes (or
// leaves) that produced its inputs. backward() walks the graph below one root in a topological
// order found by counting each node's consumers (Kahn's algorithm: no sorting, no recursion), and
// frees what it walked unless retain_graph. Nodes are reference counted, so a graph that no live
// tensor can reach is freed at once, and independent graphs on one thread stay independent.
#include <atomic>
#include <cstddef>
#include <memory>
#include <new>
#include <initializer_list>
#include <span>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "tapegrad/autograd/tensor.h"

namespace tg {

struct Edge {
  enum Kind : uint8_t { None, Interior, Leaf, Freed };
  Kind kind = None;
  NodeRef node;               // Interior: the producing node (owned: a graph keeps what it needs)
  Ref<TensorImpl> leaf;       // Leaf: where the gradient accumulates
  Shape shape;                // the input's shape, checked against every gradient
  DType dtype = DType::Float32;
  Edge() = default;
  Edge(const Edge&) = delete;
  Edge& operator=(const Edge&) = delete;
  ~Edge();
};

class Grads;

// Rarely used per-node state: hooks and retain_grad() of the output, the anomaly name scope.
struct NodeExtras {
  std::vector<GradHook> hooks;
  TensorImpl* retain_target = nullptr;  // not owned: cleared when that tensor dies
  std::string scope;
};

// One recorded op. Owned by reference counts: the tensor it produced holds it, and so does every
// node that consumed that tensor, so a node lives exactly as long as something can still reach it
// (the last reference frees it, iteratively, so freeing a deep unrolled graph never recurses).
// A backward without retain_graph releases what the nodes it walked saved, unless another live
// graph still reaches them.
struct Node : NodeBase {
  const char* op = "";
  uint64_t index = 0;         // position in this thread's recording order (errors, to_dot)
  uint32_t n_inputs = 0;
  uint32_t alloc_bytes = 0;
  Edge* inputs = nullptr;     // allocated with the node
  Shape out_shape;
  DType out_dtype = DType::Float32;
  bool released = false;      // a backward freed what it saved: walking it again is an error
  // Walk state, owned by the backward pass that claimed the node (`walker`).
  bool grad_exclusive = false;
  bool keep = false;
  bool needed = true;  // tg::grad: a gradient must reach this node (it is an input, or runs)
  bool runs = true;    // tg::grad: its backward leads to an input (else it is skipped)
  uint32_t deps = 0;
  std::atomic<uint64_t> walker{0};
  std::atomic<uint32_t> consumers{0};  // edges of other nodes that point here
  Tensor grad;
  std::unique_ptr<NodeExtras> extras;
  Node* dying_next = nullptr;  // detail::destroy_node's queue
  NodeExtras& ensure_extras() {
    if (!extras) extras = std::make_unique<NodeExtras>();
    return *extras;
  }
  virtual void backward(const Tensor& grad_out, Grads& grads) = 0;
  // Drops the tensors backward saved: after a backward without retain_graph. The input edges stay
  // until the walk ends (drop_inputs), so nothing the walk still visits is freed under it.
  virtual void release_saved() = 0;
  // Drops the input edges (the last reference to a producer frees it).
  void drop_inputs();
  virtual ~Node();
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
  // Where a backward may write the gradient of that window before it calls add_window with it: the
  // window of input i's gradient itself while that window is unwritten (rows strides()[0] apart,
  // unit-stride columns), so add_window has nothing to copy; otherwise a new contiguous tensor.
  // The buffer must be filled and handed to add_window before the backward returns.
  Tensor window_buffer(int i, int64_t dim, int64_t start, const Shape& window_shape, bool squeezed = false);

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
  // A tensor the op reads but does not differentiate (a where() mask, a loss target): `role`
  // names it in the error ("its target"); a string literal.
  Saved(const Tensor& t, const char* role)
      : t_(t), version_(t.defined() ? t.impl()->storage->version() : 0), input_(kInternal), role_(role) {}
  const Tensor& get() const {
    if (t_.defined() && t_.impl()->storage->version() != version_) [[unlikely]] throw_modified();
    return t_;
  }
  const Tensor& operator*() const { return get(); }
  // get(), except that in a create_graph backward (recording on) a saved *output* comes back as a
  // tensor whose grad_fn is this op, so what backward computes from it can be differentiated
  // through it. Ops that save their output read it with this.
  Tensor connected() const;
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
  const char* role_ = nullptr;
};

// An op's output saved by its storage alone (the fused RNN cells): holding the output tensor
// itself would make record() wrap the result in a second impl, one allocation per time step.
class SavedOutputStorage {
 public:
  explicit SavedOutputStorage(const Tensor& out)
      : s_(out.impl()->storage), version_(s_->version()), shape_(out.shape()), dtype_(out.dtype()) {}
  const Storage& get() const {
    if (s_->version() != version_) [[unlikely]] throw_modified();
    return *s_;
  }

 private:
  [[noreturn]] void throw_modified() const;
  Ref<Storage> s_;
  uint64_t version_;
  Shape shape_;
  DType dtype_;
};

// How many recorded nodes are alive in the process (tests and soak runs: graphs that nobody can
// reach any more must not keep any).
int64_t live_nodes();

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
// Turns recording back on inside a NoGradGuard (per thread), e.g. for a create_graph backward.
class EnableGradGuard {
 public:
  EnableGradGuard();
  ~EnableGradGuard();
  EnableGradGuard(const EnableGradGuard&) = delete;
  EnableGradGuard& operator=(const EnableGradGuard&) = delete;

 private:
  bool previous_;
};

// tg::grad (PyTorch's torch.autograd.grad): the gradients of `outputs` (seeded with
// grad_outputs, default ones for one-element outputs) with respect to `inputs`, returned in the
// inputs' order, without touching any tensor's .grad(). Only the part of the graph between the
// outputs and the inputs runs. With create_graph the backward pass is itself recorded, so the
// results can be differentiated again (second derivatives); then the graph is kept as if
// retain_graph were set (PyTorch's default). An input the outputs do not depend on is an error
// unless allow_unused (its entry is then an undefined tensor).
struct GradOptions {
  std::vector<Tensor> grad_outputs = {};  // one per output (undefined: ones, for one-element outputs)
  bool retain_graph = false;
  bool create_graph = false;
  bool allow_unused = false;
};
std::vector<Tensor> grad(const std::vector<Tensor>& outputs, const std::vector<Tensor>& inputs,
                         const GradOptions& options = {});

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
  explicit LambdaNode(F&& f) { new (storage) F(std::move(f)); }
  ~LambdaNode() override {
    if (!released) fn().~F();
  }
  void backward(const Tensor& g, Grads& grads) override { fn()(g, grads); }
  void release_saved() override {
    if (released) return;
    released = true;
    fn().~F();  // the saved tensors go now, not when the last tensor handle of the output does
  }
  F& fn() { return *std::launder(reinterpret_cast<F*>(storage)); }
  alignas(F) unsigned char storage[sizeof(F)];
};
bool should_record(std::span<const Tensor> inputs);
void* allocate_node(size_t node_bytes, size_t n_inputs, uint32_t* total_bytes);
void link(Node* n, size_t node_bytes, uint32_t total_bytes, std::span<const Tensor> inputs, Tensor& out,
          const char* op);
}  // namespace detail

// Records `out = op(inputs)` with its backward: `backward(grad_out, grads)` calls grads.add(i, g)
// for each input i that grads.needs(i). This is how every built-in op is written, and the public
// way to add a differentiable op of your own (see README, "Writing an op"). Capture the tensors
// backward reads as tg::Saved, so an in-place write between forward and backward is detected.
//
// `out` is taken by reference: a by-value parameter would be a second handle on the op's fresh
// output, and link() then wraps any output with more than one handle in a new impl (it must not
// relabel an impl someone else holds), one allocation per recorded op for nothing.
template <class F>
Tensor record(const char* op, std::span<const Tensor> inputs, Tensor& out, F&& backward) {
  if (anomaly_detection_enabled()) check_finite_output(op, inputs, out);
  if (!detail::should_record(inputs)) return out;
  using N = detail::LambdaNode<std::decay_t<F>>;
  static_assert(alignof(N) <= 64, "record: backward captures need at most 64-byte alignment");
  uint32_t total = 0;
  void* p = detail::allocate_node(sizeof(N), inputs.size(), &total);
  N* n = new (p) N(std::forward<F>(backward));
  detail::link(n, sizeof(N), total, inputs, out, op);
  return out;
}
template <class F>
Tensor record(const char* op, std::span<const Tensor> inputs, Tensor&& out, F&& backward) {
  return record(op, inputs, out, std::forward<F>(backward));
}
template <class F>
Tensor record(const char* op, std::span<const Tensor> inputs, const Tensor& out, F&& backward) {
  Tensor own = out;  // the caller keeps its handle: link() sees two and records on a new impl
  return record(op, inputs, own, std::forward<F>(backward));
}
template <class F, class T>
  requires std::is_same_v<std::remove_cvref_t<T>, Tensor>
Tensor record(const char* op, std::initializer_list<Tensor> inputs, T&& out, F&& backward) {
  return record(op, std::span<const Tensor>(inputs.begin(), inputs.size()), std::forward<T>(out),
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
